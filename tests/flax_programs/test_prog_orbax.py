"""Checkpointing with orbax as flax's checkpointing guide and tutorials do.

Save ``nnx.state(model)`` with ``ocp.StandardCheckpointer``, restore into the
abstract state of an ``nnx.eval_shape`` model and ``nnx.merge``; save a pure
dict (``nnx.to_pure_dict``) and put it back with ``nnx.replace_by_pure_dict``;
restore without a target; save model + optimizer state mid-training and resume.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ocp = pytest.importorskip("orbax.checkpoint")


def make_model(nnx):
    class TwoLayerMLP(nnx.Module):
        def __init__(self, dim, rngs):
            self.linear1 = nnx.Linear(dim, dim, rngs=rngs, use_bias=False)
            self.norm = nnx.BatchNorm(dim, rngs=rngs)
            self.linear2 = nnx.Linear(dim, dim, rngs=rngs)

        def __call__(self, x):
            return self.linear2(nnx.relu(self.norm(self.linear1(x))))

    return TwoLayerMLP


def test_save_and_restore_into_abstract_model(nnx, tmp_path):
    TwoLayerMLP = make_model(nnx)
    model = TwoLayerMLP(4, rngs=nnx.Rngs(0))
    x = jnp.ones((3, 4))
    model(x)  # BatchNorm stats move
    model.eval()
    expected = model(x)

    checkpointer = ocp.StandardCheckpointer()
    _, state = nnx.split(model)
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()

    abstract_model = nnx.eval_shape(lambda: TwoLayerMLP(4, rngs=nnx.Rngs(1)))
    graphdef, abstract_state = nnx.split(abstract_model)
    assert isinstance(abstract_model.linear1.kernel.value, jax.ShapeDtypeStruct)
    state_restored = checkpointer.restore(tmp_path / "state", abstract_state)
    restored = nnx.merge(graphdef, state_restored)
    restored.eval()
    np.testing.assert_allclose(restored(x), expected, rtol=1e-6)
    np.testing.assert_allclose(restored.norm.mean[...], model.norm.mean[...])


def test_pure_dict_round_trip(nnx, tmp_path):
    TwoLayerMLP = make_model(nnx)
    model = TwoLayerMLP(4, rngs=nnx.Rngs(0))
    checkpointer = ocp.StandardCheckpointer()
    pure_dict_state = nnx.to_pure_dict(nnx.state(model))
    assert set(pure_dict_state) == {"linear1", "norm", "linear2"}
    assert isinstance(pure_dict_state["linear2"]["bias"], jax.Array)
    checkpointer.save(tmp_path / "pure", pure_dict_state)
    checkpointer.wait_until_finished()

    restored_pure_dict = checkpointer.restore(tmp_path / "pure")
    abstract_model = nnx.eval_shape(lambda: TwoLayerMLP(4, rngs=nnx.Rngs(1)))
    graphdef, abstract_state = nnx.split(abstract_model)
    nnx.replace_by_pure_dict(abstract_state, restored_pure_dict)
    restored = nnx.merge(graphdef, abstract_state)
    np.testing.assert_allclose(restored.linear1.kernel[...], model.linear1.kernel[...])
    x = jnp.ones((2, 4))
    np.testing.assert_allclose(restored(x), model(x), rtol=1e-6)


def test_restore_without_target_gives_nested_names(nnx, tmp_path):
    model = make_model(nnx)(4, rngs=nnx.Rngs(0))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", nnx.state(model, nnx.Param))
    checkpointer.wait_until_finished()
    raw = checkpointer.restore(tmp_path / "state")
    assert set(raw) == {"linear1", "norm", "linear2"}
    assert set(raw["linear2"]) == {"kernel", "bias"}
    kernel = raw["linear2"]["kernel"]
    kernel = kernel["value"] if isinstance(kernel, dict) else kernel
    np.testing.assert_allclose(kernel, model.linear2.kernel[...])


def test_resume_training_from_checkpoint(nnx, tmp_path):
    TwoLayerMLP = make_model(nnx)

    def make(seed):
        model = TwoLayerMLP(4, rngs=nnx.Rngs(seed))
        return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    x, y = jnp.linspace(-1, 1, 12).reshape(3, 4), jnp.ones((3, 4))
    model, optimizer = make(0)
    for _ in range(2):
        train_step(model, optimizer, x, y)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(
        tmp_path / "ckpt",
        {"model": nnx.state(model), "optimizer": nnx.state(optimizer)},
    )
    checkpointer.wait_until_finished()
    expected = [float(train_step(model, optimizer, x, y)) for _ in range(2)]

    model2, optimizer2 = make(5)
    target = {"model": nnx.state(model2), "optimizer": nnx.state(optimizer2)}
    restored = checkpointer.restore(tmp_path / "ckpt", target)
    nnx.update(model2, restored["model"])
    nnx.update(optimizer2, restored["optimizer"])
    assert int(optimizer2.step[...]) == 2
    resumed = [float(train_step(model2, optimizer2, x, y)) for _ in range(2)]
    np.testing.assert_allclose(resumed, expected, rtol=1e-6)
