"""Helpers shared by the tests/test_models_*.py parity tests (torch references, no network)."""

from __future__ import annotations

import numpy as np

import nnxlite as nnx


def rel(ours, ref) -> float:
    """Max absolute difference relative to the reference's largest magnitude."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def flat_grad(grads, path: tuple):
    """The gradient at ``path`` (a tuple of attribute names / indices) of an ``nnx.grad`` State."""
    return np.asarray(grads.flat()[path])


def grad_of(model, loss_fn, path: tuple):
    """d loss_fn(model) / d (the Variable at ``path``), by ``nnx.grad``."""
    return flat_grad(nnx.grad(loss_fn)(model), path)


def quiet_transformers():
    """Keep transformers' progress bars and config warnings out of the test log."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
