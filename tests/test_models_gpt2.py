"""GPT-2 parity against transformers' GPT2LMHeadModel (random tiny config, nothing downloaded)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import nnxlite as nnx  # noqa: E402
from nnxlite import models  # noqa: E402
from nnxlite.models import _generate  # noqa: E402

from _model_parity import check_eos_generation, flat_grad, quiet_transformers, rel  # noqa: E402

VOCAB = 101

# Compiled once per shape: one XLA compile is much cheaper than op-by-op dispatch of a whole forward.
forward = nnx.jit(lambda model, ids, mask: model(ids, attention_mask=mask))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A random GPT-2 in torch, saved as a Hugging Face folder, and the same folder loaded in nnxlite."""
    quiet_transformers()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.generation_config.eos_token_id = None  # no early stop: always 32 new tokens
    hf.generation_config.pad_token_id = 0
    folder = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(folder)
    return hf, folder, models.GPT2.from_pretrained(folder)


def _ids(batch=2, seq=12, seed=0):
    return np.random.RandomState(seed).randint(0, VOCAB, (batch, seq))


def test_config_and_names(reference):
    hf, _, model = reference
    assert model.config.n_layer == 2 and model.config.n_embd == 32
    # Conv1D weights are (in, out) in the checkpoint: loaded without a transpose.
    np.testing.assert_array_equal(
        np.asarray(model.transformer.h[0].attn.c_attn.kernel.value), hf.transformer.h[0].attn.c_attn.weight.detach().numpy()
    )


def test_logits_match(reference):
    hf, _, model = reference
    ids = _ids()
    ref = hf(torch.tensor(ids)).logits.detach().numpy()
    out = forward(model, ids, None)
    assert out.shape == (2, 12, VOCAB)
    assert rel(out, ref) < 1e-4


def test_logits_match_with_padding(reference):
    hf, _, model = reference
    ids, mask = _ids(), np.ones((2, 12), np.int64)
    mask[1, 8:] = 0  # right padding on the second row
    ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.detach().numpy()
    out = np.asarray(forward(model, ids, mask))
    keep = mask.astype(bool)
    assert rel(out[keep], ref[keep]) < 1e-4


def test_gradient_matches(reference):
    hf, _, model = reference
    ids = _ids()
    weights = np.random.RandomState(1).randn(2, 12, VOCAB).astype(np.float32)
    hf.zero_grad()
    (hf(torch.tensor(ids)).logits * torch.tensor(weights)).sum().backward()
    ref = hf.transformer.h[1].attn.c_attn.weight.grad.numpy()  # Conv1D: (in, out), our kernel layout
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(ids) * weights)))(model)
    assert rel(flat_grad(grads, ("transformer", "h", 1, "attn", "c_attn", "kernel")), ref) < 1e-4
    ref_wte = hf.transformer.wte.weight.grad.numpy()  # tied: input embedding + output projection
    assert rel(flat_grad(grads, ("transformer", "wte", "embedding")), ref_wte) < 1e-4


def test_greedy_generate_matches_transformers(reference):
    hf, _, model = reference
    prompt = _ids(seq=5, seed=2)
    ref = hf.generate(torch.tensor(prompt), max_new_tokens=32, do_sample=False).numpy()
    before = dict(_generate.TRACES)
    out = np.asarray(model.generate(prompt, max_new_tokens=32))
    assert out.shape == (2, 37)
    np.testing.assert_array_equal(out, ref)
    # One trace of the step for 31 decode steps (none per token); a second call reuses it.
    assert _generate.TRACES["step"] - before.get("step", 0) <= 1
    traced = dict(_generate.TRACES)
    np.testing.assert_array_equal(np.asarray(model.generate(prompt, max_new_tokens=32)), ref)
    assert dict(_generate.TRACES) == traced


def test_greedy_generate_stops_at_eos_like_transformers(reference):
    hf, _, model = reference
    check_eos_generation(hf, model, _ids(seq=5, seed=2))


