"""flax.nnx's "lift types": ``StateAxes``, ``StateSharding``, ``DiffState``.

They are thin names over nnxlite's own specs, not a second mechanism:

* ``nnx.StateAxes({filter: axis, ...})`` is the dict entry ``{filter: axis}``
  of ``vmap``/``scan`` ``in_axes``/``out_axes`` (first matching filter wins);
* ``nnx.StateSharding({filter: sharding, ...})`` is the dict entry of
  ``jit``'s ``in_shardings``;
* ``nnx.DiffState(argnum, filter)`` in ``grad``'s ``argnums`` is
  ``argnums=argnum`` with ``wrt=filter`` for that argument only.

>>> import jax.numpy as jnp, nnxlite as nnx
>>> class Count(nnx.Variable): pass
>>> class Weights(nnx.Module):
...     def __init__(self):
...         self.kernel = nnx.Param(jnp.ones((4, 2, 3)))
...         self.count = Count(jnp.array(0))
>>> w = Weights()
>>> axes = nnx.StateAxes({nnx.Param: 0, Count: None})   # same as {nnx.Param: 0, Count: None}
>>> def dot(w, x):
...     w.count += 1
...     return x @ w.kernel
>>> nnx.vmap(dot, in_axes=(axes, 0))(w, jnp.ones((4, 2))).shape, int(w.count.value)
((4, 3), 1)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from nnxlite import filters as filterlib

__all__ = ["StateAxes", "StateSharding", "DiffState"]


class _FilterMap(Mapping):
    """An ordered, hashable ``{filter: value}`` mapping, always one entry of a spec."""

    __slots__ = ("_items",)

    def __init__(self, filter_map: Mapping | Any = (), /):
        items = tuple(filter_map.items()) if isinstance(filter_map, Mapping) else tuple(filter_map)
        for f, _ in items:
            filterlib.to_predicate(f)  # fail early on an invalid filter
        self._items = items

    @property
    def filters(self) -> tuple:
        return tuple(f for f, _ in self._items)

    def items(self):  # type: ignore[override]  (keeps the given order; filters may repeat)
        return self._items

    def __getitem__(self, key: Any) -> Any:
        for f, v in self._items:
            if f == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator:
        return iter(self.filters)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash((type(self), self._items))

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other._items == self._items

    def __repr__(self) -> str:
        body = ", ".join(f"{f!r}: {v!r}" for f, v in self._items)
        return f"{type(self).__name__}({{{body}}})"


class StateAxes(_FilterMap):
    """Per-kind axes for one module in ``vmap``/``scan`` ``in_axes``/``out_axes`` (flax.nnx's name).

    Equivalent to the dict entry ``{filter: axis}``; see the module docstring.
    Variables that no filter matches use the transform's default axis 0.
    """

    @property
    def axes(self) -> tuple:
        return tuple(v for _, v in self._items)


class StateSharding(_FilterMap):
    """Per-kind shardings for one module in ``jit``'s ``in_shardings`` (flax.nnx's name).

    >>> import jax, nnxlite as nnx
    >>> from jax.sharding import PartitionSpec as P
    >>> mesh = jax.make_mesh((1,), ("data",))
    >>> spec = nnx.StateSharding({nnx.Param: jax.NamedSharding(mesh, P())})
    >>> f = nnx.jit(lambda m, x: m(x), in_shardings=(spec, None))
    >>> f(nnx.Linear(2, 2, ctx=nnx.context(0)), jax.numpy.ones((1, 2))).shape
    (1, 2)
    """

    @property
    def shardings(self) -> tuple:
        return tuple(v for _, v in self._items)


class DiffState(NamedTuple):
    """Differentiate argument ``argnum`` with respect to the Variables matching ``filter``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> bn = nnx.BatchNorm(2, ctx=nnx.context(0))
    >>> grads = nnx.grad(lambda m: m(jnp.ones((3, 2))).sum(), argnums=nnx.DiffState(0, nnx.Param))(bn)
    >>> sorted(grads.to_pure_dict())
    ['bias', 'scale']
    """

    argnum: int
    filter: Any


def is_lift_type(x: Any) -> bool:
    return isinstance(x, _FilterMap)
