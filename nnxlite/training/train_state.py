"""``nnx.TrainState``: flax.nnx's functional training state (graphdef, params, optax state, step).

It is an immutable dataclass and a JAX pytree: ``graphdef`` is static (a
GraphDef has no leaves), ``tx`` is static, everything else is data. Subclass
it to carry more states (``batch_stats: nnx.State``); subclasses are
dataclasses and pytrees automatically, as with flax's ``struct.PyTreeNode``.

>>> import jax, jax.numpy as jnp, optax, nnxlite as nnx
>>> graphdef, params = nnx.split(nnx.Linear(2, 1, rngs=nnx.Rngs(0)))
>>> state = nnx.TrainState.create(graphdef, params=params, tx=optax.sgd(0.1))
>>> grads = jax.tree.map(jnp.ones_like, state.params)
>>> int(state.apply_gradients(grads=grads).step)
1
"""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp
import optax

from nnxlite import compat as _compat

__all__ = ["TrainState"]

M = TypeVar("M")


def _register(cls: type) -> type:
    """Make ``cls`` a frozen dataclass and a pytree whose ``pytree_node=False`` fields are static."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    meta = [f.name for f in fields if not f.metadata.get("pytree_node", True)]
    data = [f.name for f in fields if f.metadata.get("pytree_node", True)]
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
    return cls


class TrainState(Generic[M]):
    """Functional training state: ``graphdef``, ``params``, ``opt_state``, ``step`` and a static ``tx``.

    ``apply_gradients(grads=...)`` runs the optax update and returns a new
    state with ``step + 1``; extra keywords replace fields (``counts=...``).
    ``apply('params', ...)`` calls the model purely: ``state.apply('params')(x)``
    returns ``(y, (graphdef, new_state))``, as flax's ``graphdef.apply``.

    >>> import jax.numpy as jnp, optax, nnxlite as nnx
    >>> graphdef, params = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> state = nnx.TrainState.create(graphdef, params=params, tx=optax.adam(1e-3))
    >>> y, _ = state.apply("params")(jnp.ones((1, 2)))
    >>> y.shape
    (1, 3)
    """

    graphdef: Any
    params: Any
    opt_state: Any
    step: Any
    tx: optax.GradientTransformation = dataclasses.field(metadata={"pytree_node": False})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls)

    @classmethod
    def create(cls, graphdef: Any, *, params: Any, tx: optax.GradientTransformation, step: int = 0,
               **kwargs: Any) -> "TrainState":
        """A state at ``step`` with ``opt_state = tx.init(params)``; ``kwargs`` fill subclass fields."""
        return cls(graphdef=graphdef, params=params, opt_state=tx.init(params), step=jnp.asarray(step), tx=tx,
                   **kwargs)

    def replace(self, **updates: Any) -> "TrainState":
        """A copy with the given fields replaced."""
        return dataclasses.replace(self, **updates)

    def apply(self, state: Any, *states: Any) -> Any:
        """Call the model merged from these states (field names or States) purely.

        ``state.apply('params', 'batch_stats')(x)`` returns ``(out, (graphdef,
        state))`` where the second item is the model's state after the call.
        """
        resolved = []
        for s in (state, *states):
            if isinstance(s, str):
                value = getattr(self, s)
                if not hasattr(value, "flat"):
                    raise TypeError(f"Expected {type(self).__name__}.{s} to be a State, got {type(value).__name__}.")
                s = value
            resolved.append(s)
        return _compat.call((self.graphdef, *resolved))

    def apply_gradients(self, grads: Any, **kwargs: Any) -> "TrainState":
        """One optax step on ``params``; ``kwargs`` replace other fields at the same time."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(params=params, opt_state=opt_state, step=self.step + 1, **kwargs)


TrainState = _register(TrainState)
