"""RNG contexts: streams, fallback, counters, partition/merge, uniqueness."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx


def _key_bytes(k):
    return tuple(np.asarray(jax.random.key_data(k)).ravel())


def test_keys_are_fold_in_of_counter():
    ctx = nnx.context(params=3)
    k0, k1 = ctx.make_rng("params"), ctx.params()
    base = jax.random.key(3)
    assert k0.dtype == base.dtype and k0.shape == ()
    assert _key_bytes(k0) == _key_bytes(jax.random.fold_in(base, 0))
    assert _key_bytes(k1) == _key_bytes(jax.random.fold_in(base, 1))
    assert int(ctx.params.count.value) == 2


def test_unknown_stream_falls_back_to_default_and_errors_without_one():
    ctx = nnx.context(0)
    ctx.make_rng("dropout")
    assert int(ctx.default.count.value) == 1
    no_default = nnx.context(params=0)
    with pytest.raises(KeyError, match=r"^.No RngStream named 'dropout' found in Rngs\. .*nnx\.Rngs\(dropout=0\)"):
        no_default.make_rng("dropout")
    with pytest.raises(AttributeError, match=r"^No RngStream named 'dropout' found in Rngs\. "):
        no_default.dropout()


def test_no_key_is_handed_out_twice():
    ctx = nnx.context(0, dropout=1)
    seen = set()
    for i in range(50):
        for name in ("params", "dropout", "default", "other"):
            k = _key_bytes(ctx.make_rng(name))
            assert k not in seen
            seen.add(k)
    keys, _ = ctx.partition()
    for k in keys.values():
        assert _key_bytes(k) not in seen


def test_rng_state_is_variables_and_travels_through_jit():
    ctx = nnx.context(0)
    gd, st = nnx.split(ctx)
    assert {type(v).__name__ for _, v in st.variables()} == {"RngKey", "RngCount"}

    @jax.jit
    def draw(st):
        c = nnx.merge(gd, st)
        key = c.make_rng("params")
        return key, nnx.state(c)

    k1, st = draw(st)
    k2, st = draw(st)
    assert _key_bytes(k1) != _key_bytes(k2)
    nnx.update(ctx, st)
    assert int(ctx.default.count.value) == 2


def test_partition_keys_fallback_and_ctxdef_merge():
    ctx = nnx.context(0)
    keys, ctxdef = ctx.partition()
    p, d = keys["params"], keys["dropout"]
    assert _key_bytes(p) != _key_bytes(d)
    assert ctxdef == nnx.ContextDef() and hash(ctxdef) == hash(nnx.ContextDef())
    new = ctxdef.merge({"params": p})
    assert new.stream_names() == ["params"]
    assert _key_bytes(new.params()) == _key_bytes(jax.random.fold_in(p, 0))


def test_partition_under_vmap_gives_distinct_lane_keys():
    keys, ctxdef = nnx.context(0).partition()

    @partial(jax.vmap)
    def draw(key):
        return ctxdef.merge({"dropout": key}).dropout()

    out = draw(jax.random.split(keys["dropout"], 8))
    assert out.shape == (8,) and len({_key_bytes(k) for k in out}) == 8


def test_context_needs_a_stream():
    with pytest.raises(ValueError, match="at least one stream"):
        nnx.Context()
