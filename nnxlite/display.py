"""How modules, Variables and States look: plain ``repr`` and treescope.

``repr(module)`` shows the constructor-like configuration and sub-modules,
then a one-line summary of the state by Variable type::

    >>> import nnxlite as nnx
    >>> print(repr(nnx.Linear(5, 2, ctx=nnx.context(0))))
    Linear(in_features=5, out_features=2)  # Param: 12 (48 B)

In notebooks, treescope renders modules, Variables and States as foldable
trees (``treescope.basic_interactive_setup()`` once per notebook).
"""

from __future__ import annotations

import functools
import inspect
from collections import Counter
from typing import Any

import numpy as np

__all__ = ["module_repr", "summary"]

_SIMPLE = (bool, int, float, str, type(None))


def _is_config(value: Any) -> bool:
    if isinstance(value, _SIMPLE):
        return True
    if isinstance(value, tuple) and all(isinstance(v, _SIMPLE) for v in value):
        return True
    return isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic))


def _fmt_config(value: Any) -> str:
    if isinstance(value, type) and issubclass(value, np.generic):
        return value.__name__
    if isinstance(value, np.dtype):
        return str(value)
    return repr(value)


def _nbytes(value: Any) -> int:
    size = getattr(value, "size", None)
    itemsize = getattr(getattr(value, "dtype", None), "itemsize", None)
    if size is None or itemsize is None:
        return 0
    return int(size) * int(itemsize)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def summary(node: Any) -> str:
    """One line: number of values and bytes per Variable type, e.g. ``Param: 12 (48 B)``.

    >>> import nnxlite as nnx
    >>> nnx.display.summary(nnx.BatchNorm(4, ctx=nnx.context(0)))
    'BatchStat: 8 (32 B), Param: 8 (32 B)'
    """
    from nnxlite import graph

    counts: Counter = Counter()
    sizes: Counter = Counter()
    flat = graph._flat(node)
    for v, (t, _) in zip(flat.variables, flat.graphdef.vardefs):
        name = t.__name__  # plain data leaves are listed as DataLeaf
        counts[name] += int(np.size(v.raw_value)) if hasattr(v.raw_value, "shape") else 1
        sizes[name] += _nbytes(v.raw_value)
    parts = []
    for name in sorted(counts):
        size = f" ({_human_bytes(sizes[name])})" if sizes[name] else ""
        parts.append(f"{name}: {counts[name]:,}{size}")
    return ", ".join(parts)


def module_repr(module: Any) -> str:
    body = _render(module, 0, set())
    try:
        tail = summary(module)
    except Exception:  # repr must never fail, even on a graph that cannot split yet
        tail = ""
    return f"{body}  # {tail}" if tail else body


def _render(obj: Any, depth: int, seen: set) -> str:
    from nnxlite.module import Module
    from nnxlite.variables import Variable

    if isinstance(obj, Variable):
        return f"{type(obj).__name__}({_short(obj.raw_value)})"
    if isinstance(obj, Module):
        if id(obj) in seen:  # already printed above (shared reference or cycle)
            return f"<shared {type(obj).__name__}>"
        seen.add(id(obj))
        config, children = [], []
        for k, v in vars(obj).items():
            if k.startswith("_") or isinstance(v, Variable):
                continue
            if v is None or _is_default(type(obj), k, v):
                continue
            if _is_config(v):
                config.append(f"{k}={_fmt_config(v)}")
            elif _holds_modules(v):
                children.append((k, v))
        name = type(obj).__name__
        if not children:
            return f"{name}({', '.join(config)})"
        pad = "  " * (depth + 1)
        lines = [f"{pad}{c}," for c in config]
        lines += [f"{pad}{k}={_render(v, depth + 1, seen)}," for k, v in children]
        return f"{name}(\n" + "\n".join(lines) + f"\n{'  ' * depth})"
    if isinstance(obj, (list, tuple)):
        open_, close = ("[", "]") if isinstance(obj, list) else ("(", ")")
        pad = "  " * (depth + 1)
        inner = [f"{pad}{_render(v, depth + 1, seen)}," for v in obj]
        return open_ + "\n" + "\n".join(inner) + f"\n{'  ' * depth}{close}"
    if isinstance(obj, dict):
        pad = "  " * (depth + 1)
        inner = [f"{pad}{k!r}: {_render(v, depth + 1, seen)}," for k, v in obj.items()]
        return "{\n" + "\n".join(inner) + f"\n{'  ' * depth}}}"
    if callable(obj):
        return getattr(obj, "__name__", type(obj).__name__)
    return repr(obj)


@functools.cache
def _init_defaults(cls: type) -> dict[str, Any]:
    try:
        params = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _is_default(cls: type, name: str, value: Any) -> bool:
    # Constructor arguments left at their default are noise in a repr.
    default = _init_defaults(cls).get(name, _NO_DEFAULT)
    try:
        return default is value or (type(default) is type(value) and bool(default == value))
    except Exception:
        return False


_NO_DEFAULT = object()


def _holds_modules(value: Any) -> bool:
    from nnxlite.module import Module

    if isinstance(value, Module):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_modules(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_modules(v) for v in value.values())
    return False


def _short(v: Any) -> str:
    shape = getattr(v, "shape", None)
    dtype = getattr(v, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{dtype}{list(shape)}"
    return repr(v)


# -- treescope ----------------------------------------------------------------------------
def render_module(module: Any, path, subtree_renderer):
    from treescope import repr_lib

    attributes = {k: v for k, v in vars(module).items() if not k.startswith("_nnx_")}
    return repr_lib.render_object_constructor(type(module), attributes, path, subtree_renderer, color="#cfe8fc")


def render_variable(variable: Any, path, subtree_renderer):
    from treescope import repr_lib

    attributes = {"value": variable.raw_value, **variable._metadata}
    return repr_lib.render_object_constructor(type(variable), attributes, path, subtree_renderer, color="#fde8c8")


def render_state(state: Any, path, subtree_renderer):
    from treescope import repr_lib

    return repr_lib.render_dictionary_wrapper(
        object_type=type(state), wrapped_dict=state.to_pure_dict(), path=path, subtree_renderer=subtree_renderer
    )
