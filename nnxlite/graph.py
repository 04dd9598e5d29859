"""The graph traversal: the one bridge between eager modules and pure pytrees.

``split`` walks a graph of Python objects (modules, lists, tuples, dicts and
Variables, with shared references and cycles allowed) and returns

* a :class:`GraphDef` — everything static: node types, attribute names,
  static attributes, Variable types and metadata, and which references are
  shared. It is hashable, comparable, and a pytree with no leaves;
* one or more :class:`~nnxlite.state.State` pytrees holding the values.

``merge`` builds a fresh object graph back from them; ``update`` writes values
into an existing graph. Every other feature (lifted transforms, the
optimizer, checkpoints, ``transform()``) is built on these functions.

Example::

    >>> import nnxlite as nnx
    >>> model = nnx.Linear(2, 3, ctx=nnx.context(0))
    >>> graphdef, params = nnx.split(model, nnx.Param)
    >>> copy = nnx.merge(graphdef, params)
    >>> bool((copy.kernel.value == model.kernel.value).all()), copy is model
    (True, False)

Speed: a traversal is cached on the root module together with the structural
epoch (``_epoch.py``). Any structural edit bumps the epoch, so a cached
traversal is reused only when it is exactly right; value edits do not bump it.
"""

from __future__ import annotations

import types
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlite import _data, _epoch
from nnxlite import filters as filterlib
from nnxlite.variables import _EMPTY_METADATA
from nnxlite.state import State, StateStructure, _fmt_path, _key_error_text, _new_state, _key_order, path_sort_key, raw_leaves
from nnxlite.variables import Variable, _tracer_is_dead

__all__ = [
    "GraphDef",
    "ModuleDef",
    "split",
    "merge",
    "state",
    "update",
    "graphdef",
    "clone",
    "pop",
    "iter_graph",
    "register_node_base",
]

Path = tuple[Any, ...]
# flax.nnx's names for one path element and a whole path (``nnx.graph.Key``, ``nnx.graph.PathParts``).
Key = Hashable
PathParts = Path

# How an attribute of a node is stored in a GraphDef.
STATIC, VAR, NODE = 0, 1, 2
# Kinds of node.
OBJECT, LIST, DICT, TUPLE, STATE = 0, 1, 2, 3, 4

_NODE_BASES: tuple[type, ...] = ()
# list/dict subclasses whose edits bump the epoch (nnx.List, nnx.Dict; registered by module.py).
_TRACKED_CONTAINERS: tuple[type, ...] = ()
_CACHE_KEY = "_nnx_flat"
# A kind returned by _node_kind for containers the graph cannot rebuild faithfully.
_UNSUPPORTED = -1
# Per-instance data/static statuses (pytree.py); the one `_nnx_` attribute the
# traversal keeps, as a static item, so a merged copy has the same statuses.
STATUS_KEY = "_nnx_status"
_DATA_DEF = (_data.DataLeaf, ())
_SLOT_TYPES = {0: _data._AttrSlot, 1: _data._ListSlot, 2: _data._DictSlot, 4: _data._StateSlot}  # by node kind


def register_node_base(cls: type) -> type:
    """Make instances of ``cls`` (objects with a ``__dict__``) graph nodes."""
    global _NODE_BASES
    _NODE_BASES = _NODE_BASES + (cls,)
    return cls


def register_tracked_container(cls: type) -> type:
    """Declare a list/dict subclass whose every edit bumps the structural epoch."""
    global _TRACKED_CONTAINERS
    _TRACKED_CONTAINERS = _TRACKED_CONTAINERS + (cls,)
    return cls


def _node_kind(value: Any) -> int | None:
    if isinstance(value, _NODE_BASES):
        return OBJECT
    if type(value) is State:
        # A State kept in a module (flax's ``self.ema = nnx.data(nnx.state(...))``):
        # its Variables are the graph's, so sharing with the model and in-place
        # updates under the transforms work as for any other node.
        return STATE
    if isinstance(value, list):
        t = type(value)
        return LIST if t is list or issubclass(t, _TRACKED_CONTAINERS) else _UNSUPPORTED
    if isinstance(value, dict):
        t = type(value)
        return DICT if t is dict or issubclass(t, _TRACKED_CONTAINERS) else _UNSUPPORTED
    if isinstance(value, tuple) and _has_graph_content(value):
        t = type(value)
        # Tuples are rebuilt as ``tuple(items)`` or ``NamedTuple(*items)``; other
        # subclasses have constructors we cannot know.
        return TUPLE if t is tuple or hasattr(t, "_fields") else _UNSUPPORTED
    return None


def _has_graph_content(value: Any) -> bool:
    # Tuples of plain values (kernel_size=(3, 3)) stay static; tuples holding
    # Variables or nodes are traversed. Iterative: nesting depth is unbounded.
    stack = [value]
    while stack:
        for v in stack.pop():
            if isinstance(v, (Variable, list, dict, State)) or isinstance(v, _NODE_BASES):
                return True
            if isinstance(v, tuple):
                stack.append(v)
    return False


def _items(obj: Any, kind: int) -> list[tuple[Any, Any]]:
    if kind == OBJECT:
        return [(k, v) for k, v in vars(obj).items() if not k.startswith("_nnx_") or k == STATUS_KEY]
    if kind == DICT:
        return list(obj.items())
    if kind == STATE:
        return obj._node_items()
    return list(enumerate(obj))


def _static_sig(value: Any) -> Any:
    """What, besides ``==``, two static values must share to count as the same.

    ``==`` says ``0.0 == -0.0``, ``2 == 2.0`` and ``1 == True``, but a trace
    specialised on one is wrong for the other. So GraphDefs also compare each
    static value's type, and floats by their exact bits (which tells ``-0.0``
    from ``0.0`` and makes every NaN equal to itself).
    """
    t = type(value)
    if t is float:
        return value.hex()
    if t is complex:
        return (value.real.hex(), value.imag.hex())
    if t is tuple:
        return (t, tuple(_static_sig(v) for v in value))
    if t is frozenset:
        return (t, frozenset(_static_sig(v) for v in value))
    if isinstance(value, np.generic):
        return (t, value.tobytes())
    return t


