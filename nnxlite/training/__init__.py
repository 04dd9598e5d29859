"""Training utilities: :class:`Optimizer` and metrics.

Everything here is also exported at the top level (``nnx.Optimizer``,
``nnx.metrics.Average``, ``nnx.MultiMetric``).

>>> import nnxlite as nnx
>>> nnx.training.Optimizer is nnx.Optimizer
True
"""

from nnxlite.training import metrics
from nnxlite.training.metrics import Accuracy, Average, Metric, MetricState, MultiMetric
from nnxlite.training.optimizer import Optimizer

__all__ = ["Optimizer", "metrics", "Metric", "MetricState", "Average", "Accuracy", "MultiMetric"]
