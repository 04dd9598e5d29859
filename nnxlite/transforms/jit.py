"""``nnx.jit``: what ``jax.jit`` needs on top of the lifting core.

A per-function fast path (:class:`_Entry`) that skips the traversal while the
arguments are the same objects at the same structural epoch, donation of
module state, and ``in_shardings``/``out_shardings`` entries for modules.
"""

from __future__ import annotations

import functools
import inspect
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlite import _data, _epoch
from nnxlite import filters as filterlib
from nnxlite import graph
from nnxlite.state import State
from nnxlite.transforms.modes import check_mode
from nnxlite.transforms._lift import (
    _apply,
    _call_entries,
    _check_shared_entries,
    _enter,
    _explain_leak,
    _KEEP,
    _MISSING,
    _Inputs,
    _is_node,
    _leave,
    _RootsCache,
    _prefix_entries,
    _scatter,
    _table_lookup,
    is_table_entry,
)
from nnxlite.variables import Variable

__all__ = ["jit"]


# =====================================================================================
# Donation
# =====================================================================================
from nnxlite.graph import _ArrayImpl  # noqa: E402
_getrefcount = sys.getrefcount
# References to a donated array that the donation itself accounts for: the Variable,
# the list of donated values and getrefcount's argument.
_OWN_REFS = 3


def _own_donated(values: list) -> None:
    """Replace, by a fresh copy, every donated array that something else still holds.

    Donating lets XLA delete the buffer. If the same array object is also held
    by another Variable, a clone's or snapshot's State, an ``nnx.transform``
    init value or any other Python reference, deleting it would break that
    holder (and XLA refuses a buffer donated twice). So that holder keeps the
    original and XLA consumes a copy: donation never invalidates anything but
    the donated Variable's own old value. Python's reference count tells
    exactly whether anything else holds the array object.
    """
    # Indexing (not a loop variable) so that no extra reference is alive during the count.
    shared = [i for i in range(len(values)) if type(values[i]) is _ArrayImpl and _getrefcount(values[i]) > _OWN_REFS]
    if shared:
        copies = jax.device_put([values[i] for i in shared], may_alias=False)
        for i, c in zip(shared, copies):
            values[i] = c


def _note_lost(err: BaseException, donated: Sequence[Variable]) -> None:
    """If the call failed after XLA took donated buffers, say which Variables lost their value."""
    lost = [v for v in donated if isinstance(v.raw_value, jax.Array) and v.raw_value.is_deleted()]
    if not lost or not hasattr(err, "add_note"):
        return
    names = []
    for v in lost[:10]:
        hint = getattr(v, "_nnx_path", None)
        path = hint[1][1:] if hint is not None and isinstance(hint[0], tuple) else (hint[1] if hint else ())
        names.append("/".join(map(str, path)) or "<root>")
    more = f" and {len(lost) - 10} more" if len(lost) > 10 else ""
    err.add_note(
        f"nnx.jit: the call failed after its donated buffers were handed to XLA, so {len(lost)} donated "
        f"Variable(s) now hold deleted arrays: {', '.join(names)}{more}. Restore them before using the model "
        "again, e.g. nnx.update(model, nnx.state(backup)) from an nnx.clone kept before the step, or from a "
        "checkpoint."
    )


# =====================================================================================
# in_shardings entries for modules
# =====================================================================================
def _is_sharding_entry(x: Any) -> bool:
    return x is None or isinstance(x, (jax.sharding.Sharding, jax.sharding.PartitionSpec, Mapping)) or _is_node(x)


def _sharding_for(entry: Any, path: tuple, var: Variable, lookup: dict) -> Any:
    """The sharding of one Variable under a module's ``in_shardings``/``out_shardings`` entry."""
    if entry is None or isinstance(entry, (jax.sharding.Sharding, jax.sharding.PartitionSpec)):
        return entry
    if is_table_entry(entry):  # nnx.get_named_sharding(model, mesh), nnx.prefix(model, {...})
        sharding = _table_lookup(entry, path)
        return None if sharding is _MISSING else sharding
    for key, sharding in entry.items():  # {filter: sharding}
        if filterlib.to_predicate(key)(path, var):
            return sharding
    return None



