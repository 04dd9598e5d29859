"""Module: attribute handling, containers, repr, modes, seed-style methods."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx


class Net(nnx.Module):
    def __init__(self, *, ctx):
        self.blocks = [nnx.Linear(2, 2, ctx=ctx), nnx.Dropout(0.5)]
        self.heads = {"a": nnx.Linear(2, 1, ctx=ctx)}
        self.norm = nnx.BatchNorm(2, ctx=ctx)
        self.name = "net"

    def __call__(self, x, *, ctx=None):
        x = self.blocks[1](self.blocks[0](x), ctx=ctx)
        return self.heads["a"](self.norm(x))


def test_lists_and_dicts_become_tracked_containers():
    net = Net(ctx=nnx.context(0))
    assert isinstance(net.blocks, nnx.List) and isinstance(net.heads, nnx.Dict)
    net.nested = [[nnx.Linear(1, 1, ctx=nnx.context(0))]]
    assert isinstance(net.nested[0], nnx.List)


def test_train_eval_flip_modes_everywhere():
    net = Net(ctx=nnx.context(0))
    net.eval()
    assert net.blocks[1].deterministic is True and net.norm.use_running_average is True
    x = jnp.ones((4, 2))
    np.testing.assert_array_equal(net(x), net(x))  # deterministic in eval mode
    net.train()
    assert net.blocks[1].deterministic is False and net.norm.use_running_average is False


def test_set_attributes_raises_when_nobody_has_it():
    with pytest.raises(AttributeError, match="nonexistent"):
        Net(ctx=nnx.context(0)).set_attributes(nonexistent=1)


def test_repr_reads_like_a_constructor_with_summary():
    text = repr(Net(ctx=nnx.context(0)))
    assert text.startswith("Net(\n") and "name='net'" in text
    assert "Linear(in_features=2, out_features=2)" in text
    assert "Dropout(rate=0.5)" in text
    assert text.rstrip().endswith("Param: 13 (52 B)") or "Param: 13" in text


def test_repr_handles_cycles():
    a = nnx.Module()
    a.self_ref = a
    assert "<shared Module at <root>>" in repr(a)


def test_repr_marks_a_module_shared_by_siblings():
    m = nnx.Module()
    m.a = nnx.Linear(1, 1, ctx=nnx.context(0))
    m.b = m.a
    text = repr(m)
    assert text.count("Linear(") == 1 and "<shared Linear at a>" in text


def test_treescope_renders_module():
    import treescope

    html = treescope.render_to_text(Net(ctx=nnx.context(0)))
    assert "Net" in html and "kernel" in html


def test_sow_records_values():
    m = nnx.Module()
    m.sow(nnx.Intermediate, "h", 1)
    m.sow(nnx.Intermediate, "h", 2)
    assert m.h.value == (1, 2)
    assert nnx.pop(m, nnx.Intermediate).flat() == {("h",): (1, 2)}


def test_iter_modules_paths():
    paths = [p for p, _ in Net(ctx=nnx.context(0)).iter_modules()]
    assert paths == [(), ("blocks", 0), ("blocks", 1), ("heads", "a"), ("norm",)]


def test_update_state_accepts_tuple_and_get_state():
    net = Net(ctx=nnx.context(0))
    params, stats = net.filter(nnx.Param), net.filter(nnx.BatchStat)
    net.update_state((jax.tree.map(jnp.zeros_like, params), stats))
    assert all(float(jnp.abs(v).sum()) == 0 for v in net.filter(nnx.Param).leaves())
    assert net.get_state().paths() == nnx.state(net).paths()


def test_deepcopy_and_pickle_preserve_structure_and_sharing():
    net = Net(ctx=nnx.context(0))
    net.alias = net.heads["a"]
    nnx.state(net)  # populate the traversal cache; copies must not carry it
    for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert other.alias is other.heads["a"] and other.alias is not net.alias
        assert "_nnx_flat" not in vars(other)
        assert nnx.graphdef(other) == nnx.graphdef(net)


def test_assigning_the_same_object_is_not_structural():
    from nnxlite import _epoch

    net = Net(ctx=nnx.context(0))
    before = _epoch.current()
    net.norm = net.norm
    assert _epoch.current() == before
    net.norm = nnx.BatchNorm(2, ctx=nnx.context(1))
    assert _epoch.current() > before
