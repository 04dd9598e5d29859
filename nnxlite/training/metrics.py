"""Metrics: running averages and accuracy, stored in Variables.

A metric is a :class:`~nnxlite.Module` whose accumulators are
:class:`MetricState` Variables. ``update(**kwargs)`` adds a batch,
``compute()`` reads the result and ``reset()`` starts over. Since the
accumulators are state, a metric can be updated eagerly or inside
``jax.jit`` through ``nnx.split``/``nnx.merge``, like a model::

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    >>> metrics.update(loss=0.5, logits=jnp.array([[0.1, 0.9], [0.8, 0.2]]), labels=jnp.array([1, 1]))
    >>> metrics.update(loss=1.5, logits=jnp.array([[0.3, 0.7]]), labels=jnp.array([1]))
    >>> {k: round(float(v), 4) for k, v in metrics.compute().items()}
    {'loss': 1.0, 'accuracy': 0.6667}

Every metric ignores keyword arguments it does not use, so one
``MultiMetric.update`` call can feed them all.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from nnxlite.module import Module
from nnxlite.variables import Variable

__all__ = ["MetricState", "Metric", "Average", "Accuracy", "MultiMetric"]


class MetricState(Variable):
    """The accumulators of a metric (totals, counts)."""


class Metric(Module):
    """Base class of metrics: ``update(**kwargs)``, ``compute()``, ``reset()``.

    Subclasses keep their accumulators in :class:`MetricState` Variables and
    change them by assigning ``.value`` (never by replacing the Variable), so
    updates work in place, inside ``jax.jit`` after a merge, and never
    invalidate cached graph traversals.
    """

    def update(self, **kwargs: Any) -> None:
        """Accumulate one batch."""
        raise NotImplementedError

    def compute(self) -> Any:
        """The metric's value so far."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything accumulated."""
        raise NotImplementedError


class Average(Metric):
    """The mean of every value passed as the keyword ``argname`` (default ``'loss'``).

    Arrays contribute each element; a scalar counts once. ``compute()`` of an
    empty Average is ``nan``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> avg = nnx.metrics.Average()
    >>> avg.update(loss=jnp.array([1.0, 2.0])); avg.update(loss=6.0)
    >>> float(avg.compute())
    3.0
    >>> avg.reset(); bool(jnp.isnan(avg.compute()))
    True
    """

    def __init__(self, argname: str = "loss"):
        self.argname = argname
        self.total = MetricState(jnp.zeros((), jnp.float32))
        self.count = MetricState(jnp.zeros((), jnp.int32))

    def update(self, **kwargs: Any) -> None:
        """Add the values given as ``<argname>=...``; other keywords are ignored."""
        if self.argname not in kwargs:
            raise TypeError(
                f"{type(self).__name__} averages the keyword argument {self.argname!r}, "
                f"but update() got only {sorted(kwargs)}."
            )
        self._add(kwargs[self.argname])

    def _add(self, values: Any) -> None:
        values = jnp.asarray(values)
        self.total.value = self.total.value + values.sum(dtype=jnp.float32)
        self.count.value = self.count.value + jnp.int32(values.size)

    def compute(self) -> jax.Array:
        """``total / count``."""
        return self.total.value / self.count.value

    def reset(self) -> None:
        """Set the total and the count back to zero."""
        self.total.value = jnp.zeros_like(self.total.value)
        self.count.value = jnp.zeros_like(self.count.value)


class Accuracy(Average):
    """The fraction of correct predictions.

    ``update(logits=..., labels=...)`` takes scores with one more axis than
    the integer ``labels`` and predicts their argmax over the last axis.
    Integer predictions of the same shape as ``labels`` are accepted too, as
    ``logits=`` or ``predictions=``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> acc = nnx.metrics.Accuracy()
    >>> acc.update(logits=jnp.array([[2.0, 1.0], [0.0, 3.0]]), labels=jnp.array([0, 0]))
    >>> acc.update(predictions=jnp.array([1, 1]), labels=jnp.array([1, 0]))
    >>> float(acc.compute())
    0.5
    """

    def __init__(self):
        super().__init__("values")

    def update(self, **kwargs: Any) -> None:  # type: ignore[override]
        """Add a batch of ``logits=``/``predictions=`` and ``labels=``; other keywords are ignored."""
        if "labels" not in kwargs or ("logits" not in kwargs and "predictions" not in kwargs):
            raise TypeError(
                f"Accuracy.update needs labels= and logits= (or predictions=); got {sorted(kwargs)}."
            )
        labels = jnp.asarray(kwargs["labels"])
        scores = jnp.asarray(kwargs["predictions"] if "predictions" in kwargs else kwargs["logits"])
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"Accuracy: labels must be integers, found {labels.dtype}.")
        if scores.shape == labels.shape and jnp.issubdtype(scores.dtype, jnp.integer):
            predictions = scores
        elif scores.ndim == labels.ndim + 1 and scores.shape[:-1] == labels.shape:
            predictions = scores.argmax(axis=-1)
        else:
            raise ValueError(
                "Accuracy: expected logits of shape labels.shape + (num_classes,) or integer "
                f"predictions of shape labels.shape; found {scores.dtype}{list(scores.shape)} "
                f"for labels of shape {list(labels.shape)}."
            )
        self._add(predictions == labels)


class MultiMetric(Metric):
    """Several named metrics updated together.

    Each metric becomes an attribute (``metrics.loss``); ``update(**kwargs)``
    passes every keyword to every metric, ``compute()`` returns a dict.

    >>> import nnxlite as nnx
    >>> m = nnx.MultiMetric(loss=nnx.metrics.Average(), grad_norm=nnx.metrics.Average("grad_norm"))
    >>> m.update(loss=2.0, grad_norm=0.5)
    >>> {k: float(v) for k, v in m.compute().items()}
    {'loss': 2.0, 'grad_norm': 0.5}
    """

    _RESERVED = frozenset({"update", "compute", "reset", "metric_names", "train", "eval"})

    def __init__(self, **metrics: Metric):
        if not metrics:
            raise ValueError("MultiMetric needs at least one metric: MultiMetric(loss=nnx.metrics.Average()).")
        for name, metric in metrics.items():
            if name in self._RESERVED or name.startswith("_") or hasattr(Module, name):
                raise ValueError(f"MultiMetric: {name!r} cannot be a metric name (it is a method or reserved).")
            if not isinstance(metric, Metric):
                raise TypeError(f"MultiMetric: {name}= must be a Metric, got {type(metric).__name__}.")
            setattr(self, name, metric)
        self.metric_names = tuple(metrics)

    def update(self, **kwargs: Any) -> None:
        """Update every metric with the same keyword arguments."""
        for name in self.metric_names:
            getattr(self, name).update(**kwargs)

    def compute(self) -> dict[str, Any]:
        """``{name: metric.compute()}``, in construction order."""
        return {name: getattr(self, name).compute() for name in self.metric_names}

    def reset(self) -> None:
        """Reset every metric."""
        for name in self.metric_names:
            getattr(self, name).reset()
