"""The lifting core shared by every transform: modules in and out of pure JAX functions.

A lifted transform does three things around its JAX namesake, and all three
live here:

1. **Enter.** :class:`_Inputs` finds the graph nodes (modules, Variables,
   tracked lists/dicts) anywhere in a call's pytree arguments and traverses
   them jointly (:class:`_RootsCache` reuses that traversal between calls);
   inside the JAX function :func:`_enter` rebuilds fresh objects from the
   Variable values.
2. **Leave and write back.** :func:`_leave` (inside) reports the new Variable
   values and, only when needed, a :class:`_Meta` describing structural
   changes and modules in the output; :func:`_apply`/:func:`_finish`
   (outside) replay that onto the caller's objects.
3. **Axis specs and RNG splitting** (``vmap``, ``scan`` and friends):
   :func:`_call_entries` matches ``in_axes``-style prefixes to arguments,
   :func:`_state_specs` resolves each Variable's axis (``{filter: axis}``
   dicts), and :func:`_split_streams`/:func:`_draw_split_keys` give each
   lane or step its own RNG keys. :data:`Carry` marks scan's carry.

Each transform module (``jit.py``, ``mapping.py``, ``loops.py``,
``control.py``, ``autodiff.py``, ``shapes.py``) holds only what its JAX
transform needs on top of this.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import types
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlite import _epoch

from nnxlite import filters as filterlib
from nnxlite import graph
from nnxlite.module import Dict as _TrackedDict
from nnxlite.module import List as _TrackedList
from nnxlite.rng import RngStream, _draw_lock
from nnxlite.state import State, _fmt_path
from nnxlite.transforms.lift_types import is_lift_type
from nnxlite.variables import (
    _EMPTY_METADATA,
    RngKey,
    RngState,
    TracerLeakError,
    Variable,
    _check_live,
    _make,
)

__all__ = ["Carry"]

_Tracer = jax.core.Tracer
_tree_flatten = jax.tree_util.tree_flatten
_tree_unflatten = jax.tree_util.tree_unflatten
_OBJECT, _LIST, _DICT, _TUPLE = graph.OBJECT, graph.LIST, graph.DICT, graph.TUPLE
_STATIC, _VAR, _NODE = graph.STATIC, graph.VAR, graph.NODE


# =====================================================================================
# Graph nodes inside pytrees
# =====================================================================================
def _is_node(x: Any) -> bool:
    """Objects the transforms treat as graph roots: modules, Variables, tracked lists/dicts."""
    return isinstance(x, (Variable, _TrackedList, _TrackedDict)) or isinstance(x, graph._NODE_BASES)


class _RootsCache:
    """The joint traversal of a call's graph roots, reused while identities and epoch match.

    It holds the roots only weakly and drops everything (the traversal and its
    Variables) as soon as any root is freed, so a cache never keeps a model
    alive after the user let go of it. The cached traversal keeps the
    Variables (needed to read and write them) but not the module objects:
    those are looked up through weak references when a caller asks for them.
    Roots that cannot be weakly referenced (tracked lists) disable the cache.
    """

    __slots__ = ("_refs", "_flat", "__weakref__")

    def __init__(self):
        self._refs: tuple = ()
        self._flat: _DetachedFlat | None = None

    def get(self, roots: tuple):
        cached = self._flat
        refs = self._refs
        if cached is not None and cached.epoch == _epoch._current and len(refs) == len(roots):
            for r, o in zip(refs, roots):
                if r() is not o:
                    break
            else:
                return _FlatView(cached, roots)
        flat = graph.flatten_roots(roots)
        self.store(roots, flat)
        return flat

    def store(self, roots: tuple, flat: graph._Flat) -> None:
        self._refs, self._flat = (), None
        try:
            self._refs = _weak_refs(roots, self._drop_callback())
        except TypeError:
            return
        self._flat = _DetachedFlat(flat)

    def _drop_callback(self) -> Callable:
        me = weakref.ref(self)

        def drop(_):
            cache = me()
            if cache is not None:
                cache._refs, cache._flat = (), None

        return drop


def _weak_refs(objects: Sequence, callback: Callable) -> tuple:
    """Weak references to ``objects`` that call ``callback`` when any of them is freed (TypeError if one cannot)."""
    return tuple(weakref.ref(o, callback) for o in objects)


class _DetachedFlat:
    """A traversal without strong references to its module objects (see :class:`_RootsCache`)."""

    __slots__ = ("epoch", "graphdef", "variables", "aliases", "node_paths", "groups", "_nodes")

    def __init__(self, flat: graph._Flat):
        self.epoch = flat.epoch
        self.graphdef = flat.graphdef
        self.variables = flat.variables
        self.aliases = flat.aliases
        self.node_paths = flat.node_paths
        self.groups = flat.groups
        # Node 0 is the tuple of roots (rebuilt from the call's own roots); tuples cannot
        # be weakly referenced, and are kept as they are (they hold only what a root holds).
        nodes = []
        for o in flat.node_objects[1:]:
            try:
                nodes.append(weakref.ref(o))
            except TypeError:
                nodes.append(o)
        self._nodes = nodes


class _FlatView:
    """A cached traversal seen for one call: the live roots plus the cache's objects."""

    __slots__ = ("_d", "_roots", "_node_objects")

    def __init__(self, detached: _DetachedFlat, roots: tuple):
        self._d = detached
        self._roots = roots
        self._node_objects = None

    epoch = property(lambda self: self._d.epoch)
    graphdef = property(lambda self: self._d.graphdef)
    variables = property(lambda self: self._d.variables)
    aliases = property(lambda self: self._d.aliases)
    node_paths = property(lambda self: self._d.node_paths)
    groups = property(lambda self: self._d.groups)

    @property
    def node_objects(self) -> list:
        if self._node_objects is None:
            objs = [tuple(self._roots)]
            for o in self._d._nodes:
                objs.append(o() if type(o) is weakref.ref else o)
            self._node_objects = objs
        return self._node_objects


