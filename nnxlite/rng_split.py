"""``nnx.split_rngs`` / ``nnx.restore_rngs``: flax.nnx's explicit RNG splitting.

nnxlite's ``vmap`` and ``scan`` already split RNG streams per lane or step by
default, so nnxlite code never needs this. flax.nnx code splits explicitly
before a transform and maps the split state with ``nnx.StateAxes``
(``{nnx.RngState: 0, ...}``) or an int axis; that works unchanged, because a
stream whose keys are already split is mapped along its entry's axis instead
of being split again.

>>> import jax.numpy as jnp, nnxlite as nnx
>>> rngs = nnx.Rngs(params=0, dropout=1)
>>> with nnx.split_rngs(rngs, splits=5, only="params"):
...     rngs.params.key.shape, rngs.dropout.key.shape
((5, 2), (2,))
>>> rngs.params.key.shape                 # restored on exit
(2,)
>>> @nnx.split_rngs(splits=3)
... @nnx.vmap(in_axes=(nnx.StateAxes({nnx.RngState: 0}),))
... def draw(rngs):
...     return rngs.params()
>>> draw(rngs).shape
(3, 2)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite import filters as filterlib
from nnxlite import graph
from nnxlite.rng import RngStream

__all__ = ["split_rngs", "restore_rngs", "SplitBackups"]

_MISSING = object()


class SplitBackups:
    """What :func:`split_rngs` replaced: give it to :func:`restore_rngs`, or use it as a context manager."""

    def __init__(self, backups: list):
        self.backups = backups  # (stream, key value, count value) per split stream

    def __iter__(self) -> Iterator:
        return iter(self.backups)

    def __len__(self) -> int:
        return len(self.backups)

    def __enter__(self) -> "SplitBackups":
        return self

    def __exit__(self, *exc: Any) -> None:
        restore_rngs(self)


def restore_rngs(backups: SplitBackups) -> None:
    """Put back the keys and counters that :func:`split_rngs` replaced (the streams stay advanced by one draw)."""
    for stream, key, count in backups:
        stream.key.value = key
        stream.count.value = count


def _streams(node: Any, only: filterlib.Filter) -> list[RngStream]:
    pred = filterlib.to_predicate(only)
    found: dict[int, RngStream] = {}
    roots = jax.tree_util.tree_leaves(node, is_leaf=lambda x: isinstance(x, graph._NODE_BASES))
    for root in roots:
        if not isinstance(root, graph._NODE_BASES):
            continue
        for path, obj in graph.iter_graph(root):
            if isinstance(obj, RngStream) and id(obj) not in found:
                if pred((*path, "key"), obj.key) and pred((*path, "count"), obj.count):
                    found[id(obj)] = obj
    return list(found.values())


def _split_in_place(node: Any, splits, only, squeeze: bool) -> SplitBackups:
    if squeeze and splits != 1:
        raise ValueError(f"split_rngs: squeeze=True needs splits=1, got splits={splits!r}.")
    backups = []
    for stream in _streams(node, only):
        key = stream()  # the caller's stream advances by one draw, as in flax
        backups.append((stream, stream.key.raw_value, stream.count.raw_value))
        keys = jax.random.split(key, splits)
        if squeeze:
            keys = keys[0]
        shape = () if squeeze else ((splits,) if isinstance(splits, int) else tuple(splits))
        stream.key.value = keys
        stream.count.value = jnp.zeros(shape + jnp.shape(stream.count.raw_value), jnp.uint32)
    return SplitBackups(backups)


def split_rngs(
    node: Any = _MISSING,
    /,
    *,
    splits: int | tuple[int, ...],
    only: filterlib.Filter = ...,
    squeeze: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Split the RNG streams found in ``node`` into ``splits`` keys each (flax.nnx's ``split_rngs``).

    * ``split_rngs(node, splits=n)`` splits in place and returns a
      :class:`SplitBackups` (a context manager that restores the streams);
    * ``split_rngs(node, splits=n, graph_updates=False)`` returns a split copy
      and leaves ``node`` alone;
    * ``split_rngs(splits=n)`` is a decorator that splits the streams in the
      function's arguments for the duration of each call.

    ``only`` selects streams by filter (``'params'``, ``nnx.Not('dropout')``).
    See the module docstring for an example with ``nnx.vmap``.
    """
    if node is _MISSING:

        def decorator(f):
            @functools.wraps(f)
            def wrapper(*args, **kwargs):
                if graph_updates is False:
                    args, kwargs = split_rngs((args, kwargs), splits=splits, only=only, squeeze=squeeze, graph_updates=False)
                    return f(*args, **kwargs)
                with _split_in_place((args, kwargs), splits, only, squeeze):
                    return f(*args, **kwargs)

            return wrapper

        return decorator
    if graph_updates is False:
        copy = jax.tree_util.tree_map(lambda x: x, node)  # modules are pytrees: a fresh copy
        _split_in_place(copy, splits, only, squeeze)
        return copy
    return _split_in_place(node, splits, only, squeeze)
