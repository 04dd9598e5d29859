"""``nnx.graphlib``: flax.nnx's graph module, as names over :mod:`nnxlite.graph`."""

from nnxlite.compat import call, cached_partial, iter_children, iter_module_children  # noqa: F401
from nnxlite.graph import GraphDef, clone, graphdef, iter_graph, merge, pop, split, state, update  # noqa: F401
from nnxlite.compat import FlatState, GraphState, PureState, map_state  # noqa: F401,E402
from nnxlite.compat.graph_tools import find_duplicates, recursive_map, set_metadata  # noqa: F401,E402
from nnxlite.state import State  # noqa: F401,E402
from nnxlite.variables import Variable  # noqa: F401,E402
from nnxlite.view import vars_as, with_vars  # noqa: F401,E402
from nnxlite.transforms.modes import set_graph_mode, set_graph_updates  # noqa: F401,E402

# Names defined later in nnxlite's import (the flat-graph and graph-context API at the top
# level): forwarded on first use rather than imported here, which would be circular.
_FORWARDED = frozenset({
    "as_pure", "pure", "flatten", "unflatten", "unpack", "map", "variables", "MergeContext", "SplitContext",
    "UpdateContext", "merge_context", "split_context", "update_context", "current_update_context",
})


def __getattr__(name: str):
    if name in _FORWARDED:
        import nnxlite

        return getattr(nnxlite, name)
    raise AttributeError(f"module 'nnxlite.compat.graphlib' has no attribute {name!r}")
