"""PyTorch state dicts into nnxlite modules and back.

Build the nnxlite model with the attribute names of the PyTorch module
(``self.fc1 = nnx.Linear(...)`` for ``self.fc1 = nn.Linear(...)``), then::

    >>> import numpy as np, nnxlite as nnx
    >>> from nnxlite.interop import torch as tx
    >>> class Net(nnx.Module):
    ...     def __init__(self, ctx):
    ...         self.fc = nnx.Linear(3, 2, ctx=ctx)
    >>> net = Net(nnx.context(0))
    >>> sd = {"fc.weight": np.ones((2, 3), np.float32), "fc.bias": np.zeros(2, np.float32)}  # torch layout
    >>> tx.load_state_dict(net, sd)
    LoadResult(missing_keys=[], unexpected_keys=[], ignored_keys=[])
    >>> net.fc.kernel.shape                       # nnxlite layout: (in, out)
    (3, 2)
    >>> sorted(tx.state_dict(net, framework="numpy"))   # and back, in torch layout
    ['fc.bias', 'fc.weight']

The layer type at each target decides the layout (``Linear.weight`` is
transposed, ``Conv2d.weight`` permuted, ``LayerNorm.weight`` becomes
``scale``, ...); see :func:`load_state_dict`. Renames go in a list of
:class:`Rule`. PyTorch itself is imported only when torch tensors are
given or requested; a ``.safetensors`` file is read with the numpy API.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from nnxlite import graph
from nnxlite.interop._layouts import Slot, model_slots
from nnxlite.interop._rules import Rule, apply_rules, check_invertible, invert_rules
from nnxlite.interop._sources import Scratch, copy_into, host_empty, lazy_zeros, open_source, to_torch
from nnxlite.state import State, _fmt_path
from nnxlite.variables import Variable

__all__ = ["Rule", "LoadResult", "StateDictError", "load_state_dict", "state_dict", "save_file", "torch_names"]

RuleLike = Rule | tuple


class LoadResult(NamedTuple):
    """What :func:`load_state_dict` did not use (all empty after a strict load).

    ``missing_keys`` are the model's PyTorch names that got no array,
    ``unexpected_keys`` the state dict's names that fit nothing, and
    ``ignored_keys`` the names a rule dropped on purpose.
    """

    missing_keys: list[str]
    unexpected_keys: list[str]
    ignored_keys: list[str]


class StateDictError(ValueError):
    """A state dict that does not fit the model; nothing was written.

    ``unexpected``, ``missing`` and ``mismatched`` hold the offending names.
    """

    def __init__(self, message: str, unexpected: list[str], missing: list[str], mismatched: list[str]):
        super().__init__(message)
        self.unexpected = unexpected
        self.missing = missing
        self.mismatched = mismatched


def load_state_dict(
    model: Any, state_dict: Any, *, strict: bool = True, rules: Iterable[RuleLike] | None = None
) -> LoadResult:
    """Write a PyTorch-layout state dict into ``model`` (in place), converting each array's layout.

    ``state_dict`` is a mapping of names to arrays (torch tensors, numpy or
    JAX arrays), a torch ``nn.Module``, or the path of a ``.safetensors``
    file or of a folder holding ``model.safetensors`` (or its sharded
    index). Pickle files (``.bin``, ``.pt``) are refused. Names are the
    nnxlite attribute paths joined by dots (``blocks.0.fc.weight``;
    ``nnx.Sequence`` counts as ``nn.Sequential``), after applying ``rules``.

    The built-in layout rules, chosen by the nnxlite layer at the target:

    | PyTorch | nnxlite |
    |---|---|
    | ``Linear.weight`` (out, in) | ``Linear.kernel`` (in, out); ``LinearGeneral`` reshaped |
    | ``ConvNd.weight`` (out, in, *window) | ``Conv.kernel`` (*window, in, out) |
    | ``ConvTransposeNd.weight`` (in, out, *window) | ``ConvTranspose.kernel`` (*window, in, out), window flipped |
    | ``Embedding.weight`` | ``Embed.embedding`` |
    | ``LayerNorm``/``GroupNorm``/``RMSNorm`` ``.weight`` | ``.scale`` |
    | ``BatchNorm`` ``running_mean``/``running_var`` | ``mean``/``var`` (``num_batches_tracked`` dropped) |
    | ``MultiheadAttention.in_proj_weight`` (3E, E) | ``query``/``key``/``value`` kernels (E, heads, head_dim) |
    | ``MultiheadAttention.out_proj`` | ``out`` |
    | any other Variable | copied as is |

    Every check runs before anything is written: a name that fits nothing,
    a Variable that gets nothing (with ``strict=True``) or a shape that does
    not fit raises one :class:`StateDictError` listing them all, and the
    model is unchanged. Arrays are cast to each Variable's dtype and placed
    with its sharding; a safetensors file is read one tensor at a time.

    >>> import numpy as np, nnxlite as nnx
    >>> from nnxlite.interop.torch import Rule, load_state_dict
    >>> model = nnx.Sequence([nnx.Linear(4, 2, ctx=nnx.context(0))])
    >>> sd = {"encoder.0.weight": np.zeros((2, 4), np.float32), "encoder.0.bias": np.ones(2, np.float32)}
    >>> load_state_dict(model, sd, rules=[Rule(r"^encoder\\.", "")]).missing_keys
    []
    >>> model.layers[0].bias.value.tolist()
    [1.0, 1.0]

    Args:
      model: the nnxlite module to fill.
      state_dict: the arrays, an ``nn.Module``, or a ``.safetensors`` path.
      strict: require every name to fit and every weight to be filled.
        With False, unused names and unfilled weights are reported in the
        result instead; shape mismatches still raise.
      rules: :class:`Rule` objects (or ``(pattern, target[, transform])``
        tuples) applied in order to every name before matching.

    Returns:
      A :class:`LoadResult` with the keys that were not used.
    """
    rules = _as_rules(rules)
    slots = model_slots(model)
    with open_source(state_dict) as source:
        matched: dict[str, tuple[str, list[Rule]]] = {}
        unexpected: list[tuple[str, str, list[Rule]]] = []
        ignored: list[str] = []
        duplicates: list[str] = []
        for name in source.names():
            target, applied = apply_rules(rules, name)
            if target is None:
                ignored.append(name)
            elif target not in slots:
                unexpected.append((name, target, applied))
            elif target in matched:
                duplicates.append(f"  {name!r} and {matched[target][0]!r} both become {target!r}")
            else:
                matched[target] = (name, applied)
        missing = [slot for target, slot in slots.items() if target not in matched and slot.paths]
        mismatched = []
        for target, (name, applied) in matched.items():
            slot = slots[target]
            transforms = [r.transform for r in applied if r.transform is not None]
            shape = _shape_after(transforms, source, name) if transforms else source.shape(name)
            if tuple(shape) != slot.torch_shape:
                mismatched.append(_mismatch_line(name, target, applied, tuple(shape), slot))
        if duplicates or mismatched or (strict and (missing or unexpected)):
            raise _load_error(slots, unexpected, missing, mismatched, duplicates, strict)

        variables = {path: v for path, v in graph.iter_graph(model) if isinstance(v, Variable)}
        values: dict[tuple, Any] = {}
        scratch = Scratch()
        for target, (name, applied) in matched.items():
            slot = slots[target]
            transforms = [r.transform for r in applied if r.transform is not None]
            # A tensor that is converted (transposed, cast) is copied anyway: read it into reused memory.
            converted = source.owns_arrays and not _adopted_as_read(slot, transforms, source, name, variables)
            if converted and slot.transposed and not transforms and hasattr(source, "read_rows"):
                (path,) = slot.paths
                values[path] = _transposed_in_blocks(source, name, scratch, variables[path].raw_value)
                continue
            into = scratch.array(source.shape(name), source.dtype(name)) if converted else None
            array = _transformed(source.read(name, into), transforms)
            for path, part in zip(slot.paths, slot.load(array)):
                owned = source.owns_arrays and not (into is not None and scratch.holds(np.asarray(part)))
                values[path] = _placed_like(part, variables[path].raw_value, may_alias=owned)
            del array  # one checkpoint tensor alive at a time
        del scratch
    graph.update(model, State.from_flat(values))
    return LoadResult([s.name for s in missing], [u[0] for u in unexpected], ignored)


def state_dict(model: Any, *, rules: Iterable[RuleLike] | None = None, framework: str = "torch") -> dict[str, Any]:
    """The model's weights as a PyTorch-layout state dict (the inverse of :func:`load_state_dict`).

    ``torch_module.load_state_dict(state_dict(model))`` accepts it when the
    names match. ``rules`` are the same list given to
    :func:`load_state_dict`; they run backwards (each rule's inverse, last
    rule first, and ``untransform`` in place of ``transform``).

    >>> import nnxlite as nnx
    >>> from nnxlite.interop.torch import state_dict
    >>> sd = state_dict(nnx.Linear(3, 2, ctx=nnx.context(0)), framework="numpy")
    >>> sd["weight"].shape                        # (out, in), as torch.nn.Linear
    (2, 3)

    Args:
      model: an nnxlite module.
      rules: renaming rules, as for :func:`load_state_dict`.
      framework: ``"torch"`` for torch tensors (imports torch) or
        ``"numpy"`` for numpy arrays (e.g. to write with safetensors).
    """
    if framework not in ("torch", "numpy"):
        raise ValueError(f"state_dict: framework must be 'torch' or 'numpy', got {framework!r}.")
    rules = _as_rules(rules)
    check_invertible(rules)
    variables = {path: v for path, v in graph.iter_graph(model) if isinstance(v, Variable)}
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, slot in model_slots(model).items():
        value = slot.export(*(np.asarray(variables[p].raw_value) for p in slot.paths))
        torch_name, applied = invert_rules(rules, name)
        for rule in reversed(applied):
            if rule.untransform is not None:
                value = rule.untransform(value)
        if torch_name in out:
            raise ValueError(
                f"state_dict: {name!r} and {origin[torch_name]!r} both export as {torch_name!r}; "
                f"check the rules' inverses."
            )
        origin[torch_name] = name
        out[torch_name] = to_torch(value) if framework == "torch" else _contiguous(value)
    return out


def save_file(
    model: Any, path: str | os.PathLike, *, rules: Iterable[RuleLike] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write :func:`state_dict` to a ``.safetensors`` file that PyTorch tools read (no torch needed).

    The metadata defaults to ``{"format": "pt"}``, which ``transformers``
    expects.

    >>> import os, tempfile, nnxlite as nnx
    >>> from nnxlite.interop.torch import load_state_dict, save_file
    >>> path = os.path.join(tempfile.mkdtemp(), "linear.safetensors")
    >>> save_file(nnx.Linear(3, 2, ctx=nnx.context(0)), path)
    >>> load_state_dict(nnx.Linear(3, 2, ctx=nnx.context(1)), path).unexpected_keys
    []
    """
    from safetensors.numpy import save_file as write

    arrays = state_dict(model, rules=rules, framework="numpy")
    write(arrays, os.fspath(path), metadata=dict(metadata) if metadata is not None else {"format": "pt"})


