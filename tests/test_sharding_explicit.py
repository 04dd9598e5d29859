"""Layers on meshes with Explicit axes (jax.make_mesh's default): out_sharding given, inferred, or logical.

Runs in a subprocess with 8 simulated CPU devices (XLA_FLAGS must be set before jax starts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import nnxlite as nnx

    RULES = [("batch", "data"), ("embed", None), ("mlp", "model")]
    lecun = nnx.initializers.lecun_normal()
    out = {}

    class TP(nnx.Module):  # the sharding guide's tensor-parallel pair, unchanged
        def __init__(self, *, ctx):
            self.up = nnx.Linear(8, 32, ctx=ctx, kernel_init=nnx.with_partitioning(lecun, ("embed", "mlp")),
                                 bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("mlp",)))
            self.down = nnx.Linear(32, 8, ctx=ctx, kernel_init=nnx.with_partitioning(lecun, ("mlp", "embed")))

        def __call__(self, x):
            return self.down(jax.nn.gelu(self.up(x)))

    x_host = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    reference = np.asarray(TP(ctx=nnx.context(0))(jnp.asarray(x_host)))  # one device, no mesh

    def run(kind):
        mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))
        with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
            model = nnx.sharded_init(lambda: TP(ctx=nnx.context(0)), mesh)
            x = jax.device_put(x_host, NamedSharding(mesh, P("data", None)))
            y = nnx.jit(lambda m, x: m(x))(model, x)
            h = jax.nn.gelu(model.up(x))
            eager = model.down(h)  # no jit at all
            given = model.down(h, out_sharding=P("data", "model"))
            logical = nnx.jit(lambda m, h: m.down(h, out_sharding=("batch", "mlp")))(model, h)
            return {
                "y": np.asarray(y).tolist(),
                "y_spec": str(y.sharding.spec),
                "kernel_spec": str(model.up.kernel.value.sharding.spec),
                "eager_close": bool(np.allclose(np.asarray(eager), np.asarray(y), atol=1e-5)),
                "eager_spec": str(eager.sharding.spec),
                "given_spec": str(given.sharding.spec),
                "logical_spec": str(logical.sharding.spec),
            }

    out["explicit"] = run(AxisType.Explicit)
    out["auto"] = run(AxisType.Auto)
    out["matches_reference"] = bool(np.allclose(np.asarray(out["explicit"]["y"]), reference, atol=1e-5))

    # FSDP-style weights (sharded over the batch axis): the output must not reuse 'data'.
    mesh8 = jax.make_mesh((8,), ("data",))
    with jax.set_mesh(mesh8):
        layer = nnx.Linear(8, 16, ctx=nnx.context(1))
        layer.kernel.value = jax.device_put(layer.kernel.value, P(None, "data"))
        layer.bias.value = jax.device_put(layer.bias.value, P("data"))
        xb = jax.device_put(x_host, P("data", None))
        yb = nnx.jit(lambda m, x: m(x))(layer, xb)
        out["fsdp_spec"] = str(yb.sharding.spec)
        out["fsdp_close"] = bool(np.allclose(np.asarray(yb), x_host @ np.asarray(layer.kernel.value)
                                             + np.asarray(layer.bias.value), atol=1e-5))

    # Other layers on the explicit 4 x 2 mesh, compared with the same layer off-mesh.
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    def shard(a, *spec):
        return jax.device_put(a, NamedSharding(mesh, P(*spec)))

    layers = {}
    e = nnx.Einsum("bd,dk->bk", (8, 6), (6,), ctx=nnx.context(2))
    lg = nnx.LinearGeneral(8, (2, 4), ctx=nnx.context(3))
    conv = nnx.Conv(3, 4, (3, 3), ctx=nnx.context(4))
    emb = nnx.Embed(10, 8, ctx=nnx.context(5))
    mha = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False, ctx=nnx.context(6))
    img = np.random.default_rng(1).normal(size=(4, 5, 5, 3)).astype(np.float32)
    ids = np.arange(8, dtype=np.int32).reshape(4, 2)
    seq = np.random.default_rng(2).normal(size=(4, 3, 8)).astype(np.float32)
    plain = {
        "einsum": np.asarray(e(jnp.asarray(x_host))),
        "linear_general": np.asarray(lg(jnp.asarray(x_host))),
        "conv": np.asarray(conv(jnp.asarray(img))),
        "embed": np.asarray(emb(jnp.asarray(ids))),
        "attend": np.asarray(emb.attend(jnp.asarray(x_host))),
        "mha": np.asarray(mha(jnp.asarray(seq))),
    }
    e.kernel.value = shard(e.kernel.value, "model", None)   # contracting dim sharded
    lg.kernel.value = shard(lg.kernel.value, None, "model", None)
    conv.kernel.value = shard(conv.kernel.value, None, None, None, "model")
    conv.bias.value = shard(conv.bias.value, "model")
    emb.embedding.value = shard(emb.embedding.value, None, "model")
    xs = shard(x_host, "data", "model")
    results = {
        "einsum": nnx.jit(lambda m, x: m(x))(e, xs),
        "linear_general": nnx.jit(lambda m, x: m(x))(lg, shard(x_host, "data", None)),
        "conv": nnx.jit(lambda m, x: m(x))(conv, shard(img, "data", None, None, None)),
        "embed": nnx.jit(lambda m, i: m(i))(emb, shard(ids, "data", None)),
        "attend": nnx.jit(lambda m, q: m.attend(q))(emb, xs),
        "mha": nnx.jit(lambda m, x: m(x, qkv_sharding=NamedSharding(mesh, P("data", None, "model", None))))(
            mha, shard(seq, "data", None, None)),
    }
    out["layers"] = {
        k: {"close": bool(np.allclose(np.asarray(v), plain[k], atol=1e-5)), "spec": str(v.sharding.spec)}
        for k, v in results.items()
    }

    try:
        from flax import nnx as fnnx
    except ImportError:
        out["flax_raises"] = None
    else:
        with jax.set_mesh(mesh):
            f_down = fnnx.Linear(32, 8, rngs=fnnx.Rngs(0))
            f_down.kernel.value = jax.device_put(f_down.kernel.value, P("model", None))
            hf = jax.device_put(np.ones((16, 32), np.float32), P("data", "model"))
            try:
                fnnx.jit(lambda m, h: m(h))(f_down, hf)
                out["flax_raises"] = False
            except Exception as err:
                out["flax_raises"] = type(err).__name__
            n_down = nnx.Linear(32, 8, ctx=nnx.context(0))
            n_down.kernel.value = jax.device_put(n_down.kernel.value, P("model", None))
            out["nnx_same_case_spec"] = str(nnx.jit(lambda m, h: m(h))(n_down, hf).sharding.spec)
    print(json.dumps(out))
    """
)


