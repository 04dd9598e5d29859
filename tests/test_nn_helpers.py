"""Shared helpers for ``tests/test_nn_*.py`` (plus tests of the helpers themselves).

* ``copy_params_to_flax(ours, theirs)`` asserts that our layer and the flax
  layer have exactly the same parameter paths and shapes, then writes our
  values into the flax layer, so both compute with the same weights.
* ``np_normal(seed)`` is an initializer drawing from numpy: tests that only
  need some weights skip compiling random draws for every parameter shape.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx


def np_normal(seed: int = 0, scale: float = 1.0):
    """An initializer ``(key, shape, dtype) -> array`` that ignores the key and draws from numpy."""
    rng = np.random.default_rng(seed)

    def init(key, shape, dtype=jnp.float32):
        return jnp.asarray(scale * rng.standard_normal(shape), dtype)

    return init


def copy_params_to_flax(ours, theirs, variable_type=None):
    """Copy every Param (or ``variable_type``) of ``ours`` into the flax module ``theirs``, by path."""
    from flax import nnx as fnnx

    our_type = variable_type or nnx.Param
    their_type = {nnx.Param: fnnx.Param, nnx.BatchStat: fnnx.BatchStat}[our_type]
    flat = dict(nnx.state(ours, our_type).flat())
    their_state = fnnx.state(theirs, their_type)
    their_flat = dict(fnnx.to_flat_state(their_state))
    assert sorted(flat, key=str) == sorted(their_flat, key=str), "parameter paths differ from flax.nnx"
    for path, value in flat.items():
        their_shape = tuple(their_flat[path].get_value().shape)
        assert tuple(np.shape(value)) == their_shape, f"shape differs at {path}: {np.shape(value)} vs {their_shape}"
        their_flat[path].set_value(jnp.asarray(value))
    fnnx.update(theirs, fnnx.from_flat_state(their_flat))

def test_parity_helper_rejects_different_paths():
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.Linear(2, 3, use_bias=False, kernel_init=np_normal(), ctx=nnx.context(0))
    theirs = fnnx.Linear(2, 3, kernel_init=fnnx.initializers.zeros, rngs=fnnx.Rngs(0))
    with pytest.raises(AssertionError, match="paths differ"):
        copy_params_to_flax(ours, theirs)


def test_parity_helper_copies_values():
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.Linear(2, 3, kernel_init=np_normal(), ctx=nnx.context(0))
    theirs = fnnx.Linear(2, 3, kernel_init=fnnx.initializers.zeros, rngs=fnnx.Rngs(5))
    copy_params_to_flax(ours, theirs)
    np.testing.assert_array_equal(theirs.kernel[...], ours.kernel.value)


def test_np_normal_is_reproducible_and_shaped():
    a = np_normal(3)(None, (2, 3))
    b = np_normal(3)(None, (2, 3))
    assert a.shape == (2, 3) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)

