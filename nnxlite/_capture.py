"""Recording values during a call: ``Module.sow``, ``Module.perturb`` and ``nnx.capture``.

``capture`` gives every module of the graph a ``__captures__`` attribute for
the duration of one call: a tuple with one Variable per requested type, each
holding a ``{name: value}`` dict. ``sow`` and ``perturb`` write into the
buffer whose type is exactly theirs (and do nothing when there is none), and
``capture`` collects the buffers into States afterwards and removes them.
Because the buffers are ordinary Variables in the graph, they travel through
nnx transforms like any other state. Outside ``capture``, ``sow`` keeps the
older behaviour of storing the value as an attribute of the module.

>>> import jax.numpy as jnp, nnxlite as nnx
>>> class Foo(nnx.Module):
...     def __call__(self, x):
...         self.sow(nnx.Intermediate, "h", x * 2)
...         return x
>>> y, inter = nnx.capture(Foo(), nnx.Intermediate)(jnp.ones(2))
>>> inter["h"][0].tolist()
[2.0, 2.0]
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite.state import State
from nnxlite.variables import Perturbation, Variable

__all__ = ["capture", "sow", "perturb", "tuple_init", "tuple_reduce"]

CAPTURES = "__captures__"


def tuple_init() -> tuple:
    """The default ``init_fn`` of ``sow``: an empty tuple."""
    return ()


def tuple_reduce(acc: tuple, value: Any) -> tuple:
    """The default ``reduce_fn`` of ``sow``: append ``value`` to the tuple."""
    return tuple(acc) + (value,)


def _buffer(module: Any, variable_type: type) -> Variable | None | bool:
    """The capture buffer of exactly ``variable_type``; None if there is none; False outside capture."""
    buffers = module.__dict__.get(CAPTURES)
    if buffers is None:
        return False
    for var in buffers:
        if type(var) is variable_type:
            return var
    return None


def sow(module: Any, variable_type: type, name: str, value: Any,
        reduce_fn: Callable = tuple_reduce, init_fn: Callable = tuple_init) -> bool:
    """``module.sow``: see :meth:`nnxlite.Module.sow`."""
    var = _buffer(module, variable_type)
    if var is None:
        return False  # capturing, but not this type: flax ignores the value
    if var is not False:
        var[name] = reduce_fn(var.raw_value[name] if name in var else init_fn(), value)
        return True
    existing = getattr(module, name, None) if hasattr(module, name) else None
    if hasattr(module, name) and not isinstance(existing, Variable):
        raise ValueError(
            f"sow: {type(module).__name__}.{name} is a {type(existing).__name__}, not a Variable, so the value "
            f"cannot be stored under that name. Pick another name, or sow inside nnx.capture(...), which "
            f"stores values in separate buffers."
        )
    if existing is not None:
        if type(existing) is not variable_type:
            raise ValueError(
                f"sow: {type(module).__name__}.{name} is a {type(existing).__name__}, expected a "
                f"{variable_type.__name__}; sow each name with one Variable type."
            )
        existing.value = reduce_fn(existing.value, value)
    else:
        setattr(module, name, variable_type(reduce_fn(init_fn(), value)))
    return True


def perturb(module: Any, name: str, value: Any, variable_type: type = Perturbation) -> Any:
    """``module.perturb``: see :meth:`nnxlite.Module.perturb`."""
    var = _buffer(module, variable_type)
    if var is None:
        return value
    if var is not False:
        if name not in var:
            var[name] = jax.tree.map(jnp.zeros_like, value)
        return var.raw_value[name] + value
    existing = module.__dict__.get(name)
    if existing is None:
        existing = variable_type(jax.tree.map(jnp.zeros_like, value))
        setattr(module, name, existing)
    elif type(existing) is not variable_type:
        raise ValueError(
            f"perturb: {type(module).__name__}.{name} is a {type(existing).__name__}, expected a "
            f"{variable_type.__name__}."
        )
    return existing.value + value


def _modules(root: Any) -> list:
    from nnxlite.compat import iter_modules

    return list(iter_modules(root))


def _install(root: Any, var_types: tuple, init: Any) -> None:
    initial: dict[tuple, dict] = {}
    if init is not None:
        state = init if isinstance(init, State) else State(init)
        for path, var in state.variables():
            initial.setdefault(tuple(path[:-1]), {}).setdefault(type(var), {})[path[-1]] = var.value
    for path, m in _modules(root):
        buffers = {t: {} for t in var_types}
        for t, values in initial.get(path, {}).items():
            buffers.setdefault(t, {}).update(values)
        setattr(m, CAPTURES, tuple(t(values) for t, values in buffers.items()))


def _harvest(root: Any, var_types: tuple) -> dict:
    """Collect and remove every ``__captures__``: ``{type: {path: value}}``."""
    found: dict[type, dict] = {t: {} for t in var_types}
    for path, m in _modules(root):
        buffers = m.__dict__.get(CAPTURES)
        if buffers is None:
            continue
        for var in buffers:
            if type(var) in found:
                for key, v in var.raw_value.items():
                    found[type(var)][(*path, key)] = v
        delattr(m, CAPTURES)
    return found


def _remove(root: Any) -> None:
    for _, m in _modules(root):
        if CAPTURES in m.__dict__:
            delattr(m, CAPTURES)


_SOWING = "_nnx_sows_output"


def _instrument(classes: set, variable_type: type) -> list:
    """Wrap the public methods (and ``__call__``) defined by each class to sow their outputs."""
    patched = []
    for cls in classes:
        for name, method in list(vars(cls).items()):
            if not callable(method) or isinstance(method, type) or (name.startswith("_") and name != "__call__"):
                continue
            if getattr(method, _SOWING, False):
                continue

            def make(name: str, method: Callable) -> Callable:
                @functools.wraps(method)
                def sowing(self, *args: Any, **kwargs: Any) -> Any:
                    out = method(self, *args, **kwargs)
                    sow(self, variable_type, name, out)
                    return out

                setattr(sowing, _SOWING, True)
                return sowing

            type.__setattr__(cls, name, make(name, method))
            patched.append((cls, name, method))
    return patched


def capture(fn: Any, *var_types: type, init: Any = None, method_outputs: type | None = None) -> Callable:
    """Wrap ``fn`` to return ``(result, *states)``: the values sown/perturbed during the call.

    ``fn`` is a Module (its ``__call__``), a bound method of one, or a
    function whose first argument is the module; given Variable types
    instead, ``capture`` is a decorator factory. Each requested type gives
    one State of the values sown with exactly that type (paths: module path
    + name). With no types the wrapper returns just the result.

    Args:
      init: a State of captured values (e.g. from a ``Perturbation``
        capture) to start the buffers with; ``perturb`` then adds them to its
        value, so gradients with respect to ``init`` are the gradients of the
        intermediate values.
      method_outputs: a Variable type: also sow the output of every public
        method and ``__call__`` of every module class in the graph, under the
        method's name.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> class Model(nnx.Module):
    ...     def __call__(self, x):
    ...         return 3 * self.perturb("x", x)
    >>> model = Model()
    >>> _, perturbations = nnx.capture(model, nnx.Perturbation)(1.0)
    >>> loss = lambda m, p, x: nnx.capture(m, init=p)(x)
    >>> grads = nnx.grad(loss, argnums=1)(model, perturbations, 1.0)
    >>> float(grads["x"])
    3.0
    """
    if isinstance(fn, type) and issubclass(fn, Variable):
        types = (fn, *var_types)
        return lambda f: capture(f, *types, init=init, method_outputs=method_outputs)
    from nnxlite.module import Module

    if isinstance(fn, Module):
        bound = fn
    elif inspect.ismethod(fn) and isinstance(fn.__self__, Module):
        bound = fn.__self__
    else:
        bound = None

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        root = bound if bound is not None else args[0]
        _install(root, var_types, init)
        patched = _instrument({type(m) for _, m in _modules(root)}, method_outputs) if method_outputs else []
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            _remove(root)
            raise
        finally:
            for cls, name, method in patched:
                type.__setattr__(cls, name, method)
        found = _harvest(root, var_types)
        if not var_types:
            return result
        states = tuple(
            State.from_flat(values, {p: (t, ()) for p in values}) for t, values in found.items()
        )
        return (result, *states)

    return wrapper
