"""Initializers: bit-for-bit equal to jax.nn.initializers (they only draw flat, see the module docstring)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from nnxlite.nn import initializers as ours

# Reference draws with JAX's shaped samplers compile slowly for rank >= 3, so most cases are 1-D/2-D.
CASES = [
    ("lecun_normal", (), (3, 5)),
    ("lecun_uniform", (), (6, 4)),
    ("normal", (0.3,), (4, 3)),
    ("uniform", (2.0,), (7,)),
    ("truncated_normal", (0.5, None, -1.0, 3.0), (9,)),
]


@pytest.mark.parametrize("name, args, shape", CASES)
def test_initializers_equal_jax_bit_for_bit(name, args, shape):
    key = jax.random.PRNGKey(7)
    mine = getattr(ours, name)(*args)(key, shape, jnp.float32)
    theirs = getattr(jax.nn.initializers, name)(*args)(key, shape, jnp.float32)
    assert mine.shape == shape and mine.dtype == theirs.dtype
    np.testing.assert_array_equal(mine, theirs)


def test_variance_scaling_modes_axes_and_typed_keys_equal_jax():
    key = jax.random.PRNGKey(7)
    for mode in ("fan_in", "fan_out", "fan_avg", "fan_geo_avg"):
        args = (1.5, mode, "normal", 1, 0)  # in_axis=1, out_axis=0
        np.testing.assert_array_equal(
            ours.variance_scaling(*args)(key, (5, 3)), jax.nn.initializers.variance_scaling(*args)(key, (5, 3))
        )
    typed = jax.random.key(7)
    np.testing.assert_array_equal(ours.normal(1.0)(typed, (5, 3)), jax.nn.initializers.normal(1.0)(typed, (5, 3)))


def test_draws_above_the_bucket_limit_are_not_padded_and_still_equal(monkeypatch):
    monkeypatch.setattr(ours, "_BUCKET_LIMIT", 8)  # (5, 3) now takes the unpadded path
    key = jax.random.PRNGKey(7)
    np.testing.assert_array_equal(ours.normal(1.0)(key, (5, 3)), jax.nn.initializers.normal(1.0)(key, (5, 3)))


def test_equal_to_jax_without_partitionable_threefry_too():
    key = jax.random.PRNGKey(7)
    with jax.threefry_partitionable(False):
        np.testing.assert_array_equal(ours.lecun_normal()(key, (3, 4)), jax.nn.initializers.lecun_normal()(key, (3, 4)))


def test_initializer_errors_and_factories():
    with pytest.raises(ValueError, match="mode='fan_sum'"):
        ours.variance_scaling(1.0, "fan_sum", "normal")
    with pytest.raises(ValueError, match="give in_axis="):
        ours.lecun_normal()(jax.random.PRNGKey(0), (4,))
    assert ours.zeros_init() is ours.zeros and ours.ones_init() is ours.ones
    assert ours.xavier_uniform is ours.glorot_uniform and ours.kaiming_normal is ours.he_normal
    assert nnx.initializers is ours
