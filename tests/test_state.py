"""State: flat-first pytree, nested view, conversions, filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx


def _model():
    model = nnx.Module()
    model.layers = [nnx.Linear(2, 2, ctx=nnx.context(0)), nnx.Linear(2, 3, ctx=nnx.context(1))]
    model.bn = nnx.BatchNorm(3, ctx=nnx.context(2))
    return model


def test_nested_access_and_assignment_write_through():
    state = nnx.state(_model())
    assert state["layers"][1]["kernel"].shape == (2, 3)
    assert state.layers[1].kernel.shape == (2, 3)  # attribute spelling
    state["layers"][0]["kernel"] = jnp.zeros((2, 2))
    assert float(jnp.abs(state.flat()[("layers", 0, "kernel")]).sum()) == 0.0
    state[("bn", "mean")] = jnp.ones(3)
    np.testing.assert_array_equal(state["bn"]["mean"], jnp.ones(3))


def test_canonical_order_ints_before_strings_and_sorted():
    st = nnx.State({"b": 1, "a": {10: 2, 2: 3}, 0: 4})
    assert st.paths() == ((0,), ("a", 2), ("a", 10), ("b",))


def test_tree_map_with_params_and_grads():
    model = _model()
    params = model.filter(nnx.Param)
    grads = jax.tree.map(jnp.ones_like, params)
    new = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    assert isinstance(new, nnx.State) and new.paths() == params.paths()
    np.testing.assert_allclose(new["bn"]["scale"], params["bn"]["scale"] - 0.5)


def test_pure_dict_roundtrip_and_replace_errors():
    state = nnx.state(_model())
    pure = state.to_pure_dict()
    assert set(pure) == {"layers", "bn"} and set(pure["layers"]) == {0, 1}
    doubled = jax.tree.map(lambda x: x * 2, pure)
    state.replace_by_pure_dict(doubled)
    np.testing.assert_allclose(state["bn"]["var"], 2 * jnp.ones(3))
    del doubled["bn"]["var"]
    doubled["bn"]["extra"] = 1
    before = state.leaves()
    with pytest.raises(ValueError, match=r"missing \(1\): bn/var[\s\S]*unexpected \(1\): bn/extra"):
        state.replace_by_pure_dict(doubled)
    assert all(a is b for a, b in zip(before, state.leaves()))


def test_filter_split_merge():
    state = nnx.state(_model())
    params, stats = state.split(nnx.Param, nnx.BatchStat)
    assert all(p[-1] in ("kernel", "bias", "scale") for p in params.paths())
    assert set(stats.paths()) == {("bn", "mean"), ("bn", "var")}
    merged = nnx.State.merge(params, stats)
    assert merged.paths() == state.paths()
    with pytest.raises(ValueError, match="Non-exhaustive"):
        state.split(nnx.Param, nnx.Cache)
    only_kernels = state.filter(nnx.PathContains("kernel"))
    assert len(only_kernels.paths()) == 2


def test_state_from_plain_dict_merges_into_model():
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    gd = nnx.graphdef(model)
    copy = nnx.merge(gd, {"kernel": jnp.eye(2), "bias": jnp.zeros(2)})
    np.testing.assert_array_equal(copy(jnp.ones((1, 2))), jnp.ones((1, 2)))


def test_state_is_a_pytree_through_jit_with_keypaths():
    state = nnx.state(nnx.Linear(2, 2, ctx=nnx.context(0)))
    out = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s))(state)
    assert isinstance(out, nnx.State) and out.paths() == state.paths()
    keys = [k for k, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert len(keys) == 2


def test_repr_lists_paths_types_and_shapes():
    text = repr(nnx.state(nnx.Linear(2, 3, ctx=nnx.context(0))))
    assert "kernel: Param: float32[2, 3]" in text and "bias: Param: float32[3]" in text


def test_missing_key_error_lists_available():
    state = nnx.state(nnx.Linear(2, 3, ctx=nnx.context(0)))
    with pytest.raises(KeyError, match="top-level keys are"):
        state["nope"]


def test_state_key_paths_are_nested_dict_keys():
    state = nnx.state(nnx.Sequence([nnx.Linear(2, 3, ctx=nnx.context(0))]))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    # Each leaf is a Variable, one more node keyed `.value` (flax's key paths).
    assert paths == ["['layers'][0]['bias'].value", "['layers'][0]['kernel'].value"]
    leaves, treedef = jax.tree.flatten(state)
    assert [x.shape for x in leaves] == [(3,), (2, 3)]
    back = jax.tree.unflatten(treedef, leaves)
    assert back.paths() == state.paths() and all(a is b for a, b in zip(back.leaves(), leaves))
    assert all(type(v) is nnx.Param for _, v in back.variables())


def test_state_with_mixed_key_types_falls_back_to_flat_keys():
    state = nnx.State({("a",): 1.0, (0,): 2.0})
    leaves, treedef = jax.tree.flatten(state)
    assert leaves == [2.0, 1.0]
    assert jax.tree.unflatten(treedef, [3.0, 4.0]).to_pure_dict() == {0: 3.0, "a": 4.0}
