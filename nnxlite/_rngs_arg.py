"""One RNG parameter, two spellings: ``ctx=`` (nnxlite, seed 003) and ``rngs=`` (flax.nnx).

Every constructor and call that takes random keys accepts either name and
hands both to :func:`one_rng_arg`, which returns the one that was given.
There is no second meaning: ``rngs=nnx.Rngs(0)`` and ``ctx=nnx.context(0)``
build the same Context.

>>> import nnxlite as nnx
>>> from nnxlite._rngs_arg import one_rng_arg
>>> ctx = nnx.Rngs(0)
>>> one_rng_arg(None, ctx, "Linear") is ctx
True
"""

from __future__ import annotations

from typing import Any

__all__ = ["one_rng_arg"]


def one_rng_arg(ctx: Any, rngs: Any, owner: str, *, required: bool = False) -> Any:
    """The RNG argument given as ``ctx=`` or ``rngs=`` (None if neither).

    Raises a ``TypeError`` when both are given (they are one parameter), or
    when ``required`` and neither is.
    """
    if rngs is None:
        if ctx is None and required:
            raise TypeError(
                f"{owner} needs random keys for its parameters: pass rngs=nnx.Rngs(0) "
                f"(or the nnxlite spelling ctx=nnx.context(0); the two are one parameter)."
            )
        return ctx
    if ctx is not None:
        raise TypeError(
            f"{owner} got both ctx= and rngs=; they are the same parameter (rngs= is flax.nnx's name "
            f"for nnxlite's ctx=). Pass only one of them."
        )
    return rngs
