"""``nnx.vmap``: what ``jax.vmap`` needs on top of the lifting core.

Per-Variable axes from ``in_axes``/``out_axes`` entries, one RNG key per lane,
and a restart into the general path when the function returns or creates
modules (stacked along ``out_axes``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from nnxlite.state import _fmt_path
from nnxlite.transforms.modes import check_mode
from nnxlite.transforms._lift import (
    _KEEP,
    _SPLIT,
    _apply,
    _axis_size,
    _call_entries,
    _check_axis,
    _check_returned_axes,
    _draw_split_keys,
    _rewinds_draws_on_error,
    _dyn_axes,
    _enter,
    _fresh_count,
    _Inputs,
    _is_axis_entry,
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

__all__ = ["vmap"]


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


def vmap(
    f: Callable | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_name: Any = None,
    axis_size: int | None = None,
    spmd_axis_name: Any = None,
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

    Broadcast state (axis ``None``) that lanes change differently cannot be
    written back and raises an error naming it.
    """
    if f is None:
        return functools.partial(
            vmap, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name, axis_size=axis_size,
            spmd_axis_name=spmd_axis_name, graph=graph, graph_updates=graph_updates,
        )
    check_mode(graph, graph_updates, "nnx.vmap")
    what = "nnx.vmap"
    allowed = (int, None, _SPLIT)

    @_rewinds_draws_on_error
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
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
        cell: list = []

        def body(general: bool):
            def run(state, lane_keys, others):
                leaves = _scatter(n_vars, None, (kept, state), (key_idx, lane_keys), (count_idx, counts))
                a, kw, roots, pre = _enter(gd, inputs.treedef, inputs.mask, leaves, others)
                out = f(*a, **kw)
                aligned, extra, plain, meta = _leave(pre, roots, out, leaves)
                changed_broadcast[:] = [j for j in kept if specs[j] is None and aligned[j] is not leaves[j]]
                if meta is not None and not general:
                    raise _Restart(meta)
                new_state = [aligned[j] for j in kept]
                if not general:
                    return new_state, out
                cell[:] = [meta]
                return new_state, extra, plain

            return run

        def run_vmap(fn, out_spec):
            try:
                return jax.vmap(
                    fn,
                    in_axes=(state_axes, 0, dyn_axes),
                    out_axes=out_spec,
                    axis_name=axis_name,
                    axis_size=n,
                    spmd_axis_name=spmd_axis_name,
                )(state_in, keys, inputs.others)
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
            new_state, out = run_vmap(body(False), (state_axes, out_axes))
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
        return _apply(meta, _scatter(n_vars, _KEEP, (kept, new_state)), extra, out, inputs.flat)

    return wrapper
