"""Dropout."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from nnxlite.module import Module
from nnxlite.rng import Context, RngStream
from nnxlite._rngs_arg import one_rng_arg

__all__ = ["Dropout"]


class Dropout(Module):
    """Zero each element with probability ``rate`` and scale the rest by ``1/(1-rate)``.

    The key comes from the ``dropout`` stream (``rng_collection``) of the
    Context given at call time (``ctx=``) or, failing that, at construction.
    ``deterministic=True`` (or ``model.eval()``) turns it into the identity;
    the call keyword overrides the mode for one call.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> drop = nnx.Dropout(0.5)
    >>> y = drop(jnp.ones(1000), ctx=nnx.context(dropout=0))
    >>> sorted(set(y.tolist()))
    [0.0, 2.0]
    >>> drop(jnp.ones(3), deterministic=True).tolist()
    [1.0, 1.0, 1.0]

    Args:
      rate: the drop probability, in ``[0, 1]``.
      broadcast_dims: axes that share one mask (e.g. the sequence axis).
      deterministic: the default mode.
      rng_collection: the stream name to draw from.
      ctx: an optional Context (or one RngStream) kept for calls that do not
        pass one; its stream state then becomes part of the model's state.
        ``rngs=`` is the same parameter (flax.nnx's spelling), here and at
        call time.
    """

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        ctx: Context | RngStream | None = None,
        rngs: Context | RngStream | None = None,
    ):
        one_rng_arg(ctx, rngs, "Dropout")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"Dropout: rate={rate} must be a probability in [0, 1].")
        self.rate = rate
        self.broadcast_dims = tuple(broadcast_dims)
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        # nnxlite's spelling keeps the Context itself (shared with the caller); flax.nnx's
        # spelling keeps, as flax does, an independent stream forked from its dropout stream,
        # under flax's attribute name, so state paths and reseeding match flax.
        self.ctx = ctx
        self.rngs = _forked_stream(rngs, rng_collection)

    def __call__(
        self,
        inputs: jax.Array,
        *,
        deterministic: bool | None = None,
        ctx: Context | RngStream | jax.Array | None = None,
        rngs: Context | RngStream | jax.Array | None = None,
    ) -> jax.Array:
        """Apply dropout; ``ctx`` (or ``rngs``: a Context, an RngStream or a key) overrides the stored one."""
        x = inputs
        ctx = one_rng_arg(ctx, rngs, "Dropout.__call__")
        if deterministic is None:
            deterministic = self.deterministic
        if deterministic is None:
            raise ValueError(
                "Dropout: deterministic is None; pass deterministic=True/False to the constructor or the call, "
                "or set the mode with model.train() / model.eval()."
            )
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        if ctx is None:
            ctx = self.ctx if self.ctx is not None else self.rngs
        key = draw_key(ctx, self.rng_collection, "Dropout")
        keep = 1.0 - self.rate
        shape = list(x.shape)
        for d in self.broadcast_dims:
            shape[d] = 1
        mask = jnp.broadcast_to(bernoulli(key, keep, tuple(shape)), x.shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))

    def set_view(self, deterministic: bool | None = None):
        """Settings for ``nnx.view``.

        Args:
          deterministic: if True, disables dropout masking.
        """
        if deterministic is not None:
            self.deterministic = deterministic


def _forked_stream(rngs: Context | RngStream | None, stream: str) -> RngStream | None:
    """flax.nnx's ``rngs[stream].fork()`` (an RngStream is forked itself); None stays None."""
    if rngs is None:
        return None
    if isinstance(rngs, RngStream):
        return rngs.fork()
    if isinstance(rngs, Context):
        return rngs.stream(stream).fork()
    raise TypeError(f"rngs must be an nnx.Rngs, an RngStream or None, got {type(rngs).__name__}.")


def bernoulli(key: jax.Array, p: float, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.bernoulli(key, p, shape)``, drawn flat and reshaped.

    The values are identical (JAX's random bits do not depend on the layout),
    but the draw compiles as a rank-1 op, which is much faster to compile
    for the rank-3/4 activations dropout usually sees.

    >>> import jax
    >>> from nnxlite.nn.stochastic import bernoulli
    >>> key = jax.random.PRNGKey(0)
    >>> bool((bernoulli(key, 0.5, (2, 3)) == jax.random.bernoulli(key, 0.5, (2, 3))).all())
    True
    """
    size = 1
    for n in shape:
        size *= n
    return jax.random.bernoulli(key, p, (size,)).reshape(shape)


def draw_key(source: Context | RngStream | jax.Array | None, stream: str, owner: str) -> jax.Array:
    """A key from ``source``: a Context's ``stream``, an RngStream, or a key used as is.

    Raises a ``ValueError`` that says how to pass one when ``source`` is None.

    >>> import jax, nnxlite as nnx
    >>> from nnxlite.nn.stochastic import draw_key
    >>> key = draw_key(nnx.context(dropout=0), "dropout", "MyLayer")
    >>> key.shape, jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)   # a typed key, as in flax
    ((), True)
    """
    if source is None:
        raise ValueError(
            f"{owner} needs random keys: pass ctx= (or rngs=, the same parameter) at call time or construction "
            f"(e.g. ctx=nnx.context({stream}=0) or rngs=nnx.Rngs({stream}=0)), or set deterministic=True / "
            f"call model.eval()."
        )
    if isinstance(source, RngStream):
        return source()
    if isinstance(source, Context):
        return source.make_rng(stream)
    return source
