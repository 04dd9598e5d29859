"""The functional bridge: ``transform(model) -> (init_fn, apply_fn)``.

Models are *defined* eagerly: build a module, replace layers, set parameter
values by hand. :func:`transform` then takes a snapshot of that definition and
returns two pure functions for the *execution* world, where ``jax.jit``,
``jax.grad`` and ``jax.vmap`` apply directly::

    >>> import jax, jax.numpy as jnp
    >>> import nnxlite as nnx
    >>> model = nnx.Linear(2, 3, ctx=nnx.context(0))
    >>> init_fn, apply_fn = nnx.transform(model)
    >>> variables = init_fn(jax.random.PRNGKey(1))       # fresh parameters
    >>> y, variables = jax.jit(apply_fn)(variables, jnp.ones((4, 2)))
    >>> y.shape
    (4, 3)

How ``init_fn`` knows what to redraw: layers create parameters with
:func:`param_from_init`, which stores an *init recipe* (the initializer, shape
and dtype) on the Variable. The recipe stays valid only while the Variable
still holds the very array the initializer returned; any assignment
(``model.kernel.value = w``, ``nnx.update``, an optimizer step) makes the value
"set by the user", and ``init_fn`` keeps it as it was at snapshot time.

Trainable vs. the rest: :func:`split_trainable` separates the Params to
differentiate from everything else (RNG counters, batch statistics, caches);
:func:`merge_states` puts them back together.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnxlite import filters as filterlib
from nnxlite import graph
from nnxlite.rng import Context, RngStream
from nnxlite.rng import _as_key as rng_as_key
from nnxlite.state import State, _fmt_path, _new_state, boxed_state, raw_leaves
from nnxlite.variables import Param, Variable

__all__ = [
    "transform",
    "Transformed",
    "param_from_init",
    "init_recipe",
    "InitRecipe",
    "split_trainable",
    "merge_states",
    "fold_rngs",
]

Path = tuple[Any, ...]


# ---------------------------------------------------------------------------------
# Init recipes
# ---------------------------------------------------------------------------------
class InitRecipe:
    """How a Variable's value was drawn: ``init(key, shape, dtype)``.

    ``ref`` points (weakly when possible) at the array the initializer
    returned; the recipe applies only while the Variable still holds that
    exact object, so any later assignment silently retires it.
    """

    __slots__ = ("init", "shape", "dtype", "_ref")

    def __init__(self, init: Callable, shape: tuple[int, ...], dtype: Any, value: Any):
        self.init = init
        self.shape = shape
        self.dtype = dtype
        try:
            self._ref = weakref.ref(value)
        except TypeError:  # python scalars cannot be weakly referenced; they are tiny
            self._ref = lambda value=value: value

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is still the object the initializer produced."""
        return self._ref() is value

    def draw(self, key: jax.Array) -> Any:
        """Run the initializer again with ``key`` (unboxing a with_partitioning box)."""
        value = self.init(key, self.shape, self.dtype)
        return value.raw_value if isinstance(value, Variable) else value

    def __repr__(self) -> str:
        name = self.init.__qualname__ if inspect.isfunction(self.init) else repr(self.init)
        return f"InitRecipe({name}, shape={self.shape}, dtype={np.dtype(self.dtype).name})"


_RECIPE_SLOT = Variable.__dict__["_init_recipe"]


def init_recipe(variable: Variable) -> InitRecipe | None:
    """The live :class:`InitRecipe` of ``variable``, or None if its value was set by hand.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> from nnxlite.functional import init_recipe, param_from_init
    >>> w = param_from_init(nnx.initializers.ones, jax.random.PRNGKey(0), (2,), jnp.float32)
    >>> init_recipe(w)
    InitRecipe(ones, shape=(2,), dtype=float32)
    >>> w.value = jnp.zeros(2)       # user-set from now on
    >>> init_recipe(w) is None
    True
    """
    try:
        recipe = _RECIPE_SLOT.__get__(variable, type(variable))
    except AttributeError:
        return None
    return recipe if recipe is not None and recipe.holds(variable.raw_value) else None


