"""Eager-mode speed-ups give the same results as the plain eager code they replace."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlite as nnx


class MLP(nnx.Module):
    def __init__(self, *, ctx):
        self.fc1 = nnx.Linear(64, 128, ctx=ctx)
        self.fc2 = nnx.Linear(128, 10, ctx=ctx)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


def data():
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(32, 64)).astype(np.float32)), jnp.asarray(rng.integers(0, 10, 32))


def test_linear_eager_matches_the_jnp_ops_bit_for_bit():
    layer = nnx.Linear(64, 128, ctx=nnx.context(0))
    x, _ = data()
    y = layer(x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x @ layer.kernel.value + layer.bias.value))
    no_bias = nnx.Linear(64, 8, use_bias=False, ctx=nnx.context(0))
    np.testing.assert_array_equal(np.asarray(no_bias(x)), np.asarray(x @ no_bias.kernel.value))


def test_linear_fused_kernel_is_inlined_under_jit():
    layer = nnx.Linear(4, 3, ctx=nnx.context(0))
    jaxpr = jax.make_jaxpr(lambda x: layer(x))(jnp.ones((2, 4)))
    names = [e.primitive.name for e in jaxpr.jaxpr.eqns]
    assert "dot_general" in names and "pjit" not in names and "jit" not in names


def test_linear_still_checks_its_input_every_call():
    layer = nnx.Linear(4, 3, ctx=nnx.context(0))
    layer(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="last axis has size 4"):
        layer(jnp.ones((2, 5)))


def test_eager_dtype_promotion_is_unchanged():
    layer = nnx.Linear(4, 3, ctx=nnx.context(0))
    assert layer(jnp.ones((2, 4), jnp.bfloat16)).dtype == jnp.float32  # float32 params win
    assert layer(jnp.ones((2, 4), jnp.int32)).dtype == jnp.float32
    half = nnx.Linear(4, 3, dtype=jnp.bfloat16, ctx=nnx.context(0))
    assert half(jnp.ones((2, 4))).dtype == jnp.bfloat16


def _train(compile_eager: bool, tx, steps: int = 4):
    model = MLP(ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, tx)
    optimizer.compile_eager = compile_eager
    x, y = data()
    losses = []
    for _ in range(steps):
        loss, grads = nnx.value_and_grad(
            lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        )(model)
        optimizer.update(grads)
        losses.append(float(loss))
    return model, optimizer, losses


@pytest.mark.parametrize("tx", [optax.adam(1e-2), optax.sgd(0.1, momentum=0.9), optax.adamw(1e-2)],
                         ids=["adam", "sgd-momentum", "adamw"])
def test_compiled_eager_update_equals_op_by_op(tx):
    m1, o1, l1 = _train(True, tx)
    m2, o2, l2 = _train(False, tx)
    assert "_nnx_eager_update" in o1.__dict__ and "_nnx_eager_update" not in o2.__dict__
    assert l1[-1] < l1[0]
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(nnx.state(o1)), jax.tree.leaves(nnx.state(o2))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-7)
    assert int(o1.step.value) == int(o2.step.value) == 4


def test_compiled_eager_update_with_extra_arguments():
    tx = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau(patience=1))
    model = nnx.Linear(2, 1, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, tx)
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(model)
    optimizer.update(grads, value=jnp.asarray(1.0))
    optimizer.update(grads, value=jnp.asarray(1.0))
    assert int(optimizer.step.value) == 2


def test_compiled_eager_update_error_leaves_model_unchanged():
    model = nnx.Linear(2, 1, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    before = np.asarray(model.kernel.value)
    with pytest.raises(ValueError, match="gradient shapes"):
        optimizer.update(nnx.State({"bias": jnp.ones(1), "kernel": jnp.ones((3, 1))}))
    np.testing.assert_array_equal(np.asarray(model.kernel.value), before)
    assert int(optimizer.step.value) == 0


def test_update_inside_jit_does_not_use_the_eager_cache():
    model = nnx.Linear(2, 1, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))

    @nnx.jit
    def step(model, optimizer):
        optimizer.update(nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(model))

    step(model, optimizer)
    assert "_nnx_eager_update" not in optimizer.__dict__
    assert int(optimizer.step.value) == 1
