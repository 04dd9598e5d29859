"""``nnx.data(...)`` / ``nnx.static(...)`` marks on the items of ``nnx.List`` and ``nnx.Dict``, on nnxlite and flax.nnx."""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite


@pytest.fixture(params=["nnxlite", "flax"])
def nnx(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    return nnxlite


def test_static_items_are_not_leaves(nnx):
    ls = nnx.List([nnx.static(10), nnx.static(20), nnx.static(30)])
    assert jax.tree.leaves(ls) == []
    assert list(ls) == [10, 20, 30]  # the marks are gone, the values stay


def test_data_items_are_leaves_even_when_they_are_numbers(nnx):
    ls = nnx.List([nnx.data(1), nnx.data(2), nnx.data(3)])
    leaves = jax.tree.leaves(ls)
    assert leaves == [1, 2, 3] and all(type(x) is int for x in leaves)


def test_mixed_marks_and_unmarked_items(nnx):
    ls = nnx.List([nnx.data(jnp.array(1)), nnx.static(100), nnx.data(jnp.array(2)), 7, nnx.static("relu")])
    leaves = jax.tree.leaves(ls)
    assert len(leaves) == 2
    np.testing.assert_array_equal(leaves[0], 1)
    np.testing.assert_array_equal(leaves[1], 2)
    assert ls[1] == 100 and ls[3] == 7 and ls[4] == "relu"


def test_flatten_unflatten_round_trip(nnx):
    ls = nnx.List([nnx.data(10), nnx.static("hello"), nnx.data(20)])
    leaves, treedef = jax.tree.flatten(ls)
    assert leaves == [10, 20]
    new = jax.tree.unflatten(treedef, [x * 2 for x in leaves])
    assert list(new) == [20, "hello", 40]
    assert jax.tree.leaves(new) == [20, 40]  # the marks survive the round trip


def test_under_jit_static_items_are_constants(nnx):
    ls = nnx.List([nnx.data(jnp.array(1.0)), nnx.static(999)])
    out = jax.jit(lambda ls: jax.tree.map(lambda x: x * 2, ls))(ls)
    np.testing.assert_array_equal(out[0], 2.0)
    assert out[1] == 999


def test_marks_belong_to_the_index_and_stay_for_later_assignments(nnx):
    ls = nnx.List([nnx.data(1), 2])
    ls[0] = 5
    ls[1] = 6
    assert jax.tree.leaves(ls) == [5]
    ls.append(nnx.data(7))
    assert jax.tree.leaves(ls) == [5, 7]


def test_dict_values_marked_per_key(nnx):
    d = nnx.Dict(lr=nnx.data(0.1), name=nnx.static("sgd"), steps=3)
    assert jax.tree.leaves(d) == [0.1]
    d["steps"] = nnx.data(4)
    assert sorted(jax.tree.leaves(d)) == [0.1, 4]
    assert d["name"] == "sgd"


def test_marked_items_are_state_inside_a_module(nnx):
    class Model(nnx.Module):
        def __init__(self):
            self.items = nnx.List([nnx.data(1), nnx.static(2), jnp.ones(1)])

    model = Model()
    assert [np.asarray(x).tolist() for x in jax.tree.leaves(model)] == [1, [1.0]]
    state = nnx.state(model)
    assert np.asarray(state["items"][0]).tolist() == 1
    graphdef, state = nnx.split(model)
    clone = nnx.merge(graphdef, state)
    assert len(jax.tree.leaves(clone)) == 2 and clone.items[1] == 2


def test_static_mark_on_data_is_refused(nnx):
    with pytest.raises(ValueError, match="static"):
        nnx.List([nnx.static(jnp.ones(2))])


def test_the_error_names_the_index_and_the_fix():
    ls = nnxlite.List([1, nnxlite.static(2)])
    with pytest.raises(ValueError, match=r"(?s)List\[1\] is marked nnx.static\(...\) but the value is data \(Array\).*Fix"):
        ls[1] = jnp.ones(2)
    assert ls[1] == 2  # nothing was written
    with pytest.raises(ValueError, match=r"Dict\['w'\] is marked nnx.static"):
        nnxlite.Dict(w=nnxlite.static(nnxlite.Param(jnp.ones(1))))


def test_marks_survive_pickle_split_merge_and_keep_the_type():
    ls = nnxlite.List([nnxlite.data(1), "a"])
    assert isinstance(ls, nnxlite.List) and type(ls).__name__ == "List" and repr(ls) == "[1, 'a']"
    again = pickle.loads(pickle.dumps(ls))
    assert list(again) == [1, "a"] and jax.tree.leaves(again) == [1]
    d = nnxlite.Dict(x=nnxlite.data(2.0))
    assert jax.tree.leaves(pickle.loads(pickle.dumps(d))) == [2.0]
    # Unmarked containers are the plain classes: marks cost nothing when unused.
    assert type(nnxlite.List([1])) is nnxlite.List and type(nnxlite.Dict(a=1)) is nnxlite.Dict
    # The same marks give the same GraphDef (no retrace under nnx.jit).
    assert nnxlite.graphdef(nnxlite.List([nnxlite.data(1)])) == nnxlite.graphdef(nnxlite.List([nnxlite.data(5)]))
