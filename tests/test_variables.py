"""Variables: array-likeness, in-place updates, metadata, pytree behaviour."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx


class Count(nnx.Variable):
    pass


def test_arithmetic_matmul_comparisons_indexing():
    w = nnx.Param(jnp.arange(6.0).reshape(2, 3))
    x = jnp.ones((1, 2))
    np.testing.assert_array_equal(x @ w, x @ w.value)
    np.testing.assert_array_equal(w + 1, w.value + 1)
    np.testing.assert_array_equal(1 - w, 1 - w.value)
    np.testing.assert_array_equal(w[1], w.value[1])
    assert bool((w > 2).sum() == 3)
    assert w.shape == (2, 3) and w.dtype == jnp.float32 and w.ndim == 2 and w.size == 6
    np.testing.assert_array_equal(jnp.sum(w), 15.0)  # jnp functions accept Variables
    np.testing.assert_array_equal(jax.nn.relu(-w), jnp.zeros((2, 3)))
    np.testing.assert_array_equal(np.asarray(w), np.asarray(w.value))


def test_numpy_left_operand_defers_to_variable():
    w = nnx.Param(jnp.ones((2, 2)))
    out = np.ones((1, 2)) @ w
    assert isinstance(out, jax.Array)


def test_inplace_ops_keep_the_same_object():
    c = Count(0)
    obj = c
    c += 1
    c *= 3
    assert c is obj and c.value == 3
    w = nnx.Param(jnp.zeros(3))
    w[1] = 5.0
    np.testing.assert_array_equal(w.value, jnp.array([0.0, 5.0, 0.0]))


def test_value_assignment_and_replace():
    p = nnx.Param(jnp.zeros(2), note="x")
    p.value = jnp.ones(2)
    np.testing.assert_array_equal(p.value, jnp.ones(2))
    q = p.replace(jnp.full(2, 3.0))
    assert type(q) is nnx.Param and q.note == "x" and q is not p


def test_metadata_attributes_and_errors():
    p = nnx.Param(1.0, sharding=("a",))
    assert p.sharding_names == ("a",) and p.metadata == {"sharding": ("a",)}
    p.set_metadata(sharding=("b",), tag=1)
    assert p.sharding_names == ("b",) and p.tag == 1
    with pytest.raises(AttributeError, match="set_metadata"):
        p.missing
    with pytest.raises(AttributeError):
        p.not_metadata = 3  # metadata goes through set_metadata; slots refuse stray attributes


def test_user_subclasses_are_slotted_pytrees():
    assert not hasattr(Count(0), "__dict__")
    leaves, treedef = jax.tree_util.tree_flatten(Count(jnp.ones(2), unit="calls"))
    rebuilt = jax.tree_util.tree_unflatten(treedef, [x * 2 for x in leaves])
    assert type(rebuilt) is Count and rebuilt.unit == "calls"
    np.testing.assert_array_equal(rebuilt.value, 2 * jnp.ones(2))


def test_repr_shows_type_value_and_metadata():
    text = repr(nnx.Param(jnp.zeros(2), sharding=("x",)))
    assert text.startswith("Param(") and "value=" in text and "sharding=('x',)" in text


def test_copy_deepcopy_pickle():
    p = nnx.Param(jnp.ones(2), tag="t")
    for other in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert type(other) is nnx.Param and other is not p and other.tag == "t"
        np.testing.assert_array_equal(other.value, p.value)
