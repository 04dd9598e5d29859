"""State: the pure half of a split module — a pytree of values keyed by path.

A ``State`` maps paths (tuples of attribute names and list indices, such as
``('layers', 0, 'kernel')``) to values. It is *flat first*: internally it is
a list of leaves plus one shared, hashable :class:`StateStructure` (the paths
and each leaf's Variable type and metadata), so the graph functions and the
nnx transforms hand its leaves over without walking anything. To JAX it is
the nested dict it reads as (key paths ``['layers'][0]['kernel']``, so orbax
restores it as nested names), at about a nested dict's flattening cost::

    >>> import jax, jax.numpy as jnp
    >>> import nnxlite as nnx
    >>> model = nnx.Linear(2, 3, ctx=nnx.context(0))
    >>> state = nnx.state(model)
    >>> state["kernel"].shape
    (2, 3)
    >>> state["kernel"] is model.kernel       # the model's own Variable, as in flax
    True
    >>> state["bias"] = jnp.ones(3)          # nested assignment (a new Param box)
    >>> jax.tree.map(jnp.shape, state).to_pure_dict()
    {'bias': (3,), 'kernel': (2, 3)}

**Leaves are Variables, as in flax.nnx 0.12.** ``nnx.split``/``nnx.state``
put the model's live Variables into the State, so ``state['kernel'].value``
reads it, ``state['kernel'][...] = x`` writes into the model, and
``jax.tree.map(f, state, is_leaf=lambda x: isinstance(x, nnx.Variable))``
hands ``f`` the Variables. To JAX each Variable is one more node, keyed
``.value`` (``['kernel'].value``, flax's key paths, so orbax saves the same
nested names). States built from plain values (``State({'w': x})``) hold
those values; :meth:`State.flat`, :meth:`State.leaves` and
:meth:`State.to_pure_dict` always give plain values, and ``merge``/``update``
read values from either kind of leaf.

Paths are kept in a canonical sorted order (integers before strings, each
level sorted), which is exactly the order the graph traversal visits them, so
states built by different routes line up leaf for leaf.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax

from nnxlite import _epoch
from nnxlite import filters as filterlib
from nnxlite._state_flax import FlaxStateMethods
from nnxlite.variables import Variable, _freeze, _make

__all__ = ["State", "StateStructure", "path_sort_key", "raw_leaves", "boxed_state"]

Path = tuple[Any, ...]
VarDef = tuple  # (variable type, frozen metadata items)
_PLAIN_DEF: VarDef = (Variable, ())


def _key_order(key: Any) -> tuple:
    if isinstance(key, int):
        return (0, key, "")
    if isinstance(key, str):
        return (1, 0, key)
    return (2, 0, repr(key))


def _raw(x: Any) -> Any:
    return x.raw_value if isinstance(x, Variable) else x


def raw_leaves(state: "State") -> list:
    """The State's leaves as plain values (Variables unboxed), in canonical order."""
    leaves = state._leaves
    try:  # the common case, a State from split: every leaf is a Variable
        return [v.raw_value for v in leaves]
    except AttributeError:
        return [v.raw_value if isinstance(v, Variable) else v for v in leaves]


def path_sort_key(path: Path) -> tuple:
    """The canonical order of paths: component by component, ints before strings."""
    return tuple(_key_order(k) for k in path)


