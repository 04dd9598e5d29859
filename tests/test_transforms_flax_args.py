"""Transforms accept flax.nnx's arguments (issue 8, item 2).

StateAxes / StateSharding / DiffState / split_rngs / graph= / graph_updates= /
decorator-factory grad, each in flax's spelling, nnxlite's spelling, and
against flax itself where the numbers can be compared (flax skipped when not
installed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import random

import nnxlite as nnx


def _flax():
    return pytest.importorskip("flax.nnx")


def _weights_class(lib):
    class Count(lib.Variable):
        pass

    class Weights(lib.Module):
        def __init__(self, kernel, bias, count):
            self.kernel, self.bias = lib.Param(kernel), lib.Param(bias)
            self.count = Count(count)

    return Count, Weights


def _stateful_dot(weights, x):
    assert weights.kernel.ndim == 2 and x.ndim == 1
    weights.count.value = weights.count.value + 1
    return x @ weights.kernel + weights.bias


def _state_axes_run(lib, spec_of):
    Count, Weights = _weights_class(lib)
    w = Weights(random.uniform(random.key(0), (10, 2, 3)), jnp.zeros((10, 3)), jnp.array(0))
    x = random.normal(random.key(1), (10, 2))
    y = lib.vmap(_stateful_dot, in_axes=(spec_of(lib, Count), 0), out_axes=1)(w, x)
    return np.asarray(y), int(w.count.value)


def test_state_axes_matches_dict_spec_and_flax():
    state_axes = lambda lib, Count: lib.StateAxes({lib.Param: 0, Count: None})  # noqa: E731
    dict_spec = lambda lib, Count: {lib.Param: 0, Count: None}  # noqa: E731
    y1, c1 = _state_axes_run(nnx, state_axes)
    y2, c2 = _state_axes_run(nnx, dict_spec)
    np.testing.assert_array_equal(y1, y2)
    assert y1.shape == (3, 10) and c1 == c2 == 1
    fnnx = _flax()
    y3, c3 = _state_axes_run(fnnx, state_axes)
    np.testing.assert_allclose(y1, y3, rtol=1e-6)
    assert c3 == 1


def test_state_axes_is_for_modules_as_in_flax():
    params = {"w": jnp.ones((4, 2))}
    with pytest.raises(ValueError, match="applies to modules only"):
        nnx.vmap(lambda p: p["w"].sum(), in_axes=(nnx.StateAxes({...: 0}),))(params)


def _noisy_weights(lib, seed):
    class Count(lib.Variable):
        pass

    class Weights(lib.Module):
        def __init__(self, kernel, bias, count, seed):
            self.kernel, self.bias = lib.Param(kernel), lib.Param(bias)
            self.count = Count(count)
            self.rngs = lib.Rngs(noise=seed)

    return Count, Weights(random.uniform(random.key(0), (2, 3)), jnp.zeros((3,)), jnp.array(0), seed)


def _noisy_dot(weights, x):
    weights.count.value = weights.count.value + 1
    y = x @ weights.kernel + weights.bias
    return y + random.normal(weights.rngs.noise(), y.shape)


@pytest.mark.parametrize("lib_name", ["nnxlite", "flax"])
def test_split_rngs_decorator_with_state_axes_as_in_flax_guide(lib_name):
    lib = nnx if lib_name == "nnxlite" else _flax()
    Count, weights = _noisy_weights(lib, 0)
    key_shape = weights.rngs.noise.key.shape
    state_axes = lib.StateAxes({lib.RngState: 0, (lib.Param, Count): None})

    @lib.split_rngs(splits=10)
    @lib.vmap(in_axes=(state_axes, 0))
    def noisy(weights, x):
        return _noisy_dot(weights, x)

    x = random.normal(random.key(1), (10, 2))
    y1, y2 = noisy(weights, x), noisy(weights, x)
    assert y1.shape == (10, 3) and not jnp.allclose(y1, y2)
    assert len({tuple(np.asarray(r).round(5)) for r in y1 - (x @ weights.kernel.value)}) == 10  # per-lane noise
    assert weights.rngs.noise.key.shape == key_shape  # split only during the call
    assert int(weights.count.value) == 2


def test_split_streams_map_along_their_entry_axis_and_nnxlite_needs_no_split():
    Count, weights = _noisy_weights(nnx, 0)
    x = random.normal(random.key(1), (10, 2))
    with nnx.split_rngs(weights, splits=10):
        y = nnx.vmap(_noisy_dot, in_axes=({nnx.RngState: 0, ...: None}, 0))(weights, x)  # the dict spelling
        assert weights.rngs.noise.key.shape == (10,)
    assert y.shape == (10, 3) and weights.rngs.noise.key.shape == ()
    # nnxlite's own spelling needs no split at all: streams are split per lane by default.
    y = nnx.vmap(_noisy_dot, in_axes=({nnx.Param: None, Count: None}, 0))(weights, x)
    noise = np.asarray(y - (x @ weights.kernel.value))
    assert y.shape == (10, 3) and len({tuple(r.round(5)) for r in noise}) == 10


def test_split_rngs_context_manager_copy_and_only():
    rngs = nnx.Rngs(params=0, dropout=1)
    with nnx.split_rngs(rngs, splits=(2, 5), only="params") as backups:
        assert rngs.params.key.shape == (2, 5) and rngs.dropout.key.shape == ()
        assert rngs.params.count.shape == (2, 5) and len(backups) == 1
    assert rngs.params.key.shape == ()
    copy = nnx.split_rngs(rngs, splits=4, graph_updates=False)
    assert copy.params.key.shape == (4,) and rngs.params.key.shape == ()
    backups = nnx.split_rngs(rngs, splits=3)
    nnx.restore_rngs(backups)
    assert rngs.dropout.key.shape == ()
    with pytest.raises(ValueError, match="squeeze=True needs splits=1"):
        nnx.split_rngs(rngs, splits=3, squeeze=True)


# ------------------------------------------------------------------------------------
# grad: decorator factory and DiffState
# ------------------------------------------------------------------------------------
def _same_linear():
    ours = nnx.Linear(2, 3, ctx=nnx.context(0))
    return ours, {"kernel": ours.kernel.value, "bias": ours.bias.value}


def _loss(m, x):
    return jnp.sum(m(x) ** 2)


def test_grad_decorator_factory_and_diffstate_agree_with_wrt():
    model, _ = _same_linear()
    x = jnp.arange(4.0).reshape(2, 2)
    by_call = nnx.grad(_loss, argnums=(0, 1))(model, x)
    by_factory = nnx.grad(argnums=(0, 1))(_loss)(model, x)
    for a, b in zip(jax.tree.leaves(by_call), jax.tree.leaves(by_factory)):
        np.testing.assert_array_equal(a, b)
    only_bias = nnx.grad(_loss, argnums=nnx.DiffState(0, nnx.PathContains("bias")))(model, x)
    with_wrt = nnx.grad(_loss, wrt=nnx.PathContains("bias"))(model, x)
    assert only_bias.paths() == with_wrt.paths() == (("bias",),)
    np.testing.assert_array_equal(only_bias["bias"], with_wrt["bias"])
    (loss, (g_model, g_x)) = nnx.value_and_grad(argnums=(nnx.DiffState(0, nnx.Param), 1))(_loss)(model, x)
    assert g_x.shape == x.shape and g_model.paths() == (("bias",), ("kernel",))
    with pytest.raises(TypeError, match="argnums entries"):
        nnx.grad(_loss, argnums=("model",))(model, x)


def test_diffstate_gradients_match_flax():
    fnnx = _flax()
    model, values = _same_linear()
    theirs = fnnx.Linear(2, 3, rngs=fnnx.Rngs(0))
    theirs.kernel.value, theirs.bias.value = values["kernel"], values["bias"]
    x = jnp.arange(4.0).reshape(2, 2)
    ours_g = nnx.grad(_loss, argnums=nnx.DiffState(0, nnx.PathContains("kernel")))(model, x)
    flax_g = fnnx.grad(_loss, argnums=fnnx.DiffState(0, fnnx.PathContains("kernel")))(theirs, x)
    np.testing.assert_allclose(ours_g["kernel"], flax_g["kernel"].value, rtol=1e-6)
    ours_v, ours_g2 = nnx.value_and_grad(argnums=0)(_loss)(model, x)
    flax_v, flax_g2 = fnnx.value_and_grad(argnums=0)(_loss)(theirs, x)
    np.testing.assert_allclose(ours_v, flax_v, rtol=1e-6)
    np.testing.assert_allclose(ours_g2["bias"], flax_g2["bias"].value, rtol=1e-6)


# ------------------------------------------------------------------------------------
# graph= / graph_updates= / set_graph_mode: accepted, graph semantics kept
# ------------------------------------------------------------------------------------
class Tied(nnx.Module):
    def __init__(self):
        self.a = nnx.Linear(2, 2, ctx=nnx.context(0))
        self.b = self.a
        self.calls = nnx.Variable(jnp.zeros(()))

    def __call__(self, x):
        self.calls.value = self.calls.value + 1
        return self.b(self.a(x))


@pytest.mark.parametrize("graph, graph_updates", [(True, True), (False, False), (None, False)])
def test_jit_accepts_graph_modes_and_keeps_graph_semantics(graph, graph_updates):
    model = Tied()
    f = nnx.jit(lambda m, x: (m(x), m), graph=graph, graph_updates=graph_updates)
    y, out = f(model, jnp.ones((1, 2)))
    assert out is model and out.a is out.b and float(model.calls.value) == 1.0  # superset of tree mode
    v = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), graph=graph, graph_updates=graph_updates)
    assert v(model, jnp.ones((3, 1, 2))).shape == (3, 1, 2)
    s = nnx.scan(lambda c, x: (c + x, x), graph=graph, graph_updates=graph_updates)
    assert float(s(jnp.zeros(()), jnp.arange(3.0))[0]) == 3.0
    g = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum(), graph=graph, graph_updates=graph_updates)(model)
    if graph_updates is False:  # flax's tree/functional mode: the gradient has the module's shape
        assert isinstance(g, Tied) and g.a is g.b and g.a.kernel.shape == (2, 2)
    else:
        assert g.paths() == (("a", "bias"), ("a", "kernel"))


def test_set_graph_mode_and_updates_switches():
    assert nnx.set_graph_mode.current_value() is True
    with nnx.set_graph_mode(False), nnx.set_graph_updates(False):
        assert nnx.set_graph_mode.current_value() is False and nnx.set_graph_updates.current_value() is False
        model = Tied()
        nnx.jit(lambda m: m(jnp.ones((1, 2))))(model)
        assert float(model.calls.value) == 1.0
    assert nnx.set_graph_mode.current_value() is True and nnx.set_graph_updates.current_value() is True

    @nnx.set_graph_mode(False)
    def inside():
        return nnx.set_graph_mode.current_value()

    assert inside() is False and nnx.set_graph_mode.current_value() is True
    with pytest.raises(TypeError, match=r"nnx.jit\(graph=...\)"):
        nnx.jit(lambda m: m, graph="tree")


def test_flax_exposes_the_same_switches():
    fnnx = _flax()
    for name in ("set_graph_mode", "set_graph_updates", "split_rngs", "restore_rngs", "StateAxes", "StateSharding", "DiffState"):
        assert hasattr(fnnx, name) and hasattr(nnx, name), name


def test_state_sharding_matches_dict_spec():
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.NamedSharding(mesh, jax.sharding.PartitionSpec())
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    x = jnp.ones((1, 2))
    a = nnx.jit(lambda m, x: m(x), in_shardings=(nnx.StateSharding({nnx.Param: sharding}), None))(model, x)
    b = nnx.jit(lambda m, x: m(x), in_shardings=({nnx.Param: sharding}, None))(model, x)
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------
# One object, one layout: conflicting axes raise
# ------------------------------------------------------------------------------------
def test_conflicting_in_axes_for_one_module_raise():
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    stacked = nnx.vmap(lambda c: nnx.Linear(2, 2, ctx=c), axis_size=2)(nnx.context(0))
    with pytest.raises(ValueError, match=r"Inconsistent aliasing detected.*argument 0 at .*: 0, argument 1 at .*: 1"):
        nnx.vmap(lambda a, b: a.kernel + b.kernel, in_axes=(0, 1))(stacked, stacked)
    seq = nnx.Sequence([stacked])
    with pytest.raises(ValueError, match="Inconsistent aliasing detected.*argument 1 at"):
        nnx.vmap(lambda s, l: l.kernel, in_axes=(0, None))(seq, stacked)
    # The same axis from both entries is fine.
    out = nnx.vmap(lambda a, b: a.kernel + b.kernel, in_axes=(0, 0))(stacked, stacked)
    assert out.shape == (2, 2, 2)
    assert nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(model, jnp.ones((3, 1, 2))).shape == (3, 1, 2)


def test_out_axes_that_disagree_with_in_axes_for_a_returned_input_raise():
    stacked = nnx.vmap(lambda c: nnx.Linear(2, 2, ctx=c), axis_size=2)(nnx.context(0))
    same = nnx.vmap(lambda m: m, in_axes=0, out_axes=0)(stacked)
    assert same is stacked
    with pytest.raises(ValueError, match=r"returned Linear is an input.*axis 1 instead of 0"):
        nnx.vmap(lambda m: m, in_axes=0, out_axes=1)(stacked)
