"""flax.nnx's capture / perturb / view / graph-tool surface, run the flax way on nnxlite and on flax.

Each test takes ``nnx``: nnxlite, and flax.nnx when flax is installed, and
runs the same flax-spelled program on both, so the expected values are the
ones flax itself produces.
"""

from __future__ import annotations

import importlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite


def _flax_nnx():
    pytest.importorskip("flax")
    return importlib.import_module("flax.nnx")


@pytest.fixture(params=["nnxlite", "flax"])
def nnx(request):
    if request.param == "flax":
        return _flax_nnx()
    return nnxlite


@pytest.fixture(autouse=True)
def _quiet_deprecations():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # flax warns on sow outside capture
        yield


def _val(leaf):
    """A State leaf's value: flax States hold Variables, nnxlite States hold the values."""
    return leaf.value if hasattr(leaf, "get_value") else leaf


def _model(nnx):
    class Foo(nnx.Module):
        def __init__(self, rngs):
            self.dense1 = nnx.Linear(3, 4, rngs=rngs)

        def features(self, x):
            h = nnx.relu(self.dense1(x))
            self.sow(nnx.Intermediate, "features", h)
            return h

        def __call__(self, x, y):
            return jnp.sum((self.features(x) - self.features(y)) ** 2)

    return Foo(nnx.Rngs(0))


def test_capture_collects_sown_values_without_touching_the_module(nnx):
    model = _model(nnx)
    x, y = jnp.ones((2, 3)), jnp.zeros((2, 3))
    result, inter = nnx.capture(model, nnx.Intermediate)(x, y)
    values = _val(inter["features"])
    assert isinstance(values, tuple) and len(values) == 2
    np.testing.assert_allclose(values[0], jax.nn.relu(x @ model.dense1.kernel.value + model.dense1.bias.value))
    assert not hasattr(model, "features") or callable(model.features)  # the method is not overwritten
    assert not hasattr(model, "__captures__")
    # a second call starts clean
    _, again = nnx.capture(model, nnx.Intermediate)(x, y)
    assert len(_val(again["features"])) == 2


def test_capture_as_decorator_ignores_other_types_and_sow_returns_false(nnx):
    class Metric1(nnx.Intermediate):
        pass

    class Metric2(nnx.Intermediate):
        pass

    seen = {}

    @nnx.capture(Metric1)
    def run(model):
        seen["captures"] = type(model.__captures__).__name__
        seen["kept"] = model.sow(Metric1, "kept", jnp.ones(2))
        seen["dropped"] = model.sow(Metric2, "dropped", jnp.ones(2))

    _, got = run(nnx.Module())
    assert seen == {"captures": "tuple", "kept": True, "dropped": False}
    assert list(got.keys()) == ["kept"]


def test_sow_reduce_and_init_fn(nnx):
    class Acc(nnx.Module):
        def __call__(self, x):
            self.sow(nnx.Intermediate, "total", x, init_fn=lambda: 0.0, reduce_fn=lambda a, b: a + b)
            return x

    m = Acc()

    def twice(m, x):
        m(x)
        return m(x)

    _, got = nnx.capture(twice, nnx.Intermediate)(m, jnp.array(2.0))
    assert float(_val(got["total"])) == 4.0