class GraphDef:
    """The static structure of an object graph (the seeds call it ``ModuleDef``).

    It is hashable and compares equal for structurally equal graphs, so it can
    be closed over, passed as a static argument, or returned from
    ``jax.vmap(..., out_axes=None)`` (it is a pytree with no leaves). Static
    attributes compare by type and value, as ``jax.jit`` static arguments do
    (and ``-0.0`` differs from ``0.0``), so a trace is never reused for a
    value that only compares equal.

    >>> import nnxlite as nnx
    >>> a = nnx.graphdef(nnx.Linear(2, 3, ctx=nnx.context(0)))
    >>> b = nnx.graphdef(nnx.Linear(2, 3, ctx=nnx.context(1)))
    >>> a == b, hash(a) == hash(b)
    (True, True)
    """

    # ``nnx.GraphDef[Model]`` in annotations, as flax's generic GraphDef.
    __class_getitem__ = classmethod(types.GenericAlias)

    __slots__ = (
        "nodes", "vardefs", "paths", "root", "statics", "_hash", "_plan", "_data_leaves", "_structure", "_edges",
        "__weakref__",
    )

    def __init__(self, nodes: tuple, vardefs: tuple, paths: tuple, root: tuple, statics: tuple = ()):
        # nodes[i] = (type, kind, items); items = ((key, STATIC|VAR|NODE, payload), ...) in
        # the node's own order. vardefs[j] = (Variable type, frozen metadata). paths[j] is
        # the first (canonical) path of Variable j. root = (VAR|NODE, index). statics: the
        # _static_sig of every static value and metadata value, in traversal order.
        self.nodes = nodes
        self.vardefs = vardefs
        self.paths = paths
        self.root = root
        self.statics = statics
        self._hash = hash((nodes, vardefs, root, statics))
        self._plan = None
        self._data_leaves = ()  # indices of plain data leaves; set with _plan
        self._structure = None
        self._edges = None

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        return (
            isinstance(other, GraphDef)
            and self._hash == other._hash
            and self.root == other.root
            and self.statics == other.statics
            and self.vardefs == other.vardefs
            and self.nodes == other.nodes
        )

    @property
    def structure(self) -> StateStructure:
        """The StateStructure of the full (unfiltered) state of this graph."""
        if self._structure is None:
            self._structure = StateStructure(self.paths, self.vardefs)
        return self._structure

    def merge(self, *states: State | Mapping) -> Any:
        """Build a new object graph from this definition and ``states`` (see :func:`merge`)."""
        return merge(self, *states)

    def apply(self, state: State | Mapping, *states: State | Mapping, graph: bool | None = None) -> Any:
        """Call the merged object purely (flax's ``graphdef.apply``): ``(out, (graphdef, new_state))``.

        ``graphdef.apply(state)(x)`` calls the object, ``.apply(state).method(x)``
        a method; the object is merged fresh, so the inputs are not changed.

        >>> import jax.numpy as jnp, nnxlite as nnx
        >>> graphdef, state = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
        >>> y, (graphdef2, state2) = graphdef.apply(state)(jnp.ones((1, 2)))
        >>> y.shape, graphdef2 == graphdef
        ((1, 3), True)
        """
        from nnxlite.compat.submodules import CallableProxy

        def run(accessor: Any, *args: Any, **kwargs: Any) -> Any:
            obj = merge(self, state, *states)
            out = accessor(obj)(*args, **kwargs)
            return out, split(obj)

        return CallableProxy(run)

    @property
    def num_leaves(self) -> int:
        """How many leaves a full State of this graph has (flax's ``num_leaves``)."""
        return len(self.paths)

    def __repr__(self) -> str:
        root_type = self.nodes[0][0].__name__ if self.root[0] == NODE else self.vardefs[0][0].__name__
        return f"GraphDef({root_type}, nodes={len(self.nodes)}, variables={len(self.vardefs)})"

    def __reduce__(self):
        return (GraphDef, (self.nodes, self.vardefs, self.paths, self.root, self.statics))


ModuleDef = GraphDef

jax.tree_util.register_pytree_node(GraphDef, lambda g: ((), g), lambda g, _: g)


class _Flat:
    """One traversal of a graph: its GraphDef plus the live objects it found.

    ``epoch`` is the structural epoch read *before* the traversal started, so
    an edit made by another thread while it ran makes this entry stale.
    """

    __slots__ = (
        "epoch", "graphdef", "variables", "aliases", "node_objects", "node_parents", "_node_paths", "groups",
        "data_slots",
    )

    def __init__(self, epoch, graphdef, variables, aliases, node_objects, node_parents, data_slots=()):
        self.epoch = epoch
        self.graphdef = graphdef
        # Variable objects in graphdef.paths order; plain data leaves (array
        # attributes) appear as live slots (``_data._Slot``) with the same
        # ``raw_value`` interface, so readers and writers need not care.
        self.variables = variables
        self.aliases = aliases  # every path that reaches a Variable directly -> its index
        self.node_objects = node_objects
        self.node_parents = node_parents  # node i was first reached as (parent index, key); root: None
        self._node_paths = None
        self.groups: dict = {}  # filters -> (index lists, structures)
        self.data_slots = data_slots  # indices of the plain data leaves

    def pytree_children(self) -> list:
        """The JAX pytree children of the root: each Variable once, plain data leaves by value."""
        if not self.data_slots:
            return self.variables
        children = list(self.variables)
        for j in self.data_slots:
            children[j] = children[j].raw_value
        return children

    @property
    def node_paths(self) -> list:
        """The canonical path of every node (built on first use: deep graphs make them long)."""
        if self._node_paths is None:
            paths: list = [()] * len(self.node_objects)
            for i, parent in enumerate(self.node_parents):
                if parent is not None:
                    paths[i] = paths[parent[0]] + (parent[1],)
            self._node_paths = paths
        return self._node_paths

    def node_path(self, i: int) -> Path:
        """The canonical path of node ``i``."""
        keys = []
        parent = self.node_parents[i]
        while parent is not None:
            keys.append(parent[1])
            parent = self.node_parents[parent[0]]
        return tuple(reversed(keys))


