"""A VAE in the style of flax's examples/vae and the JAX AI stack tutorial.

The model keeps its ``rngs`` and draws the reparametrisation noise with
``self.rngs.noise()`` (a key) or ``rngs.normal(shape)`` (the jax.random
shorthand); training uses ``nnx.jit`` and ``optimizer.update(model, grads)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

IN, HID, LATENT = 12, 16, 3


def make_vae(nnx, shorthand):
    class Encoder(nnx.Module):
        def __init__(self, *, rngs):
            self.fc1 = nnx.Linear(IN, HID, rngs=rngs)
            self.fc2_mean = nnx.Linear(HID, LATENT, rngs=rngs)
            self.fc2_logvar = nnx.Linear(HID, LATENT, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.fc1(x))
            return self.fc2_mean(x), self.fc2_logvar(x)

    class Decoder(nnx.Module):
        def __init__(self, *, rngs):
            self.fc1 = nnx.Linear(LATENT, HID, rngs=rngs)
            self.fc2 = nnx.Linear(HID, IN, rngs=rngs)

        def __call__(self, z):
            return self.fc2(nnx.relu(self.fc1(z)))

    class VAE(nnx.Module):
        def __init__(self, *, rngs):
            self.encoder = Encoder(rngs=rngs)
            self.decoder = Decoder(rngs=rngs)
            self.rngs = rngs

        def reparameterize(self, mean, logvar):
            std = jnp.exp(0.5 * logvar)
            if shorthand:
                eps = self.rngs.noise.normal(std.shape)
            else:
                eps = jax.random.normal(self.rngs.noise(), std.shape)
            return mean + eps * std

        def __call__(self, x):
            mean, logvar = self.encoder(x)
            z = self.reparameterize(mean, logvar)
            return self.decoder(z), mean, logvar

        def generate(self, z):
            return nnx.sigmoid(self.decoder(z))

    return VAE


def vae_loss(model, x):
    logits, mean, logvar = model(x)
    bce = optax.sigmoid_binary_cross_entropy(logits, x).sum(-1).mean()
    kl = -0.5 * jnp.mean(jnp.sum(1 + logvar - mean**2 - jnp.exp(logvar), axis=-1))
    return bce + 0.5 * kl


@functools.lru_cache(maxsize=None)
def run(nnx, shorthand, steps=6):
    model = make_vae(nnx, shorthand)(rngs=nnx.Rngs(0, noise=1))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(vae_loss)(model, x)
        optimizer.update(model, grads)
        return loss

    x = jnp.asarray((np.random.default_rng(0).random((8, IN)) > 0.5).astype(np.float32))
    losses = [float(train_step(model, optimizer, x)) for _ in range(steps)]
    return model, losses


def test_vae_trains_with_fresh_noise_each_step(nnx):
    model, losses = run(nnx, shorthand=False)
    model = nnx.clone(model)  # the cached model is shared with the comparison test
    assert losses[-1] < losses[0]
    # the noise stream advanced once per step inside nnx.jit
    assert int(model.rngs.noise.count[...]) == 6
    x = jnp.ones((2, IN))
    a, _, _ = model(x)
    b, _, _ = model(x)
    assert not np.allclose(a, b)  # two calls, two draws
    samples = model.generate(model.rngs.normal((5, LATENT)))
    assert samples.shape == (5, IN) and bool(jnp.all((samples >= 0) & (samples <= 1)))


def test_reparameterize_with_the_stream_shorthand(nnx):
    model = make_vae(nnx, shorthand=True)(rngs=nnx.Rngs(0, noise=1))
    mean, logvar = jnp.zeros((4, LATENT)), jnp.zeros((4, LATENT))
    z1, z2 = model.reparameterize(mean, logvar), model.reparameterize(mean, logvar)
    assert z1.shape == (4, LATENT) and not np.allclose(z1, z2)
    assert int(model.rngs.noise.count[...]) == 2


def test_vae_losses_match_flax(both):
    ours, theirs = (run(lib, shorthand=False)[1] for lib in both)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)


def test_rngs_shorthands(nnx):
    rngs = nnx.Rngs(0, noise=1)
    assert rngs.normal((2, 3)).shape == (2, 3)
    assert rngs.noise.uniform((4,), minval=2.0, maxval=3.0).min() >= 2.0
    assert rngs.bernoulli(0.5, (3,)).dtype == jnp.bool_
    assert rngs.categorical(jnp.zeros(4)).shape == ()
    assert sorted(np.asarray(rngs.permutation(5)).tolist()) == [0, 1, 2, 3, 4]
    key = rngs["noise"]()
    assert jax.random.normal(key, (2,)).shape == (2,)
    # the same seed gives the same draws
    np.testing.assert_array_equal(
        nnx.Rngs(3).params.normal((3,)), nnx.Rngs(3).params.normal((3,))
    )