def param_from_init(
    init: Callable,
    key: jax.Array,
    shape: int | tuple[int, ...],
    dtype: Any = jnp.float32,
    *,
    variable_type: type[Variable] = Param,
    **metadata: Any,
) -> Variable:
    """Create a Param by calling ``init(key, shape, dtype)``, remembering how.

    Layers should create their parameters through this helper: the recorded
    recipe lets :func:`transform`'s ``init_fn`` redraw the value from a new key.
    If ``init`` came from :func:`nnxlite.with_partitioning`, its ``sharding``
    (and any other metadata it carries) lands on the Param; ``**metadata``
    given here is added on top and wins on conflicts.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> from nnxlite.functional import param_from_init
    >>> init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
    >>> w = param_from_init(init, jax.random.PRNGKey(0), (4, 8), jnp.float32)
    >>> type(w).__name__, w.shape, w.sharding_names
    ('Param', (4, 8), ('embed', 'mlp'))

    Args:
      init: an initializer ``(key, shape, dtype) -> array`` (or a boxed value).
      key: the PRNG key to draw with.
      shape, dtype: passed to ``init``.
      variable_type: the Variable type to create (``Param`` by default).
      **metadata: Variable metadata, e.g. ``sharding=('embed', None)``.
    """
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    value = init(key, shape, dtype)
    if isinstance(value, Variable):  # a box from with_partitioning: unwrap, keep its metadata
        if value._metadata:
            metadata = {**value._metadata, **metadata}
        value = value.raw_value
    variable = variable_type(value, **metadata)
    variable._init_recipe = InitRecipe(init, shape, dtype, value)
    return variable


# ---------------------------------------------------------------------------------
# transform
# ---------------------------------------------------------------------------------
def _path_salt(path: Path) -> int:
    # Stable across processes (unlike hash()), so every host draws the same values.
    return zlib.crc32("/".join(map(str, path)).encode()) & 0x7FFFFFFF


def _as_key(rng: Any) -> jax.Array:
    # One rule for seeds everywhere: the typed key an RngStream would hold (a raw uint32 key is wrapped).
    return rng_as_key(rng)


class Transformed(NamedTuple):
    """``(init, apply)``: what :func:`transform` returns; it unpacks like a pair."""

    init: Callable
    apply: Callable


