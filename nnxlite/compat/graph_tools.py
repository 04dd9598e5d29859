"""flax.nnx's graph walkers: ``recursive_map``, ``find_duplicates``, ``set_metadata``.

They walk the same object graph that ``nnx.split`` traverses (modules,
lists, dicts, tuples; Variables and plain values are leaves), with the same
canonical key order.

>>> import nnxlite as nnx
>>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Linear(2, 2, rngs=nnx.Rngs(1)))
>>> view = nnx.recursive_map(lambda path, node: node, model)
>>> view is model, view.layers[0].kernel is model.layers[0].kernel
(False, True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nnxlite import filters as filterlib
from nnxlite import graph as _graph
from nnxlite.state import _key_order
from nnxlite.variables import Variable

__all__ = ["recursive_map", "find_duplicates", "set_metadata"]


def _children(node: Any) -> list[tuple[Any, Any]] | None:
    """``(key, child)`` pairs of a graph node in canonical order; None for a leaf."""
    if isinstance(node, Variable):
        return None
    if isinstance(node, _graph._NODE_BASES):
        items = [(k, v) for k, v in vars(node).items() if not k.startswith("_nnx_")]
    elif isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, (list, tuple)):
        return list(enumerate(node))
    else:
        return None
    return sorted(items, key=lambda kv: _key_order(kv[0]))


def _shallow_copy(node: Any) -> Any:
    """A new graph of the same structure that holds the *same* Variables (flax's ``clone(variables=False)``)."""
    if _graph._node_kind(node) is None and not isinstance(node, Variable):
        return node
    flat = _graph._flat(node)
    return _graph.rebuild(flat.graphdef, flat.pytree_children())


def recursive_map(f: Callable[[tuple, Any], Any], node: Any, /, *, graph: bool | None = None) -> Any:
    """Apply ``f(path, x)`` to every node and leaf, bottom-up; what it returns replaces ``x``.

    The result is a new graph (the input is not changed) that shares the
    input's Variables, unless ``f`` replaces them. A node reached twice is
    visited once and both places get the same result. ``graph=`` is accepted
    for flax compatibility: nnxlite always walks the graph.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.relu)
    >>> def widen(path, node):
    ...     return nnx.Linear(2, 5, rngs=nnx.Rngs(0)) if isinstance(node, nnx.Linear) else node
    >>> nnx.recursive_map(widen, model)(jnp.ones((1, 2))).shape, model(jnp.ones((1, 2))).shape
    ((1, 5), (1, 3))
    """
    del graph
    results: dict[int, Any] = {}
    in_progress: set[int] = set()

    def visit(path: tuple, x: Any) -> Any:
        children = _children(x)
        key = id(x)
        if key in results:
            return results[key]
        if children is not None or isinstance(x, Variable):
            if key in in_progress:
                raise ValueError(
                    f"recursive_map: found a cycle at {'/'.join(map(str, path)) or '<root>'}: a "
                    f"{type(x).__name__} contains itself, so bottom-up mapping has no order."
                )
            in_progress.add(key)
        if children:
            changed = {}
            for k, child in children:
                new = visit((*path, k), child)
                if new is not child:
                    changed[k] = new
            if changed:
                x = _with_children(x, changed, path)
        out = f(path, x)
        if children is not None or isinstance(x, Variable):
            results[key] = out
        return out

    return visit((), _shallow_copy(node))


def _with_children(x: Any, changed: dict, path: tuple) -> Any:
    if isinstance(x, tuple):
        items = [changed.get(i, v) for i, v in enumerate(x)]
        return tuple(items) if type(x) is tuple else type(x)(*items)
    for k, v in changed.items():
        if isinstance(x, (list, dict)):
            x[k] = v
        else:
            setattr(x, k, v)
    return x


def find_duplicates(node: Any, /, *, only: filterlib.Filter = ...) -> list[list[tuple]]:
    """Every object (module or Variable) reachable by more than one path: a list of path lists.

    ``only`` restricts which objects count (a filter on ``(path, object)``).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> class Shared(nnx.Module):
    ...     def __init__(self):
    ...         self.a = nnx.Param(jnp.ones(1))
    ...         self.b = self.a
    >>> nnx.find_duplicates(Shared())
    [[('a',), ('b',)]]
    """
    predicate = filterlib.to_predicate(only)
    seen: dict[int, list] = {}
    stack: list[tuple[tuple, Any]] = [((), node)]
    while stack:  # depth-first in canonical key order, as split walks
        path, x = stack.pop()
        children = _children(x)
        is_identity = isinstance(x, (Variable, *_graph._NODE_BASES))
        if children is None and not is_identity:
            continue
        key = id(x)
        if key in seen:
            if is_identity and predicate(path, x):
                seen[key][1].append(path)
            continue
        seen[key] = (x, [path] if is_identity else [])
        if children:
            stack.extend(((*path, k), v) for k, v in reversed(children))
    return [paths for _, paths in seen.values() if len(paths) > 1]


def set_metadata(node: Any, /, *, only: filterlib.Filter = Variable, **metadata: Any) -> None:
    """Set ``metadata`` on every Variable of the graph matching ``only``, in place.

    >>> import nnxlite as nnx
    >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    >>> nnx.set_metadata(model, only=nnx.Param, differentiable=False)
    >>> model.kernel.get_metadata("differentiable")
    False
    """
    predicate = filterlib.to_predicate(only)
    for path, x in _graph.iter_graph(node):
        if isinstance(x, Variable) and predicate(path, x):
            x.set_metadata(**metadata)
