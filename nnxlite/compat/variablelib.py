"""``nnx.variablelib``: flax.nnx's Variable module, as names over :mod:`nnxlite.variables`."""

from nnxlite.compat import VariableMetadata, with_metadata  # noqa: F401
from nnxlite.variables import (  # noqa: F401
    BatchStat, Cache, Intermediate, OptState, Param, RngCount, RngKey, RngState, Variable,
)
from nnxlite.compat import A  # noqa: F401,E402
from nnxlite.compat.var_config import VarDefaults, use_eager_sharding, using_eager_sharding, var_defaults  # noqa: F401,E402
from nnxlite.variables import Perturbation  # noqa: F401,E402

VariableState = Variable  # flax's older name: a flax Variable is its own state
