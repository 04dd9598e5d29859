"""GPT-2: a causal language model with learned positions, pre-norm blocks and tied output embeddings.

Attribute names follow ``transformers``' ``GPT2LMHeadModel`` (``transformer.h[0].attn.c_attn``),
with flax leaf names (``kernel``, ``scale``, ``embedding``). GPT-2's
``Conv1D`` layers store their weight as ``(in, out)``, the layout of an
``nnx.Linear`` kernel already, so those load without a transpose.
Dropout is not modelled: the model is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
from nnxlite.nn.normalization import LayerNorm
from nnxlite.rng import Context

__all__ = ["GPT2", "GPT2Config"]


@dataclass(frozen=True)
class GPT2Config(HFConfig):
    """The fields of a GPT-2 ``config.json`` the model uses (defaults: GPT-2 small, 124M)."""

    model_types = ("gpt2",)
    architecture = "GPT2LMHeadModel"

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    tie_word_embeddings: bool = True

    @classmethod
    def _normalize(cls, d: dict) -> dict:
        for unsupported in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if d.get(unsupported):
                raise ValueError(f"GPT2Config: {unsupported}=True is not supported by nnxlite.models.GPT2.")
        return d


class GPT2Attention(Module):
    def __init__(self, config: GPT2Config, *, ctx: Context):
        d = config.n_embd
        self.c_attn = Linear(d, 3 * d, ctx=ctx)
        self.c_proj = Linear(d, d, ctx=ctx)
        self.num_heads = config.n_head
        self.scale = (d // config.n_head) ** -0.5 if config.scale_attn_weights else 1.0

    def __call__(self, x, mask, cache=None, index=None, is_causal=False):
        q, k, v = (split_heads(t, self.num_heads) for t in jnp.split(self.c_attn(x), 3, axis=-1))
        if cache is not None:
            k, v, cache = update_cache(cache, k, v, index)
        y = attend(q, k, v, mask=mask, scale=self.scale, is_causal=is_causal)
        return self.c_proj(merge_heads(y)), cache


class GPT2MLP(Module):
    def __init__(self, config: GPT2Config, *, ctx: Context):
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = Linear(config.n_embd, inner, ctx=ctx)
        self.c_proj = Linear(inner, config.n_embd, ctx=ctx)
        self.act = config.activation_function

    def __call__(self, x):
        return self.c_proj(activation(self.act)(self.c_fc(x)))


class GPT2Block(Module):
    def __init__(self, config: GPT2Config, *, ctx: Context):
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(config.n_embd, epsilon=eps, use_fast_variance=False, ctx=ctx)
        self.attn = GPT2Attention(config, ctx=ctx)
        self.ln_2 = LayerNorm(config.n_embd, epsilon=eps, use_fast_variance=False, ctx=ctx)
        self.mlp = GPT2MLP(config, ctx=ctx)

    def __call__(self, x, mask, cache=None, index=None, is_causal=False):
        h, cache = self.attn(self.ln_1(x), mask, cache, index, is_causal)
        x = x + h
        return x + self.mlp(self.ln_2(x)), cache


class GPT2Model(Module):
    """The transformer body: embeddings, blocks and the final LayerNorm."""

    def __init__(self, config: GPT2Config, *, ctx: Context):
        self.wte = Embed(config.vocab_size, config.n_embd, ctx=ctx)
        self.wpe = Embed(config.n_positions, config.n_embd, ctx=ctx)
        self.h = [GPT2Block(config, ctx=ctx) for _ in range(config.n_layer)]
        self.ln_f = LayerNorm(config.n_embd, epsilon=config.layer_norm_epsilon, use_fast_variance=False, ctx=ctx)

    def __call__(self, ids, positions, mask, cache=None, index=None, is_causal=False):
        x = self.wte(ids) + self.wpe(positions)
        new_cache = []
        for i, block in enumerate(self.h):
            x, c = block(x, mask, None if cache is None else cache[i], index, is_causal)
            new_cache.append(c)
        return self.ln_f(x), (new_cache if cache is not None else None)


class GPT2(Module, Pretrained, Decoder):
    """GPT-2 language model: ``model(input_ids) -> logits (batch, seq, vocab)``.

    >>> import jax.numpy as jnp, nnxlite.models as models
    >>> config = models.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    >>> model = models.GPT2(config)
    >>> model(jnp.array([[1, 2, 3]])).shape
    (1, 3, 50)
    >>> model.generate(jnp.array([[1, 2, 3]]), max_new_tokens=4).shape
    (1, 7)

    ``GPT2.from_pretrained(folder)`` loads a ``transformers`` folder
    (``config.json`` + ``model.safetensors``); ``save_pretrained(folder)``
    writes one that ``transformers.GPT2LMHeadModel.from_pretrained`` reads.
    """

    config_class = GPT2Config

    @classmethod
    def hub_rules(cls, config: GPT2Config) -> list[Rule]:
        return [
            Rule(r"\.attn\.(masked_)?bias$", None),  # causal-mask buffers of older transformers
            Rule(r"^lm_head\.weight$", None),  # the tied copy of wte
            # Conv1D stores (in, out): transpose to torch.nn.Linear's (out, in), which the Linear rule undoes.
            Rule(r"^(.*)\.(c_attn|c_proj|c_fc)\.weight$", r"\1.\2.weight", np.transpose),
        ]

    def __init__(self, config: GPT2Config, *, ctx: Context | None = None, rngs: Context | None = None):
        if not config.tie_word_embeddings:
            raise ValueError("GPT2Config: tie_word_embeddings=False is not supported (GPT-2 ties its output layer).")
        self.config = config
        self.transformer = GPT2Model(config, ctx=make_ctx(ctx, rngs))
        self.max_positions = config.n_positions

    def __call__(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None) -> jax.Array:
        """Logits ``(batch, seq, vocab)``; ``attention_mask`` (1 = token, 0 = padding) hides padded keys."""
        ids = as_ids(input_ids)
        positions = jnp.arange(ids.shape[1])[None] if position_ids is None else jnp.asarray(position_ids)
        if attention_mask is None:
            h, _ = self.transformer(ids, positions, None, is_causal=True)
        else:
            q = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
            mask = causal_mask(q, q, jnp.asarray(attention_mask))
            h, _ = self.transformer(ids, positions, mask)
        return self.transformer.wte.attend(h)

    def init_cache(self, batch: int, length: int) -> list:
        c = self.config
        return empty_cache(c.n_layer, batch, length, c.n_head, c.n_embd // c.n_head, self.transformer.wte.embedding.dtype)

    def decode(self, ids, positions, key_valid, cache, index):
        """Logits of ``ids`` at ``positions``, attending over the cache (written at slot ``index``)."""
        slots = jnp.arange(key_valid.shape[1])
        q_slots = index + jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        mask = causal_mask(q_slots, slots, key_valid)
        h, cache = self.transformer(ids, positions, mask, cache, index)
        return self.transformer.wte.attend(h), cache
