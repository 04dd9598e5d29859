"""Hugging Face checkpoint folders on disk: ``config.json`` plus ``model.safetensors`` (or shards).

Only ``json`` and ``numpy`` are needed to read them (no torch, no
safetensors package): the safetensors format is an 8-byte header length, a
JSON header of ``name -> dtype, shape, byte offsets``, and the raw bytes.
:class:`SafetensorsReader` reads one tensor at a time straight into its own
page-aligned buffer (no memory map of the file, no second copy), so loading a model costs about
one checkpoint's worth of host memory. Writing uses the same format with
``{"format": "pt"}`` metadata, which ``transformers`` requires.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

_DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_HEADER_LIMIT = 100 * 1024 * 1024  # the format's own cap on the JSON header


def _dtype(code: str) -> Any:
    if code == "BF16":
        import ml_dtypes  # a jax dependency; numpy itself has no bfloat16

        return ml_dtypes.bfloat16
    try:
        return _DTYPES[code]
    except KeyError:
        raise ValueError(f"safetensors dtype {code!r} is not supported (known: BF16, {', '.join(_DTYPES)}).") from None


def _code(dtype: Any) -> str:
    name = np.dtype(dtype).name
    if name == "bfloat16":
        return "BF16"
    for code, np_type in _DTYPES.items():
        if np.dtype(np_type) == np.dtype(dtype):
            return code
    raise ValueError(f"cannot write dtype {dtype} to safetensors.")


def host_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialized array in its own anonymous memory map.

    Page-aligned, so ``jax.device_put`` on CPU adopts it without a copy, and
    returned to the OS as soon as the last reference goes (the malloc heap
    would keep freed checkpoint-sized blocks resident).
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    buf = mmap.mmap(-1, max(count * dtype.itemsize, 1))
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


class SafetensorsReader(Mapping):
    """A read-only ``{name: numpy array}`` view of ``.safetensors`` file(s); tensors are read on access.

    >>> import tempfile, os, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> write_safetensors(path, {"a": np.arange(6, dtype=np.float32).reshape(2, 3)})
    >>> reader = SafetensorsReader(path)
    >>> list(reader), reader.shape("a"), reader["a"][1].tolist()
    (['a'], (2, 3), [3.0, 4.0, 5.0])
    """

    def __init__(self, *paths: str | os.PathLike):
        self._entries: dict[str, tuple[Path, int, int, Any, tuple[int, ...]]] = {}
        for path in paths:
            path = Path(path)
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > _HEADER_LIMIT:
                    raise ValueError(f"{path}: not a safetensors file (header length {n}).")
                header = json.loads(f.read(n))
            base = 8 + n
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                self._entries[name] = (path, base + start, end - start, info["dtype"], tuple(info["shape"]))

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][4]

    def __getitem__(self, name: str) -> np.ndarray:
        path, offset, size, code, shape = self._entries[name]
        out = host_empty(shape, _dtype(code))
        with open(path, "rb") as f:
            f.seek(offset)
            if size and f.readinto(memoryview(out.reshape(-1).view(np.uint8))) != size:
                raise ValueError(f"{path}: tensor {name!r} is truncated.")
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None):
    """Write ``{name: array}`` to a ``.safetensors`` file (tensors in name order; atomic rename)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    arrays = {}
    offset = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(np.asarray(tensors[name]))
        arrays[name] = a
        header[name] = {"dtype": _code(a.dtype), "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(arrays):
            f.write(arrays[name].reshape(-1).view(np.uint8).data)
    os.replace(tmp, path)


def open_checkpoint(path: str | os.PathLike) -> SafetensorsReader:
    """The tensors of a Hugging Face folder (``model.safetensors`` or sharded) or of one ``.safetensors`` file."""
    path = Path(path)
    if path.is_file():
        return SafetensorsReader(path)
    single = path / "model.safetensors"
    if single.is_file():
        return SafetensorsReader(single)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return SafetensorsReader(*(path / s for s in shards))
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    raise FileNotFoundError(
        f"{path}: no model.safetensors (or model.safetensors.index.json) found; the folder holds {found}. "
        "nnxlite reads safetensors only: convert a pytorch_model.bin with transformers' save_pretrained first."
    )


def read_config(path: str | os.PathLike) -> dict:
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


def write_folder(path: str | os.PathLike, config: Mapping[str, Any] | None, tensors: Mapping[str, Any]) -> None:
    """Write ``config.json`` (if given) and ``model.safetensors`` into ``path`` (created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    write_safetensors(path / "model.safetensors", tensors)
