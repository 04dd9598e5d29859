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
layer behaves exactly as before and jit's propagation decides. A given
``out_sharding`` may also be a tuple of *logical* axis names, resolved by the
active logical-axis rules (see :func:`given`), so activation layouts can be
written once, in the model's own vocabulary, for both mesh kinds.

>>> from nnxlite.nn._sharding import infer_spec
>>> # x: (batch@data, hidden@model) @ kernel: (hidden@model, out) -> (batch@data, out): hidden reduced
>>> infer_spec("bo", ("bh", ("data", "model")), ("ho", ("model", None)))
('data', None)
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

__all__ = [
    "explicit_mesh",
    "infer_spec",
    "out_sharding_for",
    "spec_of",
    "fit",
    "dot_general_out_sharding",
    "einsum_out_sharding",
    "conv_out_sharding",
    "take_out_sharding",
    "spec_entries",
]

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


def given(out_sharding: Any, *operands: Any) -> Any:
    """A caller's ``out_sharding``, with logical axis names allowed.

    A plain tuple or list of logical names (``("batch", "mlp")``) goes through
    the active :func:`nnxlite.logical_axis_rules`; on an explicit mesh the
    resulting spec is bound to the operands' mesh, so no ``jax.set_mesh``
    context is needed. Shardings and ``PartitionSpec``s pass through as given.
    """
    if type(out_sharding) in (tuple, list):
        from nnxlite.sharding import logical_to_mesh_axes  # the sharding module imports the core only

        out_sharding = logical_to_mesh_axes(tuple(out_sharding))
    if isinstance(out_sharding, PartitionSpec):
        mesh = explicit_mesh(*operands)
        if mesh is not None:
            return NamedSharding(mesh, out_sharding)
    return out_sharding


def constrain(y: Any, out_sharding: Any, op_sharding: Any) -> Any:
    """Off explicit meshes, a requested ``out_sharding`` becomes a sharding constraint on the result.

    JAX's ops accept ``out_sharding`` only for Explicit mesh axes; on an Auto
    mesh the same request is a ``with_sharding_constraint``, so a model that
    names its activation layouts runs on both mesh kinds.
    """
    if out_sharding is None or op_sharding is not None:
        return y
    return jax.lax.with_sharding_constraint(y, given(out_sharding))


def _letters(n: int, start: int = 0) -> str:
    return "".join(chr(0x4E00 + start + k) for k in range(n))  # never clashes with an einsum equation


def dot_general_out_sharding(out_sharding: Any, x: Any, kernel: Any, dimension_numbers: Any) -> Any:
    """:func:`out_sharding_for` for ``jax.lax.dot_general(x, kernel, dimension_numbers)``."""
    if explicit_mesh(x, kernel) is None:
        return None  # (a requested out_sharding becomes a constraint: see `constrain`)
    if out_sharding is not None:
        return given(out_sharding, x, kernel)
    (x_c, k_c), (x_b, k_b) = dimension_numbers
    x_letters = _letters(x.ndim)
    k_letters = list(_letters(kernel.ndim, x.ndim))
    for xd, kd in zip(tuple(x_c) + tuple(x_b), tuple(k_c) + tuple(k_b)):
        k_letters[kd] = x_letters[xd]  # contracted and batch dimensions share a letter
    k_letters = "".join(k_letters)
    out = "".join(x_letters[d] for d in x_b)
    out += "".join(x_letters[d] for d in range(x.ndim) if d not in x_c and d not in x_b)
    out += "".join(k_letters[d] for d in range(kernel.ndim) if d not in k_c and d not in k_b)
    return out_sharding_for(None, out, (x_letters, x), (k_letters, kernel))


def einsum_out_sharding(out_sharding: Any, equation: str, x: Any, kernel: Any) -> Any:
    """:func:`out_sharding_for` for ``jnp.einsum(equation, x, kernel)`` (``...`` allowed in ``x``)."""
    if explicit_mesh(x, kernel) is None:
        return None  # (a requested out_sharding becomes a constraint: see `constrain`)
    if out_sharding is not None:
        return given(out_sharding, x, kernel)
    inputs, out = equation.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    if "..." in lhs:
        ell = _letters(x.ndim - (len(lhs) - 3))
        lhs, out, rhs = lhs.replace("...", ell), out.replace("...", ell), rhs.replace("...", ell)
    return out_sharding_for(None, out, (lhs, x), (rhs, kernel))


def conv_out_sharding(out_sharding: Any, x: Any, kernel: Any) -> Any:
    """For a channels-last convolution of ``x (N, *spatial, C)`` with ``kernel (*window, C/g, O)``.

    The batch dimension follows the input and the output features the
    kernel; spatial dimensions are left to the compiler (replicated).
    """
    if explicit_mesh(x, kernel) is None:
        return None  # (a requested out_sharding becomes a constraint: see `constrain`)
    if out_sharding is not None:
        return given(out_sharding, x, kernel)
    n_spatial = x.ndim - 2
    x_letters = "N" + _letters(n_spatial) + "C"
    k_letters = _letters(n_spatial, 100) + "C" + "O"
    spec = infer_spec("N" + "_" * n_spatial + "O", (x_letters, spec_of(x)), (k_letters, spec_of(kernel)))
    return NamedSharding(explicit_mesh(x, kernel), PartitionSpec(*spec))


def take_out_sharding(out_sharding: Any, table: Any, ids: Any) -> Any:
    """For ``table[ids]`` (an embedding lookup): the ids' sharding, then the table's feature sharding."""
    if explicit_mesh(table, ids) is None:
        return None
    if out_sharding is not None:
        return given(out_sharding, table, ids)
    id_letters = _letters(ids.ndim)
    return out_sharding_for(None, id_letters + "F", (id_letters, ids), ("VF", table))


def spec_entries(sharding: Any, ndim: int) -> tuple:
    """The spec of a ``NamedSharding`` or ``PartitionSpec`` as one entry per dimension."""
    spec = sharding.spec if isinstance(sharding, NamedSharding) else sharding
    spec = tuple(spec)
    return spec + (None,) * (ndim - len(spec))


def fit_spec(a: Any, target: tuple) -> Any:
    """``a`` resharded to ``target`` (one entry per dimension) when it is on an explicit mesh and differs."""
    if a is None:
        return a
    mesh = explicit_mesh(a)
    if mesh is None or spec_of(a) == tuple(target):
        return a
    return jax.sharding.reshard(a, NamedSharding(mesh, PartitionSpec(*target)))


def match(a: Any, ref: Any) -> Any:
    """``a`` resharded like ``ref`` (same shape) when both are on an explicit mesh and differ."""
    if explicit_mesh(ref) is None:
        return a
    return fit_spec(a, spec_of(ref))


def broadcast_like(a: Any, shape: tuple[int, ...], x: Any) -> Any:
    """``a.reshape(shape)``, resharded to follow ``x`` on its non-broadcast dimensions (explicit meshes)."""
    a = a.reshape(shape)
    if explicit_mesh(x, a) is None:
        return a
    xs = spec_of(x)
    return fit_spec(a, tuple(e if n != 1 else None for e, n in zip(xs, shape)))


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
