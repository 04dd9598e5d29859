"""``nnx.statelib.diff(state, other)``: the leaves of ``state`` at paths ``other`` lacks, on nnxlite and flax.nnx."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite


@pytest.fixture(params=["nnxlite", "flax"])
def nnx(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    return nnxlite


def _mlps(nnx, n, seed):
    class MLPs(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(3, 3, use_bias=False, rngs=rngs) for _ in range(n)])

    return MLPs(nnx.Rngs(seed))


def _flat(nnx, state):
    return {tuple(path): np.asarray(leaf[...]) for path, leaf in nnx.to_flat_state(state)}


def test_diff_keeps_only_the_paths_the_other_state_lacks(nnx):
    four, other_four, five = _mlps(nnx, 4, 0), _mlps(nnx, 4, 1), _mlps(nnx, 5, 1)
    assert _flat(nnx, nnx.statelib.diff(nnx.state(other_four), nnx.state(four))) == {}  # values do not count
    extra = _flat(nnx, nnx.statelib.diff(nnx.state(five), nnx.state(four)))
    assert list(extra) == [("layers", 4, "kernel")]
    np.testing.assert_array_equal(extra[("layers", 4, "kernel")], five.layers[4].kernel[...])
    assert _flat(nnx, nnx.statelib.diff(nnx.state(four), nnx.state(five))) == {}


def test_diff_against_an_empty_state_is_the_state(nnx):
    state = nnx.state(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    result = nnx.statelib.diff(state, nnx.state({}))
    assert result is state


def test_diff_keeps_variable_types_and_plain_leaves():
    class Foo(nnxlite.Module):
        def __init__(self, extra):
            self.w = nnxlite.Param(jnp.ones(2))
            self.count = nnxlite.BatchStat(jnp.zeros(()))
            if extra:
                self.raw = jnp.arange(3.0)  # a plain array attribute is state too

    result = nnxlite.statelib.diff(nnxlite.state(Foo(True)), nnxlite.state(Foo(False)))
    assert result.paths() == (("raw",),)
    np.testing.assert_array_equal(result["raw"], np.arange(3.0))
    kinds = nnxlite.statelib.diff(nnxlite.state(Foo(False)), nnxlite.state({"w": nnxlite.Param(jnp.ones(2))}))
    assert [type(v).__name__ for _, v in kinds.variables()] == ["BatchStat"]
