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
``MultiMetric.update`` call can feed them all. ``mask=`` (an array, or a dict
``{metric_name: mask}`` for :class:`MultiMetric`) leaves out masked elements,
as in flax.nnx.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite.module import Module
from nnxlite.variables import Variable

__all__ = ["MetricState", "Metric", "Average", "Accuracy", "MultiMetric", "Welford", "Statistics"]


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


# The keyword an Average reads when none is named: flax.nnx's ``values``, or
# ``loss`` (nnxlite's earlier default) when a call gives no ``values``.
_DEFAULT_ARGNAMES = ("values", "loss")


def _named_value(metric: Metric, argname: str | None, kwargs: dict) -> Any:
    names = _DEFAULT_ARGNAMES if argname is None else (argname,)
    for name in names:
        if name in kwargs:
            return kwargs[name]
    wanted = " or ".join(repr(n) for n in names)
    raise TypeError(
        f"{type(metric).__name__}.update() expected keyword argument {wanted}, but got only {sorted(kwargs)}."
    )


class Average(Metric):
    """The mean of every value passed as the keyword ``argname``.

    Arrays contribute each element; a scalar counts once. ``compute()`` of an
    empty Average is ``nan``. Without ``argname`` it reads ``values=`` (as
    flax.nnx does) or, when a call has no ``values=``, ``loss=``.
    ``update(mask=m)`` counts only the elements where the (broadcastable)
    mask is nonzero.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> avg = nnx.metrics.Average()
    >>> avg.update(values=jnp.array([1.0, 2.0])); avg.update(loss=6.0)
    >>> float(avg.compute())
    3.0
    >>> avg.update(values=jnp.array([0.0, 100.0]), mask=jnp.array([True, False]))
    >>> float(avg.compute())
    2.25
    >>> avg.reset(); bool(jnp.isnan(avg.compute()))
    True
    """

    def __init__(self, argname: str | None = None):
        self.argname = argname
        self.total = MetricState(jnp.zeros((), jnp.float32))
        self.count = MetricState(jnp.zeros((), jnp.int32))

    def update(self, mask: Any = None, **kwargs: Any) -> None:
        """Add the values given as ``<argname>=...`` (where ``mask`` is nonzero); other keywords are ignored."""
        self._add(_named_value(self, self.argname, kwargs), mask)

    def _add(self, values: Any, mask: Any = None) -> None:
        if mask is not None and isinstance(values, (int, float)):
            raise ValueError(
                f"{type(self).__name__}.update(mask=...): the values should be a jax array "
                f"(one entry per mask element), not the Python scalar {values!r}."
            )
        values = jnp.asarray(values)
        if mask is None:
            self.total.value = self.total.value + values.sum(dtype=jnp.float32)
            self.count.value = self.count.value + jnp.int32(values.size)
            return
        mask = jnp.broadcast_to(jnp.asarray(mask), values.shape)
        self.total.value = self.total.value + (values * mask.astype(values.dtype)).sum(dtype=jnp.float32)
        self.count.value = self.count.value + mask.sum().astype(jnp.int32)

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
    ``logits=`` or ``predictions=``. ``Accuracy(threshold=t)`` is binary
    classification (flax.nnx): a score ``>= t`` predicts a positive label.
    ``mask=`` leaves elements out.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> acc = nnx.metrics.Accuracy()
    >>> acc.update(logits=jnp.array([[2.0, 1.0], [0.0, 3.0]]), labels=jnp.array([0, 0]))
    >>> acc.update(predictions=jnp.array([1, 1]), labels=jnp.array([1, 0]))
    >>> float(acc.compute())
    0.5
    >>> binary = nnx.metrics.Accuracy(threshold=0.5)
    >>> binary.update(logits=jnp.array([0.9, 0.2, 0.7]), labels=jnp.array([1, 1, 0]))
    >>> round(float(binary.compute()), 4)
    0.3333
    """

    def __init__(self, threshold: float | None = None, *args: Any, **kwargs: Any):
        if threshold is not None and not isinstance(threshold, float):
            raise TypeError(f"Accuracy(threshold=...) must be a float (e.g. 0.5), got {type(threshold).__name__}.")
        self.threshold = threshold
        super().__init__(*args, **kwargs)

    def update(self, mask: Any = None, **kwargs: Any) -> None:  # type: ignore[override]
        """Add a batch of ``logits=``/``predictions=`` and ``labels=``; other keywords are ignored."""
        if "labels" not in kwargs or ("logits" not in kwargs and "predictions" not in kwargs):
            raise TypeError(
                f"Accuracy.update needs labels= and logits= (or predictions=); got {sorted(kwargs)}."
            )
        labels = jnp.asarray(kwargs["labels"])
        scores = jnp.asarray(kwargs["predictions"] if "predictions" in kwargs else kwargs["logits"])
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"Accuracy: labels must be integers, found {labels.dtype}.")
        if self.threshold is not None:
            if scores.ndim != labels.ndim:
                raise ValueError(
                    "Accuracy(threshold=...): For binary classification, expected logits.ndim == labels.ndim; "
                    f"got {scores.ndim} and {labels.ndim}."
                )
            predictions, labels = scores >= self.threshold, labels > 0
        elif scores.shape == labels.shape and jnp.issubdtype(scores.dtype, jnp.integer):
            predictions = scores
        elif scores.ndim == labels.ndim + 1 and scores.shape[:-1] == labels.shape:
            predictions = scores.argmax(axis=-1)
        else:
            raise ValueError(
                "Accuracy: For multi-class classification, expected logits of shape labels.shape + "
                f"(num_classes,) or integer predictions of shape labels.shape; found "
                f"{scores.dtype}{list(scores.shape)} for labels of shape {list(labels.shape)}."
            )
        self._add(predictions == labels, mask)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Statistics:
    """What :class:`Welford` computes: the mean, its standard error and the standard deviation."""

    mean: jax.Array
    standard_error_of_mean: jax.Array
    standard_deviation: jax.Array


class Welford(Metric):
    """Running mean and variance of every value passed as ``argname`` (Welford's algorithm).

    Each batch is merged into the running count, mean and sum of squared
    deviations (Chan et al.'s pairwise update), which stays accurate for
    long streams. ``compute()`` returns :class:`Statistics`.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> w = nnx.metrics.Welford()
    >>> w.update(values=jnp.array([1.0, 2.0])); w.update(values=jnp.array([3.0, 4.0]))
    >>> s = w.compute()
    >>> float(s.mean), round(float(s.standard_deviation), 4)     # numpy: std([1, 2, 3, 4])
    (2.5, 1.118)
    """

    def __init__(self, argname: str = "values"):
        self.argname = argname
        self.count = MetricState(jnp.zeros((), jnp.int32))
        self.mean = MetricState(jnp.zeros((), jnp.float32))
        self.m2 = MetricState(jnp.zeros((), jnp.float32))

    def update(self, **kwargs: Any) -> None:
        """Merge the batch given as ``<argname>=...``; other keywords are ignored."""
        values = jnp.asarray(_named_value(self, self.argname, kwargs), jnp.float32)
        n_old, n_new = self.count.value, jnp.int32(values.size)
        total = n_old + n_new
        delta = values.mean() - self.mean.value
        self.mean.value = self.mean.value + delta * n_new / total
        self.m2.value = self.m2.value + values.var() * n_new + delta * delta * n_old * n_new / total
        self.count.value = total

    def compute(self) -> Statistics:
        """The mean, the standard error of the mean and the (population) standard deviation."""
        std = (self.m2.value / self.count.value) ** 0.5
        return Statistics(mean=self.mean.value, standard_error_of_mean=std / self.count.value**0.5,
                          standard_deviation=std)

    def reset(self) -> None:
        """Set the count, mean and squared deviations back to zero."""
        self.count.value = jnp.zeros_like(self.count.value)
        self.mean.value = jnp.zeros_like(self.mean.value)
        self.m2.value = jnp.zeros_like(self.m2.value)


class MultiMetric(Metric):
    """Several named metrics updated together.

    Each metric becomes an attribute (``metrics.loss``); ``update(**kwargs)``
    passes every keyword to every metric, ``compute()`` returns a dict.
    ``mask=`` goes to every metric, or, as a dict ``{name: mask}``, only to
    the metrics it names (as in flax.nnx).

    >>> import nnxlite as nnx
    >>> m = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), grad_norm=nnx.metrics.Average("grad_norm"))
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
        """Update every metric with the same keyword arguments (``mask=`` may be per metric)."""
        mask = kwargs.pop("mask", None)
        for name in self.metric_names:
            own_mask = mask.get(name) if isinstance(mask, dict) else mask
            extra = {} if own_mask is None else {"mask": own_mask}
            getattr(self, name).update(**kwargs, **extra)

    def compute(self) -> dict[str, Any]:
        """``{name: metric.compute()}``, in construction order."""
        return {name: getattr(self, name).compute() for name in self.metric_names}

    def reset(self) -> None:
        """Reset every metric."""
        for name in self.metric_names:
            getattr(self, name).reset()
