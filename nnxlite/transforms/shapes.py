"""``nnx.eval_shape`` and ``nnx.checkify``: abstract evaluation and checked execution of functions of modules."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from nnxlite.transforms._lift import _KEEP, _apply, _finish, _Inputs, _pure
from nnxlite.transforms.modes import check_mode

__all__ = ["eval_shape", "checkify"]


def eval_shape(f: Callable, *args: Any, graph: bool | None = None, graph_updates: bool | None = None, **kwargs: Any) -> Any:
    """``jax.eval_shape`` for functions of modules: shapes without computing anything.

    Modules created inside come back with ``jax.ShapeDtypeStruct`` values,
    useful to inspect a large model (or plan its sharding) before allocating it.
    Input modules are not modified. ``graph=``/``graph_updates=`` are
    flax.nnx's mode switches, accepted (graph semantics are kept).

    >>> import nnxlite as nnx
    >>> abstract = nnx.eval_shape(lambda: nnx.Linear(1024, 4096, ctx=nnx.context(0)))
    >>> abstract.kernel.value
    ShapeDtypeStruct(shape=(1024, 4096), dtype=float32)
    """
    check_mode(graph, graph_updates, "nnx.eval_shape")
    inputs = _Inputs(args, kwargs)
    aligned, extra, out, meta = jax.eval_shape(_pure(f, inputs), inputs.leaves(), inputs.others)
    if meta is None:
        return out
    if meta.in_changed:
        raise ValueError(
            "nnx.eval_shape: the function changed the structure of an input module; eval_shape does not "
            "modify its inputs. Make structural changes outside, or return the new module instead."
        )
    return _apply(meta, [_KEEP] * len(inputs.variables), extra, out, inputs.flat)


def checkify(
    f: Callable,
    errors: frozenset | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Callable:
    """``jax.experimental.checkify.checkify`` for functions of modules: ``(error, out)``.

    Modules may appear anywhere in the arguments; updates the function makes
    to them come out (also when a check fails: call ``error.throw()`` to
    raise). ``errors`` is the set of checks, as in JAX (default: the user
    checks, ``checkify.check(...)``).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> from jax.experimental import checkify
    >>> model = nnx.Linear(2, 2, ctx=nnx.context(0))
    >>> def forward(m, x):
    ...     checkify.check(jnp.all(x > 0), "inputs must be positive")
    ...     return m(x)
    >>> err, y = nnx.checkify(forward)(model, -jnp.ones((1, 2)))
    >>> err.get().startswith("inputs must be positive"), y.shape
    (True, (1, 2))
    >>> err, y = nnx.checkify(nnx.jit(lambda m: jnp.log(m.kernel.value - 10.0)), errors=checkify.float_checks)(model)
    >>> err.get() is not None
    True
    """
    from jax.experimental import checkify as checkify_lib  # not needed at import time

    check_mode(graph, graph_updates, "nnx.checkify")
    checks = checkify_lib.user_checks if errors is None else errors

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        inputs = _Inputs(args, kwargs)
        error, (aligned, extra, out, meta) = checkify_lib.checkify(_pure(f, inputs), errors=checks)(
            inputs.leaves(), inputs.others
        )
        return error, _finish(inputs, aligned, extra, out, meta)

    return wrapper

