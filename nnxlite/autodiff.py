"""``grad`` and ``value_and_grad`` that take modules as arguments.

For each differentiated argument that is a module (or any graph node), the
gradient is a :class:`~nnxlite.State` holding one entry per Variable matching
``wrt`` (``nnx.Param`` by default). Other state the function changes, such as
BatchNorm statistics or RNG counters, is written back into the module, just
as it would be in eager code::

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 1, ctx=nnx.context(0))
    >>> def loss_fn(model):
    ...     return jnp.mean(model(jnp.ones((4, 2))) ** 2)
    >>> loss, grads = nnx.value_and_grad(loss_fn)(model)
    >>> grads["kernel"].shape
    (2, 1)

A Variable reached through several paths (a tied weight) gets the sum of the
gradients of all its uses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from nnxlite import filters as filterlib
from nnxlite import graph
from nnxlite.variables import Param

__all__ = ["grad", "value_and_grad"]


def _is_graph(x: Any) -> bool:
    return graph._node_kind(x) == graph.OBJECT or isinstance(x, graph.Variable)


def value_and_grad(
    f: Callable,
    argnums: int | Sequence[int] = 0,
    *,
    wrt: filterlib.Filter = Param,
    has_aux: bool = False,
    holomorphic: bool = False,
    allow_int: bool = False,
) -> Callable:
    """Like ``jax.value_and_grad``, but module arguments are differentiated w.r.t. ``wrt``.

    Returns a function giving ``(value, grads)`` (``((value, aux), grads)``
    with ``has_aux``); ``grads`` is one State per module argument, or a tuple
    when ``argnums`` is a sequence. See the module docstring for an example.
    """
    return _make(f, argnums, wrt, has_aux, holomorphic, allow_int, with_value=True)


def grad(
    f: Callable,
    argnums: int | Sequence[int] = 0,
    *,
    wrt: filterlib.Filter = Param,
    has_aux: bool = False,
    holomorphic: bool = False,
    allow_int: bool = False,
) -> Callable:
    """Like ``jax.grad``, but module arguments are differentiated w.r.t. ``wrt``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.Linear(2, 1, ctx=nnx.context(0))
    >>> grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(model)
    >>> grads["bias"].tolist()
    [1.0]
    """
    return _make(f, argnums, wrt, has_aux, holomorphic, allow_int, with_value=False)


def _make(f, argnums, wrt, has_aux, holomorphic, allow_int, with_value):
    multiple = not isinstance(argnums, int)
    argnums_t = tuple(argnums) if multiple else (argnums,)

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        args = list(args)
        # Split every graph argument once: the differentiated part, and the rest.
        # Graph args not in argnums travel whole (their state may still change).
        graph_positions = [i for i, a in enumerate(args) if _is_graph(a)]
        flat = graph.flatten_roots(tuple(args[i] for i in graph_positions))
        diff_set = set(argnums_t)
        primals = []
        for i in argnums_t:
            if i >= len(args):
                raise TypeError(f"argnums={argnums} but only {len(args)} positional arguments were given")
            primals.append(_primal_of(args[i], i, graph_positions, flat, wrt) if i in graph_positions else args[i])
        structure_ids = {i: graph_positions.index(i) for i in graph_positions}

        def pure(*diff_values):
            leaves = [v.raw_value for v in flat.variables]
            for i, dv in zip(argnums_t, diff_values):
                if i in structure_ids:
                    indices, _ = diff_value_index[i]
                    for j, x in zip(indices, dv._leaves):
                        leaves[j] = x
            roots = graph._build(flat.graphdef, leaves)
            call_args = list(args)
            for i in graph_positions:
                call_args[i] = roots[structure_ids[i]]
            for i, dv in zip(argnums_t, diff_values):
                if i not in structure_ids:
                    call_args[i] = dv
            out = f(*call_args, **kwargs)
            new_flat = graph.flatten_roots(roots)
            if new_flat.graphdef != flat.graphdef:
                raise ValueError(
                    "The function changed the structure of a module argument (added or removed an "
                    "attribute, sub-module or Variable) inside grad. Create all Variables and "
                    "sub-modules in __init__, or make the change before calling grad."
                )
            new_leaves = [v.raw_value for v in new_flat.variables]
            if has_aux:
                value, aux = out
                return value, (aux, new_leaves)
            return out, new_leaves

        diff_value_index = {}
        for i, p in zip(argnums_t, primals):
            if i in structure_ids:
                diff_value_index[i] = p._nnx_indices

        primal_states = [p._state if i in structure_ids else p for i, p in zip(argnums_t, primals)]
        vg = jax.value_and_grad(
            pure, argnums=tuple(range(len(primal_states))), has_aux=True, holomorphic=holomorphic, allow_int=allow_int
        )
        (value, rest), grads = vg(*primal_states)
        if has_aux:
            aux, new_leaves = rest
            value = (value, aux)
        else:
            new_leaves = rest
        # Write state changes (BatchNorm stats, RNG counters...) back, like eager code would.
        for v, x in zip(flat.variables, new_leaves):
            v.raw_value = x
        grads = grads if multiple else grads[0]
        return (value, grads) if with_value else (grads, aux) if has_aux else grads

    return wrapper


class _Primal:
    __slots__ = ("_state", "_nnx_indices")

    def __init__(self, state, indices):
        self._state = state
        self._nnx_indices = indices


def _primal_of(arg, i, graph_positions, flat, wrt) -> _Primal:
    # Variables owned by argument i: those whose first path starts at its root index.
    root_index = graph_positions.index(i)
    pred = filterlib.to_predicate(wrt)
    gd = flat.graphdef
    indices = [
        j
        for j, (path, v) in enumerate(zip(gd.paths, flat.variables))
        if path[0] == root_index and pred(path[1:], v)
    ]
    paths = tuple(gd.paths[j][1:] for j in indices)
    defs = tuple(gd.vardefs[j] for j in indices)
    from nnxlite.state import StateStructure, _new_state

    st = _new_state([flat.variables[j].raw_value for j in indices], StateStructure(paths, defs))
    return _Primal(st, (indices, None))
