"""Embeddings: a lookup table from integer ids to vectors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite.module import Module
from nnxlite.nn import initializers
from nnxlite.nn import _sharding, dtypes
from nnxlite.nn.dtypes import promote_dtype
from nnxlite.nn.initializers import Initializer
from nnxlite.functional import param_from_init
from nnxlite.rng import Context
from nnxlite._rngs_arg import one_rng_arg

__all__ = ["Embed"]


class Embed(Module):
    """Map integer ids in ``[0, num_embeddings)`` to rows of an ``embedding`` table.

    The table is ``embedding``, an ``nnx.Param`` of shape
    ``(num_embeddings, features)``; the output has the input's shape plus a
    trailing ``features`` axis. Negative ids count from the end (as in numpy);
    ids ``>= num_embeddings`` give NaN rows rather than an error, because the
    ids may be traced values under ``jit``.

    :meth:`attend` multiplies by the transposed table, which ties the input
    embedding and the output projection of a language model::

        >>> import jax.numpy as jnp, nnxlite as nnx
        >>> embed = nnx.Embed(num_embeddings=10, features=4, ctx=nnx.context(0))
        >>> tokens = jnp.array([[1, 2, 3]])
        >>> h = embed(tokens)
        >>> h.shape
        (1, 3, 4)
        >>> embed.attend(h).shape          # logits over the 10 ids
        (1, 3, 10)

    Args:
      num_embeddings: number of rows (the vocabulary size).
      features: width of each row.
      dtype: dtype of the lookups and of :meth:`attend` (default: that of the table).
      param_dtype: dtype the table is stored in.
      embedding_init: initializer of the table (default: normal with variance
        ``1 / features``).
      promote_dtype: ``fn((table,), dtype=..., inexact=False)`` casting the
        table for lookups (default :func:`nnxlite.nn.dtypes.promote_dtype`).
      ctx: the Context to draw the ``params`` key from (``rngs=`` is the same
        parameter, flax.nnx's spelling).
      embedding_metadata: metadata set on the ``embedding`` Param.
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        embedding_init: Initializer = initializers.default_embed_init,
        promote_dtype: Any = dtypes.promote_dtype,
        ctx: Context | None = None,
        rngs: Context | None = None,
        embedding_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, "Embed", required=True)
        self.promote_dtype = promote_dtype
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.embedding = param_from_init(
            embedding_init, ctx.make_rng("params"), (num_embeddings, features), param_dtype,
            **(embedding_metadata or {}),
        )

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        ids = jnp.asarray(inputs)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(
                f"Embed expects integer ids, got dtype {ids.dtype}; cast them first, e.g. ids.astype(jnp.int32)."
            )
        (table,) = self.promote_dtype((self.embedding.value,), dtype=self.dtype, inexact=False)
        if self.num_embeddings == 1:
            return jnp.broadcast_to(table[0], ids.shape + (self.features,))
        # On an explicit-sharding mesh, the lookup needs an output sharding: given, or inferred
        # (the ids' sharding, then the table's feature sharding).
        op_sharding = _sharding.take_out_sharding(out_sharding, table, ids)
        if op_sharding is not None:
            return table.at[ids].get(out_sharding=op_sharding, mode="fill")  # jnp.take's out-of-range rule
        return _sharding.constrain(jnp.take(table, ids, axis=0), out_sharding, op_sharding)

    def attend(self, query: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Scores of ``query`` (last axis ``features``) against every row: ``query @ embedding.T``.

        >>> import jax.numpy as jnp, nnxlite as nnx
        >>> embed = nnx.Embed(5, 3, ctx=nnx.context(0))
        >>> embed.attend(jnp.ones((2, 3))).shape
        (2, 5)
        """
        if query.shape[-1:] != (self.features,):
            raise ValueError(
                f"Embed(features={self.features}).attend expected a query whose last axis has size "
                f"{self.features}, got shape {tuple(query.shape)}."
            )
        query, table = promote_dtype(query, self.embedding.value, dtype=self.dtype or self.embedding.dtype)
        dims = (((query.ndim - 1,), (1,)), ((), ()))
        op_sharding = _sharding.dot_general_out_sharding(out_sharding, query, table, dims)
        if op_sharding is not None:
            return jnp.dot(query, table.T, out_sharding=op_sharding)
        return _sharding.constrain(jnp.dot(query, table.T), out_sharding, op_sharding)
