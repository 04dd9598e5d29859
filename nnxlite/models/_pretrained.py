"""``from_pretrained`` / ``save_pretrained``, written once for every family, on ``nnxlite.interop.torch``.

A family's attribute names follow its torch reference, so the standard
layout rules of :func:`nnxlite.interop.torch.load_state_dict` do the
conversion; ``hub_rules(config)`` lists only what differs (dropped buffers,
tied copies, old spellings, GPT-2's transposed ``Conv1D``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from nnxlite.interop import torch as tx
from nnxlite.models._hub import HFConfig, read_config
from nnxlite.transforms import eval_shape


class Pretrained:
    """Mixin of the model families: a ``config`` attribute, loading and saving Hugging Face folders.

    The model is first built abstractly (``nnx.eval_shape``: shapes only, no
    random initialization, no memory), then each checkpoint tensor is read and
    converted once, so loading costs about one copy of the weights.
    """

    config_class: ClassVar[type[HFConfig]]

    @classmethod
    def hub_rules(cls, config: HFConfig) -> list[tx.Rule]:
        """The :class:`~nnxlite.interop.torch.Rule` list from checkpoint names to this model's torch names."""
        return []

    @classmethod
    def from_config(cls, config: HFConfig | Mapping[str, Any]):
        """The model with ``config`` (a config dataclass or a ``config.json`` dict), randomly initialized."""
        if not isinstance(config, HFConfig):
            config = cls.config_class.from_dict(config)
        return cls(config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike):
        """Load a Hugging Face folder (``config.json`` + ``model.safetensors``); needs neither torch nor network."""
        return cls._load(cls.config_class.from_dict(read_config(path)), path)

    @classmethod
    def _load(cls, config: HFConfig, weights: Any):
        """``weights``: a safetensors file or folder, or a mapping of torch names to arrays."""
        model = eval_shape(lambda: cls(config))
        tx.load_state_dict(model, weights, rules=cls.hub_rules(config))
        return model

    def state_dict(self) -> dict:
        """The weights as ``{torch name: numpy array}``, named and laid out as the torch reference's."""
        return tx.state_dict(self, rules=self.hub_rules(self.config), framework="numpy")

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``path``; the torch reference loads the folder."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        tx.save_file(self, path / "model.safetensors", rules=self.hub_rules(self.config))
