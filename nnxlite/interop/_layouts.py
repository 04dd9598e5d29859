"""The built-in layout rules: which PyTorch name and array layout each nnxlite Variable has.

Walking an nnxlite model gives one :class:`Slot` per PyTorch state-dict
entry. A slot knows the PyTorch name (the nnxlite attribute path joined with
dots, ``Sequence``'s ``layers`` left out so that it matches
``nn.Sequential``'s ``0.weight``), the PyTorch shape, the nnxlite paths it
fills, and the two conversions. The layer type at the target decides the
layout; Variables of other modules are copied as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnxlite import graph
from nnxlite.nn.attention import MultiHeadAttention
from nnxlite.nn.containers import Sequence
from nnxlite.nn.conv import Conv, ConvTranspose
from nnxlite.nn.embed import Embed
from nnxlite.nn.linear import Linear, LinearGeneral
from nnxlite.nn.normalization import BatchNorm, GroupNorm, LayerNorm, RMSNorm
from nnxlite.variables import Cache, Intermediate, OptState, RngState, Variable

Path = tuple[Any, ...]

# Variables that are never part of a PyTorch state dict.
_NOT_WEIGHTS = (RngState, Cache, Intermediate, OptState)


@dataclass(frozen=True)
class Slot:
    """One PyTorch state-dict entry and the nnxlite Variables it corresponds to."""

    name: str  # the PyTorch name nnxlite derives from the model (before user rules)
    paths: tuple[Path, ...]  # nnxlite Variable paths it fills (empty: accepted and ignored)
    torch_shape: tuple[int, ...]
    rule: str  # which built-in rule, for error messages
    # PyTorch layout -> one array per path, with the Variable's layout but maybe not its shape yet: a
    # transposed view is reshaped after it is laid out densely (reshaping a view first would copy it slowly).
    load: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    export: Callable[..., np.ndarray]  # one array per path -> PyTorch layout
    # ``load`` is exactly ``(w.T,)`` of a matrix (then reshaped): the loader may transpose it in row blocks.
    transposed: bool = False


def model_slots(model: Any) -> dict[str, Slot]:
    """Every PyTorch entry of ``model``, keyed by name, in the model's canonical order."""
    entries = list(graph.iter_graph(model))
    variables = {path: v for path, v in entries if isinstance(v, Variable)}
    names: dict[Path, str] = {(): ""}
    objects: dict[Path, Any] = {}
    slots: dict[str, Slot] = {}
    claimed: set[Path] = set()
    for path, obj in entries:
        if path:
            parent = objects.get(path[:-1])
            prefix = names.get(path[:-1], ".".join(map(str, path[:-1])))
            skip = isinstance(parent, Sequence) and path[-1] == "layers"
            names[path] = prefix if skip else _join(prefix, path[-1])
        objects[path] = obj
        layout = _layout_for(obj)
        if layout is None:
            continue
        for slot in layout(obj, names[path], path, variables):
            if any(p in claimed for p in slot.paths):  # a parent's layout already took these
                continue
            claimed.update(slot.paths)
            slots[slot.name] = slot
    for path, v in variables.items():
        if path in claimed or isinstance(v, _NOT_WEIGHTS) or getattr(v.raw_value, "shape", None) is None:
            continue
        slots[names[path]] = _identity(names[path], path, _shape(v), "copied as is (no layout rule)")
    return slots


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _shape(v: Variable) -> tuple[int, ...]:
    return tuple(v.raw_value.shape)


def _identity(name: str, path: Path, shape: tuple[int, ...], rule: str) -> Slot:
    return Slot(name, (path,), shape, rule, lambda w: (w,), lambda x: x)


def _present(variables: dict, path: Path, attr: str) -> Path | None:
    p = path + (attr,)
    return p if p in variables else None


# --------------------------------------------------------------------------------------
# One function per layer type: (module, name, path, variables) -> slots
# --------------------------------------------------------------------------------------
def _renamed(module, name, path, variables, pairs: dict[str, str], layer: str) -> list[Slot]:
    """Same-layout Variables under a PyTorch name (LayerNorm's ``scale`` is ``weight``)."""
    out = []
    for attr, torch_attr in pairs.items():
        p = _present(variables, path, attr)
        if p is not None:
            rule = f"{layer}.{torch_attr} = {attr}" if attr != torch_attr else f"{layer}.{attr} copied"
            out.append(_identity(_join(name, torch_attr), p, _shape(variables[p]), rule))
    return out


