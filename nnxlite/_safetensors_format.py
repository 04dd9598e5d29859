"""The safetensors file format, read and written by nnxlite itself.

A safetensors file is: an 8-byte little-endian header length ``N``; ``N``
bytes of UTF-8 JSON (padded with spaces to a multiple of 8), mapping each
tensor name to ``{"dtype": "F32", "shape": [...], "data_offsets": [begin,
end]}`` plus an optional ``"__metadata__"`` ``{str: str}`` map; then the data
buffer, in which the tensors lie back to back and cover it exactly.

nnxlite does not use the ``safetensors`` library for its own files because
checkpoints need things the library does not give: no temporary files other
than nnxlite's own, an ``OSError`` (not a library error) on a full disk,
checksums computed from the very bytes written, and every header field
validated so that a damaged file gives one clear ``ValueError``. The files
stay ordinary safetensors files that any reader opens.

    >>> import io, numpy as np
    >>> from nnxlite import _safetensors_format as fmt
    >>> buf = io.BytesIO()
    >>> data = np.arange(3, dtype=np.float32)
    >>> fmt.write(buf.write, [("x", "F32", (3,), data.view(np.uint8))], {"k": "v"})
    >>> _ = buf.seek(0)
    >>> header = fmt.read_header(buf, len(buf.getvalue()))
    >>> header.tensors["x"].shape, header.metadata
    ((3,), {'k': 'v'})
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import ml_dtypes
import numpy as np

__all__ = ["FormatError", "TensorInfo", "Header", "DTYPE_CODES", "CODE_DTYPES", "write", "read_header", "read_bytes", "read_into", "file_size"]

# The largest header accepted (the safetensors library's own limit).
MAX_HEADER_BYTES = 100_000_000
_METADATA = "__metadata__"

# numpy dtype name -> safetensors dtype code, for the dtypes nnxlite stores natively.
DTYPE_CODES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16", "uint32": "U32",
    "int32": "I32", "uint64": "U64", "int64": "I64", "float16": "F16", "bfloat16": "BF16",
    "float32": "F32", "float64": "F64", "complex64": "C64",
}
# safetensors dtype code -> numpy dtype, for reading (foreign files may also hold float8).
CODE_DTYPES = {code: np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name) for name, code in DTYPE_CODES.items()}
CODE_DTYPES.update(F8_E4M3=np.dtype(ml_dtypes.float8_e4m3fn), F8_E5M2=np.dtype(ml_dtypes.float8_e5m2))


class FormatError(ValueError):
    """The bytes are not a well-formed safetensors file (the message says what is wrong)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    code: str  # safetensors dtype code, e.g. "F32"
    shape: tuple[int, ...]
    begin: int  # offsets in the data buffer
    end: int


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int  # file offset of the data buffer


def write(
    write_bytes: Callable[[Any], None],
    tensors: Iterable[tuple[str, str, tuple[int, ...], np.ndarray]],
    metadata: dict[str, str],
) -> None:
    """Write a safetensors file through ``write_bytes``.

    ``tensors`` are ``(name, dtype code, shape, data)`` with ``data`` a
    C-contiguous uint8 array of exactly the tensor's bytes (little-endian).
    The header is encoded first, so a name that cannot be encoded fails
    before anything is written.
    """
    tensors = list(tensors)
    header: dict[str, Any] = {_METADATA: dict(metadata)}
    offset = 0
    for name, code, shape, data in tensors:
        if name == _METADATA or name in header:
            raise FormatError(f"the tensor name {name!r} is reserved or used twice")
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data buffer 8-byte aligned, as the library does
    write_bytes(len(raw).to_bytes(8, "little") + raw)
    for _, _, _, data in tensors:
        if data.nbytes:
            write_bytes(data)


