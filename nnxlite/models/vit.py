"""ViT: a Vision Transformer for image classification.

Attribute names follow ``transformers``' ``ViTForImageClassification``
(``vit.embeddings.patch_embeddings.projection``, ``vit.encoder.layer[0]``,
``classifier``), with flax leaf names. ``pixel_values`` are NCHW as in
``transformers``; NHWC is accepted too (the layout whose channel axis has
``num_channels`` entries; NCHW wins when both do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite.functional import param_from_init
from nnxlite.models._common import activation, attend, make_ctx, merge_heads, split_heads
from nnxlite.models._hub import HFConfig
from nnxlite.models._pretrained import Pretrained
from nnxlite.interop.torch import Rule
from nnxlite.module import Module
from nnxlite.nn import initializers
from nnxlite.nn.conv import Conv
from nnxlite.nn.linear import Linear
from nnxlite.nn.normalization import LayerNorm
from nnxlite.rng import Context

__all__ = ["ViT", "ViTConfig"]


@dataclass(frozen=True)
class ViTConfig(HFConfig):
    """ViT settings from ``config.json`` (defaults: ViT-Base/16 at 224 pixels)."""

    model_types = ("vit",)
    architecture = "ViTForImageClassification"

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    num_labels: int = 2

    @classmethod
    def _normalize(cls, d: dict) -> dict:
        if "num_labels" not in d and "id2label" in d:
            d["num_labels"] = len(d["id2label"])
        return d

    def to_dict(self) -> dict:
        out = super().to_dict()
        if len(out.get("id2label") or {}) != self.num_labels:
            out["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            out["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return out


def _layer_norm(config: ViTConfig, ctx: Context) -> LayerNorm:
    return LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, use_fast_variance=False, ctx=ctx)


class ViTPatchEmbeddings(Module):
    def __init__(self, config: ViTConfig, *, ctx: Context):
        p = config.patch_size
        self.projection = Conv(config.num_channels, config.hidden_size, (p, p), strides=(p, p), padding="VALID", ctx=ctx)

    def __call__(self, pixels_nhwc):
        x = self.projection(pixels_nhwc)
        return x.reshape(x.shape[0], -1, x.shape[-1])  # patches in row-major order, as torch's flatten(2)


class ViTEmbeddings(Module):
    def __init__(self, config: ViTConfig, *, ctx: Context):
        d = config.hidden_size
        num_patches = (config.image_size // config.patch_size) ** 2
        key = ctx.make_rng("params")
        self.cls_token = param_from_init(initializers.truncated_normal(0.02), key, (1, 1, d), jnp.float32)
        self.patch_embeddings = ViTPatchEmbeddings(config, ctx=ctx)
        key = ctx.make_rng("params")
        self.position_embeddings = param_from_init(
            initializers.truncated_normal(0.02), key, (1, num_patches + 1, d), jnp.float32
        )

    def __call__(self, pixels_nhwc):
        x = self.patch_embeddings(pixels_nhwc)
        cls = jnp.broadcast_to(self.cls_token.value, (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        x = jnp.concatenate([cls, x], axis=1)
        if x.shape[1] != self.position_embeddings.shape[1]:
            raise ValueError(
                f"ViT: the image gives {x.shape[1] - 1} patches but the model has position embeddings for "
                f"{self.position_embeddings.shape[1] - 1}; resize the image to the config's image_size."
            )
        return x + self.position_embeddings.value


class ViTSelfAttention(Module):
    def __init__(self, config: ViTConfig, *, ctx: Context):
        d, bias = config.hidden_size, config.qkv_bias
        self.query = Linear(d, d, use_bias=bias, ctx=ctx)
        self.key = Linear(d, d, use_bias=bias, ctx=ctx)
        self.value = Linear(d, d, use_bias=bias, ctx=ctx)
        self.num_heads = config.num_attention_heads
        self.scale = (d // config.num_attention_heads) ** -0.5

    def __call__(self, x):
        q, k, v = (split_heads(f(x), self.num_heads) for f in (self.query, self.key, self.value))
        return merge_heads(attend(q, k, v, mask=None, scale=self.scale))


class ViTDense(Module):
    """A lone ``dense`` sub-layer (the ``output`` of attention, of the MLP, and ``intermediate``)."""

    def __init__(self, din: int, dout: int, *, ctx: Context):
        self.dense = Linear(din, dout, ctx=ctx)

    def __call__(self, x):
        return self.dense(x)


class ViTAttention(Module):
    def __init__(self, config: ViTConfig, *, ctx: Context):
        self.attention = ViTSelfAttention(config, ctx=ctx)
        self.output = ViTDense(config.hidden_size, config.hidden_size, ctx=ctx)

    def __call__(self, x):
        return self.output(self.attention(x))


class ViTLayer(Module):
    def __init__(self, config: ViTConfig, *, ctx: Context):
        self.layernorm_before = _layer_norm(config, ctx)
        self.attention = ViTAttention(config, ctx=ctx)
        self.layernorm_after = _layer_norm(config, ctx)
        self.intermediate = ViTDense(config.hidden_size, config.intermediate_size, ctx=ctx)
        self.output = ViTDense(config.intermediate_size, config.hidden_size, ctx=ctx)
        self.act = config.hidden_act

    def __call__(self, x):
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output(activation(self.act)(self.intermediate(self.layernorm_after(x))))


class ViTEncoder(Module):
    def __init__(self, config: ViTConfig, *, ctx: Context):
        self.layer = [ViTLayer(config, ctx=ctx) for _ in range(config.num_hidden_layers)]

    def __call__(self, x):
        for layer in self.layer:
            x = layer(x)
        return x


class ViTModel(Module):
    """Patch embeddings, encoder and final LayerNorm: NHWC pixels -> ``(batch, 1 + patches, hidden)``."""

    def __init__(self, config: ViTConfig, *, ctx: Context):
        self.embeddings = ViTEmbeddings(config, ctx=ctx)
        self.encoder = ViTEncoder(config, ctx=ctx)
        self.layernorm = _layer_norm(config, ctx)

    def __call__(self, pixels_nhwc):
        return self.layernorm(self.encoder(self.embeddings(pixels_nhwc)))


def channels_last(pixel_values: Any, num_channels: int, who: str) -> jax.Array:
    """NCHW (preferred) or NHWC images as NHWC."""
    x = jnp.asarray(pixel_values)
    if x.ndim == 4 and x.shape[1] == num_channels:
        return jnp.transpose(x, (0, 2, 3, 1))
    if x.ndim == 4 and x.shape[-1] == num_channels:
        return x
    raise ValueError(
        f"{who}: pixel_values must be (batch, {num_channels}, height, width) (NCHW) or "
        f"(batch, height, width, {num_channels}) (NHWC); got shape {tuple(x.shape)}."
    )


class ViT(Module, Pretrained):
    """ViT image classifier: ``model(pixel_values) -> logits (batch, num_labels)``.

    >>> import jax.numpy as jnp, nnxlite.models as models
    >>> config = models.ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1,
    ...                           num_attention_heads=2, intermediate_size=32, num_labels=3)
    >>> model = models.ViT(config)
    >>> model(jnp.ones((2, 3, 8, 8))).shape          # NCHW, as in transformers
    (2, 3)
    >>> model(jnp.ones((2, 8, 8, 3))).shape          # NHWC works too
    (2, 3)
    """

    config_class = ViTConfig

    @classmethod
    def hub_rules(cls, config: ViTConfig) -> list[Rule]:
        # Parts of ViTModel that ViTForImageClassification does not use.
        return [Rule(r"^vit\.pooler\.", None), Rule(r"\.mask_token$", None)]

    def __init__(self, config: ViTConfig, *, ctx: Context | None = None, rngs: Context | None = None):
        ctx = make_ctx(ctx, rngs)
        self.config = config
        self.vit = ViTModel(config, ctx=ctx)
        self.classifier = Linear(config.hidden_size, config.num_labels, ctx=ctx)

    def __call__(self, pixel_values: Any) -> jax.Array:
        """Logits ``(batch, num_labels)`` from the class token."""
        h = self.vit(channels_last(pixel_values, self.config.num_channels, "ViT"))
        return self.classifier(h[:, 0])