class _Inputs:
    """A call's arguments: pytree structure, graph roots and the other leaves."""

    __slots__ = ("treedef", "mask", "roots", "others", "flat")

    def __init__(self, args: tuple, kwargs: dict, cache: _RootsCache | None = None):
        leaves, self.treedef = _tree_flatten((args, kwargs), is_leaf=_is_node)
        self.mask = tuple(_is_node(x) for x in leaves)
        self.roots = tuple(x for x, m in zip(leaves, self.mask) if m)
        self.others = [x for x, m in zip(leaves, self.mask) if not m]
        if self.roots:
            self.flat = cache.get(self.roots) if cache is not None else graph.flatten_roots(self.roots)
        else:
            self.flat = None

    @property
    def variables(self) -> list:
        return self.flat.variables if self.flat is not None else []

    @property
    def graphdef(self) -> graph.GraphDef | None:
        return self.flat.graphdef if self.flat is not None else None

    def leaves(self) -> list:
        """The current values of every Variable, in traversal order."""
        return [v.raw_value for v in self.variables]

    def root_positions(self) -> list[int]:
        """Leaf position (in the flattened arguments) of each root."""
        return [i for i, m in enumerate(self.mask) if m]


def _enter(gd, treedef, mask, state_leaves, others):
    """Inside a transform: fresh objects from the leaves, and the call's arguments rebuilt."""
    if gd is not None:
        roots = graph._build(gd, list(state_leaves))
        pre = graph._traverse(roots)
    else:
        roots, pre = (), None
    it_r, it_o = iter(roots), iter(others)
    leaves = [next(it_r) if m else next(it_o) for m in mask]
    args, kwargs = _tree_unflatten(treedef, leaves)
    return args, kwargs, roots, pre


def _scatter(n: int, fill: Any, *groups: tuple) -> list:
    """A list of ``n`` entries, ``fill`` except at the indices of each ``(indices, values)`` group."""
    out = [fill] * n
    for indices, values in groups:
        for j, x in zip(indices, values):
            out[j] = x
    return out


# =====================================================================================
# What a function did to its module arguments: _leave (inside) and _apply (outside)
# =====================================================================================
class _Meta:
    """Static description of the graph after the function ran (only when it is not trivial).

    ``graphdef`` is the joint graph of the input roots followed by the module
    outputs; ``node_origin``/``var_origin`` map each of its nodes/Variables to
    the input node/Variable it was (``-1``: created inside). It is hashable and
    a pytree with no leaves, so it can be returned from ``jax.jit`` and
    compared by ``jax.lax.cond``.
    """

    __slots__ = (
        "graphdef",
        "node_origin",
        "var_origin",
        "node_changed",
        "var_meta_changed",
        "out_treedef",
        "out_node_pos",
        "n_in",
        "in_changed",
        "_hash",
    )

    def __init__(self, graphdef, node_origin, var_origin, node_changed, var_meta_changed, out_treedef, out_node_pos, n_in, in_changed):
        self.graphdef = graphdef
        self.node_origin = node_origin
        self.var_origin = var_origin
        self.node_changed = node_changed
        self.var_meta_changed = var_meta_changed
        self.out_treedef = out_treedef
        self.out_node_pos = out_node_pos
        self.n_in = n_in
        self.in_changed = in_changed
        self._hash = hash((graphdef, node_origin, var_origin, node_changed, out_treedef, out_node_pos, n_in))

    def _key(self):
        return (
            self.graphdef,
            self.node_origin,
            self.var_origin,
            self.node_changed,
            self.var_meta_changed,
            self.out_treedef,
            self.out_node_pos,
            self.n_in,
            self.in_changed,
        )

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return self is other or (isinstance(other, _Meta) and self._hash == other._hash and self._key() == other._key())

    def new_var_indices(self) -> list[int]:
        return [j for j, o in enumerate(self.var_origin) if o < 0]

    def __repr__(self) -> str:
        return f"_Meta({self.graphdef!r}, in_changed={self.in_changed}, outputs={len(self.out_node_pos)})"