class StateStructure:
    """The static part of a State: its paths and each leaf's Variable type and metadata.

    It is the pytree aux data of a State. Its hash is computed once and equal
    structures compare in one identity check when they are the same object,
    which is the common case (states from one split share it).
    """

    __slots__ = ("paths", "defs", "_hash", "_index", "_nest", "_aux")

    def __init__(self, paths: tuple[Path, ...], defs: tuple[VarDef, ...] | None):
        self.paths = paths
        self.defs = defs
        self._hash: int | None = None
        self._index: dict[Path, int] | None = None
        self._nest: Any = None  # the nested pytree layout, built on first flatten (_nest_plan)
        self._aux: _PytreeAux | None = None

    @property
    def index(self) -> dict[Path, int]:
        if self._index is None:
            self._index = {p: i for i, p in enumerate(self.paths)}
        return self._index

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash((self.paths, self.defs))
        return self._hash

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, StateStructure) or hash(self) != hash(other):
            return False
        return self.paths == other.paths and self.defs == other.defs

    def def_at(self, i: int) -> VarDef:
        return _PLAIN_DEF if self.defs is None else self.defs[i]

    def __repr__(self) -> str:
        return f"StateStructure({len(self.paths)} paths)"


class State(FlaxStateMethods, Mapping):
    """A pytree of state values keyed by path; see the module docstring.

    Construct one from a nested dict (``State({'w': x, 'sub': {'b': y}})``),
    from a flat dict whose keys are path tuples, or get one from
    :func:`nnxlite.state` / :func:`nnxlite.split`.
    """

    __slots__ = ("_leaves", "_structure", "_parent")

    def __init__(self, mapping: Mapping | None = None, /):
        if isinstance(mapping, State):
            _init(self, list(mapping._leaves), mapping._structure)
            return
        flat = _flatten_mapping(mapping or {})
        paths = sorted(flat, key=path_sort_key)
        leaves = [flat[p] for p in paths]
        _init(self, leaves, StateStructure(tuple(paths), _defs_of(leaves)))

    # -- construction helpers ---------------------------------------------
    @classmethod
    def from_flat(cls, items: Mapping[Path, Any] | list[tuple[Path, Any]], defs=None) -> "State":
        """Build a State from ``{path: value}``; ``defs`` optionally maps path -> (type, metadata).

        With ``defs``, plain values are boxed in their Variable type (flax's
        State of Variables); Variables among the values are kept as they are.
        """
        items = dict(items)
        paths = tuple(sorted(items, key=path_sort_key))
        leaves = [items[p] for p in paths]
        if defs is None:
            return _new_state(leaves, StateStructure(paths, _defs_of(leaves)))
        vardefs = tuple(defs.get(p, _PLAIN_DEF) for p in paths)
        return boxed_state(leaves, StateStructure(paths, vardefs))

    # -- flat view ------------------------------------------------------------
    def flat(self) -> dict[Path, Any]:
        """A new ``{path: value}`` dict of every leaf's plain value."""
        return dict(zip(self._structure.paths, raw_leaves(self)))

    def paths(self) -> tuple[Path, ...]:
        """Every leaf's path, in canonical order."""
        return self._structure.paths

    def leaves(self) -> list[Any]:
        """Every leaf's plain value, in canonical order."""
        return raw_leaves(self)

    def variables(self) -> Iterator[tuple[Path, Variable]]:
        """Yield ``(path, Variable)`` pairs: the State's Variables (plain values boxed in their type)."""
        s = self._structure
        for i, (p, v) in enumerate(zip(s.paths, self._leaves)):
            if isinstance(v, Variable):
                yield p, v
            else:
                t, meta = s.def_at(i)
                yield p, _make(t, v, dict(meta))

    # -- nested mapping view ---------------------------------------------------
    def _top_keys(self) -> list[Any]:
        seen: dict[Any, None] = {}
        for p in self._structure.paths:
            seen.setdefault(p[0], None)
        return list(seen)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._top_keys())

    def __len__(self) -> int:
        return len(self._top_keys())

    def __contains__(self, key) -> bool:
        return any(p[0] == key for p in self._structure.paths) if not isinstance(key, tuple) else (
            key in self._structure.index
        )

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            index = self._structure.index
            if key in index:
                return _leaf(self, key, self._leaves[index[key]])
            sub = self
            for k in key:
                sub = sub[k]
            return sub
        index = self._structure.index
        single = (key,)
        if single in index:
            return _leaf(self, single, self._leaves[index[single]])
        s = self._structure
        picked = [i for i, p in enumerate(s.paths) if p[0] == key]
        if not picked:
            raise KeyError(f"State has no key {key!r}; top-level keys are {self._top_keys()!r}")
        child = _new_state(
            [self._leaves[i] for i in picked],
            StateStructure(
                tuple(s.paths[i][1:] for i in picked),
                None if s.defs is None else tuple(s.defs[i] for i in picked),
            ),
        )
        child._parent = (self, key)
        return child

    def _node_items(self) -> list[tuple[Any, Any]]:
        """``(key, leaf or sub-State)`` for each top-level key: a State as a graph node's items."""
        index = self._structure.index
        return [
            (k, self._leaves[index[(k,)]]) if (k,) in index else (k, self[k]) for k in self._top_keys()
        ]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(str(e)) from None

    def __setitem__(self, key: Any, value: Any) -> None:
        path = key if isinstance(key, tuple) else (key,)
        if isinstance(value, (State, dict)):
            for sub, leaf in _flatten_mapping(value).items():
                self._set_path(path + sub, leaf)
        else:
            self._set_path(path, value)

    def _set_path(self, path: Path, value: Any) -> None:
        s = self._structure
        i = s.index.get(path)
        if i is not None:
            old = self._leaves[i]
            if isinstance(value, Variable):
                if s.defs is not None and s.defs[i] != _def_of(value):
                    self._retype(i, _def_of(value))
            elif isinstance(old, Variable):  # keep the slot a Variable of its type (a new box)
                value = _make(type(old), value, old._metadata)
            self._leaves[i] = value
        else:
            items = dict(zip(s.paths, self._leaves))
            defs = None if s.defs is None else dict(zip(s.paths, s.defs))
            items[path] = value
            fresh = State.from_flat(items, defs)
            _init(self, fresh._leaves, fresh._structure, self._parent)
        if self._parent is not None:
            parent, key = self._parent
            parent._set_path((key,) + path, value)
        _epoch.bump()  # after the edit (see _epoch): a State kept in a module is a graph node

    def _retype(self, i: int, vardef: VarDef) -> None:
        s = self._structure
        defs = list(s.defs)
        defs[i] = vardef
        object.__setattr__(self, "_structure", StateStructure(s.paths, tuple(defs)))

    # -- conversions --------------------------------------------------------------
    def to_pure_dict(self) -> dict:
        """Nested plain dicts of the values (no Variable types or metadata)."""
        out: dict = {}
        for p, v in zip(self._structure.paths, raw_leaves(self)):
            d = out
            for k in p[:-1]:
                d = d.setdefault(k, {})
            d[p[-1]] = v
        return out

    def replace_by_pure_dict(self, pure: Mapping) -> None:
        """Replace every value in place from a nested dict with exactly the same paths.

        Raises ``ValueError`` naming the missing and unexpected paths; on error the
        State is left unchanged.
        """
        flat = _flatten_mapping(pure)
        have = set(self._structure.paths)
        missing = [p for p in self._structure.paths if p not in flat]
        extra = [p for p in flat if p not in have]
        if missing or extra:
            raise ValueError(_key_error_text("replace_by_pure_dict", missing, extra))
        self._leaves[:] = [
            _make(type(old), _raw(flat[p]), old._metadata) if isinstance(old, Variable) else flat[p]
            for p, old in zip(self._structure.paths, self._leaves)
        ]
        _epoch.bump()

    # -- filtering -------------------------------------------------------------------
    def filter(self, *filters: filterlib.Filter) -> "State | tuple[State, ...]":
        """Keep the leaves matching each filter: one filter gives a State, several a tuple."""
        groups = self._group(filters, complete=False)
        return groups[0] if len(groups) == 1 else tuple(groups)

    def split(self, *filters: filterlib.Filter) -> "State | tuple[State, ...]":
        """Partition the leaves by filter (first match wins); every leaf must match one."""
        groups = self._group(filters, complete=True)
        return groups[0] if len(groups) == 1 else tuple(groups)

    def _group(self, filters, complete: bool) -> list["State"]:
        if not filters:
            return [self]
        buckets = filterlib.partition_indices(self.variables(), filters, complete=complete)
        return [self._subset(b) for b in buckets]

    def _subset(self, indices: list[int]) -> "State":
        s = self._structure
        return _new_state(
            [self._leaves[i] for i in indices],
            StateStructure(
                tuple(s.paths[i] for i in indices),
                None if s.defs is None else tuple(s.defs[i] for i in indices),
            ),
        )

    @staticmethod
    def merge(*states: "State | Mapping") -> "State":
        """Union of several States (later ones win on equal paths), in canonical order."""
        items: dict[Path, Any] = {}
        defs: dict[Path, VarDef] = {}
        typed = False
        for st in states:
            st = st if isinstance(st, State) else State(st)
            s = st._structure
            typed |= s.defs is not None
            for i, (p, v) in enumerate(zip(s.paths, st._leaves)):
                items[p] = v
                defs[p] = s.def_at(i)
        return State.from_flat(items, defs if typed else None)

    # -- display ------------------------------------------------------------------------
    def __repr__(self) -> str:
        if not self._leaves:
            return "State({})"
        lines = ["State({"]
        s = self._structure
        for i, (p, v) in enumerate(zip(s.paths, self._leaves)):
            t = s.def_at(i)[0]
            tag = "" if t is Variable or t.__name__ == "DataLeaf" else f"{t.__name__}: "
            val = _short(v)
            lines.append(f"  {'/'.join(map(str, p))}: {tag}{val},")
        lines.append("})")
        return "\n".join(lines)

    def __treescope_repr__(self, path, subtree_renderer):
        from nnxlite import display

        return display.render_state(self, path, subtree_renderer)

    def __eq__(self, other) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return self is other


