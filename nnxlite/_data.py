"""What counts as *data* (state) and what as *static* structure, flax 0.12's rules.

An attribute of a module is **data** when its value is an array
(``jax.Array``, ``np.ndarray``), a Variable, a graph node (a module, a
Context, a tracked list or dict), an instance of a type registered with
:func:`register_data_type`, or when it was assigned through
:func:`data`. Everything else is **static**: it travels in the GraphDef,
so it must be hashable. :func:`static` asserts that an attribute holds no
data.

Data that is not a Variable (a plain array attribute) is still state: it is
a leaf of ``nnx.state(model)``, of ``jax.tree.leaves(model)`` and of every
transform, and ``merge`` puts the plain value back (no Variable box). In the
GraphDef such a leaf has the type :class:`DataLeaf`, which Variable-type
filters (``nnx.Param``, ``nnx.Variable``) do not match; ``...`` and path
filters do.

This file is the leaf-level half (used by ``graph.py``); the class
:class:`~nnxlite.pytree.Pytree` applies the rules on assignment.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Annotated, Any, TypeVar

import jax
import numpy as np

__all__ = ["data", "static", "is_data", "register_data_type", "DataLeaf", "Data", "Static"]

_MISSING = dataclasses.MISSING
_A = TypeVar("_A")
_DATA_MARK = "__data__"
_STATIC_MARK = "__static__"

# Class-level annotations, flax's older spelling of nnx.data()/nnx.static() fields:
# ``x: nnx.Data[list]`` makes ``x`` data in every instance, ``y: nnx.Static[int]`` static.
Data = Annotated[_A, _DATA_MARK]
Static = Annotated[_A, _STATIC_MARK]


def annotation_status(annotation: Any) -> bool | None:
    """True for an ``nnx.Data[...]`` annotation, False for ``nnx.Static[...]``, else None.

    String annotations (``from __future__ import annotations``) are read by name.

    >>> import nnxlite as nnx
    >>> from nnxlite._data import annotation_status
    >>> annotation_status(nnx.Data[int]), annotation_status("nnx.Static[int]"), annotation_status(int)
    (True, False, None)
    """
    if isinstance(annotation, str):
        head = annotation.replace(" ", "").split("[", 1)[0].rsplit(".", 1)[-1]
        return True if head == "Data" else False if head == "Static" else None
    marks = getattr(annotation, "__metadata__", ())
    return True if _DATA_MARK in marks else False if _STATIC_MARK in marks else None
_DATA_REGISTRY: set[type] = set()
# Types that are data by value (Variables and graph nodes are handled by the traversal).
ARRAY_TYPES = (jax.Array, np.ndarray)


def register_data_type(type_: type, /) -> type:
    """Make values of ``type_`` data (state) when assigned to a module attribute.

    Usable as a decorator. The value becomes one leaf (register ``type_`` as a
    JAX pytree too if its insides should be separate leaves).

    >>> import dataclasses, jax, nnxlite as nnx
    >>> @nnx.register_data_type
    ... @dataclasses.dataclass(frozen=True)
    ... class Scale:
    ...     value: float
    >>> class Foo(nnx.Module):
    ...     def __init__(self):
    ...         self.scale = Scale(2.0)   # data without nnx.data(...)
    >>> nnx.is_data(Scale(1.0)), jax.tree.leaves(Foo())
    (True, [Scale(value=2.0)])
    """
    _DATA_REGISTRY.add(type_)
    return type_


def is_data_value(value: Any) -> bool:
    """Array-like data that is neither a Variable nor a graph node (the traversal's check)."""
    return isinstance(value, ARRAY_TYPES) or type(value) in _DATA_REGISTRY


def is_data(value: Any, /) -> bool:
    """Whether ``value`` is data when assigned to a module attribute (flax 0.12's rule).

    Arrays, Variables, graph nodes (modules, Contexts, ``nnx.List``/``nnx.Dict``)
    and registered data types are data; everything else (numbers, strings,
    plain lists, tuples and dicts) is static unless assigned with :func:`data`.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> nnx.is_data(jnp.zeros(2)), nnx.is_data(nnx.Param(1.0)), nnx.is_data(nnx.Rngs(0))
    (True, True, True)
    >>> nnx.is_data(42), nnx.is_data("relu"), nnx.is_data([jnp.zeros(2)])
    (False, False, False)
    """
    from nnxlite import graph
    from nnxlite.variables import Variable

    if isinstance(value, Variable) or is_data_value(value):
        return True
    return isinstance(value, graph._NODE_BASES) or _is_tracked_container(value)


def _is_tracked_container(value: Any) -> bool:
    from nnxlite.pytree import Dict, List

    return isinstance(value, (List, Dict))


def _annotation(value: Any, kwargs: dict, is_static: bool, name: str) -> Any:
    if value is not _MISSING and kwargs:
        raise TypeError(
            f"nnx.{name}() takes either one positional value (self.x = nnx.{name}(x)) or dataclass field "
            f"keywords (x: int = nnx.{name}(default=0)), not both."
        )
    metadata = dict(kwargs.pop("metadata", None) or {})
    if "static" in metadata:
        raise ValueError(f"nnx.{name}(metadata=...) must not contain the key 'static': nnx.{name} sets it.")
    metadata["nnx_value"] = value
    metadata["static"] = is_static
    return dataclasses.field(**kwargs, metadata=metadata)


def data(value: Any = _MISSING, /, **kwargs: Any) -> Any:
    """Mark an attribute as data (state), whatever the type of its value.

    Assign the result directly to a module attribute (``self.count = nnx.data(0)``),
    or use it as a dataclass field specifier in an :func:`nnx.dataclass
    <nnxlite.pytree.dataclass>` (``count: int = nnx.data(default=0)``). The
    attribute stays data when it is later reassigned.

    >>> import jax, nnxlite as nnx
    >>> class Counter(nnx.Module):
    ...     def __init__(self):
    ...         self.count = nnx.data(0)   # an int leaf, not static structure
    ...         self.name = "counter"      # static
    >>> jax.tree.leaves(Counter())
    [0]
    """
    return _annotation(value, kwargs, False, "data")


def static(value: Any = _MISSING, /, **kwargs: Any) -> Any:
    """Mark an attribute as static structure; assigning data to it then raises.

    Same two spellings as :func:`data`. A static value travels in the GraphDef
    (it must be hashable) and is a compile-time constant under ``jax.jit``.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> class Foo(nnx.Module):
    ...     def __init__(self, n):
    ...         self.n = nnx.static(n)
    >>> jax.tree.leaves(Foo(3))
    []
    >>> try:
    ...     Foo(jnp.ones(2))
    ... except ValueError as e:
    ...     print(str(e).splitlines()[0])
    Foo.n is marked nnx.static(...) but the value holds data (Array).
    """
    return _annotation(value, kwargs, True, "static")


def annotation_of(value: Any) -> tuple[Any, bool] | None:
    """``(inner value, is_static)`` when ``value`` came from :func:`data`/:func:`static`, else None."""
    if type(value) is dataclasses.Field and "nnx_value" in value.metadata:
        return value.metadata["nnx_value"], value.metadata["static"]
    return None


def has_marker(container: Any) -> bool:
    """Whether a list/tuple/dict directly holds a :func:`data`/:func:`static` marker."""
    values = container.values() if isinstance(container, dict) else container
    return any(annotation_of(v) is not None for v in values)


# ---------------------------------------------------------------------------------
# Leaves of state that are not Variables
# ---------------------------------------------------------------------------------
class DataLeaf:
    """The type recorded for a plain (non-Variable) data leaf, such as an array attribute.

    ``nnx.state(model).variables()`` yields these boxes for plain leaves; no
    module attribute ever holds one (``merge`` puts the bare value back).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> class Foo(nnx.Module):
    ...     def __init__(self):
    ...         self.x = jnp.ones(2)
    >>> [type(v).__name__ for _, v in nnx.state(Foo()).variables()]
    ['DataLeaf']
    """

    __slots__ = ("raw_value", "_metadata")

    @property
    def value(self) -> Any:
        return self.raw_value

    @value.setter
    def value(self, new: Any) -> None:
        self.raw_value = new

    def __repr__(self) -> str:
        return f"DataLeaf({self.raw_value!r})"


_EMPTY: dict = {}


class _Slot(DataLeaf):
    """A live handle on one plain data leaf of a graph: reading and writing go to its owner.

    The traversal lists these where it lists Variables, so ``update`` and the
    transforms write plain leaves back exactly as they write Variables. One
    slot exists per (owner, key) while anything holds it, so traversals of
    the same graph agree on identities.
    """

    __slots__ = ("owner", "key", "__weakref__")
    _metadata = _EMPTY

    def __repr__(self) -> str:
        return f"<data leaf {type(self.owner).__name__}[{self.key!r}]>"


class _AttrSlot(_Slot):
    __slots__ = ()

    @property
    def raw_value(self) -> Any:
        return self.owner.__dict__[self.key]

    @raw_value.setter
    def raw_value(self, new: Any) -> None:
        self.owner.__dict__[self.key] = new  # a value edit, not structural: no epoch bump


class _ListSlot(_Slot):
    __slots__ = ()

    @property
    def raw_value(self) -> Any:
        return list.__getitem__(self.owner, self.key)

    @raw_value.setter
    def raw_value(self, new: Any) -> None:
        list.__setitem__(self.owner, self.key, new)


class _DictSlot(_Slot):
    __slots__ = ()

    @property
    def raw_value(self) -> Any:
        return dict.__getitem__(self.owner, self.key)

    @raw_value.setter
    def raw_value(self, new: Any) -> None:
        dict.__setitem__(self.owner, self.key, new)


class _StateSlot(_Slot):
    __slots__ = ()

    @property
    def raw_value(self) -> Any:
        st = self.owner
        return st._leaves[st._structure.index[(self.key,)]]

    @raw_value.setter
    def raw_value(self, new: Any) -> None:
        self.owner._set_path((self.key,), new)


# A slot holds its owner strongly, so while a slot is alive its owner's id is unique.
_SLOTS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def slot(owner: Any, key: Any, slot_type: type) -> _Slot:
    """The slot for ``owner``'s entry ``key`` (the same object while it is referenced)."""
    k = (id(owner), key)
    s = _SLOTS.get(k)
    if s is None or s.owner is not owner or type(s) is not slot_type:
        s = object.__new__(slot_type)
        s.owner = owner
        s.key = key
        _SLOTS[k] = s
    return s


def holds_data(value: Any, _seen: set | None = None) -> list[str]:
    """Type names of the data found anywhere inside ``value`` (for static-attribute checks)."""
    from nnxlite import graph
    from nnxlite.variables import Variable

    found: list[str] = []
    seen = _seen if _seen is not None else set()

    def walk(x: Any) -> None:
        if id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, Variable) or is_data_value(x) or isinstance(x, graph._NODE_BASES):
            found.append("Array" if isinstance(x, jax.Array) else type(x).__name__)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)

    walk(value)
    return found
