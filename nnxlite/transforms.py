"""Lifted transforms: ``jit``, ``vmap``, ``scan``, ``remat``, ``cond``/``switch`` and ``eval_shape`` for modules.

Each works like its JAX namesake, and also accepts modules, Contexts,
Optimizers and Variables as arguments and results, on their own or anywhere
inside pytree arguments::

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.BatchNorm(2, ctx=nnx.context(0))
    >>> @nnx.jit
    ... def forward(model, x):
    ...     return model(x)               # updates model.mean / model.var
    >>> y = forward(model, jnp.arange(4.0).reshape(2, 2))
    >>> [round(float(m), 3) for m in model.mean.value]
    [0.01, 0.02]

The rules, the same for every transform:

* **In-place updates come out.** Values a function writes into a module's
  Variables (BatchNorm statistics, RNG counters, ``optimizer.update``) are
  written back into the caller's Variables, as in eager code.
* **Identity is preserved.** A module passed in and returned (or any of its
  sub-modules) comes back as the caller's own object; modules created inside
  come back as new objects. Shared references between arguments (an
  optimizer holding the model) stay shared.
* **Structure changes propagate** (``jit``, ``vmap``, ``remat``, ``cond``,
  ``grad``): a new attribute, sub-module or Variable set inside appears on the
  caller's object afterwards. ``scan`` and ``eval_shape`` cannot do that and
  raise an error saying so.
* **Nothing is stale.** ``jit`` caches the traversal of its arguments, but any
  structural edit (``model.eval()``, replacing a layer, appending to a list,
  re-pointing a shared reference) invalidates it and retraces.

Axis specs for modules (``vmap``, ``scan``)
-------------------------------------------

``in_axes``/``out_axes`` are JAX's: one entry per argument or a prefix
pytree. An entry that lands on a module says where its state is batched:

* an int — every Variable of the module is mapped along that axis;
* ``None`` — broadcast: the same state for every lane (``vmap``), or carried
  from step to step (``scan``: updates made by one step are seen by the next);
* a dict ``{filter: axis}`` — per kind of state, first matching filter wins
  (``nnx.Param``, ``'dropout'``, ``nnx.All(...)``, any :mod:`~nnxlite.filters`
  filter); Variables matching no key use the transform's default axis 0.
  E.g. ``in_axes=({nnx.BatchStat: None}, 0)``.

**RNG streams are split by default**, whatever the entry says: a stream
(a Context's, or one a module stores) draws one key outside the transform,
splits it into one key per lane or step, and each lane/step runs a fresh
stream from its own key. The caller's stream advances by one draw, so the
next call gets new keys. To opt out for a stream or a kind of RNG state, name
it in the dict: ``{'dropout': None}`` gives every lane the same dropout key
(in ``scan``: one stream carried through the steps), ``{nnx.RngState: 0}``
maps streams that are themselves stacked; ``'split'`` may also be written out.
There is no separate ``split_rngs`` decorator or ``StateAxes`` object to
combine (the pair flax.nnx users must get right together, flax issues #4195
and #4589): one dict in the usual ``in_axes`` says it all.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> ctx = nnx.context(params=0, dropout=1)
    >>> keys = nnx.vmap(lambda c: (c.params(), c.dropout()), axis_size=3)(ctx)
    >>> len({tuple(k.tolist()) for k in keys[0]})   # split: one key per lane
    3
    >>> keys = nnx.vmap(lambda c: c.dropout(), in_axes={"dropout": None}, axis_size=3)(ctx)
    >>> len({tuple(k.tolist()) for k in keys})      # broadcast: the same key in every lane
    1
    >>> bn = nnx.vmap(lambda c: nnx.BatchNorm(2, ctx=c), axis_size=3, out_axes={nnx.BatchStat: None})(ctx)
    >>> bn.scale.shape, bn.mean.shape               # stacked params, shared statistics
    ((3, 2), (2,))
"""

from __future__ import annotations

import functools
import inspect
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
from nnxlite.rng import RngStream
from nnxlite.state import State, _fmt_path
from nnxlite.variables import (
    _EMPTY_METADATA,
    RngState,
    TracerLeakError,
    Variable,
    _check_live,
    _make,
)

