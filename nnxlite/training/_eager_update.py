"""One compiled optax step for eager ``Optimizer.update`` calls.

Outside ``jit``, an optax update runs as dozens of separate JAX operations
(Adam: a handful per parameter), each dispatched on its own. optax updates
are pure functions of ``(grads, state, params)``, so running them as one
compiled XLA program gives the same values at a fraction of the cost. This
is what :meth:`nnxlite.Optimizer.update` does when it is called eagerly with
concrete arrays; inside a trace (``nnx.jit``, ``jax.jit``) the update is
traced as usual and this module is not involved.

The compiled function is cached on the optimizer, per parameter structure
(and jax re-compiles by itself for new shapes or dtypes). Nothing of the
user's code runs inside it: only ``tx.update`` and ``optax.apply_updates``.
An optax transformation with Python side effects in its ``update`` (rare)
would see them once per compile; pass ``compile_eager=False`` to
``Optimizer`` (or set ``optimizer.compile_eager = False``) to run every
operation eagerly instead.

>>> import jax.numpy as jnp, optax, nnxlite as nnx
>>> model = nnx.Linear(2, 1, ctx=nnx.context(0))
>>> optimizer = nnx.Optimizer(model, optax.adam(1e-2))
>>> grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(model)
>>> optimizer.update(grads)          # eager call: one compiled optax step
>>> int(optimizer.step.value)
1
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from nnxlite.state import State, StateStructure, _new_state

__all__ = ["is_concrete", "compiled_step"]

_CACHE_KEY = "_nnx_eager_update"  # `_nnx_` attributes are invisible to the graph traversal
_Tracer = jax.core.Tracer


def is_concrete(*leaf_lists: list) -> bool:
    """True when no leaf is a tracer (the update runs eagerly, not inside a transform)."""
    for leaves in leaf_lists:
        for x in leaves:
            if isinstance(x, _Tracer):
                return False
    return True


def compiled_step(owner: Any, tx: optax.GradientTransformation, structure: StateStructure, treedef: Any,
                  kwarg_names: tuple) -> Any:
    """The jitted ``(grads, params, opt_state, kwargs) -> (new_params, new_opt_state, treedef_ok)`` step.

    Cached in ``owner.__dict__`` per (tx, parameter structure, optax treedef, keyword names).
    """
    cache = owner.__dict__.get(_CACHE_KEY)
    if cache is None:
        cache = owner.__dict__[_CACHE_KEY] = {}
    key = (tx, structure, treedef, kwarg_names)
    try:
        fn = cache.get(key)
    except TypeError:  # an unhashable transformation: no cache, run eagerly
        return None
    if fn is not None:
        return fn

    def step(grad_leaves, param_leaves, opt_leaves, kwargs):
        grads = _new_state(list(grad_leaves), structure)
        params = _new_state(list(param_leaves), structure)
        opt_state = treedef.unflatten(list(opt_leaves))
        updates, new_opt_state = tx.update(grads, opt_state, params, **kwargs)
        new_params = optax.apply_updates(params, updates)
        new_leaves, new_treedef = jax.tree_util.tree_flatten(new_opt_state)
        if new_treedef != treedef:
            raise ValueError(
                "Optimizer.update: the transformation returned a state with a different structure "
                f"than it was created with.\n  expected: {treedef}\n  found:    {new_treedef}"
            )
        if isinstance(new_params, State):
            param_out = new_params._leaves
        else:
            param_out = jax.tree_util.tree_leaves(new_params)
        return list(param_out), new_leaves

    fn = jax.jit(step)
    if len(cache) > 16:
        cache.clear()
    cache[key] = fn
    return fn
