"""nnxlite: eager, Pythonic neural-network modules for JAX, pure and fast once compiled.

>>> import jax.numpy as jnp
>>> import nnxlite as nnx
>>> model = nnx.Linear(2, 3, ctx=nnx.context(0))
>>> model(jnp.ones((1, 2))).shape
(1, 3)
"""

from nnxlite import filters
from nnxlite import display
from nnxlite.display import tabulate
from nnxlite.filters import All, Any, Not, PathContains
from nnxlite.graph import GraphDef, ModuleDef, clone, graphdef, iter_graph, merge, pop, split, state, update
from nnxlite.module import Dict, List, Module
from nnxlite._data import DataLeaf, data, is_data, register_data_type, static
from nnxlite.pytree import Object, Pytree, check_pytree, dataclass
from nnxlite.rng import Context, ContextDef, Rngs, RngStream, context
from nnxlite.rng_ops import SplitBackups, backup_keys, fork_rngs, reseed, restore_rngs, split_rngs, with_rngs
from nnxlite.state import State
from nnxlite.variables import (
    BatchStat,
    Cache,
    Intermediate,
    OptState,
    Param,
    Perturbation,
    RngCount,
    RngKey,
    RngState,
    TracerLeakError,
    Variable,
)
from nnxlite.functional import Transformed, fold_rngs, merge_states, param_from_init, split_trainable, transform
from nnxlite.sharding import (
    Partitioned,
    get_logical_axis_rules,
    get_named_sharding,
    get_partition_spec,
    logical_axis_rules,
    logical_to_mesh_axes,
    sharded_init,
    with_partitioning,
)
from nnxlite import nn
from nnxlite.nn import *  # noqa: F401,F403  (layers at the top level: nnx.Linear)
from nnxlite.nn import initializers
from nnxlite import training
from nnxlite.training import metrics
from nnxlite.training.metrics import Accuracy, Average, Metric, MultiMetric
from nnxlite.training.optimizer import Optimizer
from nnxlite import checkpoint
from nnxlite.checkpoint import restore, save
from nnxlite import transforms
from nnxlite import compat
from nnxlite.compat import *  # noqa: F401,F403  (flax.nnx's names: to_pure_dict, merge_state, OfType, ...)
from nnxlite.compat import graphlib, rnglib, statelib, variablelib
from nnxlite import filters as filterlib
from nnxlite.training import optimizer
from nnxlite.training.optimizer import ModelAndOptimizer
from nnxlite.transforms import (
    Carry,
    checkify,
    cond,
    custom_vjp,
    eval_shape,
    fori_loop,
    grad,
    jit,
    jvp,
    pmap,
    remat,
    scan,
    shard_map,
    switch,
    transform_metadata,
    value_and_grad,
    vjp,
    vmap,
    while_loop,
)
from nnxlite.transforms.lift_types import DiffState, StateAxes, StateSharding
from nnxlite.transforms.modes import set_graph_mode, set_graph_updates

# -- flax.nnx names: thin layers over the one core (docs/guides/from_flax_nnx.md) --
from nnxlite._capture import capture
from nnxlite.compat import traversals
from nnxlite.compat.graph_tools import find_duplicates, recursive_map, set_metadata
from nnxlite.compat.var_config import VarDefaults, use_eager_sharding, using_eager_sharding, var_defaults
from nnxlite.view import vars_as, view, view_info, with_attributes, with_vars

from nnxlite.training.ema import EMA
from nnxlite.training.train_state import TrainState
from nnxlite.compat import callable_variables as _callable_variables  # nnx.variables(model, nnx.Param)
from nnxlite.compat.graph_api import as_pure, flatten, has_data, jit_partial, make_jaxpr, map, pure, unflatten, unpack
from nnxlite.compat.contexts import (
    MergeContext,
    SplitContext,
    UpdateContext,
    current_update_context,
    merge_context,
    split_context,
    update_context,
)
from nnxlite.compat.tree_api import NodeStates, abstract_with_sharding, as_abstract, from_tree, get_abstract_model, prefix, to_tree
from nnxlite._data import Data, Static
from nnxlite.compat.variable_names import register_variable_name, variable_name_from_type, variable_type_from_name
from nnxlite.compat.submodules import OptArray, OptVariable
from nnxlite.compat import submodules as _submodules

globals().update(_submodules.make_submodules(__import__("sys").modules[__name__]))

__version__ = "0.1.0"


def __getattr__(name: str):
    # nnx.bridge needs flax (Linen): imported on first use only, never by `import nnxlite`.
    # nnx.wrappers is its ToNNX/ToLinen module, which flax.nnx also has at the top level.
    if name in ("bridge", "wrappers"):
        import importlib

        return importlib.import_module("nnxlite.bridge" if name == "bridge" else "nnxlite.bridge.wrappers")
    raise AttributeError(f"module 'nnxlite' has no attribute {name!r}")
