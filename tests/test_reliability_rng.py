"""RNG reliability (issue #10, items 9a and 13): no key is ever handed out twice.

Every test here failed before the fix it names.
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx

LAST = 2**32 - 1


def key_bytes(key) -> bytes:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).tobytes()


def test_an_exhausted_counter_refuses_the_draw_instead_of_wrapping():
    ctx = nnx.context(0)
    first = key_bytes(ctx.default())
    ctx.default.count.value = jnp.asarray(LAST - 1, jnp.uint32)
    ctx.default()  # count 2**32 - 2: the last new key
    assert int(ctx.default.count.value) == LAST
    with pytest.raises(OverflowError, match="uint32 counter.*new key"):
        ctx.default()
    assert int(ctx.default.count.value) == LAST  # the refused draw changed nothing
    with pytest.raises(OverflowError):
        ctx.make_rng("anything")
    ctx.default.count.value = jnp.asarray(0, jnp.uint32)  # the documented way out: a fresh counter (and key)
    assert key_bytes(ctx.default()) == first


def test_under_jit_the_counter_saturates_and_the_next_eager_draw_refuses():
    ctx = nnx.context(0)
    ctx.default.count.value = jnp.asarray(LAST - 2, jnp.uint32)

    @nnx.jit
    def draw3(c):
        return c.default(), c.default(), c.default()

    keys = draw3(ctx)
    assert len({key_bytes(k) for k in keys}) == 3
    assert int(ctx.default.count.value) == LAST  # it did not wrap back to 0
    with pytest.raises(OverflowError):
        ctx.default()


def test_threads_sharing_a_context_never_get_the_same_key():
    ctx = nnx.context(0, dropout=1)
    n_threads, per_thread = 8, 60
    start = threading.Barrier(n_threads)
    drawn: list[list[bytes]] = [[] for _ in range(n_threads)]

    def worker(i):
        start.wait()
        for j in range(per_thread):
            drawn[i].append(key_bytes(ctx.dropout() if j % 2 else ctx.make_rng("params")))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [k for ks in drawn for k in ks]
    assert len(keys) == n_threads * per_thread
    assert len(set(keys)) == len(keys)
    assert int(ctx.dropout.count.value) + int(ctx.default.count.value) == len(keys)


def boom(*args):
    raise RuntimeError("boom")


def test_a_failing_vmap_body_leaves_the_callers_counts_alone():
    ctx = nnx.context(0, dropout=1)

    def body(c, x):
        c.dropout()
        return boom()

    with pytest.raises(RuntimeError, match="boom"):
        nnx.vmap(body, in_axes=(None, 0))(ctx, jnp.ones((3, 2)))
    assert int(ctx.dropout.count.value) == 0 and int(ctx.default.count.value) == 0
    nnx.vmap(lambda c, x: x + jax.random.uniform(c.dropout()), in_axes=(None, 0))(ctx, jnp.ones((3, 2)))
    assert int(ctx.dropout.count.value) == 1  # a successful call still advances it


@pytest.mark.parametrize("ctx_axes", [None, {nnx.RngState: None}])
def test_a_failing_scan_body_leaves_the_callers_counts_alone(ctx_axes):
    ctx = nnx.context(0)

    def step(h, x, c):
        c.default()
        return boom()

    with pytest.raises(RuntimeError, match="boom"):
        nnx.scan(step, in_axes=(nnx.Carry, 0, ctx_axes))(jnp.zeros(()), jnp.arange(3.0), ctx)
    assert int(ctx.default.count.value) == 0