__all__ = ["jit", "vmap", "scan", "remat", "cond", "switch", "eval_shape", "Carry"]

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
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


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


def _apply(meta: _Meta, aligned: Sequence, extra: Sequence, plain: list, outer: graph._Flat | None) -> Any:
    """Outside: replay on the caller's objects what the function did, and build its output.

    Writes values (``_KEEP`` entries are skipped), rewrites the attributes of
    caller objects whose structure changed, creates the objects made inside,
    and returns the output with caller objects where inputs were returned.
    """
    gd = meta.graphdef
    outer_vars = outer.variables if outer is not None else ()
    outer_nodes = outer.node_objects if outer is not None else ()
    var_specs, node_specs, _ = graph._plan(gd)
    structural = False
    variables = []
    it_extra = iter(extra)
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
        variables.append(v)
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


def _finish(inputs: _Inputs, aligned, extra, out, meta) -> Any:
    """Write back and build the output (common and general case)."""
    if meta is None:
        _write(inputs.variables, aligned)
        return out
    return _apply(meta, aligned, extra, out, inputs.flat)


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
# Axis / sharding prefixes
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
    return x is None or x is Carry or isinstance(x, (int, str, Mapping))


def _is_sharding_entry(x: Any) -> bool:
    return x is None or isinstance(x, (jax.sharding.Sharding, jax.sharding.PartitionSpec, Mapping))


def _sharding_for(entry: Any, path: tuple, var: Variable, lookup: dict) -> Any:
    """The sharding of one Variable under a module's ``in_shardings`` entry."""
    if entry is None or isinstance(entry, (jax.sharding.Sharding, jax.sharding.PartitionSpec)):
        return entry
    if isinstance(entry, State):  # e.g. nnx.get_named_sharding(model, mesh)
        table = lookup.get(id(entry))
        if table is None:
            table = lookup[id(entry)] = entry.flat()
        return table.get(path)
    for key, sharding in entry.items():  # {filter: sharding}
        if filterlib.to_predicate(key)(path, var):
            return sharding
    return None


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
    structural = isinstance(prefix, Mapping) and isinstance(tree, Mapping) and all(isinstance(k, str) for k in prefix)
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


def _resolve(entry: Any, path: tuple, var: Variable, default: Any, rng_default: Any, allowed: tuple, what: str) -> Any:
    """The axis of one Variable under a module's entry (int, None, Carry or a dict of filters)."""
    if isinstance(entry, Mapping):
        for key, ax in entry.items():
            if filterlib.to_predicate(key)(path, var):
                return _check_axis(ax, allowed, what)
        base = default
    else:
        base = entry
    if rng_default is not None and isinstance(var, RngState):
        return rng_default
    return _check_axis(base, allowed, what)


def _state_specs(inputs: _Inputs, entries: list, default: Any, allowed: tuple, what: str) -> list:
    """The axis spec of each input Variable, from the entry of the argument that owns it."""
    if inputs.flat is None:
        return []
    root_pos = inputs.root_positions()
    gd = inputs.flat.graphdef
    return [
        _resolve(entries[root_pos[p[0]]], p[1:], v, default, _SPLIT, allowed, what)
        for p, v in zip(gd.paths, inputs.flat.variables)
    ]


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
    """One draw from each caller stream (advancing it), split into ``n`` keys."""
    return [jax.random.split(stream(), n) for stream, _, _ in streams]