# =====================================================================================
# jit
# =====================================================================================
_LEAF_TYPES: set = {int, float, bool, complex, np.ndarray}


def _plain_leaf(x: Any) -> bool:
    """Is ``x`` a pytree leaf that is not a graph node (so the fast path may pass it as is)?"""
    t = type(x)
    if t in _LEAF_TYPES:
        return True
    if _is_node(x) or x is None:
        return False
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(x)):
        if isinstance(x, jax.Array) or isinstance(x, np.generic):
            _LEAF_TYPES.add(t)
        return True
    return False


class _Entry:
    """The fast path of one jit-wrapped function: valid for one set of roots at one epoch.

    It holds the roots weakly (their Variables strongly, to read and write
    them fast); the weak references' callback clears the entry as soon as any
    root is freed, so a dropped model's arrays are released.
    """

    __slots__ = ("epoch", "nargs", "refs", "dyn_pos", "statics", "variables", "don_vars", "keep_vars", "fn")


class _Compiled:
    __slots__ = ("fn", "don_idx", "keep_idx")


class _Jitted:
    """A function wrapped by :func:`jit` (call it like the function)."""

    def __init__(
        self,
        fun,
        static_argnums,
        static_argnames,
        donate_argnums,
        donate_argnames,
        in_shardings,
        out_shardings,
        jit_kwargs,
    ):
        self._fun = fun
        self._static_argnums, self._static_argnames = _resolve_argnums(fun, static_argnums, static_argnames)
        self._donate_argnums, self._donate_argnames = _resolve_argnums(fun, donate_argnums, donate_argnames)
        self._in_shardings = in_shardings
        self._out_shardings = out_shardings
        self._jit_kwargs = jit_kwargs
        self._compiled: dict = {}
        self._entry: _Entry | None = None
        self._roots = _RootsCache()
        functools.update_wrapper(self, fun)

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return functools.partial(self, obj)

    def __repr__(self) -> str:
        return f"nnx.jit({getattr(self._fun, '__qualname__', self._fun)!r})"

    # -- the hot path -----------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        e = self._entry
        if e is not None and not kwargs and e.epoch == _epoch._current and len(args) == e.nargs:
            for i, r in e.refs:
                if args[i] is not r():
                    break
            else:
                types = _LEAF_TYPES
                for i in e.dyn_pos:
                    if type(args[i]) not in types:
                        break
                else:
                    for i, s in e.statics:
                        a = args[i]
                        if a is not s and a != s:
                            break
                    else:
                        dyn = [args[i] for i in e.dyn_pos]
                        variables = e.variables
                        don = [v.raw_value for v in e.don_vars]
                        if don:
                            _own_donated(don)
                        try:
                            changed, extra, out, meta = e.fn(don, [v.raw_value for v in e.keep_vars], *dyn)
                        except Exception as err:
                            _explain_leak(variables, err)
                            _note_lost(err, e.don_vars)
                            raise
                        if meta is None:
                            for j, x in changed.items():
                                variables[j].raw_value = x
                            return out
                        roots = tuple(args[i] for i, _ in e.refs)
                        aligned = _scatter(len(variables), _KEEP, (tuple(changed), tuple(changed.values())))
                        return _apply(meta, aligned, extra, out, self._roots.get(roots))
        return self._call_slow(args, kwargs)

    # -- everything else ----------------------------------------------------------------
    def _split_static(self, args: tuple, kwargs: dict):
        n = len(args)
        static_pos = sorted({i + n if i < 0 else i for i in self._static_argnums if -n <= i < n})
        statics = [(i, args[i]) for i in static_pos]
        static_kw = [(k, kwargs[k]) for k in self._static_argnames if k in kwargs]
        for _, s in statics + static_kw:
            try:
                hash(s)
            except TypeError:
                raise ValueError(
                    f"nnx.jit: static arguments must be hashable, got an unhashable {type(s).__name__}. "
                    "Pass arrays and modules as normal (non-static) arguments."
                ) from None
        dargs = tuple(None if i in static_pos else a for i, a in enumerate(args))
        dkwargs = {k: v for k, v in kwargs.items() if k not in self._static_argnames}
        return dargs, dkwargs, tuple(statics), tuple(static_kw)

    def _prepare(self, args: tuple, kwargs: dict):
        dargs, dkwargs, statics, static_kw = self._split_static(args, kwargs)
        inputs = _Inputs(dargs, dkwargs, self._roots)
        key = (inputs.graphdef, inputs.treedef, inputs.mask, statics, static_kw)
        comp = self._compiled.get(key)
        if comp is None:
            comp = self._compile(inputs, dargs, dkwargs, statics, static_kw)
            if len(self._compiled) > 64:
                self._compiled.clear()
            self._compiled[key] = comp
        return inputs, comp, statics

    def _call_slow(self, args: tuple, kwargs: dict):
        epoch_before = _epoch._current
        inputs, comp, statics = self._prepare(args, kwargs)
        variables = inputs.variables
        don_vars = [variables[j] for j in comp.don_idx]
        keep_vars = [variables[j] for j in comp.keep_idx]
        don = [v.raw_value for v in don_vars]
        if don:
            _own_donated(don)
        try:
            changed, extra, out, meta = comp.fn(don, [v.raw_value for v in keep_vars], *inputs.others)
        except Exception as err:
            _explain_leak(variables, err)
            _note_lost(err, don_vars)
            raise
        if meta is None:
            for j, x in changed.items():
                variables[j].raw_value = x
            result = out
        else:
            aligned = _scatter(len(variables), _KEEP, (tuple(changed), tuple(changed.values())))
            result = _apply(meta, aligned, extra, out, inputs.flat)
        self._remember(args, kwargs, inputs, comp, statics, don_vars, keep_vars, epoch_before, meta)
        return result

    def _remember(self, args, kwargs, inputs, comp, statics, don_vars, keep_vars, epoch_before, meta):
        """Set up the fast path for calls like this one (top-level modules and arrays only)."""
        self._entry = None
        if kwargs or (meta is not None and meta.in_changed):
            return
        static_pos = {i for i, _ in statics}
        refs, dyn_pos = [], []
        drop = self._drop_entry_callback()
        for i, a in enumerate(args):
            if i in static_pos:
                continue
            if _is_node(a):
                try:
                    refs.append((i, weakref.ref(a, drop)))
                except TypeError:
                    return
            elif _plain_leaf(a):
                dyn_pos.append(i)
            else:
                return
        flat = inputs.flat
        if _epoch._current != epoch_before and flat is not None:
            # Something was built while tracing: make sure the arguments themselves did not change.
            again = graph.flatten_roots(inputs.roots)
            if again.graphdef != flat.graphdef or any(a is not b for a, b in zip(again.variables, flat.variables)):
                return
        e = _Entry()
        e.epoch = _epoch._current
        if flat is not None:
            self._roots.store(inputs.roots, flat)
            if self._roots._flat is not None:
                self._roots._flat.epoch = e.epoch
        e.nargs = len(args)
        e.refs = tuple(refs)
        e.dyn_pos = tuple(dyn_pos)
        e.statics = statics
        e.variables = inputs.variables
        e.don_vars = don_vars
        e.keep_vars = keep_vars
        e.fn = comp.fn
        self._entry = e

    def _drop_entry_callback(self) -> Callable:
        me = weakref.ref(self)

        def drop(_):  # a root of the cached call was freed: let go of its Variables
            jitted = me()
            if jitted is not None:
                jitted._entry = None

        return drop

    def _compile(self, inputs: _Inputs, dargs, dkwargs, statics, static_kw) -> _Compiled:
        fun = self._fun
        gd = inputs.graphdef
        treedef, mask = inputs.treedef, inputs.mask
        n_vars = len(inputs.variables)
        # Which top-level argument each leaf belongs to.
        args_td, kw_td = treedef.children()
        arg_of_leaf: list = []
        for i, c in enumerate(args_td.children()):
            arg_of_leaf += [i] * c.num_leaves
        for k, c in zip(kw_td.node_data()[1], kw_td.children()):
            arg_of_leaf += [k] * c.num_leaves
        root_pos = inputs.root_positions()
        root_arg = [arg_of_leaf[p] for p in root_pos]

        def donated(a) -> bool:
            return a in self._donate_argnums if isinstance(a, int) else a in self._donate_argnames

        # A Variable is donated only if every argument that reaches it is donated.
        don_idx, keep_idx = [], []
        if inputs.flat is not None:
            reach: list[set] = [set() for _ in range(n_vars)]
            for path, j in inputs.flat.aliases.items():
                reach[j].add(root_arg[path[0]])
            for j in range(n_vars):
                (don_idx if reach[j] and all(donated(a) for a in reach[j]) else keep_idx).append(j)
        other_args = [a for a, m in zip(arg_of_leaf, mask) if not m]
        dyn_donate = tuple(2 + k for k, a in enumerate(other_args) if donated(a))
        donate = ((0,) if don_idx else ()) + dyn_donate

        jit_kwargs = dict(self._jit_kwargs)
        out_state: list = []
        relayout: frozenset = frozenset()
        if self._in_shardings is not None or self._out_shardings is not None:
            in_s, out_state = self._shardings(inputs, dargs, dkwargs, statics, don_idx, keep_idx)
            if self._in_shardings is not None:
                jit_kwargs["in_shardings"] = in_s
                # Variables not yet in the layout asked for come back (and so are stored) in it.
                relayout = frozenset(
                    j for j, (v, sh) in enumerate(zip(inputs.variables, out_state))
                    if sh is not None and not _has_layout(v.raw_value, sh)
                )
            # Which Variables come out is known only after tracing, so their layout is pinned
            # inside (below) rather than by an out_shardings prefix; so is out_shardings' (it
            # may name modules in the output, whose Variables travel apart from the output).

        static_items = statics
        out_spec = self._out_shardings
        pinned: dict = {}  # id(traced value) -> the sharding out_shardings gives it
        layouts: list = []
        don_t, keep_t = tuple(don_idx), tuple(keep_idx)
        don_set = frozenset(don_idx) | relayout

        def inner(don, keep, *others):
            leaves = _scatter(n_vars, None, (don_t, don), (keep_t, keep))
            args, kwargs, roots, pre = _enter_built(gd, treedef, mask, leaves, others)
            if static_items or static_kw:
                args = list(args)
                for i, s in static_items:
                    args[i] = s
                kwargs = dict(kwargs, **dict(static_kw))
            epoch = _epoch._current
            out = fun(*args, **kwargs)
            if out_spec is not None:
                out = _constrain_outputs(out_spec, out, pinned)
            if pre is not None and _epoch._current == epoch and not _holds_node(out):
                # No structural edit anywhere while the function ran (it would have moved the
                # epoch), so the graph is still the one built on entry: read its Variables
                # instead of walking it again (a second full traversal at trace time).
                aligned, extra, meta = [v.raw_value for v in pre.variables], [], None
            else:
                aligned, extra, out, meta = _leave(pre, roots, out, leaves)
            # Only Variables whose value the function replaced travel out: an output that *is*
            # the input tracer is unchanged, so an inference call returns no state at all.
            # Donated ones always come back (their input buffers are consumed).
            changed = {j: x for j, x in enumerate(aligned) if x is not leaves[j] or j in don_set}
            if out_state:  # updated Variables keep their input sharding
                for j, x in changed.items():
                    if out_state[j] is not None:
                        changed[j] = jax.lax.with_sharding_constraint(x, out_state[j])
            result = changed, extra, out, meta
            if out_spec is not None:
                # The layout of each output leaf that out_shardings pinned (None for the rest),
                # read by the shape-only pass below to build jax.jit's own out_shardings.
                layouts[:] = [jax.tree_util.tree_map(lambda x: pinned.get(id(x)), result)]
                pinned.clear()
            return result

        inner.__name__ = getattr(fun, "__name__", "fn")
        inner.__qualname__ = getattr(fun, "__qualname__", inner.__name__)
        comp = _Compiled()
        if out_spec is not None:
            # Which leaves come out (changed Variables, new ones, the output) is known only after
            # tracing: a shape-only pass finds the layout of each, then jax.jit pins them, so the
            # results carry exactly the shardings asked for (a constraint alone may be relaxed).
            jax.eval_shape(inner, [v.raw_value for v in (inputs.variables[j] for j in don_t)],
                           [v.raw_value for v in (inputs.variables[j] for j in keep_t)], *inputs.others)
            jit_kwargs["out_shardings"] = layouts[0]
        comp.fn = jax.jit(inner, donate_argnums=donate, **jit_kwargs)
        comp.don_idx, comp.keep_idx = don_t, keep_t
        return comp

    def _shardings(self, inputs: _Inputs, dargs, dkwargs, statics, don_idx, keep_idx):
        spec = self._in_shardings
        if isinstance(spec, (tuple, list)) and statics and len(spec) == len(dargs) - len(statics):
            # As in jax.jit: one entry per non-static positional argument.
            it = iter(spec)
            static_pos = {i for i, _ in statics}
            spec = tuple(None if i in static_pos else next(it) for i in range(len(dargs)))
        if spec is None:
            entries = [None] * len(inputs.mask)
        else:
            entries = _call_entries(spec, dargs, dkwargs, None, _is_sharding_entry, "nnx.jit in_shardings")
        root_pos = inputs.root_positions()
        lookup: dict = {}
        var_sh = [
            _sharding_for(entries[root_pos[p[0]]], p[1:], v, lookup)
            for p, v in zip(inputs.flat.graphdef.paths, inputs.flat.variables)
        ] if inputs.flat is not None else []
        if inputs.flat is not None and spec is not None:
            _check_shared_entries(
                inputs, entries, var_sh, lambda e, rel, v: _sharding_for(e, rel, v, lookup), "nnx.jit in_shardings",
                kind="sharding", unset=None,
            )
        others_sh = [s for s, m in zip(entries, inputs.mask) if not m]
        in_s = ([var_sh[j] for j in don_idx], [var_sh[j] for j in keep_idx], *others_sh)
        return in_s, var_sh

    # -- introspection -------------------------------------------------------------------
    def lower(self, *args, **kwargs):
        """Lower for these arguments without running (``.compile()``, ``.as_text()``, memory/cost analysis).

        >>> import jax.numpy as jnp, nnxlite as nnx
        >>> model = nnx.Linear(2, 2, ctx=nnx.context(0))
        >>> f = nnx.jit(lambda m, x: m(x))
        >>> "dot_general" in f.lower(model, jnp.ones((1, 2))).as_text()
        True
        """
        inputs, comp, _ = self._prepare(args, kwargs)
        variables = inputs.variables
        return comp.fn.lower(
            [variables[j].raw_value for j in comp.don_idx],
            [variables[j].raw_value for j in comp.keep_idx],
            *inputs.others,
        )


