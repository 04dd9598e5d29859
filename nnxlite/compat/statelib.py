"""``nnx.statelib``: flax.nnx's State module, as names over :mod:`nnxlite.state`."""

from nnxlite.compat import (  # noqa: F401
    FlatState, GraphState, PureState, filter_state, from_flat_state, map_state, merge_state, replace_by_pure_dict,
    restore_int_paths, split_state, to_flat_state, to_pure_dict,
)
from nnxlite.state import State  # noqa: F401
