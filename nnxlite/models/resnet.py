"""ResNet as in torchvision (``resnet18``/``34`` with BasicBlock, ``resnet50``/``101``/``152`` with Bottleneck).

Attribute names follow torchvision's ``ResNet`` (``conv1``, ``bn1``,
``layer1[0].conv2``, ``layer2[0].downsample[0]``, ``fc``), so a torchvision
``state_dict`` saved as safetensors loads by name: convolution weights go
from OIHW to HWIO, BatchNorm ``running_mean``/``running_var`` become
``mean``/``var`` and ``num_batches_tracked`` is dropped. The stride of a
Bottleneck sits on its 3x3 convolution (torchvision's "ResNet v1.5").

Images are NCHW as in torch (NHWC accepted). ``model.eval()`` uses the
running statistics, like ``torch_model.eval()``; a fresh model is in
training mode, as in torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite.interop._sources import open_source
from nnxlite.models._common import make_ctx
from nnxlite.models._hub import HFConfig
from nnxlite.models._pretrained import Pretrained
from nnxlite.models.vit import channels_last
from nnxlite.module import Module
from nnxlite.nn.conv import Conv
from nnxlite.nn.linear import Linear
from nnxlite.nn.normalization import BatchNorm
from nnxlite.nn.pooling import max_pool
from nnxlite.rng import Context

__all__ = ["ResNet", "ResNetConfig"]

_DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
           101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


@dataclass(frozen=True)
class ResNetConfig(HFConfig):
    """A torchvision ResNet: block type, blocks per stage, classes (``ResNetConfig.depth(50)`` for the standard ones)."""

    model_types = ("torchvision-resnet",)
    architecture = "torchvision.models.ResNet"

    block: str = "basic"
    layers: tuple[int, ...] = (2, 2, 2, 2)
    num_classes: int = 1000
    num_channels: int = 3

    def __post_init__(self):
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"ResNetConfig: block must be 'basic' or 'bottleneck', got {self.block!r}.")
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))

    @classmethod
    def depth(cls, depth: int, num_classes: int = 1000) -> "ResNetConfig":
        """The torchvision ``resnet{depth}`` configuration."""
        if depth not in _DEPTHS:
            raise ValueError(f"ResNetConfig.depth: torchvision has depths {sorted(_DEPTHS)}, not {depth}.")
        block, layers = _DEPTHS[depth]
        return cls(block=block, layers=layers, num_classes=num_classes)

    @classmethod
    def infer(cls, weights: Any) -> "ResNetConfig":
        """The configuration a torchvision ``state_dict`` was saved from (block type, depths, classes).

        ``weights``: a safetensors file or folder, or a mapping of names to arrays; only names and shapes are read.
        """
        with open_source(weights) as source:
            names, shape_of = source.names(), source.shape
            return cls._from_names(names, shape_of)

    @classmethod
    def _from_names(cls, names: list[str], shape_of) -> "ResNetConfig":
        if "fc.weight" not in names or "conv1.weight" not in names:
            raise ValueError(
                "ResNetConfig.infer: not a torchvision ResNet state dict (no conv1.weight / fc.weight); "
                f"its first names are {names[:5]}."
            )
        layers = []
        for stage in range(1, 5):
            blocks = {int(n.split(".")[1]) for n in names if n.startswith(f"layer{stage}.")}
            layers.append(max(blocks) + 1 if blocks else 0)
        block = "bottleneck" if any(n.endswith(".conv3.weight") for n in names) else "basic"
        classes, channels = shape_of("fc.weight")[0], shape_of("conv1.weight")[1]
        return cls(block=block, layers=tuple(layers), num_classes=int(classes), num_channels=int(channels))


def _bn(features: int) -> BatchNorm:
    # torch: eps 1e-5, running = 0.9 * running + 0.1 * batch
    return BatchNorm(features, momentum=0.9, epsilon=1e-5, use_fast_variance=False)


def _conv(din: int, dout: int, k: int, stride: int, ctx: Context) -> Conv:
    return Conv(din, dout, (k, k), strides=(stride, stride), padding=k // 2, use_bias=False, ctx=ctx)


def _downsample(din: int, dout: int, stride: int, ctx: Context) -> list | None:
    if stride == 1 and din == dout:
        return None
    return [_conv(din, dout, 1, stride, ctx), _bn(dout)]


class BasicBlock(Module):
    expansion = 1

    def __init__(self, din: int, width: int, stride: int, *, ctx: Context):
        self.conv1 = _conv(din, width, 3, stride, ctx)
        self.bn1 = _bn(width)
        self.conv2 = _conv(width, width, 3, 1, ctx)
        self.bn2 = _bn(width)
        self.downsample = _downsample(din, width, stride, ctx)

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return jax.nn.relu(y + _shortcut(self.downsample, x))


class Bottleneck(Module):
    expansion = 4

    def __init__(self, din: int, width: int, stride: int, *, ctx: Context):
        self.conv1 = _conv(din, width, 1, 1, ctx)
        self.bn1 = _bn(width)
        self.conv2 = _conv(width, width, 3, stride, ctx)
        self.bn2 = _bn(width)
        self.conv3 = _conv(width, width * 4, 1, 1, ctx)
        self.bn3 = _bn(width * 4)
        self.downsample = _downsample(din, width * 4, stride, ctx)

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return jax.nn.relu(y + _shortcut(self.downsample, x))


def _shortcut(downsample: list | None, x: jax.Array) -> jax.Array:
    if downsample is None:
        return x
    conv, bn = downsample
    return bn(conv(x))


class ResNet(Module, Pretrained):
    """torchvision ResNet: ``model(images) -> logits (batch, num_classes)``.

    >>> import jax.numpy as jnp, nnxlite.models as models
    >>> model = models.ResNet(models.ResNetConfig(block="basic", layers=(1, 1, 1, 1), num_classes=5))
    >>> model.eval()(jnp.ones((2, 3, 32, 32))).shape
    (2, 5)
    >>> [type(b).__name__ for b in models.ResNet(models.ResNetConfig.depth(50, 3)).layer1]
    ['Bottleneck', 'Bottleneck', 'Bottleneck']

    ``ResNet.from_pretrained(path)`` reads a torchvision ``state_dict`` saved
    with ``safetensors.torch.save_file`` (a ``.safetensors`` file, or a
    folder holding ``model.safetensors``), infers the depth and number of
    classes from its names and shapes, and returns the model in eval mode.
    ``save_pretrained(folder)`` writes ``model.safetensors`` that
    ``torchvision.models.resnet50().load_state_dict`` accepts (plus a small
    ``config.json``).
    """

    config_class = ResNetConfig

    def __init__(self, config: ResNetConfig, *, ctx: Context | None = None, rngs: Context | None = None):
        ctx = make_ctx(ctx, rngs)
        self.config = config
        self.conv1 = Conv(config.num_channels, 64, (7, 7), strides=(2, 2), padding=3, use_bias=False, ctx=ctx)
        self.bn1 = _bn(64)
        block = BasicBlock if config.block == "basic" else Bottleneck
        din = 64
        for stage, (n, width) in enumerate(zip(config.layers, (64, 128, 256, 512)), start=1):
            blocks = []
            for i in range(n):
                blocks.append(block(din, width, 2 if (i == 0 and stage > 1) else 1, ctx=ctx))
                din = width * block.expansion
            setattr(self, f"layer{stage}", blocks)
        self.fc = Linear(din, config.num_classes, ctx=ctx)

    @classmethod
    def from_pretrained(cls, path: Any, config: ResNetConfig | None = None):
        """Load a torchvision ``state_dict``: a safetensors file or folder, or a mapping of names to arrays.

        The config is inferred from the names and shapes unless given; the model comes back in eval mode.
        """
        if config is None:
            config = ResNetConfig.infer(path)
        return cls._load(config, path).eval()

    def __call__(self, images: Any) -> jax.Array:
        """Logits ``(batch, num_classes)`` for NCHW (or NHWC) images."""
        x = channels_last(images, self.config.num_channels, "ResNet")
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage in range(1, 5):
            for block in getattr(self, f"layer{stage}"):
                x = block(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))
