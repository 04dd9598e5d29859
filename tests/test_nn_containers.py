"""Sequence/Sequential: composition, call-time keyword routing, and train()/eval() through nested models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from nnxlite.nn import containers
from test_nn_helpers import np_normal

INIT = dict(kernel_init=np_normal(0), bias_init=np_normal(1))


def test_sequence_composes_modules_and_functions_in_order():
    ctx = nnx.context(0)
    lin = nnx.Linear(3, 2, **INIT, ctx=ctx)
    model = nnx.Sequence([lambda x: x * 2, lin, nnx.relu])
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
    np.testing.assert_allclose(model(x), jax.nn.relu(lin(x * 2)), rtol=1e-6)
    assert len(model) == 3 and model[1] is lin and list(model)[2] is nnx.relu
    assert nnx.Sequential(lambda x: x * 2, lin, nnx.relu)(x).shape == (4, 2)  # varargs spelling
    assert nnx.Sequence()(x) is x


def test_sequence_rejects_non_callables():
    with pytest.raises(TypeError, match="layer 1 \\(int\\) is not callable"):
        nnx.Sequence([nnx.relu, 3])


class Scale(nnx.Module):
    """A module whose __call__ takes its own keyword."""

    def __call__(self, x, *, factor=1.0):
        return x * factor


class Recorder(nnx.Module):
    """A module taking **kwargs: it receives every keyword."""

    def __call__(self, x, **kwargs):
        self.seen = tuple(sorted(kwargs))
        return x


def test_call_keywords_reach_only_the_layers_that_accept_them():
    ctx = nnx.context(0, dropout=1)
    recorder = Recorder()
    model = nnx.Sequence([
        nnx.Linear(3, 4, **INIT, ctx=ctx),  # takes no keywords
        nnx.BatchNorm(4, ctx=ctx),          # use_running_average, ctx
        Scale(),                            # factor
        nnx.Dropout(0.5),                   # deterministic, ctx
        recorder,
        lambda x, factor=1.0: x + factor,   # a plain function's keywords count too
    ])
    x = jnp.ones((2, 3))
    y = model(x, ctx=ctx, deterministic=True, use_running_average=True, factor=0.0)
    assert recorder.seen == ("ctx", "deterministic", "factor", "use_running_average")
    np.testing.assert_allclose(y, 0.0)  # Scale(factor=0) then + 0
    assert int(ctx.dropout.count.value) == 0  # deterministic reached Dropout


def test_unknown_keyword_raises_but_threaded_ones_are_fine():
    model = nnx.Sequence([nnx.Linear(3, 4, **INIT, ctx=nnx.context(0)), nnx.relu])
    x = jnp.ones((2, 3))
    # Seed style: pass ctx/mode flags everywhere, even to a stack that does not use them.
    assert model(x, ctx=nnx.context(1), deterministic=True, use_running_average=False, decode=False).shape == (2, 4)
    with pytest.raises(TypeError, match="no layer accepts the keyword\\(s\\) \\['determinstic'\\]"):
        model(x, determinstic=True)


def test_nested_sequences_route_keywords_to_inner_layers():
    inner = nnx.Sequence([Scale()])
    model = nnx.Sequence([inner, nnx.Dropout(0.5)])
    assert containers.accepted_keywords(inner) == frozenset({"factor"})
    y = model(jnp.ones(3), factor=3.0, deterministic=True)
    np.testing.assert_allclose(y, 3.0)


def test_accepted_keywords_are_cached_per_layer_type(monkeypatch):
    calls = []
    real = containers._inspect_keywords
    monkeypatch.setattr(containers, "_inspect_keywords", lambda layer: calls.append(layer) or real(layer))
    containers._ACCEPTED_CACHE.pop(Scale, None)
    model = nnx.Sequence([Scale(), Scale(), Scale()])
    model(jnp.ones(2), factor=2.0)
    model(jnp.ones(2), factor=2.0)
    assert len(calls) == 1


def test_sequence_splits_and_merges_with_functions_inside():
    model = nnx.Sequence([nnx.Linear(2, 2, **INIT, ctx=nnx.context(0)), nnx.relu, lambda x: x + 1])
    graphdef, state = nnx.split(model)
    clone = nnx.merge(graphdef, state)
    x = jnp.ones((1, 2))
    np.testing.assert_allclose(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x), clone(x), rtol=1e-6)


class Net(nnx.Module):
    # Sizes shared with test_nn_attention.py: ops compiled there are reused here.
    def __init__(self, ctx):
        self.body = nnx.Sequence([
            nnx.Linear(6, 6, **INIT, ctx=ctx),
            nnx.BatchNorm(6, ctx=ctx),
            nnx.Dropout(0.5),
        ])
        self.attn = nnx.MultiHeadAttention(2, 6, qkv_features=8, dropout_rate=0.5, **INIT, ctx=ctx)

    def __call__(self, x, *, ctx=None, deterministic=None):
        x = self.body(x, ctx=ctx, deterministic=deterministic)
        return self.attn(x, ctx=ctx, deterministic=deterministic)


def mode_flags(model):
    flags = {}
    for path, module in model.iter_modules():
        for name in ("deterministic", "use_running_average"):
            if name in vars(module):
                flags[path + (name,)] = getattr(module, name)
    return flags


def test_train_and_eval_flip_every_nested_mode_flag():
    model = Net(nnx.context(0))
    flags = mode_flags(model)
    assert set(flags) == {
        ("body", "layers", 1, "use_running_average"),
        ("body", "layers", 2, "deterministic"),
        ("attn", "deterministic"),
    }
    assert model.eval() is model
    assert all(v is True for v in mode_flags(model).values())
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 6)), jnp.float32)
    y1, y2 = model(x), model(x)  # no randomness, no state change in eval mode
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(model.body.layers[1].mean.value, np.zeros(6))
    model.train()
    assert all(v is False for v in mode_flags(model).values())
    model(x, ctx=nnx.context(dropout=0))
    assert not np.allclose(model.body.layers[1].mean.value, 0.0)


def test_per_call_overrides_beat_the_mode_flags():
    model = Net(nnx.context(0)).eval()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, 6)), jnp.float32)
    clean = model(x)
    noisy = model(x, ctx=nnx.context(dropout=0), deterministic=False)
    assert not np.allclose(noisy, clean)
    model.train()
    np.testing.assert_allclose(model.body(x, deterministic=True, use_running_average=True), model.eval().body(x))


# ---------------------------------------------------- flax.nnx's calling convention
@pytest.fixture(params=["nnxlite", "flax"])
def lib(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    return nnx


def test_several_positional_and_keyword_arguments_go_to_the_first_layer(lib):
    first = lambda a, b, *, scale: a * scale + b  # noqa: E731
    model = lib.Sequential(first, lib.Linear(3, 2, **INIT, rngs=lib.Rngs(0)))
    a = jnp.asarray(np.random.default_rng(2).standard_normal((4, 3)), jnp.float32)
    b = jnp.ones((4, 3))
    layer = model.layers[1]
    expected = (a * 2.0 + b) @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])
    np.testing.assert_allclose(model(a, b, scale=2.0), expected, rtol=1e-5)


def test_tuple_outputs_spread_over_positional_arguments_and_dicts_over_keywords(lib):
    split = lambda x: (x[:, :2], x[:, 2:])  # noqa: E731
    join = lambda left, right: {"total": left.sum(-1) + right.sum(-1), "count": left.shape[-1] + right.shape[-1]}  # noqa: E731
    mean = lambda total, count: total / count  # noqa: E731
    model = lib.Sequential(split, join, mean)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((5, 4)), jnp.float32)
    np.testing.assert_allclose(model(x), np.asarray(x).mean(-1), rtol=1e-6)
    pair = lib.Sequential(lambda a, b: (a + b, a - b), lambda s, d: s * d)
    np.testing.assert_allclose(pair(jnp.array(3.0), jnp.array(1.0)), 8.0)


def test_a_tuple_output_also_carries_the_routed_keywords():
    seen = {}

    def last(a, b, *, deterministic=None):
        seen["deterministic"] = deterministic
        return a + b

    model = nnx.Sequential(lambda x: (x, 2 * x), last)
    np.testing.assert_allclose(model(jnp.ones(2), deterministic=True), 3.0)
    assert seen["deterministic"] is True


def test_empty_sequential_returns_its_input(lib):
    identity = lib.Sequential()
    assert identity(12) == 12
    assert identity(12, 23) == (12, 23)
    assert identity() is None
    assert identity(k=2) == {"k": 2}
