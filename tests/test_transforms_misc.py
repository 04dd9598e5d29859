"""nnx.remat, nnx.cond/switch, nnx.eval_shape, and tracer-leak errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlite as nnx


def test_remat_gradients_and_updates_match_plain():
    model = nnx.BatchNorm(3, ctx=nnx.context(0))
    twin = nnx.clone(model)
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
    block = nnx.remat(lambda m, x: jnp.sin(m(x)))
    g = nnx.grad(lambda m: block(m, x).sum())(model)
    g_ref = nnx.grad(lambda m: jnp.sin(m(x)).sum())(twin)
    for p in ("scale", "bias"):
        np.testing.assert_allclose(g[p], g_ref[p], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.mean.value, twin.mean.value, rtol=1e-6)
    text = jax.jit(lambda s: nnx.grad(lambda m: block(m, x).sum())(nnx.merge(nnx.graphdef(model), s))).lower(
        nnx.state(model)
    ).as_text()
    assert "checkpoint" in text or "remat" in text or "optimization_barrier" in text


def test_remat_static_argnums_and_new_module():
    f = nnx.remat(lambda n, x: nnx.Linear(n, 2, ctx=nnx.context(0))(x), static_argnums=0)
    assert f(3, jnp.ones((1, 3))).shape == (1, 2)
    make = nnx.remat(lambda: nnx.Linear(2, 2, ctx=nnx.context(0)))
    assert isinstance(make(), nnx.Linear)


def test_cond_writes_back_the_taken_branch():
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    before = np.asarray(model.bias.value)

    def up(m, d):
        m.bias.value = m.bias.value + d
        return m

    def down(m, d):
        m.bias.value = m.bias.value - d
        return m

    out = nnx.cond(jnp.array(True), up, down, model, 1.0)
    assert out is model
    np.testing.assert_allclose(model.bias.value, before + 1)
    step = nnx.jit(lambda flag, m: nnx.cond(flag, up, down, m, 2.0))
    step(jnp.array(False), model)
    np.testing.assert_allclose(model.bias.value, before - 1)


def test_cond_structure_mismatch_is_explained():
    m = nnx.Linear(2, 2, ctx=nnx.context(0))

    def grow(m):
        m.extra = nnx.Param(jnp.ones(()))

    with pytest.raises(ValueError, match="branches left the modules in different structures"):
        nnx.cond(jnp.array(True), grow, lambda m: None, m)


def test_switch_picks_a_branch():
    v = nnx.Variable(jnp.ones(()))
    branches = [lambda v, k=k: setattr(v, "value", v.value * k) for k in (2.0, 3.0, 5.0)]
    nnx.switch(1, branches, v)
    nnx.jit(lambda i, v: nnx.switch(i, branches, v))(jnp.array(2), v)
    assert float(v.value) == 15.0


def test_eval_shape_builds_abstract_modules_without_touching_inputs():
    class Big(nnx.Module):
        def __init__(self, ctx):
            self.a = nnx.Linear(512, 1024, ctx=ctx)
            self.b = nnx.BatchNorm(1024, ctx=ctx)

    ctx = nnx.context(0)
    abstract = nnx.eval_shape(lambda c: Big(c), ctx)
    assert isinstance(abstract.a.kernel.value, jax.ShapeDtypeStruct)
    assert abstract.a.kernel.shape == (512, 1024) and abstract.b.mean.value.dtype == jnp.float32
    assert int(ctx.default.count.value) == 0  # inputs are not modified
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    out = nnx.eval_shape(lambda m, x: (m, m(x)), model, jnp.ones((4, 2)))
    assert out[0] is model and out[1].shape == (4, 3)
    with pytest.raises(ValueError, match="eval_shape does not modify its inputs"):
        nnx.eval_shape(lambda m: setattr(m, "extra", nnx.Param(jnp.ones(()))), model)


# -- tracer leaks -------------------------------------------------------------------------------
def test_leaked_tracer_read_outside_gives_clear_error():
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    nnx.state(model)  # any split/transform records path hints

    @jax.jit
    def bad(x):
        model.kernel.value = model.kernel.value * 2  # closed over, not an argument
        return model(x)

    bad(jnp.ones((1, 2)))
    with pytest.raises(nnx.TracerLeakError, match=r"Param Variable at kernel of a Linear") as info:
        model(jnp.ones((1, 2)))
    assert "pass the module to an nnxlite transform" in str(info.value)
    assert isinstance(info.value, jax.errors.UnexpectedTracerError)
    with pytest.raises(nnx.TracerLeakError):
        model.kernel.value
    with pytest.raises(nnx.TracerLeakError):
        model.kernel + 1
    # nnx.jit's fast path hands the values to jax without looking; the failure is still explained.
    f = nnx.jit(lambda m, x: m(x))
    with pytest.raises(nnx.TracerLeakError, match="kernel"):
        f(model, jnp.ones((1, 2)))
    model.kernel.value = jnp.ones((2, 3))  # repaired
    assert f(model, jnp.ones((1, 2))).shape == (1, 3)


def test_leak_through_the_fast_path_names_the_path():
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    step = nnx.jit(lambda m, o, x: o.update(nnx.grad(lambda m: m(x).sum())(m)))
    x = jnp.ones((1, 2))
    step(model, optimizer, x)
    step(model, optimizer, x)  # fast path now
    jax.vmap(lambda b: setattr(model.bias, "value", b))(jnp.ones((3, 2)))  # leak a BatchTracer
    with pytest.raises(nnx.TracerLeakError, match="bias"):
        step(model, optimizer, x)


def test_live_tracers_are_not_errors():
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    x = jnp.ones((3, 1, 2))

    def uses_closure(x):
        # closed-over concrete model read inside various live traces
        return model(x).sum()

    jax.jit(uses_closure)(x[0])
    jax.vmap(uses_closure)(x)
    jax.grad(uses_closure)(x[0])
    jax.lax.scan(lambda c, xi: (c + uses_closure(xi), None), 0.0, x)

    @jax.jit
    def inner_reads_outer_tracer(w):
        v = nnx.Param(w)  # a Variable holding a live tracer of this jit
        return jax.lax.scan(lambda c, _: (c + v.value.sum(), None), 0.0, jnp.arange(2))[0]

    assert float(inner_reads_outer_tracer(jnp.ones(2))) == 4.0
