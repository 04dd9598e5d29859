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

from collections.abc import Iterator
from typing import Any, TypeVar

from nnxlite import filters as filterlib
from nnxlite import graph
from nnxlite.pytree import Dict, List, Pytree
from nnxlite.state import State
from nnxlite.variables import Variable

__all__ = ["Module", "List", "Dict"]

M = TypeVar("M", bound="Module")


class Module(Pytree):
    """Base class for layers and models. See the module docstring for an example."""

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

    def iter_children(self) -> Iterator[tuple[str, "Module"]]:
        """Yield ``(attribute name, sub-module)`` for the direct sub-modules (flax.nnx's name)."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def set_attributes(
        self, *filters: Any, raise_if_not_found: bool = True, graph: bool | None = None, **attributes: Any
    ) -> None:
        """Set attributes on every sub-module that already has them.

        Positional filters (flax.nnx) limit it to the sub-modules they select
        (``model.set_attributes(nnx.Dropout, deterministic=True)``). ``graph=``
        is accepted for flax.nnx code and changes nothing: nnxlite has one mode.

        >>> import nnxlite as nnx
        >>> model = nnx.Sequence([nnx.Dropout(0.5), nnx.BatchNorm(2, rngs=nnx.Rngs(0))])
        >>> model.set_attributes(deterministic=True)
        >>> model.layers[0].deterministic
        True
        >>> model.set_attributes(nnx.BatchNorm, use_running_average=False, graph=True)
        >>> model.layers[1].use_running_average
        False
        """
        predicates = [filterlib.to_predicate(f) for f in filters]
        found = set()
        for path, module in self.iter_modules():
            if predicates and not any(p(path, module) for p in predicates):
                continue
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

    def sow(self, variable_type: type[Variable], name: str, value: Any,
            reduce_fn: Any = None, init_fn: Any = None) -> bool:
        """Record ``value`` under ``name``: by default appended to a tuple of values.

        Inside :func:`nnxlite.capture` the value goes to the capture buffer of
        exactly ``variable_type`` (and is dropped, returning False, if that
        type is not being captured); outside it is kept in ``self.<name>``, a
        ``variable_type`` Variable. ``reduce_fn(acc, value)`` and ``init_fn()``
        change how values accumulate (flax's semantics).

        >>> import jax.numpy as jnp, nnxlite as nnx
        >>> m = nnx.Module()
        >>> m.sow(nnx.Intermediate, "acts", jnp.ones(2)); m.sow(nnx.Intermediate, "acts", jnp.zeros(2))
        True
        True
        >>> len(m.acts.value)
        2
        >>> _ = m.sow(nnx.Intermediate, "total", 2.0, init_fn=lambda: 0.0, reduce_fn=lambda a, b: a + b)
        >>> m.total.value
        2.0
        """
        from nnxlite import _capture

        return _capture.sow(
            self, variable_type, name, value,
            reduce_fn if reduce_fn is not None else _capture.tuple_reduce,
            init_fn if init_fn is not None else _capture.tuple_init,
        )

    def perturb(self, name: str, value: Any, variable_type: type[Variable] | None = None) -> Any:
        """Return ``value`` plus a zero perturbation whose gradient is the gradient of ``value``.

        Use the returned value. Under ``nnx.capture(m, nnx.Perturbation)`` the
        zeros are recorded; under ``nnx.capture(m, ..., init=perturbations)``
        they are added back, so ``nnx.grad`` with respect to them gives the
        intermediate gradients (see :func:`nnxlite.capture`).

        >>> import jax.numpy as jnp, nnxlite as nnx
        >>> nnx.Module().perturb("x", jnp.ones(2)).tolist()
        [1.0, 1.0]
        """
        from nnxlite import _capture
        from nnxlite.variables import Perturbation

        return _capture.perturb(self, name, value, variable_type or Perturbation)

    # -- display -----------------------------------------------------------------------
    def __repr__(self) -> str:
        from nnxlite import display

        return display.module_repr(self)

    def __treescope_repr__(self, path, subtree_renderer):
        from nnxlite import display

        return display.render_module(self, path, subtree_renderer)


