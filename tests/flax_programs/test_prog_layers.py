"""Layer-level unit tests as model libraries write them, run under both libraries.

Each ``build`` makes a layer from ``Rngs(0)``; since both libraries draw the
same initial values, the outputs must agree between them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

X = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))


def conv_block(nnx):
    class ConvBlock(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(4, 8, (3, 3), strides=2, padding="SAME", rngs=rngs)
            self.bn = nnx.BatchNorm(8, momentum=0.9, epsilon=1e-5, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.conv_t = nnx.ConvTranspose(8, 4, (2, 2), strides=(2, 2), rngs=rngs)

        def __call__(self, x):
            y = self.drop(nnx.gelu(self.bn(self.conv(x))))
            return self.conv_t(y)

    return ConvBlock(nnx.Rngs(0, dropout=1))


LAYERS = {
    "layernorm": lambda nnx: nnx.LayerNorm(4, rngs=nnx.Rngs(0)),
    "layernorm_no_scale": lambda nnx: nnx.LayerNorm(4, use_scale=False, epsilon=1e-3, rngs=nnx.Rngs(0)),
    "rmsnorm": lambda nnx: nnx.RMSNorm(4, rngs=nnx.Rngs(0)),
    "groupnorm": lambda nnx: nnx.GroupNorm(4, num_groups=2, rngs=nnx.Rngs(0)),
    "einsum": lambda nnx: nnx.Einsum("bhwc,cd->bhwd", (4, 3), (3,), rngs=nnx.Rngs(0)),
    "linear_general": lambda nnx: nnx.LinearGeneral((6, 4), (2, 5), axis=(-2, -1), rngs=nnx.Rngs(0)),
    "conv_dilated": lambda nnx: nnx.Conv(4, 2, (3, 3), kernel_dilation=2, padding="VALID", rngs=nnx.Rngs(0)),
    "conv_grouped": lambda nnx: nnx.Conv(4, 4, (3, 3), feature_group_count=2, use_bias=False, rngs=nnx.Rngs(0)),
    "conv_1d_causal": lambda nnx: nnx.Conv(4, 3, (3,), padding="CAUSAL", rngs=nnx.Rngs(0)),
    "linear_bf16": lambda nnx: nnx.Linear(4, 3, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0)),
}


def _input(name):
    return X[:, 0] if name == "conv_1d_causal" else X


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_matches_flax(both, name):
    outs = [np.asarray(LAYERS[name](lib)(_input(name)).astype(jnp.float32)) for lib in both]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_conv_block_train_eval(nnx):
    block = conv_block(nnx)
    block.train()
    a, b = block(X), block(X)
    assert a.shape == X.shape
    assert not np.allclose(a, b)  # dropout draws differ between calls
    assert not np.allclose(block.bn.mean[...], 0)
    block.eval()
    assert block.drop.deterministic and block.bn.use_running_average
    mean = np.asarray(block.bn.mean[...])
    np.testing.assert_allclose(block(X), block(X))
    np.testing.assert_allclose(block.bn.mean[...], mean)  # eval leaves stats alone
    block.train()
    assert not block.drop.deterministic


def test_conv_block_eval_matches_flax(both):
    outs = []
    for lib in both:
        block = conv_block(lib)
        block(X)  # one training-mode call updates the batch stats
        block.eval()
        outs.append(np.asarray(block(X)))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_set_attributes_and_call_time_flags(nnx):
    block = conv_block(nnx)
    block.set_attributes(deterministic=True, use_running_average=True)
    np.testing.assert_allclose(block(X), block(X))
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    x = jnp.ones((4, 4))
    np.testing.assert_allclose(drop(x, deterministic=True), x)
    y = drop(x)
    assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, 2.0}
    # a key passed at call time
    z = nnx.Dropout(0.5)(x, rngs=nnx.Rngs(dropout=3))
    assert z.shape == x.shape


def test_embed_attend_ties_the_output_layer(nnx):
    embed = nnx.Embed(10, 4, rngs=nnx.Rngs(0))
    tokens = jnp.array([[1, 2, 3]])
    h = embed(tokens)
    logits = embed.attend(h)
    assert logits.shape == (1, 3, 10)
    np.testing.assert_allclose(logits, h @ embed.embedding[...].T, rtol=1e-6)


def test_linear_general_shapes(nnx):
    layer = nnx.LinearGeneral(4, (2, 3), rngs=nnx.Rngs(0))
    assert layer.kernel.shape == (4, 2, 3) and layer.bias.shape == (2, 3)
    assert layer(jnp.ones((5, 4))).shape == (5, 2, 3)
    out = nnx.LinearGeneral((2, 3), 4, axis=(-2, -1), rngs=nnx.Rngs(0))
    assert out(jnp.ones((5, 2, 3))).shape == (5, 4)


def test_mha_self_attention_padding_mask(nnx):
    mha = nnx.MultiHeadAttention(
        num_heads=2, in_features=8, qkv_features=8, out_features=6,
        dropout_rate=0.0, decode=False, rngs=nnx.Rngs(0),
    )
    x = jax.random.normal(jax.random.key(1), (2, 5, 8))
    valid = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    mask = nnx.make_attention_mask(valid, valid)
    y = mha(x, mask=mask, deterministic=True)
    assert y.shape == (2, 5, 6)
    # changing padded positions does not change the valid ones
    x2 = x.at[0, 3:].set(9.0)
    np.testing.assert_allclose(mha(x2, mask=mask)[0, :3], y[0, :3], rtol=1e-5, atol=1e-5)
    combined = nnx.combine_masks(mask, nnx.make_causal_mask(valid))
    assert combined.shape == (2, 1, 5, 5)


def test_mha_matches_flax(both):
    x = jax.random.normal(jax.random.key(1), (2, 5, 8))
    outs = []
    for lib in both:
        mha = lib.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=lib.Rngs(0))
        outs.append(np.asarray(mha(x, x, mask=lib.make_causal_mask(jnp.ones((2, 5))))))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_pooling_and_activations(nnx):
    x = X
    assert nnx.max_pool(x, (2, 2), strides=(2, 2)).shape == (2, 3, 3, 4)
    assert nnx.avg_pool(x, (3, 3), padding="SAME").shape == x.shape
    np.testing.assert_allclose(nnx.relu(x), jax.nn.relu(x))
    np.testing.assert_allclose(nnx.softmax(x, axis=-1).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(nnx.log_softmax(x), jax.nn.log_softmax(x), rtol=1e-5)
    for name in ["gelu", "silu", "swish", "tanh", "sigmoid", "elu", "leaky_relu", "softplus", "one_hot", "standardize"]:
        assert callable(getattr(nnx, name)), name
