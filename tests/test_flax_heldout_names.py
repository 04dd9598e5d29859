"""flax.nnx names that flax's example programs use (EMA, TrainState, nnx.variables, Variable[A], ...).

Each test runs one flax spelling on ``lib``, parametrized over nnxlite and
flax.nnx itself (skipped when flax is not installed), and checks the same
outcome for both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlite


@pytest.fixture(params=["nnxlite", "flax"])
def nnx(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    return nnxlite


def test_ema_tracks_the_moving_average_inside_jit(nnx):
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    ema = nnx.EMA(model, decay=0.9)
    ema_model = ema.apply_to(model)
    start = np.asarray(model.kernel[...])

    @nnx.jit
    def train_step(model, optimizer, ema, x, y):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        ema.update(model)

    x, y = jnp.ones((1, 2)), jnp.ones((1, 2))
    expected = start
    for _ in range(3):
        train_step(model, optimizer, ema, x, y)
        expected = 0.9 * expected + 0.1 * np.asarray(model.kernel[...])
    np.testing.assert_allclose(ema.params["kernel"][...], expected, rtol=1e-6)
    assert ema_model.kernel is ema.params["kernel"]  # the EMA model follows later updates
    assert type(ema.params["kernel"]) is nnx.Param


def test_ema_only_filter_and_structure_errors(nnx):
    model = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    ema = nnx.EMA(model, decay=0.5, only=nnx.Param)
    assert sorted(ema.params) == ["bias", "scale"]
    model.scale[...] = jnp.zeros(2)
    ema.update(model)
    np.testing.assert_allclose(ema.params["scale"][...], 0.5 * np.ones(2))
    ema_model = ema.apply_to(model)
    assert ema_model.scale is ema.params["scale"]
    assert ema_model.mean is model.mean  # untracked state is shared with the model


def test_ema_update_with_another_structure_is_refused():
    ema = nnxlite.EMA(nnxlite.Linear(2, 2, rngs=nnxlite.Rngs(0)), decay=0.9)
    with pytest.raises(ValueError, match="missing paths.*bias"):
        ema.update(nnxlite.Linear(2, 2, use_bias=False, rngs=nnxlite.Rngs(0)))


def test_train_state_create_apply_gradients_and_subclass(nnx):
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    class MyState(nnx.TrainState):
        extra: jax.Array

    state = MyState.create(graphdef, params=params, tx=optax.sgd(0.05), extra=jnp.zeros(()))
    x = jnp.ones((3, 2))

    @jax.jit
    def step(state):
        def loss_fn(params):
            return jnp.mean(nnx.merge(state.graphdef, params)(x) ** 2)

        grads = jax.grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads, extra=state.extra + 1)

    new = step(state)
    assert int(new.step) == 1 and float(new.extra) == 1.0
    loss = lambda s: float(jnp.mean(nnx.merge(s.graphdef, s.params)(x) ** 2))
    assert loss(new) < loss(state)
    y, _ = new.apply("params")(x)
    np.testing.assert_allclose(y, nnx.merge(new.graphdef, new.params)(x))
    assert nnx.TrainState[nnx.Linear] is not None  # generic, as annotations in flax programs use it


def test_variable_is_generic(nnx):
    class Count(nnx.Variable[nnx.A]):
        pass

    c = Count(jnp.zeros(()))
    assert isinstance(c, nnx.Variable) and float(c[...]) == 0.0
    assert nnx.Variable[int] is not None


def test_variables_is_state_and_merge_accepts_copy(nnx):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    params = nnx.variables(model, nnx.Param)
    assert set(params) == {"bias", "kernel"}
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state, copy=True)
    np.testing.assert_array_equal(copy(jnp.ones((1, 2))), model(jnp.ones((1, 2))))
    assert copy.kernel is not model.kernel


def test_data_list_items_are_leaves(nnx):
    class Foo(nnx.Module):
        def __init__(self):
            self.x = nnx.data([1, 2])
            self.plain = [3, 4]

    foo = Foo()
    assert jax.tree.leaves(foo) == [1, 2]  # plain list items are static, nnx.data ones are leaves
    bumped = jax.tree.map(lambda v: v + 10, foo)
    assert list(bumped.x) == [11, 12] and list(bumped.plain) == [3, 4]
