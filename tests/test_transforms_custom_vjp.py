"""nnx.custom_vjp and nnx.checkify: against jax.custom_vjp / jax checkify on pure functions, and flax.nnx on modules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify as jcheckify

import nnxlite as nnx


# ---------------------------------------------------------------------------------------
# custom_vjp on pure functions: the same numbers and the same (deliberately wrong) gradient
# ---------------------------------------------------------------------------------------
def _fwd(x, y):
    return jnp.sin(x) * y, (jnp.cos(x), jnp.sin(x), y)


def _bwd(res, g):
    cos_x, sin_x, y = res
    return (3.0 * cos_x * y * g, -sin_x * g)  # not the true gradient: proves the rule is used


def _jax_f():
    f = jax.custom_vjp(lambda x, y: jnp.sin(x) * y)
    f.defvjp(_fwd, _bwd)
    return f


@pytest.mark.parametrize("simple", [False, True])
def test_pure_function_matches_jax_custom_vjp(simple):
    x, y = jnp.array([0.3, 1.2]), jnp.array([2.0, -1.0])
    if simple:
        f = nnx.custom_vjp(lambda x, y: jnp.sin(x) * y, graph_updates=False)
        f.defvjp(_fwd, _bwd)
    else:
        f = nnx.custom_vjp(lambda x, y: jnp.sin(x) * y)
        f.defvjp(_fwd, lambda res, g: _bwd(res, g[1]))  # g = (updates_g, out_g)
    ref = _jax_f()
    np.testing.assert_allclose(f(x, y), ref(x, y))
    loss = lambda fn: lambda x, y: jnp.sum(fn(x, y) ** 2)
    got = jax.grad(loss(f), argnums=(0, 1))(x, y)
    want = jax.grad(loss(ref), argnums=(0, 1))(x, y)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # ... and it is the custom rule, not the true derivative
    true = jax.grad(lambda x, y: jnp.sum((jnp.sin(x) * y) ** 2), argnums=1)(x, y)
    assert not np.allclose(got[1], true)
    np.testing.assert_allclose(jax.jit(jax.grad(loss(f)))(x, y), want[0], rtol=1e-6)


def test_updates_g_is_none_for_array_arguments():
    seen = {}

    @nnx.custom_vjp
    def f(x):
        return x * 2.0

    def bwd(res, g):
        seen["updates"], out_g = g
        return (out_g * 5.0,)

    f.defvjp(lambda x: (f(x), None), bwd)
    assert float(jax.grad(f)(1.0)) == 5.0
    assert seen["updates"] == (None,)


def test_int_nondiff_argnums_come_first_in_bwd_like_jax():
    def fwd(n, x):
        return x**n, x

    def bwd(n, x, g):
        return (n * 10.0 * g,)

    ref = jax.custom_vjp(lambda n, x: x**n, nondiff_argnums=(0,))
    ref.defvjp(fwd, bwd)
    f = nnx.custom_vjp(lambda n, x: x**n, nondiff_argnums=(0,))
    f.defvjp(fwd, lambda n, x, g: bwd(n, x, g[1]))
    assert float(jax.grad(f, argnums=1)(3, 2.0)) == float(jax.grad(ref, argnums=1)(3, 2.0)) == 30.0
    assert float(f(3, 2.0)) == 8.0


def test_keyword_arguments_become_positional():
    f = nnx.custom_vjp(lambda x, scale=1.0: x * scale)
    f.defvjp(lambda x, scale=1.0: (x * scale, scale), lambda s, g: (g[1] * s * 2, None))
    assert float(jax.grad(lambda x: f(x, scale=3.0))(1.0)) == 6.0


# ---------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------
class Foo(nnx.Module):
    def __init__(self, x, y):
        self.x = nnx.Param(jnp.asarray(x))
        self.y = nnx.Param(jnp.asarray(y))


def _module_f(scale=1.0):
    @nnx.custom_vjp
    def f(m):
        return jnp.sin(m.x) * m.y

    def fwd(m):
        return f(m), (jnp.cos(m.x), jnp.sin(m.x), m)

    def bwd(res, g):
        (m_g,), out_g = g
        cos_x, sin_x, m = res  # the residual module is rebuilt, with its values from fwd
        assert isinstance(m, Foo)
        m_g["x"] = scale * cos_x * out_g * m.y
        m_g["y"] = sin_x * out_g
        return (m_g,)

    f.defvjp(fwd, bwd)
    return f


def test_module_gradient_uses_the_rule():
    f = _module_f(scale=4.0)
    m = Foo(1.0, 2.0)
    grads = nnx.grad(f)(m)
    assert isinstance(grads, nnx.State)
    np.testing.assert_allclose(grads["x"], 4.0 * np.cos(1.0) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(grads["y"], np.sin(1.0), rtol=1e-6)
    np.testing.assert_allclose(f(m), np.sin(1.0) * 2.0, rtol=1e-6)
    jitted = nnx.jit(nnx.grad(f))(m)
    np.testing.assert_allclose(jitted["x"], grads["x"], rtol=1e-6)


def test_module_matches_flax_custom_vjp():
    fnnx = pytest.importorskip("flax.nnx")

    class FFoo(fnnx.Module):
        def __init__(self, x, y):
            self.x = fnnx.Param(jnp.asarray(x))
            self.y = fnnx.Param(jnp.asarray(y))

    @fnnx.custom_vjp
    def ff(m):
        return jnp.sin(m.x) * m.y

    def ffwd(m):
        return ff(m), (jnp.cos(m.x), jnp.sin(m.x), m)

    def fbwd(res, g):
        input_updates_g, out_g = g
        cos_x, sin_x, m = res
        (m_g,) = input_updates_g
        m_g = jax.tree.map(lambda x: x, m_g)
        m_g["x"][...] = 4.0 * cos_x * out_g * m.y
        m_g["y"][...] = sin_x * out_g
        return (m_g,)

    ff.defvjp(ffwd, fbwd)
    fm = FFoo(0.7, -1.5)
    want = fnnx.state(fnnx.grad(ff)(fm))
    got = nnx.grad(_module_f(scale=4.0))(Foo(0.7, -1.5))
    np.testing.assert_allclose(got["x"], want["x"][...], rtol=1e-6)
    np.testing.assert_allclose(got["y"], want["y"][...], rtol=1e-6)


def test_diffstate_selects_the_differentiable_state_like_flax():
    fnnx = pytest.importorskip("flax.nnx")
    x_only = nnx.PathContains("x")

    @nnx.custom_vjp(nondiff_argnums=(nnx.DiffState(0, x_only),))
    def f(m):
        return jnp.sin(m.x) * m.y

    seen = {}

    def bwd(res, g):
        (m_g,), out_g = g
        seen["updates_paths"] = m_g.paths()  # updates_g holds the whole module state
        cos_x, m = res
        return ({"x": cos_x * out_g * m.y},)  # only x has a tangent

    f.defvjp(lambda m: (f(m), (jnp.cos(m.x), m)), bwd)
    got = nnx.grad(f, argnums=nnx.DiffState(0, x_only))(Foo(1.0, 2.0))
    assert got.paths() == (("x",),)
    assert seen["updates_paths"] == (("x",), ("y",))

    class FFoo(fnnx.Module):
        def __init__(self):
            self.x = fnnx.Param(jnp.array(1.0))
            self.y = fnnx.Param(jnp.array(2.0))

    fx = fnnx.PathContains("x")

    @fnnx.custom_vjp(nondiff_argnums=(fnnx.DiffState(0, fx),))
    def ff(m):
        return jnp.sin(m.x) * m.y

    def fbwd(res, g):
        (m_g,), out_g = g
        cos_x, m = res
        m_g = jax.tree.map(lambda x: x, m_g)
        m_g.x[...] = cos_x * out_g * m.y
        del m_g["y"]
        return (m_g,)

    ff.defvjp(lambda m: (ff(m), (jnp.cos(m.x), m)), fbwd)
    want = fnnx.grad(ff, argnums=fnnx.DiffState(0, fx))(FFoo())
    np.testing.assert_allclose(got["x"], want["x"][...], rtol=1e-6)


def test_in_place_updates_come_out_and_their_cotangent_reaches_bwd():
    class Counter(nnx.Variable):
        pass

    class M(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.array(3.0))
            self.z = nnx.BatchStat(jnp.array(0.0))
            self.n = Counter(jnp.array(0))

    seen = {}

    @nnx.custom_vjp
    def f(m, x):
        m.z.value = m.w * 2.0  # an update with a cotangent
        m.n.value += 1  # integer state: comes out, zero (float0) tangent
        return m.w * x

    def fwd(m, x):
        return f(m, x), (m.w, x)

    def bwd(res, g):
        (m_g, x_none), out_g = g
        seen["z_ct"], seen["x_none"] = m_g["z"], x_none
        w, x = res
        return ({"w": x * out_g + 2.0 * m_g["z"]}, w * out_g)

    f.defvjp(fwd, bwd)
    m = M()
    assert float(f(m, 5.0)) == 15.0
    assert float(m.z.value) == 6.0 and int(m.n.value) == 1

    def loss(m, x):
        return f(m, x) + 10.0 * m.z.value

    g_m, g_x = nnx.grad(loss, argnums=(0, 1))(m, 5.0)
    assert float(seen["z_ct"]) == 10.0 and seen["x_none"] is None
    assert float(g_m["w"]) == 5.0 + 20.0 and float(g_x) == 3.0
    assert int(m.n.value) == 2 and float(m.z.value) == 6.0


def test_simple_convention_takes_a_module_tangent_and_updates_g():
    seen = {}

    @nnx.custom_vjp(graph_updates=False)
    def f(m):
        return jnp.sin(m.x) * m.y

    def bwd(res, g, *, updates_g):
        seen["updates_g"] = updates_g
        cos_x, sin_x, m = res
        m_g = nnx.clone(m)
        m_g.x.value = cos_x * g * m.y
        m_g.y.value = sin_x * g
        return (m_g,)

    f.defvjp(lambda m: (f(m), (jnp.cos(m.x), jnp.sin(m.x), m)), bwd)
    grads = nnx.grad(f)(Foo(1.0, 2.0))
    np.testing.assert_allclose(grads["x"], np.cos(1.0) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(grads["y"], np.sin(1.0), rtol=1e-6)
    assert isinstance(seen["updates_g"][0], nnx.State)
    with nnx.set_graph_updates(False):
        g = nnx.custom_vjp(lambda m: m.x * 1.0)
        g.defvjp(lambda m: (m.x * 1.0, None), lambda res, out_g: ({"x": out_g * 7.0},))
    assert float(nnx.grad(g)(Foo(1.0, 2.0))["x"]) == 7.0


def test_errors_are_clear():
    m = Foo(1.0, 2.0)
    f = nnx.custom_vjp(lambda m: m.x * 1.0)
    with pytest.raises(ValueError, match="defvjp"):
        f(m)
    f.defvjp(lambda m: (m.x * 1.0, None), lambda res, g: (1.0, 2.0))
    with pytest.raises(ValueError, match="one tangent per differentiable argument"):
        nnx.grad(f)(m)
    f.defvjp(lambda m: (m.x * 1.0, None), lambda res, g: ({"nope": 1.0},))
    with pytest.raises(ValueError, match=r"\('nope',\)"):
        nnx.grad(f)(m)
    # An int in nondiff_argnums may mark a module (flax allows it): no tangent, bwd gets it first.
    g = nnx.custom_vjp(lambda m, y: m.x * y, nondiff_argnums=(0,))
    g.defvjp(lambda m, y: (m.x * y, m.x), lambda m, res, g: (res * g[1],))  # g = (updates_g, out_g)
    assert float(jax.grad(lambda y: g(m, y))(3.0)) == 1.0
    with pytest.raises(ValueError, match="repeated"):
        nnx.custom_vjp(lambda m: m, nondiff_argnums=(0, nnx.DiffState(0, nnx.Param)))


# ---------------------------------------------------------------------------------------
# checkify
# ---------------------------------------------------------------------------------------
def test_checkify_pure_function_matches_jax():
    def f(x):
        jcheckify.check(jnp.all(x > 0), "x must be positive, got {x}", x=x[0])
        return jnp.log(x)

    for x in (jnp.array([1.0, 2.0]), jnp.array([-1.0, 2.0])):
        err, out = nnx.checkify(f)(x)
        want_err, want = jcheckify.checkify(f)(x)
        assert (err.get() is None) == (want_err.get() is None)
        if err.get() is not None:
            assert err.get().split(" (")[0] == want_err.get().split(" (")[0]
        np.testing.assert_allclose(out, want)
    err, _ = nnx.checkify(lambda x: jnp.log(x - 5.0), errors=jcheckify.float_checks)(jnp.ones(2))
    want_err, _ = jcheckify.checkify(lambda x: jnp.log(x - 5.0), errors=jcheckify.float_checks)(jnp.ones(2))
    assert err.get() == want_err.get() and err.get() is not None


def test_checkify_module_updates_come_out_even_when_a_check_fails():
    bn = nnx.BatchNorm(2, ctx=nnx.context(0))
    x = jnp.array([[1.0, 2.0], [3.0, 6.0]])

    def f(bn, x):
        jcheckify.check(jnp.all(x < 5), "too big")
        return bn(x)

    err, y = nnx.checkify(f)(bn, x)
    assert err.get().startswith("too big") and y.shape == (2, 2)
    np.testing.assert_allclose(bn.mean.value, 0.01 * x.mean(0), rtol=1e-6)
    with pytest.raises(jcheckify.JaxRuntimeError, match="too big"):
        err.throw()
    err, _ = nnx.checkify(nnx.jit(f))(bn, x / 10)
    assert err.get() is None


def test_checkify_matches_flax():
    fnnx = pytest.importorskip("flax.nnx")

    class FFoo(fnnx.Module):
        def __init__(self):
            self.a = fnnx.Param(jnp.inf)

    m = Foo(jnp.inf, 0.0)
    err, out = nnx.checkify(nnx.jit(lambda m: m.x + jnp.sin(m.x)), errors=jcheckify.float_checks)(m)
    ferr, fout = fnnx.checkify(fnnx.jit(lambda m: m.a + jnp.sin(m.a)), errors=jcheckify.float_checks)(FFoo())
    assert str(err) == str(ferr) == "Error(nan generated by primitive: sin.)"
    np.testing.assert_array_equal(out, fout)


def test_custom_vjp_composes_with_vmap_scan_jit_and_remat():
    @nnx.custom_vjp
    def f(m, x):
        return m(x)

    def bwd(res, g):
        (m_g, _), out_g = g
        m, x = res
        m_g["kernel"] = 2.0 * x.T @ out_g  # twice the true kernel gradient
        m_g["bias"] = out_g.sum(0)
        return (m_g, out_g @ m.kernel.value.T)

    f.defvjp(lambda m, x: (m(x), (m, x)), bwd)
    stack = nnx.vmap(lambda c: nnx.Linear(3, 3, ctx=c), axis_size=4)(nnx.context(0))
    x = jnp.ones((2, 3))
    true = nnx.grad(lambda s: nnx.vmap(lambda l, x: l(x), in_axes=(0, None))(s, x).sum())(stack)
    got = nnx.grad(lambda s: nnx.vmap(lambda l, x: f(l, x), in_axes=(0, None))(s, x).sum())(stack)
    np.testing.assert_allclose(got["kernel"], 2.0 * true["kernel"], rtol=1e-6)
    np.testing.assert_allclose(got["bias"], true["bias"], rtol=1e-6)
    scanned = nnx.grad(lambda s: nnx.scan(lambda c, l: f(l, c), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, s).sum())
    assert scanned(stack)["kernel"].shape == (4, 3, 3)
    lin = nnx.Linear(3, 3, ctx=nnx.context(1))
    want = 2.0 * nnx.grad(lambda m: m(x).sum())(lin)["kernel"]
    np.testing.assert_allclose(nnx.jit(nnx.grad(lambda m: f(m, x).sum()))(lin)["kernel"], want, rtol=1e-6)
    np.testing.assert_allclose(nnx.grad(lambda m: nnx.remat(f)(m, x).sum())(lin)["kernel"], want, rtol=1e-6)
