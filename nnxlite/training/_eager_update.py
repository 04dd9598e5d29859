"""One compiled optax step for eager ``Optimizer.update`` calls.

Outside ``jit``, an optax update runs as dozens of separate JAX operations
(Adam: a handful per parameter), each dispatched on its own. optax updates
are pure functions of ``(grads, state, params)``, so running them as one
compiled XLA program gives the same values at a fraction of the cost. This
is what :meth:`nnxlite.Optimizer.update` does when it is called eagerly with
concrete arrays; inside a trace (``nnx.jit``, ``jax.jit``) the update is
traced as usual and this module is not involved.

The compiled function is cached on the optimizer, per (transformation,
parameter structure, optax state structure, keyword names); jax compiles
again by itself for new shapes or dtypes. None of the user's code runs inside
it, only ``tx.update`` and ``optax.apply_updates``. An optax transformation
with Python side effects in its ``update`` (rare) would see them once per
compile: set ``optimizer.compile_eager = False`` to run every operation
eagerly instead. Keyword arguments that are not arrays (``value_fn=`` for
``optax.lbfgs``, say) also take the eager route.

>>> import jax.numpy as jnp, optax, nnxlite as nnx
>>> model = nnx.Linear(2, 1, ctx=nnx.context(0))
>>> optimizer = nnx.Optimizer(model, optax.adam(1e-2))
>>> grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(model)
>>> optimizer.update(grads)          # eager call: one compiled optax step
>>> int(optimizer.step.value), len(optimizer.__dict__["_nnx_eager_update"])
(1, 1)
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from nnxlite.state import State, _new_state, raw_leaves

__all__ = ["try_compiled_update"]

_CACHE_KEY = "_nnx_eager_update"  # `_nnx_` attributes are invisible to the graph traversal
_Tracer = jax.core.Tracer


def _concrete(leaves) -> bool:
    for x in leaves:
        if isinstance(x, _Tracer) or not isinstance(x, (jax.Array, np.ndarray)):
            return False
    return True


def try_compiled_update(optimizer: Any, plan: Any, grads: State, kwargs: dict) -> bool:
    """Run the update as one compiled step and write it back; False (nothing done) when it does not apply."""
    param_vars, opt_vars = plan.param_vars, plan.opt_vars
    grad_leaves = raw_leaves(grads)
    param_leaves = [v.raw_value for v in param_vars]
    opt_leaves = [v.raw_value for v in opt_vars]
    if not (_concrete(grad_leaves) and _concrete(param_leaves) and _concrete(opt_leaves)):
        return False  # inside a trace, or non-array leaves: the ordinary path
    if kwargs and not _concrete(kwargs.values()):
        return False
    step = _compiled_step(optimizer, optimizer.tx, plan.structure, optimizer._spec.treedef, tuple(sorted(kwargs)))
    if step is None:
        return False
    new_params, new_opt = step(grad_leaves, param_leaves, opt_leaves, kwargs)
    # Written only after the whole step succeeded: an error leaves the model unchanged.
    for v, x in zip(param_vars, new_params):
        v.raw_value = x
    for v, x in zip(opt_vars, new_opt):
        v.raw_value = x
    return True


def _compiled_step(owner: Any, tx: optax.GradientTransformation, structure: Any, treedef: Any, kwarg_names: tuple):
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
    if kwarg_names and not isinstance(tx, optax.GradientTransformationExtraArgs):
        tx = optax.with_extra_args_support(tx)

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
        param_out = raw_leaves(new_params) if isinstance(new_params, State) else jax.tree_util.tree_leaves(new_params)
        return list(param_out), new_leaves

    fn = jax.jit(step)
    if len(cache) > 16:
        cache.clear()
    cache[key] = fn
    return fn
