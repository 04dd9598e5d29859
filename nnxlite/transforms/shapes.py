"""``nnx.eval_shape``: abstract evaluation of functions of modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from nnxlite.transforms._lift import _KEEP, _apply, _Inputs, _pure

__all__ = ["eval_shape"]


def eval_shape(f: Callable, *args: Any, **kwargs: Any) -> Any:
    """``jax.eval_shape`` for functions of modules: shapes without computing anything.

    Modules created inside come back with ``jax.ShapeDtypeStruct`` values,
    useful to inspect a large model (or plan its sharding) before allocating it.
    Input modules are not modified.

    >>> import nnxlite as nnx
    >>> abstract = nnx.eval_shape(lambda: nnx.Linear(1024, 4096, ctx=nnx.context(0)))
    >>> abstract.kernel.value
    ShapeDtypeStruct(shape=(1024, 4096), dtype=float32)
    """
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
