"""``nnx.traversals``: flatten and unflatten nested mappings (flax's ``traverse_util`` helpers).

>>> import nnxlite as nnx
>>> flat = nnx.traversals.flatten_mapping({"a": 1, "b": {"c": 2, "d": {}}})
>>> flat
{('a',): 1, ('b', 'c'): 2}
>>> nnx.traversals.unflatten_mapping(flat)
{'a': 1, 'b': {'c': 2}}
>>> nnx.traversals.flatten_mapping({"b": {"c": 2}}, sep="/")
{'b/c': 2}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["flatten_mapping", "flatten_to_sequence", "unflatten_mapping", "empty_node"]


class _EmptyNode:
    """Marks an empty mapping kept by ``flatten_mapping(..., keep_empty_nodes=True)``."""

    def __repr__(self) -> str:
        return "empty_node"


empty_node = _EmptyNode()


def flatten_to_sequence(xs: Mapping, /, *, is_leaf: Callable[[tuple, Any], bool] | None = None) -> list:
    """``[(path, leaf), ...]`` of a nested mapping, in its own order; empty mappings vanish.

    >>> import nnxlite as nnx
    >>> nnx.traversals.flatten_to_sequence({"a": {"b": 1}, "c": 2})
    [(('a', 'b'), 1), (('c',), 2)]
    """
    if not isinstance(xs, Mapping):
        raise TypeError(f"flatten_to_sequence expects a Mapping, got {type(xs).__qualname__}.")
    out: list = []
    stack: list = [((), xs)]
    while stack:  # explicit stack: nesting depth is unbounded
        prefix, node = stack.pop()
        if not isinstance(node, Mapping) or (is_leaf is not None and prefix and is_leaf(prefix, node)):
            out.append((prefix, node))
            continue
        stack.extend(((*prefix, k), v) for k, v in reversed(list(node.items())))
    return out


def flatten_mapping(xs: Mapping, /, *, keep_empty_nodes: bool = False,
                    is_leaf: Callable[[tuple, Any], bool] | None = None, sep: str | None = None) -> dict:
    """``{path: leaf}`` of a nested mapping; ``sep`` joins string paths (``'a/b'``).

    Empty mappings are dropped, or kept as ``empty_node`` with ``keep_empty_nodes``.
    """
    if not isinstance(xs, Mapping):
        raise TypeError(f"flatten_mapping expects a Mapping, got {type(xs).__qualname__}.")

    def marked(prefix: tuple, node: Any) -> bool:
        return (is_leaf is not None and is_leaf(prefix, node)) or (
            keep_empty_nodes and isinstance(node, Mapping) and not node and prefix != ()
        )

    out = {}
    for path, leaf in flatten_to_sequence(xs, is_leaf=marked):
        if keep_empty_nodes and isinstance(leaf, Mapping) and not leaf and not (is_leaf and is_leaf(path, leaf)):
            leaf = empty_node
        out[sep.join(path) if sep is not None else path] = leaf
    return out


def unflatten_mapping(xs: Mapping | Iterable, /, *, sep: str | None = None) -> dict:
    """The nested dict of ``{path: leaf}`` (or ``[(path, leaf), ...]``); ``empty_node`` becomes ``{}``."""
    items = xs.items() if isinstance(xs, Mapping) else xs
    out: dict = {}
    for path, value in items:
        if sep is not None:
            path = tuple(path.split(sep))
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = {} if value is empty_node else value
    return out
