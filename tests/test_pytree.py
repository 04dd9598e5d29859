"""Modules are JAX pytrees (issue 8, item 5): flax 0.12's rules, nnxlite's shared references.

Each behaviour is checked in nnxlite's spelling and, where flax spells it the
same way, against flax.nnx itself (skipped when flax is not installed).
"""

from __future__ import annotations

import dataclasses
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx


def _flax():
    return pytest.importorskip("flax.nnx")


def leaves_by_path(tree) -> dict:
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Shared(nnx.Module):
    def __init__(self):
        self.x = jnp.array(1.0)


class Parent(nnx.Module):
    def __init__(self):
        self.left = Shared()
        self.right = self.left


# ------------------------------------------------------------------------------------
# jax.tree.* and plain jax.jit
# ------------------------------------------------------------------------------------
def test_leaves_and_key_paths_match_flax():
    fnnx = _flax()
    ours = nnx.Sequence([nnx.Linear(2, 3, ctx=nnx.context(0))])
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    theirs = fnnx.Linear(2, 3, rngs=fnnx.Rngs(0))
    assert list(leaves_by_path(model)) == list(leaves_by_path(theirs)) == [".bias.value", ".kernel.value"]
    assert [x.shape for x in jax.tree.leaves(model)] == [x.shape for x in jax.tree.leaves(theirs)]
    assert list(leaves_by_path(ours)) == [".layers[0].bias.value", ".layers[0].kernel.value"]


def test_tree_map_builds_a_new_module_and_leaves_the_old_one():
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    doubled = jax.tree.map(lambda x: x * 2, model)
    assert type(doubled) is nnx.Linear and doubled is not model
    assert doubled.kernel is not model.kernel and isinstance(doubled.kernel, nnx.Param)
    np.testing.assert_allclose(doubled.kernel.value, 2 * model.kernel.value)
    assert doubled.in_features == 2 and doubled.dtype == model.dtype  # static attributes carried over


def test_tree_map_with_is_leaf_sees_variables_as_in_flax():
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    kinds = jax.tree.map(lambda v: type(v).__name__, model, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert kinds.kernel == "Param" and kinds.bias == "Param"


def test_plain_jax_jit_calls_a_module_with_static_dtype():
    # issue 8 item 6: this failed with "'DynamicJaxprTracer' object is not callable".
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    x = jnp.ones((4, 2))
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(model, x), model(x), rtol=1e-6)


def test_plain_jax_jit_works_on_a_copy_and_nnx_jit_writes_back():
    bn = nnx.BatchNorm(2, ctx=nnx.context(0))
    x = jnp.arange(8.0).reshape(4, 2)
    jax.jit(lambda m, x: m(x))(bn, x)
    assert float(jnp.abs(bn.mean.value).sum()) == 0.0  # JAX's rule: the update stayed inside
    nnx.jit(lambda m, x: m(x))(bn, x)
    assert float(jnp.abs(bn.mean.value).sum()) > 0.0


def test_plain_jax_grad_and_vmap_over_a_module():
    model = nnx.Linear(2, 1, ctx=nnx.context(0))
    x = jnp.ones((3, 2))
    grads = jax.grad(lambda m: jnp.sum(m(x)))(model)
    assert isinstance(grads, nnx.Linear)
    np.testing.assert_allclose(grads.kernel.value, jnp.full((2, 1), 3.0))
    stacked = jax.vmap(lambda _: nnx.Linear(2, 1, ctx=nnx.context(0)))(jnp.arange(4))
    assert stacked.kernel.shape == (4, 2, 1)


# ------------------------------------------------------------------------------------
# Shared references: better than flax inside one root, documented across roots
# ------------------------------------------------------------------------------------
def test_sharing_inside_one_root_survives_flatten_and_jit():
    m = Parent()
    assert len(jax.tree.leaves(m)) == 1  # the shared sub-module is one leaf, not two
    out = jax.tree.map(lambda x: x + 1, m)
    assert out.left is out.right and float(out.left.x) == 2.0

    @jax.jit
    def f(m):
        assert m.left is m.right
        return m

    out = f(m)
    assert out.left is out.right


def test_flax_tree_mode_duplicates_what_nnxlite_keeps_shared():
    fnnx = _flax()

    class FShared(fnnx.Module):
        def __init__(self):
            self.x = jnp.array(1.0)

    class FParent(fnnx.Module):
        def __init__(self):
            self.left = FShared()
            self.right = self.left

    theirs = jax.jit(lambda m: m)(FParent())
    ours = jax.jit(lambda m: m)(Parent())
    assert theirs.left is not theirs.right  # flax: a duplicate
    assert ours.left is ours.right


def test_cycles_survive_a_round_trip():
    a = nnx.Module()
    a.w = nnx.Param(jnp.ones(2))
    a.me = a
    b = jax.tree.map(lambda x: x * 3, a)
    assert b.me is b and float(b.w.value[0]) == 3.0


