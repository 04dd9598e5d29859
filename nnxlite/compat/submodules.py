"""flax.nnx's submodule names (``nnx.helpers``, ``nnx.spmd``, ``nnx.pytreelib``, ...) over nnxlite.

flax programs sometimes reach names through a submodule
(``from flax.nnx import helpers``, ``nnx.spmd.get_partition_spec``). Each
submodule here is a small namespace of the same nnxlite objects that the top
level has; ``import nnxlite.helpers`` works too. Also the optimizer-state
Variable types ``OptArray``/``OptVariable`` (subclasses of ``nnx.OptState``)
and the helpers flax keeps in ``deprecations`` and ``proxy_caller``.

>>> import nnxlite as nnx
>>> nnx.helpers.TrainState is nnx.TrainState, nnx.spmd.get_partition_spec is nnx.get_partition_spec
(True, True)
>>> issubclass(nnx.OptArray, nnx.OptState)
True
"""

from __future__ import annotations

import functools
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

from nnxlite.variables import OptState

__all__ = ["OptArray", "OptVariable", "deprecated", "DelayedAccessor", "CallableProxy", "make_submodules"]


class OptArray(OptState):
    """Optimizer state for an array (flax's name; an ``nnx.OptState``)."""


class OptVariable(OptState):
    """Optimizer state for a Variable (flax's name; an ``nnx.OptState``)."""


def deprecated(f: Callable) -> Callable:
    """Wrap ``f`` so each call warns that the name is deprecated (flax's ``deprecations.deprecated``).

    >>> import warnings, nnxlite as nnx
    >>> old = nnx.deprecations.deprecated(lambda: 1)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     old(), caught[0].category.__name__
    (1, 'DeprecationWarning')
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(f"{getattr(f, '__name__', 'this function')} is deprecated.", DeprecationWarning, stacklevel=2)
        return f(*args, **kwargs)

    return wrapper


class DelayedAccessor:
    """A recorded chain of attribute and item accesses, replayed on an object later.

    >>> import nnxlite as nnx
    >>> get = nnx.proxy_caller.DelayedAccessor().real
    >>> get(3 + 4j)
    3.0
    """

    def __init__(self, actions: tuple = ()):
        self.actions = actions

    def __call__(self, x: Any) -> Any:
        for kind, key in self.actions:
            x = x[key] if kind == "item" else getattr(x, key)
        return x

    def __getattr__(self, name: str) -> "DelayedAccessor":
        return DelayedAccessor(self.actions + (("attr", name),))

    def __getitem__(self, key: Any) -> "DelayedAccessor":
        return DelayedAccessor(self.actions + (("item", key),))


class CallableProxy:
    """Calls ``callable(accessor, *args)``; attribute/item access extends the accessor (``graphdef.apply`` style).

    >>> import nnxlite as nnx
    >>> proxy = nnx.proxy_caller.CallableProxy(lambda acc, x: acc(x)())
    >>> proxy.bit_length(255)
    8
    """

    def __init__(self, callable: Callable, accessor: DelayedAccessor | None = None):
        self._callable = callable
        self._accessor = DelayedAccessor() if accessor is None else accessor

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._callable(self._accessor, *args, **kwargs)

    def __getattr__(self, name: str) -> "CallableProxy":
        return CallableProxy(self._callable, getattr(self._accessor, name))

    def __getitem__(self, key: Any) -> "CallableProxy":
        return CallableProxy(self._callable, self._accessor[key])


class _SummaryModule(types.ModuleType):
    """``nnx.summary``: the module of ``tabulate``, callable as ``nnx.summary(model, *inputs)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.tabulate(*args, **kwargs)


def _module(name: str, doc: str, names: dict[str, Any], kind: type = types.ModuleType) -> types.ModuleType:
    mod = kind(f"nnxlite.{name}", doc)
    for key, value in names.items():
        setattr(mod, key, value)
    mod.__all__ = sorted(names)
    sys.modules[mod.__name__] = mod
    return mod


def make_submodules(nnx: types.ModuleType) -> dict[str, types.ModuleType]:
    """Build flax's submodule namespaces from the (fully imported) ``nnxlite`` package."""
    g = nnx.__dict__

    def pick(*names: str) -> dict[str, Any]:
        return {n: g[n] for n in names}

    pytreelib = _module("pytreelib", "flax.nnx.pytreelib's names: nnxlite's Pytree and data/static rules.", pick(
        "Data", "Object", "Pytree", "Static", "Variable", "check_pytree", "data", "dataclass", "has_data", "is_data",
        "register_data_type", "static", "List", "Dict"))
    return {
        "pytreelib": pytreelib,
        "object": pytreelib,  # flax: `from . import pytreelib as object`
        "helpers": _module("helpers", "flax.nnx.helpers's names over nnxlite.", pick(
            "Dict", "GraphDef", "List", "Module", "Rngs", "Sequential", "State", "TrainState", "Variable")),
        "spmd": _module("spmd", "flax.nnx.spmd's names: nnxlite's sharding helpers.", pick(
            "PARTITION_NAME", "abstract_with_sharding", "as_abstract", "eval_shape", "get_abstract_model",
            "get_named_sharding", "get_partition_spec", "with_partitioning", "logical_axis_rules",
            "logical_to_mesh_axes")),
        "visualization": _module("visualization", "flax.nnx.visualization: nnx.display.", pick("display")),
        "summary": _module("summary", "flax.nnx.summary: nnx.tabulate (per-layer table).", pick("tabulate"),
                           _SummaryModule),
        "extract": _module("extract", "flax.nnx.extract's names: to_tree/from_tree/NodeStates/prefix.", pick(
            "NodeStates", "Pytree", "State", "from_tree", "prefix", "to_tree")),
        "reprlib": _module("reprlib", "flax.nnx.reprlib: object reprs. nnxlite renders with nnx.display "
                           "(treescope in a notebook, text in a terminal).", pick("display")),
        "tracers": _module("tracers", "flax.nnx.tracers: nnxlite checks trace levels inside Variables "
                           "(a Variable used outside its trace raises nnx.TracerLeakError).",
                           pick("TracerLeakError")),
        "deprecations": _module("deprecations", "flax.nnx.deprecations: the `deprecated` wrapper.",
                                {"deprecated": deprecated}),
        "proxy_caller": _module("proxy_caller", "flax.nnx.proxy_caller: delayed attribute/item access.",
                                {"DelayedAccessor": DelayedAccessor, "CallableProxy": CallableProxy}),
    }
