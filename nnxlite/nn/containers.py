"""Containers of layers: :class:`Sequence` (also called ``Sequential``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from nnxlite.module import Module

__all__ = ["Sequence", "Sequential"]

# Keywords a model commonly threads through every layer. A call may pass them
# even when no layer of this Sequence uses them; any other keyword that no
# layer accepts is a mistake (a typo, usually) and raises.
THREADED_KEYWORDS = frozenset({"ctx", "rngs", "deterministic", "use_running_average", "decode"})


class Sequence(Module):
    """Apply layers (modules or any callables) one after another.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> ctx = nnx.context(0)
    >>> model = nnx.Sequence([
    ...     lambda x: x.reshape((x.shape[0], -1)),
    ...     nnx.Linear(4, 8, ctx=ctx),
    ...     nnx.relu,
    ...     nnx.Dropout(0.5),
    ...     nnx.Linear(8, 2, ctx=ctx),
    ... ])
    >>> model(jnp.ones((3, 2, 2)), ctx=nnx.context(dropout=1)).shape
    (3, 2)
    >>> model(jnp.ones((3, 2, 2)), deterministic=True).shape
    (3, 2)

    Keyword arguments given at call time go only to the layers whose
    ``__call__`` accepts them (here ``ctx=`` and ``deterministic=`` reach
    Dropout and skip the Linear layers and functions); what each kind of
    layer accepts is looked up once and cached. A keyword no layer accepts
    raises ``TypeError``, except the ones models thread through every layer
    (``ctx``, ``deterministic``, ``use_running_average``, ``decode``).

    Every positional argument goes to the first layer. A layer that returns a
    tuple feeds it to the next layer as positional arguments, and a dict as
    keyword arguments (as in flax.nnx); any other output is the next layer's
    one input. With no layers the input comes back unchanged.

    >>> pair = nnx.Sequential(lambda a, b: (a + b, a - b), lambda s, d: s * d)
    >>> float(pair(jnp.array(3.0), jnp.array(1.0)))   # (3 + 1) * (3 - 1)
    8.0

    Layers can be given as one list (``Sequence([a, b])``) or as arguments
    (``Sequential(a, b)``). Plain functions are static parts of the module
    definition; modules are state. ``model.layers`` is a list you can edit
    (``append``, index, slice).
    """

    def __init__(self, *layers: Callable | Iterable[Callable]):
        if len(layers) == 1 and not callable(layers[0]):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(f"Sequence: layer {i} ({type(layer).__name__}) is not callable.")
        self.layers = list(layers)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        layers = self.layers
        if not layers:  # nothing to apply: hand the input back, as flax.nnx does
            return args[0] if len(args) == 1 else args if args else (kwargs or None)
        if not kwargs:
            out = layers[0](*args)
            for i in range(1, len(layers)):
                out = _feed(layers[i], out, None)
            return out
        used: set[str] = set()
        out = None
        for i, layer in enumerate(layers):
            accepted = accepted_keywords(layer)
            if accepted is None:  # takes **kwargs
                layer_kwargs = kwargs
            else:
                layer_kwargs = {k: v for k, v in kwargs.items() if k in accepted}
            used.update(layer_kwargs)
            out = layer(*args, **layer_kwargs) if i == 0 else _feed(layer, out, layer_kwargs)
        unused = set(kwargs) - used - THREADED_KEYWORDS
        if unused:
            raise TypeError(
                f"Sequence: no layer accepts the keyword(s) {sorted(unused)}; "
                f"layers: {[_name(layer) for layer in self.layers]}."
            )
        return out

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)


Sequential = Sequence


def _feed(layer: Callable, out: Any, call_kwargs: dict | None) -> Any:
    """Call ``layer`` on the previous layer's output: a tuple is spread over the
    positional arguments and a dict over the keywords (flax.nnx's rule), anything
    else is the one input. ``call_kwargs`` are the call's keywords routed to it."""
    if isinstance(out, tuple):
        return layer(*out, **call_kwargs) if call_kwargs else layer(*out)
    if isinstance(out, dict):
        return layer(**{**call_kwargs, **out}) if call_kwargs else layer(**out)
    return layer(out, **call_kwargs) if call_kwargs else layer(out)

_ACCEPTED_CACHE: dict[Any, frozenset[str] | None] = {}
_CACHE_LIMIT = 4096


def accepted_keywords(layer: Callable) -> frozenset[str] | None:
    """Names ``layer`` accepts as keywords (None: it takes ``**kwargs``), cached per layer type.

    The first positional parameter is the input, so it is not counted.
    Modules are cached by type (every ``Dropout`` accepts the same names);
    other callables by identity. A nested :class:`Sequence` accepts what any
    of its layers accepts.

    >>> import nnxlite as nnx
    >>> sorted(accepted_keywords(nnx.Dropout(0.5)))
    ['ctx', 'deterministic', 'rngs']
    >>> accepted_keywords(nnx.relu)
    frozenset()
    """
    if isinstance(layer, Sequence):  # a nested Sequence takes what any of its layers takes
        names: set[str] = set()
        for inner in layer.layers:
            accepted = accepted_keywords(inner)
            if accepted is None:
                return None
            names.update(accepted)
        return frozenset(names)
    key = type(layer) if isinstance(layer, Module) else layer
    try:
        return _ACCEPTED_CACHE[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable: inspect it every time
        return _inspect_keywords(layer)
    if len(_ACCEPTED_CACHE) >= _CACHE_LIMIT:  # functions made on the fly must not grow it forever
        _ACCEPTED_CACHE.clear()
    result = _ACCEPTED_CACHE[key] = _inspect_keywords(layer)
    return result


def _inspect_keywords(layer: Callable) -> frozenset[str] | None:
    try:
        params = list(inspect.signature(layer).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: give them nothing
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    names = []
    first_positional_seen = False
    for p in params:
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
            first_positional_seen = True
            continue
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and not first_positional_seen:
            first_positional_seen = True  # the input x
            continue
        names.append(p.name)
    return frozenset(names)


def _name(layer: Callable) -> str:
    return type(layer).__name__ if isinstance(layer, Module) else getattr(layer, "__name__", type(layer).__name__)
