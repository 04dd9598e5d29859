"""Attention: masks, dot-product attention against an explicit numpy softmax, MultiHeadAttention
(projections written out in numpy), the decode cache, and flax.nnx parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from test_nn_helpers import copy_params_to_flax, np_normal

RNG = np.random.default_rng(0)
INIT = dict(kernel_init=np_normal(0, 0.5), bias_init=np_normal(1, 0.5))
ZEROS = jax.nn.initializers.zeros
# Most tests share one configuration so that eager ops compile once for the whole file:
# batch 2, length 4, 6 input features, 2 heads of 4 (qkv_features 8).
B, L, F, H, D = 2, 4, 6, 2, 4


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_attention(q, k, v, mask=None, bias=None):
    """q (..., Q, H, D), k/v (..., K, H, D) -> (..., Q, H, D), written out head by head."""
    logits = np.einsum("...qhd,...khd->...hqk", q.astype(np.float64), k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = np.where(mask, logits, -1e30)
    return np.einsum("...hqk,...khd->...qhd", np_softmax(logits), v)


# ------------------------------------------------------------------------- masks
def test_masks_match_numpy():
    tokens = np.array([[3, 1, 0, 0], [2, 2, 2, 0]])
    pad = nnx.make_attention_mask(jnp.asarray(tokens > 0), jnp.asarray(tokens > 0))
    assert pad.shape == (2, 1, 4, 4) and pad.dtype == jnp.float32
    np.testing.assert_array_equal(pad[:, 0], (tokens[:, :, None] > 0) & (tokens[:, None, :] > 0))
    causal = nnx.make_causal_mask(jnp.asarray(tokens), extra_batch_dims=1, dtype=jnp.bool_)
    assert causal.shape == (1, 2, 1, 4, 4) and causal.dtype == jnp.bool_
    np.testing.assert_array_equal(causal[0, 1, 0], np.tril(np.ones((4, 4), bool)))
    both = nnx.combine_masks(pad, None, nnx.make_causal_mask(jnp.asarray(tokens)))
    np.testing.assert_array_equal(both[:, 0], np.asarray(pad[:, 0]) * np.tril(np.ones((4, 4))))
    assert nnx.combine_masks() is None
    with pytest.raises(ValueError, match="same number of axes"):
        nnx.combine_masks(pad, pad[0])


# ------------------------------------------------------------- attention functions
def test_dot_product_attention_matches_explicit_softmax_with_mask_and_bias():
    q, k, v = randn(B, L, H, D), randn(B, L, H, D), randn(B, L, H, D)
    mask = RNG.random((B, 1, L, L)) > 0.3
    mask[..., 0] = True  # keep at least one key per query
    bias = randn(1, H, L, L)
    out = nnx.dot_product_attention(*map(jnp.asarray, (q, k, v)), bias=jnp.asarray(bias), mask=jnp.asarray(mask))
    np.testing.assert_allclose(out, np_attention(q, k, v, mask, bias), rtol=1e-5, atol=1e-5)


def test_is_causal_equals_an_explicit_causal_mask_and_no_batch_axes_work():
    q, k, v = randn(L, H, D), randn(L, H, D), randn(L, H, D)  # no batch axes at all
    out = nnx.dot_product_attention(*map(jnp.asarray, (q, k, v)), is_causal=True)
    np.testing.assert_allclose(out, np_attention(q, k, v, np.tril(np.ones((L, L), bool))), rtol=1e-5, atol=1e-5)


def test_grouped_query_attention_shares_each_kv_head_between_query_heads():
    q, k, v = randn(2, 3, 4, 5), randn(2, 6, 2, 5), randn(2, 6, 2, 5)
    out = nnx.dot_product_attention(*map(jnp.asarray, (q, k, v)))
    # Query heads 0, 1 read kv head 0; heads 2, 3 read kv head 1.
    expected = np_attention(q, np.repeat(k, 2, axis=-2), np.repeat(v, 2, axis=-2))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of the number of key/value heads"):
        nnx.dot_product_attention(jnp.ones((1, 3, 3, 5)), jnp.ones((1, 6, 2, 5)), jnp.ones((1, 6, 2, 5)))


def test_attention_weight_dropout_matches_manual_bernoulli_and_sows():
    q, k = jnp.asarray(randn(L, H, D)), jnp.asarray(randn(L, H, D))  # no batch axis: weights (H, L, L)
    key = jax.random.PRNGKey(3)
    recorder = nnx.Module()
    w = nnx.dot_product_attention_weights(q, k, dropout_rng=key, dropout_rate=0.5, module=recorder)
    clean = nnx.dot_product_attention_weights(q, k)
    keep = jax.random.bernoulli(key, 0.5, (1, L, L))  # broadcast over the heads
    np.testing.assert_allclose(w, np.where(keep, clean / 0.5, 0.0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(recorder.attention_weights.value[0], clean, rtol=1e-6)  # sown before dropout
    np.testing.assert_allclose(nnx.dot_product_attention_weights(q, k, dropout_rng=key, dropout_rate=0.5,
                                                                 deterministic=True), clean, rtol=1e-6)
    with pytest.raises(ValueError, match="dropout_rng"):
        nnx.dot_product_attention_weights(q, k, dropout_rate=0.5)


# ----------------------------------------------------------------- MultiHeadAttention
def np_mha(layer, xq, xkv, mask=None):
    p = {path: np.asarray(v) for path, v in nnx.state(layer, nnx.Param).flat().items()}
    q = np.einsum("...f,fhd->...hd", xq, p[("query", "kernel")]) + p[("query", "bias")]
    k = np.einsum("...f,fhd->...hd", xkv, p[("key", "kernel")]) + p[("key", "bias")]
    v = np.einsum("...f,fhd->...hd", xkv, p[("value", "kernel")]) + p[("value", "bias")]
    heads = q.shape[-2]
    k, v = np.repeat(k, heads // k.shape[-2], axis=-2), np.repeat(v, heads // v.shape[-2], axis=-2)
    o = np_attention(q, k, v, mask)
    return np.einsum("...hd,hdf->...f", o, p[("out", "kernel")]) + p[("out", "bias")]


def test_mha_matches_numpy_projections_and_softmax():
    layer = nnx.MultiHeadAttention(H, F, qkv_features=H * D, out_features=5, **INIT, ctx=nnx.context(0))
    assert layer.query.kernel.shape == (F, H, D) and layer.out.kernel.shape == (H, D, 5)
    x = randn(B, L, F)
    mask = np.tril(np.ones((L, L), bool))[None, None]
    np.testing.assert_allclose(layer(jnp.asarray(x), mask=jnp.asarray(mask)), np_mha(layer, x, x, mask), rtol=1e-4, atol=1e-4)


def test_mha_cross_attention_with_grouped_kv_heads():
    layer = nnx.MultiHeadAttention(4, F, qkv_features=8, num_kv_heads=2, in_kv_features=3, **INIT, ctx=nnx.context(0))
    assert layer.key.kernel.shape == (3, 2, 2)
    xq, xkv = randn(B, L, F), randn(B, 5, 3)
    np.testing.assert_allclose(layer(jnp.asarray(xq), jnp.asarray(xkv)), np_mha(layer, xq, xkv), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"inputs_k should have last axis 3, got shape \(2, 5, 6\)"):
        layer(jnp.asarray(xq), jnp.asarray(xq[:, :1].repeat(5, 1)))
    with pytest.raises(ValueError, match="inputs_v was given without inputs_k"):
        layer(jnp.asarray(xq), None, jnp.asarray(xkv))


def test_mha_constructor_errors():
    with pytest.raises(ValueError, match="qkv_features=10 must be divisible by num_heads=4"):
        nnx.MultiHeadAttention(4, 10, **INIT, ctx=nnx.context(0))
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        nnx.MultiHeadAttention(4, 8, num_kv_heads=3, **INIT, ctx=nnx.context(0))


def test_mha_dropout_modes_and_per_call_override():
    layer = nnx.MultiHeadAttention(H, F, qkv_features=H * D, dropout_rate=0.5, **INIT, ctx=nnx.context(0))
    x = jnp.asarray(randn(B, L, F))
    with pytest.raises(ValueError, match="needs random keys"):
        layer(x)
    a = layer(x, ctx=nnx.context(dropout=0))
    b = layer(x, ctx=nnx.context(dropout=1))
    assert not np.allclose(a, b)
    clean = layer(x, deterministic=True)
    layer.eval()
    assert layer.deterministic is True
    np.testing.assert_allclose(layer(x), clean, rtol=1e-6)
    assert not np.allclose(layer(x, deterministic=False, ctx=nnx.context(dropout=0)), clean)
    # keep_ctx stores a dropout stream, so calls need no ctx.
    kept = nnx.MultiHeadAttention(H, F, qkv_features=H * D, dropout_rate=0.5, keep_ctx=True, **INIT, ctx=nnx.context(0))
    assert kept(x).shape == (B, L, F)
    assert ("ctx", "dropout", "count") in nnx.state(kept).paths()


def test_mha_sow_weights():
    layer = nnx.MultiHeadAttention(H, F, qkv_features=H * D, **INIT, ctx=nnx.context(0))
    layer(jnp.asarray(randn(B, L, F)), sow_weights=True)
    (weights,) = layer.attention_weights.value
    assert weights.shape == (B, H, L, L)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


def test_mha_decode_one_token_at_a_time_equals_causal_attention():
    layer = nnx.MultiHeadAttention(H, F, qkv_features=H * D, **INIT, ctx=nnx.context(0))
    x = jnp.asarray(randn(B, L, F))
    full = layer(x, is_causal=True)
    layer.init_cache(x.shape)
    assert layer.cached_key.shape == (B, L, H, D) and isinstance(layer.cached_key, nnx.Cache)
    steps = [layer(x[:, t : t + 1], decode=True, is_causal=True) for t in range(L)]  # is_causal is implied
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)
    assert int(layer.cache_index.value) == L
    with pytest.raises(ValueError, match="cache is full"):
        layer(x[:, :1], decode=True)


def test_mha_decode_under_jit_through_split_merge():
    layer = nnx.MultiHeadAttention(H, F, qkv_features=H * D, decode=True, **INIT, ctx=nnx.context(0))
    x = jnp.asarray(randn(B, 3, F))
    reference = nnx.clone(layer)
    reference.decode = False
    full = reference(x, is_causal=True)
    layer.init_cache(x.shape)
    graphdef, state = nnx.split(layer)

    @jax.jit
    def step(state, token):
        module = nnx.merge(graphdef, state)
        return module(token), nnx.state(module)

    outs = []
    for t in range(3):
        y, state = step(state, x[:, t : t + 1])
        outs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-5, atol=1e-5)
    nnx.update(layer, state)
    assert int(layer.cache_index.value) == 3


def test_mha_decode_errors():
    layer = nnx.MultiHeadAttention(H, F, qkv_features=H * D, **INIT, ctx=nnx.context(0))
    with pytest.raises(ValueError, match="init_cache"):
        layer(jnp.ones((B, 1, F)), decode=True)
    layer.init_cache((B, 3, F))
    with pytest.raises(ValueError, match="one position"):
        layer(jnp.ones((B, 2, F)), decode=True)


@pytest.mark.parametrize(
    "kwargs, call",
    [
        (dict(num_heads=H, in_features=F, qkv_features=H * D, out_features=5), "causal_mask"),
        (dict(num_heads=4, in_features=F, qkv_features=8, num_kv_heads=2, in_kv_features=3), "cross"),
        (dict(num_heads=H, in_features=F, qkv_features=H * D, normalize_qk=True), "is_causal"),
    ],
)
def test_mha_parity_with_flax(kwargs, call):
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.MultiHeadAttention(**kwargs, **INIT, ctx=nnx.context(0))
    theirs = fnnx.MultiHeadAttention(**kwargs, kernel_init=ZEROS, decode=False, rngs=fnnx.Rngs(0))
    if kwargs.get("normalize_qk"):
        ours.query_ln.scale.value = jnp.asarray(randn(ours.head_dim))
    copy_params_to_flax(ours, theirs)
    xq = jnp.asarray(randn(B, L, F))
    if call == "causal_mask":
        mask = nnx.make_causal_mask(jnp.ones((B, L)))
        np.testing.assert_allclose(ours(xq, mask=mask), theirs(xq, mask=mask), rtol=1e-5, atol=1e-5)
    elif call == "cross":
        xkv = jnp.asarray(randn(B, 5, 3))
        np.testing.assert_allclose(ours(xq, xkv), theirs(xq, xkv), rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(ours(xq, is_causal=True), theirs(xq, is_causal=True), rtol=1e-5, atol=1e-5)


def test_mha_decode_parity_with_flax():
    fnnx = pytest.importorskip("flax.nnx")
    ours = nnx.MultiHeadAttention(H, F, qkv_features=H * D, **INIT, ctx=nnx.context(0))
    theirs = fnnx.MultiHeadAttention(H, F, qkv_features=H * D, kernel_init=ZEROS, decode=True, rngs=fnnx.Rngs(0))
    copy_params_to_flax(ours, theirs)
    x = jnp.asarray(randn(B, L, F))
    ours.init_cache(x.shape)
    theirs.init_cache(x.shape)
    for t in range(L):
        np.testing.assert_allclose(ours(x[:, t : t + 1], decode=True), theirs(x[:, t : t + 1]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.cached_value.value, theirs.cached_value[...], rtol=1e-6, atol=1e-6)


def test_attention_dropout_parity_with_flax_for_the_same_key():
    pytest.importorskip("flax")
    from flax.nnx.nn.attention import dot_product_attention as flax_attention

    q, k, v = (jnp.asarray(randn(L, H, D)) for _ in range(3))
    key = jax.random.PRNGKey(7)
    ours = nnx.dot_product_attention(q, k, v, dropout_rng=key, dropout_rate=0.3)
    theirs = flax_attention(q, k, v, dropout_rng=key, dropout_rate=0.3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_mha_dropout_parity_with_flax_for_the_same_seed():
    fnnx = pytest.importorskip("flax.nnx")
    kwargs = dict(num_heads=H, in_features=F, qkv_features=H * D, dropout_rate=0.4)
    ours = nnx.MultiHeadAttention(**kwargs, **INIT, ctx=nnx.context(0))
    theirs = fnnx.MultiHeadAttention(**kwargs, kernel_init=ZEROS, decode=False, rngs=fnnx.Rngs(0))
    copy_params_to_flax(ours, theirs)
    x = jnp.asarray(randn(B, L, F))
    a = ours(x, ctx=nnx.context(dropout=3))
    b = theirs(x, rngs=fnnx.Rngs(dropout=3), deterministic=False)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, ours(x, deterministic=True))