class _AllDataStatus(dict):
    """The status of a container marked ``nnx.data``: every item is data."""

    __slots__ = ()

    def get(self, key, default=None):  # type: ignore[override]
        return True


_ALL_DATA = _AllDataStatus()
_NUMBER_TYPES = (bool, int, float, complex, np.generic)


def _is_number(value: Any) -> bool:
    # Inside an nnx.data container only JAX-valid leaves become data; strings, None and
    # functions stay static structure (they could not cross a jit boundary as leaves).
    return isinstance(value, _NUMBER_TYPES)


def _traverse(root: Any, epoch: int | None = None) -> _Flat:
    """Walk the graph below ``root`` once (depth-first, keys in canonical order).

    The walk uses an explicit stack, so any nesting depth works. Nodes are
    numbered in pre-order; since each node's keys are visited sorted, the
    first path that reaches an object is its canonical (smallest) path.
    """
    if epoch is None:
        epoch = _epoch.current()  # before the walk: a concurrent edit must invalidate the result
    node_index: dict[int, int] = {}
    var_index: dict[int, int] = {}
    nodes: list = []
    node_objects: list = []
    node_parents: list = []
    variables: list = []
    paths: list = []
    vardefs: list = []
    aliases: dict[Path, int] = {}
    statics: list = []
    data_slots: list[int] = []
    bad_static: list = []
    unsupported: list = []
    keys: list = []  # the keys from the root to the node on top of the stack
    # Path hint for error messages (variables._leak_message): root type name(s) + path.
    label = tuple(type(r).__name__ for r in root) if type(root) is tuple else type(root).__name__

    def add_variable(v: Variable, path: Path) -> int:
        j = var_index.get(id(v))
        if j is None:
            j = len(variables)
            var_index[id(v)] = j
            variables.append(v)
            paths.append(path)
            v._nnx_path = (label, path)
            meta = v._metadata
            statics.append(type(v))
            vardefs.append((type(v), _freeze_metadata(meta, path, bad_static, statics) if meta else ()))
        aliases[path] = j
        return j

    def add_data(owner: Any, kind: int, key: Any, path: Path) -> int:
        # A plain value is not an identity to share: each place is its own leaf.
        j = len(variables)
        data_slots.append(j)
        variables.append(_data.slot(owner, key, _SLOT_TYPES[kind]))
        paths.append(path)
        vardefs.append(_DATA_DEF)
        aliases[path] = j
        return j

    def open_node(obj: Any, kind: int, parent) -> list:
        node_index[id(obj)] = len(nodes)
        nodes.append(None)
        node_objects.append(obj)
        node_parents.append(parent)
        items = _items(obj, kind)
        order = items if kind == LIST or kind == TUPLE else sorted(items, key=lambda kv: _key_order(kv[0]))
        status = None
        if kind == OBJECT:
            status = obj.__dict__.get(STATUS_KEY) or getattr(type(obj), "_nnx_class_status", None)
        elif kind != TUPLE and type(obj) is not list and type(obj) is not dict:
            status = getattr(type(obj), "_nnx_item_status", None)  # nnx.data/nnx.static items (pytree.py)
        # A frame: node index, object, kind, items in own order, iterator over sorted items, refs, status.
        return [len(nodes) - 1, obj, kind, items, iter(order), {}, status]

    if isinstance(root, Variable):
        root_ref = (VAR, add_variable(root, ()))
    else:
        kind = _node_kind(root)
        if kind is None or kind == _UNSUPPORTED:
            raise TypeError(
                f"Expected a Module, Variable, list, tuple or dict to split, got {type(root).__name__}."
                + (f" {_unsupported_hint(root)}" if kind == _UNSUPPORTED else "")
            )
        root_ref = (NODE, 0)
        stack = [open_node(root, kind, None)]
        in_module = [kind == OBJECT]  # per frame: is some enclosing node a Module?
        while stack:
            frame = stack[-1]
            idx, refs = frame[0], frame[5]
            descended = False
            for key, value in frame[4]:
                if isinstance(value, Variable):
                    refs[key] = (VAR, add_variable(value, (*keys, key)))
                    continue
                child_kind = _node_kind(value)
                if child_kind is not None:
                    j = node_index.get(id(value))
                    if j is not None:
                        refs[key] = (NODE, j)
                        continue
                    if child_kind == _UNSUPPORTED or (
                        in_module[-1] and (type(value) is list or type(value) is dict)
                    ):
                        # A container nnxlite cannot rebuild, or a plain list/dict inside a
                        # module whose edits would not be seen: refuse rather than go stale.
                        unsupported.append(((*keys, key), value))
                        refs[key] = (STATIC, None)
                        continue
                    refs[key] = (NODE, len(nodes))
                    keys.append(key)
                    child = open_node(value, child_kind, (idx, key))
                    if child_kind == STATE or (child_kind != OBJECT and frame[6] is not None and frame[6].get(key)):
                        # A list/dict assigned with nnx.data(...) (or inside one): every item is
                        # data, as in flax 0.12, so nnx.data([1, 2]) has two leaves.
                        child[6] = _ALL_DATA
                    stack.append(child)
                    in_module.append(in_module[-1] or child_kind == OBJECT)
                    descended = True
                    break
                status = frame[6]
                if frame[2] != TUPLE and key != STATUS_KEY and (
                    _data.is_data_value(value)
                    or (status is not None and status.get(key) and (status is not _ALL_DATA or _is_number(value)))
                ):
                    refs[key] = (VAR, add_data(frame[1], frame[2], key, (*keys, key)))
                    continue
                try:
                    hash(value)
                except TypeError:
                    bad_static.append(((*keys, key), value))
                else:
                    if _data.annotation_of(value) is not None:
                        bad_static.append(((*keys, key), value))
                statics.append(_static_sig(value))
                refs[key] = (STATIC, value)
            if descended:
                continue
            _, obj, kind, items, _, _, _ = stack.pop()
            in_module.pop()
            nodes[idx] = (type(obj), kind, tuple((k,) + refs[k] for k, _ in items))
            if stack:
                keys.pop()
    if unsupported:
        raise _unsupported_error(unsupported)
    if bad_static:
        raise _static_error(bad_static)
    gd = GraphDef(tuple(nodes), tuple(vardefs), tuple(paths), root_ref, tuple(statics))
    return _Flat(epoch, gd, variables, aliases, node_objects, node_parents, tuple(data_slots))


