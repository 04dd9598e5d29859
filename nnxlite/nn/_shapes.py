"""Small shape helpers shared by convolution and pooling (private).

They turn the friendly spellings users write (``strides=2``,
``padding=1``, ``padding=[(1, 0), 2]``) into the one canonical, hashable
form that ``jax.lax`` expects, and they fold any number of leading batch
axes into one so the lax ops see ``(batch, *spatial, features)``.
"""

from __future__ import annotations

from collections.abc import Sequence
import jax
from jax import lax

Padding = str | int | Sequence[int | tuple[int, int]]

PADDING_MODES = ("SAME", "VALID", "SAME_LOWER", "CAUSAL", "CIRCULAR", "REFLECT")


def as_tuple(value: int | Sequence[int] | None, rank: int, name: str, owner: str) -> tuple[int, ...]:
    """``None`` -> ``(1,)*rank``; ``k`` -> ``(k,)*rank``; a sequence must have ``rank`` entries."""
    if value is None:
        return (1,) * rank
    if isinstance(value, int):
        return (value,) * rank
    out = tuple(int(v) for v in value)
    if len(out) != rank:
        raise ValueError(
            f"{owner}: {name}={tuple(value)} has {len(out)} entries but the window has {rank} "
            f"spatial dimension(s); give one int or {rank} ints."
        )
    return out


def canonical_padding(padding: Padding, rank: int, owner: str) -> str | tuple[tuple[int, int], ...]:
    """A padding mode string (upper-cased) or a tuple of ``rank`` ``(low, high)`` pairs."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode not in PADDING_MODES:
            raise ValueError(f"{owner}: unknown padding {padding!r}; use one of {PADDING_MODES}, an int, or (low, high) pairs.")
        return mode
    if isinstance(padding, int):
        return ((padding, padding),) * rank
    pairs = []
    for p in padding:
        if isinstance(p, int):
            pairs.append((p, p))
        elif len(p) == 2:
            pairs.append((int(p[0]), int(p[1])))
        else:
            pairs = None
            break
    if pairs is None or len(pairs) != rank:
        raise ValueError(
            f"{owner}: invalid padding {padding!r}; give a string such as 'SAME', one int, "
            f"or {rank} entries that are each an int or a (low, high) pair."
        )
    return tuple(pairs)


def fold_batch(x: jax.Array, trailing: int, owner: str) -> tuple[jax.Array, tuple[int, ...]]:
    """Reshape ``(*batch, *rest)`` (``rest`` has ``trailing`` axes) to ``(prod(batch), *rest)``.

    Returns the folded array and the batch shape to restore with
    :func:`unfold_batch`. No batch axis at all is allowed (a single example).
    """
    if x.ndim < trailing:
        raise ValueError(
            f"{owner}: expected inputs with at least {trailing} axes (*batch, {trailing - 1} spatial, features), "
            f"got shape {tuple(x.shape)}."
        )
    batch_shape = tuple(x.shape[: x.ndim - trailing])
    return x.reshape((-1,) + tuple(x.shape[x.ndim - trailing :])), batch_shape


def unfold_batch(y: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
    """Undo :func:`fold_batch` on an output whose first axis is the folded batch."""
    return y.reshape(batch_shape + tuple(y.shape[1:]))


def channels_last(rank: int) -> lax.ConvDimensionNumbers:
    """Dimension numbers for ``(N, *spatial, C)`` inputs and ``(*window, in, out)`` kernels."""
    spatial = tuple(range(1, rank + 1))
    lhs = (0, rank + 1) + spatial
    rhs = (rank + 1, rank) + tuple(range(rank))
    return lax.ConvDimensionNumbers(lhs, rhs, lhs)

