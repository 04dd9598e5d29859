"""``nnx.variablelib``: flax.nnx's Variable module, as names over :mod:`nnxlite.variables`."""

from nnxlite.compat import VariableMetadata, with_metadata  # noqa: F401
from nnxlite.variables import (  # noqa: F401
    BatchStat, Cache, Intermediate, OptState, Param, RngCount, RngKey, RngState, Variable,
)
from nnxlite.compat import A  # noqa: F401,E402
from nnxlite.compat.var_config import VarDefaults, use_eager_sharding, using_eager_sharding, var_defaults  # noqa: F401,E402
from nnxlite.variables import Perturbation  # noqa: F401,E402

VariableState = Variable  # flax's older name: a flax Variable is its own state

# The Variable-name registry is defined later in nnxlite's import: forwarded on first use.
_FORWARDED = frozenset({"register_variable_name", "variable_name_from_type", "variable_type_from_name"})


def __getattr__(name: str):
    if name in _FORWARDED:
        import nnxlite

        return getattr(nnxlite, name)
    raise AttributeError(f"module 'nnxlite.compat.variablelib' has no attribute {name!r}")
