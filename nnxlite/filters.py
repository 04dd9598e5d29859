"""Filters: small predicates that pick Variables by type, path or value.

Anywhere nnxlite takes a filter (``split``, ``state``, ``grad(wrt=...)``,
``Optimizer(wrt=...)``) it accepts:

* a Variable type, e.g. ``nnx.Param`` (matches subclasses too);
* a tuple or list of filters (matches if any does);
* ``...`` or ``True`` (matches everything), ``None`` or ``False`` (nothing);
* a string, matching a path component exactly (``'kernel'``);
* a callable ``(path, variable) -> bool``;
* the combinators :class:`Not`, :class:`All`, :class:`Any`, :class:`PathContains`.

Example::

    >>> import nnxlite as nnx
    >>> only_kernels = nnx.All(nnx.Param, nnx.PathContains("kernel"))
    >>> pred = nnx.filters.to_predicate(only_kernels)
    >>> pred(("layer", "kernel"), nnx.Param(1.0)), pred(("layer", "bias"), nnx.Param(1.0))
    (True, False)
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any as _Any, Union

from nnxlite.variables import Variable

Path = tuple[_Any, ...]
Predicate = Callable[[Path, Variable], bool]
Filter = Union[type, tuple, list, str, Callable, "ellipsis", bool, None]  # noqa: F821

__all__ = [
    "Filter", "to_predicate", "matches", "Not", "All", "Any", "PathContains", "OfType", "WithTag", "Everything",
    "Nothing",
]


class OfType:
    """Matches Variables that are instances of ``type_`` (the default for a type)."""

    def __init__(self, type_: type):
        self.type = type_

    def __call__(self, path: Path, variable: Variable) -> bool:
        return isinstance(variable, self.type)

    def any_path(self, paths, variable: Variable) -> bool:
        return isinstance(variable, self.type)

    def __repr__(self) -> str:
        return f"OfType({self.type.__name__})"

    def __eq__(self, other) -> bool:
        return isinstance(other, OfType) and other.type is self.type

    def __hash__(self) -> int:
        return hash((OfType, self.type))


class PathContains:
    """Matches Variables whose path contains ``key`` as one component.

    ``exact=False`` (flax.nnx) matches when ``str(key)`` occurs inside any
    component's string.

    >>> PathContains("bias")(("layers", 0, "bias"), None)
    True
    >>> PathContains("lay", exact=False)(("layers", 0, "bias"), None)
    True
    """

    def __init__(self, key: _Any, exact: bool = True):
        self.key = key
        self.exact = exact

    def __call__(self, path: Path, variable: Variable) -> bool:
        if self.exact:
            return self.key in path
        return builtins.any(str(self.key) in str(part) for part in path)

    def any_path(self, paths, variable: Variable) -> bool:
        return builtins.any(self(p, variable) for p in paths)

    def __repr__(self) -> str:
        return f"PathContains({self.key!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, PathContains) and other.key == self.key and other.exact == self.exact

    def __hash__(self) -> int:
        return hash((PathContains, self.key, self.exact))


class WithTag:
    """Matches Variables whose ``tag`` metadata is ``tag`` (RNG state carries its stream name).

    >>> import nnxlite as nnx
    >>> rngs = nnx.Rngs(params=0, dropout=1)
    >>> len(nnx.state(rngs, nnx.WithTag("dropout")).flat())
    2
    """

    def __init__(self, tag: str):
        self.tag = tag

    def __call__(self, path: Path, variable: Variable) -> bool:
        meta = getattr(variable, "_metadata", None)
        return bool(meta) and meta.get("tag") == self.tag

    def __repr__(self) -> str:
        return f"WithTag({self.tag!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, WithTag) and other.tag == self.tag

    def __hash__(self) -> int:
        return hash((WithTag, self.tag))


class _Combinator:
    def __init__(self, *filters: Filter):
        self.filters = filters
        self.predicates = tuple(to_predicate(f) for f in filters)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.filters))})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.filters == self.filters

    def __hash__(self) -> int:
        return hash((type(self), self.filters))


class Any(_Combinator):
    """Matches if any of the filters matches (a tuple of filters means the same)."""

    def __call__(self, path: Path, variable: Variable) -> bool:
        return builtins.any(p(path, variable) for p in self.predicates)

    def any_path(self, paths, variable: Variable) -> bool:
        return builtins.any(matches(p, paths, variable) for p in self.predicates)


class All(_Combinator):
    """Matches if every filter matches."""

    def __call__(self, path: Path, variable: Variable) -> bool:
        return builtins.all(p(path, variable) for p in self.predicates)

    def any_path(self, paths, variable: Variable) -> bool:
        return builtins.all(matches(p, paths, variable) for p in self.predicates)


class Not(_Combinator):
    """Matches what ``filter`` does not: ``Not(nnx.Param)`` is all non-parameters."""

    def __init__(self, filter: Filter):
        super().__init__(filter)

    def __call__(self, path: Path, variable: Variable) -> bool:
        return not self.predicates[0](path, variable)

    def any_path(self, paths, variable: Variable) -> bool:
        return not matches(self.predicates[0], paths, variable)


class Everything:
    """Matches every Variable (``...`` and ``True`` mean this)."""

    def __call__(self, path: Path, variable: Variable) -> bool:
        return True

    def any_path(self, paths, variable: Variable) -> bool:
        return True

    def __repr__(self) -> str:
        return "Everything()"

    def __eq__(self, other) -> bool:
        return isinstance(other, Everything)

    def __hash__(self) -> int:
        return hash(Everything)


class Nothing:
    """Matches no Variable (``None`` and ``False`` mean this)."""

    def __call__(self, path: Path, variable: Variable) -> bool:
        return False

    def any_path(self, paths, variable: Variable) -> bool:
        return False

    def __repr__(self) -> str:
        return "Nothing()"

    def __eq__(self, other) -> bool:
        return isinstance(other, Nothing)

    def __hash__(self) -> int:
        return hash(Nothing)


class NameFilter(PathContains):
    """What a string filter means: the path contains ``name``, or the Variable is tagged ``name``.

    flax.nnx reads a string as a stream tag (``'dropout'`` selects the state of
    every dropout RNG stream, wherever it is stored); nnxlite also reads it as
    a path component, so both uses work.

    >>> import nnxlite as nnx
    >>> model = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1))   # keeps its stream as `rngs`
    >>> sorted(nnx.state(model, "dropout").flat())
    [('rngs', 'count'), ('rngs', 'key')]
    """

    def __call__(self, path: Path, variable: Variable) -> bool:
        if self.key in path:
            return True
        meta = getattr(variable, "_metadata", None)
        return bool(meta) and meta.get("tag") == self.key

    def __repr__(self) -> str:
        return f"NameFilter({self.key!r})"

    def __eq__(self, other) -> bool:
        return type(other) is NameFilter and other.key == self.key

    def __hash__(self) -> int:
        return hash((NameFilter, self.key))


def to_predicate(filter: Filter) -> Predicate:
    """Turn any accepted filter spelling into a ``(path, variable) -> bool`` predicate."""
    if filter is Ellipsis or filter is True:
        return Everything()
    if filter is None or filter is False:
        return Nothing()
    if isinstance(filter, type):
        return OfType(filter)
    if isinstance(filter, str):
        return NameFilter(filter)
    if isinstance(filter, (tuple, list)):
        return Any(*filter)
    if callable(filter):
        return filter
    raise TypeError(
        f"Invalid filter {filter!r} of type {type(filter).__name__}: expected a Variable type, "
        "a tuple/list of filters, a path string, ..., None, or a callable (path, variable) -> bool."
    )


def matches(predicate: Predicate, paths, variable: Variable) -> bool:
    """Does ``predicate`` select ``variable``, reachable by each path in ``paths``?

    A Variable inside a shared sub-module has several paths (``model.enc`` is
    also ``model.blocks[1]``). A path test (a string, :class:`PathContains`,
    a plain callable) matches when *any* of them does; :class:`All`,
    :class:`Any` and :class:`Not` combine those per-Variable answers, so
    ``Not(PathContains('enc'))`` leaves out everything reachable as ``enc``.
    ``paths`` is iterated lazily, canonical path first.

    >>> paths = [("blocks", 1, "kernel"), ("enc", "kernel")]
    >>> matches(PathContains("enc"), paths, None), matches(Not(PathContains("enc")), paths, None)
    (True, False)
    """
    any_path = getattr(predicate, "any_path", None)
    if any_path is not None:
        return any_path(paths, variable)
    return builtins.any(predicate(p, variable) for p in paths)


def partition_indices(items, filters: tuple, *, complete: bool, alternatives=None) -> list[list[int]]:
    """Group ``(path, variable)`` items by the first filter each matches.

    Returns one list of item indices per filter. With ``complete`` and more
    than one filter, every item must match one, otherwise a ``ValueError``
    names the unmatched paths. (A single filter just selects.)
    ``alternatives(i)``, if given, returns the other paths of item ``i``
    (an iterable, or None when it has only one): see :func:`matches`.
    """
    predicates = [to_predicate(f) for f in filters]
    buckets: list[list[int]] = [[] for _ in predicates]
    unmatched = []
    for i, (path, variable) in enumerate(items):
        more = alternatives(i) if alternatives is not None else None
        if more is None:
            for bucket, pred in zip(buckets, predicates):
                if pred(path, variable):
                    bucket.append(i)
                    break
            else:
                unmatched.append(path)
            continue
        paths = _LazyPaths(path, more)
        for bucket, pred in zip(buckets, predicates):
            if matches(pred, paths, variable):
                bucket.append(i)
                break
        else:
            unmatched.append(path)
    if complete and unmatched and len(filters) > 1:
        raise ValueError(_unmatched_text(unmatched, filters))
    return buckets


class _LazyPaths:
    """The canonical path, then the alternatives, generated once and remembered."""

    def __init__(self, first: Path, more):
        self._seen = [first]
        self._more = iter(more)

    def __iter__(self):
        i = 0
        while True:
            if i < len(self._seen):
                yield self._seen[i]
                i += 1
                continue
            nxt = next(self._more, None)
            if nxt is None:
                return
            self._seen.append(nxt)


def _unmatched_text(unmatched: list, filters: tuple) -> str:
    shown = ", ".join("/".join(map(str, p)) or "<root>" for p in unmatched[:20])
    more = f" (and {len(unmatched) - 20} more)" if len(unmatched) > 20 else ""
    return (
        f"Non-exhaustive filters {filters!r}: {len(unmatched)} Variable(s) matched none of them: "
        f"{shown}{more}. Add a filter for them, or end the filters with `...` to take the rest."
    )


def is_everything(filter: Filter) -> bool:
    return filter is Ellipsis or filter is True or isinstance(filter, Everything)
