"""nnx.grad / nnx.value_and_grad against jax.grad, with module arguments in every position."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx


def test_grad_matches_jax_grad():
    model = nnx.Linear(3, 2, ctx=nnx.context(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))

    def loss(p):
        return jnp.sum(jnp.tanh(x @ p["kernel"] + p["bias"]) ** 2)

    g = nnx.grad(lambda m: jnp.sum(jnp.tanh(m(x)) ** 2))(model)
    want = jax.grad(loss)({"kernel": model.kernel.value, "bias": model.bias.value})
    np.testing.assert_allclose(g["kernel"], want["kernel"], rtol=1e-6)
    np.testing.assert_allclose(g["bias"], want["bias"], rtol=1e-6)
    assert isinstance(g, nnx.State) and g.paths() == (("bias",), ("kernel",))


def test_argnums_pytrees_and_arrays():
    enc = nnx.Linear(2, 2, ctx=nnx.context(0))
    dec = nnx.Linear(2, 1, ctx=nnx.context(1))
    x = jnp.ones((3, 2))

    def f(models, x, scale):
        return (models["dec"](models["enc"](x)) * scale).sum()

    (value, (g_models, g_x)) = nnx.value_and_grad(f, argnums=(0, 1))({"enc": enc, "dec": dec}, x, 2.0)
    assert set(g_models) == {"enc", "dec"} and isinstance(g_models["enc"], nnx.State)

    def pure(p, x):
        h = x @ p["ek"] + p["eb"]
        return ((h @ p["dk"] + p["db"]) * 2.0).sum()

    params = {"ek": enc.kernel.value, "eb": enc.bias.value, "dk": dec.kernel.value, "db": dec.bias.value}
    v_ref, (gp, gx) = jax.value_and_grad(pure, argnums=(0, 1))(params, x)
    np.testing.assert_allclose(value, v_ref, rtol=1e-6)
    np.testing.assert_allclose(g_models["enc"]["kernel"], gp["ek"], rtol=1e-6)
    np.testing.assert_allclose(g_models["dec"]["bias"], gp["db"], rtol=1e-6)
    np.testing.assert_allclose(g_x, gx, rtol=1e-6)


def test_wrt_filter_and_state_write_back():
    model = nnx.BatchNorm(2, ctx=nnx.context(0))
    x = jnp.arange(8.0).reshape(4, 2)
    g = nnx.grad(lambda m: m(x).sum(), wrt=nnx.All(nnx.Param, nnx.PathContains("scale")))(model)
    assert g.paths() == (("scale",),)
    assert float(model.mean.value[0]) != 0.0  # BatchNorm statistics were written back


def test_tied_weights_sum_gradients():
    class Tied(nnx.Module):
        def __init__(self):
            self.a = nnx.Param(jnp.ones(()))
            self.b = self.a

    m = Tied()
    g = nnx.grad(lambda m: 2 * m.a.value + 3 * m.b.value)(m)
    assert g.paths() == (("a",),) and float(g["a"]) == 5.0


def test_shared_between_arguments_goes_to_first_argnum():
    model = nnx.Linear(1, 1, ctx=nnx.context(0))

    class Holder(nnx.Module):
        def __init__(self, m):
            self.m = m
            self.w = nnx.Param(jnp.ones(()))

    h = Holder(model)
    g_model, g_holder = nnx.grad(lambda m, h: (h.m(jnp.ones((1, 1))) * h.w.value).sum(), argnums=(0, 1))(model, h)
    assert g_model.paths() == (("bias",), ("kernel",))
    assert g_holder.paths() == (("w",),)


def test_has_aux_with_modules_and_structure_change():
    model = nnx.Linear(2, 2, ctx=nnx.context(0))

    def f(m):
        m.seen = nnx.Intermediate(jnp.zeros(()))
        return m(jnp.ones((1, 2))).sum(), (m, nnx.Linear(2, 1, ctx=nnx.context(3)))

    (loss, (same, new)), g = nnx.value_and_grad(f, has_aux=True)(model)
    assert same is model and isinstance(new, nnx.Linear) and new is not model
    assert hasattr(model, "seen")
    grads, (same2, _) = nnx.grad(f, has_aux=True)(model)
    assert same2 is model and grads.paths() == (("bias",), ("kernel",))


def test_grad_errors():
    with pytest.raises(TypeError, match="positional argument"):
        nnx.grad(lambda m: 0.0, argnums=2)(nnx.Linear(1, 1, ctx=nnx.context(0)))
    with pytest.raises(TypeError, match="pair"):
        nnx.grad(lambda m: m.kernel.value.sum(), has_aux=True)(nnx.Linear(1, 1, ctx=nnx.context(0)))


def test_nnx_grad_temp_memory_matches_jax_grad():
    """flax #5116: nnx.grad inside jit must not need ~2x jax.grad's temporary memory."""
    import optax

    class MLP(nnx.Module):
        def __init__(self, ctx):
            self.layers = [nnx.Linear(256, 256, ctx=ctx) for _ in range(4)]

        def __call__(self, x):
            for layer in self.layers:
                x = jnp.tanh(layer(x))
            return x

    model = MLP(nnx.context(0))
    tx = optax.adam(1e-3)
    optimizer = nnx.Optimizer(model, tx)
    x = jnp.ones((64, 256))

    def step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda m: (m(x) ** 2).mean())(model)
        optimizer.update(grads)
        return loss

    params = {i: {"kernel": l.kernel.value, "bias": l.bias.value} for i, l in enumerate(model.layers)}

    def pure_step(params, opt_state, x):
        def loss_fn(p):
            h = x
            for i in range(4):
                h = jnp.tanh(h @ p[i]["kernel"] + p[i]["bias"])
            return (h**2).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    ours = nnx.jit(step).lower(model, optimizer, x).compile().memory_analysis()
    ref = jax.jit(pure_step).lower(params, tx.init(params), x).compile().memory_analysis()
    if ours is None or ref is None:
        pytest.skip("no memory analysis on this backend")
    assert ours.temp_size_in_bytes <= 1.05 * ref.temp_size_in_bytes + 4096


