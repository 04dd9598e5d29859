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
    its ``impl``; restored with ``jax.random.wrap_key_data``. (Legacy uint32
    keys are plain arrays.)
  - ``"int"``, ``"float"``, ``"bool"``, ``"complex"``, ``"str"``, ``"none"``:
    a plain Python value, kept in the manifest (no tensor), e.g. a step
    counter held as a Python int.

* Writes are atomic: the file is written under a temporary name in the same
  directory, fsync'ed, then moved over ``path`` with ``os.replace``. A crash
  mid-save leaves the previous checkpoint intact.

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

import json
import os
import secrets
import stat
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlite import graph
from nnxlite.state import State, StateStructure, _fmt_path, _new_state
from nnxlite.variables import Variable

__all__ = ["save", "restore", "load"]

Path = tuple[Any, ...]
_META_KEY = "nnxlite"
_FORMAT = "nnxlite"
_VERSION = 1
# Dtypes the safetensors numpy API stores natively; anything else goes in as raw bytes.
_NATIVE_DTYPES = frozenset(
    "bool int8 uint8 int16 uint16 int32 uint32 int64 uint64 float16 float32 float64 bfloat16 complex64".split()
)
# safetensors header dtype names, for files without a manifest.
_SAFETENSORS_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "U32": "uint32",
    "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16", "BF16": "bfloat16",
    "F32": "float32", "F64": "float64", "C64": "complex64",
}


def _safetensors():
    try:
        import safetensors  # noqa: F401
        import safetensors.numpy
    except ImportError as e:
        raise ImportError(
            "nnx.save/nnx.restore need the 'safetensors' package: pip install safetensors "
            "(or pip install 'nnxlite[checkpoint]')."
        ) from e
    return safetensors


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


def _encode(path: Path, value: Any, vtype: type | None) -> tuple[dict, np.ndarray | None]:
    """One manifest entry and (for arrays and keys) the tensor to store."""
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
        return entry, data
    if _is_array(value):
        arr = np.asarray(value)
        entry.update(kind="array", dtype=arr.dtype.name, shape=list(arr.shape))
        if arr.dtype.name not in _NATIVE_DTYPES:
            entry["encoding"] = "bytes"
            arr = _contiguous(arr).reshape(-1).view(np.uint8)
        return entry, _contiguous(arr)
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
        entry.update(kind="str", value=value)
    else:
        raise TypeError(
            f"Cannot save {_fmt_path(path)}: a {type(value).__name__} is neither an array, a PRNG key "
            "nor a plain Python scalar. (Intermediate values recorded with sow can be removed first "
            "with nnx.pop(model, nnx.Intermediate).)"
        )
    return entry, None


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
    if kind == "str":
        return str(value)
    raise ValueError(f"Unknown checkpoint entry kind {kind!r} at {_fmt_path(tuple(entry['path']))}.")


def _decode_tensor(entry: dict, data: np.ndarray) -> np.ndarray:
    if entry.get("encoding") == "bytes":
        return _contiguous(data).view(jnp.dtype(entry["dtype"])).reshape(entry["shape"])
    return data


def _contiguous(arr: np.ndarray) -> np.ndarray:
    # (np.ascontiguousarray would turn 0-d arrays into 1-d ones.)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _describe_value(x: Any) -> str:
    if _is_array_like(x):
        return f"{x.dtype}{list(x.shape)}"  # typed keys read e.g. key<fry>[]
    return type(x).__name__


def _describe_entry(entry: dict) -> str:
    if entry["kind"] in ("array", "key"):
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
        if not isinstance(k, (int, str)):
            raise TypeError(
                f"Cannot save {_fmt_path(path)}: checkpoint paths must be made of str and int keys, "
                f"found {k!r} ({type(k).__name__})."
            )


def save(path: str | os.PathLike, node: Any) -> None:
    """Save the state of ``node`` (a Module, a State, or a nested dict of values) to ``path``.

    Every Variable is stored under its '/'-joined path, with its Variable
    type and, for plain Python values and typed PRNG keys, what is needed to
    restore them exactly (see the module docstring for the format). The write
    is atomic: readers see the old file or the new one, never a mix, and a
    failed save leaves the old file as it was. Parent directories are created.

    >>> import os, tempfile, nnxlite as nnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     nnx.save(os.path.join(d, "ckpt", "model.safetensors"), nnx.Linear(2, 2, ctx=nnx.context(0)))
    ...     os.listdir(os.path.join(d, "ckpt"))
    ['model.safetensors']
    """
    _safetensors()  # a clear error before any work if it is not installed
    state = _as_state(node)
    s = state._structure
    tensors: dict[str, np.ndarray] = {}
    entries: dict[str, dict] = {}
    owners: dict[str, Path] = {}
    for i, (p, value) in enumerate(zip(s.paths, state._leaves)):
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
            tensors[key] = data
    manifest = {"format": _FORMAT, "version": _VERSION, "entries": entries}
    _atomic_write(os.fspath(path), tensors, {_META_KEY: json.dumps(manifest)})