def _unsupported_hint(value: Any) -> str:
    t = type(value)
    if isinstance(value, list):
        if t is list:
            return (
                "A plain list inside a module is not tracked (it was not assigned as a module attribute), "
                "so edits to it would go unseen: wrap it as nnx.List(...)."
            )
        return f"{t.__name__} is a list subclass nnxlite cannot track or rebuild: use a plain list (it becomes nnx.List) or subclass nnx.List."
    if isinstance(value, dict):
        if t is dict:
            return (
                "A plain dict inside a module is not tracked (it was not assigned as a module attribute), "
                "so edits to it would go unseen: wrap it as nnx.Dict(...)."
            )
        return (
            f"{t.__name__} is a dict subclass nnxlite cannot track or rebuild faithfully (it would lose its "
            "order, default_factory or other state): use a plain dict (it becomes nnx.Dict) or subclass nnx.Dict."
        )
    return f"{t.__name__} is a tuple subclass nnxlite cannot rebuild: use a tuple or a namedtuple."


def _unsupported_error(found: list) -> TypeError:
    lines = [f"  {_fmt_path(path)}: {type(value).__name__}. {_unsupported_hint(value)}" for path, value in found[:10]]
    return TypeError("Cannot split the graph: some containers cannot be tracked exactly.\n" + "\n".join(lines))


def _freeze_metadata(meta: dict, path: Path, bad: list, sigs: list) -> tuple:
    items = []
    for k, v in sorted(meta.items()):
        v = _freeze_value(v)
        try:
            hash(v)
        except TypeError:
            bad.append((path + (f"<metadata {k}>",), v))
        sigs.append(_static_sig(v))
        items.append((k, v))
    return tuple(items)


def _freeze_value(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze_value(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze_value(x)) for k, x in v.items()))
    return v


def _static_error(bad: list) -> TypeError:
    lines = []
    for path, value in bad[:10]:
        what = type(value).__name__
        if _data.annotation_of(value) is not None:
            lines.append(
                f"  {_fmt_path(path)}: an nnx.data(...)/nnx.static(...) marker inside a container; assign "
                "nnx.data(...)/nnx.static(...) directly to a module attribute (self.x = nnx.data(...))"
            )
            continue
        if isinstance(value, (jax.Array, np.ndarray)):
            hint = (
                "an array inside a tuple is not state; use a list (or nnx.List), mark the attribute "
                "nnx.data(...), or wrap it in a Variable (nnx.Param(x) to train it)"
            )
        elif isinstance(value, tuple):
            hint = (
                "a tuple holding arrays is not state; use a list (or nnx.List), mark the attribute "
                "nnx.data(...), or wrap the arrays in Variables"
            )
        else:
            hint = (
                "static attributes must be hashable: use a tuple or frozenset, mark it nnx.data(...) "
                "to make it state, or wrap it in a Variable"
            )
        lines.append(f"  {_fmt_path(path)}: unhashable {what}; {hint}")
    return TypeError("Cannot split the graph: some attributes are neither state nor hashable static data.\n" + "\n".join(lines))


def _flat(node: Any) -> _Flat:
    """The traversal of ``node``, from its cache when the structure has not changed."""
    d = getattr(node, "__dict__", None)
    if d is not None and isinstance(node, _NODE_BASES):
        epoch = _epoch.current()
        cached = d.get(_CACHE_KEY)
        if cached is not None and cached.epoch == epoch:
            return cached
        flat = _traverse(node, epoch)
        d[_CACHE_KEY] = flat
        return flat
    return _traverse(node)


# ---------------------------------------------------------------------------------
# Filtering the traversal into groups
# ---------------------------------------------------------------------------------
def _groups(flat: _Flat, filters: tuple, complete: bool) -> tuple[list[list[int]], list[StateStructure]]:
    try:
        key = (filters, complete)
        hit = flat.groups.get(key)
    except TypeError:  # unhashable filter
        key, hit = None, None
    if hit is not None:
        return hit
    gd = flat.graphdef
    if not filters:
        result = ([list(range(len(flat.variables)))], [gd.structure])
    else:
        shared = _edges(gd)[2]
        alternatives = (lambda j: _other_paths(gd, j) if j in shared else None) if shared else None
        buckets = filterlib.partition_indices(
            zip(gd.paths, flat.variables), filters, complete=complete, alternatives=alternatives
        )
        structures = [
            StateStructure(tuple(gd.paths[j] for j in b), tuple(gd.vardefs[j] for j in b)) for b in buckets
        ]
        result = (buckets, structures)
    if key is not None:
        if len(flat.groups) > 32:  # callables made per call must not grow this forever
            flat.groups.clear()
        flat.groups[key] = result
    return result


