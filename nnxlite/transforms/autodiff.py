"""``grad``, ``value_and_grad`` and ``remat`` that take modules as arguments.

For each differentiated argument that is a module (or any graph node), the
gradient is a :class:`~nnxlite.State` holding one entry per Variable matching
``wrt`` (``nnx.Param`` by default). Other state the function changes, such as
BatchNorm statistics or RNG counters, is written back into the module, just
as it would be in eager code::

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 1, ctx=nnx.context(0))
    >>> def loss_fn(model):
    ...     return jnp.mean(model(jnp.ones((4, 2))) ** 2)
    >>> loss, grads = nnx.value_and_grad(loss_fn)(model)
    >>> grads["kernel"].shape
    (2, 1)

A differentiated argument may also be a pytree holding modules and arrays
(``(model, x)``, ``{"enc": enc, "dec": dec}``): its gradient is the same
pytree with each module replaced by its gradient State. A Variable reached
through several paths (a tied weight) gets the sum of the gradients of all its
uses; a Variable reachable from two differentiated arguments belongs to the
first of them in ``argnums`` order. Modules in ``aux`` (``has_aux=True``)
follow the rules of the lifted transforms (``nnxlite.transforms``): inputs
come back as the caller's objects, new ones as new objects, and structural
changes made inside propagate.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlite import graph
from nnxlite import filters as filterlib
from nnxlite.state import State, StateStructure, _new_state, boxed_state, path_sort_key, raw_leaves
from nnxlite.transforms.lift_types import DiffState
from nnxlite.transforms.modes import check_mode, set_graph_mode, set_graph_updates
from nnxlite.transforms._lift import _KEEP, _apply, _enter, _finish, _Inputs, _is_node, _leave, _pure, _RootsCache, _scatter, _write
from nnxlite.variables import Param, Variable, _make as _make_variable

_state_of = graph.state  # (`graph` is also a parameter name of the transforms below)

__all__ = ["grad", "value_and_grad", "vjp", "jvp", "remat", "custom_vjp", "CustomVjp"]


def _substitute(plan: Any, leaves: list, others: list, diff_state: Any, diff_others: Any) -> tuple[list, list]:
    """The state leaves and other arguments with the differentiated ones replaced by JAX's tracers."""
    state = list(leaves)
    for j, x in zip(plan.diff_vars, diff_state):
        state[j] = x
    other = list(others)
    for k, x in zip(plan.diff_others, diff_others):
        other[k] = x
    return state, other