def _bias(name, path, variables, layer: str) -> list[Slot]:
    return _renamed(None, name, path, variables, {"bias": "bias"}, layer)


def _linear(module: Linear, name, path, variables) -> list[Slot]:
    p = _present(variables, path, "kernel")
    if p is None:
        return []
    d_in, d_out = _shape(variables[p])
    kernel = Slot(
        _join(name, "weight"), (p,), (d_out, d_in), "Linear.weight (out, in) = kernel (in, out) transposed",
        lambda w: (w.T,), lambda k: k.T, transposed=True,
    )
    return [kernel, *_bias(name, path, variables, "Linear")]


def _linear_general(module: LinearGeneral, name, path, variables) -> list[Slot]:
    # A Linear whose input and output are several axes: PyTorch sees the flattened matrix.
    if module.batch_axis:
        return []  # per-index kernels have no PyTorch counterpart: copied as is
    p = _present(variables, path, "kernel")
    if p is None:
        return []
    shape = _shape(variables[p])
    d_in, d_out = math.prod(module.in_features), math.prod(module.out_features)
    kernel = Slot(
        _join(name, "weight"), (p,), (d_out, d_in),
        f"Linear.weight (out, in) = kernel {shape} flattened to (in, out), transposed",
        lambda w: (w.T,), lambda k: k.reshape(d_in, d_out).T, transposed=True,  # reshaped when placed
    )
    out = [kernel]
    b = _present(variables, path, "bias")
    if b is not None:
        bias_shape = _shape(variables[b])
        out.append(Slot(
            _join(name, "bias"), (b,), (d_out,), f"Linear.bias (out,) = bias {bias_shape} flattened",
            lambda w: (w.reshape(bias_shape),), lambda x: x.reshape(-1),
        ))
    return out


def _conv(module: Conv, name, path, variables) -> list[Slot]:
    p = _present(variables, path, "kernel")
    if p is None:
        return []
    shape = _shape(variables[p])
    n = len(shape) - 2
    to_nnx = tuple(range(2, n + 2)) + (1, 0)  # (O, I, *window) -> (*window, I, O)
    to_torch = (n + 1, n) + tuple(range(n))
    torch_shape = tuple(shape[i] for i in to_torch)
    kernel = Slot(
        _join(name, "weight"), (p,), torch_shape, f"Conv{n}d.weight (out, in, *window) = kernel (*window, in, out)",
        lambda w: (np.transpose(w, to_nnx),), lambda k: np.transpose(k, to_torch),
    )
    return [kernel, *_bias(name, path, variables, f"Conv{n}d")]


def _conv_transpose(module: ConvTranspose, name, path, variables) -> list[Slot]:
    # PyTorch: (in, out, *window), applied as the adjoint of a convolution (window flipped).
    p = _present(variables, path, "kernel")
    if p is None:
        return []
    shape = _shape(variables[p])
    n = len(shape) - 2
    window = tuple(range(n))
    if module.transpose_kernel:  # nnxlite kernel (*window, out, in), flipped by lax itself
        to_nnx, to_torch = tuple(range(2, n + 2)) + (1, 0), (n + 1, n) + window
        load = lambda w: (np.transpose(w, to_nnx),)  # noqa: E731
        export = lambda k: np.transpose(k, to_torch)  # noqa: E731
        text = "kernel (*window, out, in)"
    else:  # nnxlite kernel (*window, in, out), used unflipped: flip it here
        to_nnx, to_torch = tuple(range(2, n + 2)) + (0, 1), (n, n + 1) + window
        load = lambda w: (np.flip(np.transpose(w, to_nnx), window),)  # noqa: E731
        export = lambda k: np.transpose(np.flip(k, window), to_torch)  # noqa: E731
        text = "kernel (*window, in, out) with the window flipped"
    torch_shape = tuple(shape[i] for i in to_torch)
    kernel = Slot(_join(name, "weight"), (p,), torch_shape, f"ConvTranspose{n}d.weight (in, out, *window) = {text}",
                  load, export)
    return [kernel, *_bias(name, path, variables, f"ConvTranspose{n}d")]


def _embed(module, name, path, variables) -> list[Slot]:
    return _renamed(module, name, path, variables, {"embedding": "weight"}, "Embedding")


