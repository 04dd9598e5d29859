"""Pytree: graph-node objects (modules, Contexts, ...) that are also JAX pytrees.

Every :class:`Pytree` subclass (``nnx.Module`` is one) is registered with
JAX, so ``jax.tree.leaves(model)``, ``jax.tree.map(f, model)`` and a plain
``jax.jit(f)(model, x)`` work::

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 3, ctx=nnx.context(0))
    >>> [x.shape for x in jax.tree.leaves(model)]
    [(3,), (2, 3)]
    >>> jax.jit(lambda m, x: m(x))(model, jnp.ones((1, 2))).shape
    (1, 3)

**The whole graph flattens at its root, through the one cached traversal**
(``graph.py``): the pytree children are the graph's Variables (each once)
and plain data leaves, the aux data is the :class:`~nnxlite.graph.GraphDef`.
So shared references and cycles *inside one root* survive a
flatten/unflatten round trip, and flattening costs what ``nnx.split`` costs.
Two roots that share something (``[model, model.encoder]``) are flattened
separately, so after unflattening each has its own copy; pass such
structures to the nnx transforms, which traverse all their arguments as one
graph (``docs/concepts/graph.md``).

Under plain ``jax.jit`` the function sees a copy: attribute and Variable
updates made inside do not come out (JAX's rule). ``nnx.jit`` writes them
back.

:class:`Object` (or ``class Foo(nnx.Module, pytree=False)``) is a graph node
that is *not* a JAX pytree: JAX treats it as a leaf.

What is data and what is static follows flax 0.12 (see ``_data.py``):
arrays, Variables, graph nodes and registered types are data, the rest is
static unless marked with :func:`~nnxlite.data`. nnxlite is more lenient in
two places where flax refuses: plain ``list``/``dict`` attributes are
tracked automatically (they become :class:`List`/:class:`Dict`), and an
attribute that first held a static value (``self.bias = None``) may later
hold data.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict

import dataclasses
import weakref
from typing import Any

import jax

from nnxlite import _epoch
from nnxlite import _data
from nnxlite import graph
from nnxlite.variables import Variable

__all__ = ["Pytree", "Object", "List", "Dict", "dataclass", "check_pytree"]

_MISSING = object()
STATUS_KEY = graph.STATUS_KEY


def _track(value: Any) -> Any:
    """Make a container assigned into a module trackable, or refuse it.

    Plain lists and dicts (also inside tuples and namedtuples, at any depth)
    become :class:`List` and :class:`Dict`, whose edits bump the structural
    epoch; an object reachable twice is converted once, so sharing is kept.
    An ``OrderedDict`` becomes a :class:`Dict` (dicts keep insertion order).
    Other list/dict subclasses (``defaultdict``, user subclasses) would lose
    their behaviour when split and merged and their edits would go unseen,
    so they are refused with a ``TypeError``.
    """
    if not _needs_tracking(value):
        return value
    done: dict[int, Any] = {}
    started: set[int] = set()
    stack = [value]
    while stack:  # post-order with an explicit stack: nesting depth is unbounded
        obj = stack[-1]
        key = id(obj)
        if key in done:
            stack.pop()
            continue
        children = list(obj.values()) if isinstance(obj, dict) else list(obj)
        if key not in started:
            started.add(key)
            stack.extend(c for c in children if _needs_tracking(c) and id(c) not in done and id(c) not in started)
            continue
        stack.pop()
        items = [done.get(id(c), c) for c in children]
        t = type(obj)
        if t is list:
            new = List.__new__(List)
            list.extend(new, items)
        elif t is dict or t is OrderedDict:
            new = Dict.__new__(Dict)
            dict.update(new, zip(obj.keys(), items))
        elif any(a is not b for a, b in zip(items, children)):
            new = tuple(items) if t is tuple else t(*items)
        else:
            new = obj
        done[key] = new
    return done[id(value)]


def _needs_tracking(value: Any) -> bool:
    t = type(value)
    if t is list or t is dict or t is OrderedDict:
        return True
    if isinstance(value, tuple):
        return (t is tuple or hasattr(t, "_fields")) and any(isinstance(v, (list, dict, tuple)) for v in value)
    if isinstance(value, (list, dict)) and not isinstance(value, (List, Dict)):
        kind = "list" if isinstance(value, list) else "dict"
        tracked = "nnx.List" if kind == "list" else "nnx.Dict"
        raise TypeError(
            f"A {t.__name__} (a {kind} subclass) cannot be stored in a module: nnxlite tracks edits only to "
            f"plain {kind}s (converted to {tracked}) and to subclasses of {tracked}, and split/merge would "
            f"rebuild a {t.__name__} without its extra state. Use a plain {kind}"
            + (" and dict.setdefault / dict.get for defaults" if isinstance(value, defaultdict) else "")
            + f", or subclass {tracked}."
        )
    return False


# =====================================================================================
# Attribute status: data or static
# =====================================================================================
class _Status(dict):
    """``{attribute name: is_data}`` for attributes whose status is not implied by their value.

    Stored on the instance under ``_nnx_status`` and carried in the GraphDef
    (it must hash), so a merged copy keeps the statuses. Never mutated: a
    change stores a new one.
    """

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))


def _status_error(obj: Any, name: str, found: list[str], how: str) -> ValueError:
    kinds = ", ".join(sorted(set(found)))
    return ValueError(
        f"{type(obj).__name__}.{name} is marked nnx.static(...) but the value {how} data ({kinds}).\n"
        f"  Static attributes are compile-time structure; state belongs in data attributes.\n"
        f"  Fix: assign it with `self.{name} = nnx.data(...)` (or drop the nnx.static annotation), "
        f"or remove the arrays/Variables/modules from the value."
    )


def _set_status(obj: Any, name: str, is_data: bool) -> None:
    d = obj.__dict__
    status = d.get(STATUS_KEY)
    if status is None:
        status = type(obj)._nnx_class_status
    if status.get(name) is is_data:
        return
    new = _Status(status)
    new[name] = is_data
    d[STATUS_KEY] = new


def _status_of(obj: Any, name: str) -> bool | None:
    status = obj.__dict__.get(STATUS_KEY)
    if status is None:
        status = type(obj)._nnx_class_status
    return status.get(name)


# =====================================================================================
# Pytree
# =====================================================================================
class Pytree:
    """Base class of every graph-node object; a JAX pytree unless ``pytree=False``.

    ``nnx.Module`` and ``nnx.Rngs`` are Pytrees. Subclass it directly for
    state holders that are not layers::

        >>> import jax, jax.numpy as jnp, nnxlite as nnx
        >>> class Stats(nnx.Pytree):
        ...     def __init__(self):
        ...         self.total = jnp.zeros(())   # an array: data
        ...         self.label = "loss"         # static
        >>> s = jax.tree.map(lambda x: x + 1, Stats())
        >>> float(s.total), s.label
        (1.0, 'loss')

    ``class Foo(nnx.Pytree, pytree=False)`` (or ``nnx.Object``) keeps the graph
    behaviour (split/merge, nnx transforms) without the JAX registration.
    """

    _nnx_class_status: dict = _Status()
    _nnx_is_pytree: bool = True

    def __init_subclass__(cls, *, pytree: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if pytree is None:
            pytree = cls._nnx_is_pytree  # inherited from the nearest Pytree base
        cls._nnx_is_pytree = bool(pytree)
        status = _Status(cls._nnx_class_status)
        for name, annotation in vars(cls).get("__annotations__", {}).items():
            marked = _data.annotation_status(annotation)  # x: nnx.Data[...] / nnx.Static[...]
            if marked is not None:
                status[name] = marked
        for name, value in vars(cls).items():
            if isinstance(value, dataclasses.Field) and "static" in value.metadata:
                is_static = value.metadata["static"]
                if not isinstance(is_static, bool):
                    raise ValueError(
                        f"{cls.__name__}.{name}: dataclasses.field(metadata={{'static': ...}}) must be True or "
                        f"False, got {is_static!r}."
                    )
                status[name] = not is_static
        cls._nnx_class_status = status
        if cls._nnx_is_pytree:
            register_pytree(cls)

    def __setattr__(self, name: str, value: Any) -> None:
        if type(value) is dataclasses.Field:
            annotated = _data.annotation_of(value)
            if annotated is not None:
                value, is_static = annotated
                if is_static:
                    found = _data.holds_data(value)
                    if found:
                        raise _status_error(self, name, found, "holds")
                _set_status(self, name, not is_static)
        elif type(value) in (list, tuple, dict) and _data.has_marker(value):
            raise ValueError(
                f"{type(self).__name__}.{name}: nnx.data(...)/nnx.static(...) markers found inside a "
                f"{type(value).__name__}. Assign them directly to an attribute (self.{name} = nnx.data(...)); "
                "inside containers every Variable, array and module is data already."
            )
        elif isinstance(value, Variable) or _data.is_data_value(value):
            status = _status_of(self, name)
            if status is False:
                raise _status_error(self, name, _data.holds_data(value), "is")
            if status is None and not isinstance(value, Variable):
                _set_status(self, name, True)  # stays data when reassigned later, as in flax
        current = self.__dict__.get(name, _MISSING)
        if current is value:
            return  # e.g. `self.count += 1` re-assigns the same Variable: not structural
        try:
            value = _track(value)
        except TypeError as err:
            raise TypeError(f"{type(self).__name__}.{name}: {err}") from None
        object.__setattr__(self, name, value)
        _epoch.bump()

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        status = self.__dict__.get(STATUS_KEY)
        if status is not None and name in status:
            new = _Status(status)
            del new[name]
            self.__dict__[STATUS_KEY] = new
        _epoch.bump()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_nnx_") or k == STATUS_KEY}

    def __setstate__(self, state):
        object.__setattr__(self, "__dict__", dict(state))


class Object(Pytree, pytree=False):
    """A graph node that is not a JAX pytree (flax's ``nnx.Object``).

    nnx transforms, ``split``/``merge`` and filters work on it; plain JAX sees
    it as one leaf.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> class Box(nnx.Object):
    ...     def __init__(self):
    ...         self.w = nnx.Param(jnp.ones(2))
    >>> box = Box()
    >>> jax.tree.leaves(box) == [box], list(nnx.state(box).to_pure_dict())
    (True, ['w'])
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        pytree = kwargs.pop("pytree", False)
        if pytree is not False:
            raise ValueError(f"nnx.Object subclasses are never pytrees; got pytree={pytree!r} for {cls.__name__}.")
        super().__init_subclass__(pytree=False, **kwargs)


graph.register_node_base(Pytree)


def check_pytree(pytree: Any) -> None:
    """Raise if an attribute marked ``nnx.static`` holds data (flax's ``nnx.check_pytree``).

    >>> import nnxlite as nnx
    >>> nnx.check_pytree(nnx.Linear(2, 2, ctx=nnx.context(0)))
    """
    if not isinstance(pytree, Pytree):
        raise TypeError(f"check_pytree expects an nnx.Pytree (a Module, Rngs, ...), got {type(pytree).__name__}.")
    for name, value in vars(pytree).items():
        if name.startswith("_nnx_"):
            continue
        if _status_of(pytree, name) is False:
            found = _data.holds_data(value)
            if found:
                raise _status_error(pytree, name, found, "holds")


def dataclass(cls: type | None = None, /, **kwargs: Any):
    """``dataclasses.dataclass`` for Pytree subclasses, with ``nnx.data``/``nnx.static`` fields.

    Fields marked ``nnx.data()`` are data whatever their value; ``nnx.static()``
    fields must not hold data; unmarked fields follow the value rule.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> @nnx.dataclass
    ... class Point(nnx.Pytree):
    ...     x: jax.Array
    ...     n: int = nnx.data(default=1)
    ...     name: str = nnx.static(default="p", kw_only=True)
    >>> p = Point(jnp.zeros(2))
    >>> len(jax.tree.leaves(p)), p.name
    (2, 'p')
    """
    kwargs.setdefault("repr", False)

    def wrap(c: type) -> type:
        return dataclasses.dataclass(c, **kwargs)

    return wrap if cls is None else wrap(cls)


# =====================================================================================
# Tracked containers
# =====================================================================================
class List(list):
    """A ``list`` that tells graph caches when it changes. Created automatically.

    ``nnx.List([...])`` may also be written out, as flax code does; array items
    are data leaves.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> ls = nnx.List([jnp.ones(2), nnx.Param(jnp.zeros(1))])
    >>> [x.shape for x in jax.tree.leaves(ls)]
    [(2,), (1,)]

    Items may be marked as module attributes are: ``nnx.data(1)`` makes the
    number at that index a leaf, ``nnx.static(...)`` asserts it holds no
    data. As in flax, the mark belongs to the index and stays for later
    assignments there.

    >>> ls = nnx.List([nnx.data(1), nnx.static("relu"), 2])
    >>> jax.tree.leaves(ls), ls[0]
    ([1], 1)
    """

    __slots__ = ()
    _nnx_item_status = None  # {index: is_data} for marked items; set on a marked subclass

    def __init__(self, iterable=()):
        list.__init__(self, [_unmark(self, i, v) for i, v in enumerate(iterable)])

    def __setitem__(self, index, value):
        if isinstance(index, slice):
            value = list(value)
            start, stop, step = index.indices(len(self))
            keys = range(start, start + len(value)) if step == 1 else range(start, stop, step)
            value = [_unmark(self, k, v) for k, v in zip(keys, value)]
        else:
            value = _unmark(self, index + len(self) if index < 0 else index, value)
        list.__setitem__(self, index, value)
        _epoch.bump()

    def __delitem__(self, index):
        list.__delitem__(self, index)
        _epoch.bump()

    def __iadd__(self, other):
        self.extend(other)
        return self

    def __imul__(self, n):
        list.__imul__(self, n)
        _epoch.bump()
        return self

    def append(self, value):
        list.append(self, _unmark(self, len(self), value))
        _epoch.bump()

    def extend(self, values):
        list.extend(self, [_unmark(self, i, v) for i, v in enumerate(values, start=len(self))])
        _epoch.bump()

    def insert(self, index, value):
        # As in flax, marks stay with their index: the items after it move, their marks do not.
        at = max(0, min(len(self), index + len(self) if index < 0 else index))
        list.insert(self, index, _unmark(self, at, value))
        _epoch.bump()

    def pop(self, index=-1):
        out = list.pop(self, index)
        _epoch.bump()
        return out

    def remove(self, value):
        for i, v in enumerate(self):
            if v is value:
                del self[i]
                return
        list.remove(self, value)
        _epoch.bump()

    def clear(self):
        list.clear(self)
        _epoch.bump()

    def sort(self, *args, **kwargs):
        list.sort(self, *args, **kwargs)
        _epoch.bump()

    def reverse(self):
        list.reverse(self)
        _epoch.bump()

    def __reduce_ex__(self, protocol):
        return (_rebuild_marked, (_unmarked_type(type(self)), self._nnx_item_status, list(self)))


class Dict(dict):
    """A ``dict`` that tells graph caches when it changes. Created automatically.

    Values may be marked ``nnx.data(...)`` / ``nnx.static(...)``, per key, as
    in :class:`List`.

    >>> import jax, nnxlite as nnx
    >>> jax.tree.leaves(nnx.Dict(lr=nnx.data(0.1), name="sgd"))
    [0.1]
    >>> d = nnx.Dict(name="sgd"); d.lr = 0.5; d["lr"], d.name   # keys read as attributes, as in flax
    (0.5, 'sgd')
    """

    __slots__ = ()
    _nnx_item_status = None  # {key: is_data} for marked values; set on a marked subclass

    # flax's nnx.Dict reads and writes its string keys as attributes too (`d.encoder`).
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"nnx.Dict has no key or attribute {name!r}; its keys are {list(self)!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):  # e.g. __class__ (a per-key marked subclass)
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __init__(self, *args, **kwargs):
        dict.__init__(self, *args, **kwargs)
        for k, v in list(dict.items(self)):
            dict.__setitem__(self, k, _unmark(self, k, v))

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, _unmark(self, key, value))
        _epoch.bump()

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        _epoch.bump()

    def __ior__(self, other):
        self.update(other)
        return self

    def update(self, *args, **kwargs):
        for k, v in dict(*args, **kwargs).items():
            dict.__setitem__(self, k, _unmark(self, k, v))
        _epoch.bump()

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def pop(self, *args):
        out = dict.pop(self, *args)
        _epoch.bump()
        return out

    def popitem(self):
        out = dict.popitem(self)
        _epoch.bump()
        return out

    def clear(self):
        dict.clear(self)
        _epoch.bump()

    def __reduce_ex__(self, protocol):
        return (_rebuild_marked, (_unmarked_type(type(self)), self._nnx_item_status, dict(self)))


