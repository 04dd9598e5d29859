"""Layers, activations, pooling and attention helpers.

Everything listed in ``__all__`` here is also exported at the top level
(``nnx.Linear``, ``nnx.relu``, ``nnx.make_causal_mask``)::

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> ctx = nnx.context(0)
    >>> model = nnx.Sequence([nnx.Conv(1, 4, 3, ctx=ctx), nnx.relu,        # 1D: (batch, length, channels)
    ...                       lambda x: nnx.max_pool(x, (2,), strides=(2,)),
    ...                       lambda x: x.reshape(x.shape[0], -1), nnx.Linear(16, 10, ctx=ctx)])
    >>> model(jnp.ones((2, 8, 1))).shape
    (2, 10)

Submodules: ``nnx.initializers`` (``init(key, shape, dtype)`` functions),
``nnx.activations``, and ``nnxlite.nn.dtypes`` (dtype promotion rules).
"""

from nnxlite.nn import activations, dtypes, initializers
from nnxlite.nn.activations import *  # noqa: F401,F403
from nnxlite.nn.activations import __all__ as _activations
from nnxlite.nn.attention import *  # noqa: F401,F403
from nnxlite.nn.attention import __all__ as _attention
from nnxlite.nn.containers import *  # noqa: F401,F403
from nnxlite.nn.containers import __all__ as _containers
from nnxlite.nn.conv import *  # noqa: F401,F403
from nnxlite.nn.conv import __all__ as _conv
from nnxlite.nn.embed import *  # noqa: F401,F403
from nnxlite.nn.embed import __all__ as _embed
from nnxlite.nn.linear import *  # noqa: F401,F403
from nnxlite.nn.linear import __all__ as _linear
from nnxlite.nn.lora import *  # noqa: F401,F403
from nnxlite.nn.lora import __all__ as _lora
from nnxlite.nn.normalization import *  # noqa: F401,F403
from nnxlite.nn.normalization import __all__ as _normalization
from nnxlite.nn.pooling import *  # noqa: F401,F403
from nnxlite.nn.pooling import __all__ as _pooling
from nnxlite.nn.recurrent import *  # noqa: F401,F403
from nnxlite.nn.recurrent import __all__ as _recurrent
from nnxlite.nn.reparam import *  # noqa: F401,F403
from nnxlite.nn.reparam import __all__ as _reparam
from nnxlite.nn.stochastic import *  # noqa: F401,F403
from nnxlite.nn.stochastic import __all__ as _stochastic

__all__ = [
    "activations",
    "initializers",
    *_linear,
    *_conv,
    *_embed,
    *_normalization,
    *_stochastic,
    *_attention,
    *_containers,
    *_pooling,
    *_recurrent,
    *_lora,
    *_reparam,
    *_activations,
]
