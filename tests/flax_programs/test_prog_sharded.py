"""Sharded training in the style of flax's sharding guide and the JAX AI stack.

``nnx.with_partitioning`` annotations, ``jax.make_mesh``, a sharded init under
``nnx.jit`` with ``nnx.get_partition_spec`` + ``jax.lax.with_sharding_constraint``
+ ``nnx.update``, data sharded with ``jax.device_put``, a few training steps.
The CPU has one device, so the mesh is 1x1; the shardings still carry the specs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mlp(nnx):
    class DotReluDot(nnx.Module):
        def __init__(self, depth, *, rngs):
            init_fn = nnx.initializers.lecun_normal()
            self.dot1 = nnx.Linear(
                depth, depth,
                kernel_init=nnx.with_partitioning(init_fn, (None, "model")),
                use_bias=False, rngs=rngs,
            )
            self.w2 = nnx.Param(
                init_fn(rngs.params(), (depth, depth)), out_sharding=("model", None)
            )

        def __call__(self, x):
            y = nnx.relu(self.dot1(x))
            y = jax.lax.with_sharding_constraint(y, P("data", "model"))
            return jnp.dot(y, self.w2[...])

    return DotReluDot


@functools.lru_cache(maxsize=None)
def run(nnx, steps=3):
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))
    DotReluDot = make_mlp(nnx)

    @nnx.jit
    def create_sharded_model():
        model = DotReluDot(8, rngs=nnx.Rngs(0))
        state = nnx.state(model)
        pspecs = nnx.get_partition_spec(state)
        sharded_state = jax.lax.with_sharding_constraint(state, pspecs)
        nnx.update(model, sharded_state)
        return model

    with jax.set_mesh(mesh):
        model = create_sharded_model()
        optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

        @nnx.jit
        def train_step(model, optimizer, x, y):
            def loss_fn(model):
                return jnp.mean((model(x) - y) ** 2)

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss

        rng = np.random.default_rng(0)
        x = jax.device_put(rng.normal(size=(4, 8)).astype(np.float32), NamedSharding(mesh, P("data", None)))
        y = jax.device_put(rng.normal(size=(4, 8)).astype(np.float32), NamedSharding(mesh, P("data", None)))
        losses = [float(train_step(model, optimizer, x, y)) for _ in range(steps)]
    return mesh, model, optimizer, losses


def test_sharded_init_and_training(nnx):
    mesh, model, optimizer, losses = run(nnx)
    assert losses[-1] < losses[0]
    # (with one device, XLA may simplify the specs of jit outputs, so only the
    # annotations are checked here; eager creation is checked below)
    assert isinstance(model.dot1.kernel.value.sharding, NamedSharding)
    specs = nnx.get_partition_spec(nnx.state(model))
    leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, (P, nnx.Variable)))
    got = sorted(str(getattr(s, "value", s)) for s in leaves)
    assert got == sorted([str(P(None, "model")), str(P("model", None))])


def test_out_sharding_metadata_and_eager_placement(nnx):
    model = run(nnx)[1]
    assert model.dot1.kernel.out_sharding == (None, "model")
    assert model.w2.out_sharding == ("model", None)


def test_named_shardings_from_state(nnx):
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))
    with jax.set_mesh(mesh):
        model = make_mlp(nnx)(8, rngs=nnx.Rngs(0))
    # created under a mesh, annotated Variables are sharded eagerly
    assert model.dot1.kernel[...].sharding.spec == P(None, "model")
    assert model.w2[...].sharding.spec == P("model", None)
    state = nnx.state(model)
    shardings = nnx.get_named_sharding(state, mesh)
    sharded = jax.device_put(state, shardings)
    nnx.update(model, sharded)
    assert model.dot1.kernel[...].sharding.spec == P(None, "model")


def test_sharded_losses_match_flax(both):
    ours, theirs = (run(lib)[3] for lib in both)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
