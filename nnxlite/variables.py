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
from nnxlite._variable_flax import FlaxVariableMethods

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
    "Perturbation",
]

_EMPTY_METADATA: dict[str, Any] = {}
_set_class = object.__dict__["__class__"].__set__


def _flatten_variable(v: "Variable"):
    return (v.raw_value,), (type(v), _freeze(v._metadata))


_VALUE_KEY = jax.tree_util.GetAttrKey("value")


def _flatten_variable_with_keys(v: "Variable"):
    # The key makes paths read as flax's do: `.kernel.value`.
    return ((_VALUE_KEY, v.raw_value),), (type(v), _freeze(v._metadata))


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
        jax.tree_util.register_pytree_with_keys(
            cls, _flatten_variable_with_keys, _unflatten_variable, flatten_func=_flatten_variable
        )
        if bases and ("get_value" in namespace or "set_value" in namespace):
            _route_through_hooks(cls, namespace)
        return cls


def _inherited(cls: type, name: str) -> Any:
    return next(base.__dict__[name] for base in cls.__mro__[1:] if name in base.__dict__)


def _route_through_hooks(cls: type, namespace: dict) -> None:
    """Make ``.value``, ``v[i]`` and array use call an overridden ``get_value``/``set_value``.

    flax.nnx funnels every read and write through these two methods, so a
    subclass can transform values on the way in or out. nnxlite does the same
    for the subclasses that override them; other Variables keep their direct
    (faster) accessors. The graph traversal reads and writes ``raw_value``, so
    State holds what is stored, as in flax.
    """
    value = _inherited(cls, "value")
    fget, fset = value.fget, value.fset
    if "get_value" in namespace:
        fget = lambda self: self.get_value()  # noqa: E731
        cls.__getitem__ = lambda self, index: self.get_value(index=index)
        cls.__jax_array__ = lambda self: self.get_value()
    if "set_value" in namespace:
        fset = lambda self, new: self.set_value(new)  # noqa: E731
        cls.__setitem__ = lambda self, index, new: self.set_value(new, index=index)
    cls.value = property(fget, fset, doc=value.__doc__)


