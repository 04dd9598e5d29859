"""Embed: lookups and attend against numpy indexing, errors, dtypes, and flax.nnx parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from test_nn_helpers import copy_params_to_flax, np_normal

RNG = np.random.default_rng(0)


def test_embed_lookup_is_row_indexing():
    embed = nnx.Embed(7, 3, embedding_init=np_normal(0), ctx=nnx.context(0))
    table = np.asarray(embed.embedding.value)
    ids = np.array([[0, 6, 2], [-1, 3, 3]])
    np.testing.assert_array_equal(embed(jnp.asarray(ids)), table[ids])


def test_embed_out_of_range_ids_give_nan_rows():
    embed = nnx.Embed(4, 2, embedding_init=np_normal(0), ctx=nnx.context(0))
    out = embed(jnp.array([1, 4]))
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()


def test_embed_attend_ties_weights():
    embed = nnx.Embed(5, 3, embedding_init=np_normal(0), ctx=nnx.context(0))
    q = RNG.standard_normal((2, 4, 3)).astype(np.float32)
    expected = q @ np.asarray(embed.embedding.value).T
    np.testing.assert_allclose(embed.attend(jnp.asarray(q)), expected, rtol=1e-5, atol=1e-5)
    # The same Variable serves both directions: a gradient through attend reaches the table.
    graphdef, params = nnx.split(embed)
    grads = jax.grad(lambda p: nnx.merge(graphdef, p).attend(jnp.asarray(q)).sum())(params)
    assert float(jnp.abs(grads.flat()[("embedding",)]).sum()) > 0


def test_embed_single_row_broadcasts():
    embed = nnx.Embed(1, 3, embedding_init=np_normal(0), ctx=nnx.context(0))
    out = embed(jnp.zeros((2, 4), jnp.int32))
    assert out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out[1, 3], embed.embedding.value[0])


def test_embed_errors_and_dtypes():
    embed = nnx.Embed(5, 3, dtype=jnp.bfloat16, param_dtype=jnp.float16, embedding_init=np_normal(0), ctx=nnx.context(0))
    assert embed.embedding.dtype == jnp.float16
    assert embed(jnp.array([1])).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="integer ids.*astype"):
        embed(jnp.array([1.0]))
    with pytest.raises(ValueError, match=r"attend expected a query whose last axis has size 3, got shape \(2, 4\)"):
        embed.attend(jnp.ones((2, 4)))


def test_embed_default_init_has_unit_variance_rows():
    embed = nnx.Embed(4096, 8, ctx=nnx.context(0))
    # variance_scaling(1, fan_in, normal, out_axis=0): fan_in is the feature axis (8) -> std 1/sqrt(8).
    np.testing.assert_allclose(float(jnp.std(embed.embedding.value)), 8**-0.5, rtol=0.05)


def test_embed_parity_with_flax():
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.Embed(6, 4, embedding_init=np_normal(0), ctx=nnx.context(0))
    theirs = fnnx.Embed(6, 4, embedding_init=jax.nn.initializers.zeros, rngs=fnnx.Rngs(0))
    copy_params_to_flax(ours, theirs)
    ids = jnp.array([[0, 5, -2], [3, 3, 1]])
    np.testing.assert_array_equal(ours(ids), theirs(ids))
    q = jnp.asarray(RNG.standard_normal((2, 4)).astype(np.float32))
    np.testing.assert_allclose(ours.attend(q), theirs.attend(q), rtol=1e-6, atol=1e-6)
