"""Llama parity against transformers (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM), random tiny configs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

import nnxlite as nnx  # noqa: E402
from nnxlite import models  # noqa: E402
from nnxlite.models import _generate  # noqa: E402

from _model_parity import check_eos_generation, flat_grad, quiet_transformers, rel  # noqa: E402

VOCAB = 103
SMALL = dict(
    num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
    vocab_size=VOCAB, max_position_embeddings=128,
)
forward = nnx.jit(lambda model, ids, mask: model(ids, attention_mask=mask))


def _reference(tmp_path_factory, config_class, model_class, **overrides):
    quiet_transformers()
    torch.manual_seed(0)
    hf = model_class(config_class(**SMALL, **overrides)).eval()
    hf.generation_config.eos_token_id = None  # no early stop: always the requested number of tokens
    hf.generation_config.pad_token_id = 0
    folder = tmp_path_factory.mktemp(config_class.model_type)
    hf.save_pretrained(folder)
    return hf, folder, models.Llama.from_pretrained(folder)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _reference(tmp_path_factory, transformers.LlamaConfig, transformers.LlamaForCausalLM)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return _reference(tmp_path_factory, transformers.Qwen2Config, transformers.Qwen2ForCausalLM, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    return _reference(tmp_path_factory, transformers.MistralConfig, transformers.MistralForCausalLM, sliding_window=5)


def _ids(batch=2, seq=12, seed=0):
    return np.random.RandomState(seed).randint(0, VOCAB, (batch, seq))


def _logits(hf, ids, mask=None):
    mask = None if mask is None else torch.tensor(mask)
    return hf(torch.tensor(ids), attention_mask=mask).logits.detach().numpy()


def test_llama_grouped_query_shapes(llama):
    _, _, model = llama
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.kernel.shape == (32, 32) and attn.k_proj.kernel.shape == (32, 16)  # 2 kv heads of 8
    assert attn.q_proj.bias is None and model.config.model_type == "llama"


def test_llama_logits_match(llama):
    hf, _, model = llama
    ids = _ids()
    assert rel(forward(model, ids, None), _logits(hf, ids)) < 1e-4
    mask = np.ones_like(ids)
    mask[0, :4] = 0  # left padding
    keep = mask.astype(bool)
    assert rel(np.asarray(forward(model, ids, mask))[keep], _logits(hf, ids, mask)[keep]) < 1e-4


def test_llama_gradient_matches(llama):
    hf, _, model = llama
    ids = _ids()
    weights = np.random.RandomState(1).randn(2, 12, VOCAB).astype(np.float32)
    hf.zero_grad()
    (hf(torch.tensor(ids)).logits * torch.tensor(weights)).sum().backward()
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(ids) * weights)))(model)
    # torch Linear weight is (out, in); our kernel is (in, out).
    ref = hf.model.layers[0].self_attn.k_proj.weight.grad.numpy().T
    assert rel(flat_grad(grads, ("model", "layers", 0, "self_attn", "k_proj", "kernel")), ref) < 1e-4
    ref = hf.model.layers[1].post_attention_layernorm.weight.grad.numpy()
    assert rel(flat_grad(grads, ("model", "layers", 1, "post_attention_layernorm", "scale")), ref) < 1e-4


def test_llama_greedy_generate_matches_transformers(llama):
    hf, _, model = llama
    prompt = _ids(seq=5, seed=2)
    ref = hf.generate(torch.tensor(prompt), max_new_tokens=32, do_sample=False).numpy()
    before = _generate.TRACES["step"]
    np.testing.assert_array_equal(np.asarray(model.generate(prompt, max_new_tokens=32)), ref)
    assert _generate.TRACES["step"] - before <= 1  # traced at most once for 31 steps
    sampled = model.generate(prompt, max_new_tokens=32, do_sample=True, temperature=0.7, top_k=10, rng=nnx.context(0))
    assert sampled.shape == (2, 37) and _generate.TRACES["step"] - before <= 1


def test_llama_greedy_generate_stops_at_eos_like_transformers(llama):
    hf, _, model = llama
    check_eos_generation(hf, model, _ids(seq=5, seed=2))


def test_llama_save_pretrained_loads_in_transformers(llama, tmp_path):
    hf, _, model = llama
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again).__name__ == "LlamaForCausalLM"
    ids = _ids(seed=5)
    np.testing.assert_allclose(_logits(again, ids), _logits(hf, ids), rtol=0, atol=1e-6)


def test_qwen2_biases_and_tied_head(qwen2):
    hf, _, model = qwen2
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.v_proj.bias is not None and attn.o_proj.bias is None
    assert not hasattr(model, "lm_head")  # tied to the token embedding
    ids = _ids()
    assert rel(forward(model, ids, None), _logits(hf, ids)) < 1e-4
    prompt = _ids(seq=5, seed=2)
    ref = hf.generate(torch.tensor(prompt), max_new_tokens=32, do_sample=False).numpy()
    np.testing.assert_array_equal(np.asarray(model.generate(prompt, max_new_tokens=32)), ref)


def test_qwen2_save_pretrained_round_trip(qwen2, tmp_path):
    hf, _, model = qwen2
    model.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again).__name__ == "Qwen2ForCausalLM"
    ids = _ids(seed=6)
    np.testing.assert_allclose(_logits(again, ids), _logits(hf, ids), rtol=0, atol=1e-6)


def test_mistral_sliding_window(mistral):
    hf, folder, model = mistral
    assert model.config.model_type == "mistral" and model.config.sliding_window == 5
    ids = _ids()  # 12 tokens: longer than the window of 5
    ref = _logits(hf, ids)
    assert rel(forward(model, ids, None), ref) < 1e-4
    full = models.Llama._load(dataclasses.replace(model.config, sliding_window=None), folder)
    assert rel(forward(full, ids, None), ref) > 1e-3  # the window changes the result: it is really applied
    prompt = _ids(seq=5, seed=2)
    ref = hf.generate(torch.tensor(prompt), max_new_tokens=32, do_sample=False).numpy()
    np.testing.assert_array_equal(np.asarray(model.generate(prompt, max_new_tokens=32)), ref)


def test_unsupported_rope_scaling_is_refused():
    config = {"model_type": "llama", "rope_parameters": {"rope_type": "yarn", "factor": 4.0}}
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        models.LlamaConfig.from_dict(config)
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        models.LlamaConfig.from_dict({"model_type": "gpt2"})
