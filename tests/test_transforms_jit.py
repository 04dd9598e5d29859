"""nnx.jit: correctness against pure JAX, in-place updates, identity, structure, caching, options."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlite as nnx


class MLP(nnx.Module):
    def __init__(self, sizes, *, ctx):
        self.layers = [nnx.Linear(a, b, ctx=ctx) for a, b in zip(sizes[:-1], sizes[1:])]

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


def pure_forward(params, x):
    for i in range(len(params)):
        x = x @ params[i]["kernel"] + params[i]["bias"]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def as_params(model):
    return {i: {"kernel": l.kernel.value, "bias": l.bias.value} for i, l in enumerate(model.layers)}


@pytest.fixture
def data():
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 4))
    y = jax.random.normal(jax.random.PRNGKey(2), (8, 3))
    return x, y


def test_training_step_matches_pure_jax(data):
    x, y = data
    tx = optax.adam(1e-2)
    model = MLP([4, 16, 16, 3], ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, tx)
    params = as_params(model)
    opt_state = tx.init(params)
    traces = []

    @nnx.jit
    def step(model, optimizer, x, y):
        traces.append(1)
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(grads)
        return loss

    @jax.jit
    def pure_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((pure_forward(p, x) - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    kernel_var = model.layers[0].kernel
    for _ in range(5):
        loss = step(model, optimizer, x, y)
        params, opt_state, pure_loss = pure_step(params, opt_state, x, y)
        np.testing.assert_allclose(loss, pure_loss, rtol=1e-6, atol=1e-7)
    for got, want in zip(jax.tree.leaves(as_params(model)), jax.tree.leaves(params)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    mu = optimizer.optax_state()[0].mu
    np.testing.assert_allclose(mu["layers"][2]["kernel"], opt_state[0].mu[2]["kernel"], rtol=1e-6, atol=1e-8)
    assert int(optimizer.step.value) == 5
    assert model.layers[0].kernel is kernel_var  # updated in place, same Variable object
    assert len(traces) == 1  # one trace; later calls take the cached path
    assert step._entry is not None


def test_eager_and_jit_agree_on_state_updates():
    model = nnx.BatchNorm(3, ctx=nnx.context(0))
    twin = nnx.clone(model)
    x = jnp.arange(12.0).reshape(4, 3)
    y_jit = nnx.jit(lambda m, x: m(x))(model, x)
    y_eager = twin(x)
    np.testing.assert_allclose(y_jit, y_eager, rtol=1e-6)
    np.testing.assert_allclose(model.mean.value, twin.mean.value, rtol=1e-6)
    np.testing.assert_allclose(model.var.value, twin.var.value, rtol=1e-6)


def test_rng_counter_advances_across_calls():
    ctx = nnx.context(dropout=3)
    draw = nnx.jit(lambda ctx: ctx.dropout())
    k1, k2 = draw(ctx), draw(ctx)
    assert k1.dtype == ctx.dropout.key.value.dtype and k1.shape == ()  # a typed key comes out of jit
    assert not np.array_equal(jax.random.key_data(k1), jax.random.key_data(k2))
    assert int(ctx.dropout.count.value) == 2
    expected = jax.random.fold_in(ctx.dropout.key.value, 0)
    np.testing.assert_array_equal(jax.random.key_data(k1), jax.random.key_data(expected))


# -- identity ------------------------------------------------------------------------------
def test_returned_input_is_the_callers_object():
    model = MLP([2, 3, 2], ctx=nnx.context(0))
    f = nnx.jit(lambda m: (m, m.layers[1], m.layers[0].kernel))
    for _ in range(2):  # slow path, then the cached path
        m, sub, kernel = f(model)
        assert m is model and sub is model.layers[1] and kernel is model.layers[0].kernel


def test_new_module_is_fresh_and_may_reference_inputs():
    model = MLP([2, 3, 2], ctx=nnx.context(0))

    class Wrapper(nnx.Module):
        def __init__(self, inner):
            self.inner = inner
            self.scale = nnx.Param(jnp.ones(()))

    w = nnx.jit(lambda m: Wrapper(m.layers[0]))(model)
    assert isinstance(w, Wrapper) and w.inner is model.layers[0]
    assert float(w.scale.value) == 1.0
    fresh = nnx.jit(lambda: nnx.Linear(2, 2, ctx=nnx.context(0)))()
    again = nnx.jit(lambda: nnx.Linear(2, 2, ctx=nnx.context(0)))()
    assert fresh is not again and fresh.kernel is not again.kernel
    np.testing.assert_array_equal(fresh.kernel.value, nnx.Linear(2, 2, ctx=nnx.context(0)).kernel.value)


def test_shared_module_between_arguments():
    model = MLP([2, 2], ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.sgd(1.0))

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(model)
        optimizer.update(grads)
        return optimizer.model

    before = model.layers[0].bias.value
    out = step(model, optimizer)
    assert out is model and optimizer.model is model
    np.testing.assert_allclose(model.layers[0].bias.value, before - 1.0)
    same = nnx.jit(lambda a, b: (a is b) and (a.layers[0].kernel is b.layers[0].kernel))
    assert bool(same(model, model)) and not bool(same(model, nnx.clone(model)))


def test_modules_nested_in_pytrees_and_kwargs():
    a = nnx.Linear(2, 2, ctx=nnx.context(0))
    b = nnx.Linear(2, 2, ctx=nnx.context(1))

    @nnx.jit
    def f(mods, x, *, extra):
        mods["a"].bias.value = mods["a"].bias.value + 1
        extra[0].bias.value = extra[0].bias.value + 2
        return {"y": mods["b"](x), "mods": [mods["a"], extra[0]]}

    out = f({"a": a, "b": b}, jnp.ones((1, 2)), extra=[b])
    np.testing.assert_allclose(a.bias.value, 1.0)
    np.testing.assert_allclose(b.bias.value, 2.0)
    assert out["mods"][0] is a and out["mods"][1] is b
    np.testing.assert_allclose(out["y"], jnp.ones((1, 2)) @ b.kernel.value + 2.0, rtol=1e-6)  # b is extra[0]


def test_variables_and_tracked_lists_as_arguments():
    v = nnx.Param(jnp.ones(3))
    f = nnx.jit(lambda v: v.value.sum())
    assert float(f(v)) == 3.0
    model = MLP([2, 2, 2], ctx=nnx.context(0))

    @nnx.jit
    def zero_biases(layers):
        for layer in layers:
            layer.bias.value = jnp.zeros_like(layer.bias.value) + 5
        return layers

    out = zero_biases(model.layers)  # an nnx List: no weakref, no cache, still correct
    assert out is model.layers
    np.testing.assert_allclose(model.layers[1].bias.value, 5.0)


# -- structure changes inside ------------------------------------------------------------
def test_structure_change_inside_propagates():
    model = MLP([2, 2], ctx=nnx.context(0))

    @nnx.jit
    def grow(m, x):
        m.cache = nnx.Cache(x * 2)
        m.layers.append(nnx.Linear(2, 3, ctx=nnx.context(1)))
        m.note = "grown"
        del m.layers[0].bias
        return m.cache.value.sum()

    total = grow(model, jnp.ones(2))
    assert float(total) == 4.0
    np.testing.assert_allclose(model.cache.value, 2.0)
    assert len(model.layers) == 2 and model.layers[1].kernel.shape == (2, 3)
    assert isinstance(model.layers, nnx.List)
    assert model.note == "grown" and not hasattr(model.layers[0], "bias")
    np.testing.assert_array_equal(
        model.layers[1].kernel.value, nnx.Linear(2, 3, ctx=nnx.context(1)).kernel.value
    )
    # The new structure is what the next call sees (no stale cache).
    f = nnx.jit(lambda m: len(nnx.state(m).paths()))
    assert f(model) == 4  # cache, layers/0/kernel, layers/1/bias, layers/1/kernel


def test_set_metadata_inside_propagates():
    model = nnx.Linear(2, 2, ctx=nnx.context(0))

    @nnx.jit
    def tag(m):
        m.kernel.set_metadata(sharding=("in", "out"))

    tag(model)
    assert model.kernel.sharding_names == ("in", "out")


# -- no stale caches --------------------------------------------------------------------
def _counting(fn):
    traces = []

    def wrapped(*a, **k):
        traces.append(1)
        return fn(*a, **k)

    return nnx.jit(wrapped), traces


def test_replacing_a_layer_retraces():
    model = MLP([2, 3, 2], ctx=nnx.context(0))
    f, traces = _counting(lambda m, x: m(x))
    x = jnp.ones((1, 2))
    f(model, x)
    f(model, x)
    assert len(traces) == 1
    model.layers[1] = nnx.Linear(3, 4, ctx=nnx.context(5))
    y = f(model, x)
    assert y.shape == (1, 4)
    np.testing.assert_allclose(y, model(x), rtol=1e-6)
    # same shapes, different layer object: values must come from the new layer
    model.layers[1] = nnx.Linear(3, 4, ctx=nnx.context(6))
    np.testing.assert_allclose(f(model, x), model(x), rtol=1e-6)


def test_eval_mode_retraces():
    class Net(nnx.Module):
        def __init__(self, ctx):
            self.linear = nnx.Linear(4, 4, ctx=ctx)
            self.drop = nnx.Dropout(0.5, ctx=nnx.context(dropout=1))

        def __call__(self, x):
            return self.drop(self.linear(x))

    net = Net(nnx.context(0))
    f = nnx.jit(lambda m, x: m(x))
    x = jnp.ones((8, 4))
    y_train = f(net, x)
    assert bool((y_train == 0).any())
    net.eval()
    np.testing.assert_allclose(f(net, x), net.linear(x), rtol=1e-6)
    net.train()
    assert bool((f(net, x) == 0).any())


def test_append_to_list_retraces():
    model = MLP([2, 2], ctx=nnx.context(0))
    f = nnx.jit(lambda m, x: m(x))
    x = jnp.ones((1, 2))
    f(model, x)
    model.layers.append(nnx.Linear(2, 5, ctx=nnx.context(1)))
    y = f(model, x)
    assert y.shape == (1, 5)
    np.testing.assert_allclose(y, model(x), rtol=1e-6)


def test_repointing_a_shared_reference_retraces():
    class Tied(nnx.Module):
        def __init__(self):
            self.a = nnx.Param(jnp.ones(2))
            self.b = nnx.Param(jnp.full(2, 10.0))

    m = Tied()
    bump = nnx.jit(lambda m: setattr(m.b, "value", m.b.value + 1))
    bump(m)
    np.testing.assert_allclose(m.b.value, 11.0)
    m.b = m.a  # now b and a are the same Variable
    bump(m)
    np.testing.assert_allclose(m.a.value, 2.0)
    assert m.a is m.b


def test_static_attribute_change_and_value_edits():
    class Scaled(nnx.Module):
        def __init__(self):
            self.factor = 2.0
            self.w = nnx.Param(jnp.ones(2))

        def __call__(self):
            return self.w.value * self.factor

    m = Scaled()
    f, traces = _counting(lambda m: m())
    np.testing.assert_allclose(f(m), 2.0)
    m.factor = 3.0
    np.testing.assert_allclose(f(m), 3.0)
    m.w.value = jnp.full(2, 5.0, jnp.float32)  # a value edit: no retrace needed, new value used
    np.testing.assert_allclose(f(m), 15.0)
    assert len(traces) == 2
    m.w.value = jnp.ones(3)  # a new shape: jax retraces
    assert f(m).shape == (3,)
    other = Scaled()  # a different object of the same structure
    other.w.value = jnp.full(2, 7.0)
    np.testing.assert_allclose(f(other), 14.0)


# -- options -----------------------------------------------------------------------------
def test_static_argnums_and_argnames():
    model = nnx.Linear(2, 2, ctx=nnx.context(0))

    def f(m, x, power, *, mode="sum"):
        y = m(x) ** power
        return y.sum() if mode == "sum" else y.mean()

    jf = nnx.jit(f, static_argnums=2, static_argnames="mode")
    x = jnp.ones((1, 2))
    for power in (1, 2, 2):
        for mode in ("sum", "mean"):
            np.testing.assert_allclose(jf(model, x, power, mode=mode), f(model, x, power, mode=mode), rtol=1e-6)
    with pytest.raises(ValueError, match="hashable"):
        jf(model, x, [1])


def test_donation_updates_in_place_and_keeps_shared_state():
    model = MLP([2, 2], ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.5))

    @nnx.jit(donate_argnums=(1,))
    def step(model, optimizer, x):
        grads = nnx.grad(lambda m: m(x).sum())(model)
        optimizer.update(grads)

    old_step = optimizer.step.value
    old_kernel = model.layers[0].kernel.value
    want = old_kernel - 0.5 * jnp.ones((1, 2)).T * jnp.ones((1, 2))
    step(model, optimizer, jnp.ones((1, 2)))
    buffer = optimizer.step.value.unsafe_buffer_pointer()
    step(model, optimizer, jnp.ones((1, 2)))
    assert int(optimizer.step.value) == 2
    # The optimizer's own state is donated (XLA reuses its buffer); the model (also
    # reached from the non-donated `model` argument) is not.
    assert optimizer.step.value.unsafe_buffer_pointer() == buffer
    assert not old_kernel.is_deleted()
    # An array still held elsewhere (here: `old_step`) is copied, not deleted, by donation.
    assert not old_step.is_deleted() and int(old_step) == 0
    np.testing.assert_allclose(model.layers[0].kernel.value, want - 0.5, rtol=1e-6)

    @nnx.jit(donate_argnames=("model",))
    def scale(model):
        model.layers[0].bias.value = model.layers[0].bias.value + 1.0

    expected = np.asarray(model.layers[0].bias.value + 1.0)
    buffer = model.layers[0].bias.value.unsafe_buffer_pointer()
    scale(model)
    assert model.layers[0].bias.value.unsafe_buffer_pointer() == buffer  # donated: written in place
    np.testing.assert_allclose(model.layers[0].bias.value, expected)


def test_in_and_out_shardings_single_device():
    device = jax.devices()[0]
    s = jax.sharding.SingleDeviceSharding(device)
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    f = nnx.jit(lambda m, x: m(x), in_shardings=(s, s), out_shardings=s)
    y = f(model, jnp.ones((1, 2)))
    assert y.sharding == s and model.kernel.value.sharding == s


def test_shardings_on_a_device_mesh():
    code = textwrap.dedent(
        """
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import jax, jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec as P
        import nnxlite as nnx
        mesh = jax.make_mesh((4,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
        rows = NamedSharding(mesh, P("x", None))
        repl = NamedSharding(mesh, P())
        model = nnx.Linear(8, 4, ctx=nnx.context(0))
        model.bias.value = jnp.zeros(8)[:4]

        @nnx.jit(in_shardings=({"kernel": rows, ...: repl}, repl), out_shardings=repl)
        def step(m, x):
            m.kernel.value = m.kernel.value * 2
            return (x @ m.kernel.value).sum()

        before = model.kernel.value
        y = step(model, jnp.ones((2, 8)))
        assert model.kernel.value.sharding.is_equivalent_to(rows, 2), model.kernel.value.sharding
        assert model.bias.value.sharding.is_fully_replicated
        assert y.sharding.is_fully_replicated
        assert jnp.allclose(model.kernel.value, before * 2)

        # A State of shardings by path (what nnx.get_named_sharding returns).
        specs = nnx.State({"kernel": NamedSharding(mesh, P(None, "x")), "bias": NamedSharding(mesh, P("x"))})
        fresh = nnx.Linear(8, 4, ctx=nnx.context(1))  # jax.jit does not reshard committed arrays
        g = nnx.jit(lambda m: m.bias.value.sum(), in_shardings=(specs,))
        g(fresh)
        assert fresh.kernel.value.sharding.spec == P(None, "x") and fresh.bias.value.sharding.spec == P("x")
        print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


def test_method_decorator_and_nested_jit():
    class Counter(nnx.Module):
        def __init__(self):
            self.n = nnx.Variable(jnp.zeros((), jnp.int32))

        @nnx.jit
        def tick(self, k):
            self.n.value = self.n.value + k
            return self.n.value

    c = Counter()
    c.tick(2)
    assert int(c.tick(3)) == 5 and int(c.n.value) == 5

    inner = nnx.jit(lambda m: setattr(m.n, "value", m.n.value * 10))
    outer = nnx.jit(lambda m: (inner(m), m.n.value + 1)[1])
    assert int(outer(c)) == 51 and int(c.n.value) == 50


def test_function_without_modules_and_python_scalars():
    f = nnx.jit(lambda x, k: x * k)
    assert float(f(jnp.ones(()), 3)) == 3.0
    assert float(f(jnp.ones(()), 4)) == 4.0


def test_bound_method_passes_the_module_as_an_argument():
    bn = nnx.BatchNorm(2, ctx=nnx.context(0))
    f = nnx.jit(bn.__call__)
    f(jnp.arange(4.0).reshape(2, 2))
    np.testing.assert_allclose(bn.mean.value, [0.01, 0.02], rtol=1e-5)
    bn.mean.value = jnp.zeros(2)  # not baked in as a constant
    f(jnp.arange(4.0).reshape(2, 2))
    np.testing.assert_allclose(bn.mean.value, [0.01, 0.02], rtol=1e-5)
