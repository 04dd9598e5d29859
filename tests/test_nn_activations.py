"""Activations: the re-exports are JAX's functions, and PReLU against its formula and flax.nnx."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from nnxlite.nn import activations


def test_activations_are_exported_at_every_level_and_are_jax_functions():
    for name in activations.__all__:
        assert getattr(nnx, name) is getattr(nnx.nn, name) is getattr(activations, name)
    assert nnx.relu is jax.nn.relu and nnx.gelu is jax.nn.gelu and nnx.tanh is jnp.tanh


def test_common_activations_match_numpy_formulas():
    x = np.linspace(-3, 3, 7).astype(np.float32)
    np.testing.assert_allclose(nnx.relu(x), np.maximum(x, 0))
    np.testing.assert_allclose(nnx.silu(x), x / (1 + np.exp(-x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nnx.softmax(x), np.exp(x) / np.exp(x).sum(), rtol=1e-5)
    np.testing.assert_allclose(nnx.leaky_relu(x, 0.1), np.where(x >= 0, x, 0.1 * x), rtol=1e-6)


def test_prelu_formula_learned_slope_and_dtype():
    act = nnx.PReLU(0.2)
    assert nnx.state(act).paths() == (("negative_slope",),) and act.negative_slope.shape == ()
    x = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(act(x), [-0.4, 0.0, 3.0], rtol=1e-6)
    graphdef, params = nnx.split(act)
    grad = jax.grad(lambda p: nnx.merge(graphdef, p)(x).sum())(params)
    assert float(grad.flat()[("negative_slope",)]) == -2.0  # d/da of a * (-2)
    assert nnx.PReLU(dtype=jnp.bfloat16)(x).dtype == jnp.bfloat16


def test_prelu_parity_with_flax():
    fnnx = pytest.importorskip("flax.nnx")
    ours, theirs = nnx.PReLU(0.3), fnnx.PReLU(0.3)
    x = jnp.linspace(-2, 2, 5)
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-6)
