"""``nnx.graphlib``: flax.nnx's graph module, as names over :mod:`nnxlite.graph`."""

from nnxlite.compat import call, cached_partial, iter_children, iter_module_children  # noqa: F401
from nnxlite.graph import GraphDef, clone, graphdef, iter_graph, merge, pop, split, state, update  # noqa: F401
