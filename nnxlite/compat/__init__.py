"""flax.nnx names over nnxlite's one core (thin aliases and small functions, no second code path).

``import nnxlite as nnx`` exposes these at the top level, so code written for
flax.nnx finds ``nnx.to_pure_dict``, ``nnx.merge_state``, ``nnx.OfType``,
``nnx.statelib.State`` and the rest. Each is a spelling of something nnxlite
already does; the table in ``docs/guides/from_flax_nnx.md`` says which.

>>> import jax.numpy as jnp, nnxlite as nnx
>>> state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
>>> sorted(nnx.to_pure_dict(state))
['bias', 'kernel']
>>> params = nnx.filter_state(state, nnx.Param)
>>> nnx.merge_state(params, state) is not None
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from nnxlite import graph as _graph
from nnxlite.filters import Everything, Nothing, OfType, WithTag
from nnxlite.module import Module
from nnxlite.state import State
from nnxlite.variables import Variable

__all__ = [
    "to_pure_dict", "replace_by_pure_dict", "restore_int_paths", "to_flat_state", "from_flat_state",
    "merge_state", "split_state", "filter_state", "map_state", "iter_modules", "iter_children",
    "iter_module_children", "PARTITION_NAME", "with_metadata", "cached_partial", "call",
    "FlatState", "GraphState", "PureState", "A", "M", "Everything", "Nothing", "OfType", "WithTag",
    "VariableMetadata", "Initializer",
]

A = TypeVar("A")
M = TypeVar("M", bound=Module)

# The metadata key flax uses to name a vmap/scan axis on Variables.
PARTITION_NAME = "partition_name"

# flax.nnx's names for a State of a whole graph, a flat one and a pure one: all one State here.
GraphState = State
PureState = State
FlatState = list  # what to_flat_state returns: [(path, Variable), ...]

Initializer = Callable[..., Any]


class VariableMetadata(dict):
    """flax.nnx's metadata container: a plain dict of Variable metadata here."""


def to_pure_dict(state: State, extract_fn: Callable | None = None) -> dict:
    """Nested dicts of plain values (``state.to_pure_dict()``); ``extract_fn`` maps each value."""
    pure = _as_state(state).to_pure_dict()
    if extract_fn is None:
        return pure
    return _map_nested(pure, extract_fn)


def restore_int_paths(pure_dict: Mapping) -> dict:
    """Turn digit-string keys (``'0'``, as JSON/orbax store list indices) back into ints.

    >>> import nnxlite as nnx
    >>> nnx.restore_int_paths({"layers": {"0": {"w": 1}}})
    {'layers': {0: {'w': 1}}}
    """
    out = {}
    for k, v in pure_dict.items():
        key = int(k) if isinstance(k, str) and k.isdigit() else k
        out[key] = restore_int_paths(v) if isinstance(v, Mapping) else v
    return out


def replace_by_pure_dict(state: State, pure_dict: Mapping, replace_fn: Callable | None = None) -> None:
    """Write the values of ``pure_dict`` into ``state`` in place (``state.replace_by_pure_dict``).

    Digit-string keys are accepted for list indices; ``replace_fn(variable,
    value)`` may compute the stored value.
    """
    state = _as_state(state)
    pure = restore_int_paths(pure_dict)
    if replace_fn is not None:
        boxed = dict(state.variables())
        flat = _flatten(pure)
        pure = _unflatten({p: replace_fn(boxed[p], v) if p in boxed else v for p, v in flat.items()})
    state.replace_by_pure_dict(pure)


def to_flat_state(state: State) -> list:
    """``[(path, Variable), ...]`` in canonical path order."""
    return list(_as_state(state).variables())


def from_flat_state(flat: Any) -> State:
    """A State from ``[(path, Variable or value), ...]`` (or a ``{path: ...}`` mapping)."""
    items = list(flat.items()) if isinstance(flat, Mapping) else list(flat)
    return State.from_flat({tuple(path): leaf for path, leaf in items})


def merge_state(state: State, *states: State, to_nested: bool = False) -> State:
    """The union of States, later ones winning (``nnx.State.merge``)."""
    return State.merge(state, *states)


def split_state(state: State, first: Any, /, *filters: Any) -> Any:
    """Partition a State by filters (``state.split``): every leaf must match one."""
    return _as_state(state).split(first, *filters)


def filter_state(state: State, first: Any, /, *filters: Any) -> Any:
    """The leaves matching each filter (``state.filter``)."""
    return _as_state(state).filter(first, *filters)


