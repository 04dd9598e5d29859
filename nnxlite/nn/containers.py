"""Containers of layers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from nnxlite.module import Module

__all__ = ["Sequence", "Sequential"]


class Sequence(Module):
    """Apply layers (modules or any callables) one after another.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Sequence([
    ...     lambda x: x.reshape((x.shape[0], -1)),
    ...     nnx.Linear(4, 2, ctx=nnx.context(0)),
    ...     jax.nn.relu,
    ... ])
    >>> model(jnp.ones((3, 2, 2))).shape
    (3, 2)

    Plain functions are static parts of the module definition; modules are
    state. ``model.layers`` is a list you can edit (``append``, index, slice).
    Keyword arguments given at call time go to every layer that is a Module.
    """

    def __init__(self, layers: Iterable[Callable] = (), /):
        self.layers = list(layers)

    def __call__(self, x: Any, **kwargs: Any) -> Any:
        for layer in self.layers:
            x = layer(x, **kwargs) if kwargs and isinstance(layer, Module) else layer(x)
        return x

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)


Sequential = Sequence
