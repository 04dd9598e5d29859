"""Module: a plain Python object whose attributes hold Variables and sub-modules.

There is no dataclass magic and no lazy shape inference: ``__init__`` creates
the state right away, and you can edit the object afterwards like any Python
object::

    >>> import jax, jax.numpy as jnp
    >>> import nnxlite as nnx
    >>> class MLP(nnx.Module):
    ...     def __init__(self, din, dhidden, dout, *, ctx):
    ...         self.fc1 = nnx.Linear(din, dhidden, ctx=ctx)
    ...         self.fc2 = nnx.Linear(dhidden, dout, ctx=ctx)
    ...     def __call__(self, x):
    ...         return self.fc2(jax.nn.relu(self.fc1(x)))
    >>> model = MLP(4, 8, 2, ctx=nnx.context(0))
    >>> model.fc2 = nnx.Linear(8, 3, ctx=nnx.context(1))   # replace a layer
    >>> model(jnp.ones((1, 4))).shape
    (1, 3)

Lists and dicts assigned to a module become :class:`List` and :class:`Dict`
(subclasses of ``list`` and ``dict``) so that later edits such as
``model.layers.append(...)`` are seen by the next ``split``.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from typing import Any, TypeVar

from nnxlite import _epoch
from nnxlite import filters as filterlib
from nnxlite import graph
from nnxlite.state import State
from nnxlite.variables import Variable

__all__ = ["Module", "List", "Dict"]

M = TypeVar("M", bound="Module")


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


class List(list):
    """A ``list`` that tells graph caches when it changes. Created automatically."""

    __slots__ = ()

    def __init__(self, iterable=()):
        list.__init__(self, (_track(v) for v in iterable))

    def __setitem__(self, index, value):
        value = [_track(v) for v in value] if isinstance(index, slice) else _track(value)
        list.__setitem__(self, index, value)
        _epoch.bump()

    def __delitem__(self, index):
        list.__delitem__(self, index)
        _epoch.bump()

    def __iadd__(self, other):
        list.extend(self, (_track(v) for v in other))
        _epoch.bump()
        return self

    def __imul__(self, n):
        list.__imul__(self, n)
        _epoch.bump()
        return self

    def append(self, value):
        list.append(self, _track(value))
        _epoch.bump()

    def extend(self, values):
        list.extend(self, (_track(v) for v in values))
        _epoch.bump()

    def insert(self, index, value):
        list.insert(self, index, _track(value))
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
        return (List, (list(self),))


class Dict(dict):
    """A ``dict`` that tells graph caches when it changes. Created automatically."""

    __slots__ = ()

    def __init__(self, *args, **kwargs):
        dict.__init__(self, *args, **kwargs)
        for k, v in dict.items(self):
            dict.__setitem__(self, k, _track(v))

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, _track(value))
        _epoch.bump()

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        _epoch.bump()

    def __ior__(self, other):
        self.update(other)
        return self

    def update(self, *args, **kwargs):
        for k, v in dict(*args, **kwargs).items():
            dict.__setitem__(self, k, _track(v))
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
        return (Dict, (dict(self),))


class Module:
    """Base class for layers and models. See the module docstring for an example."""

    def __setattr__(self, name: str, value: Any) -> None:
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
        _epoch.bump()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_nnx_")}

    def __setstate__(self, state):
        object.__setattr__(self, "__dict__", dict(state))

    # -- the seed-003 spelling of the graph operations ---------------------------
    def partition(self: M, *filters: filterlib.Filter) -> tuple[Any, graph.GraphDef]:
        """Split into ``(states, moduledef)``.

        No filter gives one State with everything; one filter gives the
        matching State; several give a tuple, and then every Variable must
        match one of them (use ``...`` for the rest).

        >>> import nnxlite as nnx
        >>> bn = nnx.BatchNorm(2, ctx=nnx.context(0))
        >>> (params, stats), moduledef = bn.partition(nnx.Param, nnx.BatchStat)
        >>> moduledef.merge(params, stats).mean.shape
        (2,)
        """
        graphdef, *states = graph.split(self, *filters)
        return (states[0] if len(states) == 1 else tuple(states)), graphdef

    def filter(self, *filters: filterlib.Filter) -> State | tuple[State, ...]:
        """The State of the Variables matching the filter(s): ``model.filter(nnx.Param)``."""
        return graph.state(self, *filters)

    def get_state(self) -> State:
        """The State of every Variable in this module's graph."""
        return graph.state(self)

    def update_state(self, states: State | tuple | list | dict) -> None:
        """Write a State (or a tuple of States) back into this module, in place.

        >>> import jax, nnxlite as nnx
        >>> model = nnx.Linear(2, 2, ctx=nnx.context(0))
        >>> params = jax.tree.map(lambda p: p * 0, model.filter(nnx.Param))
        >>> model.update_state(params)
        >>> float(model.kernel.value.sum())
        0.0
        """
        if isinstance(states, (tuple, list)):
            graph.update(self, *states)
        else:
            graph.update(self, states)

    def split(self, *filters: filterlib.Filter) -> tuple:
        """Same as :func:`nnxlite.split` (``(graphdef, *states)``)."""
        return graph.split(self, *filters)

    # -- walking the graph -------------------------------------------------------
    def iter_modules(self) -> Iterator[tuple[tuple, "Module"]]:
        """Yield ``(path, module)`` for this module and every sub-module, each once."""
        for path, obj in graph.iter_graph(self):
            if isinstance(obj, Module):
                yield path, obj

    def set_attributes(self, *, raise_if_not_found: bool = True, **attributes: Any) -> None:
        """Set attributes on every sub-module that already has them.

        >>> import nnxlite as nnx
        >>> model = nnx.Sequence([nnx.Dropout(0.5)])
        >>> model.set_attributes(deterministic=True)
        >>> model.layers[0].deterministic
        True
        """
        found = set()
        for _, module in self.iter_modules():
            for name, value in attributes.items():
                if name in vars(module):
                    setattr(module, name, value)
                    found.add(name)
        missing = set(attributes) - found
        if missing and raise_if_not_found:
            raise AttributeError(f"No sub-module has the attribute(s) {sorted(missing)}.")

    def train(self: M, **attributes: Any) -> M:
        """Switch to training mode: dropout active, BatchNorm uses batch statistics."""
        self.set_attributes(
            deterministic=False, use_running_average=False, **attributes, raise_if_not_found=False
        )
        return self

    def eval(self: M, **attributes: Any) -> M:
        """Switch to evaluation mode: dropout off, BatchNorm uses running averages."""
        self.set_attributes(
            deterministic=True, use_running_average=True, **attributes, raise_if_not_found=False
        )
        return self

    def sow(self, variable_type: type[Variable], name: str, value: Any) -> None:
        """Record ``value`` in ``self.<name>`` (a tuple of values in a Variable).

        >>> import jax.numpy as jnp, nnxlite as nnx
        >>> m = nnx.Module()
        >>> m.sow(nnx.Intermediate, "acts", jnp.ones(2)); m.sow(nnx.Intermediate, "acts", jnp.zeros(2))
        >>> len(m.acts.value)
        2
        """
        existing = self.__dict__.get(name)
        if isinstance(existing, variable_type):
            existing.value = tuple(existing.value) + (value,)
        else:
            setattr(self, name, variable_type((value,)))

    # -- display -----------------------------------------------------------------------
    def __repr__(self) -> str:
        from nnxlite import display

        return display.module_repr(self)

    def __treescope_repr__(self, path, subtree_renderer):
        from nnxlite import display

        return display.render_module(self, path, subtree_renderer)


_MISSING = object()

graph.register_node_base(Module)
graph.register_tracked_container(List)
graph.register_tracked_container(Dict)

