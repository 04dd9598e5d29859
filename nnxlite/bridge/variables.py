"""Linen collections ↔ nnxlite Variables: one leaf at a time, metadata kept (:class:`NNXMeta`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import struct
from flax.core import FrozenDict, meta

from nnxlite.compat.variable_names import variable_name_from_type, variable_type_from_name
from nnxlite.variables import RngState, Variable

__all__ = ["NNXMeta", "to_linen_var", "to_nnx_var", "collection_of"]


class NNXMeta(struct.PyTreeNode, meta.AxisMetadata):
    """A Linen metadata box holding an nnxlite Variable's value, type and metadata.

    :class:`ToLinen` stores Variables that carry metadata (e.g. ``sharding``)
    this way, so Linen's ``nn.unbox`` gives the array and
    ``nn.get_partition_spec`` the Variable's sharding, and Linen's lifted
    transforms (``nn.vmap``, ``nn.scan``) keep that sharding in step.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> from nnxlite.bridge import NNXMeta
    >>> box = NNXMeta(nnx.Param, jnp.ones((2, 3)), {"sharding": ("in", "out")})
    >>> box.unbox().shape, box.get_partition_spec()
    ((2, 3), P('in', 'out'))
    """

    var_type: type = struct.field(pytree_node=False)
    value: Any = struct.field(pytree_node=True)
    metadata: Mapping = struct.field(pytree_node=False)

    def __post_init__(self):
        if not isinstance(self.metadata, FrozenDict):  # hashable: it is static pytree data
            object.__setattr__(self, "metadata", FrozenDict(self.metadata))

    def unbox(self) -> Any:
        return self.value

    def replace_boxed(self, val: Any) -> "NNXMeta":
        return self.replace(value=val)

    def _sharding_key(self) -> str | None:
        for key in ("sharding", "out_sharding", "sharding_names"):
            if self.metadata.get(key) is not None:
                return key
        return None

    def add_axis(self, index: int, params: dict[Any, Any]) -> "NNXMeta":
        key = self._sharding_key()
        if key is None:
            return self
        names = list(self.metadata[key])
        names.insert(index, (params or {}).get("partition_name"))
        return self.replace(metadata=FrozenDict({**self.metadata, key: tuple(names)}))

    def remove_axis(self, index: int, params: dict[Any, Any]) -> "NNXMeta":
        key = self._sharding_key()
        if key is None:
            return self
        names = list(self.metadata[key])
        names.pop(index)
        return self.replace(metadata=FrozenDict({**self.metadata, key: tuple(names)}))

    def get_partition_spec(self) -> jax.sharding.PartitionSpec:
        key = self._sharding_key()
        return jax.sharding.PartitionSpec(*self.metadata[key]) if key else jax.sharding.PartitionSpec()

    def to_nnx_variable(self) -> Variable:
        return self.var_type(self.value, **dict(self.metadata))


def collection_of(var: Variable) -> str:
    """The Linen collection of a Variable (its type's registered name; an unknown type registers its class name)."""
    return variable_name_from_type(type(var), allow_register=True)


def to_linen_var(var: Variable) -> Any:
    """A Variable as a Linen collection leaf: the bare value, or an :class:`NNXMeta` when it has metadata."""
    if var._metadata:
        return NNXMeta(type(var), var.value, dict(var._metadata))
    return var.value


def to_nnx_var(collection: str, leaf: Any) -> Variable:
    """A Linen collection leaf as a Variable of the collection's type (metadata boxes unboxed into metadata)."""
    if isinstance(leaf, NNXMeta):
        return leaf.to_nnx_variable()
    typ = variable_type_from_name(collection, allow_register=True)
    if isinstance(leaf, meta.Partitioned):
        md = {"sharding": tuple(leaf.names)}
        if leaf.mesh is not None:
            md["mesh"] = leaf.mesh
        return typ(leaf.unbox(), **md)
    if isinstance(leaf, meta.AxisMetadata):
        return typ(leaf.unbox())
    return typ(leaf)


def linen_vars_to_attrs(variables: Mapping) -> dict:
    """``{collection: nested dict}`` → ``{top key: nested dicts/tuples of Variables}`` (collections merged)."""
    attrs: dict = {}
    for col, tree in variables.items():
        for key, sub in tree.items():
            converted = _convert(col, sub)
            attrs[key] = _merge(attrs[key], converted, (key,)) if key in attrs else converted
    return attrs


def _convert(col: str, tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _convert(col, v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)) and not isinstance(tree, meta.AxisMetadata):
        return tuple(_convert(col, v) for v in tree)
    return to_nnx_var(col, tree)


def _merge(a: Any, b: Any, path: tuple) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(out[k], v, path + (k,)) if k in out else v
        return out
    raise ValueError(
        f"nnx.bridge: the Linen variable {'/'.join(map(str, path))} exists in two collections "
        f"({collection_of(a) if isinstance(a, Variable) else type(a).__name__} and "
        f"{collection_of(b) if isinstance(b, Variable) else type(b).__name__}); an nnxlite module holds one "
        "attribute per name, so rename one of them in the Linen module."
    )


def attrs_to_linen_vars(attrs: Mapping) -> dict:
    """The inverse of :func:`linen_vars_to_attrs`: each Variable goes to its type's collection (RNG state skipped)."""
    out: dict = {}
    for key, sub in attrs.items():
        for col, tree in _split(sub).items():
            out.setdefault(col, {})[key] = tree
    return out


def _split(tree: Any) -> dict:
    """``{collection: the part of tree whose leaves belong to it}``, keeping dict and tuple structure."""
    if isinstance(tree, Variable):
        if isinstance(tree, RngState):
            return {}
        return {collection_of(tree): tree.value}
    if isinstance(tree, Mapping):
        out: dict = {}
        for k, v in tree.items():
            for col, part in _split(v).items():
                out.setdefault(col, {})[k] = part
        return out
    if isinstance(tree, (tuple, list)):
        parts = [_split(v) for v in tree]
        cols = {c for p in parts for c in p}
        return {c: tuple(p.get(c) for p in parts) for c in cols}
    return {}