jax.tree_util.register_pytree_node(_Meta, lambda m: ((), m), lambda m, _: m)


def _same_static(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        # The GraphDef's notion of "the same static": type, value, and exact float bits.
        return type(a) is type(b) and bool(a == b) and graph._static_sig(a) == graph._static_sig(b)
    except Exception:
        return False


# How many objects _find_tracer looks at inside one static value before giving up.
_SCAN_BUDGET = 10_000


def _find_tracer(value: Any) -> bool:
    """Does a static value hold a JAX tracer somewhere inside (objects, partials, closures)?"""
    stack, seen, budget = [value], set(), _SCAN_BUDGET
    while stack and budget:
        x = stack.pop()
        if isinstance(x, _Tracer):
            return True
        if x is None or isinstance(x, (str, bytes, int, float, complex, type)) or id(x) in seen:
            continue
        seen.add(id(x))
        budget -= 1
        if isinstance(x, (tuple, list, set, frozenset)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, functools.partial):
            stack.extend((x.func, *x.args, *x.keywords.values()))
        else:
            closure = getattr(x, "__closure__", None)
            if closure:
                for cell in closure:
                    try:
                        stack.append(cell.cell_contents)
                    except ValueError:  # an empty cell
                        pass
            d = getattr(x, "__dict__", None)
            if isinstance(d, dict) and not isinstance(x, types.ModuleType):
                stack.extend(d.values())
    return False


def _check_static_leaks(flat, changed: list, n_in: int) -> None:
    """Raise if a changed node's static attribute carries a tracer out of the trace.

    Only Variables travel out of a transformation as values; a tracer kept in a
    plain attribute (an object, a ``functools.partial``, a closure) would be
    written back onto the caller's module and fail later, far from its cause.
    """
    for i, (_, _, items) in enumerate(flat.graphdef.nodes):
        if not changed[i]:
            continue
        for key, tag, payload in items:
            if tag != _STATIC or not _find_tracer(payload):
                continue
            path = flat.node_path(i) + (key,)
            side = "argument" if path and isinstance(path[0], int) and path[0] < n_in else "output"
            where = "/".join(map(str, path[1:])) or "<root>"
            raise TracerLeakError(
                f"The attribute {where} of a module {side} was set inside a JAX transformation to a "
                f"{type(payload).__name__} that holds a tracer. Only Variables carry traced values out of "
                "nnx.jit/vmap/scan/grad; a tracer kept in a plain attribute would be left behind with no "
                f"value. Fix: store the array in a Variable (e.g. nnx.Variable(x) or nnx.Intermediate(x)), "
                "or return it from the function instead of keeping it on the module."
            )


def _leave(pre, roots: tuple, out: Any, in_leaves: list):
    """After the function: new values of the input Variables, plus what else changed.

    Returns ``(aligned, extra, out, meta)``: ``aligned[j]`` is the new value
    of input Variable ``j`` (its old value if it left the graph); in the
    common case (same structure, no module in the output) ``extra`` is empty,
    ``out`` is the function's output and ``meta`` is None. Otherwise ``extra``
    holds the values of Variables created inside, ``out`` is the output's
    leaf list with modules replaced by None, and ``meta`` a :class:`_Meta`.
    """
    out_leaves, out_treedef = _tree_flatten(out, is_leaf=_is_node)
    node_pos = tuple(i for i, x in enumerate(out_leaves) if _is_node(x))
    post_in = graph._traverse(roots) if pre is not None else None
    same = pre is None or post_in.graphdef == pre.graphdef
    if same and not node_pos:
        return ([v.raw_value for v in post_in.variables] if pre is not None else []), [], out, None
    joint = tuple(roots) + tuple(out_leaves[i] for i in node_pos)
    post = graph._traverse(joint)
    if pre is not None:
        node_ids = {id(o): i for i, o in enumerate(pre.node_objects)}
        var_ids = {id(v): j for j, v in enumerate(pre.variables)}
        pre_gd = pre.graphdef
    else:
        node_ids, var_ids, pre_gd = {}, {}, None
    node_origin = [node_ids.get(id(o), -1) for o in post.node_objects]
    node_origin[0] = -1  # the synthetic tuple of roots and outputs
    node_origin = tuple(node_origin)
    var_origin = tuple(var_ids.get(id(v), -1) for v in post.variables)
    gd = post.graphdef
    node_changed = []
    for i, (_, _, items) in enumerate(gd.nodes):
        o = node_origin[i]
        if o < 0:
            node_changed.append(True)
            continue
        old_items = pre_gd.nodes[o][2]
        changed = len(items) != len(old_items)
        if not changed:
            for (k, tag, p), (k0, tag0, p0) in zip(items, old_items):
                if k != k0 or tag != tag0:
                    changed = True
                elif tag == _STATIC:
                    changed = not _same_static(p, p0)
                elif tag == _VAR:
                    changed = var_origin[p] != p0
                else:
                    changed = node_origin[p] != p0
                if changed:
                    break
        node_changed.append(changed)
    _check_static_leaks(post, node_changed, len(roots))
    var_meta_changed = tuple(
        o >= 0 and gd.vardefs[j] != pre_gd.vardefs[o] for j, o in enumerate(var_origin)
    )
    aligned = list(in_leaves)
    extra = []
    for v, o in zip(post.variables, var_origin):
        if o >= 0:
            aligned[o] = v.raw_value
        else:
            extra.append(v.raw_value)
    meta = _Meta(
        gd, node_origin, var_origin, tuple(node_changed), var_meta_changed, out_treedef, node_pos, len(roots), not same
    )
    plain = [None if _is_node(x) else x for x in out_leaves]
    return aligned, extra, plain, meta


class _Keep:
    """Marks an input Variable whose value must not be written back."""

    def __repr__(self) -> str:
        return "<keep>"


_KEEP = _Keep()


def _apply(
    meta: _Meta, aligned: Sequence, extra: Sequence, plain: list, outer: graph._Flat | None, on_new: Callable | None = None
) -> Any:
    """Outside: replay on the caller's objects what the function did, and build its output.

    Writes values (``_KEEP`` entries are skipped), rewrites the attributes of
    caller objects whose structure changed, creates the objects made inside,
    and returns the output with caller objects where inputs were returned.
    ``on_new(k, variable)`` is called for the ``k``-th Variable created inside
    (``meta.new_var_indices()`` order), e.g. to add a stacked axis to its metadata.
    """
    gd = meta.graphdef
    outer_vars = outer.variables if outer is not None else ()
    outer_nodes = outer.node_objects if outer is not None else ()
    var_specs, node_specs, _ = graph._plan(gd)
    structural = False
    variables = []
    it_extra = iter(extra)
    n_new = 0
    for j, (t, md) in enumerate(var_specs):
        o = meta.var_origin[j]
        if o >= 0:
            v = outer_vars[o]
            x = aligned[o]
            if x is not _KEEP:
                v.raw_value = x
            if meta.var_meta_changed[j]:
                v._metadata = dict(md) if md else _EMPTY_METADATA
                structural = True
        else:
            v = _make(t, next(it_extra), md)
            if on_new is not None:
                on_new(n_new, v)
            n_new += 1
        variables.append(v)
    for j in gd._data_leaves:  # plain data leaves (array attributes) go into nodes unboxed
        variables[j] = variables[j].raw_value
    objs: list = [None] * len(node_specs)
    for i, (t, kind, *_rest) in enumerate(node_specs):
        o = meta.node_origin[i]
        if o >= 0:
            objs[i] = outer_nodes[o]
        elif kind == _OBJECT:
            objs[i] = object.__new__(t)
        elif kind == _LIST:
            objs[i] = list.__new__(t)
        elif kind == _DICT:
            objs[i] = dict.__new__(t)

    def node(i: int) -> Any:  # tuples are immutable: built on demand, children first
        obj = objs[i]
        if obj is None:
            t, _, template, var_slots, node_slots = node_specs[i]
            values = list(template.values())
            for key, j in var_slots:
                values[key] = variables[j]
            for key, j in node_slots:
                values[key] = node(j)
            obj = objs[i] = tuple(values) if t is tuple else t(*values)
        return obj

    for i, (t, kind, template, var_slots, node_slots) in enumerate(node_specs):
        if kind == _TUPLE:
            node(i)
            continue
        existing = meta.node_origin[i] >= 0
        if existing and not meta.node_changed[i]:
            continue
        content = dict(template)
        for key, j in var_slots:
            content[key] = variables[j]
        for key, j in node_slots:
            content[key] = node(j)
        obj = objs[i]
        if existing:
            structural = True
        if kind == _OBJECT:
            d = obj.__dict__
            if existing:
                for k in [k for k in d if k not in content]:
                    del d[k]  # removed inside (and stale `_nnx_` caches)
            d.update(content)
        elif kind == _LIST:
            list.__setitem__(obj, slice(None), list(content.values()))
        else:
            dict.clear(obj)
            dict.update(obj, content)
    if structural:
        _epoch.bump()
    outputs = []
    for _, tag, payload in gd.nodes[0][2][meta.n_in :]:
        outputs.append(variables[payload] if tag == _VAR else node(payload))
    leaves = list(plain)
    for pos, obj in zip(meta.out_node_pos, outputs):
        leaves[pos] = obj
    return _tree_unflatten(meta.out_treedef, leaves)


def _write(variables: Sequence, values: Sequence) -> None:
    for v, x in zip(variables, values):
        v.raw_value = x


def _finish(inputs: _Inputs, aligned, extra, out, meta, on_new: Callable | None = None) -> Any:
    """Write back and build the output (common and general case)."""
    if meta is None:
        _write(inputs.variables, aligned)
        return out
    return _apply(meta, aligned, extra, out, inputs.flat, on_new)


def _explain_leak(variables: Sequence, err: BaseException) -> None:
    """If a Variable holds a dead tracer, raise the clear error for it instead of ``err``."""
    for v in variables:
        x = v.raw_value
        if isinstance(x, _Tracer):
            try:
                _check_live(v, x)
            except TracerLeakError as leak:
                raise leak from err


# =====================================================================================
# Axis prefixes
# =====================================================================================
class _CarryType:
    """Marks the carried argument and result of :func:`scan` in ``in_axes``/``out_axes``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> total = nnx.scan(lambda c, x: c + x, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    >>> float(total(jnp.zeros(()), jnp.arange(4.0)))
    6.0
    """

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "nnx.Carry"

    def __reduce__(self):
        return (_CarryType, ())


Carry = _CarryType()


def _is_axis_entry(x: Any) -> bool:
    return x is None or x is Carry or isinstance(x, (int, str, Mapping)) or _is_node(x)



def _one_level(x: Any):
    return _tree_flatten(x, is_leaf=lambda y: y is not x)


def _prefix_entries(prefix: Any, tree: Any, is_entry: Callable, what: str) -> list:
    """One entry of ``prefix`` per leaf of ``tree`` (graph nodes count as leaves), like jax's in_axes.

    A dict is an entry (``{filter: axis}``) unless it is the prefix of a dict
    argument and all its keys are strings, in which case it matches that
    dict key by key, as in JAX.
    """
    if _is_node(tree):
        if is_entry(prefix):
            return [prefix]
        raise ValueError(
            f"{what}: the entry for a {type(tree).__name__} must be an int, None or a dict "
            f"{{filter: axis}}, got {prefix!r}."
        )
    if isinstance(prefix, State) and isinstance(tree, State):
        return _state_prefix_entries(prefix, tree, is_entry, what)
    structural = (
        isinstance(prefix, Mapping)
        and isinstance(tree, Mapping)
        and not is_lift_type(prefix)  # nnx.StateAxes/StateSharding are always one entry
        and all(isinstance(k, str) for k in prefix)
    )
    if not structural and is_entry(prefix):
        return [prefix] * len(jax.tree_util.tree_leaves(tree, is_leaf=_is_node))
    p_children, p_def = _one_level(prefix)
    t_children, t_def = _one_level(tree)
    if p_def != t_def:
        raise ValueError(f"{what}: the spec {prefix!r} does not match the structure {t_def} of the value.")
    out = []
    for p, t in zip(p_children, t_children):
        out.extend(_prefix_entries(p, t, is_entry, what))
    return out


def _state_prefix_entries(prefix: State, tree: State, is_entry: Callable, what: str) -> list:
    """A State of entries by path for a State argument (flax's functional style), matched path by path."""
    table = prefix.flat()
    children, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda y: y is not tree)
    out = []
    for keys, child in children:
        path = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in keys)
        entry = table.get(path)
        if isinstance(entry, Variable):
            entry = entry.raw_value
        out.extend(_prefix_entries(entry, child, is_entry, what))
    return out