def _norm(layer: str):
    def layout(module, name, path, variables) -> list[Slot]:
        return _renamed(module, name, path, variables, {"scale": "weight", "bias": "bias"}, layer)

    return layout


def _batch_norm(module: BatchNorm, name, path, variables) -> list[Slot]:
    pairs = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    out = _renamed(module, name, path, variables, pairs, "BatchNorm")
    # PyTorch counts batches; nnxlite does not: accepted and ignored, exported as 0.
    out.append(Slot(
        _join(name, "num_batches_tracked"), (), (), "BatchNorm.num_batches_tracked (ignored; exported as 0)",
        lambda w: (), lambda: np.zeros((), np.int64),
    ))
    return out


def _attention(module: MultiHeadAttention, name, path, variables) -> list[Slot]:
    """``nn.MultiheadAttention``: packed ``in_proj_weight`` (3E, E) <-> query/key/value kernels."""
    heads = {"query": module.num_heads, "key": module.num_kv_heads, "value": module.num_kv_heads}
    kernels = {k: _present(variables, path + (k,), "kernel") for k in heads}
    biases = {k: _present(variables, path + (k,), "bias") for k in heads}
    if None in kernels.values():
        return []
    shapes = {k: _shape(variables[p]) for k, p in kernels.items()}  # (in, heads, head_dim)
    widths = {k: s[1] * s[2] for k, s in shapes.items()}
    out: list[Slot] = []
    packed = module.in_kv_features == module.in_features and len(set(widths.values())) == 1
    if packed:
        order = ("query", "key", "value")
        d_in = module.in_features
        splits = np.cumsum([widths[k] for k in order])[:-1]

        def load_packed(w, order=order):
            return tuple(part.T for part in np.split(w, splits, axis=0))  # reshaped when placed

        def export_packed(*ks, order=order):
            return np.concatenate([k.reshape(d_in, -1).T for k in ks], axis=0)

        out.append(Slot(
            _join(name, "in_proj_weight"), tuple(kernels[k] for k in order), (sum(widths.values()), d_in),
            "MultiheadAttention.in_proj_weight (3*E, E) = query/key/value kernels (E, heads, head_dim), "
            "transposed and stacked", load_packed, export_packed,
        ))
    else:  # kdim/vdim != embed_dim: PyTorch keeps three matrices
        for k, torch_name in (("query", "q_proj_weight"), ("key", "k_proj_weight"), ("value", "v_proj_weight")):
            s = shapes[k]
            out.append(Slot(
                _join(name, torch_name), (kernels[k],), (widths[k], s[0]),
                f"MultiheadAttention.{torch_name} (E, in) = {k}.kernel (in, heads, head_dim) transposed",
                lambda w: (w.T,), lambda x, s=s: x.reshape(s[0], -1).T,  # reshaped when placed
            ))
    if None not in biases.values():
        order = ("query", "key", "value")
        bias_shapes = [_shape(variables[biases[k]]) for k in order]
        splits = np.cumsum([math.prod(s) for s in bias_shapes])[:-1]
        out.append(Slot(
            _join(name, "in_proj_bias"), tuple(biases[k] for k in order), (sum(math.prod(s) for s in bias_shapes),),
            "MultiheadAttention.in_proj_bias (3*E,) = query/key/value biases (heads, head_dim), stacked",
            lambda w: tuple(part.reshape(s) for part, s in zip(np.split(w, splits), bias_shapes)),
            lambda *bs: np.concatenate([b.reshape(-1) for b in bs]),
        ))
    # The output projection is a Linear named out_proj in PyTorch.
    out.extend(_linear_general(module.out, _join(name, "out_proj"), path + ("out",), variables))
    return out


_LAYOUTS: tuple[tuple[type, Callable], ...] = (
    (MultiHeadAttention, _attention),
    (Linear, _linear),
    (LinearGeneral, _linear_general),
    (ConvTranspose, _conv_transpose),
    (Conv, _conv),
    (Embed, _embed),
    (BatchNorm, _batch_norm),
    (LayerNorm, _norm("LayerNorm")),
    (RMSNorm, _norm("RMSNorm")),
    (GroupNorm, _norm("GroupNorm")),
)


def _layout_for(obj: Any) -> Callable | None:
    for cls, layout in _LAYOUTS:
        if isinstance(obj, cls):
            return layout
    return None
