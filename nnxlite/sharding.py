"""Sharding: logical axis names on Variables -> PartitionSpecs and NamedShardings.

A Variable says how it *would like* to be laid out with a ``sharding``
metadata entry: one logical axis name (or None, or a tuple of names) per
dimension. Give it directly, ``nnx.Param(w, sharding=('embed', 'mlp'))``, or
wrap a layer's initializer with :func:`with_partitioning`::

    >>> import jax, nnxlite as nnx
    >>> layer = nnx.Linear(4, 8, ctx=nnx.context(0),
    ...     kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp")))
    >>> layer.kernel.sharding_names     # .sharding is the array's layout, as in flax
    ('embed', 'mlp')
    >>> nnx.get_partition_spec(layer)["kernel"].value    # a State of Variables, as in flax
    P('embed', 'mlp')

Logical names are mapped to mesh axes by *rules* (``[('embed', None),
('mlp', 'model'), ...]``), given as ``rules=`` or installed for a block with
:func:`logical_axis_rules`. Without rules, logical names are used as mesh
axis names. :func:`get_named_sharding` binds the specs to a mesh; pass the
result to ``jax.jit(..., out_shardings=...)`` to create the state sharded
(:func:`sharded_init`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nnxlite import graph
from nnxlite.state import State, _fmt_path, _new_state, boxed_state, raw_leaves
from nnxlite.variables import Variable

__all__ = [
    "Partitioned",
    "with_partitioning",
    "logical_axis_rules",
    "get_logical_axis_rules",
    "logical_to_mesh_axes",
    "get_partition_spec",
    "get_named_sharding",
    "sharded_init",
]

Rules = Sequence[tuple[str, Any]] | Mapping[str, Any]


class Partitioned(Variable):
    """A value boxed with ``sharding`` metadata, as returned by :func:`with_partitioning`.

    ``nnx.Param(box)`` (any Variable type) unwraps it and keeps its metadata,
    so a layer that writes ``Param(kernel_init(key, shape, dtype))`` gets the
    sharding without knowing about it.
    """


class _PartitionedInit:
    """An initializer whose result carries sharding metadata (see with_partitioning)."""

    __slots__ = ("init", "sharding", "metadata")

    def __init__(self, init: Callable, sharding: tuple, metadata: dict):
        self.init = init
        self.sharding = sharding
        self.metadata = metadata

    def __call__(self, *args: Any, **kwargs: Any) -> Partitioned:
        # Any initializer signature: (key, shape, dtype) for layers, none at all for
        # flax's `nnx.Param(nnx.with_partitioning(lambda: w, sharding=...)())`.
        # No rank check here: wrappers may draw a different shape and reshape
        # (LinearGeneral draws its kernel flat). get_partition_spec checks the
        # final Variable's rank and names its path.
        if len(args) >= 2:
            args = (args[0], tuple(args[1])) + args[2:]
        value = self.init(*args, **kwargs)
        if isinstance(value, Variable):
            value = value.raw_value
        if self.sharding is None:
            return Partitioned(value, **self.metadata)
        return Partitioned(value, sharding=self.sharding, **self.metadata)

    def __repr__(self) -> str:
        name = getattr(self.init, "__qualname__", None) or repr(self.init)
        return f"with_partitioning({name}, {self.sharding})"


def _normalize_axes(axes: Any) -> tuple:
    if isinstance(axes, PartitionSpec):
        axes = tuple(axes)
    if isinstance(axes, str) or axes is None:
        raise TypeError(
            f"sharding axes must be a tuple with one entry per dimension, got {axes!r}; "
            f"for a 1-d value write ({axes!r},)."
        )
    return tuple(tuple(a) if isinstance(a, list) else a for a in axes)


def with_partitioning(
    initializer: Callable, sharding: Sequence[Any] | None = None, mesh: Mesh | None = None, **metadata: Any
) -> Callable:
    """Wrap an initializer so the Variable it initializes carries ``sharding`` metadata.

    The wrapped initializer returns a :class:`Partitioned` box; ``nnx.Param``
    and :func:`nnxlite.functional.param_from_init` unwrap it and copy its
    metadata (``sharding`` plus ``mesh`` and any ``**metadata`` given here).
    flax.nnx's spellings all work: the names positionally or as ``sharding=``,
    ``mesh=``, extra metadata such as ``sharding_rules=``, and initializers of
    any signature (including none: ``with_partitioning(lambda: w, ...)()``).

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> init = nnx.with_partitioning(nnx.initializers.zeros, (None, "mlp"))
    >>> p = nnx.Param(init(jax.random.PRNGKey(0), (2, 3), jnp.float32))
    >>> p.sharding_names, p.shape
    ((None, 'mlp'), (2, 3))
    >>> nnx.Param(nnx.with_partitioning(lambda: jnp.ones(4), sharding=("data",))()).sharding_names
    ('data',)

    Args:
      initializer: an initializer, usually ``(key, shape, dtype) -> array``.
      sharding: one logical axis name per dimension: a str, None (replicated),
        or a tuple of names (the dimension is split over several mesh axes);
        a ``PartitionSpec`` is read the same way. ``None`` (or leaving it out)
        records no sharding, as flax.nnx's ``with_partitioning(init, None)``.
      mesh: recorded as the Variable's ``mesh`` metadata when given.
      **metadata: more Variable metadata to attach. ``axes=`` is nnxlite's
        older name for ``sharding``.
    """
    if "axes" in metadata:
        if sharding is not None:
            raise TypeError("with_partitioning: give the axis names once, as `sharding` (or its older name `axes`).")
        sharding = metadata.pop("axes")
    if mesh is not None:
        metadata["mesh"] = mesh
    return _PartitionedInit(initializer, None if sharding is None else _normalize_axes(sharding), metadata)


# ---------------------------------------------------------------------------------
# Logical axis rules
# ---------------------------------------------------------------------------------
_RULES = threading.local()


def _rules_pairs(rules: Rules | None) -> tuple[tuple[str, Any], ...] | None:
    if rules is None:
        return None
    items = rules.items() if isinstance(rules, Mapping) else rules
    out = []
    for item in items:
        try:
            logical, mesh_axes = item
        except (TypeError, ValueError):
            raise TypeError(
                f"logical axis rules must be (logical_name, mesh_axes) pairs or a dict; got entry {item!r}"
            ) from None
        out.append((logical, tuple(mesh_axes) if isinstance(mesh_axes, list) else mesh_axes))
    return tuple(out)


@contextlib.contextmanager
def logical_axis_rules(rules: Rules) -> Iterator[tuple]:
    """Map logical axis names to mesh axes inside the ``with`` block (nestable).

    ``rules`` is a dict or a sequence of ``(logical_name, mesh_axes)`` pairs;
    ``mesh_axes`` is a mesh axis name, a tuple of them, or None (replicate).
    A name may appear more than once: the first candidate whose mesh axes are
    not already used by the same PartitionSpec wins (as in Flax).

    >>> import nnxlite as nnx
    >>> with nnx.logical_axis_rules([("batch", "data"), ("mlp", "model"), ("embed", None)]):
    ...     nnx.logical_to_mesh_axes(("batch", "embed", "mlp"))
    P('data', None, 'model')
    """
    stack = getattr(_RULES, "stack", None)
    if stack is None:
        stack = _RULES.stack = []
    pairs = _rules_pairs(rules)
    stack.append(pairs)
    try:
        yield pairs
    finally:
        stack.pop()


def get_logical_axis_rules() -> tuple[tuple[str, Any], ...] | None:
    """The rules installed by the innermost :func:`logical_axis_rules`, or None.

    >>> import nnxlite as nnx
    >>> nnx.get_logical_axis_rules() is None
    True
    """
    stack = getattr(_RULES, "stack", None)
    return stack[-1] if stack else None


def _mesh_names(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def logical_to_mesh_axes(axes: Sequence[Any], rules: Rules | None = None, *, path: tuple = ()) -> PartitionSpec:
    """Translate logical axis names into a mesh ``PartitionSpec`` using ``rules``.

    ``rules`` defaults to the active :func:`logical_axis_rules`; with no rules
    at all, logical names are taken to be mesh axis names. Rules are applied
    in order, as in Flax: a rule claims its logical dimension only if that
    dimension is still unassigned and its mesh axes are not used yet by this
    spec, so listing ``('mlp', 'model')`` before ``('heads', 'model')`` gives
    ``'model'`` to ``'mlp'`` when a weight has both. Unlike Flax, a logical
    name with no rule at all is an error (map it to None to replicate), so a
    typo cannot silently replicate a large weight.

    >>> import nnxlite as nnx
    >>> nnx.logical_to_mesh_axes(("embed", "mlp"), rules={"embed": None, "mlp": "model"})
    P(None, 'model')
    >>> nnx.logical_to_mesh_axes(("heads", "mlp"), rules=[("mlp", "model"), ("heads", "model")])
    P(None, 'model')
    """
    return _mesh_spec(_normalize_axes(axes), _active_rules(rules), path)


def _active_rules(rules: Rules | None) -> tuple[tuple[str, Any], ...] | None:
    """``rules`` as pairs, else the ones installed by :func:`logical_axis_rules`, else None."""
    return _rules_pairs(rules) if rules is not None else get_logical_axis_rules()


def _mesh_spec(axes: tuple, pairs: tuple[tuple[str, Any], ...] | None, path: tuple) -> PartitionSpec:
    """:func:`logical_to_mesh_axes` for normalized ``axes`` and ``pairs``."""
    if pairs is None:
        return PartitionSpec(*axes)
    # One slot per logical name (a dimension may list several names).
    slots = [(d, name) for d, dim in enumerate(axes) for name in _mesh_names(dim)]
    known = {name for name, _ in pairs}
    missing = [name for _, name in slots if name not in known]
    if missing:
        where = f" at {_fmt_path(path)}" if path else ""
        raise KeyError(
            f"No logical axis rule for {missing[0]!r}{where} (sharding {axes}). Known logical names: "
            f"{sorted(known, key=str)}. Add a rule such as ({missing[0]!r}, 'model'), "
            f"or ({missing[0]!r}, None) to replicate that dimension."
        )
    assigned: list[Any] = [_UNASSIGNED] * len(slots)
    used: set[str] = set()
    for logical, mesh_axes in pairs:
        for i, (_, name) in enumerate(slots):
            if name != logical:
                continue
            # Like Flax, a rule only looks at the first slot with its name.
            wanted = _mesh_names(mesh_axes)
            if assigned[i] is _UNASSIGNED and not used.intersection(wanted):
                assigned[i] = wanted
                used.update(wanted)
            break
    out: list[list[str]] = [[] for _ in axes]
    for (d, _), mesh_axes in zip(slots, assigned):
        if mesh_axes is not _UNASSIGNED:
            out[d].extend(mesh_axes)
    return PartitionSpec(*(None if not m else m[0] if len(m) == 1 else tuple(m) for m in out))


_UNASSIGNED = object()


# ---------------------------------------------------------------------------------
# Specs and shardings for a whole State
# ---------------------------------------------------------------------------------
def _as_state(x: Any) -> State:
    if isinstance(x, State):
        return x
    if isinstance(x, Variable):
        raise TypeError("Pass a module or a State (e.g. nnx.state(model)), not a single Variable.")
    return graph.state(x)


def get_partition_spec(state_or_module: Any, *, rules: Rules | None = None) -> State:
    """A State with the same paths holding each Variable's ``PartitionSpec``.

    Variables without ``sharding`` metadata get ``PartitionSpec()``
    (replicated). Works on modules, on States from ``nnx.split``/``nnx.state``,
    and on abstract States of ``jax.ShapeDtypeStruct`` from ``jax.eval_shape``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> class M(nnx.Module):
    ...     def __init__(self):
    ...         self.w = nnx.Param(jnp.ones((4, 2)), sharding=("embed", "mlp"))
    ...         self.n = nnx.BatchStat(jnp.zeros(()))
    >>> specs = nnx.get_partition_spec(M(), rules=[("embed", "data"), ("mlp", None)])
    >>> specs["w"].value, specs["n"].value
    (P('data', None), P())
    """
    st = _as_state(state_or_module)
    s = st._structure
    pairs = _active_rules(rules)
    specs = []
    for i, (path, leaf) in enumerate(zip(s.paths, raw_leaves(st))):
        meta = dict(s.def_at(i)[1])
        axes = meta.get("sharding")
        if axes is None:  # flax's spellings of the same metadata
            axes = meta.get("out_sharding", meta.get("sharding_names"))
        if axes is None:
            specs.append(PartitionSpec())
            continue
        axes = _normalize_axes(axes)
        ndim = _ndim(leaf)
        if ndim is not None and len(axes) > ndim:
            raise ValueError(
                f"{_fmt_path(path)}: sharding {axes} names {len(axes)} dimension(s) but the value has "
                f"shape {tuple(np.shape(leaf))}. Fix the Variable's metadata with "
                f".set_metadata(sharding=...) (one name or None per dimension)."
            )
        specs.append(_mesh_spec(axes, pairs, path))
    return boxed_state(specs, s)


def _ndim(leaf: Any) -> int | None:
    shape = getattr(leaf, "shape", None)
    if shape is None:
        try:
            shape = np.shape(leaf)
        except Exception:
            return None
    return len(shape)


def get_named_sharding(state_or_module: Any, mesh: Mesh, *, rules: Rules | None = None) -> State:
    """A State with the same paths holding each Variable's ``NamedSharding`` on ``mesh``.

    Raises ``ValueError`` naming every path whose spec uses an axis the mesh
    does not have.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> mesh = jax.make_mesh((1,), ("model",))
    >>> layer = nnx.Linear(2, 4, ctx=nnx.context(0),
    ...     kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model")))
    >>> nnx.get_named_sharding(layer, mesh)["kernel"].spec
    P(None, 'model')
    """
    specs = get_partition_spec(state_or_module, rules=rules)
    names = set(mesh.axis_names)
    problems = []
    for path, spec in zip(specs.paths(), raw_leaves(specs)):
        unknown = [a for dim in spec for a in _mesh_names(dim) if a not in names]
        if unknown:
            problems.append(f"  {_fmt_path(path)}: {spec} uses {unknown}")
    if problems:
        raise ValueError(
            f"get_named_sharding: some specs use axes the mesh does not have (mesh axes: {tuple(mesh.axis_names)}).\n"
            + "\n".join(problems[:20])
            + "\nMap logical names to mesh axes with rules=[(logical, mesh_axis), ...] or nnx.logical_axis_rules(...)."
        )
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


def sharded_init(make_model: Callable[[], Any], mesh: Mesh, *, rules: Rules | None = None) -> Any:
    """Build ``make_model()`` with every array created directly in its sharded layout.

    The model is first traced abstractly (``jax.eval_shape``: nothing is
    allocated) to read its sharding metadata; then its state is created inside
    ``jax.jit(..., out_shardings=...)`` so no device ever holds a full copy of
    a sharded weight.

    >>> import jax, nnxlite as nnx
    >>> mesh = jax.make_mesh((1,), ("model",))
    >>> init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
    >>> layer = nnx.sharded_init(lambda: nnx.Linear(2, 4, kernel_init=init, ctx=nnx.context(0)), mesh)
    >>> layer.kernel.value.sharding.spec
    P(None, 'model')
    """
    graphdef, abstract = jax.eval_shape(lambda: graph.split(make_model()))
    shardings = get_named_sharding(abstract, mesh, rules=rules)
    state = jax.jit(lambda: graph.split(make_model())[1], out_shardings=shardings)()
    return graph.merge(graphdef, state)
