"""Dtype promotion: how every layer decides the dtype it computes in.

Layers take two dtype arguments:

* ``param_dtype`` — the dtype parameters are *stored* in (default float32);
* ``dtype`` — the dtype the layer *computes* in. ``None`` (the default) means
  "the common type of the inputs and the parameters", so float32 parameters
  with bfloat16 inputs compute in float32, and ``dtype=jnp.bfloat16`` casts
  everything down first (mixed precision).

>>> import jax.numpy as jnp
>>> from nnxlite.nn.dtypes import promote_dtype
>>> x, w = promote_dtype(jnp.ones(2, jnp.bfloat16), jnp.ones(2, jnp.float32))
>>> x.dtype, w.dtype
(dtype('float32'), dtype('float32'))
>>> x, w = promote_dtype(jnp.ones(2), jnp.ones(2), dtype=jnp.bfloat16)
>>> x.dtype
dtype(bfloat16)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["promote_dtype", "result_dtype"]


def result_dtype(*arrays: Any, dtype: Any = None, inexact: bool = True) -> Any:
    """The dtype :func:`promote_dtype` would cast to (``None`` entries are ignored).

    >>> import jax.numpy as jnp
    >>> from nnxlite.nn.dtypes import result_dtype
    >>> result_dtype(jnp.ones(2, jnp.int32))   # integers become floating point
    dtype('float32')
    >>> result_dtype(jnp.ones(2, jnp.int32), inexact=False)
    dtype('int32')
    """
    if dtype is not None:
        return jnp.dtype(dtype)
    present = [a for a in arrays if a is not None]
    key = _dtype_key(present, inexact)
    if key is not None:
        target = _RESULT_CACHE.get(key)
        if target is not None:
            return target
    target = jnp.result_type(*present)
    if inexact and not jnp.issubdtype(target, jnp.inexact):
        target = jnp.promote_types(jnp.float32, target)
    if key is not None and len(_RESULT_CACHE) < 4096:
        _RESULT_CACHE[key] = target
    return target


# Eager layers call this on every forward: jnp.result_type costs several
# microseconds, so remember it per (dtype, weak type) combination of jax arrays.
_RESULT_CACHE: dict = {}


def _dtype_key(present: list, inexact: bool) -> tuple | None:
    key = [inexact]
    for a in present:
        if not isinstance(a, jax.Array):
            return None  # numpy arrays, Python scalars: take the general path
        key.append(a.dtype)
        key.append(a.weak_type)
    return tuple(key)


def promote_dtype(*arrays: Any, dtype: Any = None, inexact: bool = True) -> tuple:
    """Cast ``arrays`` to ``dtype``, or to their common type when ``dtype`` is None.

    ``None`` entries pass through unchanged (an absent bias, say), which
    lets a layer write ``x, kernel, bias = promote_dtype(x, kernel, bias)``.
    With ``inexact=True`` an all-integer set of arrays is promoted to float.
    flax.nnx's spelling, one tuple of arrays (``promote_dtype((x, kernel))``),
    works too and is what layers call their ``promote_dtype=`` function with.

    >>> import jax.numpy as jnp
    >>> from nnxlite.nn.dtypes import promote_dtype
    >>> x, bias = promote_dtype(jnp.arange(3), None)
    >>> x.dtype, bias
    (dtype('float32'), None)
    """
    if len(arrays) == 1 and isinstance(arrays[0], (tuple, list)):  # flax.nnx: one tuple of arrays
        arrays = tuple(arrays[0])
    target = result_dtype(*arrays, dtype=dtype, inexact=inexact)
    # A jax array already in the target dtype is returned as is: the cast would be a
    # no-op that still costs an eager dispatch.
    return tuple(
        a if a is None or (isinstance(a, jax.Array) and a.dtype == target) else jnp.asarray(a, target)
        for a in arrays
    )
