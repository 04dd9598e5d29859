"""flax.nnx spellings on nnxlite (RNG surface, Variable/State/Optimizer methods, utility names).

Each test runs the flax spelling on nnxlite, checks it against the nnxlite
spelling, and against flax itself when flax is installed (same seeds give the
same numbers: both libraries draw ``fold_in(key, count)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlite as nnx


def _flax():
    return pytest.importorskip("flax.nnx")


# -- Rngs ------------------------------------------------------------------------------------
def test_rngs_call_item_and_shorthands_match_the_nnxlite_spelling():
    a, b = nnx.Rngs(0, dropout=1), nnx.context(0, dropout=1)
    data = jax.random.key_data
    np.testing.assert_array_equal(data(a()), data(b.make_rng("default")))
    np.testing.assert_array_equal(data(a["dropout"]()), data(b.dropout()))
    np.testing.assert_array_equal(a.normal((3,)), jax.random.normal(b.make_rng(), (3,)))
    np.testing.assert_array_equal(a.dropout.uniform((2,)), jax.random.uniform(b.dropout(), (2,)))
    assert sorted(a) == ["default", "dropout"] and len(a) == 2 and "dropout" in a
    assert [name for name, _ in a.items()] == ["default", "dropout"]


def test_rngs_draws_match_flax():
    fnnx = _flax()
    ours, theirs = nnx.Rngs(params=3), fnnx.Rngs(params=3)
    np.testing.assert_allclose(ours.params.normal((4,)), theirs.params.normal((4,)))
    np.testing.assert_allclose(ours.params.bernoulli(0.5, (6,)), theirs.params.bernoulli(0.5, (6,)))
    np.testing.assert_allclose(ours.params.lecun_normal()((3, 2)), theirs.params.lecun_normal()((3, 2)))


def test_misuse_errors_name_the_fix():
    rngs = nnx.Rngs(params=0)
    with pytest.raises(AttributeError, match=r"^No RngStream named 'dropout' found in Rngs\. .*nnx\.Rngs\(dropout=0\)"):
        rngs.dropout
    with pytest.raises(TypeError, match="jax.random shorthands"):
        rngs.params((2, 3))
    with pytest.raises(TypeError, match="no arguments"):
        nnx.Rngs(0)((2,))


def test_fork_both_spellings():
    ctx = nnx.context(0)
    assert ctx.fork(3)["default"].shape == (3,)  # nnxlite: keys for 3 lanes
    forked = ctx.fork()  # flax: a new Rngs
    assert isinstance(forked, nnx.Rngs) and forked.default.key.shape == ()
    assert nnx.Rngs(0).fork(split=4).default.key.shape == (4,)
    assert nnx.Rngs(0).default.fork().tag == "default"


def test_split_fork_restore_reseed():
    rngs = nnx.Rngs(params=0, dropout=1)
    data = jax.random.key_data
    before = np.asarray(data(rngs.params.key.value))
    backups = nnx.split_rngs(rngs, splits=5, only="params")
    assert rngs.params.key.shape == (5,) and rngs.params.count.shape == (5,)
    assert rngs.dropout.key.shape == ()
    nnx.restore_rngs(backups)
    np.testing.assert_array_equal(data(rngs.params.key.value), before)

    @nnx.split_rngs(splits=2)
    def inside(r):
        return r.dropout.key.shape

    assert inside(rngs) == (2,) and rngs.dropout.key.shape == ()
    with nnx.fork_rngs(rngs):
        assert not np.array_equal(data(rngs.params.key.value), before)
    np.testing.assert_array_equal(data(rngs.params.key.value), before)
    copy = nnx.with_rngs(rngs, split={"params": 3}, fork=...)
    assert copy.params.key.shape == (3,) and rngs.params.key.shape == ()


def test_reseed_reproduces_dropout_like_flax():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(4, 4, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.linear(x))

    model = Model(nnx.Rngs(params=0, dropout=1))
    x = jnp.ones((1, 4))
    y1, y2 = model(x), model(x)
    nnx.reseed(model, dropout=1)
    y3 = model(x)
    assert not jnp.allclose(y1, y2) and jnp.allclose(y1, y3)
    fnnx = _flax()

    class FlaxModel(fnnx.Module):
        def __init__(self, rngs):
            self.linear = fnnx.Linear(4, 4, rngs=rngs)
            self.drop = fnnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.linear(x))

    np.testing.assert_allclose(FlaxModel(fnnx.Rngs(params=0, dropout=1))(x), y1, rtol=1e-6)


# -- Variable, State, utilities -------------------------------------------------------------
def test_variable_methods():
    v = nnx.Param(jnp.zeros(2), sharding=("a",))
    v.set_value(jnp.ones(2))
    assert v.get_value().tolist() == [1.0, 1.0] and v.get_value(index=0) == 1.0
    v[...] = jnp.full(2, 3.0)
    assert v.value.tolist() == [3.0, 3.0]
    assert v.get_metadata("sharding") == ("a",) and v.get_metadata("x", None) is None
    v.set_metadata("note", 1)
    assert v.note == 1 and v.has_metadata("note")
    v.del_metadata("note")
    assert not v.has_metadata("note") and v.type is nnx.Param
    c = v.copy(tag="t")
    assert c.tag == "t" and not v.has_metadata("tag") and c is not v
    w = nnx.Param(jnp.zeros(2))
    w.copy_from(v)
    assert w.value.tolist() == [3.0, 3.0] and w.sharding_names == ("a",)
    count = nnx.Variable(0)
    count[...] += 1
    assert count.value == 1


def test_state_functions_match_methods_and_flax():
    model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
    state = nnx.state(model)
    assert nnx.to_pure_dict(state) == state.to_pure_dict()
    params, stats = nnx.split_state(state, nnx.Param, nnx.BatchStat)
    assert set(nnx.merge_state(params, stats).flat()) == set(state.flat())
    assert set(nnx.filter_state(state, nnx.Param).flat()) == set(params.flat())
    zeros = nnx.map_state(lambda p, x: jnp.zeros_like(x), state)
    assert all(float(jnp.abs(x).sum()) == 0 for x in zeros.flat().values())
    flat = nnx.to_flat_state(state)
    assert nnx.from_flat_state(flat).flat().keys() == state.flat().keys()
    pure = {"layers": {str(k): v for k, v in nnx.to_pure_dict(zeros)["layers"].items()}}  # as orbax stores
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    assert float(jnp.abs(model.layers[0].kernel.value).sum()) == 0
    assert [p for p, _ in nnx.iter_modules(model)] == [(), ("layers", 0), ("layers", 1)]
    fnnx = _flax()
    theirs = fnnx.Sequential(fnnx.Linear(2, 3, rngs=fnnx.Rngs(0)), fnnx.BatchNorm(3, rngs=fnnx.Rngs(0)))
    ours = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
    jax.tree.map(np.testing.assert_allclose, fnnx.to_pure_dict(fnnx.state(theirs)), nnx.to_pure_dict(nnx.state(ours)))


def test_filters_with_tag_and_path_contains_match_flax():
    rngs = nnx.Rngs(params=0, dropout=1)
    assert {p for p in nnx.state(rngs, nnx.WithTag("dropout")).flat()} == {("dropout", "key"), ("dropout", "count")}
    assert nnx.filterlib.PathContains("drop", exact=False)(("dropout", "key"), None)
    fnnx = _flax()
    assert fnnx.filterlib.PathContains("drop", exact=False)(("dropout", "key"), None)


def test_call_with_metadata_display_tabulate(capsys):
    y, (graphdef, state) = nnx.call(nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0))))(jnp.ones((1, 2)))
    assert y.shape == (1, 3) and isinstance(state, nnx.State)
    init = nnx.with_metadata(nnx.initializers.ones, sharding_names=("embed",))
    assert nnx.Param(init(jax.random.PRNGKey(0), (2,), jnp.float32)).sharding_names == ("embed",)
    nnx.display(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    assert "Linear(in_features=2" in capsys.readouterr().out
    table = nnx.tabulate(nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0))))
    assert "layers/0" in table and "total" in table and "36 B" in table
    assert nnx.statelib.State is nnx.State and nnx.rnglib.Rngs is nnx.Rngs and nnx.variablelib.Param is nnx.Param


# -- Optimizer --------------------------------------------------------------------------------
def test_optimizer_update_both_spellings_and_flax():
    def loss(m, x):
        return jnp.mean(m(x) ** 2)

    x = jnp.ones((4, 2))
    a = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    b = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    opt_a = nnx.Optimizer(a, optax.adam(0.1), wrt=nnx.Param)
    opt_b = nnx.ModelAndOptimizer(b, optax.adam(0.1))
    opt_a.update(a, nnx.grad(loss)(a, x))  # flax >= 0.11
    opt_b.update(nnx.grad(loss)(b, x))  # nnxlite / flax ModelAndOptimizer
    np.testing.assert_allclose(a.kernel.value, b.kernel.value)
    with pytest.raises(ValueError, match="different"):
        opt_a.update(nnx.Linear(2, 3, rngs=nnx.Rngs(1)), nnx.grad(loss)(a, x))
    fnnx = _flax()
    c = fnnx.Linear(2, 3, rngs=fnnx.Rngs(0))
    opt_c = fnnx.Optimizer(c, optax.adam(0.1), wrt=fnnx.Param)
    opt_c.update(c, fnnx.grad(loss)(c, x))
    np.testing.assert_allclose(c.kernel[...], a.kernel.value, rtol=1e-6)


def test_lbfgs_with_extra_arguments_reaches_optax():
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    x, y = jnp.ones((8, 3)), jnp.full((8, 1), 2.0)

    def loss_fn(m):
        return jnp.mean((m(x) - y) ** 2)

    optimizer = nnx.Optimizer(model, optax.lbfgs(1e-1), wrt=nnx.Param)
    graphdef = nnx.graphdef(model)
    losses = []
    for _ in range(5):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, grad=grads, value=loss,
                         value_fn=lambda state: loss_fn(nnx.merge(graphdef, state)))
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="changed shape"):  # a replaced layer is still caught
        model.kernel = nnx.Param(jnp.ones((4, 1)))
        optimizer.update(model, nnx.grad(lambda m: jnp.sum(m.kernel.value))(model))
