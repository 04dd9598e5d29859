"""Attention: :class:`MultiHeadAttention`, the attention functions, and mask helpers.

Shapes follow flax: queries, keys and values are
``(*batch, length, num_heads, head_dim)``; attention weights and masks are
``(*batch, num_heads, q_length, kv_length)``; a mask is True (or non-zero)
where a query may attend to a key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from nnxlite.module import Module
from nnxlite.nn import dtypes, initializers
from nnxlite.nn.dtypes import promote_dtype
from nnxlite.nn.initializers import Initializer
from nnxlite.nn.linear import LinearGeneral
from nnxlite.nn.normalization import LayerNorm
from nnxlite.nn.stochastic import bernoulli, draw_key
from nnxlite.rng import Context, RngStream
from nnxlite.variables import Cache, Intermediate
from nnxlite._rngs_arg import one_rng_arg

__all__ = [
    "MultiHeadAttention",
    "dot_product_attention",
    "dot_product_attention_weights",
    "make_attention_mask",
    "make_causal_mask",
    "combine_masks",
]


# ---------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------
def make_attention_mask(
    query_input: jax.Array,
    key_input: jax.Array,
    pairwise_fn: Callable[[jax.Array, jax.Array], jax.Array] = jnp.multiply,
    extra_batch_dims: int = 0,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """A ``(*batch, 1, q_len, kv_len)`` mask from per-position query and key values.

    Entry ``[..., 0, i, j]`` is ``pairwise_fn(query_input[..., i],
    key_input[..., j])``. With the default ``multiply`` and 0/1 inputs this
    is a padding mask: a pair is kept when both positions are real tokens.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> tokens = jnp.array([[5, 7, 0]])                  # 0 is padding
    >>> mask = nnx.make_attention_mask(tokens > 0, tokens > 0)
    >>> mask.shape
    (1, 1, 3, 3)
    >>> mask[0, 0].astype(int).tolist()
    [[1, 1, 0], [1, 1, 0], [0, 0, 0]]

    Args:
      query_input: ``(*batch, q_len)`` values.
      key_input: ``(*batch, kv_len)`` values.
      pairwise_fn: elementwise comparison of a query value with a key value.
      extra_batch_dims: number of leading singleton axes to add.
      dtype: dtype of the mask.
    """
    mask = pairwise_fn(jnp.expand_dims(query_input, -1), jnp.expand_dims(key_input, -2))
    mask = jnp.expand_dims(mask, -3)
    mask = mask.reshape((1,) * extra_batch_dims + mask.shape)
    return mask.astype(dtype)


def make_causal_mask(x: jax.Array, extra_batch_dims: int = 0, dtype: Any = jnp.float32) -> jax.Array:
    """A ``(*batch, 1, len, len)`` mask letting position ``i`` attend to positions ``j <= i``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> mask = nnx.make_causal_mask(jnp.ones((1, 3)))
    >>> mask[0, 0].astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [1, 1, 1]]

    Args:
      x: any ``(*batch, len)`` array (only its shape is used).
      extra_batch_dims, dtype: as for :func:`make_attention_mask`.
    """
    positions = jnp.broadcast_to(jnp.arange(x.shape[-1]), x.shape)
    return make_attention_mask(positions, positions, jnp.greater_equal, extra_batch_dims, dtype)


def combine_masks(*masks: jax.Array | None, dtype: Any = jnp.float32) -> jax.Array | None:
    """Logical AND of the masks that are not None (None when all are None).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> tokens = jnp.array([[5, 7, 0]])
    >>> mask = nnx.combine_masks(nnx.make_causal_mask(tokens), nnx.make_attention_mask(tokens > 0, tokens > 0))
    >>> mask[0, 0].astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    >>> nnx.combine_masks(None, None) is None
    True
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    if len({m.ndim for m in present}) != 1:
        raise ValueError(
            f"combine_masks: masks must have the same number of axes, got shapes {[tuple(m.shape) for m in present]}; "
            "add singleton axes with jnp.expand_dims."
        )
    out = present[0].astype(bool)
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out.astype(dtype)


