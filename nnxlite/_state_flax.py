"""flax.nnx's mutable-mapping methods of a State (``pop``, ``update``, ``setdefault``, ...).

A flax State is a mutable dict; these give an nnxlite :class:`~nnxlite.State`
the same methods, as edits of its flat leaves. Edits made through a sub-State
(``state['linear']``) reach the State it came from, as ``__setitem__`` does.

>>> import jax.numpy as jnp, nnxlite as nnx
>>> state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
>>> bias = state.pop("bias")
>>> list(state), bias.shape
(['kernel'], (3,))
>>> state.update({"bias": jnp.zeros(3)}); sorted(state)
['bias', 'kernel']
"""

from __future__ import annotations

from typing import Any

_MISSING: Any = object()


class FlaxStateMethods:
    """Mixin for :class:`~nnxlite.State`; see the module docstring."""

    __slots__ = ()

    def __delitem__(self, key: Any) -> None:
        prefix = key if isinstance(key, tuple) else (key,)
        self._delete_prefix(prefix)

    def _delete_prefix(self, prefix: tuple) -> None:
        from nnxlite import _epoch
        from nnxlite.state import StateStructure, _init

        s = self._structure
        n = len(prefix)
        keep = [i for i, p in enumerate(s.paths) if p[:n] != prefix]
        if len(keep) == len(s.paths):
            raise KeyError(f"State has no key {prefix[0] if n == 1 else prefix!r}; top-level keys are {list(self)!r}")
        structure = StateStructure(
            tuple(s.paths[i] for i in keep), None if s.defs is None else tuple(s.defs[i] for i in keep)
        )
        _init(self, [self._leaves[i] for i in keep], structure, self._parent)
        if self._parent is not None:
            parent, key = self._parent
            parent._delete_prefix((key,) + prefix)
        _epoch.bump()

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (a leaf or a sub-State); ``default`` if absent."""
        try:
            value = self[key]
        except KeyError:
            if default is _MISSING:
                raise
            return default
        del self[key]
        return value

    def popitem(self) -> tuple[Any, Any]:
        """Remove and return the first ``(key, value)`` pair."""
        for key in self:
            return key, self.pop(key)
        raise KeyError("popitem(): State is empty")

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """``self[key]``, first setting it to ``default`` if absent."""
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set every ``key: value`` of ``other`` (a mapping or pairs) and ``kwargs``."""
        items = other.items() if hasattr(other, "items") else other
        for key, value in [*items, *kwargs.items()]:
            self[key] = value

    def clear(self) -> None:
        """Remove every leaf."""
        for key in list(self):
            del self[key]

    def map(self, f: Any) -> Any:
        """``nnx.map_state(f, self)``: a new State with ``f(path, value)`` at every leaf."""
        from nnxlite.compat import map_state

        return map_state(f, self)

    def flat_state(self) -> list:
        """``nnx.to_flat_state(self)``: ``[(path, Variable), ...]``."""
        from nnxlite.compat import to_flat_state

        return to_flat_state(self)

    @classmethod
    def from_flat_path(cls, flat_state: Any, /) -> Any:
        """``nnx.from_flat_state(flat_state)``: a State from ``{path: value}`` or ``[(path, value), ...]``."""
        from nnxlite.compat import from_flat_state

        return from_flat_state(flat_state)
