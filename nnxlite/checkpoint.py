"""Checkpoints: save and restore module state as safetensors files.

``nnx.save(path, model)`` writes every Variable of ``model`` (or the leaves of
a State) to one `safetensors <https://github.com/huggingface/safetensors>`_
file; ``nnx.restore(path, model)`` reads it back into the model, in place::

    >>> import os, tempfile
    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 3, ctx=nnx.context(0))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "model.safetensors")
    ...     nnx.save(path, model)
    ...     fresh = nnx.Linear(2, 3, ctx=nnx.context(1))
    ...     restored = nnx.restore(path, fresh)
    >>> restored is fresh, bool((fresh.kernel.value == model.kernel.value).all())
    (True, True)

File format
-----------
* Tensor names are the '/'-joined paths (``layers/0/kernel``), so the file is
  readable by any safetensors tool.
* The header ``metadata`` holds one entry, ``"nnxlite"``: a JSON manifest
  ``{"format": "nnxlite", "version": 1, "entries": {name: entry}}`` where each
  entry records the path components (ints stay ints), the Variable type
  (``"nnxlite.variables.Param"``) and the kind of value:

  - ``"array"``: a tensor with its ``dtype`` and ``shape``. Dtypes safetensors
    cannot store natively (e.g. float8, int4) are stored as raw bytes with
    ``"encoding": "bytes"`` and viewed back on load.
  - ``"key"``: a typed PRNG key array, stored as ``jax.random.key_data`` with
    its ``impl``; restored with ``jax.random.wrap_key_data``. (A raw uint32
    key in a plain Variable is a plain array; such an array saved from an RNG
    stream by an nnxlite older than typed-key streams restores into the
    stream's typed key, wrapped with the target's impl.)
  - ``"int"``, ``"float"``, ``"bool"``, ``"complex"``, ``"str"``, ``"none"``:
    a plain Python value, kept in the manifest (no tensor), e.g. a step
    counter held as a Python int.

  Every tensor entry also records a ``checksum`` of its stored bytes
  (``"xxh3_64:HEX"``, or ``"crc32:HEX"`` when ``xxhash`` is not installed),
  and a second metadata entry, ``"nnxlite_checksum"``, is the checksum of the
  manifest text itself. A tensor whose name would be the format's reserved
  ``__metadata__`` is stored as ``__metadata__~`` (the entry's ``"tensor"``
  field records the name actually used).

* nnxlite reads and writes the safetensors format itself
  (``nnxlite._safetensors_format``), so the ``safetensors`` package is not
  needed; the files open in any safetensors reader.

* Writes are atomic: the file is written under a temporary name
  (``.NAME.HOST-PID-RANDOM.tmp``) in the same directory, fsync'ed, then moved
  over ``path`` with ``os.replace``. A crash mid-save leaves the previous
  checkpoint intact, and the next successful save to ``path`` deletes the
  temporary files that dead writers left behind.

* Reading validates everything before using it: the safetensors header (known
  dtypes, sizes matching shapes, tensors tiling the data exactly), the
  manifest (every field's type, against the header's dtype and shape) and the
  checksums. Any problem raises :class:`CorruptCheckpointError` (a
  ``ValueError``) naming the file and what is wrong. Version 1 files (before
  checksums) still load, unverified.

Files without a manifest (written by other tools) can be restored too: each
tensor name is matched against the target's '/'-joined paths.

Orbax recipe (sharded, asynchronous training checkpoints)
---------------------------------------------------------
For large or multi-host training use `orbax.checkpoint
<https://orbax.readthedocs.io>`_ on the state's pure dict (``pip install
orbax-checkpoint``); ``tests/test_checkpoint_orbax.py`` runs this recipe::

    import jax, orbax.checkpoint as ocp
    import nnxlite as nnx

    # Save: a pure dict of arrays (typed PRNG keys are supported by orbax).
    state = nnx.state(model)                    # or nnx.state(optimizer): model + opt state
    checkpointer = ocp.StandardCheckpointer()   # saves asynchronously
    checkpointer.save(ckpt_dir / "step_100", state.to_pure_dict())
    checkpointer.wait_until_finished()          # before exiting or reading it back

    # Restore: give orbax the target's shapes/dtypes/shardings so that it keeps
    # int dict keys (list indices) and places every array like the target's.
    state = nnx.state(model)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state.to_pure_dict())
    restored = checkpointer.restore(ckpt_dir / "step_100", abstract)
    state.replace_by_pure_dict(restored)        # raises, naming paths, if they differ
    nnx.update(model, state)                    # checks shapes and dtypes, writes in place

With ``ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=3))``
use ``manager.save(step, args=ocp.args.StandardSave(pure_dict))`` and
``manager.restore(step, args=ocp.args.StandardRestore(abstract))`` the same way.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import stat
import threading
import time
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlite import _checksums, graph
from nnxlite import _safetensors_format as fmt
from nnxlite.state import State, StateStructure, _fmt_path, _new_state, boxed_state, raw_leaves
from nnxlite.variables import Variable

__all__ = ["save", "restore", "load", "CorruptCheckpointError"]

Path = tuple[Any, ...]
_META_KEY = "nnxlite"
_META_CHECKSUM_KEY = "nnxlite_checksum"  # checksum of the manifest text, next to it in the header
_FORMAT = "nnxlite"
_VERSION = 2  # 2: per-tensor and manifest checksums (version 1 files still load, unverified)
_KINDS = frozenset({"array", "key", "none", "bool", "int", "float", "complex", "str"})
_TENSOR_KINDS = frozenset({"array", "key"})
# Dtypes stored natively (their safetensors code); anything else goes in as raw bytes.
_NATIVE_DTYPES = frozenset(fmt.DTYPE_CODES)
# Every dtype a manifest may name: a whitelist, so a damaged or hostile file can
# never make the loader view bytes as Python objects, strings or dates.
_DTYPES: dict[str, np.dtype] = {d.name: d for d in fmt.CODE_DTYPES.values()}
_DTYPES.update((np.dtype(t).name, np.dtype(t)) for t in (np.complex128,))
_DTYPES.update(
    (np.dtype(t).name, np.dtype(t))
    for t in vars(__import__("ml_dtypes")).values()
    if isinstance(t, type) and issubclass(t, np.generic)
)


class CorruptCheckpointError(ValueError):
    """A checkpoint file is damaged: a checksum does not match, or its header is malformed.

    The message names the file, the entry (tensor) concerned and what is wrong.
    """


# ---------------------------------------------------------------------------------------
# Encoding values
# ---------------------------------------------------------------------------------------
def _is_typed_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _is_array_like(x: Any) -> bool:
    """Arrays, and the abstract ones (``jax.ShapeDtypeStruct``) of models built by ``eval_shape``."""
    return _is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _bytes_of(arr: np.ndarray) -> np.ndarray:
    """The tensor's bytes as a flat uint8 array, little-endian and C-ordered (usually a view)."""
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return _contiguous(arr).reshape(-1).view(np.uint8)


