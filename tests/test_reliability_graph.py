"""Reliability of the graph core (issue 10): deep graphs, exact static comparison,
containers, threads, update checks, filters through shared sub-modules, clone.

Each test here failed on the code before the fix it guards.
"""

import collections
import sys
import threading
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlite as nnx
from nnxlite import graph


class Node(nnx.Module):
    pass


def deep_chain(depth: int) -> Node:
    """``root.next.next...`` ``depth`` levels deep, with a Variable at the bottom and the top."""
    root = Node()
    root.w = nnx.Param(jnp.arange(3.0))
    node = root
    for _ in range(depth):
        child = Node()
        node.next = child
        node = child
    node.leaf = nnx.Param(jnp.ones(2))
    return root


def bottom(root: Node) -> Node:
    node = root
    while "next" in vars(node):
        node = node.next
    return node


# ---------------------------------------------------------------------------------
# 14. Deep graphs
# ---------------------------------------------------------------------------------
DEPTH = 100_000


@pytest.fixture(scope="module")
def chain():
    return deep_chain(DEPTH)


def test_split_merge_state_graphdef_of_a_100k_deep_chain(chain):
    gd, st = nnx.split(chain)
    assert len(st.paths()) == 2 and len(gd.nodes) == DEPTH + 1
    assert st.paths()[0] == ("next",) * DEPTH + ("leaf",)
    assert nnx.graphdef(chain) is gd  # cached
    copy = nnx.merge(gd, st)
    assert bottom(copy).leaf.value.tolist() == [1.0, 1.0]
    assert nnx.state(chain, nnx.Param).paths() == st.paths()


def test_clone_and_update_of_a_100k_deep_chain(chain):
    twin = nnx.clone(chain)
    assert bottom(twin) is not bottom(chain)
    nnx.update(twin, {("next",) * DEPTH + ("leaf",): jnp.full(2, 5.0)})
    assert bottom(twin).leaf.value.tolist() == [5.0, 5.0]
    assert bottom(chain).leaf.value.tolist() == [1.0, 1.0]


def test_repr_of_a_100k_deep_chain_is_elided(chain):
    text = repr(chain)
    assert text.startswith("Node(\n  next=Node(")
    assert "Node(...)" in text and len(text) < 100_000
    assert text.rstrip().endswith("Param: 5 (20 B)")


def test_deep_cycle_and_deep_tuples_merge():
    root = deep_chain(5_000)
    bottom(root).back = root  # a cycle through 5,000 levels
    nested = (nnx.Param(jnp.zeros(1)),)
    for _ in range(1_500):
        nested = (nested, 1)
    root.nested = nested
    gd, st = nnx.split(root)
    copy = nnx.merge(gd, st)
    assert bottom(copy).back is copy
    inner = copy.nested
    for _ in range(1_500):
        inner = inner[0]
    assert isinstance(inner[0], nnx.Param)


def test_20000_leaf_model_round_trips():
    model = nnx.Module()
    model.items = [nnx.Variable(np.full((2,), i, np.float32)) for i in range(20_000)]
    gd, st = nnx.split(model)
    assert len(st.paths()) == 20_000
    copy = nnx.merge(gd, st)
    assert float(copy.items[19_999].value[0]) == 19_999.0
    twin = nnx.clone(model)
    nnx.update(twin, jax.tree.map(lambda x: x + 1, nnx.state(twin)))
    assert float(twin.items[7].value[0]) == 8.0 and float(model.items[7].value[0]) == 7.0


# ---------------------------------------------------------------------------------
# 5. Static values compare by type and value
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b", [(0.0, -0.0), (2, 2.0), (1, True), ((1, 2), (1.0, 2)), (np.float32(0), np.float32(-0.0))])
def test_graphdefs_with_equal_statics_of_other_type_differ(a, b):
    m1, m2 = nnx.Module(), nnx.Module()
    m1.s, m2.s = a, b
    g1, g2 = nnx.graphdef(m1), nnx.graphdef(m2)
    assert g1 != g2


def test_graphdef_equality_still_holds_for_the_same_values():
    m1, m2 = nnx.Module(), nnx.Module()
    m1.s, m2.s = (3, 0.5, -0.0, True), (3, 0.5, -0.0, True)
    assert nnx.graphdef(m1) == nnx.graphdef(m2)
    assert hash(nnx.graphdef(m1)) == hash(nnx.graphdef(m2))


def test_metadata_of_another_type_gives_another_graphdef():
    a = nnx.Module()
    a.p = nnx.Param(jnp.ones(1), scale=1)
    b = nnx.Module()
    b.p = nnx.Param(jnp.ones(1), scale=True)
    assert nnx.graphdef(a) != nnx.graphdef(b)


