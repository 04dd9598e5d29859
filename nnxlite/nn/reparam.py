"""Weight reparametrizations that wrap a layer: :class:`WeightNorm` and :class:`SpectralNorm`.

Both compute normalized weights from the wrapped layer's Params and run the
layer with them. The layer's own Variables keep the *unnormalized* values
(the normalized ones are swapped in for the call only), so gradients and
optimizers update the underlying weights, as with PyTorch's
``torch.nn.utils.weight_norm``/``spectral_norm``. flax.nnx instead writes
the normalized values into the layer at every call; the outputs of a call
are the same (tested), but after a call flax's stored kernel is the
normalized one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from nnxlite import filters as filterlib
from nnxlite._rngs_arg import one_rng_arg
from nnxlite.graph import iter_graph
from nnxlite.module import Dict, Module
from nnxlite.nn import dtypes, initializers
from nnxlite.nn.dtypes import result_dtype
from nnxlite.nn.initializers import Initializer
from nnxlite.nn.normalization import _axes, _static_axes
from nnxlite.rng import Context
from nnxlite.variables import BatchStat, Param, Variable

__all__ = ["WeightNorm", "SpectralNorm"]


def _l2_normalize(x: jax.Array, axis: Any = None, eps: float = 1e-12) -> jax.Array:
    return x * jax.lax.rsqrt((x * x).sum(axis=axis, keepdims=True) + eps)


def _params_of(layer: Module) -> list[tuple[tuple, Variable]]:
    """``(path, Param)`` of the layer, in canonical path order."""
    return [(p, v) for p, v in iter_graph(layer) if isinstance(v, Param)]


def _key(path: tuple) -> str:
    # One string per parameter path (a Dict key); '.' since '/' separates path components in State.
    return ".".join(map(str, path))


def _call_with(layer: Module, swaps: list[tuple[Variable, jax.Array]], args: tuple, kwargs: dict) -> Any:
    """Call ``layer`` with some Variables holding other values for the call, then put the originals back."""
    old = [(v, v.raw_value) for v, _ in swaps]
    for v, new in swaps:
        v.raw_value = new
    try:
        return layer(*args, **kwargs)
    finally:
        for v, x in old:
            v.raw_value = x


def _missing(what: str, key: str) -> RuntimeError:
    return RuntimeError(
        f"{what}: no state for the wrapped layer's parameter {key!r}; its Params changed after the wrapper "
        "was created. Create the wrapper after the layer is complete."
    )


class WeightNorm(Module):
    """Weight normalization: ``w = scale * v / ||v||``, the norm over every axis but ``feature_axes``.

    Wraps ``layer_instance``; the Params matching ``variable_filter`` (the
    kernels) are normalized before each call. ``scales`` holds one trainable
    ``Param`` per normalized weight (shape: the weight's feature axes).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> layer = nnx.WeightNorm(nnx.Linear(4, 3, ctx=nnx.context(0)), ctx=nnx.context(1))
    >>> layer.scales["kernel"].shape
    (3,)
    >>> layer(jnp.ones((2, 4))).shape
    (2, 3)

    Args:
      layer_instance: the layer to wrap.
      feature_axes: the axes of each weight kept apart (one norm per index);
        ``None`` normalizes the whole weight.
      use_scale: learn a scale per feature (``scales``).
      scale_init: initializer of the scales (ones).
      epsilon: added to the squared norm.
      dtype, param_dtype: computation dtype of the normalized weights; storage dtype of the scales.
      variable_filter: which Params to normalize (paths containing ``'kernel'``).
      promote_dtype: casts ``(weight, scale)`` before normalizing.
      ctx (or rngs): a Context for the scales' keys (optional with the default ``ones`` init).

    Difference from flax.nnx: flax stores the scales as plain arrays (not
    trained by ``nnx.Optimizer``); here they are Params.
    """

    def __init__(
        self,
        layer_instance: Module,
        *,
        feature_axes: Any = -1,
        use_scale: bool = True,
        scale_init: Initializer = initializers.ones,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        variable_filter: filterlib.Filter = filterlib.PathContains("kernel"),
        promote_dtype: Any = dtypes.promote_dtype,
        ctx: Context | None = None,
        rngs: Context | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, "WeightNorm")
        self.promote_dtype = promote_dtype
        self.layer_instance = layer_instance
        self.feature_axes = () if feature_axes is None else _static_axes(feature_axes)
        self.use_scale = use_scale
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.variable_filter = variable_filter
        self.scales = None
        if use_scale:
            scales = {}
            for path, v in self._targets():
                shape = tuple(v.shape[a] for a in self._feature_axes(v.ndim))
                key = ctx.make_rng("params") if ctx is not None else jax.random.PRNGKey(0)
                scales[_key(path)] = Param(scale_init(key, shape, param_dtype))
            self.scales = Dict(scales)

    def _targets(self) -> list[tuple[tuple, Variable]]:
        pred = filterlib.to_predicate(self.variable_filter)
        return [(p, v) for p, v in _params_of(self.layer_instance) if pred(p, v)]

    def _feature_axes(self, ndim: int) -> tuple[int, ...]:
        return _axes(ndim, self.feature_axes) if self.feature_axes != () else ()

    def __call__(self, x: jax.Array, *args: Any, **kwargs: Any) -> Any:
        swaps = []
        for path, v in self._targets():
            w = v.value
            feature_axes = self._feature_axes(w.ndim)
            reduction_axes = tuple(a for a in range(w.ndim) if a not in feature_axes)
            if self.use_scale:
                key = _key(path)
                if key not in self.scales:
                    raise _missing("WeightNorm", key)
                w, scale = self.promote_dtype((w, self.scales[key].value), dtype=self.dtype)
            w_bar = _l2_normalize(w, axis=reduction_axes, eps=self.epsilon)
            parts = [w]
            if self.use_scale:
                shape = [w.shape[a] if a in feature_axes else 1 for a in range(w.ndim)]
                w_bar = w_bar * scale.reshape(shape)
                parts.append(scale)
            swaps.append((v, jnp.asarray(w_bar, result_dtype(*parts, dtype=self.dtype))))
        return _call_with(self.layer_instance, swaps, (x, *args), kwargs)


class SpectralNorm(Module):
    """Spectral normalization: each weight matrix divided by its largest singular value.

    The singular value is estimated by power iteration (``n_steps`` per call)
    from a vector ``u`` kept, with the estimate ``sigma``, as ``nnx.BatchStat``
    Variables in ``batch_stats``: they update at every training call (also
    under ``nnx.jit``, where the new values are written back) and stay fixed
    with ``update_stats=False`` or after ``model.eval()``. Weights with more
    than two axes are viewed as ``(-1, last axis)`` matrices; vectors and
    scalars are left alone.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> layer = nnx.SpectralNorm(nnx.Linear(4, 3, ctx=nnx.context(0)), ctx=nnx.context(1))
    >>> layer.batch_stats["kernel"]["u"].shape
    (1, 3)
    >>> step = nnx.jit(lambda m, x: m(x))
    >>> for _ in range(30):
    ...     y = step(layer, jnp.ones((2, 4)))
    >>> import numpy as np
    >>> bool(np.isclose(layer.batch_stats["kernel"]["sigma"].value,
    ...                 np.linalg.norm(np.asarray(layer.layer_instance.kernel.value), 2), rtol=1e-3))
    True

    Args:
      layer_instance: the layer to wrap.
      n_steps: power-iteration steps per call.
      epsilon: added inside the l2 normalizations.
      dtype, param_dtype: computation dtype of the normalized weights; storage dtype of ``u``/``sigma``.
      error_on_non_matrix: raise for weights with more than two axes instead of flattening them.
      update_stats: the default for the call's ``update_stats``.
      ctx (or rngs): the Context giving the ``params`` keys for the initial ``u``.
    """

    def __init__(
        self,
        layer_instance: Module,
        *,
        n_steps: int = 1,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        error_on_non_matrix: bool = False,
        update_stats: bool = True,
        ctx: Context | None = None,
        rngs: Context | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, "SpectralNorm", required=True)
        self.layer_instance = layer_instance
        self.n_steps = n_steps
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.error_on_non_matrix = error_on_non_matrix
        self.use_running_average = not update_stats  # so model.eval() / model.train() switch it
        stats = {}
        for path, v in self._targets():
            u = initializers.normal()(ctx.make_rng("params"), (1, v.shape[-1]), param_dtype)
            stats[_key(path)] = Dict(u=BatchStat(u), sigma=BatchStat(jnp.ones((), param_dtype)))
        self.batch_stats = Dict(stats)

    def _targets(self) -> list[tuple[tuple, Variable]]:
        out = []
        for path, v in _params_of(self.layer_instance):
            if v.ndim <= 1 or self.n_steps < 1:
                continue
            if v.ndim > 2 and self.error_on_non_matrix:
                raise ValueError(
                    f"SpectralNorm: the wrapped layer's parameter {_key(path)!r} has shape {tuple(v.shape)} "
                    "(more than 2 axes) and error_on_non_matrix=True; pass error_on_non_matrix=False to view "
                    "it as a (-1, last axis) matrix."
                )
            out.append((path, v))
        return out

    def __call__(self, x: jax.Array, update_stats: bool | None = None) -> Any:
        update = (not self.use_running_average) if update_stats is None else update_stats
        swaps = []
        for path, v in self._targets():
            key = _key(path)
            if key not in self.batch_stats:
                raise _missing("SpectralNorm", key)
            stats = self.batch_stats[key]
            w = v.value
            matrix = w.reshape(-1, w.shape[-1])
            u = stats["u"].value
            for _ in range(self.n_steps):
                v_vec = _l2_normalize(u @ matrix.T, eps=self.epsilon)
                u = _l2_normalize(v_vec @ matrix, eps=self.epsilon)
            u, v_vec = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v_vec)
            sigma = (v_vec @ matrix @ u.T)[0, 0]
            normalized = (matrix / jnp.where(sigma != 0, sigma, 1)).reshape(w.shape)
            if update:
                stats["u"].value = u
                stats["sigma"].value = sigma
            swaps.append((v, jnp.asarray(normalized, result_dtype(w, u, v_vec, sigma, dtype=self.dtype))))
        return _call_with(self.layer_instance, swaps, (x,), {})