def test_capture_method_outputs_sows_every_public_method(nnx):
    class Foo(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(3, 2, rngs=rngs)

        def features(self, x):
            return self.dense(x)

        def __call__(self, x):
            return self.features(x).sum()

    model = Foo(nnx.Rngs(0))
    _, inter = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(jnp.ones((1, 3)))
    flat = {"/".join(map(str, p)): v for p, v in _flat(nnx, inter)}
    assert set(flat) == {"__call__", "features", "dense/__call__"}
    assert flat["features"][0].shape == (1, 2)
    assert type(model).features.__name__ == "features" and not hasattr(type(model).features, "_does_capturing")


def _flat(nnx, state):
    out = []
    for path, leaf in nnx.to_flat_state(state):
        out.append((path, leaf.value if isinstance(leaf, nnx.Variable) else leaf))
    return out


def test_perturbation_gradients_equal_intermediate_gradients(nnx):
    class Model(nnx.Module):
        def __call__(self, x):
            x2 = self.perturb("grad_of_x", x)
            self.sow(nnx.Intermediate, "activations", x2)
            return jnp.sum(3 * x2**2)

    model = Model()
    x = jnp.array([1.0, 2.0])
    _, perturbations = nnx.capture(model, nnx.Perturbation)(x)
    np.testing.assert_array_equal(_val(perturbations["grad_of_x"]), jnp.zeros(2))

    def loss(model, perturbations, x):
        return nnx.capture(model, nnx.Intermediate, init=perturbations)(x)

    (_, pgrads), sowed = nnx.grad(loss, argnums=(0, 1), has_aux=True)(model, perturbations, x)
    np.testing.assert_allclose(_val(pgrads["grad_of_x"]), 6 * x)  # d/dx sum(3 x^2)
    np.testing.assert_allclose(_val(sowed["activations"])[0], x)
    merged = nnx.merge_state(pgrads, sowed)
    assert set(merged.keys()) == {"grad_of_x", "activations"}


def test_perturb_outside_capture_adds_zero(nnx):
    m = nnx.Module()
    out = m.perturb("p", jnp.ones(2))
    np.testing.assert_array_equal(out, jnp.ones(2))
    assert isinstance(m.p, nnx.Perturbation) and issubclass(nnx.Perturbation, nnx.Intermediate)


def test_find_duplicates(nnx):
    class Shared(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(1, 1, rngs=rngs)
            self.b = nnx.Param(jnp.ones(1))
            self.c = self.a
            self.d = self.b

    got = nnx.find_duplicates(Shared(nnx.Rngs(0)))
    assert sorted(got) == [[("a",), ("c",)], [("b",), ("d",)]]
    assert nnx.find_duplicates(Shared(nnx.Rngs(0)), only=nnx.Param) == [[("b",), ("d",)]]
    assert nnx.find_duplicates(nnx.Linear(1, 1, rngs=nnx.Rngs(0))) == []


def test_recursive_map_replaces_bottom_up_and_shares_variables(nnx):
    model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
    visited = []

    def double_width(path, node):
        visited.append(path)
        if isinstance(node, nnx.Linear) and path == ("layers", 1):
            return nnx.Linear(3, 5, rngs=nnx.Rngs(2))
        return node

    new = nnx.recursive_map(double_width, model)
    assert new(jnp.ones((1, 2))).shape == (1, 5)
    assert model(jnp.ones((1, 2))).shape == (1, 2)  # the original is unchanged
    assert new.layers[0].kernel is model.layers[0].kernel
    assert visited[-1] == ()  # the root comes last (bottom-up)
    assert visited.index(("layers", 0)) < visited.index(("layers",))


def test_set_metadata_in_place(nnx):
    class Foo(nnx.Module):
        def __init__(self):
            self.param = nnx.Param(0.0)
            self.variable = nnx.Variable(0.0)

    node = Foo()
    nnx.set_metadata(node, differentiable=False, only=nnx.Param)
    assert node.param.get_metadata("differentiable") is False
    assert not node.variable.has_metadata("differentiable") if hasattr(node.variable, "has_metadata") else True


def _block(nnx):
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(2, 5, rngs=rngs)
            self.dropout = nnx.Dropout(0.5)
            self.batch_norm = nnx.BatchNorm(5, rngs=rngs)

    return Block(nnx.Rngs(0))


def test_view_sets_modes_on_a_copy_sharing_weights(nnx):
    block = _block(nnx)
    new = nnx.view(block, deterministic=True, use_running_average=True)
    assert (new.dropout.deterministic, new.batch_norm.use_running_average) == (True, True)
    assert (block.dropout.deterministic, block.batch_norm.use_running_average) == (False, False)
    assert new.linear.kernel is block.linear.kernel
    only = nnx.view(block, only=nnx.Dropout, deterministic=True)
    assert (only.dropout.deterministic, only.batch_norm.use_running_average) == (True, False)
    with pytest.raises(ValueError, match="not_a_mode"):
        nnx.view(block, not_a_mode=1)


def test_view_calls_custom_set_view_and_view_info_lists_it(nnx):
    class PrintLayer(nnx.Module):
        def __init__(self, msg=None):
            self.msg = msg

        def set_view(self, msg: bool | None = None):
            """Example.

            Args:
              msg: the message to print.
            """
            if msg is not None:
                self.msg = msg

    layer = PrintLayer()
    assert nnx.view(layer, msg="hi").msg == "hi" and layer.msg is None
    info = nnx.view_info(layer)
    assert info.splitlines()[0].endswith("PrintLayer:")
    assert "msg: bool | None = None" in info and "the message to print." in info
    bn_info = nnx.view_info(_block(nnx))
    assert "BatchNorm:" in bn_info and "Dropout:" in bn_info and "deterministic" in bn_info


def test_with_attributes(nnx):
    block = _block(nnx)
    new = nnx.with_attributes(block, deterministic=True, use_running_average=True)
    assert (new.dropout.deterministic, new.batch_norm.use_running_average) == (True, True)
    assert (block.dropout.deterministic, block.batch_norm.use_running_average) == (False, False)
    with pytest.raises(ValueError):
        nnx.with_attributes(block, no_such_attribute=1)


def test_optimizer_update_accepts_a_view_of_its_model(nnx):
    optax = pytest.importorskip("optax")
    model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Dropout(0.5))
    optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
    train_model = nnx.view(model, deterministic=True)
    grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(train_model)
    before = model.layers[0].bias.value
    optimizer.update(train_model, grads)
    np.testing.assert_allclose(model.layers[0].bias.value, before - 1.0)


def test_var_defaults_and_vars_as_flags(nnx):
    start = nnx.var_defaults().hijax
    with nnx.var_defaults(hijax=not start):
        assert nnx.var_defaults().hijax is (not start)
    assert nnx.var_defaults().hijax is start
    v = nnx.Variable(jnp.array(0))
    assert nnx.vars_as(v, ref=True).ref
    if nnx is nnxlite:  # flax 0.12.7 itself fails here (its hijax guide's cell 8 too): no `mutable` attribute
        assert not nnx.vars_as(v, mutable=False).mutable
        assert nnx.with_vars(v, mutable=False).mutable is False


def test_eager_sharding_switch(nnx):
    before = nnx.using_eager_sharding()
    with nnx.use_eager_sharding(not before):
        assert nnx.using_eager_sharding() is (not before)
    assert nnx.using_eager_sharding() is before


def test_variable_holding_a_dict_is_edited_by_key(nnx):
    v = nnx.Variable({"a": jnp.array(0), "b": jnp.array(2)})
    v["a"] += 1
    v["b"] *= 2
    assert int(v["a"]) == 1 and int(v["b"]) == 4
    assert "a" in v


def test_traversals_flatten_and_unflatten(nnx):
    xs = {"foo": 1, "bar": {"a": 2, "b": {}}}
    assert nnx.traversals.flatten_mapping(xs) == {("foo",): 1, ("bar", "a"): 2}
    assert nnx.traversals.flatten_mapping(xs, sep="/") == {"foo": 1, "bar/a": 2}
    kept = nnx.traversals.flatten_mapping(xs, keep_empty_nodes=True)
    assert kept[("bar", "b")] is nnx.traversals.empty_node
    assert nnx.traversals.unflatten_mapping(kept) == xs
    assert nnx.traversals.unflatten_mapping({"a/b": 1}, sep="/") == {"a": {"b": 1}}
    assert nnx.traversals.flatten_to_sequence(xs) == [(("foo",), 1), (("bar", "a"), 2)]


def test_string_filter_selects_a_stream_by_tag_and_vmaps_over_it(nnx):
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(4, 3, rngs=rngs)
            self.drop = nnx.Dropout(0.5, deterministic=False, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.linear(x))

    model = Model(nnx.Rngs(params=0, dropout=1))
    paths = sorted(p for p, _ in nnx.to_flat_state(nnx.state(model, "dropout")))
    assert paths == [("drop", "rngs", "count"), ("drop", "rngs", "key")]

    @nnx.fork_rngs(split={"dropout": 5})
    @nnx.vmap(in_axes=(nnx.StateAxes({"dropout": 0, ...: None}), None), out_axes=0)
    def sample(model, x):
        return model(x)

    out = sample(model, jnp.ones((1, 4)))
    assert out.shape == (5, 1, 3)
    assert not np.allclose(out[0], out[1])  # each lane drew its own mask


def test_update_model_grads_keeps_the_gradients_the_filter_selects(nnx):
    optax = pytest.importorskip("optax")

    class HeadParam(nnx.Param):
        pass

    class Model(nnx.Module):
        def __init__(self):
            self.body = nnx.Param(jnp.ones(2))
            self.head = HeadParam(jnp.ones(2))

        def __call__(self, x):
            return jnp.sum(x * self.body * self.head)

    model = Model()
    optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=HeadParam)
    grads = nnx.grad(lambda m: m(jnp.ones(2)))(model)  # grads of every Param, body included
    optimizer.update(model, grads)
    np.testing.assert_allclose(model.head.value, jnp.zeros(2))
    np.testing.assert_allclose(model.body.value, jnp.ones(2))  # not trained


