"""Every flax.nnx transform argument is accepted; conflicting specs for one shared object raise."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nnxlite as nnx

TRANSFORMS = [
    "scan", "vmap", "pmap", "shard_map", "remat", "cond", "switch", "while_loop", "fori_loop", "jit", "grad",
    "value_and_grad", "eval_shape", "custom_vjp", "checkify", "jvp", "vjp", "transform_metadata", "make_jaxpr",
]


@pytest.mark.parametrize("name", TRANSFORMS)
def test_every_flax_parameter_is_accepted(name):
    fnnx = pytest.importorskip("flax.nnx")
    theirs = inspect.signature(getattr(fnnx, name)).parameters
    ours = inspect.signature(getattr(nnx, name)).parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in ours.values())
    missing = [p for p in theirs if p not in ours and not (var_kw and theirs[p].kind is theirs[p].KEYWORD_ONLY)]
    assert not missing, f"nnx.{name} lacks flax's parameters {missing}"


# ---------------------------------------------------------------------------------------
# Conflicting specs for one shared object
# ---------------------------------------------------------------------------------------
class W(nnx.Module):
    def __init__(self):
        self.p = nnx.Param(jnp.ones((3, 4)))


def test_vmap_out_axes_disagreeing_with_in_axes_raises():
    w = W()
    with pytest.raises(ValueError, match=r"returned W is an input.*p axis 1 instead of 0"):
        nnx.vmap(lambda m: m, in_axes=0, out_axes=1)(w)
    assert nnx.vmap(lambda m: m, in_axes=0, out_axes=0)(w) is w


def test_scan_out_axes_disagreeing_with_in_axes_raises():
    w = W()
    with pytest.raises(ValueError, match=r"nnx.scan out_axes: Inconsistent aliasing detected: the returned W is an input.*p axis 1 instead of 0"):
        nnx.scan(lambda c, m: (c, m), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 1))(jnp.zeros(()), w)
    c, same = nnx.scan(lambda c, m: (c, m), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))(jnp.zeros(()), w)
    assert same is w and w.p.shape == (3, 4)
    # a carried module comes back as the carry, not as per-step output
    with pytest.raises(ValueError, match=r"p axis 0 instead of nnx.Carry"):
        nnx.scan(lambda m, x: (m, m), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))(w, jnp.arange(3.0))


def test_conflicting_in_axes_still_raise():
    w = W()
    with pytest.raises(ValueError, match=r"Inconsistent aliasing detected.*argument 0 at .*: 0, argument 1 at .*: 1"):
        nnx.vmap(lambda a, b: None, in_axes=(0, 1))(w, w)


def test_jit_conflicting_state_shardings_for_a_shared_module_raise():
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    a, b = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    class Outer(nnx.Module):
        def __init__(self):
            self.sub = nnx.Linear(2, 2, ctx=nnx.context(0))

    m = Outer()
    bad = nnx.jit(lambda m, s: m.sub(jnp.ones((1, 2))), in_shardings=(nnx.StateSharding({nnx.Param: a}), nnx.StateSharding({nnx.Param: b})))
    with pytest.raises(ValueError, match=r"Inconsistent aliasing detected.*different shardings: argument 0 at sub/.*P\(\).*argument 1 at .*P\('data',\)"):
        bad(m, m.sub)
    good = nnx.jit(lambda m, s: m.sub(jnp.ones((1, 2))), in_shardings=(nnx.StateSharding({nnx.Param: a}), nnx.StateSharding({nnx.Param: a})))
    assert good(m, m.sub).shape == (1, 2)
    # None (no sharding given) agrees with anything
    partial = nnx.jit(lambda m, s: m.sub(jnp.ones((1, 2))), in_shardings=(None, nnx.StateSharding({nnx.Param: b})))
    assert partial(m, m.sub).shape == (1, 2)


def test_jit_conflicts_match_flax():
    fnnx = pytest.importorskip("flax.nnx")
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    a, b = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    class Outer(fnnx.Module):
        def __init__(self):
            self.sub = fnnx.Linear(2, 2, rngs=fnnx.Rngs(0))

    m = Outer()
    f = fnnx.jit(lambda m, s: m.sub(jnp.ones((1, 2))), in_shardings=(fnnx.StateSharding({fnnx.Param: a}), fnnx.StateSharding({fnnx.Param: b})))
    with pytest.raises(ValueError):
        f(m, m.sub)  # flax refuses it too ("Inconsistent aliasing")


# ---------------------------------------------------------------------------------------
# Arguments added for flax parity
# ---------------------------------------------------------------------------------------
def test_pmap_static_broadcasted_argnums_like_jax():
    n = jax.local_device_count()
    x = jnp.arange(n * 2.0).reshape(n, 2)
    got = nnx.pmap(lambda x, k: x * k, static_broadcasted_argnums=(1,))(x, 3)
    want = jax.pmap(lambda x, k: x * k, static_broadcasted_argnums=(1,))(x, 3)
    np.testing.assert_allclose(got, want)
    lin = nnx.Linear(2, 2, ctx=nnx.context(0))
    y = nnx.pmap(lambda m, x, act: act(m(x)), in_axes=(None, 0, None), static_broadcasted_argnums=(2,))(lin, x, jnp.tanh)
    np.testing.assert_allclose(y, jnp.tanh(lin(x)), rtol=1e-6)
    assert nnx.pmap(lambda x: x + 1, donate_argnums=0)(x).shape == x.shape


def test_scan_split_transpose_gives_the_same_gradient():
    stack = nnx.vmap(lambda c: nnx.Linear(3, 3, ctx=c), axis_size=4)(nnx.context(0))

    def loss(stack, split):
        f = nnx.scan(lambda x, l: jnp.tanh(l(x)), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, _split_transpose=split)
        return f(jnp.ones((2, 3)), stack).sum()

    g1 = nnx.grad(lambda s: loss(s, False))(stack)
    g2 = nnx.grad(lambda s: loss(s, True))(stack)
    np.testing.assert_allclose(g1["kernel"], g2["kernel"], rtol=1e-5)


def test_vjp_and_jvp_has_aux_and_decorator_forms_like_jax():
    lin = nnx.Linear(2, 3, ctx=nnx.context(0))
    x = jnp.ones((1, 2))
    out, vjp_fn, aux = nnx.vjp(lambda m, x: (m(x).sum(), {"mean": m(x).mean()}), lin, x, has_aux=True)
    want_out, want_fn, want_aux = jax.vjp(lambda x: (lin(x).sum(), {"mean": lin(x).mean()}), x, has_aux=True)
    assert float(out) == float(want_out) and float(aux["mean"]) == float(want_aux["mean"])
    np.testing.assert_allclose(vjp_fn(jnp.ones(()))[1], want_fn(jnp.ones(()))[0], rtol=1e-6)
    out2, vjp_fn2 = nnx.vjp(lambda m, x: m(x).sum())(lin, x)
    assert float(out2) == float(out)
    t = jnp.full((1, 2), 0.5)
    y, dy, aux = nnx.jvp(lambda m, x: (m(x), 7.0), (lin, x), ({}, t), has_aux=True)
    wy, wdy = jax.jvp(lin, (x,), (t,))
    np.testing.assert_allclose(dy, wdy, rtol=1e-6)
    np.testing.assert_allclose(y, wy, rtol=1e-6)
    assert aux == 7.0
    y2, dy2 = nnx.jvp(lambda m, x: m(x))((lin, x), (jax.tree.map(jnp.zeros_like, lin), t))
    np.testing.assert_allclose(dy2, wdy, rtol=1e-6)


def test_make_jaxpr_matches_jax_on_the_pure_function():
    lin = nnx.Linear(2, 3, ctx=nnx.context(0))
    x = jnp.ones((1, 2))
    ours = nnx.make_jaxpr(lambda m, x, act: act(m(x)), static_argnums=2)(lin, x, jnp.tanh)
    want = jax.make_jaxpr(lambda b, k, x: jnp.tanh(x @ k + b))(lin.bias.value, lin.kernel.value, x)
    assert [v.aval for v in ours.jaxpr.invars] == [v.aval for v in want.jaxpr.invars]
    assert [e.primitive.name for e in ours.jaxpr.eqns][-1] == "tanh"
    np.testing.assert_allclose(jax.core.eval_jaxpr(ours.jaxpr, ours.consts, lin.bias.value, lin.kernel.value, x)[0], jnp.tanh(lin(x)), rtol=1e-6)


def test_mode_arguments_are_accepted_everywhere():
    v = nnx.Variable(jnp.ones(()))
    for kw in ({"graph": False}, {"graph_updates": False}, {"graph": True, "graph_updates": True}):
        nnx.cond(True, lambda v: None, lambda v: None, v, **kw)
        nnx.switch(0, [lambda v: None], v, **kw)
        nnx.while_loop(lambda v: v.value < 0, lambda v: v, v, **kw)
        nnx.fori_loop(0, 1, lambda i, v: v, v, **kw)
        nnx.remat(lambda v: v.value, **kw)(v)
        nnx.eval_shape(lambda v: v.value, v, **kw)
    with pytest.raises(TypeError, match="graph"):
        nnx.cond(True, lambda v: None, lambda v: None, v, graph="yes")
