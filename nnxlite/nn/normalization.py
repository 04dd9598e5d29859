"""Normalization layers: :class:`BatchNorm`, :class:`LayerNorm`, :class:`RMSNorm`, :class:`GroupNorm`.

Every layer normalizes as ``(x - mean) / sqrt(var + epsilon)``, then
multiplies by a learned ``scale`` and adds a learned ``bias`` (both
``nnx.Param`` of shape ``(num_features,)``, named as in flax.nnx). What
differs is the set of axes the statistics are taken over:

* BatchNorm — over the batch (every axis but the feature axis), with running
  averages for evaluation;
* LayerNorm — over the feature axis of each example;
* RMSNorm — like LayerNorm without subtracting the mean (and no bias);
* GroupNorm — over groups of channels (and the spatial axes) of each example.

Statistics are computed in at least float32, even for half-precision inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from nnxlite.module import Module
from nnxlite.nn import initializers
from nnxlite.nn import dtypes
from nnxlite.nn._sharding import broadcast_like, match
from nnxlite.nn.dtypes import result_dtype
from nnxlite.nn.initializers import Initializer
from nnxlite.functional import param_from_init
from nnxlite.rng import Context
from nnxlite.variables import BatchStat
from nnxlite._rngs_arg import one_rng_arg

__all__ = ["BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm"]

Axes = int | Sequence[int]


def _axes(ndim: int, axes: Axes) -> tuple[int, ...]:
    """Sorted, non-negative, de-duplicated axes."""
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return tuple(sorted({a % ndim for a in axes}))


def _static_axes(axes: Axes) -> int | tuple[int, ...]:
    """Axes as given, with a sequence made a tuple: static attributes must be hashable."""
    return axes if isinstance(axes, int) else tuple(axes)


def _freeze(groups: Any) -> Any:
    """Device groups as nested tuples: static attributes must be hashable."""
    return None if groups is None else tuple(tuple(g) for g in groups)


def _moments(
    x: jax.Array,
    axes: tuple[int, ...],
    *,
    dtype: Any,
    use_mean: bool = True,
    use_fast_variance: bool = True,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of ``x`` over ``axes`` (mean is 0 when ``use_mean=False``).

    Computed in ``dtype`` promoted to at least float32. With an ``axis_name``
    the per-device means are averaged with one ``lax.pmean``. The fast
    variance is ``E[x^2] - E[x]^2`` (one pass, clipped at 0); the slow one is
    ``E[(x - E[x])^2]``.
    """
    x = jnp.asarray(x, jnp.promote_types(dtype or x.dtype, jnp.float32))

    def mean(*values):
        out = tuple(v.mean(axes, where=mask) for v in values)
        if axis_name is not None:
            out = lax.pmean(out, axis_name, axis_index_groups=axis_index_groups)
        return out

    if not use_mean:
        (var,) = mean(jnp.square(x))
        return jnp.zeros_like(var), var
    if use_fast_variance:
        mu, mu2 = mean(x, jnp.square(x))
        return mu, jnp.maximum(mu2 - jnp.square(mu), 0.0)
    (mu,) = mean(x)
    (var,) = mean(jnp.square(x - jnp.expand_dims(mu, axes)))
    return mu, var


def _normalize(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    reduction_axes: tuple[int, ...],
    feature_axes: tuple[int, ...],
    dtype: Any,
    epsilon: float,
) -> jax.Array:
    """``(x - mean) * rsqrt(var + eps) * scale + bias``, broadcasting stats and params into place."""
    stats_shape = tuple(1 if i in reduction_axes else n for i, n in enumerate(x.shape))
    feature_shape = tuple(n if i in feature_axes else 1 for i, n in enumerate(x.shape))
    # broadcast_like is a reshape; on an explicit-sharding mesh it also lays the operand out like x.
    multiplier = lax.rsqrt(broadcast_like(var, stats_shape, x) + epsilon)
    if scale is not None:
        multiplier = multiplier * broadcast_like(scale, feature_shape, x)
    y = (x - broadcast_like(mean, stats_shape, x)) * multiplier
    if bias is not None:
        y = y + broadcast_like(bias, feature_shape, x)
    return jnp.asarray(y, result_dtype(x, scale, bias, dtype=dtype))