def torch_names(model: Any, *, rules: Iterable[RuleLike] | None = None) -> dict[str, str]:
    """Each PyTorch name the model expects, with the nnxlite path(s) and layout rule behind it.

    Use it to write rules: compare its keys with your checkpoint's names.

    >>> import nnxlite as nnx
    >>> from nnxlite.interop.torch import torch_names
    >>> for name, where in torch_names(nnx.Sequence([nnx.Linear(3, 2, ctx=nnx.context(0))])).items():
    ...     print(name, "->", where)
    0.weight -> layers/0/kernel (Linear.weight (out, in) = kernel (in, out) transposed)
    0.bias -> layers/0/bias (Linear.bias copied)
    """
    rules = _as_rules(rules)
    check_invertible(rules)
    out = {}
    for name, slot in model_slots(model).items():
        where = ", ".join(_fmt_path(p) for p in slot.paths) or "nothing"
        out[invert_rules(rules, name)[0]] = f"{where} ({slot.rule})"
    return out


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def _as_rules(rules: Iterable[RuleLike] | None) -> tuple[Rule, ...]:
    out = []
    for r in rules or ():
        if isinstance(r, Rule):
            out.append(r)
        elif isinstance(r, tuple) and 2 <= len(r) <= 3:
            out.append(Rule(*r))
        else:
            raise TypeError(f"rules: expected Rule(pattern, target[, transform]) or such a tuple, got {r!r}.")
    return tuple(out)


