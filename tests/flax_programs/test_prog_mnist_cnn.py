"""An MNIST-style CNN trained as the JAX AI stack tutorial does.

Conv + avg_pool + Linear + Dropout + BatchNorm, ``nnx.Optimizer(model,
optax.adamw(...), wrt=nnx.Param)``, ``nnx.MultiMetric``, ``nnx.jit`` train and
eval steps, ``optimizer.update(model, grads)``, ``model.train()/eval()``.
"""

from __future__ import annotations

import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax


def make_cnn(nnx):
    class CNN(nnx.Module):
        def __init__(self, *, rngs):
            self.conv1 = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
            self.bn1 = nnx.BatchNorm(8, rngs=rngs)
            self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), rngs=rngs)
            self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
            self.linear1 = nnx.Linear(16 * 2 * 2, 32, rngs=rngs)
            self.dropout = nnx.Dropout(rate=0.1, rngs=rngs)
            self.linear2 = nnx.Linear(32, 10, rngs=rngs)

        def __call__(self, x):
            x = self.avg_pool(nnx.relu(self.bn1(self.conv1(x))))
            x = self.avg_pool(nnx.relu(self.conv2(x)))
            x = x.reshape(x.shape[0], -1)
            x = self.dropout(nnx.relu(self.linear1(x)))
            return self.linear2(x)

    return CNN


def batches(n=4, size=16):
    rng = np.random.default_rng(0)
    for _ in range(n):
        images = rng.normal(size=(size, 8, 8, 1)).astype(np.float32)
        labels = (images.mean(axis=(1, 2, 3)) > 0).astype(np.int32)
        yield {"image": images, "label": labels}


@functools.lru_cache(maxsize=None)
def run(nnx, steps=4):
    """Train and evaluate once per library; the tests below read the results."""
    model = make_cnn(nnx)(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(0.01, 0.9), wrt=nnx.Param)
    metrics = nnx.MultiMetric(
        accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss")
    )

    def loss_fn(model, batch):
        logits = model(batch["image"])
        loss = optax.softmax_cross_entropy_with_integer_labels(
            logits=logits, labels=batch["label"]
        ).mean()
        return loss, logits

    @nnx.jit
    def train_step(model, optimizer, metrics, batch):
        grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
        (loss, logits), grads = grad_fn(model, batch)
        metrics.update(loss=loss, logits=logits, labels=batch["label"])
        optimizer.update(model, grads)

    @nnx.jit
    def eval_step(model, metrics, batch):
        loss, logits = loss_fn(model, batch)
        metrics.update(loss=loss, logits=logits, labels=batch["label"])

    @nnx.jit
    def pred_step(model, batch):
        return model(batch["image"]).argmax(axis=1)

    history = {"train_loss": [], "train_accuracy": []}
    data = list(batches(steps))
    model.train()
    for batch in data:
        train_step(model, optimizer, metrics, batch)
        for metric, value in metrics.compute().items():
            history[f"train_{metric}"].append(float(value))
        metrics.reset()
    model.eval()
    for batch in data:
        eval_step(model, metrics, batch)
    evaluated = {k: float(v) for k, v in metrics.compute().items()}
    preds = pred_step(model, data[0])
    return model, optimizer, history, evaluated, np.asarray(preds)


def test_cnn_trains_and_evaluates(nnx):
    model, optimizer, history, evaluated, preds = run(nnx)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert set(evaluated) == {"accuracy", "loss"}
    assert 0.0 <= evaluated["accuracy"] <= 1.0
    assert preds.shape == (16,) and preds.dtype == np.int32
    # optimizer.step counts the updates, the model's BatchNorm stats moved
    assert int(optimizer.step[...]) == 4
    assert not np.allclose(np.asarray(model.bn1.mean[...]), 0.0)
    # eval mode switched the dropout and batchnorm flags
    assert model.dropout.deterministic and model.bn1.use_running_average


def test_cnn_numbers_match_flax(both):
    ours, theirs = (run(lib) for lib in both)
    np.testing.assert_allclose(ours[2]["train_loss"], theirs[2]["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(ours[3]["loss"], theirs[3]["loss"], rtol=1e-4)
    np.testing.assert_array_equal(ours[4], theirs[4])
    np.testing.assert_allclose(
        np.asarray(ours[0].linear2.kernel[...]),
        np.asarray(theirs[0].linear2.kernel[...]),
        rtol=1e-4, atol=1e-6,
    )


def test_cnn_param_count_and_state_tree(nnx):
    model = make_cnn(nnx)(rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    count = sum(x.size for x in jax.tree.leaves(params))
    assert count == (9 * 8 + 8) + (9 * 8 * 16 + 16) + (64 * 32 + 32) + (32 * 10 + 10) + 16
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert {"mean", "var"} <= set(rest["bn1"].keys())
    model2 = nnx.merge(graphdef, params, rest)
    x = jnp.ones((2, 8, 8, 1))
    model.eval(), model2.eval()
    np.testing.assert_allclose(model(x), model2(x))
