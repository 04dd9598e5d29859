"""``Optimizer``: an optax transformation and its state, kept next to the model.

An :class:`Optimizer` is a :class:`~nnxlite.Module` that holds

* ``model`` — the very model you passed in (a reference, not a copy);
* ``step`` — an :class:`~nnxlite.OptState` uint32 counter of updates;
* ``opt_state`` — the optax state, one :class:`~nnxlite.OptState` Variable per
  leaf, at readable paths built from optax's own key paths, e.g.
  ``opt_state/0/mu/fc1/kernel`` for Adam's first moment of ``fc1.kernel``.
  Read as an attribute it is optax's own structure (tuples, namedtuples,
  States) holding those live Variables, as in flax:
  ``optimizer.opt_state[0].mu['fc1']['kernel']``.

Because everything is Variables, ``nnx.split(optimizer)`` gives one State
holding the model *and* its optimizer state, which can cross ``jax.jit`` and
be merged back (the model inside is shared, so ``optimizer.model`` is the
merged model). Eagerly::

    >>> import jax.numpy as jnp, optax, nnxlite as nnx
    >>> model = nnx.Linear(2, 1, ctx=nnx.context(0))
    >>> optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    >>> def loss_fn(model):
    ...     return jnp.mean((model(jnp.ones((4, 2))) - 1.0) ** 2)
    >>> for _ in range(3):
    ...     optimizer.update(nnx.grad(loss_fn)(model))
    >>> int(optimizer.step.value), optimizer.model is model
    (3, True)
    >>> [("/".join(map(str, p))) for p in nnx.state(optimizer, nnx.OptState).paths()][:3]
    ['opt_state/0/count', 'opt_state/0/mu/bias', 'opt_state/0/mu/kernel']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnxlite import _epoch
from nnxlite import filters as filterlib
from nnxlite import graph
from nnxlite.module import Module
from nnxlite.pytree import Dict
from nnxlite.training import _eager_update
from nnxlite.state import State, StateStructure, _fmt_path, _new_state, _raw, raw_leaves
from nnxlite.variables import OptState, Param, Variable

__all__ = ["Optimizer"]

Path = tuple[Any, ...]
_PLAN_KEY = "_nnx_opt_plan"  # `_nnx_` attributes are invisible to the graph traversal


class _Spec:
    """Static description of the optax state: enough to rebuild it from leaves.

    ``treedef`` is optax's tree structure, ``paths`` the readable path of each
    leaf (in treedef order) below ``opt_state``, and ``param_paths`` the paths
    of the parameters the state was created for. Hashable, so it can live in a
    :class:`~nnxlite.GraphDef` as static data.
    """

    __slots__ = ("treedef", "paths", "param_paths", "_hash")

    def __init__(self, treedef: Any, paths: tuple[Path, ...], param_paths: tuple[Path, ...]):
        self.treedef = treedef
        self.paths = paths
        self.param_paths = param_paths
        self._hash = hash((treedef, paths, param_paths))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, _Spec)
            and self._hash == other._hash
            and self.paths == other.paths
            and self.param_paths == other.param_paths
            and self.treedef == other.treedef
        )

    def __repr__(self) -> str:
        return f"_Spec({len(self.paths)} optimizer leaves)"


class _Plan:
    """The live Variables an update reads and writes, valid for one structural epoch."""

    __slots__ = ("epoch", "param_vars", "structure", "opt_vars")

    def __init__(self, epoch: int, param_vars: list, structure: StateStructure, opt_vars: list):
        self.epoch = epoch
        self.param_vars = param_vars
        self.structure = structure
        self.opt_vars = opt_vars


class Optimizer(Module):
    """Wraps an optax ``GradientTransformation`` and updates ``model`` in place.

    Args:
      model: the model to train. The optimizer keeps a reference to it.
      tx: any optax gradient transformation (``optax.adam(1e-3)``, a chain...).
      wrt: a filter choosing the trained Variables (default ``nnx.Param``).
        Everything else is frozen: it gets no optimizer state and
        :meth:`update` never touches it. Compute gradients with the same
        filter: ``nnx.grad(loss_fn, wrt=wrt)``.

    Freezing a pretrained backbone::

        >>> import jax.numpy as jnp, optax, nnxlite as nnx
        >>> class Classifier(nnx.Module):
        ...     def __init__(self, ctx):
        ...         self.backbone = nnx.Linear(3, 4, ctx=ctx)
        ...         self.head = nnx.Linear(4, 2, ctx=ctx)
        >>> model = Classifier(nnx.context(0))
        >>> head_only = nnx.All(nnx.Param, nnx.PathContains("head"))
        >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=head_only)
        >>> ["/".join(map(str, p)) for p in nnx.state(optimizer)["opt_state"].paths()]
        ['0/trace/head/bias', '0/trace/head/kernel']
    """

    # Eager calls run optax as one compiled step (see nnxlite.training._eager_update);
    # set `optimizer.compile_eager = False` to dispatch every operation separately.
    compile_eager = True

    def __init__(self, model: Any, tx: optax.GradientTransformation, *, wrt: filterlib.Filter = Param):
        if isinstance(wrt, list):
            wrt = tuple(wrt)  # filters are static data and must be hashable
        filterlib.to_predicate(wrt)  # fail early on an invalid filter
        params = graph.state(model, wrt)
        if isinstance(params, tuple):  # cannot happen with one filter; keeps type checkers calm
            raise TypeError("wrt must be a single filter")
        params = _new_state(raw_leaves(params), params._structure)  # optax sees arrays, not Variables
        leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tx.init(params))
        paths = _readable_paths([kp for kp, _ in leaves_with_paths])
        self.model = model
        self.tx = tx
        self.wrt = wrt
        self.step = OptState(jnp.zeros((), jnp.uint32))
        self.opt_state = _nest(paths, [OptState(x) for _, x in leaves_with_paths])
        self._spec = _Spec(treedef, paths, params.paths())

    # -- the hot path ---------------------------------------------------------------
    def update(self, *args: Any, **kwargs: Any) -> None:
        """Apply one optimizer step: ``tx.update`` then ``optax.apply_updates``, in place.

        Both spellings work: ``optimizer.update(grads)`` and flax.nnx's
        ``optimizer.update(model, grads)`` (the model must be the one the
        optimizer was created with, or a view of it that holds the same Variables).
        As in flax, ``update(model, grads)`` uses only the gradients the optimizer's
        ``wrt`` filter selects; ``update(grads)`` requires exactly those paths and
        names any extra ones.

        Args:
          *args: ``(grads,)`` or ``(model, grads)``, where ``grads`` are the
            gradients as returned by ``nnx.grad(..., wrt=<the same filter>)``
            for the model: one entry per trained Variable, at the same paths.
          **kwargs: extra arguments for transformations that need them, e.g.
            ``value=loss`` for ``optax.contrib.reduce_on_plateau`` or
            ``optax.scale_by_zoom_linesearch``. Transformations that take no
            extra arguments ignore them (as inside ``optax.chain``).

        The parameters and the optimizer state are written only after the
        whole step is computed, so an error leaves the model unchanged. Works
        eagerly and on a merged optimizer inside ``jax.jit``.

        >>> import jax.numpy as jnp, optax, nnxlite as nnx
        >>> model = nnx.Linear(1, 1, ctx=nnx.context(0))
        >>> optimizer = nnx.Optimizer(model, optax.sgd(0.5))
        >>> grads = nnx.State({"bias": jnp.ones(1), "kernel": jnp.zeros((1, 1))})
        >>> optimizer.update(grads)
        >>> model.bias.value.tolist()
        [-0.5]
        """
        grads = self._grads_argument(args)
        plan = self._plan()
        structure = plan.structure
        grads = _adopt_grads(grads, structure, plan.param_vars, select=len(args) == 2)
        if kwargs:  # optax works on plain values: unbox States of Variables passed along (grad=grads)
            kwargs = {k: jax.tree_util.tree_map(_raw, v, is_leaf=_is_variable) for k, v in kwargs.items()}
        if self.compile_eager and _eager_update.try_compiled_update(self, plan, grads, kwargs):
            step = self.step
            step.raw_value = step.raw_value + 1
            return
        params = _new_state([v.raw_value for v in plan.param_vars], structure)
        spec: _Spec = self._spec
        opt_state = spec.treedef.unflatten([v.raw_value for v in plan.opt_vars])
        tx = self.tx
        if kwargs and not isinstance(tx, optax.GradientTransformationExtraArgs):
            tx = optax.with_extra_args_support(tx)
        updates, new_opt_state = tx.update(grads, opt_state, params, **kwargs)
        new_params = optax.apply_updates(params, updates)
        new_leaves, new_treedef = jax.tree_util.tree_flatten(new_opt_state)
        if new_treedef != spec.treedef:
            raise ValueError(
                "Optimizer.update: the transformation returned a state with a different structure "
                f"than it was created with.\n  expected: {spec.treedef}\n  found:    {new_treedef}"
            )
        param_leaves = raw_leaves(new_params) if isinstance(new_params, State) else jax.tree_util.tree_leaves(new_params)
        for v, x in zip(plan.param_vars, param_leaves):
            v.raw_value = x
        for v, x in zip(plan.opt_vars, new_leaves):
            v.raw_value = x
        step = self.step
        step.raw_value = step.raw_value + 1

    def _grads_argument(self, args: tuple) -> Any:
        """The gradients out of ``(grads,)`` or flax's ``(model, grads)``."""
        if len(args) == 1:
            return args[0]
        if len(args) == 2:
            model, grads = args
            if model is not self.model and not self._same_params(model):
                raise ValueError(
                    f"Optimizer.update(model, grads): this optimizer was created for a different "
                    f"{type(self.model).__name__} object than the {type(model).__name__} passed; pass the model "
                    f"given to nnx.Optimizer(model, tx), or call optimizer.update(grads)."
                )
            return grads
        raise TypeError(
            f"Optimizer.update takes (grads) or (model, grads), got {len(args)} positional arguments."
        )

    def _same_params(self, model: Any) -> bool:
        """Does ``model`` hold the very Variables this optimizer trains (a view: ``nnx.view(model, ...)``)?"""
        try:
            flat = graph._flat(model)
        except TypeError:
            return False
        buckets, _ = graph._groups(flat, (self.wrt,), False)
        mine = self._plan().param_vars
        return len(buckets[0]) == len(mine) and all(flat.variables[j] is v for j, v in zip(buckets[0], mine))

    @property
    def opt_state(self) -> Any:
        """The optax state in optax's own structure, holding the live :class:`~nnxlite.OptState` Variables.

        ``optimizer.opt_state[0].mu["kernel"]`` is Adam's first moment of
        ``kernel`` (a Variable: read ``[...]``, write ``.value = ...``), as in
        flax.nnx. ``nnx.state(optimizer)["opt_state"]`` is the same Variables
        by readable path.

        >>> import optax, nnxlite as nnx
        >>> optimizer = nnx.Optimizer(nnx.Linear(2, 1, ctx=nnx.context(0)), optax.adam(1e-3))
        >>> optimizer.opt_state[0].mu["kernel"].shape, int(optimizer.opt_state[0].count[...])
        ((2, 1), 0)
        """
        return self._spec.treedef.unflatten(self._plan().opt_vars)

    @opt_state.setter
    def opt_state(self, value: Any) -> None:
        if isinstance(value, Dict):  # the Variables by path (set by __init__)
            self.__dict__["opt_state"] = value
            return
        # An optax-structured state (from tx.init, or edited): write its values into the Variables.
        plain = jax.tree_util.tree_map(_raw, value, is_leaf=_is_variable)
        leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(plain)
        paths = _readable_paths([kp for kp, _ in leaves_with_paths])
        if paths != self._spec.paths:
            missing, extra = _path_diff(paths, self._spec.paths)
            raise ValueError(
                "Optimizer.opt_state: the new state does not have the structure tx.init gave; nothing was written.\n"
                + _listing("  missing", missing)
                + _listing("  unexpected", extra)
            )
        for v, (_, x) in zip(self._plan().opt_vars, leaves_with_paths):
            v.raw_value = x

    def optax_state(self) -> Any:
        """The optax state as optax sees it (the pytree ``tx.init`` returned), rebuilt from the Variables.

        >>> import optax, nnxlite as nnx
        >>> optimizer = nnx.Optimizer(nnx.Linear(2, 1, ctx=nnx.context(0)), optax.adam(1e-3))
        >>> optimizer.optax_state()[0].mu["kernel"].shape
        (2, 1)
        """
        plan = self._plan()
        return self._spec.treedef.unflatten([v.raw_value for v in plan.opt_vars])

    # -- bookkeeping ------------------------------------------------------------------
    def _plan(self) -> _Plan:
        """The Variables to read and write, cached until the next structural edit."""
        plan = self.__dict__.get(_PLAN_KEY)
        if plan is not None and plan.epoch == _epoch.current():
            return plan
        plan = self._make_plan()
        self.__dict__[_PLAN_KEY] = plan  # bypass Module.__setattr__: this is not structure
        return plan

    def _make_plan(self) -> _Plan:
        spec: _Spec = self._spec
        flat = graph._flat(self.model)
        buckets, structures = graph._groups(flat, (self.wrt,), False)
        structure = structures[0]
        if structure.paths != spec.param_paths:
            gone, new = _path_diff(structure.paths, spec.param_paths)
            raise ValueError(
                "Optimizer: the model's trained Variables changed since the optimizer was created "
                f"(wrt={self.wrt!r}).\n"
                + _listing("  new", new)
                + _listing("  removed", gone)
                + "  Create a new nnx.Optimizer after changing the model's structure."
            )
        param_vars = [flat.variables[j] for j in buckets[0]]
        opt_vars = []
        for path in spec.paths:
            node = self.__dict__["opt_state"]
            for key in path:
                node = node[key]
            if not isinstance(node, Variable):
                raise TypeError(f"Optimizer: opt_state/{_fmt_path(path)} is {type(node).__name__}, not a Variable.")
            opt_vars.append(node)
        _check_shapes_still_fit(structure.paths, param_vars, spec.paths, opt_vars)
        return _Plan(_epoch.current(), param_vars, structure, opt_vars)


