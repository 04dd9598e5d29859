"""flax.nnx's layer keywords on nnxlite layers, against the nnxlite spelling and flax itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx

X = jnp.arange(6.0).reshape(2, 3) / 5


def test_rngs_and_ctx_build_the_same_layers():
    for make in (
        lambda **k: nnx.Linear(3, 4, **k),
        lambda **k: nnx.Conv(3, 4, 2, **k),
        lambda **k: nnx.Embed(5, 3, **k),
        lambda **k: nnx.Einsum("bd,dk->bk", (3, 4), (4,), **k),
        lambda **k: nnx.MultiHeadAttention(2, 4, 8, **k),
        lambda **k: nnx.LayerNorm(3, **k),
    ):
        a, b = make(rngs=nnx.Rngs(0)), make(ctx=nnx.context(0))
        for (pa, va), (pb, vb) in zip(nnx.state(a).flat().items(), nnx.state(b).flat().items()):
            assert pa == pb
            np.testing.assert_array_equal(va, vb)
        with pytest.raises(TypeError, match="both ctx= and rngs="):
            make(rngs=nnx.Rngs(0), ctx=nnx.context(0))


def test_metadata_keywords_land_on_the_params():
    lin = nnx.Linear(3, 4, rngs=nnx.Rngs(0), kernel_metadata={"sharding": ("a", "b")}, bias_metadata={"tag": 1})
    assert lin.kernel.sharding_names == ("a", "b") and lin.bias.tag == 1
    emb = nnx.Embed(5, 3, rngs=nnx.Rngs(0), embedding_metadata={"sharding": ("vocab", None)})
    assert emb.embedding.sharding_names == ("vocab", None)
    ln = nnx.LayerNorm(3, rngs=nnx.Rngs(0), scale_metadata={"s": 1}, bias_metadata={"b": 2})
    assert ln.scale.s == 1 and ln.bias.b == 2
    bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0), scale_metadata={"s": 1})
    assert bn.scale.s == 1
    assert nnx.RMSNorm(3, rngs=nnx.Rngs(0), scale_metadata={"s": 3}).scale.s == 3
    conv = nnx.Conv(3, 4, 2, rngs=nnx.Rngs(0), kernel_metadata={"k": 1})
    assert conv.kernel.k == 1
    attn = nnx.MultiHeadAttention(2, 4, 8, rngs=nnx.Rngs(0), kernel_metadata={"k": 1}, out_kernel_metadata={"o": 2},
                                  normalize_qk=True, query_ln_scale_metadata={"q": 3})
    assert attn.query.kernel.k == 1 and attn.out.kernel.o == 2 and attn.query_ln.scale.q == 3
    assert nnx.PReLU(negative_slope_metadata={"n": 1}).negative_slope.n == 1


def test_custom_ops_and_promote_dtype_are_called():
    calls = []

    def dot_general(x, k, dims, precision=None, preferred_element_type=None):
        calls.append(preferred_element_type)
        return jax.lax.dot_general(x, k, dims, precision=precision, preferred_element_type=preferred_element_type)

    def promote(args, *, dtype=None, inexact=True):  # flax's convention: one tuple
        calls.append("promote")
        return tuple(None if a is None else jnp.asarray(a, jnp.float32) for a in args)

    lin = nnx.Linear(3, 4, rngs=nnx.Rngs(0), dot_general=dot_general, promote_dtype=promote,
                     preferred_element_type=jnp.float32)
    y = lin(X)
    np.testing.assert_allclose(y, X @ lin.kernel.value + lin.bias.value, rtol=1e-6)
    assert calls == ["promote", jnp.float32]

    class Dot:  # dot_general_cls: instantiated per call
        def __call__(self, *a, **k):
            calls.append("cls")
            return jax.lax.dot_general(*a, **k)

    gen = nnx.LinearGeneral(3, 4, rngs=nnx.Rngs(0), dot_general_cls=Dot)
    gen(X)
    assert calls[-1] == "cls"
    ein = nnx.Einsum("bd,dk->bk", (3, 4), rngs=nnx.Rngs(0), einsum_op=lambda *a, **k: calls.append("ein") or jnp.einsum(*a, **k))
    ein(X)
    assert calls[-1] == "ein"


def test_conv_mask_multiplies_the_kernel():
    mask = jnp.zeros((2, 3, 4)).at[0].set(1.0)
    conv = nnx.Conv(3, 4, 2, padding="VALID", mask=mask, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 5, 3))
    plain = nnx.Conv(3, 4, 2, padding="VALID", rngs=nnx.Rngs(0))
    plain.kernel.value = plain.kernel.value * mask
    np.testing.assert_allclose(conv(x), plain(x), rtol=1e-6)
    with pytest.raises(ValueError, match="mask has shape"):
        nnx.Conv(3, 4, 2, mask=jnp.ones((3,)), rngs=nnx.Rngs(0))(x)


def test_dropout_rngs_at_call_and_construction():
    x = jnp.ones(64)
    a = nnx.Dropout(0.5)(x, rngs=nnx.Rngs(dropout=3))
    b = nnx.Dropout(0.5)(x, ctx=nnx.context(dropout=3))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="both ctx= and rngs="):
        nnx.Dropout(0.5)(x, rngs=nnx.Rngs(0), ctx=nnx.Rngs(0))
    model = nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)), nnx.Dropout(0.5))
    assert model(x, rngs=nnx.Rngs(dropout=1)).shape == (64,)


def test_positional_arguments_flax_takes():
    bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    before = np.asarray(bn.mean.value)
    bn(X, True)  # use_running_average positionally
    np.testing.assert_array_equal(bn.mean.value, before)
    rms = nnx.RMSNorm(3, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(rms(X, None), rms(X))
    attn = nnx.MultiHeadAttention(4, 8, 8, 8, 2, rngs=nnx.Rngs(0), decode=False)  # num_kv_heads positional
    assert attn.num_kv_heads == 2


def test_keep_rngs_default_follows_the_spelling():
    flax_style = nnx.MultiHeadAttention(2, 4, 8, dropout_rate=0.5, rngs=nnx.Rngs(0))
    assert flax_style.rngs is not None  # flax keeps a dropout stream by default, as `rngs`
    ours = nnx.MultiHeadAttention(2, 4, 8, dropout_rate=0.5, ctx=nnx.context(0))
    assert ours.ctx is None  # nnxlite's default is unchanged
    assert nnx.MultiHeadAttention(2, 4, 8, dropout_rate=0.5, rngs=nnx.Rngs(0), keep_rngs=False).rngs is None
    with pytest.raises(TypeError, match="same"):
        nnx.MultiHeadAttention(2, 4, 8, rngs=nnx.Rngs(0), keep_rngs=True, keep_ctx=False)


def test_layers_match_flax_with_the_same_seed():
    fnnx = pytest.importorskip("flax.nnx")
    x = jnp.ones((2, 5, 4))
    pairs = [
        (nnx.Linear(4, 3, rngs=nnx.Rngs(0)), fnnx.Linear(4, 3, rngs=fnnx.Rngs(0))),
        (nnx.Conv(4, 3, 3, rngs=nnx.Rngs(0)), fnnx.Conv(4, 3, 3, rngs=fnnx.Rngs(0))),
        (nnx.LinearGeneral(4, (2, 3), rngs=nnx.Rngs(1)), fnnx.LinearGeneral(4, (2, 3), rngs=fnnx.Rngs(1))),
        (nnx.MultiHeadAttention(2, 4, 8, rngs=nnx.Rngs(2), decode=False),
         fnnx.MultiHeadAttention(2, 4, 8, rngs=fnnx.Rngs(2), decode=False)),
        (nnx.LayerNorm(4, rngs=nnx.Rngs(0)), fnnx.LayerNorm(4, rngs=fnnx.Rngs(0))),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    emb, femb = nnx.Embed(7, 3, rngs=nnx.Rngs(0)), fnnx.Embed(7, 3, rngs=fnnx.Rngs(0))
    ids = jnp.array([[1, 6, 0]])
    np.testing.assert_allclose(emb(ids), femb(ids))
