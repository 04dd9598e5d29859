"""Ensembles, control flow and graph utilities as flax 0.12 programs write them.

``nnx.split_rngs`` + ``nnx.vmap`` to build and run a model ensemble,
``nnx.StateAxes``, ``nnx.cond``/``nnx.switch``, ``nnx.fori_loop``,
``nnx.scan`` over a batch of data, ``nnx.clone``, ``nnx.iter_graph``,
``nnx.grad`` with ``nnx.DiffState``, intermediates with ``sow``/``nnx.pop``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def make_mlp(nnx, sow=True):
    class MLP(nnx.Module):
        def __init__(self, din, dmid, dout, *, rngs):
            self.linear1 = nnx.Linear(din, dmid, rngs=rngs)
            self.dropout = nnx.Dropout(rate=0.1, rngs=rngs)
            self.bn = nnx.BatchNorm(dmid, rngs=rngs)
            self.linear2 = nnx.Linear(dmid, dout, rngs=rngs)

        def __call__(self, x):
            x = nnx.gelu(self.dropout(self.bn(self.linear1(x))))
            if sow:
                self.sow(nnx.Intermediate, "hidden", x)
            return self.linear2(x)

    return MLP


def make_ensemble(nnx, n=3, sow=True):
    MLP = make_mlp(nnx, sow)

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create_model(rngs):
        return MLP(2, 8, 1, rngs=rngs)

    return create_model(nnx.Rngs(0))


def test_ensemble_init_and_forward(nnx):
    model = make_ensemble(nnx)
    assert model.linear1.kernel.shape == (3, 2, 8)
    assert model.bn.mean.shape == (3, 8)
    # members differ
    k = np.asarray(model.linear1.kernel[...])
    assert not np.allclose(k[0], k[1])
    model.eval()

    @nnx.vmap(in_axes=(0, None), out_axes=0)
    def forward(model, x):
        return model(x)

    y = forward(model, jnp.ones((4, 2)))
    assert y.shape == (3, 4, 1)


def test_ensemble_train_step_with_stateaxes(nnx):
    # the members sow an Intermediate each call: it is mapped too (axis 0)
    model = make_ensemble(nnx, sow=True)
    model.train()
    optimizer = nnx.Optimizer(model, optax.adam(5e-2), wrt=nnx.Param)
    x = jnp.linspace(-1, 1, 16).reshape(8, 2)
    y = x[:, :1] ** 2

    @nnx.jit
    def train_step(model, optimizer):
        def loss_fn(model):
            state_axes = nnx.StateAxes({(nnx.Param, nnx.BatchStat, nnx.Intermediate): 0, nnx.RngState: 0, ...: None})

            @nnx.vmap(in_axes=(state_axes, None), out_axes=0)
            def forward(model, x):
                return model(x)

            return jnp.mean((forward(model, x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(3)]
    assert losses[-1] < losses[0]
    assert model.linear1.kernel.shape == (3, 2, 8)


def test_cond_switch_and_fori_loop(nnx):
    class Branchy(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(2, 2, rngs=rngs)
            self.b = nnx.Linear(2, 2, rngs=rngs)
            self.calls = nnx.Variable(jnp.array(0))

    model = Branchy(nnx.Rngs(0))
    x = jnp.ones((1, 2))

    def use_a(m, x):
        m.calls[...] += 1
        return m.a(x)

    def use_b(m, x):
        m.calls[...] += 10
        return m.b(x)

    @nnx.jit
    def run(model, pred, x):
        return nnx.cond(pred, use_a, use_b, model, x)

    np.testing.assert_allclose(run(model, True, x), model.a(x), rtol=1e-6)
    np.testing.assert_allclose(run(model, False, x), model.b(x), rtol=1e-6)
    assert int(model.calls[...]) == 11
    out = nnx.switch(1, [use_a, use_b], model, x)
    np.testing.assert_allclose(out, model.b(x), rtol=1e-6)

    def body(i, carry):
        model, x = carry
        return model, model.a(x)

    _, looped = nnx.fori_loop(0, 3, body, (model, x))
    np.testing.assert_allclose(looped, model.a(model.a(model.a(x))), rtol=1e-5)


def test_scan_over_batches_trains(nnx):
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    xs = jnp.linspace(-1, 1, 40).reshape(5, 4, 2)
    ys = xs.sum(-1, keepdims=True)

    @nnx.jit
    def train_epoch(model, optimizer, xs, ys):
        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
        def step(carry, x, y):
            model, optimizer = carry
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
            optimizer.update(model, grads)
            return (model, optimizer), loss

        _, losses = step((model, optimizer), xs, ys)
        return losses

    first = train_epoch(model, optimizer, xs, ys)
    second = train_epoch(model, optimizer, xs, ys)
    assert first.shape == (5,)
    assert float(second.mean()) < float(first.mean())
    assert int(optimizer.step[...]) == 10


def test_grad_wrt_diffstate_and_intermediates(nnx):
    MLP = make_mlp(nnx)
    model = MLP(2, 4, 1, rngs=nnx.Rngs(0))
    model.eval()
    x = jnp.ones((3, 2))

    def loss_fn(model):
        return model(x).sum()

    only_linear2 = nnx.All(nnx.Param, nnx.PathContains("linear2"))
    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, only_linear2))(model)
    assert set(nnx.to_pure_dict(grads)) == {"linear2"}
    model(x)
    intermediates = nnx.pop(model, nnx.Intermediate)
    hidden = intermediates["hidden"]
    hidden = getattr(hidden, "value", hidden)
    assert isinstance(hidden, tuple) and hidden[0].shape == (3, 4)
    assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))


def test_clone_and_iter_graph(nnx):
    MLP = make_mlp(nnx)
    model = MLP(2, 4, 1, rngs=nnx.Rngs(0))
    copy = nnx.clone(model)
    copy.linear1.kernel[...] = jnp.zeros((2, 4))
    assert not np.allclose(model.linear1.kernel[...], 0)
    paths = [path for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)]
    assert () in paths and ("linear1",) in paths and ("linear2",) in paths
    n_params = sum(
        node.size for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Param)
    )
    assert n_params == 2 * 4 + 4 + 4 * 1 + 1 + 4 + 4
    modules = [type(m).__name__ for _, m in model.iter_modules()]
    assert modules.count("Linear") == 2


def test_ensemble_matches_flax(both):
    outs = []
    for lib in both:
        model = make_ensemble(lib)
        model.eval()
        forward = lib.vmap(lambda m, x: m(x), in_axes=(0, None), out_axes=0)
        outs.append(np.asarray(forward(model, jnp.ones((4, 2)))))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
