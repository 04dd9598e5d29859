"""flax.nnx's graph contexts (``split_context``, ``merge_context``, ``update_context``) over nnxlite.

flax uses these to write custom transforms: objects split in one context share
one reference index, and an ``update_context`` carries object identity from the
outer split, through the transformed function, to the outer merge. nnxlite's
transforms do not need them (they traverse all arguments as one cached graph),
but code written against them runs:

* ``ctx.split(node, *filters)`` / ``ctx.merge(graphdef, *states)`` are
  ``nnx.split`` / ``nnx.merge``. Sharing *between separate* ``split`` calls of
  one context is not recorded (split the objects together, as a tuple, to keep
  it);
* inside ``update_context(tag)``, the outer ``merge_context(tag, False)``
  writes the result back into the object the outer ``split_context(tag)``
  split (the one whose GraphDef matches in structure), so ``m3 is m1`` holds
  as in flax. Structural changes made inside reach it through ``nnx.update``
  only when the structure is unchanged; otherwise a fresh object is returned.

>>> import jax, nnxlite as nnx
>>> m1 = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
>>> with nnx.update_context("example"):
...     with nnx.split_context("example") as ctx:
...         graphdef, state = ctx.split(m1)
...     graphdef_out, state_out = jax.jit(lambda s: nnx.split(nnx.merge(graphdef, s)), static_argnums=())(state)
...     with nnx.merge_context("example", False) as ctx:
...         m3 = ctx.merge(graphdef_out, state_out)
>>> m3 is m1
True
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from nnxlite import graph as _graph

__all__ = ["SplitContext", "MergeContext", "UpdateContext", "split_context", "merge_context", "update_context",
           "current_update_context"]

_UPDATE_CONTEXTS: contextvars.ContextVar[tuple] = contextvars.ContextVar("nnx_update_contexts", default=())


class UpdateContext:
    """State of one ``update_context(tag)``: the objects its outer splits saw, by GraphDef.

    >>> import nnxlite as nnx
    >>> with nnx.update_context("t") as ctx:
    ...     graphdef, state = ctx.split(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))
    >>> len(ctx.outer_objects)
    1
    """

    def __init__(self, tag: Hashable):
        self.tag = tag
        self.outer_objects: list[tuple[Any, Any]] = []  # (graphdef, object) of outer splits
        self.depth = 0
        self.inner_merged = False  # after an inner merge, splits are inner (inside the transform)

    def split(self, node: Any, *filters: Any) -> tuple:
        """``nnx.split``, remembering ``node`` for the outer merge of this context."""
        out = _graph.split(node, *filters)
        if self.depth == 0 and not self.inner_merged:
            self.outer_objects.append((out[0], node))
        return out

    def merge(self, graphdef: Any, state: Any, *states: Any) -> Any:
        """``nnx.merge``; in the outer context, write back into the object split there when possible."""
        for gd, obj in self.outer_objects:
            if gd == graphdef:
                _graph.update(obj, state, *states)
                return obj
        return _graph.merge(graphdef, state, *states)


class SplitContext:
    """``ctx.split(node, *filters)`` inside ``nnx.split_context``: ``nnx.split``.

    >>> import nnxlite as nnx
    >>> len(nnx.SplitContext().split(nnx.Linear(1, 1, rngs=nnx.Rngs(0)), nnx.Param, ...))
    3
    """

    def __init__(self, ctxtag: Hashable | None = None):
        self.ctxtag = ctxtag

    def split(self, node: Any, *filters: Any) -> tuple:
        if self.ctxtag is not None:
            return current_update_context(self.ctxtag).split(node, *filters)
        return _graph.split(node, *filters)


class MergeContext:
    """``ctx.merge(graphdef, *states)`` inside ``nnx.merge_context``: ``nnx.merge``.

    >>> import nnxlite as nnx
    >>> pair = nnx.split(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))
    >>> type(nnx.MergeContext().merge(*pair)).__name__
    'Linear'
    """

    def __init__(self, ctxtag: Hashable | None = None, inner: bool | None = None):
        self.ctxtag = ctxtag
        self.inner = inner

    def merge(self, graphdef: Any, state: Any, /, *states: Any) -> Any:
        if self.ctxtag is not None and self.inner is False:
            return current_update_context(self.ctxtag).merge(graphdef, state, *states)
        return _graph.merge(graphdef, state, *states)


@contextlib.contextmanager
def split_context(ctxtag: Hashable | None = None) -> Iterator[SplitContext]:
    """A context whose ``split`` is ``nnx.split`` (see the module docstring).

    >>> import nnxlite as nnx
    >>> with nnx.split_context() as ctx:
    ...     graphdef, state = ctx.split(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))
    >>> sorted(state)
    ['bias', 'kernel']
    """
    yield SplitContext(ctxtag)


@contextlib.contextmanager
def merge_context(ctxtag: Hashable | None = None, inner: bool | None = None) -> Iterator[MergeContext]:
    """A context whose ``merge`` is ``nnx.merge``; ``inner=False`` in an update context writes back.

    >>> import nnxlite as nnx
    >>> graphdef, state = nnx.split(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))
    >>> with nnx.merge_context() as ctx:
    ...     type(ctx.merge(graphdef, state)).__name__
    'Linear'
    """
    if ctxtag is not None and inner is None:
        raise ValueError("inner_merge must be specified when using ctxtag")
    ctx = MergeContext(ctxtag, inner)
    if ctxtag is not None and inner:
        current_update_context(ctxtag).inner_merged = True
        current_update_context(ctxtag).depth += 1
        try:
            yield ctx
        finally:
            current_update_context(ctxtag).depth -= 1
    else:
        yield ctx


class _UpdateContextManager:
    def __init__(self, tag: Hashable):
        self.tag = tag
        self._token: list = []

    def __enter__(self) -> UpdateContext:
        ctx = UpdateContext(self.tag)
        self._token.append(_UPDATE_CONTEXTS.set(_UPDATE_CONTEXTS.get() + (ctx,)))
        return ctx

    def __exit__(self, *exc: Any) -> None:
        _UPDATE_CONTEXTS.reset(self._token.pop())

    def __call__(self, f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return f(*args, **kwargs)

        return wrapper


def update_context(tag: Hashable) -> _UpdateContextManager:
    """A context (or decorator) in which outer split/merge with ``tag`` keep object identity.

    >>> import nnxlite as nnx
    >>> with nnx.update_context("t"):
    ...     nnx.current_update_context("t").tag
    't'
    """
    return _UpdateContextManager(tag)


def current_update_context(tag: Hashable) -> UpdateContext:
    """The innermost active ``update_context(tag)``; ``ValueError`` when there is none.

    >>> import nnxlite as nnx
    >>> try:
    ...     nnx.current_update_context("missing")
    ... except ValueError as e:
    ...     print(str(e).split(".")[0])
    No update context found for tag 'missing'
    """
    for ctx in reversed(_UPDATE_CONTEXTS.get()):
        if ctx.tag == tag:
            return ctx
    raise ValueError(f"No update context found for tag {tag!r}. Wrap the code in `with nnx.update_context({tag!r}):`.")
