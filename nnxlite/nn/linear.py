"""Dense layers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from nnxlite.module import Module
from nnxlite.nn import initializers
from nnxlite.rng import Context
from nnxlite.variables import Param

__all__ = ["Linear"]


class Linear(Module):
    """``y = x @ kernel + bias`` with ``kernel`` of shape ``(in_features, out_features)``.

    Parameter names and layout match flax.nnx, so weights move between the
    two by path.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> layer = nnx.Linear(3, 4, ctx=nnx.context(0))
    >>> layer(jnp.ones((2, 3))).shape
    (2, 4)

    Args:
      in_features, out_features: input and output widths.
      use_bias: whether to add a bias.
      dtype: computation dtype (default: inferred from inputs and params).
      param_dtype: dtype the parameters are stored in.
      precision: matmul precision passed to ``jax.lax.dot_general``.
      kernel_init, bias_init: initializers ``(key, shape, dtype) -> array``.
      ctx: the :class:`~nnxlite.Context` to draw the ``params`` key from.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init=initializers.default_kernel_init,
        bias_init=initializers.default_bias_init,
        ctx: Context,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.kernel = Param(kernel_init(ctx.make_rng("params"), (in_features, out_features), param_dtype))
        self.bias = Param(bias_init(ctx.make_rng("params"), (out_features,), param_dtype)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel.value
        bias = self.bias.value if self.bias is not None else None
        x, kernel, bias = _promote(self.dtype, x, kernel, bias)
        y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision)
        if bias is not None:
            y = y + bias
        return y


def _promote(dtype: Any, *arrays):
    """Cast arrays to ``dtype``, or to their common type when ``dtype`` is None."""
    present = [a for a in arrays if a is not None]
    target = dtype if dtype is not None else jnp.result_type(*present)
    return tuple(None if a is None else jnp.asarray(a, target) for a in arrays)
