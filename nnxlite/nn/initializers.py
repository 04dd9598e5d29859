"""Initializers: functions ``init(key, shape, dtype) -> array``.

They are JAX's initializers (``jax.nn.initializers``), with one difference
that does not change any value: the random ones (``normal``, ``uniform``,
``truncated_normal``, ``variance_scaling`` and its ``lecun``/``glorot``/
``he``/``xavier``/``kaiming`` spellings) draw their samples as one flat
vector (padded to a power of two when small) and reshape it. JAX's
counter-based random bits depend only on the key and the element's index,
not on the shape, so the arrays are bit-for-bit the ones
``jax.nn.initializers`` returns; but the sampler compiles once per size
bucket instead of once per shape, and its compile cost no longer grows with
the rank. Creating layers eagerly is several times faster (a new ``Conv``
kernel shape: ~0.1 s instead of ~3 s of compilation).

Most entries are *factories*: call them to get the initializer
(``lecun_normal()``); ``zeros`` and ``ones`` are initializers already, and
``zeros_init()``/``ones_init()`` are factory spellings of them::

    >>> import jax, nnxlite as nnx
    >>> init = nnx.initializers.lecun_normal()
    >>> init(jax.random.PRNGKey(0), (3, 4)).shape
    (3, 4)
    >>> nnx.initializers.zeros_init()(jax.random.PRNGKey(0), (2,)).tolist()
    [0.0, 0.0]

Any callable with that signature works as ``kernel_init=``/``bias_init=``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import jax
import jax.numpy as jnp
from jax import random
from jax.nn import initializers as _jax
from jax.nn.initializers import constant, delta_orthogonal, ones, orthogonal, zeros

__all__ = [
    "Initializer",
    "constant",
    "delta_orthogonal",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "ones_init",
    "orthogonal",
    "truncated_normal",
    "uniform",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
    "zeros_init",
    "default_kernel_init",
    "default_bias_init",
    "default_embed_init",
]

Axes = int | Sequence[int]


class Initializer(Protocol):
    """The type of an initializer: ``(key, shape, dtype) -> array``.

    Any function of that shape is one, so custom initializers need no base class:

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> def identity_init(key, shape, dtype=jnp.float32):
    ...     return jnp.eye(*shape, dtype=dtype)
    >>> nnx.Linear(2, 2, kernel_init=identity_init, ctx=nnx.context(0)).kernel.value.tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """

    def __call__(self, key: Any, shape: tuple[int, ...], dtype: Any = ...) -> Any: ...


def zeros_init() -> Initializer:
    """The ``zeros`` initializer, as a factory (flax's spelling).

    >>> import jax, nnxlite as nnx
    >>> nnx.initializers.zeros_init()(jax.random.PRNGKey(0), (1, 2)).shape
    (1, 2)
    """
    return zeros


def ones_init() -> Initializer:
    """The ``ones`` initializer, as a factory (flax's spelling).

    >>> import jax, nnxlite as nnx
    >>> nnx.initializers.ones_init()(jax.random.PRNGKey(0), (2,)).tolist()
    [1.0, 1.0]
    """
    return ones


def _float_dtype(dtype: Any) -> Any:
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float_ if dtype is None else dtype))


# Draws up to this many values are padded to a power of two (see _draw).
_BUCKET_LIMIT = 1 << 20


def _prefix_stable(key: Any) -> bool:
    """Whether the first ``n`` values of a size-``m`` draw equal a size-``n`` draw (partitionable threefry)."""
    if not jax.config.jax_threefry_partitionable:
        return False
    if jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        return "threefry" in str(jax.random.key_impl(key))
    return jax.config.jax_default_prng_impl == "threefry2x32"


_UNSET: Any = object()


def _accepts_out_sharding(init):
    """Give ``init`` JAX's ``out_sharding=`` keyword: the result is laid out by that spec on the current mesh."""

    def with_out_sharding(key, shape, dtype=_UNSET, out_sharding=None):
        x = init(key, shape) if dtype is _UNSET else init(key, shape, dtype)
        if out_sharding is None:
            return x
        try:  # an Explicit-axes mesh: the layout is part of the type
            return jax.sharding.reshard(x, out_sharding)
        except (ValueError, TypeError):  # an Auto-axes mesh: a constraint (or a placement, eagerly)
            if isinstance(x, jax.core.Tracer):
                return jax.lax.with_sharding_constraint(x, out_sharding)
            return jax.device_put(x, out_sharding)

    with_out_sharding.__doc__ = init.__doc__
    return with_out_sharding


def _draw(sample, key: Any, shape: Sequence[int], dtype: Any, scale: jax.Array) -> jax.Array:
    """``sample(key, shape, dtype) * scale`` with the same values, compiled cheaply.

    JAX's (partitionable) threefry gives element ``i`` of a draw bits that
    depend only on the key and ``i``, not on the shape. So we draw a flat
    vector, whose compile cost does not grow with the rank, and, for small
    draws, of a power-of-two length so that differently sized parameters
    share one compiled sampler; then take the first ``size`` values.
    """
    shape = tuple(int(n) for n in shape)
    size = math.prod(shape)
    drawn = size
    if 0 < size <= _BUCKET_LIMIT and _prefix_stable(key):
        drawn = 1 << (size - 1).bit_length()
    values = sample(key, (drawn,), dtype) * scale
    return (values[:size] if drawn != size else values).reshape(shape)


def normal(stddev: float = 1e-2, dtype: Any = None) -> Initializer:
    """Normal samples with standard deviation ``stddev`` (``jax.nn.initializers.normal``).

    >>> import jax, nnxlite as nnx
    >>> nnx.initializers.normal(2.0)(jax.random.PRNGKey(0), (2, 3)).shape
    (2, 3)
    """

    @_accepts_out_sharding
    def init(key, shape, dtype=dtype):
        dtype = _float_dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            return _jax.normal(stddev, dtype)(key, shape, dtype)
        return _draw(random.normal, key, shape, dtype, jnp.array(stddev, dtype))

    return init


def uniform(scale: float = 1e-2, dtype: Any = None) -> Initializer:
    """Uniform samples in ``[0, scale)`` (``jax.nn.initializers.uniform``).

    >>> import jax, nnxlite as nnx
    >>> float(nnx.initializers.uniform(1.0)(jax.random.PRNGKey(0), (100,)).min()) >= 0
    True
    """

    @_accepts_out_sharding
    def init(key, shape, dtype=dtype):
        dtype = _float_dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            return _jax.uniform(scale, dtype)(key, shape, dtype)
        return _draw(random.uniform, key, shape, dtype, jnp.array(scale, dtype))

    return init


def truncated_normal(stddev: float = 1e-2, dtype: Any = None, lower: float = -2.0, upper: float = 2.0) -> Initializer:
    """Normal samples truncated to ``[lower, upper]`` standard deviations, scaled by ``stddev``.

    >>> import jax, nnxlite as nnx
    >>> float(abs(nnx.initializers.truncated_normal(1.0)(jax.random.PRNGKey(0), (100,))).max()) <= 2
    True
    """

    @_accepts_out_sharding
    def init(key, shape, dtype=dtype):
        dtype = _float_dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            return _jax.truncated_normal(stddev, dtype, lower, upper)(key, shape, dtype)

        def sample(k, s, d):
            return random.truncated_normal(k, lower, upper, s, d)

        return _draw(sample, key, shape, dtype, jnp.array(stddev, dtype))

    return init


def _fans(shape: tuple[int, ...], in_axis: Axes, out_axis: Axes, batch_axis: Axes) -> tuple[float, float]:
    """Fan-in and fan-out: the in/out axis sizes times the receptive field (all other non-batch axes)."""
    if len(shape) <= 1 and in_axis == -2:
        raise ValueError(
            f"variance_scaling cannot find the input axis of a {len(shape)}-D shape {shape}; "
            "give in_axis= (and out_axis=) explicitly."
        )

    def size(axes):
        return shape[axes] if isinstance(axes, int) else math.prod(shape[a] for a in axes)

    in_size, out_size, batch_size = size(in_axis), size(out_axis), size(batch_axis)
    receptive_field = math.prod(shape) / in_size / out_size / batch_size
    return in_size * receptive_field, out_size * receptive_field


def variance_scaling(
    scale: float,
    mode: Literal["fan_in", "fan_out", "fan_avg", "fan_geo_avg"],
    distribution: Literal["truncated_normal", "normal", "uniform"],
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
    dtype: Any = None,
) -> Initializer:
    """Samples with variance ``scale / n``, ``n`` the fan chosen by ``mode`` (``jax.nn.initializers.variance_scaling``).

    Axes other than ``in_axis``, ``out_axis`` and ``batch_axis`` count as the
    receptive field (a convolution's window), so a ``(3, 3, 16, 32)`` kernel
    has fan-in ``3 * 3 * 16``.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
    >>> round(float(jnp.std(init(jax.random.PRNGKey(0), (400, 300)))) * 20, 1)   # std = 1/sqrt(400)
    1.0
    """
    modes = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
    distributions = ("truncated_normal", "normal", "uniform")
    if mode not in modes:
        raise ValueError(f"variance_scaling: mode={mode!r} is not one of {modes}.")
    if distribution not in distributions:
        raise ValueError(f"variance_scaling: distribution={distribution!r} is not one of {distributions}.")

    @_accepts_out_sharding
    def init(key, shape, dtype=dtype):
        dtype = _float_dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):  # complex: JAX's own disk/complex-normal samplers
            reference = _jax.variance_scaling(scale, mode, distribution, in_axis, out_axis, batch_axis, dtype)
            return reference(key, shape, dtype)
        shape = tuple(int(n) for n in shape)
        fan_in, fan_out = _fans(shape, in_axis, out_axis, batch_axis)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2,
             "fan_geo_avg": (fan_in * fan_out) ** 0.5}[mode]
        variance = jnp.array(scale / n, dtype=dtype)
        if distribution == "truncated_normal":
            # 0.8796... is the standard deviation of a standard normal truncated to [-2, 2].
            stddev = jnp.sqrt(variance) / jnp.array(0.87962566103423978, dtype)
            return _draw(_truncated_normal_2, key, shape, dtype, stddev)
        if distribution == "normal":
            return _draw(random.normal, key, shape, dtype, jnp.sqrt(variance))
        return _draw(_uniform_pm1, key, shape, dtype, jnp.sqrt(3 * variance))

    return init