def _short(v: Any) -> str:
    v = _raw(v)
    shape = getattr(v, "shape", None)
    dtype = getattr(v, "dtype", None)
    if shape is not None and dtype is not None and len(shape) > 0:
        return f"{dtype}{list(shape)}"
    return repr(v)


class AbstractLeaf(jax.ShapeDtypeStruct):
    """An abstract leaf read from a State: a ``jax.ShapeDtypeStruct`` that can be edited as flax does.

    A State from ``nnx.split``/``nnx.eval_shape`` holds Variables, whose
    ``.value`` is the abstract value. A State built from plain abstract values
    (``nnx.State({'w': jax.ShapeDtypeStruct(...)})``) gives one of these for
    ``state['w']``: it *is* the shape/dtype struct (same shape, dtype and
    sharding), and additionally ``.value`` reads it and assigning
    ``.value = array`` writes the array into the State (flax's surgery
    idiom). Concrete leaves are returned as they are.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> state = nnx.State({"kernel": jax.ShapeDtypeStruct((2, 3), jnp.float32)})
    >>> state["kernel"].shape, isinstance(state["kernel"], jax.ShapeDtypeStruct)
    ((2, 3), True)
    >>> state["kernel"].value = jnp.ones((2, 3))
    >>> float(state["kernel"].sum())
    6.0
    """

    __slots__ = ("_state", "_path")

    def __init__(self, state: "State", path: Path, struct: jax.ShapeDtypeStruct):
        super().__init__(struct.shape, struct.dtype, sharding=struct.sharding, weak_type=struct.weak_type)
        self._state, self._path = state, path

    @property
    def value(self) -> Any:
        return self._state._leaves[self._state._structure.index[self._path]]

    @value.setter
    def value(self, new: Any) -> None:
        self._state._set_path(self._path, new.raw_value if isinstance(new, Variable) else new)

    def __setattr__(self, name: str, new: Any) -> None:
        if name == "value":  # the struct itself stays immutable; the State's leaf changes
            type(self).value.fset(self, new)
        else:
            super().__setattr__(name, new)

    def get_value(self) -> Any:
        return self.value

    def set_value(self, new: Any) -> None:
        self.value = new


