"""Pooling: explicit numpy window loops as references, padding modes, batch axes, and flax parity."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx

RNG = np.random.default_rng(0)


def np_pool(x, reduce, window, strides, pads, fill):
    """Reduce every window of x (N, *S, C) after padding with ``fill``."""
    x = np.pad(x, [(0, 0)] + list(pads) + [(0, 0)], constant_values=fill)
    sizes = [(n - w) // s + 1 for n, w, s in zip(x.shape[1:-1], window, strides)]
    out = np.empty((x.shape[0], *sizes, x.shape[-1]), x.dtype)
    for pos in itertools.product(*(range(n) for n in sizes)):
        region = x[(slice(None),) + tuple(slice(p * s, p * s + w) for p, s, w in zip(pos, strides, window))]
        out[(slice(None),) + pos] = reduce(region.reshape(x.shape[0], -1, x.shape[-1]), axis=1)
    return out


@pytest.mark.parametrize("fn, reduce, fill", [(nnx.max_pool, np.max, -np.inf), (nnx.min_pool, np.min, np.inf)])
@pytest.mark.parametrize(
    "window, strides, padding, pads",
    [((2, 2), (2, 2), "VALID", [(0, 0), (0, 0)]), ((3, 2), (1, 2), [(1, 1), (0, 1)], [(1, 1), (0, 1)])],
)
def test_max_and_min_pool_match_numpy(fn, reduce, fill, window, strides, padding, pads):
    x = RNG.standard_normal((2, 5, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(fn(jnp.asarray(x), window, strides, padding), np_pool(x, reduce, window, strides, pads, fill))


def test_avg_pool_counts_padding_or_not():
    x = RNG.standard_normal((2, 5, 3)).astype(np.float32)
    with_pad = nnx.avg_pool(jnp.asarray(x), (3,), padding=1)
    np.testing.assert_allclose(with_pad, np_pool(x, np.sum, (3,), (1,), [(1, 1)], 0.0) / 3, rtol=1e-5, atol=1e-6)
    without = nnx.avg_pool(jnp.asarray(x), (3,), padding=1, count_include_pad=False)
    counts = np.array([2, 3, 3, 3, 2], np.float32)[None, :, None]
    np.testing.assert_allclose(without, np_pool(x, np.sum, (3,), (1,), [(1, 1)], 0.0) / counts, rtol=1e-5, atol=1e-6)


def test_same_padding_keeps_the_size_and_integers_work():
    x = jnp.arange(12).reshape(1, 4, 3, 1)
    y = nnx.max_pool(x, (2, 2), padding="SAME")
    assert y.shape == (1, 4, 3, 1) and y.dtype == x.dtype
    assert int(y[0, 0, 0, 0]) == 4
    assert nnx.avg_pool(x, (2, 2)).dtype == jnp.float32


def test_pool_batch_axes_none_or_many():
    x = jnp.asarray(RNG.standard_normal((2, 3, 6, 4)).astype(np.float32))  # two batch axes, 1 spatial
    y = nnx.max_pool(x, (2,), strides=2)
    assert y.shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(nnx.max_pool(x[0, 0], (2,), strides=2), y[0, 0])


def test_pool_errors():
    with pytest.raises(ValueError, match="strides=\\(1, 2, 3\\) has 3 entries"):
        nnx.max_pool(jnp.ones((1, 4, 4, 1)), (2, 2), strides=(1, 2, 3))
    with pytest.raises(ValueError, match="at least 3 axes"):
        nnx.max_pool(jnp.ones((4, 4)), (2, 2))
    with pytest.raises(ValueError, match="not supported"):
        nnx.avg_pool(jnp.ones((1, 4, 1)), (2,), padding="CAUSAL")


def test_pooling_parity_with_flax():
    fnnx = pytest.importorskip("flax.nnx")
    x = jnp.asarray(RNG.standard_normal((2, 5, 6, 3)).astype(np.float32))
    for ours, theirs, extra in [
        (nnx.avg_pool, fnnx.avg_pool, dict(count_include_pad=False)),
        (nnx.max_pool, fnnx.max_pool, {}),
        (nnx.min_pool, fnnx.min_pool, {}),
    ]:
        a = ours(x, (3, 2), strides=(2, 1), padding="SAME", **extra)
        b = theirs(x, (3, 2), strides=(2, 1), padding="SAME", **extra)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pool_fn", [nnx.max_pool, nnx.avg_pool, nnx.min_pool])
def test_pooling_is_differentiable_under_jit(pool_fn):
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    grad = jax.jit(jax.grad(lambda x: pool_fn(x, (2, 2), strides=(2, 2)).sum()))(x)
    eager = jax.grad(lambda x: pool_fn(x, (2, 2), strides=(2, 2)).sum())(x)
    np.testing.assert_allclose(grad, eager)
    assert float(grad.sum()) == pytest.approx(4.0)  # one unit of gradient per window