def test_state_mutable_mapping_methods(nnx):
    class Two(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(2, 3, rngs=rngs)
            self.b = nnx.Linear(3, 1, rngs=rngs)

    state = nnx.state(Two(nnx.Rngs(0)))
    b = state.pop("b")
    assert list(state.keys()) == ["a"] and sorted(b.keys()) == ["bias", "kernel"]
    assert state.pop("missing", None) is None
    state.setdefault("b", b)
    assert sorted(state.keys()) == ["a", "b"]
    del state["a"]["bias"]
    assert sorted(state["a"].keys()) == ["kernel"]
    key, _ = state.popitem()
    assert key == "a" and list(state.keys()) == ["b"]
    state.clear()
    assert len(state) == 0
    flat = [(("w",), nnx.Param(jnp.ones(2)))]
    rebuilt = nnx.State.from_flat_path(flat)
    np.testing.assert_array_equal(_val(rebuilt["w"]), jnp.ones(2))
    assert [p for p, _ in rebuilt.flat_state()] == [("w",)]
    doubled = rebuilt.map(lambda path, x: x * 2)
    np.testing.assert_array_equal(_val(doubled["w"]), 2 * jnp.ones(2))


def test_initializers_take_out_sharding_and_linear_exposes_its_defaults(nnx):
    from jax.sharding import AxisType, PartitionSpec as P

    mesh = jax.make_mesh((1,), ("model",), axis_types=(AxisType.Explicit,))
    init = nnx.initializers.lecun_normal()
    key = jax.random.key(0)
    with jax.set_mesh(mesh):
        x = init(key, (4, 2), out_sharding=P(None, "model"))
    assert x.sharding.spec == P(None, "model")
    np.testing.assert_array_equal(x, init(key, (4, 2)))  # same values
    assert nnx.nn.linear.default_kernel_init(key, (3, 2)).shape == (3, 2)


def test_abstract_state_leaves_are_edited_through_value(nnx):
    abs_model = nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    _, abs_state = nnx.split(abs_model)
    assert abs_state["kernel"].shape == (2, 3)
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(1))
    abs_state["kernel"].value = model.kernel.value
    abs_state["bias"].value = model.bias.value
    nnx.update(abs_model, abs_state)
    x = jnp.ones((1, 2))
    np.testing.assert_allclose(abs_model(x), model(x))
