"""Dropout: the mask formula for a known key, modes and overrides, keys, and flax.nnx parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx


def test_dropout_matches_manual_mask_for_the_same_key():
    x = jnp.arange(1.0, 25.0)
    y = nnx.Dropout(0.25)(x, ctx=nnx.context(dropout=3))
    key = nnx.context(dropout=3).make_rng("dropout")  # the first key that stream hands out
    keep = jax.random.bernoulli(key, 0.75, (24,))
    np.testing.assert_allclose(y, np.where(keep, x / 0.75, 0.0), rtol=1e-6)


def test_dropout_broadcast_dims_share_one_mask():
    y = nnx.Dropout(0.5, broadcast_dims=(0,))(jnp.ones((2, 4, 6)), ctx=nnx.context(dropout=0))
    assert (y == y[0]).all()  # both examples get the same mask
    assert 0 < int((y[0] == 0).sum()) < 24


def test_dropout_modes_and_per_call_override():
    drop = nnx.Dropout(0.5, ctx=nnx.context(dropout=0))  # the stored context serves calls without ctx
    x = jnp.ones((2, 4, 6))
    assert not (drop(x) == x).all()
    drop.eval()
    assert drop.deterministic is True
    assert (drop(x) == x).all()
    assert not (drop(x, deterministic=False) == x).all()
    drop.train()
    assert (drop(x, deterministic=True) == x).all()


def test_dropout_draws_a_new_key_each_call_and_records_it_in_the_context():
    ctx = nnx.context(dropout=0)
    drop = nnx.Dropout(0.5)
    a, b = drop(jnp.ones((2, 4, 6)), ctx=ctx), drop(jnp.ones((2, 4, 6)), ctx=ctx)
    assert not (a == b).all()
    assert int(ctx.dropout.count.value) == 2
    # An RngStream or a plain key works too.
    assert drop(jnp.ones(4), ctx=nnx.context(dropout=0).dropout).shape == (4,)
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(drop(jnp.ones(8), ctx=key), drop(jnp.ones(8), ctx=key))


def test_dropout_edge_rates_and_errors():
    x = jnp.ones(5)
    assert (nnx.Dropout(0.0)(x) == x).all()  # no key needed
    assert (nnx.Dropout(1.0)(x, ctx=nnx.context(0)) == 0).all()
    with pytest.raises(ValueError, match="needs random keys.*ctx=nnx.context\\(dropout=0\\)"):
        nnx.Dropout(0.5)(x)
    with pytest.raises(ValueError, match="rate=1.5"):
        nnx.Dropout(1.5)


def test_dropout_under_jit_and_grad():
    drop = nnx.Dropout(0.5)
    graphdef, state = nnx.split(nnx.context(dropout=0))

    @jax.jit
    def f(x, state):
        ctx = nnx.merge(graphdef, state)
        return drop(x, ctx=ctx).sum(), nnx.state(ctx)

    g, _ = jax.grad(f, has_aux=True)(jnp.ones(32), state)
    assert set(np.unique(np.asarray(g)).tolist()) == {0.0, 2.0}


def test_dropout_parity_with_flax():
    fnnx = pytest.importorskip("flax.nnx")
    x = jnp.arange(1.0, 13.0).reshape(3, 4)
    ours = nnx.Dropout(0.4, broadcast_dims=(1,))(x, ctx=nnx.context(dropout=5))
    theirs = fnnx.Dropout(0.4, broadcast_dims=(1,))(x, rngs=fnnx.Rngs(dropout=5))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
