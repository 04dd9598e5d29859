"""flax.nnx names that flax's example programs use (EMA, TrainState, nnx.variables, Variable[A], ...).

Each test runs one flax spelling on ``lib``, parametrized over nnxlite and
flax.nnx itself (skipped when flax is not installed), and checks the same
outcome for both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlite


@pytest.fixture(params=["nnxlite", "flax"])
def nnx(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    return nnxlite


def test_ema_tracks_the_moving_average_inside_jit(nnx):
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    ema = nnx.EMA(model, decay=0.9)
    ema_model = ema.apply_to(model)
    start = np.asarray(model.kernel[...])

    @nnx.jit
    def train_step(model, optimizer, ema, x, y):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        ema.update(model)

    x, y = jnp.ones((1, 2)), jnp.ones((1, 2))
    expected = start
    for _ in range(3):
        train_step(model, optimizer, ema, x, y)
        expected = 0.9 * expected + 0.1 * np.asarray(model.kernel[...])
    np.testing.assert_allclose(ema.params["kernel"][...], expected, rtol=1e-6)
    assert ema_model.kernel is ema.params["kernel"]  # the EMA model follows later updates
    assert type(ema.params["kernel"]) is nnx.Param


def test_ema_only_filter_and_structure_errors(nnx):
    model = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    ema = nnx.EMA(model, decay=0.5, only=nnx.Param)
    assert sorted(ema.params) == ["bias", "scale"]
    model.scale[...] = jnp.zeros(2)
    ema.update(model)
    np.testing.assert_allclose(ema.params["scale"][...], 0.5 * np.ones(2))
    ema_model = ema.apply_to(model)
    assert ema_model.scale is ema.params["scale"]
    assert ema_model.mean is model.mean  # untracked state is shared with the model


def test_ema_update_with_another_structure_is_refused():
    ema = nnxlite.EMA(nnxlite.Linear(2, 2, rngs=nnxlite.Rngs(0)), decay=0.9)
    with pytest.raises(ValueError, match="missing paths.*bias"):
        ema.update(nnxlite.Linear(2, 2, use_bias=False, rngs=nnxlite.Rngs(0)))


def test_train_state_create_apply_gradients_and_subclass(nnx):
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    class MyState(nnx.TrainState):
        extra: jax.Array

    state = MyState.create(graphdef, params=params, tx=optax.sgd(0.05), extra=jnp.zeros(()))
    x = jnp.ones((3, 2))

    @jax.jit
    def step(state):
        def loss_fn(params):
            return jnp.mean(nnx.merge(state.graphdef, params)(x) ** 2)

        grads = jax.grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads, extra=state.extra + 1)

    new = step(state)
    assert int(new.step) == 1 and float(new.extra) == 1.0
    loss = lambda s: float(jnp.mean(nnx.merge(s.graphdef, s.params)(x) ** 2))
    assert loss(new) < loss(state)
    y, _ = new.apply("params")(x)
    np.testing.assert_allclose(y, nnx.merge(new.graphdef, new.params)(x))
    assert nnx.TrainState[nnx.Linear] is not None  # generic, as annotations in flax programs use it


def test_variable_is_generic(nnx):
    class Count(nnx.Variable[nnx.A]):
        pass

    c = Count(jnp.zeros(()))
    assert isinstance(c, nnx.Variable) and float(c[...]) == 0.0
    assert nnx.Variable[int] is not None


def test_variables_is_state_and_merge_accepts_copy(nnx):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    params = nnx.variables(model, nnx.Param)
    assert set(params) == {"bias", "kernel"}
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state, copy=True)
    np.testing.assert_array_equal(copy(jnp.ones((1, 2))), model(jnp.ones((1, 2))))
    assert copy.kernel is not model.kernel


def test_data_list_items_are_leaves(nnx):
    class Foo(nnx.Module):
        def __init__(self):
            self.x = nnx.data([1, 2])
            self.plain = [3, 4]

    foo = Foo()
    assert jax.tree.leaves(foo) == [1, 2]  # plain list items are static, nnx.data ones are leaves
    bumped = jax.tree.map(lambda v: v + 10, foo)
    assert list(bumped.x) == [11, 12] and list(bumped.plain) == [3, 4]


# -- graph-level functions -------------------------------------------------------------------
def test_flatten_unflatten_round_trip(nnx):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    graphdef, flat = nnx.flatten(model)
    assert [tuple(p) for p, _ in flat] == [("bias",), ("kernel",)]
    assert all(isinstance(v, nnx.Param) for _, v in flat)
    back = nnx.unflatten(graphdef, flat)
    x = jnp.ones((1, 2))
    np.testing.assert_allclose(back(x), model(x))
    graphdef, leaves = nnx.flatten(model, with_paths=False)
    assert [jnp.shape(v) for v in leaves] == [(3,), (2, 3)]
    np.testing.assert_allclose(nnx.unflatten(graphdef, leaves)(x), model(x))


def test_unpack_and_merge(nnx):
    node = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    params, stats = nnx.unpack(node, nnx.Param, nnx.BatchStat)
    new = nnx.merge(params, stats)
    assert type(new) is type(node)
    np.testing.assert_array_equal(new.scale[...], node.scale[...])


def test_map_as_pure_and_has_data(nnx):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    zeros = nnx.map(lambda path, v: v.replace(jnp.zeros_like(v[...])), model)
    assert float(jnp.abs(zeros.kernel[...]).sum()) == 0.0 and float(jnp.abs(model.kernel[...]).sum()) > 0
    pure = nnx.as_pure({"w": nnx.Param(jnp.ones(2)), "n": 3})
    assert isinstance(pure["w"], jax.Array) and pure["n"] == 3
    assert nnx.pure is not None
    found = nnx.has_data([1, "a", jnp.zeros(2), nnx.Param(jnp.ones(1))])
    assert len(found) == 2 and nnx.has_data((1, "x")) == []


def test_make_jaxpr_and_jit_partial(nnx):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    jaxpr = nnx.make_jaxpr(lambda m, x: m(x), graph_updates=False)(model, jnp.ones((1, 2)))
    assert "dot_general" in str(jaxpr)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    def train_step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    step = nnx.jit_partial(train_step, model, optimizer, graph=False)
    before = np.asarray(model.kernel[...])
    first, second = float(step(jnp.ones((4, 2)))), float(step(jnp.ones((4, 2))))
    assert second < first and not np.allclose(model.kernel[...], before)  # the bound model was updated


def test_update_context_keeps_identity(nnx):
    m1 = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with nnx.update_context("example"):
        with nnx.split_context("example") as ctx:
            graphdef, state = ctx.split(m1)

        @jax.jit
        def f(state):
            with nnx.merge_context("example", True) as ctx:
                m2 = ctx.merge(graphdef, state)
            m2.kernel[...] = m2.kernel[...] * 0
            with nnx.split_context("example") as ctx:
                return ctx.split(m2)

        graphdef_out, state_out = f(state)
        with nnx.merge_context("example", False) as ctx:
            m3 = ctx.merge(graphdef_out, state_out)
    assert m3 is m1 and float(jnp.abs(m1.kernel[...]).sum()) == 0.0
    with pytest.raises(ValueError):
        nnx.current_update_context("not-there")


def test_to_tree_from_tree_and_prefix(nnx):
    tree = nnx.to_tree({"layer": nnx.Linear(2, 3, rngs=nnx.Rngs(0)), "n": 1})
    assert isinstance(tree["layer"], nnx.NodeStates) and tree["n"] == 1
    assert [type(x) for x in jax.tree.leaves(tree)][-1] is int and len(jax.tree.leaves(tree)) == 3
    back = nnx.from_tree(tree)
    assert isinstance(back["layer"], nnx.Linear) and back["layer"].kernel.shape == (2, 3)
    d = {"a": nnx.Param(jnp.array(2)), "b": nnx.BatchStat(jnp.arange(5))}
    assert nnx.prefix(d, {nnx.Param: None, nnx.BatchStat: 0}, graph=False) == {"a": None, "b": 0}
    assert nnx.prefix(d, lambda path, x: 0 if "b" in path else None, graph=False) == {"a": None, "b": 0}


def test_as_abstract_and_get_abstract_model(nnx):
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    key = "sharding" if nnx is nnxlite else "out_sharding"
    with jax.set_mesh(mesh):
        model = nnx.eval_shape(lambda: nnx.Linear(2, 4, rngs=nnx.Rngs(0), kernel_metadata={key: (None, "model")}))
        model = nnx.as_abstract(model)
    assert model.kernel.get_value().sharding.spec == jax.P(None, "model")
    graphdef, abstract = nnx.get_abstract_model(lambda: nnx.Linear(2, 4, rngs=nnx.Rngs(0)), mesh)
    assert abstract["kernel"].shape == (2, 4) and isinstance(abstract["kernel"].sharding, jax.sharding.NamedSharding)


# -- pytree annotations, optimizer-state types, submodules ------------------------------------
def test_data_and_static_annotations(nnx):
    class Foo(nnx.Pytree):
        a: nnx.Data[int]

        def __init__(self):
            self.a = 1
            self.b = 2

    assert jax.tree.leaves(Foo()) == [1]

    class Bar(nnx.Pytree):
        b: nnx.Static[jax.Array]

        def __init__(self):
            self.b = jnp.ones(1)

    with pytest.raises(ValueError):
        Bar()


def test_opt_types_and_submodules(nnx):
    assert issubclass(nnx.OptArray, nnx.OptState) and issubclass(nnx.OptVariable, nnx.OptState)
    assert nnx.helpers.TrainState is nnx.TrainState and nnx.helpers.Sequential is nnx.Sequential
    assert nnx.spmd.get_partition_spec is nnx.get_partition_spec
    assert nnx.pytreelib.Pytree is nnx.Pytree and nnx.object.data is nnx.data
    assert nnx.extract.to_tree is nnx.to_tree and nnx.summary.tabulate is nnx.tabulate
    assert nnx.visualization.display is nnx.display
    accessor = nnx.proxy_caller.DelayedAccessor().real
    assert accessor(3 + 4j) == 3.0


def test_graphdef_apply_and_num_leaves(nnx):
    model = nnx.BatchNorm(2, use_running_average=False, rngs=nnx.Rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    x = jnp.arange(6.0).reshape(3, 2)
    y, (graphdef2, state2) = graphdef.apply(params, stats)(x)
    np.testing.assert_allclose(y, model(x), rtol=1e-6)  # model(x) also updates model's stats
    np.testing.assert_allclose(nnx.state(model, nnx.BatchStat)["mean"][...],
                               state2["mean"][...] if nnx is nnxlite else state2["mean"].get_value(), rtol=1e-6)
    assert graphdef2 == graphdef
    assert graphdef.num_leaves == 4
