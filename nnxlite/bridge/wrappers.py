"""The two wrappers: :class:`ToNNX` (a Linen module inside nnxlite) and :class:`ToLinen` (the other way)."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from flax import linen
from flax.core import FrozenDict

from nnxlite import graph
from nnxlite.bridge.variables import (
    attrs_to_linen_vars,
    collection_of,
    linen_vars_to_attrs,
    to_linen_var,
)
from nnxlite.module import Module
from nnxlite.rng import Context
from nnxlite.variables import RngState, Variable

__all__ = ["ToNNX", "lazy_init", "ToLinen", "to_linen"]

# True while lazy_init runs: every ToNNX reached initializes its Linen variables.
_initializing: contextvars.ContextVar[bool] = contextvars.ContextVar("nnxlite_bridge_init", default=False)


class _LinenHolder:
    """Keeps the Linen module as one static attribute (compared by identity, never traversed)."""

    __slots__ = ("module",)

    def __init__(self, module: linen.Module):
        self.module = module

    def __repr__(self) -> str:
        return repr(self.module)


class ToNNX(Module):
    """A Linen module as an nnxlite Module: its variables are Variables, its RNG keys come from ``rngs``.

    Create the variables with :func:`lazy_init` from a sample input (Linen
    needs input shapes), or let the first call do it. Each top-level Linen
    variable becomes an attribute (``model.kernel``); nested Linen
    sub-modules become nested dicts of Variables. ``params`` hold
    ``nnx.Param``, ``batch_stats`` ``nnx.BatchStat``, other collections the
    Variable type registered under their name (a new type is made for an
    unknown collection name).

    >>> import jax.numpy as jnp, flax.linen as nn, nnxlite as nnx
    >>> from nnxlite import bridge
    >>> model = bridge.ToNNX(nn.Dense(4), rngs=nnx.Rngs(0))
    >>> y = bridge.lazy_init(model, jnp.ones((2, 3)))(jnp.ones((2, 3)))
    >>> model.kernel.shape, y.shape
    ((3, 4), (2, 4))

    Calling it runs Linen's ``apply``; ``mutable=True`` (or a list of
    collections) lets the Linen code update collections such as
    ``batch_stats`` or ``intermediates``, which are written back here.
    """

    def __init__(self, module: linen.Module, rngs: Context | jax.Array | None = None):
        if not isinstance(module, linen.Module):
            raise TypeError(f"bridge.ToNNX wraps a flax.linen Module, got {type(module).__name__}.")
        self._linen = _LinenHolder(module)
        self._linen_ready = False
        self.rngs = rngs

    def _linen_keys(self, rngs: Any) -> dict:
        if rngs is None:
            rngs = self.rngs
        if isinstance(rngs, Context):
            keys = {name: stream() for name, stream in rngs.items()}
        elif rngs is None:
            keys = {}
        else:
            keys = {"params": rngs}
        if "params" not in keys and "default" in keys:
            keys["params"] = keys.pop("default")
        return keys

    def _linen_attrs(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "rngs"}

    def __call__(self, *args: Any, rngs: Any = None, method: Any = None, mutable: Any = False, **kwargs: Any) -> Any:
        module = self._linen.module
        keys = self._linen_keys(rngs)
        if _initializing.get() or not self._linen_ready:
            out, variables = module.init_with_output(keys, *args, method=method, **kwargs)
            self._set_linen_vars(variables)
            self._linen_ready = True
            return out
        variables = attrs_to_linen_vars(self._linen_attrs())
        result = module.apply(variables, *args, rngs=keys, method=method, mutable=mutable, **kwargs)
        if mutable is False:
            return result
        out, updates = result
        self._set_linen_vars(updates)
        return out

    def _set_linen_vars(self, variables: Mapping) -> None:
        for key, value in linen_vars_to_attrs(variables).items():
            current = getattr(self, key, None) if not key.startswith("_") else None
            if not _assign(current, value):
                setattr(self, key, value)


def _assign(current: Any, new: Any) -> bool:
    """Write ``new``'s values into ``current``'s Variables in place if the structures match (keeps identity)."""
    if isinstance(current, Variable) and isinstance(new, Variable):
        if type(current) is not type(new) or current._metadata != new._metadata:
            return False
        current.value = new.value
        return True
    if isinstance(current, dict) and isinstance(new, dict):
        if set(current) != set(new):
            return False
        pairs = [(current[k], new[k]) for k in new]
    elif isinstance(current, tuple) and isinstance(new, tuple) and len(current) == len(new):
        pairs = list(zip(current, new))
    else:
        return False
    if not all(_same_structure(a, b) for a, b in pairs):
        return False
    for a, b in pairs:
        _assign(a, b)
    return True


def _same_structure(a: Any, b: Any) -> bool:
    if isinstance(a, Variable) and isinstance(b, Variable):
        return type(a) is type(b) and a._metadata == b._metadata
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_same_structure(a[k], b[k]) for k in a)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same_structure(x, y) for x, y in zip(a, b))
    return False


def lazy_init(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Create the Linen variables of every :class:`ToNNX` inside ``fn`` by running it once on sample inputs.

    ``fn`` is a module (called as ``fn(*args, **kwargs)``; it is returned) or
    any callable (its result is returned). This is where Linen code would
    call ``module.init(key, x)``.

    >>> import jax.numpy as jnp, flax.linen as nn, nnxlite as nnx
    >>> from nnxlite import bridge
    >>> class Outer(nnx.Module):
    ...     def __init__(self, rngs):
    ...         self.dense = bridge.ToNNX(nn.Dense(2), rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.dense(x)
    >>> model = bridge.lazy_init(Outer(nnx.Rngs(0)), jnp.ones((1, 5)))
    >>> model.dense.kernel.shape
    (5, 2)
    """
    token = _initializing.set(True)
    try:
        out = fn(*args, **kwargs)
    finally:
        _initializing.reset(token)
    return fn if isinstance(fn, Module) else out


