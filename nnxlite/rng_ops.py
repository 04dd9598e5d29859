"""Operations on every RNG stream inside a model: flax.nnx's ``split_rngs``, ``fork_rngs``, ``reseed``, ...

nnxlite's lifted transforms already split the streams that reach them (one
key per ``vmap`` lane or ``scan`` step), so nnxlite code rarely needs these.
They exist so that flax.nnx programs run unchanged:

* :func:`split_rngs` replaces each selected stream's key by ``splits`` keys
  (and its counter by as many zeros), in place, returning backups;
* :func:`fork_rngs` gives each selected stream a fresh independent key;
* :func:`restore_rngs` puts the backed-up keys (and counters) back;
* :func:`reseed` gives named streams new seeds;
* :func:`with_rngs` returns a copy whose streams are split/forked/broadcast.

``split_rngs`` and ``fork_rngs`` also work as decorators (the streams found
in the arguments are changed for the duration of the call; in flax's tree
mode, ``graph=False`` or ``graph_updates=False``, the call gets changed copies)
and their in-place result is a context manager that restores on exit::

    >>> import nnxlite as nnx
    >>> rngs = nnx.Rngs(params=0, dropout=1)
    >>> with nnx.split_rngs(rngs, splits=5):
    ...     rngs.params.key.shape, rngs.params.count.shape
    ((5,), (5,))
    >>> rngs.params.key.shape
    ()
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite import filters as filterlib
from nnxlite import graph
from nnxlite.rng import Context, RngStream

__all__ = ["split_rngs", "fork_rngs", "restore_rngs", "reseed", "with_rngs", "backup_keys", "SplitBackups"]

_MISSING: Any = object()


class SplitBackups(list):
    """The ``(stream, key, count)`` triples saved by :func:`split_rngs`/:func:`fork_rngs`.

    Use it as a context manager, or pass it to :func:`restore_rngs`.
    """

    def __enter__(self) -> "SplitBackups":
        return self

    def __exit__(self, *exc: Any) -> None:
        restore_rngs(self)


def _streams(node: Any, only: filterlib.Filter = ...) -> list[tuple[tuple, RngStream]]:
    """``(path, stream)`` for each RngStream in ``node`` selected by ``only`` (matched on key and count).

    ``node`` may be any pytree holding graph nodes (a decorator sees ``(args, kwargs)``
    with plain arrays beside the modules); each stream is reported once.
    """
    predicate = filterlib.to_predicate(only)
    found: dict[int, tuple[tuple, RngStream]] = {}
    roots = jax.tree_util.tree_leaves(node, is_leaf=lambda x: isinstance(x, graph._NODE_BASES))
    for root in roots:
        if not isinstance(root, graph._NODE_BASES):
            continue
        for path, obj in graph.iter_graph(root):
            if isinstance(obj, RngStream) and id(obj) not in found:
                path = tuple(path)
                if predicate(path + ("key",), obj.key) and predicate(path + ("count",), obj.count):
                    found[id(obj)] = (path, obj)
    return list(found.values())


def _backup(stream: RngStream) -> tuple:
    return (stream, stream.key.raw_value, stream.count.raw_value)


def _set(stream: RngStream, key: jax.Array) -> None:
    stream.key.value = key  # always a typed key: one counter per key
    stream.count.value = jnp.zeros(key.shape, jnp.uint32)


def _in_place(graph: bool | None, graph_updates: bool | None) -> bool:
    """flax's rule: streams are changed in place (returning backups) only with graph=True and graph_updates=True.

    Otherwise (flax's tree mode, or no graph updates) a copy is changed and
    returned. ``None`` reads ``nnx.set_graph_mode`` / ``nnx.set_graph_updates``.
    """
    from nnxlite.transforms.modes import set_graph_mode, set_graph_updates  # here: rng_ops loads first

    graph = set_graph_mode.current_value() if graph is None else graph
    graph_updates = set_graph_updates.current_value() if graph_updates is None else graph_updates
    return bool(graph and graph_updates)


def split_rngs(
    node: Any = _MISSING,
    /,
    *,
    splits: int | tuple[int, ...],
    only: filterlib.Filter = ...,
    squeeze: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Split each selected stream of ``node`` into ``splits`` keys, in place; returns :class:`SplitBackups`.

    Without ``node`` it is a decorator. ``squeeze=True`` (only with
    ``splits=1``) keeps the key's shape. With ``graph=False`` or
    ``graph_updates=False`` (flax's tree mode; ``None`` reads
    ``nnx.set_graph_mode`` / ``nnx.set_graph_updates``) the streams of a copy
    are split and the copy is returned, as in flax; the copy keeps shared
    references.

    >>> import nnxlite as nnx
    >>> @nnx.split_rngs(splits=3)
    ... def shapes(rngs):
    ...     return rngs.params.key.shape
    >>> shapes(nnx.Rngs(params=0))
    (3,)
    """
    if squeeze and splits != 1:
        raise ValueError(f"split_rngs: squeeze=True needs splits=1, got splits={splits}.")

    def apply(target: Any) -> SplitBackups:
        backups = SplitBackups()
        for _, stream in _streams(target, only):
            drawn = stream()  # drawn before the backup: the caller's stream stays advanced, as in flax
            backups.append(_backup(stream))
            key = jax.random.split(drawn, splits)
            _set(stream, key[0] if squeeze else key)
        return backups

    return _run(apply, node, graph, graph_updates)


def _run(apply: Callable[[Any], SplitBackups], node: Any, graph: bool | None, graph_updates: bool | None) -> Any:
    """Shared tail of split_rngs/fork_rngs: a decorator without ``node``; outside graph-updates mode, edit a copy."""
    in_place = _in_place(graph, graph_updates)

    def on_copy(target: Any) -> Any:
        copy = _copy(target)
        apply(copy)
        return copy

    if node is not _MISSING:
        return apply(node) if in_place else on_copy(node)

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if in_place:  # changed for the duration of the call
                with apply((args, kwargs)):
                    return fn(*args, **kwargs)
            args, kwargs = on_copy((args, kwargs))
            return fn(*args, **kwargs)

        return wrapper

    return decorator


def fork_rngs(
    node: Any = _MISSING,
    /,
    *,
    split: Mapping[filterlib.Filter, Any] | int | tuple[int, ...] | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Give each stream of ``node`` a fresh, independent key (``split=n``: ``n`` keys), in place.

    Returns :class:`SplitBackups`; without ``node`` it is a decorator. With
    ``graph=False`` or ``graph_updates=False`` a copy is forked and returned,
    as for :func:`split_rngs`.

    >>> import nnxlite as nnx
    >>> rngs = nnx.Rngs(0)
    >>> with nnx.fork_rngs(rngs, split=2):
    ...     rngs.default.key.shape
    (2,)
    """
    spec = {...: None} if split is None else (split if isinstance(split, Mapping) else {...: split})
    rules = [(filterlib.to_predicate(f), n) for f, n in spec.items()]

    def apply(target: Any) -> SplitBackups:
        backups = SplitBackups()
        for path, stream in _streams(target):
            for predicate, n in rules:
                if predicate(path + ("key",), stream.key) and predicate(path + ("count",), stream.count):
                    key = stream()  # drawn before the backup, as in split_rngs
                    backups.append(_backup(stream))
                    _set(stream, key if n is None else jax.random.split(key, n))
                    break
        return backups

    return _run(apply, node, graph, graph_updates)


def backup_keys(node: Any, /, *, graph: bool | None = None) -> SplitBackups:
    """Save the key (and counter) of every stream in ``node``, for :func:`restore_rngs`."""
    return SplitBackups(_backup(stream) for _, stream in _streams(node))


def restore_rngs(backups: Iterable[tuple], /) -> None:
    """Put back the keys (and counters) saved by :func:`split_rngs`, :func:`fork_rngs` or :func:`backup_keys`."""
    for backup in reversed(list(backups)):  # newest first, so a stream backed up twice ends at its oldest state
        stream = backup[0]
        stream.key.value = backup[1]
        if len(backup) > 2:
            stream.count.value = backup[2]


def reseed(node: Any, /, *, graph: bool | None = None, policy: Any = "scalars_only", **stream_keys: Any) -> None:
    """Give the streams named in ``stream_keys`` (by tag, i.e. stream name) new seeds; counters restart at 0.

    ``policy='match_shape'`` splits the new key to the shape of a split
    stream; the default refuses split streams; a callable
    ``(path, key, shape) -> key`` decides itself.

    >>> import nnxlite as nnx
    >>> drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1))
    >>> nnx.reseed(drop, dropout=7)
    >>> bool((drop.rngs.key.value == nnx.Rngs(dropout=7).dropout()).all())
    True
    """
    if policy == "scalars_only":
        def policy(path, key, shape):
            if shape != key.shape:
                raise ValueError(
                    f"reseed: the stream at {path} holds keys of shape {shape} (a split stream); pass "
                    f"policy='match_shape' to split the new seed to that shape, or a callable policy."
                )
            return key
    elif policy == "match_shape":
        def policy(path, key, shape):
            return key if shape == key.shape else jax.random.split(key, shape)
    elif not callable(policy):
        raise ValueError(f"reseed: policy must be 'scalars_only', 'match_shape' or a callable, got {policy!r}.")
    fresh = Context(**stream_keys)
    for path, stream in _streams(node):
        tag = stream.tag
        if tag in stream_keys:
            key = policy(path, fresh[tag](), tuple(stream.key.shape))
            _set(stream, key)


def with_rngs(
    node: Any = _MISSING,
    /,
    *,
    split: Mapping[filterlib.Filter, Any] | int | tuple[int, ...] | None = None,
    fork: filterlib.Filter | Sequence[filterlib.Filter] | None = None,
    broadcast: Mapping[filterlib.Filter, Any] | int | tuple[int, ...] | None = None,
    only: filterlib.Filter = True,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """A copy of ``node`` whose streams are split, broadcast or forked by filter (first rule wins).

    Without ``node`` it is a decorator applying this to the arguments.

    >>> import nnxlite as nnx
    >>> out = nnx.with_rngs(nnx.Rngs(params=0, dropout=1), split={"params": 4}, fork=...)
    >>> out.params.key.shape, out.dropout.key.shape
    ((4,), ())
    """
    as_map = lambda spec: {} if spec is None else (spec if isinstance(spec, Mapping) else {...: spec})  # noqa: E731
    rules = {  # rule kind -> [(filter as given, predicate, size)], in flax's order of precedence
        "split": [(f, filterlib.to_predicate(f), n) for f, n in as_map(split).items()],
        "broadcast": [(f, filterlib.to_predicate(f), n) for f, n in as_map(broadcast).items()],
        "fork": [(f, filterlib.to_predicate(f), None) for f in _filters(fork)],
    }

    def apply(target: Any) -> Any:
        copy = _copy(target)
        for path, stream in _streams(copy, only):
            hit = lambda pred: pred(path + ("key",), stream.key) or pred(path, stream)  # noqa: E731
            matched = {}
            for kind, kind_rules in rules.items():
                first = next(((f, n) for f, pred, n in kind_rules if hit(pred)), None)
                if first is not None and (kind == "fork" or first[1] is not None):
                    matched[kind] = first
            _check_one_specific_rule(path, matched)
            if "split" in matched:
                _set(stream, jax.random.split(stream(), matched["split"][1]))
            elif "broadcast" in matched:
                n = matched["broadcast"][1]
                key = stream()
                shape = (n,) if isinstance(n, int) else tuple(n)
                _set(stream, jnp.broadcast_to(key, shape + key.shape))
            elif "fork" in matched:
                _set(stream, stream())
        return copy

    if node is _MISSING:
        def decorator(fn: Callable) -> Callable:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                args, kwargs = apply((args, kwargs))
                return fn(*args, **kwargs)

            return wrapper

        return decorator
    return apply(node)


def _filters(spec: Any) -> list:
    """``fork=`` of :func:`with_rngs`: None, one filter, or a list/tuple of filters."""
    if spec is None:
        return []
    return list(spec) if isinstance(spec, (list, tuple)) else [spec]


def _check_one_specific_rule(path: tuple, matched: dict) -> None:
    """Refuse a stream that two *specific* rules of :func:`with_rngs` select (as flax.nnx does).

    A catch-all (``...`` or ``True``) only fills in for streams no specific
    rule names, so it never conflicts.
    """
    specific = {kind: f for kind, (f, _) in matched.items() if f is not ... and f is not True}
    if len(specific) > 1:
        rules = "; ".join(f"{kind} matches filter {f!r}" for kind, f in specific.items())
        raise ValueError(
            f"with_rngs: the RngStream at path {path} matches multiple rules ({rules}). "
            "A stream can be split, broadcast or forked, not several at once: name it in only one rule."
        )


def _copy(node: Any) -> Any:
    """A copy of ``node`` with its own Variables (shared references inside it kept)."""
    return graph.clone(node)