def _feature_param(
    use: bool, init: Initializer, num_features: int, param_dtype: Any, ctx: Context | None,
    metadata: Mapping[str, Any] | None = None,
):
    """A ``Param`` of shape ``(num_features,)`` made by ``init``, or None when unused.

    Each parameter draws its own ``params`` key; the default initializers
    (ones, zeros) ignore the key, so the Context is optional. ``metadata``
    (flax's ``scale_metadata=``/``bias_metadata=``) lands on the Param.
    """
    if not use:
        return None
    key = ctx.make_rng("params") if ctx is not None else jax.random.PRNGKey(0)
    return param_from_init(init, key, (num_features,), param_dtype, **(metadata or {}))


def _promote(module: Module, *arrays: Any) -> tuple:
    """``arrays`` cast by the module's ``promote_dtype`` (called with one tuple, flax's convention)."""
    return module.promote_dtype(arrays, dtype=module.dtype)


def _params(module: Module) -> tuple[jax.Array | None, jax.Array | None]:
    scale = module.scale.value if module.scale is not None else None
    bias = getattr(module, "bias", None)
    return scale, (bias.value if bias is not None else None)


def _check_features(module: Module, x: jax.Array, axes: tuple[int, ...]) -> None:
    size = 1
    for a in axes:
        size *= x.shape[a]
    if size != module.num_features:
        raise ValueError(
            f"{type(module).__name__}(num_features={module.num_features}) expected feature axes {axes} of the "
            f"inputs to hold {module.num_features} features, got shape {tuple(x.shape)}."
        )


def _normalize_over_axes(module: Module, x: jax.Array, mask: jax.Array | None, *, use_mean: bool) -> jax.Array:
    """LayerNorm (``use_mean=True``) and RMSNorm (``use_mean=False``, no bias) over the module's axes."""
    reduction_axes, feature_axes = _axes(x.ndim, module.reduction_axes), _axes(x.ndim, module.feature_axes)
    _check_features(module, x, feature_axes)
    scale, bias = _params(module)
    x, scale, bias = _promote(module, x, scale, bias)
    mean, var = _moments(
        x, reduction_axes, dtype=module.dtype, use_mean=use_mean, use_fast_variance=module.use_fast_variance,
        axis_name=module.axis_name, axis_index_groups=module.axis_index_groups, mask=mask,
    )
    return _normalize(x, mean, var, scale, bias, reduction_axes, feature_axes, module.dtype, module.epsilon)


