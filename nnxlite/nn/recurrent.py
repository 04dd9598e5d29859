"""Recurrent layers: cells (:class:`SimpleCell`, :class:`LSTMCell`, :class:`OptimizedLSTMCell`,
:class:`GRUCell`), the :class:`RNN` that scans a cell over time, and :class:`Bidirectional`.

Parameter names, layouts and gate equations are flax.nnx's, so weights move
between the two libraries by path. A cell maps ``(carry, x_t) -> (carry, y_t)``
for one time step; :class:`RNN` runs it over a sequence with :func:`nnx.scan`
(one compiled step, whatever the length)::

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> rnn = nnx.RNN(nnx.LSTMCell(3, 5, ctx=nnx.context(0)))
    >>> rnn(jnp.ones((2, 7, 3))).shape           # (batch, time, features)
    (2, 7, 5)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from nnxlite import filters as filterlib
from nnxlite._rngs_arg import one_rng_arg
from nnxlite.module import Module
from nnxlite.nn import dtypes, initializers
from nnxlite.nn.initializers import Initializer
from nnxlite.nn.linear import Linear
from nnxlite.rng import Context, RngStream
from nnxlite.transforms import Carry, scan
from nnxlite.variables import RngState

__all__ = ["RNNCellBase", "SimpleCell", "LSTMCell", "OptimizedLSTMCell", "GRUCell", "RNN", "Bidirectional", "flip_sequences"]

_orthogonal = jax.nn.initializers.orthogonal()


def _carry_key(rngs: Any, owner: Any) -> jax.Array:
    """A key for a carry initializer: from ``rngs`` (a Context's ``carry`` stream, or a stream)."""
    if rngs is None:
        rngs = owner
    if isinstance(rngs, Context):
        return rngs.make_rng("carry")
    if isinstance(rngs, RngStream):
        return rngs()
    raise ValueError(
        "initialize_carry: a carry_init other than zeros needs random keys; pass rngs=nnx.context(...) "
        "(its 'carry' stream is used) or an RngStream."
    )


class RNNCellBase(Module):
    """Base class of recurrent cells: ``cell(carry, x) -> (new_carry, y)`` for one time step.

    Subclasses define ``__call__``, ``initialize_carry(input_shape, rngs=None,
    carry_init=None)`` and ``num_feature_axes``.

    >>> import nnxlite as nnx
    >>> issubclass(nnx.GRUCell, nnx.RNNCellBase)
    True
    """

    def _make_carry(self, input_shape: tuple, rngs: Any, carry_init: Initializer | None, n: int):
        """``n`` carry arrays of shape ``batch dims + (hidden_features,)`` (zeros by default)."""
        shape = tuple(input_shape[:-1]) + (self.hidden_features,)
        init = carry_init if carry_init is not None else self.carry_init
        if init is None:
            return [jnp.zeros(shape, self.param_dtype) for _ in range(n)]
        return [init(_carry_key(rngs, self.rngs), shape, self.param_dtype) for _ in range(n)]

    def initialize_carry(self, input_shape: tuple, rngs: Any = None, carry_init: Initializer | None = None) -> Any:
        """The initial carry for inputs of shape ``input_shape`` (one time step: ``(*batch, features)``)."""
        raise NotImplementedError

    @property
    def num_feature_axes(self) -> int:
        """Number of trailing feature axes of the inputs (1 for every built-in cell)."""
        return 1


def _cell_common(cell: Module, in_features, hidden_features, dtype, param_dtype, carry_init, keep_rngs, ctx) -> None:
    cell.in_features = in_features
    cell.hidden_features = hidden_features
    cell.dtype = dtype
    cell.param_dtype = param_dtype
    cell.carry_init = carry_init
    # flax's keep_rngs: keep a stream for carry initializers that need keys.
    cell.rngs = ctx.stream("carry") if keep_rngs else None


class SimpleCell(RNNCellBase):
    """The Elman cell ``h' = activation(W_i x + b_i + W_h h)`` (``+ h`` inside when ``residual``).

    Parameters: ``dense_i`` (kernel ``(in, hidden)``, bias) and ``dense_h``
    (kernel ``(hidden, hidden)``, no bias). The carry is ``h``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> cell = nnx.SimpleCell(3, 4, ctx=nnx.context(0))
    >>> h = cell.initialize_carry((2, 3))
    >>> h, y = cell(h, jnp.ones((2, 3)))
    >>> h.shape, bool((h == y).all())
    ((2, 4), True)

    Args:
      in_features, hidden_features: input and carry widths.
      dtype, param_dtype: computation and storage dtypes.
      carry_init: default initializer of the carry (zeros when None).
      residual: add ``h`` before the activation.
      activation_fn: the nonlinearity (tanh).
      kernel_init, recurrent_kernel_init, bias_init: initializers of the
        input kernel, recurrent kernel and bias.
      promote_dtype: casts inputs and weights (passed to the dense layers).
      keep_rngs: keep the Context's ``carry`` stream for ``initialize_carry``.
      ctx (or rngs): the Context giving the ``params`` keys.
      kernel_metadata, recurrent_kernel_metadata, bias_metadata: metadata of
        the input kernels, recurrent kernels and bias (e.g. ``sharding``).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        carry_init: Initializer | None = None,
        residual: bool = False,
        activation_fn: Callable = jnp.tanh,
        kernel_init: Initializer = initializers.lecun_normal(),
        recurrent_kernel_init: Initializer = _orthogonal,
        bias_init: Initializer = initializers.zeros_init(),
        promote_dtype: Callable = dtypes.promote_dtype,
        keep_rngs: bool = False,
        ctx: Context | None = None,
        rngs: Context | None = None,
        kernel_metadata: Mapping[str, Any] | None = None,
        recurrent_kernel_metadata: Mapping[str, Any] | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, type(self).__name__, required=True)
        _cell_common(self, in_features, hidden_features, dtype, param_dtype, carry_init, keep_rngs, ctx)
        self.residual = residual
        self.activation_fn = activation_fn
        dense = dict(dtype=dtype, param_dtype=param_dtype, promote_dtype=promote_dtype, ctx=ctx)
        meta_i = dict(kernel_metadata=kernel_metadata)
        meta_h = dict(kernel_metadata=recurrent_kernel_metadata)
        # Created in flax's order (dense_h first), so the same seed draws the same weights.
        self.dense_h = Linear(
            hidden_features, hidden_features, use_bias=False, kernel_init=recurrent_kernel_init, **meta_h, **dense
        )
        self.dense_i = Linear(
            in_features, hidden_features, kernel_init=kernel_init, bias_init=bias_init, bias_metadata=bias_metadata,
            **meta_i, **dense,
        )

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = self.dense_i(inputs) + self.dense_h(carry)
        if self.residual:
            h = h + carry
        h = self.activation_fn(h)
        return h, h

    def initialize_carry(self, input_shape: tuple, rngs: Any = None, carry_init: Initializer | None = None) -> jax.Array:
        """``h`` of shape ``(*input_shape[:-1], hidden_features)``."""
        return self._make_carry(input_shape, rngs, carry_init, 1)[0]


class LSTMCell(RNNCellBase):
    """The LSTM cell, one dense layer per gate (PyTorch's ``nn.LSTM`` gate equations).

    ``i, f, o = gate(W_i· x + W_h· h + b_h·)``, ``g = activation(W_ig x + W_hg h + b_hg)``,
    ``c' = f c + i g``, ``h' = o activation(c')``. Parameters: ``ii``, ``if_``,
    ``ig``, ``io`` (input kernels ``(in, hidden)``, no bias) and ``hi``, ``hf``,
    ``hg``, ``ho`` (recurrent kernels ``(hidden, hidden)`` with bias). The carry
    is ``(c, h)``; the output is ``h'``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> cell = nnx.LSTMCell(3, 4, ctx=nnx.context(0))
    >>> carry = cell.initialize_carry((2, 3))
    >>> (c, h), y = cell(carry, jnp.ones((2, 3)))
    >>> c.shape, y.shape
    ((2, 4), (2, 4))

    Args:
      in_features, hidden_features: input and carry widths.
      gate_fn, activation_fn: sigmoid and tanh by default.
      kernel_init, recurrent_kernel_init, bias_init: initializers.
      dtype, param_dtype: computation and storage dtypes.
      carry_init: default carry initializer (zeros when None).
      promote_dtype, keep_rngs, ctx (or rngs), kernel_metadata,
      recurrent_kernel_metadata, bias_metadata: as for :class:`SimpleCell`.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: Callable = jax.nn.sigmoid,
        activation_fn: Callable = jnp.tanh,
        kernel_init: Initializer = initializers.lecun_normal(),
        recurrent_kernel_init: Initializer = _orthogonal,
        bias_init: Initializer = initializers.zeros_init(),
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: Initializer | None = None,
        promote_dtype: Callable = dtypes.promote_dtype,
        keep_rngs: bool = False,
        ctx: Context | None = None,
        rngs: Context | None = None,
        kernel_metadata: Mapping[str, Any] | None = None,
        recurrent_kernel_metadata: Mapping[str, Any] | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, type(self).__name__, required=True)
        _cell_common(self, in_features, hidden_features, dtype, param_dtype, carry_init, keep_rngs, ctx)
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        dense = dict(dtype=dtype, param_dtype=param_dtype, promote_dtype=promote_dtype, ctx=ctx)
        meta_i = dict(kernel_metadata=kernel_metadata)
        meta_h = dict(kernel_metadata=recurrent_kernel_metadata)

        def dense_i():
            return Linear(in_features, hidden_features, use_bias=False, kernel_init=kernel_init, **meta_i, **dense)

        def dense_h():
            return Linear(
                hidden_features, hidden_features, kernel_init=recurrent_kernel_init, bias_init=bias_init,
                bias_metadata=bias_metadata, **meta_h, **dense,
            )

        self.ii, self.if_, self.ig, self.io = dense_i(), dense_i(), dense_i(), dense_i()
        self.hi, self.hf, self.hg, self.ho = dense_h(), dense_h(), dense_h(), dense_h()

    def __call__(self, carry: tuple, inputs: jax.Array) -> tuple[tuple, jax.Array]:
        c, h = carry
        i = self.gate_fn(self.ii(inputs) + self.hi(h))
        f = self.gate_fn(self.if_(inputs) + self.hf(h))
        g = self.activation_fn(self.ig(inputs) + self.hg(h))
        o = self.gate_fn(self.io(inputs) + self.ho(h))
        new_c = f * c + i * g
        new_h = o * self.activation_fn(new_c)
        return (new_c, new_h), new_h

    def initialize_carry(self, input_shape: tuple, rngs: Any = None, carry_init: Initializer | None = None) -> tuple:
        """``(c, h)``, each of shape ``(*input_shape[:-1], hidden_features)``."""
        return tuple(self._make_carry(input_shape, rngs, carry_init, 2))


class OptimizedLSTMCell(RNNCellBase):
    """The LSTM cell with the four gates fused into two matmuls (same equations as :class:`LSTMCell`).

    Parameters: ``dense_i`` (kernel ``(in, 4 * hidden)``, no bias) and
    ``dense_h`` (kernel ``(hidden, 4 * hidden)`` with bias), gates in the order
    ``i, f, g, o`` along the last axis, as PyTorch's ``weight_ih_l0.T``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> cell = nnx.OptimizedLSTMCell(3, 4, ctx=nnx.context(0))
    >>> cell.dense_i.kernel.shape, cell.dense_h.kernel.shape
    ((3, 16), (4, 16))
    >>> (c, h), y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
    >>> y.shape
    (2, 4)

    Args: as for :class:`LSTMCell`.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: Callable = jax.nn.sigmoid,
        activation_fn: Callable = jnp.tanh,
        kernel_init: Initializer = initializers.lecun_normal(),
        recurrent_kernel_init: Initializer = _orthogonal,
        bias_init: Initializer = initializers.zeros_init(),
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: Initializer | None = None,
        promote_dtype: Callable = dtypes.promote_dtype,
        keep_rngs: bool = False,
        ctx: Context | None = None,
        rngs: Context | None = None,
        kernel_metadata: Mapping[str, Any] | None = None,
        recurrent_kernel_metadata: Mapping[str, Any] | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, type(self).__name__, required=True)
        _cell_common(self, in_features, hidden_features, dtype, param_dtype, carry_init, keep_rngs, ctx)
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        dense = dict(dtype=dtype, param_dtype=param_dtype, promote_dtype=promote_dtype, ctx=ctx)
        meta_i = dict(kernel_metadata=kernel_metadata)
        meta_h = dict(kernel_metadata=recurrent_kernel_metadata)
        self.dense_i = Linear(in_features, 4 * hidden_features, use_bias=False, kernel_init=kernel_init, **meta_i, **dense)
        self.dense_h = Linear(
            hidden_features, 4 * hidden_features, kernel_init=recurrent_kernel_init, bias_init=bias_init,
            bias_metadata=bias_metadata, **meta_h, **dense,
        )

    def __call__(self, carry: tuple, inputs: jax.Array) -> tuple[tuple, jax.Array]:
        c, h = carry
        i, f, g, o = jnp.split(self.dense_i(inputs) + self.dense_h(h), 4, axis=-1)
        new_c = self.gate_fn(f) * c + self.gate_fn(i) * self.activation_fn(g)
        new_h = self.gate_fn(o) * self.activation_fn(new_c)
        return (new_c, new_h), new_h

    def initialize_carry(self, input_shape: tuple, rngs: Any = None, carry_init: Initializer | None = None) -> tuple:
        """``(c, h)``, each of shape ``(*input_shape[:-1], hidden_features)``."""
        return tuple(self._make_carry(input_shape, rngs, carry_init, 2))


class GRUCell(RNNCellBase):
    """The GRU cell (PyTorch's ``nn.GRU`` equations with a zero hidden bias ``b_hn``).

    ``r, z = gate(W_i· x + b_i· + W_h· h)``, ``n = activation(W_in x + b_in + r (W_hn h))``,
    ``h' = (1 - z) n + z h``. Parameters: ``dense_i`` (kernel ``(in, 3 * hidden)``
    with bias) and ``dense_h`` (kernel ``(hidden, 3 * hidden)``, no bias), gates
    in the order ``r, z, n``. The carry is ``h``.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> cell = nnx.GRUCell(3, 4, ctx=nnx.context(0))
    >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
    >>> h.shape
    (2, 4)

    Args: as for :class:`LSTMCell`.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: Callable = jax.nn.sigmoid,
        activation_fn: Callable = jnp.tanh,
        kernel_init: Initializer = initializers.lecun_normal(),
        recurrent_kernel_init: Initializer = _orthogonal,
        bias_init: Initializer = initializers.zeros_init(),
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: Initializer | None = None,
        promote_dtype: Callable = dtypes.promote_dtype,
        keep_rngs: bool = False,
        ctx: Context | None = None,
        rngs: Context | None = None,
        kernel_metadata: Mapping[str, Any] | None = None,
        recurrent_kernel_metadata: Mapping[str, Any] | None = None,
        bias_metadata: Mapping[str, Any] | None = None,
    ):
        ctx = one_rng_arg(ctx, rngs, type(self).__name__, required=True)
        _cell_common(self, in_features, hidden_features, dtype, param_dtype, carry_init, keep_rngs, ctx)
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        dense = dict(dtype=dtype, param_dtype=param_dtype, promote_dtype=promote_dtype, ctx=ctx)
        meta_i = dict(kernel_metadata=kernel_metadata)
        meta_h = dict(kernel_metadata=recurrent_kernel_metadata)
        self.dense_i = Linear(
            in_features, 3 * hidden_features, kernel_init=kernel_init, bias_init=bias_init, bias_metadata=bias_metadata,
            **meta_i, **dense,
        )
        self.dense_h = Linear(
            hidden_features, 3 * hidden_features, use_bias=False, kernel_init=recurrent_kernel_init, **meta_h, **dense
        )

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = carry
        xr, xz, xn = jnp.split(self.dense_i(inputs), 3, axis=-1)
        hr, hz, hn = jnp.split(self.dense_h(h), 3, axis=-1)
        r = self.gate_fn(xr + hr)
        z = self.gate_fn(xz + hz)
        n = self.activation_fn(xn + r * hn)
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h

    def initialize_carry(self, input_shape: tuple, rngs: Any = None, carry_init: Initializer | None = None) -> jax.Array:
        """``h`` of shape ``(*input_shape[:-1], hidden_features)``."""
        return self._make_carry(input_shape, rngs, carry_init, 1)[0]


def flip_sequences(inputs: jax.Array, seq_lengths: jax.Array | None, num_batch_dims: int, time_major: bool) -> jax.Array:
    """Reverse each sequence along time, keeping padding at the end (for the backward direction).

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> x = jnp.array([[1, 0, 0], [2, 3, 0], [4, 5, 6]])
    >>> nnx.flip_sequences(x, jnp.array([1, 2, 3]), num_batch_dims=1, time_major=False).tolist()
    [[1, 0, 0], [3, 2, 0], [6, 5, 4]]
    """
    time_axis = 0 if time_major else num_batch_dims
    steps = inputs.shape[time_axis]
    if seq_lengths is None:
        return jnp.flip(inputs, axis=time_axis)
    lengths = jnp.expand_dims(jnp.asarray(seq_lengths), axis=time_axis)
    idx = jnp.arange(steps - 1, -1, -1)
    idx = idx.reshape([steps] + [1] * num_batch_dims if time_major else [1] * num_batch_dims + [steps])
    idx = (idx + lengths) % steps  # step t of a sequence of length L reads step L-1-t
    idx = idx.reshape(idx.shape + (1,) * (inputs.ndim - idx.ndim))
    return jnp.take_along_axis(inputs, idx, axis=time_axis)


def _last_carry(carries: Any, seq_lengths: jax.Array) -> Any:
    """From carries stacked on axis 0 (time), the one after each sequence's last real step."""
    last = jnp.asarray(seq_lengths) - 1
    return jax.tree_util.tree_map(lambda x: x[last, jnp.arange(x.shape[1])], carries)


class RNN(Module):
    """Run a cell over the time axis of a sequence, with :func:`nnx.scan` (one compiled step).

    Inputs are ``(*batch, time, *features)`` (or ``(time, *batch, *features)``
    with ``time_major``). The cell's state is carried from step to step, and
    RNG streams the cell holds get a fresh key per step.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> rnn = nnx.RNN(nnx.GRUCell(3, 4, ctx=nnx.context(0)), return_carry=True)
    >>> x = jnp.ones((2, 6, 3))
    >>> h, ys = rnn(x, seq_lengths=jnp.array([6, 2]))
    >>> ys.shape, bool(jnp.allclose(h[1], ys[1, 1]))    # the carry after each sequence's last step
    ((2, 6, 4), True)

    Args:
      cell: an :class:`RNNCellBase`.
      time_major: time is axis 0 instead of the axis before the features.
      return_carry: return ``(final carry, outputs)`` instead of outputs.
      reverse: run from the last step to the first (padding, given by
        ``seq_lengths``, stays at the end).
      keep_order: with ``reverse``, give outputs back in input order.
      unroll: steps unrolled per loop iteration (``jax.lax.scan``'s ``unroll``).
      state_axes: ``{filter: axis}`` for the cell's state in the scan (default:
        all carried; an int scans stacked state along that axis).
      broadcast_rngs: a filter of RNG streams not split per step (one stream
        carried through the steps).
      rngs: an optional Context or RngStream for carry initializers that need keys.

    Call arguments (``initial_carry``, ``seq_lengths``, ``rngs`` and overrides of
    ``return_carry``/``time_major``/``reverse``/``keep_order``) are keywords.
    With ``seq_lengths`` the returned carry is the one after each sequence's
    last real step (one batch axis); outputs past a sequence's end are computed
    on the padding, as in flax.
    """

    def __init__(
        self,
        cell: RNNCellBase,
        *,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int = 1,
        state_axes: Mapping[Any, Any] | None = None,
        broadcast_rngs: filterlib.Filter = None,
        rngs: Context | RngStream | None = None,
    ):
        self.cell = cell
        # The cell's entry in scan's in_axes: carried (None) unless state_axes says otherwise. Its RNG
        # streams are split per step, except those matching broadcast_rngs (one stream carried through).
        entry = {}
        if broadcast_rngs is not None:
            entry[filterlib.All(RngState, broadcast_rngs)] = None
        entry.update(state_axes or {})
        self.cell_axes = tuple(entry.items()) if entry else None
        self.time_major = time_major
        self.return_carry = return_carry
        self.reverse = reverse
        self.keep_order = keep_order
        self.unroll = unroll
        self.rngs = rngs.stream("carry") if isinstance(rngs, Context) else rngs

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: Any = None,
        seq_lengths: jax.Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
        rngs: Context | RngStream | None = None,
    ):
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        reverse = self.reverse if reverse is None else reverse
        keep_order = self.keep_order if keep_order is None else keep_order
        n_feat = self.cell.num_feature_axes
        time_axis = 0 if time_major else inputs.ndim - (n_feat + 1)
        if time_axis < 0:
            raise ValueError(
                f"RNN: inputs of shape {tuple(inputs.shape)} have no time axis; expected (*batch, time, features)"
                f"{' with time first' if time_major else ''}."
            )
        batch_dims = inputs.shape[1:-n_feat] if time_major else inputs.shape[:time_axis]
        if reverse:
            inputs = flip_sequences(inputs, seq_lengths, len(batch_dims), time_major)
        carry = initial_carry
        if carry is None:
            step_shape = inputs.shape[:time_axis] + inputs.shape[time_axis + 1 :]
            carry = self.cell.initialize_carry(step_shape, rngs if rngs is not None else self.rngs)
        keep_carries = seq_lengths is not None and return_carry

        def step(cell, carry, x):
            carry, y = cell(carry, x)
            return carry, ((carry, y) if keep_carries else y)

        out_axes = (Carry, (0, time_axis)) if keep_carries else (Carry, time_axis)
        cell_entry = None if self.cell_axes is None else {**dict(self.cell_axes), ...: None}
        run = scan(step, in_axes=(cell_entry, Carry, time_axis), out_axes=out_axes, unroll=self.unroll)
        carry, outputs = run(self.cell, carry, inputs)
        if keep_carries:
            carries, outputs = outputs
            carry = _last_carry(carries, seq_lengths)
        if reverse and keep_order:
            outputs = flip_sequences(outputs, seq_lengths, len(batch_dims), time_major)
        return (carry, outputs) if return_carry else outputs


