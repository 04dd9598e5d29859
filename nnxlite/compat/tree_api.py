"""flax.nnx's tree-conversion and abstract-sharding helpers over nnxlite.

* ``to_tree(tree)`` replaces every graph node (module, Variable) in a pytree by
  a :class:`NodeStates` (its GraphDef and States); ``from_tree`` reverses it.
  Each node is split on its own, so sharing *between* nodes of the pytree is
  not kept (pass them to the nnx transforms, which keep it).
* ``prefix(node, filter_map)`` builds a per-Variable prefix (e.g. vmap axes):
  a State for a module, the same container structure for a pytree.
* ``as_abstract`` / ``abstract_with_sharding`` / ``get_abstract_model``
  attach ``NamedSharding`` to abstract (``jax.ShapeDtypeStruct``) values.

>>> import jax.numpy as jnp, nnxlite as nnx
>>> tree = nnx.to_tree({"layer": nnx.Linear(2, 3, rngs=nnx.Rngs(0)), "n": 1})
>>> type(tree["layer"]).__name__, tree["n"]
('NodeStates', 1)
>>> nnx.from_tree(tree)["layer"].kernel.shape
(2, 3)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax

from nnxlite import filters as filterlib
from nnxlite import graph as _graph
from nnxlite.state import State
from nnxlite.variables import Variable

__all__ = ["NodeStates", "to_tree", "from_tree", "prefix", "as_abstract", "abstract_with_sharding",
           "get_abstract_model"]


@dataclasses.dataclass(frozen=True)
class NodeStates:
    """A graph node as a pytree: its GraphDef (no leaves) and States, plus static ``metadata``.

    >>> import jax, nnxlite as nnx
    >>> ns = nnx.NodeStates.from_split(*nnx.split(nnx.Linear(1, 2, rngs=nnx.Rngs(0))))
    >>> len(jax.tree.leaves(ns)), type(nnx.merge(ns.graphdef, ns.state)).__name__
    (2, 'Linear')
    """

    _graphdef: Any
    states: tuple
    metadata: Any = None  # static (pytree aux data)

    @property
    def graphdef(self) -> Any:
        if self._graphdef is None:
            raise ValueError("No graphdef available")
        return self._graphdef

    @property
    def state(self) -> Any:
        if len(self.states) != 1:
            raise ValueError(f"Expected exactly one GraphDefState, got {len(self.states)}")
        return self.states[0]

    @classmethod
    def from_split(cls, graphdef: Any, state: Any, /, *states: Any, metadata: Any = None) -> "NodeStates":
        return cls(graphdef, (state, *states), metadata)

    @classmethod
    def from_states(cls, state: Any, *states: Any) -> "NodeStates":
        return cls(None, (state, *states), None)

    @classmethod
    def from_prefixes(cls, prefixes: Any, /, *, metadata: Any = None) -> "NodeStates":
        return cls(None, tuple(prefixes), metadata)


jax.tree_util.register_dataclass(NodeStates, data_fields=["_graphdef", "states"], meta_fields=["metadata"])


def _is_node(x: Any) -> bool:
    return isinstance(x, Variable) or isinstance(x, _graph._NODE_BASES)


def to_tree(tree: Any, /, *, prefix: Any = None, split_fn: Callable | None = None,
            map_non_graph_nodes: bool = False, ctxtag: Any = None, check_aliasing: bool = True) -> Any:
    """Replace each graph node in ``tree`` by ``NodeStates.from_split(*nnx.split(node))``."""
    def convert(x: Any) -> Any:
        if _is_node(x):
            if split_fn is not None:
                from nnxlite.compat.contexts import SplitContext

                return split_fn(SplitContext(ctxtag), (), prefix, x)
            return NodeStates.from_split(*_graph.split(x))
        return x

    return jax.tree.map(convert, tree, is_leaf=_is_node)


def from_tree(tree: Any, /, *, prefix: Any = None, merge_fn: Callable | None = None,
              is_node_leaf: Callable | None = None, is_leaf: Callable | None = None,
              map_non_graph_nodes: bool = False, is_inner: bool | None = None, ctxtag: Any = None) -> Any:
    """Rebuild the graph nodes that :func:`to_tree` turned into :class:`NodeStates`."""
    stop = is_leaf or (lambda x: isinstance(x, NodeStates))

    def convert(x: Any) -> Any:
        if isinstance(x, NodeStates):
            if merge_fn is not None:
                from nnxlite.compat.contexts import MergeContext

                return merge_fn(MergeContext(ctxtag, is_inner), (), prefix, x)
            return _graph.merge(x.graphdef, *x.states)
        return x

    return jax.tree.map(convert, tree, is_leaf=stop)


def _prefix_fn(filter_map: Mapping | Callable) -> Callable:
    if callable(filter_map) and not isinstance(filter_map, Mapping):
        return filter_map
    preds = [(filterlib.to_predicate(f), v) for f, v in filter_map.items()]

    def pick(path: tuple, leaf: Any) -> Any:
        for pred, value in preds:
            if pred(path, leaf):
                return value
        raise ValueError(f"nnx.prefix: no filter matches the leaf at path {'/'.join(map(str, path))}.")

    return pick


def prefix(node: Any, filter_map: Mapping | Callable, /, *, graph: bool | None = None) -> Any:
    """Per-leaf prefix values: ``filter_map(path, variable)``, or the value of the first matching filter.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> d = {"a": nnx.Param(jnp.array(2)), "b": nnx.BatchStat(jnp.arange(5))}
    >>> nnx.prefix(d, {nnx.Param: None, nnx.BatchStat: 0})
    {'a': None, 'b': 0}
    """
    pick = _prefix_fn(filter_map)
    if isinstance(node, _graph._NODE_BASES):
        state = _graph.state(node)
        return State.from_flat({p: pick(p, v) for p, v in state.variables()})

    def leaf_prefix(keypath: tuple, leaf: Any) -> Any:
        path = tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in keypath)
        return pick(path, leaf)

    return jax.tree_util.tree_map_with_path(leaf_prefix, node, is_leaf=lambda x: isinstance(x, Variable))


def _sharding_axes(var: Any) -> Any:
    meta = var.metadata
    for key in ("out_sharding", "sharding_names", "sharding"):
        if meta.get(key) is not None:
            return meta[key]
    return None


def as_abstract(tree: Any, graph: bool | None = None) -> Any:
    """Attach a ``NamedSharding`` (from each Variable's sharding metadata) to abstract values.

    Values that are ``jax.ShapeDtypeStruct`` without a sharding get
    ``NamedSharding(mesh, P(*axes))``, with the Variable's ``mesh`` metadata or
    the current abstract mesh.

    >>> import jax, nnxlite as nnx
    >>> mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> with jax.set_mesh(mesh):
    ...     model = nnx.eval_shape(lambda: nnx.Linear(2, 4, rngs=nnx.Rngs(0),
    ...         kernel_metadata={"sharding": (None, "model")}))
    ...     model = nnx.as_abstract(model)
    >>> model.kernel.value.sharding.spec
    P(None, 'model')
    """
    from nnxlite.compat.graph_api import map as nnx_map

    def add(_path: tuple, var: Any) -> Any:
        value = var.value if isinstance(var, Variable) else None
        axes = _sharding_axes(var) if isinstance(var, Variable) else None
        if isinstance(value, jax.ShapeDtypeStruct) and getattr(value, "sharding", None) is None and axes is not None:
            mesh = var.metadata.get("mesh") or jax.sharding.get_abstract_mesh()
            sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes))
            return var.replace(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding))
        return var

    return nnx_map(add, tree)


abstract_with_sharding = as_abstract  # flax's deprecated name


def get_abstract_model(init_fn: Callable, mesh: Any, *, graph: bool | None = None) -> tuple:
    """``(graphdef, abstract_state)`` of ``init_fn()`` with each value's ``NamedSharding`` on ``mesh``.

    >>> import jax, nnxlite as nnx
    >>> mesh = jax.make_mesh((1,), ("model",))
    >>> graphdef, abstract = nnx.get_abstract_model(lambda: nnx.Linear(2, 4, rngs=nnx.Rngs(0)), mesh)
    >>> abstract["kernel"].shape, abstract["kernel"].sharding.spec
    ((2, 4), P())
    """
    from nnxlite.sharding import get_named_sharding
    from nnxlite.transforms import eval_shape

    with jax.set_mesh(mesh):
        abstract_model = eval_shape(init_fn)
        graphdef, abstract_state = _graph.split(abstract_model)
        shardings = get_named_sharding(abstract_state, mesh)
        abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
    return graphdef, abstract_state