class Variable(FlaxVariableMethods, metaclass=_VariableMeta):
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

    # ``_init_recipe`` is left unset by ``__init__`` and by merge (no creation
    # cost); ``nnxlite.functional.param_from_init`` sets it to record how the
    # value was drawn, so that ``nnx.transform``'s ``init_fn`` can redraw it.
    # ``_nnx_path`` is a path hint the graph traversal records (unset until then),
    # used only to name the Variable in error messages (see ``_check_live``).
    __slots__ = ("raw_value", "_metadata", "_init_recipe", "_nnx_path", "__weakref__")

    raw_value: Any
    _metadata: dict[str, Any]

    def __init__(self, value: Any, **metadata: Any):
        if isinstance(value, Variable):
            # A boxed value (e.g. from an ``nnx.with_partitioning`` initializer)
            # passes its metadata on; explicit keywords win.
            if value._metadata:
                metadata = {**value._metadata, **metadata}
            value = value.raw_value
        if metadata and ("out_sharding" in metadata or "sharding" in metadata):
            from nnxlite.compat.var_config import place_by_out_sharding  # flax's eager sharding

            if "out_sharding" in metadata:
                value = place_by_out_sharding(value, metadata["out_sharding"])
            else:  # nnx.with_partitioning's names: placed when they are the mesh's axes, as in flax
                value = place_by_out_sharding(value, metadata["sharding"], only_mesh_axes=True)
        self.raw_value = value
        self._metadata = metadata if metadata else _EMPTY_METADATA

    # ``v.__class__ = Param`` changes what filters and GraphDefs see, so it is a
    # structural edit. Reading goes through this property too; it answers what
    # ``type(v)`` does.
    @property
    def __class__(self):
        return type(self)

    @__class__.setter
    def __class__(self, cls):
        _set_class(self, cls)
        _epoch.bump()

    # -- value and metadata ------------------------------------------------
    @property
    def value(self) -> Any:
        """The held value. Assigning replaces it in place (no copy of the box)."""
        return _read(self)

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

    def set_metadata(self, *args: Any, replace: bool = False, **metadata: Any) -> "Variable":
        """Add or change metadata entries (they are static structure, like attribute names).

        flax.nnx's spellings work too: ``set_metadata("name", value)``, and
        ``set_metadata({...})``, which (like ``replace=True``) replaces the
        whole dictionary.

        >>> import nnxlite as nnx
        >>> p = nnx.Param(1.0).set_metadata(sharding=("embed", None))
        >>> p.sharding
        ('embed', None)
        """
        if args:
            if metadata or len(args) > 2:
                raise TypeError("set_metadata takes a dict, a (name, value) pair, or keywords; not a mix.")
            if len(args) == 2:
                metadata = {args[0]: args[1]}
            else:
                metadata, replace = dict(args[0]), True
        # copy on write: merged Variables share dicts
        self._metadata = dict(metadata) if replace else {**self._metadata, **metadata}
        _epoch.bump()
        return self

    @property
    def sharding(self) -> Any:
        """The value's sharding (a ``jax.sharding.Sharding``), as in flax and on a ``jax.Array``.

        Where the value has none (a Python number, a NumPy array, an abstract
        value without one), the ``sharding`` metadata: the axis names given
        by ``nnx.with_partitioning``, which are also ``.sharding_names`` /
        ``.out_sharding`` and ``get_metadata("sharding")``.
        """
        found = getattr(self.raw_value, "sharding", None)
        if found is not None and not isinstance(found, (tuple, list)):
            return found
        meta = self._metadata
        if "sharding" in meta:
            return meta["sharding"]
        if found is None and "out_sharding" not in meta and "sharding_names" not in meta:
            raise AttributeError(f"{type(self).__name__} has no attribute or metadata 'sharding'")
        return meta.get("out_sharding", meta.get("sharding_names"))

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: serve metadata as attributes.
        meta = object.__getattribute__(self, "_metadata")
        try:
            return meta[name]
        except KeyError:
            pass
        if name == "out_sharding" and "sharding" in meta:  # flax 0.12's name for the axis names
            return meta["sharding"]
        if not name.startswith("_"):  # then the value's own attributes (`param.sharding`), as in flax
            try:
                return getattr(object.__getattribute__(self, "raw_value"), name)
            except AttributeError:
                pass
        raise AttributeError(
            f"{type(self).__name__} has no attribute or metadata {name!r} "
            f"(metadata keys: {sorted(self._metadata)}); set metadata with .set_metadata({name}=...)"
        )

    # -- array-likeness ----------------------------------------------------
    # Make numpy defer `ndarray @ variable` to our reflected operators, which
    # keeps tracers out of numpy (same trick as jax.Array).
    __array_priority__ = 100

    def __jax_array__(self):
        return _read(self)

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

    def __contains__(self, item) -> bool:
        return item in self.raw_value

    def __getitem__(self, index):
        value = _read(self)
        if index is Ellipsis and not hasattr(value, "__getitem__"):  # variable[...] on a Python scalar
            return value
        return value[index]

    def __setitem__(self, index, value):
        # Functional update of the held array, written back into this box.
        if isinstance(self.raw_value, dict):  # a dict value (flax's capture buffers): copy on write
            self.raw_value = {**self.raw_value, index: _unbox(value)}
            return
        if index is Ellipsis and not hasattr(self.raw_value, "at"):  # a Python scalar or numpy value
            self.raw_value = value.raw_value if isinstance(value, Variable) else value
            return
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


# -- tracer safety ------------------------------------------------------------------
# A Variable that code inside a plain JAX transform changed without taking it as an
# argument (a closed-over model) is left holding that transform's tracer. Reads go
# through ``_read``, which looks closer only when the value *is* a Tracer, so
# concrete arrays pay one isinstance check.
_Tracer = jax.core.Tracer
try:  # the trace stack is private in jax 0.10; without it only leaks seen at top level are named
    from jax._src.core import trace_ctx as _trace_ctx
except ImportError:  # pragma: no cover
    _trace_ctx = None


class TracerLeakError(jax.errors.UnexpectedTracerError):
    """A Variable was read holding a tracer from a JAX transformation that has ended.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> count = nnx.Variable(jnp.zeros(()))
    >>> _ = jax.jit(lambda x: setattr(count, "value", x))(1.0)  # closed over: leaks
    >>> try:
    ...     count.value
    ... except nnx.TracerLeakError:
    ...     print("leaked; pass it as an argument to nnx.jit instead")
    leaked; pass it as an argument to nnx.jit instead
    """

    def __init__(self, message: str):
        TypeError.__init__(self, message)  # skip jax's "see <jax error page>" suffix


def _read(v: "Variable") -> Any:
    x = v.raw_value
    if isinstance(x, _Tracer):
        _check_live(v, x)
    return x


def _check_live(v: "Variable", x: Any) -> None:
    """Raise TracerLeakError if ``x`` belongs to a trace that is not running any more."""
    if _tracer_is_dead(x):
        raise TracerLeakError(_leak_message(v, x))


