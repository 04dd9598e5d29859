"""RNG contexts: named, counter-based random streams whose state is Variables.

A :class:`Context` (also exported as ``Rngs``) holds one :class:`RngStream`
per name. Each stream keeps a base key and a counter, both Variables, and
hands out ``fold_in(key, count)`` before incrementing the counter, so no key is
ever handed out twice, and the stream state travels inside State through
``jit``, ``scan`` and ``vmap`` like any other state::

    >>> import nnxlite as nnx
    >>> ctx = nnx.context(0, dropout=1)
    >>> k1, k2 = ctx.make_rng("params"), ctx.dropout()
    >>> k1.shape, k1.dtype
    ((), key<fry>)
    >>> int(ctx.default.count.value), int(ctx.dropout.count.value)
    (1, 1)

Keys are typed JAX keys (``jax.random.key``, dtype ``key<fry>``, scalar
shape), as in flax.nnx 0.12. A seed may be an int, a typed key, or a raw
``uint32`` key (``jax.random.PRNGKey(0)``, or a batch from
``jax.random.split``), which is wrapped with ``jax.random.wrap_key_data``
(same bits, same draws). ``jax.random.key_data(key)`` gives the raw bits back.

Asking for a stream that does not exist falls back to the ``default`` stream
(the positional seed), so ``nnx.context(0)`` serves every name.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlite._random_methods import RandomMethods
from nnxlite import filters as filterlib
from nnxlite.module import Module
from nnxlite.variables import RngCount, RngKey, _check_not_closed_over, _staging

__all__ = ["Context", "Rngs", "RngStream", "ContextDef", "context"]

DEFAULT = "default"
# Draws read and advance a counter; the lock makes that one step, so threads that
# share a Context never get the same key. (Uncontended, it costs ~0.1 us.)
_draw_lock = threading.Lock()


def _as_key(seed: Any) -> jax.Array:
    """A typed key (``jax.random.key``, dtype ``key<fry>``) from any seed a user may pass, as flax.nnx 0.12 does.

    * a typed key (or a batch of them) is used as it is;
    * an int, or an integer scalar array (a traced seed too), is a seed:
      ``jax.random.key(seed)``;
    * a raw ``uint32`` key (``jax.random.PRNGKey(0)``, or a batch of them from
      ``jax.random.split``) is wrapped with ``jax.random.wrap_key_data``: the
      same key bits, so draws give the same numbers as the raw key would.
    """
    if _is_typed_key(seed):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return jax.random.key(seed)
    dtype = getattr(seed, "dtype", None)
    shape = getattr(seed, "shape", None)
    if dtype is not None and shape == () and jnp.issubdtype(dtype, jnp.integer):
        return jax.random.key(seed)
    if dtype is not None and shape is not None and np.dtype(dtype) == np.uint32 and len(shape) >= 1:
        try:
            return jax.random.wrap_key_data(seed)
        except (TypeError, ValueError):
            pass  # key data of the wrong shape for the default impl: reported below
    raise ValueError(
        f"Invalid RNG seed {_describe(seed)}: expected an int seed, a typed key (jax.random.key(0), "
        "or a batch of them) or a raw uint32 key of shape (..., 2) (jax.random.PRNGKey(0)). "
        "For key data of another PRNG impl, wrap it first: jax.random.wrap_key_data(data, impl=...)."
    )


def _describe(x: Any) -> str:
    dtype, shape = getattr(x, "dtype", None), getattr(x, "shape", None)
    if dtype is not None and shape is not None:
        return f"(an array of dtype {dtype} and shape {tuple(shape)})"
    return f"{x!r} (of type {type(x).__name__})"


def _is_typed_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class RngStream(RandomMethods, Module):
    """One named random stream: a base key and a counter (both Variables).

    Calling it returns a fresh key: ``fold_in(key, count)``, then ``count += 1``.
    The ``jax.random`` functions are methods too (``stream.normal((2,))``).
    ``tag`` (the stream's name) is recorded as metadata on both Variables,
    as flax.nnx does.
    Draws are atomic, so threads sharing a stream never get the same key. The
    uint32 counter never wraps: once ``2**32 - 1`` keys are drawn, an eager
    draw raises ``OverflowError`` (under ``jit`` the counter stops at its
    maximum instead, and the next eager draw raises).
    """

    def __init__(self, key: Any, *, count: Any = None, tag: str | None = None):
        if isinstance(key, RngStream):
            key = key.key.raw_value
        key = _as_key(key)
        if count is None:  # one counter per key (a split stream has a batch of keys)
            count = jnp.zeros(jnp.shape(key), jnp.uint32)
        meta = {} if tag is None else {"tag": tag}
        self.key = RngKey(key, **meta)
        self.count = RngCount(jnp.asarray(count, dtype=jnp.uint32), **meta)
        if not _staging():
            # Made eagerly: drawing from this very object inside jit means it was closed
            # over (the transforms draw from copies they build). Not part of the graph.
            self.__dict__["_nnx_eager"] = True

    @property
    def tag(self) -> str | None:
        """The stream's name (None for a stream made on its own)."""
        return self.key._metadata.get("tag")

    def __call__(self, *args: Any, **kwargs: Any) -> jax.Array:
        if args or kwargs:
            raise TypeError(
                "An RngStream is called with no arguments and returns a key: key = rngs.params(). "
                "To draw samples, use the jax.random shorthands: rngs.params.normal((2, 3)), "
                "rngs.dropout.bernoulli(0.5, shape), ..."
            )
        if "_nnx_eager" in self.__dict__:  # the user's own stream, not a transform's copy
            _check_not_closed_over(self.count, "A random stream")
        with _draw_lock:
            count = self.count.raw_value
            last = np.array(jnp.iinfo(count.dtype).max, count.dtype)  # the last count before a wrap to 0
            if isinstance(count, jax.core.Tracer):
                # The count is unknown while tracing, so it cannot raise here: it saturates
                # instead of wrapping to 0, and the next eager draw reports the exhausted stream.
                self.count.value = jnp.where(count == last, count, count + 1)
            else:
                if (np.asarray(count) >= last).any():
                    raise OverflowError(
                        f"This RNG stream has handed out the {last} keys its {count.dtype} counter can "
                        "number; another draw would repeat an earlier key. Give the stream a new key "
                        "(stream.key.value = jax.random.key(new_seed); stream.count.value = 0) or use a "
                        "new Context."
                    )
                self.count.value = count + 1
        return jax.random.fold_in(self.key.raw_value, count)

    def fork(self, n: int | tuple[int, ...] | None = None, /, *, split: int | tuple[int, ...] | None = None):
        """``fork(n)``: ``n`` independent keys at once (for vmap lanes or scan steps).

        ``fork()`` (flax.nnx): a new, independent RngStream seeded from this
        one; ``fork(split=n)`` gives it ``n`` keys (a stream per lane).

        >>> import nnxlite as nnx
        >>> s = nnx.Rngs(0).params
        >>> s.fork(3).shape, type(s.fork()).__name__, s.fork(split=4).key.shape
        ((3,), 'RngStream', (4,))
        """
        if n is not None:
            return jax.random.split(self(), n)
        key = self()
        if split is not None:
            key = jax.random.split(key, split)
        return RngStream(key, tag=self.tag)

    def split(self, k: int | tuple[int, ...]) -> "RngStream":
        """A new RngStream holding ``k`` keys split from a fresh key of this one."""
        return RngStream(jax.random.split(self(), k), tag=self.tag)

    def broadcast(self, k: int | tuple[int, ...]) -> "RngStream":
        """A new RngStream holding one fresh key repeated to shape ``k``."""
        key = self()
        shape = (k,) if isinstance(k, int) else tuple(k)
        return RngStream(jnp.broadcast_to(key, shape + key.shape), tag=self.tag)


class Context(RandomMethods, Module):
    """Named random streams, created with :func:`context`.

    Pass it to constructors (``ctx=``, or ``rngs=``) and to stochastic layers
    at call time. Its streams are attributes: ``ctx.params`` is an
    :class:`RngStream`, and ``ctx.params()`` draws a key (the same as
    ``ctx.make_rng('params')`` and ``ctx['params']()``). flax.nnx's surface
    works too: ``rngs()`` draws from the default stream, ``rngs.normal(shape)``
    and the other ``jax.random`` shorthands, ``rngs.fork()``,
    ``rngs.split(n)``, iteration over stream names and ``rngs.items()``.

    >>> import nnxlite as nnx
    >>> rngs = nnx.Rngs(0, dropout=1)
    >>> rngs().shape, rngs["dropout"]().shape, rngs.normal((2,)).shape
    ((), (), (2,))
    >>> sorted(rngs), len(rngs)
    (['default', 'dropout'], 2)
    """

    def __init__(self, default: Any = None, /, **streams: Any):
        if isinstance(default, Mapping):  # flax.nnx: Rngs({"params": 0, "dropout": 1})
            streams = {**default, **streams}
        elif default is not None:
            streams = {DEFAULT: default, **streams}
        if not streams:
            raise ValueError("A Context needs at least one stream: nnx.context(0) or nnx.context(params=0, ...).")
        for name, seed in streams.items():
            if isinstance(seed, RngStream) and seed.tag == name:
                stream = seed
            else:
                stream = RngStream(seed, tag=name)
            setattr(self, name, stream)

    def stream_names(self) -> list[str]:
        """Names of the streams this context holds."""
        return [k for k, v in vars(self).items() if isinstance(v, RngStream)]

    def stream(self, name: str) -> RngStream:
        """The stream called ``name``, or the default stream if there is none by that name."""
        d = self.__dict__
        s = d.get(name)
        if isinstance(s, RngStream):
            return s
        s = d.get(DEFAULT)
        if isinstance(s, RngStream):
            return s
        # The first sentence is flax.nnx's own, so code matching on it keeps working.
        raise KeyError(
            f"No RngStream named {name!r} found in Rngs. This Rngs has no default stream to fall back "
            f"on; its streams are {self.stream_names()}. Create the stream with e.g. "
            f"nnx.Rngs({name}=0) (nnx.context({name}=0)), or give a default seed: nnx.Rngs(0)."
        )

    def make_rng(self, name: str = DEFAULT) -> jax.Array:
        """Draw a fresh key from stream ``name`` (falling back to the default stream)."""
        return self.stream(name)()

    def __call__(self, *args: Any, **kwargs: Any) -> jax.Array:
        """Draw a key from the default stream (flax.nnx's ``rngs()``)."""
        if args or kwargs:
            raise TypeError(
                "A Context is called with no arguments and returns a key from its default stream: key = rngs(). "
                "To draw samples use rngs.normal((2, 3)) and the other jax.random shorthands."
            )
        return self.stream(DEFAULT)()

    def __getitem__(self, name: str) -> RngStream:
        return self.stream(name)

    def __iter__(self):
        return iter(self.stream_names())

    def __len__(self) -> int:
        return len(self.stream_names())

    def __contains__(self, name: Any) -> bool:
        return isinstance(self.__dict__.get(name), RngStream)

    def items(self):
        """``(name, stream)`` pairs."""
        return [(name, self.__dict__[name]) for name in self.stream_names()]

    def __getattr__(self, name: str) -> Any:
        # Only reached when `name` is not an attribute: unknown streams use the default.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.stream(name)
        except KeyError as e:
            raise AttributeError(e.args[0]) from None

    def _per_stream(self, spec: Any, op: str) -> "Context":
        """A new Context applying ``stream.<op>(size)`` to each stream selected by ``spec``.

        ``spec`` is a size (for every stream) or ``{filter: size or None}``
        (first match wins; None or no match keeps the stream as is).
        """
        if not isinstance(spec, Mapping):
            spec = {...: spec}
        rules = [(filterlib.to_predicate(f), size) for f, size in spec.items()]
        out = {}
        for name, stream in self.items():
            size = next((n for pred, n in rules if pred((name,), stream.key) or pred((name,), stream)), None)
            out[name] = stream if size is None else getattr(stream, op)(size)
        return Context(**out)

    def split(self, k: Any) -> "Context":
        """A new Context whose streams hold ``k`` keys each (``k`` may map filters to sizes)."""
        return self._per_stream(k, "split")

    def broadcast(self, k: Any) -> "Context":
        """A new Context whose streams hold one fresh key repeated to shape ``k``."""
        return self._per_stream(k, "broadcast")

    def partition(self) -> tuple["Keys", "ContextDef"]:
        """Draw one key per stream and return ``(keys, ctxdef)``.

        ``keys`` is a dict of keys (asking it for a name it lacks derives a key
        from the default stream's); ``ctxdef.merge(keys)`` builds a new Context
        whose streams start from those keys. This is how a key is carried into
        ``jax.vmap``/``jax.lax.scan`` bodies (seed 003's ``ScanMLP``)::

            >>> import jax, nnxlite as nnx
            >>> keys, ctxdef = nnx.context(0).partition()
            >>> many = jax.random.split(keys["params"], 4)
            >>> ctx = ctxdef.merge({"params": many[0]})
            >>> ctx.params().shape
            ()
        """
        return Keys({name: self.make_rng(name) for name in self.stream_names()}), ContextDef()

    def fork(self, n: int | None = None, /, *, split: Any = None) -> "dict[str, jax.Array] | Context":
        """``fork(n)``: ``{name: n keys}``, every stream split for ``n`` lanes or steps.

        ``fork()`` (flax.nnx): a new Context of independent streams, each
        seeded from a fresh key of this one's; ``fork(split=n)`` (or
        ``{filter: n}``) gives the selected streams ``n`` keys.

        >>> import nnxlite as nnx
        >>> ctx = nnx.context(0)
        >>> ctx.fork(4)["default"].shape
        (4,)
        >>> forked = ctx.fork()
        >>> type(forked).__name__, forked.default.key.shape
        ('Context', ())
        """
        if n is not None:
            return {name: self.stream(name).fork(n) for name in self.stream_names()}
        rules = []
        if split is not None:
            spec = split if isinstance(split, Mapping) else {...: split}
            rules = [(filterlib.to_predicate(f), size) for f, size in spec.items()]
        out = {}
        for name, stream in self.items():
            size = next((s for pred, s in rules if pred((name,), stream.key) or pred((name,), stream)), None)
            out[name] = stream.fork(split=size)
        return Context(**out)


Rngs = Context


class Keys(dict):
    """The keys drawn by :meth:`Context.partition`; unknown names derive from the default key."""

    def __missing__(self, name: str) -> jax.Array:
        if DEFAULT not in self:
            raise KeyError(f"No key for stream {name!r}; the context had streams {sorted(self)}.")
        salt = zlib.crc32(name.encode()) & 0x7FFFFFFF
        key = jax.random.fold_in(self[DEFAULT], salt)
        self[name] = key
        return key


class ContextDef:
    """The static half of a partitioned Context: ``ctxdef.merge(keys)`` rebuilds one.

    It holds nothing that varies, so it is hashable and can be closed over in
    ``vmap``/``scan`` bodies.
    """

    def merge(self, keys: dict[str, Any]) -> Context:
        """A new Context with one stream per entry of ``keys`` (counters start at 0)."""
        return Context(**dict(keys))

    def __eq__(self, other) -> bool:
        return isinstance(other, ContextDef)

    def __hash__(self) -> int:
        return hash(ContextDef)

    def __repr__(self) -> str:
        return "ContextDef()"


jax.tree_util.register_pytree_node(ContextDef, lambda c: ((), None), lambda _, __: ContextDef())


def context(seed: Any = None, /, **streams: Any) -> Context:
    """Create a :class:`Context`.

    Args:
      seed: an int or key for the ``default`` stream, which also serves any
        stream name the context does not have.
      **streams: named streams, e.g. ``params=0, dropout=1``.

    >>> import nnxlite as nnx
    >>> ctx = nnx.context(0, dropout=1)
    >>> sorted(ctx.stream_names())
    ['default', 'dropout']
    """
    return Context(seed, **streams)
