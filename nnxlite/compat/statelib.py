"""``nnx.statelib``: flax.nnx's State module, as names over :mod:`nnxlite.state`."""

from nnxlite.compat import (  # noqa: F401
    FlatState, GraphState, PureState, filter_state, from_flat_state, map_state, merge_state, replace_by_pure_dict,
    restore_int_paths, split_state, to_flat_state, to_pure_dict,
)
from nnxlite.state import State  # noqa: F401


def diff(state: State, other: State) -> State:
    """The leaves of ``state`` whose paths ``other`` does not have (flax's ``nnx.statelib.diff``).

    Only paths count, not values: the result is what ``state`` adds to
    ``other``'s structure. An empty ``other`` gives ``state`` itself.

    >>> import nnxlite as nnx
    >>> small = nnx.state(nnx.Linear(2, 2, use_bias=False, rngs=nnx.Rngs(0)))
    >>> big = nnx.state(nnx.Linear(2, 2, rngs=nnx.Rngs(1)))
    >>> nnx.statelib.diff(big, small).paths()
    (('bias',),)
    >>> len(nnx.statelib.diff(small, big))
    0
    """
    if not other:
        return state
    known = set(other.paths())
    return state.filter(lambda path, _: path not in known)
