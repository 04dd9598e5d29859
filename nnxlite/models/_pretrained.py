"""``from_pretrained`` / ``save_pretrained``, written once for every family."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from nnxlite.models._hub import HFConfig, open_checkpoint, read_config, write_folder
from nnxlite.models._weights import HubSpec, export_torch_layout, load_torch_layout
from nnxlite.transforms import eval_shape


class Pretrained:
    """Mixin of the model families: a ``config`` attribute, loading and saving Hugging Face folders.

    The model is first built abstractly (``nnx.eval_shape``: shapes only, no
    random initialization, no memory), then each checkpoint tensor is read and
    converted once, so loading costs about one copy of the weights.
    """

    config_class: ClassVar[type[HFConfig]]
    hub_spec: ClassVar[HubSpec] = HubSpec()

    @classmethod
    def from_config(cls, config: HFConfig | Mapping[str, Any]):
        """The model with ``config`` (a config dataclass or a ``config.json`` dict), randomly initialized."""
        if not isinstance(config, HFConfig):
            config = cls.config_class.from_dict(config)
        return cls(config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike):
        """Load a Hugging Face folder (``config.json`` + ``model.safetensors``); needs neither torch nor network."""
        config = cls.config_class.from_dict(read_config(path))
        return cls._load(config, open_checkpoint(path))

    @classmethod
    def _load(cls, config: HFConfig, tensors: Mapping[str, Any]):
        model = eval_shape(lambda: cls(config))
        load_torch_layout(model, tensors, cls.hub_spec)
        return model

    def state_dict(self) -> dict:
        """The weights as ``{torch name: numpy array}`` in the torch layout of the reference implementation."""
        return export_torch_layout(self, self.hub_spec)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``path``; ``transformers`` loads the folder."""
        write_folder(path, self.config.to_dict(), self.state_dict())
