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


def check_eos_generation(hf, model, prompt: np.ndarray, new: int = 32) -> None:
    """Greedy ``generate`` with an end id the random model really emits equals transformers', without retracing.

    Row 0's 4th new token is the end id, so row 0 finishes early and its later
    positions are padding; for row 0 alone, generation stops right there.
    """
    import torch

    from nnxlite.models import _generate

    free = np.asarray(model.generate(prompt, max_new_tokens=new))  # compiles the step (if not yet)
    eos, pad = int(free[0, prompt.shape[1] + 3]), 0
    traced = dict(_generate.TRACES)
    for rows in (prompt, prompt[:1]):
        ref = hf.generate(torch.tensor(rows), max_new_tokens=new, do_sample=False, eos_token_id=eos,
                          pad_token_id=pad).numpy()
        out = np.asarray(model.generate(rows, max_new_tokens=new, eos_token_id=eos, pad_token_id=pad))
        np.testing.assert_array_equal(out, ref)
        tail = out[0, prompt.shape[1]:]
        first = int(np.argmax(tail == eos))
        assert tail[first] == eos and (tail[first + 1:] == pad).all()
        if rows is prompt:  # same shapes as the call without an end id: its compiled step serves this too
            assert dict(_generate.TRACES) == traced
    assert out.shape[1] <= prompt.shape[1] + 4  # the single row stopped at its end id
    # pad_token_id defaults to the end id, as in transformers.
    default = np.asarray(model.generate(prompt, max_new_tokens=new, eos_token_id=eos))
    ref = hf.generate(torch.tensor(prompt), max_new_tokens=new, do_sample=False, eos_token_id=eos,
                      pad_token_id=eos).numpy()
    np.testing.assert_array_equal(default, ref)
