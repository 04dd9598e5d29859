"""while_loop, fori_loop (in process); pmap and shard_map on 8 simulated CPU devices (a subprocess)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ while_loop / fori_loop
def test_while_loop_matches_lax_and_writes_back():
    model = nnx.Linear(3, 3, ctx=nnx.context(0))
    steps = nnx.Variable(jnp.array(0))
    w, b = model.kernel.value, model.bias.value

    def body(val):
        model, steps, x = val
        steps.value += 1
        return model, steps, jnp.tanh(model(x))

    _, _, y = nnx.while_loop(lambda val: val[1].value < 5, body, (model, steps, jnp.ones((2, 3))))
    ref = jax.lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, jnp.tanh(c[1] @ w + b)), (0, jnp.ones((2, 3))))
    np.testing.assert_allclose(y, ref[1], rtol=1e-6)
    assert int(steps.value) == 5


def test_fori_loop_gives_each_iteration_new_keys_and_gradients_match_lax():
    ctx = nnx.context(noise=0)

    def body(i, val):
        ctx, acc = val
        return ctx, acc.at[i].set(jax.random.uniform(ctx.noise()))

    _, draws = nnx.fori_loop(0, 6, body, (ctx, jnp.zeros(6)))
    assert len(set(np.asarray(draws).tolist())) == 6
    assert int(ctx.noise.count.value) == 6  # the caller's stream advanced once per iteration

    model = nnx.Linear(2, 2, ctx=nnx.context(0))

    def loss(model):
        _, y = nnx.fori_loop(0, 3, lambda i, v: (v[0], jnp.sin(v[0](v[1]))), (model, jnp.ones((1, 2))))
        return y.sum()

    def pure_loss(w, b):
        return jax.lax.fori_loop(0, 3, lambda i, x: jnp.sin(x @ w + b), jnp.ones((1, 2))).sum()

    grads = nnx.grad(loss)(model)
    ref = jax.grad(pure_loss, argnums=(0, 1))(model.kernel.value, model.bias.value)
    np.testing.assert_allclose(grads["kernel"], ref[0], rtol=1e-5)
    np.testing.assert_allclose(grads["bias"], ref[1], rtol=1e-5)


def test_loops_reject_structure_changes_and_different_carries():
    model = nnx.Linear(2, 2, ctx=nnx.context(0))

    def grow(i, model):
        model.extra = nnx.Param(jnp.ones(()))
        return model

    with pytest.raises(ValueError, match="changed the structure"):
        nnx.fori_loop(0, 2, grow, model)
    assert not hasattr(model, "extra")  # nothing half-applied
    other = nnx.Linear(2, 2, ctx=nnx.context(1))
    with pytest.raises(ValueError, match="same modules in the same places"):
        nnx.while_loop(lambda m: False, lambda m: other, model)


# ------------------------------------------------------------------ pmap / shard_map on 8 devices
SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    import nnxlite as nnx

    out = {}
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    x = jnp.ones((8 * 4, 16))

    # Dropout inside shard_map: a different mask on every device by default...
    drop = nnx.Dropout(0.5, ctx=nnx.context(dropout=0))
    f = nnx.shard_map(lambda m, x: m(x), mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"))
    y = np.asarray(f(drop, x)).reshape(8, 4, 16)
    out["distinct_masks"] = len({y[d].tobytes() for d in range(8)})
    out["stream_count"] = int(drop.ctx.dropout.count.value)
    out["second_call_differs"] = bool((np.asarray(f(drop, x)).reshape(8, 4, 16) != y).any())
    # ...and the same mask everywhere when the stream is named in a dict entry.
    g = nnx.shard_map(lambda m, x: m(x), mesh=mesh, in_specs=({"dropout": None}, P("data")), out_specs=P("data"))
    z = np.asarray(g(drop, x)).reshape(8, 4, 16)
    out["shared_masks"] = len({z[d].tobytes() for d in range(8)})

    # Numbers and gradients equal jax.shard_map on the pure function.
    model = nnx.Linear(16, 8, ctx=nnx.context(1))
    counter = nnx.Variable(jnp.zeros(()))
    def step(model, counter, x):
        counter.value = counter.value + 1
        return jax.lax.psum(jnp.sum(model(x) ** 2), "data")
    sm = nnx.shard_map(step, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=P())
    def pure(w, b, x):
        return jax.lax.psum(jnp.sum((x @ w + b) ** 2), "data")
    ref_fn = jax.jit(jax.shard_map(pure, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=P()))
    w, b = model.kernel.value, model.bias.value
    out["value_err"] = float(abs(sm(model, counter, x) - ref_fn(w, b, x)))
    out["counter"] = float(counter.value)
    grads = nnx.grad(lambda m: sm(m, counter, x))(model)
    ref = jax.grad(ref_fn, argnums=(0, 1))(w, b, x)
    out["grad_err"] = float(max(jnp.abs(grads["kernel"] - ref[0]).max(), jnp.abs(grads["bias"] - ref[1]).max()))

    # pmap: per-device keys by default, numbers equal jax.pmap.
    ctx = nnx.context(noise=0)
    keys = nnx.pmap(lambda c, x: jax.random.uniform(c.noise(), ()) + x, in_axes=(0, 0))(ctx, jnp.zeros(8))
    out["pmap_distinct"] = len(set(np.asarray(keys).tolist()))
    same = nnx.pmap(lambda c, x: jax.random.uniform(c.noise(), ()) + x, in_axes=({"noise": None}, 0), out_axes=0)
    out["pmap_shared"] = len(set(np.asarray(same(ctx, jnp.zeros(8))).tolist()))
    xs = jax.random.normal(jax.random.PRNGKey(0), (8, 3, 16))
    ys = nnx.pmap(lambda m, x: m(x), in_axes=(None, 0))(model, xs)
    ref = jax.pmap(lambda w, b, x: x @ w + b, in_axes=(None, None, 0))(w, b, xs)
    out["pmap_err"] = float(jnp.abs(ys - ref).max())
    print(json.dumps(out))
    """
)


def test_shard_map_and_pmap_on_8_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["distinct_masks"] == 8  # flax.nnx's shard_map gives all 8 devices the same mask
    assert out["stream_count"] == 1  # one draw from the caller's stream per call
    assert out["second_call_differs"]
    assert out["shared_masks"] == 1
    assert out["value_err"] < 1e-3 and out["grad_err"] < 1e-3
    assert out["counter"] == 1.0  # in-place update written back
    assert out["pmap_distinct"] == 8 and out["pmap_shared"] == 1
    assert out["pmap_err"] < 1e-5