def test_variable_arguments_get_variable_gradients():
    # As in flax: a Variable passed directly is differentiated whatever its type (wrt and
    # DiffState filters choose among a *module's* Variables), and its gradient is a Variable.
    w = nnx.Param(jnp.arange(3.0))
    b = nnx.BatchStat(jnp.ones(3))
    gw, gb = nnx.grad(lambda w, b: (w.value**2 * b.value).sum(), argnums=(0, 1))(w, b)
    assert type(gw) is nnx.Param and type(gb) is nnx.BatchStat
    np.testing.assert_allclose(gw, 2 * jnp.arange(3.0))
    np.testing.assert_allclose(gb, jnp.arange(3.0) ** 2)
    g_all = nnx.grad(lambda b: (b.value * 3).sum(), wrt=...)(b)
    np.testing.assert_allclose(g_all, 3.0)
    none = nnx.grad(lambda b: (b.value * 3).sum(), argnums=nnx.DiffState(0, nnx.Param))(b)
    assert none is None  # an explicit filter that excludes it


# ------------------------------------------------------------------ vjp / jvp (issue 9)
def test_vjp_matches_jax_vjp_and_writes_back_updates():
    model = nnx.Linear(3, 2, ctx=nnx.context(0))
    calls = nnx.Variable(jnp.zeros(()))
    x = jnp.arange(6.0).reshape(2, 3)

    def f(model, calls, x):
        calls.value = calls.value + 1
        return jnp.tanh(model(x))

    y, vjp_fn = nnx.vjp(f, model, calls, x)
    ct = jnp.ones_like(y) * 0.5
    g_model, g_calls, g_x = vjp_fn(ct)
    ref_y, ref_fn = jax.vjp(lambda w, b, x: jnp.tanh(x @ w + b), model.kernel.value, model.bias.value, x)
    gw, gb, gx = ref_fn(ct)
    np.testing.assert_allclose(y, ref_y, rtol=1e-6)
    np.testing.assert_allclose(g_model["kernel"], gw, rtol=1e-5)
    np.testing.assert_allclose(g_model["bias"], gb, rtol=1e-5)
    np.testing.assert_allclose(g_x, gx, rtol=1e-5)
    assert g_calls is None  # a plain Variable is not a Param: no gradient asked for
    assert float(calls.value) == 1.0


def test_jvp_matches_jax_jvp_with_partial_module_tangents():
    model = nnx.Linear(3, 2, ctx=nnx.context(0))
    x = jnp.arange(6.0).reshape(2, 3)
    dw = jnp.full((3, 2), 0.1)
    dx = jnp.ones_like(x)
    y, dy = nnx.jvp(lambda m, x: jnp.sin(m(x)), (model, x), ({"kernel": dw}, dx))
    ref = jax.jvp(
        lambda w, b, x: jnp.sin(x @ w + b),
        (model.kernel.value, model.bias.value, x),
        (dw, jnp.zeros(2), dx),  # the bias tangent was left out: zero
    )
    np.testing.assert_allclose(y, ref[0], rtol=1e-6)
    np.testing.assert_allclose(dy, ref[1], rtol=1e-5)
    with pytest.raises(ValueError, match="not"):
        nnx.jvp(lambda m, x: m(x), (model, x), ({"nope": dw}, dx))