def _edges(gd: GraphDef):
    """Every edge into each node and Variable, and the Variables with more than one path."""
    if gd._edges is None:
        node_in: list = [[] for _ in gd.nodes]
        var_in: list = [[] for _ in gd.vardefs]
        for i, (_, _, items) in enumerate(gd.nodes):
            for key, tag, payload in items:
                if tag == NODE:
                    node_in[payload].append((i, key))
                elif tag == VAR:
                    var_in[payload].append((i, key))
        # A node has one path if one edge enters it and its parent has one path. That
        # edge is the one it was found by, so the parent has a smaller index.
        single = [False] * len(gd.nodes)
        for i, edges in enumerate(node_in):
            single[i] = (not edges) if i == 0 else (len(edges) == 1 and single[edges[0][0]])
        shared = frozenset(
            j for j, edges in enumerate(var_in) if len(edges) > 1 or (edges and not single[edges[0][0]])
        )
        gd._edges = (node_in, var_in, shared)
    return gd._edges


# Enumerating every path of a Variable is exponential in the worst case (a chain of
# diamonds); past this many, a path filter cannot be answered exactly.
MAX_PATHS_PER_VARIABLE = 10_000


def _other_paths(gd: GraphDef, j: int) -> Iterator[Path]:
    """Every path from the root to Variable ``j`` except its canonical one (no node twice)."""
    node_in, var_in, _ = _edges(gd)
    canonical = gd.paths[j]
    stack = [(p, (k,), frozenset((p,))) for p, k in reversed(var_in[j])]
    found = 0
    while stack:
        node, suffix, on_path = stack.pop()
        if node == 0:
            found += 1
            if found > MAX_PATHS_PER_VARIABLE:
                raise ValueError(
                    f"The Variable at {_fmt_path(canonical)} is reachable by more than {MAX_PATHS_PER_VARIABLE} "
                    "paths through shared sub-modules, so a path filter cannot be checked on all of them. "
                    "Select it by type (nnx.Param, ...) or by its canonical path."
                )
            if suffix != canonical:
                yield suffix
            continue
        for p, k in reversed(node_in[node]):
            if p not in on_path:
                stack.append((p, (k,) + suffix, on_path | {p}))


def _states(flat: _Flat, filters: tuple, complete: bool) -> list[State]:
    # The States hold the graph's live Variables, as flax's do; plain array
    # attributes (DataLeaf boxes made by the walk) go in as their values.
    buckets, structures = _groups(flat, filters, complete)
    variables = flat.variables
    gd = flat.graphdef
    if gd._plan is None:
        _plan(gd)
    if gd._data_leaves:
        variables = list(variables)
        for j in gd._data_leaves:
            variables[j] = variables[j].raw_value
    if len(buckets) == 1 and len(buckets[0]) == len(variables):
        return [_new_state(list(variables), structures[0])]
    return [_new_state([variables[j] for j in b], s) for b, s in zip(buckets, structures)]


# ---------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------
def split(node: Any, *filters: filterlib.Filter, graph: bool | None = None) -> tuple:
    """Split a graph into its static :class:`GraphDef` and one State per filter.

    With no filter, one State holds everything. With several filters each
    Variable goes to the first filter that matches, and every Variable must
    match one (end with ``...`` to collect the rest). A single filter returns
    just the matching Variables.

    >>> import nnxlite as nnx
    >>> model = nnx.BatchNorm(3, ctx=nnx.context(0))
    >>> graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    >>> sorted(params.to_pure_dict()), sorted(stats.to_pure_dict())
    (['bias', 'scale'], ['mean', 'var'])

    Shared Variables and sub-modules appear once (under their first path in
    canonical order) and are shared again after :func:`merge`.

    ``graph=`` (flax.nnx's graph/tree mode switch, here and in :func:`state`,
    :func:`graphdef`, :func:`clone`, :func:`iter_graph`) is accepted and
    changes nothing: nnxlite always keeps graph semantics.
    """
    flat = _flat(node)
    return (flat.graphdef, *_states(flat, filters, complete=True))


def graphdef(node: Any, /, *, graph: bool | None = None) -> GraphDef:
    """The :class:`GraphDef` of ``node`` (cached while its structure is unchanged).

    >>> import nnxlite as nnx
    >>> nnx.graphdef(nnx.Linear(2, 3, ctx=nnx.context(0)))
    GraphDef(Linear, nodes=1, variables=2)
    """
    return _flat(node).graphdef


def state(node: Any, *filters: filterlib.Filter, graph: bool | None = None) -> State | tuple[State, ...]:
    """The State of ``node``: everything, or one State per filter (no completeness check).

    >>> import nnxlite as nnx
    >>> model = nnx.Linear(2, 3, ctx=nnx.context(0))
    >>> nnx.state(model, nnx.Param).paths()
    (('bias',), ('kernel',))
    """
    states = _states(_flat(node), filters, complete=False)
    return states[0] if len(states) == 1 else tuple(states)


def merge(graphdef: GraphDef, *states: State | Mapping, copy: bool = False, recreate_variables: bool = True) -> Any:
    """Build a new object graph from a :class:`GraphDef` and its States.

    The states together must hold exactly the graph's Variables: a missing or
    unexpected path raises one ``ValueError`` naming every offending path.
    Works on concrete arrays and on tracers, so it can be called inside
    ``jax.jit``, ``jax.lax.scan`` and ``jax.vmap`` bodies.

    >>> import nnxlite as nnx
    >>> graphdef, state = nnx.split(nnx.Linear(2, 3, ctx=nnx.context(0)))
    >>> nnx.merge(graphdef, state).kernel.shape
    (2, 3)

    ``copy=`` and ``recreate_variables=`` are flax's keywords: they are
    accepted and change nothing, because an nnxlite State holds values, so
    ``merge`` always creates fresh Variables (flax's ``copy=True``). A
    flax-style ``GraphState`` (from :func:`nnxlite.unpack`) may stand for the
    GraphDef and its State.
    """
    if not isinstance(graphdef, GraphDef):
        inner = getattr(graphdef, "_graphdef", None)
        if isinstance(inner, GraphDef):  # nnx.unpack's GraphState: (graphdef, state) in one
            return merge(inner, graphdef, *states)
        raise TypeError(f"merge expects a GraphDef as first argument, got {type(graphdef).__name__}")
    return _build(graphdef, _gather_leaves(graphdef, states, "merge"))


