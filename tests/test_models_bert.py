"""BERT parity against transformers' BertForMaskedLM (random tiny config, nothing downloaded)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

import nnxlite as nnx  # noqa: E402
from nnxlite import models  # noqa: E402
from nnxlite.interop._sources import open_source  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from _model_parity import flat_grad, quiet_transformers, rel  # noqa: E402

VOCAB = 89
forward = nnx.jit(lambda model, ids, mask, types: model(ids, attention_mask=mask, token_type_ids=types))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    quiet_transformers()
    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
        max_position_embeddings=32,
    )
    hf = transformers.BertForMaskedLM(config).eval()
    folder = tmp_path_factory.mktemp("bert")
    hf.save_pretrained(folder)
    return hf, folder, models.BERT.from_pretrained(folder)


def _inputs(seed=0):
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, VOCAB, (2, 10))
    mask = np.ones((2, 10), np.int64)
    mask[1, 6:] = 0
    types = np.zeros((2, 10), np.int64)
    types[:, 5:] = 1
    return ids, mask, types


def _logits(hf, ids, mask, types):
    return hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types)).logits


def test_logits_match(reference):
    hf, _, model = reference
    ids, mask, types = _inputs()
    ref = _logits(hf, ids, mask, types).detach().numpy()
    out = np.asarray(forward(model, ids, mask, types))
    assert out.shape == (2, 10, VOCAB)
    keep = mask.astype(bool)
    assert rel(out[keep], ref[keep]) < 1e-4


def test_gradient_matches(reference):
    hf, _, model = reference
    ids, mask, types = _inputs(1)
    weights = np.random.RandomState(2).randn(2, 10, VOCAB).astype(np.float32) * mask[..., None]
    hf.zero_grad()
    (_logits(hf, ids, mask, types) * torch.tensor(weights)).sum().backward()
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(ids, mask, types) * weights)))(model)
    ref = hf.bert.encoder.layer[0].attention.self.query.weight.grad.numpy().T
    assert rel(flat_grad(grads, ("bert", "encoder", "layer", 0, "attention", "self", "query", "kernel")), ref) < 1e-4
    ref = hf.cls.predictions.bias.grad.numpy()
    assert rel(flat_grad(grads, ("cls", "predictions", "bias")), ref) < 1e-4


def test_save_pretrained_loads_in_transformers(reference, tmp_path):
    hf, _, model = reference
    model.save_pretrained(tmp_path)
    again = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask, types = _inputs(3)
    ref = _logits(hf, ids, mask, types).detach().numpy()
    np.testing.assert_allclose(_logits(again, ids, mask, types).detach().numpy(), ref, rtol=0, atol=1e-6)


def test_old_checkpoint_spellings_load(reference, tmp_path):
    """TF-era LayerNorm names (gamma/beta), the position_ids buffer and an untied decoder copy are accepted."""
    hf, folder, model = reference
    with open_source(folder) as source:
        tensors = {name: source.read(name) for name in source.names()}
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in tensors.items()}
    renamed["bert.embeddings.position_ids"] = np.arange(32)[None]
    renamed["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
    save_file(renamed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    old = models.BERT.from_pretrained(tmp_path)
    ids, mask, types = _inputs()
    np.testing.assert_array_equal(np.asarray(forward(old, ids, mask, types)), np.asarray(forward(model, ids, mask, types)))
