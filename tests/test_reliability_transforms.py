"""Reliability of the lifted transforms (issue 10): stale traces for equal-but-different
statics, deep graphs, tracer leaks through non-Variable attributes and closed-over
Contexts, donation and copies.

Each test here failed on the code before the fix it guards.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx


# ---------------------------------------------------------------------------------
# 5. nnx.jit retraces when a static attribute changes type (or sign of zero)
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "first, second",
    [(0.0, -0.0), (2, 2.0), (1, True)],
)
def test_jit_retraces_for_a_static_of_another_type(first, second):
    def f(m, x):
        # Results that depend on the static's type and sign, not only on its value.
        return x / m.scale if m.scale else x * m.scale, x + len(repr(m.scale)), jnp.asarray(m.scale)

    m = nnx.Module()
    jitted = nnx.jit(f)
    x = jnp.float32(1.0) if first == 0 else 3
    for value in (first, second):
        m.scale = value
        for got, want in zip(jitted(m, x), f(m, x)):
            want = jnp.asarray(want)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            assert np.signbit(np.asarray(got)).tolist() == np.signbit(np.asarray(want)).tolist()


# ---------------------------------------------------------------------------------
# 6. Containers through jit
# ---------------------------------------------------------------------------------
def test_ordered_dict_attribute_survives_jit():
    m = nnx.Module()
    m.parts = collections.OrderedDict(b=nnx.Param(jnp.ones(2)), a=nnx.Param(jnp.full(2, 2.0)))
    total = nnx.jit(lambda m: sum(p.value.sum() for p in m.parts.values()))
    assert float(total(m)) == 6.0
    assert list(m.parts) == ["b", "a"]


# ---------------------------------------------------------------------------------
# 14. Deep graphs through jit
# ---------------------------------------------------------------------------------
def test_jit_on_a_deep_chain():
    class Node(nnx.Module):
        pass

    root = node = Node()
    for _ in range(3_000):
        node.next = Node()
        node = node.next
    node.w = nnx.Param(jnp.ones(2))

    @nnx.jit
    def step(m):
        n = m
        while "next" in vars(n):
            n = n.next
        n.w.value = n.w.value * 3
        return n.w.value.sum()

    assert float(step(root)) == 6.0
    assert node.w.value.tolist() == [3.0, 3.0]


# ---------------------------------------------------------------------------------
# 11. Tracers escaping through non-Variable attributes
# ---------------------------------------------------------------------------------
class Holder:
    """A plain hashable object (hash by identity)."""

    def __init__(self, x):
        self.x = x


@pytest.mark.parametrize("transform", ["jit", "vmap"])
@pytest.mark.parametrize(
    "make, kind",
    [(lambda x: Holder(x), "Holder"), (lambda x: functools.partial(jnp.add, x), "partial")],
)
def test_tracer_stored_in_a_static_attribute_is_a_clear_leak_error(transform, make, kind):
    m = nnx.Module()
    m.w = nnx.Param(jnp.ones(3))

    def f(m, x):
        m.cache = make(x)
        return x

    wrapped = nnx.jit(f) if transform == "jit" else nnx.vmap(f, in_axes=(None, 0))
    with pytest.raises(nnx.TracerLeakError, match=f"cache.*{kind}.*tracer"):
        wrapped(m, jnp.ones(3))
    assert "cache" not in vars(m)  # nothing was written back


def test_closed_over_context_is_a_clear_error():
    ctx = nnx.context(0)
    f = nnx.jit(lambda x: jax.random.normal(ctx.make_rng(), ()) + x)
    with pytest.raises(nnx.TracerLeakError, match="closed over it.*pass the Context"):
        f(1.0)
    assert int(ctx.default.count.value) == 0  # and the Context is still usable
    g = nnx.jit(lambda c, x: jax.random.normal(c.make_rng(), ()) + x)
    assert float(g(ctx, 0.0)) != float(g(ctx, 0.0))


def test_context_created_inside_jit_is_fine():
    m = nnx.jit(lambda: nnx.Linear(2, 2, ctx=nnx.context(0)))()
    assert m.kernel.shape == (2, 2)


# ---------------------------------------------------------------------------------
# 2. Donation and copies
# ---------------------------------------------------------------------------------
def double(m):
    m.kernel.value = m.kernel.value * 2
    return m.kernel.value.sum()


def test_donating_the_original_keeps_its_clone_and_snapshots_readable():
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    twin = nnx.clone(model)
    snapshot = nnx.state(model).to_pure_dict()  # values: a State holds the model's live Variables
    init_fn, _ = nnx.transform(model)
    # (np.asarray on the model's own array would pin its buffer and block donation.)
    expected = np.asarray(model.kernel.value + 0)
    nnx.jit(double, donate_argnums=0)(model)
    np.testing.assert_array_equal(np.asarray(twin.kernel.value), expected)
    np.testing.assert_array_equal(np.asarray(snapshot["kernel"]), expected)
    np.testing.assert_array_equal(np.asarray(init_fn()["kernel"]), expected)
    np.testing.assert_allclose(np.asarray(model.kernel.value), expected * 2)


def test_donation_still_reuses_buffers_nobody_else_holds():
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    step = nnx.jit(double, donate_argnums=0)
    for _ in range(3):  # the slow path, then the fast path
        before = model.kernel.value.unsafe_buffer_pointer()
        step(model)
        assert model.kernel.value.unsafe_buffer_pointer() == before  # XLA wrote in place


def test_donating_a_model_with_its_clone_or_a_shared_array():
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    twin = nnx.clone(model)
    both = nnx.jit(lambda a, b: double(a) + double(b), donate_argnums=(0, 1))
    expected = np.asarray(model.kernel.value + 0)
    both(model, twin)
    np.testing.assert_allclose(np.asarray(twin.kernel.value), expected * 2)

    # One array object in two Variables: donated once, both Variables stay readable.
    m = nnx.Module()
    x = jnp.ones(3)
    m.a, m.b = nnx.Variable(x), nnx.Variable(x)

    def bump(m):
        m.a.value = m.a.value + 1
        m.b.value = m.b.value + 2
        return m.a.value

    nnx.jit(bump, donate_argnums=0)(m)
    assert m.a.value.tolist() == [2.0] * 3 and m.b.value.tolist() == [3.0] * 3
    assert x.tolist() == [1.0] * 3


def test_a_donated_step_that_fails_at_run_time_names_the_lost_variables():
    # What happens: XLA has already consumed the donated buffers when the
    # computation fails, so the model's donated Variables hold deleted arrays.
    # nnxlite says so in the error; keep a clone (or a checkpoint) to recover.
    def fail_if_positive(x):
        if x > 0:
            raise RuntimeError("failed at run time")

    def step(m, x):
        m.kernel.value = m.kernel.value * 2
        jax.debug.callback(fail_if_positive, x)
        return m.kernel.value.sum()

    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    backup = nnx.clone(model)
    jitted = nnx.jit(step, donate_argnums=0)
    jitted(model, 0.0)
    with pytest.raises(Exception, match="failed at run time") as info:
        jitted(model, 1.0)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "donated" in notes and "kernel" in notes
    assert model.kernel.value.is_deleted()
    nnx.update(model, nnx.state(backup))  # recovery from the clone
    assert model.kernel.value.shape == (2, 3)


# ---------------------------------------------------------------------------------
# 12. grad(wrt=...) and the optimizer agree on a shared sub-module
# ---------------------------------------------------------------------------------
def test_grad_wrt_a_path_filter_reaches_a_shared_module_by_any_path():
    import optax

    class Net(nnx.Module):
        def __init__(self):
            ctx = nnx.context(0)
            self.blocks = [nnx.Linear(2, 2, ctx=ctx), nnx.Linear(2, 2, ctx=ctx)]
            self.enc = self.blocks[1]

        def __call__(self, x):
            return self.blocks[1](self.blocks[0](x)).sum()

    net = Net()
    wrt = nnx.All(nnx.Param, nnx.PathContains("enc"))
    grads = nnx.grad(lambda m: m(jnp.ones((1, 2))), wrt=wrt)(net)
    assert grads.paths() == (("blocks", 1, "bias"), ("blocks", 1, "kernel"))
    opt = nnx.Optimizer(net, optax.sgd(0.1), wrt=wrt)
    before = net.enc.bias.value
    opt.update(grads)
    np.testing.assert_allclose(net.enc.bias.value, before - 0.1 * grads["blocks"][1]["bias"])


def test_vmap_axis_filter_reaches_a_shared_module_by_any_path():
    net = nnx.Module()
    net.blocks = [nnx.Linear(2, 2, ctx=nnx.context(0)), nnx.Linear(2, 2, ctx=nnx.context(1))]
    net.enc = net.blocks[1]  # stored under blocks/1
    kernels = jnp.stack([net.enc.kernel.value * i for i in range(3)])
    net.enc.kernel.value = kernels  # one kernel per lane
    net.enc.bias.value = jnp.zeros((3, 2))

    f = nnx.vmap(lambda m, x: m.enc(x), in_axes=({nnx.PathContains("enc"): 0, ...: None}, None))
    out = f(net, jnp.ones((1, 2)))
    np.testing.assert_allclose(out, jnp.ones((1, 2)) @ kernels, rtol=1e-6)