def test_greedy_generate_left_padded_batch(reference):
    hf, _, model = reference
    prompt, mask = _ids(seq=5, seed=3), np.ones((2, 5), np.int64)
    mask[0, :2] = 0
    ref = hf.generate(
        torch.tensor(prompt), attention_mask=torch.tensor(mask), max_new_tokens=32, do_sample=False
    ).numpy()
    out = np.asarray(model.generate(prompt, attention_mask=mask, max_new_tokens=32))
    np.testing.assert_array_equal(out[:, 5:], ref[:, 5:])


def test_sampled_generate_is_jitted_with_fixed_cache(reference):
    _, _, model = reference
    prompt = _ids(seq=5, seed=4)
    greedy = np.asarray(model.generate(prompt, max_new_tokens=32))  # compiles (or reuses) the step
    before = _generate.TRACES["step"]
    a = np.asarray(model.generate(prompt, max_new_tokens=32, do_sample=True, temperature=0.8, top_k=5, rng=0))
    b = np.asarray(model.generate(prompt, max_new_tokens=32, do_sample=True, temperature=0.8, top_k=5, rng=0))
    c = np.asarray(model.generate(prompt, max_new_tokens=32, do_sample=True, temperature=0.8, top_k=5, rng=1))
    assert _generate.TRACES["step"] == before  # greedy's compiled step serves sampling too
    np.testing.assert_array_equal(a, b)  # same key, same tokens
    assert (a[:, 5:] != c[:, 5:]).any()
    np.testing.assert_array_equal(a[:, :5], prompt)
    assert a.min() >= 0 and a.max() < VOCAB
    assert (a[:, 5:] != greedy[:, 5:]).any()


def test_top1_sampling_is_greedy(reference):
    _, _, model = reference
    prompt = _ids(seq=5, seed=4)
    greedy = np.asarray(model.generate(prompt, max_new_tokens=32))
    top1 = np.asarray(model.generate(prompt, max_new_tokens=32, do_sample=True, top_k=1, rng=jax.random.PRNGKey(3)))
    np.testing.assert_array_equal(top1, greedy)


def test_sampling_needs_an_rng(reference):
    _, _, model = reference
    with pytest.raises(ValueError, match="rng="):
        model.generate(_ids(seq=3), max_new_tokens=2, do_sample=True)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(_ids(seq=3), max_new_tokens=2, do_sample=True, top_k=0, rng=0)


def test_bad_end_ids_are_refused(reference):
    _, _, model = reference
    with pytest.raises(ValueError, match="eos_token_id must be a token id"):
        model.generate(_ids(seq=3), max_new_tokens=2, eos_token_id=-1)
    with pytest.raises(ValueError, match="eos_token_id must be a token id"):
        model.generate(_ids(seq=3), max_new_tokens=2, eos_token_id=[])
    with pytest.raises(ValueError, match="pad_token_id must be a token id"):
        model.generate(_ids(seq=3), max_new_tokens=2, eos_token_id=3, pad_token_id=-2)


def test_too_long_for_learned_positions(reference):
    _, _, model = reference
    with pytest.raises(ValueError, match="exceeds the 64 positions"):
        model.generate(_ids(seq=40), max_new_tokens=30)


def test_save_pretrained_loads_in_transformers(reference, tmp_path):
    hf, _, model = reference
    model.save_pretrained(tmp_path)
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = _ids(seed=5)
    ref = hf(torch.tensor(ids)).logits.detach().numpy()
    np.testing.assert_allclose(again(torch.tensor(ids)).logits.detach().numpy(), ref, rtol=0, atol=1e-6)
    assert rel(forward(model, ids, None), ref) < 1e-4


def test_mismatched_checkpoint_names_every_problem(reference, tmp_path):
    hf, folder, _ = reference
    import json

    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ValueError) as err:
        models.GPT2.from_pretrained(tmp_path)
    assert "transformer.h.2.attn.c_attn.weight" in str(err.value)  # a weight the checkpoint lacks
