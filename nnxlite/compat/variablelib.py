"""``nnx.variablelib``: flax.nnx's Variable module, as names over :mod:`nnxlite.variables`."""

from nnxlite.compat import VariableMetadata, with_metadata  # noqa: F401
from nnxlite.variables import (  # noqa: F401
    BatchStat, Cache, Intermediate, OptState, Param, RngCount, RngKey, RngState, Variable,
)
