"""Views: new module graphs that share the original's Variables but differ in settings.

``nnx.view(model, deterministic=True)`` returns a copy of the module
structure in which every module that defines ``set_view`` was given the
keyword arguments it declares; the weights are the *same* Variable objects,
so training one view trains them all. ``nnx.with_attributes`` does the same
for plain attributes, ``nnx.view_info`` lists what ``view`` can set, and
``nnx.with_vars`` gives Variables new flags.

>>> import nnxlite as nnx
>>> model = nnx.Sequential(nnx.Linear(2, 4, rngs=nnx.Rngs(0)), nnx.Dropout(0.1))
>>> eval_model = nnx.view(model, deterministic=True)
>>> eval_model.layers[1].deterministic, model.layers[1].deterministic
(True, False)
>>> eval_model.layers[0].kernel is model.layers[0].kernel
True
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from nnxlite import filters as filterlib
from nnxlite.compat.graph_tools import find_duplicates, recursive_map
from nnxlite.variables import Variable

__all__ = ["view", "view_info", "with_attributes", "with_vars", "vars_as"]

A = TypeVar("A")


def _accepted(method: Any) -> tuple[set[str], bool]:
    """The keyword names ``method`` declares, and whether it takes ``**kwargs``."""
    params = inspect.signature(method).parameters.values()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def view(node: A, /, *, only: filterlib.Filter = ..., raise_if_not_found: bool = True,
         graph: bool | None = None, **kwargs: Any) -> A:
    """A new graph sharing ``node``'s Variables, each selected module's ``set_view`` called with ``kwargs``.

    Each module's ``set_view`` gets only the keywords it declares (all of
    them if it takes ``**kwargs``). ``only`` filters the modules. A keyword
    no module accepts raises ``ValueError`` unless ``raise_if_not_found=False``.

    >>> import nnxlite as nnx
    >>> bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    >>> nnx.view(bn, use_running_average=True).use_running_average, bn.use_running_average
    (True, False)
    """
    predicate = filterlib.to_predicate(only)
    unused = set(kwargs)

    def apply(path: tuple, x: Any) -> Any:
        set_view = getattr(x, "set_view", None)
        if set_view is not None and callable(set_view) and not isinstance(x, type) and predicate(path, x):
            named, var_kw = _accepted(set_view)
            if var_kw:
                set_view(**kwargs)
                unused.clear()
            else:
                set_view(**{k: v for k, v in kwargs.items() if k in named})
                unused.difference_update(named)
        return x

    out = recursive_map(apply, node)
    if raise_if_not_found and unused:
        raise ValueError(
            f"nnx.view: no module in this graph accepts {sorted(unused)} in its set_view; "
            "nnx.view_info(model) lists what each module accepts. Pass raise_if_not_found=False to ignore."
        )
    return out


def with_attributes(node: A, /, *, only: filterlib.Filter = ..., raise_if_not_found: bool = True,
                    graph: bool | None = None, **attributes: Any) -> A:
    """A new graph sharing ``node``'s Variables, with ``attributes`` set on every module that has them.

    Unlike ``module.set_attributes`` the original is not changed.

    >>> import nnxlite as nnx
    >>> model = nnx.Sequential(nnx.Dropout(0.5))
    >>> nnx.with_attributes(model, deterministic=True).layers[0].deterministic, model.layers[0].deterministic
    (True, False)
    """
    from nnxlite.module import Module

    predicate = filterlib.to_predicate(only)
    missing = set(attributes)

    def apply(path: tuple, x: Any) -> Any:
        if isinstance(x, Module) and predicate(path, x):
            for name, value in attributes.items():
                if hasattr(x, name):
                    setattr(x, name, value)
                    missing.discard(name)
        return x

    out = recursive_map(apply, node)
    if raise_if_not_found and missing:
        raise ValueError(
            f"nnx.with_attributes: no selected module has the attribute(s) {sorted(missing)}; "
            "pass raise_if_not_found=False to ignore."
        )
    return out


def _args_doc(doc: str) -> dict[str, str]:
    """``{name: indented description}`` from the ``Args:`` section of a Google-style docstring."""
    start = doc.find("Args:\n")
    if start < 0:
        return {}
    body = doc[start + len("Args:\n"):]
    end = body.find("Returns:\n")
    lines = (body if end < 0 else body[:end]).split("\n")
    out: dict[str, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith("  ") and not line.startswith("    ") and ":" in line:
            current, _, first = line.strip().partition(":")
            out[current] = ["    " + first.strip()]
        elif current is not None and line.strip():
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def view_info(node: Any, /, *, only: filterlib.Filter = ..., graph: bool | None = None) -> str:
    """What :func:`view` can set: each module class with a ``set_view``, its keywords and their docs.

    >>> import nnxlite as nnx
    >>> print(nnx.view_info(nnx.Sequential(nnx.Dropout(0.1))))
    Dropout:
      deterministic: bool | None = None
        if True, disables dropout masking.
    """
    predicate = filterlib.to_predicate(only)
    classes: set[type] = set()

    def collect(path: tuple, x: Any) -> Any:
        if callable(getattr(x, "set_view", None)) and not isinstance(x, type) and predicate(path, x):
            classes.add(type(x))
        return x

    recursive_map(collect, node)
    lines = []
    for cls in sorted(classes, key=lambda c: c.__qualname__):
        lines.append(f"{cls.__qualname__}:")
        signature = inspect.signature(cls.set_view)
        doc = inspect.getdoc(cls.set_view)
        if not doc:
            lines.append(f"  set_view{signature}")
            continue
        described = _args_doc(doc)
        for name, p in signature.parameters.items():
            if name in ("self", "args", "kwargs"):
                continue
            annotation = p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)
            default = "" if p.default is p.empty else f" = {p.default}"
            lines.append(f"  {name}: {annotation}{default}")
            if name in described:
                lines.append(described[name])
    return "\n".join(lines)


def with_vars(node: A, /, *, hijax: bool | None = None, ref: bool | None = None, mutable: bool | None = None,
              only: filterlib.Filter = ..., allow_duplicates: bool = False) -> A:
    """A new graph whose selected Variables are copies carrying the flags ``hijax``/``ref``/``mutable``.

    nnxlite Variables are always plain Python boxes: the flags are recorded
    as metadata (``v.ref``, ``v.mutable``, ``v.hijax`` read them) so flax code
    that sets and checks them runs, but they do not change how the Variable
    behaves under JAX transforms (see docs/guides/from_flax_nnx.md).
    A Variable reachable by two paths is refused unless ``allow_duplicates``,
    since copying it would break the sharing.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> v = nnx.with_vars(nnx.Variable(jnp.array(0)), ref=True)
    >>> v.ref, v.mutable
    (True, True)
    """
    flags = {k: v for k, v in (("hijax", hijax), ("ref", ref), ("mutable", mutable)) if v is not None}
    selected = filterlib.to_predicate(only)

    def differs(path: tuple, x: Any) -> bool:
        return isinstance(x, Variable) and selected(path, x) and any(getattr(x, k) != v for k, v in flags.items())

    if not allow_duplicates:
        duplicates = find_duplicates(node, only=differs)
        if duplicates:
            where = "\n".join("  " + ", ".join("/".join(map(str, p)) for p in paths) for paths in duplicates)
            raise ValueError(
                f"with_vars: these Variables are shared by several paths, and copying them would break the "
                f"sharing:\n{where}\nPass allow_duplicates=True to copy them anyway."
            )

    return recursive_map(lambda path, x: x.copy(**flags) if differs(path, x) else x, node)


def vars_as(node: A, /, **kwargs: Any) -> A:
    """flax's older name for :func:`with_vars`.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> nnx.vars_as(nnx.Variable(jnp.array(0)), mutable=False).mutable
    False
    """
    return with_vars(node, **kwargs)