def read_header(f, file_size: int) -> Header:
    """Parse and validate the header of an open binary file positioned at 0.

    Every field is checked (types, known dtypes, sizes matching shapes,
    tensors tiling the data buffer exactly); any problem raises
    :class:`FormatError` saying what is wrong.
    """
    if file_size < 8:
        raise FormatError(f"the file is {file_size} bytes long, shorter than the 8-byte header length")
    n = int.from_bytes(_read_exactly(f, 8), "little")
    if n > MAX_HEADER_BYTES or 8 + n > file_size:
        raise FormatError(f"the header length field says {n} bytes, but the file holds {file_size - 8} after it")
    try:
        header = json.loads(_read_exactly(f, n).decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"the header is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise FormatError(f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop(_METADATA, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"the header's {_METADATA!r} is not a map of strings")
    tensors = {name: _tensor_info(name, spec) for name, spec in header.items()}
    data_size = file_size - 8 - n
    expected = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != expected:
            raise FormatError(f"tensor {t.name!r} starts at byte {t.begin} of the data, expected {expected}")
        expected = t.end
    if expected != data_size:
        raise FormatError(f"the tensors cover {expected} bytes of data, but the file holds {data_size}")
    return Header(tensors, metadata, 8 + n)


def _unique_keys(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise FormatError(f"the header names {dup!r} twice")
    return d


def _tensor_info(name: str, spec: Any) -> TensorInfo:
    what = f"tensor {name!r}"
    if not isinstance(spec, dict) or set(spec) - {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"{what}: its header entry is not {{dtype, shape, data_offsets}}")
    code, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if code not in CODE_DTYPES:
        raise FormatError(f"{what}: unknown or unsupported dtype {code!r}")
    if not _int_list(shape) or any(d < 0 for d in shape):
        raise FormatError(f"{what}: shape {shape!r} is not a list of non-negative ints")
    if not _int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
        raise FormatError(f"{what}: data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end")
    nbytes = CODE_DTYPES[code].itemsize * int(np.prod(shape, dtype=object))
    if offsets[1] - offsets[0] != nbytes:
        raise FormatError(
            f"{what}: {code}{shape} needs {nbytes} bytes, but its data_offsets span {offsets[1] - offsets[0]}"
        )
    return TensorInfo(name, code, tuple(shape), offsets[0], offsets[1])


def _int_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in x)


def read_bytes(f, header: Header, name: str) -> np.ndarray:
    """The raw bytes of tensor ``name`` as a new, writable uint8 array."""
    t = header.tensors[name]
    buf = np.empty(t.end - t.begin, np.uint8)
    read_into(f, header, name, buf)
    return buf


def read_into(f, header: Header, name: str, out: Any, offset: int | None = None) -> None:
    """Read tensor ``name``'s bytes straight into ``out``, a writable buffer of exactly its size.

    With ``offset``, ``out`` receives the bytes from ``offset`` on instead (as
    many as it holds), e.g. some rows of a matrix.

    Letting the caller own the buffer means the bytes are copied once, from
    the file into the memory they end up in (nnxlite's PyTorch loader reads
    into page-aligned buffers that JAX adopts without another copy).

    >>> import io, numpy as np
    >>> from nnxlite import _safetensors_format as fmt
    >>> buf = io.BytesIO()
    >>> fmt.write(buf.write, [("x", "I32", (2,), np.array([7, 8], np.int32).view(np.uint8))], {})
    >>> _ = buf.seek(0)
    >>> header = fmt.read_header(buf, len(buf.getvalue()))
    >>> out = np.empty(2, np.int32)
    >>> fmt.read_into(buf, header, "x", out.view(np.uint8))
    >>> out.tolist()
    [7, 8]
    """
    t = header.tensors[name]
    view = memoryview(out).cast("B")
    size = t.end - t.begin
    if offset is None:
        if len(view) != size:
            raise ValueError(f"tensor {name!r} has {size} bytes; the buffer given holds {len(view)}")
        offset = 0
    elif not 0 <= offset <= offset + len(view) <= size:
        raise ValueError(f"tensor {name!r} has {size} bytes; bytes {offset}..{offset + len(view)} are not in it")
    f.seek(header.data_start + t.begin + offset)
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise FormatError(f"tensor {name!r}: the file ended inside its data (it is truncated)")
        done += got


def _read_exactly(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise FormatError("the file ended inside its header")
    return data


def file_size(f) -> int:
    return os.fstat(f.fileno()).st_size