def _encode(path: Path, value: Any, vtype: type | None) -> tuple[dict, tuple[str, tuple, np.ndarray] | None]:
    """One manifest entry and (for arrays and keys) the tensor to store: ``(code, shape, bytes)``."""
    entry: dict[str, Any] = {"path": list(path)}
    if vtype is not None:  # untyped States (built from dicts) record no type
        entry["type"] = _type_name(vtype)
    if isinstance(value, Variable):
        value = value.raw_value
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"Cannot save {_fmt_path(path)}: it is a traced value. Save outside jax.jit/grad/vmap."
        )
    if _is_typed_key(value):
        data = np.asarray(jax.random.key_data(value))
        entry.update(kind="key", impl=str(jax.random.key_impl(value)), dtype=str(value.dtype), shape=list(value.shape))
        return entry, (fmt.DTYPE_CODES[data.dtype.name], data.shape, _bytes_of(data))
    if _is_array(value):
        arr = np.asarray(value)
        entry.update(kind="array", dtype=arr.dtype.name, shape=list(arr.shape))
        if arr.dtype.name not in _DTYPES:
            raise TypeError(f"Cannot save {_fmt_path(path)}: arrays of dtype {arr.dtype} cannot be stored.")
        data = _bytes_of(arr)
        if arr.dtype.name not in _NATIVE_DTYPES:
            entry["encoding"] = "bytes"
            return entry, ("U8", (data.size,), data)
        return entry, (fmt.DTYPE_CODES[arr.dtype.name], arr.shape, data)
    if value is None:
        entry.update(kind="none")
    elif isinstance(value, bool):
        entry.update(kind="bool", value=value)
    elif isinstance(value, int):
        entry.update(kind="int", value=str(value))
    elif isinstance(value, float):
        entry.update(kind="float", value=repr(value))  # repr round-trips exactly, nan/inf included
    elif isinstance(value, complex):
        entry.update(kind="complex", value=[repr(value.real), repr(value.imag)])
    elif isinstance(value, str):
        _check_encodable(path, value, "its string value")
        entry.update(kind="str", value=value)
    else:
        raise TypeError(
            f"Cannot save {_fmt_path(path)}: a {type(value).__name__} is neither an array, a PRNG key "
            "nor a plain Python scalar. (Intermediate values recorded with sow can be removed first "
            "with nnx.pop(model, nnx.Intermediate).)"
        )
    return entry, None