def _check_shapes_still_fit(param_paths, param_vars, opt_paths, opt_vars) -> None:
    """Per-parameter optimizer state (e.g. Adam's ``mu/<param path>``) must still match its
    parameter's shape. It stops matching when a layer is replaced by one of another size
    at the same path; say so plainly instead of failing inside optax."""
    shapes = {p: np.shape(v.raw_value) for p, v in zip(param_paths, param_vars)}
    stale = []
    for path, var in zip(opt_paths, opt_vars):
        for k in range(len(path)):
            expected = shapes.get(path[k:])
            if expected is not None:
                found = np.shape(var.raw_value)
                # Compare the trailing axes only: some transformations keep a stack of
                # parameter-shaped buffers (optax.lbfgs: (memory, *shape)).
                if found[len(found) - len(expected):] != expected or len(found) < len(expected):
                    stale.append(f"opt_state/{_fmt_path(path)}: shape {found}, parameter now {expected}")
                break
    if stale:
        raise ValueError(
            "Optimizer: some parameters changed shape since the optimizer was created (was a layer "
            "replaced?), so their optimizer state no longer fits:\n  "
            + "\n  ".join(stale[:20])
            + "\n  Create a new nnx.Optimizer after changing the model."
        )


def _listing(label: str, paths: list) -> str:
    if not paths:
        return ""
    more = f" (and {len(paths) - 20} more)" if len(paths) > 20 else ""
    return f"{label} ({len(paths)}): " + ", ".join(_fmt_path(p) for p in paths[:20]) + more + "\n"


