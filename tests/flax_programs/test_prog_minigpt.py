"""A miniGPT as the JAX AI stack tutorial writes it, plus a scanned variant.

``nnx.MultiHeadAttention`` with a causal mask, token + position ``nnx.Embed``,
``nnx.LayerNorm``, ``nnx.Dropout``; a training loop with ``nnx.jit`` and
``nnx.value_and_grad``; top-k sampling; stacked blocks built with
``nnx.split_rngs`` + ``nnx.vmap`` and run with ``nnx.scan`` + ``nnx.remat``;
an autoregressive decode through the attention's KV cache.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

VOCAB, MAXLEN, EMBED, HEADS, FF, LAYERS = 32, 8, 16, 2, 32, 2


def causal_attention_mask(seq_len):
    return jnp.tril(jnp.ones((seq_len, seq_len)))


def make_classes(nnx):
    class TransformerBlock(nnx.Module):
        def __init__(self, embed_dim, num_heads, ff_dim, *, rngs, rate=0.1):
            self.mha = nnx.MultiHeadAttention(
                num_heads=num_heads,
                in_features=embed_dim,
                kernel_init=nnx.initializers.xavier_uniform(),
                bias_init=nnx.initializers.zeros_init(),
                decode=False,
                rngs=rngs,
            )
            self.dropout1 = nnx.Dropout(rate=rate, rngs=rngs)
            self.layer_norm1 = nnx.LayerNorm(epsilon=1e-6, num_features=embed_dim, rngs=rngs)
            self.linear1 = nnx.Linear(embed_dim, ff_dim, rngs=rngs)
            self.linear2 = nnx.Linear(ff_dim, embed_dim, rngs=rngs)
            self.dropout2 = nnx.Dropout(rate=rate, rngs=rngs)
            self.layer_norm2 = nnx.LayerNorm(epsilon=1e-6, num_features=embed_dim, rngs=rngs)

        def __call__(self, inputs):
            _, seq_len, _ = inputs.shape
            mask = causal_attention_mask(seq_len)
            attention_output = self.mha(inputs_q=inputs, mask=mask, decode=False)
            attention_output = self.dropout1(attention_output)
            out1 = self.layer_norm1(inputs + attention_output)
            ffn_output = self.linear2(nnx.relu(self.linear1(out1)))
            ffn_output = self.dropout2(ffn_output)
            return self.layer_norm2(out1 + ffn_output)

    class TokenAndPositionEmbedding(nnx.Module):
        def __init__(self, maxlen, vocab_size, embed_dim, *, rngs):
            self.token_emb = nnx.Embed(num_embeddings=vocab_size, features=embed_dim, rngs=rngs)
            self.pos_emb = nnx.Embed(num_embeddings=maxlen, features=embed_dim, rngs=rngs)

        def __call__(self, x):
            positions = jnp.arange(0, x.shape[1])[None, :]
            return self.token_emb(x) + self.pos_emb(positions)

    class MiniGPT(nnx.Module):
        def __init__(self, maxlen, vocab_size, embed_dim, num_heads, ff_dim, num_blocks, *, rngs):
            self.maxlen = maxlen
            self.embedding_layer = TokenAndPositionEmbedding(maxlen, vocab_size, embed_dim, rngs=rngs)
            self.transformer_blocks = nnx.List(
                [TransformerBlock(embed_dim, num_heads, ff_dim, rngs=rngs) for _ in range(num_blocks)]
            )
            self.output_layer = nnx.Linear(embed_dim, vocab_size, use_bias=False, rngs=rngs)

        def __call__(self, inputs):
            x = self.embedding_layer(inputs)
            for block in self.transformer_blocks:
                x = block(x)
            return self.output_layer(x)

        def generate(self, start_tokens, max_tokens, top_k=5, seed=0):
            # a fixed-size, right-padded context: one compiled step for every length
            @nnx.jit
            def next_logits(model, context, length):
                return model(context)[0, length - 1]

            key = jax.random.key(seed)
            tokens = list(start_tokens)
            for _ in range(max_tokens):
                context = tokens[-self.maxlen:]
                padded = jnp.array(context + [0] * (self.maxlen - len(context)))[None, :]
                logits = next_logits(self, padded, len(context))
                top_logits, indices = jax.lax.top_k(logits, k=top_k)
                key, sub = jax.random.split(key)
                tokens.append(int(jax.random.choice(sub, indices, p=nnx.softmax(top_logits))))
            return tokens

    return MiniGPT, TransformerBlock


def data(steps=3, batch=4):
    rng = np.random.default_rng(1)
    return [rng.integers(0, VOCAB, size=(batch, MAXLEN + 1)).astype(np.int32) for _ in range(steps)]


def train(nnx, model, steps=3):
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"))

    def loss_fn(model, batch):
        logits = model(batch[:, :-1])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()
        return loss, logits

    @nnx.jit
    def train_step(model, optimizer, metrics, batch):
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
        metrics.update(loss=loss)
        optimizer.update(model, grads)
        return loss

    losses = []
    for batch in data(steps):
        losses.append(float(train_step(model, optimizer, metrics, jnp.asarray(batch))))
    return losses, float(metrics.compute()["loss"])


@functools.lru_cache(maxsize=None)
def trained(nnx):
    """Train once per library; the tests below read the results."""
    MiniGPT, _ = make_classes(nnx)
    model = MiniGPT(MAXLEN, VOCAB, EMBED, HEADS, FF, LAYERS, rngs=nnx.Rngs(0))
    model.eval()  # dropout draws are library-specific; compare the deterministic path
    losses, mean_loss = train(nnx, model)
    tokens = model.generate([1, 2, 3], max_tokens=3)
    return model, losses, mean_loss, tokens


def test_minigpt_trains_and_generates(nnx):
    model, losses, mean_loss, tokens = trained(nnx)
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(mean_loss, np.mean(losses), rtol=1e-5)
    assert len(tokens) == 6 and all(0 <= t < VOCAB for t in tokens)
    assert all(block.dropout1.deterministic for block in model.transformer_blocks)


def test_minigpt_causal_mask_hides_the_future(nnx):
    model = trained(nnx)[0]
    a = jnp.arange(MAXLEN) % VOCAB
    logits = model(jnp.stack([a, a.at[-1].set(9)]))
    assert logits.shape == (2, MAXLEN, VOCAB)
    np.testing.assert_allclose(logits[0, :-1], logits[1, :-1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits[0, -1], logits[1, -1])


def test_minigpt_numbers_match_flax(both):
    ours, theirs = (trained(lib) for lib in both)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=2e-4)
    assert ours[3] == theirs[3]


def make_scanned(nnx):
    _, TransformerBlock = make_classes(nnx)

    class ScannedGPT(nnx.Module):
        def __init__(self, *, rngs):
            self.embed = nnx.Embed(VOCAB, EMBED, rngs=rngs)

            @nnx.split_rngs(splits=LAYERS)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def create_block(rngs):
                return TransformerBlock(EMBED, HEADS, FF, rngs=rngs, rate=0.0)

            self.blocks = create_block(rngs)
            self.head = nnx.Linear(EMBED, VOCAB, rngs=rngs)

        def __call__(self, tokens):
            x = self.embed(tokens)

            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            @nnx.remat
            def forward(x, block):
                return block(x)

            return self.head(forward(x, self.blocks))

    return ScannedGPT, TransformerBlock


@functools.lru_cache(maxsize=None)
def train_scanned(nnx):
    ScannedGPT, _ = make_scanned(nnx)
    model = ScannedGPT(rngs=nnx.Rngs(0))
    tokens = jnp.asarray(data(1)[0])
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch):
        def loss_fn(model):
            logits = model(batch[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return model, [float(step(model, optimizer, tokens)) for _ in range(3)]


def test_scanned_blocks_train(nnx):
    model, losses = train_scanned(nnx)
    assert model.blocks.linear1.kernel.shape == (LAYERS, EMBED, FF)
    assert model.blocks.mha.query.kernel.shape == (LAYERS, EMBED, HEADS, EMBED // HEADS)
    assert losses[-1] < losses[0]
    # the stacked blocks slice back into ordinary blocks
    graphdef, state = nnx.split(model.blocks)
    block = nnx.merge(graphdef, jax.tree.map(lambda a: a[1], state))
    np.testing.assert_allclose(block.linear1.kernel[...], model.blocks.linear1.kernel[...][1])


def test_scanned_losses_match_flax(both):
    # the scan over stacked blocks computes what flax computes
    ours, theirs = (train_scanned(lib)[1] for lib in both)
    np.testing.assert_allclose(ours, theirs, rtol=2e-4)


def test_mha_kv_cache_decode_matches_full_forward(nnx):
    mha = nnx.MultiHeadAttention(
        num_heads=HEADS, in_features=EMBED, decode=False, rngs=nnx.Rngs(0)
    )
    x = jax.random.normal(jax.random.key(1), (2, 3, EMBED))
    full = mha(x, mask=nnx.make_causal_mask(jnp.ones((2, 3))))
    mha.init_cache(x.shape)
    steps = [mha(x[:, i : i + 1], decode=True) for i in range(3)]
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)
    assert int(mha.cache_index[...]) == 3