class _Built:
    """What ``_leave`` needs of the traversal of a graph just built from a GraphDef, without walking it."""

    __slots__ = ("graphdef", "variables", "node_objects")


def _enter_built(gd, treedef, mask, state_leaves, others):
    """``_enter`` for ``nnx.jit``: the same fresh objects and rebuilt arguments, one graph walk fewer.

    A graph built from ``gd`` is traversed in ``gd``'s own order, so its
    Variables and nodes come straight from the build; at 20,000 leaves the
    walk would be a large share of the trace.
    """
    if gd is None:
        return _enter(gd, treedef, mask, state_leaves, others)
    variables, nodes = graph._build_all(gd, list(state_leaves))
    roots = nodes[0]
    pre = _Built()
    pre.graphdef, pre.variables, pre.node_objects = gd, _as_traversed(gd, variables, nodes), nodes
    it_r, it_o = iter(roots), iter(others)
    args, kwargs = jax.tree_util.tree_unflatten(treedef, [next(it_r) if m else next(it_o) for m in mask])
    return args, kwargs, roots, pre


def _as_traversed(gd, variables: list, nodes: list) -> list:
    """The built Variables as a traversal lists them: path hints set, plain data leaves as their live slots."""
    label = tuple(type(r).__name__ for r in nodes[0])  # the hint a walk of the roots tuple gives
    data = frozenset(gd._data_leaves)
    listed = list(variables)
    for j, (v, path) in enumerate(zip(variables, gd.paths)):
        if j not in data:
            v._nnx_path = (label, path)  # error messages name the Variable by it
    if data:
        for i, (_, kind, _, var_slots, _) in enumerate(graph._plan(gd)[1]):
            for key, j in var_slots:
                if j in data:
                    listed[j] = _data.slot(nodes[i], key, graph._SLOT_TYPES[kind])
    return listed


