"""InstanceNorm, WeightNorm, SpectralNorm: numpy formulas, flax.nnx parity on copied state, jit write-back."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from test_nn_helpers import copy_params_to_flax, np_normal

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def flax_value(v):
    return np.asarray(v.get_value() if hasattr(v, "get_value") else v)


# ------------------------------------------------------------------ InstanceNorm
def test_instance_norm_matches_numpy_formula():
    norm = nnx.InstanceNorm(3, scale_init=np_normal(0), bias_init=np_normal(1), ctx=nnx.context(0))
    x = randn(2, 5, 4, 3)
    mean = x.mean((1, 2), keepdims=True)
    var = x.var((1, 2), keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-6) * np.asarray(norm.scale.value) + np.asarray(norm.bias.value)
    np.testing.assert_allclose(norm(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("feature_axes", [-1, 1])
def test_instance_norm_matches_flax(feature_axes):
    fnnx = pytest.importorskip("flax.nnx")
    n = 3 if feature_axes == -1 else 5
    ours = nnx.InstanceNorm(n, feature_axes=feature_axes, scale_init=np_normal(0), bias_init=np_normal(1), ctx=nnx.context(0))
    theirs = fnnx.InstanceNorm(n, feature_axes=feature_axes, rngs=fnnx.Rngs(0))
    copy_params_to_flax(ours, theirs)
    x = jnp.asarray(randn(2, 5, 4, 3))
    mask = jnp.asarray(RNG.random((2, 5, 4, 3)) > 0.3)
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours(x, mask=mask), theirs(x, mask=mask), rtol=1e-5, atol=1e-5)


def test_instance_norm_rejects_the_batch_axis_as_a_feature_axis():
    with pytest.raises(ValueError, match="axis 0 is the batch axis"):
        nnx.InstanceNorm(2, feature_axes=0)(jnp.ones((2, 3)))


# ------------------------------------------------------------------ WeightNorm
def test_weight_norm_formula_and_scales_are_trained():
    layer = nnx.WeightNorm(nnx.Linear(4, 3, kernel_init=np_normal(0), ctx=nnx.context(0)), ctx=nnx.context(1))
    layer.scales["kernel"].value = jnp.asarray(randn(3))
    v = np.asarray(layer.layer_instance.kernel.value)
    w = v / np.linalg.norm(v, axis=0, keepdims=True) * np.asarray(layer.scales["kernel"].value)
    x = randn(2, 4)
    np.testing.assert_allclose(layer(jnp.asarray(x)), x @ w + np.asarray(layer.layer_instance.bias.value), rtol=1e-5, atol=1e-5)
    # The layer keeps its unnormalized kernel; gradients reach both it and the scales.
    np.testing.assert_array_equal(layer.layer_instance.kernel.value, v)
    grads = nnx.grad(lambda m: m(jnp.asarray(x)).sum())(layer)
    assert float(jnp.abs(grads["scales"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["layer_instance"]["kernel"]).sum()) > 0


@pytest.mark.parametrize("feature_axes", [-1, None])
def test_weight_norm_matches_flax(feature_axes):
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.WeightNorm(nnx.Linear(4, 3, kernel_init=np_normal(0), bias_init=np_normal(1), ctx=nnx.context(0)),
                          feature_axes=feature_axes, ctx=nnx.context(1))
    theirs = fnnx.WeightNorm(fnnx.Linear(4, 3, rngs=fnnx.Rngs(0)), feature_axes=feature_axes, rngs=fnnx.Rngs(1))
    copy_params_to_flax(ours.layer_instance, theirs.layer_instance)
    x = jnp.asarray(randn(2, 4))
    for _ in range(2):  # flax overwrites its kernel with the normalized one; outputs agree anyway
        np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ SpectralNorm
def test_spectral_norm_matches_flax_and_updates_under_jit():
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.SpectralNorm(nnx.Linear(4, 6, kernel_init=np_normal(0), bias_init=np_normal(1), ctx=nnx.context(0)),
                            n_steps=2, ctx=nnx.context(1))
    theirs = fnnx.SpectralNorm(fnnx.Linear(4, 6, rngs=fnnx.Rngs(0)), n_steps=2, rngs=fnnx.Rngs(1))
    copy_params_to_flax(ours.layer_instance, theirs.layer_instance)
    theirs.batch_stats[("kernel", "u")].set_value(ours.batch_stats["kernel"]["u"].value)
    x = jnp.asarray(randn(3, 4))
    step = nnx.jit(lambda m, x: m(x))
    for _ in range(3):
        np.testing.assert_allclose(step(ours, x), theirs(x), rtol=1e-4, atol=1e-5)
        # u is written back out of nnx.jit, and follows flax's power iteration.
        np.testing.assert_allclose(ours.batch_stats["kernel"]["u"].value, flax_value(theirs.batch_stats[("kernel", "u")]), rtol=1e-4, atol=1e-6)
    sigma = float(ours.batch_stats["kernel"]["sigma"].value)
    np.testing.assert_allclose(sigma, np.linalg.norm(np.asarray(ours.layer_instance.kernel.value), 2), rtol=1e-3)


def test_spectral_norm_eval_freezes_stats_and_normalizes_to_unit_norm():
    layer = nnx.SpectralNorm(nnx.Linear(5, 5, use_bias=False, ctx=nnx.context(0)), n_steps=20, ctx=nnx.context(1))
    x = jnp.eye(5)
    y = layer(x)  # rows of y are the normalized kernel
    assert abs(np.linalg.norm(np.asarray(y), 2) - 1.0) < 1e-3
    before = np.asarray(layer.batch_stats["kernel"]["u"].value)
    layer(x, update_stats=False)
    np.testing.assert_array_equal(layer.batch_stats["kernel"]["u"].value, before)
    layer.eval()
    u = np.asarray(layer.batch_stats["kernel"]["u"].value)
    layer(x)
    np.testing.assert_array_equal(layer.batch_stats["kernel"]["u"].value, u)
    grads = nnx.grad(lambda m: m(x).sum())(layer)
    assert "batch_stats" not in grads.to_pure_dict()  # statistics are not Params


def test_spectral_norm_flattens_or_rejects_higher_rank_weights():
    conv = nnx.Conv(2, 3, kernel_size=(3, 3), ctx=nnx.context(0))
    layer = nnx.SpectralNorm(conv, ctx=nnx.context(1))
    assert layer.batch_stats["kernel"]["u"].shape == (1, 3)
    assert layer(jnp.ones((1, 5, 5, 2))).shape == (1, 5, 5, 3)
    with pytest.raises(ValueError, match="error_on_non_matrix=True"):
        nnx.SpectralNorm(conv, error_on_non_matrix=True, ctx=nnx.context(1))
