"""Reading and writing Hugging Face folders without torch: safetensors I/O, shards, config.json, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnxlite import models
from nnxlite.models._hub import SafetensorsReader, open_checkpoint, write_safetensors

ROOT = Path(__file__).resolve().parents[1]


def test_safetensors_round_trip_against_the_reference_library(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    import ml_dtypes

    tensors = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([1, -2, 3], np.int64),
        "c": np.linspace(0, 1, 5).astype(ml_dtypes.bfloat16),
        "scalar": np.array(2.5, np.float16),
    }
    ours = tmp_path / "ours.safetensors"
    write_safetensors(ours, tensors)
    loaded = st.load_file(str(ours))  # the reference reader accepts our file
    for k, v in tensors.items():
        np.testing.assert_array_equal(loaded[k], v)
    theirs = tmp_path / "theirs.safetensors"
    st.save_file({k: v for k, v in tensors.items() if k != "c"}, str(theirs))
    reader = SafetensorsReader(theirs)  # and we read the reference writer's file
    assert sorted(reader) == ["a", "b", "scalar"] and reader.shape("a") == (3, 4)
    for k in reader:
        np.testing.assert_array_equal(reader[k], tensors[k])


def test_sharded_folder_is_read_through_its_index(tmp_path):
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"x": np.ones(3, np.float32)})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"y": np.zeros(2, np.float32)})
    index = {"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    reader = open_checkpoint(tmp_path)
    assert sorted(reader) == ["x", "y"] and reader["x"].tolist() == [1.0, 1.0, 1.0]


def test_missing_weights_file_says_what_is_there(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin.*safetensors only"):
        open_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
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
