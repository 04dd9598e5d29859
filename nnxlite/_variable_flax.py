"""flax.nnx's Variable methods (``get_value``, ``set_value``, ``copy``, ``get_metadata``, ...).

They are spellings over the one Variable: ``get_value()`` is ``.value``,
``set_value(v)`` is ``.value = v``, and metadata is the same dictionary that
``set_metadata`` edits. :class:`~nnxlite.Variable` inherits them.

>>> import jax.numpy as jnp, nnxlite as nnx
>>> w = nnx.Param(jnp.zeros(3), sharding=("embed",))
>>> w.set_value(jnp.ones(3)); float(w.get_value().sum())
3.0
>>> w.get_metadata("sharding"), w.has_metadata("tag"), w.type.__name__
(('embed',), False, 'Param')
"""

from __future__ import annotations

import types
from typing import Any

_MISSING: Any = object()


class FlaxVariableMethods:
    """Mixin for :class:`~nnxlite.Variable`; see the module docstring."""

    __slots__ = ()

    # ``nnx.Variable[A]`` in annotations and ``class Count(nnx.Variable[A])``, as flax's generic Variable.
    __class_getitem__ = classmethod(types.GenericAlias)

    # A subclass may override these two as hooks (flax.nnx): ``.value`` and ``v[i]`` then call
    # them, so they reach the stored value through Variable's own accessors, never ``self.value``.
    def get_value(self, *, index: Any = _MISSING) -> Any:
        """The held value (``.value``), or ``value[index]``."""
        from nnxlite.variables import Variable

        if index is _MISSING:
            return Variable.value.fget(self)
        return Variable.__getitem__(self, index)

    def set_value(self, value: Any, *, index: Any = _MISSING) -> None:
        """Replace the held value (``.value = value``), or set ``value`` at ``index``."""
        from nnxlite.variables import Variable

        if index is _MISSING:
            Variable.value.fset(self, value)
        else:
            Variable.__setitem__(self, index, value)

    def get_raw_value(self) -> Any:
        """The held value, without any read hook."""
        return self.raw_value

    def set_raw_value(self, value: Any) -> None:
        """Replace the held value, without any write hook."""
        self.raw_value = value

    @property
    def type(self) -> type:
        """The Variable's type (``type(variable)``)."""
        return type(self)

    # flax's Variable modes. nnxlite Variables are always plain Python boxes; the flags
    # are metadata that ``nnx.with_vars`` / ``nnx.vars_as`` (or the constructor) record.
    @property
    def hijax(self) -> bool:
        """The ``hijax`` flag (metadata; default False). It does not change behaviour in nnxlite."""
        return bool(self._metadata.get("hijax", False))

    @property
    def ref(self) -> bool:
        """The ``ref`` flag (metadata; default False). It does not change behaviour in nnxlite."""
        return bool(self._metadata.get("ref", False))

    @property
    def mutable(self) -> bool:
        """The ``mutable`` flag (metadata; default True). It does not change behaviour in nnxlite."""
        return bool(self._metadata.get("mutable", True))

    @property
    def required_metadata(self) -> tuple[str, ...]:
        """Metadata every Variable carries (none in nnxlite)."""
        return ()

    @property
    def sharding_names(self) -> Any:
        """The axis names of the ``sharding`` (or flax's ``out_sharding``) metadata."""
        meta = self._metadata
        return meta.get("sharding", meta.get("out_sharding", meta.get("sharding_names")))

    def get_metadata(self, name: str | None = None, default: Any = _MISSING, *, exclude_required: bool = False) -> Any:
        """All metadata as a dict, or the entry ``name`` (``default`` if absent and given)."""
        if name is None:
            return dict(self._metadata)
        if name in self._metadata:
            return self._metadata[name]
        if default is not _MISSING:
            return default
        raise KeyError(f"{type(self).__name__} has no metadata {name!r}; it has {sorted(self._metadata)}.")

    def has_metadata(self, name: str) -> bool:
        """Whether the metadata has an entry ``name``."""
        return name in self._metadata

    def del_metadata(self, name: str) -> None:
        """Remove the metadata entry ``name``."""
        if name not in self._metadata:
            raise KeyError(f"{type(self).__name__} has no metadata {name!r}; it has {sorted(self._metadata)}.")
        rest = {k: v for k, v in self._metadata.items() if k != name}
        self.set_metadata(rest, replace=True)

    def copy(self, value: Any = _MISSING, **updates: Any) -> Any:
        """A new Variable of the same type: the same value (or ``value``), metadata updated by ``updates``."""
        new = self.replace(self.raw_value if value is _MISSING else value)
        if updates:
            new.set_metadata(**updates)
        return new

    def copy_from(self, other: Any) -> None:
        """Take ``other``'s value and metadata (both must be of the same Variable type)."""
        if type(other) is not type(self):
            raise ValueError(
                f"copy_from: expected a {type(self).__name__}, got a {type(other).__name__}; "
                f"convert it first, e.g. {type(self).__name__}(other.value)."
            )
        if other is not self:
            self.raw_value = other.raw_value
            self.set_metadata(dict(other._metadata), replace=True)

    def update_from_state(self, state: Any) -> None:
        """Take the value and metadata of ``state`` (a Variable of the same type)."""
        self.copy_from(state)

    def to_state(self) -> Any:
        """A copy of this Variable (flax's Variables are their own state)."""
        return self.copy()

    @classmethod
    def from_metadata(cls, value: Any, metadata: dict[str, Any]) -> Any:
        """``cls(value, **metadata)``."""
        return cls(value, **metadata)

    def add_axis(self, axis_index: int, axis_name: Any) -> None:
        """Run the ``on_add_axis`` metadata hook(s), if any (flax's transform hook)."""
        for hook in _hooks(self, "on_add_axis"):
            hook(self, axis_index, axis_name)

    def remove_axis(self, axis_index: int, axis_name: Any) -> None:
        """Run the ``on_remove_axis`` metadata hook(s), if any."""
        for hook in _hooks(self, "on_remove_axis"):
            hook(self, axis_index, axis_name)


def _hooks(variable: Any, name: str) -> tuple:
    hooks = variable._metadata.get(name, ())
    return hooks if isinstance(hooks, tuple) else (hooks,)
