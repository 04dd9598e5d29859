"""Initializers: functions ``init(key, shape, dtype) -> array``.

These are JAX's own initializers, re-exported so that layers and users spell
them one way::

    >>> import jax, nnxlite as nnx
    >>> init = nnx.initializers.lecun_normal()
    >>> init(jax.random.PRNGKey(0), (3, 4)).shape
    (3, 4)
"""

from jax.nn.initializers import (  # noqa: F401
    constant,
    delta_orthogonal,
    glorot_normal,
    glorot_uniform,
    he_normal,
    he_uniform,
    kaiming_normal,
    kaiming_uniform,
    lecun_normal,
    lecun_uniform,
    normal,
    ones,
    orthogonal,
    truncated_normal,
    uniform,
    variance_scaling,
    xavier_normal,
    xavier_uniform,
    zeros,
)

Initializer = object  # documentation alias: any callable (key, shape, dtype) -> array

default_kernel_init = lecun_normal()
default_bias_init = zeros