# ---------------------------------------------------------------------------------
# 6. Containers: track exactly, convert, or refuse
# ---------------------------------------------------------------------------------
def test_ordered_dict_attribute_becomes_a_tracked_dict_and_survives_merge_and_clone():
    m = nnx.Module()
    m.layers = collections.OrderedDict(b=nnx.Param(jnp.ones(1)), a=nnx.Param(jnp.zeros(1)))
    assert isinstance(m.layers, nnx.Dict) and list(m.layers) == ["b", "a"]
    for copy in (nnx.merge(*nnx.split(m)), nnx.clone(m)):
        assert list(copy.layers) == ["b", "a"]
        assert float(copy.layers["b"].value[0]) == 1.0
    m.layers["c"] = nnx.Param(jnp.ones(1))
    assert len(nnx.state(m).paths()) == 3


def test_defaultdict_and_foreign_subclasses_are_refused_on_assignment():
    class MyList(list):
        pass

    m = nnx.Module()
    with pytest.raises(TypeError, match="Module.counts: A defaultdict .*setdefault"):
        m.counts = collections.defaultdict(int)
    with pytest.raises(TypeError, match="MyList .*a list subclass"):
        m.items = MyList([nnx.Param(1.0)])
    with pytest.raises(TypeError, match="defaultdict"):
        m.d = nnx.Dict()
        m.d["x"] = collections.defaultdict(list)


def test_namedtuple_holding_a_list_tracks_edits():
    class Pair(NamedTuple):
        items: list
        tag: str

    m = nnx.Module()
    m.pair = Pair([nnx.Param(jnp.ones(1))], "t")
    assert isinstance(m.pair.items, nnx.List)
    assert len(nnx.state(m).paths()) == 1
    m.pair.items.append(nnx.Param(jnp.ones(1)))
    assert len(nnx.state(m).paths()) == 2
    copy = nnx.clone(m)
    assert type(copy.pair) is Pair and copy.pair.tag == "t" and len(copy.pair.items) == 2


def test_untracked_containers_found_in_a_graph_are_refused_with_their_path():
    m = nnx.Module()
    m.__dict__["sneaky"] = [nnx.Param(1.0)]  # bypasses Module.__setattr__: edits would go unseen
    with pytest.raises(TypeError, match="sneaky: list. A plain list inside a module is not tracked"):
        nnx.split(m)
    with pytest.raises(TypeError, match="OrderedDict is a dict subclass"):
        nnx.split(collections.OrderedDict(a=nnx.Param(1.0)))


def test_reassigning_a_variables_class_is_structural():
    m = nnx.Linear(2, 2, ctx=nnx.context(0))
    assert len(nnx.state(m, nnx.BatchStat).paths()) == 0
    m.bias.__class__ = nnx.BatchStat
    assert nnx.state(m, nnx.BatchStat).paths() == (("bias",),)
    assert type(m.bias) is nnx.BatchStat and m.bias.__class__ is nnx.BatchStat


# ---------------------------------------------------------------------------------
# 9b. A traversal racing with an edit never leaves a stale cache
# ---------------------------------------------------------------------------------
def test_concurrent_edit_and_split_leave_no_stale_cache():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        stale = 0
        for trial in range(30):
            model = nnx.Module()
            model.items = [nnx.Param(jnp.zeros(())) for _ in range(200)]
            stop = threading.Event()

            def reader():
                while not stop.is_set():
                    nnx.split(model)

            t = threading.Thread(target=reader)
            t.start()
            for _ in range(20):
                model.items.append(nnx.Param(jnp.zeros(())))
            stop.set()
            t.join()
            seen = len(nnx.state(model).paths())
            stale += seen != len(model.items)
        assert stale == 0
    finally:
        sys.setswitchinterval(old)


# ---------------------------------------------------------------------------------
# 10. update refuses what restore refuses, and writes nothing then
# ---------------------------------------------------------------------------------
def leaked_tracer():
    box = []
    jax.jit(lambda x: box.append(x) or x)(jnp.ones(3))
    return box[0]


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda: leaked_tracer(), "already finished"),
        (lambda: [[1.0, 2.0, 3.0]], "expected an array float32\\[3\\], found list"),
        (lambda: "abc", "found str 'abc'"),
        (lambda: None, "found NoneType None"),
        (lambda: 3, "found int 3"),
        (lambda: jax.ShapeDtypeStruct((3,), jnp.float32), "ShapeDtypeStruct"),
    ],
)
def test_update_refuses_non_arrays_and_leaks_and_writes_nothing(bad, message):
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    before = nnx.state(model).to_pure_dict()  # the values (a State holds the live Variables)
    with pytest.raises(ValueError, match=message) as info:
        nnx.update(model, {"kernel": jnp.zeros((2, 3)), "bias": bad()})
    assert "bias" in str(info.value) and "nothing was written" in str(info.value)
    assert model.kernel.value is before["kernel"] and model.bias.value is before["bias"]


