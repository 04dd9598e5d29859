"""Fixtures for the flax.nnx programs: each runs once per library.

``nnx`` is the module a program imports as ``nnx``: nnxlite, or flax.nnx
itself (skipped when flax is not installed), so every assertion is first
known to hold for flax. ``both`` gives the pair, for tests that compare the
numbers one program produces under each library.
"""

from __future__ import annotations

import pytest

import nnxlite


@pytest.fixture(params=["nnxlite", "flax"])
def nnx(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    return nnxlite


@pytest.fixture
def both():
    return nnxlite, pytest.importorskip("flax.nnx")

