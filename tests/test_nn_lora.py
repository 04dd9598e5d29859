"""LoRA, LoRALinear, LoRAParam: formula, flax.nnx parity on copied weights, adapter-only training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlite as nnx
from test_nn_helpers import copy_params_to_flax, np_normal

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_lora_formula_and_zero_init():
    base = nnx.Linear(3, 4, kernel_init=np_normal(0), bias_init=np_normal(1), ctx=nnx.context(0))
    lora = nnx.LoRA(3, 2, 4, base_module=base, ctx=nnx.context(1))
    x = randn(5, 3)
    np.testing.assert_array_equal(lora.lora_b.value, np.zeros((2, 4)))
    np.testing.assert_allclose(lora(jnp.asarray(x)), base(jnp.asarray(x)), rtol=1e-6)
    lora.lora_b.value = jnp.asarray(randn(2, 4))
    a, b = np.asarray(lora.lora_a.value), np.asarray(lora.lora_b.value)
    expected = x @ a @ b + x @ np.asarray(base.kernel.value) + np.asarray(base.bias.value)
    np.testing.assert_allclose(lora(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)


def test_lora_param_is_a_param_and_filters_tell_it_apart():
    layer = nnx.LoRALinear(3, 4, lora_rank=2, ctx=nnx.context(0))
    assert isinstance(layer.lora.lora_a, nnx.Param) and type(layer.lora.lora_a) is nnx.LoRAParam
    assert sorted(nnx.state(layer, nnx.Param).paths()) == [("bias",), ("kernel",), ("lora", "lora_a"), ("lora", "lora_b")]
    assert sorted(nnx.state(layer, nnx.LoRAParam).paths()) == [("lora", "lora_a"), ("lora", "lora_b")]


@pytest.mark.parametrize("standalone", [True, False])
def test_lora_matches_flax(standalone):
    fnnx = pytest.importorskip("flax.nnx")
    init = dict(a_initializer=np_normal(0), b_initializer=np_normal(1))
    if standalone:
        ours = nnx.LoRA(3, 2, 4, **init, ctx=nnx.context(0))
        theirs = fnnx.LoRA(3, 2, 4, rngs=fnnx.Rngs(0))
    else:
        ours = nnx.LoRALinear(3, 4, lora_rank=2, kernel_init=np_normal(2), bias_init=np_normal(3), **init, ctx=nnx.context(0))
        theirs = fnnx.LoRALinear(3, 4, lora_rank=2, rngs=fnnx.Rngs(0))
    copy_params_to_flax(ours, theirs, nnx.Param)  # same paths and shapes
    assert type(theirs.lora_a if standalone else theirs.lora.lora_a).__name__ == "LoRAParam"
    x = jnp.asarray(randn(2, 3))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_optimizer_wrt_lora_param_trains_only_the_adapters():
    model = nnx.Sequence([nnx.LoRALinear(3, 8, lora_rank=2, ctx=nnx.context(0)), jax.nn.relu,
                          nnx.LoRALinear(8, 1, lora_rank=2, ctx=nnx.context(1))])
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.LoRAParam)
    x, y = jnp.asarray(randn(16, 3)), jnp.asarray(randn(16, 1))
    frozen = jax.tree.map(np.asarray, nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
    adapters = jax.tree.map(np.asarray, nnx.state(model, nnx.LoRAParam))

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2), wrt=nnx.LoRAParam)(model)
        optimizer.update(grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(20)]
    assert losses[-1] < losses[0]
    after = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, frozen, after)))
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), adapters, nnx.state(model, nnx.LoRAParam))
    assert all(jax.tree.leaves(moved))


def test_lora_rejects_a_non_callable_base_module():
    with pytest.raises(TypeError, match="base_module must be callable"):
        nnx.LoRA(3, 2, 4, base_module=nnx.Variable(jnp.ones(3)), ctx=nnx.context(0))
