"""Linear, LinearGeneral and Einsum: formulas written here in numpy, and parity with flax.nnx."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from test_nn_helpers import copy_params_to_flax, np_normal

RNG = np.random.default_rng(0)
INIT = dict(kernel_init=np_normal(0), bias_init=np_normal(1))
ZEROS = jax.nn.initializers.zeros


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------ Linear
def test_linear_matches_numpy_formula():
    layer = nnx.Linear(3, 4, **INIT, ctx=nnx.context(0))
    x = randn(2, 5, 3)
    expected = x @ np.asarray(layer.kernel.value) + np.asarray(layer.bias.value)
    np.testing.assert_allclose(layer(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)


def test_linear_initializers_dtypes_and_no_bias():
    layer = nnx.Linear(
        2, 3, use_bias=False, kernel_init=nnx.initializers.constant(0.5), param_dtype=jnp.bfloat16, ctx=nnx.context(0)
    )
    assert layer.bias is None
    assert nnx.state(layer).paths() == (("kernel",),)
    assert layer.kernel.dtype == jnp.bfloat16
    np.testing.assert_array_equal(layer.kernel.value, np.full((2, 3), 0.5))
    # dtype=None computes in the common type: bf16 params with f32 inputs give f32.
    assert layer(jnp.ones((1, 2), jnp.float32)).dtype == jnp.float32
    assert nnx.Linear(2, 3, dtype=jnp.bfloat16, **INIT, ctx=nnx.context(0))(jnp.ones((1, 2))).dtype == jnp.bfloat16


def test_linear_wrong_input_size_names_layer_and_sizes():
    layer = nnx.Linear(3, 4, **INIT, ctx=nnx.context(0))
    with pytest.raises(ValueError, match=r"Linear\(in_features=3.*size 3, got shape \(2, 5\)"):
        layer(jnp.ones((2, 5)))


def test_linear_parity_with_flax():
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.Linear(3, 4, **INIT, ctx=nnx.context(0))
    theirs = fnnx.Linear(3, 4, kernel_init=ZEROS, bias_init=ZEROS, rngs=fnnx.Rngs(1))
    copy_params_to_flax(ours, theirs)
    x = jnp.asarray(randn(2, 3))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ LinearGeneral
def test_linear_general_heads_split_and_merge_match_einsum():
    split = nnx.LinearGeneral(6, (2, 3), **INIT, ctx=nnx.context(0))
    x = randn(4, 5, 6)
    k, b = np.asarray(split.kernel.value), np.asarray(split.bias.value)
    assert k.shape == (6, 2, 3) and b.shape == (2, 3)
    np.testing.assert_allclose(split(jnp.asarray(x)), np.einsum("btd,dhk->bthk", x, k) + b, rtol=1e-5, atol=1e-5)

    merge = nnx.LinearGeneral((2, 3), 6, axis=(-2, -1), **INIT, ctx=nnx.context(1))
    h = randn(4, 5, 2, 3)
    expected = np.einsum("bthk,hkd->btd", h, np.asarray(merge.kernel.value)) + np.asarray(merge.bias.value)
    np.testing.assert_allclose(merge(jnp.asarray(h)), expected, rtol=1e-5, atol=1e-5)


def test_linear_general_contracts_a_middle_axis():
    layer = nnx.LinearGeneral(3, 2, axis=1, use_bias=False, **INIT, ctx=nnx.context(0))
    x = randn(4, 3, 5)
    expected = np.einsum("icj,co->ijo", x, np.asarray(layer.kernel.value))
    np.testing.assert_allclose(layer(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)


def test_linear_general_unsorted_axis_pairs_each_size_with_its_axis():
    # in_features[i] belongs to axis[i]: here 3 -> axis -1 and 2 -> axis -2.
    layer = nnx.LinearGeneral((3, 2), 4, axis=(-1, -2), use_bias=False, **INIT, ctx=nnx.context(0))
    x = randn(5, 2, 3)
    expected = np.einsum("bji,ijo->bo", x, np.asarray(layer.kernel.value))
    np.testing.assert_allclose(layer(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)


def test_linear_general_batch_axis_has_one_kernel_per_index():
    layer = nnx.LinearGeneral(3, 2, batch_axis={0: 4}, **INIT, ctx=nnx.context(0))
    k, b = np.asarray(layer.kernel.value), np.asarray(layer.bias.value)
    assert k.shape == (4, 3, 2) and b.shape == (4, 2)
    x = randn(4, 5, 3)
    expected = np.stack([x[i] @ k[i] + b[i] for i in range(4)])
    np.testing.assert_allclose(layer(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)


def test_linear_general_initializer_sees_the_flattened_matrix():
    seen = []

    def init(key, shape, dtype=jnp.float32):
        seen.append(shape)
        return jnp.zeros(shape, dtype)

    layer = nnx.LinearGeneral((2, 3), (4, 5), axis=(-2, -1), kernel_init=init, bias_init=init, ctx=nnx.context(0))
    assert seen == [(6, 20), (20,)]
    assert layer.kernel.shape == (2, 3, 4, 5) and layer.bias.shape == (4, 5)


def test_linear_general_errors():
    with pytest.raises(ValueError, match="same length"):
        nnx.LinearGeneral((2, 3), 4, axis=-1, **INIT, ctx=nnx.context(0))
    with pytest.raises(ValueError, match="leading axes"):
        nnx.LinearGeneral(2, 4, batch_axis={1: 3}, **INIT, ctx=nnx.context(0))
    with pytest.raises(ValueError, match=r"expected sizes \(6,\).*\(2, 5\)"):
        nnx.LinearGeneral(6, 4, **INIT, ctx=nnx.context(0))(jnp.ones((2, 5)))


@pytest.mark.parametrize(
    "kwargs, x_shape",
    [
        (dict(in_features=6, out_features=(2, 3)), (4, 5, 6)),
        (dict(in_features=(2, 3), out_features=6, axis=(-2, -1)), (4, 2, 3)),
        (dict(in_features=3, out_features=2, batch_axis={0: 4}), (4, 5, 3)),
    ],
)
def test_linear_general_parity_with_flax(kwargs, x_shape):
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.LinearGeneral(**kwargs, **INIT, ctx=nnx.context(0))
    theirs = fnnx.LinearGeneral(**kwargs, kernel_init=ZEROS, bias_init=ZEROS, rngs=fnnx.Rngs(1))
    copy_params_to_flax(ours, theirs)
    x = jnp.asarray(randn(*x_shape))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ Einsum
def test_einsum_matches_numpy_with_bias_on_kernel_axes():
    layer = nnx.Einsum("...d,dhk->...hk", (4, 2, 3), (2, 3), **INIT, ctx=nnx.context(0))
    x = randn(5, 7, 4)
    k, b = np.asarray(layer.kernel.value), np.asarray(layer.bias.value)
    np.testing.assert_allclose(layer(jnp.asarray(x)), np.einsum("...d,dhk->...hk", x, k) + b, rtol=1e-5, atol=1e-5)


def test_einsum_bias_on_a_leading_output_axis():
    # Output 'hb': the bias (h,) must broadcast over the trailing b axis.
    layer = nnx.Einsum("bd,dh->hb", (4, 3), (3,), **INIT, ctx=nnx.context(0))
    x = randn(2, 4)
    k, b = np.asarray(layer.kernel.value), np.asarray(layer.bias.value)
    np.testing.assert_allclose(layer(jnp.asarray(x)), np.einsum("bd,dh->hb", x, k) + b[:, None], rtol=1e-5)


def test_einsum_bias_shape_mismatch_is_explained():
    # 'd' is a kernel axis that stays in the output, so the bias needs shape (h, d) = (3, 4).
    layer = nnx.Einsum("bd,hd->bhd", (3, 4), (3,), **INIT, ctx=nnx.context(0))
    with pytest.raises(ValueError, match=r"bias_shape \(3,\).*\(3, 4\)"):
        layer(jnp.ones((2, 4)))


def test_einsum_call_time_equation_and_errors():
    layer = nnx.Einsum(None, (4, 2), **INIT, ctx=nnx.context(0))
    x = randn(3, 4)
    np.testing.assert_allclose(layer(jnp.asarray(x), "bd,dk->bk"), x @ np.asarray(layer.kernel.value), rtol=1e-5)
    with pytest.raises(ValueError, match="no equation"):
        layer(jnp.asarray(x))
    with pytest.raises(ValueError, match="explicit"):
        nnx.Einsum("bd,dk", (4, 2), **INIT, ctx=nnx.context(0))
    with pytest.raises(ValueError, match="names 3 axes"):
        nnx.Einsum("bd,dkh->bkh", (4, 2), **INIT, ctx=nnx.context(0))


def test_einsum_parity_with_flax():
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.Einsum("btd,dhk->bthk", (4, 2, 3), (2, 3), **INIT, ctx=nnx.context(0))
    theirs = fnnx.Einsum("btd,dhk->bthk", (4, 2, 3), (2, 3), kernel_init=ZEROS, bias_init=ZEROS, rngs=fnnx.Rngs(1))
    copy_params_to_flax(ours, theirs)
    x = jnp.asarray(randn(2, 5, 4))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_dense_layers_work_under_jit_and_grad():
    layer = nnx.LinearGeneral(3, (2, 2), **INIT, ctx=nnx.context(0))
    graphdef, params = nnx.split(layer)

    @jax.jit
    def loss(params, x):
        return jnp.sum(nnx.merge(graphdef, params)(x) ** 2)

    grads = jax.grad(loss)(params, jnp.ones((4, 3)))
    assert grads.paths() == params.paths()
    assert float(jnp.abs(grads.flat()[("kernel",)]).sum()) > 0


def test_linear_general_default_init_scales_by_total_fan_in():
    layer = nnx.LinearGeneral((16, 16), (8, 8), axis=(-2, -1), ctx=nnx.context(0))
    # lecun_normal on the flattened (256, 64) matrix: std = 1/sqrt(256).
    np.testing.assert_allclose(float(jnp.std(layer.kernel.value)), 1 / 16, rtol=0.05)
