"""BatchNorm, LayerNorm, RMSNorm, GroupNorm: numpy formulas written here, modes, and flax.nnx parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from test_nn_helpers import copy_params_to_flax, np_normal

RNG = np.random.default_rng(0)
# Most tests share the input shape (2, 3, 6), so eager ops compile once for the file.
SHAPE = (2, 3, 6)


def randn(*shape):
    return (RNG.standard_normal(shape) * 2 + 1).astype(np.float32)


def affine(layer):
    scale = np.asarray(layer.scale.value) if layer.scale is not None else 1.0
    bias = getattr(layer, "bias", None)
    return scale, (np.asarray(bias.value) if bias is not None else 0.0)


def np_norm(x, axes, eps, scale, bias, use_mean=True):
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True) if use_mean else 0.0
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


# ---------------------------------------------------------------------- BatchNorm
def test_batchnorm_train_step_normalizes_and_updates_running_stats():
    bn = nnx.BatchNorm(6, momentum=0.9, scale_init=np_normal(0), bias_init=np_normal(1), ctx=nnx.context(0))
    x = randn(*SHAPE)
    scale, bias = affine(bn)
    y = bn(jnp.asarray(x))
    np.testing.assert_allclose(y, np_norm(x, (0, 1), 1e-5, scale, bias), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.mean.value, 0.1 * x.mean((0, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.var.value, 0.9 + 0.1 * x.var((0, 1)), rtol=1e-5, atol=1e-6)


def test_batchnorm_eval_uses_running_stats_and_leaves_them_alone():
    bn = nnx.BatchNorm(6, use_running_average=True, epsilon=1e-3, ctx=nnx.context(0))
    mean, var = np.linspace(-1, 1, 6, dtype=np.float32), np.linspace(0.25, 4, 6, dtype=np.float32)
    bn.mean.value, bn.var.value = jnp.asarray(mean), jnp.asarray(var)
    x = randn(*SHAPE)
    np.testing.assert_allclose(bn(jnp.asarray(x)), (x - mean) / np.sqrt(var + 1e-3), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn.mean.value, mean)
    # The per-call keyword beats the attribute, both ways.
    bn(jnp.asarray(x), use_running_average=False)
    assert not np.allclose(bn.mean.value, mean)
    bn.use_running_average = False
    before = np.asarray(bn.mean.value)
    bn(jnp.asarray(x), use_running_average=True)
    np.testing.assert_array_equal(bn.mean.value, before)


def test_batchnorm_channels_first_axis_mask_and_slow_variance():
    bn = nnx.BatchNorm(3, axis=1, use_fast_variance=False, ctx=nnx.context(0))
    x = randn(*SHAPE)  # features on axis 1
    np.testing.assert_allclose(bn(jnp.asarray(x)), np_norm(x, (0, 2), 1e-5, 1.0, 0.0), rtol=1e-4, atol=1e-4)
    mask = np.zeros((2, 1, 6), bool)
    mask[:, :, :4] = True  # statistics from the first four positions only
    bn2 = nnx.BatchNorm(3, axis=1, ctx=nnx.context(0))
    y = bn2(jnp.asarray(x), mask=jnp.asarray(mask))
    mean = x[:, :, :4].mean((0, 2), keepdims=True)
    var = x[:, :, :4].var((0, 2), keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)


def test_batchnorm_inside_jit_updates_stats_through_split_merge():
    bn = nnx.BatchNorm(6, ctx=nnx.context(0))
    graphdef, state = nnx.split(bn)

    @jax.jit
    def step(state, x):
        module = nnx.merge(graphdef, state)
        y = module(x)
        return y, nnx.state(module)

    _, new_state = step(state, jnp.asarray(randn(*SHAPE)))
    nnx.update(bn, new_state)
    assert not np.allclose(bn.mean.value, 0.0)


def test_batchnorm_axis_name_averages_statistics_across_vmap_lanes():
    bn = nnx.BatchNorm(6, axis_name="lanes")
    graphdef, state = nnx.split(bn)
    x = randn(*SHAPE)  # two lanes of (3, 6)
    y = jax.vmap(lambda xi: nnx.merge(graphdef, state)(xi), axis_name="lanes")(jnp.asarray(x))
    np.testing.assert_allclose(y, np_norm(x, (0, 1), 1e-5, 1.0, 0.0), rtol=1e-4, atol=1e-4)


def test_batchnorm_wrong_feature_size():
    with pytest.raises(ValueError, match=r"BatchNorm\(num_features=4\).*got shape \(2, 3, 6\)"):
        nnx.BatchNorm(4, ctx=nnx.context(0))(jnp.ones(SHAPE))


def test_norm_layers_compute_stats_in_float32_and_keep_input_dtype():
    x = jnp.asarray(randn(*SHAPE)).astype(jnp.bfloat16)
    assert nnx.RMSNorm(6)(x).dtype == jnp.float32  # float32 params promote the result (dtype=None)
    y = nnx.LayerNorm(6, dtype=jnp.bfloat16)(x)
    assert y.dtype == jnp.bfloat16
    expected = np_norm(np.asarray(x, np.float32), (-1,), 1e-6, 1.0, 0.0)  # statistics were float32
    np.testing.assert_allclose(np.asarray(y, np.float32), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("use_running_average", [False, True])
def test_batchnorm_parity_with_flax(use_running_average):
    fnnx = pytest.importorskip("flax.nnx")
    kwargs = dict(momentum=0.8, epsilon=1e-4, use_running_average=use_running_average)
    ours = nnx.BatchNorm(6, scale_init=np_normal(0), bias_init=np_normal(1), **kwargs, ctx=nnx.context(0))
    ours.mean.value = jnp.asarray(randn(6))
    ours.var.value = jnp.asarray(np.abs(randn(6)))
    theirs = fnnx.BatchNorm(6, **kwargs, rngs=fnnx.Rngs(0))
    copy_params_to_flax(ours, theirs)
    copy_params_to_flax(ours, theirs, nnx.BatchStat)
    x = jnp.asarray(randn(*SHAPE))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.mean.value, theirs.mean[...], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.var.value, theirs.var[...], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- LayerNorm
def test_layernorm_matches_formula():
    ln = nnx.LayerNorm(6, scale_init=np_normal(0), bias_init=np_normal(1), ctx=nnx.context(0))
    x = randn(*SHAPE)
    scale, bias = affine(ln)
    np.testing.assert_allclose(ln(jnp.asarray(x)), np_norm(x, (-1,), 1e-6, scale, bias), rtol=1e-4, atol=1e-4)


def test_layernorm_over_two_axes_with_scale_on_the_last():
    ln = nnx.LayerNorm(6, reduction_axes=(-2, -1), scale_init=np_normal(0), use_fast_variance=False)
    x = randn(*SHAPE)
    scale, bias = affine(ln)
    np.testing.assert_allclose(ln(jnp.asarray(x)), np_norm(x, (-2, -1), 1e-6, scale, bias), rtol=1e-4, atol=1e-4)


def test_layernorm_mask_restricts_the_statistics():
    ln = nnx.LayerNorm(6, use_scale=False, use_bias=False)
    assert nnx.state(ln).paths() == ()
    x = randn(*SHAPE)
    mask = np.arange(6) < 4  # the last two features do not count
    mean, var = x[..., :4].mean(-1, keepdims=True), x[..., :4].var(-1, keepdims=True)
    np.testing.assert_allclose(ln(jnp.asarray(x), mask=jnp.asarray(mask)), (x - mean) / np.sqrt(var + 1e-6), rtol=1e-4)


def test_layernorm_parity_with_flax():
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.LayerNorm(6, epsilon=1e-3, scale_init=np_normal(0), bias_init=np_normal(1), ctx=nnx.context(0))
    theirs = fnnx.LayerNorm(6, epsilon=1e-3, rngs=fnnx.Rngs(0))
    copy_params_to_flax(ours, theirs)
    x = jnp.asarray(randn(*SHAPE))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ RMSNorm
def test_rmsnorm_matches_formula_and_has_no_bias():
    rms = nnx.RMSNorm(6, scale_init=np_normal(0), ctx=nnx.context(0))
    assert nnx.state(rms).paths() == (("scale",),)
    x = randn(*SHAPE)
    expected = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * np.asarray(rms.scale.value)
    np.testing.assert_allclose(rms(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)


def test_rmsnorm_parity_with_flax():
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.RMSNorm(6, scale_init=np_normal(0), ctx=nnx.context(0))
    theirs = fnnx.RMSNorm(6, rngs=fnnx.Rngs(0))
    copy_params_to_flax(ours, theirs)
    x = jnp.asarray(randn(*SHAPE))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- GroupNorm
def np_group_norm(x, groups, eps, scale, bias):
    n, c = x.shape[0], x.shape[-1]
    g = x.reshape(n, -1, groups, c // groups).astype(np.float64)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("shape", [SHAPE, (2, 3, 4, 6)])
def test_groupnorm_matches_formula(shape):
    gn = nnx.GroupNorm(6, num_groups=3, scale_init=np_normal(0), bias_init=np_normal(1), ctx=nnx.context(0))
    x = randn(*shape)
    scale, bias = affine(gn)
    np.testing.assert_allclose(gn(jnp.asarray(x)), np_group_norm(x, 3, 1e-6, scale, bias), rtol=1e-4, atol=1e-4)


def test_groupnorm_group_size_and_errors():
    gn = nnx.GroupNorm(6, num_groups=None, group_size=2)
    assert (gn.num_groups, gn.group_size) == (3, 2)
    x = randn(*SHAPE)
    np.testing.assert_allclose(gn(jnp.asarray(x)), np_group_norm(x, 3, 1e-6, 1.0, 0.0), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="exactly one of num_groups and group_size"):
        nnx.GroupNorm(6, group_size=2)
    with pytest.raises(ValueError, match="does not divide num_features=6"):
        nnx.GroupNorm(6, num_groups=4)
    with pytest.raises(ValueError, match="must include the last"):
        nnx.GroupNorm(6, num_groups=3, reduction_axes=(1,))(jnp.ones(SHAPE))


def test_groupnorm_one_group_is_layernorm_over_non_batch_axes():
    x = jnp.asarray(randn(*SHAPE))
    gn = nnx.GroupNorm(6, num_groups=1, epsilon=1e-5)
    ln = nnx.LayerNorm(6, reduction_axes=(1, 2), epsilon=1e-5)
    np.testing.assert_allclose(gn(x), ln(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, masked", [((2, 3, 4, 6), False), (SHAPE, True)])
def test_groupnorm_parity_with_flax(shape, masked):
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.GroupNorm(6, num_groups=2, scale_init=np_normal(0), bias_init=np_normal(1), ctx=nnx.context(0))
    theirs = fnnx.GroupNorm(6, num_groups=2, rngs=fnnx.Rngs(0))
    copy_params_to_flax(ours, theirs)
    x = jnp.asarray(randn(*shape))
    mask = jnp.asarray(RNG.random(shape) > 0.3) if masked else None
    np.testing.assert_allclose(ours(x, mask=mask), theirs(x, mask=mask), rtol=1e-5, atol=1e-5)
