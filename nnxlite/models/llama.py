"""Llama, and the Mistral and Qwen2 checkpoints that share its shape.

RoPE positions, RMSNorm, a SwiGLU MLP and grouped-query attention (fewer
key/value heads than query heads). One :class:`LlamaConfig` reads all three
``model_type``s:

* ``llama`` — optional ``attention_bias`` (q/k/v/o) and ``mlp_bias``;
* ``qwen2`` — biases on q, k and v (not o);
* ``mistral`` — a ``sliding_window``: a query sees only the last
  ``sliding_window`` keys. The window is applied as part of the attention
  mask, so for sequences no longer than the window it is the same as full
  causal attention (and the KV cache keeps every position; no rolling buffer).

Attribute names follow ``transformers``' ``LlamaForCausalLM``
(``model.layers[0].self_attn.q_proj``), with flax leaf names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite.models._common import (
    activation, as_ids, attend, causal_mask, empty_cache, make_ctx, merge_heads, split_heads, update_cache,
)
from nnxlite.models._generate import Decoder
from nnxlite.models._hub import HFConfig
from nnxlite.models._pretrained import Pretrained
from nnxlite.interop.torch import Rule
from nnxlite.module import Module
from nnxlite.nn.embed import Embed
from nnxlite.nn.linear import Linear
from nnxlite.nn.normalization import RMSNorm
from nnxlite.rng import Context

__all__ = ["Llama", "LlamaConfig"]

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


@dataclass(frozen=True)
class LlamaConfig(HFConfig):
    """Llama-family settings from ``config.json`` (``model_type`` picks Llama, Mistral or Qwen2 behaviour)."""

    model_types = tuple(_ARCHITECTURES)

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None

    @classmethod
    def _normalize(cls, d: dict) -> dict:
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(
                f"LlamaConfig: rope_type={rope_type!r} is not supported; nnxlite.models.Llama implements the "
                "default RoPE (no scaling)."
            )
        if "rope_theta" in rope:
            d["rope_theta"] = rope["rope_theta"]
        if d.get("model_type") == "qwen2":
            if d.get("use_sliding_window"):
                raise ValueError("LlamaConfig: Qwen2 with use_sliding_window=True is not supported.")
            d["sliding_window"] = None
        if d.get("model_type") == "llama":
            d.pop("sliding_window", None)
        return d

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or self.model_type == "qwen2"

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["architectures"] = [_ARCHITECTURES[self.model_type]]
        # Concrete values: some transformers classes read these without a fallback for None.
        out["head_dim"], out["num_key_value_heads"] = self.dim_per_head, self.kv_heads
        if isinstance(out.get("rope_parameters"), dict):  # transformers >= 5 reads the theta from here
            out["rope_parameters"] = {**out["rope_parameters"], "rope_theta": self.rope_theta}
        if self.model_type == "llama":
            out.pop("sliding_window")
        return out


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate ``x`` ``(batch, seq, heads, dim)`` by its positions ``(batch, seq)`` (half-split layout, as HF)."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (batch, seq, dim / 2)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


class LlamaAttention(Module):
    def __init__(self, config: LlamaConfig, *, ctx: Context):
        d, hd = config.hidden_size, config.dim_per_head
        self.q_proj = Linear(d, config.num_attention_heads * hd, use_bias=config.qkv_bias, ctx=ctx)
        self.k_proj = Linear(d, config.kv_heads * hd, use_bias=config.qkv_bias, ctx=ctx)
        self.v_proj = Linear(d, config.kv_heads * hd, use_bias=config.qkv_bias, ctx=ctx)
        self.o_proj = Linear(config.num_attention_heads * hd, d, use_bias=config.attention_bias, ctx=ctx)
        self.num_heads, self.num_kv_heads, self.theta = config.num_attention_heads, config.kv_heads, config.rope_theta
        self.scale = hd**-0.5

    def __call__(self, x, positions, mask, cache=None, index=None, is_causal=False):
        q = rope(split_heads(self.q_proj(x), self.num_heads), positions, self.theta)
        k = rope(split_heads(self.k_proj(x), self.num_kv_heads), positions, self.theta)
        v = split_heads(self.v_proj(x), self.num_kv_heads)
        if cache is not None:
            k, v, cache = update_cache(cache, k, v, index)
        y = attend(q, k, v, mask=mask, scale=self.scale, is_causal=is_causal)
        return self.o_proj(merge_heads(y)), cache


class LlamaMLP(Module):
    def __init__(self, config: LlamaConfig, *, ctx: Context):
        d, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = Linear(d, inner, use_bias=bias, ctx=ctx)
        self.up_proj = Linear(d, inner, use_bias=bias, ctx=ctx)
        self.down_proj = Linear(inner, d, use_bias=bias, ctx=ctx)
        self.act = config.hidden_act

    def __call__(self, x):
        return self.down_proj(activation(self.act)(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(Module):
    def __init__(self, config: LlamaConfig, *, ctx: Context):
        self.self_attn = LlamaAttention(config, ctx=ctx)
        self.mlp = LlamaMLP(config, ctx=ctx)
        self.input_layernorm = RMSNorm(config.hidden_size, epsilon=config.rms_norm_eps, ctx=ctx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, epsilon=config.rms_norm_eps, ctx=ctx)

    def __call__(self, x, positions, mask, cache=None, index=None, is_causal=False):
        h, cache = self.self_attn(self.input_layernorm(x), positions, mask, cache, index, is_causal)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class LlamaModel(Module):
    """The decoder body: token embeddings, layers and the final RMSNorm."""

    def __init__(self, config: LlamaConfig, *, ctx: Context):
        self.embed_tokens = Embed(config.vocab_size, config.hidden_size, ctx=ctx)
        self.layers = [LlamaDecoderLayer(config, ctx=ctx) for _ in range(config.num_hidden_layers)]
        self.norm = RMSNorm(config.hidden_size, epsilon=config.rms_norm_eps, ctx=ctx)

    def __call__(self, ids, positions, mask, cache=None, index=None, is_causal=False):
        x = self.embed_tokens(ids)
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, c = layer(x, positions, mask, None if cache is None else cache[i], index, is_causal)
            new_cache.append(c)
        return self.norm(x), (new_cache if cache is not None else None)


class Llama(Module, Pretrained, Decoder):
    """Llama / Mistral / Qwen2 causal LM: ``model(input_ids) -> logits (batch, seq, vocab)``.

    >>> import jax.numpy as jnp, nnxlite.models as models
    >>> config = models.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                             num_attention_heads=4, num_key_value_heads=2)
    >>> model = models.Llama(config)
    >>> model(jnp.array([[1, 2, 3]])).shape
    (1, 3, 50)
    >>> model.model.layers[0].self_attn.k_proj.kernel.shape   # 2 key/value heads of 4
    (16, 8)
    """

    config_class = LlamaConfig

    @classmethod
    def hub_rules(cls, config: LlamaConfig) -> list[Rule]:
        rules = [Rule(r"\.rotary_emb\.inv_freq$", None)]  # a buffer older checkpoints carry
        if config.tie_word_embeddings:
            rules.append(Rule(r"^lm_head\.weight$", None))  # some tied checkpoints still store the copy
        return rules

    def __init__(self, config: LlamaConfig, *, ctx: Context | None = None, rngs: Context | None = None):
        ctx = make_ctx(ctx, rngs)
        self.config = config
        self.model = LlamaModel(config, ctx=ctx)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, use_bias=False, ctx=ctx)

    def _logits(self, h: jax.Array) -> jax.Array:
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.attend(h)
        return self.lm_head(h)

    def __call__(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None) -> jax.Array:
        """Logits ``(batch, seq, vocab)``; ``attention_mask`` (1 = token, 0 = padding) hides padded keys."""
        ids = as_ids(input_ids)
        slots = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        positions = slots if position_ids is None else jnp.asarray(position_ids)
        window = self.config.sliding_window
        if attention_mask is None and (window is None or window >= ids.shape[1]):
            h, _ = self.model(ids, positions, None, is_causal=True)
        else:
            valid = None if attention_mask is None else jnp.asarray(attention_mask)
            h, _ = self.model(ids, positions, causal_mask(slots, slots, valid, window))
        return self._logits(h)

    def init_cache(self, batch: int, length: int) -> list:
        c = self.config
        dtype = self.model.embed_tokens.embedding.dtype
        return empty_cache(c.num_hidden_layers, batch, length, c.kv_heads, c.dim_per_head, dtype)

    def decode(self, ids, positions, key_valid, cache, index):
        """Logits of ``ids`` at ``positions``, attending over the cache (written at slot ``index``)."""
        slots = jnp.arange(key_valid.shape[1])
        q_slots = index + jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        mask = causal_mask(q_slots, slots, key_valid, self.config.sliding_window)
        h, cache = self.model(ids, positions, mask, cache, index)
        return self._logits(h), cache
