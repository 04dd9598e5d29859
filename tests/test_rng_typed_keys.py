"""RNG streams hold typed keys (``jax.random.key``), as flax.nnx 0.12's do.

Most tests run one flax spelling on ``lib``, parametrized over nnxlite and
flax.nnx itself (skipped when flax is not installed), and check the same
shapes, dtypes and key bits for both against an independent reference:
``jax.random.fold_in(jax.random.key(seed), count)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite


@pytest.fixture(params=["nnxlite", "flax"])
def nnx(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    return nnxlite


def is_typed(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def bits(key) -> np.ndarray:
    return np.asarray(jax.random.key_data(key))


@pytest.mark.parametrize(
    "seed",
    [3, jax.random.key(3), jax.random.PRNGKey(3)],
    ids=["int", "typed key", "raw uint32 key"],
)
def test_drawn_keys_are_typed_scalars_with_the_reference_bits(nnx, seed):
    rngs = nnx.Rngs(params=seed)
    k0, k1 = rngs.params(), rngs["params"]()
    assert is_typed(k0) and k0.shape == () and str(k0.dtype) == "key<fry>"
    assert is_typed(rngs.params.key[...]) and rngs.params.key.shape == ()
    assert rngs.params.count[...].dtype == jnp.uint32 and rngs.params.count.shape == ()
    base = jax.random.key(3)
    np.testing.assert_array_equal(bits(k0), bits(jax.random.fold_in(base, 0)))
    np.testing.assert_array_equal(bits(k1), bits(jax.random.fold_in(base, 1)))


def test_rng_state_holds_typed_keys(nnx):
    model = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1))
    keys = jax.tree.leaves(nnx.state(model, nnx.RngKey))
    counts = jax.tree.leaves(nnx.state(model, nnx.RngCount))
    assert len(keys) == 1 and is_typed(keys[0]) and keys[0].shape == ()
    assert len(counts) == 1 and counts[0].dtype == jnp.uint32 and counts[0].shape == ()


def test_a_batch_of_raw_keys_becomes_a_split_stream(nnx):
    raw = jax.random.split(jax.random.PRNGKey(0), 4)  # uint32[4, 2]
    rngs = nnx.Rngs(params=raw)
    assert rngs.params.key.shape == (4,) and rngs.params.count.shape == (4,)
    np.testing.assert_array_equal(bits(rngs.params.key[...]), raw)


@pytest.mark.parametrize("k", [4, (2, 3)])
def test_split_fork_and_broadcast_shapes(nnx, k):
    shape = (k,) if isinstance(k, int) else k
    rngs = nnx.Rngs(params=0, dropout=1)
    split = rngs.split(k)
    assert split.params.key.shape == shape and split.params.count.shape == shape
    assert is_typed(split.params.key[...])
    assert rngs.params.split(k).key.shape == shape
    assert rngs.fork().params.key.shape == () and rngs.params.fork().key.shape == ()
    broadcast = rngs.broadcast(k)
    assert broadcast.dropout.key.shape == shape
    flat = bits(broadcast.dropout.key[...]).reshape(-1, 2)
    assert (flat == flat[0]).all()  # one key, repeated
    mixed = rngs.split({"params": k, ...: None})
    assert mixed.params.key.shape == shape and mixed.dropout.key.shape == ()


def test_split_rngs_fork_rngs_and_restore(nnx):
    rngs = nnx.Rngs(params=0, dropout=1)
    before = bits(rngs.params.key[...])
    with nnx.split_rngs(rngs, splits=5, only="params", graph=True, graph_updates=True):
        assert rngs.params.key.shape == (5,) and rngs.params.count.shape == (5,)
        assert rngs.dropout.key.shape == ()
    assert rngs.params.key.shape == () and rngs.params.count.shape == ()
    np.testing.assert_array_equal(bits(rngs.params.key[...]), before)
    backups = nnx.fork_rngs(rngs, split={"dropout": 3}, graph=True, graph_updates=True)
    assert rngs.dropout.key.shape == (3,) and rngs.dropout.count.shape == (3,)
    np.testing.assert_array_equal(bits(rngs.params.key[...]), before)  # no rule selects it: untouched
    nnx.restore_rngs(backups)
    assert rngs.dropout.key.shape == ()
    with nnx.fork_rngs(rngs, graph=True, graph_updates=True):
        assert rngs.params.key.shape == () and not np.array_equal(bits(rngs.params.key[...]), before)
    np.testing.assert_array_equal(bits(rngs.params.key[...]), before)
    copy = nnx.split_rngs(rngs, splits=(2, 3), graph_updates=False)
    assert copy.params.key.shape == (2, 3) and rngs.params.key.shape == ()


def test_with_rngs_shapes_and_conflicting_rules(nnx):
    rngs = nnx.Rngs(params=0, dropout=1, noise=2)
    out = nnx.with_rngs(rngs, split={"params": 4}, broadcast={"noise": 2}, fork=..., graph_updates=False)
    assert out.params.key.shape == (4,) and out.noise.key.shape == (2,) and out.dropout.key.shape == ()
    assert rngs.params.key.shape == ()  # a copy
    with pytest.raises(ValueError, match="multiple rules"):
        nnx.with_rngs(rngs, split={"params": 4}, fork="params", graph_updates=False)
    # A catch-all rule only fills in: it never conflicts with a named one.
    out = nnx.with_rngs(rngs, split={"params": 4}, fork=..., graph_updates=False)
    assert out.params.key.shape == (4,)


def test_reseed_gives_the_new_seeds_keys(nnx):
    model = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1))
    model.rngs()
    nnx.reseed(model, dropout=7)
    assert int(model.rngs.count[...]) == 0
    new_base = jax.random.fold_in(jax.random.key(7), 0)  # the first key of a fresh Rngs(dropout=7)
    np.testing.assert_array_equal(bits(model.rngs.key[...]), bits(new_base))
    np.testing.assert_array_equal(bits(model.rngs()), bits(jax.random.fold_in(new_base, 0)))
    split = nnx.Rngs(params=0).split(3)
    with pytest.raises(ValueError, match="policy"):
        nnx.reseed(split, params=1)
    nnx.reseed(split, params=1, policy="match_shape")
    assert split.params.key.shape == (3,) and split.params.count.shape == (3,)
    np.testing.assert_array_equal(
        bits(split.params.key[...]), bits(jax.random.split(jax.random.fold_in(jax.random.key(1), 0), 3))
    )


def test_vmap_over_split_streams_gives_each_lane_its_key(nnx):
    rngs = nnx.Rngs(noise=0)
    axes = nnx.StateAxes({nnx.RngState: 0, ...: None})

    @nnx.split_rngs(splits=4)
    @nnx.vmap(in_axes=(axes,))
    def draw(rngs):
        return jax.random.key_data(rngs.noise())

    out = draw(rngs)
    assert out.shape == (4, 2) and len({tuple(r) for r in np.asarray(out)}) == 4
    assert rngs.noise.key.shape == ()


def test_missing_stream_error_starts_with_flaxs_sentence(nnx):
    rngs = nnx.Rngs(params=0)
    with pytest.raises(AttributeError) as attr:
        rngs.dropout()
    with pytest.raises(KeyError) as item:
        rngs["dropout"]
    for e in (attr.value, item.value):
        assert e.args[0].startswith("No RngStream named 'dropout' found in Rngs.")
    if nnx is nnxlite:  # and then says how to fix it
        assert "nnx.Rngs(dropout=0)" in attr.value.args[0] and "nnx.Rngs(0)" in item.value.args[0]


def test_a_key_drawn_inside_jit_is_typed_and_the_counter_advances(nnx):
    rngs = nnx.Rngs(dropout=3)
    draw = nnx.jit(lambda rngs: rngs.dropout())
    k0, k1 = draw(rngs), draw(rngs)
    assert is_typed(k0) and k0.shape == () and int(rngs.dropout.count[...]) == 2
    np.testing.assert_array_equal(bits(k1), bits(jax.random.fold_in(jax.random.key(3), 1)))


# -- nnxlite's own spellings (seed 003) ------------------------------------------------------
def test_seed_003_partition_and_merge_with_typed_or_raw_split_keys():
    ctx = nnxlite.context(0)
    keys, ctxdef = ctx.partition()
    assert is_typed(keys["params"]) and is_typed(keys["dropout"])  # the fallback key too
    for many in (jax.random.split(keys["params"], 3), jax.random.split(jax.random.PRNGKey(0), 3)):
        kernels = jax.vmap(lambda k: nnxlite.Linear(2, 2, ctx=ctxdef.merge({"params": k})).kernel.value)(many)
        assert kernels.shape == (3, 2, 2) and not np.allclose(kernels[0], kernels[1])
    raw = jax.random.PRNGKey(5)
    a = nnxlite.Linear(2, 2, ctx=ctxdef.merge({"params": raw}))
    b = nnxlite.Linear(2, 2, ctx=nnxlite.context(params=jax.random.key(5)))
    np.testing.assert_array_equal(a.kernel.value, b.kernel.value)  # a raw key draws as its typed twin


def test_bad_seeds_are_refused_with_the_accepted_forms():
    with pytest.raises(ValueError, match=r"float32.*int seed, a typed key .*uint32 key of shape \(\.\.\., 2\)"):
        nnxlite.Rngs(params=jnp.ones((2,)))
    with pytest.raises(ValueError, match=r"uint32 and shape \(3,\).*wrap_key_data\(data, impl=\.\.\.\)"):
        nnxlite.Rngs(params=jnp.zeros((3,), jnp.uint32))
    assert nnxlite.Rngs(params=jnp.int32(4)).params.key.shape == ()  # an integer scalar array is a seed


# -- checkpoints -----------------------------------------------------------------------------
def test_nnx_save_restore_round_trips_typed_keys_of_each_impl(tmp_path):
    pytest.importorskip("safetensors")
    for impl in ("threefry2x32", "rbg"):
        model = nnxlite.Rngs(jax.random.key(1, impl=impl), params=2).split({"params": 3, ...: None})
        model.default()
        path = tmp_path / f"{impl}.safetensors"
        nnxlite.save(path, model)
        fresh = nnxlite.restore(path, nnxlite.Rngs(jax.random.key(9, impl=impl), params=8).split({"params": 3, ...: None}))
        for name in ("default", "params"):
            a, b = getattr(model, name), getattr(fresh, name)
            assert b.key.value.dtype == a.key.value.dtype and b.key.shape == a.key.shape
            np.testing.assert_array_equal(bits(b.key.value), bits(a.key.value))
            np.testing.assert_array_equal(b.count.value, a.count.value)
        np.testing.assert_array_equal(bits(fresh.default()), bits(model.default()))  # the streams continue alike


def test_orbax_round_trips_typed_keys(nnx, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    model = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=4))
    model.rngs()
    state = nnx.state(model)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "ckpt", nnx.state(nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))))
    fresh = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    nnx.update(fresh, restored)
    assert is_typed(fresh.rngs.key[...]) and int(fresh.rngs.count[...]) == 1
    np.testing.assert_array_equal(bits(fresh.rngs()), bits(model.rngs()))
