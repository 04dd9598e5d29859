"""flax.nnx's registry of Linen collection names for Variable types (``nnx.register_variable_name``).

Linen groups variables in named collections (``'params'``, ``'batch_stats'``);
nnxlite groups them by Variable type. The registry is the one-to-one map
between the two that :mod:`nnxlite.bridge` uses to convert in both
directions. The built-in pairs: ``params`` ↔ ``nnx.Param``, ``batch_stats``
↔ ``nnx.BatchStat``, ``cache`` ↔ ``nnx.Cache``, ``intermediates`` ↔
``nnx.Intermediate``, ``perturbations`` ↔ ``nnx.Perturbation``.

>>> import nnxlite as nnx
>>> @nnx.register_variable_name("counts", overwrite=True)
... class Count(nnx.Variable):
...     pass
>>> nnx.variable_name_from_type(Count), nnx.variable_type_from_name("params").__name__
('counts', 'Param')
"""

from __future__ import annotations

import functools
from typing import Any

from nnxlite.variables import BatchStat, Cache, Intermediate, Param, Perturbation, Variable

__all__ = ["register_variable_name", "variable_name_from_type", "variable_type_from_name"]

# collection name -> Variable type, in registration order
_REGISTRY: dict[str, type] = {}


def register_variable_name(name: str, typ: type | None = None, *, overwrite: bool = False) -> Any:
    """Map the Linen collection ``name`` to the Variable type ``typ`` (a decorator without ``typ``).

    A name already mapped raises unless ``overwrite=True``.
    """
    if typ is None:
        return functools.partial(register_variable_name, name, overwrite=overwrite)
    if not (isinstance(typ, type) and issubclass(typ, Variable)):
        raise TypeError(f"register_variable_name: expected a Variable subclass for {name!r}, got {typ!r}.")
    if not overwrite and name in _REGISTRY and _REGISTRY[name] is not typ:
        raise ValueError(
            f"register_variable_name: {name!r} is already mapped to {_REGISTRY[name].__name__}; pass "
            "overwrite=True to map it to " + typ.__name__ + "."
        )
    _REGISTRY[name] = typ
    return typ


def variable_type_from_name(name: str, /, *, base: type = Variable, allow_register: bool = False) -> type:
    """The Variable type of Linen collection ``name``; with ``allow_register``, a new ``base`` subclass named ``name``."""
    typ = _REGISTRY.get(name)
    if typ is None:
        if not allow_register:
            raise ValueError(
                f"The collection name {name!r} has no registered Variable type. Register one with "
                f"nnx.register_variable_name({name!r}, YourVariable), or pass allow_register=True."
            )
        typ = _REGISTRY[name] = type(name, (base,), {"__module__": __name__})
    return typ


def variable_name_from_type(typ: type, /, *, allow_register: bool = False) -> str:
    """The Linen collection name of Variable type ``typ`` (the inverse of :func:`variable_type_from_name`).

    With ``allow_register``, an unregistered type is registered under its class name.
    """
    for name, t in _REGISTRY.items():
        if t is typ:
            return name
    if not allow_register:
        raise ValueError(
            f"The Variable type {typ.__name__} has no registered collection name. Register one with "
            f"nnx.register_variable_name('name', {typ.__name__}), or pass allow_register=True."
        )
    if typ.__name__ in _REGISTRY:
        raise ValueError(
            f"The collection name {typ.__name__!r} is already mapped to another type "
            f"({_REGISTRY[typ.__name__].__module__}.{typ.__name__}); register {typ.__name__} under another name."
        )
    _REGISTRY[typ.__name__] = typ
    return typ.__name__


for _name, _typ in (
    ("params", Param), ("batch_stats", BatchStat), ("cache", Cache), ("intermediates", Intermediate),
    ("perturbations", Perturbation),
):
    register_variable_name(_name, _typ)
