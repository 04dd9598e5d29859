"""Convolutions: :class:`Conv` and :class:`ConvTranspose` (1D, 2D, 3D, ...).

Inputs are channels-last, ``(*batch, *spatial, features)``: NWC, NHWC,
NDHWC. Any number of leading batch axes is allowed, including none (a
single example). Kernels are ``(*window, in_features // groups,
out_features)``, the flax.nnx layout, so weights move between the two
libraries by path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from nnxlite.module import Module
from nnxlite.nn import initializers
from nnxlite.nn._shapes import Padding, as_tuple, canonical_padding, channels_last, fold_batch, unfold_batch
from nnxlite.nn.initializers import Initializer
from nnxlite.nn import _sharding, dtypes
from nnxlite.nn.linear import _as_tuple, _kernel_and_bias
from nnxlite.rng import Context
from nnxlite._rngs_arg import one_rng_arg

__all__ = ["Conv", "ConvTranspose"]


def _masked_operands(layer: Module, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``x``, the kernel (times ``layer.mask`` when there is one) and the bias, cast by ``promote_dtype``."""
    kernel = layer.kernel.value
    if layer.mask is not None:
        if layer.mask.shape != kernel.shape:
            raise ValueError(
                f"{type(layer).__name__}: mask has shape {tuple(layer.mask.shape)} but the kernel has shape "
                f"{tuple(kernel.shape)}; give a mask of the kernel's shape."
            )
        kernel = kernel * layer.mask
    bias = layer.bias.value if layer.bias is not None else None
    return layer.promote_dtype((x, kernel, bias), dtype=layer.dtype)


def _check_inputs(layer: Module, x: jax.Array) -> None:
    rank = len(layer.kernel_size)
    if x.ndim < rank + 1 or x.shape[-1] != layer.in_features:
        raise ValueError(
            f"{type(layer).__name__}(in_features={layer.in_features}, kernel_size={layer.kernel_size}) expected "
            f"inputs of shape (*batch, {', '.join(['spatial'] * rank)}, {layer.in_features}), "
            f"got {tuple(x.shape)}."
        )


