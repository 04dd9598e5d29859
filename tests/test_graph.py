"""The graph traversal: split/merge/state/update/graphdef/clone/pop/iter_graph."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx


class MLP(nnx.Module):
    def __init__(self, sizes, *, ctx):
        self.layers = [nnx.Linear(a, b, ctx=ctx) for a, b in zip(sizes[:-1], sizes[1:])]
        self.act = jax.nn.relu

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


class Tied(nnx.Module):
    """One Linear used twice, through two attributes."""

    def __init__(self, *, ctx):
        self.first = nnx.Linear(3, 3, ctx=ctx)
        self.second = self.first

    def __call__(self, x):
        return self.second(self.first(x))


def test_split_merge_roundtrip_values_and_types():
    model = MLP([2, 4, 3], ctx=nnx.context(0))
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)
    assert type(copy) is MLP and copy is not model
    assert isinstance(copy.layers, nnx.List) and len(copy.layers) == 2
    assert copy.act is jax.nn.relu
    x = jnp.ones((5, 2))
    np.testing.assert_array_equal(copy(x), model(x))
    assert isinstance(copy.layers[0].kernel, nnx.Param)


def test_shared_module_appears_once_and_is_shared_after_merge():
    model = Tied(ctx=nnx.context(0))
    graphdef, state = nnx.split(model)
    assert state.paths() == (("first", "bias"), ("first", "kernel"))
    copy = nnx.merge(graphdef, state)
    assert copy.first is copy.second


def test_shared_variable_across_modules():
    a = nnx.Linear(2, 2, ctx=nnx.context(0))
    b = nnx.Linear(2, 2, ctx=nnx.context(1))
    b.kernel = a.kernel  # tie the weight only
    root = nnx.Sequence([a, b])
    graphdef, state = nnx.split(root)
    assert len(state.paths()) == 3
    copy = nnx.merge(graphdef, state)
    assert copy.layers[0].kernel is copy.layers[1].kernel
    assert copy.layers[0].bias is not copy.layers[1].bias


def test_tied_weight_gets_sum_of_gradients():
    model = Tied(ctx=nnx.context(0))
    x = jnp.arange(3.0)[None]

    def loss(m):
        return jnp.sum(m(x))

    grads = nnx.grad(loss)(model)
    w, b = model.first.kernel.value, model.first.bias.value

    def ref(w, b):
        h = x @ w + b
        return jnp.sum(h @ w + b)

    gw, gb = jax.grad(ref, argnums=(0, 1))(w, b)
    np.testing.assert_allclose(grads["first"]["kernel"], gw, rtol=1e-6)
    np.testing.assert_allclose(grads["first"]["bias"], gb, rtol=1e-6)


def test_reference_cycle_roundtrip():
    parent = nnx.Module()
    child = nnx.Module()
    parent.child = child
    child.parent = parent
    child.w = nnx.Param(jnp.ones(2))
    graphdef, state = nnx.split(parent)
    copy = nnx.merge(graphdef, state)
    assert copy.child.parent is copy
    np.testing.assert_array_equal(copy.child.w.value, jnp.ones(2))


def test_graphdef_hashable_equal_across_structurally_equal_models():
    a = nnx.graphdef(MLP([2, 3], ctx=nnx.context(0)))
    b = nnx.graphdef(MLP([2, 3], ctx=nnx.context(1)))
    c = nnx.graphdef(MLP([2, 4], ctx=nnx.context(0)))
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert jax.tree_util.tree_leaves(a) == []
    assert {a: 1}[b] == 1


def test_graphdef_is_static_for_jit_and_vmap():
    model = MLP([2, 3], ctx=nnx.context(0))
    graphdef, state = nnx.split(model)

    @partial(jax.jit, static_argnums=0)
    def apply(graphdef, state, x):
        return nnx.merge(graphdef, state)(x)

    x = jnp.ones((1, 2))
    np.testing.assert_allclose(apply(graphdef, state, x), model(x), rtol=1e-6)

    @partial(jax.vmap, out_axes=(None, 0))
    def create(key):
        gd, st = nnx.split(nnx.Linear(2, 2, ctx=nnx.context(key)))
        return gd, st

    gd, stacked = create(jax.random.split(jax.random.PRNGKey(0), 4))
    assert gd == nnx.graphdef(nnx.Linear(2, 2, ctx=nnx.context(0)))
    stacked_layer = nnx.merge(gd, stacked)
    assert stacked_layer.kernel.shape == (4, 2, 2)


def test_merge_inside_scan_body():
    layers = nnx.merge(*nnx.split(nnx.Linear(3, 3, ctx=nnx.context(0))))
    graphdef, params = nnx.split(layers)
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)

    def body(x, p):
        return nnx.merge(graphdef, p)(x), None

    x = jnp.ones((1, 3))
    y, _ = jax.lax.scan(body, x, stacked)
    ref = x
    for i in range(2):
        ref = ref @ stacked["kernel"][i] + stacked["bias"][i]
    np.testing.assert_allclose(y, ref, rtol=1e-6)


def test_partition_multi_filter_must_be_complete():
    model = nnx.BatchNorm(2, ctx=nnx.context(0))
    model.extra = nnx.Cache(jnp.zeros(1))
    with pytest.raises(ValueError, match=r"extra") as info:
        model.partition(nnx.Param, nnx.BatchStat)
    assert "`...`" in str(info.value)
    (params, stats, rest), _ = model.partition(nnx.Param, nnx.BatchStat, ...)
    assert rest.paths() == (("extra",),)


def test_partition_single_filter_returns_matching_and_merge_names_missing():
    model = nnx.BatchNorm(2, ctx=nnx.context(0))
    params, moduledef = model.partition(nnx.Param)
    assert set(params.paths()) == {("bias",), ("scale",)}
    with pytest.raises(ValueError, match=r"missing \(2\): mean, var"):
        moduledef.merge(params)


def test_merge_reports_missing_and_extra_paths():
    graphdef, state = nnx.split(nnx.Linear(2, 2, ctx=nnx.context(0)))
    bad = nnx.State({"kernel": state["kernel"], "oops": jnp.zeros(1)})
    with pytest.raises(ValueError) as info:
        nnx.merge(graphdef, bad)
    text = str(info.value)
    assert "missing (1): bias" in text and "unexpected (1): oops" in text


def test_update_validates_everything_before_writing():
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    before = nnx.state(model).flat()
    bad = {"bias": jnp.ones(3), "kernel": jnp.ones((3, 2)), "nope": jnp.ones(1)}
    with pytest.raises(ValueError) as info:
        nnx.update(model, bad)
    text = str(info.value)
    assert "kernel: expected shape (2, 3), found (3, 2)" in text
    assert "unknown paths (1): nope" in text
    # Nothing half-applied: the valid bias write did not happen either.
    after = nnx.state(model).flat()
    for p in before:
        np.testing.assert_array_equal(before[p], after[p])


def test_update_rejects_dtype_change():
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    with pytest.raises(ValueError, match=r"bias: expected dtype float32, found int32"):
        nnx.update(model, {"bias": jnp.ones(3, jnp.int32)})


def test_update_accepts_alias_path_of_shared_variable():
    model = Tied(ctx=nnx.context(0))
    nnx.update(model, {"second": {"bias": jnp.full(3, 7.0)}})
    np.testing.assert_array_equal(model.first.bias.value, jnp.full(3, 7.0))


def test_state_with_filters_and_tuple_result():
    model = nnx.BatchNorm(2, ctx=nnx.context(0))
    params, stats = nnx.state(model, nnx.Param, nnx.BatchStat)
    assert set(params.paths()) == {("bias",), ("scale",)}
    assert set(stats.paths()) == {("mean",), ("var",)}


def test_clone_is_independent_deep_copy():
    model = Tied(ctx=nnx.context(0))
    other = nnx.clone(model)
    assert other.first is other.second and other.first is not model.first
    other.first.bias.value = jnp.ones(3)
    assert float(model.first.bias.value.sum()) == 0.0


def test_pop_removes_from_modules_and_dicts():
    model = nnx.Module()
    model.store = {"a": nnx.Intermediate(1.0), "keep": nnx.Param(2.0)}
    model.note = nnx.Intermediate(3.0)
    popped = nnx.pop(model, nnx.Intermediate)
    assert popped.flat() == {("note",): 3.0, ("store", "a"): 1.0}
    assert not hasattr(model, "note") and list(model.store) == ["keep"]


def test_iter_graph_visits_each_object_once():
    model = Tied(ctx=nnx.context(0))
    paths = [p for p, _ in nnx.iter_graph(model)]
    assert paths == [(), ("first",), ("first", "bias"), ("first", "kernel")]


def test_unhashable_static_attribute_error_names_path():
    model = nnx.Module()
    model.sub = nnx.Module()
    model.sub.table = {1, 2}.__class__  # hashable: fine
    model.sub.pair = (jnp.zeros(3), 1)  # arrays inside a tuple are not state (flax refuses too)
    with pytest.raises(TypeError, match=r"sub/pair: unhashable tuple.*nnx.List.*Variable"):
        nnx.split(model)
    model.sub.pair = bytearray(b"x")
    with pytest.raises(TypeError, match=r"sub/pair: unhashable bytearray.*nnx.data"):
        nnx.split(model)


def test_split_rejects_non_graph_root():
    with pytest.raises(TypeError, match="Expected a Module"):
        nnx.split(3)


def test_variable_root_and_list_root():
    gd, st = nnx.split(nnx.Param(jnp.ones(2)))
    assert isinstance(nnx.merge(gd, st), nnx.Param)
    layers = [nnx.Linear(1, 1, ctx=nnx.context(0)), nnx.Linear(1, 1, ctx=nnx.context(1))]
    gd, st = nnx.split(layers)
    out = nnx.merge(gd, st)
    assert isinstance(out, list) and len(out) == 2


def test_tuples_with_modules_and_namedtuples():
    from typing import NamedTuple

    class Pair(NamedTuple):
        a: object
        b: object

    root = nnx.Module()
    lin = nnx.Linear(1, 1, ctx=nnx.context(0))
    root.pair = Pair(lin, (lin, 3))
    root.size = (3, 3)
    gd, st = nnx.split(root)
    copy = nnx.merge(gd, st)
    assert type(copy.pair) is Pair and copy.pair.a is copy.pair.b[0]
    assert copy.pair.b[1] == 3 and copy.size == (3, 3)


def test_shared_tuple_inside_a_later_tuple():
    lin = nnx.Linear(1, 1, ctx=nnx.context(0))
    shared = (lin,)
    root = nnx.Module()
    root.a = shared
    root.b = (shared, 3)
    copy = nnx.merge(*nnx.split(root))
    assert copy.b[0] is copy.a and copy.a[0] is not lin
    assert isinstance(copy.a[0], nnx.Linear) and copy.b[1] == 3


def test_tuples_around_a_cycle():
    parent = nnx.Module()
    parent.children = ((parent, nnx.Param(1.0)),)
    copy = nnx.merge(*nnx.split(parent))
    assert copy.children[0][0] is copy and float(copy.children[0][1].value) == 1.0


def test_variable_metadata_roundtrip_and_in_state_structure():
    root = nnx.Module()
    root.w = nnx.Param(jnp.ones((2, 2)), sharding=("embed", "mlp"))
    gd, st = nnx.split(root)
    assert nnx.merge(gd, st).w.sharding_names == ("embed", "mlp")
    (path, var), = st.variables()
    assert isinstance(var, nnx.Param) and var.sharding_names == ("embed", "mlp")


# --- the cache must never be stale -----------------------------------------------------
def _param_count(model):
    return len(nnx.state(model, nnx.Param).paths())


def test_cache_sees_replaced_field():
    model = MLP([2, 3, 4], ctx=nnx.context(0))
    gd1 = nnx.graphdef(model)
    model.layers[1] = nnx.Linear(3, 5, ctx=nnx.context(1))
    assert nnx.state(model)["layers"][1]["kernel"].shape == (3, 5)
    assert nnx.graphdef(model) is not gd1
    model.act = jax.nn.gelu
    assert nnx.merge(*nnx.split(model)).act is jax.nn.gelu


def test_cache_sees_list_append_and_assignment():
    model = MLP([2, 3], ctx=nnx.context(0))
    assert _param_count(model) == 2
    model.layers.append(nnx.Linear(3, 3, ctx=nnx.context(1)))
    assert _param_count(model) == 4
    model.layers += [nnx.Linear(3, 3, ctx=nnx.context(2))]
    assert _param_count(model) == 6
    del model.layers[0]
    assert _param_count(model) == 4
    model.layers = [nnx.Linear(2, 2, ctx=nnx.context(3))]
    assert _param_count(model) == 2


def test_cache_sees_repointed_shared_reference():
    model = Tied(ctx=nnx.context(0))
    assert len(nnx.state(model).paths()) == 2
    model.second = nnx.Linear(3, 3, ctx=nnx.context(1))  # un-tie
    assert len(nnx.state(model).paths()) == 4
    model.second = model.first  # re-tie
    assert len(nnx.state(model).paths()) == 2


def test_cache_sees_nested_dict_and_metadata_edits():
    model = nnx.Module()
    model.blocks = {"a": nnx.Linear(1, 1, ctx=nnx.context(0))}
    assert _param_count(model) == 2
    model.blocks["b"] = nnx.Linear(1, 1, ctx=nnx.context(1))
    assert _param_count(model) == 4
    model.blocks["a"].kernel.set_metadata(sharding=("x", None))
    gd, st = nnx.split(model)
    assert nnx.merge(gd, st).blocks["a"].kernel.sharding_names == ("x", None)


def test_value_edits_keep_cache_and_are_seen():
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    gd = nnx.graphdef(model)
    model.kernel.value = jnp.zeros((2, 2))
    assert nnx.graphdef(model) is gd  # not a structural change
    assert float(nnx.state(model)["kernel"].sum()) == 0.0


def test_eval_train_change_static_attributes_in_graphdef():
    model = nnx.Sequence([nnx.Linear(2, 2, ctx=nnx.context(0)), nnx.Dropout(0.5)])
    gd_train = nnx.graphdef(model)
    model.eval()
    gd_eval = nnx.graphdef(model)
    assert gd_train != gd_eval
    assert nnx.merge(gd_eval, nnx.state(model)).layers[1].deterministic is True