def value_and_grad(
    f: Callable | None = None,
    argnums: int | DiffState | Sequence[int | DiffState] = 0,
    *,
    wrt: filterlib.Filter = Param,
    has_aux: bool = False,
    holomorphic: bool = False,
    allow_int: bool = False,
    reduce_axes: Sequence = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Callable:
    """Like ``jax.value_and_grad``, but module arguments are differentiated w.r.t. ``wrt``.

    Returns a function giving ``(value, grads)`` (``((value, aux), grads)``
    with ``has_aux``); ``grads`` is one State per module argument, or a tuple
    when ``argnums`` is a sequence:

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 1, ctx=nnx.context(0))
    >>> x = jnp.ones((3, 2))
    >>> loss, (g_model, g_x) = nnx.value_and_grad(lambda m, x: m(x).sum(), argnums=(0, 1))(model, x)
    >>> sorted(g_model.to_pure_dict()), g_x.shape
    (['bias', 'kernel'], (3, 2))

    flax.nnx's spellings work too: without ``f`` it is a decorator factory
    (``@nnx.value_and_grad(argnums=(0, 1))``), an ``argnums`` entry may be
    ``nnx.DiffState(argnum, filter)`` (that argument's own ``wrt``), and
    ``graph=``/``graph_updates=`` are accepted (graph semantics are kept).

    >>> @nnx.value_and_grad(argnums=nnx.DiffState(0, nnx.PathContains("bias")))
    ... def loss(m, x):
    ...     return m(x).sum()
    >>> list(loss(model, x)[1].to_pure_dict())
    ['bias']
    """
    if f is None:
        return functools.partial(
            value_and_grad, argnums=argnums, wrt=wrt, has_aux=has_aux, holomorphic=holomorphic,
            allow_int=allow_int, reduce_axes=reduce_axes, graph=graph, graph_updates=graph_updates,
        )
    check_mode(graph, graph_updates, "nnx.value_and_grad")
    return _make(f, argnums, wrt, has_aux, holomorphic, allow_int, True, _tree_mode(graph, graph_updates))


def grad(
    f: Callable | None = None,
    argnums: int | DiffState | Sequence[int | DiffState] = 0,
    *,
    wrt: filterlib.Filter = Param,
    has_aux: bool = False,
    holomorphic: bool = False,
    allow_int: bool = False,
    reduce_axes: Sequence = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Callable:
    """Like ``jax.grad``, but module arguments are differentiated w.r.t. ``wrt``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 1, ctx=nnx.context(0))
    >>> grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(model)
    >>> grads["bias"].tolist()
    [1.0]

    Without ``f`` it is a decorator factory; ``argnums`` entries may be
    ``nnx.DiffState(argnum, filter)`` (see :func:`value_and_grad`).

    In flax.nnx's tree/functional mode (``graph=False`` or
    ``graph_updates=False``, also through ``nnx.set_graph_mode`` /
    ``nnx.set_graph_updates``) a module's gradient is a copy of the module
    holding the gradients, as flax returns it (shared references kept;
    Variables outside ``wrt`` hold zeros):

    >>> g = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum(), graph_updates=False)(model)
    >>> type(g).__name__, g.bias.value.tolist()
    ('Linear', [1.0])
    """
    if f is None:
        return functools.partial(
            grad, argnums=argnums, wrt=wrt, has_aux=has_aux, holomorphic=holomorphic,
            allow_int=allow_int, reduce_axes=reduce_axes, graph=graph, graph_updates=graph_updates,
        )
    check_mode(graph, graph_updates, "nnx.grad")
    return _make(f, argnums, wrt, has_aux, holomorphic, allow_int, False, _tree_mode(graph, graph_updates))


class _Plan:
    """Which leaves are differentiated, and how to shape their gradients (one per traversal)."""

    __slots__ = ("diff_vars", "diff_others", "arg_grads", "part_roots")

    def __init__(self, diff_vars, diff_others, arg_grads, part_roots=()):
        self.diff_vars = diff_vars  # Variable indices, in the order they are differentiated
        self.diff_others = diff_others  # positions (in inputs.others) of differentiated array leaves
        self.arg_grads = arg_grads  # per argnum: (treedef, [("var", [k...], structure) | ("other", k)])
        self.part_roots = part_roots  # per argnum: the joint-traversal root of each part (None: an array)


def _selects(pred, flat, root: int, path: tuple, j: int) -> bool:
    """Does ``wrt`` select Variable ``j``, reachable from argument ``root`` by ``path`` (and maybe others)?

    As everywhere, a path filter matches a Variable in a shared sub-module
    when any of its paths does (see :func:`nnxlite.filters.matches`).
    """
    v = flat.variables[j]
    gd = flat.graphdef
    if j not in graph._edges(gd)[2]:
        return pred(path, v)
    more = (p[1:] for p in graph._other_paths(gd, j) if p[0] == root)
    return filterlib.matches(pred, filterlib._LazyPaths(path, more), v)


def _plan(inputs: _Inputs, argnums: tuple, wrts: tuple, whole: tuple = ()) -> _Plan:
    """``whole[k]``: argnum ``k`` was a plain int, so a bare Variable in it is differentiated
    whatever its type (flax's rule: ``wrt`` filters the Variables *of modules*)."""
    preds = [filterlib.to_predicate(w) for w in wrts]
    whole = whole or (False,) * len(argnums)
    flat = inputs.flat
    args_td, _ = inputs.treedef.children()
    arg_sizes = [c.num_leaves for c in args_td.children()]
    starts = [sum(arg_sizes[:i]) for i in range(len(arg_sizes))]
    root_of_leaf = {i: r for r, i in enumerate(inputs.root_positions())}
    other_of_leaf = {i: k for k, i in enumerate(i for i, m in enumerate(inputs.mask) if not m)}
    # For each root, the Variables it reaches with their paths relative to it (canonical order).
    reach: dict[int, list] = {}
    if flat is not None:
        seen_per_root: dict[int, set] = {}
        for path in sorted(flat.aliases, key=path_sort_key):
            j = flat.aliases[path]
            root = path[0]
            seen = seen_per_root.setdefault(root, set())
            if j in seen:
                continue
            seen.add(j)
            reach.setdefault(root, []).append((path[1:], j))
    taken: dict[int, int] = {}
    diff_vars: list[int] = []
    diff_others: list[int] = []
    arg_grads = []
    part_roots = []
    for a, pred, whole_a in zip(argnums, preds, whole):
        parts = []
        part_roots.append([root_of_leaf.get(leaf) for leaf in range(starts[a], starts[a] + arg_sizes[a])])
        for leaf in range(starts[a], starts[a] + arg_sizes[a]):
            if inputs.mask[leaf]:
                entries = []
                bare = whole_a and isinstance(flat.node_objects[0][root_of_leaf[leaf]], Variable)
                for path, j in reach.get(root_of_leaf[leaf], []):
                    if j in taken or not (bare or _selects(pred, flat, root_of_leaf[leaf], path, j)):
                        continue
                    taken[j] = len(diff_vars)
                    diff_vars.append(j)
                    entries.append((path, j))  # already in canonical order, as in `reach`
                if isinstance(flat.node_objects[0][root_of_leaf[leaf]], Variable):
                    # A Variable argument: its gradient is a Variable of its type, as in flax
                    # (None if a DiffState filter excludes it).
                    j = entries[0][1] if entries else None
                    parts.append(("one", None if j is None else taken[j], None if j is None else flat.graphdef.vardefs[j]))
                    continue
                structure = StateStructure(
                    tuple(p for p, _ in entries), tuple(flat.graphdef.vardefs[j] for _, j in entries)
                )
                parts.append(("var", [taken[j] for _, j in entries], structure))
            else:
                parts.append(("other", len(diff_others)))
                diff_others.append(other_of_leaf[leaf])
        arg_grads.append((args_td.children()[a], parts))
    return _Plan(diff_vars, diff_others, arg_grads, part_roots)


def _tree_mode(graph_mode: bool | None, graph_updates: bool | None) -> bool:
    """flax.nnx's tree/functional mode (graph=False or graph_updates=False), read when a transform is defined."""
    graph_mode = set_graph_mode.current_value() if graph_mode is None else graph_mode
    graph_updates = set_graph_updates.current_value() if graph_updates is None else graph_updates
    return not (graph_mode and graph_updates)


def _module_shaped(plan: _Plan, inputs: _Inputs, grads: list) -> list:
    """flax's tree-mode gradients: each module's State replaced by a copy of the module holding the gradients.

    In flax.nnx's tree mode a module is a pytree, so ``jax.grad`` hands back
    one of the same type (``grads.kernel`` is a Param). The copy has the
    module's structure, its shared references included; a Variable that is
    not differentiated (``wrt``) holds zeros (``float0`` for integer or key
    state, as ``jax.grad(allow_int=True)`` gives).
    """
    roots = inputs.roots
    out = []
    for g, (treedef, parts), root_ids in zip(grads, plan.arg_grads, plan.part_roots):
        leaves = treedef.flatten_up_to(g)
        for t, (part, r) in enumerate(zip(parts, root_ids)):
            if part[0] == "var" and r is not None:
                leaves[t] = _holding(roots[r], leaves[t])
        out.append(jax.tree_util.tree_unflatten(treedef, leaves))
    return out


def _holding(node: Any, grads: State) -> Any:
    copy = graph.clone(node)
    values = grads.flat()
    flat = graph.flatten_roots((copy,))
    for path, var in zip(flat.graphdef.paths, flat.variables):
        x = values.get(path[1:])
        if x is None:
            v = var.raw_value
            dtype = getattr(v, "dtype", None)
            x = jnp.zeros_like(v) if dtype is not None and jnp.issubdtype(dtype, jnp.inexact) else (
                np.zeros(np.shape(v), jax.dtypes.float0))
        elif isinstance(x, Variable):
            x = x.raw_value
        var.raw_value = x
    return copy


def _shape_grads(plan: _Plan, g_state: Sequence, g_others: Sequence) -> list:
    """One gradient per differentiated argument: its pytree, modules replaced by States."""
    grads = []
    for treedef, parts in plan.arg_grads:
        leaves_out = []
        for part in parts:
            if part[0] == "var":
                _, ks, structure = part
                leaves_out.append(boxed_state([g_state[k] for k in ks], structure))
            elif part[0] == "one":
                if part[1] is None:
                    leaves_out.append(None)
                else:
                    t, meta = part[2]
                    leaves_out.append(_make_variable(t, g_state[part[1]], dict(meta)))
            else:
                leaves_out.append(g_others[part[1]])
        grads.append(jax.tree_util.tree_unflatten(treedef, leaves_out))
    return grads


def _split_argnums(argnums, wrt) -> tuple[bool, tuple, tuple, tuple]:
    """``(multiple, argnums, per-argnum filters, per-argnum "plain int")``, reading flax's ``nnx.DiffState``."""
    multiple = not isinstance(argnums, (int, DiffState))
    entries = tuple(argnums) if multiple else (argnums,)
    nums, wrts, whole = [], [], []
    for e in entries:
        if isinstance(e, DiffState):
            nums.append(e.argnum)
            wrts.append(e.filter)
            whole.append(False)
        elif isinstance(e, int) and not isinstance(e, bool):
            nums.append(e)
            wrts.append(wrt)
            whole.append(True)
        else:
            raise TypeError(f"argnums entries must be ints or nnx.DiffState(argnum, filter), got {e!r}.")
    for w in wrts:
        filterlib.to_predicate(w)  # fail early on an invalid filter
    return multiple, tuple(nums), tuple(wrts), tuple(whole)


def _make(f, argnums, wrt, has_aux, holomorphic, allow_int, with_value, tree_mode=False):
    multiple, argnums_t, wrts, whole = _split_argnums(argnums, wrt)
    cache = _RootsCache()

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        for i in argnums_t:
            if not -len(args) <= i < len(args):
                raise TypeError(
                    f"argnums={argnums} refers to positional argument {i}, but only {len(args)} positional "
                    "arguments were given."
                )
        nums = tuple(i % len(args) for i in argnums_t)
        inputs = _Inputs(args, kwargs, cache)
        plan = _plan(inputs, nums, wrts, whole)
        leaves = inputs.leaves()
        others = inputs.others
        gd = inputs.graphdef
        cell: list = []

        def pure(diff_state, diff_others):
            state, other = _substitute(plan, leaves, others, diff_state, diff_others)
            a, kw, roots, pre = _enter(gd, inputs.treedef, inputs.mask, state, other)
            out = f(*a, **kw)
            if has_aux:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise TypeError(
                        "With has_aux=True the function must return a pair (value, aux); "
                        f"got {type(out).__name__}."
                    )
                value, aux = out
            else:
                value, aux = out, None
            aligned, extra, plain, meta = _leave(pre, roots, aux, state)
            # Only values that changed travel out: unchanged Variables need no write-back.
            changed = [j for j, (new, old) in enumerate(zip(aligned, state)) if new is not old]
            cell[:] = [meta, changed]
            return value, ([aligned[j] for j in changed], extra, plain)

        primals = ([leaves[j] for j in plan.diff_vars], [others[k] for k in plan.diff_others])
        (value, (new_values, extra, aux)), (g_state, g_others) = jax.value_and_grad(
            pure, argnums=(0, 1), has_aux=True, holomorphic=holomorphic, allow_int=allow_int
        )(*primals)
        meta, changed = cell
        variables = inputs.variables
        if meta is None:
            for j, x in zip(changed, new_values):
                variables[j].raw_value = x
        else:
            aligned = _scatter(len(variables), _KEEP, (changed, new_values))
            aux = _apply(meta, aligned, extra, aux, inputs.flat)
        grads = _shape_grads(plan, g_state, g_others)
        if tree_mode:
            grads = _module_shaped(plan, inputs, grads)
        grads = tuple(grads) if multiple else grads[0]
        if has_aux:
            value = (value, aux)
        if with_value:
            return value, grads
        return (grads, aux) if has_aux else grads

    return wrapper


def remat(
    f: Callable | None = None,
    *,
    prevent_cse: bool = True,
    static_argnums: int | Sequence[int] = (),
    policy: Callable | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Callable:
    """``jax.checkpoint`` (rematerialization) for functions of modules.

    Activations inside ``f`` are recomputed in the backward pass instead of
    stored; module updates made inside still come out.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 2, ctx=nnx.context(0))
    >>> block = nnx.remat(lambda m, x: jax.nn.relu(m(x)))
    >>> grads = nnx.grad(lambda m: block(m, jnp.ones((1, 2))).sum())(model)
    >>> grads["kernel"].shape
    (2, 2)

    Args:
      f: the function (or use ``@nnx.remat(...)``).
      prevent_cse, policy: as in ``jax.checkpoint``.
      static_argnums: arguments passed through as Python values.
      graph, graph_updates: flax.nnx's mode switches, accepted (graph semantics kept).
    """
    if f is None:
        return functools.partial(
            remat, prevent_cse=prevent_cse, static_argnums=static_argnums, policy=policy, graph=graph,
            graph_updates=graph_updates,
        )
    check_mode(graph, graph_updates, "nnx.remat")
    statics = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        n = len(args)
        static_pos = {i + n if i < 0 else i for i in statics}
        static_vals = {i: args[i] for i in static_pos if 0 <= i < n}
        dargs = tuple(None if i in static_vals else x for i, x in enumerate(args))
        inputs = _Inputs(dargs, kwargs)

        def put_static(a, kw):
            a = list(a)
            for i, s in static_vals.items():
                a[i] = s
            return tuple(a), kw

        run = _pure(f, inputs, static=put_static if static_vals else None)
        aligned, extra, out, meta = jax.checkpoint(run, prevent_cse=prevent_cse, policy=policy)(
            inputs.leaves(), inputs.others
        )
        return _finish(inputs, aligned, extra, out, meta)

    return wrapper


# =====================================================================================
# vjp, jvp
# =====================================================================================
def _linear_parts(f: Callable, primals: tuple, wrt, what: str, has_aux: bool = False):
    """``(inputs, plan, pure, diff_primals, finish)`` for linearizing ``f`` at ``primals``.

    ``pure(diff_state, diff_others)`` runs ``f`` on fresh objects and returns
    ``(out, changed values)`` (``(out, (changed values, aux))`` with
    ``has_aux``); ``finish(changed)`` writes the in-place updates back (the
    function must not change structure or return modules).
    """
    inputs = _Inputs(primals, {})
    plan = _plan(inputs, tuple(range(len(primals))), (wrt,) * len(primals))
    leaves, others, gd = inputs.leaves(), inputs.others, inputs.graphdef
    cell: list = []

    def pure(diff_state, diff_others):
        state, other = _substitute(plan, leaves, others, diff_state, diff_others)
        a, kw, roots, pre = _enter(gd, inputs.treedef, inputs.mask, state, other)
        out = f(*a, **kw)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"{what}: with has_aux=True the function must return a pair (out, aux).")
        aligned, _, out, meta = _leave(pre, roots, out, state)
        if meta is not None:
            raise ValueError(
                f"{what}: the function changed the structure of a module or returned a module; it must "
                "return arrays (pytrees of them) and keep its modules' structure."
            )
        changed = [j for j, (new, old) in enumerate(zip(aligned, state)) if new is not old]
        cell[:] = [changed]
        if has_aux:
            value, aux = out
            return value, ([aligned[j] for j in changed], aux)
        return out, [aligned[j] for j in changed]

    def finish(new_values):
        _write([inputs.variables[j] for j in cell[0]], new_values)

    diff_primals = ([leaves[j] for j in plan.diff_vars], [others[k] for k in plan.diff_others])
    return inputs, plan, pure, diff_primals, finish


def vjp(
    f: Callable | None = None,
    *primals: Any,
    wrt: filterlib.Filter = Param,
    has_aux: bool = False,
    reduce_axes: Sequence = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.vjp`` for functions of modules: ``(out, vjp_fn)``, ``vjp_fn(cotangent)`` giving one gradient per primal.

    A module primal's gradient is a State of its Variables matching ``wrt``
    (as :func:`grad` gives); in-place updates the function makes come out.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 3, ctx=nnx.context(0))
    >>> y, vjp_fn = nnx.vjp(lambda m, x: m(x), model, jnp.ones((1, 2)))
    >>> g_model, g_x = vjp_fn(jnp.ones((1, 3)))
    >>> g_model["bias"].tolist(), g_x.shape
    ([1.0, 1.0, 1.0], (1, 2))

    As in flax.nnx, ``has_aux=True`` returns ``(out, vjp_fn, aux)``, and
    without primals (``@nnx.vjp(has_aux=...)``) it is a decorator: the
    decorated function returns what ``nnx.vjp`` would. ``graph=``,
    ``graph_updates=`` and ``reduce_axes=`` are accepted (graph semantics kept).

    >>> @nnx.vjp
    ... def f(m, x):
    ...     return m(x).sum()
    >>> out, vjp_fn = f(model, jnp.ones((1, 2)))
    >>> vjp_fn(jnp.ones(()))[0]["bias"].tolist()
    [1.0, 1.0, 1.0]
    """
    check_mode(graph, graph_updates, "nnx.vjp")
    if f is None or not primals:
        options = dict(wrt=wrt, has_aux=has_aux, reduce_axes=reduce_axes, graph=graph, graph_updates=graph_updates)
        if f is None:
            return lambda fn: functools.wraps(fn)(lambda *ps: vjp(fn, *ps, **options))
        return functools.wraps(f)(lambda *ps: vjp(f, *ps, **options))
    inputs, plan, pure, diff_primals, finish = _linear_parts(f, primals, wrt, "nnx.vjp", has_aux)
    out, pullback, aux = jax.vjp(pure, *diff_primals, has_aux=True)
    new_values, user_aux = aux if has_aux else (aux, None)
    finish(new_values)
    tree_mode = _tree_mode(graph, graph_updates)

    def vjp_fn(cotangent: Any) -> tuple:
        g_state, g_others = pullback(cotangent)
        grads = _shape_grads(plan, g_state, g_others)
        # flax's vjp runs in tree/functional mode only: there a module's gradient is the module's shape
        return tuple(_module_shaped(plan, inputs, grads) if tree_mode else grads)

    return (out, vjp_fn, user_aux) if has_aux else (out, vjp_fn)


def jvp(
    f: Callable | None = None,
    primals: tuple | None = None,
    tangents: tuple | None = None,
    *,
    wrt: filterlib.Filter = Param,
    has_aux: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.jvp`` for functions of modules: ``(out, tangent_out)``.

    ``tangents`` mirrors ``primals``; for a module the tangent is a State (or a
    nested dict) by path of its Variables matching ``wrt`` (the shape of what
    :func:`grad` returns, e.g. ``nnx.state(model, nnx.Param)``); missing paths
    have tangent zero.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 1, use_bias=False, ctx=nnx.context(0))
    >>> x = jnp.ones((1, 2))
    >>> y, dy = nnx.jvp(lambda m, x: m(x), (model, x), ({"kernel": jnp.ones((2, 1))}, jnp.zeros((1, 2))))
    >>> float(dy[0, 0])       # d(x @ W) along dW = ones
    2.0

    As in flax.nnx, a module's tangent may also be a module of the same
    structure (e.g. ``jax.tree.map(jnp.zeros_like, model)``; its ``wrt``
    Variables are used), ``has_aux=True`` returns ``(out, tangent_out, aux)``,
    and without ``primals``/``tangents`` it is a decorator:
    ``nnx.jvp(f)(primals, tangents)``. ``graph=``/``graph_updates=`` are
    accepted (graph semantics kept).

    >>> y, dy = nnx.jvp(lambda m, x: m(x))((model, x), (jax.tree.map(jnp.ones_like, model), jnp.zeros((1, 2))))
    >>> float(dy[0, 0])
    2.0
    """
    what = "nnx.jvp"
    check_mode(graph, graph_updates, what)
    if f is None or primals is None or tangents is None:
        options = dict(wrt=wrt, has_aux=has_aux, graph=graph, graph_updates=graph_updates)
        if f is None:
            return lambda fn: functools.wraps(fn)(lambda ps, ts: jvp(fn, ps, ts, **options))
        return functools.wraps(f)(lambda ps, ts: jvp(f, ps, ts, **options))
    if not isinstance(tangents, (tuple, list)) or len(tangents) != len(primals):
        raise ValueError(f"{what}: tangents must be a tuple with one entry per primal ({len(primals)}).")
    _, plan, pure, diff_primals, finish = _linear_parts(f, tuple(primals), wrt, what, has_aux)
    t_state = [jnp.zeros_like(x) for x in diff_primals[0]]
    t_others = [None] * len(diff_primals[1])
    for (_, parts), tangent in zip(plan.arg_grads, tangents):
        t_leaves = jax.tree_util.tree_leaves(tangent, is_leaf=lambda t: isinstance(t, (State, Mapping)) or _is_node(t))
        if len(t_leaves) != len(parts):
            raise ValueError(
                f"{what}: a tangent does not mirror its primal: {len(t_leaves)} leaves for {len(parts)} "
                "(give a State or dict for each module, an array for each array)."
            )
        for part, t in zip(parts, t_leaves):
            if part[0] == "var":
                _, ks, structure = part
                if _is_node(t) and not isinstance(t, Variable):  # a module-shaped tangent (flax's tree mode)
                    flat = {p: x for p, x in _state_of(t).flat().items() if p in structure.index}
                else:
                    flat = (t if isinstance(t, State) else State(t)).flat()
                unknown = [p for p in flat if p not in structure.paths]
                if unknown:
                    raise ValueError(f"{what}: tangent paths {unknown} are not {wrt!r} Variables of the module.")
                for k, path in zip(ks, structure.paths):
                    if path in flat:
                        t_state[k] = flat[path]
            elif part[0] == "one":
                if part[1] is not None:
                    t_state[part[1]] = t.value if isinstance(t, Variable) else t
            else:
                t_others[part[1]] = t
    out, t_out, aux = jax.jvp(pure, diff_primals, (t_state, t_others), has_aux=True)
    new_values, user_aux = aux if has_aux else (aux, None)
    finish(new_values)
    return (out, t_out, user_aux) if has_aux else (out, t_out)


# =====================================================================================
# custom_vjp
# =====================================================================================
# What jax.custom_vjp needs on top of the core: the modules' Variables become primal
# inputs (the differentiable ones, chosen by nondiff_argnums' DiffState entries, and the
# rest, whose cotangent is zero), their values after the call become extra outputs (so
# in-place updates come out and have cotangents), and modules kept in the residuals
# travel as their state and are rebuilt for bwd.
_WHAT = "nnx.custom_vjp"


def custom_vjp(
    fun: Callable | None = None,
    *,
    nondiff_argnums: Sequence[int | DiffState] = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> "CustomVjp | Callable[[Callable], CustomVjp]":
    """``jax.custom_vjp`` for functions of modules (flax.nnx's ``custom_vjp``).

    Define the derivative with ``f.defvjp(fwd, bwd)``. ``fwd`` takes the
    same arguments as ``f`` and returns ``(out, residuals)``; residuals may
    hold modules (``bwd`` gets them back, with the values they had in
    ``fwd``). ``bwd(*nondiff, residuals, (updates_g, out_g))`` gets the
    cotangent of the output and ``updates_g``, one entry per differentiable
    argument: for a module, a :class:`~nnxlite.State` with the cotangents of
    its Variables' values after the call (zeros unless the caller
    differentiates through state the function updated), ``None`` for other
    arguments. It returns one tangent per differentiable argument: a State
    (or dict) by path for a module, an array for an array; paths left out
    have tangent zero.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> class Foo(nnx.Module):
    ...     def __init__(self):
    ...         self.x = nnx.Param(jnp.array(1.0))
    ...         self.y = nnx.Param(jnp.array(2.0))
    >>> @nnx.custom_vjp
    ... def f(m):
    ...     return jnp.sin(m.x) * m.y
    >>> def f_fwd(m):
    ...     return f(m), (jnp.cos(m.x), jnp.sin(m.x), m)
    >>> def f_bwd(res, g):
    ...     (m_g,), out_g = g[0], g[1]
    ...     cos_x, sin_x, m = res
    ...     m_g["x"] = cos_x * out_g * m.y
    ...     m_g["y"] = sin_x * out_g
    ...     return (m_g,)
    >>> f.defvjp(f_fwd, f_bwd)
    >>> grads = nnx.grad(f)(Foo())
    >>> round(float(grads["x"]), 4), round(float(grads["y"]), 4)   # 2 cos(1), sin(1)
    (1.0806, 0.8415)

    ``nondiff_argnums`` entries are ints (arguments that are not
    differentiated and are passed first to ``bwd``, as in JAX; a module there
    gets no tangent and reaches ``bwd`` as it was on entry) or
    ``nnx.DiffState(argnum, filter)``: only that module's Variables matching
    ``filter`` get a tangent (the rest get zero). A function may change plain
    attributes of its modules (``m.z += 1``): the change comes out, except
    under ``graph_updates=False``, where (as in flax) it is dropped.

    With ``graph_updates=False`` (or ``graph=False``; also under
    ``nnx.set_graph_updates(False)``), ``bwd`` follows flax's simple
    convention: ``bwd(*nondiff, residuals, out_g)``, optionally with an
    ``updates_g=`` keyword, and a module's tangent may be given as a module
    (e.g. ``nnx.clone(m)`` with gradient values). Either way, graph semantics
    (shared references, in-place updates) are kept.

    Differences from flax: a State's leaves are arrays, so set a tangent with
    ``m_g["x"] = value`` (flax: ``m_g["x"][...] = value``).
    """
    if fun is None:
        return functools.partial(custom_vjp, nondiff_argnums=nondiff_argnums, graph=graph, graph_updates=graph_updates)
    check_mode(graph, graph_updates, _WHAT)
    return CustomVjp(fun, tuple(nondiff_argnums), graph=graph, graph_updates=graph_updates)


class CustomVjp:
    """The function returned by :func:`custom_vjp`; call :meth:`defvjp` before using it."""

    def __init__(self, fun: Callable, nondiff_argnums: tuple, *, graph: bool | None = None, graph_updates=None):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.fwd: Callable | None = None
        self.bwd: Callable | None = None
        self.symbolic_zeros = False
        self.nondiff_argnums = nondiff_argnums
        # As in flax, the mode in effect when the function is defined decides bwd's convention.
        graph = set_graph_mode.current_value() if graph is None else graph
        updates = set_graph_updates.current_value() if graph_updates is None else graph_updates
        self._simple = not graph or not updates
        self._jax_nondiff: list[int] = []
        self._filters: dict[int, Any] = {}
        for entry in nondiff_argnums:
            if isinstance(entry, DiffState):
                index, flt = entry.argnum, entry.filter
                filterlib.to_predicate(flt)  # fail early on a bad filter
            elif isinstance(entry, int) and not isinstance(entry, bool):
                index, flt = entry, None
            else:
                raise TypeError(f"{_WHAT}: nondiff_argnums entries must be ints or nnx.DiffState, got {entry!r}.")
            if index in self._filters or index in self._jax_nondiff:
                raise ValueError(f"{_WHAT}: argument {index} is repeated in nondiff_argnums={nondiff_argnums!r}.")
            if flt is None:
                self._jax_nondiff.append(index)
            else:
                self._filters[index] = flt

    def defvjp(self, fwd: Callable, bwd: Callable, symbolic_zeros: bool = False) -> None:
        """Set the forward (``fwd(*args) -> (out, residuals)``) and backward rules; see :func:`custom_vjp`."""
        if symbolic_zeros:
            raise NotImplementedError(
                f"{_WHAT}: symbolic_zeros=True is not supported; bwd receives instantiated zeros. Use the default."
            )
        self.fwd, self.bwd = fwd, bwd

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fwd is None or self.bwd is None:
            raise ValueError(f"{_WHAT}: call {self.__name__}.defvjp(fwd, bwd) before calling the function.")
        if kwargs:  # as in flax: keyword arguments become positional ones
            bound = inspect.signature(self.fun).bind(*args, **kwargs)
            bound.apply_defaults()
            args, kwargs = bound.args, {}
        n = len(args)
        nd_pos = sorted(i % n for i in self._jax_nondiff if -n <= i < n)
        # A non-differentiated argument holding modules (flax allows an int for it) cannot go through
        # JAX's nondiff_argnums (its state is traced): it is an argument with no tangent, and bwd gets
        # it first, as the value it had on entry, as JAX would give a plain one.
        mod_nd = tuple(
            i for i in nd_pos if any(_is_node(x) for x in jax.tree_util.tree_leaves(args[i], is_leaf=_is_node))
        )
        nd_pos = [i for i in nd_pos if i not in mod_nd]
        filters = {i % n: f for i, f in self._filters.items() if -n <= i < n}
        for i in mod_nd:
            filters[i] = filterlib.Nothing()
        return _call(self, args, tuple(nd_pos), filters, mod_nd)


def _call(cv: CustomVjp, args: tuple, nd_pos: tuple, filters: dict, mod_nd: tuple = ()) -> Any:
    """One call: flatten, run ``jax.custom_vjp`` over the state, write updates back."""
    n = len(args)
    diff_args = [i for i in range(n) if i not in nd_pos]
    nd_vals = [args[i] for i in nd_pos]
    dargs = tuple(None if i in nd_pos else a for i, a in enumerate(args))
    inputs = _Inputs(dargs, {})
    everything = filterlib.Everything()
    plan = _plan(inputs, tuple(diff_args), tuple(filters.get(i, everything) for i in diff_args))
    full = _plan(inputs, tuple(diff_args), (everything,) * len(diff_args))
    leaves, others = inputs.leaves(), inputs.others
    n_vars = len(leaves)
    diff_vars = list(plan.diff_vars)
    rest_vars = [j for j in range(n_vars) if j not in set(diff_vars)]
    diff_others = list(plan.diff_others)
    avals = [(np.shape(x), jax.dtypes.result_type(x)) for x in leaves]
    other_avals = [(np.shape(x), jax.dtypes.result_type(x)) for x in others]
    gd, treedef, mask = inputs.graphdef, inputs.treedef, inputs.mask
    simple = cv._simple
    cell: dict = {}

    def run(user_fn, nd, diff_state, rest_state, d_others):
        state = _scatter(n_vars, None, (diff_vars, diff_state), (rest_vars, rest_state))
        other = list(others)
        for k, x in zip(diff_others, d_others):
            other[k] = x
        if mod_nd and user_fn is cv.fwd:
            entered, _, _, _ = _enter(gd, treedef, mask, list(state), other)
            cell["nd_mods"] = [entered[i] for i in mod_nd]
        a, _, roots, pre = _enter(gd, treedef, mask, state, other)
        a = list(a)
        for i, x in zip(nd_pos, nd):
            a[i] = x
        result = user_fn(*a)
        out = result if user_fn is cv.fun else result[0]
        aligned, extra, out, meta = _leave(pre, roots, out, state)
        if meta is not None:
            if extra or meta.out_node_pos or meta.new_var_indices():
                raise ValueError(
                    f"{_WHAT}: the function created Variables or returned a module; it must return arrays "
                    "(pytrees of them), and its modules may change only their plain attributes and values."
                )
            # Only plain attributes changed (flax's `m.z += 1`): replayed on the caller's modules
            # after the call, unless bwd follows the functional convention (graph_updates=False).
            out = jax.tree_util.tree_unflatten(meta.out_treedef, out)
        cell["meta"] = meta
        cell["changed"] = [j for j, (new, old) in enumerate(zip(aligned, state)) if new is not old]
        return aligned, out, result

    n_nd = len(nd_pos)

    def primal(*flat_args):
        nd, (diff_state, rest_state, d_others) = flat_args[:n_nd], flat_args[n_nd:]
        aligned, out, _ = run(cv.fun, nd, diff_state, rest_state, d_others)
        return aligned, out

    def fwd(*flat_args):
        nd, (diff_state, rest_state, d_others) = flat_args[:n_nd], flat_args[n_nd:]
        aligned, out, (_, residual) = run(cv.fwd, nd, diff_state, rest_state, d_others)
        if mod_nd:
            residual = (residual, cell.pop("nd_mods"))
        res_inputs = _Inputs((residual,), {})
        cell["residual"] = (res_inputs.graphdef, res_inputs.treedef, res_inputs.mask)
        return (aligned, out), (res_inputs.leaves(), res_inputs.others)

    def bwd(*flat_args):
        nd, (res_leaves, res_others), (state_ct, out_ct) = flat_args[:n_nd], flat_args[n_nd], flat_args[n_nd + 1]
        r_gd, r_treedef, r_mask = cell["residual"]
        (residual,), _, _, _ = _enter(r_gd, r_treedef, r_mask, res_leaves, res_others)
        updates = _shape_grads(full, [state_ct[j] for j in full.diff_vars], [None] * len(full.diff_others))
        updates = tuple(_none_for_arrays(u) for u, i in zip(updates, diff_args) if i not in mod_nd)
        if mod_nd:
            residual, nd_mods = residual
            given = dict(zip(nd_pos, nd))
            given.update(zip(mod_nd, nd_mods))
            nd = [given[i] for i in sorted(given)]
        if simple:
            kw = {"updates_g": updates} if _takes_updates_g(cv.bwd) else {}
            tangent = cv.bwd(*nd, residual, out_ct, **kw)
        else:
            tangent = cv.bwd(*nd, residual, (updates, out_ct))
        if mod_nd and isinstance(tangent, (tuple, list)):
            it = iter(tangent)  # no tangent for the modules passed as non-differentiated
            tangent = tuple(None if i in mod_nd else next(it, None) for i in diff_args)
        return _tangent_cts(tangent, plan, diff_args, avals, other_avals, diff_vars, rest_vars, diff_others)

    fn = jax.custom_vjp(primal, nondiff_argnums=tuple(range(n_nd)))
    fn.defvjp(fwd, bwd)
    primals = ([leaves[j] for j in diff_vars], [leaves[j] for j in rest_vars], [others[k] for k in diff_others])
    aligned, out = fn(*nd_vals, *primals)
    changed = cell.get("changed", ())
    meta = cell.get("meta")
    if meta is not None and not simple:
        leaves = jax.tree_util.tree_leaves(out)
        _apply(meta, _scatter(n_vars, _KEEP, (changed, [aligned[j] for j in changed])), [], leaves, inputs.flat)
        return out
    _write([inputs.variables[j] for j in changed], [aligned[j] for j in changed])
    return out


def _none_for_arrays(tree: Any) -> Any:
    """``updates_g`` shows a State for each module and ``None`` for every other leaf (as flax does)."""
    return jax.tree_util.tree_map(lambda x: x if isinstance(x, State) else None, tree, is_leaf=lambda x: isinstance(x, State))


def _takes_updates_g(bwd: Callable) -> bool:
    try:
        params = inspect.signature(bwd).parameters
    except (TypeError, ValueError):
        return False
    return "updates_g" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _zero(aval) -> Any:
    shape, dtype = aval
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.zeros(shape, dtype)
    return np.zeros(shape, jax.dtypes.float0)  # integer, bool and key state has no tangent


def _tangent_cts(tangent, plan, diff_args, avals, other_avals, diff_vars, rest_vars, diff_others):
    """The user's tangent (one per differentiable argument) as cotangents of the flat primals."""
    if not isinstance(tangent, (tuple, list)) or len(tangent) != len(diff_args):
        raise ValueError(
            f"{_WHAT}: bwd must return a tuple with one tangent per differentiable argument "
            f"({len(diff_args)}: arguments {diff_args}), got {type(tangent).__name__}"
            + (f" of length {len(tangent)}." if isinstance(tangent, (tuple, list)) else ".")
        )
    pos = {j: k for k, j in enumerate(diff_vars)}
    g_state: list = [None] * len(diff_vars)
    g_others: list = [None] * len(diff_others)
    for arg, (treedef, parts), t in zip(diff_args, plan.arg_grads, tangent):
        if t is None:
            t_leaves = [None] * len(parts)
        else:
            try:
                t_leaves = treedef.flatten_up_to(t)
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"{_WHAT}: the tangent for argument {arg} does not mirror the argument ({treedef}); give a "
                    "State (or dict) for each module and an array for each array."
                ) from err
        for part, leaf in zip(parts, t_leaves):
            if part[0] == "var":
                _, ks, structure = part
                if leaf is None:
                    continue
                if _is_node(leaf) and not isinstance(leaf, Variable):
                    leaf = _state_of(leaf)  # simple convention: a module holding the tangent values
                flat = (leaf if isinstance(leaf, State) else State(leaf)).flat()
                known = dict(zip(structure.paths, ks))
                unknown = [p for p in flat if p not in known]
                if unknown:
                    raise ValueError(
                        f"{_WHAT}: the tangent for argument {arg} has paths {unknown} that are not "
                        f"differentiable Variables of it (expected a subset of {list(known)})."
                    )
                for p, x in flat.items():
                    g_state[known[p]] = x.value if isinstance(x, Variable) else x
            elif part[0] == "one":
                if part[1] is not None and leaf is not None:
                    g_state[part[1]] = leaf.value if isinstance(leaf, Variable) else leaf
            else:
                g_others[part[1]] = leaf
    g_state = [_zero(avals[j]) if g is None else g for g, j in zip(g_state, diff_vars)]
    g_rest = [_zero(avals[j]) for j in rest_vars]
    g_others = [_zero(other_avals[k]) if g is None else g for g, k in zip(g_others, diff_others)]
    return g_state, g_rest, g_others