def _concatenate(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.concatenate([a, b], axis=-1)


class Bidirectional(Module):
    """Run one RNN forward and one backward over the sequence and merge their outputs.

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> ctx = nnx.context(0)
    >>> layer = nnx.Bidirectional(nnx.RNN(nnx.GRUCell(3, 4, ctx=ctx)), nnx.RNN(nnx.GRUCell(3, 4, ctx=ctx)))
    >>> layer(jnp.ones((2, 5, 3))).shape                # forward and backward features concatenated
    (2, 5, 8)

    Args:
      forward_rnn, backward_rnn: the two :class:`RNN` (the backward one is run
        with ``reverse=True, keep_order=True``).
      merge_fn: combines the two outputs (concatenation on the last axis).
      time_major, return_carry: as for :class:`RNN`; the carry is ``(forward, backward)``.
      rngs: an optional Context or RngStream passed to both for carry initialization.
    """

    def __init__(
        self,
        forward_rnn: RNN,
        backward_rnn: RNN,
        *,
        merge_fn: Callable = _concatenate,
        time_major: bool = False,
        return_carry: bool = False,
        rngs: Context | RngStream | None = None,
    ):
        self.forward_rnn = forward_rnn
        self.backward_rnn = backward_rnn
        self.merge_fn = merge_fn
        self.time_major = time_major
        self.return_carry = return_carry
        self.rngs = rngs.stream("carry") if isinstance(rngs, Context) else rngs

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: tuple | None = None,
        rngs: Context | RngStream | None = None,
        seq_lengths: jax.Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,  # accepted for the RNN call signature; unused
        keep_order: bool | None = None,  # likewise
    ):
        time_major = self.time_major if time_major is None else time_major
        return_carry = self.return_carry if return_carry is None else return_carry
        rngs = self.rngs if rngs is None else rngs
        init_f, init_b = initial_carry if initial_carry is not None else (None, None)
        common = dict(rngs=rngs, seq_lengths=seq_lengths, return_carry=True, time_major=time_major)
        carry_f, out_f = self.forward_rnn(inputs, initial_carry=init_f, reverse=False, **common)
        carry_b, out_b = self.backward_rnn(inputs, initial_carry=init_b, reverse=True, keep_order=True, **common)
        outputs = jax.tree_util.tree_map(self.merge_fn, out_f, out_b)
        return ((carry_f, carry_b), outputs) if return_carry else outputs