def transform(model: Any) -> Transformed:
    """Snapshot ``model`` and return pure ``(init_fn, apply_fn)`` functions.

    The snapshot is a deep copy (:func:`nnxlite.clone`) taken now: later edits
    to ``model`` do not change the returned functions.

    ``init_fn(rng=None) -> variables``
      The model's full State. With ``rng`` (a key or an int seed), every
      Variable created by an initializer through :func:`param_from_init` is
      redrawn from ``fold_in(rng, crc32(path))``, so the same key gives the same
      values and different paths get independent keys; values set by hand are
      kept. Without ``rng``, the snapshot's values are returned.
      ``jax.vmap(init_fn)(keys)`` builds an ensemble.

    ``apply_fn(variables, *args, rngs=None, method='__call__', rng_axes=None, **kwargs)``
      Returns ``(outputs, new_variables)``. ``variables`` is a State (or a
      nested dict, or a tuple of States such as ``(trainable, rest)``).
      ``new_variables`` holds the updated state: BatchNorm statistics, RNG
      counters, anything the method wrote. ``method`` is a method name or a
      function ``f(module, *args, **kwargs)``. ``rngs`` (a key, or a dict
      ``{stream: key}``) re-keys the model's own RNG streams for this call:
      a key re-keys the stream that its name reaches (a Context with no
      ``dropout`` stream serves ``'dropout'`` from its default stream), and a
      single key is the ``default`` key, folded with the stream name for
      every other stream. If the method has a ``ctx`` parameter, ``rngs`` is
      also passed as ``ctx=nnx.context(...)``.
      ``rng_axes`` (an axis name or tuple) folds the lane index of those
      ``vmap``/``shard_map`` axes into every key, giving each lane its own
      randomness (see :func:`fold_rngs`). Stored stream keys are restored
      after the call and only the counters advance, so replicated state stays
      identical in every lane.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 2, ctx=nnx.context(0))
    >>> model.bias.value = jnp.array([1.0, -1.0])          # set by hand: kept by init_fn
    >>> init_fn, apply_fn = nnx.transform(model)
    >>> ensemble = jax.vmap(init_fn)(jax.random.split(jax.random.PRNGKey(0), 3))
    >>> ensemble["kernel"].shape, ensemble["bias"].tolist()[0]
    ((3, 2, 2), [1.0, -1.0])
    >>> y, _ = apply_fn(init_fn(), jnp.zeros((1, 2)))
    >>> y.tolist()
    [[1.0, -1.0]]
    """
    original = graph._flat(model)
    recipes = [init_recipe(v) for v in original.variables]
    snapshot = graph.clone(model)
    graphdef, snap_state = graph.split(snapshot)
    if graphdef != original.graphdef:  # pragma: no cover - clone preserves structure
        raise RuntimeError("transform: the cloned model's structure differs from the original.")
    structure = snap_state._structure
    # jax arrays are immutable; numpy arrays are not, so copy those into the snapshot.
    leaves = tuple(np.array(x, copy=True) if isinstance(x, np.ndarray) else x for x in raw_leaves(snap_state))
    redraw = tuple(
        (i, recipe, _path_salt(path))
        for i, (path, recipe) in enumerate(zip(structure.paths, recipes))
        if recipe is not None
    )
    del snapshot, snap_state, original

    def init_fn(rng: Any = None) -> State:
        out = list(leaves)
        if rng is not None:
            key = _as_key(rng)
            for i, recipe, salt in redraw:
                out[i] = recipe.draw(jax.random.fold_in(key, salt))
        return boxed_state(out, structure)

    signature_cache: dict[Any, bool] = {}

    def apply_fn(
        variables: Any,
        *args: Any,
        rngs: Any = None,
        method: str | Callable = "__call__",
        rng_axes: str | tuple[str, ...] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, State]:
        states = tuple(variables) if isinstance(variables, (tuple, list)) else (variables,)
        try:
            module = graph.merge(graphdef, *states)
        except ValueError as e:
            raise ValueError(
                f"apply_fn: the variables do not fit the transformed model.\n{e}\n"
                "Pass the State returned by init_fn (or by a previous apply_fn), or "
                "(trainable, rest) from nnx.split_trainable."
            ) from None
        fn = _resolve_method(module, method)
        rng_param = _rng_param(fn, method, signature_cache) if rngs is not None else None
        if rng_param is not None and "ctx" not in kwargs and "rngs" not in kwargs:
            keys = _key_dict(rngs)
            if rng_axes is not None:
                keys = {name: _fold_axes(k, rng_axes) for name, k in keys.items()}
            kwargs[rng_param] = Context(**keys)
        with _rekeyed(module, rngs, rng_axes):
            out = fn(*args, **kwargs)
        return out, graph.state(module)

    init_fn.__doc__ = "Pure init function of a transformed model; see nnxlite.transform."
    apply_fn.__doc__ = "Pure apply function of a transformed model; see nnxlite.transform."
    init_fn.graphdef = apply_fn.graphdef = graphdef  # type: ignore[attr-defined]
    return Transformed(init_fn, apply_fn)


def _resolve_method(module: Any, method: str | Callable) -> Callable:
    if callable(method):
        return lambda *a, **k: method(module, *a, **k)
    fn = getattr(module, method, None)
    if fn is None or not callable(fn):
        raise AttributeError(
            f"apply_fn: {type(module).__name__} has no method {method!r}; pass method='<name>' "
            "or method=lambda module, *args: ..."
        )
    return fn