def _check_encodable(path: Path, text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"Cannot save {_fmt_path(path)}: {what} holds a lone surrogate character, which UTF-8 "
            "(and so the safetensors header) cannot store. Rename it."
        ) from None


def _decode_plain(entry: dict) -> Any:
    kind, value = entry["kind"], entry.get("value")
    if kind == "none":
        return None
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "complex":
        return complex(float(value[0]), float(value[1]))
    return str(value)


def _contiguous(arr: np.ndarray) -> np.ndarray:
    # (np.ascontiguousarray would turn 0-d arrays into 1-d ones.)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _describe_value(x: Any) -> str:
    if _is_array_like(x):
        return f"{x.dtype}{list(x.shape)}"  # typed keys read e.g. key<fry>[]
    return type(x).__name__


def _describe_entry(entry: dict) -> str:
    if entry["kind"] in _TENSOR_KINDS:
        return f"{entry['dtype']}{entry['shape']}"
    return entry["kind"]


# ---------------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------------
def _is_value_tree(node: Any) -> bool:
    """A State, or a nested dict of values (not one holding Variables or modules)."""
    return isinstance(node, State) or (isinstance(node, dict) and not _holds_graph(node))


def _as_state(node: Any) -> State:
    if isinstance(node, State):
        return node
    if _is_value_tree(node):
        return State(node)  # a nested dict of values
    return graph.state(node)


def _holds_graph(d: Mapping) -> bool:
    return any(
        isinstance(v, Variable) or graph._node_kind(v) == graph.OBJECT or (isinstance(v, Mapping) and _holds_graph(v))
        for v in d.values()
    )


def _key(path: Path) -> str:
    return "/".join(map(str, path))


def _path_components(path: Path) -> None:
    for k in path:
        if not isinstance(k, (int, str)) or isinstance(k, bool):
            raise TypeError(
                f"Cannot save {_fmt_path(path)}: checkpoint paths must be made of str and int keys, "
                f"found {k!r} ({type(k).__name__})."
            )
        if isinstance(k, str):
            _check_encodable(path, k, f"the path component {k!r}")


def _tensor_name(key: str, taken: set[str]) -> str:
    """The tensor's name in the file: its path key, unless that is the format's reserved name."""
    if key != "__metadata__":
        return key
    name = key + "~"  # recorded in the manifest; '~' never appears in a reserved name
    while name in taken:
        name += "~"
    return name


def save(path: str | os.PathLike, node: Any) -> None:
    """Save the state of ``node`` (a Module, a State, or a nested dict of values) to ``path``.

    Every Variable is stored under its '/'-joined path, with its Variable
    type, a checksum of its bytes and, for plain Python values and typed PRNG
    keys, what is needed to restore them exactly (see the module docstring
    for the format). The write is atomic: readers see the old file or the new
    one, never a mix, and a failed save (an error, a full disk, a killed
    process) leaves the old file as it was. Parent directories are created;
    an existing file keeps its permission bits; a symbolic link is written
    through (its target is replaced, the link stays).

    >>> import os, tempfile, nnxlite as nnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     nnx.save(os.path.join(d, "ckpt", "model.safetensors"), nnx.Linear(2, 2, ctx=nnx.context(0)))
    ...     os.listdir(os.path.join(d, "ckpt"))
    ['model.safetensors']
    """
    state = _as_state(node)
    s = state._structure
    entries: dict[str, dict] = {}
    owners: dict[str, Path] = {}
    stored: list[tuple[str, tuple]] = []
    for i, (p, value) in enumerate(zip(s.paths, raw_leaves(state))):
        _path_components(p)
        key = _key(p)
        if key in owners:
            raise ValueError(
                f"Cannot save: paths {owners[key]!r} and {p!r} both become the tensor name {key!r}."
            )
        owners[key] = p
        entry, data = _encode(p, value, None if s.defs is None else s.defs[i][0])
        entries[key] = entry
        if data is not None:
            stored.append((key, data))
    tensors: list[tuple[str, str, tuple, np.ndarray]] = []
    taken = set(entries)
    for key, (code, shape, raw) in stored:
        name = _tensor_name(key, taken)
        if name != key:
            entries[key]["tensor"] = name
            taken.add(name)
        entries[key]["checksum"] = _checksums.checksum(raw)
        tensors.append((name, code, shape, raw))
    manifest = json.dumps({"format": _FORMAT, "version": _VERSION, "entries": entries}, ensure_ascii=False)
    metadata = {_META_KEY: manifest, _META_CHECKSUM_KEY: _checksums.checksum(manifest.encode("utf-8"))}
    _atomic_write(os.fspath(path), tensors, metadata)