def _axis_size(values: Sequence, axes: Sequence, given: int | None, what: str) -> int | None:
    sizes = set()
    for x, ax in zip(values, axes):
        if isinstance(ax, int) and not isinstance(ax, bool):
            shape = np.shape(x)
            if not shape:
                raise ValueError(f"{what}: cannot map axis {ax} of a scalar value.")
            sizes.add(shape[ax])
    if given is not None:
        return given
    if len(sizes) > 1:
        raise ValueError(f"{what}: mapped inputs have different sizes along their axes: {sorted(sizes)}.")
    return sizes.pop() if sizes else None


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
                        try:
                            changed, extra, out, meta = e.fn(
                                [v.raw_value for v in e.don_vars], [v.raw_value for v in e.keep_vars], *dyn
                            )
                        except Exception as err:
                            _explain_leak(variables, err)
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
        try:
            changed, extra, out, meta = comp.fn(
                [v.raw_value for v in don_vars], [v.raw_value for v in keep_vars], *inputs.others
            )
        except Exception as err:
            _explain_leak(variables, err)
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
            in_s, out_state = self._shardings(inputs, dargs, dkwargs, arg_of_leaf, don_idx, keep_idx)
            if self._in_shardings is not None:
                jit_kwargs["in_shardings"] = in_s
                # Variables not yet in the layout asked for come back (and so are stored) in it.
                relayout = frozenset(
                    j for j, (v, sh) in enumerate(zip(inputs.variables, out_state))
                    if sh is not None and not _has_layout(v.raw_value, sh)
                )
            # Which Variables come out is known only after tracing, so their layout is pinned
            # inside (below) rather than by an out_shardings prefix.
            jit_kwargs["out_shardings"] = (None, None, self._out_shardings, None)

        static_items = statics
        don_t, keep_t = tuple(don_idx), tuple(keep_idx)
        don_set = frozenset(don_idx) | relayout

        def inner(don, keep, *others):
            leaves = _scatter(n_vars, None, (don_t, don), (keep_t, keep))
            args, kwargs, roots, pre = _enter(gd, treedef, mask, leaves, others)
            if static_items or static_kw:
                args = list(args)
                for i, s in static_items:
                    args[i] = s
                kwargs = dict(kwargs, **dict(static_kw))
            out = fun(*args, **kwargs)
            aligned, extra, out, meta = _leave(pre, roots, out, leaves)
            # Only Variables whose value the function replaced travel out: an output that *is*
            # the input tracer is unchanged, so an inference call returns no state at all.
            # Donated ones always come back (their input buffers are consumed).
            changed = {j: x for j, x in enumerate(aligned) if x is not leaves[j] or j in don_set}
            if out_state:  # updated Variables keep their input sharding
                for j, x in changed.items():
                    if out_state[j] is not None:
                        changed[j] = jax.lax.with_sharding_constraint(x, out_state[j])
            return changed, extra, out, meta

        inner.__name__ = getattr(fun, "__name__", "fn")
        inner.__qualname__ = getattr(fun, "__qualname__", inner.__name__)
        comp = _Compiled()
        comp.fn = jax.jit(inner, donate_argnums=donate, **jit_kwargs)
        comp.don_idx, comp.keep_idx = don_t, keep_t
        return comp

    def _shardings(self, inputs: _Inputs, dargs, dkwargs, arg_of_leaf, don_idx, keep_idx):
        spec = self._in_shardings
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
            **jit_kwargs,
        )
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


# =====================================================================================
# vmap
# =====================================================================================
class _Restart(Exception):
    """Raised inside a vmap body whose outputs need the general (module-building) path."""

    def __init__(self, meta: _Meta):
        super().__init__("internal: vmap restart")
        self.meta = meta


def _dyn_axes(entries: list, mask: tuple, allowed: tuple, what: str) -> list:
    out = []
    for e, m in zip(entries, mask):
        if m:
            continue
        if isinstance(e, Mapping):
            raise ValueError(f"{what}: a dict {{filter: axis}} entry applies to modules only, got it for an array.")
        out.append(_check_axis(e, allowed, what))
    return out


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
            vmap, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name, axis_size=axis_size, spmd_axis_name=spmd_axis_name
        )
    what = "nnx.vmap"
    allowed = (int, None, _SPLIT)

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


