"""Layers. Everything here is also exported at the top level (``nnx.Linear``)."""

from nnxlite.nn import initializers
from nnxlite.nn.containers import Sequence, Sequential
from nnxlite.nn.linear import Linear
from nnxlite.nn.normalization import BatchNorm
from nnxlite.nn.stochastic import Dropout
