"""Normalization layers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from nnxlite.module import Module
from nnxlite.nn import initializers
from nnxlite.nn.linear import _promote
from nnxlite.rng import Context
from nnxlite.variables import BatchStat, Param

__all__ = ["BatchNorm"]


class BatchNorm(Module):
    """Batch normalization over all axes but ``axis``, with running averages.

    In training mode (``use_running_average=False``) it normalizes with the
    batch statistics and updates ``mean``/``var`` (BatchStat Variables) as
    ``ra = momentum * ra + (1 - momentum) * batch``; in eval mode it uses them.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> bn = nnx.BatchNorm(3, ctx=nnx.context(0))
    >>> y = bn(jnp.arange(6.0).reshape(2, 3))
    >>> [round(float(m), 3) for m in bn.mean.value]
    [0.015, 0.025, 0.035]

    Args:
      num_features: size of the feature axis.
      use_running_average: default mode; ``model.eval()``/``.train()`` flip it,
        and the call keyword overrides it.
      axis: the feature axis.
      momentum, epsilon: running-average decay and variance epsilon.
      use_bias, use_scale: learnable shift (``bias``) and scale (``scale``).
      axis_name: a vmap/pmap axis name to average statistics over.
      ctx: accepted for a uniform constructor signature (no randomness is used).
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool = False,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init=initializers.zeros,
        scale_init=initializers.ones,
        axis_name: str | None = None,
        ctx: Context | None = None,
    ):
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
        shape = (num_features,)
        self.mean = BatchStat(jnp.zeros(shape, jnp.float32))
        self.var = BatchStat(jnp.ones(shape, jnp.float32))
        key = ctx.make_rng("params") if ctx is not None else jax.random.PRNGKey(0)
        self.scale = Param(scale_init(key, shape, param_dtype)) if use_scale else None
        self.bias = Param(bias_init(key, shape, param_dtype)) if use_bias else None

    def __call__(
        self,
        x: jax.Array,
        *,
        use_running_average: bool | None = None,
        mask: jax.Array | None = None,
        ctx: Context | None = None,
    ) -> jax.Array:
        if use_running_average is None:
            use_running_average = self.use_running_average
        axis = self.axis % x.ndim
        reduce_axes = tuple(i for i in range(x.ndim) if i != axis)
        feature_shape = [1] * x.ndim
        feature_shape[axis] = self.num_features
        if use_running_average:
            mean, var = self.mean.value, self.var.value
        else:
            xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            mean = jnp.mean(xf, axis=reduce_axes, where=mask)
            mean_sq = jnp.mean(jnp.square(xf), axis=reduce_axes, where=mask)
            if self.axis_name is not None:
                mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
            var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
            m = self.momentum
            self.mean.value = m * self.mean.value + (1 - m) * mean
            self.var.value = m * self.var.value + (1 - m) * var
        scale = self.scale.value if self.scale is not None else None
        bias = self.bias.value if self.bias is not None else None
        y = (x - mean.reshape(feature_shape)) * jax.lax.rsqrt(var.reshape(feature_shape) + self.epsilon)
        if scale is not None:
            y = y * scale.reshape(feature_shape)
        if bias is not None:
            y = y + bias.reshape(feature_shape)
        (y,) = _promote(self.dtype or jnp.result_type(x, *(p for p in (scale, bias) if p is not None)), y)
        return y
