"""The training loop shared by the two transfer-learning examples (``pretrained_backbone.py``, ``torch_backbone.py``).

Both train an image classifier with integer labels: a jitted Adam step that
differentiates only what the optimizer trains (``wrt=optimizer.wrt``, so a
frozen backbone gets no gradient), a jitted test accuracy, and a loop that
records the accuracy curve for the plot. Unlike ``_common.py`` this file is
nnxlite code; it is kept apart so each example shows only what it teaches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import nnxlite as nnx
from _common import batch_indices, progress


def loss_fn(model: nnx.Module, images, labels):
    return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, images, labels):
    # Differentiate with respect to exactly what the optimizer trains.
    loss, grads = nnx.value_and_grad(loss_fn, wrt=optimizer.wrt)(model, images, labels)
    optimizer.update(grads)
    return loss


@nnx.jit
def accuracy(model: nnx.Module, images, labels):
    return jnp.mean(model(images).argmax(-1) == labels)


def count_params(model: nnx.Module, wrt=nnx.Param) -> int:
    """How many numbers the Variables matching ``wrt`` hold."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, wrt)))


def train(model, optimizer, x, y, *, steps, batch_size, seed, x_test, y_test, eval_every, desc):
    """Train for ``steps`` steps; return the steps and test accuracies seen along the way."""
    batches = batch_indices(len(x), batch_size, seed=seed)
    curve_steps, curve_acc = [0], [float(accuracy(model, x_test, y_test))]
    for step in progress(steps, desc=desc):
        idx = next(batches)
        train_step(model, optimizer, x[idx], y[idx])
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve_steps.append(step + 1)
            curve_acc.append(float(accuracy(model, x_test, y_test)))
    return curve_steps, curve_acc