def test_update_still_accepts_numpy_and_live_tracers():
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    nnx.update(model, {"bias": np.ones(3, np.float32)})
    assert model.bias.value.tolist() == [1.0, 1.0, 1.0]

    @jax.jit
    def f(st):
        m = nnx.merge(gd, st)
        nnx.update(m, {"bias": st["bias"] * 2})
        return nnx.state(m)

    gd, st = nnx.split(model)
    assert f(st)["bias"].tolist() == [2.0, 2.0, 2.0]
    abstract = nnx.eval_shape(lambda: nnx.Linear(2, 3, ctx=nnx.context(0)))
    nnx.update(abstract, {"bias": jax.ShapeDtypeStruct((3,), jnp.float32)})  # abstract into abstract is fine


# ---------------------------------------------------------------------------------
# 12. Filters see every path of a shared sub-module; repr agrees with State
# ---------------------------------------------------------------------------------
class Net(nnx.Module):
    def __init__(self):
        ctx = nnx.context(0)
        self.blocks = [nnx.Linear(2, 2, ctx=ctx), nnx.Linear(2, 2, ctx=ctx)]
        self.enc = self.blocks[1]  # also reachable as blocks/1
        self.head = nnx.Linear(2, 1, ctx=ctx)


def test_path_filter_matches_a_shared_module_through_any_path():
    net = Net()
    enc = nnx.state(net, nnx.PathContains("enc"))
    assert enc.paths() == (("blocks", 1, "bias"), ("blocks", 1, "kernel"))  # stored under the canonical path
    excluded = nnx.state(net, nnx.Not(nnx.PathContains("enc")))
    assert ("blocks", 1, "kernel") not in excluded.paths() and ("blocks", 0, "kernel") in excluded.paths()
    custom = nnx.state(net, lambda path, v: path[:1] == ("enc",))
    assert len(custom.paths()) == 2


def test_optimizer_trains_a_shared_module_selected_by_another_path():
    net = Net()
    wrt = nnx.All(nnx.Param, nnx.PathContains("enc"))
    opt = nnx.Optimizer(net, optax.sgd(1.0), wrt=wrt)
    grads = jax.tree.map(jnp.ones_like, nnx.state(net, wrt))
    before = net.enc.kernel.value
    opt.update(grads)
    assert np.allclose(net.enc.kernel.value, before - 1.0)
    assert np.allclose(net.blocks[1].kernel.value, before - 1.0)


def test_repr_prints_a_shared_module_in_full_at_its_canonical_path():
    text = repr(Net())
    assert "enc=<shared Linear at blocks/1>" in text
    assert text.count("Linear(in_features=2, out_features=2)") == 2  # blocks 0 and 1, in full


def test_path_enumeration_has_a_clear_limit():
    # A chain of diamonds: 2**20 paths to the bottom Variable.
    root = node = nnx.Module()
    for _ in range(20):
        nxt = nnx.Module()
        node.a, node.b = nxt, nxt
        node = nxt
    node.w = nnx.Param(jnp.ones(1))
    assert len(nnx.state(root, nnx.PathContains("a")).paths()) == 1  # canonical path matches at once
    with pytest.raises(ValueError, match="more than 10000 paths"):
        nnx.state(root, nnx.PathContains("zzz"))


# ---------------------------------------------------------------------------------
# 2. clone is an independent copy
# ---------------------------------------------------------------------------------
def test_clone_owns_its_buffers():
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    model.count = nnx.Variable(np.zeros(2))
    twin = nnx.clone(model)
    assert twin.kernel.value is not model.kernel.value and twin.count.value is not model.count.value
    expected = np.asarray(model.kernel.value)
    model.kernel.value.delete()
    model.count.value[0] = 5
    np.testing.assert_array_equal(np.asarray(twin.kernel.value), expected)
    assert twin.count.value[0] == 0


def test_transform_snapshot_survives_deleting_the_original():
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    init_fn, apply_fn = nnx.transform(model)
    expected = np.asarray(model.kernel.value)
    model.kernel.value.delete()
    params = init_fn()
    np.testing.assert_array_equal(np.asarray(params["kernel"]), expected)
