"""``nnx.graphlib``: flax.nnx's graph module, as names over :mod:`nnxlite.graph`."""

from nnxlite.compat import call, cached_partial, iter_children, iter_module_children  # noqa: F401
from nnxlite.graph import GraphDef, clone, graphdef, iter_graph, merge, pop, split, state, update  # noqa: F401
from nnxlite.compat import FlatState, GraphState, PureState, map_state  # noqa: F401,E402
from nnxlite.compat.graph_tools import find_duplicates, recursive_map, set_metadata  # noqa: F401,E402
from nnxlite.state import State  # noqa: F401,E402
from nnxlite.variables import Variable  # noqa: F401,E402
from nnxlite.view import vars_as, with_vars  # noqa: F401,E402
from nnxlite.transforms.modes import set_graph_mode, set_graph_updates  # noqa: F401,E402