def _contiguous(a: Any) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array (num_batches_tracked) into shape (1,).
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _transformed(array: Any, transforms: list) -> Any:
    for fn in transforms:
        array = np.asarray(fn(array))
    return array


def _shape_after(transforms: list, source: Any, name: str) -> tuple[int, ...]:
    """The shape of ``name`` after ``transforms``, without reading it.

    The transforms run on a stand-in of the stored shape whose elements all
    share one byte (a broadcast view), which is enough for the transposes and
    reshapes rules do. A transform that needs real values (or writes) fails
    on it, and then the tensor is read; it is read again when loaded.
    """
    standin = np.broadcast_to(np.zeros((), np.float32), source.shape(name))
    try:
        return tuple(np.shape(_transformed(standin, transforms)))
    except Exception:  # noqa: BLE001 - any failure means "needs the real array"
        return tuple(_transformed(source.read(name), transforms).shape)


def _adopted_as_read(slot: Slot, transforms: list, source: Any, name: str, variables: dict) -> bool:
    """Whether a Variable will adopt the very buffer ``name`` is read into (no conversion copies it).

    Found by running the conversion on a lazy zero array of the stored shape
    and dtype (views only: no memory, nothing read) and looking at the
    result's memory. When unsure (a conversion that fails on it), True: the
    tensor then gets a buffer of its own, which is always safe.
    """
    dtype = source.dtype(name)
    if dtype is None:
        return True
    standin = lazy_zeros(source.shape(name), dtype)
    try:
        parts = slot.load(_transformed(standin, transforms))
    except Exception:  # noqa: BLE001 - any failure means "plan for the worst"
        return True
    for path, part in zip(slot.paths, parts):
        part = np.asarray(part)
        if (np.may_share_memory(part, standin) and part.flags.c_contiguous
                and part.dtype == variables[path].raw_value.dtype):
            return True
    return False


