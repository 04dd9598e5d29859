"""Where state-dict arrays come from: a mapping of arrays, or ``.safetensors`` files read lazily.

A source answers three questions without loading every array first --
which names, what shape, and the array for one name (as numpy) -- so a
checkpoint is checked before anything is read and then read one tensor at
a time. PyTorch is imported only to convert torch tensors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class Source:
    """Names, shapes and arrays of a state dict.

    ``owns_arrays``: whether :meth:`read` returns fresh buffers nobody else
    holds. Only then may a JAX array share their memory; a caller's torch
    tensor or numpy array must be copied, or an in-place update on the torch
    side would change the "immutable" JAX array.
    """

    owns_arrays = False

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def read(self, name: str) -> np.ndarray:
        raise NotImplementedError


class MappingSource(Source):
    """A dict of torch tensors, numpy arrays or JAX arrays."""

    def __init__(self, mapping: Mapping[str, Any]):
        self.mapping = mapping

    def names(self) -> list[str]:
        return list(self.mapping)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(np.shape(self.mapping[name]) if not hasattr(self.mapping[name], "shape")
                     else self.mapping[name].shape)

    def read(self, name: str) -> np.ndarray:
        return to_numpy(self.mapping[name])


class SafetensorsSource(Source):
    """One or more ``.safetensors`` files opened with the numpy API (no torch needed)."""

    owns_arrays = True

    def __init__(self, files: list[Path], stack: ExitStack):
        from safetensors import safe_open

        self.where: dict[str, Any] = {}
        for f in files:
            handle = stack.enter_context(safe_open(str(f), framework="numpy"))
            for key in handle.keys():
                self.where[key] = handle

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name].get_slice(name).get_shape())

    def read(self, name: str) -> np.ndarray:
        return self.where[name].get_tensor(name)


@contextmanager
def open_source(state_dict: Any) -> Iterator[Source]:
    """A :class:`Source` for a mapping, a torch ``nn.Module``, a ``.safetensors`` file or a folder of them."""
    if isinstance(state_dict, (str, os.PathLike)):
        with ExitStack() as stack:
            yield SafetensorsSource(safetensors_files(Path(state_dict)), stack)
        return
    if _is_torch(state_dict) and callable(getattr(state_dict, "state_dict", None)):
        state_dict = state_dict.state_dict()  # an nn.Module
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"load_state_dict: expected a mapping of names to arrays (torch tensors or numpy arrays), a "
            f"torch nn.Module, or the path of a .safetensors file or folder; got {type(state_dict).__name__}."
        )
    yield MappingSource(state_dict)


def safetensors_files(path: Path) -> list[Path]:
    """The files to read for ``path``: itself, or a folder's ``model.safetensors`` (sharded or not)."""
    if path.suffix in _PICKLE_SUFFIXES:
        raise ValueError(
            f"load_state_dict: {path} is a pickle file; nnxlite never unpickles checkpoints (unpickling "
            f"runs arbitrary code). Convert it once where you trust it: "
            f"safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')."
        )
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [path / s for s in shards]
        if (path / "model.safetensors").is_file():
            return [path / "model.safetensors"]
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return found
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        hint = f" It has pickle files {pickles}, which nnxlite does not read." if pickles else ""
        raise FileNotFoundError(
            f"load_state_dict: no model.safetensors (or model.safetensors.index.json) in {path}; "
            f"found {len(found)} .safetensors files.{hint}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"load_state_dict: {path} does not exist.")
    return [path]


def _is_torch(x: Any) -> bool:
    # Checked by module name so that nothing here imports torch.
    return type(x).__module__.split(".")[0] == "torch"


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array from a torch tensor (any dtype, bfloat16 included), a JAX array or numpy."""
    if _is_torch(x):
        import torch  # only ever imported for torch inputs

        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(x)


def to_torch(a: np.ndarray) -> Any:
    """A torch tensor holding ``a`` (bfloat16 kept as bfloat16)."""
    import torch

    a = np.asarray(a)
    if not (a.flags.c_contiguous and a.flags.writeable):  # torch.from_numpy warns on read-only memory
        a = a.copy(order="C")
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)
