"""nnx.jit returns only the Variables a call replaced, and keeps no model alive after the user drops it."""

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnxlite as nnx


class Chain(nnx.Module):
    def __init__(self, n, *, ctx):
        self.layers = [nnx.Linear(4, 4, ctx=ctx) for _ in range(n)]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def n_outputs(jitted, *args):
    return len(jax.tree_util.tree_leaves(jitted.lower(*args).out_info))


def test_inference_call_returns_no_variables():
    model = Chain(50, ctx=nnx.context(0))  # 100 leaves
    x = jnp.ones((2, 4))
    forward = nnx.jit(lambda m, x: m(x))
    assert n_outputs(forward, model, x) == 1  # just the activations
    kernel = model.layers[3].kernel.value
    for _ in range(3):  # slow path, then the cached fast path
        y = forward(model, x)
    assert model.layers[3].kernel.value is kernel  # untouched, not even re-written
    ref = x
    for layer in model.layers:
        ref = ref @ layer.kernel.value + layer.bias.value
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-6)


def test_only_replaced_variables_travel_out():
    model = Chain(3, ctx=nnx.context(0))

    @nnx.jit
    def bump_one(m):
        m.layers[1].bias.value = m.layers[1].bias.value + 1.0
        m.layers[2].kernel.value = m.layers[2].kernel.value  # the input tracer itself: unchanged

    assert n_outputs(bump_one, model) == 1
    before = np.asarray(model.layers[1].bias.value)
    kernel2 = model.layers[2].kernel.value
    for _ in range(2):
        bump_one(model)
    np.testing.assert_allclose(np.asarray(model.layers[1].bias.value), before + 2.0)
    assert model.layers[2].kernel.value is kernel2


def test_swapped_values_are_changes():
    model = Chain(2, ctx=nnx.context(0))
    a, b = model.layers[0].kernel.value, model.layers[1].kernel.value

    @nnx.jit
    def swap(m):
        k0, k1 = m.layers[0].kernel, m.layers[1].kernel
        k0.value, k1.value = k1.value, k0.value

    swap(model)
    np.testing.assert_array_equal(np.asarray(model.layers[0].kernel.value), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(model.layers[1].kernel.value), np.asarray(a))
    swap(model)  # fast path
    np.testing.assert_array_equal(np.asarray(model.layers[0].kernel.value), np.asarray(a))


def test_donated_unchanged_variables_stay_valid():
    model = Chain(2, ctx=nnx.context(0))
    x = jnp.ones((2, 4))
    forward = nnx.jit(lambda m, x: m(x), donate_argnums=0)
    for _ in range(3):
        y = forward(model, x)
    # Every Variable still holds a live array (donated buffers were handed back as outputs).
    for layer in model.layers:
        assert not layer.kernel.value.is_deleted()
    assert y.shape == (2, 4)


def test_training_step_still_updates_every_parameter():
    model = Chain(3, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    x, y = jnp.ones((2, 4)), jnp.zeros((2, 4))

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(grads)
        return loss

    before = [np.asarray(l.kernel.value) for l in model.layers]
    losses = [float(step(model, optimizer, x, y)) for _ in range(3)]
    assert losses[2] < losses[0]
    assert all(not np.array_equal(b, np.asarray(l.kernel.value)) for b, l in zip(before, model.layers))
    assert int(optimizer.step.value) == 3


def _train_and_forget(step, n_steps=3):
    model = Chain(2, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    x, y = jnp.ones((2, 4)), jnp.zeros((2, 4))
    for _ in range(n_steps):
        step(model, optimizer, x, y)
    refs = [weakref.ref(v) for _, v in nnx.iter_graph(optimizer) if isinstance(v, nnx.Variable)]
    assert len(refs) > 8  # the model's params, Adam's moments, the step counters
    return refs + [weakref.ref(model), weakref.ref(optimizer)]


def test_jit_keeps_no_model_alive_after_del():
    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(grads)
        return loss

    refs = _train_and_forget(step)
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert not alive, f"still alive after del + gc: {[type(a).__name__ for a in alive]}"


def test_eager_value_and_grad_keeps_no_model_alive():
    grad_fn = nnx.value_and_grad(lambda m, x: jnp.sum(m(x)))  # created once, reused: holds a cache
    model = Chain(2, ctx=nnx.context(0))
    for _ in range(2):
        grad_fn(model, jnp.ones((1, 4)))
    kernel = weakref.ref(model.layers[0].kernel)
    del model
    gc.collect()
    assert kernel() is None


def test_dropping_one_root_frees_it_while_the_other_lives():
    @nnx.jit
    def step(model, metrics, x):
        metrics.update(loss=jnp.sum(model(x)))

    model = Chain(1, ctx=nnx.context(0))
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"))
    for _ in range(3):
        step(model, metrics, jnp.ones((1, 4)))
    gone = weakref.ref(metrics)
    del metrics
    gc.collect()
    assert gone() is None
    assert model.layers[0].kernel.value.shape == (4, 4)
