"""nnx.transform (init_fn / apply_fn), init recipes, split_trainable / merge_states, fold_rngs."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from nnxlite.functional import init_recipe, param_from_init


# -- small layers defined here, so the tests do not depend on nnxlite.nn internals ----------------
class Dense(nnx.Module):
    def __init__(self, din, dout, *, ctx, kernel_init=nnx.initializers.lecun_normal()):
        self.kernel = param_from_init(kernel_init, ctx.make_rng("params"), (din, dout), jnp.float32)
        self.bias = param_from_init(nnx.initializers.zeros, ctx.make_rng("params"), (dout,), jnp.float32)

    def __call__(self, x):
        return x @ self.kernel.value + self.bias.value


class Norm(nnx.Module):
    """Batch norm without scale/bias: running mean updated by the forward pass."""

    def __init__(self, n, momentum=0.5):
        self.mean = nnx.BatchStat(jnp.zeros((n,)))
        self.momentum = momentum

    def __call__(self, x):
        m = x.mean(axis=0)
        self.mean.value = self.momentum * self.mean.value + (1 - self.momentum) * m
        return x - m


class MLP(nnx.Module):
    def __init__(self, din, dhidden, dout, *, ctx):
        self.fc1 = Dense(din, dhidden, ctx=ctx)
        self.norm = Norm(dhidden)
        self.fc2 = Dense(dhidden, dout, ctx=ctx)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.norm(self.fc1(x))))

    def hidden(self, x):
        return self.fc1(x)


class NoisyMLP(nnx.Module):
    """Holds its own RNG context: dropout-like noise drawn from a stored stream."""

    def __init__(self, *, ctx):
        self.fc = Dense(3, 3, ctx=ctx)
        self.ctx = ctx

    def __call__(self, x):
        mask = jax.random.bernoulli(self.ctx.dropout(), 0.5, x.shape)
        return self.fc(jnp.where(mask, x, 0.0))


class CallCtx(nnx.Module):
    """Takes its randomness at call time (ctx=), like nnx.Dropout."""

    def __init__(self):
        self.scale = nnx.Param(jnp.ones(()))

    def __call__(self, x, *, ctx=None):
        return x * self.scale.value + jax.random.normal(ctx.dropout(), x.shape)


def _ref_mlp(p, x, momentum=0.5, mean0=None):
    """Independent numpy forward pass of MLP: returns (y, new running mean)."""
    h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    m = h.mean(axis=0)
    mean0 = np.zeros_like(m) if mean0 is None else mean0
    new_mean = momentum * mean0 + (1 - momentum) * m
    h = np.maximum(h - m, 0.0)
    return h @ p["fc2"]["kernel"] + p["fc2"]["bias"], new_mean


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _salted(key, path):
    return jax.random.fold_in(key, zlib.crc32("/".join(map(str, path)).encode()) & 0x7FFFFFFF)


# -- snapshot ------------------------------------------------------------------------------------
def test_snapshot_ignores_later_edits():
    model = MLP(2, 4, 3, ctx=nnx.context(0))
    kernel_before = np.asarray(model.fc1.kernel.value)
    init_fn, apply_fn = nnx.transform(model)
    # Edit the model afterwards: value, structure and a static attribute.
    model.fc1.kernel.value = jnp.zeros((2, 4))
    model.fc2 = Dense(4, 7, ctx=nnx.context(1))
    model.norm.momentum = 0.0
    variables = init_fn()
    np.testing.assert_array_equal(variables["fc1"]["kernel"], kernel_before)
    assert variables["fc2"]["kernel"].shape == (4, 3)
    x = jnp.arange(6.0).reshape(3, 2)
    y, new = apply_fn(variables, x)
    ref_y, ref_mean = _ref_mlp(_np(variables.to_pure_dict()), np.asarray(x), momentum=0.5)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["norm"]["mean"], ref_mean, rtol=1e-5, atol=1e-6)


def test_snapshot_copies_numpy_leaves():
    model = nnx.Module()
    model.w = nnx.Param(np.ones(3, np.float32))
    init_fn, _ = nnx.transform(model)
    model.w.value[:] = 5.0  # in-place numpy edit after the snapshot
    np.testing.assert_array_equal(init_fn()["w"], np.ones(3))


# -- init_fn -------------------------------------------------------------------------------------
def test_init_fn_redraws_from_recipes_per_path():
    model = MLP(3, 5, 2, ctx=nnx.context(0))
    init_fn, _ = nnx.transform(model)
    key = jax.random.PRNGKey(7)
    v = init_fn(key)
    # Independent reference for the documented rule: init(fold_in(key, crc32(path)), shape, dtype).
    lecun = nnx.initializers.lecun_normal()
    for path, shape in [(("fc1", "kernel"), (3, 5)), (("fc2", "kernel"), (5, 2))]:
        expected = lecun(_salted(key, path), shape, jnp.float32)
        np.testing.assert_allclose(v[path], expected, rtol=1e-6)
        assert not np.allclose(v[path], model.fc1.kernel.value if path[0] == "fc1" else model.fc2.kernel.value)
    np.testing.assert_array_equal(v["fc1"]["bias"], np.zeros(5))
    # Non-initializer state comes from the snapshot.
    np.testing.assert_array_equal(v["norm"]["mean"], np.zeros(5))
    # Deterministic in the key, different for another key; int seeds accepted.
    np.testing.assert_array_equal(init_fn(key)["fc1"]["kernel"], v["fc1"]["kernel"])
    assert not np.allclose(init_fn(jax.random.PRNGKey(8))["fc1"]["kernel"], v["fc1"]["kernel"])
    np.testing.assert_array_equal(init_fn(3)["fc1"]["kernel"], init_fn(jax.random.PRNGKey(3))["fc1"]["kernel"])


def test_init_fn_keeps_user_set_values_and_no_key_returns_snapshot():
    model = MLP(3, 4, 2, ctx=nnx.context(0))
    w = jnp.arange(12.0).reshape(3, 4)
    model.fc1.kernel.value = w  # set by hand: kept
    model.fc2.bias.value += 1.0  # in-place arithmetic also counts as set by hand
    assert init_recipe(model.fc1.kernel) is None and init_recipe(model.fc2.bias) is None
    assert init_recipe(model.fc2.kernel) is not None
    snapshot_fc2 = np.asarray(model.fc2.kernel.value)
    init_fn, _ = nnx.transform(model)
    v = init_fn(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(v["fc1"]["kernel"], w)
    np.testing.assert_array_equal(v["fc2"]["bias"], np.ones(2))
    assert not np.allclose(v["fc2"]["kernel"], snapshot_fc2)  # redrawn
    v0 = init_fn()
    np.testing.assert_array_equal(v0["fc2"]["kernel"], snapshot_fc2)
    assert v0.paths() == nnx.state(model).paths()


def test_recipe_survives_identity_preserving_update():
    layer = Dense(2, 2, ctx=nnx.context(0))
    nnx.update(layer, nnx.state(layer))  # same arrays written back: still from the initializer
    assert init_recipe(layer.kernel) is not None
    nnx.update(layer, jax.tree.map(lambda x: x + 0, nnx.state(layer)))  # new arrays
    assert init_recipe(layer.kernel) is None


def test_init_fn_statistics_of_redrawn_kernel():
    model = Dense(256, 256, ctx=nnx.context(0))
    init_fn, _ = nnx.transform(model)
    k = np.asarray(init_fn(jax.random.PRNGKey(3))["kernel"])
    # lecun_normal: truncated normal with variance 1/fan_in.
    assert abs(k.mean()) < 0.01
    assert abs(k.var() * 256 - 1.0) < 0.05


def test_init_fn_under_jit_and_vmap_ensemble():
    model = MLP(2, 3, 1, ctx=nnx.context(0))
    model.fc2.bias.value = jnp.array([0.5])
    init_fn, apply_fn = nnx.transform(model)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    ens = jax.vmap(init_fn)(keys)
    assert ens["fc1"]["kernel"].shape == (4, 2, 3)
    for i in range(4):
        member = jax.jit(init_fn)(keys[i])
        np.testing.assert_allclose(ens["fc1"]["kernel"][i], member["fc1"]["kernel"], rtol=1e-6)
        np.testing.assert_array_equal(ens["fc2"]["bias"][i], [0.5])
    assert not np.allclose(ens["fc1"]["kernel"][0], ens["fc1"]["kernel"][1])
    # Run the whole ensemble at once.
    x = jnp.ones((5, 2))
    ys, new = jax.vmap(apply_fn, in_axes=(0, None))(ens, x)
    assert ys.shape == (4, 5, 1) and new["norm"]["mean"].shape == (4, 3)
    y1, _ = apply_fn(jax.tree.map(lambda a: a[1], ens), x)
    np.testing.assert_allclose(ys[1], y1, rtol=1e-5, atol=1e-6)


def test_with_partitioning_recipe_redraws_and_keeps_metadata():
    init = nnx.with_partitioning(nnx.initializers.ones, ("embed", "mlp"))
    layer = Dense(2, 3, ctx=nnx.context(0), kernel_init=init)
    assert layer.kernel.sharding_names == ("embed", "mlp")
    init_fn, _ = nnx.transform(layer)
    v = init_fn(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(v["kernel"], np.ones((2, 3)))
    (path, boxed), = [(p, b) for p, b in v.variables() if p == ("kernel",)]
    assert type(boxed) is nnx.Param and boxed.sharding_names == ("embed", "mlp")
    assert nnx.get_partition_spec(v)["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")


def test_linear_routes_params_through_recipes():
    layer = nnx.Linear(4, 3, ctx=nnx.context(0))
    if init_recipe(layer.kernel) is None:
        pytest.skip("nnx.Linear does not create its params through param_from_init in this tree")
    init_fn, _ = nnx.transform(layer)
    key = jax.random.PRNGKey(5)
    expected = nnx.initializers.lecun_normal()(_salted(key, ("kernel",)), (4, 3), jnp.float32)
    np.testing.assert_allclose(init_fn(key)["kernel"], expected, rtol=1e-6)


# -- apply_fn ------------------------------------------------------------------------------------
def test_apply_fn_is_pure_and_matches_reference_eager_and_jit():
    model = MLP(2, 4, 3, ctx=nnx.context(0))
    init_fn, apply_fn = nnx.transform(model)
    v = init_fn(jax.random.PRNGKey(2))
    before = _np(v.to_pure_dict())
    x = jax.random.normal(jax.random.PRNGKey(9), (6, 2))
    y, new = apply_fn(v, x)
    yj, newj = jax.jit(apply_fn)(v, x)
    ref_y, ref_mean = _ref_mlp(before, np.asarray(x))
    for out, state in [(y, new), (yj, newj)]:
        np.testing.assert_allclose(out, ref_y, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state["norm"]["mean"], ref_mean, rtol=1e-5, atol=1e-6)
        assert state.paths() == v.paths()
    # The input State was not touched.
    jax.tree.map(np.testing.assert_array_equal, _np(v.to_pure_dict()), before)
    # Running statistics thread through a second call.
    _, new2 = apply_fn(new, x)
    _, ref_mean2 = _ref_mlp(before, np.asarray(x), mean0=ref_mean)
    np.testing.assert_allclose(new2["norm"]["mean"], ref_mean2, rtol=1e-5, atol=1e-6)


def test_apply_fn_method_by_name_and_callable_and_nested_dict():
    model = MLP(2, 4, 3, ctx=nnx.context(0))
    init_fn, apply_fn = nnx.transform(model)
    v = init_fn()
    x = jnp.ones((2, 2))
    h, _ = apply_fn(v, x, method="hidden")
    np.testing.assert_allclose(h, x @ v["fc1"]["kernel"] + v["fc1"]["bias"], rtol=1e-6)
    h2, _ = apply_fn(v.to_pure_dict(), x, method=lambda m, x: m.fc1(x) * 2)
    np.testing.assert_allclose(h2, 2 * h, rtol=1e-6)
    with pytest.raises(AttributeError, match="no method 'nope'"):
        apply_fn(v, x, method="nope")


def test_apply_fn_wrong_variables_names_paths():
    init_fn, apply_fn = nnx.transform(MLP(2, 4, 3, ctx=nnx.context(0)))
    v = init_fn().to_pure_dict()
    del v["fc2"]["bias"]
    v["fc2"]["extra"] = jnp.ones(1)
    with pytest.raises(ValueError) as e:
        apply_fn(v, jnp.ones((1, 2)))
    text = str(e.value)
    assert "fc2/bias" in text and "fc2/extra" in text and "split_trainable" in text


def test_apply_fn_rngs_rekey_stored_streams_and_restore_keys():
    model = NoisyMLP(ctx=nnx.context(0, dropout=1))
    init_fn, apply_fn = nnx.transform(model)
    v = init_fn()
    x = jnp.ones((8, 3))
    k1, k2 = jax.random.PRNGKey(10), jax.random.PRNGKey(11)
    y1, n1 = apply_fn(v, x, rngs={"dropout": k1})
    y1b, _ = jax.jit(apply_fn)(v, x, rngs={"dropout": k1})
    y2, _ = apply_fn(v, x, rngs={"dropout": k2})
    np.testing.assert_allclose(y1, y1b, rtol=1e-6)
    assert not np.allclose(y1, y2)
    # Stored key restored, counter advanced once.
    np.testing.assert_array_equal(jax.random.key_data(n1["ctx"]["dropout"]["key"][...]), jax.random.key_data(v["ctx"]["dropout"]["key"][...]))
    assert int(n1["ctx"]["dropout"]["count"]) == int(v["ctx"]["dropout"]["count"]) + 1
    # Independent reference: the mask is bernoulli(fold_in(k1, count)).
    mask = jax.random.bernoulli(jax.random.fold_in(k1, 0), 0.5, x.shape)
    ref = np.where(mask, 1.0, 0.0) @ np.asarray(v["fc"]["kernel"]) + np.asarray(v["fc"]["bias"])
    np.testing.assert_allclose(y1, ref, rtol=1e-5, atol=1e-6)
    # Without rngs the stored stream is used and the counter threads through calls.
    ya, na = apply_fn(v, x)
    yb, _ = apply_fn(na, x)
    assert not np.allclose(ya, yb)
    # A single key serves every stream.
    ys, _ = apply_fn(v, x, rngs=k1)
    ys2, _ = apply_fn(v, x, rngs=k1)
    np.testing.assert_array_equal(ys, ys2)


def test_apply_fn_rngs_follow_context_fallback_and_single_key_derivation():
    x = jnp.ones((8, 3))
    # A Context with only a default stream serves 'dropout' from it: rngs={'dropout': k} re-keys it.
    init_fn, apply_fn = nnx.transform(NoisyMLP(ctx=nnx.context(0)))
    v = init_fn()
    k = jax.random.PRNGKey(21)
    y, new = apply_fn(v, x, rngs={"dropout": k})
    count = int(v["ctx"]["default"]["count"])
    mask = jax.random.bernoulli(jax.random.fold_in(k, count), 0.5, x.shape)
    ref = np.where(mask, 1.0, 0.0) @ np.asarray(v["fc"]["kernel"]) + np.asarray(v["fc"]["bias"])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(jax.random.key_data(new["ctx"]["default"]["key"][...]), jax.random.key_data(v["ctx"]["default"]["key"][...]))
    # A single key: the default stream gets it, the 'dropout' stream fold_in(key, crc32('dropout')).
    init_fn, apply_fn = nnx.transform(NoisyMLP(ctx=nnx.context(0, dropout=1)))
    v = init_fn()
    y, _ = apply_fn(v, x, rngs=k)
    derived = jax.random.fold_in(k, zlib.crc32(b"dropout") & 0x7FFFFFFF)
    mask = jax.random.bernoulli(jax.random.fold_in(derived, 0), 0.5, x.shape)
    ref = np.where(mask, 1.0, 0.0) @ np.asarray(v["fc"]["kernel"]) + np.asarray(v["fc"]["bias"])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_apply_fn_with_library_dropout():
    model = nnx.Sequence([nnx.Linear(4, 16, ctx=nnx.context(0)), nnx.Dropout(0.5, ctx=nnx.context(dropout=1))])
    init_fn, apply_fn = nnx.transform(model)
    v = init_fn()
    x = jnp.ones((2, 4))
    y1, n1 = jax.jit(apply_fn)(v, x, rngs={"dropout": jax.random.PRNGKey(1)})
    y1b, _ = apply_fn(v, x, rngs={"dropout": jax.random.PRNGKey(1)})
    y2, _ = apply_fn(v, x, rngs={"dropout": jax.random.PRNGKey(2)})
    np.testing.assert_allclose(y1, y1b, rtol=1e-6)
    assert not np.array_equal(y1 == 0, y2 == 0)
    assert n1.paths() == v.paths()


def test_apply_fn_rngs_passed_as_call_time_ctx():
    init_fn, apply_fn = nnx.transform(CallCtx())
    v = init_fn()
    x = jnp.zeros((5,))
    y, _ = apply_fn(v, x, rngs={"dropout": jax.random.PRNGKey(3)})
    ref = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(3), 0), (5,))
    np.testing.assert_allclose(y, ref, rtol=1e-6)


def test_apply_fn_vmap_over_batch():
    model = Dense(3, 2, ctx=nnx.context(0))
    init_fn, apply_fn = nnx.transform(model)
    v = init_fn()
    xs = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    ys, _ = jax.vmap(lambda x: apply_fn(v, x))(xs)
    np.testing.assert_allclose(ys, np.asarray(xs) @ np.asarray(v["kernel"]) + np.asarray(v["bias"]), rtol=1e-5)


# -- trainable vs. the rest, and grad --------------------------------------------------------------
def test_split_trainable_partitions_and_merge_round_trips():
    model = NoisyMLP(ctx=nnx.context(0, dropout=1))
    v = nnx.transform(model).init()
    trainable, rest = nnx.split_trainable(v)
    assert all(isinstance(b, nnx.Param) for _, b in trainable.variables())
    assert not any(isinstance(b, nnx.Param) for _, b in rest.variables())
    assert set(trainable.paths()) | set(rest.paths()) == set(v.paths())
    assert {p[-1] for p in rest.paths()} == {"key", "count"}
    merged = nnx.merge_states(rest, trainable)
    assert merged.paths() == v.paths()
    # Types and metadata survive the round trip.
    assert [type(b) for _, b in merged.variables()] == [type(b) for _, b in v.variables()]
    with pytest.raises(ValueError, match="fc/kernel"):
        nnx.merge_states(trainable, trainable.filter("kernel"))
    # Plain dicts carry no Variable types: a clear error instead of an empty trainable set.
    with pytest.raises(TypeError, match="to_pure_dict"):
        nnx.split_trainable(v.to_pure_dict())
    with pytest.raises(ValueError, match="no Variable types"):
        nnx.split_trainable(nnx.State(v.to_pure_dict()))
    # A module works too, and a custom filter.
    only_kernels, others = nnx.split_trainable(model, nnx.PathContains("kernel"))
    assert only_kernels.paths() == (("fc", "kernel"),)


def test_grad_through_apply_fn_matches_independent_reference():
    model = MLP(3, 4, 2, ctx=nnx.context(0))
    init_fn, apply_fn = nnx.transform(model)
    trainable, rest = nnx.split_trainable(init_fn(jax.random.PRNGKey(4)))
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    t = jax.random.normal(jax.random.PRNGKey(2), (5, 2))

    def loss_fn(trainable, rest):
        y, new = apply_fn(nnx.merge_states(trainable, rest), x)
        return jnp.mean((y - t) ** 2), nnx.split_trainable(new)[1]

    grads, new_rest = jax.jit(jax.grad(loss_fn, has_aux=True))(trainable, rest)
    assert grads.paths() == trainable.paths()

    # Reference: the same network written as a plain function of a dict.
    def ref_loss(p):
        h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
        h = jax.nn.relu(h - h.mean(axis=0))
        y = h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
        return jnp.mean((y - t) ** 2)

    ref = jax.grad(ref_loss)(trainable.to_pure_dict())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads.to_pure_dict(), ref)
    # Non-trainable state came back updated.
    h = np.asarray(x) @ np.asarray(trainable["fc1"]["kernel"]) + np.asarray(trainable["fc1"]["bias"])
    np.testing.assert_allclose(new_rest["norm"]["mean"], 0.5 * h.mean(axis=0), rtol=1e-5, atol=1e-6)
    # And a central finite difference on one entry.
    eps = 1e-2
    k = np.asarray(trainable["fc2"]["kernel"])

    def with_k(delta):
        p = trainable.to_pure_dict()
        p["fc2"]["kernel"] = jnp.asarray(k + delta)
        return float(ref_loss(p))

    d = np.zeros_like(k)
    d[1, 0] = eps
    fd = (with_k(d) - with_k(-d)) / (2 * eps)
    np.testing.assert_allclose(grads["fc2"]["kernel"][1, 0], fd, rtol=2e-2, atol=1e-5)


def test_sgd_training_with_transform_decreases_loss():
    model = Dense(2, 1, ctx=nnx.context(0))
    init_fn, apply_fn = nnx.transform(model)
    trainable, rest = nnx.split_trainable(init_fn(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    y = x @ jnp.array([[2.0], [-1.0]]) + 0.5

    @jax.jit
    def step(trainable, rest):
        def loss_fn(tr):
            out, new = apply_fn((tr, rest), x)
            return jnp.mean((out - y) ** 2), nnx.split_trainable(new)[1]

        (loss, rest2), g = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        return jax.tree.map(lambda p, g: p - 0.1 * g, trainable, g), rest2, loss

    losses = []
    for _ in range(200):
        trainable, rest, loss = step(trainable, rest)
        losses.append(float(loss))
    assert losses[-1] < 1e-3 < losses[0]
    np.testing.assert_allclose(trainable["kernel"][:, 0], [2.0, -1.0], atol=0.02)
    np.testing.assert_allclose(trainable["bias"], [0.5], atol=0.02)


# -- per-lane RNG ---------------------------------------------------------------------------------
def test_fold_rngs_gives_distinct_lanes_under_vmap_and_replicated_state():
    model = NoisyMLP(ctx=nnx.context(0, dropout=1))
    init_fn, apply_fn = nnx.transform(model)
    v = init_fn()
    xs = jnp.ones((4, 8, 3))

    def lane(x, rng_axes):
        return apply_fn(v, x, rng_axes=rng_axes)

    same, _ = jax.vmap(lambda x: lane(x, None), axis_name="batch")(xs)
    folded, new = jax.vmap(lambda x: lane(x, "batch"), axis_name="batch", out_axes=(0, None))(xs)
    # Pitfall: without folding every lane draws the same mask.
    for i in range(1, 4):
        np.testing.assert_array_equal(same[0], same[i])
        assert not np.allclose(folded[0], folded[i])
    # out_axes=None worked: the state is replicated, key restored, counter advanced once.
    np.testing.assert_array_equal(jax.random.key_data(new["ctx"]["dropout"]["key"][...]), jax.random.key_data(v["ctx"]["dropout"]["key"][...]))
    assert int(new["ctx"]["dropout"]["count"]) == 1
    # Lane i equals an eager call with the key folded by i (independent reference).
    key_i = jax.random.fold_in(jnp.asarray(v["ctx"]["dropout"]["key"][...]), 2)
    y2, _ = apply_fn(v, xs[2], rngs={"dropout": key_i})
    np.testing.assert_allclose(folded[2], y2, rtol=1e-6)


def test_fold_rngs_context_manager_eager_module():
    model = NoisyMLP(ctx=nnx.context(0, dropout=1))
    key0 = np.asarray(jax.random.key_data(model.ctx.dropout.key.value))

    def run(x):
        with nnx.fold_rngs(model, "b"):
            return model(x)

    gd, st = nnx.split(model)

    def pure(st, x):
        m = nnx.merge(gd, st)
        with nnx.fold_rngs(m, "b"):
            y = m(x)
        return y, nnx.state(m)

    ys, new = jax.vmap(pure, in_axes=(None, 0), out_axes=(0, None), axis_name="b")(st, jnp.ones((3, 4, 3)))
    assert not np.allclose(ys[0], ys[1])
    np.testing.assert_array_equal(jax.random.key_data(new["ctx"]["dropout"]["key"][...]), key0)
    with pytest.raises(NameError, match="axis_name='b'"):
        run(jnp.ones((4, 3)))  # not inside vmap: the axis is unbound
    np.testing.assert_array_equal(jax.random.key_data(model.ctx.dropout.key.value), key0)  # restored even on error
