"""Low-rank adapters: :class:`LoRA`, :class:`LoRALinear` and their parameter type :class:`LoRAParam`.

A LoRA adapter adds ``x @ lora_a @ lora_b`` (rank ``r``) to a layer's output.
Its matrices are :class:`LoRAParam`, a :class:`~nnxlite.Param` subclass, so
``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` (or ``nnx.grad(..., wrt=nnx.LoRAParam)``)
trains only the adapters while ``nnx.Param`` still selects everything::

    >>> import jax.numpy as jnp, optax, nnxlite as nnx
    >>> model = nnx.LoRALinear(4, 3, lora_rank=2, ctx=nnx.context(0))
    >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.LoRAParam)
    >>> sorted("/".join(p) for p in nnx.state(model, nnx.LoRAParam).paths())
    ['lora/lora_a', 'lora/lora_b']

Names, shapes and initializers are flax.nnx's (``lora_a`` ``(in, r)`` he-uniform,
``lora_b`` ``(r, out)`` zeros, so a fresh adapter changes nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite._rngs_arg import one_rng_arg
from nnxlite.functional import param_from_init
from nnxlite.module import Module
from nnxlite.nn import dtypes, initializers
from nnxlite.nn.initializers import Initializer
from nnxlite.nn.linear import Linear
from nnxlite.rng import Context
from nnxlite.variables import Param, Variable

__all__ = ["LoRAParam", "LoRA", "LoRALinear"]

default_a_initializer = initializers.he_uniform()
default_b_initializer = initializers.zeros


class LoRAParam(Param):
    """The parameter type of LoRA adapters: a :class:`~nnxlite.Param`, told apart by filters.

    >>> import nnxlite as nnx
    >>> issubclass(nnx.LoRAParam, nnx.Param)
    True
    """


class LoRA(Module):
    """A low-rank adapter ``x @ lora_a @ lora_b``, alone or added to a ``base_module``'s output.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> base = nnx.Linear(3, 4, ctx=nnx.context(0))
    >>> lora = nnx.LoRA(3, 2, 4, base_module=base, ctx=nnx.context(1))
    >>> lora.lora_a.shape, lora.lora_b.shape
    ((3, 2), (2, 4))
    >>> x = jnp.ones((5, 3))
    >>> bool(jnp.allclose(lora(x), base(x)))    # lora_b starts at zero
    True

    Args:
      in_features, lora_rank, out_features: the adapter's shapes.
      base_module: a callable module whose output the adapter is added to.
      dtype, param_dtype: computation and storage dtypes.
      a_initializer, b_initializer: initializers of ``lora_a`` and ``lora_b``.
      lora_param_type: the Variable type of the two matrices (:class:`LoRAParam`).
      promote_dtype: casts ``(x, lora_a, lora_b)`` (flax's convention: one tuple and ``dtype=``).
      ctx (or rngs): the Context giving the ``params`` keys.
      a_metadata, b_metadata: metadata of ``lora_a`` and ``lora_b``.
    """

    def __init__(
        self,
        in_features: int,
        lora_rank: int,
        out_features: int,
        *,
        base_module: Module | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        a_initializer: Initializer = default_a_initializer,
        b_initializer: Initializer = default_b_initializer,
        lora_param_type: type[Variable] = LoRAParam,
        promote_dtype: Any = dtypes.promote_dtype,
        ctx: Context | None = None,
        rngs: Context | None = None,
        a_metadata: Mapping[str, Any] | None = None,
        b_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, "LoRA", required=True)
        if base_module is not None and not callable(base_module):
            raise TypeError(f"LoRA: base_module must be callable, got a {type(base_module).__name__}.")
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.lora_param_type = lora_param_type
        self.base_module = base_module
        self.promote_dtype = promote_dtype
        draw = dict(variable_type=lora_param_type)
        self.lora_a = param_from_init(
            a_initializer, ctx.make_rng("params"), (in_features, lora_rank), param_dtype, **draw, **(a_metadata or {})
        )
        self.lora_b = param_from_init(
            b_initializer, ctx.make_rng("params"), (lora_rank, out_features), param_dtype, **draw, **(b_metadata or {})
        )

    def __call__(self, x: jax.Array, **kwargs: Any) -> jax.Array:
        x, a, b = self.promote_dtype((x, self.lora_a.value, self.lora_b.value), dtype=self.dtype)
        out = x @ a @ b
        if self.base_module is not None:
            out = out + self.base_module(x, **kwargs)
        return out


class LoRALinear(Linear):
    """A :class:`~nnxlite.Linear` with a LoRA adapter added to its output (attribute ``lora``).

    Its ``kernel``/``bias`` are those of a ``Linear`` (same paths), so a
    pretrained Linear's state loads into it, and ``wrt=nnx.LoRAParam`` trains
    only ``lora``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> layer = nnx.LoRALinear(3, 4, lora_rank=2, ctx=nnx.context(0))
    >>> layer.kernel.shape, layer.lora.lora_a.shape
    ((3, 4), (3, 2))
    >>> layer(jnp.ones((16, 3))).shape
    (16, 4)

    Args:
      in_features, out_features: as for ``Linear``.
      lora_rank: the adapter's rank.
      lora_dtype, lora_param_dtype: the adapter's computation and storage dtypes.
      a_initializer, b_initializer, lora_param_type, a_metadata, b_metadata: as for :class:`LoRA`.
      lora_promote_dtype: the adapter's ``promote_dtype``.
      ctx (or rngs): the Context giving the ``params`` keys (the Linear's first, then the adapter's).
      **kwargs: passed to ``Linear`` (``use_bias``, ``kernel_init``, ...).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        lora_rank: int,
        lora_dtype: Any = None,
        lora_param_dtype: Any = jnp.float32,
        a_initializer: Initializer = default_a_initializer,
        b_initializer: Initializer = default_b_initializer,
        lora_param_type: type[Variable] = LoRAParam,
        lora_promote_dtype: Any = dtypes.promote_dtype,
        ctx: Context | None = None,
        rngs: Context | None = None,
        a_metadata: Mapping[str, Any] | None = None,
        b_metadata: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        ctx = one_rng_arg(ctx, rngs, "LoRALinear", required=True)
        super().__init__(in_features, out_features, ctx=ctx, **kwargs)
        self.lora = LoRA(
            in_features,
            lora_rank,
            out_features,
            dtype=lora_dtype,
            param_dtype=lora_param_dtype,
            a_initializer=a_initializer,
            b_initializer=b_initializer,
            lora_param_type=lora_param_type,
            promote_dtype=lora_promote_dtype,
            ctx=ctx,
            a_metadata=a_metadata,
            b_metadata=b_metadata,
        )

    def __call__(self, x: jax.Array, **kwargs: Any) -> jax.Array:
        return super().__call__(x, **kwargs) + self.lora(x)