def _adopt_grads(grads: Any, structure: StateStructure, param_vars: list, select: bool = False) -> State:
    """Check ``grads`` against the trained parameters and give it their exact structure.

    Re-wrapping under the parameters' own StateStructure makes optax's
    ``tree_map`` over (grads, params, state) match without any conversion.
    """
    if isinstance(grads, State):
        st = grads._structure
        leaves = raw_leaves(grads)
        if st is not structure and st.paths is not structure.paths and st.paths != structure.paths:
            index = st.index
            if not select or not all(p in index for p in structure.paths):
                _raise_path_mismatch(st.paths, structure.paths)
            # flax's update(model, grads) keeps the gradients the optimizer's filter selects
            # (grads of every Param, wrt=nnx.LoRAParam); nnxlite's update(grads) names the extras.
            leaves = [leaves[index[p]] for p in structure.paths]
    elif isinstance(grads, Mapping):
        return _adopt_grads(State(grads), structure, param_vars, select)
    elif isinstance(grads, graph._NODE_BASES):  # module-shaped gradients (flax's tree mode)
        return _adopt_grads(graph.state(grads), structure, param_vars, True)
    else:
        raise TypeError(
            f"Optimizer.update expects the gradients as an nnx.State (from nnx.grad), got {type(grads).__name__}."
        )
    bad = []
    for path, g, v in zip(structure.paths, leaves, param_vars):
        p = v.raw_value
        g_aval = getattr(g, "aval", None)
        if g_aval is not None and g_aval is getattr(p, "aval", None):
            continue  # JAX interns avals: the usual case costs one identity check
        g_shape, p_shape = getattr(g, "shape", None), getattr(p, "shape", None)
        if g_shape is not None and p_shape is not None and tuple(g_shape) != tuple(p_shape):
            bad.append(f"  {_fmt_path(path)}: expected shape {tuple(p_shape)}, found {tuple(g_shape)}")
    if bad:
        raise ValueError("Optimizer.update: gradient shapes do not match the parameters.\n" + "\n".join(bad[:20]))
    return _new_state(leaves, structure)


