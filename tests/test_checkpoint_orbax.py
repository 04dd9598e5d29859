"""The orbax recipe from ``nnxlite/checkpoint.py``'s docstring, run for real.

Skipped cleanly when orbax-checkpoint is not installed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlite as nnx

ocp = pytest.importorskip("orbax.checkpoint")


class Model(nnx.Module):
    def __init__(self, seed: int):
        ctx = nnx.context(jax.random.key(seed), dropout=seed)
        self.layers = nnx.Sequence([nnx.Linear(4, 4, ctx=ctx), nnx.Linear(4, 4, ctx=ctx)])  # int keys
        self.bn = nnx.BatchNorm(4, ctx=ctx)
        self.rngs = ctx  # a typed key and a legacy uint32 key
        self.calls = nnx.Variable(0)  # a Python int

    def __call__(self, x):
        self.calls.value += 1
        return self.bn(self.layers(x))


def host(node) -> dict:
    out = {}
    for p, v in nnx.state(node).flat().items():
        if hasattr(v, "dtype") and jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            v = jax.random.key_data(v)
        out[p] = np.asarray(v)
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for p in a:
        np.testing.assert_array_equal(a[p], b[p], err_msg=str(p))


def orbax_restore_into(node, checkpointer, directory):
    """The recipe: abstract target from the node, restore, replace_by_pure_dict, update."""
    state = nnx.state(node)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state.to_pure_dict())
    restored = checkpointer.restore(directory, abstract)
    state.replace_by_pure_dict(restored)
    nnx.update(node, state)


def test_standard_checkpointer_recipe(tmp_path):
    model = Model(0)
    model(jnp.ones((2, 4)))
    model.rngs.dropout()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "step_1", nnx.state(model).to_pure_dict())
    checkpointer.wait_until_finished()

    fresh = Model(1)
    orbax_restore_into(fresh, checkpointer, tmp_path / "step_1")
    assert_same(host(fresh), host(model))
    assert fresh.calls.value == 1
    key = fresh.rngs.default.key.value
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def test_checkpoint_manager_with_optimizer(tmp_path):
    def loss_fn(model, x):
        return jnp.mean(model(x) ** 2)

    x = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
    model = Model(0)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    options = ocp.CheckpointManagerOptions(max_to_keep=2)
    with ocp.CheckpointManager(tmp_path / "ckpts", options=options) as manager:
        for step in range(1, 4):
            optimizer.update(nnx.grad(loss_fn)(model, x))
            manager.save(step, args=ocp.args.StandardSave(nnx.state(optimizer).to_pure_dict()))
        manager.wait_until_finished()
        assert manager.latest_step() == 3
        assert sorted(manager.all_steps()) == [2, 3]

        resumed = nnx.Optimizer(Model(1), optax.adam(1e-2))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(resumed).to_pure_dict())
        restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))
    state = nnx.state(resumed)
    state.replace_by_pure_dict(restored)
    nnx.update(resumed, state)
    assert int(resumed.step.value) == 3
    assert_same(host(resumed), host(optimizer))
    optimizer.update(nnx.grad(loss_fn)(model, x))
    resumed.update(nnx.grad(loss_fn)(resumed.model, x))
    assert_same(host(resumed), host(optimizer))


def _names(tree):
    return {k: _names(v) if isinstance(v, dict) else tuple(np.shape(v)) for k, v in tree.items()}


def _strip_value(tree):
    """State leaves are Variables (in flax and nnxlite), so raw checkpoints end each path in 'value'."""
    if isinstance(tree, dict):
        if set(tree) == {"value"} and not isinstance(tree["value"], dict):
            return tree["value"]
        return {k: _strip_value(v) for k, v in tree.items()}
    return tree


def _save_restore_raw(tmp_path, state):
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(1, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        return manager.restore(1)  # no target: orbax rebuilds the tree from the saved key paths


def test_state_restored_without_target_is_a_nested_dict_of_names(tmp_path):
    model = nnx.Sequence([nnx.Linear(2, 3, ctx=nnx.context(0)), nnx.BatchNorm(3, ctx=nnx.context(0))])
    raw = _save_restore_raw(tmp_path / "ours", nnx.state(model))
    assert _names(_strip_value(raw)) == {
        "layers": {
            "0": {"bias": (3,), "kernel": (2, 3)},
            "1": {"bias": (3,), "mean": (3,), "scale": (3,), "var": (3,)},
        }
    }
    assert _names(raw["layers"]["0"]) == {"bias": {"value": (3,)}, "kernel": {"value": (2, 3)}}  # flax's layout
    state = nnx.state(model)
    state.replace_by_pure_dict({"layers": {int(k): v for k, v in _strip_value(raw)["layers"].items()}})
    nnx.update(model, state)


def test_state_checkpoint_names_match_flax(tmp_path):
    fnnx = pytest.importorskip("flax.nnx")

    class F(fnnx.Module):
        def __init__(self, rngs):
            self.linear1 = fnnx.Linear(2, 3, rngs=rngs)
            self.layers = fnnx.List([fnnx.Linear(3, 3, rngs=rngs)])
            self.bn = fnnx.BatchNorm(3, rngs=rngs)

    class N(nnx.Module):
        def __init__(self, ctx):
            self.linear1 = nnx.Linear(2, 3, ctx=ctx)
            self.layers = nnx.List([nnx.Linear(3, 3, ctx=ctx)])
            self.bn = nnx.BatchNorm(3, ctx=ctx)

    theirs = _save_restore_raw(tmp_path / "flax", fnnx.state(F(fnnx.Rngs(0))))
    ours = _save_restore_raw(tmp_path / "ours", nnx.state(N(nnx.context(0))))
    assert _names(ours) == _names(theirs)  # both end each path in 'value' (State leaves are Variables)

