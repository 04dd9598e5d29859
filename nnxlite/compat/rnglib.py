"""``nnx.rnglib``: flax.nnx's RNG module, as names over :mod:`nnxlite.rng` and :mod:`nnxlite.rng_ops`."""

from nnxlite.rng import Context, Rngs, RngStream  # noqa: F401
from nnxlite.rng_ops import (  # noqa: F401
    SplitBackups, backup_keys, fork_rngs, reseed, restore_rngs, split_rngs, with_rngs,
)
from nnxlite.variables import RngCount, RngKey, RngState, Variable  # noqa: F401
from nnxlite.pytree import Pytree  # noqa: F401,E402  (flax re-exports the base class here)
