"""nnx.Optimizer: numerics against plain optax, frozen parts, jit via split/merge, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlite as nnx
from nnxlite import _epoch


class MLP(nnx.Module):
    def __init__(self, din: int, dhidden: int, dout: int, *, ctx: nnx.Context):
        self.fc1 = nnx.Linear(din, dhidden, ctx=ctx)
        self.fc2 = nnx.Linear(dhidden, dout, ctx=ctx)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


def mlp_apply(p: dict, x):
    """The same network written against a plain dict: the independent reference."""
    h = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


# Every test uses width-4 layers and 8x4 batches: eager JAX compiles each
# (primitive, shape) once per process, so shared shapes keep the suite fast.
D = 4


def data(seed: int = 0, n: int = 8):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kx, (n, D)), jax.random.normal(ky, (n, D))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def reference_training(params: dict, tx, steps: int, x, y, **extra_fn):
    """A pure-JAX/optax loop on a dict of params."""

    def loss(p):
        return jnp.mean((mlp_apply(p, x) - y) ** 2)

    opt_state = tx.init(params)
    for _ in range(steps):
        value, g = jax.value_and_grad(loss)(params)
        extra = {"value": value} if extra_fn else {}
        updates, opt_state = tx.update(g, opt_state, params, **extra)
        params = optax.apply_updates(params, updates)
    return params, opt_state


def assert_tree_close(a, b, rtol=1e-6, atol=1e-6):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "tx",
    [
        optax.adam(1e-2),
        optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(3e-2, weight_decay=0.1)),
        optax.sgd(0.05, momentum=0.9, nesterov=True),
    ],
    ids=["adam", "chain-clip-adamw", "nesterov"],
)
def test_matches_plain_optax_loop(tx):
    model = MLP(D, D, D, ctx=nnx.context(0))
    x, y = data()
    init = jax.tree.map(jnp.array, nnx.state(model, nnx.Param).to_pure_dict())
    optimizer = nnx.Optimizer(model, tx)
    steps = 6
    for _ in range(steps):
        optimizer.update(nnx.grad(loss_fn)(model, x, y))
    ref_params, ref_state = reference_training(init, tx, steps, x, y)
    assert_tree_close(nnx.state(model, nnx.Param).to_pure_dict(), ref_params)
    # The optimizer state matches leaf for leaf (same optax tree structure).
    assert_tree_close(optimizer.optax_state(), ref_state)
    assert optimizer.step.value.dtype == jnp.uint32 and int(optimizer.step.value) == steps
    assert optimizer.model is model


def test_readable_opt_state_paths_and_types():
    model = MLP(D, D, D, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3))
    state = nnx.state(optimizer)
    names = {"/".join(map(str, p)) for p in state.paths()}
    assert {"opt_state/0/mu/fc1/kernel", "opt_state/0/nu/fc2/bias", "opt_state/0/count", "step"} <= names
    assert {"model/fc1/kernel", "model/fc2/bias"} <= names
    # Every optimizer leaf is an OptState Variable; the model keeps its own types.
    opt_paths = set(nnx.state(optimizer, nnx.OptState).paths())
    assert all(p[0] in ("opt_state", "step") for p in opt_paths)
    assert set(nnx.state(optimizer, nnx.Param).paths()) == {("model",) + p for p in nnx.state(model, nnx.Param).paths()}
    # Read as an attribute, opt_state is optax's own structure holding those live Variables (as in flax).
    adam = optimizer.opt_state[0]
    assert type(adam).__name__ == "ScaleByAdamState" and isinstance(adam.mu["fc1"]["kernel"], nnx.OptState)
    assert adam.mu["fc1"]["kernel"] is state["opt_state"][0]["mu"]["fc1"]["kernel"]


def test_list_indices_stay_ints_in_paths():
    model = nnx.Sequence([nnx.Linear(D, D, ctx=nnx.context(0)), nnx.Linear(D, D, ctx=nnx.context(1))])
    optimizer = nnx.Optimizer(model, optax.adam(1e-3))
    assert ("opt_state", 0, "mu", "layers", 1, "kernel") in nnx.state(optimizer).paths()


class Classifier(nnx.Module):
    def __init__(self, *, ctx):
        self.backbone = MLP(D, D, D, ctx=ctx)
        self.head = nnx.Linear(D, D, ctx=ctx)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.backbone(x)))


def test_frozen_backbone_is_untouched_and_has_no_state():
    model = Classifier(ctx=nnx.context(0))
    x, y = data(1)
    wrt = nnx.All(nnx.Param, nnx.PathContains("head"))
    backbone_before = jax.tree.map(np.asarray, nnx.state(model.backbone).to_pure_dict())
    head_before = np.asarray(model.head.kernel.value)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=wrt)
    for _ in range(3):
        optimizer.update(nnx.grad(loss_fn, wrt=wrt)(model, x, y))
    after = nnx.state(model.backbone).to_pure_dict()
    jax.tree.map(np.testing.assert_array_equal, backbone_before, jax.tree.map(np.asarray, after))
    assert not np.allclose(head_before, model.head.kernel.value)
    opt_paths = nnx.state(optimizer)["opt_state"].paths()
    assert opt_paths and not any("backbone" in p for p in opt_paths)
    assert all("head" in p for p in opt_paths if p[-1] in ("kernel", "bias"))


def test_frozen_backbone_with_full_grads_names_the_unexpected_paths():
    model = Classifier(ctx=nnx.context(0))
    x, y = data(1)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.All(nnx.Param, nnx.PathContains("head")))
    before = np.asarray(model.head.kernel.value)
    grads = nnx.grad(loss_fn)(model, x, y)  # all Params: includes the backbone
    with pytest.raises(ValueError, match="unexpected in grads") as err:
        optimizer.update(grads)
    assert "backbone/fc1/kernel" in str(err.value) and "wrt=optimizer.wrt" in str(err.value)
    np.testing.assert_array_equal(before, model.head.kernel.value)
    assert int(optimizer.step.value) == 0


def test_missing_path_and_bad_shape_errors_apply_nothing():
    model = MLP(D, D, D, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    grads = nnx.grad(loss_fn)(model, *data())
    before = np.asarray(model.fc1.kernel.value)

    partial = nnx.State({"fc1": {"kernel": grads["fc1"]["kernel"], "bias": grads["fc1"]["bias"]}})
    with pytest.raises(ValueError, match="missing from grads") as err:
        optimizer.update(partial)
    assert "fc2/bias" in str(err.value) and "fc2/kernel" in str(err.value)

    bad = jax.tree.map(lambda g: g, grads)
    bad["fc2"]["kernel"] = jnp.zeros((5, 5))
    with pytest.raises(ValueError, match=r"fc2/kernel: expected shape \(4, 4\), found \(5, 5\)"):
        optimizer.update(bad)

    with pytest.raises(TypeError, match="nnx.State"):
        optimizer.update([1, 2, 3])
    np.testing.assert_array_equal(before, model.fc1.kernel.value)
    assert int(optimizer.step.value) == 0
    assert int(optimizer.optax_state()[0].count) == 0


def test_grads_as_nested_dict_are_accepted():
    model = MLP(D, D, D, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.sgd(1.0))
    grads = nnx.grad(loss_fn)(model, *data())
    expected = jax.tree.map(lambda p, g: p - g, nnx.state(model, nnx.Param), grads).to_pure_dict()
    optimizer.update(grads.to_pure_dict())
    assert_tree_close(nnx.state(model, nnx.Param).to_pure_dict(), expected)


def test_structure_change_after_creation_is_a_clear_error():
    model = MLP(D, D, D, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    model.fc3 = nnx.Linear(D, D, ctx=nnx.context(1))
    grads = nnx.grad(loss_fn)(model, *data())
    with pytest.raises(ValueError, match="changed since the optimizer was created") as err:
        optimizer.update(grads)
    assert "fc3/kernel" in str(err.value)


def test_hot_path_reuses_cached_traversal_and_plan():
    model = MLP(D, D, D, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    x, y = data()
    optimizer.update(nnx.grad(loss_fn)(model, x, y))
    plan = optimizer.__dict__["_nnx_opt_plan"]
    flat = nnx.graph._flat(model)
    epoch = _epoch.current()
    for _ in range(3):
        optimizer.update(nnx.grad(loss_fn)(model, x, y))
    assert _epoch.current() == epoch  # updates are value edits, never structural
    assert optimizer.__dict__["_nnx_opt_plan"] is plan
    assert nnx.graph._flat(model) is flat
    # The cached plan is invisible to the graph: it is not part of the state or structure.
    assert not any("_nnx_opt_plan" in p for p in nnx.state(optimizer).paths())


def test_jit_via_split_merge_matches_eager_and_preserves_sharing():
    x, y = data(2)
    tx = optax.adam(1e-2)
    model = MLP(D, D, D, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, tx)
    eager_model = nnx.clone(model)
    eager_opt = nnx.Optimizer(eager_model, tx)

    @jax.jit
    def train_step(graphdef, state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        assert optimizer.model is model  # sharing survives split/merge
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(grads)
        return loss, nnx.state((model, optimizer))

    graphdef, state = nnx.split((model, optimizer))
    for _ in range(4):
        loss, state = train_step(graphdef, state, x, y)
        eager_opt.update(nnx.grad(loss_fn)(eager_model, x, y))
    nnx.update((model, optimizer), state)
    assert optimizer.model is model
    assert int(optimizer.step.value) == 4
    assert_tree_close(nnx.state(model).to_pure_dict(), nnx.state(eager_model).to_pure_dict(), rtol=1e-5, atol=1e-6)
    assert_tree_close(optimizer.optax_state(), eager_opt.optax_state(), rtol=1e-5, atol=1e-6)
    # The jitted step compiled once: same graphdef and avals every call.
    assert train_step._cache_size() == 1


def test_optimizer_alone_through_jit_updates_the_original_model():
    model = MLP(D, D, D, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    x, y = data()
    graphdef, state = nnx.split(optimizer)

    @jax.jit
    def step(state):
        opt = nnx.merge(graphdef, state)
        opt.update(nnx.grad(loss_fn)(opt.model, x, y))
        return nnx.state(opt)

    expected = jax.tree.map(
        lambda p, g: p - 0.1 * g, nnx.state(model, nnx.Param), nnx.grad(loss_fn)(nnx.clone(model), x, y)
    ).to_pure_dict()
    nnx.update(optimizer, step(state))
    assert optimizer.model is model
    assert_tree_close(nnx.state(model, nnx.Param).to_pure_dict(), expected)


def test_extra_args_reach_transforms_that_need_them():
    x, y = data(3)
    tx = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau(patience=1, factor=0.5, cooldown=0))
    model = MLP(D, D, D, ctx=nnx.context(0))
    init = jax.tree.map(jnp.array, nnx.state(model, nnx.Param).to_pure_dict())
    optimizer = nnx.Optimizer(model, tx)
    for _ in range(5):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(grads, value=loss)
    ref_params, ref_state = reference_training(init, tx, 5, x, y, value=True)
    assert_tree_close(nnx.state(model, nnx.Param).to_pure_dict(), ref_params)
    assert_tree_close(optimizer.optax_state(), ref_state)
    assert ("opt_state", 1, "scale") in nnx.state(optimizer).paths()


def test_extra_args_are_ignored_by_plain_transforms():
    def init_fn(params):
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        return jax.tree.map(lambda g: -g, updates), state

    plain = optax.GradientTransformation(init_fn, update_fn)
    model = nnx.Linear(2, 1, ctx=nnx.context(0))
    optimizer = nnx.Optimizer(model, plain)
    before = np.asarray(model.bias.value)
    grads = nnx.State({"bias": jnp.ones(1), "kernel": jnp.zeros((2, 1))})
    optimizer.update(grads, value=jnp.array(1.0))
    np.testing.assert_allclose(model.bias.value, before - 1)
    assert "opt_state" not in nnx.state(optimizer)  # no optimizer leaves
    assert optimizer.opt_state == optax.EmptyState()


def test_inject_hyperparams_are_editable_state():
    model = nnx.Linear(1, 1, ctx=nnx.context(0))
    model.kernel.value = jnp.zeros((1, 1))
    model.bias.value = jnp.zeros((1,))
    optimizer = nnx.Optimizer(model, optax.inject_hyperparams(optax.sgd)(learning_rate=1.0))
    grads = nnx.State({"bias": jnp.ones(1), "kernel": jnp.zeros((1, 1))})
    optimizer.update(grads)
    optimizer.opt_state.hyperparams["learning_rate"].value = jnp.asarray(0.25)  # flax's spelling
    optimizer.update(grads)
    np.testing.assert_allclose(model.bias.value, [-1.25])


def test_wrt_list_filter_and_non_param_state():
    class Scaled(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))
            self.stat = nnx.BatchStat(jnp.zeros(2))
            self.calls = nnx.Variable(0)

    model = Scaled()
    optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=[nnx.Param])
    assert optimizer.wrt == (nnx.Param,)
    optimizer.update(nnx.State({"w": jnp.ones(2)}))
    np.testing.assert_allclose(model.w.value, [0.0, 0.0])
    np.testing.assert_allclose(model.stat.value, [0.0, 0.0])
    assert model.calls.value == 0


def test_replacing_a_layer_with_another_shape_gives_a_clear_error():
    model = nnx.Sequence([nnx.Linear(2, 3, ctx=nnx.context(0)), nnx.Linear(3, 10, ctx=nnx.context(1))])
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    model.layers[1] = nnx.Linear(3, 5, ctx=nnx.context(2))  # same paths, new shapes
    grads = jax.tree.map(jnp.ones_like, model.filter(nnx.Param))
    with pytest.raises(ValueError, match=r"opt_state/0/mu/layers/1/kernel: shape \(3, 10\), parameter now \(3, 5\)"):
        optimizer.update(grads)