def _write_safetensors(tensors: dict[str, np.ndarray], filename: str, metadata: dict[str, str]) -> None:
    """Write the file (a seam for tests that simulate a crash mid-write)."""
    import safetensors.numpy

    safetensors.numpy.save_file(tensors, filename, metadata=metadata)


def _atomic_write(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write to a temporary file in the same directory, fsync it, then rename it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb"):  # created like any new file, so its mode follows the umask
            pass
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        _write_safetensors(tensors, tmp, metadata)
        os.chmod(tmp, mode)  # safetensors itself writes owner-only (0600) files
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


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
    """An open checkpoint: its manifest entries, and tensors read on demand."""

    def __init__(self, path: str):
        st = _safetensors()
        self.path = path
        try:
            self._file = st.safe_open(path, framework="numpy")
            self._handle = self._file.__enter__()
        except FileNotFoundError:
            raise
        except Exception as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    def _read_header(self) -> None:
        path = self.path
        meta = self._handle.metadata() or {}
        if _META_KEY in meta:
            manifest = json.loads(meta[_META_KEY])
            if manifest.get("format") != _FORMAT or manifest.get("version", 0) > _VERSION:
                raise ValueError(
                    f"{path}: unsupported checkpoint manifest (format {manifest.get('format')!r}, "
                    f"version {manifest.get('version')!r}); this nnxlite reads version {_VERSION}."
                )
            self.entries: dict[str, dict] = manifest["entries"]
            self.typed = True
        else:  # a plain safetensors file: every tensor is an array at its name
            self.entries = {}
            for k in self._handle.keys():
                sl = self._handle.get_slice(k)
                dtype = _SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype())
                self.entries[k] = {"path": k.split("/"), "kind": "array", "dtype": dtype, "shape": list(sl.get_shape())}
            self.typed = False

    def value(self, key: str) -> Any:
        entry = self.entries[key]
        kind = entry["kind"]
        if kind == "array":
            return _decode_tensor(entry, self._handle.get_tensor(key))
        if kind == "key":
            return jax.random.wrap_key_data(jnp.asarray(self._handle.get_tensor(key)), impl=entry["impl"])
        return _decode_plain(entry)

    def close(self) -> None:
        self._file.__exit__(None, None, None)

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load(path: str | os.PathLike) -> State:
    """Read a checkpoint into a new State (no target needed).

    Paths come back with their original components (list indices stay ints);
    arrays are jax arrays. Variable types are restored when their class
    is already imported, else the leaf is typed as plain ``Variable``. Use
    :func:`restore` to load into a model with structure checks.

    >>> import os, tempfile, nnxlite as nnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     nnx.save(os.path.join(d, "m.safetensors"), nnx.BatchNorm(2, ctx=nnx.context(0)))
    ...     state = nnx.checkpoint.load(os.path.join(d, "m.safetensors"))
    >>> state.paths()
    (('bias',), ('mean',), ('scale',), ('var',))
    >>> sorted(state.filter(nnx.BatchStat).to_pure_dict())
    ['mean', 'var']
    """
    with _Reader(os.fspath(path)) as reader:
        items: dict[Path, Any] = {}
        defs: dict[Path, tuple] = {}
        for key, entry in reader.entries.items():
            p = tuple(entry["path"])
            value = reader.value(key)
            items[p] = jnp.asarray(value) if isinstance(value, np.ndarray) else value
            defs[p] = (_find_type(entry.get("type")), ())
    return State.from_flat(items, defs)


def _find_type(name: str | None) -> type:
    """The Variable class called ``name`` if its module is already imported (nothing is imported)."""
    if not name:
        return Variable
    module, _, qualname = name.rpartition(".")
    obj: Any = sys.modules.get(module)
    for part in qualname.split(".") if obj is not None else ():
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) and issubclass(obj, Variable) else Variable


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
        structure, leaves = state._structure, state._leaves
        check_types = structure.defs is not None
        flat = None
    else:
        flat = graph._flat(target)
        structure = flat.graphdef.structure
        leaves = [v.raw_value for v in flat.variables]
        check_types = True
    pre = _normalize_prefix(prefix)
    with _Reader(path) as reader:
        names = _select(reader.entries, pre)
        plan, errors = _match(structure, leaves, names, reader.entries, check_types and reader.typed, strict)
        if errors:
            where = f" (under prefix {pre!r})" if pre else ""
            hint = "\n  (strict=False restores only the paths in both; prefix= selects a sub-tree)" if strict else ""
            raise ValueError(
                f"restore: {path}{where} does not fit the target; nothing was restored.\n" + "\n".join(errors) + hint
            )
        values = [(i, _to_target(reader.value(key), leaves[i])) for i, key in plan]
    if as_state:
        new_leaves = list(leaves)
        for i, v in values:
            new_leaves[i] = v
        return _new_state(new_leaves, structure)
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
    elif _is_array_like(leaf):
        ok = (
            kind == "array"
            and tuple(entry["shape"]) == tuple(leaf.shape)
            and entry["dtype"] == np.dtype(leaf.dtype).name
        )
    else:  # a plain Python value: anything may replace it, as with nnx.update
        ok = True
    return None if ok else f"expected {_describe_value(leaf)}, found {_describe_entry(entry)}"


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
