"""flax.nnx's Variable-mode switches: ``var_defaults`` and ``use_eager_sharding``.

Each sets a process-wide default now and returns an object that restores
the previous value when used as a context manager, or applies the setting
only during calls when used as a decorator, as in flax.

``var_defaults(hijax=..., ref=...)`` is recorded and reported back, but
nnxlite has one kind of Variable (a Python box), so it changes nothing
else. ``use_eager_sharding`` is read by :func:`nnxlite.Variable`-creating
code that places values by their ``out_sharding`` metadata.

>>> import nnxlite as nnx
>>> nnx.var_defaults().hijax
False
>>> with nnx.var_defaults(hijax=True):
...     nnx.var_defaults().hijax
True
>>> nnx.var_defaults().hijax
False
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["var_defaults", "VarDefaults", "use_eager_sharding", "using_eager_sharding", "place_by_out_sharding"]

_SETTINGS: dict[str, bool] = {"hijax": False, "ref": False, "eager_sharding": True}


class _Setting:
    """Set now; as a context manager, restore on exit; as a decorator, set only during calls."""

    def __init__(self, updates: dict[str, bool]):
        self._updates = updates
        self._previous = {k: _SETTINGS[k] for k in updates}
        _SETTINGS.update(updates)

    def __enter__(self) -> "_Setting":
        return self

    def __exit__(self, *exc: Any) -> None:
        _SETTINGS.update(self._previous)

    def __call__(self, f: Callable) -> Callable:
        _SETTINGS.update(self._previous)  # decorating does not change the default

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            before = {k: _SETTINGS[k] for k in self._updates}
            _SETTINGS.update(self._updates)
            try:
                return f(*args, **kwargs)
            finally:
                _SETTINGS.update(before)

        return wrapper

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._updates}>"


@dataclasses.dataclass(frozen=True)
class VarDefaults(Mapping):
    """The current Variable defaults (``nnx.var_defaults()``): ``hijax`` and ``ref``."""

    hijax: bool
    ref: bool

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(("hijax", "ref"))

    def __len__(self) -> int:
        return 2


def var_defaults(*, hijax: bool | None = None, ref: bool | None = None) -> Any:
    """With no arguments the current :class:`VarDefaults`; with some, set them (see the module doc).

    >>> import nnxlite as nnx
    >>> @nnx.var_defaults(ref=True)
    ... def f():
    ...     return nnx.var_defaults().ref
    >>> f(), nnx.var_defaults().ref
    (True, False)
    """
    if hijax is None and ref is None:
        return VarDefaults(hijax=_SETTINGS["hijax"], ref=_SETTINGS["ref"])
    updates = {k: bool(v) for k, v in (("hijax", hijax), ("ref", ref)) if v is not None}
    return _Setting(updates)


def use_eager_sharding(value: bool) -> _Setting:
    """Whether Variables with ``out_sharding`` metadata are placed on the current mesh when created.

    >>> import nnxlite as nnx
    >>> with nnx.use_eager_sharding(False):
    ...     nnx.using_eager_sharding()
    False
    """
    return _Setting({"eager_sharding": bool(value)})


def using_eager_sharding() -> bool:
    """The current :func:`use_eager_sharding` setting (default True, as in flax).

    >>> import nnxlite as nnx
    >>> nnx.using_eager_sharding()
    True
    """
    return _SETTINGS["eager_sharding"]


def place_by_out_sharding(value: Any, spec: Any, *, only_mesh_axes: bool = False) -> Any:
    """Lay ``value`` out by a Variable's ``out_sharding`` metadata on the current mesh (flax's eager sharding).

    Does nothing without a mesh set (``jax.set_mesh``), with eager sharding
    off, or for values that are not arrays. Inside a trace it is a sharding
    constraint; eagerly, a ``device_put``. With ``only_mesh_axes``, names
    that are not axes of the mesh (logical names mapped later by sharding
    rules) leave the value where it is.
    """
    import jax
    from jax.sharding import PartitionSpec

    if spec is None or not _SETTINGS["eager_sharding"] or not hasattr(value, "shape"):
        return value
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return value
    if only_mesh_axes:
        if not isinstance(spec, (tuple, list)) or len(spec) != len(value.shape):
            return value
        axes = set(mesh.axis_names)
        names = [n for dim in spec if dim is not None for n in (dim if isinstance(dim, tuple) else (dim,))]
        if not all(isinstance(n, str) and n in axes for n in names):
            return value
    pspec = spec if isinstance(spec, PartitionSpec) else PartitionSpec(*spec)
    if isinstance(value, jax.core.Tracer):  # Explicit axes need reshard; Auto ones take a constraint
        if mesh.are_all_axes_explicit:
            return jax.sharding.reshard(value, pspec)
        return jax.lax.with_sharding_constraint(value, pspec)
    if isinstance(value, jax.ShapeDtypeStruct):
        return value
    return jax.device_put(value, pspec)