def _bind_keywords(f: Callable, spec: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Keyword arguments moved to their positions when ``spec`` has one entry per positional parameter.

    flax.nnx binds keywords to positions before matching ``in_axes``
    (``MLP(key=keys)`` under ``@nnx.vmap(in_axes=(state_axes, 0))``); JAX
    instead maps keywords over axis 0. Only a per-argument tuple that the
    positional arguments alone do not fill triggers the binding, so every call
    JAX accepts keeps JAX's meaning.
    """
    if not kwargs or not isinstance(spec, (tuple, list)) or len(spec) == len(args):
        return args, kwargs
    try:
        bound = inspect.signature(f).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return args, kwargs
    bound.apply_defaults()
    if bound.kwargs or len(bound.args) != len(spec):
        return args, kwargs
    return tuple(bound.args), {}


def _call_entries(spec: Any, args: tuple, kwargs: dict, kw_entry: Any, is_entry: Callable, what: str) -> list:
    """Per-leaf entries for a call, ``spec`` being one entry or a tuple with one per positional argument."""
    if isinstance(spec, list):
        spec = tuple(spec)
    if isinstance(spec, tuple) and not is_entry(spec):
        if len(spec) != len(args):
            raise ValueError(
                f"{what} has {len(spec)} entries but the function was called with {len(args)} positional "
                f"arguments; give one entry per argument (or a single entry for all)."
            )
        entries = []
        for p, a in zip(spec, args):
            entries.extend(_prefix_entries(p, a, is_entry, what))
    else:
        entries = []
        for a in args:
            entries.extend(_prefix_entries(spec, a, is_entry, what))
    for k in sorted(kwargs):
        entries.extend(_prefix_entries(kw_entry, kwargs[k], is_entry, what))
    return entries


_SPLIT = "split"


def _check_axis(ax: Any, allowed: tuple, what: str) -> Any:
    ok = (ax is None and None in allowed) or (ax is Carry and Carry in allowed) or (ax == _SPLIT and _SPLIT in allowed) or (
        isinstance(ax, int) and not isinstance(ax, bool) and int in allowed
    )
    if not ok:
        names = ", ".join("an int" if a is int else repr(a) for a in allowed)
        raise ValueError(f"{what}: invalid axis {ax!r}; expected one of: {names}.")
    return ax


_MISSING = object()


def is_table_entry(entry: Any) -> bool:
    """A per-path entry: a State of values by path, or a copy of the module holding values in its slots.

    ``nnx.prefix(model, {...})`` gives the first; ``nnx.prefix((model, rngs), {...})``
    maps each object like a pytree and gives the second. Either says, for each
    Variable path of the argument, its axis (sharding, spec...).
    """
    return isinstance(entry, State) or _is_node(entry)


def _table_lookup(entry: Any, path: tuple, paths=None) -> Any:
    """What a per-path entry holds at ``path`` (any of ``paths`` for a shared Variable), or ``_MISSING``."""
    for p in (path,) if paths is None else paths:
        x = _walk(entry, p)
        if x is not _MISSING:
            return x
    return _MISSING


def _walk(x: Any, path: tuple) -> Any:
    for key in path:
        try:
            if isinstance(x, (Mapping, list, tuple)):
                x = x[key]
            else:
                x = getattr(x, key) if isinstance(key, str) else x[key]
        except (KeyError, IndexError, AttributeError, TypeError):
            return _MISSING
    if isinstance(x, Variable):
        x = x.raw_value
    if isinstance(x, (Mapping, RngStream)) or _is_node(x):
        return _MISSING  # the entry stops above this Variable: no value of its own
    return x


def _resolve(
    entry: Any, path: tuple, var: Variable, default: Any, rng_default: Any, allowed: tuple, what: str, paths=None
) -> Any:
    """The axis of one Variable under a module's entry (int, None, Carry or a dict of filters).

    ``paths``: all paths of a Variable in a shared sub-module (canonical first);
    a path filter matches if any of them does (:func:`nnxlite.filters.matches`).
    """
    if is_table_entry(entry):
        ax = _table_lookup(entry, path, paths)
        if ax is not _MISSING:
            return _check_axis(ax, allowed, what)
        base = default
    elif isinstance(entry, Mapping):
        for key, ax in entry.items():
            pred = filterlib.to_predicate(key)
            if pred(path, var) if paths is None else filterlib.matches(pred, paths, var):
                return _check_axis(ax, allowed, what)
        base = default
    else:
        base = entry
    if rng_default is not None and isinstance(var, RngState) and not _is_stacked_rng(var):
        return rng_default  # streams are split by default; already-split ones take the entry's axis
    return _check_axis(base, allowed, what)


def _is_stacked_rng(var: Variable) -> bool:
    """An RNG key/count that already holds one entry per lane (e.g. after ``nnx.split_rngs``)."""
    x = var.raw_value
    base = 0
    if isinstance(var, RngKey) and not jax.dtypes.issubdtype(getattr(x, "dtype", np.uint32), jax.dtypes.prng_key):
        base = 1  # a legacy uint32[2] key
    return np.ndim(x) > base


def _reach(gd: graph.GraphDef, node: int) -> list[tuple[tuple, int]]:
    """``(path relative to node, Variable index)`` for every Variable reachable from ``node``, once each."""
    out, seen, stack = [], set(), [(node, ())]
    while stack:
        i, path = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        for key, tag, payload in gd.nodes[i][2]:
            if tag == _VAR:
                out.append((path + (key,), payload))
            elif tag == _NODE:
                stack.append((payload, path + (key,)))
    return out


def _root_reach(gd: graph.GraphDef, k: int) -> list[tuple[tuple, int]]:
    """What joint-traversal root ``k`` reaches (the root itself when it is a Variable)."""
    _, tag, payload = gd.nodes[0][2][k]
    return [((), payload)] if tag == _VAR else _reach(gd, payload)


def _state_specs(inputs: _Inputs, entries: list, default: Any, allowed: tuple, what: str) -> list:
    """The axis spec of each input Variable, from the entry of the argument that owns it.

    A Variable reachable from several arguments (the same module passed twice,
    or a module and its sub-module) must get the same axis from each of
    their entries; otherwise this raises instead of letting one entry win.
    """
    if inputs.flat is None:
        return []
    root_pos = inputs.root_positions()
    flat = inputs.flat
    gd = flat.graphdef
    shared = graph._edges(gd)[2]

    def all_paths(j: int, p: tuple):
        if j not in shared:
            return None
        more = (q[1:] for q in graph._other_paths(gd, j) if q[0] == p[0])
        return filterlib._LazyPaths(p[1:], more)

    specs = [
        _resolve(entries[root_pos[p[0]]], p[1:], v, default, _SPLIT, allowed, what, all_paths(j, p))
        for j, (p, v) in enumerate(zip(gd.paths, flat.variables))
    ]
    _check_shared_entries(
        inputs, entries, specs, lambda entry, rel, var: _resolve(entry, rel, var, default, _SPLIT, allowed, what), what
    )
    return specs


def _check_shared_entries(
    inputs: _Inputs, entries: list, specs: list, resolve: Callable, what: str, kind: str = "axis",
    unset: Any = _Keep,
) -> None:
    """Raise if a Variable reachable from several arguments gets different specs from their entries.

    ``specs[j]`` came from the entry of Variable ``j``'s canonical argument;
    ``resolve(entry, path, variable)`` gives what another argument's entry says.
    A spec equal to ``unset`` (e.g. ``None`` for "no sharding given") agrees
    with anything, and is replaced in ``specs`` by the other argument's spec.
    """
    root_pos = inputs.root_positions()
    if len(root_pos) < 2:
        return
    flat = inputs.flat
    gd = flat.graphdef
    for k in range(len(root_pos)):
        entry = entries[root_pos[k]]
        for rel, j in _root_reach(gd, k):
            if gd.paths[j][0] == k:
                continue  # its own canonical root: that is where specs[j] came from
            other = resolve(entry, rel, flat.variables[j])
            if unset is not _Keep and (other is unset or specs[j] is unset):
                if specs[j] is unset:
                    specs[j] = other
                continue
            if other != specs[j]:
                home = gd.paths[j]
                raise ValueError(
                    f"{what}: Inconsistent aliasing detected: the {type(flat.variables[j]).__name__} "
                    f"{_var_label(flat, j)} is reached from two arguments whose entries give it different "
                    f"{'axes' if kind == 'axis' else kind + 's'}: argument {home[0]} at {_fmt_path(home[1:])}: {specs[j]!r}, argument {k} at "
                    f"{_fmt_path(rel)}: {other!r}. One object has one layout: give both arguments the same "
                    f"{kind} for it, or pass it once."
                )


def _check_returned_axes(meta: "_Meta", node_entries: list, in_specs: list, default: Any, allowed: tuple, what: str):
    """A returned input module keeps its input layout; an ``out_axes`` entry saying otherwise is an error."""
    gd = meta.graphdef
    for k, entry in enumerate(node_entries):
        root = meta.n_in + k
        _, tag, payload = gd.nodes[0][2][root]
        if tag != _NODE or meta.node_origin[payload] < 0:
            continue  # created inside: out_axes decides its layout
        for rel, j in _reach(gd, payload):
            o = meta.var_origin[j]
            if o < 0 or in_specs[o] == _SPLIT:
                continue
            probe = _probe_variable(gd.vardefs[j])
            if isinstance(probe, RngState):
                continue
            ax = _resolve(entry, rel, probe, default, None, allowed, what)
            if ax != in_specs[o]:
                raise ValueError(
                    f"{what}: Inconsistent aliasing detected: the returned {gd.nodes[payload][0].__name__} is an input, so it keeps its "
                    f"in_axes layout, but out_axes gives {_fmt_path(rel)} axis {ax!r} instead of "
                    f"{in_specs[o]!r}. Make the out_axes entry agree with in_axes (or return a new object)."
                )


def _split_streams(inputs: _Inputs, specs: list, what: str) -> list[tuple[RngStream, int, int]]:
    """The RNG streams to split: ``(stream, key index, count index)``; checks ``'split'`` use."""
    flat = inputs.flat
    if flat is None:
        return []
    index = {id(v): j for j, v in enumerate(flat.variables)}
    streams = []
    covered = set()
    for obj in flat.node_objects:
        if not isinstance(obj, RngStream):
            continue
        d = obj.__dict__
        jk, jc = index.get(id(d.get("key"))), index.get(id(d.get("count")))
        if jk is None or jc is None or not (specs[jk] == _SPLIT or specs[jc] == _SPLIT):
            continue
        if jk in covered:
            continue
        key = d["key"].raw_value
        typed = jax.dtypes.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key)
        if np.ndim(key) != (0 if typed else 1):
            raise ValueError(
                f"{what}: the RNG stream {_var_label(flat, jk)} holds keys of shape "
                f"{np.shape(key)} (already stacked), so it cannot be split. Map it instead, e.g. "
                "{nnx.RngState: 0} in this argument's axis entry."
            )
        streams.append((obj, jk, jc))
        covered.update((jk, jc))
    for j, s in enumerate(specs):
        if s == _SPLIT and j not in covered:
            v = flat.variables[j]
            raise ValueError(
                f"{what}: {_var_label(flat, j)} ({type(v).__name__}) was given axis 'split', "
                "but only the key/count of an RNG stream can be split. Give it an int or None."
            )
    return streams


def _var_label(flat: graph._Flat, j: int) -> str:
    """A Variable of a joint traversal, named by its path inside its argument."""
    path = flat.graphdef.paths[j]
    root = flat.node_objects[0][path[0]]
    return f"{_fmt_path(path[1:])} (of the {type(root).__name__} argument)"


def _draw_split_keys(streams: list, n: int) -> list:
    """One draw from each caller stream (advancing it), split into ``n`` keys.

    Each draw is recorded so that :func:`_rewinds_draws_on_error` can undo it.
    """
    undo = _pending_draws.get()
    keys = []
    for stream, _, _ in streams:
        before = stream.count.raw_value
        keys.append(jax.random.split(stream(), n))
        if undo is not None:
            undo.append((stream, before, stream.count.raw_value))
    return keys


# The draws made by the transform call now running (see _rewinds_draws_on_error).
_pending_draws: contextvars.ContextVar[list | None] = contextvars.ContextVar("nnxlite_pending_draws", default=None)


def _rewinds_draws_on_error(wrapper: Callable) -> Callable:
    """Make a transform's wrapper undo its split draws if the call raises.

    A vmap/scan call draws from the caller's streams before running the body;
    if the body (or anything after the draw) raises, the counters go back to
    what they were, so a failed call leaves the caller's RNG state unchanged.
    """

    @functools.wraps(wrapper)
    def guarded(*args, **kwargs):
        undo: list = []
        token = _pending_draws.set(undo)
        try:
            return wrapper(*args, **kwargs)
        except BaseException:
            with _draw_lock:  # only if no other thread drew since: its key must stay unique
                for stream, before, after in reversed(undo):
                    if stream.count.raw_value is after:
                        stream.count.raw_value = before
            raise
        finally:
            _pending_draws.reset(token)

    return guarded


def _axis_size(values: Sequence, axes: Sequence, given: int | None, what: str) -> int | None:
    sizes = set()
    for value, ax in zip(values, axes):
        if isinstance(ax, int) and not isinstance(ax, bool):
            # A Variable may hold a pytree (a capture buffer's dict): each of its arrays is mapped.
            for x in (value,) if _is_array_like(value) else jax.tree_util.tree_leaves(value):
                shape = np.shape(x)
                if not shape:
                    raise ValueError(f"{what}: cannot map axis {ax} of a scalar value.")
                sizes.add(shape[ax])
    if given is not None:
        return given
    if len(sizes) > 1:
        raise ValueError(f"{what}: mapped inputs have different sizes along their axes: {sorted(sizes)}.")
    return sizes.pop() if sizes else None


def _is_array_like(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, int, float, complex, bool, jax.ShapeDtypeStruct))


def _fresh_count(count_value: Any) -> Any:
    return jnp.zeros(np.shape(count_value), getattr(count_value, "dtype", jnp.uint32))


def _probe_variable(vardef: tuple) -> Variable:
    t, md = vardef
    return _make(t, None, dict(md) if md else _EMPTY_METADATA)


def _new_var_specs(meta: _Meta, in_entries_by_root: list, out_entries_by_node: list, default, allowed, what) -> list:
    """Axes of the Variables created inside, from the entry of whoever holds them."""
    gd = meta.graphdef
    specs = []
    for j in meta.new_var_indices():
        path = gd.paths[j]
        k = path[0]
        probe = _probe_variable(gd.vardefs[j])
        if k < meta.n_in:
            entry = in_entries_by_root[k]
        else:
            entry = out_entries_by_node[k - meta.n_in]
        specs.append(_resolve(entry, path[1:], probe, default, None, allowed, what))
    return specs



def _dyn_axes(entries: list, mask: tuple, allowed: tuple, what: str) -> list:
    out = []
    for e, m in zip(entries, mask):
        if m:
            continue
        if isinstance(e, Mapping):
            raise ValueError(f"{what}: a dict {{filter: axis}} entry applies to modules only, got it for an array.")
        out.append(_check_axis(e, allowed, what))
    return out



# =====================================================================================
# Running a function on fresh objects (remat, cond/switch, eval_shape)
# =====================================================================================
def _pure(f: Callable, inputs: _Inputs, cell: list | None = None, static: Callable | None = None):
    """``(state leaves, other leaves) -> (aligned, extra, out, meta)`` running ``f`` on fresh objects."""
    gd = inputs.graphdef

    def run(state, others):
        a, kw, roots, pre = _enter(gd, inputs.treedef, inputs.mask, state, others)
        if static is not None:
            a, kw = static(a, kw)
        out = f(*a, **kw)
        result = _leave(pre, roots, out, list(state))
        if cell is not None:
            cell.append(result[3])
        return result

    return run