class BatchNorm(Module):
    """Batch normalization over all axes but ``axis``, with running averages.

    In training mode (``use_running_average=False``) it normalizes with the
    batch statistics and updates ``mean``/``var`` (``nnx.BatchStat``) as
    ``ra = momentum * ra + (1 - momentum) * batch``; in evaluation mode it
    normalizes with them and changes nothing.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> bn = nnx.BatchNorm(3, ctx=nnx.context(0))
    >>> y = bn(jnp.arange(6.0).reshape(2, 3))
    >>> [round(float(m), 3) for m in bn.mean.value]
    [0.015, 0.025, 0.035]
    >>> y_eval = bn(jnp.ones((2, 3)), use_running_average=True)   # per-call override
    >>> [round(float(m), 3) for m in bn.mean.value]                # unchanged
    [0.015, 0.025, 0.035]

    Args:
      num_features: size of the feature axis.
      use_running_average: the default mode; ``model.eval()``/``.train()``
        set it, and the call keyword overrides it for one call.
      axis: the feature axis.
      momentum, epsilon: running-average decay and variance epsilon.
      dtype, param_dtype: computation and parameter dtypes.
      use_bias, use_scale: learnable shift (``bias``) and scale (``scale``).
      bias_init, scale_init: their initializers.
      axis_name, axis_index_groups: a ``pmap``/``shard_map`` axis name (and
        device groups) to average the batch statistics over.
      use_fast_variance: one-pass ``E[x^2] - E[x]^2`` (faster, less precise).
      promote_dtype: ``fn((x, ...), dtype=...)`` casting the operands
        (default :func:`nnxlite.nn.dtypes.promote_dtype`).
      ctx: a Context for the initializers' keys (optional: the default
        initializers need none); ``rngs=`` is the same parameter.
      bias_metadata, scale_metadata: metadata set on ``bias``/``scale``.
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros,
        scale_init: Initializer = initializers.ones,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = dtypes.promote_dtype,
        ctx: Context | None = None,
        rngs: Context | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
        scale_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, "BatchNorm")
        self.promote_dtype = promote_dtype
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = _freeze(axis_index_groups)
        self.use_fast_variance = use_fast_variance
        # Recipes too (zeros/ones), so nnx.transform's init_fn starts from fresh statistics.
        self.mean = param_from_init(initializers.zeros, None, (num_features,), jnp.float32, variable_type=BatchStat)
        self.var = param_from_init(initializers.ones, None, (num_features,), jnp.float32, variable_type=BatchStat)
        self.scale = _feature_param(use_scale, scale_init, num_features, param_dtype, ctx, scale_metadata)
        self.bias = _feature_param(use_bias, bias_init, num_features, param_dtype, ctx, bias_metadata)

    def __call__(
        self,
        x: jax.Array,
        use_running_average: bool | None = None,
        *,
        mask: jax.Array | None = None,
        ctx: Context | None = None,
        rngs: Context | None = None,
    ) -> jax.Array:
        """Normalize ``x``; ``mask`` (broadcastable to ``x``) selects the entries the statistics use.

        ``ctx`` (or ``rngs``) is accepted (and ignored) so a model can pass
        one Context to every layer.
        """
        one_rng_arg(ctx, rngs, "BatchNorm.__call__")
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average is None:
            raise ValueError(
                "BatchNorm: use_running_average is None; pass it to the constructor or the call, "
                "or set the mode with model.train() / model.eval()."
            )
        feature_axes = _axes(x.ndim, self.axis)
        _check_features(self, x, feature_axes)
        reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        scale, bias = _params(self)
        x, mean, var, scale, bias = _promote(self, x, self.mean.value, self.var.value, scale, bias)
        if not use_running_average:
            mean, var = _moments(
                x, reduction_axes, dtype=self.dtype, use_fast_variance=self.use_fast_variance,
                axis_name=self.axis_name, axis_index_groups=self.axis_index_groups, mask=mask,
            )
            m = self.momentum
            # (match: on an explicit-sharding mesh, the batch statistics take the running ones' layout)
            self.mean.value = m * self.mean.value + (1 - m) * match(mean, self.mean.value)
            self.var.value = m * self.var.value + (1 - m) * match(var, self.var.value)
        return _normalize(x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype, self.epsilon)

    def set_view(self, use_running_average: bool | None = None):
        """Settings for ``nnx.view``.

        Args:
          use_running_average: if True, the stored batch statistics will be
            used instead of computing the batch statistics on the input.
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average


class LayerNorm(Module):
    """Layer normalization: normalize each example over its feature axis.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> ln = nnx.LayerNorm(4, ctx=nnx.context(0))
    >>> y = ln(jnp.array([[1.0, 2.0, 3.0, 4.0]]))
    >>> round(float(y.mean()), 6), round(float(y.std()), 3)
    (0.0, 1.0)

    Args:
      num_features: number of features (the product of the sizes of
        ``feature_axes``).
      epsilon: added to the variance.
      dtype, param_dtype: computation and parameter dtypes.
      use_bias, use_scale, bias_init, scale_init: the learned ``bias``/``scale``.
      reduction_axes: the axes the statistics are taken over (default: last).
      feature_axes: the axes ``scale``/``bias`` apply to (default: last).
      axis_name, axis_index_groups: average statistics across devices.
      use_fast_variance: one-pass ``E[x^2] - E[x]^2``.
      promote_dtype: ``fn((x, scale, bias), dtype=...)`` casting the operands.
      ctx: optional Context for the initializers' keys (``rngs=`` is the same
        parameter).
      bias_metadata, scale_metadata: metadata set on ``bias``/``scale``.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros,
        scale_init: Initializer = initializers.ones,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = dtypes.promote_dtype,
        ctx: Context | None = None,
        rngs: Context | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
        scale_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, type(self).__name__)
        self.promote_dtype = promote_dtype
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.reduction_axes = _static_axes(reduction_axes)
        self.feature_axes = _static_axes(feature_axes)
        self.axis_name = axis_name
        self.axis_index_groups = _freeze(axis_index_groups)
        self.use_fast_variance = use_fast_variance
        self.scale = _feature_param(use_scale, scale_init, num_features, param_dtype, ctx, scale_metadata)
        self.bias = _feature_param(use_bias, bias_init, num_features, param_dtype, ctx, bias_metadata)

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalize ``x``; ``mask`` selects the entries the statistics use."""
        return _normalize_over_axes(self, x, mask, use_mean=True)


