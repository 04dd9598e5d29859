"""flax.nnx's remaining graph-level functions, as spellings over nnxlite's one traversal.

``flatten``/``unflatten`` are ``split``/``merge`` with a flat list of
``(path, Variable)`` pairs; ``unpack`` bundles the GraphDef with each State;
``map`` rebuilds a node with mapped Variables; ``pure``/``as_pure`` strip the
Variable boxes; ``has_data`` lists the data leaves of a value;
``make_jaxpr``/``jit_partial`` are ``jax.make_jaxpr``/``nnx.jit`` for
functions of modules.

>>> import jax.numpy as jnp, nnxlite as nnx
>>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> graphdef, flat = nnx.flatten(model)
>>> [path for path, _ in flat]
[('bias',), ('kernel',)]
>>> nnx.unflatten(graphdef, flat).kernel.shape
(2, 3)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax

from nnxlite import _data
from nnxlite import graph as _graph
from nnxlite.state import State
from nnxlite.variables import Variable

__all__ = ["flatten", "unflatten", "unpack", "map", "pure", "as_pure", "has_data", "make_jaxpr", "jit_partial",
           "GraphFlatState"]

A = TypeVar("A")


class GraphFlatState(list):
    """flax's ``FlatState``: a list of ``(path, Variable)`` pairs with ``.paths`` and ``.leaves``.

    >>> import nnxlite as nnx
    >>> nnx.flatten(nnx.Linear(1, 2, rngs=nnx.Rngs(0)))[1].paths
    (('bias',), ('kernel',))
    """

    @property
    def paths(self) -> tuple:
        return tuple(p for p, _ in self)

    @property
    def leaves(self) -> list:
        return [v for _, v in self]


def _no_ref_maps(name: str, **maps: Any) -> None:
    given = [k for k, v in maps.items() if v is not None]
    if given:
        raise TypeError(
            f"nnx.{name}: {', '.join(given)} (flax's shared-reference index maps) are not supported: nnxlite keeps "
            "sharing by traversing several objects as one graph. Pass them together, e.g. "
            "nnx.split((model, optimizer)). See docs/guides/from_flax_nnx.md."
        )


def flatten(node: Any, /, *, with_paths: bool = True, ref_index: Any = None, ref_outer_index: Any = None,
            graph: bool | None = None) -> tuple:
    """``(graphdef, [(path, Variable), ...])``, or ``(graphdef, [value, ...])`` with ``with_paths=False``.

    The Variables are boxes of the node's current values (type and metadata
    kept); ``graph=`` is accepted (nnxlite always traverses the graph).

    >>> import nnxlite as nnx
    >>> graphdef, leaves = nnx.flatten(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), with_paths=False)
    >>> [x.shape for x in leaves]
    [(3,), (2, 3)]
    """
    _no_ref_maps("flatten", ref_index=ref_index, ref_outer_index=ref_outer_index)
    graphdef, state = _graph.split(node)
    if not with_paths:
        return graphdef, state.leaves()
    return graphdef, GraphFlatState(state.variables())


def unflatten(graphdef: Any, state: Any, /, *, index_ref: Any = None, outer_index_outer_ref: Any = None,
              copy_variables: bool = False, recreate_variables: bool = True) -> Any:
    """Rebuild a node from ``flatten``'s output: a State, ``[(path, leaf), ...]`` or ``[leaf, ...]``.

    >>> import nnxlite as nnx
    >>> graphdef, leaves = nnx.flatten(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), with_paths=False)
    >>> type(nnx.unflatten(graphdef, leaves)).__name__
    'Linear'
    """
    _no_ref_maps("unflatten", index_ref=index_ref, outer_index_outer_ref=outer_index_outer_ref)
    if isinstance(state, (State, dict)):
        return _graph.merge(graphdef, state)
    if not isinstance(state, list):
        raise TypeError(f"nnx.unflatten expects a State or a list of leaves, got {type(state).__name__}.")
    items = list(state)
    paths = graphdef.structure.paths
    if items and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple) for x in items):
        values = {tuple(p): (v.value if isinstance(v, Variable) else v) for p, v in items}
    else:
        if len(items) != len(paths):
            raise ValueError(f"Incorrect number of leaves, expected {len(paths)} leaves, but got {len(items)}.")
        values = {p: (v.value if isinstance(v, Variable) else v) for p, v in zip(paths, items)}
    return _graph.merge(graphdef, State.from_flat(values))


class GraphState(State):
    """A State that carries its GraphDef (``nnx.unpack``); ``nnx.merge(graph_state)`` rebuilds the node.

    >>> import nnxlite as nnx
    >>> type(nnx.merge(nnx.unpack(nnx.Linear(1, 2, rngs=nnx.Rngs(0))))).__name__
    'Linear'
    """

    __slots__ = ("_graphdef",)


def unpack(node: Any, *filters: Any, graph: bool | None = None) -> Any:
    """``nnx.split`` with the GraphDef bundled into each State: ``nnx.merge(*unpack(node, ...))`` rebuilds it.

    >>> import nnxlite as nnx
    >>> node = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    >>> params, stats = nnx.unpack(node, nnx.Param, nnx.BatchStat)
    >>> type(nnx.merge(params, stats)).__name__
    'BatchNorm'
    """
    graphdef, *states = _graph.split(node, *filters)
    out = []
    for s in states:
        gs = GraphState(s)
        gs._graphdef = graphdef
        out.append(gs)
    return out[0] if len(out) == 1 else tuple(out)


def map(f: Callable[[tuple, Any], Any], node: A, /, *, graph: bool | None = None,
        recreate_variables: bool = True) -> A:
    """A new node whose Variables are ``f(path, variable)`` (``f`` returns a Variable or a value).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> zeros = nnx.map(lambda path, v: v.replace(jnp.zeros_like(v)), model)
    >>> float(abs(zeros.kernel[...]).sum()), float(abs(model.kernel[...]).sum()) > 0
    (0.0, True)
    """
    if isinstance(node, Variable):
        return f((), node)
    graphdef, state = _graph.split(node)
    values, defs = {}, {}
    for path, var in state.variables():
        new = f(path, var)
        if isinstance(new, Variable):
            values[path] = new.value
            defs[path] = (type(new), tuple(sorted(new.metadata.items())))
        else:
            values[path] = new
    return _graph.merge(graphdef, State.from_flat(values, defs or None))


def _strip(x: Any) -> Any:
    if isinstance(x, State):
        return State.from_flat({p: _strip(v) for p, v in x.flat().items()})
    return x.value if isinstance(x, Variable) else x


def as_pure(tree: A) -> A:
    """``tree`` with every Variable replaced by its value (and States without Variable types).

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> pure = nnx.as_pure({"w": nnx.Param(jnp.ones(2)), "n": 3})
    >>> type(pure["w"]).__name__, pure["n"]
    ('ArrayImpl', 3)
    """
    return jax.tree.map(_strip, tree, is_leaf=lambda x: isinstance(x, (Variable, State)))


pure = as_pure  # flax 0.12 keeps both names


def has_data(value: Any, /) -> list:
    """The data leaves in ``value`` (arrays, Variables, modules, ...), each once, in pytree order.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> len(nnx.has_data([1, "a", jnp.zeros(2), nnx.Param(1.0)])), nnx.has_data((1, "x"))
    (2, [])
    """
    seen: set[int] = set()

    def stop(x: Any) -> bool:
        if id(x) in seen:
            return True
        seen.add(id(x))
        return _data.is_data(x)

    return [leaf for leaf in jax.tree.leaves(value, is_leaf=stop) if _data.is_data(leaf)]


def make_jaxpr(f: Callable, *, static_argnums: Any = (), axis_env: Any = None, return_shape: bool = False,
               abstracted_axes: Any = None, graph: bool | None = None, graph_updates: bool | None = None) -> Callable:
    """``jax.make_jaxpr`` for functions of modules: modules are pytrees, flattened through the cached traversal.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> jaxpr = nnx.make_jaxpr(lambda m, x: m(x))(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), jnp.ones((1, 2)))
    >>> len(jaxpr.jaxpr.invars)
    3
    """
    kwargs = {} if abstracted_axes is None else {"abstracted_axes": abstracted_axes}  # older jax only
    return jax.make_jaxpr(f, static_argnums=static_argnums, axis_env=axis_env, return_shape=return_shape, **kwargs)


def jit_partial(fun: Callable, *partial_args: Any, **jit_kwargs: Any) -> Callable:
    """``nnx.jit(fun)`` with the first arguments bound (flax's pre-flattened partial).

    Mutations of the bound modules inside ``fun`` are written back after each
    call, as ``nnx.jit`` does; ``graph=``/``graph_updates=`` are accepted.

    >>> import jax.numpy as jnp, optax, nnxlite as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    >>> def train_step(model, optimizer, x):
    ...     loss, grads = nnx.value_and_grad(lambda m: (m(x) ** 2).mean())(model)
    ...     optimizer.update(model, grads)
    ...     return loss
    >>> step = nnx.jit_partial(train_step, model, optimizer)
    >>> bool(step(jnp.ones((4, 2))) > step(jnp.ones((4, 2))))
    True
    """
    from nnxlite.transforms import jit

    jitted = jit(fun, **jit_kwargs)

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        return jitted(*partial_args, *args, **kwargs)

    return call