# ---------------------------------------------------------------------------------------
# Atomic writes and their temporary files
# ---------------------------------------------------------------------------------------
# Temporary files are named ".{file}.{host}-{pid}-{random}.tmp" in the destination's
# folder: the host and pid say who owns one, so that the next save can tell a stale
# file (its writer is dead) from one another process is still writing.
_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"
_TEMP_NAME_MAX = 120  # long file names are shortened in temp names (NAME_MAX is 255)
_TEMP_RE = re.compile(r"(?P<host>[0-9a-f]{4})-(?P<pid>[0-9]+)-[0-9a-f]{12}\.tmp")
_LEGACY_TEMP_RE = re.compile(r"[0-9a-f]{12}\.tmp")  # written by nnxlite before version 2
_LEGACY_STALE_AFTER_S = 3600.0
_writing: set[str] = set()  # this process's temp files still being written
_writing_lock = threading.Lock()


def _temp_prefix(base: str) -> str:
    return f".{base[:_TEMP_NAME_MAX]}."


def _write_bytes(f, data: Any) -> None:
    """Write all of ``data`` (a seam for tests that simulate a full disk)."""
    view = memoryview(data).cast("B")
    while view:
        written = f.write(view)
        view = view[written:]


def _atomic_write(path: str, tensors: list, metadata: dict[str, str]) -> None:
    """Write to a temporary file in the same directory, fsync it, then rename it over ``path``."""
    target = os.path.realpath(path)  # a symlink is written through: its target gets the data
    directory, base = os.path.split(target)
    os.makedirs(directory, exist_ok=True)
    try:
        old_mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        old_mode = None
    tmp = os.path.join(directory, f"{_temp_prefix(base)}{_HOST}-{os.getpid()}-{os.urandom(6).hex()}.tmp")
    with _writing_lock:
        _writing.add(tmp)
    try:
        # A new file's mode follows the umask; an overwrite keeps the old file's bits,
        # and the data is never readable by more people than that meanwhile.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o666 if old_mode is None else 0o600)
        with open(fd, "wb", buffering=0) as f:
            if old_mode is not None:
                os.chmod(tmp, old_mode)
            fmt.write(lambda data: _write_bytes(f, data), tensors, metadata)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        with _writing_lock:
            _writing.discard(tmp)
    _fsync_directory(directory)
    _remove_stale_temps(directory, base)


def _remove_stale_temps(directory: str, base: str) -> None:
    """Delete temp files of earlier saves to this file whose writer is dead (e.g. killed)."""
    prefix = _temp_prefix(base)
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        full = os.path.join(directory, name)
        if _is_stale(full, name[len(prefix):]):
            try:
                os.unlink(full)
            except OSError:
                pass  # gone already, or not ours to remove


def _is_stale(full: str, rest: str) -> bool:
    m = _TEMP_RE.fullmatch(rest)
    if m is not None:
        if m["host"] != _HOST:
            return False  # another machine's save (shared folder): its owner cannot be checked
        pid = int(m["pid"])
        if pid == os.getpid():
            with _writing_lock:
                return full not in _writing
        return not _process_alive(pid)
    if _LEGACY_TEMP_RE.fullmatch(rest):
        try:
            return time.time() - os.stat(full).st_mtime > _LEGACY_STALE_AFTER_S
        except OSError:
            return False
    return False


