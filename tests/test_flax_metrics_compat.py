"""flax.nnx's metric surface on nnxlite: Average's ``values=``/``mask=``, Accuracy(threshold=),
Welford, MultiMetric's per-metric masks; compared with flax.nnx itself when it is installed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx

LOGITS = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
LABELS = jnp.array([1, 1, 1, 0])
MASK = jnp.array([True, False, True, True])


def _flax():
    return pytest.importorskip("flax.nnx")


def test_average_reads_values_by_default_and_loss_as_before():
    avg = nnx.metrics.Average()
    avg.update(values=jnp.array([1.0, 3.0]))
    avg.update(loss=5.0)  # nnxlite's earlier default keyword still works
    assert float(avg.compute()) == pytest.approx(3.0)
    with pytest.raises(TypeError, match="'values' or 'loss'"):
        avg.update(other=1.0)


def test_average_mask_counts_only_unmasked_elements():
    values = jnp.array([1.0, 100.0, 3.0, 5.0])
    avg = nnx.metrics.Average()
    avg.update(values=values, mask=MASK)
    np.testing.assert_allclose(avg.compute(), np.mean(np.asarray(values)[np.asarray(MASK)]))
    assert int(avg.count.value) == 3
    with pytest.raises(ValueError, match="should be a jax array"):
        avg.update(values=2.0, mask=MASK)


def test_accuracy_threshold_is_binary_classification():
    scores = jnp.array([0.4, 0.7, 0.2, 0.6])
    acc = nnx.metrics.Accuracy(threshold=0.5)
    acc.update(logits=scores, labels=jnp.array([0, 1, 1, 1]))
    expected = np.mean((np.asarray(scores) >= 0.5) == np.array([0, 1, 1, 1]).astype(bool))
    assert float(acc.compute()) == pytest.approx(expected)
    with pytest.raises(ValueError, match="For binary classification"):
        acc.update(logits=scores, labels=jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(TypeError, match="must be a float"):
        nnx.metrics.Accuracy(threshold=1)


def test_multimetric_mask_dict_goes_only_to_named_metrics():
    metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average())
    metrics.update(logits=LOGITS, labels=LABELS, values=jnp.array([1.0, 2.0, 3.0, 4.0]), mask={"loss": MASK})
    out = metrics.compute()
    assert float(out["accuracy"]) == pytest.approx(0.75)  # unmasked: 3 of 4 correct
    assert float(out["loss"]) == pytest.approx((1.0 + 3.0 + 4.0) / 3)


def test_welford_matches_numpy_over_batches():
    data = np.asarray(jax.random.normal(jax.random.key(0), (6, 5)))
    w = nnx.metrics.Welford()
    for row in data:
        w.update(values=jnp.asarray(row))
    stats = w.compute()
    np.testing.assert_allclose(stats.mean, data.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats.standard_deviation, data.std(), rtol=1e-5)
    np.testing.assert_allclose(stats.standard_error_of_mean, data.std() / np.sqrt(data.size), rtol=1e-5)
    assert isinstance(stats, nnx.metrics.Statistics)
    w.reset()
    assert int(w.count.value) == 0


def test_same_results_as_flax():
    fnnx = _flax()
    data = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    results = []
    for lib in (nnx, fnnx):
        multi = lib.MultiMetric(accuracy=lib.metrics.Accuracy(), loss=lib.metrics.Average())
        multi.update(logits=LOGITS, labels=LABELS, values=jnp.array([1.0, 2.0, 3.0, 4.0]), mask={"loss": MASK})
        binary = lib.metrics.Accuracy(threshold=0.5)
        binary.update(logits=LOGITS[:, 1], labels=LABELS, mask=MASK)
        welford = lib.metrics.Welford()
        for row in data:
            welford.update(values=row)
        s = welford.compute()
        out = multi.compute()
        results.append([float(out["accuracy"]), float(out["loss"]), float(binary.compute()),
                        float(s.mean), float(s.standard_deviation), float(s.standard_error_of_mean)])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5)