# Rows of a matrix read at a time when transposing it: small enough to stay in cache, and the
# scratch buffer then never needs the whole matrix (peak memory stays near the checkpoint's size).
_BLOCK_BYTES = 4 << 20


def _transposed_in_blocks(source: Any, name: str, scratch: Scratch, old: Any) -> Any:
    """A stored ``(out, in)`` matrix as a JAX array of ``old``'s shape and dtype, laid out ``(in, out)``.

    Read a block of rows at a time into the scratch buffer and copied,
    transposed, into the fresh buffer JAX adopts: one pass over the new
    memory, and no tensor-sized temporary.
    """
    rows, cols = source.shape(name)
    dtype = source.dtype(name)
    dense = host_empty((cols, rows), old.dtype)
    step = max(1, _BLOCK_BYTES // max(1, cols * dtype.itemsize))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        block = source.read_rows(name, start, scratch.array((stop - start, cols), dtype))
        copy_into(dense[:, start:stop], block.T)
    sharding = getattr(old, "sharding", None) if isinstance(old, jax.Array) else None
    return jax.device_put(dense.reshape(old.shape), sharding)


def _placed_like(part: np.ndarray, old: Any, *, may_alias: bool) -> Any:
    """``part`` as a JAX array with ``old``'s dtype, on ``old``'s devices.

    On CPU ``device_put`` can adopt a numpy buffer instead of copying it.
    That is what we want for a buffer this load made (``may_alias``), but a
    buffer shared with the caller's torch tensor would change under the
    "immutable" JAX array when torch updates it in place. Anything else is
    laid out once in a fresh page-aligned buffer, which JAX then adopts.
    """
    part = np.asarray(part)
    if not (may_alias and part.dtype == old.dtype and part.flags.c_contiguous):
        dense = host_empty(part.shape, old.dtype)
        copy_into(dense, part)
        part = dense
    part = part.reshape(old.shape)  # dense by now: a view
    sharding = getattr(old, "sharding", None) if isinstance(old, jax.Array) else None
    return jax.device_put(part, sharding)


def _renamed_by(name: str, target: str, applied: list[Rule]) -> str:
    return f" (renamed {target!r} by {', '.join(map(repr, applied))})" if target != name else ""


def _mismatch_line(name: str, target: str, applied: list[Rule], shape: tuple, slot: Slot) -> str:
    paths = ", ".join(_fmt_path(p) for p in slot.paths) or "nothing"
    transformed = " after its rule's transform" if any(r.transform for r in applied) else ""
    return (
        f"  {name!r}{_renamed_by(name, target, applied)}: found shape {shape}{transformed}, expected "
        f"{slot.torch_shape} for nnxlite {paths} [rule: {slot.rule}]"
    )


def _load_error(slots, unexpected, missing, mismatched, duplicates, strict) -> StateDictError:
    lines = ["load_state_dict: nothing was loaded; the state dict does not fit the model."]
    if strict and unexpected:
        lines.append(f"names in the state dict that fit nothing in the model ({len(unexpected)}):")
        candidates = [n for n in slots if slots[n].paths]
        for name, target, applied in unexpected:
            near = difflib.get_close_matches(target, candidates, n=1)
            hint = f"; closest model name: {near[0]!r}" if near else ""
            lines.append(f"  {name!r}{_renamed_by(name, target, applied)}{hint}")
    if strict and missing:
        lines.append(f"model weights the state dict does not fill ({len(missing)}):")
        for slot in missing:
            paths = ", ".join(_fmt_path(p) for p in slot.paths)
            lines.append(f"  {paths}: expects {slot.name!r} of shape {slot.torch_shape} [rule: {slot.rule}]")
    if mismatched:
        lines.append(f"shape mismatches ({len(mismatched)}):")
        lines.extend(mismatched)
    if duplicates:
        lines.append(f"names that collide after the rules ({len(duplicates)}):")
        lines.extend(duplicates)
    lines.append(
        "To fix: rename with rules=[Rule(pattern, target), ...] (Rule(pattern, None) drops names), build the "
        "model with the checkpoint's sizes, or pass strict=False to skip unmatched names. "
        "nnxlite.interop.torch.torch_names(model) lists the names the model expects."
    )
    return StateDictError(
        "\n".join(lines),
        [u[0] for u in unexpected],
        [s.name for s in missing],
        [m.strip() for m in mismatched],
    )
