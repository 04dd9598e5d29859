"""Dense layers: :class:`Linear`, :class:`LinearGeneral` and :class:`Einsum`.

All three store a ``kernel`` and an optional ``bias`` (``nnx.Param``) with
the names and layouts flax.nnx uses, so weights move between the two
libraries by path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite.module import Module
from nnxlite.nn import initializers
from nnxlite.nn import _sharding, dtypes
from nnxlite.nn.initializers import default_bias_init, default_kernel_init  # noqa: F401  (flax: nnx.nn.linear.default_kernel_init)
from nnxlite.nn.initializers import Initializer
from nnxlite.functional import param_from_init
from nnxlite.rng import Context
from nnxlite.variables import Variable
from nnxlite._rngs_arg import one_rng_arg

__all__ = ["Linear", "LinearGeneral", "Einsum"]


def _kernel_and_bias(
    kernel_init: Initializer,
    kernel_shape: tuple[int, ...],
    bias_init: Initializer,
    bias_shape: tuple[int, ...] | None,
    param_dtype: Any,
    ctx: Context,
    kernel_metadata: Mapping[str, Any] | None = None,
    bias_metadata: Mapping[str, Any] | None = None,
) -> tuple[Variable, Variable | None]:
    """The ``kernel`` Param and the ``bias`` Param (None when ``bias_shape`` is None).

    Each draws its own ``params`` key, the kernel's first; ``*_metadata``
    (flax's ``kernel_metadata=``/``bias_metadata=``) lands on the Params.
    Shared by the dense and convolution layers.
    """
    kernel = param_from_init(kernel_init, ctx.make_rng("params"), kernel_shape, param_dtype, **(kernel_metadata or {}))
    if bias_shape is None:
        return kernel, None
    bias = param_from_init(bias_init, ctx.make_rng("params"), bias_shape, param_dtype, **(bias_metadata or {}))
    return kernel, bias


def _promoted(layer: Module, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``x``, ``layer.kernel`` and ``layer.bias`` (or None) cast by the layer's ``promote_dtype``.

    ``promote_dtype`` takes one tuple (flax.nnx's convention), so a custom
    function written for flax works here unchanged.
    """
    bias = layer.bias.value if layer.bias is not None else None
    promote = getattr(layer, "promote_dtype", dtypes.promote_dtype)
    return promote((x, layer.kernel.value, bias), dtype=layer.dtype)


@functools.partial(
    jax.jit, static_argnames=("dimension_numbers", "precision", "preferred_element_type", "out_sharding"), inline=True
)
def _dense(x, kernel, bias, *, dimension_numbers, precision, preferred_element_type, out_sharding):
    """``dot_general(x, kernel) + bias`` as one compiled kernel.

    Eagerly this is one dispatch instead of two (``jax.lax.dot_general`` run
    op by op also takes JAX's slow primitive path); inside a trace it is
    inlined, so jaxprs and compiled programs are the same as before.
    """
    y = jax.lax.dot_general(
        x, kernel, dimension_numbers, precision=precision, **_dot_kwargs(preferred_element_type, out_sharding)
    )
    return y if bias is None else y + bias


def _dot_kwargs(preferred_element_type: Any, out_sharding: Any) -> dict[str, Any]:
    """The optional keywords for a ``dot_general``/einsum op, only those that are set.

    Leaving unset ones out keeps custom ops that do not take them working.
    """
    kwargs: dict[str, Any] = {}
    if preferred_element_type is not None:
        kwargs["preferred_element_type"] = preferred_element_type
    if out_sharding is not None:
        kwargs["out_sharding"] = out_sharding
    return kwargs


class Linear(Module):
    """``y = x @ kernel + bias`` with ``kernel`` of shape ``(in_features, out_features)``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> layer = nnx.Linear(3, 4, ctx=nnx.context(0))
    >>> layer(jnp.ones((2, 3))).shape
    (2, 4)
    >>> layer.kernel.shape, layer.bias.shape
    ((3, 4), (4,))

    Args:
      in_features, out_features: input and output widths.
      use_bias: whether to add a bias.
      dtype: computation dtype (default: inferred from inputs and params).
      param_dtype: dtype the parameters are stored in.
      precision: matmul precision passed to ``jax.lax.dot_general``.
      kernel_init, bias_init: initializers ``(key, shape, dtype) -> array``.
      dot_general: the contraction op (default ``jax.lax.dot_general``).
      promote_dtype: ``fn((x, kernel, bias), dtype=..., inexact=...)`` casting
        the operands (default :func:`nnxlite.nn.dtypes.promote_dtype`).
      preferred_element_type: output dtype asked of ``dot_general``.
      ctx: the :class:`~nnxlite.Context` to draw the ``params`` keys from
        (``rngs=`` is the same parameter, flax.nnx's spelling).
      kernel_metadata, bias_metadata: metadata set on the ``kernel``/``bias``
        Params (e.g. ``{"sharding": ("embed", "mlp")}``).
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
        kernel_init: Initializer = initializers.default_kernel_init,
        bias_init: Initializer = initializers.default_bias_init,
        dot_general: Any = jax.lax.dot_general,
        promote_dtype: Any = dtypes.promote_dtype,
        preferred_element_type: Any = None,
        ctx: Context | None = None,
        rngs: Context | None = None,
        kernel_metadata: Mapping[str, Any] | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, "Linear", required=True)
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.dot_general = dot_general
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type
        self.kernel, self.bias = _kernel_and_bias(
            kernel_init, (in_features, out_features), bias_init, (out_features,) if use_bias else None, param_dtype,
            ctx, kernel_metadata, bias_metadata,
        )

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        x = inputs
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"Linear(in_features={self.in_features}, out_features={self.out_features}) expected inputs whose "
                f"last axis has size {self.in_features}, got shape {tuple(x.shape)}."
            )
        x, kernel, bias = _promoted(self, x)
        dims = (((x.ndim - 1,), (0,)), ((), ()))
        # On an explicit-sharding mesh, work out the output sharding unless it was given.
        op_sharding = _sharding.dot_general_out_sharding(out_sharding, x, kernel, dims)
        if op_sharding is not None and bias is not None:
            bias = _sharding.fit_spec(bias, _sharding.spec_entries(op_sharding, x.ndim)[-1:])
        if self.dot_general is jax.lax.dot_general:
            y = _dense(
                x, kernel, bias, dimension_numbers=dims, precision=self.precision,
                preferred_element_type=self.preferred_element_type, out_sharding=op_sharding,
            )
        else:
            y = self.dot_general(
                x, kernel, dims, precision=self.precision, **_dot_kwargs(self.preferred_element_type, op_sharding),
            )
            if bias is not None:
                y = y + bias
        return _sharding.constrain(y, out_sharding, op_sharding)


class _Reshaped:
    """An initializer that draws ``init(key, drawn_shape)`` and reshapes it to the requested shape.

    LinearGeneral initializes its kernel as the ``(fan_in, fan_out)`` matrix
    it acts as, so fan-based initializers scale correctly whatever the
    number of feature axes. A boxed result (``with_partitioning``) keeps its
    metadata.
    """

    __slots__ = ("init", "drawn_shape")

    def __init__(self, init: Initializer, drawn_shape: tuple[int, ...]):
        self.init = init
        self.drawn_shape = drawn_shape

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Any:
        value = self.init(key, self.drawn_shape, dtype)
        if isinstance(value, Variable):
            return value.replace(jnp.reshape(value.raw_value, shape))
        return jnp.reshape(value, shape)

    def __repr__(self) -> str:
        name = getattr(self.init, "__qualname__", None) or repr(self.init)
        return f"reshaped({name}, drawn as {self.drawn_shape})"


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return (int(x),) if isinstance(x, int) else tuple(int(v) for v in x)


class LinearGeneral(Module):
    """A dense layer that contracts any input axes and produces any output shape.

    The ``kernel`` has shape ``(*batch_sizes, *in_features, *out_features)``
    and the ``bias`` ``(*batch_sizes, *out_features)``. The input axes named
    by ``axis`` (one per entry of ``in_features``) are contracted away and
    the output feature axes are appended at the end; ``batch_axis`` maps
    *leading* input axes to a separate kernel per index (like a batched
    matmul).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> heads = nnx.LinearGeneral(8, (2, 4), ctx=nnx.context(0))   # split into 2 heads of 4
    >>> heads(jnp.ones((3, 5, 8))).shape
    (3, 5, 2, 4)
    >>> merge = nnx.LinearGeneral((2, 4), 8, axis=(-2, -1), ctx=nnx.context(0))
    >>> merge(jnp.ones((3, 5, 2, 4))).shape
    (3, 5, 8)

    The initializers see the kernel as a matrix of shape
    ``(prod(batch) * prod(in_features), prod(out_features))`` (then reshaped),
    so fan-in based initializers such as ``lecun_normal`` scale correctly.

    Args:
      in_features: size(s) of the contracted input axes.
      out_features: size(s) of the output feature axes.
      axis: the input axis or axes to contract (same length as ``in_features``).
      batch_axis: ``{axis: size}`` for leading batch axes with their own kernel;
        the axes must be ``0, 1, ...`` in order.
      use_bias, dtype, param_dtype, precision: as for :class:`Linear`.
      kernel_init, bias_init, promote_dtype, preferred_element_type: as for :class:`Linear`.
      ctx (or rngs), kernel_metadata, bias_metadata: as for :class:`Linear`.
      dot_general: the contraction op (None: ``jax.lax.dot_general``).
      dot_general_cls: a class instantiated (no arguments) at each call to
        give the contraction op; it wins over ``dot_general``.
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int | Sequence[int],
        *,
        axis: int | Sequence[int] = -1,
        batch_axis: Mapping[int, int] | None = None,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Initializer = initializers.default_kernel_init,
        bias_init: Initializer = initializers.default_bias_init,
        precision: Any = None,
        promote_dtype: Any = dtypes.promote_dtype,
        dot_general: Any = None,
        dot_general_cls: Any = None,
        preferred_element_type: Any = None,
        ctx: Context | None = None,
        rngs: Context | None = None,
        kernel_metadata: Mapping[str, Any] | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, "LinearGeneral", required=True)
        self.promote_dtype = promote_dtype
        self.dot_general = dot_general
        self.dot_general_cls = dot_general_cls
        self.preferred_element_type = preferred_element_type
        self.in_features = _as_tuple(in_features)
        self.out_features = _as_tuple(out_features)
        self.axis = _as_tuple(axis)
        # Stored as sorted pairs: static attributes must be hashable.
        self.batch_axis = tuple(sorted((int(a), int(n)) for a, n in (batch_axis or {}).items()))
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        if len(self.in_features) != len(self.axis):
            raise ValueError(
                f"LinearGeneral: in_features={self.in_features} and axis={self.axis} must have the same length "
                f"(one contracted axis per input feature size)."
            )
        batch_axes = [a for a, _ in self.batch_axis]
        if batch_axes != list(range(len(batch_axes))):
            raise ValueError(
                f"LinearGeneral: batch_axis keys must be the leading axes 0, 1, ... in order; got {batch_axes}."
            )
        batch_sizes = tuple(n for _, n in self.batch_axis)
        kernel_shape = batch_sizes + self.in_features + self.out_features
        flat_kernel = (math.prod(batch_sizes) * math.prod(self.in_features), math.prod(self.out_features))
        bias_shape = batch_sizes + self.out_features
        self.kernel, self.bias = _kernel_and_bias(
            _Reshaped(kernel_init, flat_kernel), kernel_shape,
            _Reshaped(bias_init, (math.prod(bias_shape),)), bias_shape if use_bias else None, param_dtype, ctx,
            kernel_metadata, bias_metadata,
        )

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        x = inputs
        ndim = x.ndim
        axes = tuple(sorted(a % ndim for a in self.axis)) if ndim else ()
        if len(set(axes)) != len(self.axis) or any(not -ndim <= a < ndim for a in self.axis):
            raise ValueError(
                f"LinearGeneral: axis={self.axis} does not name {len(self.axis)} distinct axes of inputs "
                f"with shape {tuple(x.shape)}."
            )
        # Feature sizes are matched to axes in the order the axes appear in the input.
        order = sorted(range(len(self.axis)), key=lambda i: self.axis[i] % ndim)
        found = tuple(x.shape[self.axis[i] % ndim] for i in order)
        expected = tuple(self.in_features[i] for i in order)
        if found != expected:
            raise ValueError(
                f"LinearGeneral(in_features={self.in_features}, axis={self.axis}) expected sizes {expected} on "
                f"axes {axes}, got inputs of shape {tuple(x.shape)}."
            )
        n_batch = len(self.batch_axis)
        batch_axes = tuple(range(n_batch))
        kernel_in = tuple(n_batch + i for i in order)
        x, kernel, bias = _promoted(self, x)
        if self.dot_general_cls is not None:
            dot_general = self.dot_general_cls()
        else:
            dot_general = self.dot_general if self.dot_general is not None else jax.lax.dot_general
        dims = ((axes, kernel_in), (batch_axes, batch_axes))
        op_sharding = _sharding.dot_general_out_sharding(out_sharding, x, kernel, dims)
        y = dot_general(
            x, kernel, dims, precision=self.precision, **_dot_kwargs(self.preferred_element_type, op_sharding),
        )
        if bias is not None:
            # dot_general puts batch axes first, then the free input axes, then the features.
            n_free = ndim - len(axes) - n_batch
            if op_sharding is not None:
                out_spec = _sharding.spec_entries(op_sharding, y.ndim)
                n_out = len(self.out_features)
                bias = _sharding.fit_spec(bias, out_spec[:n_batch] + out_spec[y.ndim - n_out:])
            bias_shape = bias.shape[:n_batch] + (1,) * n_free + self.out_features
            y = y + bias.reshape(bias_shape)
        return _sharding.constrain(y, out_sharding, op_sharding)