def _def_of(v: Variable) -> VarDef:
    return (type(v), _freeze(v._metadata) if v._metadata else ())


def _defs_of(leaves: list) -> tuple[VarDef, ...] | None:
    """The (type, metadata) of each leaf when some leaf is a Variable; ``None`` for all-plain leaves."""
    if not any(isinstance(v, Variable) for v in leaves):
        return None
    return tuple(_def_of(v) if isinstance(v, Variable) else _PLAIN_DEF for v in leaves)


def boxed_state(leaves: list, structure: StateStructure) -> "State":
    """A State of Variables: each plain value is boxed in its leaf's type and metadata.

    Plain array attributes (``DataLeaf``) stay plain values, as in flax.
    """
    defs = structure.defs
    if defs is not None:
        leaves = [
            v
            if isinstance(v, Variable) or (t is Variable and not meta) or t.__name__ == "DataLeaf"
            else _make(t, v, dict(meta) if meta else {})
            for v, (t, meta) in zip(leaves, defs)
        ]
    return _new_state(leaves, structure)


def _leaf(state: "State", path: Path, value: Any) -> Any:
    return AbstractLeaf(state, path, value) if type(value) is jax.ShapeDtypeStruct else value


def _init(state: State, leaves: list, structure: StateStructure, parent=None) -> None:
    object.__setattr__(state, "_leaves", leaves)
    object.__setattr__(state, "_structure", structure)
    object.__setattr__(state, "_parent", parent)


