"""Variables: the boxes that hold a module's state.

A :class:`Variable` wraps one value (usually a ``jax.Array``) plus free-form
metadata. Its *type* says what kind of state it is (:class:`Param` is
trained, :class:`BatchStat` is updated by the forward pass, ...), and filters
select state by that type.

Variables behave like the array they hold, so layer code reads naturally::

    >>> import jax.numpy as jnp
    >>> import nnxlite as nnx
    >>> w = nnx.Param(jnp.ones((2, 3)))
    >>> (jnp.ones((1, 2)) @ w + 1).shape
    (1, 3)
    >>> count = nnx.Variable(0)
    >>> count += 1          # replaces the value held by the *same* object
    >>> count.value
    1
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import numpy as np

from nnxlite import _epoch

__all__ = [
    "Variable",
    "Param",
    "BatchStat",
    "Cache",
    "Intermediate",
    "RngState",
    "RngKey",
    "RngCount",
    "OptState",
]

_EMPTY_METADATA: dict[str, Any] = {}


def _flatten_variable(v: "Variable"):
    return (v.raw_value,), (type(v), _freeze(v._metadata))


def _unflatten_variable(aux, children):
    variable_type, metadata = aux
    return _make(variable_type, children[0], dict(metadata))


def _freeze(metadata: dict[str, Any]) -> tuple:
    return tuple(sorted(metadata.items()))



class _VariableMeta(type):
    """Gives every Variable subclass ``__slots__ = ()`` and registers it as a pytree.

    Slots keep Variables small and cheap to create, which matters because
    ``merge`` creates one per leaf; without them a user's ``class
    Count(nnx.Variable): pass`` would silently grow a ``__dict__``.
    """

    def __new__(mcls, name, bases, namespace, **kwargs):
        namespace.setdefault("__slots__", ())
        cls = super().__new__(mcls, name, bases, namespace, **kwargs)
        jax.tree_util.register_pytree_node(cls, _flatten_variable, _unflatten_variable)
        return cls


class Variable(metaclass=_VariableMeta):
    """A mutable box holding one state value and its metadata.

    Subclass it to define a new *kind* of state; the subclass is the handle
    that filters use::

        >>> import nnxlite as nnx
        >>> class Count(nnx.Variable): pass
        >>> c = Count(0, description="calls so far")
        >>> c.description
        'calls so far'

    Args:
      value: the initial value (an array, a scalar, or any pytree leaf).
      **metadata: arbitrary keyword metadata (for example ``sharding=('embed',
        'mlp')``). It is static: it travels in the :class:`GraphDef`, not in
        the :class:`State`, and it is preserved through split/merge.
    """

    __slots__ = ("raw_value", "_metadata", "__weakref__")

    raw_value: Any
    _metadata: dict[str, Any]

    def __init__(self, value: Any, **metadata: Any):
        if isinstance(value, Variable):
            value = value.raw_value
        self.raw_value = value
        self._metadata = metadata if metadata else _EMPTY_METADATA

    # -- value and metadata ------------------------------------------------
    @property
    def value(self) -> Any:
        """The held value. Assigning replaces it in place (no copy of the box)."""
        return self.raw_value

    @value.setter
    def value(self, new: Any) -> None:
        if isinstance(new, Variable):
            new = new.raw_value
        self.raw_value = new

    @property
    def metadata(self) -> dict[str, Any]:
        """A read-only copy of the metadata dictionary."""
        return dict(self._metadata)

    def replace(self, value: Any) -> "Variable":
        """A new Variable of the same type and metadata holding ``value``."""
        return _make(type(self), value, self._metadata)

    def set_metadata(self, **metadata: Any) -> "Variable":
        """Add or change metadata entries (they are static structure, like attribute names).

        >>> import nnxlite as nnx
        >>> p = nnx.Param(1.0).set_metadata(sharding=("embed", None))
        >>> p.sharding
        ('embed', None)
        """
        self._metadata = {**self._metadata, **metadata}  # copy on write: merged Variables share dicts
        _epoch.bump()
        return self

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: serve metadata as attributes.
        try:
            return object.__getattribute__(self, "_metadata")[name]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} has no attribute or metadata {name!r} "
                f"(metadata keys: {sorted(self._metadata)}); set metadata with .set_metadata({name}=...)"
            ) from None

    # -- array-likeness ----------------------------------------------------
    # Make numpy defer `ndarray @ variable` to our reflected operators, which
    # keeps tracers out of numpy (same trick as jax.Array).
    __array_priority__ = 100

    def __jax_array__(self):
        return self.raw_value

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.raw_value, dtype=dtype)

    @property
    def shape(self):
        return np.shape(self.raw_value)

    @property
    def dtype(self):
        dtype = getattr(self.raw_value, "dtype", None)
        return dtype if dtype is not None else np.result_type(self.raw_value)

    @property
    def ndim(self) -> int:
        return np.ndim(self.raw_value)

    @property
    def size(self) -> int:
        return int(np.size(self.raw_value))

    @property
    def T(self):
        return self.raw_value.T

    def __len__(self) -> int:
        return len(self.raw_value)

    def __iter__(self):
        return iter(self.raw_value)

    def __getitem__(self, index):
        return self.raw_value[index]

    def __setitem__(self, index, value):
        # Functional update of the held array, written back into this box.
        self.raw_value = self.raw_value.at[index].set(value)

    def __bool__(self) -> bool:
        return bool(self.raw_value)

    def __int__(self) -> int:
        return int(self.raw_value)

    def __float__(self) -> float:
        return float(self.raw_value)

    def __index__(self) -> int:
        return operator.index(self.raw_value)

    def __hash__(self) -> int:
        return object.__hash__(self)

    def astype(self, dtype):
        return self.raw_value.astype(dtype)

    def reshape(self, *shape):
        return self.raw_value.reshape(*shape)

    def sum(self, *args, **kwargs):
        return self.raw_value.sum(*args, **kwargs)

    def mean(self, *args, **kwargs):
        return self.raw_value.mean(*args, **kwargs)

    def __repr__(self) -> str:
        meta = "".join(f", {k}={v!r}" for k, v in self._metadata.items())
        value = repr(self.raw_value).replace("\n", "\n  ")
        return f"{type(self).__name__}(\n  value={value}{meta}\n)"

    def __treescope_repr__(self, path, subtree_renderer):
        from nnxlite import display

        return display.render_variable(self, path, subtree_renderer)

    # Deep copies must keep the box type and metadata; the value is shared
    # because jax arrays are immutable.
    def __copy__(self):
        return _make(type(self), self.raw_value, self._metadata)

    def __deepcopy__(self, memo):
        import copy

        return _make(type(self), copy.deepcopy(self.raw_value, memo), self._metadata)

    def __reduce__(self):
        return (_make, (type(self), self.raw_value, dict(self._metadata)))


_new = object.__new__


def _make(variable_type: type, value: Any, metadata: dict[str, Any]) -> Variable:
    """Build a Variable without running ``__init__`` (used by merge)."""
    v = _new(variable_type)
    v.raw_value = value
    v._metadata = metadata
    return v


def _binary(op, reflected: bool = False):
    if reflected:

        def method(self, other):
            return op(_unbox(other), self.raw_value)

    else:

        def method(self, other):
            return op(self.raw_value, _unbox(other))

    return method


def _inplace(op):
    def method(self, other):
        self.raw_value = op(self.raw_value, _unbox(other))
        return self

    return method


def _unary(op):
    def method(self):
        return op(self.raw_value)

    return method


def _unbox(x):
    return x.raw_value if isinstance(x, Variable) else x


for _name, _op in [
    ("add", operator.add),
    ("sub", operator.sub),
    ("mul", operator.mul),
    ("truediv", operator.truediv),
    ("floordiv", operator.floordiv),
    ("mod", operator.mod),
    ("pow", operator.pow),
    ("matmul", operator.matmul),
    ("and", operator.and_),
    ("or", operator.or_),
    ("xor", operator.xor),
    ("lshift", operator.lshift),
    ("rshift", operator.rshift),
]:
    setattr(Variable, f"__{_name}__", _binary(_op))
    setattr(Variable, f"__r{_name}__", _binary(_op, reflected=True))
    setattr(Variable, f"__i{_name}__", _inplace(_op))

for _name, _op in [
    ("lt", operator.lt),
    ("le", operator.le),
    ("gt", operator.gt),
    ("ge", operator.ge),
    ("eq", operator.eq),
    ("ne", operator.ne),
]:
    setattr(Variable, f"__{_name}__", _binary(_op))

for _name, _op in [
    ("neg", operator.neg),
    ("pos", operator.pos),
    ("abs", operator.abs),
    ("invert", operator.invert),
]:
    setattr(Variable, f"__{_name}__", _unary(_op))


class Param(Variable):
    """A trainable parameter: what ``grad(..., wrt=nnx.Param)`` differentiates."""




class BatchStat(Variable):
    """Statistics updated by the forward pass, e.g. BatchNorm's running mean."""




class Cache(Variable):
    """Decoding caches and other state a layer keeps between calls."""




class Intermediate(Variable):
    """Values a module records during a call (via ``Module.sow``)."""




class RngState(Variable):
    """Base type of random-stream state (keys and counters)."""




class RngKey(RngState):
    """The base key of a random stream."""




class RngCount(RngState):
    """How many keys a random stream has handed out."""




class OptState(Variable):
    """One leaf of an optimizer's state (kept in Variables so it splits with the model)."""

