"""Mapping over modules: ``nnx.vmap``, ``nnx.pmap``, ``nnx.shard_map``.

What ``jax.vmap``/``jax.pmap`` need on top of the lifting core: per-Variable
axes from ``in_axes``/``out_axes`` entries, one RNG key per lane, and a
restart into the general path when the function returns or creates modules
(stacked along ``out_axes``). ``shard_map`` takes PartitionSpecs instead of
axes and gives each device its own RNG keys by folding in its mesh index.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from nnxlite import filters as filterlib
from nnxlite.state import State, _fmt_path
from nnxlite.transforms.axis_metadata import AxisMetadata, axis_metadata, remove_axes, restore_axes
from nnxlite.transforms.lift_types import is_lift_type
from nnxlite.transforms.modes import check_mode
from nnxlite.transforms._lift import (
    _KEEP,
    _SPLIT,
    _apply,
    _axis_size,
    _bind_keywords,
    _call_entries,
    _check_axis,
    _check_returned_axes,
    _check_shared_entries,
    _MISSING,
    _table_lookup,
    is_table_entry,
    _draw_split_keys,
    _rewinds_draws_on_error,
    _dyn_axes,
    _enter,
    _fresh_count,
    _Inputs,
    _is_axis_entry,
    _is_node,
    _leave,
    _Meta,
    _new_var_specs,
    _prefix_entries,
    _scatter,
    _split_streams,
    _state_specs,
    _tree_unflatten,
    _var_label,
    _write,
)
from nnxlite.variables import RngState

__all__ = ["vmap", "pmap", "shard_map"]


class _Restart(Exception):
    """Raised inside a vmap body whose outputs need the general (module-building) path."""

    def __init__(self, meta: _Meta):
        super().__init__("internal: vmap restart")
        self.meta = meta



def _out_entries(out_axes: Any, meta_or_out, is_entry, what: str) -> tuple[list, list]:
    """Entries of ``out_axes`` for the output: (one per output leaf, one per output module)."""
    if isinstance(meta_or_out, _Meta):
        meta = meta_or_out
        leaves = [_OutNode() for _ in range(meta.out_treedef.num_leaves)]  # placeholders that are leaves
        tree = _tree_unflatten(meta.out_treedef, leaves)
        node_pos = meta.out_node_pos
    else:
        tree = meta_or_out
        node_pos = ()
    entries = _prefix_entries(out_axes, tree, is_entry, what)
    return entries, [entries[p] for p in node_pos]


class _OutNode:
    """Placeholder leaf used to match ``out_axes`` against an output's structure."""


def _fast_out_axes(out_axes: Any, what: str) -> Any:
    """``out_axes`` for the first (array-only) pass: ``nnx.StateAxes`` entries, which only modules take, as 0.

    JAX accepts only ints and None as leaves; a module in the output restarts
    the call on the general path, which reads the StateAxes. An output that
    holds no module at a StateAxes position is an error, raised there.
    """
    if not _has_lift_type(out_axes):
        return out_axes
    return jax.tree_util.tree_map(lambda x: 0 if is_lift_type(x) else x, out_axes, is_leaf=is_lift_type)


def _has_lift_type(spec: Any) -> bool:
    return any(is_lift_type(x) for x in jax.tree_util.tree_leaves(spec, is_leaf=is_lift_type))


def _check_no_lift_type_on_arrays(out_axes: Any, out: Any, what: str) -> None:
    """A ``StateAxes`` out_axes entry that lands on arrays (no module there) is a mistake: say so."""
    for entry in _prefix_entries(out_axes, out, _is_axis_entry, f"{what} out_axes"):
        if is_lift_type(entry):
            raise ValueError(
                f"{what} out_axes: {entry!r} applies to modules, but the output holds arrays at its "
                "position; give an int or None there."
            )


