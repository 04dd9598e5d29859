"""Where state-dict arrays come from: a mapping of arrays, or ``.safetensors`` files read tensor by tensor.

A source answers three questions without loading every array first --
which names, what shape, and the array for one name (as numpy) -- so a
checkpoint is checked before anything is read and then read one tensor at
a time. PyTorch is imported only to convert torch tensors, and reading
``.safetensors`` needs no package at all.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nnxlite import _safetensors_format as fmt

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

    def read(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """The array ``name``; a source that reads files reads it into ``out`` when given (others ignore it)."""
        raise NotImplementedError

    def dtype(self, name: str) -> np.dtype | None:
        """The stored dtype, when known without reading (None otherwise)."""
        return None


class MappingSource(Source):
    """A dict of torch tensors, numpy arrays or JAX arrays."""

    def __init__(self, mapping: Mapping[str, Any]):
        self.mapping = mapping

    def names(self) -> list[str]:
        return list(self.mapping)

    def shape(self, name: str) -> tuple[int, ...]:
        # A lazy mapping (a reader that loads on __getitem__) may tell shapes without loading.
        shape_of = getattr(self.mapping, "shape", None)
        if callable(shape_of):
            return tuple(shape_of(name))
        value = self.mapping[name]
        return tuple(value.shape if hasattr(value, "shape") else np.shape(value))

    def read(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        return to_numpy(self.mapping[name])


class SafetensorsSource(Source):
    """``.safetensors`` files read with plain file reads, one tensor at a time (no torch, no mmap).

    Headers are parsed and validated by :mod:`nnxlite._safetensors_format`,
    the reader nnxlite's own checkpoints use. Each tensor is read straight
    into the buffer it ends up in (one copy, from the page cache), so loading
    holds the new weights plus at most one tensor in flight. Mapping the file
    instead would either leave JAX arrays aliasing a file that can change on
    disk, or cost a second copy; and every touched page of a map stays
    resident in the process.
    """

    owns_arrays = True

    def __init__(self, files: list[Path], stack: ExitStack):
        self.where: dict[str, tuple[Any, fmt.Header]] = {}
        for f in files:
            handle = stack.enter_context(open(f, "rb", buffering=0))
            try:
                header = fmt.read_header(handle, fmt.file_size(handle))
            except fmt.FormatError as err:
                raise ValueError(
                    f"load_state_dict: {f} is not a .safetensors file, or it is damaged or truncated: {err}."
                ) from None
            for name in header.tensors:
                self.where[name] = (handle, header)

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        handle, header = self.where[name]
        return header.tensors[name].shape

    def dtype(self, name: str) -> np.dtype:
        handle, header = self.where[name]
        return fmt.CODE_DTYPES[header.tensors[name].code]

    def read_rows(self, name: str, start: int, out: np.ndarray) -> np.ndarray:
        """Rows ``start : start + len(out)`` (along the first axis) of ``name``, read into ``out``."""
        handle, header = self.where[name]
        row_bytes = out[0].nbytes if len(out) else 0
        try:
            fmt.read_into(handle, header, name, out.reshape(-1).view(np.uint8), offset=start * row_bytes)
        except fmt.FormatError as err:
            raise ValueError(f"load_state_dict: {handle.name}: {err}; the file changed while it was read.") from None
        return out

    def read(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        handle, header = self.where[name]
        info = header.tensors[name]
        if out is None:
            out = host_empty(info.shape, fmt.CODE_DTYPES[info.code])
        try:
            fmt.read_into(handle, header, name, out.reshape(-1).view(np.uint8))
        except fmt.FormatError as err:
            raise ValueError(f"load_state_dict: {handle.name}: {err}; the file changed while it was read.") from None
        return out


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


# Private anonymous memory, pre-faulted where the platform can (MAP_POPULATE is Linux-only; Windows
# takes no flags).
_ANONYMOUS_FLAGS = (
    {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)}
    if hasattr(mmap, "MAP_ANONYMOUS") else {}
)

_LAZY_FLAGS = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS} if hasattr(mmap, "MAP_ANONYMOUS") else {}


def host_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialized array in its own anonymous memory map.

    It is page-aligned, so ``jax.device_put`` on CPU adopts it instead of
    copying, and its memory goes back to the OS when the last reference
    does (freed checkpoint-sized blocks can stay resident in the malloc heap).
    Its pages are populated up front (``MAP_POPULATE``, Linux): the kernel
    maps them in one pass, about a third faster than a page fault per 4 KiB
    while the file is read in, and the buffer is about to be written whole.
    """
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    buffer = mmap.mmap(-1, max(count * dtype.itemsize, 1), **_ANONYMOUS_FLAGS)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


class Scratch:
    """One reusable host buffer for tensors that are converted (transposed, cast) after reading.

    Such a tensor is copied anyway, so reading it into memory that is
    already mapped saves populating fresh pages for it: only the converted
    copy gets new memory. It grows to the largest tensor read into it.
    """

    def __init__(self):
        self._buffer = np.empty(0, np.uint8)

    def array(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self._buffer.nbytes:
            self._buffer = np.empty(0, np.uint8)  # free the old one before mapping the larger one
            self._buffer = host_empty((nbytes,), np.uint8)
        return self._buffer[:nbytes].view(dtype).reshape(shape)

    def holds(self, array: np.ndarray) -> bool:
        """Whether ``array`` may lie in the scratch buffer (then it must be copied before the next read)."""
        return bool(self._buffer.nbytes) and np.may_share_memory(array, self._buffer)


def lazy_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zero array of any size that costs no memory until written.

    Untouched pages of an anonymous map all read as the kernel's one zero
    page, so running a layout conversion's views on it shows their strides
    (does the result alias its input, is it contiguous?) without reading a
    tensor or allocating one.
    """
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    # Read-only: a conversion that writes into its input fails on it (and the caller then plans for the worst).
    buffer = mmap.mmap(-1, max(count * dtype.itemsize, 1), **_LAZY_FLAGS, prot=mmap.PROT_READ)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def copy_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` (casting), tile by tile when ``src`` is a transposed view.

    numpy copies a transposed matrix element by element in the destination's
    order, touching a new cache line of the source for every element; in
    128 x 128 tiles the lines are reused, which is about five times faster
    for checkpoint-sized matrices.
    """
    if src.ndim < 2 or src.size < (1 << 16) or src.strides[-1] == src.itemsize:
        np.copyto(dst, src, casting="unsafe")
        return
    tile = 128
    rows, cols = src.shape[-2:]
    for i in range(0, rows, tile):
        for j in range(0, cols, tile):
            np.copyto(dst[..., i:i + tile, j:j + tile], src[..., i:i + tile, j:j + tile], casting="unsafe")


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
