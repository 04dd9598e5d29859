"""Loops over modules: ``nnx.scan``, ``nnx.while_loop``, ``nnx.fori_loop``.

In ``scan`` module state is either carried from step to step
(``nnx.Carry``/``None``) or sliced per step and re-stacked (an int axis: a
stack of layers); RNG streams get one key per step. ``while_loop`` and
``fori_loop`` carry everything: the carry's modules must keep their
structure, and their RNG streams advance from one iteration to the next.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite import graph as graphlib
from nnxlite.transforms.axis_metadata import axis_metadata, remove_axes, restore_axes
from nnxlite.transforms.modes import check_mode
from nnxlite.transforms._lift import (
    _KEEP,
    _SPLIT,
    Carry,
    _apply,
    _axis_size,
    _bind_keywords,
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
    _is_node,
    _leave,
    _new_var_specs,
    _prefix_entries,
    _scatter,
    _split_streams,
    _state_specs,
    _tree_flatten,
    _tree_unflatten,
    _write,
)

__all__ = ["scan", "while_loop", "fori_loop"]


def scan(
    f: Callable | None = None,
    *,
    in_axes: Any = (Carry, 0),
    out_axes: Any = (Carry, 0),
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    _split_transpose: bool = False,
    transform_metadata: Mapping[str, Any] = {},
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Callable:
    """``jax.lax.scan`` for functions of modules: run a stack of layers, or a loop.

    ``f`` is called once per step with the arguments sliced according to
    ``in_axes``: ``nnx.Carry`` marks the carried argument, an int an argument
    scanned along that axis, ``None`` one passed whole to every step. A module
    given an int (a stacked layer stack) is sliced, one layer per step, and its
    updated state re-stacked; a module given ``None`` or ``nnx.Carry`` has its
    state carried from step to step. RNG streams are split per step (see the
    module docstring). ``out_axes`` mirrors the output: ``nnx.Carry`` for the
    new carry (same structure as the carry argument), an int for per-step
    outputs, which are stacked.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> stack = nnx.vmap(lambda ctx: nnx.Linear(3, 3, ctx=ctx), axis_size=5)(nnx.context(0))
    >>> forward = nnx.scan(lambda x, layer: layer(x), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    >>> forward(jnp.ones((2, 3)), stack).shape
    (2, 3)

    Args:
      f: the step function (or use ``@nnx.scan(...)`` as a decorator factory).
      in_axes: one entry per positional argument (keyword arguments are
        passed whole to every step).
      out_axes: ``nnx.Carry``, an int, or a tuple of them matching the output.
      length: number of steps when nothing is scanned.
      reverse, unroll, _split_transpose: as in ``jax.lax.scan``.
      transform_metadata: ``{nnx.PARTITION_NAME: name}``: scanned Variables
        lose the sharding-metadata entry of their scanned axis inside the
        step and get it back after; Variables created inside get ``name`` at
        their ``out_axes`` axis (see :mod:`nnxlite.transforms.axis_metadata`).
      graph, graph_updates: flax.nnx's mode switches, accepted (graph
        semantics are kept).

    Variables and sub-modules cannot be added to input modules inside a scan
    (the state is stacked or carried); create them before.
    """
    if f is None:
        return functools.partial(
            scan, in_axes=in_axes, out_axes=out_axes, length=length, reverse=reverse, unroll=unroll,
            _split_transpose=_split_transpose, transform_metadata=transform_metadata, graph=graph,
            graph_updates=graph_updates,
        )
    check_mode(graph, graph_updates, "nnx.scan")
    if _has_carry(in_axes) != _has_carry(out_axes):
        raise ValueError(
            "nnx.scan: If one of in_axes or out_axes has Carry, the other must also have Carry (the carried "
            f"value goes in and comes out); got in_axes={in_axes!r} and out_axes={out_axes!r}."
        )
    what = "nnx.scan"
    edits = axis_metadata(transform_metadata, what)
    scan_kwargs = {"_split_transpose": True} if _split_transpose else {}
    allowed = (int, None, Carry, _SPLIT)

    @_rewinds_draws_on_error
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        args, kwargs = _bind_keywords(f, in_axes, args, kwargs)
        if in_axes is Carry and len(args) != 1:
            raise ValueError(
                f"{what}: When in_axes=Carry, the function must take exactly one argument (the carry), got "
                f"{len(args)}; give one entry per argument instead, e.g. in_axes=(nnx.Carry, 0)."
            )
        inputs = _Inputs(args, kwargs)
        entries = _call_entries(in_axes, args, kwargs, None, _is_axis_entry, f"{what} in_axes")
        raw_specs = _state_specs(inputs, entries, 0, allowed, f"{what} in_axes")
        specs = ["carry" if s is None or s is Carry else s for s in raw_specs]
        streams = _split_streams(inputs, specs, what)
        key_idx, count_idx = [jk for _, jk, _ in streams], [jc for _, _, jc in streams]
        split_vars = {*key_idx, *count_idx}
        n_vars = len(specs)
        carried = [j for j in range(n_vars) if specs[j] == "carry" and j not in split_vars]
        scanned = [j for j in range(n_vars) if isinstance(specs[j], int) and j not in split_vars]
        dyn_entries = _dyn_axes(entries, inputs.mask, (int, None, Carry), f"{what} in_axes")
        variables = inputs.variables
        others = inputs.others
        n = _axis_size(
            [variables[j].raw_value for j in scanned] + [x for x, e in zip(others, dyn_entries) if isinstance(e, int)],
            [specs[j] for j in scanned] + [e for e in dyn_entries if isinstance(e, int)],
            length,
            what,
        )
        if n is None:
            raise ValueError(f"{what}: nothing is scanned, so the number of steps is unknown; pass length=.")
        keys = _draw_split_keys(streams, n)
        counts = [_fresh_count(variables[j].raw_value) for j in count_idx]
        carry_state = [variables[j].raw_value for j in carried]
        xs_state = [_to_front(variables[j].raw_value, specs[j]) for j in scanned]
        carry_dyn = [x for x, e in zip(others, dyn_entries) if e is Carry]
        xs_dyn = [_to_front(x, e) for x, e in zip(others, dyn_entries) if isinstance(e, int)]
        gd = inputs.graphdef
        # Which argument leaves are carry (for the identity check of carried modules).
        carry_leaf_pos = [i for i, e in enumerate(entries) if e is Carry]
        cell: dict = {}

        def body(carry, xs):
            c_state, c_dyn = carry
            x_state, step_keys, x_dyn = xs
            leaves = _scatter(
                n_vars, None, (carried, c_state), (scanned, x_state), (key_idx, step_keys), (count_idx, counts)
            )
            it_c, it_x = iter(c_dyn), iter(x_dyn)
            step_others = [next(it_c) if e is Carry else next(it_x) if isinstance(e, int) else x for x, e in zip(others, dyn_entries)]
            a, kw, roots, pre = _enter(gd, inputs.treedef, inputs.mask, leaves, step_others)
            mapped = remove_axes(edits, pre, specs, inputs)
            out = f(*a, **kw)
            restore_axes(edits, mapped)
            aligned, extra, plain, meta = _leave(pre, roots, out, leaves)
            if meta is not None and meta.in_changed:
                raise ValueError(
                    f"{what}: the step function changed the structure of an input module (added, removed "
                    "or replaced an attribute, sub-module or Variable). Inside scan the state is stacked "
                    "or carried, so its structure must stay fixed: create every Variable before the scan."
                )
            out_leaves, out_treedef = _tree_flatten(out, is_leaf=_is_node)
            out_entries = _prefix_entries(out_axes, out, _is_axis_entry, f"{what} out_axes")
            carry_out, ys_plain = [], []
            arg_leaves, _ = _tree_flatten((a, kw), is_leaf=_is_node)
            in_carry = [arg_leaves[i] for i in carry_leaf_pos]
            out_carry = []
            for x, e in zip(out_leaves, out_entries):
                if e is Carry:
                    out_carry.append(x)
                elif not (isinstance(e, Mapping) and _is_node(x)):  # dicts are for module outputs
                    _check_axis(e, (int,), f"{what} out_axes (use nnx.Carry or an int)")
            if len(out_carry) == len(in_carry) and any(
                _is_node(i) and _is_node(o) and i is not o for i, o in zip(in_carry, out_carry)
            ):
                swapped = next(o for i, o in zip(in_carry, out_carry) if _is_node(i) and i is not o)
                raise ValueError(
                    f"{what}: Carry references must be the same between iterations (scan Variable identity must "
                    f"be preserved across iterations): the step function returned a new {type(swapped).__name__} "
                    "in the carry instead of the one it was given. Update the carried object in place "
                    "(e.g. count.value += 1) and return it."
                )
            if len(out_carry) != len(in_carry) or any(
                _is_node(i) != _is_node(o) or (_is_node(i) and i is not o) for i, o in zip(in_carry, out_carry)
            ):
                raise ValueError(
                    f"{what}: the carry returned by the step function must have the same structure as the "
                    f"carry argument (the leaves marked nnx.Carry): {len(in_carry)} leaves in, "
                    f"{len(out_carry)} out; modules in the carry must be returned as the same objects."
                )
            for x, e in zip(out_leaves, out_entries):
                if _is_node(x):
                    continue
                (carry_out if e is Carry else ys_plain).append(x)
            cell["meta"] = meta
            cell["out_treedef"] = out_treedef
            cell["out_entries"] = out_entries
            new_carry = ([aligned[j] for j in carried], carry_out)
            ys = ([aligned[j] for j in scanned], extra, ys_plain)
            return new_carry, ys

        (c_state, c_dyn), (x_state, extra, ys_plain) = jax.lax.scan(
            body, (carry_state, carry_dyn), (xs_state, keys, xs_dyn), length=n, reverse=reverse, unroll=unroll,
            **scan_kwargs,
        )
        meta, out_treedef, out_entries = cell["meta"], cell["out_treedef"], cell["out_entries"]
        x_state = [_from_front(x, specs[j]) for j, x in zip(scanned, x_state)]
        aligned = _scatter(n_vars, _KEEP, (carried, c_state), (scanned, x_state))
        plain = []
        it_c, it_y = iter(c_dyn), iter(ys_plain)
        node_pos = set(meta.out_node_pos) if meta is not None else set()
        for p, e in enumerate(out_entries):
            if p in node_pos:
                plain.append(None)
            elif e is Carry:
                plain.append(next(it_c))
            else:
                plain.append(_from_front(next(it_y), e))
        if meta is None:
            for j in carried + scanned:
                variables[j].raw_value = aligned[j]
            return _tree_unflatten(out_treedef, plain)
        node_entries = [out_entries[p] for p in meta.out_node_pos]
        # A returned input module keeps its layout: scanned at its in_axes axis, or carried.
        as_carry = lambda ax: Carry if ax is None or ax == "carry" else ax  # noqa: E731
        _check_returned_axes(
            meta, [_carry_entry(e) for e in node_entries], [as_carry(s) for s in specs], 0, (int, None, Carry),
            f"{what} out_axes",
        )
        in_root_entries = [entries[p] for p in inputs.root_positions()]
        extra_axes = _new_var_specs(meta, in_root_entries, node_entries, 0, (int,), f"{what} out_axes")
        extra = [_from_front(x, ax) for x, ax in zip(extra, extra_axes)]
        on_new = None
        if edits is not None:
            on_new = lambda k, var: edits.add(var, extra_axes[k])  # noqa: E731
        return _apply(meta, aligned, extra, plain, inputs.flat, on_new)

    return wrapper


def _has_carry(spec: Any) -> bool:
    """Does an in_axes/out_axes spec mark something as ``nnx.Carry`` (anywhere in it)?"""
    if spec is Carry:
        return True
    if isinstance(spec, (tuple, list)):
        return any(_has_carry(x) for x in spec)
    if isinstance(spec, Mapping):
        return any(_has_carry(x) for x in spec.values())
    return False


def _carry_entry(entry: Any) -> Any:
    """An out_axes entry with None read as Carry (scan treats both as carried state)."""
    if entry is None:
        return Carry
    if isinstance(entry, Mapping):
        return type(entry)({k: (Carry if v is None else v) for k, v in entry.items()}) if type(entry) is dict else entry
    return entry


def _to_front(x: Any, axis: int) -> Any:
    return x if axis == 0 else jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, axis, 0), x)


def _from_front(x: Any, axis: int) -> Any:
    return x if axis == 0 else jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, axis), x)


# =====================================================================================
# while_loop, fori_loop
# =====================================================================================
def _loop_parts(what: str, init_val: Any):
    """The carried value's pieces: ``(inputs, to_value, from_value)`` for a lax loop over modules.

    ``to_value(carry)`` rebuilds the value (fresh modules) from ``(state
    leaves, other leaves)``; ``from_value(value, roots, pre)`` takes the body's
    result back to leaves, checking that it has the same structure and holds
    the same modules as the value the body was given.
    """
    inputs = _Inputs((init_val,), {})
    gd, treedef, mask = inputs.graphdef, inputs.treedef, inputs.mask

    def to_value(carry):
        state, others = carry
        a, _, roots, pre = _enter(gd, treedef, mask, state, others)
        return a[0], roots, pre

    def from_value(out, roots, pre):
        leaves, out_treedef = _tree_flatten(((out,), {}), is_leaf=_is_node)
        nodes = [x for x in leaves if _is_node(x)]
        if out_treedef != treedef or len(nodes) != len(roots) or any(a is not b for a, b in zip(nodes, roots)):
            raise ValueError(
                f"{what}: the body must return a value of the same structure as the one it is given (the "
                f"loop carry), with the same modules in the same places; got {out_treedef} for {treedef}."
            )
        if pre is not None:
            post = graphlib._traverse(roots)
            data = frozenset(pre.graphdef._data_leaves)  # plain array attributes have no identity to keep
            if post.graphdef == pre.graphdef and any(
                a is not b for j, (a, b) in enumerate(zip(post.variables, pre.variables)) if j not in data
            ):
                raise ValueError(
                    f"{what}: the body replaced a Variable of a module in the carry with a new one; the carry "
                    "must keep its Variables from iteration to iteration. Update it in place instead "
                    "(m.kernel.value = ...)."
                )
            if post.graphdef != pre.graphdef:
                raise ValueError(
                    f"{what}: the body changed the structure of a module in the carry (added, removed or "
                    "replaced an attribute, sub-module or Variable). The carry's structure must stay the "
                    "same in every iteration: create every Variable before the loop."
                )
            state = [v.raw_value for v in post.variables]
        else:
            state = []
        return state, [x for x in leaves if not _is_node(x)]

    def finish(carry):
        state, others = carry
        _write(inputs.variables, state)
        it_r, it_o = iter(inputs.roots), iter(others)
        leaves = [next(it_r) if m else next(it_o) for m in mask]
        (value,), _ = _tree_unflatten(treedef, leaves)
        return value

    return inputs, to_value, from_value, finish


def while_loop(
    cond_fun: Callable, body_fun: Callable, init_val: Any, *, graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.while_loop`` whose carry may hold modules (updated in place at the end).

    ``body_fun(val)`` must return ``val``'s structure with the same modules in
    it (they may update their Variables, e.g. a counter or an RNG stream, whose
    keys then differ per iteration); ``cond_fun(val)`` returns a boolean
    scalar and must not update anything. ``graph=``/``graph_updates=`` are
    flax.nnx's mode switches, accepted (graph semantics are kept).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> count = nnx.Variable(jnp.array(0))
    >>> def body(val):
    ...     counter, x = val
    ...     counter.value += 1
    ...     return counter, x * 2
    >>> counter, x = nnx.while_loop(lambda val: val[1] < 100, body, (count, jnp.array(1.0)))
    >>> int(count.value), float(x), counter is count
    (7, 128.0, True)
    """
    what = "nnx.while_loop"
    check_mode(graph, graph_updates, what)
    inputs, to_value, from_value, finish = _loop_parts(what, init_val)

    def cond(carry):
        value, _, _ = to_value(carry)
        return cond_fun(value)

    def body(carry):
        value, roots, pre = to_value(carry)
        return from_value(body_fun(value), roots, pre)

    return finish(jax.lax.while_loop(cond, body, (inputs.leaves(), inputs.others)))


def fori_loop(
    lower: Any, upper: Any, body_fun: Callable, init_val: Any, *, unroll: int | bool | None = None,
    graph: bool | None = None, graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.fori_loop`` whose carry may hold modules: ``body_fun(i, val) -> val``.

    The same rules as :func:`while_loop`. With static bounds (and so under
    reverse-mode autodiff) JAX runs it as a scan.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 2, ctx=nnx.context(0))
    >>> def body(i, val):
    ...     model, x = val
    ...     return model, model(x)
    >>> model2, y = nnx.fori_loop(0, 3, body, (model, jnp.ones((1, 2))))
    >>> y.shape, model2 is model
    ((1, 2), True)
    """
    what = "nnx.fori_loop"
    check_mode(graph, graph_updates, what)
    inputs, to_value, from_value, finish = _loop_parts(what, init_val)

    def body(i, carry):
        value, roots, pre = to_value(carry)
        return from_value(body_fun(i, value), roots, pre)

    kwargs = {} if unroll is None else {"unroll": unroll}
    return finish(jax.lax.fori_loop(lower, upper, body, (inputs.leaves(), inputs.others), **kwargs))
