"""``nnx.EMA``: an exponential moving average of a model's Variables (flax.nnx's ``EMA``).

The EMA holds its own copy of every tracked Variable (same type and metadata),
nested by path in ``ema.params``. ``ema.update(model)`` blends the model's
current values in (``ema = decay * ema + (1 - decay) * new``), also inside
``nnx.jit``; ``ema.apply_to(model)`` returns a copy of ``model`` whose tracked
Variables *are* the EMA's Variables, so it follows later updates.

>>> import jax.numpy as jnp, nnxlite as nnx
>>> model = nnx.Linear(2, 2, use_bias=False, rngs=nnx.Rngs(0))
>>> ema = nnx.EMA(model, decay=0.5)
>>> model.kernel.value = jnp.zeros((2, 2))
>>> ema.update(model)
>>> ema_model = ema.apply_to(model)
>>> ema_model.kernel is ema.params.kernel
True
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax.numpy as jnp

from nnxlite import filters as filterlib
from nnxlite import graph as _graph
from nnxlite._data import DataLeaf
from nnxlite.pytree import Dict, Pytree
from nnxlite.state import State, _fmt_path
from nnxlite.variables import Variable

__all__ = ["EMA"]

A = TypeVar("A")


class _VariableTree(Dict):
    """A nested dict of Variables by path; ``tree.kernel`` reads ``tree['kernel']`` as a flax State does."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no entry {name!r}; entries: {sorted(map(str, self))}") from None


def _tracked_variables(node: Any, only: Any) -> dict:
    """``{path: Variable}`` of ``node``'s Variables matching ``only`` (a State is read as is)."""
    state = node if isinstance(node, State) else _graph.state(node, only)
    if isinstance(node, State) and only is not ...:
        state = state.filter(only)
    out = {}
    for path, var in state.variables():
        if type(var) is DataLeaf:
            raise TypeError(
                f"EMA only supports Variable leaves, got a plain {type(var.raw_value).__name__} at path "
                f"'{_fmt_path(path)}'. Use the `only` filter to select Variable leaves (e.g. only=nnx.Param)."
            )
        out[path] = var
    return out


class EMA(Pytree):
    """Exponential moving average of the Variables of ``params`` (a module or a State).

    Args:
      params: the object whose Variables are tracked (usually the model).
      decay: the weight of the old average at each :meth:`update`.
      only: a filter selecting the tracked Variables (default: all).
      graph: accepted for flax compatibility; nnxlite always traverses the graph.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    >>> ema = nnx.EMA(model, decay=0.9, only=nnx.Param)
    >>> model.bias.value = jnp.ones(1)
    >>> ema.update(model)
    >>> round(float(ema.params.bias[0]), 3)
    0.1
    """

    def __init__(self, params: Any, decay: float, *, only: filterlib.Filter = ..., graph: bool | None = None):
        self.graph = graph
        self.decay = decay
        self.filter = only
        tree = _VariableTree()
        for path, var in _tracked_variables(params, only).items():
            node = tree
            for key in path[:-1]:
                node = node.setdefault(key, _VariableTree())
            node[path[-1]] = type(var)(jnp.copy(var.value), **var.metadata)
        self.params = tree

    def _flat(self) -> dict:
        out = {}
        stack = [((), self.params)]
        while stack:
            prefix, node = stack.pop()
            for key, value in node.items():
                if isinstance(value, Variable):
                    out[(*prefix, key)] = value
                else:
                    stack.append(((*prefix, key), value))
        return out

    def update(self, updates: Any) -> None:
        """Blend ``updates`` (same structure as the tracked object) in: ``ema = decay * ema + (1 - decay) * new``."""
        mine = self._flat()
        new = _tracked_variables(updates, self.filter)
        if set(new) != set(mine):
            missing = sorted(map(_fmt_path, set(mine) - set(new)))
            extra = sorted(map(_fmt_path, set(new) - set(mine)))
            raise ValueError(
                "EMA.update: the updates do not have the structure EMA was created with.\n"
                f"  missing paths: {missing or 'none'}\n  unexpected paths: {extra or 'none'}\n"
                "  Fix: pass the same model (or a State of the same Variables) the EMA tracks."
            )
        decay = self.decay
        for path, var in mine.items():
            var.value = decay * var.value + (1.0 - decay) * new[path].value

    def apply_to(self, model: A) -> A:
        """A copy of ``model`` whose tracked Variables are this EMA's; its other Variables are ``model``'s own.

        As in flax, nothing is copied but the structure: the result shares the
        EMA's Variables (so it follows later :meth:`update` calls) and the
        model's untracked Variables (batch statistics, RNG state, ...).
        """
        out = _graph.clone(model)
        tracked = self._flat()
        shared = {path: v for path, v in _graph.iter_graph(model) if isinstance(v, Variable) and path not in tracked}
        for path, var in (*shared.items(), *tracked.items()):
            if not path:
                continue
            parent = out
            for key in path[:-1]:
                parent = parent[key] if isinstance(parent, (list, dict, tuple)) else getattr(parent, key)
            key = path[-1]
            if isinstance(parent, (list, dict)):
                parent[key] = var
            else:
                setattr(parent, key, var)
        return out
