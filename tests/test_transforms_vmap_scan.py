"""nnx.vmap and nnx.scan: stacking, per-lane/per-step RNG, axis specs, write-back, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx


class Block(nnx.Module):
    def __init__(self, dim, *, ctx):
        self.linear = nnx.Linear(dim, dim, ctx=ctx)
        self.bn = nnx.BatchNorm(dim, ctx=ctx)
        self.drop = nnx.Dropout(0.5)

    def __call__(self, x, *, ctx):
        return jax.nn.gelu(self.drop(self.bn(self.linear(x)), ctx=ctx))


def distinct(keys) -> int:
    return len({tuple(np.asarray(jax.random.key_data(k) if jnp.issubdtype(k.dtype, jax.dtypes.prng_key) else k).ravel()) for k in keys})


def layer(stack, i):
    """Layer i of a stacked module, as a standalone module (reference computations)."""
    gd, state = nnx.split(stack)
    return nnx.merge(gd, jax.tree.map(lambda a: a[i], state))


# -- vmap ------------------------------------------------------------------------------------
def test_vmap_constructor_stacks_layers_with_distinct_init():
    ctx = nnx.context(0)
    stack = nnx.vmap(lambda ctx: Block(4, ctx=ctx), axis_size=3)(ctx)
    shapes = jax.tree.map(jnp.shape, nnx.state(stack)).to_pure_dict()
    assert shapes["linear"]["kernel"] == (3, 4, 4) and shapes["bn"]["mean"] == (3, 4)
    kernels = np.asarray(stack.linear.kernel.value)
    assert all(not np.allclose(kernels[i], kernels[j]) for i in range(3) for j in range(i))
    # The caller's stream advanced by one draw: a second call gives different layers.
    assert int(ctx.default.count.value) == 1
    again = nnx.vmap(lambda ctx: Block(4, ctx=ctx), axis_size=3)(ctx)
    assert not np.allclose(again.linear.kernel.value, stack.linear.kernel.value)
    # Lane i is exactly Block(ctx) built from the i-th split key.
    base = jax.random.fold_in(nnx.context(0).default.key.value, 0)
    lane1 = Block(4, ctx=nnx.ContextDef().merge({"default": jax.random.split(base, 3)[1]}))
    np.testing.assert_array_equal(kernels[1], lane1.linear.kernel.value)


def test_vmap_lanes_never_share_a_dropout_key():
    ctx = nnx.context(dropout=1)
    keys = nnx.vmap(lambda c: jnp.stack([c.dropout(), c.dropout()]), axis_size=8)(ctx)
    assert keys.shape == (8, 2) and jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
    assert distinct(keys.reshape(16)) == 16  # no key shared across lanes or draws
    # Through a real Dropout layer: identical inputs, different masks per lane.
    drop = nnx.Dropout(0.5)
    ys = nnx.vmap(lambda d, c, x: d(x, ctx=c), in_axes=(None, None, 0))(drop, ctx, jnp.ones((6, 64)))
    masks = {tuple(np.asarray(y != 0)) for y in ys}
    assert len(masks) == 6


def test_vmap_broadcast_stream_on_request():
    ctx = nnx.context(dropout=1, params=2)
    keys = nnx.vmap(lambda c: (c.dropout(), c.params()), in_axes={"dropout": None}, axis_size=4)(ctx)
    assert distinct(keys[0]) == 1 and distinct(keys[1]) == 4
    assert int(ctx.dropout.count.value) == 1  # broadcast stream: every lane drew once, in sync
    assert int(ctx.params.count.value) == 1  # split stream: one draw outside


def test_vmap_forward_over_stack_matches_loop():
    stack = nnx.vmap(lambda ctx: nnx.Linear(3, 2, ctx=ctx), axis_size=4)(nnx.context(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    ys = nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(stack, x)
    for i in range(4):
        np.testing.assert_allclose(ys[i], layer(stack, i)(x), rtol=1e-6)


def test_vmap_updates_mapped_state_in_place():
    stack = nnx.vmap(lambda ctx: nnx.BatchNorm(2, ctx=ctx), axis_size=3)(nnx.context(0))
    mean_var = stack.mean
    xs = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 2))
    nnx.vmap(lambda m, x: m(x))(stack, xs)
    assert stack.mean is mean_var
    for i in range(3):
        ref = nnx.BatchNorm(2, ctx=nnx.context(0))
        ref(xs[i])
        np.testing.assert_allclose(stack.mean.value[i], ref.mean.value, rtol=1e-5, atol=1e-7)


def test_vmap_axis_dict_and_broadcast_errors():
    stack = nnx.vmap(lambda ctx: Block(4, ctx=ctx), axis_size=3, out_axes={nnx.BatchStat: None})(nnx.context(0))
    assert stack.bn.mean.shape == (4,) and stack.linear.kernel.shape == (3, 4, 4)
    xs = jnp.ones((3, 2, 4)) * jnp.arange(3.0)[:, None, None]
    with pytest.raises(ValueError, match=r"bn/mean \(of the Block argument\)"):
        nnx.vmap(lambda b, x: b(x, ctx=nnx.context(dropout=0)), in_axes=({nnx.BatchStat: None}, 0))(stack, xs)
    stack.eval()  # nothing updates the broadcast statistics now
    ys = nnx.vmap(lambda b, x: b(x, ctx=None), in_axes=({nnx.BatchStat: None}, 0))(stack, xs)
    assert ys.shape == (3, 2, 4)


def test_vmap_axis_name_keeps_broadcast_stats_in_sync():
    bn = nnx.BatchNorm(2, axis_name="lanes", ctx=nnx.context(0))
    xs = jax.random.normal(jax.random.PRNGKey(3), (4, 6, 2))
    nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), axis_name="lanes")(bn, xs)
    ref = nnx.BatchNorm(2, ctx=nnx.context(0))
    ref(xs.reshape(24, 2))
    np.testing.assert_allclose(bn.mean.value, ref.mean.value, rtol=1e-5, atol=1e-7)


def test_vmap_returns_inputs_by_identity_and_mixes_with_arrays():
    m = nnx.Linear(2, 2, ctx=nnx.context(0))
    out, ys = nnx.vmap(lambda m, x: (m, m(x)), in_axes=(None, 0), out_axes=(None, 0))(m, jnp.ones((3, 1, 2)))
    assert out is m and ys.shape == (3, 1, 2)


def test_vmap_splits_a_stream_stored_in_a_module():
    class Noisy(nnx.Module):
        def __init__(self, ctx):
            self.ctx = ctx

        def __call__(self, x):
            return x + jax.random.normal(self.ctx.noise(), x.shape)

    model = Noisy(nnx.context(noise=0))
    ys = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(model, jnp.zeros((5, 3)))
    assert len({tuple(np.asarray(y)) for y in ys}) == 5
    assert int(model.ctx.noise.count.value) == 1


def test_vmap_structure_change_inside_propagates():
    stack = nnx.vmap(lambda ctx: nnx.Linear(2, 2, ctx=ctx), axis_size=3)(nnx.context(0))
    xs = jnp.arange(6.0).reshape(3, 2)

    def remember(m, x):
        m.cache = nnx.Cache(x * 2)
        return m(x)

    nnx.vmap(remember)(stack, xs)
    np.testing.assert_allclose(stack.cache.value, xs * 2)
    single = nnx.Linear(2, 2, ctx=nnx.context(0))
    with pytest.raises(ValueError, match=r"seen \(a new Intermediate\)"):
        nnx.vmap(lambda m, x: setattr(m, "seen", nnx.Intermediate(x.sum())), in_axes=(None, 0))(single, xs)
    nnx.vmap(lambda m, x: setattr(m, "const", nnx.Intermediate(jnp.ones(()))), in_axes=(None, 0))(single, xs)
    assert single.const.shape == ()


def test_vmap_split_on_stacked_stream_is_an_error():
    stacked = nnx.vmap(lambda c: nnx.context(jax.random.fold_in(c.default(), 1)), axis_size=3)(nnx.context(0))
    assert stacked.default.key.shape == (3,)
    with pytest.raises(ValueError, match="already stacked"):
        nnx.vmap(lambda c: c.default(), in_axes={nnx.RngState: "split"})(stacked)
    # An already-split stream takes its entry's int axis (flax.nnx code maps split_rngs keys this way).
    assert distinct(nnx.vmap(lambda c: c.default())(stacked)) == 3
    keys = nnx.vmap(lambda c: c.default(), in_axes={nnx.RngState: 0})(stacked)
    assert distinct(keys) == 3 and stacked.default.count.shape == (3,)


# -- scan --------------------------------------------------------------------------------------
def test_scan_over_layers_matches_unrolled_loop_and_keys_differ_per_layer():
    n = 4
    stack = nnx.vmap(lambda ctx: Block(3, ctx=ctx), axis_size=n)(nnx.context(0))
    twin = nnx.clone(stack)
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    ctx = nnx.context(dropout=9)

    def step(h, blk, ctx):
        k = ctx.dropout.key.value, ctx.dropout.count.value
        return blk(h, ctx=ctx), k

    y, (keys, counts) = nnx.scan(step, in_axes=(nnx.Carry, 0, None), out_axes=(nnx.Carry, 0))(x, stack, ctx)
    assert keys.shape == (n,) and distinct(keys) == n  # one stream per layer, never shared
    assert int(ctx.dropout.count.value) == 1 and bool((counts == 0).all())
    # Reference: the same per-layer keys, applied in a Python loop to the layers of the twin.
    h = x
    for i in range(n):
        blk = layer(twin, i)
        h = blk(h, ctx=nnx.ContextDef().merge({"dropout": keys[i]}))
        np.testing.assert_allclose(stack.bn.mean.value[i], blk.bn.mean.value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-6)


def test_scan_carried_module_and_carried_stream():
    class Counter(nnx.Module):
        def __init__(self):
            self.n = nnx.Variable(jnp.zeros((), jnp.int32))

    c = Counter()
    ctx = nnx.context(3)

    def step(carry, x, ctx):
        counter, total = carry
        counter.n.value = counter.n.value + 1
        return (counter, total + x), ctx.default()

    (out, total), keys = nnx.scan(step, in_axes=(nnx.Carry, 0, {nnx.RngState: None}), out_axes=(nnx.Carry, 0))(
        (c, jnp.zeros(())), jnp.arange(5.0), ctx
    )
    assert out is c and int(c.n.value) == 5 and float(total) == 10.0
    # A carried stream draws in sequence: distinct per step, and the caller's counter moved by 5.
    assert distinct(keys) == 5 and int(ctx.default.count.value) == 5
    expected = jax.random.fold_in(ctx.default.key.value, 2)
    np.testing.assert_array_equal(jax.random.key_data(keys[2]), jax.random.key_data(expected))


def test_scan_axis_and_reverse_options():
    xs = jnp.arange(12.0).reshape(3, 4)  # scan over axis 1
    total, ys = nnx.scan(lambda c, x: (c + x.sum(), x * 2), in_axes=(nnx.Carry, 1), out_axes=(nnx.Carry, 1))(
        jnp.zeros(()), xs
    )
    assert float(total) == float(xs.sum()) and ys.shape == (3, 4)
    np.testing.assert_allclose(ys, xs * 2)
    firsts = nnx.scan(lambda c, x: (x, c), reverse=True)(jnp.zeros(()), jnp.arange(3.0))[1]
    np.testing.assert_allclose(firsts, [1.0, 2.0, 0.0])


def test_scan_structure_change_and_carry_mismatch_errors():
    stack = nnx.vmap(lambda ctx: nnx.Linear(2, 2, ctx=ctx), axis_size=2)(nnx.context(0))

    def grow(x, m):
        m.extra = nnx.Param(jnp.ones(()))
        return x

    with pytest.raises(ValueError, match="create every Variable before the scan"):
        nnx.scan(grow, out_axes=nnx.Carry)(jnp.ones((1, 2)), stack)
    with pytest.raises(ValueError, match="same structure as the carry"):
        nnx.scan(lambda x, m: ((x, x), None))(jnp.ones((1, 2)), stack)


def test_scan_inside_jit_with_grad_matches_unrolled():
    stack = nnx.vmap(lambda ctx: nnx.Linear(3, 3, ctx=ctx), axis_size=3)(nnx.context(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    forward = nnx.scan(lambda h, m: jnp.tanh(m(h)), out_axes=nnx.Carry)

    @nnx.jit
    def grads_scan(stack, x):
        return nnx.grad(lambda s: forward(x, s).sum())(stack)

    def loss_loop(params):
        h = x
        for i in range(3):
            h = jnp.tanh(h @ params["kernel"][i] + params["bias"][i])
        return h.sum()

    g = grads_scan(stack, x)
    want = jax.grad(loss_loop)({"kernel": stack.kernel.value, "bias": stack.bias.value})
    np.testing.assert_allclose(g["kernel"], want["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["bias"], want["bias"], rtol=1e-5, atol=1e-6)


def test_scan_can_build_a_stack():
    stack = nnx.scan(lambda c, _: (c, nnx.Linear(2, 2, ctx=c)), in_axes=(nnx.Carry, 0), length=3)(
        nnx.context(0), jnp.zeros(3)
    )[1]
    assert stack.kernel.shape == (3, 2, 2)
    assert not np.allclose(stack.kernel.value[0], stack.kernel.value[1])


def test_stacked_layers_sharing_a_stored_context_get_distinct_masks_per_layer_and_call():
    class DropBlock(nnx.Module):
        def __init__(self, *, ctx):
            self.linear = nnx.Linear(4, 4, ctx=ctx)
            self.drop = nnx.Dropout(0.5, ctx=ctx)  # stores the caller's Context

        def __call__(self, x):
            return self.drop(self.linear(x))

    ctx = nnx.context(0, dropout=1)
    stack = nnx.vmap(lambda c: DropBlock(ctx=c), axis_size=3)(ctx)
    assert stack.drop.ctx is ctx  # the input Context comes back as the same object, unstacked

    @nnx.jit
    def masks(stack):
        return nnx.scan(lambda h, blk: (h, blk(jnp.ones((16, 4))) != 0), length=3)(jnp.zeros(()), stack)[1]

    first, second = masks(stack), masks(stack)
    assert len({tuple(np.asarray(m).ravel()) for m in first}) == 3  # no two layers share a mask
    assert bool((first != second).any())  # the stream advanced between calls
