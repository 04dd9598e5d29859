"""Dropout."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from nnxlite.module import Module
from nnxlite.rng import Context

__all__ = ["Dropout"]


class Dropout(Module):
    """Zero each element with probability ``rate`` and scale the rest by ``1/(1-rate)``.

    The key comes from the ``dropout`` stream of the Context given at call
    time (``ctx=``) or at construction; ``deterministic=True`` (or
    ``model.eval()``) turns it off.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> drop = nnx.Dropout(0.5)
    >>> y = drop(jnp.ones(1000), ctx=nnx.context(dropout=0))
    >>> sorted(set(y.tolist()))
    [0.0, 2.0]

    Args:
      rate: the drop probability.
      broadcast_dims: axes that share one mask (e.g. the sequence axis).
      deterministic: default mode; the call keyword overrides it.
      rng_collection: the stream name to draw from.
      ctx: an optional Context kept for calls that do not pass one.
    """

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool = False,
        rng_collection: str = "dropout",
        ctx: Context | None = None,
    ):
        self.rate = rate
        self.broadcast_dims = tuple(broadcast_dims)
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        self.ctx = ctx

    def __call__(self, x: jax.Array, *, deterministic: bool | None = None, ctx: Context | None = None) -> jax.Array:
        if deterministic is None:
            deterministic = self.deterministic
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        ctx = ctx if ctx is not None else self.ctx
        if ctx is None:
            raise ValueError(
                "Dropout needs random keys: pass ctx= at call time or construction "
                "(e.g. ctx=nnx.context(dropout=0)), or set deterministic=True / call model.eval()."
            )
        key = ctx.make_rng(self.rng_collection)
        keep = 1.0 - self.rate
        shape = list(x.shape)
        for d in self.broadcast_dims:
            shape[d] = 1
        mask = jax.random.bernoulli(key, keep, shape)
        mask = jnp.broadcast_to(mask, x.shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))
