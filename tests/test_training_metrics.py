"""Metrics: Average, Accuracy, MultiMetric against numpy, eagerly and under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from nnxlite.training.metrics import MetricState


def batches(n: int = 4, size: int = 8, classes: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield (
            rng.normal(size=(size,)).astype(np.float32),
            rng.normal(size=(size, classes)).astype(np.float32),
            rng.integers(0, classes, size=(size,)),
        )


def test_average_matches_numpy_mean():
    avg = nnx.metrics.Average()
    seen = []
    for loss, _, _ in batches():
        avg.update(loss=loss)
        seen.append(loss)
    avg.update(loss=3.5)  # a scalar counts once
    seen.append(np.array([3.5], np.float32))
    np.testing.assert_allclose(float(avg.compute()), np.concatenate(seen).mean(), rtol=1e-6)
    assert int(avg.count.value) == 4 * 8 + 1


def test_average_named_argument_reset_and_errors():
    avg = nnx.metrics.Average("grad_norm")
    avg.update(grad_norm=jnp.array([1.0, 3.0]), loss=100.0)  # other keywords are ignored
    assert float(avg.compute()) == 2.0
    total, count = avg.total, avg.count
    avg.reset()
    assert avg.total is total and avg.count is count  # same Variables: a value edit
    assert bool(jnp.isnan(avg.compute()))
    with pytest.raises(TypeError, match="'grad_norm'.*\\['loss'\\]"):
        avg.update(loss=1.0)


def test_accuracy_matches_numpy():
    acc = nnx.metrics.Accuracy()
    correct, total = 0, 0
    for _, logits, labels in batches():
        acc.update(logits=logits, labels=labels)
        correct += int((logits.argmax(-1) == labels).sum())
        total += labels.size
    np.testing.assert_allclose(float(acc.compute()), correct / total, rtol=1e-6)


def test_accuracy_integer_predictions_and_errors():
    acc = nnx.metrics.Accuracy()
    acc.update(logits=jnp.array([1, 2, 3]), labels=jnp.array([1, 2, 0]))  # integer predictions
    acc.update(predictions=jnp.array([[0, 1]]), labels=jnp.array([[0, 0]]))
    np.testing.assert_allclose(float(acc.compute()), 3 / 5, rtol=1e-6)
    with pytest.raises(ValueError, match="labels.shape"):
        acc.update(logits=jnp.ones((4, 3)), labels=jnp.zeros((5,), jnp.int32))
    with pytest.raises(TypeError, match="labels must be integers"):
        acc.update(logits=jnp.ones((4, 3)), labels=jnp.zeros((4,)))
    with pytest.raises(TypeError, match="labels="):
        acc.update(logits=jnp.ones((4, 3)))
    np.testing.assert_allclose(float(acc.compute()), 3 / 5, rtol=1e-6)  # errors changed nothing


def test_multimetric_forwards_computes_and_resets():
    metrics = nnx.MultiMetric(loss=nnx.Average(), accuracy=nnx.Accuracy())
    losses, correct, total = [], 0, 0
    for loss, logits, labels in batches(seed=3):
        metrics.update(loss=loss, logits=logits, labels=labels)
        losses.append(loss)
        correct += int((logits.argmax(-1) == labels).sum())
        total += labels.size
    out = metrics.compute()
    assert list(out) == ["loss", "accuracy"]
    np.testing.assert_allclose(float(out["loss"]), np.concatenate(losses).mean(), rtol=1e-6)
    np.testing.assert_allclose(float(out["accuracy"]), correct / total, rtol=1e-6)
    assert isinstance(metrics.loss, nnx.metrics.Average)
    metrics.reset()
    assert all(bool(jnp.isnan(v)) for v in metrics.compute().values())


def test_multimetric_rejects_reserved_names_and_non_metrics():
    with pytest.raises(ValueError, match="'update'"):
        nnx.MultiMetric(update=nnx.Average())
    with pytest.raises(TypeError, match="must be a Metric"):
        nnx.MultiMetric(loss=3)
    with pytest.raises(ValueError, match="at least one"):
        nnx.MultiMetric()


def test_accumulators_are_metric_state_and_jit_through_split_merge():
    eager = nnx.MultiMetric(loss=nnx.Average(), accuracy=nnx.Accuracy())
    jitted = nnx.MultiMetric(loss=nnx.Average(), accuracy=nnx.Accuracy())
    state = nnx.state(jitted, MetricState)
    assert {"/".join(p) for p in state.paths()} == {
        "loss/total", "loss/count", "accuracy/total", "accuracy/count"
    }
    graphdef, state = nnx.split(jitted)

    @jax.jit
    def step(state, loss, logits, labels):
        m = nnx.merge(graphdef, state)
        m.update(loss=loss, logits=logits, labels=labels)
        return nnx.state(m)

    for loss, logits, labels in batches(seed=5):
        state = step(state, loss, logits, labels)
        eager.update(loss=loss, logits=logits, labels=labels)
    nnx.update(jitted, state)
    for k, v in eager.compute().items():
        np.testing.assert_allclose(float(jitted.compute()[k]), float(v), rtol=1e-6)
    assert step._cache_size() == 1


def test_custom_metric_subclass():
    class Maximum(nnx.metrics.Metric):
        def __init__(self):
            self.best = MetricState(jnp.array(-jnp.inf))

        def update(self, *, score, **_):
            self.best.value = jnp.maximum(self.best.value, jnp.max(score))

        def compute(self):
            return self.best.value

        def reset(self):
            self.best.value = jnp.array(-jnp.inf)

    m = nnx.MultiMetric(best=Maximum(), mean=nnx.Average("score"))
    m.update(score=jnp.array([1.0, 4.0]))
    m.update(score=jnp.array([2.0]))
    out = m.compute()
    assert float(out["best"]) == 4.0
    np.testing.assert_allclose(float(out["mean"]), 7.0 / 3, rtol=1e-6)
