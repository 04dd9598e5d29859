"""Seed 003's programs, run as written (``jax.tree_map`` spelled ``jax.tree.map``)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import nnxlite as nnx


class Count(nnx.Variable):
    pass


class Linear(nnx.Module):
    def __init__(self, din: int, dout: int, *, ctx: nnx.Context):
        self.din, self.dout = din, dout
        key = ctx.make_rng("params")
        self.w = nnx.Param(jax.random.uniform(key, (din, dout)))
        self.b = nnx.Param(jnp.zeros((dout,)))
        self.count = Count(0)  # track the number of calls

    def __call__(self, x) -> jax.Array:
        self.count += 1
        return x @ self.w + self.b


def test_linear_count_program():
    model = Linear(din=5, dout=2, ctx=nnx.context(0))
    count_var = model.count
    x = jnp.ones((1, 5))
    y = model(x)
    assert model.count is count_var  # in-place: the same Variable object
    assert model.count.value == 1
    np.testing.assert_allclose(y, x @ model.w.value + model.b.value, rtol=1e-6)
    assert y.shape == (1, 2)
    text = f"{model.count = }\n{model.w = }\n{model.b = }\n{model = }"
    assert "Count(" in text and "Param(" in text
    assert repr(model).startswith("Linear(din=5, dout=2)")
    assert "Count: 1" in repr(model) and "Param: 12" in repr(model)


def test_eager_training_loop_program():
    np.random.seed(0)
    X = np.random.uniform(size=(1000, 1))
    Y = 0.8 * X + 0.4 + np.random.normal(scale=0.1, size=(1000, 1))

    model = Linear(1, 1, ctx=nnx.context(0))
    losses = []
    for step in range(500):
        idx = np.random.randint(0, 1000, size=(32,))
        x, y = X[idx], Y[idx]

        def loss_fn(model: Linear):
            y_pred = model(x)
            return jnp.mean((y_pred - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn, wrt=nnx.Param)(model)

        params = model.filter(nnx.Param)
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
        model.update_state(params)

        if step % 100 == 0:
            y_pred = model(X)
            losses.append(float(np.mean((y_pred - Y) ** 2)))

    assert losses[-1] < losses[0]
    np.testing.assert_allclose(float(model.w.value[0, 0]), 0.8, atol=0.05)
    np.testing.assert_allclose(float(model.b.value[0]), 0.4, atol=0.03)
    # The count Variable was updated through grad (inside the traced function) too.
    assert int(model.count.value) == 500 + 5 * 2 - 5  # 500 grad calls + 5 eval calls


class Block(nnx.Module):
    def __init__(self, dim: int, *, ctx: nnx.Context):
        self.linear = nnx.Linear(dim, dim, ctx=ctx)
        self.bn = nnx.BatchNorm(dim, ctx=ctx)
        self.dropout = nnx.Dropout(0.5)

    def __call__(self, x: jax.Array, *, ctx: nnx.Context) -> jax.Array:
        x = self.linear(x)
        x = self.bn(x, ctx=ctx)
        x = self.dropout(x, ctx=ctx)
        x = jax.nn.gelu(x)
        return x


class ScanMLP(nnx.Module):
    def __init__(self, dim: int, *, n_layers: int, ctx: nnx.Context):
        self.n_layers = n_layers
        keys, ctxdef = ctx.partition()
        params_key = jax.random.split(keys["params"], n_layers)

        @partial(jax.vmap, out_axes=(0, None, None))
        def create_block(params_key):
            ctx = ctxdef.merge({"params": params_key})
            (params, batch_stats), moduledef = Block(dim, ctx=ctx).partition(nnx.Param, nnx.BatchStat)
            return params, batch_stats, moduledef

        params, batch_stats, moduledef = create_block(params_key)
        self.layers = moduledef.merge(params, batch_stats)

    def __call__(self, x: jax.Array, *, ctx: nnx.Context):
        keys, ctxdef = ctx.partition()
        dropout_key = jax.random.split(keys["dropout"], self.n_layers)
        (params, batch_stats), moduledef = self.layers.partition(nnx.Param, nnx.BatchStat)

        def scan_fn(carry: tuple[jax.Array, nnx.State], inputs: tuple[nnx.State, jax.Array]):
            (x, batch_stats), (params, dropout_key) = carry, inputs
            module = moduledef.merge(params, batch_stats)
            x = module(x, ctx=ctxdef.merge({"dropout": dropout_key}))
            params, _ = module.partition(nnx.Param)
            return (x, batch_stats), params

        (x, batch_stats), params = jax.lax.scan(scan_fn, (x, batch_stats), (params, dropout_key))
        self.layers.update_state((params, batch_stats))
        return x


def test_scan_mlp_program():
    model = ScanMLP(10, n_layers=5, ctx=nnx.context(0))
    x = jnp.ones((3, 10))
    y = model(x, ctx=nnx.context(dropout=1))
    assert y.shape == (3, 10)
    assert bool(jnp.all(jnp.isfinite(y)))
    # Stacked layers: every parameter has a leading axis of n_layers.
    shapes = jax.tree.map(jnp.shape, model.get_state()).to_pure_dict()
    assert shapes["layers"]["linear"]["kernel"] == (5, 10, 10)
    # Seed 003 creates batch stats with out_axes=None and carries them through
    # the scan, so they are one set shared by the stack, not stacked.
    assert shapes["layers"]["bn"]["mean"] == (10,)
    # Each layer got its own init key: kernels differ across the stack.
    k = model.layers.linear.kernel.value
    assert not np.allclose(k[0], k[1])


def test_scan_mlp_matches_unrolled_loop():
    model = ScanMLP(4, n_layers=3, ctx=nnx.context(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 4))
    # Reference: run each layer by hand with the same dropout keys.
    ctx = nnx.context(dropout=7)
    keys, _ = nnx.context(dropout=7).partition()
    dropout_keys = jax.random.split(keys["dropout"], 3)
    params = model.layers.filter(nnx.Param)
    stats = model.layers.filter(nnx.BatchStat)
    moduledef = nnx.graphdef(model.layers)
    h = x
    for i in range(3):
        layer = moduledef.merge(
            jax.tree.map(lambda a: a[i], params), jax.tree.map(lambda a: a[i], stats)
        )
        h = layer(h, ctx=nnx.ContextDef().merge({"dropout": dropout_keys[i]}))
    y = model(x, ctx=ctx)
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-5)


def load_pretrained_model():
    ctx = nnx.context(0)
    model = nnx.Sequence([
        lambda x: x.reshape((x.shape[0], -1)),
        nnx.Linear(784, 1024, ctx=ctx),
    ])
    return model


class Classifier(nnx.Module):
    def __init__(self, backbone: nnx.Sequence, *, ctx: nnx.Context):
        self.backbone = backbone
        self.head = nnx.Linear(1024, 10, ctx=ctx)

    def __call__(self, x: jax.Array):
        x = self.backbone(x)
        x = self.head(x)
        return x


def test_pretrained_classifier_program():
    pretrained_model = load_pretrained_model()
    model = Classifier(pretrained_model, ctx=nnx.context(0))
    y = model(jnp.ones((1, 28, 28)))
    assert y.shape == (1, 10)
    shapes = jax.tree.map(jnp.shape, model.get_state())
    assert shapes.to_pure_dict() == {
        "backbone": {"layers": {1: {"bias": (1024,), "kernel": (784, 1024)}}},
        "head": {"bias": (10,), "kernel": (1024, 10)},
    }
    # The backbone is embedded by reference: no copy.
    assert model.backbone.layers[1].kernel is pretrained_model.layers[1].kernel
    print("y.shape =", y.shape)
    print("state =", shapes)
