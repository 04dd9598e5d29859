"""Conv and ConvTranspose: explicit numpy loops as references, jax.vjp for the adjoint, and flax.nnx parity."""

import itertools
import math

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


def params(layer):
    bias = np.asarray(layer.bias.value) if layer.bias is not None else 0.0
    return np.asarray(layer.kernel.value), bias


# ------------------------------------------------------------------ numpy references
def np_dilate(x, factors):
    """Insert (f - 1) zeros between neighbours along each spatial axis of (N, *S, C)."""
    out_shape = (x.shape[0],) + tuple((n - 1) * f + 1 for n, f in zip(x.shape[1:-1], factors)) + (x.shape[-1],)
    out = np.zeros(out_shape, x.dtype)
    out[(slice(None),) + tuple(slice(None, None, f) for f in factors)] = x
    return out


def np_conv(x, w, strides, pads, input_dilation=None, kernel_dilation=None, groups=1):
    """Cross-correlation of x (N, *S, Cin) with w (*K, Cin/groups, Cout), one kernel tap at a time."""
    rank = w.ndim - 2
    input_dilation = input_dilation or (1,) * rank
    kernel_dilation = kernel_dilation or (1,) * rank
    x = np_dilate(x, input_dilation)
    x = np.pad(x, [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)])
    spans = [(k - 1) * d + 1 for k, d in zip(w.shape[:rank], kernel_dilation)]
    out_sizes = [(n - span) // s + 1 for n, span, s in zip(x.shape[1:-1], spans, strides)]
    cin, cout = w.shape[-2], w.shape[-1]
    out = np.zeros((x.shape[0], *out_sizes, cout), np.float64)
    for tap in itertools.product(*(range(k) for k in w.shape[:rank])):
        window = tuple(
            slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in zip(tap, kernel_dilation, out_sizes, strides)
        )
        patch = x[(slice(None),) + window]
        for g in range(groups):
            out[..., g * cout // groups : (g + 1) * cout // groups] += (
                patch[..., g * cin : (g + 1) * cin] @ w[tap][:, g * cout // groups : (g + 1) * cout // groups]
            )
    return out


def same_pads(sizes, kernel, strides, dilation):
    pads = []
    for n, k, s, d in zip(sizes, kernel, strides, dilation):
        span = (k - 1) * d + 1
        total = max((math.ceil(n / s) - 1) * s + span - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def np_conv_transpose_valid(x, w, strides, dilation):
    """Transposed conv as a scatter: input i adds x[i] @ w[k] at output i*s + (K-1-k)*d (the kernel is flipped)."""
    rank = w.ndim - 2
    kernel = w.shape[:rank]
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    out_sizes = [(n - 1) * s + span for n, s, span in zip(x.shape[1:-1], strides, spans)]
    out = np.zeros((x.shape[0], *out_sizes, w.shape[-1]), np.float64)
    for pos in itertools.product(*(range(n) for n in x.shape[1:-1])):
        for tap in itertools.product(*(range(k) for k in kernel)):
            o = tuple(p * s + (k - 1 - t) * d for p, s, k, t, d in zip(pos, strides, kernel, tap, dilation))
            out[(slice(None),) + o] += x[(slice(None),) + pos] @ w[tap]
    return out


# ------------------------------------------------------------------------- Conv
@pytest.mark.parametrize(
    "kernel_size, strides, padding, kernel_dilation, groups, spatial",
    [
        ((3,), (1,), "VALID", (1,), 1, (9,)),
        ((3,), (2,), [(2, 1)], (2,), 1, (10,)),
        ((2, 3), (2, 1), "SAME", (1, 1), 1, (7, 6)),
        ((3, 3), (1, 1), 1, (2, 1), 2, (6, 5)),
        ((2, 2, 2), (1, 2, 1), "VALID", (1, 1, 1), 1, (4, 5, 3)),
    ],
)
def test_conv_matches_numpy_loop(kernel_size, strides, padding, kernel_dilation, groups, spatial):
    layer = nnx.Conv(
        4, 6, kernel_size, strides, padding=padding, kernel_dilation=kernel_dilation, feature_group_count=groups,
        **INIT, ctx=nnx.context(0),
    )
    x = randn(2, *spatial, 4)
    w, b = params(layer)
    assert w.shape == kernel_size + (4 // groups, 6)
    rank = len(kernel_size)
    if padding == "SAME":
        pads = same_pads(spatial, kernel_size, strides, kernel_dilation)
    elif padding == "VALID":
        pads = [(0, 0)] * rank
    elif isinstance(padding, int):
        pads = [(padding, padding)] * rank
    else:
        pads = padding
    expected = np_conv(x, w, strides, pads, kernel_dilation=kernel_dilation, groups=groups) + b
    np.testing.assert_allclose(layer(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)


def test_conv_input_dilation_matches_numpy_loop():
    layer = nnx.Conv(3, 2, (3,), padding=[(1, 2)], input_dilation=2, **INIT, ctx=nnx.context(0))
    x = randn(2, 5, 3)
    w, b = params(layer)
    expected = np_conv(x, w, (1,), [(1, 2)], input_dilation=(2,)) + b
    np.testing.assert_allclose(layer(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)


def test_conv_matches_lax_conv_general_dilated_nchw():
    # An independent spelling: lax in NCHW/OIHW layout.
    layer = nnx.Conv(3, 5, (3, 2), strides=(1, 2), padding="SAME", **INIT, ctx=nnx.context(0))
    x = randn(2, 6, 7, 3)
    w, b = params(layer)
    expected = jax.lax.conv_general_dilated(
        jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1)), (1, 2), "SAME"
    )
    expected = jnp.transpose(expected, (0, 2, 3, 1)) + b
    np.testing.assert_allclose(layer(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)


def test_conv_causal_padding_keeps_length_and_never_looks_ahead():
    layer = nnx.Conv(2, 3, 3, padding="CAUSAL", kernel_dilation=2, **INIT, ctx=nnx.context(0))
    x = randn(1, 8, 2)
    y = np.asarray(layer(jnp.asarray(x)))
    w, b = params(layer)
    np.testing.assert_allclose(y, np_conv(x, w, (1,), [(4, 0)], kernel_dilation=(2,)) + b, rtol=1e-4, atol=1e-4)
    changed = x.copy()
    changed[:, 5:] = 100.0  # the future must not leak into outputs 0..4
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(changed)))[:, :5], y[:, :5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode, np_mode", [("CIRCULAR", "wrap"), ("REFLECT", "reflect")])
def test_conv_circular_and_reflect_padding(mode, np_mode):
    layer = nnx.Conv(2, 3, (3, 4), padding=mode, **INIT, ctx=nnx.context(0))
    x = randn(1, 5, 6, 2)
    w, b = params(layer)
    padded = np.pad(x, [(0, 0), (1, 1), (1, 2), (0, 0)], mode=np_mode)
    expected = np_conv(padded, w, (1, 1), [(0, 0), (0, 0)]) + b
    np.testing.assert_allclose(layer(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)


def test_conv_batch_axes_none_one_or_many():
    layer = nnx.Conv(3, 4, (3, 3), **INIT, ctx=nnx.context(0))
    x = jnp.asarray(randn(2, 3, 5, 5, 3))
    many = layer(x)
    assert many.shape == (2, 3, 5, 5, 4)
    np.testing.assert_allclose(many.reshape(6, 5, 5, 4), layer(x.reshape(6, 5, 5, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(x[0, 0]), many[0, 0], rtol=1e-5, atol=1e-5)


def test_conv_errors_say_what_to_fix():
    layer = nnx.Conv(3, 4, (3, 3), **INIT, ctx=nnx.context(0))
    with pytest.raises(ValueError, match=r"Conv\(in_features=3.*\(\*batch, spatial, spatial, 3\), got \(2, 5, 5, 2\)"):
        layer(jnp.ones((2, 5, 5, 2)))
    with pytest.raises(ValueError, match="must divide both"):
        nnx.Conv(4, 6, 3, feature_group_count=4, **INIT, ctx=nnx.context(0))
    with pytest.raises(ValueError, match="1D convolutions only"):
        nnx.Conv(4, 6, (3, 3), padding="CAUSAL", **INIT, ctx=nnx.context(0))
    with pytest.raises(ValueError, match="has 3 entries"):
        nnx.Conv(4, 6, (3, 3), strides=(1, 2, 1), **INIT, ctx=nnx.context(0))
    with pytest.raises(ValueError, match="invalid padding"):
        nnx.Conv(4, 6, (3, 3), padding=[1, 2, 3], **INIT, ctx=nnx.context(0))


def test_conv_dtypes_and_custom_initializers():
    layer = nnx.Conv(
        2, 3, 2, dtype=jnp.bfloat16, param_dtype=jnp.float16, kernel_init=nnx.initializers.ones,
        bias_init=nnx.initializers.constant(1.0), ctx=nnx.context(0),
    )
    assert layer.kernel.dtype == jnp.float16 and layer.bias.dtype == jnp.float16
    y = layer(jnp.ones((1, 4, 2)))
    assert y.dtype == jnp.bfloat16
    # SAME padding with a window of 2 pads one zero at the end: 2*2 + 1 inside, 1*2 + 1 at the border.
    np.testing.assert_array_equal(np.asarray(y[0, :, 0], np.float32), [5, 5, 5, 3])


@pytest.mark.parametrize(
    "kwargs, x_shape",
    [
        (dict(kernel_size=(3,), padding="CAUSAL", kernel_dilation=2), (2, 9, 4)),
        (dict(kernel_size=(3, 3), strides=2, padding="SAME", feature_group_count=2), (2, 7, 6, 4)),
        (dict(kernel_size=(2, 3), padding=[(1, 0), (2, 1)], input_dilation=(2, 1)), (5, 6, 4)),
        (dict(kernel_size=(3, 2), padding="CIRCULAR"), (1, 5, 4, 4)),
        (dict(kernel_size=(2, 2, 2), padding="VALID"), (1, 3, 4, 3, 4)),
    ],
)
def test_conv_parity_with_flax(kwargs, x_shape):
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.Conv(4, 6, **kwargs, **INIT, ctx=nnx.context(0))
    theirs = fnnx.Conv(4, 6, **kwargs, kernel_init=ZEROS, bias_init=ZEROS, rngs=fnnx.Rngs(1))
    copy_params_to_flax(ours, theirs)
    x = jnp.asarray(randn(*x_shape))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- ConvTranspose
@pytest.mark.parametrize(
    "kernel_size, strides, dilation, spatial",
    [((3,), (2,), (1,), (5,)), ((2, 3), (2, 1), (1, 2), (3, 4))],
)
def test_conv_transpose_valid_matches_numpy_scatter(kernel_size, strides, dilation, spatial):
    layer = nnx.ConvTranspose(
        3, 2, kernel_size, strides, padding="VALID", kernel_dilation=dilation,
        **INIT, ctx=nnx.context(0),
    )
    x = randn(2, *spatial, 3)
    w, b = params(layer)
    assert w.shape == kernel_size + (3, 2)
    expected = np_conv_transpose_valid(x, w, strides, dilation) + b
    np.testing.assert_allclose(layer(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)


def test_conv_transpose_explicit_padding_crops_the_full_output():
    # Explicit pads p pad the dilated input, i.e. they crop (k - 1 - p) from each end of the VALID output.
    layer = nnx.ConvTranspose(2, 3, (4,), strides=2, padding=[(1, 2)], **INIT, ctx=nnx.context(0))
    x = randn(1, 5, 2)
    w, b = params(layer)
    full = np_conv_transpose_valid(x, w, (2,), (1,))
    np.testing.assert_allclose(layer(jnp.asarray(x)), full[:, 2:-1] + b, rtol=1e-4, atol=1e-4)


def test_conv_transpose_same_upsamples_by_the_stride():
    layer = nnx.ConvTranspose(3, 2, (4, 3), strides=(2, 3), **INIT, ctx=nnx.context(0))
    assert layer(jnp.ones((2, 5, 4, 3))).shape == (2, 10, 12, 2)
    assert layer(jnp.ones((5, 4, 3))).shape == (10, 12, 2)


def test_conv_transpose_with_transposed_kernel_is_the_adjoint_of_conv():
    layer = nnx.ConvTranspose(4, 3, (3,), strides=2, padding="VALID", transpose_kernel=True, use_bias=False, **INIT, ctx=nnx.context(0))
    w = jnp.asarray(layer.kernel.value)  # (3, out=3, in=4): a Conv kernel from 3 to 4 channels
    assert w.shape == (3, 3, 4)
    x = jnp.asarray(randn(2, 9, 3))  # (9 - 3) % 2 == 0, so the adjoint's output is exactly 9 long

    def conv(x):
        return jax.lax.conv_general_dilated(x, w, (2,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))

    y, vjp = jax.vjp(conv, x)
    g = jnp.asarray(randn(*y.shape))
    np.testing.assert_allclose(layer(g), vjp(g)[0], rtol=1e-4, atol=1e-4)


def test_conv_transpose_rejects_unsupported_padding():
    with pytest.raises(ValueError, match="'REFLECT' is not supported"):
        nnx.ConvTranspose(2, 3, 3, padding="REFLECT", **INIT, ctx=nnx.context(0))
    with pytest.raises(ValueError, match=r"ConvTranspose\(in_features=2"):
        nnx.ConvTranspose(2, 3, 3, **INIT, ctx=nnx.context(0))(jnp.ones((1, 4, 3)))


@pytest.mark.parametrize(
    "kwargs, x_shape",
    [
        (dict(kernel_size=(3,), strides=2, padding="SAME"), (2, 5, 4)),
        (dict(kernel_size=(4, 3), strides=(2, 1), padding="VALID", kernel_dilation=(1, 2)), (2, 3, 4, 4)),
        (dict(kernel_size=(3, 3), strides=2, padding=[(1, 2), 0], transpose_kernel=True), (4, 5, 4)),
    ],
)
def test_conv_transpose_parity_with_flax(kwargs, x_shape):
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.ConvTranspose(4, 6, **kwargs, **INIT, ctx=nnx.context(0))
    theirs = fnnx.ConvTranspose(4, 6, **kwargs, kernel_init=ZEROS, bias_init=ZEROS, rngs=fnnx.Rngs(1))
    copy_params_to_flax(ours, theirs)
    x = jnp.asarray(randn(*x_shape))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------- ConvTranspose, CIRCULAR
@pytest.fixture(params=["nnxlite", "flax"])
def lib(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    return nnx


def np_conv_transpose_circular(x, w, strides, dilation, transpose_kernel):
    """The full (VALID) output folded onto one period (size * stride) by index modulo the period.

    Centring: the spill past the period is split evenly, the odd element going low
    (high with ``transpose_kernel``).
    """
    rank = w.ndim - 2
    if transpose_kernel:  # lax flips the window and swaps in/out
        w = np.flip(w, axis=tuple(range(rank))).swapaxes(-1, -2)
    full = np_conv_transpose_valid(x, w, strides, dilation)
    periods = [n * s for n, s in zip(x.shape[1:-1], strides)]
    lows = []
    for length, period in zip(full.shape[1:-1], periods):
        fill = (period - length) % (2 * period)
        lows.append(fill // 2 if transpose_kernel else (fill + 1) // 2)
    out = np.zeros((x.shape[0], *periods, full.shape[-1]))
    for pos in itertools.product(*(range(n) for n in full.shape[1:-1])):
        target = tuple((p + low) % period for p, low, period in zip(pos, lows, periods))
        out[(slice(None),) + target] += full[(slice(None),) + pos]
    return out


CIRCULAR_CASES = [
    # kernel_size, strides, kernel_dilation, use_bias, transpose_kernel, x_shape
    ((3,), 1, 1, True, False, (2, 7, 3)),
    ((4,), 2, 1, False, False, (2, 5, 3)),           # even kernel, stride 2
    ((3,), 3, 2, True, True, (1, 4, 3)),             # dilated, transposed kernel
    ((7, 4), (2, 3), (2, 3), True, False, (6, 5, 3)),  # flax's conv_test case, smaller input
    ((3, 2), 1, (1, 2), False, True, (5, 4, 3)),     # no batch axis
]


@pytest.mark.parametrize("kernel_size, strides, dilation, use_bias, transpose_kernel, x_shape", CIRCULAR_CASES)
def test_conv_transpose_circular_matches_numpy_wraparound(lib, kernel_size, strides, dilation, use_bias,
                                                          transpose_kernel, x_shape):
    layer = lib.ConvTranspose(
        3, 2, kernel_size, strides, padding="CIRCULAR", kernel_dilation=dilation, use_bias=use_bias,
        transpose_kernel=transpose_kernel, **INIT, rngs=lib.Rngs(0),
    )
    x = randn(*x_shape)
    batched = x if x.ndim == len(kernel_size) + 2 else x[None]
    rank = len(kernel_size)
    s = (strides,) * rank if isinstance(strides, int) else strides
    d = (dilation,) * rank if isinstance(dilation, int) else dilation
    w, b = params(layer)
    expected = np_conv_transpose_circular(batched, w, s, d, transpose_kernel) + b
    y = layer(jnp.asarray(x))
    assert y.shape == x.shape[:-(rank + 1)] + tuple(n * k for n, k in zip(x.shape[-(rank + 1):-1], s)) + (2,)
    np.testing.assert_allclose(y, expected.reshape(y.shape), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel_size, strides, dilation, use_bias, transpose_kernel, x_shape", CIRCULAR_CASES)
def test_conv_transpose_circular_equals_flax_exactly(kernel_size, strides, dilation, use_bias, transpose_kernel, x_shape):
    fnnx = pytest.importorskip("flax.nnx")
    kwargs = dict(padding="CIRCULAR", kernel_dilation=dilation, use_bias=use_bias, transpose_kernel=transpose_kernel)
    ours = nnx.ConvTranspose(3, 2, kernel_size, strides, **kwargs, **INIT, rngs=nnx.Rngs(0))
    theirs = fnnx.ConvTranspose(3, 2, kernel_size, strides, **kwargs, kernel_init=ZEROS, bias_init=ZEROS, rngs=fnnx.Rngs(0))
    copy_params_to_flax(ours, theirs)
    x = jnp.asarray(randn(*x_shape))
    np.testing.assert_array_equal(ours(x), theirs(x))