def _process_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # cannot check cheaply: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as e:
        return e.errno != errno.ESRCH  # EPERM: alive, owned by another user
    return True


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------
class _Reader:
    """An open checkpoint: its validated manifest entries, and tensors read (and verified) on demand."""

    def __init__(self, path: str, verify: bool = True):
        self.path = path
        self.verify = verify
        self._file = open(path, "rb", buffering=0)  # FileNotFoundError and the like stay OSErrors
        try:
            try:
                self.header = fmt.read_header(self._file, fmt.file_size(self._file))
            except fmt.FormatError as e:
                raise CorruptCheckpointError(f"{path} is not a readable safetensors file: {e}.") from None
            self._read_manifest()
        except BaseException:
            self.close()
            raise

    def _corrupt(self, what: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{self.path} is damaged: {what}.")

    def _read_manifest(self) -> None:
        meta = self.header.metadata
        if _META_KEY not in meta:  # a plain safetensors file: every tensor is an array at its name
            self.entries = {
                name: {"path": name.split("/"), "kind": "array", "dtype": fmt.CODE_DTYPES[t.code].name,
                       "shape": list(t.shape), "tensor": name}
                for name, t in self.header.tensors.items()
            }
            self.typed = False
            return
        text = meta[_META_KEY]
        expected = meta.get(_META_CHECKSUM_KEY)
        if expected is not None and self.verify:
            if not _checksums.is_well_formed(expected) or not _checksums.matches(expected, text.encode("utf-8")):
                raise self._corrupt("the checksum of its manifest (the nnxlite metadata) does not match")
        try:
            manifest = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise self._corrupt(f"its manifest is not valid JSON ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise self._corrupt("its manifest is not an nnxlite manifest")
        version = manifest.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise self._corrupt(f"its manifest version {version!r} is not a positive int")
        if version > _VERSION:
            raise ValueError(
                f"{self.path}: unsupported checkpoint manifest version {version}; this nnxlite reads "
                f"versions up to {_VERSION}. Upgrade nnxlite to read it."
            )
        if version >= 2 and expected is None:
            raise self._corrupt("the checksum of its manifest is missing")
        entries = manifest.get("entries")
        if not isinstance(entries, dict):
            raise self._corrupt("its manifest has no 'entries' map")
        used: dict[str, str] = {}
        for key, entry in entries.items():
            problem = _entry_problem(key, entry, version, self.header.tensors)
            if problem:
                raise self._corrupt(f"entry {key!r}: {problem}")
            if entry["kind"] in _TENSOR_KINDS:
                name = entry.get("tensor", key)
                if name in used:
                    raise self._corrupt(f"entries {used[name]!r} and {key!r} both name tensor {name!r}")
                used[name] = key
        orphans = sorted(set(self.header.tensors) - set(used))
        if orphans:
            raise self._corrupt(f"tensor(s) {_join(map(repr, orphans))} are not in its manifest")
        self.entries = entries
        self.typed = True

    def value(self, key: str) -> Any:
        entry = self.entries[key]
        kind = entry["kind"]
        if kind not in _TENSOR_KINDS:
            return _decode_plain(entry)
        name = entry.get("tensor", key)
        raw = fmt.read_bytes(self._file, self.header, name)
        expected = entry.get("checksum")
        if self.verify and expected is not None and not _checksums.matches(expected, raw):
            raise self._corrupt(
                f"the data of {_fmt_path(tuple(entry['path']))} (tensor {name!r}) does not match its "
                "checksum: the file was corrupted after it was written. Restore it from a backup "
                "(verify=False reads the damaged data anyway)"
            )
        t = self.header.tensors[name]
        if kind == "key":
            data = raw.view(fmt.CODE_DTYPES[t.code]).reshape(t.shape)
            try:
                return jax.random.wrap_key_data(jnp.asarray(data), impl=entry["impl"])
            except Exception as e:  # an unknown impl, or key data of the wrong shape for it
                raise self._corrupt(f"entry {key!r}: key data for impl {entry['impl']!r} is unusable ({e})") from None
        dtype = _DTYPES[entry["dtype"]]
        return raw.view(dtype).reshape(entry["shape"])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _entry_problem(key: Any, entry: Any, version: int, tensors: dict) -> str | None:
    """What is wrong with one manifest entry (None if it is well formed and fits the header)."""
    if not isinstance(entry, dict):
        return "it is not a JSON object"
    path = entry.get("path")
    if not isinstance(path, list) or not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in path):
        return f"its path {path!r} is not a list of str and int keys"
    if _key(path) != key:
        return f"its path {path!r} does not match its name"
    vtype = entry.get("type")
    if vtype is not None and not isinstance(vtype, str):
        return f"its Variable type {vtype!r} is not a string"
    kind = entry.get("kind")
    if kind not in _KINDS:
        return f"unknown kind {kind!r}"
    if kind not in _TENSOR_KINDS:
        return _plain_value_problem(kind, entry.get("value"))
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return f"its shape {shape!r} is not a list of non-negative ints"
    name = entry.get("tensor", key)
    if not isinstance(name, str) or name not in tensors:
        return f"its tensor {name!r} is not in the file"
    checksum = entry.get("checksum")
    if checksum is None and version >= 2:
        return "its checksum is missing"
    if checksum is not None and not _checksums.is_well_formed(checksum):
        return f"its checksum {checksum!r} is malformed"
    t = tensors[name]
    dtype = entry.get("dtype")
    if kind == "key":
        if not isinstance(dtype, str) or not isinstance(entry.get("impl"), str):
            return "its key dtype or impl is not a string"
        if t.code != "U32" or len(t.shape) != len(shape) + 1 or list(t.shape[: len(shape)]) != shape:
            return f"the file holds {t.code}{list(t.shape)} for a key array of shape {shape}"
        return None
    if dtype not in _DTYPES:
        return f"dtype {dtype!r} is not an array dtype nnxlite reads"
    encoding = entry.get("encoding")
    size = int(np.prod(shape, dtype=object))
    if encoding == "bytes":
        want = ("U8", (size * _DTYPES[dtype].itemsize,))
    elif encoding is None and dtype in fmt.DTYPE_CODES:
        want = (fmt.DTYPE_CODES[dtype], tuple(shape))
    else:
        return f"encoding {encoding!r} does not fit dtype {dtype}"
    if (t.code, t.shape) != want:
        return f"the manifest says {dtype}{shape}, but the file's tensor {name!r} is {t.code}{list(t.shape)}"
    return None


def _plain_value_problem(kind: str, value: Any) -> str | None:
    try:
        if kind == "none":
            ok = value is None
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "int":
            ok = isinstance(value, str) and (int(value) is not None)
        elif kind == "float":
            ok = isinstance(value, str) and (float(value) is not None)
        elif kind == "complex":
            ok = isinstance(value, list) and len(value) == 2 and all(isinstance(x, str) and float(x) is not None for x in value)
        else:
            ok = isinstance(value, str)
    except ValueError:
        ok = False
    return None if ok else f"its {kind} value {value!r} is malformed"


def load(path: str | os.PathLike, *, verify: bool = True) -> State:
    """Read a checkpoint into a new State (no target needed).

    Paths come back with their original components (list indices stay ints);
    arrays are jax arrays. Variable types are restored when their class
    exists in this process (it has been defined, e.g. its module imported),
    else the leaf is typed as plain ``Variable``; nothing a file names is ever
    imported. Use :func:`restore` to load into a model with structure checks.

    Args:
      path: the checkpoint file.
      verify: check every tensor against the checksum recorded when it was
        saved (default). ``verify=False`` skips that (a little faster, and
        reads damaged files anyway).

    Raises ``ValueError`` for 64-bit data (int64, float64, ...) while jax's
    64-bit mode is off, rather than truncating it to 32 bits.

    >>> import os, tempfile, nnxlite as nnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     nnx.save(os.path.join(d, "m.safetensors"), nnx.BatchNorm(2, ctx=nnx.context(0)))
    ...     state = nnx.checkpoint.load(os.path.join(d, "m.safetensors"))
    >>> state.paths()
    (('bias',), ('mean',), ('scale',), ('var',))
    >>> sorted(state.filter(nnx.BatchStat).to_pure_dict())
    ['mean', 'var']
    """
    path = os.fspath(path)
    types = _variable_types()
    with _Reader(path, verify) as reader:
        items: dict[Path, Any] = {}
        defs: dict[Path, tuple] = {}
        for key, entry in reader.entries.items():
            p = tuple(entry["path"])
            items[p] = reader.value(key)
            defs[p] = (types.get(entry.get("type"), Variable), ())
    _check_representable(path, [(p, v) for p, v in items.items() if isinstance(v, np.ndarray)])
    items = {p: jnp.asarray(v) if isinstance(v, np.ndarray) else v for p, v in items.items()}
    return State.from_flat(items, defs)


def _check_representable(path: str, arrays: list[tuple[Path, np.ndarray]]) -> None:
    """Refuse data jax would silently narrow (int64 -> int32 and the like when x64 is off)."""
    bad = [(p, v.dtype) for p, v in arrays if jax.dtypes.canonicalize_dtype(v.dtype) != v.dtype]
    if bad:
        listed = "\n".join(
            f"  {_fmt_path(p)} holds {dtype} data, which would become {jax.dtypes.canonicalize_dtype(dtype)}"
            for p, dtype in bad
        )
        raise ValueError(
            f"{path}: jax's 64-bit mode is off, so loading these arrays as jax arrays would change "
            f"their values:\n{listed}\nEnable it first with jax.config.update('jax_enable_x64', True), "
            "or restore into a target whose leaves are numpy arrays."
        )


def _variable_types() -> dict[str, type]:
    """``{"module.QualName": class}`` for every Variable class defined in this process.

    This is the registry a manifest's type names are looked up in: every
    subclass registers itself by being created (Python records it in its
    base's ``__subclasses__``), and nothing is ever imported or looked up
    by attribute, so a file cannot make the loader run code. When two live
    classes share a name (a class redefined in a notebook), the later wins.
    """
    found: dict[str, type] = {}
    stack = [Variable]
    while stack:
        cls = stack.pop(0)
        found[_type_name(cls)] = cls
        stack.extend(cls.__subclasses__())
    return found


# ---------------------------------------------------------------------------------------
# Restore
# ---------------------------------------------------------------------------------------
def _normalize_prefix(prefix: str | Path | None) -> str:
    if prefix is None or prefix == "" or prefix == ():
        return ""
    if isinstance(prefix, tuple):
        return _key(prefix)
    return str(prefix).strip("/")


def restore(
    path: str | os.PathLike,
    target: Any,
    *,
    prefix: str | Path | None = None,
    strict: bool = True,
    verify: bool = True,
) -> Any:
    """Load a checkpoint into ``target`` after checking that it fits.

    Args:
      path: a file written by :func:`save` (or any safetensors file whose
        tensor names are '/'-joined paths).
      target: a Module (or any graph node), updated in place and returned; or
        a State (or nested dict), for which a new State is returned. Give a
        sub-module to restore just that part of a bigger model:
        ``nnx.restore("backbone.safetensors", model.backbone)``.
      prefix: read only the entries under this path of the checkpoint, e.g.
        ``prefix="backbone"`` restores the backbone of a whole-model
        checkpoint into ``model.backbone``. Entries outside it are ignored.
      strict: if True (default), the checkpoint (under ``prefix``) and the
        target must hold exactly the same paths. If False, only the paths
        present in both are restored; the others keep their values.
      verify: check every tensor read against the checksum recorded when it
        was saved (default); a mismatch raises :class:`CorruptCheckpointError`
        naming the tensor. ``verify=False`` skips the check.

    Before anything is written, every shape, dtype, kind of value (array,
    PRNG key, Python scalar) and Variable type is checked; one ``ValueError``
    names every offending path with what was expected and what was found, and
    the target is left unchanged.

    >>> import os, tempfile, nnxlite as nnx
    >>> small, big = nnx.Linear(2, 3, ctx=nnx.context(0)), nnx.Linear(2, 4, ctx=nnx.context(0))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     nnx.save(os.path.join(d, "m.safetensors"), small)
    ...     nnx.restore(os.path.join(d, "m.safetensors"), big)
    Traceback (most recent call last):
    ...
    ValueError: restore: ...m.safetensors does not fit the target; nothing was restored.
      bias: expected float32[4], found float32[3]
      kernel: expected float32[2, 4], found float32[2, 3]
    ...
    """
    path = os.fspath(path)
    as_state = _is_value_tree(target)
    if as_state:
        state = _as_state(target)
        structure, leaves = state._structure, raw_leaves(state)
        check_types = structure.defs is not None
        flat = None
    else:
        flat = graph._flat(target)
        structure = flat.graphdef.structure
        leaves = [v.raw_value for v in flat.variables]
        check_types = True
    pre = _normalize_prefix(prefix)
    with _Reader(path, verify) as reader:
        names = _select(reader.entries, pre)
        plan, errors = _match(structure, leaves, names, reader.entries, check_types and reader.typed, strict)
        if errors:
            where = f" (under prefix {pre!r})" if pre else ""
            hint = "\n  (strict=False restores only the paths in both; prefix= selects a sub-tree)" if strict else ""
            raise ValueError(
                f"restore: {path}{where} does not fit the target; nothing was restored.\n" + "\n".join(errors) + hint
            )
        values = [(i, reader.value(key)) for i, key in plan]
    _check_representable(path, [
        (structure.paths[i], v) for i, v in values if isinstance(v, np.ndarray) and not isinstance(leaves[i], (np.ndarray, np.generic))
    ])
    values = [(i, _to_target(v, leaves[i])) for i, v in values]
    if as_state:
        new_leaves = list(state._leaves)
        for i, v in values:
            new_leaves[i] = v
        return boxed_state(new_leaves, structure)
    for i, v in values:
        flat.variables[i].raw_value = v
    return target


def _select(entries: dict[str, dict], prefix: str) -> dict[str, str]:
    """``{name relative to prefix: name in the file}`` for the entries under ``prefix``."""
    if not prefix:
        return {k: k for k in entries}
    start = prefix + "/"
    names = {k[len(start):]: k for k in entries if k.startswith(start)}
    if prefix in entries:  # the prefix names one Variable: restore it into a Variable target
        names[""] = prefix
    return names


def _match(
    structure: StateStructure,
    leaves: list,
    names: dict[str, str],
    entries: dict[str, dict],
    check_types: bool,
    strict: bool,
) -> tuple[list[tuple[int, str]], list[str]]:
    """Pair target leaves with checkpoint entries; collect every problem as a line of text."""
    plan: list[tuple[int, str]] = []
    errors: list[str] = []
    missing: list[Path] = []
    seen: dict[str, Path] = {}
    for i, (p, leaf) in enumerate(zip(structure.paths, leaves)):
        key = _key(p)
        if key in seen:
            errors.append(f"  target paths {_fmt_path(seen[key])} and {_fmt_path(p)} have the same name {key!r}")
            continue
        seen[key] = p
        name = names.get(key)
        if name is None:
            missing.append(p)
            continue
        entry = entries[name]
        problem = _mismatch(entry, leaf)
        if problem is None and check_types:
            problem = _type_mismatch(entry, structure.def_at(i)[0])
        if problem:
            errors.append(f"  {_fmt_path(p)}: {problem}")
        else:
            plan.append((i, name))
    if strict:
        lines = []
        if missing:
            lines.append(f"  missing from the checkpoint ({len(missing)}): " + _join(_fmt_path(p) for p in missing))
        unexpected = [k for k in names if k not in seen]
        if unexpected:
            lines.append(f"  unexpected in the checkpoint ({len(unexpected)}): " + _join(unexpected))
        errors = lines + errors
    return plan, errors


def _join(names) -> str:
    names = list(names)
    more = f" (and {len(names) - 20} more)" if len(names) > 20 else ""
    return ", ".join(names[:20]) + more


def _mismatch(entry: dict, leaf: Any) -> str | None:
    kind = entry["kind"]
    if isinstance(leaf, Variable):
        leaf = leaf.raw_value
    if _is_typed_key(leaf):  # the key dtype names its impl: key<fry>, key<rbg>...
        ok = kind == "key" and entry["dtype"] == str(leaf.dtype) and tuple(entry["shape"]) == tuple(leaf.shape)
        ok = ok or _is_legacy_key(entry, leaf)
    elif _is_array_like(leaf):
        ok = (
            kind == "array"
            and tuple(entry["shape"]) == tuple(leaf.shape)
            and entry["dtype"] == np.dtype(leaf.dtype).name
        )
    else:  # a plain Python value: anything may replace it, as with nnx.update
        ok = True
    return None if ok else f"expected {_describe_value(leaf)}, found {_describe_entry(entry)}"


def _is_legacy_key(entry: dict, leaf: Any) -> bool:
    """A raw uint32 key array (saved before RNG streams held typed keys) restoring into a typed key.

    It fits when its shape is the key's shape plus the impl's key-data shape
    (``uint32[2]`` for a scalar ``key<fry>``); :func:`_to_target` wraps it.
    """
    if entry["kind"] != "array" or entry["dtype"] != "uint32":
        return False
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
    return tuple(entry["shape"]) == tuple(data.shape)


def _type_mismatch(entry: dict, vtype: type) -> str | None:
    saved = entry.get("type")
    if not saved or saved == _type_name(vtype):
        return None
    if saved.rpartition(".")[2] == vtype.__qualname__.rpartition(".")[2]:
        return None  # same class name in another module (e.g. saved from __main__)
    return f"expected Variable type {vtype.__qualname__}, found {saved.rpartition('.')[2]}"


def _to_target(value: Any, leaf: Any) -> Any:
    """Give a loaded value the container and placement of the leaf it replaces.

    numpy leaves stay numpy; jax leaves (and abstract ``ShapeDtypeStruct``
    leaves) become jax arrays, placed with the leaf's sharding when it
    has a meaningful one.
    """
    if _is_typed_key(leaf) and not _is_typed_key(value):  # a legacy raw key (see _is_legacy_key)
        # An abstract leaf (eval_shape) has no public impl accessor; its key dtype carries it.
        impl = jax.random.key_impl(leaf) if isinstance(leaf, jax.Array) else leaf.dtype._impl
        value = jax.random.wrap_key_data(jnp.asarray(value), impl=impl)
    if isinstance(value, np.ndarray):
        if isinstance(leaf, np.generic):
            return value[()]
        if isinstance(leaf, np.ndarray):
            return value
    if isinstance(value, (np.ndarray, jax.Array)) and not isinstance(leaf, jax.core.Tracer):
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None and (isinstance(leaf, jax.ShapeDtypeStruct) or len(sharding.device_set) > 1):
            return jax.device_put(value, sharding)
    return jnp.asarray(value) if isinstance(value, np.ndarray) else value
