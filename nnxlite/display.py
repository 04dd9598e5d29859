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
import sys
import types
import inspect
from collections import Counter
from typing import Any

import numpy as np

__all__ = ["module_repr", "summary", "tabulate", "display"]

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


# Nesting deeper than this is shown as ``Name(...)``: the text of a deeper repr
# grows with the square of the depth (indentation), and nobody reads it.
MAX_REPR_DEPTH = 64


def module_repr(module: Any) -> str:
    try:
        from nnxlite import graph

        flat = graph._flat(module)
    except Exception:  # repr must never fail, even on a graph that cannot split yet
        flat = None
    body = _render(module, flat)
    try:
        tail = summary(module) if flat is not None else ""
    except Exception:
        tail = ""
    return f"{body}  # {tail}" if tail else body


class _Canon:
    """Which occurrence of a shared node is the real one: the one at its canonical path.

    That is the path its Variables have in ``nnx.state``, so ``print(model)``
    and the State agree. Without a traversal (a graph that cannot split), the
    first occurrence printed is the real one.
    """

    def __init__(self, flat):
        self.flat = flat
        self.index = {id(o): i for i, o in enumerate(flat.node_objects)} if flat is not None else None
        self.seen: set = set()

    def real_here(self, obj: Any, parent: Any, key: Any) -> tuple[bool, str]:
        if self.index is not None:
            i = self.index.get(id(obj))
            if i is not None:
                first = self.flat.node_parents[i]
                if parent is None or (
                    first is not None and self.index.get(id(parent)) == first[0] and first[1] == key
                ):
                    return True, ""
                return False, " at " + ("/".join(map(str, self.flat.node_path(i))) or "<root>")
        if id(obj) in self.seen:
            return False, ""
        self.seen.add(id(obj))
        return True, ""


def _render(root: Any, flat) -> str:
    """The text of ``root``; iterative (an explicit stack), so any depth is safe."""
    from nnxlite.module import Module
    from nnxlite.variables import Variable

    canon = _Canon(flat)
    out: list[str] = []
    # Work items: a str is emitted as is; a tuple (obj, depth, parent, key) is rendered.
    work: list = [(root, 0, None, None)]
    while work:
        item = work.pop()
        if type(item) is str:
            out.append(item)
            continue
        obj, depth, parent, key = item
        if isinstance(obj, Variable):
            out.append(f"{type(obj).__name__}({_short(obj.raw_value)})")
            continue
        name = type(obj).__name__
        if isinstance(obj, (Module, list, tuple, dict)) and (isinstance(obj, Module) or _holds_modules(obj)):
            real, where = canon.real_here(obj, parent, key) if parent is not None else canon.real_here(obj, None, None)
            if not real:
                out.append(f"<shared {name}{where}>")
                continue
        if isinstance(obj, Module):
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
            if not children:
                out.append(f"{name}({', '.join(config)})")
                continue
            if depth >= MAX_REPR_DEPTH:
                out.append(f"{name}(...)")
                continue
            pad = "  " * (depth + 1)
            head = f"{name}(\n" + "".join(f"{pad}{c},\n" for c in config)
            entries = [(f"{pad}{k}=", v, k) for k, v in children]
            close = f"{'  ' * depth})"
        elif isinstance(obj, (list, tuple, dict)):
            if depth >= MAX_REPR_DEPTH:
                out.append("[...]" if isinstance(obj, list) else "(...)" if isinstance(obj, tuple) else "{...}")
                continue
            pad = "  " * (depth + 1)
            if isinstance(obj, dict):
                head, close = "{\n", f"{'  ' * depth}}}"
                entries = [(f"{pad}{k!r}: ", v, k) for k, v in obj.items()]
            else:
                open_, close_ = ("[", "]") if isinstance(obj, list) else ("(", ")")
                head, close = open_ + "\n", f"{'  ' * depth}{close_}"
                entries = [(pad, v, i) for i, v in enumerate(obj)]
        else:
            out.append(getattr(obj, "__name__", name) if callable(obj) else repr(obj))
            continue
        # Pushed in reverse: the stack pops them in reading order.
        work.append(close)
        for prefix, v, k in reversed(entries):
            work.append(",\n")
            work.append((v, depth + 1, obj, k))
            work.append(prefix)
        out.append(head)
    return "".join(out)


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

    stack, seen = [value], set()
    while stack:  # iterative: containers may nest arbitrarily deep
        v = stack.pop()
        if isinstance(v, Module):
            return True
        if isinstance(v, (list, tuple, dict)) and id(v) not in seen:
            seen.add(id(v))
            stack.extend(v.values() if isinstance(v, dict) else v)
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


def tabulate(node: Any, *inputs: Any, depth: int | None = None, **kwargs: Any) -> str:
    """A per-module table (path, type, parameter shapes, counts, bytes) with totals.

    ``inputs`` and extra keywords are accepted for flax.nnx's signature; the
    table describes the state, so the model is not run.

    >>> import nnxlite as nnx
    >>> print(nnx.tabulate(nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))))
    path     | type     | variables                | count | bytes
    ---------+----------+--------------------------+-------+------
    (root)   | Sequence | -                        | 0     | 0 B
    layers/0 | Linear   | kernel (2, 3), bias (3,) | 9     | 36 B
    ---------+----------+--------------------------+-------+------
    total    |          | Param: 9 (36 B)          | 9     | 36 B
    """
    from nnxlite import graph

    rows = []
    for path, obj in graph.iter_graph(node):
        if not hasattr(obj, "__dict__") or type(obj).__module__.startswith("builtins"):
            continue
        if depth is not None and len(path) > depth:
            continue
        own = [(k, v) for k, v in vars(obj).items() if hasattr(v, "raw_value") and hasattr(v, "_metadata")]
        if not own and path:
            continue
        shapes = ", ".join(f"{k} {tuple(np.shape(v.raw_value))}" for k, v in own)
        count = sum(int(np.size(v.raw_value)) for _, v in own)
        nbytes = sum(_nbytes(v.raw_value) for _, v in own)
        rows.append(("/".join(map(str, path)) or "(root)", type(obj).__name__, shapes or "-", f"{count:,}",
                     _human_bytes(nbytes)))
    total = sum(int(np.size(v.raw_value)) for v in graph._flat(node).variables)
    total_bytes = sum(_nbytes(v.raw_value) for v in graph._flat(node).variables)
    header = ("path", "type", "variables", "count", "bytes")
    rows.append(("total", "", summary(node) or "-", f"{total:,}", _human_bytes(total_bytes)))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *map(line, rows[:-1]), sep, line(rows[-1])])


def display(*objects: Any) -> None:
    """Show objects: treescope in a notebook (when installed), their ``repr`` in a terminal.

    ``nnx.display(x)`` works because this module is callable.

    >>> import nnxlite as nnx
    >>> nnx.display(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    Linear(in_features=2, out_features=3)  # Param: 9 (36 B)
    """
    for obj in objects:
        if _in_notebook():
            try:
                import treescope

                treescope.display(obj)
                continue
            except Exception:  # no treescope, or it cannot render this object: fall back to text
                pass
        print(repr(obj))


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython  # type: ignore
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class _CallableModule(types.ModuleType):
    """The ``display`` module, callable as :func:`display` (flax.nnx's ``nnx.display(x)``)."""

    def __call__(self, *objects: Any) -> None:
        display(*objects)


sys.modules[__name__].__class__ = _CallableModule
