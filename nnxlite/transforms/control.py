"""``nnx.cond`` and ``nnx.switch``: branches that take and update modules.

Every branch runs on fresh objects built from the same state; JAX checks that
they return the same structure, and a mismatch in what the branches did to the
modules is explained in terms of modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from nnxlite.transforms._lift import _finish, _Inputs, _pure
from nnxlite.transforms.modes import check_mode

__all__ = ["cond", "switch"]


def _branches_call(what: str, index_fn: Callable, branches: Sequence[Callable], operands: tuple) -> Any:
    inputs = _Inputs(operands, {})
    metas: list = []
    pures = []
    for b in branches:
        cell: list = []
        metas.append(cell)
        pures.append(_pure(b, inputs, cell))
    try:
        aligned, extra, out, meta = index_fn(pures, inputs.leaves(), inputs.others)
    except TypeError as err:
        seen = [c[-1] if c else None for c in metas]
        if any(m != seen[0] for m in seen[1:]):
            raise ValueError(
                f"{what}: the branches left the modules in different structures or returned different "
                "kinds of modules. Every branch must make the same structural changes (ideally none: create "
                "Variables before branching) and return modules of the same structure."
            ) from err
        raise
    return _finish(inputs, aligned, extra, out, meta)


def cond(
    pred: Any, true_fun: Callable, false_fun: Callable, *operands: Any, graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.cond`` whose branches may take and update modules.

    Both branches see the operands as fresh objects; the state the taken
    branch leaves behind is written back. ``graph=``/``graph_updates=`` are
    flax.nnx's mode switches, accepted (graph semantics are kept).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> count = nnx.Variable(jnp.zeros(()))
    >>> def bump(c):
    ...     c.value = c.value + 1
    >>> for flag in (True, False, True):
    ...     nnx.cond(jnp.array(flag), bump, lambda c: None, count)
    >>> float(count.value)
    2.0
    """

    check_mode(graph, graph_updates, "nnx.cond")

    def call(pures, state, others):
        return jax.lax.cond(pred, pures[0], pures[1], state, others)

    return _branches_call("nnx.cond", call, (true_fun, false_fun), operands)


def switch(
    index: Any, branches: Sequence[Callable], *operands: Any, graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.switch`` whose branches may take and update modules (see :func:`cond`).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> v = nnx.Variable(jnp.ones(()))
    >>> def scale(k):
    ...     def branch(v):
    ...         v.value = v.value * k
    ...     return branch
    >>> nnx.switch(2, [scale(1.0), scale(2.0), scale(3.0)], v)
    >>> float(v.value)
    3.0
    """

    check_mode(graph, graph_updates, "nnx.switch")

    def call(pures, state, others):
        return jax.lax.switch(index, pures, state, others)

    return _branches_call("nnx.switch", call, tuple(branches), operands)