def _linen_rng_names(module: linen.Module) -> list[str]:
    rngs = module.scope.rngs if module.scope is not None else None
    return list(rngs) if rngs else []


class ToLinen(linen.Module):
    """An nnxlite Module class as a Linen module: ``init`` creates it, ``apply`` runs it on the Linen variables.

    ``nnx_class(*args, **kwargs, rngs=nnx.Rngs(...))`` is called with a key
    from every RNG stream Linen was given (``skip_rng=True``: no ``rngs``).
    Its Variables are stored in the collection registered for their type
    (``nnx.Param`` → ``params``, ``nnx.BatchStat`` → ``batch_stats``,
    others: see :func:`nnxlite.register_variable_name`); RNG state is not
    stored, it is re-drawn from Linen's keys on every call. Updates the
    module makes are written back to the collections Linen lets mutate.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> from nnxlite import bridge
    >>> model = bridge.ToLinen(nnx.Linear, args=(3, 4))
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> variables["params"]["kernel"].shape, model.apply(variables, jnp.ones((1, 3))).shape
    ((3, 4), (1, 4))
    """

    nnx_class: Callable[..., Any]
    args: Sequence = ()
    kwargs: Mapping[str, Any] = FrozenDict({})
    skip_rng: bool = False

    @linen.compact
    def __call__(self, *args: Any, nnx_method: Callable | str | None = None, **kwargs: Any) -> Any:
        init = self.is_initializing()
        ctor_kwargs = dict(self.kwargs)
        if not self.skip_rng:
            keys = {name: self.make_rng(name) for name in _linen_rng_names(self)}
            # apply() may give no keys at all; the module's initializers still need a stream to draw from
            ctor_kwargs["rngs"] = Context(**keys) if init else Context(0, **keys)
        module = self.nnx_class(*self.args, **ctor_kwargs)
        flat = graph._traverse(module)
        variables = [
            (p, v) for p, v in zip(flat.graphdef.paths, flat.variables) if not isinstance(v, RngState) and p
        ]
        if init:
            self._store(variables, always=True)
        else:
            for path, var in variables:
                col = collection_of(var)
                if self.has_variable(col, _key(path[0])):
                    leaf = _nested_get(self.get_variable(col, _key(path[0])), path[1:])
                    var.value = leaf.unbox() if hasattr(leaf, "unbox") else leaf
        fn = nnx_method if callable(nnx_method) else getattr(type(module), nnx_method or "__call__")
        out = fn(module, *args, **kwargs)
        if not init:
            self._store(variables, always=False)
        return out

    def _store(self, variables: list, always: bool) -> None:
        trees: dict = {}
        for path, var in variables:
            col = collection_of(var)
            if not (always or self.is_mutable_collection(col)):
                continue
            leaf = to_linen_var(var)
            if len(path) == 1:
                trees.setdefault(col, {})[_key(path[0])] = leaf
            else:
                d = trees.setdefault(col, {}).setdefault(_key(path[0]), {})
                for k in path[1:-1]:
                    d = d.setdefault(_key(k), {})
                d[_key(path[-1])] = leaf
        for col, tree in trees.items():
            for top, value in tree.items():
                self.put_variable(col, top, value)


def _key(k: Any) -> str:
    return k if isinstance(k, str) else str(k)


def _nested_get(tree: Any, path: tuple) -> Any:
    for k in path:
        tree = tree[_key(k)]
    return tree


def to_linen(nnx_class: Callable[..., Any], *args: Any, name: str | None = None, **kwargs: Any) -> ToLinen:
    """``ToLinen(nnx_class, args=args, kwargs=kwargs)``: pass the constructor's arguments, not a module.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> from nnxlite import bridge
    >>> model = bridge.to_linen(nnx.Linear, 3, out_features=2)
    >>> model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]["bias"].shape
    (2,)
    """
    return ToLinen(nnx_class, args=args, kwargs=FrozenDict(kwargs), name=name)
