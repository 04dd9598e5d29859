"""Pieces the model families share: activations by Hugging Face name, attention masks, KV caches.

Attention itself is :func:`jax.nn.dot_product_attention` everywhere (so it
takes the cuDNN path on GPU); this file only builds its inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nnxlite.rng import Context, context

# Hugging Face `hidden_act` / `activation_function` names -> functions.
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation a Hugging Face config names (``'gelu'``, ``'gelu_new'``, ``'silu'``, ...)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"Unsupported activation {name!r}; nnxlite.models knows {sorted(_ACTIVATIONS)}."
        ) from None


def make_ctx(ctx: Context | None, rngs: Context | None) -> Context:
    """The one Context a model constructor uses: ``ctx=`` or its other spelling ``rngs=`` (seed 0 if neither)."""
    if ctx is not None and rngs is not None and ctx is not rngs:
        raise TypeError("Pass the Context once, as ctx= or as rngs= (they are the same parameter), not both.")
    given = ctx if ctx is not None else rngs
    return given if given is not None else context(0)


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """``(batch, seq, heads * dim)`` -> ``(batch, seq, heads, dim)``."""
    return x.reshape(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads))


def merge_heads(x: jax.Array) -> jax.Array:
    """``(batch, seq, heads, dim)`` -> ``(batch, seq, heads * dim)``."""
    return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


def padding_mask(attention_mask: Any) -> jax.Array | None:
    """A ``(batch, 1, 1, keys)`` boolean mask from a transformers-style 0/1 ``attention_mask`` (None stays None)."""
    if attention_mask is None:
        return None
    valid = jnp.asarray(attention_mask).astype(bool)
    return valid[:, None, None, :]


def causal_mask(
    query_positions: jax.Array,
    key_positions: jax.Array,
    key_valid: jax.Array | None = None,
    sliding_window: int | None = None,
) -> jax.Array:
    """``(batch, 1, queries, keys)``: key ``j`` is visible to query ``i`` when ``pos_j <= pos_i``.

    ``key_valid`` ``(batch, keys)`` hides padding and unwritten cache slots;
    ``sliding_window`` also hides keys ``window`` or more positions back
    (Mistral's rule: ``pos_i - pos_j < window``).
    """
    q = query_positions[:, None, :, None]
    k = key_positions[:, None, None, :] if key_positions.ndim == 2 else key_positions[None, None, None, :]
    visible = k <= q
    if sliding_window is not None:
        visible = visible & (q - k < sliding_window)
    if key_valid is not None:
        visible = visible & key_valid[:, None, None, :].astype(bool)
    return visible


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None, scale: float, is_causal: bool = False):
    """``jax.nn.dot_product_attention`` on ``(batch, seq, heads, dim)`` inputs (grouped-query heads allowed)."""
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=is_causal)


def update_cache(cache: dict, k: jax.Array, v: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
    """Write ``k``/``v`` ``(batch, new, heads, dim)`` into a fixed-size cache at slot ``index``.

    The cache shapes never change, so a decode step compiles once.
    Returns the whole cached keys and values (to attend over) and the new cache.
    """
    new_k = lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), index, axis=1)
    new_v = lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), index, axis=1)
    return new_k, new_v, {"k": new_k, "v": new_v}


def empty_cache(num_layers: int, batch: int, length: int, num_kv_heads: int, head_dim: int, dtype: Any) -> list:
    """One ``{'k', 'v'}`` dict of zeros ``(batch, length, kv_heads, head_dim)`` per layer."""
    shape = (batch, length, num_kv_heads, head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(num_layers)]


def as_ids(input_ids: Any) -> jax.Array:
    """Token ids as an int32 ``(batch, seq)`` array (accepts numpy, lists, torch tensors via numpy)."""
    ids = input_ids if isinstance(input_ids, jax.Array) else jnp.asarray(np.asarray(input_ids))
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(
            f"input_ids must be integer token ids of shape (batch, seq), got {ids.dtype} array of shape "
            f"{tuple(ids.shape)}; add a batch axis with ids[None] for one sequence."
        )
    return ids.astype(jnp.int32)