def vmap(
    f: Callable | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_name: Any = None,
    axis_size: int | None = None,
    spmd_axis_name: Any = None,
    transform_metadata: Mapping[str, Any] = {},
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Callable:
    """``jax.vmap`` for functions of modules, with per-lane random keys by default.

    Module arguments are mapped according to their ``in_axes`` entry (see the
    module docstring: an int, ``None``, or a dict ``{filter: axis}``); their
    RNG streams are split so that every lane draws different keys. Modules
    created inside come back stacked along ``out_axes`` (a layer stack built
    by vmapping a constructor):

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> ctx = nnx.context(0)
    >>> stack = nnx.vmap(lambda ctx: nnx.Linear(3, 3, ctx=ctx), axis_size=4)(ctx)
    >>> stack.kernel.shape, bool((stack.kernel[0] != stack.kernel[1]).any())
    ((4, 3, 3), True)
    >>> ys = nnx.vmap(lambda layer, x: layer(x), in_axes=(0, None))(stack, jnp.ones((2, 3)))
    >>> ys.shape
    (4, 2, 3)

    Args:
      f: the function (or use ``@nnx.vmap(...)`` as a decorator factory).
      in_axes: one entry per positional argument, or one for all (keyword
        arguments are mapped over axis 0, as in JAX).
      out_axes: a prefix of the output; entries for returned modules may be
        dicts ``{filter: axis}``. State updated in place keeps its input axis.
      axis_name: name for collectives (``jax.lax.pmean(x, axis_name)``), e.g.
        ``BatchNorm(axis_name=...)`` to share statistics across lanes.
      axis_size: the number of lanes when no argument is mapped (constructors).
      spmd_axis_name: passed to ``jax.vmap``.
      transform_metadata: ``{nnx.PARTITION_NAME: name}`` keeps Variables'
        sharding metadata in step with the mapped axis: the entry at that axis
        is removed inside and put back after; Variables created inside get
        ``name`` inserted at their ``out_axes`` axis (see
        :mod:`nnxlite.transforms.axis_metadata`).
      graph, graph_updates: flax.nnx's mode switches, accepted (graph
        semantics are kept).

    Broadcast state (axis ``None``) that lanes change differently cannot be
    written back and raises an error naming it.
    """
    if f is None:
        return functools.partial(
            vmap, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name, axis_size=axis_size,
            spmd_axis_name=spmd_axis_name, transform_metadata=transform_metadata, graph=graph,
            graph_updates=graph_updates,
        )
    check_mode(graph, graph_updates, "nnx.vmap")

    def mapper(fn, in_spec, out_spec, n):
        return jax.vmap(
            fn, in_axes=in_spec, out_axes=out_spec, axis_name=axis_name, axis_size=n, spmd_axis_name=spmd_axis_name
        )

    return _mapped(f, "nnx.vmap", in_axes, out_axes, axis_size, mapper, axis_metadata(transform_metadata, "nnx.vmap"))


def _new_var_axes_hook(edits: AxisMetadata | None, meta: _Meta, in_root_entries: list, node_entries: list, what: str):
    """``_apply``'s ``on_new``: add the stacked axis to the metadata of each Variable created inside."""
    if edits is None:
        return None
    axes = _new_var_specs(meta, in_root_entries, node_entries, 0, (int, None), f"{what} out_axes")
    return _axes_hook(edits, axes)


def _axes_hook(edits: AxisMetadata | None, axes: list):
    if edits is None:
        return None

    def hook(k, var):
        if isinstance(axes[k], int):
            edits.add(var, axes[k])

    return hook


def _mapped(
    f: Callable, what: str, in_axes: Any, out_axes: Any, axis_size: int | None, mapper: Callable,
    edits: AxisMetadata | None = None,
) -> Callable:
    """The body of :func:`vmap` and :func:`pmap`: ``mapper(fn, in_axes, out_axes, n)`` is the JAX primitive."""
    allowed = (int, None, _SPLIT)

    @_rewinds_draws_on_error
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        args, kwargs = _bind_keywords(f, in_axes, args, kwargs)
        inputs = _Inputs(args, kwargs)
        entries = _call_entries(in_axes, args, kwargs, 0, _is_axis_entry, f"{what} in_axes")
        specs = _state_specs(inputs, entries, 0, allowed, f"{what} in_axes")
        streams = _split_streams(inputs, specs, what)
        key_idx, count_idx = [jk for _, jk, _ in streams], [jc for _, _, jc in streams]
        split_vars = {*key_idx, *count_idx}
        kept = [j for j in range(len(specs)) if j not in split_vars]
        dyn_axes = _dyn_axes(entries, inputs.mask, (int, None), f"{what} in_axes")
        variables = inputs.variables
        n = _axis_size(
            [variables[j].raw_value for j in kept] + inputs.others,
            [specs[j] for j in kept] + dyn_axes,
            axis_size,
            what,
        )
        if n is None:
            raise ValueError(f"{what}: nothing is mapped, so the number of lanes is unknown; pass axis_size=.")
        keys = _draw_split_keys(streams, n)
        state_in = [variables[j].raw_value for j in kept]
        state_axes = [specs[j] for j in kept]
        counts = [_fresh_count(variables[j].raw_value) for j in count_idx]
        gd = inputs.graphdef
        n_vars = len(specs)
        changed_broadcast: list = []
        unbatched_new: list = []
        lift_out = _has_lift_type(out_axes)
        cell: list = []

        def body(general: bool):
            def run(state, lane_keys, others):
                leaves = _scatter(n_vars, None, (kept, state), (key_idx, lane_keys), (count_idx, counts))
                a, kw, roots, pre = _enter(gd, inputs.treedef, inputs.mask, leaves, others)
                mapped = remove_axes(edits, pre, specs, inputs)
                out = f(*a, **kw)
                restore_axes(edits, mapped)
                aligned, extra, plain, meta = _leave(pre, roots, out, leaves)
                changed_broadcast[:] = [j for j in kept if specs[j] is None and aligned[j] is not leaves[j]]
                if meta is not None and not general:
                    raise _Restart(meta)
                if not general and lift_out:
                    _check_no_lift_type_on_arrays(out_axes, out, what)
                new_state = [aligned[j] for j in kept]
                if not general:
                    return new_state, out
                cell[:] = [meta]
                return new_state, extra, plain

            return run

        def run_vmap(fn, out_spec):
            try:
                return mapper(fn, (state_axes, 0, dyn_axes), out_spec, n)(state_in, keys, inputs.others)
            except ValueError as err:
                if (changed_broadcast or unbatched_new) and "None" in str(err):
                    paths = [_var_label(inputs.flat, j) for j in changed_broadcast] + unbatched_new
                    raise ValueError(
                        f"{what}: broadcast state (axis None) got a different value in each lane, so it "
                        f"cannot be written back: {', '.join(paths)}. Map it (an int axis in the in_axes or "
                        "out_axes entry of its module), keep lanes in sync with axis_name= and a collective "
                        "(e.g. BatchNorm(axis_name=...)), or do not update it (model.eval())."
                    ) from err
                raise

        try:
            new_state, out = run_vmap(body(False), (state_axes, _fast_out_axes(out_axes, what)))
            meta, extra = None, []
        except _Restart as restart:
            meta = restart.meta
            out_entries, node_entries = _out_entries(out_axes, meta, _is_axis_entry, f"{what} out_axes")
            plain_axes = [
                None if p in meta.out_node_pos else _check_axis(e, (int, None), f"{what} out_axes")
                for p, e in enumerate(out_entries)
            ]
            root_pos = inputs.root_positions()
            in_root_entries = [entries[p] for p in root_pos]
            _check_returned_axes(meta, node_entries, specs, 0, (int, None), f"{what} out_axes")
            extra_axes = _new_var_specs(meta, in_root_entries, node_entries, 0, (int, None), f"{what} out_axes")
            unbatched_new[:] = [
                f"{_fmt_path(meta.graphdef.paths[j][1:])} (a new {meta.graphdef.vardefs[j][0].__name__})"
                for j, ax in zip(meta.new_var_indices(), extra_axes)
                if ax is None
            ]
            new_state, extra, out = run_vmap(body(True), (state_axes, extra_axes, plain_axes))
            meta = cell[0]
        if meta is None:
            _write([variables[j] for j in kept], new_state)
            return out
        on_new = _axes_hook(edits, extra_axes)
        return _apply(meta, _scatter(n_vars, _KEEP, (kept, new_state)), extra, out, inputs.flat, on_new)

    return wrapper


# =====================================================================================
# pmap
# =====================================================================================
def pmap(
    f: Callable | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_name: Any = None,
    axis_size: int | None = None,
    devices: Any = None,
    backend: str | None = None,
    static_broadcasted_argnums: int | Sequence[int] = (),
    donate_argnums: int | Sequence[int] = (),
    transform_metadata: Mapping[str, Any] = {},
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Callable:
    """``jax.pmap`` for functions of modules: :func:`vmap`'s rules, one lane per device.

    Module entries in ``in_axes``/``out_axes`` are as for :func:`vmap`. Every
    device gets its own RNG keys by default (a stream draws one key, split
    into one per device); ``{'dropout': None}`` in a module's entry gives
    every device the same dropout keys.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> n = jax.local_device_count()
    >>> ctx = nnx.context(dropout=0)
    >>> keys = nnx.pmap(lambda c, x: jax.random.uniform(c.dropout(), ()) + x, in_axes=(0, 0))(ctx, jnp.zeros(n))
    >>> keys.shape == (n,)
    True

    Args:
      f: the function (or use ``@nnx.pmap(...)``).
      in_axes, out_axes, axis_name, axis_size: as for :func:`vmap` (and ``jax.pmap``).
      devices, backend: passed to ``jax.pmap``.
      static_broadcasted_argnums: positional arguments passed to every device
        as Python values (hashable, not mapped), as in ``jax.pmap``.
      donate_argnums: accepted for flax/JAX compatibility; results are the
        same, but buffers are not donated (module state is written back to
        the caller's Variables, which must stay valid).
      transform_metadata, graph, graph_updates: as for :func:`vmap`.
    """
    if f is None:
        return functools.partial(
            pmap, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name, axis_size=axis_size, devices=devices,
            backend=backend, static_broadcasted_argnums=static_broadcasted_argnums, donate_argnums=donate_argnums,
            transform_metadata=transform_metadata, graph=graph, graph_updates=graph_updates,
        )
    check_mode(graph, graph_updates, "nnx.pmap")
    statics = _argnums(static_broadcasted_argnums)
    _argnums(donate_argnums)

    def mapper(fn, in_spec, out_spec, n):
        return jax.pmap(
            fn, in_axes=in_spec, out_axes=out_spec, axis_name=axis_name, axis_size=n, devices=devices, backend=backend
        )

    edits = axis_metadata(transform_metadata, "nnx.pmap")
    if not statics:
        return _mapped(f, "nnx.pmap", in_axes, out_axes, axis_size, mapper, edits)

    @functools.wraps(f)
    def with_statics(*args, **kwargs):
        # static_broadcasted_argnums: those arguments are closed over (Python values, as in JAX).
        n = len(args)
        fixed = {i % n: args[i % n] for i in statics if -n <= i < n}
        axes = in_axes
        if isinstance(in_axes, (tuple, list)) and len(in_axes) == n:
            axes = tuple(a for i, a in enumerate(in_axes) if i not in fixed)

        def inner(*dyn, **kw):
            it = iter(dyn)
            return f(*[fixed[i] if i in fixed else next(it) for i in range(n)], **kw)

        rest = tuple(a for i, a in enumerate(args) if i not in fixed)
        return _mapped(inner, "nnx.pmap", axes, out_axes, axis_size, mapper, edits)(*rest, **kwargs)

    return with_statics


def _argnums(x: int | Sequence[int]) -> tuple:
    return (x,) if isinstance(x, int) else tuple(x)


# =====================================================================================
# shard_map
# =====================================================================================
_P = jax.sharding.PartitionSpec


def _is_spec_entry(x: Any) -> bool:
    return x is None or isinstance(x, (_P, Mapping)) or _is_node(x)


def _spec_of(entry: Any, path: tuple, var: Any, what: str) -> Any:
    """The PartitionSpec (or ``'split'`` for an RNG stream) of one Variable under its argument's entry."""
    if is_table_entry(entry):  # nnx.get_partition_spec(model), nnx.prefix(model, {...})
        spec = _table_lookup(entry, path)
        return _P() if spec is _MISSING or spec is None else spec
    if isinstance(entry, Mapping):
        for key, spec in entry.items():
            if filterlib.to_predicate(key)(path, var):
                if spec is None:
                    return _P()
                if spec == _SPLIT or isinstance(spec, _P):
                    return spec
                raise ValueError(f"{what}: invalid entry {spec!r} for {key!r}; expected a PartitionSpec, None or 'split'.")
        entry = _P()
    if isinstance(var, RngState):
        return _SPLIT
    return _P() if entry is None else entry


def shard_map(
    f: Callable | None = None,
    *,
    mesh: Any,
    in_specs: Any,
    out_specs: Any,
    axis_names: Any = frozenset(),
    check_vma: bool = True,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Callable:
    """``jax.shard_map`` for functions of modules, with per-device RNG keys by default.

    ``in_specs`` has one entry per positional argument (or one for all). For a
    module the entry is a ``PartitionSpec`` for all its Variables, a dict
    ``{filter: PartitionSpec}`` (first match; ``P()`` for the rest), or a State
    of specs by path (``nnx.get_partition_spec(...)``). Module state comes
    back with the same specs, updates written into the caller's Variables.
    ``out_specs`` is a prefix of the (non-module) output, as in JAX.

    **RNG streams are split per device.** A stream draws one key outside
    (advancing the caller's stream); inside, each device folds its index over
    the mesh axes in, so a ``Dropout`` draws a different mask on every device
    (flax.nnx's ``shard_map`` hands every device the same key). To give every
    device the same keys, name the stream in the dict: ``{'dropout': None}``
    (its stream is then replicated and carried, as any ``P()`` state).

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> from jax.sharding import PartitionSpec as P
    >>> mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> drop = nnx.Dropout(0.5, ctx=nnx.context(dropout=0))
    >>> f = nnx.shard_map(lambda m, x: m(x), mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"))
    >>> f(drop, jnp.ones((jax.device_count() * 4,))).shape == (jax.device_count() * 4,)
    True

    Args:
      f: the function (or use ``@nnx.shard_map(...)``).
      mesh, in_specs, out_specs, axis_names, check_vma: as for ``jax.shard_map``;
        RNG keys are made distinct over the manual axes (``axis_names``, or all
        mesh axes).
      graph, graph_updates: flax.nnx's mode switches, accepted (graph semantics kept).

    The function must not change the structure of its modules or return modules.
    """
    if f is None:
        return functools.partial(
            shard_map, mesh=mesh, in_specs=in_specs, out_specs=out_specs, axis_names=axis_names, check_vma=check_vma,
            graph=graph, graph_updates=graph_updates,
        )
    what = "nnx.shard_map"
    check_mode(graph, graph_updates, what)
    manual = tuple(a for a in mesh.axis_names if not axis_names or a in axis_names)

    @functools.wraps(f)
    def wrapper(*args):
        inputs = _Inputs(args, {})
        entries = _call_entries(in_specs, args, {}, None, _is_spec_entry, f"{what} in_specs")
        root_pos = inputs.root_positions()
        specs = []
        if inputs.flat is not None:
            specs = [
                _spec_of(entries[root_pos[p[0]]], p[1:], v, what)
                for p, v in zip(inputs.flat.graphdef.paths, inputs.flat.variables)
            ]
            _check_shared_entries(
                inputs, entries, specs, lambda e, rel, v: _spec_of(e, rel, v, what), f"{what} in_specs", kind="spec"
            )
        streams = _split_streams(inputs, specs, what)
        key_idx, count_idx = [jk for _, jk, _ in streams], [jc for _, _, jc in streams]
        split_vars = {*key_idx, *count_idx}
        kept = [j for j in range(len(specs)) if j not in split_vars]
        variables = inputs.variables
        keys = [stream() for stream, _, _ in streams]
        counts = [_fresh_count(variables[j].raw_value) for j in count_idx]
        dyn_specs = []
        for e, m in zip(entries, inputs.mask):
            if not m:
                if isinstance(e, Mapping):
                    raise ValueError(f"{what} in_specs: a dict {{filter: spec}} entry applies to modules only.")
                dyn_specs.append(_P() if e is None else e)
        state_specs = [specs[j] for j in kept]
        gd, n_vars = inputs.graphdef, len(specs)

        def body(state, lane_keys, others):
            index = 0
            for name in manual:  # this device's position over the manual mesh axes
                index = index * mesh.shape[name] + jax.lax.axis_index(name)
            lane_keys = [jax.random.fold_in(k, index) for k in lane_keys]
            leaves = _scatter(n_vars, None, (kept, state), (key_idx, lane_keys), (count_idx, counts))
            a, kw, roots, pre = _enter(gd, inputs.treedef, inputs.mask, leaves, others)
            out = f(*a, **kw)
            aligned, _, out, meta = _leave(pre, roots, out, leaves)
            if meta is not None:
                raise ValueError(
                    f"{what}: the function changed the structure of a module or returned a module; inside "
                    "shard_map module state is sharded, so create modules and Variables outside and return arrays."
                )
            return [aligned[j] for j in kept], out

        # Under jit: called eagerly, jax.shard_map wants inputs already laid out as in_specs says.
        new_state, out = jax.jit(jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(state_specs, [_P()] * len(keys), dyn_specs),
            out_specs=(state_specs, out_specs),
            axis_names=set(manual) if axis_names else frozenset(),
            check_vma=check_vma,
        ))([variables[j].raw_value for j in kept], keys, inputs.others)
        _write([variables[j] for j in kept], new_state)
        return out

    return wrapper
