"""Output shardings for layers on meshes with *explicit* axes (``jax.make_mesh``'s default).

On an explicit mesh every array's type carries its sharding, and JAX refuses
a contraction whose contracting dimension is sharded unless it is told how
the result should be laid out (``out_sharding=``). A tensor-parallel pair
(column-sharded kernel, then row-sharded kernel) hits exactly that.

Layers call :func:`out_sharding_for` with einsum-style letters for their
operands and output. When the caller passed ``out_sharding`` it is used as
given. Otherwise, on an explicit mesh, the output sharding is inferred:

* each output dimension takes the mesh axes of the operand dimension with the
  same letter, the *input* first (batch dimensions follow the activations),
  then the kernel (output features follow the weights);
* a mesh axis already used by an earlier output dimension is not used again
  (the result must be a valid sharding; for FSDP-style weights sharded over
  the batch axis this means the weight is gathered);
* contracting dimensions do not appear in the output, so a sharded one is
  reduced across its devices.

Off explicit meshes (no mesh, or ``Auto`` axes) the answer is ``None``, so the
layer behaves exactly as before and jit's propagation decides.

>>> from nnxlite.nn._sharding import infer_spec
>>> # x: (batch@data, hidden@model) @ kernel: (hidden@model, out) -> (batch@data, out): hidden reduced
>>> infer_spec("bo", ("bh", ("data", "model")), ("ho", ("model", None)))
('data', None)
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

__all__ = ["explicit_mesh", "infer_spec", "out_sharding_for", "spec_of", "fit"]

_IS_EXPLICIT: dict = {}  # AbstractMesh -> whether any axis is Explicit (meshes are few and hashable)


def explicit_mesh(*arrays: Any) -> Any:
    """The (abstract) mesh of the first array typed on a mesh with an explicit axis, else None."""
    for a in arrays:
        aval = getattr(a, "aval", None)
        sharding = getattr(aval, "sharding", None)
        mesh = getattr(sharding, "mesh", None)
        if mesh is None:
            continue
        explicit = _IS_EXPLICIT.get(mesh)
        if explicit is None:
            explicit = not mesh.empty and any(t == AxisType.Explicit for t in mesh.axis_types)
            if len(_IS_EXPLICIT) < 256:
                _IS_EXPLICIT[mesh] = explicit
        if explicit:
            return mesh
    return None


def spec_of(a: Any) -> tuple:
    """The array's sharding spec from its type, one entry per dimension."""
    spec = tuple(a.aval.sharding.spec)
    return spec + (None,) * (a.ndim - len(spec))


def _axes(entry: Any) -> tuple:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def infer_spec(out_letters: str, *operands: tuple[str, tuple]) -> tuple:
    """The output spec: each output letter's mesh axes from the first operand that shards it.

    ``operands`` are ``(letters, spec)`` pairs in priority order (input first);
    a mesh axis is given to at most one output dimension.
    """
    source: dict = {}
    for letters, spec in operands:
        for letter, entry in zip(letters, spec):
            if entry is not None and letter in out_letters and letter not in source:
                source[letter] = entry
    used: set = set()
    out = []
    for letter in out_letters:
        entry = source.get(letter)
        axes = _axes(entry)
        if axes and not used.intersection(axes):
            used.update(axes)
            out.append(entry)
        else:
            out.append(None)
    return tuple(out)


def out_sharding_for(out_sharding: Any, out_letters: str, *operands: tuple[str, Any]) -> Any:
    """``out_sharding`` if given; on an explicit mesh the inferred one; else None.

    ``operands`` are ``(letters, array)`` pairs, the input first.
    """
    if out_sharding is not None:
        return out_sharding
    mesh = explicit_mesh(*(a for _, a in operands))
    if mesh is None:
        return None
    spec = infer_spec(out_letters, *((letters, spec_of(a)) for letters, a in operands))
    return NamedSharding(mesh, PartitionSpec(*spec))


def fit(a: Any, like: Any, dims: tuple[int, ...]) -> Any:
    """``a`` resharded so that its dimensions match dimensions ``dims`` of ``like`` (explicit meshes only).

    Used for a bias added to a layer's output: on an explicit mesh the two
    operands of an elementwise op must agree on the shardings of the
    dimensions they share.
    """
    if a is None or explicit_mesh(a, like) is None:
        return a
    want = spec_of(like)
    target = tuple(want[d] if d is not None else None for d in dims)
    if spec_of(a) == target:
        return a
    mesh = explicit_mesh(like) or explicit_mesh(a)
    return jax.sharding.reshard(a, NamedSharding(mesh, PartitionSpec(*target)))