def _as_state(s: Any) -> State:
    if isinstance(s, State):
        return s
    if isinstance(s, Mapping):
        return State(s)
    raise TypeError(f"Expected a State or a nested dict of values, got {type(s).__name__}.")


def _gather_leaves(gd: GraphDef, states: tuple, what: str) -> list:
    states = tuple(_as_state(s) for s in states)
    if len(states) == 1:
        s = states[0]
        st = s._structure
        if st is gd._structure or st.paths is gd.paths or st.paths == gd.paths:
            return raw_leaves(s)
    lookup: dict[Path, Any] = {}
    for s in states:
        lookup.update(zip(s._structure.paths, raw_leaves(s)))
    try:
        leaves = [lookup[p] for p in gd.paths]
    except KeyError:
        leaves = None
    if leaves is None or len(lookup) != len(gd.paths):
        expected = set(gd.paths)
        missing = [p for p in gd.paths if p not in lookup]
        extra = [p for p in lookup if p not in expected]
        raise ValueError(_key_error_text(what, missing, extra))
    return leaves


def _plan(gd: GraphDef):
    """Precompile a GraphDef into build instructions (once per GraphDef).

    Variables: one (type, shared metadata dict) per leaf; metadata dicts are
    copy-on-write, so merged Variables can share them. Nodes: a template dict
    of static attributes in the node's own attribute order, plus the slots
    to fill with Variables and child nodes.
    """
    if gd._plan is not None:
        return gd._plan
    var_specs = [(t, dict(meta) if meta else _EMPTY_METADATA) for t, meta in gd.vardefs]
    data_leaves = tuple(j for j, (t, _) in enumerate(gd.vardefs) if t is _data.DataLeaf)
    node_specs = []
    for node_type, kind, items in gd.nodes:
        template = {}
        var_slots = []
        node_slots = []
        for key, tag, payload in items:
            if tag == STATIC:
                template[key] = payload
            else:
                template[key] = None
                (var_slots if tag == VAR else node_slots).append((key, payload))
        node_specs.append((node_type, kind, template, tuple(var_slots), tuple(node_slots)))
    # Without back-references (cycles), children always have larger indices
    # than their parents, so one reverse pass can create and fill every node.
    acyclic = all(j > i for i, spec in enumerate(node_specs) for _, j in spec[4])
    gd._data_leaves = data_leaves
    gd._plan = (var_specs, node_specs, acyclic)
    return gd._plan


_new = object.__new__
_object_setattr = object.__setattr__


def _build(gd: GraphDef, leaves: list) -> Any:
    variables, objs = _build_all(gd, leaves)
    return variables[0] if objs is None else objs[0]


def _build_all(gd: GraphDef, leaves: list) -> tuple[list, list | None]:
    """Build ``gd``'s graph; return its Variables (plain data leaves unboxed) and its node objects.

    Both lists are in ``gd``'s own order, which is the order a traversal of
    the new graph finds them in (``nodes`` is None when the root is a
    Variable). ``nnx.jit`` uses them to skip walking a graph it just built.
    """
    var_specs, node_specs, acyclic = _plan(gd)
    variables = []
    append = variables.append
    for (t, meta), x in zip(var_specs, leaves):
        v = _new(t)
        v.raw_value = x
        v._metadata = meta
        append(v)
    for j in gd._data_leaves:  # plain data goes back unboxed
        variables[j] = leaves[j]
    if gd.root[0] == VAR:
        return variables, None
    return variables, (_build_acyclic if acyclic else _build_cyclic)(node_specs, variables)


def rebuild(gd: GraphDef, children: Any) -> Any:
    """The graph of ``gd`` around ready-made leaf objects (the JAX unflatten of a Pytree).

    ``children[j]`` goes where Variable ``j`` was (a Variable, or whatever a
    ``jax.tree.map`` put there) and plain data leaves are taken as they are.
    """
    _, node_specs, acyclic = _plan(gd)
    if gd.root[0] == VAR:
        return children[0]
    return (_build_acyclic if acyclic else _build_cyclic)(node_specs, children)[0]


def leaf_names(gd: GraphDef) -> list[str]:
    """Readable access paths of each leaf, as ``jax.tree_util.keystr`` prints them (no leading dot).

    ``layers[0].kernel`` for an attribute path, ``blocks['a'].w`` through a dict.
    """
    names = []
    for path in gd.paths:
        parts = []
        kind = gd.nodes[0][1] if gd.root[0] == NODE else None
        node = gd.root[1]
        for key in path:
            if kind == OBJECT:
                parts.append(f".{key}" if isinstance(key, str) else f"[{key!r}]")
            elif kind == DICT or kind == STATE:
                parts.append(f"[{key!r}]")
            else:
                parts.append(f"[{key}]")
            if kind is None:
                break
            entry = next((e for e in gd.nodes[node][2] if e[0] == key), None)
            if entry is None or entry[1] != NODE:
                kind = None
                continue
            node = entry[2]
            kind = gd.nodes[node][1]
        name = "".join(parts)
        names.append(name[1:] if name.startswith(".") else name)
    return names


def _filled(template: dict, var_slots, node_slots, variables: list, objs: list) -> dict:
    d = template.copy()
    for key, j in var_slots:
        d[key] = variables[j]
    for key, j in node_slots:
        d[key] = objs[j]
    return d


def _build_acyclic(node_specs: list, variables: list) -> list:
    # The hot path: node filling is inlined here (a helper call per node costs ~10%).
    objs: list = [None] * len(node_specs)
    i = len(node_specs)
    for node_type, kind, template, var_slots, node_slots in reversed(node_specs):
        i -= 1
        if kind == OBJECT:
            obj = _new(node_type)
            d = obj.__dict__  # filling the object's own dict beats building one and swapping it in
            d.update(template)
            for key, j in var_slots:
                d[key] = variables[j]
            for key, j in node_slots:
                d[key] = objs[j]
            objs[i] = obj
            continue
        d = _filled(template, var_slots, node_slots, variables, objs)
        if kind == LIST:
            obj = list.__new__(node_type)
            list.extend(obj, d.values())
        elif kind == DICT:
            obj = dict.__new__(node_type)
            dict.update(obj, d)
        else:
            obj = _immutable(node_type, kind, d)
        objs[i] = obj
    return objs  # every node, in the GraphDef's order; the root is objs[0]


