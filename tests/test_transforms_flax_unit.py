"""Lifted transforms behave as flax.nnx's own unit tests (tests/nnx/transforms_test.py) expect.

Each test runs the same program under nnxlite and, when installed, under
flax.nnx (the ``lib`` fixture), and checks the numbers against a plain-JAX
formula: keywords bound to ``in_axes`` positions, ``nnx.StateAxes`` as
``out_axes``, per-path axis/sharding tables from ``nnx.prefix``, Variables
holding pytrees (capture buffers) under ``scan``, ``in_shardings`` that skip
static arguments, and ``out_shardings`` for returned modules.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite


@pytest.fixture(params=["nnxlite", "flax"])
def lib(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    return nnxlite


def _value(v):
    return np.asarray(v[...])


def test_vmap_binds_keywords_to_their_in_axes_position(lib):
    w = jnp.arange(3.0)
    xs = jnp.arange(12.0).reshape(4, 3)
    f = lib.vmap(lambda w, x: w @ x, in_axes=(None, 0))
    np.testing.assert_allclose(f(w, x=xs), xs @ w)


def test_vmap_decorated_init_called_with_keywords(lib):
    axes = lib.StateAxes({(lib.Param, lib.RngState): 0, ...: None})

    class Stack(lib.Module):
        @lib.vmap(in_axes=(axes, 0))
        def __init__(self, key):
            self.linear = lib.Linear(3, 3, rngs=lib.Rngs(key))
            self.node = lib.Variable(jnp.ones((2,)))

    keys = jax.random.split(jax.random.key(0), 5)
    stack = Stack(key=keys)
    assert stack.linear.kernel.shape == (5, 3, 3)
    assert stack.node.shape == (2,)  # broadcast: ... -> None
    assert not np.allclose(_value(stack.linear.kernel)[0], _value(stack.linear.kernel)[1])


def test_vmap_state_axes_as_out_axes(lib):
    axes = lib.StateAxes({(lib.Param, lib.RngState): 0, ...: None})

    @lib.vmap(in_axes=(axes,), out_axes=axes)
    def create(rngs):
        return lib.Linear(3, 2, rngs=rngs)

    layer = create(lib.Rngs(0).split(4))
    assert layer.kernel.shape == (4, 3, 2)
    kernels = _value(layer.kernel)
    assert not np.allclose(kernels[0], kernels[1])

    @lib.vmap(in_axes=(axes, 0))
    def forward(layer, x):
        return layer(x)

    x = jnp.ones((4, 1, 3))
    expected = np.einsum("lbi,lio->lbo", np.asarray(x), kernels) + _value(layer.bias)[:, None, :]
    np.testing.assert_allclose(forward(layer, x), expected, rtol=1e-5)


def test_vmap_state_axes_out_axes_on_arrays_is_an_error():
    axes = nnxlite.StateAxes({nnxlite.Param: 0})
    with pytest.raises(ValueError, match="applies to modules"):
        nnxlite.vmap(lambda x: x * 2, out_axes=axes)(jnp.ones(3))


class _Scaled:
    """A module with a stacked kernel and an unstacked step counter."""

    @staticmethod
    def make(lib):
        class Scaled(lib.Module):
            def __init__(self):
                self.kernel = lib.Param(jnp.arange(12.0).reshape(4, 3))
                self.steps = lib.BatchStat(jnp.zeros(()))

            def __call__(self, x):
                return self.kernel * x

        return Scaled()


def test_vmap_prefix_table_as_in_axes_entry(lib):
    model = _Scaled.make(lib)
    axes = lib.prefix(model, {lib.Param: 0, ...: None})
    # flax takes nnx.prefix tables in its functional mode (graph_updates=False); nnxlite in every mode
    out = lib.vmap(lambda m, x: m(x), in_axes=(axes, 0), graph_updates=False)(model, jnp.arange(4.0))
    np.testing.assert_allclose(out, np.arange(12.0).reshape(4, 3) * np.arange(4.0)[:, None])


def test_vmap_prefix_table_of_several_objects_as_out_axes(lib):
    dummy = lib.eval_shape(lambda: lib.Linear(3, 2, rngs=lib.Rngs(0)))
    (layer_axes,) = lib.prefix((dummy,), {lib.Param: 0, ...: None})

    @lib.vmap(in_axes=0, out_axes=layer_axes, graph_updates=False)
    def create(key):
        return lib.Linear(3, 2, rngs=lib.Rngs(key))

    layer = create(jax.random.split(jax.random.key(1), 3))
    assert layer.kernel.shape == (3, 3, 2) and layer.bias.shape == (3, 2)


def test_scan_maps_capture_buffers_that_hold_pytrees(lib):
    axes = lib.StateAxes({(lib.Param, lib.Intermediate): 0, ...: None})

    class Block(lib.Module):
        def __init__(self, key):
            self.linear = lib.Linear(3, 3, rngs=lib.Rngs(key))

        def __call__(self, x):
            y = self.linear(x)
            self.sow(lib.Intermediate, "h", y)
            return y

    blocks = lib.vmap(Block, in_axes=0)(jax.random.split(jax.random.key(0), 5))
    forward = lib.scan(lambda b, x: (b(x), None), in_axes=(axes, lib.Carry))
    (y, _), inter = lib.capture(forward, lib.Intermediate)(blocks, jnp.ones((1, 3)))
    # the same chain by hand
    h = np.ones((1, 3))
    kernels, biases = _value(blocks.linear.kernel), _value(blocks.linear.bias)
    hs = []
    for k, b in zip(kernels, biases):
        h = h @ k + b
        hs.append(h)
    np.testing.assert_allclose(y, h, rtol=1e-5)
    stacked = inter["linear"]["h"][0] if "linear" in inter else inter["h"][0]
    np.testing.assert_allclose(stacked, np.stack(hs), rtol=1e-5)


def test_vmap_maps_a_variable_holding_a_dict(lib):
    v = lib.Variable({"a": jnp.arange(6.0).reshape(3, 2)})
    out = lib.vmap(lambda v: v.get_value()["a"].sum(), in_axes=0)(v)
    np.testing.assert_allclose(out, np.arange(6.0).reshape(3, 2).sum(1))


def _mesh():
    return jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))


@pytest.mark.parametrize("statics", [{"static_argnums": 2}, {"static_argnames": "use_relu"}])
def test_jit_in_shardings_have_no_entry_for_static_arguments(lib, statics):
    sharding = jax.sharding.NamedSharding(_mesh(), jax.sharding.PartitionSpec("data"))

    def fn(x, scale, use_relu):
        y = x * scale
        return (jnp.maximum(y, 0) if use_relu else y).sum()

    f = lib.jit(fn, in_shardings=(sharding, None), **statics)
    x = jnp.linspace(-1.0, 1.0, 16).reshape(4, 4)
    np.testing.assert_allclose(f(x, 0.5, True), np.maximum(np.asarray(x) * 0.5, 0).sum(), rtol=1e-6)
    np.testing.assert_allclose(f(x, 0.5, False), np.asarray(x).sum() * 0.5, atol=1e-6)


def test_jit_out_shardings_for_returned_modules(lib):
    mesh = _mesh()
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    abstract = lib.eval_shape(lambda: lib.Linear(4, 4, rngs=lib.Rngs(0)))
    s1, s2 = lib.prefix((abstract, abstract), {...: sharding})

    @lib.jit(out_shardings=(s1, s2), graph_updates=False)
    def make():
        m = lib.Linear(4, 4, rngs=lib.Rngs(0))
        return m, m

    with jax.set_mesh(mesh):
        m1, m2 = make()
    assert m1 is m2
    assert m1.kernel[...].sharding == sharding
    np.testing.assert_allclose(_value(m1.kernel), _value(lib.Linear(4, 4, rngs=lib.Rngs(0)).kernel))


def test_jit_out_shardings_state_sharding_and_arrays():
    mesh = _mesh()
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    spec = nnxlite.StateSharding({nnxlite.Param: sharding})
    f = nnxlite.jit(lambda: (nnxlite.Linear(2, 2, rngs=nnxlite.Rngs(0)), jnp.ones(2)), out_shardings=(spec, sharding))
    m, y = f()
    assert m.kernel[...].sharding == sharding and y.sharding == sharding
    with pytest.raises(ValueError, match="not a module"):
        nnxlite.jit(lambda: jnp.ones(2), out_shardings=spec)()


# ----------------------------------------------------------------------------------
# grad / vjp in flax's tree (functional) mode, custom_vjp
# ----------------------------------------------------------------------------------
def _mse_grads(kernel, bias, x, y):
    def loss(k, b):
        return jnp.mean((x @ k + b - y) ** 2)

    return jax.grad(loss, argnums=(0, 1))(kernel, bias)


@pytest.mark.parametrize("mode", [{"graph_updates": False}, {"graph": False}])
def test_grad_in_tree_mode_returns_the_module_shape(lib, mode):
    m = lib.Linear(2, 3, rngs=lib.Rngs(0))
    x, y = jnp.arange(4.0).reshape(2, 2), jnp.ones((2, 3))
    grads = lib.grad(lambda m, x, y: jnp.mean((m(x) - y) ** 2), **mode)(m, x, y)
    assert isinstance(grads, type(m))
    gk, gb = _mse_grads(_value(m.kernel), _value(m.bias), x, y)
    np.testing.assert_allclose(_value(grads.kernel), gk, rtol=1e-5)
    np.testing.assert_allclose(_value(grads.bias), gb, rtol=1e-5)


def test_grad_in_graph_mode_still_returns_a_state(lib):
    m = lib.Linear(2, 3, rngs=lib.Rngs(0))
    grads = lib.grad(lambda m: m.kernel[...].sum())(m)
    assert isinstance(grads, lib.State)


def test_tree_mode_grads_keep_shared_references_and_zero_the_rest():
    class Tied(nnxlite.Module):
        def __init__(self):
            self.a = nnxlite.Linear(2, 2, rngs=nnxlite.Rngs(0))
            self.b = self.a
            self.steps = nnxlite.BatchStat(jnp.ones(()))

    m = Tied()
    grads = nnxlite.grad(lambda m: m.a.kernel[...].sum() + m.b.kernel[...].sum(), graph_updates=False)(m)
    assert grads.a is grads.b and grads.a is not m.a
    np.testing.assert_allclose(_value(grads.a.kernel), 2 * np.ones((2, 2)))
    np.testing.assert_allclose(_value(grads.steps), 0.0)  # not differentiated (wrt=nnx.Param)


def test_vjp_in_tree_mode_returns_the_module_shape(lib):
    m = lib.Linear(3, 1, rngs=lib.Rngs(0))
    x = jnp.array([[4.0, 5.0, 6.0]])
    out, vjp_fn = lib.vjp(lambda m, x: m(x).sum(), m, x, graph_updates=False)
    g_m, g_x = vjp_fn(jnp.ones_like(out))
    assert isinstance(g_m, type(m))
    np.testing.assert_allclose(_value(g_m.kernel), np.asarray(x).T)
    np.testing.assert_allclose(g_x, _value(m.kernel).T)


def _foo(lib):
    class Foo(lib.Module):
        def __init__(self):
            self.x = lib.Param(jnp.array(1.0))
            self.y = lib.Param(jnp.array(2.0))
            self.z = 0

    return Foo()


def _sin_prod_grads():
    return jax.grad(lambda x, y: jnp.sin(x) * y, argnums=(0, 1))(1.0, 2.0)


def test_custom_vjp_plain_attribute_changes_dropped_in_functional_mode(lib):
    @lib.custom_vjp(graph_updates=False)
    def f(m):
        m.z += 1
        return jnp.sin(m.x[...]) * m.y[...]

    def f_fwd(m):
        return f(m), (jnp.cos(m.x[...]), jnp.sin(m.x[...]), m)

    def f_bwd(res, out_g):
        cos_x, sin_x, m = res
        m_g = lib.clone(m)
        m_g.x[...] = cos_x * out_g * m.y[...]
        m_g.y[...] = sin_x * out_g
        return (m_g,)

    f.defvjp(f_fwd, f_bwd)
    m = _foo(lib)
    grads = lib.grad(f, graph_updates=False)(m)
    assert m.z == 0  # flax's functional mode: edits of plain attributes do not come out
    gx, gy = _sin_prod_grads()
    np.testing.assert_allclose(_value(grads.x), gx, rtol=1e-6)
    np.testing.assert_allclose(_value(grads.y), gy, rtol=1e-6)


def test_custom_vjp_plain_attribute_changes_come_out_in_graph_updates_mode():
    nnx = nnxlite

    @nnx.custom_vjp
    def f(m):
        m.z += 1
        return jnp.sin(m.x[...]) * m.y[...]

    def f_fwd(m):
        return f(m), (jnp.cos(m.x[...]), jnp.sin(m.x[...]), m.y[...])

    def f_bwd(res, g):
        (m_g,), out_g = g
        cos_x, sin_x, y = res
        m_g["x"] = cos_x * out_g * y
        m_g["y"] = sin_x * out_g
        return (m_g,)

    f.defvjp(f_fwd, f_bwd)
    m = _foo(nnx)
    grads = nnx.grad(f, argnums=nnx.DiffState(0, ...))(m)
    assert m.z == 1  # as flax.nnx with graph_updates=True
    gx, gy = _sin_prod_grads()
    np.testing.assert_allclose(_value(grads["x"]), gx, rtol=1e-6)
    np.testing.assert_allclose(_value(grads["y"]), gy, rtol=1e-6)


def test_custom_vjp_int_nondiff_argnum_may_hold_a_variable(lib):
    state = lib.BatchStat(jnp.array(0.0))
    seen = []

    @lib.custom_vjp(nondiff_argnums=(1,), graph_updates=False)
    def f(w, state):
        state[...] = jnp.array(-1.0)
        return w * 3.0

    def f_fwd(w, state):
        return f(w, state), w

    def f_bwd(state, res, g):
        seen.append(state)
        return (g * 3.0,)

    f.defvjp(f_fwd, f_bwd)
    np.testing.assert_allclose(f(jnp.array(2.0), state), 6.0)
    assert float(state[...]) == -1.0
    np.testing.assert_allclose(lib.grad(lambda w, s: f(w, s), graph_updates=False)(jnp.array(2.0), state), 3.0)
    assert len(seen) == 1


# ----------------------------------------------------------------------------------
# shard_map with flax's functional specs; one object, one layout
# ----------------------------------------------------------------------------------
def test_shard_map_state_of_specs_for_a_state_argument(lib):
    mesh = _mesh()
    P = jax.sharding.PartitionSpec
    m = lib.Linear(4, 2, rngs=lib.Rngs(0))
    graphdef, state = lib.split(m)
    specs = lib.State({"kernel": P(None, "data"), "bias": P()})
    x = jnp.arange(8.0).reshape(2, 4)

    @lib.shard_map(mesh=mesh, in_specs=(specs, P()), out_specs=P(None, "data"), graph_updates=False)
    def f(s, x):
        return lib.merge(graphdef, s)(x)

    np.testing.assert_allclose(f(state, x), np.asarray(x) @ _value(m.kernel) + _value(m.bias), rtol=1e-5)


def test_shard_map_conflicting_specs_for_one_variable_raise():
    P = jax.sharding.PartitionSpec
    v = nnxlite.Param(jnp.arange(4.0))
    f = nnxlite.shard_map(lambda a, b: a[...] + b[...], mesh=_mesh(), in_specs=(P(), P("data")), out_specs=P())
    with pytest.raises(ValueError, match=r"Inconsistent aliasing detected.*argument 0 .*P\(\).*argument 1 .*P\('data',\)"):
        f(v, v)


@pytest.mark.parametrize("transform", ["vmap", "scan"])
def test_conflicting_axes_for_one_variable_name_both(transform):
    v = nnxlite.Param(jnp.arange(3.0))
    if transform == "vmap":
        f = nnxlite.vmap(lambda a, b: a[...] + b[...], in_axes=(0, None))
        pattern = r"Inconsistent aliasing detected: the Param .*argument 0 at <root>: 0, argument 1 at <root>: None"
    else:
        f = nnxlite.scan(lambda c, a, b: (c, a[...] + b[...]), in_axes=(nnxlite.Carry, 0, nnxlite.Carry))
        pattern = r"Inconsistent aliasing detected: the Param .*different axes: .*: 0, .*: nnx.Carry"
    args = (v, v) if transform == "vmap" else (jnp.zeros(()), v, v)
    with pytest.raises(ValueError, match=pattern):
        f(*args)


# ----------------------------------------------------------------------------------
# loops: what flax refuses, nnxlite refuses too
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("loop", ["while_loop", "fori_loop"])
def test_loop_body_replacing_a_variable_raises(lib, loop):
    def body(val):
        m, c = val
        m.kernel = lib.Param(jnp.zeros_like(m.kernel[...]))
        return m, c - 1.0

    if loop == "fori_loop" and lib is not nnxlite:
        pytest.skip("flax checks this in while_loop only")
    m = lib.Linear(2, 2, rngs=lib.Rngs(0))
    with pytest.raises(ValueError):
        if loop == "while_loop":
            lib.while_loop(lambda val: val[1] > 0, body, (m, 2.0))
        else:
            lib.fori_loop(0, 2, lambda i, val: body(val), (m, 2.0))


def test_loop_with_plain_array_attribute_still_runs():
    class Acc(nnxlite.Module):
        def __init__(self):
            self.total = jnp.zeros(())  # a plain array attribute is state too (flax 0.12)

    def body(i, acc):
        acc.total = acc.total + i
        return acc

    acc = nnxlite.fori_loop(0, 4, body, Acc())
    assert float(acc.total) == 6.0


def test_scan_carry_must_keep_its_objects(lib):
    count = lib.Variable(jnp.array(0))

    @lib.scan(graph_updates=False)
    def f(count, x):
        return lib.Variable(count[...] + 1), x

    with pytest.raises(ValueError, match="Carry references must be the same|Variable identity must be preserved"):
        f(count, jnp.arange(3))


def test_scan_carry_in_and_out_axes_go_together(lib):
    with pytest.raises(ValueError, match="If one of in_axes or out_axes has Carry"):
        lib.scan(lambda a, b: (a, b), in_axes=(lib.Carry, 0), out_axes=0)
    with pytest.raises(ValueError, match="exactly one argument"):
        lib.scan(lambda a, b: (a, b), in_axes=lib.Carry, out_axes=lib.Carry, length=2)(jnp.zeros(()), 0)
    total = lib.scan(lambda c, x: (c + x, x), in_axes=(lib.Carry, 0), out_axes=(lib.Carry, 0))
    c, ys = total(jnp.zeros(()), jnp.arange(4.0))
    assert float(c) == 6.0 and ys.tolist() == [0.0, 1.0, 2.0, 3.0]