def _constrain_outputs(spec: Any, out: Any, pinned: dict) -> Any:
    """Pin the layout of ``out`` to ``out_shardings``, modules in it included (inside the trace).

    ``spec`` is a prefix of the output, as in ``jax.jit``; an entry that lands
    on a module (a Sharding, a ``{filter: sharding}`` dict, ``nnx.StateSharding``
    or a State of shardings by path) constrains each of its Variables, which
    then leave the compiled function in that layout.
    """
    leaves, treedef = jax.tree_util.tree_flatten(out, is_leaf=_is_node)
    entries = _prefix_entries(spec, out, _is_sharding_entry, "nnx.jit out_shardings")
    lookup: dict = {}
    for i, (x, entry) in enumerate(zip(leaves, entries)):
        if entry is None:
            continue
        if not _is_node(x):
            if _is_mapping_entry(entry):
                raise ValueError(
                    f"nnx.jit out_shardings: {entry!r} gives shardings per Variable, but the output holds a "
                    f"{type(x).__name__} there, not a module; give a Sharding or PartitionSpec."
                )
            if isinstance(x, jax.Array):
                leaves[i] = jax.lax.with_sharding_constraint(x, entry)
                pinned[id(leaves[i])] = entry
            continue
        flat = graph.flatten_roots((x,))
        for path, var in zip(flat.graphdef.paths, flat.variables):
            sharding = _sharding_for(entry, path[1:], var, lookup)
            if sharding is not None and isinstance(var.raw_value, jax.Array):
                var.raw_value = jax.lax.with_sharding_constraint(var.raw_value, sharding)
                pinned[id(var.raw_value)] = sharding
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _is_mapping_entry(entry: Any) -> bool:
    return isinstance(entry, Mapping) or _is_node(entry)