def _immutable(node_type: type, kind: int, d: dict) -> Any:
    """A tuple, namedtuple or State node, built once its items exist."""
    if kind == STATE:
        return State(d)
    return tuple(d.values()) if node_type is tuple else node_type(*d.values())


def _build_cyclic(node_specs: list, variables: list) -> list:
    # Create every mutable node empty first so back-references can point at it.
    objs: list = [None] * len(node_specs)
    for i, (node_type, kind, _, _, _) in enumerate(node_specs):
        if kind == OBJECT:
            objs[i] = _new(node_type)
        elif kind == LIST:
            objs[i] = list.__new__(node_type)
        elif kind == DICT:
            objs[i] = dict.__new__(node_type)
    # Tuples are immutable: build each after the tuples it holds (a shared tuple
    # may sit at any index). A cycle must pass through a mutable node, which
    # already exists, so this ends. Explicit stack: nesting depth is unbounded.
    for start, spec in enumerate(node_specs):
        if (spec[1] != TUPLE and spec[1] != STATE) or objs[start] is not None:
            continue
        stack = [start]
        while stack:
            i = stack[-1]
            node_type, _, template, var_slots, node_slots = node_specs[i]
            pending = [j for _, j in node_slots if objs[j] is None]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            if objs[i] is None:
                objs[i] = _immutable(node_type, node_specs[i][1], _filled(template, var_slots, node_slots, variables, objs))
    for obj, (node_type, kind, template, var_slots, node_slots) in zip(objs, node_specs):
        if kind == TUPLE or kind == STATE:
            continue
        d = _filled(template, var_slots, node_slots, variables, objs)
        if kind == OBJECT:
            _object_setattr(obj, "__dict__", d)
        elif kind == LIST:
            list.extend(obj, d.values())
        else:
            dict.update(obj, d)
    return objs  # every node, in the GraphDef's order; the root is objs[0]


def update(node: Any, *states: State | Mapping) -> None:
    """Write state values into the Variables of an existing graph, in place.

    Each path may be any path that reaches the Variable (shared Variables have
    several). Every value is checked first; an unknown path or a shape/dtype
    mismatch raises one ``ValueError`` naming every offending path, and nothing
    is written.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 3, ctx=nnx.context(0))
    >>> nnx.update(model, {"bias": jnp.ones(3)})
    >>> model.bias.value.tolist()
    [1.0, 1.0, 1.0]
    """
    flat = _flat(node)
    aliases = flat.aliases
    variables = flat.variables
    writes: list[tuple[Variable, Any]] = []
    unknown: list[Path] = []
    mismatched: list[str] = []
    for s in states:
        s = _as_state(s)
        st = s._structure
        if st.paths is flat.graphdef.paths:  # straight from split/state: paths known good
            indices = range(len(variables))
            paths = st.paths
        else:
            paths = st.paths
            indices = [aliases.get(p, -1) for p in paths]
            if -1 in indices:  # maybe a path through a shared sub-module: walk the live graph
                indices = [j if j >= 0 else _resolve(flat, node, p) for j, p in zip(indices, paths)]
        for j, path, value in zip(indices, paths, raw_leaves(s)):
            if j < 0:
                unknown.append(path)
                continue
            v = variables[j]
            old = v.raw_value
            # The common case (a concrete array replaced by one of the same shape and
            # dtype; JAX interns avals) costs two type checks and an identity check.
            if type(value) is not _ArrayImpl or type(old) is not _ArrayImpl or old.aval is not value.aval:
                problem = _value_problem(old, value)
                if problem:
                    mismatched.append(f"  {_fmt_path(path)}: {problem}")
            writes.append((v, value))
    if unknown or mismatched:
        lines = ["update: nothing was written because the state does not fit the graph."]
        if unknown:
            lines.append(
                f"  unknown paths ({len(unknown)}): " + ", ".join(_fmt_path(p) for p in unknown[:20])
            )
            lines.append(f"  the graph's paths are: {', '.join(_fmt_path(p) for p in flat.graphdef.paths[:20])}")
        lines.extend(mismatched[:20])
        raise ValueError("\n".join(lines))
    for v, value in writes:
        v.raw_value = value


def _resolve(flat: _Flat, root: Any, path: Path) -> int:
    """Index of the Variable at ``path`` in the live graph, or -1."""
    obj = root
    try:
        for k in path:
            obj = obj[k] if isinstance(obj, (list, tuple, dict)) else getattr(obj, k)
    except (AttributeError, KeyError, IndexError, TypeError):
        return -1
    if not isinstance(obj, Variable):
        return -1
    for j, v in enumerate(flat.variables):
        if v is obj:
            return j
    return -1


# JAX's concrete array class, named without creating an array: building one at import time would
# start the backend before the user can set `jax_num_cpu_devices` or other platform options.
from jax._src.array import ArrayImpl as _ArrayImpl  # noqa: E402
_Tracer = jax.core.Tracer
_ARRAY_LIKE = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)


