"""Activation functions, plus the learnable :class:`PReLU`.

The functions are JAX's own (``jax.nn``, and ``jnp.tanh``), re-exported so
that models can write ``nnx.relu`` and pass them to
:class:`~nnxlite.nn.Sequence` as plain callables::

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> x = jnp.array([-1.0, 0.0, 2.0])
    >>> nnx.relu(x).tolist()
    [0.0, 0.0, 2.0]
    >>> [round(v, 4) for v in nnx.silu(x).tolist()]
    [-0.2689, 0.0, 1.7616]
    >>> round(float(nnx.softmax(x).sum()), 6)
    1.0
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.nn import (
    celu,
    elu,
    gelu,
    glu,
    hard_sigmoid,
    hard_silu,
    hard_swish,
    hard_tanh,
    identity,
    leaky_relu,
    log_sigmoid,
    log_softmax,
    logsumexp,
    one_hot,
    relu,
    relu6,
    selu,
    sigmoid,
    silu,
    soft_sign,
    softmax,
    softplus,
    standardize,
    swish,
)
from jax.numpy import tanh

from nnxlite.functional import param_from_init
from nnxlite.module import Module
from nnxlite.nn import initializers
from nnxlite.nn.dtypes import promote_dtype
from nnxlite.rng import Context
from nnxlite._rngs_arg import one_rng_arg

__all__ = [
    "PReLU",
    "celu",
    "elu",
    "gelu",
    "glu",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "hard_tanh",
    "identity",
    "leaky_relu",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "one_hot",
    "relu",
    "relu6",
    "selu",
    "sigmoid",
    "silu",
    "soft_sign",
    "softmax",
    "softplus",
    "standardize",
    "swish",
    "tanh",
]


class PReLU(Module):
    """Leaky ReLU with a learned slope: ``x if x >= 0 else negative_slope * x``.

    ``negative_slope`` is a scalar ``nnx.Param`` (named as in flax.nnx).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> act = nnx.PReLU(negative_slope_init=0.1)
    >>> [round(v, 3) for v in act(jnp.array([-2.0, 3.0])).tolist()]
    [-0.2, 3.0]

    Args:
      negative_slope_init: initial slope for negative inputs.
      dtype: the computation (and output) dtype; None (the default) computes
        in the input's dtype, casting the slope to it.
      param_dtype: the dtype of the ``negative_slope`` Param.
      promote_dtype: ``fn((x, slope), dtype=...)`` casting the operands.
      negative_slope_metadata: metadata set on the ``negative_slope`` Param.
      ctx: accepted for a uniform constructor signature (no randomness is
        used); ``rngs=`` likewise.
    """

    def __init__(
        self,
        negative_slope_init: float = 0.01,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        promote_dtype: Any = promote_dtype,
        negative_slope_metadata: Any = None,
        ctx: Context | None = None,
        rngs: Context | None = None,
    ):
        one_rng_arg(ctx, rngs, "PReLU")
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.promote_dtype = promote_dtype
        init = initializers.constant(negative_slope_init)
        self.negative_slope = param_from_init(init, None, (), param_dtype, **(negative_slope_metadata or {}))

    def __call__(self, inputs: jax.Array) -> jax.Array:
        slope = self.negative_slope.value
        if self.dtype is None:
            # No computation dtype: the output keeps the input's dtype (flax.nnx and Linen
            # cast the slope to it rather than promote, so float16 inputs stay float16).
            x, slope = inputs, jnp.asarray(slope, jnp.asarray(inputs).dtype)
        else:
            x, slope = self.promote_dtype((inputs, slope), dtype=self.dtype)
        return jnp.where(x >= 0, x, slope * x)
