"""Hugging Face folders without torch: config.json handling, sharded folders, errors, no torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnxlite import models

ROOT = Path(__file__).resolve().parents[1]


def test_sharded_folder_loads(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=16)
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = models.GPT2.from_pretrained(tmp_path)
    ids = np.array([[1, 2, 3, 4]])
    expected = reference(torch.tensor(ids)).logits.detach().numpy()
    assert np.abs(np.asarray(model(ids)) - expected).max() < 1e-4 * np.abs(expected).max()


def test_missing_files_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.GPT2.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type='bert'"):
        models.GPT2.from_pretrained(tmp_path)


def test_save_then_load_round_trip_without_torch(tmp_path):
    """A folder written by nnxlite loads back bit-for-bit, and neither step imports torch."""
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import numpy as np, jax.numpy as jnp
from nnxlite import models
config = models.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2)
model = models.Llama(config)
model.save_pretrained({str(tmp_path)!r})
again = models.Llama.from_pretrained({str(tmp_path)!r})
ids = jnp.array([[1, 2, 3]])
assert np.array_equal(np.asarray(model(ids)), np.asarray(again(ids)))
assert again.config.to_dict() == config.to_dict()
assert "torch" not in sys.modules and "transformers" not in sys.modules, "torch was imported"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_config_keeps_unknown_fields_and_writes_architecture():
    config = models.GPT2Config.from_dict({"model_type": "gpt2", "n_layer": 3, "summary_type": "cls_index"})
    assert config.n_layer == 3 and config.extra["summary_type"] == "cls_index"
    out = config.to_dict()
    assert out["summary_type"] == "cls_index" and out["architectures"] == ["GPT2LMHeadModel"] and out["n_layer"] == 3
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        models.GPT2Config.from_dict({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": True})


def test_state_dict_uses_torch_names_and_layouts():
    model = models.GPT2(models.GPT2Config(vocab_size=30, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    sd = model.state_dict()
    assert "lm_head.weight" not in sd  # tied: not exported, as transformers does
    # GPT-2's Conv1D keeps (in, out); LayerNorm's scale is exported as weight.
    np.testing.assert_array_equal(sd["transformer.h.0.attn.c_attn.weight"], np.asarray(model.transformer.h[0].attn.c_attn.kernel.value))
    assert sd["transformer.h.0.ln_1.weight"].shape == (8,)
