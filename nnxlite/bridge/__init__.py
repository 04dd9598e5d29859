"""``nnx.bridge``: use Flax Linen modules inside nnxlite models, and nnxlite modules inside Linen.

* :class:`ToNNX` wraps a Linen module as an nnxlite Module; its Linen
  variables become Variables (``params`` → ``nnx.Param``, ``batch_stats`` →
  ``nnx.BatchStat``, other collections → the Variable type registered by
  name, see :func:`nnxlite.register_variable_name`), created from a sample
  input by :func:`lazy_init` (or on the first call).
* :class:`ToLinen` / :func:`to_linen` wrap an nnxlite Module class as a Linen
  module: ``init`` builds it and stores its Variables in Linen collections,
  ``apply`` rebuilds it from them and writes updated state back to mutable
  collections. Variables carrying metadata (e.g. sharding) are stored boxed
  in :class:`NNXMeta`, which Linen's ``nn.unbox``/``nn.get_partition_spec``
  understand.

Linen is part of Flax, an optional dependency: ``pip install "nnxlite[parity]"``.
``import nnxlite`` does not import this package; ``nnx.bridge`` does, on first use.

>>> import jax, jax.numpy as jnp, flax.linen as nn, nnxlite as nnx
>>> from nnxlite import bridge
>>> model = bridge.lazy_init(bridge.ToNNX(nn.Dense(3), rngs=nnx.Rngs(0)), jnp.ones((1, 2)))
>>> type(model.kernel).__name__, model(jnp.ones((1, 2))).shape
('Param', (1, 3))
"""

try:
    import flax.linen  # noqa: F401  (Linen is what this package bridges to)
except ImportError as err:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "nnxlite.bridge needs Flax's Linen, which is an optional dependency of nnxlite. "
        'Install it with: pip install "nnxlite[parity]"'
    ) from err

from nnxlite.bridge.variables import NNXMeta, to_linen_var, to_nnx_var
from nnxlite.bridge.wrappers import ToLinen, ToNNX, lazy_init, to_linen

__all__ = ["ToNNX", "ToLinen", "to_linen", "lazy_init", "NNXMeta", "to_linen_var", "to_nnx_var"]