def test_layers_on_explicit_and_auto_meshes():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ex, auto = out["explicit"], out["auto"]
    # The guide's tensor-parallel model runs unchanged on both mesh kinds, with the same numbers.
    assert out["matches_reference"]
    assert ex["y"] == auto["y"] or all(
        abs(a - b) < 1e-5 for ra, rb in zip(ex["y"], auto["y"]) for a, b in zip(ra, rb)
    )
    assert ex["kernel_spec"] == "P(None, 'model')"  # sharded init under jax.set_mesh, explicit axes
    # Inferred: batch from the input, features from the kernel, the sharded contraction reduced.
    assert ex["y_spec"] == "P('data', None)"
    assert ex["eager_close"] and ex["eager_spec"] == "P('data', None)"
    # An explicit out_sharding wins; logical names go through the rules.
    assert ex["given_spec"] == "P('data', 'model')"
    assert ex["logical_spec"] == "P('data', 'model')"
    assert auto["eager_close"]
    # FSDP weights: 'data' already shards the batch, so the features are gathered, not re-sharded.
    assert out["fsdp_spec"] == "P('data', None)" and out["fsdp_close"]
    layers = out["layers"]
    assert all(v["close"] for v in layers.values()), layers
    assert layers["einsum"]["spec"] == "P('data', None)"
    assert layers["linear_general"]["spec"] == "P('data', 'model', None)"
    assert layers["conv"]["spec"] == "P('data', None, None, 'model')"
    assert layers["embed"]["spec"] == "P('data', None, 'model')"
    assert layers["attend"]["spec"] == "P('data', None)"
    assert layers["mha"]["spec"].startswith("P('data'")
    if out["flax_raises"] is not None:  # flax.nnx needs out_sharding here; nnxlite infers it
        assert out["flax_raises"] == "ShardingTypeError"
        assert out["nnx_same_case_spec"] == "P('data', None)"
