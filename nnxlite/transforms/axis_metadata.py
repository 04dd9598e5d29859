"""Axis metadata under mapping transforms: flax.nnx's ``transform_metadata`` and ``PARTITION_NAME``.

A Variable's sharding metadata names one mesh axis (or ``None``) per array
axis: ``out_sharding=('layers', 'embed', None)``. Inside a ``vmap`` or
``scan`` the mapped axis is gone, so the metadata must lose that entry, and
get it back (or gain it, for a stack created inside) outside. Passing
``transform_metadata={nnx.PARTITION_NAME: name}`` to ``vmap``/``scan``/
``pmap`` does that, as in flax:

* a Variable mapped along axis ``a`` has entry ``a`` of its ``out_sharding``
  (and of its ``sharding`` / ``sharding_names``, nnxlite's spellings of the
  same metadata) removed inside; it must equal ``name``, else the error says
  which Variable holds what;
* after the call, the entry is put back, and Variables created inside get
  ``name`` inserted at their ``out_axes`` axis (padding with ``None``);
* any other key ``k: value`` of ``transform_metadata`` does the same to the
  metadata entry ``k`` when it is a tuple; the ``on_add_axis`` /
  ``on_remove_axis`` metadata hooks run too.

>>> import jax.numpy as jnp, nnxlite as nnx
>>> stack = nnx.vmap(
...     lambda: nnx.Param(jnp.zeros((2, 3)), out_sharding=("embed", None)),
...     axis_size=4, transform_metadata={nnx.PARTITION_NAME: "layers"},
... )()
>>> stack.shape, stack.out_sharding
((4, 2, 3), ('layers', 'embed', None))
>>> seen = []
>>> inside = nnx.vmap(lambda p: seen.append(p.out_sharding), transform_metadata={nnx.PARTITION_NAME: "layers"})
>>> inside(stack)
>>> seen, stack.out_sharding
([('embed', None)], ('layers', 'embed', None))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from nnxlite.state import _fmt_path

__all__ = ["transform_metadata", "PARTITION_NAME"]

PARTITION_NAME = "partition_name"

# The metadata keys that hold one mesh axis name per array axis (nnxlite keeps flax's
# older spellings as they were given; flax folds them into out_sharding).
_SHARDING_KEYS = ("out_sharding", "sharding", "sharding_names")


class AxisMetadata:
    """The metadata edits one ``transform_metadata`` mapping asks for (None-safe: see :func:`axis_metadata`)."""

    __slots__ = ("name", "others", "what")

    def __init__(self, transform_metadata: Mapping, what: str):
        self.name = transform_metadata[PARTITION_NAME]
        self.others = {k: v for k, v in transform_metadata.items() if k != PARTITION_NAME}
        self.what = what

    def remove(self, var: Any, axis: int, path: tuple = ()) -> None:
        md = var._metadata
        edits = {}
        for key in _SHARDING_KEYS:
            if md.get(key) is not None:
                edits[key] = self._removed(md[key], axis, self.name, key, path)
        for key, value in self.others.items():
            if isinstance(md.get(key), tuple) and md[key]:
                edits[key] = self._removed(md[key], axis, value, key, path)
        if edits:
            var._metadata = {**md, **edits}  # a fresh dict: merged Variables may share one
        var.remove_axis(axis, self.name)

    def add(self, var: Any, axis: int) -> None:
        md = var._metadata
        edits = {}
        for key in _SHARDING_KEYS:
            if md.get(key):
                edits[key] = _inserted(md[key], axis, self.name)
        for key, value in self.others.items():
            if isinstance(md.get(key), tuple) and md[key]:
                edits[key] = _inserted(md[key], axis, value)
        if edits:
            var._metadata = {**md, **edits}
        var.add_axis(axis, self.name)

    def _removed(self, fields: Any, axis: int, expected: Any, key: str, path: tuple) -> tuple:
        items = list(fields)
        where = f"{_fmt_path(path)} ({key}={tuple(fields)!r})" if path else f"a Variable's {key}={tuple(fields)!r}"
        if not -len(items) <= axis < len(items):
            raise ValueError(
                f"{self.what}: {where} has no entry for mapped axis {axis}; give it one entry per array axis, "
                f"with {expected!r} at position {axis}."
            )
        found = items.pop(axis)
        if found != expected:
            raise ValueError(
                f"{self.what}: {where} has {found!r} at mapped axis {axis}, but transform_metadata says "
                f"{PARTITION_NAME}={expected!r}. Use the same name in both places."
            )
        return tuple(items)


def _inserted(fields: Any, axis: int, value: Any) -> tuple:
    items = list(fields)
    while len(items) < axis:
        items.append(None)
    items.insert(axis, value)
    return tuple(items)


def axis_metadata(transform_metadata: Mapping | None, what: str) -> AxisMetadata | None:
    """The edits to make, or None when ``transform_metadata`` has no ``PARTITION_NAME`` (nothing to do)."""
    if not transform_metadata or PARTITION_NAME not in transform_metadata:
        return None
    return AxisMetadata(transform_metadata, what)


def transform_metadata(
    f: Callable | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    partition: Any,
    graph: bool | None = None,
) -> Callable:
    """Run ``f`` with the sharding metadata of mapped axes removed, as if inside a ``vmap`` (flax.nnx's name).

    Use it to write a function that edits per-layer modules of a stack by
    hand (no JAX transform): Variables given an int axis in ``in_axes`` lose
    that metadata entry (which must be ``partition``) while ``f`` runs and get
    it back afterwards; Variables that ``f`` returns get ``partition`` inserted
    at their ``out_axes`` axis. Values ``f`` writes come out as usual.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> p = nnx.Param(jnp.zeros((4, 3)), out_sharding=("layers", "embed"))
    >>> nnx.transform_metadata(lambda p: p.out_sharding, partition="layers")(p)
    ('embed',)
    """
    if f is None:
        return functools.partial(transform_metadata, in_axes=in_axes, out_axes=out_axes, partition=partition, graph=graph)
    from nnxlite.transforms._lift import (  # the core imports nothing from here
        _call_entries, _enter, _finish, _Inputs, _is_axis_entry, _leave, _state_specs,
    )
    from nnxlite.transforms.modes import check_mode
    from nnxlite.transforms.mapping import _new_var_axes_hook, _out_entries

    check_mode(graph, None, "nnx.transform_metadata")
    what = "nnx.transform_metadata"
    edits = AxisMetadata({PARTITION_NAME: partition}, what)

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        inputs = _Inputs(args, kwargs)
        entries = _call_entries(in_axes, args, kwargs, 0, _is_axis_entry, f"{what} in_axes")
        specs = _state_specs(inputs, entries, 0, (int, None), f"{what} in_axes")
        a, kw, roots, pre = _enter(inputs.graphdef, inputs.treedef, inputs.mask, inputs.leaves(), inputs.others)
        mapped = remove_axes(edits, pre, specs, inputs)
        out = f(*a, **kw)
        restore_axes(edits, mapped)
        aligned, extra, plain, meta = _leave(pre, roots, out, inputs.leaves())
        on_new = None
        if meta is not None and meta.new_var_indices():
            _, node_entries = _out_entries(out_axes, meta, _is_axis_entry, f"{what} out_axes")
            on_new = _new_var_axes_hook(edits, meta, [entries[p] for p in inputs.root_positions()], node_entries, what)
        return _finish(inputs, aligned, extra, plain, meta, on_new=on_new)

    return wrapper


def remove_axes(edits: AxisMetadata | None, pre: Any, specs: list, inputs: Any) -> list:
    """Inside a transform: drop the mapped axis from each mapped Variable's metadata; returns what to restore."""
    if edits is None or pre is None:
        return []
    mapped = []
    paths = inputs.flat.graphdef.paths
    for j, (var, ax) in enumerate(zip(pre.variables, specs)):
        if isinstance(ax, int) and not isinstance(ax, bool):
            edits.remove(var, ax, paths[j][1:])
            mapped.append((var, ax))
    return mapped


def restore_axes(edits: AxisMetadata | None, mapped: list) -> None:
    """Put back what :func:`remove_axes` took out (before the function's state is read)."""
    if edits is not None:
        for var, ax in mapped:
            edits.add(var, ax)