# =====================================================================================
# scan
# =====================================================================================
def scan(
    f: Callable | None = None,
    *,
    in_axes: Any = (Carry, 0),
    out_axes: Any = (Carry, 0),
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
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
      reverse, unroll: as in ``jax.lax.scan``.

    Variables and sub-modules cannot be added to input modules inside a scan
    (the state is stacked or carried); create them before.
    """
    if f is None:
        return functools.partial(scan, in_axes=in_axes, out_axes=out_axes, length=length, reverse=reverse, unroll=unroll)
    what = "nnx.scan"
    allowed = (int, None, Carry, _SPLIT)

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
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
            out = f(*a, **kw)
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
            body, (carry_state, carry_dyn), (xs_state, keys, xs_dyn), length=n, reverse=reverse, unroll=unroll
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
        in_root_entries = [entries[p] for p in inputs.root_positions()]
        extra_axes = _new_var_specs(meta, in_root_entries, node_entries, 0, (int,), f"{what} out_axes")
        extra = [_from_front(x, ax) for x, ax in zip(extra, extra_axes)]
        return _apply(meta, aligned, extra, plain, inputs.flat)

    return wrapper


def _to_front(x: Any, axis: int) -> Any:
    return x if axis == 0 else jnp.moveaxis(x, axis, 0)


def _from_front(x: Any, axis: int) -> Any:
    return x if axis == 0 else jnp.moveaxis(x, 0, axis)


# =====================================================================================
# remat, cond/switch, eval_shape
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


def remat(
    f: Callable | None = None,
    *,
    prevent_cse: bool = True,
    static_argnums: int | Sequence[int] = (),
    policy: Callable | None = None,
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
    """
    if f is None:
        return functools.partial(remat, prevent_cse=prevent_cse, static_argnums=static_argnums, policy=policy)
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


def _branches_call(what: str, index_fn: Callable, branches: Sequence[Callable], operands: tuple) -> Any:
    inputs = _Inputs(operands, {})
    metas: list = []
    pures = []
    for b in branches:
        cell: list = []
        metas.append(cell)
        pures.append(_pure(b, inputs, cell))
    try:
        aligned, extra, out, meta = index_fn(pures, inputs.leaves(), inputs.others)
    except TypeError as err:
        seen = [c[-1] if c else None for c in metas]
        if any(m != seen[0] for m in seen[1:]):
            raise ValueError(
                f"{what}: the branches left the modules in different structures or returned different "
                "kinds of modules. Every branch must make the same structural changes (ideally none: create "
                "Variables before branching) and return modules of the same structure."
            ) from err
        raise
    return _finish(inputs, aligned, extra, out, meta)


def cond(pred: Any, true_fun: Callable, false_fun: Callable, *operands: Any) -> Any:
    """``jax.lax.cond`` whose branches may take and update modules.

    Both branches see the operands as fresh objects; the state the taken
    branch leaves behind is written back.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> count = nnx.Variable(jnp.zeros(()))
    >>> def bump(c):
    ...     c.value = c.value + 1
    >>> for flag in (True, False, True):
    ...     nnx.cond(jnp.array(flag), bump, lambda c: None, count)
    >>> float(count.value)
    2.0
    """

    def call(pures, state, others):
        return jax.lax.cond(pred, pures[0], pures[1], state, others)

    return _branches_call("nnx.cond", call, (true_fun, false_fun), operands)


def switch(index: Any, branches: Sequence[Callable], *operands: Any) -> Any:
    """``jax.lax.switch`` whose branches may take and update modules (see :func:`cond`).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> v = nnx.Variable(jnp.ones(()))
    >>> def scale(k):
    ...     def branch(v):
    ...         v.value = v.value * k
    ...     return branch
    >>> nnx.switch(2, [scale(1.0), scale(2.0), scale(3.0)], v)
    >>> float(v.value)
    3.0
    """

    def call(pures, state, others):
        return jax.lax.switch(index, pures, state, others)

    return _branches_call("nnx.switch", call, tuple(branches), operands)


def eval_shape(f: Callable, *args: Any, **kwargs: Any) -> Any:
    """``jax.eval_shape`` for functions of modules: shapes without computing anything.

    Modules created inside come back with ``jax.ShapeDtypeStruct`` values,
    useful to inspect a large model (or plan its sharding) before allocating it.
    Input modules are not modified.

    >>> import nnxlite as nnx
    >>> abstract = nnx.eval_shape(lambda: nnx.Linear(1024, 4096, ctx=nnx.context(0)))
    >>> abstract.kernel.value
    ShapeDtypeStruct(shape=(1024, 4096), dtype=float32)
    """
    inputs = _Inputs(args, kwargs)
    aligned, extra, out, meta = jax.eval_shape(_pure(f, inputs), inputs.leaves(), inputs.others)
    if meta is None:
        return out
    if meta.in_changed:
        raise ValueError(
            "nnx.eval_shape: the function changed the structure of an input module; eval_shape does not "
            "modify its inputs. Make structural changes outside, or return the new module instead."
        )
    return _apply(meta, [_KEEP] * len(inputs.variables), extra, out, inputs.flat)