def _holds_node(out: Any) -> bool:
    """Does a function's output contain a module (or another graph node) anywhere?"""
    return any(_is_node(x) for x in jax.tree_util.tree_leaves(out, is_leaf=_is_node))


def _has_layout(x: Any, sharding: Any) -> bool:
    """Is array ``x`` already laid out as ``sharding`` (False when unsure)?"""
    try:
        return isinstance(sharding, jax.sharding.Sharding) and x.sharding.is_equivalent_to(sharding, x.ndim)
    except Exception:
        return False


def _resolve_argnums(fun, argnums, argnames) -> tuple[tuple, tuple]:
    """Normalize (argnums, argnames) and, as jax does, fill one from the other via the signature."""
    if argnums is None:
        argnums = ()
    if isinstance(argnums, int):
        argnums = (argnums,)
    if argnames is None:
        argnames = ()
    if isinstance(argnames, str):
        argnames = (argnames,)
    argnums, argnames = tuple(argnums), tuple(argnames)
    try:
        params = list(inspect.signature(fun).parameters.values())
    except (TypeError, ValueError):
        return argnums, argnames
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = set(argnames)
    nums = set(argnums)
    for i in argnums:
        if 0 <= i < len(positional) and params[i].kind == params[i].POSITIONAL_OR_KEYWORD:
            names.add(positional[i])
    for k in argnames:
        if k in positional:
            nums.add(positional.index(k))
    return tuple(sorted(nums)), tuple(sorted(names))


