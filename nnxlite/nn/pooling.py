"""Pooling: reduce each spatial window of a channels-last input to one value.

Inputs are ``(*batch, *spatial, features)`` like :class:`~nnxlite.nn.Conv`;
``window_shape`` has one entry per spatial axis, and the batch and feature
axes are never pooled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import jax.numpy as jnp
from jax import lax

from nnxlite.nn._shapes import Padding, as_tuple, canonical_padding, fold_batch, unfold_batch

__all__ = ["pool", "avg_pool", "max_pool", "min_pool"]


def pool(
    inputs: jax.Array,
    init: Any,
    reduce_fn: Callable[[jax.Array, jax.Array], jax.Array],
    window_shape: Sequence[int],
    strides: Sequence[int] | int | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
    """Reduce every window with ``reduce_fn`` starting from ``init`` (``lax.reduce_window``).

    Padded positions hold ``init``, so they never win a max/min and add 0 to a sum.

    >>> import jax.numpy as jnp, jax.lax as lax, nnxlite as nnx
    >>> x = jnp.arange(8.0).reshape(1, 8, 1)
    >>> nnx.pool(x, 0.0, lax.add, (2,), strides=(2,))[0, :, 0].tolist()
    [1.0, 5.0, 9.0, 13.0]

    Args:
      inputs: ``(*batch, *spatial, features)``; no batch axis is fine.
      init: the reduction's identity (0 for sums, -inf for max).
      reduce_fn: ``(a, b) -> c``, e.g. ``lax.add`` or ``lax.max``.
      window_shape: window size per spatial axis.
      strides: step per spatial axis (default: 1).
      padding: ``'VALID'``, ``'SAME'``, an int, or one int or ``(low, high)``
        pair per spatial axis.
    """
    window = tuple(int(w) for w in window_shape)
    rank = len(window)
    strides = as_tuple(strides, rank, "strides", "pool")
    padding = canonical_padding(padding, rank, "pool")
    if padding in ("CAUSAL", "CIRCULAR", "REFLECT"):
        raise ValueError(f"pool: padding={padding!r} is not supported; use 'VALID', 'SAME', or (low, high) pairs.")
    x, batch_shape = fold_batch(inputs, rank + 1, "pool")
    if not isinstance(padding, str):
        padding = ((0, 0),) + padding + ((0, 0),)
    # A concrete (numpy) init keeps lax.reduce_window on its differentiable max/sum
    # fast path; a traced init (jnp.asarray under jit) falls back to a generic,
    # non-differentiable reduction.
    y = lax.reduce_window(x, np.asarray(init, x.dtype), reduce_fn, (1,) + window + (1,), (1,) + strides + (1,), padding)
    return unfold_batch(y, batch_shape)


def avg_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | int | None = None,
    padding: Padding = "VALID",
    count_include_pad: bool = True,
) -> jax.Array:
    """Average of each window.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> nnx.avg_pool(x, (2, 2), strides=(2, 2))[0, :, :, 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    >>> x = jnp.ones((1, 3, 1))
    >>> [round(v, 3) for v in nnx.avg_pool(x, (3,), padding="SAME")[0, :, 0].tolist()]
    [0.667, 1.0, 0.667]
    >>> nnx.avg_pool(x, (3,), padding="SAME", count_include_pad=False)[0, :, 0].tolist()
    [1.0, 1.0, 1.0]

    Args:
      inputs, window_shape, strides, padding: as for :func:`pool`.
      count_include_pad: divide by the full window size (True) or only by the
        number of real (unpadded) elements in the window (False).
    """
    inputs = jnp.asarray(inputs)
    if not jnp.issubdtype(inputs.dtype, jnp.inexact):
        inputs = inputs.astype(jnp.float32)
    total = pool(inputs, 0.0, lax.add, window_shape, strides, padding)
    if count_include_pad:
        return total / math.prod(window_shape)
    # Count the real elements per window by pooling ones over the spatial shape.
    rank = len(tuple(window_shape))
    ones = jnp.ones(inputs.shape[inputs.ndim - rank - 1 : -1] + (1,), inputs.dtype)
    return total / pool(ones, 0.0, lax.add, window_shape, strides, padding)


def max_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | int | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
    """Maximum of each window.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> x = jnp.array([[1.0, 5.0, 2.0, 0.0]])[..., None]     # (batch, length, features)
    >>> nnx.max_pool(x, (2,), strides=(2,))[0, :, 0].tolist()
    [5.0, 2.0]

    Args:
      inputs, window_shape, strides, padding: as for :func:`pool`.
    """
    inputs = jnp.asarray(inputs)
    return pool(inputs, _extreme(inputs.dtype, highest=False), lax.max, window_shape, strides, padding)


def min_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | int | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
    """Minimum of each window.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> x = jnp.array([[1.0, 5.0, 2.0, 0.0]])[..., None]
    >>> nnx.min_pool(x, (2,), strides=(2,))[0, :, 0].tolist()
    [1.0, 0.0]

    Args:
      inputs, window_shape, strides, padding: as for :func:`pool`.
    """
    inputs = jnp.asarray(inputs)
    return pool(inputs, _extreme(inputs.dtype, highest=True), lax.min, window_shape, strides, padding)


def _extreme(dtype: Any, *, highest: bool) -> Any:
    """The largest (``highest``) or smallest value of ``dtype``: the identity of min (max) pooling."""
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.inf if highest else -jnp.inf
    if dtype == jnp.bool_:
        return highest
    info = jnp.iinfo(dtype)
    return info.max if highest else info.min