def test_sharing_across_separate_roots_is_not_kept():
    m = Parent()
    first, second = jax.tree.map(lambda x: x, [m, m])
    assert first is not second  # two roots: flattened separately, so two copies
    assert first.left is first.right  # each copy keeps its own internal sharing


def test_nnx_transforms_still_see_modules_as_graph_nodes():
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    seen = []

    @nnx.jit
    def f(pair):
        seen.append(type(pair[0]).__name__)
        return pair[0] is pair[1]

    assert bool(f((model, model)))  # one graph across the arguments: still shared
    assert seen == ["Linear"]
    assert nnx.jit(lambda m: m)(model) is model  # identity preserved, unlike plain jax.jit


# ------------------------------------------------------------------------------------
# Plain array attributes are state
# ------------------------------------------------------------------------------------
class WithArrays(nnx.Module):
    def __init__(self):
        self.count = jnp.zeros(())
        self.table = [jnp.ones(2), 3]
        self.linear = nnx.Linear(2, 2, ctx=nnx.context(0))
        self.name = "arrays"


def test_array_attributes_are_state_and_merge_back_unboxed():
    model = WithArrays()
    graphdef, state = nnx.split(model)
    assert set(state.paths()) >= {("count",), ("table", 0)} and ("table", 1) not in state.paths()
    copy = nnx.merge(graphdef, state)
    assert type(copy.count) is type(model.count) and copy.table[1] == 3 and copy.name == "arrays"
    assert ("count",) not in nnx.state(model, nnx.Param).paths()  # Variable filters skip plain data
    assert ("count",) in nnx.state(model, ...).paths()


def test_flax_also_treats_array_attributes_as_state():
    fnnx = _flax()

    class F(fnnx.Module):
        def __init__(self):
            self.count = jnp.zeros(())
            self.name = "arrays"

    class N(nnx.Module):
        def __init__(self):
            self.count = jnp.zeros(())
            self.name = "arrays"

    assert list(leaves_by_path(F())) == list(leaves_by_path(N())) == [".count"]
    assert [p for p, _ in fnnx.to_flat_state(fnnx.state(F()))] == [("count",)]
    assert nnx.state(N()).paths() == (("count",),)


def test_update_and_nnx_jit_write_array_attributes_back():
    model = WithArrays()
    nnx.update(model, {"count": jnp.ones(())})
    assert float(model.count) == 1.0

    @nnx.jit
    def step(m):
        m.count = m.count + 1
        m.table[0] = m.table[0] * 2
        return m.linear(jnp.ones((1, 2)))

    step(model)
    step(model)
    assert float(model.count) == 3.0 and model.table[0].tolist() == [4.0, 4.0]


def test_nnx_grad_defaults_to_params_and_skips_array_attributes():
    model = WithArrays()
    grads = nnx.grad(lambda m: jnp.sum(m.linear(jnp.ones((1, 2)))) + m.count)(model)
    assert ("count",) not in grads.paths() and ("linear", "kernel") in grads.paths()


def test_arrays_inside_a_tuple_still_raise_a_clear_error():
    model = nnx.Module()
    model.pair = (jnp.ones(2), 1)
    with pytest.raises(TypeError, match=r"pair: unhashable tuple.*nnx.List"):
        nnx.split(model)


# ------------------------------------------------------------------------------------
# nnx.data / nnx.static / is_data / register_data_type / dataclass, against flax
# ------------------------------------------------------------------------------------
def _both(build):
    """Run ``build(nnx_like)`` with nnxlite and with flax; return both results (flax may be None)."""
    ours = build(nnx)
    try:
        from flax import nnx as fnnx
    except ImportError:
        return ours, None
    return ours, build(fnnx)


def test_explicit_data_and_static_match_flax():
    def build(lib):
        class Bar(lib.Pytree):
            def __init__(self, x):
                self.x = lib.data(x)
                self.y = lib.data(42)
                self.ls = lib.List([jnp.array(i) for i in range(3)])
                self.bias = lib.data(None)
                self.n = lib.static(3)
                self.s = "hello"

        return leaves_by_path(Bar(1.0))

    ours, theirs = _both(build)
    assert list(ours) == [".ls[0]", ".ls[1]", ".ls[2]", ".x", ".y"]
    if theirs is not None:
        assert list(ours) == list(theirs)


def test_status_is_sticky_and_annotations_override_it_as_in_flax():
    def build(lib):
        class Foo(lib.Pytree):
            def __init__(self):
                self.a = jnp.array(1.0)
                self.b = "Hello"
                self.c = lib.data(3.14)

        foo = Foo()
        before = list(leaves_by_path(foo))
        foo.a = "now a string"  # stays data
        foo.b = lib.data(42)
        foo.c = lib.static(0.5)
        return before, leaves_by_path(foo)

    (before, after), theirs = _both(build)
    assert before == [".a", ".c"] and after == {".a": "now a string", ".b": 42}
    if theirs is not None:
        assert theirs[0] == before and theirs[1] == after


