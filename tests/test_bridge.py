"""nnx.bridge: Linen modules inside nnxlite and nnxlite modules inside Linen, checked against Linen itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx

nn = pytest.importorskip("flax.linen")
from nnxlite import bridge  # noqa: E402


# ---------------------------------------------------------------------------------------
# Linen -> nnxlite
# ---------------------------------------------------------------------------------------
class LinenDot(nn.Module):
    out_dim: int

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.lecun_normal(), (x.shape[-1], self.out_dim))
        return x @ w


def test_to_nnx_matches_linen_apply_and_uses_swapped_weights():
    x = jax.random.normal(jax.random.key(0), (4, 5))
    model = bridge.lazy_init(bridge.ToNNX(LinenDot(3), rngs=nnx.Rngs(0)), x)
    assert isinstance(model.w, nnx.Param) and model.w.shape == (5, 3)
    want = LinenDot(3).apply({"params": {"w": model.w.value}}, x)
    np.testing.assert_allclose(model(x), want, rtol=1e-6)
    model.w.value = jnp.ones((5, 3))
    np.testing.assert_allclose(model(x), x @ jnp.ones((5, 3)), rtol=1e-6)
    # trainable with nnx.jit / nnx.grad like any module
    grads = nnx.jit(nnx.grad(lambda m: m(x).sum()))(model)
    np.testing.assert_allclose(grads["w"], jnp.broadcast_to(x.sum(0)[:, None], (5, 3)), rtol=1e-5)


def test_lazy_init_reaches_to_nnx_inside_an_nnxlite_module():
    class Outer(nnx.Module):
        def __init__(self, rngs):
            self.dot = bridge.ToNNX(LinenDot(4), rngs=rngs)
            self.b = nnx.Param(jnp.zeros((1, 4)))

        def __call__(self, x):
            return self.dot(x) + self.b

    partial_model = Outer(nnx.Rngs(0))
    assert ("dot", "w") not in nnx.state(partial_model).paths()
    model = bridge.lazy_init(partial_model, jnp.ones((2, 3)))
    assert model is partial_model and nnx.state(model, nnx.Param).paths() == (("b",), ("dot", "w"))


def test_collections_map_to_variable_types_and_updates_come_back():
    class Multi(nn.Module):
        def setup(self):
            self.w = self.param("w", nn.initializers.ones, (2, 3))
            self.count = self.variable("counter", "count", lambda: jnp.zeros((), jnp.int32))

        def __call__(self, x):
            if not self.is_initializing():
                self.count.value += 1
            y = x @ self.w
            self.sow("intermediates", "dot_sum", jnp.sum(y))
            return y

    x = jnp.ones((1, 2))
    model = bridge.lazy_init(bridge.ToNNX(Multi(), rngs=nnx.Rngs(0)), x)
    assert type(model.w) is nnx.Param
    assert type(model.count) is nnx.variable_type_from_name("counter") and type(model.count).__name__ == "counter"
    model(x, mutable=True)
    model(x, mutable=True)
    assert int(model.count.value) == 2
    assert isinstance(model.dot_sum[0], nnx.Intermediate)
    _, params, counter, rest = nnx.split(model, nnx.Param, type(model.count), ...)
    assert list(params) == ["w"] and list(counter) == ["count"] and "rngs" in rest


def test_batch_stats_are_batchstats_and_match_linen():
    bn = nn.BatchNorm(use_running_average=False)
    x = jax.random.normal(jax.random.key(1), (8, 3))
    model = bridge.lazy_init(bridge.ToNNX(bn, rngs=nnx.Rngs(0)), x)
    assert isinstance(model.mean, nnx.BatchStat) and isinstance(model.scale, nnx.Param)
    variables = bn.init(jax.random.key(0), x)
    y_ref, upd = bn.apply(variables, x, mutable=["batch_stats"])
    y = model(x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, y_ref, rtol=1e-5)
    np.testing.assert_allclose(model.mean.value, upd["batch_stats"]["mean"], rtol=1e-6)


def test_dropout_rng_state_lives_in_the_module():
    model = bridge.lazy_init(bridge.ToNNX(nn.Dropout(0.5, deterministic=False), rngs=nnx.Rngs(dropout=0)), jnp.ones((4, 8)))
    x = jnp.ones((4, 8))
    assert not np.allclose(model(x), model(x))
    nnx.reseed(model, dropout=0)
    y1 = model(x)
    nnx.reseed(model, dropout=0)
    np.testing.assert_allclose(model(x), y1)


def test_linen_partitioning_becomes_sharding_metadata():
    class Part(nn.Module):
        @nn.compact
        def __call__(self, x):
            w = self.param("w", nn.with_partitioning(nn.initializers.ones, ("in", "out")), (x.shape[-1], 2))
            return x @ w

    model = bridge.lazy_init(bridge.ToNNX(Part(), rngs=nnx.Rngs(0)), jnp.ones((1, 3)))
    assert model.w.sharding_names == ("in", "out")
    assert nnx.get_partition_spec(model)["w"] == jax.sharding.PartitionSpec("in", "out")


# ---------------------------------------------------------------------------------------
# nnxlite -> Linen
# ---------------------------------------------------------------------------------------
def test_to_linen_linear_matches_nnxlite_linear():
    model = bridge.to_linen(nnx.Linear, 3, 4)
    x = jax.random.normal(jax.random.key(0), (2, 3))
    variables = model.init(jax.random.key(0), x)
    assert set(variables) == {"params"} and variables["params"]["kernel"].shape == (3, 4)
    ref = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    nnx.update(ref, nnx.State({"kernel": variables["params"]["kernel"], "bias": variables["params"]["bias"]}))
    np.testing.assert_allclose(model.apply(variables, x), ref(x), rtol=1e-6)
    # apply uses the given variables, not fresh ones
    zeros = jax.tree.map(jnp.zeros_like, variables)
    np.testing.assert_allclose(model.apply(zeros, x), 0.0)


def test_to_linen_structure_matches_flax_bridge():
    fnnx = pytest.importorskip("flax.nnx")
    x = jnp.ones((2, 3))
    ours = bridge.to_linen(nnx.Linear, 3, 4).init(jax.random.key(0), x)
    theirs = fnnx.bridge.to_linen(fnnx.Linear, 3, 4).init(jax.random.key(0), x)
    shapes = lambda v: jax.tree.map(jnp.shape, nn.unbox(v))  # noqa: E731
    assert shapes(ours) == shapes(theirs)


def test_to_linen_batchnorm_writes_mutable_stats_back():
    model = bridge.to_linen(nnx.BatchNorm, 3)
    x = jax.random.normal(jax.random.key(2), (8, 3))
    variables = model.init(jax.random.key(0), x)
    assert set(variables) == {"params", "batch_stats"}
    y, upd = model.apply(variables, x, mutable=["batch_stats"])
    ref = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(y, ref(x), rtol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], ref.mean.value, rtol=1e-6)


def test_to_linen_custom_variable_types_and_nnxmeta():
    @nnx.register_variable_name("counts", overwrite=True)
    class Count(nnx.Variable):
        pass

    class M(nnx.Module):
        def __init__(self, rngs):
            init = nnx.with_partitioning(nnx.initializers.ones, ("in", "out"))
            self.w = nnx.Param(init(rngs.params(), (3, 2)))
            self.count = Count(jnp.array(0))

        def __call__(self, x):
            self.count.value += 1
            return x @ self.w.value

    model = bridge.to_linen(M)
    x = jnp.ones((1, 3))
    variables = model.init(jax.random.key(0), x)
    assert set(variables) == {"params", "counts"} and int(variables["counts"]["count"]) == 0
    box = variables["params"]["w"]
    assert type(box) is bridge.NNXMeta and box.metadata["sharding"] == ("in", "out")
    assert nn.get_partition_spec(variables)["params"]["w"] == jax.sharding.PartitionSpec("in", "out")
    assert isinstance(nn.unbox(variables)["params"]["w"], jax.Array)
    _, upd = model.apply(variables, x, mutable=["counts"])
    assert int(upd["counts"]["count"]) == 1


def test_to_linen_dropout_rngs_and_skip_rng():
    model = bridge.to_linen(nnx.Dropout, rate=0.5)
    x = jnp.ones((4, 16))
    variables = model.init({"dropout": jax.random.key(0)}, x)
    y1 = model.apply(variables, x, rngs={"dropout": jax.random.key(1)})
    y2 = model.apply(variables, x, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(y1, y2)
    np.testing.assert_allclose(model.apply(variables, x, rngs={"dropout": jax.random.key(1)}), y1)

    class AddOne(nnx.Module):
        def __init__(self):
            self.c = nnx.Variable(jnp.array(1.0))

        def __call__(self, x):
            return x + self.c.value

    y, _ = bridge.ToLinen(AddOne, skip_rng=True).init_with_output(jax.random.key(0), x)
    np.testing.assert_allclose(y, x + 1)


def test_to_linen_inside_linen_and_under_nn_vmap():
    class Outer(nn.Module):
        @nn.compact
        def __call__(self, x):
            inner = nn.vmap(bridge.ToLinen, variable_axes={"params": 0}, split_rngs={"params": True})(
                nnx.Linear, args=(x.shape[-1], 5)
            )
            return inner(x)

    x = jnp.ones((4, 3))
    variables = Outer().init(jax.random.key(0), x)
    kernel = variables["params"]["VmapToLinen_0"]["kernel"]
    assert kernel.shape == (4, 3, 5) and not np.allclose(kernel[0], kernel[1])
    assert Outer().apply(variables, x).shape == (4, 5)


def test_round_trip_to_nnx_of_to_linen():
    x = jnp.ones((2, 3))
    model = bridge.lazy_init(bridge.ToNNX(bridge.to_linen(nnx.Linear, 3, 2), rngs=nnx.Rngs(0)), x)
    assert isinstance(model.kernel, nnx.Param)
    np.testing.assert_allclose(model(x), x @ model.kernel.value + model.bias.value, rtol=1e-6)


def test_variable_name_registry():
    assert nnx.variable_name_from_type(nnx.BatchStat) == "batch_stats"
    with pytest.raises(ValueError, match="already mapped"):
        nnx.register_variable_name("params", nnx.BatchStat)
    with pytest.raises(ValueError, match="allow_register"):
        nnx.variable_type_from_name("never_registered_xyz")
    T = nnx.variable_type_from_name("never_registered_xyz", allow_register=True)
    assert issubclass(T, nnx.Variable) and nnx.variable_name_from_type(T) == "never_registered_xyz"