# ---------------------------------------------------------------------------------
# Attention functions
# ---------------------------------------------------------------------------------
def _check_qkv(query: jax.Array, key: jax.Array, value: jax.Array | None = None) -> None:
    arrays = [("query", query), ("key", key)] + ([("value", value)] if value is not None else [])
    shapes = ", ".join(f"{n}={tuple(a.shape)}" for n, a in arrays)
    if len({a.ndim for _, a in arrays}) != 1 or query.ndim < 3:
        raise ValueError(f"Attention inputs must all be (*batch, length, heads, head_dim); got {shapes}.")
    if len({a.shape[:-3] for _, a in arrays}) != 1:
        raise ValueError(f"Attention inputs must share their batch axes; got {shapes}.")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query and key must have the same head_dim (last axis); got {shapes}.")
    if value is not None and key.shape[-3:-1] != value.shape[-3:-1]:
        raise ValueError(f"key and value must have the same length and number of heads; got {shapes}.")
    if query.shape[-2] % key.shape[-2]:
        raise ValueError(
            f"The number of query heads ({query.shape[-2]}) must be a multiple of the number of key/value heads "
            f"({key.shape[-2]}) (grouped-query attention); got {shapes}."
        )


def _repeat_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """Grouped-query attention: key/value head ``h`` serves query heads ``h*r .. h*r + r-1``."""
    return x if x.shape[-2] == num_heads else jnp.repeat(x, num_heads // x.shape[-2], axis=-2)


def dot_product_attention_weights(
    query: jax.Array,
    key: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Module | None = None,
    is_causal: bool = False,
) -> jax.Array:
    """``softmax(q·k / sqrt(head_dim) + bias)`` with masked entries removed: ``(*batch, heads, q_len, kv_len)``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> q = k = jnp.ones((2, 3, 4, 8))                  # batch 2, length 3, 4 heads of 8
    >>> w = nnx.dot_product_attention_weights(q, k, is_causal=True)
    >>> w.shape
    (2, 4, 3, 3)
    >>> [[round(v, 3) for v in row] for row in w[0, 0].tolist()]
    [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.333, 0.333, 0.333]]

    Args:
      query: ``(*batch, q_len, heads, head_dim)``.
      key: ``(*batch, kv_len, kv_heads, head_dim)``; ``heads`` must be a
        multiple of ``kv_heads`` (grouped-query attention).
      bias: added to the logits; broadcastable to the weights' shape.
      mask: True/non-zero where attention is allowed; broadcastable to the
        weights' shape. A query whose keys are all masked attends uniformly.
      broadcast_dropout: share one dropout mask across the batch and head axes.
      dropout_rng, dropout_rate, deterministic: dropout of the weights (off
        when ``deterministic`` or ``dropout_rate == 0``).
      dtype: computation dtype (default: the common type of query and key).
      precision: einsum precision.
      module: if given, the weights are recorded with
        ``module.sow(nnx.Intermediate, "attention_weights", weights)``.
      is_causal: also apply a causal mask (key ``j`` visible to query ``i`` iff ``j <= i``).
    """
    query, key = promote_dtype(query, key, dtype=dtype)
    dtype = query.dtype
    _check_qkv(query, key)
    key = _repeat_heads(key, query.shape[-2])
    query = query / jnp.sqrt(query.shape[-1]).astype(dtype)
    logits = jnp.einsum("...qhd,...khd->...hqk", query, key, precision=precision)
    if bias is not None:
        logits = logits + bias
    if is_causal:
        q_len, kv_len = logits.shape[-2:]
        causal = jnp.tril(jnp.ones((q_len, kv_len), bool))
        mask = causal if mask is None else jnp.logical_and(mask, causal)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(dtype).min)
    weights = jax.nn.softmax(logits).astype(dtype)
    if module is not None:
        module.sow(Intermediate, "attention_weights", weights)
    if not deterministic and dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError("Attention dropout needs a key: pass dropout_rng=, or deterministic=True.")
        keep_prob = 1.0 - dropout_rate
        shape = (1,) * (weights.ndim - 2) + weights.shape[-2:] if broadcast_dropout else weights.shape
        keep = bernoulli(dropout_rng, keep_prob, shape)
        weights = weights * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype))
    return weights


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Module | None = None,
    is_causal: bool = False,
) -> jax.Array:
    """Scaled dot-product attention: the weights of :func:`dot_product_attention_weights` applied to ``value``.

    Returns ``(*batch, q_len, heads, head_dim)``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> q = k = v = jnp.ones((2, 5, 4, 8))          # batch 2, length 5, 4 heads of 8
    >>> nnx.dot_product_attention(q, k, v).shape
    (2, 5, 4, 8)

    Args:
      value: ``(*batch, kv_len, kv_heads, head_dim)``.
      The other arguments are those of :func:`dot_product_attention_weights`.
    """
    query, key, value = promote_dtype(query, key, value, dtype=dtype)
    _check_qkv(query, key, value)
    weights = dot_product_attention_weights(
        query, key, bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic,
        query.dtype, precision, module, is_causal,
    )
    value = _repeat_heads(value, query.shape[-2])
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