class Einsum(Module):
    """A dense layer written as an einsum: ``y = einsum(einsum_str, x, kernel) + bias``.

    ``einsum_str`` has exactly two operands, the input then the kernel, and
    an explicit output (``'...d,dhk->...hk'``). The ``bias`` (if
    ``bias_shape`` is given) is added on the output axes that come from the
    kernel.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> layer = nnx.Einsum("btd,dhk->bthk", (8, 2, 4), (2, 4), ctx=nnx.context(0))
    >>> layer(jnp.ones((3, 5, 8))).shape
    (3, 5, 2, 4)

    Args:
      einsum_str: the equation, or None to give it at call time (a call-time
        equation overrides the constructor's).
      kernel_shape: shape of ``kernel``.
      bias_shape: shape of ``bias``, or None for no bias.
      dtype, param_dtype, precision, kernel_init, bias_init: as for :class:`Linear`.
      promote_dtype, preferred_element_type: as for :class:`Linear`.
      ctx (or rngs), kernel_metadata, bias_metadata: as for :class:`Linear`.
      einsum_op: the einsum function (default ``jnp.einsum``).
    """

    def __init__(
        self,
        einsum_str: str | None,
        kernel_shape: Sequence[int],
        bias_shape: Sequence[int] | None = None,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer = initializers.default_kernel_init,
        bias_init: Initializer = initializers.default_bias_init,
        promote_dtype: Any = dtypes.promote_dtype,
        einsum_op: Any = jnp.einsum,
        preferred_element_type: Any = None,
        ctx: Context | None = None,
        rngs: Context | None = None,
        kernel_metadata: Mapping[str, Any] | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, "Einsum", required=True)
        self.promote_dtype = promote_dtype
        self.einsum_op = einsum_op
        self.preferred_element_type = preferred_element_type
        self.einsum_str = None if einsum_str is None else _check_equation(einsum_str, tuple(kernel_shape))
        self.kernel_shape = tuple(kernel_shape)
        # flax.nnx also takes a bare int for a one-axis bias.
        self.bias_shape = None if bias_shape is None else (bias_shape,) if isinstance(bias_shape, int) else tuple(bias_shape)
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.kernel, self.bias = _kernel_and_bias(
            kernel_init, self.kernel_shape, bias_init, self.bias_shape, param_dtype, ctx,
            kernel_metadata, bias_metadata,
        )

    def __call__(self, inputs: jax.Array, einsum_str: str | None = None, out_sharding: Any = None) -> jax.Array:
        x = inputs
        if einsum_str is None and self.einsum_str is None:
            raise ValueError(
                "Einsum has no equation: pass einsum_str to the constructor or at call time, "
                "e.g. layer(x, 'bd,dk->bk')."
            )
        eq = self.einsum_str if einsum_str is None else _check_equation(einsum_str, self.kernel_shape)
        x, kernel, bias = _promoted(self, x)
        op_sharding = _sharding.einsum_out_sharding(out_sharding, eq, x, kernel)
        y = self.einsum_op(eq, x, kernel, precision=self.precision, **_dot_kwargs(self.preferred_element_type, op_sharding))
        if bias is not None:
            shape = _bias_broadcast_shape(eq, self.kernel_shape, x.ndim)
            if math.prod(shape) != bias.size:
                kernel_axes = tuple(n for n in shape if n != 1)
                raise ValueError(
                    f"Einsum: bias_shape {self.bias_shape} does not fit {eq!r}: the output axes that come from "
                    f"the kernel have sizes {kernel_axes}, so the bias needs that shape."
                )
            bias = bias.reshape(shape)
            if op_sharding is not None:  # the broadcast axes (size 1) are replicated
                out_spec = _sharding.spec_entries(op_sharding, y.ndim)
                bias = _sharding.fit_spec(bias, tuple(e if n != 1 else None for e, n in zip(out_spec, shape)))
            y = y + bias
        return _sharding.constrain(y, out_sharding, op_sharding)