# =====================================================================================
# Per-item nnx.data / nnx.static marks in List and Dict
# =====================================================================================
# A container with marked items becomes an instance of a subclass of its type that
# carries the marks as a class attribute (one subclass per set of marks, cached).
# The type is what a GraphDef records for a node, so a merged copy has the same
# marks, the traversal reads them like a module's statuses, and unmarked
# containers pay nothing.
_MARKED_TYPES: dict[tuple[type, _Status], type] = {}


def _unmarked_type(t: type) -> type:
    return t.__dict__.get("_nnx_unmarked", t)


def _marked_type(base: type, status: _Status) -> type:
    key = (base, status)
    t = _MARKED_TYPES.get(key)
    if t is None:
        attrs = {"__slots__": (), "_nnx_item_status": status, "_nnx_unmarked": base, "__module__": base.__module__,
                 "__qualname__": base.__qualname__}
        t = _MARKED_TYPES[key] = type(base.__name__, (base,), attrs)
        register_pytree(t)  # JAX registrations are per exact type
    return t


def _rebuild_marked(base: type, status: Any, items: Any) -> Any:
    out = base(items)
    if status:
        out.__class__ = _marked_type(base, _Status(status))
    return out


def _unmark(container: Any, key: Any, value: Any) -> Any:
    """The (tracked) value to store at ``key``, recording an ``nnx.data``/``nnx.static`` mark if it has one."""
    status = type(container)._nnx_item_status
    annotated = _data.annotation_of(value) if type(value) is dataclasses.Field else None
    if annotated is None:
        if status is not None and status.get(key) is False:
            found = _data.holds_data(value)
            if found:
                raise _item_status_error(container, key, found, "is")
        return _track(value)
    value, is_static = annotated
    if is_static:
        found = _data.holds_data(value)
        if found:
            raise _item_status_error(container, key, found, "holds")
    if status is None or status.get(key) is not (not is_static):
        new = _Status(status or {})
        new[key] = not is_static
        container.__class__ = _marked_type(_unmarked_type(type(container)), new)
    return _track(value)


