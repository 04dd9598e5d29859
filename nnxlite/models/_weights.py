"""Torch-layout weights in and out of a model whose attribute names follow the torch module's.

Interim stand-in for ``nnxlite.interop.torch`` (same layout rules), to be
replaced by it. A family describes only what differs from the standard rules
in a :class:`HubSpec`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from nnxlite.graph import iter_graph
from nnxlite.models._hub import host_empty
from nnxlite.nn.conv import Conv
from nnxlite.nn.embed import Embed
from nnxlite.nn.linear import Linear
from nnxlite.nn.normalization import BatchNorm, GroupNorm, LayerNorm, RMSNorm
from nnxlite.variables import Variable


@dataclass(frozen=True)
class HubSpec:
    """What a family's checkpoints need beyond the standard layout rules.

    skip: regexes of checkpoint names that hold no weight of ours (buffers, tied copies).
    rename: ``(regex, replacement)`` applied to checkpoint names first (old spellings).
    keep_layout: regexes of torch names whose ``weight`` is already ``(in, out)`` (GPT-2's Conv1D).
    """

    skip: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    keep_layout: tuple[str, ...] = ()


_NORMS = (LayerNorm, RMSNorm, GroupNorm)


def _leaf_name(parent: Any, leaf: str) -> str:
    if isinstance(parent, (Linear, Conv)) and leaf == "kernel":
        return "weight"
    if isinstance(parent, Embed) and leaf == "embedding":
        return "weight"
    if isinstance(parent, (*_NORMS, BatchNorm)) and leaf == "scale":
        return "weight"
    if isinstance(parent, BatchNorm) and leaf in ("mean", "var"):
        return "running_" + leaf
    return leaf


def _to_nnx(parent: Any, leaf: str, keep: bool):
    """``torch array -> nnx array`` for one leaf (and its inverse)."""
    if leaf == "kernel" and isinstance(parent, Linear) and not keep:
        return (lambda a: a.T), (lambda a: a.T)
    if leaf == "kernel" and isinstance(parent, Conv):
        n = len(parent.kernel_size)
        fwd = tuple(range(2, 2 + n)) + (1, 0)  # O I *window -> *window I O
        inv = (n + 1, n) + tuple(range(n))
        return (lambda a: np.transpose(a, fwd)), (lambda a: np.transpose(a, inv))
    return (lambda a: a), (lambda a: a)


def _entries(model: Any, spec: HubSpec) -> dict[str, tuple[Variable, Any, Any]]:
    """``torch name -> (variable, to_nnx, to_torch)`` for every Variable of ``model``."""
    nodes: dict[tuple, Any] = {}
    out = {}
    for path, node in iter_graph(model):
        if not isinstance(node, Variable):
            nodes[path] = node
            continue
        parent, leaf = nodes[path[:-1]], path[-1]
        name = ".".join(str(p) for p in path[:-1] + (_leaf_name(parent, leaf),))
        keep = any(re.search(p, name) for p in spec.keep_layout)
        out[name] = (node, *_to_nnx(parent, leaf, keep))
    return out


def load_torch_layout(model: Any, tensors: Mapping[str, Any], spec: HubSpec) -> None:
    """Write torch-named ``tensors`` into ``model``; on any mismatch raise and change nothing."""
    entries = _entries(model, spec)
    given = {}
    for name in tensors:
        target = name
        for pattern, repl in spec.rename:
            target = re.sub(pattern, repl, target)
        if any(re.search(p, target) for p in spec.skip):
            continue
        given[target] = name
    unmatched = sorted(set(given) - set(entries))
    missing = sorted(set(entries) - set(given))
    bad_shapes = []
    for target in sorted(set(given) & set(entries)):
        var, to_nnx, _ = entries[target]
        shape = _converted_shape(tensors, given[target], to_nnx)
        if shape != tuple(var.shape):
            bad_shapes.append(f"{target}: checkpoint {shape} vs model {tuple(var.shape)}")
    if unmatched or missing or bad_shapes:
        lines = [f"{type(model).__name__}: the checkpoint does not fit the model."]
        if unmatched:
            lines.append("  checkpoint names the model does not have: " + ", ".join(unmatched))
        if missing:
            lines.append("  model weights the checkpoint does not fill: " + ", ".join(missing))
        if bad_shapes:
            lines.append("  shape mismatches (after layout conversion): " + "; ".join(bad_shapes))
        lines.append("  Check that config.json matches the weights; nothing was loaded.")
        raise ValueError("\n".join(lines))
    # Everything fits: read, convert and place one tensor at a time (one host copy alive at a time),
    # then assign all at once so a failure while reading leaves the model unchanged.
    values = {}
    for target in sorted(given):
        var, to_nnx, _ = entries[target]
        values[target] = _placed(to_nnx(np.asarray(tensors[given[target]])), var.dtype)
    for target, array in values.items():
        entries[target][0].value = array


def _placed(array: np.ndarray, dtype: Any) -> jax.Array:
    """A jax array of ``array`` in ``dtype``; on CPU a contiguous buffer is adopted without a copy."""
    if not array.flags.c_contiguous:  # a transposed view: lay it out once, in a buffer jax can adopt
        dense = host_empty(array.shape, array.dtype)
        np.copyto(dense, array)
        array = dense
    placed = jax.device_put(array)
    return placed if placed.dtype == dtype else placed.astype(dtype)


def _converted_shape(tensors: Mapping[str, Any], name: str, to_nnx) -> tuple[int, ...]:
    """The shape ``name`` has after conversion, read from the header when the source has one."""
    shape = tensors.shape(name) if hasattr(tensors, "shape") else tuple(np.shape(tensors[name]))
    return tuple(to_nnx(np.broadcast_to(np.uint8(0), shape)).shape)  # a view: no memory


def export_torch_layout(model: Any, spec: HubSpec) -> dict[str, np.ndarray]:
    """``{torch name: numpy array}`` for every Variable of ``model``."""
    return {name: np.asarray(to_torch(np.asarray(var.value))) for name, (var, _, to_torch) in _entries(model, spec).items()}