# ---------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------
class MultiHeadAttention(Module):
    """Multi-head attention with learned query/key/value/output projections.

    The sub-modules are named as in flax.nnx: ``query``, ``key``, ``value``
    (:class:`~nnxlite.nn.LinearGeneral` from ``in_features`` to
    ``(num_heads, head_dim)``), ``out`` (from ``(num_heads, head_dim)`` to
    ``out_features``), and with ``normalize_qk=True`` the LayerNorms
    ``query_ln``/``key_ln``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> attn = nnx.MultiHeadAttention(num_heads=2, in_features=6, qkv_features=8, ctx=nnx.context(0))
    >>> x = jnp.ones((2, 4, 6))                   # (batch, length, features)
    >>> attn(x, is_causal=True).shape             # self-attention; attn(x, y) attends to y
    (2, 4, 6)
    >>> attn.query.kernel.shape                   # in_features -> (num_heads, head_dim)
    (6, 2, 4)

    Autoregressive decoding keeps the keys and values seen so far in
    ``nnx.Cache`` Variables made by :meth:`init_cache`; each ``decode=True``
    call then takes one new position::

        >>> attn.init_cache(x.shape)              # (batch, max_length, features)
        >>> attn(x[:, :1], decode=True).shape
        (2, 1, 6)
        >>> int(attn.cache_index.value)
        1

    Args:
      num_heads: number of attention heads.
      in_features: size of the last axis of the queries' inputs.
      qkv_features: total width of the query/key/value projections (default
        ``in_features``); ``head_dim = qkv_features // num_heads``.
      out_features: width of the output (default ``in_features``).
      num_kv_heads: number of key/value heads (default ``num_heads``); fewer
        gives grouped-query attention. Must divide ``num_heads``.
      in_kv_features: last-axis size of the key/value inputs (default
        ``in_features``).
      dtype, param_dtype, precision: as for the dense layers.
      broadcast_dropout, dropout_rate: dropout of the attention weights.
      deterministic: the default mode (``model.eval()`` sets True); the call
        keyword overrides it.
      kernel_init, bias_init, use_bias: for the four projections;
        ``out_kernel_init``/``out_bias_init`` override them for ``out``.
      attention_fn: the function computing attention from
        ``(query, key, value, ...)``, with the keywords of
        :func:`dot_product_attention`.
      decode: the default for the call keyword ``decode``.
      normalize_qk: apply LayerNorm to the projected queries and keys.
      qkv_promote_dtype, out_promote_dtype, ln_promote_dtype: the
        ``promote_dtype`` functions of the projections and LayerNorms.
      qkv_dot_general, out_dot_general: the contraction ops of the projections (see
        :class:`~nnxlite.nn.LinearGeneral`).
      qkv_dot_general_cls, out_dot_general_cls: classes giving those ops, as in
        :class:`~nnxlite.nn.LinearGeneral`.
      ctx: the Context for parameter keys; ``rngs=`` is the same parameter
        (flax.nnx's spelling).
      keep_ctx: keep a ``dropout`` stream (seeded from ``ctx``) for calls
        that pass no ``ctx``. ``keep_rngs`` is the same switch. Off by default
        when the Context is passed as ``ctx=``; on by default when it is
        passed as ``rngs=`` (flax.nnx's default), so code of either library
        behaves as it did there.
      kernel_metadata, bias_metadata: metadata of the query/key/value
        projections' Params; ``out_kernel_metadata``/``out_bias_metadata``
        of ``out``'s; ``query_ln_scale_metadata``/``key_ln_scale_metadata``
        of the LayerNorms' scales.
    """

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        num_kv_heads: int | None = None,
        in_kv_features: int | None = None,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        broadcast_dropout: bool = True,
        dropout_rate: float = 0.0,
        deterministic: bool | None = False,
        precision: Any = None,
        kernel_init: Initializer = initializers.default_kernel_init,
        out_kernel_init: Initializer | None = None,
        bias_init: Initializer = initializers.zeros,
        out_bias_init: Initializer | None = None,
        use_bias: bool = True,
        attention_fn: Callable[..., jax.Array] = dot_product_attention,
        decode: bool | None = False,
        normalize_qk: bool = False,
        qkv_promote_dtype: Any = dtypes.promote_dtype,
        out_promote_dtype: Any = dtypes.promote_dtype,
        ln_promote_dtype: Any = dtypes.promote_dtype,
        qkv_dot_general: Any = None,
        out_dot_general: Any = None,
        qkv_dot_general_cls: Any = None,
        out_dot_general_cls: Any = None,
        ctx: Context | None = None,
        rngs: Context | None = None,
        keep_ctx: bool | None = None,
        keep_rngs: bool | None = None,
        kernel_metadata: Mapping[str, Any] | None = None,
        out_kernel_metadata: Mapping[str, Any] | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
        out_bias_metadata: Mapping[str, Any] | None = None,
        query_ln_scale_metadata: Mapping[str, Any] | None = None,
        key_ln_scale_metadata: Mapping[str, Any] | None = None,
    ):
        flax_spelling = rngs is not None
        ctx = one_rng_arg(ctx, rngs, "MultiHeadAttention", required=True)
        if keep_ctx is not None and keep_rngs is not None and keep_ctx != keep_rngs:
            raise TypeError(
                f"MultiHeadAttention got keep_ctx={keep_ctx} and keep_rngs={keep_rngs}; they are the same "
                "switch (keep_rngs is flax.nnx's name). Pass only one."
            )
        keep = keep_ctx if keep_ctx is not None else keep_rngs
        if keep is None:
            keep = flax_spelling
        self.num_heads = num_heads
        self.in_features = in_features
        self.qkv_features = qkv_features if qkv_features is not None else in_features
        self.out_features = out_features if out_features is not None else in_features
        self.num_kv_heads = num_kv_heads if num_kv_heads is not None else num_heads
        self.in_kv_features = in_kv_features if in_kv_features is not None else in_features
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.broadcast_dropout = broadcast_dropout
        self.dropout_rate = dropout_rate
        self.deterministic = deterministic
        self.precision = precision
        self.use_bias = use_bias
        self.attention_fn = attention_fn
        self.decode = decode
        self.normalize_qk = normalize_qk
        if self.qkv_features % num_heads:
            raise ValueError(
                f"MultiHeadAttention: qkv_features={self.qkv_features} must be divisible by num_heads={num_heads}."
            )
        if num_heads % self.num_kv_heads:
            raise ValueError(
                f"MultiHeadAttention: num_heads={num_heads} must be divisible by num_kv_heads={self.num_kv_heads}."
            )
        self.head_dim = self.qkv_features // num_heads

        def projection(features_in, heads):
            return LinearGeneral(
                features_in, (heads, self.head_dim), use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                precision=precision, kernel_init=kernel_init, bias_init=bias_init,
                promote_dtype=qkv_promote_dtype, dot_general=qkv_dot_general, dot_general_cls=qkv_dot_general_cls,
                ctx=ctx, kernel_metadata=kernel_metadata, bias_metadata=bias_metadata,
            )

        self.query = projection(in_features, num_heads)
        self.key = projection(self.in_kv_features, self.num_kv_heads)
        self.value = projection(self.in_kv_features, self.num_kv_heads)
        if normalize_qk:
            self.query_ln = LayerNorm(
                self.head_dim, use_bias=False, dtype=dtype, param_dtype=param_dtype, promote_dtype=ln_promote_dtype,
                ctx=ctx, scale_metadata=query_ln_scale_metadata,
            )
            self.key_ln = LayerNorm(
                self.head_dim, use_bias=False, dtype=dtype, param_dtype=param_dtype, promote_dtype=ln_promote_dtype,
                ctx=ctx, scale_metadata=key_ln_scale_metadata,
            )
        else:
            self.query_ln = None
            self.key_ln = None
        self.out = LinearGeneral(
            (num_heads, self.head_dim), self.out_features, axis=(-2, -1), use_bias=use_bias, dtype=dtype,
            param_dtype=param_dtype, precision=precision, kernel_init=out_kernel_init or kernel_init,
            bias_init=out_bias_init or bias_init, promote_dtype=out_promote_dtype, dot_general=out_dot_general,
            dot_general_cls=out_dot_general_cls, ctx=ctx, kernel_metadata=out_kernel_metadata,
            bias_metadata=out_bias_metadata,
        )
        keep = keep and dropout_rate > 0
        # As in Dropout: nnxlite's spelling keeps a Context, flax's keeps flax's forked stream as `rngs`.
        self.ctx = Context(dropout=ctx.make_rng("dropout")) if keep and not flax_spelling else None
        self.rngs = ctx.stream("dropout").fork() if keep and flax_spelling else None
        self.cached_key = None
        self.cached_value = None
        self.cache_index = None

    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_k: jax.Array | None = None,
        inputs_v: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        deterministic: bool | None = None,
        ctx: Context | RngStream | jax.Array | None = None,
        rngs: Context | RngStream | jax.Array | None = None,
        sow_weights: bool = False,
        decode: bool | None = None,
        is_causal: bool = False,
        out_sharding: Any = None,
        qkv_sharding: Any = None,
    ) -> jax.Array:
        """Attend from ``inputs_q`` to ``inputs_k`` (default: ``inputs_q``), reading ``inputs_v`` (default: ``inputs_k``).

        Args:
          inputs_q: ``(*batch, q_len, in_features)``.
          inputs_k, inputs_v: ``(*batch, kv_len, in_kv_features)``.
          mask: ``(*batch, num_heads or 1, q_len, kv_len)``, True where allowed.
          deterministic: overrides the mode for this call.
          ctx: the Context (or RngStream, or a key) for attention dropout
            (``rngs=`` is the same parameter).
          sow_weights: record the weights as ``self.attention_weights`` (``nnx.Intermediate``).
          decode: overrides ``self.decode``: use and extend the cache (one position per call).
          is_causal: add a causal mask (implied, so ignored, when decoding).
          out_sharding, qkv_sharding: output shardings passed on to the
            output and query/key/value projections.

        Returns:
          ``(*batch, q_len, out_features)``.
        """
        if inputs_k is None:
            if inputs_v is not None:
                raise ValueError(
                    "MultiHeadAttention: inputs_v was given without inputs_k; pass inputs_k too "
                    "(to use one array for both keys and values, pass it as inputs_k only)."
                )
            inputs_k = inputs_q
        if inputs_v is None:
            inputs_v = inputs_k
        for name, x, size in (("inputs_q", inputs_q, self.in_features), ("inputs_k", inputs_k, self.in_kv_features),
                              ("inputs_v", inputs_v, self.in_kv_features)):
            if x.shape[-1:] != (size,):
                raise ValueError(
                    f"MultiHeadAttention: {name} should have last axis {size}, got shape {tuple(x.shape)}."
                )
        ctx = one_rng_arg(ctx, rngs, "MultiHeadAttention.__call__")
        query = self.query(inputs_q, out_sharding=qkv_sharding)
        key = self.key(inputs_k, out_sharding=qkv_sharding)
        value = self.value(inputs_v, out_sharding=qkv_sharding)
        if self.normalize_qk:
            query, key = self.query_ln(query), self.key_ln(key)

        if self.decode if decode is None else decode:
            key, value, mask = self._extend_cache(key, value, mask)
            is_causal = False  # the cache mask already hides every position after this one

        if deterministic is None:
            deterministic = bool(self.deterministic)
        dropout_rng = None
        if self.dropout_rate > 0.0 and not deterministic:
            if ctx is None:
                ctx = self.ctx if self.ctx is not None else self.rngs
            dropout_rng = draw_key(ctx, "dropout", "MultiHeadAttention")
        x = self.attention_fn(
            query, key, value, mask=mask, dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
            broadcast_dropout=self.broadcast_dropout, deterministic=deterministic or self.dropout_rate == 0.0,
            dtype=self.dtype, precision=self.precision, module=self if sow_weights else None, is_causal=is_causal,
        )
        return self.out(x, out_sharding=out_sharding)

    def set_view(
        self,
        deterministic: bool | None = None,
        decode: bool | None = None,
        batch_size: int | tuple[int, ...] | None = None,
        max_length: int | None = None,
    ):
        """Settings for ``nnx.view``.

        Args:
          deterministic: if True, the module is set to deterministic mode.
          decode: if True, the module is set to decode mode.
          batch_size: the batch size to use for the cache.
          max_length: the max length to use for the cache.
        """
        if deterministic is not None:
            self.deterministic = deterministic
        if decode is not None:
            self.decode = decode
            if decode and getattr(self, "cached_key", None) is None:
                if batch_size is None or max_length is None:
                    raise TypeError("set_view(decode=True): pass batch_size= and max_length= to create the cache.")
                batch = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
                self.init_cache((*batch, max_length, self.in_features), self.dtype or jnp.float32)

    def init_cache(self, input_shape: tuple[int, ...], dtype: Any = jnp.float32) -> None:
        """Create empty ``cached_key``/``cached_value`` and ``cache_index = 0`` (``nnx.Cache``) for decoding.

        ``input_shape`` is the shape of a full input, ``(*batch, max_length,
        features)``; afterwards every ``decode=True`` call consumes one
        position. Calling it again resets the cache.

        >>> import nnxlite as nnx
        >>> attn = nnx.MultiHeadAttention(2, 6, qkv_features=8, ctx=nnx.context(0))
        >>> attn.init_cache((2, 4, 6))
        >>> attn.cached_key.shape, int(attn.cache_index.value)
        ((2, 4, 2, 4), 0)
        """
        shape = tuple(input_shape[:-1]) + (self.num_kv_heads, self.head_dim)
        self.cached_key = Cache(jnp.zeros(shape, dtype))
        self.cached_value = Cache(jnp.zeros(shape, dtype))
        self.cache_index = Cache(jnp.array(0, jnp.int32))

    def _extend_cache(self, key: jax.Array, value: jax.Array, mask: jax.Array | None):
        """Write this step's key/value at ``cache_index`` and mask out the unwritten positions."""
        if self.cached_key is None:
            raise ValueError(
                "MultiHeadAttention: decode=True needs a cache; call layer.init_cache((batch, max_length, features)) first."
            )
        *batch, max_length, heads, head_dim = self.cached_key.shape
        expected = tuple(batch) + (1, heads, head_dim)
        if key.shape != expected:
            raise ValueError(
                f"MultiHeadAttention: in decode mode each call takes one position of the cached batch: expected "
                f"projected keys of shape {expected}, got {tuple(key.shape)} (inputs (*batch, 1, features))."
            )
        index = self.cache_index.value
        try:
            full = int(index) >= max_length
        except TypeError:  # a traced index (under jit): it cannot be checked here
            full = False
        if full:
            raise ValueError(
                f"MultiHeadAttention: the decode cache is full ({max_length} positions); call init_cache again."
            )
        start = (0,) * len(batch) + (index, 0, 0)
        cache_dtype = self.cached_key.dtype
        key = lax.dynamic_update_slice(self.cached_key.value, key.astype(cache_dtype), start)
        value = lax.dynamic_update_slice(self.cached_value.value, value.astype(cache_dtype), start)
        self.cached_key.value = key
        self.cached_value.value = value
        self.cache_index.value = index + 1
        written = jnp.broadcast_to(jnp.arange(max_length) <= index, tuple(batch) + (1, 1, max_length))
        return key, value, combine_masks(mask, written)
