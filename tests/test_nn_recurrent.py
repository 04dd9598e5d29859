"""Recurrent layers: parity with flax.nnx on copied weights, PyTorch's LSTM/GRU equations, RNN options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from test_nn_helpers import copy_params_to_flax, np_normal

RNG = np.random.default_rng(0)
INIT = dict(kernel_init=np_normal(0), recurrent_kernel_init=np_normal(1), bias_init=np_normal(2))
CELLS = ["SimpleCell", "LSTMCell", "OptimizedLSTMCell", "GRUCell"]


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def close(a, b, tol=1e-5):
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731  (State leaves are Variables)
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol), a, b, is_leaf=is_var
    )


def pair(name, i=3, h=4):
    """Our cell and flax's, with our (random, nonzero) weights copied into flax's by path."""
    fnnx = pytest.importorskip("flax.nnx")
    ours = getattr(nnx, name)(i, h, **INIT, ctx=nnx.context(0))
    theirs = getattr(fnnx, name)(i, h, rngs=fnnx.Rngs(0))
    copy_params_to_flax(ours, theirs)  # asserts the same parameter paths and shapes
    return ours, theirs


@pytest.mark.parametrize("name", CELLS)
def test_cell_step_matches_flax(name):
    ours, theirs = pair(name)
    x = jnp.asarray(randn(2, 3))
    carry = ours.initialize_carry(x.shape)
    their_carry = theirs.initialize_carry(x.shape, pytest.importorskip("flax.nnx").Rngs(0))
    close(carry, their_carry)
    carry = jax.tree_util.tree_map(lambda c: c + jnp.asarray(randn(*c.shape)), carry)  # a nonzero carry
    close(ours(carry, x), theirs(carry, x))


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"reverse": True},
        {"reverse": True, "keep_order": True},
        {"time_major": True},
        {"return_carry": True},
    ],
)
def test_rnn_matches_flax(name, options):
    fnnx = pytest.importorskip("flax.nnx")
    cell, their_cell = pair(name)
    x = jnp.asarray(randn(5, 2, 3) if options.get("time_major") else randn(2, 5, 3))
    ours = nnx.RNN(cell, **options)
    theirs = fnnx.RNN(their_cell, **options)
    close(ours(x), theirs(x))


@pytest.mark.parametrize("reverse", [False, True])
def test_rnn_seq_lengths_and_initial_carry_match_flax(reverse):
    fnnx = pytest.importorskip("flax.nnx")
    cell, their_cell = pair("OptimizedLSTMCell")
    x = jnp.asarray(randn(3, 6, 3))
    lengths = jnp.array([6, 2, 4])
    init = (jnp.asarray(randn(3, 4)), jnp.asarray(randn(3, 4)))
    kw = dict(seq_lengths=lengths, initial_carry=init, return_carry=True, reverse=reverse, keep_order=True)
    (c, h), ys = nnx.RNN(cell)(x, **kw)
    (fc, fh), fys = fnnx.RNN(their_cell)(x, **kw)
    close((c, h, ys), (fc, fh, fys))
    if not reverse:
        # The carry is the one after each sequence's last real step.
        close(h, ys[jnp.arange(3), lengths - 1])


def test_bidirectional_matches_flax():
    fnnx = pytest.importorskip("flax.nnx")
    f, tf = pair("GRUCell")
    b, tb = pair("GRUCell")
    x = jnp.asarray(randn(2, 5, 3))
    lengths = jnp.array([5, 3])
    ours = nnx.Bidirectional(nnx.RNN(f), nnx.RNN(b), return_carry=True)
    theirs = fnnx.Bidirectional(fnnx.RNN(tf), fnnx.RNN(tb), return_carry=True)
    close(ours(x, seq_lengths=lengths), theirs(x, seq_lengths=lengths))


def test_lstm_matches_torch_lstm():
    torch = pytest.importorskip("torch")
    t = torch.nn.LSTM(3, 4, batch_first=True)
    w_ih, w_hh = t.weight_ih_l0.detach().numpy(), t.weight_hh_l0.detach().numpy()
    bias = (t.bias_ih_l0 + t.bias_hh_l0).detach().numpy()  # torch's two biases add up to flax's one
    fused = nnx.OptimizedLSTMCell(3, 4, ctx=nnx.context(0))
    fused.dense_i.kernel.value = jnp.asarray(w_ih.T)
    fused.dense_h.kernel.value = jnp.asarray(w_hh.T)
    fused.dense_h.bias.value = jnp.asarray(bias)
    split = nnx.LSTMCell(3, 4, ctx=nnx.context(0))
    for k, gate in enumerate("ifgo"):  # torch stacks the gates in the order i, f, g, o
        rows = slice(4 * k, 4 * k + 4)
        getattr(split, "i" + gate if gate != "f" else "if_").kernel.value = jnp.asarray(w_ih[rows].T)
        getattr(split, "h" + gate).kernel.value = jnp.asarray(w_hh[rows].T)
        getattr(split, "h" + gate).bias.value = jnp.asarray(bias[rows])
    x = randn(2, 7, 3)
    expected, (h_n, c_n) = t(torch.from_numpy(x))
    for cell in (fused, split):
        (c, h), ys = nnx.RNN(cell, return_carry=True)(jnp.asarray(x))
        close(ys, expected.detach().numpy())
        close((c, h), (c_n[0].detach().numpy(), h_n[0].detach().numpy()))


def test_gru_matches_torch_gru():
    torch = pytest.importorskip("torch")
    t = torch.nn.GRU(3, 4, batch_first=True)
    with torch.no_grad():
        t.bias_hh_l0[8:].zero_()  # flax's GRU has no b_hn (the hidden bias inside r * (...))
    w_ih, w_hh = t.weight_ih_l0.detach().numpy(), t.weight_hh_l0.detach().numpy()
    b_ih, b_hh = t.bias_ih_l0.detach().numpy(), t.bias_hh_l0.detach().numpy()
    cell = nnx.GRUCell(3, 4, ctx=nnx.context(0))
    cell.dense_i.kernel.value = jnp.asarray(w_ih.T)
    cell.dense_i.bias.value = jnp.asarray(b_ih + b_hh)  # r, z: both biases add; n: b_hn is zero
    cell.dense_h.kernel.value = jnp.asarray(w_hh.T)
    x = randn(2, 7, 3)
    expected, h_n = t(torch.from_numpy(x))
    h, ys = nnx.RNN(cell, return_carry=True)(jnp.asarray(x))
    close(ys, expected.detach().numpy())
    close(h, h_n[0].detach().numpy())


def test_rnn_matches_a_hand_written_scan_under_jit_and_grad():
    cell = nnx.SimpleCell(3, 4, **INIT, ctx=nnx.context(0))
    x = jnp.asarray(randn(2, 9, 3))
    wi, bi, wh = (np.asarray(v) for v in (cell.dense_i.kernel.value, cell.dense_i.bias.value, cell.dense_h.kernel.value))

    def reference(wi, bi, wh, x):
        def step(h, xt):
            h = jnp.tanh(xt @ wi + bi + h @ wh)
            return h, h

        return jax.lax.scan(step, jnp.zeros((2, 4)), jnp.swapaxes(x, 0, 1))[1].swapaxes(0, 1)

    rnn = nnx.RNN(cell)
    close(nnx.jit(lambda m, x: m(x))(rnn, x), reference(wi, bi, wh, x))
    grads = nnx.grad(lambda m: (m(x) ** 2).sum())(rnn)
    ref = jax.grad(lambda wi: (reference(wi, bi, wh, x) ** 2).sum())(jnp.asarray(wi))
    close(grads["cell"]["dense_i"]["kernel"], ref, tol=1e-4)


class NoisyCell(nnx.RNNCellBase):
    """A cell whose output is a fresh random number each step (from a stream it stores)."""

    def __init__(self, ctx):
        self.hidden_features, self.param_dtype, self.carry_init, self.rngs = 1, jnp.float32, None, None
        self.noise = ctx.stream("noise")

    def __call__(self, carry, x):
        return carry, jax.random.uniform(self.noise(), x.shape)

    def initialize_carry(self, input_shape, rngs=None, carry_init=None):
        return self._make_carry(input_shape, rngs, carry_init, 1)[0]


def test_rnn_gives_each_step_its_own_keys_and_advances_the_stream():
    ctx = nnx.context(noise=0)
    rnn = nnx.RNN(NoisyCell(ctx))
    a = rnn(jnp.ones((1, 6, 1)))
    assert len(set(np.asarray(a).ravel().tolist())) == 6
    b = rnn(jnp.ones((1, 6, 1)))
    assert not np.allclose(a, b)  # the next call draws new keys


def test_carry_init_needs_keys_and_uses_the_carry_stream():
    cell = nnx.GRUCell(2, 3, ctx=nnx.context(0))
    ones = cell.initialize_carry((4, 2), rngs=nnx.context(0), carry_init=nnx.initializers.ones_init())
    np.testing.assert_array_equal(ones, np.ones((4, 3)))
    with pytest.raises(ValueError, match="needs random keys"):
        cell.initialize_carry((4, 2), carry_init=jax.nn.initializers.normal())
    drawn = cell.initialize_carry((4, 2), rngs=nnx.context(carry=1), carry_init=jax.nn.initializers.normal())
    assert drawn.shape == (4, 3) and float(jnp.abs(drawn).sum()) > 0


def test_rnn_rejects_inputs_without_a_time_axis():
    rnn = nnx.RNN(nnx.GRUCell(3, 4, ctx=nnx.context(0)))
    with pytest.raises(ValueError, match="no time axis"):
        rnn(jnp.ones((3,)))


def test_rngs_spelling_and_metadata_reach_the_dense_layers():
    cell = nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0), kernel_metadata={"sharding": (None, "model")})
    assert cell.ii.kernel.sharding_names == (None, "model") and "sharding" not in cell.hi.kernel.metadata
    with pytest.raises(TypeError, match="same parameter"):
        nnx.GRUCell(3, 4, ctx=nnx.context(0), rngs=nnx.Rngs(0))


def test_rnn_broadcast_rngs_carries_one_stream_instead_of_splitting():
    ctx = nnx.context(noise=0)
    split = nnx.RNN(NoisyCell(ctx))
    carried = nnx.RNN(NoisyCell(ctx), broadcast_rngs="noise")
    split(jnp.ones((1, 4, 1)))
    assert int(ctx.noise.count.value) == 1  # split: one draw from the caller's stream per call
    carried(jnp.ones((1, 4, 1)))
    assert int(ctx.noise.count.value) == 1 + 4  # carried: the stream itself advances once per step