def _truncated_normal_2(key, shape, dtype):
    return random.truncated_normal(key, -2, 2, shape, dtype)


def _uniform_pm1(key, shape, dtype):
    return random.uniform(key, shape, dtype, -1)


def _family(name: str, scale: float, mode: str, distribution: str, summary: str):
    def factory(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (), dtype: Any = None) -> Initializer:
        return variance_scaling(scale, mode, distribution, in_axis, out_axis, batch_axis, dtype)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"""{summary}

    ``variance_scaling({scale}, "{mode}", "{distribution}", ...)``; see :func:`variance_scaling`.

    >>> import jax, nnxlite as nnx
    >>> nnx.initializers.{name}()(jax.random.PRNGKey(0), (3, 4)).shape
    (3, 4)
    """
    return factory


lecun_normal = _family("lecun_normal", 1.0, "fan_in", "truncated_normal", "Variance ``1/fan_in``, truncated normal (the default kernel init).")
lecun_uniform = _family("lecun_uniform", 1.0, "fan_in", "uniform", "Variance ``1/fan_in``, uniform.")
glorot_normal = _family("glorot_normal", 1.0, "fan_avg", "truncated_normal", "Variance ``2/(fan_in + fan_out)``, truncated normal.")
glorot_uniform = _family("glorot_uniform", 1.0, "fan_avg", "uniform", "Variance ``2/(fan_in + fan_out)``, uniform.")
he_normal = _family("he_normal", 2.0, "fan_in", "truncated_normal", "Variance ``2/fan_in``, truncated normal (for ReLU networks).")
he_uniform = _family("he_uniform", 2.0, "fan_in", "uniform", "Variance ``2/fan_in``, uniform (for ReLU networks).")
xavier_normal, xavier_uniform = glorot_normal, glorot_uniform
kaiming_normal, kaiming_uniform = he_normal, he_uniform

default_kernel_init = lecun_normal()
default_bias_init = zeros
# Embeddings are read row by row, so their scale is set by the feature axis (axis 1).
default_embed_init = variance_scaling(1.0, "fan_in", "normal", out_axis=0)
