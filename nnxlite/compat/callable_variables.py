"""``nnx.variables(node, *filters)``: flax.nnx's alias of :func:`nnxlite.state`.

In nnxlite ``nnx.variables`` is also the module that defines ``Variable``,
``Param`` and the other Variable types; making that module callable keeps both
meanings (``nnx.variables.Param`` and ``nnx.variables(model, nnx.Param)``).

>>> import nnxlite as nnx
>>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> nnx.variables(model, nnx.Param).paths() == nnx.state(model, nnx.Param).paths()
True
>>> nnx.variables.Param is nnx.Param
True
"""

from __future__ import annotations

import sys
import types
from typing import Any

from nnxlite import graph as _graph
import nnxlite.variables  # noqa: F401  (the module made callable below)


class _CallableVariablesModule(types.ModuleType):
    """The ``nnxlite.variables`` module, callable as flax's ``nnx.variables`` (``nnx.state``)."""

    def __call__(self, node: Any, *filters: Any, **kwargs: Any) -> Any:
        kwargs.pop("graph", None)  # flax's graph/tree mode switch: nnxlite always traverses the graph
        return _graph.state(node, *filters, **kwargs)


sys.modules["nnxlite.variables"].__class__ = _CallableVariablesModule