def test_dataclass_fields_match_flax():
    def build(lib):
        @lib.dataclass
        class Foo(lib.Pytree):
            i: int = lib.data()
            x: jax.Array
            a: int
            s: str = lib.static(default="hi", kw_only=True)

        @dataclasses.dataclass
        class Bar(lib.Pytree):
            a: int = dataclasses.field(metadata={"static": False})
            b: str = dataclasses.field(metadata={"static": True})

        return leaves_by_path(Foo(1, jnp.array(42), 7)), leaves_by_path(Bar(10, "x"))

    (foo, bar), theirs = _both(build)
    assert list(foo) == [".i", ".x"] and bar == {".a": 10}
    if theirs is not None:
        assert list(theirs[0]) == list(foo) and theirs[1] == bar


@pytest.mark.parametrize(
    "value, expected",
    [
        (jnp.array(0), True),
        (np.ones(2), True),
        (nnx.Param(1), True),
        ("hello", False),
        (42, False),
        ([1, 2.0, jnp.array(1)], False),
    ],
)
def test_is_data_rules(value, expected):
    assert nnx.is_data(value) is expected


def test_is_data_agrees_with_flax_on_nodes():
    fnnx = _flax()
    assert nnx.is_data(nnx.Rngs(0)) is fnnx.is_data(fnnx.Rngs(0)) is True
    assert nnx.is_data(nnx.List([])) is fnnx.is_data(fnnx.List([])) is True


def test_register_data_type():
    @nnx.register_data_type
    @dataclasses.dataclass(frozen=True)
    class Scale:
        value: float

    class Foo(nnx.Module):
        def __init__(self):
            self.scale = Scale(2.0)
            self.other = "static"

    assert jax.tree.leaves(Foo()) == [Scale(2.0)] and nnx.is_data(Scale(1.0))


def test_static_errors_match_flax():
    def build(lib):
        class Foo(lib.Pytree):
            def __init__(self, name):
                self.name = lib.static(name)

        errors = []
        for make in (
            lambda: Foo(jnp.array(123)),  # data in an nnx.static value
            lambda: setattr(Foo("ok"), "name", jnp.array(1)),  # data into a known static attribute
        ):
            with pytest.raises(ValueError) as info:
                make()
            errors.append(str(info.value))
        return errors

    ours, _ = _both(build)
    assert "Foo.name is marked nnx.static" in ours[0] and "nnx.data(...)" in ours[0]
    assert "Foo.name is marked nnx.static" in ours[1]


def test_markers_inside_containers_are_rejected():
    class Foo(nnx.Module):
        def __init__(self):
            self.a = [nnx.data(1), nnx.static(2)]

    with pytest.raises(ValueError, match=r"Foo.a: nnx.data\(...\)/nnx.static\(...\) markers found inside a list"):
        Foo()


class Counter(nnx.Module):
    def __init__(self):
        self.count = nnx.data(0)


def test_statuses_survive_merge_and_pickle():
    c = Counter()
    gd, st = nnx.split(c)
    assert st.paths() == (("count",),)
    for copy in (nnx.merge(gd, st), pickle.loads(pickle.dumps(c))):
        assert nnx.state(copy).paths() == (("count",),) and nnx.graphdef(copy) == gd


# ------------------------------------------------------------------------------------
# Object / pytree=False
# ------------------------------------------------------------------------------------
def test_object_and_pytree_false_are_graph_nodes_but_jax_leaves():
    class Box(nnx.Object):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))

    class Layer(nnx.Module, pytree=False):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))

    class Child(Layer):  # inherits pytree=False
        pass

    for obj in (Box(), Layer(), Child()):
        assert jax.tree.leaves(obj) == [obj]
        assert nnx.state(obj).paths() == (("w",),)

        @nnx.jit
        def double(o):
            o.w.value = o.w.value * 2

        double(obj)
        assert obj.w.value.tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="never pytrees"):

        class Bad(nnx.Object, pytree=True):
            pass


def test_flax_object_is_not_a_pytree_either():
    fnnx = _flax()

    class Box(fnnx.Object):
        def __init__(self):
            self.w = fnnx.Param(jnp.ones(2))

    box = Box()
    assert jax.tree.leaves(box) == [box]


def test_nnx_jit_propagates_new_and_replaced_array_attributes():
    model = WithArrays()

    @nnx.jit
    def grow(m):
        m.extra = jnp.ones(3)  # a structural change: a new data attribute
        m.count = m.count + 1
        m.table.append(jnp.zeros(1))
        return m

    out = grow(model)
    assert out is model
    assert type(model.extra) is type(model.count) and model.extra.tolist() == [1.0, 1.0, 1.0]
    assert float(model.count) == 1.0 and model.table[2].tolist() == [0.0]
    grads = nnx.grad(lambda m: jnp.sum(m.linear(jnp.ones((1, 2)))) * m.count)(model)
    assert ("linear", "kernel") in grads.paths()
    lanes = nnx.vmap(lambda m: m.count * 2, in_axes=None, axis_size=2)(model)
    assert lanes.tolist() == [2.0, 2.0]