def _check_equation(einsum_str: str, kernel_shape: tuple[int, ...]) -> str:
    eq = einsum_str.replace(" ", "")
    if "->" not in eq:
        raise ValueError(f"Einsum: the equation {einsum_str!r} must be explicit, with '->' and an output.")
    inputs = eq.split("->")[0]
    if inputs.count(",") != 1:
        raise ValueError(f"Einsum: the equation {einsum_str!r} must have exactly two operands: input,kernel.")
    rhs = inputs.split(",")[1]
    named = len(rhs.replace("...", ""))
    # With '...' the kernel operand names only some axes; the ellipsis stands for the rest.
    if named > len(kernel_shape) or ("..." not in rhs and named != len(kernel_shape)):
        raise ValueError(
            f"Einsum: the kernel operand {rhs!r} names {named} axes but kernel_shape is {kernel_shape}."
        )
    return eq


def _explicit(eq: str, x_ndim: int, kernel_ndim: int) -> tuple[str, str, str]:
    """``(lhs, rhs, out)`` of ``eq`` with each ``...`` spelled out in letters, as numpy broadcasts them.

    The ellipses of both operands are right-aligned: the last axes they cover share letters.
    """
    lhs, rhs = eq.split("->")[0].split(",")
    out = eq.split("->")[1]
    n_lhs = x_ndim - len(lhs.replace("...", "")) if "..." in lhs else 0
    n_rhs = kernel_ndim - len(rhs.replace("...", "")) if "..." in rhs else 0
    n = max(n_lhs, n_rhs)
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in eq][:n]
    ell = "".join(free)
    return lhs.replace("...", ell[n - n_lhs:]), rhs.replace("...", ell[n - n_rhs:]), out.replace("...", ell)


def _bias_broadcast_shape(eq: str, kernel_shape: tuple[int, ...], x_ndim: int) -> tuple[int, ...]:
    """Shape that puts the bias on the output axes coming from the kernel (1 elsewhere)."""
    _, rhs, out = _explicit(eq, x_ndim, len(kernel_shape))
    sizes = dict(zip(rhs, kernel_shape))
    return tuple(sizes.get(token, 1) for token in out)