def _new_state(leaves: list, structure: StateStructure) -> State:
    st = object.__new__(State)
    _init(st, leaves, structure)
    return st


State.__setattr__ = lambda self, name, value: (  # type: ignore[method-assign]
    object.__setattr__(self, name, value) if name.startswith("_") else self.__setitem__(name, value)
)


def _flatten_mapping(mapping: Mapping, prefix: Path = ()) -> dict[Path, Any]:
    if isinstance(mapping, State):
        return {prefix + p: v for p, v in zip(mapping._structure.paths, mapping._leaves)}
    out: dict[Path, Any] = {}
    if mapping and all(isinstance(k, tuple) for k in mapping) and not prefix:
        return dict(mapping)
    for k, v in mapping.items():
        if isinstance(v, (dict, State)):
            if not v:
                continue
            out.update(_flatten_mapping(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _fmt_path(p: Path) -> str:
    return "/".join(map(str, p)) or "<root>"


def _key_error_text(what: str, missing, extra) -> str:
    lines = [f"{what}: the state's paths do not match."]
    if missing:
        lines.append(f"  missing ({len(missing)}): " + ", ".join(_fmt_path(p) for p in missing[:20]))
    if extra:
        lines.append(f"  unexpected ({len(extra)}): " + ", ".join(_fmt_path(p) for p in extra[:20]))
    return "\n".join(lines)


# -- the pytree registration ------------------------------------------------------------
# A State flattens as the nested dict it reads as: its children are the values of
# its top-level keys (nested dicts below them), keyed DictKey per level, so key
# paths are flax's (`['linear1']['bias']`) and orbax restores a nested dict of
# names. The dict layout is computed once per StateStructure; flattening is then
# one C++ `unflatten` of the leaves into that layout.
class _FlatLayout:
    """Marks a structure that cannot nest (a path prefixing another, mixed key types, ...)."""


_FLAT = _FlatLayout()


def _nest_plan(s: StateStructure):
    plan = s._nest
    if plan is None:
        plan = s._nest = _make_nest_plan(s.paths)
    return plan


def _make_nest_plan(paths: tuple[Path, ...]):
    skeleton: dict = {}
    for i, p in enumerate(paths):
        if not p:
            return _FLAT
        d = skeleton
        for k in p[:-1]:
            d = d.setdefault(k, {})
            if not isinstance(d, dict):
                return _FLAT
        if p[-1] in d:
            return _FLAT
        d[p[-1]] = i
    try:
        top = sorted(skeleton)  # JAX sorts dict keys; the top level must match it
        order, treedef = jax.tree_util.tree_flatten([skeleton[k] for k in top])
    except (TypeError, ValueError):  # keys of mixed types cannot be sorted
        return _FLAT
    perm = None if order == list(range(len(paths))) else tuple(order)
    return tuple(jax.tree_util.DictKey(k) for k in top), treedef, perm


class _PytreeAux:
    """A State's pytree aux data: equal for equal paths, as a flax State's keys are.

    Variable leaves carry their own type and metadata to JAX, so two States of
    different Variable types but the same paths (params and their momentum)
    ``jax.tree.map`` together as flax's do.
    """

    __slots__ = ("structure", "_hash")

    def __init__(self, structure: StateStructure):
        self.structure = structure
        self._hash = hash(structure.paths)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return self is other or (
            isinstance(other, _PytreeAux) and self._hash == other._hash and self.structure.paths == other.structure.paths
        )

    def __repr__(self) -> str:
        return f"StateStructure({len(self.structure.paths)} paths)"


def _aux_of(s: StateStructure) -> _PytreeAux:
    aux = s._aux
    if aux is None:
        aux = s._aux = _PytreeAux(s)
    return aux


def _flatten_state(st: State):
    s = st._structure
    plan = s._nest or _nest_plan(s)
    if plan is _FLAT:
        return st._leaves, s._aux or _aux_of(s)
    _, treedef, perm = plan
    leaves = st._leaves if perm is None else [st._leaves[i] for i in perm]
    return treedef.unflatten(leaves), s._aux or _aux_of(s)


def _flatten_state_with_keys(st: State):
    s = st._structure
    plan = s._nest or _nest_plan(s)
    if plan is _FLAT:
        return [(jax.tree_util.DictKey(p), v) for p, v in zip(s.paths, st._leaves)], s._aux or _aux_of(s)
    children, aux = _flatten_state(st)
    return list(zip(plan[0], children)), aux


def _unflatten_state(aux: _PytreeAux, children) -> State:
    structure = aux.structure
    plan = structure._nest or _nest_plan(structure)
    if plan is _FLAT:
        leaves = list(children)
        return _new_state(leaves, _synced(structure, leaves))
    _, treedef, perm = plan
    leaves = treedef.flatten_up_to(list(children))
    if perm is not None:
        ordered = [None] * len(leaves)
        for pos, i in enumerate(perm):
            ordered[i] = leaves[pos]
        leaves = ordered
    return _new_state(leaves, _synced(structure, leaves))


def _synced(structure: StateStructure, leaves: list) -> StateStructure:
    """``structure``, or a copy whose types follow the leaves a ``jax.tree.map`` put there.

    ``jax.tree.map(EmaParam.from_variable, state, is_leaf=...)`` turns Params
    into EmaParams; filters must then see EmaParams.
    """
    defs = structure.defs
    if defs is None:
        return structure if not any(isinstance(v, Variable) for v in leaves) else StateStructure(
            structure.paths, _defs_of(leaves)
        )
    for v, d in zip(leaves, defs):
        if isinstance(v, Variable) and type(v) is not d[0]:
            fresh = tuple(_def_of(x) if isinstance(x, Variable) else dd for x, dd in zip(leaves, defs))
            return StateStructure(structure.paths, fresh)
    return structure


jax.tree_util.register_pytree_with_keys(
    State, _flatten_state_with_keys, _unflatten_state, flatten_func=_flatten_state
)