class RMSNorm(Module):
    """Root-mean-square normalization: ``x / sqrt(mean(x^2) + epsilon) * scale``.

    Unlike LayerNorm it does not subtract the mean and has no bias.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> rms = nnx.RMSNorm(2, ctx=nnx.context(0))
    >>> [round(v, 4) for v in rms(jnp.array([3.0, 4.0])).tolist()]   # rms = sqrt(12.5)
    [0.8485, 1.1314]

    Args:
      num_features, epsilon, dtype, param_dtype, use_scale, scale_init: as for :class:`LayerNorm`.
      reduction_axes, feature_axes, axis_name, axis_index_groups: as for :class:`LayerNorm`.
      use_fast_variance, promote_dtype: as for :class:`LayerNorm`.
      ctx (or rngs), scale_metadata: as for :class:`LayerNorm`.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_scale: bool = True,
        scale_init: Initializer = initializers.ones,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = dtypes.promote_dtype,
        ctx: Context | None = None,
        rngs: Context | None = None,
        scale_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, type(self).__name__)
        self.promote_dtype = promote_dtype
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_scale = use_scale
        self.reduction_axes = _static_axes(reduction_axes)
        self.feature_axes = _static_axes(feature_axes)
        self.axis_name = axis_name
        self.axis_index_groups = _freeze(axis_index_groups)
        self.use_fast_variance = use_fast_variance
        self.scale = _feature_param(use_scale, scale_init, num_features, param_dtype, ctx, scale_metadata)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Normalize ``x``; ``mask`` selects the entries the statistics use."""
        return _normalize_over_axes(self, x, mask, use_mean=False)


class GroupNorm(Module):
    """Group normalization: split the channels (last axis) into groups, normalize each group.

    The statistics of a group are taken over its channels and, by default,
    every axis between the leading batch axis and the channels (the spatial
    axes); ``num_groups=1`` is LayerNorm over all non-batch axes, and
    ``group_size=1`` is instance normalization.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> gn = nnx.GroupNorm(6, num_groups=3, ctx=nnx.context(0))
    >>> gn(jnp.ones((2, 5, 5, 6))).shape
    (2, 5, 5, 6)

    Args:
      num_features: number of channels.
      num_groups: number of groups; pass ``num_groups=None`` to give
        ``group_size`` instead. Either must divide ``num_features``.
      group_size: channels per group.
      reduction_axes: the axes the statistics are taken over; must include
        the last axis. Default: every axis but the first (the batch axis).
      epsilon, dtype, param_dtype, use_bias, use_scale, bias_init, scale_init: as for :class:`LayerNorm`.
      axis_name, axis_index_groups, use_fast_variance, promote_dtype: as for :class:`LayerNorm`.
      ctx (or rngs), bias_metadata, scale_metadata: as for :class:`LayerNorm`.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = 32,
        group_size: int | None = None,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros,
        scale_init: Initializer = initializers.ones,
        reduction_axes: Axes | None = None,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = dtypes.promote_dtype,
        ctx: Context | None = None,
        rngs: Context | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
        scale_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, "GroupNorm")
        self.promote_dtype = promote_dtype
        if (num_groups is None) == (group_size is None):
            raise ValueError(
                f"GroupNorm: give exactly one of num_groups and group_size (got num_groups={num_groups}, "
                f"group_size={group_size}); to use group_size, also pass num_groups=None."
            )
        if group_size is not None:
            if group_size <= 0 or num_features % group_size:
                raise ValueError(f"GroupNorm: group_size={group_size} does not divide num_features={num_features}.")
            num_groups = num_features // group_size
        elif num_groups <= 0 or num_features % num_groups:
            raise ValueError(
                f"GroupNorm: num_groups={num_groups} does not divide num_features={num_features}; "
                "choose a divisor (the default is 32)."
            )
        self.num_features = num_features
        self.num_groups = num_groups
        self.group_size = num_features // num_groups
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.reduction_axes = None if reduction_axes is None else _static_axes(reduction_axes)
        self.axis_name = axis_name
        self.axis_index_groups = _freeze(axis_index_groups)
        self.use_fast_variance = use_fast_variance
        self.scale = _feature_param(use_scale, scale_init, num_features, param_dtype, ctx, scale_metadata)
        self.bias = _feature_param(use_bias, bias_init, num_features, param_dtype, ctx, bias_metadata)

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalize ``x`` (channels last); ``mask`` selects the entries the statistics use."""
        last = x.ndim - 1
        _check_features(self, x, (last,))
        if self.reduction_axes is None:
            reduction_axes = tuple(range(1, x.ndim))
        else:
            reduction_axes = _axes(x.ndim, self.reduction_axes)
            if last not in reduction_axes:
                raise ValueError(f"GroupNorm: reduction_axes={self.reduction_axes} must include the last (channel) axis.")
        scale, bias = _params(self)
        x, scale, bias = _promote(self, x, scale, bias)
        # View the channels as (groups, group_size) and reduce over the group's own axis.
        grouped = x.reshape(x.shape[:-1] + (self.num_groups, self.group_size))
        if mask is not None:
            mask = jnp.broadcast_to(mask, x.shape).reshape(grouped.shape)
        group_axes = tuple(a for a in reduction_axes if a != last) + (last + 1,)
        mean, var = _moments(
            grouped, group_axes, dtype=self.dtype, use_fast_variance=self.use_fast_variance,
            axis_name=self.axis_name, axis_index_groups=self.axis_index_groups, mask=mask,
        )
        # Back to one statistic per channel: repeat each group's value group_size times.
        keep = tuple(1 if a in group_axes else n for a, n in enumerate(grouped.shape))
        stats_shape = tuple(1 if a in reduction_axes and a != last else n for a, n in enumerate(x.shape))
        mean, var = (
            jnp.broadcast_to(stat.reshape(keep[:-1] + (1,)), keep[:-1] + (self.group_size,)).reshape(stats_shape)
            for stat in (mean, var)
        )
        stat_axes = tuple(a for a in reduction_axes if a != last)
        return _normalize(x, mean, var, scale, bias, stat_axes, (last,), self.dtype, self.epsilon)


