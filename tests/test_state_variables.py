"""A State's leaves are Variables, as in flax.nnx 0.12 (``state['linear']['kernel'].value``).

Each test runs one flax spelling on ``lib``, parametrized over nnxlite and
flax.nnx itself (skipped when flax is not installed), and checks the same
outcome for both.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlite

pytestmark = pytest.mark.filterwarnings("ignore:.*access is now deprecated:DeprecationWarning")


@pytest.fixture(params=["nnxlite", "flax"])
def nnx(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    return nnxlite


def _mlp(nnx):
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(2, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.l2 = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.relu(self.bn(self.l1(x))))

    return MLP(nnx.Rngs(0))


def _is_var(nnx):
    return lambda x: isinstance(x, nnx.Variable)


def test_leaves_read_as_the_models_own_variables(nnx):
    model = _mlp(nnx)
    state = nnx.state(model)
    kernel = state["l1"]["kernel"]
    assert isinstance(kernel, nnx.Param) and isinstance(state["bn"]["mean"], nnx.BatchStat)
    assert kernel is model.l1.kernel
    assert kernel.value.shape == (2, 4) and kernel[...].shape == (2, 4)
    np.testing.assert_allclose(np.asarray(kernel * 2 + 1), np.asarray(model.l1.kernel[...]) * 2 + 1, rtol=1e-6)
    assert sorted(k for k, _ in nnx.state(model.l1).items()) == ["bias", "kernel"]


def test_writing_a_leaf_writes_the_model(nnx):
    model = _mlp(nnx)
    nnx.state(model)["l1"]["kernel"][...] = jnp.zeros((2, 4))
    assert float(model.l1.kernel[...].sum()) == 0.0
    nnx.variables(model, nnx.Param)["l2"]["bias"].value = jnp.ones(3)
    assert float(model.l2.bias[...].sum()) == 3.0


def test_split_edit_and_update_round_trip(nnx):
    model = _mlp(nnx)
    graphdef, state = nnx.split(model)
    state["l1"]["kernel"] = jnp.ones((2, 4))  # a plain value replaces the leaf, not the model's Variable
    assert float(model.l1.kernel[...].sum()) != 8.0
    merged = nnx.merge(graphdef, state)
    assert float(merged.l1.kernel[...].sum()) == 8.0
    nnx.update(model, state)
    assert float(model.l1.kernel[...].sum()) == 8.0


def test_tree_map_with_variables_as_leaves_changes_their_type(nnx):
    class EmaParam(nnx.Variable):
        pass

    model = _mlp(nnx)
    params = nnx.state(model, nnx.Param)
    ema = jax.tree.map(lambda v: EmaParam(jnp.copy(v[...])), params, is_leaf=_is_var(nnx))
    assert isinstance(ema["l1"]["kernel"], EmaParam)
    names = jax.tree.map(lambda v: type(v).__name__, params, is_leaf=_is_var(nnx))
    assert names["l1"]["kernel"] == "Param"
    # momentum and params map together, though their Variable types differ
    jax.tree.map(lambda e, p: None, ema, params, is_leaf=_is_var(nnx))


def test_key_paths_end_in_value(nnx):
    state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert paths == ["['bias'].value", "['kernel'].value"]
    zeroed = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 0 if "kernel" in jax.tree_util.keystr(p) else x, state
    )
    assert float(zeroed["kernel"].value.sum()) == 0.0 and isinstance(zeroed["kernel"], nnx.Param)


def test_plain_values_stay_plain(nnx):
    pure = nnx.State({"w": jnp.ones(2)})
    assert isinstance(pure["w"], jax.Array)
    state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    assert sorted(nnx.to_pure_dict(state)) == ["bias", "kernel"]
    assert isinstance(nnx.to_pure_dict(state)["kernel"], jax.Array)


def test_grads_and_flat_state_are_variables(nnx):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(model)
    assert isinstance(grads["kernel"], nnx.Param)
    np.testing.assert_allclose(grads["kernel"].value, np.ones((2, 3)))
    flat = nnx.to_flat_state(nnx.state(model))
    assert [p for p, _ in flat] == [("bias",), ("kernel",)]
    assert all(isinstance(v, nnx.Param) for _, v in flat)
    assert nnx.from_flat_state(flat)["kernel"].value.shape == (2, 3)


def test_plain_jit_over_a_state(nnx):
    state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    doubled = jax.jit(lambda s: jax.tree.map(lambda x: x * 2, s))(state)
    assert isinstance(doubled["kernel"], nnx.Param)
    np.testing.assert_allclose(doubled["kernel"].value, state["kernel"].value * 2)


def test_optimizer_opt_state_reads_like_optax(nnx):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.chain(optax.clip(1.0), optax.adam(1e-3)), wrt=nnx.Param)
    adam = optimizer.opt_state[1][0]
    assert type(optimizer.opt_state) is tuple and type(adam).__name__ == "ScaleByAdamState"
    assert isinstance(adam.mu["kernel"], nnx.OptState) and adam.mu["kernel"].value.shape == (2, 3)
    grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(model)
    optimizer.update(model, grads)
    adam = optimizer.opt_state[1][0]
    assert int(adam.count[...]) == 1
    np.testing.assert_allclose(adam.mu["kernel"][...], 0.1 * np.ones((2, 3)), rtol=1e-6)
    paths = {p for p, _ in nnx.to_flat_state(nnx.state(optimizer)) if p[0] == "opt_state"}
    assert ("opt_state", 1, 0, "mu", "kernel") in paths


def test_state_kept_in_a_pytree_updates_the_model_inside_jit(nnx):
    # flax's nnx_toy_examples/10_fsdp_and_optimizer.py: a hand-written SGD keeps nnx.variables(model)
    class SGD(nnx.Pytree):
        def __init__(self, params, lr):
            self.lr = lr
            self.params = nnx.data(params)
            self.momentum = nnx.data(
                jax.tree.map(lambda v: nnx.Variable(jnp.zeros_like(v[...])), params, is_leaf=_is_var(nnx))
            )

        def update(self, grads):
            def step(p, m, g):
                m[...] = 0.9 * m[...] + g[...]
                p[...] -= self.lr * m[...]

            jax.tree.map(step, self.params, self.momentum, grads, is_leaf=_is_var(nnx))

    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    optimizer = SGD(nnx.variables(model, nnx.Param), 0.1)
    start = np.asarray(model.kernel[...])

    @nnx.jit
    def train_step(model, optimizer):
        optimizer.update(nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(model))

    train_step(model, optimizer)
    train_step(model, optimizer)
    # momentum 1, then 1.9: the kernel moved by 0.1 * (1 + 1.9)
    np.testing.assert_allclose(model.kernel[...], start - 0.29, rtol=1e-5)
    np.testing.assert_allclose(optimizer.momentum["kernel"][...], 1.9 * np.ones((2, 3)), rtol=1e-6)


def test_abstract_state_surgery(nnx):
    abstract = nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    assert isinstance(state["kernel"].value, jax.ShapeDtypeStruct)
    state["kernel"].value = jnp.ones((2, 3))
    state["bias"].value = jnp.zeros(3)
    model = nnx.merge(graphdef, state)
    assert float(model.kernel[...].sum()) == 6.0


def test_orbax_round_trip_has_flax_names(nnx, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    _, state = nnx.split(model)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.fspath(tmp_path / "state"), state)
    checkpointer.wait_until_finished()
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(1))))
    restored = nnx.merge(graphdef, checkpointer.restore(os.fspath(tmp_path / "state"), abstract))
    np.testing.assert_allclose(restored.kernel[...], model.kernel[...])
    raw = checkpointer.restore(os.fspath(tmp_path / "state"))
    assert sorted(raw) == ["bias", "kernel"] and sorted(raw["kernel"]) == ["value"]


def test_failed_opt_state_assignment_writes_nothing():
    model = nnxlite.Linear(2, 3, rngs=nnxlite.Rngs(0))
    optimizer = nnxlite.Optimizer(model, optax.adam(1e-3), wrt=nnxlite.Param)
    before = [np.asarray(x) for x in jax.tree.leaves(optimizer.opt_state)]
    with pytest.raises(ValueError, match="missing"):
        optimizer.opt_state = optax.sgd(0.1, momentum=0.9).init(nnxlite.state(model, nnxlite.Param))
    after = [np.asarray(x) for x in jax.tree.leaves(optimizer.opt_state)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    optimizer.opt_state = optax.adam(1e-3).init(nnxlite.state(model, nnxlite.Param))
    assert int(optimizer.opt_state[0].count[...]) == 0


def test_state_kept_in_a_pytree_created_inside_jit(nnx):
    # flax's 10_fsdp_and_optimizer.py builds the model and its State-holding optimizer in nnx.jit
    class Momentum(nnx.Pytree):
        def __init__(self, params):
            self.params = nnx.data(params)
            self.momentum = nnx.data(
                jax.tree.map(lambda v: nnx.Variable(jnp.zeros_like(v[...])), params, is_leaf=_is_var(nnx))
            )

    @nnx.jit
    def create():
        model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        return model, Momentum(nnx.variables(model, nnx.Param))

    model, opt = create()
    assert opt.params["kernel"] is model.kernel  # the State still holds the model's own Variables
    assert isinstance(opt.momentum["kernel"], nnx.Variable) and opt.momentum["kernel"].shape == (2, 3)

    @nnx.jit
    def bump(opt):
        opt.params["bias"][...] += 1.0
        opt.momentum["bias"][...] += 2.0

    bump(opt)
    np.testing.assert_allclose(model.bias[...], np.ones(3))
    np.testing.assert_allclose(opt.momentum["bias"][...], 2 * np.ones(3))


def test_nnx_dict_keys_read_as_attributes(nnx):
    d = nnx.Dict(a=nnx.Param(jnp.ones(2)))
    d.b = nnx.Param(jnp.zeros(2))
    assert d.a is d["a"] and sorted(d) == ["a", "b"]
    with pytest.raises(AttributeError):
        d.missing


def test_optimizer_takes_module_shaped_gradients(nnx):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum(), graph=False)(model)  # flax's tree mode
    before = np.asarray(model.kernel[...])
    optimizer.update(model, grads)
    np.testing.assert_allclose(model.kernel[...], before - 0.1, rtol=1e-6)


def test_map_state_labels_drive_optax_partition(nnx):
    # flax's optimization cookbook: per-name learning rates through optax.partition
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    labels = nnx.map_state(lambda path, v: path[-1], nnx.state(model, nnx.Param))
    assert labels["kernel"] == "kernel"  # f's results are the leaves
    rates = {"kernel": optax.sgd(0.1), "bias": optax.sgd(1.0)}
    optimizer = nnx.Optimizer(model, optax.partition(rates, labels), wrt=nnx.Param)
    before_k, before_b = np.asarray(model.kernel[...]), np.asarray(model.bias[...])
    optimizer.update(model, nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(model))
    np.testing.assert_allclose(model.kernel[...], before_k - 0.1, rtol=1e-6)
    np.testing.assert_allclose(model.bias[...], before_b - 1.0, rtol=1e-6)
