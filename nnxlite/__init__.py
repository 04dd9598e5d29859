"""nnxlite: eager, Pythonic neural-network modules for JAX, pure and fast once compiled.

>>> import jax.numpy as jnp
>>> import nnxlite as nnx
>>> model = nnx.Linear(2, 3, ctx=nnx.context(0))
>>> model(jnp.ones((1, 2))).shape
(1, 3)
"""

from nnxlite import filters
from nnxlite import display
from nnxlite.autodiff import grad, value_and_grad
from nnxlite.filters import All, Any, Not, PathContains
from nnxlite.graph import GraphDef, ModuleDef, clone, graphdef, iter_graph, merge, pop, split, state, update
from nnxlite.module import Dict, List, Module
from nnxlite.rng import Context, ContextDef, Rngs, RngStream, context
from nnxlite.state import State
from nnxlite.variables import (
    BatchStat,
    Cache,
    Intermediate,
    OptState,
    Param,
    RngCount,
    RngKey,
    RngState,
    Variable,
)
from nnxlite import nn
from nnxlite.nn import *  # noqa: F401,F403  (layers at the top level: nnx.Linear)
from nnxlite.nn import initializers

__version__ = "0.1.0"