def _item_status_error(container: Any, key: Any, found: list[str], how: str) -> ValueError:
    kinds = ", ".join(sorted(set(found)))
    name = _unmarked_type(type(container)).__name__
    return ValueError(
        f"{name}[{key!r}] is marked nnx.static(...) but the value {how} data ({kinds}).\n"
        f"  Static items are compile-time structure; state belongs in data items.\n"
        f"  Fix: store it as nnx.data(...) (or without a mark), or remove the arrays/Variables/modules from it."
    )


# =====================================================================================
# The JAX registration: one flatten per root, through the cached traversal
# =====================================================================================
def _flatten(node: Any):
    flat = graph._flat(node)
    return flat.pytree_children(), flat.graphdef


def _unflatten(gd: graph.GraphDef, children) -> Any:
    return graph.rebuild(gd, children)


_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _flatten_with_keys(node: Any):
    flat = graph._flat(node)
    gd = flat.graphdef
    keys = _KEYS.get(gd)
    if keys is None:
        keys = _KEYS[gd] = tuple(jax.tree_util.GetAttrKey(name) for name in graph.leaf_names(gd))
    return list(zip(keys, flat.pytree_children())), gd


def register_pytree(cls: type) -> type:
    """Register a graph-node type with JAX (done for every Pytree subclass)."""
    jax.tree_util.register_pytree_with_keys(cls, _flatten_with_keys, _unflatten, flatten_func=_flatten)
    return cls


for _cls in (Pytree, List, Dict):
    register_pytree(_cls)

graph.register_tracked_container(List)
graph.register_tracked_container(Dict)
graph.register_tracked_container(_Status)  # rebuilt as a dict node, as the traversal always did
