"""flax.nnx's graph/tree mode switches, accepted for compatibility.

flax 0.12 transforms take ``graph=`` and ``graph_updates=`` (and the global
``nnx.set_graph_mode`` / ``nnx.set_graph_updates``): ``graph=False`` is its
*tree mode*, which treats modules as plain pytrees and refuses shared
references, and ``graph_updates=False`` stops in-place updates from
propagating. nnxlite accepts all of them and keeps its graph semantics in
every mode: shared references and cycles stay shared, and updates made inside
a transform come out. Its graph mode already runs at tree-mode speed, so a
program written for either flax mode runs unchanged; this is a superset of
tree mode, not a separate code path.

>>> import nnxlite as nnx
>>> nnx.set_graph_mode.current_value()
True
>>> with nnx.set_graph_mode(False):
...     nnx.set_graph_mode.current_value()
False
"""

from __future__ import annotations

import functools
import threading
from typing import Any

__all__ = ["set_graph_mode", "set_graph_updates"]


class _ModeSwitch:
    """Sets a mode now; as a context manager restores the previous one on exit; decorates too."""

    _state: threading.local
    _name: str

    def __init__(self, value: bool, /):
        _check_bool(value, self._name)
        stack = self._stack()
        self._prev = stack[-1] if stack else None
        if stack:
            stack[-1] = value
        else:
            stack.append(value)
        self._value = value

    @classmethod
    def _stack(cls) -> list:
        stack = getattr(cls._state, "stack", None)
        if stack is None:
            stack = cls._state.stack = []
        return stack

    @classmethod
    def current_value(cls) -> bool:
        stack = cls._stack()
        return stack[-1] if stack else True

    def __enter__(self):
        stack = self._stack()
        if self._prev is not None:
            stack.insert(-1, self._prev)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack().pop()

    def __call__(self, f):
        stack = self._stack()  # used as a decorator: undo the global set, apply per call
        stack.pop()
        if self._prev is not None:
            stack.append(self._prev)
        value = self._value

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            with type(self)(value):
                return f(*args, **kwargs)

        return wrapper


class set_graph_mode(_ModeSwitch):
    """flax.nnx's graph/tree mode switch; nnxlite always keeps graph semantics (see the module docstring)."""

    _state = threading.local()
    _name = "set_graph_mode"


class set_graph_updates(_ModeSwitch):
    """flax.nnx's graph-updates switch; nnxlite always writes updates back (see the module docstring)."""

    _state = threading.local()
    _name = "set_graph_updates"


def _check_bool(value: Any, name: str) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} expects True, False or None, got {value!r}.")


def check_mode(graph: Any, graph_updates: Any, what: str) -> None:
    """Validate flax's ``graph=``/``graph_updates=`` arguments (both accepted, graph semantics kept)."""
    _check_bool(graph, f"{what}(graph=...)")
    _check_bool(graph_updates, f"{what}(graph_updates=...)")