def jit(
    fun: Callable | None = None,
    *,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
    donate_argnums: int | Sequence[int] = (),
    donate_argnames: str | Sequence[str] = (),
    in_shardings: Any = None,
    out_shardings: Any = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    **jit_kwargs: Any,
) -> Callable:
    """``jax.jit`` for functions of modules: compile once, update modules in place.

    Arguments may be modules (and Optimizers, Contexts, Variables) anywhere in
    their pytrees; their state is passed to the compiled function as arrays
    and updates made inside are written back. See the module docstring for
    the identity and structure rules.

    >>> import jax, jax.numpy as jnp, optax, nnxlite as nnx
    >>> model = nnx.Linear(3, 1, ctx=nnx.context(0))
    >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    >>> @nnx.jit
    ... def train_step(model, optimizer, x, y):
    ...     def loss_fn(model):
    ...         return jnp.mean((model(x) - y) ** 2)
    ...     loss, grads = nnx.value_and_grad(loss_fn)(model)
    ...     optimizer.update(grads)
    ...     return loss
    >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 1))
    >>> losses = [float(train_step(model, optimizer, x, y)) for _ in range(3)]
    >>> losses[2] < losses[0], int(optimizer.step.value)
    (True, 3)

    Args:
      fun: the function (or use ``@nnx.jit(...)`` as a decorator factory).
      static_argnums, static_argnames: arguments passed as compile-time
        constants (hashable), as in ``jax.jit``.
      donate_argnums, donate_argnames: arguments whose buffers XLA may reuse.
        For a module argument this donates the arrays of its Variables (a
        Variable also reached from a non-donated argument is not donated); the
        Variables then hold the new arrays, and old references to the arrays
        become invalid.
      in_shardings: ``None`` or one entry per positional argument (or a single
        entry for all). For a module argument the entry is a
        ``jax.sharding.Sharding`` (or ``PartitionSpec``, or None) for all its
        Variables, a State of them by path (``nnx.get_named_sharding(model,
        mesh)``), or a dict ``{filter: sharding}`` (first match; None for the
        rest); for other arguments it is a pytree prefix, as in ``jax.jit``.
        Updated Variables keep their input sharding on output.
      out_shardings: a pytree prefix of the function's non-module outputs.
      graph, graph_updates: flax.nnx's tree-mode switches, accepted; nnxlite
        keeps graph semantics in every mode (shared references stay shared,
        updates come out), a superset of flax's tree mode.
      **jit_kwargs: passed to ``jax.jit`` (``keep_unused``, ``compiler_options``...).

    ``nnx.jit(model.method)`` passes ``model`` as the first argument (a
    module closed over as a constant would not see updates, and changing it
    inside would leak tracers).

    Speed: the traversal of the arguments is cached while they are the same
    objects and no structural edit happened anywhere (a global epoch), so a
    call costs one ``jax.jit`` dispatch plus one read and one write per
    Variable. ``lower(*args)`` gives ``jax.stages.Lowered``.
    """
    if fun is None:
        return functools.partial(
            jit,
            static_argnums=static_argnums,
            static_argnames=static_argnames,
            donate_argnums=donate_argnums,
            donate_argnames=donate_argnames,
            in_shardings=in_shardings,
            out_shardings=out_shardings,
            graph=graph,
            graph_updates=graph_updates,
            **jit_kwargs,
        )
    check_mode(graph, graph_updates, "nnx.jit")
    owner = getattr(fun, "__self__", None)
    if inspect.ismethod(fun) and _is_node(owner):
        # `nnx.jit(model.method)`: the module must be an argument, not a constant closed over
        # (its updates would leak tracers). Jit the function and pass the module first.
        def shift(nums):
            nums = (nums,) if isinstance(nums, int) else tuple(nums or ())
            return tuple(i + 1 if i >= 0 else i for i in nums)

        if isinstance(in_shardings, (tuple, list)):
            in_shardings = (None, *in_shardings)
        inner = _Jitted(
            fun.__func__,
            shift(static_argnums),
            static_argnames,
            shift(donate_argnums),
            donate_argnames,
            in_shardings,
            out_shardings,
            jit_kwargs,
        )
        return functools.partial(inner, owner)
    return _Jitted(
        fun, static_argnums, static_argnames, donate_argnums, donate_argnames, in_shardings, out_shardings, jit_kwargs
    )
