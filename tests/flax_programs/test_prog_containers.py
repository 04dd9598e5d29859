"""Containers and pytree classes as flax 0.12 programs use them.

``nnx.Sequential``, ``nnx.List``, ``nnx.Dict``, plain lists and dicts of
modules, ``nnx.Pytree`` with ``nnx.data``/``nnx.static``, ``nnx.dataclass``,
``nnx.Variable`` subclasses and ``nnx.Module`` as a JAX pytree.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax


def test_sequential_mlp_trains(nnx):
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(
        nnx.Linear(3, 8, rngs=rngs), nnx.relu, nnx.Linear(8, 8, rngs=rngs), jax.nn.gelu, nnx.Linear(8, 1, rngs=rngs)
    )
    assert len(model.layers) == 5
    assert isinstance(model.layers[0], nnx.Linear)
    optimizer = nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param)
    x = jnp.linspace(-1, 1, 24).reshape(8, 3)
    y = jnp.sin(x.sum(-1, keepdims=True))

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]
    state = nnx.state(model, nnx.Param)
    assert set(state["layers"].keys()) == {0, 2, 4}


def make_blocks(nnx):
    class Blocks(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(3)])
            self.heads = nnx.Dict({"a": nnx.Linear(4, 2, rngs=rngs), "b": nnx.Linear(4, 1, rngs=rngs)})
            self.plain = nnx.data([nnx.Linear(4, 4, rngs=rngs)])
            self.by_name = nnx.data({"x": nnx.Linear(4, 4, rngs=rngs)})

        def __call__(self, x):
            for layer in self.layers:
                x = nnx.relu(layer(x))
            x = self.by_name["x"](self.plain[0](x))
            return {k: head(x) for k, head in self.heads.items()}

    return Blocks


def test_list_and_dict_containers(nnx):
    Blocks = make_blocks(nnx)
    model = Blocks(nnx.Rngs(0))
    out = model(jnp.ones((2, 4)))
    assert out["a"].shape == (2, 2) and out["b"].shape == (2, 1)
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    assert set(pure) == {"layers", "heads", "plain", "by_name"}
    assert set(pure["layers"]) == {0, 1, 2}
    assert set(pure["heads"]) == {"a", "b"}
    n = sum(x.size for x in jax.tree.leaves(state))
    assert n == 3 * 20 + 10 + 5 + 20 + 20
    # appending to an nnx.List adds state
    model.layers.append(nnx.Linear(4, 4, rngs=nnx.Rngs(1)))
    assert len(nnx.to_pure_dict(nnx.state(model, nnx.Param))["layers"]) == 4
    # the modules round-trip through split/merge
    graphdef, state = nnx.split(model)
    again = nnx.merge(graphdef, state)
    np.testing.assert_allclose(again(jnp.ones((2, 4)))["a"], model(jnp.ones((2, 4)))["a"])


def test_containers_match_flax(both):
    outs = [make_blocks(lib)(lib.Rngs(0))(jnp.ones((2, 4)))["a"] for lib in both]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6)


def test_pytree_with_data_and_static(nnx):
    class Scaler(nnx.Pytree):
        def __init__(self, scale, name):
            self.scale = nnx.data(jnp.asarray(scale))
            self.name = nnx.static(name)
            self.offsets = nnx.data([jnp.zeros(2), jnp.ones(2)])

    s = Scaler(2.0, "s")
    leaves = jax.tree.leaves(s)
    assert len(leaves) == 3
    doubled = jax.tree.map(lambda x: x * 2, s)
    assert float(doubled.scale) == 4.0 and doubled.name == "s"
    np.testing.assert_allclose(doubled.offsets[1], 2.0)

    @jax.jit
    def apply(s, x):
        return s.scale * x + s.offsets[1]

    np.testing.assert_allclose(apply(s, jnp.ones(2)), 3.0)


def test_nnx_dataclass(nnx):
    @nnx.dataclass
    class Config(nnx.Pytree):
        weight: jax.Array
        bias: jax.Array
        activation: str = nnx.static(default="relu")

    cfg = Config(jnp.ones(3), jnp.zeros(3))
    assert cfg.activation == "relu"
    assert dataclasses.is_dataclass(cfg)
    out = jax.tree.map(lambda x: x + 1, cfg)
    np.testing.assert_allclose(out.bias, 1.0)
    assert len(jax.tree.leaves(cfg)) == 2


def test_modules_are_pytrees(nnx):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    leaves = jax.tree.leaves(model)
    assert sorted(x.shape for x in leaves) == [(2, 3), (3,)]
    zeros = jax.tree.map(jnp.zeros_like, model)
    assert isinstance(zeros, nnx.Linear)
    np.testing.assert_allclose(zeros(jnp.ones((1, 2))), 0.0)

    @jax.jit
    def forward(model, x):
        return model(x)

    np.testing.assert_allclose(forward(model, jnp.ones((1, 2))), model(jnp.ones((1, 2))), rtol=1e-6)
    grads = jax.grad(lambda m: m(jnp.ones((1, 2))).sum())(model)
    np.testing.assert_allclose(grads.bias[...], 1.0)


def test_custom_variable_types_and_filters(nnx):
    class Count(nnx.Variable):
        pass

    class Counter(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(2, 2, rngs=rngs)
            self.count = Count(jnp.array(0))
            self.stat = nnx.BatchStat(jnp.zeros(2))

        def __call__(self, x):
            self.count[...] += 1
            return self.linear(x)

    model = Counter(nnx.Rngs(0))

    @nnx.jit
    def f(model, x):
        return model(x)

    f(model, jnp.ones((1, 2)))
    f(model, jnp.ones((1, 2)))
    assert int(model.count[...]) == 2
    graphdef, params, counts, rest = nnx.split(model, nnx.Param, Count, ...)
    assert jax.tree.leaves(counts)[0] == 2
    assert len(jax.tree.leaves(rest)) == 1
    assert len(jax.tree.leaves(nnx.state(model, nnx.Any(Count, nnx.BatchStat)))) == 2
    assert len(jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param)))) == 2
    assert len(jax.tree.leaves(nnx.state(model, nnx.PathContains("linear")))) == 2
    assert len(jax.tree.leaves(nnx.state(model, lambda path, x: path[-1] == "bias"))) == 1