def _describe(x: Any) -> str:
    dtype, shape = getattr(x, "dtype", None), getattr(x, "shape", None)
    if dtype is not None and shape is not None:
        return f"{dtype}{list(shape)}"
    text = repr(x)
    return f"{type(x).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _value_problem(old: Any, new: Any) -> str | None:
    """Why ``new`` may not replace ``old`` in a Variable (None if it may).

    An array leaf takes only an array (jax, numpy, or a live tracer) of the
    same shape and dtype; a leaked tracer and a ShapeDtypeStruct (no values)
    are refused everywhere except where the model itself is abstract.
    """
    if isinstance(new, _Tracer) and _tracer_is_dead(new):
        return (
            f"found a {type(new).__name__} from a JAX transformation that has already finished (a leaked "
            "tracer, it has no value): write concrete arrays, or return the values from the transformation"
        )
    old_abstract = isinstance(old, jax.ShapeDtypeStruct)
    if isinstance(new, jax.ShapeDtypeStruct) and not old_abstract:
        return (
            f"found a ShapeDtypeStruct {_describe(new)} (a shape and dtype without values) for the concrete "
            f"{_describe(old)}: write arrays (e.g. from nnx.state of a real model, or a restored checkpoint)"
        )
    old_shape, old_dtype = getattr(old, "shape", None), getattr(old, "dtype", None)
    if old_shape is None or old_dtype is None:
        return None  # python scalars and other plain values: anything goes
    if not isinstance(new, _ARRAY_LIKE):
        return f"expected an array {_describe(old)}, found {_describe(new)}: write a jax or numpy array"
    if tuple(new.shape) != tuple(old_shape):
        return f"expected shape {tuple(old_shape)}, found {tuple(new.shape)}"
    if new.dtype != old_dtype:
        return f"expected dtype {old_dtype}, found {new.dtype}"
    return None


def _copy_leaves(leaves: list) -> list:
    """Fresh buffers for every concrete array (tracers and Python values are kept)."""
    arrays = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array) and not isinstance(x, _Tracer)]
    out = list(leaves)
    if arrays:
        copies = jax.device_put([leaves[i] for i in arrays], may_alias=False)
        for i, c in zip(arrays, copies):
            out[i] = c
    for i, x in enumerate(leaves):
        if isinstance(x, np.ndarray):
            out[i] = x.copy()
    return out


def clone(node: Any, variables: bool = True, *, arrays: bool = False, graph: bool | None = None) -> Any:
    """An independent deep copy of a graph: new objects, new array buffers, sharing preserved.

    The copy owns its arrays, so donating the original to ``nnx.jit`` (or
    deleting its buffers) leaves the clone intact.

    >>> import nnxlite as nnx
    >>> model = nnx.Linear(2, 3, ctx=nnx.context(0))
    >>> other = nnx.clone(model)
    >>> other is model, other.kernel is model.kernel, other.kernel.value is model.kernel.value
    (False, False, False)

    flax.nnx's ``arrays=`` is accepted: nnxlite always copies the buffers.
    """
    if not variables:
        raise ValueError(
            "nnx.clone(node, variables=False) (a copy sharing the original's Variables) is not supported "
            "by nnxlite; clone copies the Variables. To share them, keep using the original module."
        )
    flat = _flat(node)
    return _build(flat.graphdef, _copy_leaves([v.raw_value for v in flat.variables]))


def pop(node: Any, *filters: filterlib.Filter) -> State | tuple[State, ...]:
    """Remove the Variables matching ``filters`` from the graph and return their State.

    Typical use: collect ``Intermediate`` values recorded with ``Module.sow``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 3, ctx=nnx.context(0))
    >>> model.note = nnx.Intermediate(jnp.zeros(()))
    >>> sorted(nnx.pop(model, nnx.Intermediate).to_pure_dict()), hasattr(model, "note")
    (['note'], False)
    """
    if not filters:
        raise TypeError("pop needs at least one filter")
    flat = _flat(node)
    states = _states(flat, filters, complete=False)
    buckets, _ = _groups(flat, filters, complete=False)
    popped = {j for b in buckets for j in b}
    edges = [p for p, j in flat.aliases.items() if j in popped]
    for path in edges:
        parent = node
        for k in path[:-1]:
            parent = parent[k] if isinstance(parent, (list, tuple, dict)) else getattr(parent, k)
        key = path[-1]
        if isinstance(parent, dict):
            del parent[key]
        elif isinstance(parent, (list, tuple)):
            raise ValueError(f"pop: cannot remove {_fmt_path(path)} from inside a list or tuple.")
        else:
            delattr(parent, key)
    return states[0] if len(states) == 1 else tuple(states)


def iter_graph(node: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Path, Any]]:
    """Yield ``(path, object)`` for every node and Variable, each once, in canonical order.

    >>> import nnxlite as nnx
    >>> model = nnx.Sequence([nnx.Linear(2, 2, ctx=nnx.context(0))])
    >>> [p for p, _ in nnx.iter_graph(model)]
    [(), ('layers',), ('layers', 0), ('layers', 0, 'bias'), ('layers', 0, 'kernel')]
    """
    flat = _flat(node)
    entries = list(zip(flat.node_paths, flat.node_objects))
    entries += list(zip(flat.graphdef.paths, flat.pytree_children()))
    entries.sort(key=lambda e: path_sort_key(e[0]))
    yield from entries


def flatten_roots(roots: tuple) -> _Flat:
    """Traverse several roots as one graph (shared objects appear once).

    Used by the lifted transforms: ``(model, optimizer)`` share the model.
    """
    return _traverse(tuple(roots))


# flax code reaches some graph functions as ``nnx.graph.X`` (flax's graph module holds them all);
# nnxlite defines them in its compatibility layer and at the top level, so forward those names.
_TOP_LEVEL_GRAPH_NAMES = frozenset({
    "flatten", "unflatten", "unpack", "find_duplicates", "recursive_map", "set_metadata", "vars_as", "with_vars",
    "map_state", "iter_children", "iter_module_children", "cached_partial", "call", "as_pure", "pure", "map",
    "variables", "set_graph_mode", "set_graph_updates", "FlatState", "GraphState", "PureState",
})


def __getattr__(name: str) -> Any:
    if name in _TOP_LEVEL_GRAPH_NAMES:
        import nnxlite

        try:
            return getattr(nnxlite, name)
        except AttributeError:
            pass
    raise AttributeError(f"module 'nnxlite.graph' has no attribute {name!r}")
