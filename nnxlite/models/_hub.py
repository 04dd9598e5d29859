"""``config.json`` of Hugging Face folders, and the config dataclass base the families share.

The weights themselves (``model.safetensors``, or shards) are read and
written by :mod:`nnxlite.interop.torch`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar


def read_config(path: Any) -> dict:
    """``config.json`` of a Hugging Face folder as a dict."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no config.json; pass the folder transformers' save_pretrained wrote.")
    return json.loads(file.read_text())


@dataclass(frozen=True)
class HFConfig:
    """Base of the families' config dataclasses: read from and written to ``config.json``.

    Fields the dataclass does not know are kept in ``extra`` and written back
    unchanged, so a loaded-then-saved folder keeps the original's settings.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    architecture: ClassVar[str] = ""
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HFConfig":
        """Build from a ``config.json`` dict (unknown keys go to ``extra``)."""
        d = dict(d)
        model_type = d.get("model_type")
        if cls.model_types and model_type not in cls.model_types:
            raise ValueError(
                f"{cls.__name__}: config.json says model_type={model_type!r}; this class reads "
                f"{list(cls.model_types)}."
            )
        d = cls._normalize(d)
        names = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: d.pop(k) for k in list(d) if k in names}
        return cls(**kwargs, extra=d)

    @classmethod
    def _normalize(cls, d: dict) -> dict:
        """Hook: rename or derive config.json keys before they are matched to fields."""
        return d

    def to_dict(self) -> dict:
        """The ``config.json`` dict that ``transformers`` reads."""
        out = dict(self.extra)
        for f in fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        out.setdefault("model_type", self.model_types[0] if self.model_types else None)
        out["architectures"] = [self.architecture]
        return out