def _path_diff(found: tuple, expected: tuple) -> tuple[list, list]:
    """``(missing, extra)``: the paths only in ``expected`` and those only in ``found``, in order."""
    have, want = set(found), set(expected)
    return [p for p in expected if p not in have], [p for p in found if p not in want]


def _raise_path_mismatch(found: tuple, expected: tuple) -> None:
    missing, extra = _path_diff(found, expected)
    text = "Optimizer.update: the gradients' paths do not match the trained parameters (wrt).\n"
    text += _listing("  missing from grads", missing)
    text += _listing("  unexpected in grads", extra)
    if not missing and not extra:
        text += "  (same paths in a different order)\n"
    text += "  Compute the gradients with the optimizer's filter: nnx.grad(loss_fn, wrt=optimizer.wrt)(model)."
    raise ValueError(text)


# ---------------------------------------------------------------------------------------
# Readable paths for optax state leaves
# ---------------------------------------------------------------------------------------
def _key_parts(key: Any) -> tuple:
    """One optax/JAX key-path entry as path components (a State key expands to its path)."""
    if isinstance(key, jax.tree_util.SequenceKey):
        return (key.idx,)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return (key.name,)
    if isinstance(key, jax.tree_util.DictKey):
        k = key.key
        return tuple(_component(c) for c in k) if isinstance(k, tuple) else (_component(k),)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return (key.key,)
    return (str(key),)