class InstanceNorm(Module):
    """Instance normalization: each example and each channel normalized over the remaining axes.

    The statistics are taken over every axis except the leading batch axis and
    the ``feature_axes`` (e.g. over height and width of an image, per example
    and channel); ``scale`` and ``bias`` have shape ``(num_features,)``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> norm = nnx.InstanceNorm(3, ctx=nnx.context(0))
    >>> x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    >>> y = norm(x)
    >>> bool(jnp.allclose(y.mean((1, 2)), 0, atol=1e-5)), bool(jnp.allclose(y.std((1, 2)), 1, atol=1e-3))
    (True, True)

    Args:
      num_features: number of features (the size of the feature axes).
      feature_axes: the axes the parameters live on (not reduced; not axis 0).
      epsilon, dtype, param_dtype, use_bias, use_scale, bias_init, scale_init: as for :class:`LayerNorm`.
      axis_name, axis_index_groups, use_fast_variance, promote_dtype: as for :class:`LayerNorm`.
      ctx (or rngs), bias_metadata, scale_metadata: as for :class:`LayerNorm`.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros,
        scale_init: Initializer = initializers.ones,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = dtypes.promote_dtype,
        ctx: Context | None = None,
        rngs: Context | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
        scale_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, "InstanceNorm")
        self.promote_dtype = promote_dtype
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.feature_axes = _static_axes(feature_axes)
        self.axis_name = axis_name
        self.axis_index_groups = _freeze(axis_index_groups)
        self.use_fast_variance = use_fast_variance
        self.scale = _feature_param(use_scale, scale_init, num_features, param_dtype, ctx, scale_metadata)
        self.bias = _feature_param(use_bias, bias_init, num_features, param_dtype, ctx, bias_metadata)

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalize ``x``; ``mask`` selects the entries the statistics use."""
        feature_axes = _axes(x.ndim, self.feature_axes)
        if 0 in feature_axes:
            raise ValueError(
                f"InstanceNorm: feature_axes={self.feature_axes} include axis 0 of inputs of shape "
                f"{tuple(x.shape)}; axis 0 is the batch axis. Give the channel axes (e.g. -1)."
            )
        _check_features(self, x, feature_axes)
        reduction_axes = tuple(a for a in range(1, x.ndim) if a not in feature_axes)
        scale, bias = _params(self)
        x, scale, bias = _promote(self, x, scale, bias)
        mean, var = _moments(
            x, reduction_axes, dtype=self.dtype, use_fast_variance=self.use_fast_variance,
            axis_name=self.axis_name, axis_index_groups=self.axis_index_groups, mask=mask,
        )
        return _normalize(x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype, self.epsilon)