def map_state(f: Callable[[tuple, Any], Any], state: State) -> State:
    """A new State with ``f(path, leaf)`` at every leaf (a leaf is a Variable, as in flax).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> s = nnx.map_state(lambda path, x: x * 0, nnx.state(nnx.Linear(2, 2, rngs=nnx.Rngs(0))))
    >>> float(s["kernel"].sum())
    0.0
    """
    state = _as_state(state)
    # f's results are the leaves, as in flax (labels for optax.partition stay strings).
    return State.from_flat({p: f(p, v) for p, v in state.variables()})


def iter_modules(module: Any, /, *, graph: bool | None = None) -> Iterator[tuple[tuple, Module]]:
    """``(path, module)`` for ``module`` and every sub-module, each once."""
    for path, obj in _graph.iter_graph(module):
        if isinstance(obj, Module):
            yield path, obj


def iter_children(module: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Any, Module]]:
    """``(attribute name, sub-module)`` for the direct sub-modules of ``module``."""
    for name, value in vars(module).items():
        if isinstance(value, Module):
            yield name, value


iter_module_children = iter_children


def with_metadata(initializer: Callable, **metadata: Any) -> Callable:
    """Wrap an initializer so the Param it creates carries ``metadata`` (like ``with_partitioning``).

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> init = nnx.with_metadata(nnx.initializers.zeros, sharding=("embed",), note="x")
    >>> nnx.Param(init(jax.random.PRNGKey(0), (2,), jnp.float32)).note
    'x'
    """
    sharding = metadata.pop("sharding_names", None) or metadata.pop("out_sharding", None)
    if sharding is not None:
        metadata["sharding"] = tuple(sharding)

    @functools.wraps(initializer)
    def init(*args: Any, **kwargs: Any) -> Variable:
        value = initializer(*args, **kwargs)
        if isinstance(value, Variable):
            return value.replace(value.raw_value).set_metadata(**metadata)
        return Variable(value, **metadata)

    return init


def cached_partial(
    f: Callable, *cached_args: Any, graph: bool | None = None, graph_updates: bool | None = None
) -> Callable:
    """``functools.partial(f, *cached_args)``: nnxlite's transforms cache the graph traversal anyway."""
    return functools.partial(f, *cached_args)


class _CallResult:
    def __init__(self, graphdef: Any, states: tuple):
        self._pair = (graphdef, states)

    def __getattr__(self, name: str) -> Callable:
        graphdef, states = self._pair

        def run(*args: Any, **kwargs: Any) -> Any:
            module = _graph.merge(graphdef, *states)
            fn = module if name == "__call__" else getattr(module, name)
            out = fn(*args, **kwargs)
            return out, _graph.split(module)

        return run

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__getattr__("__call__")(*args, **kwargs)


def call(graphdef_state: tuple, /) -> Any:
    """Call a module given as ``(graphdef, state, ...)`` purely: returns ``(out, (graphdef, state))``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> pair = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> y, (graphdef, state) = nnx.call(pair)(jnp.ones((1, 2)))
    >>> y.shape
    (1, 3)
    """
    graphdef, *states = graphdef_state
    return _CallResult(graphdef, tuple(states))


def _as_state(state: Any) -> State:
    return state if isinstance(state, State) else State(state)


def _flatten(d: Mapping, prefix: tuple = ()) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: Mapping) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def _map_nested(d: Mapping, fn: Callable) -> dict:
    return {k: _map_nested(v, fn) if isinstance(v, Mapping) else fn(v) for k, v in d.items()}


# flax.nnx.compat keeps graph-mode versions of flax's transforms and graph functions
# (``nnx.compat.jit``, ``nnx.compat.value_and_grad``, ...) for code written before its
# tree mode. nnxlite has one mode, graph semantics at tree speed, so each of them is
# simply the top-level function of the same name.
_FLAX_GRAPH_MODE_NAMES = frozenset({
    "backup_keys", "cached_partial", "checkify", "clone", "cond", "custom_vjp", "eval_shape", "flatten",
    "fori_loop", "fork_rngs", "get_abstract_model", "grad", "graphdef", "iter_children", "iter_graph",
    "iter_modules", "jit", "jvp", "pmap", "recursive_map", "remat", "reseed", "scan", "shard_map", "split",
    "split_rngs", "state", "switch", "value_and_grad", "view", "view_info", "vjp", "vmap", "while_loop",
})


def __getattr__(name: str) -> Any:
    """``nnx.compat.jit`` and flax's other graph-mode names: nnxlite's own functions.

    >>> import nnxlite as nnx
    >>> nnx.compat.jit is nnx.jit, nnx.compat.value_and_grad is nnx.value_and_grad
    (True, True)
    """
    if name in _FLAX_GRAPH_MODE_NAMES:
        import nnxlite

        return getattr(nnxlite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