def _component(c: Any) -> int | str:
    return c if isinstance(c, (int, str)) and not isinstance(c, bool) else str(c)


def _readable_paths(key_paths: list) -> tuple[Path, ...]:
    """Readable, collision-free paths for the leaves; falls back to leaf numbers."""
    paths = tuple(tuple(c for k in kp for c in _key_parts(k)) for kp in key_paths)
    if _prefix_free(paths):
        return paths
    return tuple((i,) for i in range(len(paths)))


def _prefix_free(paths: tuple[Path, ...]) -> bool:
    """True when no path is empty, repeated, or a prefix of another (so they nest as dicts)."""
    seen = set(paths)
    if len(seen) != len(paths) or () in seen:
        return False
    return not any(p[:i] in seen for p in paths for i in range(1, len(p)))


def _is_variable(x: Any) -> bool:
    return isinstance(x, Variable)


def _nest(paths: tuple[Path, ...], leaves: list) -> dict:
    out: dict = {}
    for path, leaf in zip(paths, leaves):
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = leaf
    return out


class ModelAndOptimizer(Optimizer):
    """flax.nnx's name for an optimizer that keeps its model (every nnxlite Optimizer does).

    >>> import optax, nnxlite as nnx
    >>> opt = nnx.ModelAndOptimizer(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), optax.sgd(0.1), wrt=nnx.Param)
    >>> isinstance(opt, nnx.Optimizer)
    True
    """
