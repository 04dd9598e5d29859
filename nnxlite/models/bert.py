"""BERT: a bidirectional encoder with a masked-language-model head.

Attribute names follow ``transformers``' ``BertForMaskedLM``
(``bert.encoder.layer[0].attention.self.query``, ``cls.predictions``), with
flax leaf names. The output matrix is the word embedding (tied) unless the
config says otherwise. Dropout is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite.functional import param_from_init
from nnxlite.models._common import activation, as_ids, attend, make_ctx, merge_heads, padding_mask, split_heads
from nnxlite.models._hub import HFConfig
from nnxlite.models._pretrained import Pretrained
from nnxlite.interop.torch import Rule
from nnxlite.module import Module
from nnxlite.nn import initializers
from nnxlite.nn.embed import Embed
from nnxlite.nn.linear import Linear
from nnxlite.nn.normalization import LayerNorm
from nnxlite.rng import Context

__all__ = ["BERT", "BertConfig"]


@dataclass(frozen=True)
class BertConfig(HFConfig):
    """BERT settings from ``config.json`` (defaults: bert-base-uncased)."""

    model_types = ("bert",)
    architecture = "BertForMaskedLM"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    tie_word_embeddings: bool = True

    @classmethod
    def _normalize(cls, d: dict) -> dict:
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("BertConfig: only position_embedding_type='absolute' is supported.")
        return d


def _layer_norm(config: BertConfig, ctx: Context) -> LayerNorm:
    return LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, use_fast_variance=False, ctx=ctx)


class BertEmbeddings(Module):
    def __init__(self, config: BertConfig, *, ctx: Context):
        d = config.hidden_size
        self.word_embeddings = Embed(config.vocab_size, d, ctx=ctx)
        self.position_embeddings = Embed(config.max_position_embeddings, d, ctx=ctx)
        self.token_type_embeddings = Embed(config.type_vocab_size, d, ctx=ctx)
        self.LayerNorm = _layer_norm(config, ctx)

    def __call__(self, ids, token_type_ids):
        positions = jnp.arange(ids.shape[1])[None]
        x = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class BertSelfAttention(Module):
    def __init__(self, config: BertConfig, *, ctx: Context):
        d = config.hidden_size
        self.query = Linear(d, d, ctx=ctx)
        self.key = Linear(d, d, ctx=ctx)
        self.value = Linear(d, d, ctx=ctx)
        self.num_heads = config.num_attention_heads
        self.scale = (d // config.num_attention_heads) ** -0.5

    def __call__(self, x, mask):
        q, k, v = (split_heads(f(x), self.num_heads) for f in (self.query, self.key, self.value))
        return merge_heads(attend(q, k, v, mask=mask, scale=self.scale))


class BertDenseNorm(Module):
    """``LayerNorm(dense(x) + residual)``: the ``output`` sub-layers of attention and of the MLP."""

    def __init__(self, din: int, config: BertConfig, *, ctx: Context):
        self.dense = Linear(din, config.hidden_size, ctx=ctx)
        self.LayerNorm = _layer_norm(config, ctx)

    def __call__(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(Module):
    def __init__(self, config: BertConfig, *, ctx: Context):
        self.self = BertSelfAttention(config, ctx=ctx)
        self.output = BertDenseNorm(config.hidden_size, config, ctx=ctx)

    def __call__(self, x, mask):
        return self.output(self.self(x, mask), x)


class BertIntermediate(Module):
    def __init__(self, config: BertConfig, *, ctx: Context):
        self.dense = Linear(config.hidden_size, config.intermediate_size, ctx=ctx)
        self.act = config.hidden_act

    def __call__(self, x):
        return activation(self.act)(self.dense(x))


class BertLayer(Module):
    def __init__(self, config: BertConfig, *, ctx: Context):
        self.attention = BertAttention(config, ctx=ctx)
        self.intermediate = BertIntermediate(config, ctx=ctx)
        self.output = BertDenseNorm(config.intermediate_size, config, ctx=ctx)

    def __call__(self, x, mask):
        h = self.attention(x, mask)
        return self.output(self.intermediate(h), h)


class BertEncoder(Module):
    def __init__(self, config: BertConfig, *, ctx: Context):
        self.layer = [BertLayer(config, ctx=ctx) for _ in range(config.num_hidden_layers)]

    def __call__(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertModel(Module):
    """Embeddings and encoder: ``(batch, seq) ids -> (batch, seq, hidden)``."""

    def __init__(self, config: BertConfig, *, ctx: Context):
        self.embeddings = BertEmbeddings(config, ctx=ctx)
        self.encoder = BertEncoder(config, ctx=ctx)

    def __call__(self, ids, attention_mask=None, token_type_ids=None):
        token_type_ids = jnp.zeros_like(ids) if token_type_ids is None else jnp.asarray(token_type_ids)
        return self.encoder(self.embeddings(ids, token_type_ids), padding_mask(attention_mask))


class BertPredictionTransform(Module):
    def __init__(self, config: BertConfig, *, ctx: Context):
        self.dense = Linear(config.hidden_size, config.hidden_size, ctx=ctx)
        self.LayerNorm = _layer_norm(config, ctx)
        self.act = config.hidden_act

    def __call__(self, x):
        return self.LayerNorm(activation(self.act)(self.dense(x)))


class BertLMPredictionHead(Module):
    def __init__(self, config: BertConfig, *, ctx: Context):
        self.transform = BertPredictionTransform(config, ctx=ctx)
        self.bias = param_from_init(initializers.zeros, None, (config.vocab_size,), jnp.float32)
        if not config.tie_word_embeddings:
            self.decoder = Linear(config.hidden_size, config.vocab_size, use_bias=False, ctx=ctx)


class BertOnlyMLMHead(Module):
    def __init__(self, config: BertConfig, *, ctx: Context):
        self.predictions = BertLMPredictionHead(config, ctx=ctx)


class BERT(Module, Pretrained):
    """BERT with its masked-LM head: ``model(input_ids, attention_mask, token_type_ids) -> (batch, seq, vocab)``.

    >>> import jax.numpy as jnp, nnxlite.models as models
    >>> config = models.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...                            intermediate_size=32, max_position_embeddings=16)
    >>> model = models.BERT(config)
    >>> model(jnp.array([[2, 5, 7]]), attention_mask=jnp.array([[1, 1, 0]])).shape
    (1, 3, 30)
    >>> model.bert(jnp.array([[2, 5, 7]])).shape     # the encoder's hidden states
    (1, 3, 16)
    """

    config_class = BertConfig

    @classmethod
    def hub_rules(cls, config: BertConfig) -> list[Rule]:
        never = (r"(?!)", "")  # load-only renames: exporting writes today's names
        rules = [
            # A buffer, the tied copy of the bias, and heads BertForMaskedLM does not have (pretraining checkpoints).
            Rule(r"\.position_ids$", None),
            Rule(r"^cls\.predictions\.decoder\.bias$", None),
            Rule(r"^bert\.pooler\.", None),
            Rule(r"^cls\.seq_relationship\.", None),
            # TF-era LayerNorm names.
            Rule(r"LayerNorm\.gamma$", "LayerNorm.weight", inverse=never),
            Rule(r"LayerNorm\.beta$", "LayerNorm.bias", inverse=never),
        ]
        if config.tie_word_embeddings:
            rules.append(Rule(r"^cls\.predictions\.decoder\.weight$", None))  # older files store the tied copy
        return rules

    def __init__(self, config: BertConfig, *, ctx: Context | None = None, rngs: Context | None = None):
        ctx = make_ctx(ctx, rngs)
        self.config = config
        self.bert = BertModel(config, ctx=ctx)
        self.cls = BertOnlyMLMHead(config, ctx=ctx)

    def __call__(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> jax.Array:
        """Masked-LM logits ``(batch, seq, vocab)``; ``attention_mask`` (1 = token, 0 = padding)."""
        h = self.bert(as_ids(input_ids), attention_mask, token_type_ids)
        head = self.cls.predictions
        h = head.transform(h)
        logits = self.bert.embeddings.word_embeddings.attend(h) if self.config.tie_word_embeddings else head.decoder(h)
        return logits + head.bias.value