def _rng_param(fn: Callable, method: Any, cache: dict) -> str | None:
    """The name under which ``fn`` takes a Context (``ctx``, or flax.nnx's ``rngs``), or None."""
    try:
        return cache[method]
    except (KeyError, TypeError):
        pass
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    try:
        params = inspect.signature(fn).parameters
        result = next((n for n in ("ctx", "rngs") if n in params and params[n].kind in named), None)
    except (TypeError, ValueError):
        result = None
    try:
        cache[method] = result
    except TypeError:
        pass
    return result


def _key_dict(rngs: Any) -> dict[str, jax.Array]:
    if isinstance(rngs, Mapping):
        return {str(k): _as_key(v) for k, v in rngs.items()}
    return {"default": _as_key(rngs)}


def _stream_salt(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _streams(node: Any) -> list[tuple[Path, RngStream]]:
    flat = graph._flat(node)
    return [(p, o) for p, o in zip(flat.node_paths, flat.node_objects) if isinstance(o, RngStream)]


def _axis_names(axes: str | tuple[str, ...]) -> tuple[str, ...]:
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _fold_axes(key: jax.Array, axes: str | tuple[str, ...]) -> jax.Array:
    for name in _axis_names(axes):
        try:
            index = jax.lax.axis_index(name)
        except NameError as e:
            raise NameError(
                f"fold_rngs: axis {name!r} is not bound here ({e}). Call it inside "
                f"jax.vmap(..., axis_name={name!r}) or jax.shard_map over a mesh with that axis."
            ) from None
        key = jax.random.fold_in(key, index)
    return key


def _call_keys(module: Any, keys: dict[str, jax.Array]) -> list[tuple[RngStream, jax.Array]]:
    """Which key each RngStream of ``module`` uses for one call given ``rngs`` keys.

    A key named after a stream re-keys it. A Context serves unknown names
    from its default stream, so ``{'dropout': k}`` re-keys the default stream of
    a Context that has no ``dropout`` stream (an exact name match wins over
    that fallback). Streams no name reaches derive their key from
    ``keys['default']`` folded with the stream name, if there is one.
    """
    flat = graph._flat(module)
    chosen: dict[int, tuple[RngStream, jax.Array, bool]] = {}
    for obj in flat.node_objects:
        if not isinstance(obj, Context):
            continue
        for name, key in keys.items():
            try:
                stream = obj.stream(name)
            except KeyError:
                continue
            exact = obj.__dict__.get(name) is stream
            previous = chosen.get(id(stream))
            if previous is None or (exact and not previous[2]):
                chosen[id(stream)] = (stream, key, exact)
    out = []
    for path, stream in _streams(module):
        if id(stream) in chosen:
            out.append((stream, chosen[id(stream)][1]))
            continue
        name = str(path[-1]) if path else "default"
        if name in keys:
            out.append((stream, keys[name]))
        elif "default" in keys:
            out.append((stream, jax.random.fold_in(keys["default"], _stream_salt(name))))
        else:
            out.append((stream, stream.key.raw_value))
    return out


@contextlib.contextmanager
def _rekeyed(module: Any, rngs: Any, rng_axes: Any) -> Iterator[None]:
    if rngs is None and rng_axes is None:
        yield
        return
    plan = _call_keys(module, _key_dict(rngs) if rngs is not None else {})
    saved = [(stream, stream.key.raw_value) for stream, _ in plan]
    try:
        for stream, key in plan:
            stream.key.raw_value = key if rng_axes is None else _fold_axes(key, rng_axes)
        yield
    finally:
        for stream, key in saved:
            stream.key.raw_value = key


@contextlib.contextmanager
def fold_rngs(node: Any, axis_name: str | tuple[str, ...]) -> Iterator[Any]:
    """Give every ``vmap``/``shard_map`` lane its own random stream, for the ``with`` block.

    Inside ``jax.vmap(..., axis_name=...)`` or ``jax.shard_map``, every lane
    starts from the same RNG state, so every lane would draw the *same* keys
    (identical dropout masks on every data shard). Inside this block each
    RngStream held by ``node`` (a Context, or any module holding one) has the
    lane index of ``axis_name`` folded into its key. On exit the keys are
    restored: only the counters advance, identically in every lane, so the
    RNG state can be returned replicated (``out_axes=None`` / ``P()``).

    Fold only over axes whose lanes should differ (the data axes), not over
    the tensor-parallel axes whose lanes must agree.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> ctx = nnx.context(dropout=0)
    >>> def draw(x):
    ...     with nnx.fold_rngs(ctx, "batch"):
    ...         return jax.random.uniform(ctx.dropout(), ())
    >>> u = jax.vmap(draw, axis_name="batch")(jnp.zeros(4))
    >>> len(set(u.tolist()))          # four lanes, four different draws
    4
    """
    saved = [(stream, stream.key.raw_value) for _, stream in _streams(node)]
    try:
        for stream, key in saved:
            stream.key.raw_value = _fold_axes(key, axis_name)
        yield node
    finally:
        for stream, key in saved:
            stream.key.raw_value = key


# ---------------------------------------------------------------------------------
# Trainable vs. the rest
# ---------------------------------------------------------------------------------
def split_trainable(state: Any, trainable: filterlib.Filter = Param) -> tuple[State, State]:
    """Split a State (or a module's state) into ``(trainable, rest)``.

    ``trainable`` holds the Variables matching the filter (``nnx.Param`` by
    default): what ``jax.grad`` should differentiate. ``rest`` holds
    everything else: RNG keys and counters, batch statistics, caches.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Sequence([nnx.Linear(2, 2, ctx=nnx.context(0)), nnx.BatchNorm(2)])
    >>> init_fn, apply_fn = nnx.transform(model)
    >>> trainable, rest = nnx.split_trainable(init_fn())
    >>> def loss(trainable, rest, x):
    ...     y, new = apply_fn(nnx.merge_states(trainable, rest), x)
    ...     return jnp.mean(y ** 2), nnx.split_trainable(new)[1]
    >>> grads, rest = jax.grad(loss, has_aux=True)(trainable, rest, jnp.ones((4, 2)))
    >>> [p[-1] for p in grads.paths()]
    ['bias', 'kernel', 'bias', 'scale']
    """
    if isinstance(state, Mapping) and not isinstance(state, State):
        raise TypeError(
            "split_trainable needs to know which entries are Params, but a plain dict carries no "
            "Variable types. Pass the State itself (from init_fn, apply_fn, nnx.state or nnx.split), "
            "not state.to_pure_dict()."
        )
    if not isinstance(state, State):
        state = graph.state(state)
    elif state._structure.defs is None and state._leaves and isinstance(trainable, type):
        raise ValueError(
            f"split_trainable: this State was built from a plain dict, so it has no Variable types and "
            f"nothing would match {trainable.__name__}. Use the State returned by init_fn/apply_fn/"
            "nnx.state, or pass a path filter, e.g. split_trainable(state, nnx.PathContains('kernel'))."
        )
    return state.split(trainable, ...)


def merge_states(*states: State | Mapping) -> State:
    """Join States with disjoint paths (e.g. ``trainable`` and ``rest``) into one.

    Raises ``ValueError`` naming any path present in more than one State,
    since silently preferring one copy usually hides a bug.

    >>> import nnxlite as nnx
    >>> a, b = nnx.State({"w": 1.0}), nnx.State({"count": 3})
    >>> nnx.merge_states(a, b).to_pure_dict()
    {'count': 3, 'w': 1.0}
    """
    seen: dict[Path, int] = {}
    duplicates = []
    for i, s in enumerate(states):
        paths = s.paths() if isinstance(s, State) else State(s).paths()
        for p in paths:
            if p in seen:
                duplicates.append(p)
            seen[p] = i
    if duplicates:
        shown = ", ".join(_fmt_path(p) for p in duplicates[:10])
        raise ValueError(
            f"merge_states: {len(duplicates)} path(s) appear in more than one State: {shown}. "
            "Each Variable must be in exactly one of the States (split them with nnx.split_trainable "
            "or State.split); use nnx.State.merge to let later States override earlier ones."
        )
    return State.merge(*states)