def _tracer_is_dead(x: Any) -> bool:
    """Does the tracer ``x`` provably belong to a JAX trace that has finished?"""
    trace = getattr(x, "_trace", None)
    t = getattr(_trace_ctx, "trace", None)
    if trace is None or t is None:
        return False  # not a trace we can judge (or a jax without this API): let JAX decide
    depth = 0
    while t is not None:  # the running traces: the current one and its parents
        if t is trace:
            return False
        t, depth = getattr(t, "parent_trace", None), depth + 1
    is_valid = getattr(trace, "is_valid", None)
    if depth > 1 and (is_valid is None or is_valid()):
        return False  # inside some other transformation and not provably dead: JAX will judge
    return True


try:  # the staging trace type is private in jax 0.10; without it closed-over draws go undetected
    from jax._src.interpreters.partial_eval import DynamicJaxprTrace as _StagingTrace
except ImportError:  # pragma: no cover
    _StagingTrace = None


def _staging() -> bool:
    """Is a staging JAX trace (jit, scan, cond, eval_shape, ...) running in this thread?"""
    t = getattr(_trace_ctx, "trace", None)
    if _StagingTrace is None:
        return False
    while t is not None:
        if isinstance(t, _StagingTrace):
            return True
        t = getattr(t, "parent_trace", None)
    return False


def _check_not_closed_over(counter: "Variable", what: str) -> None:
    """Refuse to advance a concrete counter inside a staging trace.

    A counter that is still a concrete array inside ``jit`` (or ``scan``,
    ``eval_shape``, ...) was neither passed in nor created there: the
    function closed over it. Its update would leak a tracer, and the key
    drawn from it would be a constant baked into the compiled function,
    the same on every call.
    """
    if not isinstance(counter.raw_value, _Tracer) and _staging():
        hint = getattr(counter, "_nnx_path", None)
        where = "/".join(map(str, hint[1])) if hint is not None and hint[1] else "<unknown path>"
        raise TracerLeakError(
            f"{what} (counter at {where}) was used inside a JAX transformation (jit, scan, eval_shape, ...) "
            "that closed over it instead of taking it as an argument: every call of the compiled function "
            "would get the same key, and the counter would be left holding a tracer. Fix: pass the Context "
            "(or the module holding it) as an argument to the nnx transform (nnx.jit(f)(model, ctx, ...)), "
            "or split it with nnx.split and merge it inside."
        )


def _leak_message(v: "Variable", x: Any) -> str:
    hint = getattr(v, "_nnx_path", None)
    if hint is not None:
        root, path = hint
        if isinstance(root, tuple):  # a joint traversal of several roots (a transform's arguments)
            root, path = (root[path[0]], path[1:]) if path else ("arguments", path)
        where = f"{'/'.join(map(str, path)) or '<root>'} of a {root}"
    else:
        where = "<path unknown: it was never split or passed to an nnxlite transform>"
    aval = getattr(x, "aval", None)
    what = aval.str_short() if hasattr(aval, "str_short") else type(x).__name__
    return (
        f"{type(v).__name__} Variable at {where} holds a {type(x).__name__} ({what}) from a JAX "
        "transformation that has already finished, so it has no value.\n"
        "This happens when a function under jax.jit/vmap/grad/scan changes a module it closed over "
        "instead of taking it as an argument. Fix: pass the module to an nnxlite transform "
        "(nnx.jit, nnx.vmap, nnx.grad, ...) as an argument so its updates are returned and written back, "
        "or with plain JAX use nnx.split before and return the new state (nnx.merge / nnx.update) after. "
        "Assigning a concrete value (variable.value = ...) repairs this Variable."
    )


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
            return op(_unbox(other), _read(self))

    else:

        def method(self, other):
            return op(_read(self), _unbox(other))

    return method


def _inplace(op):
    def method(self, other):
        self.raw_value = op(_read(self), _unbox(other))
        return self

    return method


def _unary(op):
    def method(self):
        return op(_read(self))

    return method


def _unbox(x):
    return _read(x) if isinstance(x, Variable) else x


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




class Perturbation(Intermediate):
    """A zero added to an intermediate value so its gradient can be read (``Module.perturb``).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> class Model(nnx.Module):
    ...     def __call__(self, x):
    ...         return 3 * self.perturb("x", x)
    >>> _, perturbations = nnx.capture(Model(), nnx.Perturbation)(jnp.ones(2))
    >>> perturbations["x"].tolist()
    [0.0, 0.0]
    """


class RngState(Variable):
    """Base type of random-stream state (keys and counters)."""




class RngKey(RngState):
    """The base key of a random stream."""




class RngCount(RngState):
    """How many keys a random stream has handed out."""




class OptState(Variable):
    """One leaf of an optimizer's state (kept in Variables so it splits with the model)."""

