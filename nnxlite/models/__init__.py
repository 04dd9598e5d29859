"""Reference model families that load Hugging Face and torchvision checkpoints.

``GPT2``, ``Llama`` (also Mistral and Qwen2 checkpoints), ``BERT``, ``ViT``
and ``ResNet``: plain nnxlite modules whose attribute names follow the
``transformers``/``torchvision`` modules, each with a config dataclass,
``from_pretrained(folder)`` and ``save_pretrained(folder)``. Reading a folder
needs only ``json`` and ``numpy``; torch is never imported.

>>> import jax.numpy as jnp, nnxlite.models as models
>>> model = models.GPT2(models.GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=1, n_head=2))
>>> model(jnp.array([[1, 2]])).shape
(1, 2, 20)
"""

from nnxlite.models.bert import BERT, BertConfig
from nnxlite.models.gpt2 import GPT2, GPT2Config
from nnxlite.models.llama import Llama, LlamaConfig
from nnxlite.models.resnet import ResNet, ResNetConfig
from nnxlite.models.vit import ViT, ViTConfig

__all__ = [
    "BERT", "BertConfig", "GPT2", "GPT2Config", "Llama", "LlamaConfig", "ResNet", "ResNetConfig", "ViT", "ViTConfig",
]
