"""Filters: every accepted spelling and the combinators."""

import pytest

import nnxlite as nnx
from nnxlite.filters import to_predicate


def _check(filter, path, var):
    return to_predicate(filter)(path, var)


@pytest.mark.parametrize(
    "filter, path, var, expected",
    [
        (nnx.Param, ("w",), nnx.Param(1), True),
        (nnx.Param, ("w",), nnx.BatchStat(1), False),
        (nnx.Variable, ("w",), nnx.BatchStat(1), True),
        ((nnx.Param, nnx.BatchStat), ("w",), nnx.BatchStat(1), True),
        ([nnx.Cache], ("w",), nnx.BatchStat(1), False),
        (..., ("w",), nnx.Cache(1), True),
        (True, ("w",), nnx.Cache(1), True),
        (None, ("w",), nnx.Param(1), False),
        (False, ("w",), nnx.Param(1), False),
        ("kernel", ("layer", "kernel"), nnx.Param(1), True),
        ("kernel", ("layer", "bias"), nnx.Param(1), False),
        (nnx.Not(nnx.Param), ("w",), nnx.Param(1), False),
        (nnx.All(nnx.Param, nnx.PathContains("bias")), ("l", "bias"), nnx.Param(1), True),
        (nnx.All(nnx.Param, nnx.PathContains("bias")), ("l", "bias"), nnx.Cache(1), False),
        (nnx.Any(nnx.Cache, "bias"), ("l", "bias"), nnx.Param(1), True),
        (lambda path, v: path[0] == "enc", ("enc", "w"), nnx.Param(1), True),
    ],
)
def test_filter_spellings(filter, path, var, expected):
    assert _check(filter, path, var) is expected


def test_invalid_filter_error():
    with pytest.raises(TypeError, match="Invalid filter 3"):
        to_predicate(3)


def test_filters_are_hashable_and_comparable():
    assert nnx.Not(nnx.Param) == nnx.Not(nnx.Param)
    assert hash(nnx.All(nnx.Param, "x")) == hash(nnx.All(nnx.Param, "x"))
    assert nnx.PathContains("a") != nnx.PathContains("b")


def test_filters_select_state_from_a_model():
    model = nnx.Sequence([nnx.Linear(2, 2, ctx=nnx.context(0)), nnx.BatchNorm(2, ctx=nnx.context(1))])
    kernels = nnx.state(model, nnx.All(nnx.Param, nnx.PathContains("kernel")))
    assert kernels.paths() == (("layers", 0, "kernel"),)
    rest = nnx.state(model, nnx.Not(nnx.Param))
    assert {p[-1] for p in rest.paths()} == {"mean", "var"}