class Conv(Module):
    """An N-dimensional convolution (N = ``len(kernel_size)``), wrapping ``lax.conv_general_dilated``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> conv = nnx.Conv(3, 8, kernel_size=(3, 3), ctx=nnx.context(0))
    >>> conv(jnp.ones((2, 16, 16, 3))).shape          # 'SAME' padding keeps the size
    (2, 16, 16, 8)
    >>> conv.kernel.shape
    (3, 3, 3, 8)
    >>> down = nnx.Conv(3, 8, 3, strides=2, padding="VALID", ctx=nnx.context(0))
    >>> down(jnp.ones((16, 3))).shape                  # 1D, no batch axis
    (7, 8)

    Args:
      in_features: number of input channels (last axis of the input).
      out_features: number of output channels.
      kernel_size: window size: an int (1D) or one int per spatial axis.
      strides: an int or one int per spatial axis.
      padding: ``'SAME'`` (output size ``ceil(size / stride)``), ``'VALID'``
        (no padding), ``'CAUSAL'`` (1D only: pad on the left so that output
        ``t`` sees inputs ``<= t``), ``'CIRCULAR'``/``'REFLECT'`` (pad by
        wrapping/reflecting the input so the output keeps the size), an int
        (the same padding on both sides of every axis), or one int or
        ``(low, high)`` pair per spatial axis.
      input_dilation: spacing inserted between input elements (a
        "fractionally strided" convolution).
      kernel_dilation: spacing between kernel taps (atrous convolution).
      feature_group_count: split the channels into this many groups that are
        convolved separately (``in_features`` for a depthwise convolution);
        it must divide both ``in_features`` and ``out_features``.
      use_bias: whether to add a ``bias`` of shape ``(out_features,)``.
      mask: an optional array of the kernel's shape multiplied into the
        kernel at each call (e.g. a causal or sparse connectivity mask).
      conv_general_dilated: the convolution op (default
        ``jax.lax.conv_general_dilated``).
      dtype, param_dtype, precision, kernel_init, bias_init: as for :class:`~nnxlite.nn.Linear`.
      promote_dtype, preferred_element_type: as for :class:`~nnxlite.nn.Linear`.
      ctx (or rngs), kernel_metadata, bias_metadata: as for :class:`~nnxlite.nn.Linear`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = 1,
        *,
        padding: Padding = "SAME",
        input_dilation: int | Sequence[int] | None = 1,
        kernel_dilation: int | Sequence[int] | None = 1,
        feature_group_count: int = 1,
        use_bias: bool = True,
        mask: jax.Array | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer = initializers.default_kernel_init,
        bias_init: Initializer = initializers.default_bias_init,
        conv_general_dilated: Any = lax.conv_general_dilated,
        promote_dtype: Any = dtypes.promote_dtype,
        preferred_element_type: Any = None,
        ctx: Context | None = None,
        rngs: Context | None = None,
        kernel_metadata: Mapping[str, Any] | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, "Conv", required=True)
        self.mask = mask
        self.conv_general_dilated = conv_general_dilated
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type
        self.kernel_size = _as_tuple(kernel_size)
        rank = len(self.kernel_size)
        self.in_features = in_features
        self.out_features = out_features
        self.strides = as_tuple(strides, rank, "strides", "Conv")
        self.padding = canonical_padding(padding, rank, "Conv")
        self.input_dilation = as_tuple(input_dilation, rank, "input_dilation", "Conv")
        self.kernel_dilation = as_tuple(kernel_dilation, rank, "kernel_dilation", "Conv")
        self.feature_group_count = feature_group_count
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        if in_features % feature_group_count or out_features % feature_group_count:
            raise ValueError(
                f"Conv: feature_group_count={feature_group_count} must divide both in_features={in_features} "
                f"and out_features={out_features}."
            )
        if self.padding == "CAUSAL" and rank != 1:
            raise ValueError(
                f"Conv: padding='CAUSAL' is defined for 1D convolutions only (kernel_size={self.kernel_size}); "
                "pad the time axis yourself with jnp.pad and use padding='VALID'."
            )
        kernel_shape = self.kernel_size + (in_features // feature_group_count, out_features)
        self.kernel, self.bias = _kernel_and_bias(
            kernel_init, kernel_shape, bias_init, (out_features,) if use_bias else None, param_dtype, ctx,
            kernel_metadata, bias_metadata,
        )

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        x = inputs
        _check_inputs(self, x)
        x, batch_shape = fold_batch(x, len(self.kernel_size) + 1, "Conv")
        x, padding = self._pad_by_hand(x)
        x, kernel, bias = _masked_operands(self, x)
        extra = {} if self.preferred_element_type is None else {"preferred_element_type": self.preferred_element_type}
        # On an explicit-sharding mesh, work out the output sharding unless it was given.
        op_sharding = _sharding.conv_out_sharding(out_sharding, x, kernel)
        if op_sharding is not None:
            extra["out_sharding"] = op_sharding
            if bias is not None:
                bias = _sharding.fit_spec(bias, _sharding.spec_entries(op_sharding, x.ndim)[-1:])
        y = self.conv_general_dilated(
            x,
            kernel,
            window_strides=self.strides,
            padding=padding,
            lhs_dilation=self.input_dilation,
            rhs_dilation=self.kernel_dilation,
            dimension_numbers=channels_last(len(self.kernel_size)),
            feature_group_count=self.feature_group_count,
            precision=self.precision,
            **extra,
        )
        if bias is not None:
            y = y + bias
        return unfold_batch(_sharding.constrain(y, out_sharding, op_sharding), batch_shape)

    def _pad_by_hand(self, x: jax.Array) -> tuple[jax.Array, Any]:
        """Apply the paddings lax does not know (CAUSAL, CIRCULAR, REFLECT); return the lax padding."""
        mode = self.padding
        if mode not in ("CAUSAL", "CIRCULAR", "REFLECT"):
            return x, mode
        spans = [(k - 1) * d for k, d in zip(self.kernel_size, self.kernel_dilation)]
        if mode == "CAUSAL":
            pads = [(spans[0], 0)]
        else:  # centred like 'SAME': the extra element (even kernels) goes after
            pads = [(s // 2, s - s // 2) for s in spans]
        pads = [(0, 0)] + pads + [(0, 0)]
        np_mode = {"CAUSAL": "constant", "CIRCULAR": "wrap", "REFLECT": "reflect"}[mode]
        return jnp.pad(x, pads, mode=np_mode), "VALID"


class ConvTranspose(Module):
    """A transposed convolution ("deconvolution"), wrapping ``lax.conv_transpose``.

    With stride ``s`` it upsamples each spatial axis by ``s`` (``'SAME'``
    padding gives exactly ``size * s``). The kernel is
    ``(*window, in_features, out_features)``, or
    ``(*window, out_features, in_features)`` with ``transpose_kernel=True``,
    which makes the layer the exact gradient (adjoint) of a :class:`Conv`
    with the same kernel.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> up = nnx.ConvTranspose(8, 3, kernel_size=(4, 4), strides=2, ctx=nnx.context(0))
    >>> up(jnp.ones((2, 8, 8, 8))).shape
    (2, 16, 16, 3)
    >>> nnx.ConvTranspose(8, 3, 3, padding="VALID", ctx=nnx.context(0))(jnp.ones((5, 8))).shape
    (7, 3)

    Padding follows ``lax.conv_transpose``, *not* PyTorch: ``'VALID'`` gives
    the full output ``(size - 1) * s + window``; explicit ``(low, high)``
    pairs pad the stride-dilated input directly, so ``(window - 1 - p)`` on
    both sides inverts the shape change of a :class:`Conv` with padding
    ``p``.

    Args:
      in_features, out_features, kernel_size, strides, kernel_dilation: as for :class:`Conv`.
      use_bias, mask, dtype, param_dtype, precision, kernel_init, bias_init: as for :class:`Conv`.
      promote_dtype, preferred_element_type: as for :class:`Conv`.
      ctx (or rngs), kernel_metadata, bias_metadata: as for :class:`Conv`.
      padding: ``'SAME'``, ``'VALID'``, ``'CIRCULAR'`` (the input is one
        period of a periodic signal: the output is ``size * stride`` long and
        what would spill past an edge wraps around to the other), an int, or
        one int or ``(low, high)`` pair per spatial axis.
      transpose_kernel: use the ``(*window, out, in)`` layout and flip the
        window, as in the gradient of a convolution.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = None,
        *,
        padding: Padding = "SAME",
        kernel_dilation: int | Sequence[int] | None = None,
        use_bias: bool = True,
        mask: jax.Array | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer = initializers.default_kernel_init,
        bias_init: Initializer = initializers.default_bias_init,
        transpose_kernel: bool = False,
        promote_dtype: Any = dtypes.promote_dtype,
        preferred_element_type: Any = None,
        ctx: Context | None = None,
        rngs: Context | None = None,
        kernel_metadata: Mapping[str, Any] | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, "ConvTranspose", required=True)
        self.mask = mask
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type
        self.kernel_size = _as_tuple(kernel_size)
        rank = len(self.kernel_size)
        self.in_features = in_features
        self.out_features = out_features
        self.strides = as_tuple(strides, rank, "strides", "ConvTranspose")
        self.padding = canonical_padding(padding, rank, "ConvTranspose")
        if isinstance(self.padding, str) and self.padding not in ("SAME", "VALID", "CIRCULAR"):
            raise ValueError(
                f"ConvTranspose: padding={padding!r} is not supported; use 'SAME', 'VALID', 'CIRCULAR', an int, "
                "or (low, high) pairs."
            )
        self.kernel_dilation = as_tuple(kernel_dilation, rank, "kernel_dilation", "ConvTranspose")
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.transpose_kernel = transpose_kernel
        io = (out_features, in_features) if transpose_kernel else (in_features, out_features)
        self.kernel, self.bias = _kernel_and_bias(
            kernel_init, self.kernel_size + io, bias_init, (out_features,) if use_bias else None, param_dtype, ctx,
            kernel_metadata, bias_metadata,
        )

    def __call__(self, inputs: jax.Array) -> jax.Array:
        x = inputs
        _check_inputs(self, x)
        rank = len(self.kernel_size)
        x, batch_shape = fold_batch(x, rank + 1, "ConvTranspose")
        x, kernel, bias = _masked_operands(self, x)
        extra = {} if self.preferred_element_type is None else {"preferred_element_type": self.preferred_element_type}
        circular = self.padding == "CIRCULAR"
        y = lax.conv_transpose(
            x,
            kernel,
            strides=self.strides,
            padding="VALID" if circular else self.padding,
            rhs_dilation=self.kernel_dilation,
            dimension_numbers=channels_last(rank),
            transpose_kernel=self.transpose_kernel,
            precision=self.precision,
            **extra,
        )
        if circular:
            periods = [size * s for size, s in zip(x.shape[1:-1], self.strides)]
            y = _wrap_around(y, periods, self.transpose_kernel)
        if bias is not None:
            y = y + bias
        return unfold_batch(y, batch_shape)


def _wrap_around(y: jax.Array, periods: list[int], transpose_kernel: bool) -> jax.Array:
    """Fold the full ('VALID') transposed-convolution output onto a torus of size ``periods``.

    What spills past either edge of an output period is added back at the
    other edge, which is what a transposed convolution of a periodic signal
    computes. Each spatial axis is centred on the period first: the spill is
    split evenly between both sides, an odd element going to the low side
    (to the high side with ``transpose_kernel``, so that the layer is the
    adjoint of a circular :class:`Conv`). The axis is then zero-padded to an
    odd number of whole periods, the period start landing on a period
    boundary, cut into periods and summed (flax.nnx's convention, same
    numerics).
    """
    pads = [(0, 0)]
    for length, period in zip(y.shape[1:-1], periods):
        fill = (period - length) % (2 * period)  # brings the length to an odd multiple of the period
        low = fill // 2 if transpose_kernel else (fill + 1) // 2
        pads.append((low, fill - low))
    y = jnp.pad(y, pads + [(0, 0)])
    for axis, period in enumerate(periods, start=1):
        shape = y.shape
        y = y.reshape(shape[:axis] + (shape[axis] // period, period) + shape[axis + 1 :]).sum(axis=axis)
    return y
