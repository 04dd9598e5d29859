"""nnxlite.interop.torch without torch: renaming rules, numpy and safetensors inputs, and the import boundary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from nnxlite.interop import torch as tx
from nnxlite.interop._rules import Rule, apply_rules, invert_rules

ROOT = Path(__file__).resolve().parents[1]


def test_rule_inverse_is_derived_for_literals_with_groups():
    rule = Rule(r"^h\.(\d+)\.attn\.c_(\w+)\.", r"blocks.\1.attn.\2.")
    assert rule.apply("h.3.attn.c_proj.weight") == "blocks.3.attn.proj.weight"
    assert rule.invert("blocks.3.attn.proj.weight") == "h.3.attn.c_proj.weight"
    # Groups may be used in another order in the target.
    swap = Rule(r"^(\w+)\.(\d+)$", r"\2.\1")
    assert swap.apply("layer.7") == "7.layer" and swap.invert("7.layer") == "layer.7"
    # An anchor-free rename applies wherever it matches.
    assert Rule(r"\.gamma$", ".weight").invert("norm.weight") == "norm.gamma"


def test_rule_without_derivable_inverse_needs_one_for_export():
    rule = Rule(r"^model\.(?:decoder\.)?", "")  # the removed text is unknown
    assert rule.apply("model.decoder.x") == "x"
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    with pytest.raises(ValueError, match=r"(?s)cannot be run backwards.*inverse=\(pattern, target\)"):
        tx.state_dict(model, rules=[rule], framework="numpy")
    given = Rule(r"^model\.(?:decoder\.)?", "", inverse=(r"^", "model.decoder."))
    assert sorted(tx.state_dict(model, rules=[given], framework="numpy")) == ["model.decoder.bias", "model.decoder.weight"]


def test_chained_rules_invert_to_a_name_that_maps_forward():
    rules = [Rule(r"^a\.", "b."), Rule(r"^b\.(\d+)\.w$", r"c.\1.w"), Rule(r"^b\.", "d.")]
    for source in ("a.1.w", "a.x", "b.2.w", "zzz"):
        target, matched = apply_rules(rules, source)
        back, back_matched = invert_rules(rules, target)
        assert apply_rules(rules, back) == (target, back_matched)  # several sources may share a target
    assert invert_rules(rules, "c.1.w")[0] == "a.1.w"  # the inverse of every matching rule is tried first


def test_numpy_state_dict_and_tuple_rules():
    model = nnx.Sequence([nnx.Linear(3, 2, ctx=nnx.context(0)), nnx.relu, nnx.Linear(2, 1, ctx=nnx.context(1))])
    w0, b0 = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, np.float32)
    sd = {"net.0.weight": w0, "net.0.bias": b0, "net.2.weight": np.ones((1, 2), np.float32),
          "net.2.bias": np.zeros(1, np.float32)}
    tx.load_state_dict(model, sd, rules=[(r"^net\.", "")])
    np.testing.assert_array_equal(model.layers[0].kernel.value, w0.T)
    x = np.array([[1.0, -2.0, 0.5]], np.float32)
    expected = np.maximum(x @ w0.T + b0, 0) @ np.ones((2, 1)) + 0
    np.testing.assert_allclose(model(jnp.asarray(x)), expected, rtol=1e-6)
    back = tx.state_dict(model, rules=[(r"^net\.", "")], framework="numpy")
    assert sorted(back) == sorted(sd)
    np.testing.assert_array_equal(back["net.0.weight"], w0)


def test_bad_inputs_give_clear_errors(tmp_path):
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickle file; nnxlite never unpickles"):
        tx.load_state_dict(model, tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pickle files \\['pytorch_model.bin'\\]"):
        tx.load_state_dict(model, tmp_path)
    with pytest.raises(TypeError, match="expected a mapping"):
        tx.load_state_dict(model, [1, 2])
    with pytest.raises(ValueError, match="framework must be"):
        tx.state_dict(model, framework="jax")


def test_shape_dtype_targets_are_filled():
    """A model built abstractly (jax.ShapeDtypeStruct values) can be filled without allocating twice."""
    import jax

    # (nnx.update refuses ShapeDtypeStructs into a concrete model: build it abstract.)
    abstract = nnx.eval_shape(lambda: nnx.Linear(3, 2, ctx=nnx.context(0)))
    assert isinstance(abstract.kernel.value, jax.ShapeDtypeStruct)
    tx.load_state_dict(abstract, {"weight": np.ones((2, 3), np.float32), "bias": np.zeros(2, np.float32)})
    assert isinstance(abstract.kernel.value, jax.Array) and abstract.kernel.shape == (3, 2)


def _run(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_import_nnxlite_never_imports_torch():
    _run("import nnxlite, sys; assert 'torch' not in sys.modules, 'nnxlite imported torch'")


def test_loading_safetensors_needs_no_torch(tmp_path):
    pytest.importorskip("safetensors")
    code = f"""
import sys, numpy as np, nnxlite as nnx
from nnxlite.interop import torch as tx
model = nnx.Sequence([nnx.Conv(1, 2, (3, 3), ctx=nnx.context(0)), nnx.BatchNorm(2, ctx=nnx.context(0))])
tx.save_file(model, {str(tmp_path / 'm.safetensors')!r})
other = nnx.Sequence([nnx.Conv(1, 2, (3, 3), ctx=nnx.context(1)), nnx.BatchNorm(2, ctx=nnx.context(1))])
tx.load_state_dict(other, {str(tmp_path)!r} + '/m.safetensors')
assert np.array_equal(other.layers[0].kernel.value, model.layers[0].kernel.value)
assert 'torch' not in sys.modules, 'reading safetensors imported torch'
"""
    _run(code)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int64", "int8", "bool"])
def test_safetensors_reader_matches_the_safetensors_package(tmp_path, dtype):
    """nnxlite reads .safetensors itself (plain reads, no mmap); compare with the reference reader."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    import ml_dtypes

    from nnxlite.interop._sources import open_source

    np_dtype = np.dtype(getattr(ml_dtypes, dtype) if dtype == "bfloat16" else dtype)
    arrays = {
        "a.weight": (np.arange(24).reshape(2, 3, 4) % 5).astype(np_dtype),
        "scalar": np.array(3).astype(np_dtype),
        "empty": np.zeros((0, 3), np_dtype),
    }
    safetensors_numpy.save_file(arrays, str(tmp_path / "x.safetensors"))
    reference = safetensors_numpy.load_file(str(tmp_path / "x.safetensors"))
    with open_source(tmp_path / "x.safetensors") as source:
        assert sorted(source.names()) == sorted(arrays)
        for name in arrays:
            got = source.read(name)
            assert got.dtype == reference[name].dtype and source.shape(name) == reference[name].shape
            np.testing.assert_array_equal(got.astype(np.float32), reference[name].astype(np.float32))


def test_damaged_safetensors_files_are_named(tmp_path):
    pytest.importorskip("safetensors")
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 4)
    with pytest.raises(ValueError, match="junk.safetensors is not a .safetensors file"):
        tx.load_state_dict(model, tmp_path / "junk.safetensors")
    tx.save_file(model, tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-4])
    with pytest.raises(ValueError, match="truncated"):
        tx.load_state_dict(model, tmp_path / "cut.safetensors")


def test_rule_that_only_transforms_keeps_the_name_both_ways():
    """GPT-2's Conv1D stores Linear weights as (in, out): a transform-only rule fixes the layout."""
    model = nnx.Sequence([nnx.Linear(3, 2, ctx=nnx.context(0))])
    w_in_out = np.arange(6, dtype=np.float32).reshape(3, 2)
    rules = [Rule(r"\.weight$", transform=np.transpose)]
    tx.load_state_dict(model, {"0.weight": w_in_out, "0.bias": np.zeros(2, np.float32)}, rules=rules)
    np.testing.assert_array_equal(model.layers[0].kernel.value, w_in_out)  # (in, out) is nnxlite's layout already
    back = tx.state_dict(model, rules=rules, framework="numpy")
    np.testing.assert_array_equal(back["0.weight"], w_in_out)


def test_lazy_mapping_shapes_are_read_without_loading():
    class Lazy(dict):
        loaded: list = []

        def shape(self, name):
            return dict.__getitem__(self, name).shape

        def __getitem__(self, name):
            Lazy.loaded.append(name)
            return dict.__getitem__(self, name)

    model = nnx.Linear(3, 2, ctx=nnx.context(0))
    lazy = Lazy(weight=np.zeros((5, 3), np.float32), bias=np.zeros(2, np.float32))
    with pytest.raises(tx.StateDictError, match="found shape \\(5, 3\\), expected \\(2, 3\\)"):
        tx.load_state_dict(model, lazy)
    assert Lazy.loaded == []  # the check needed no array


def test_damaged_header_fields_are_caught_by_the_checkpoint_reader(tmp_path):
    """One safetensors reader: a header whose tensors overlap is refused before anything is read."""
    import json

    data = np.arange(4, dtype=np.float32)
    header = {"weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "bias": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}  # overlaps weight
    raw = json.dumps(header).encode()
    (tmp_path / "overlap.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + data.tobytes())
    model = nnx.Linear(2, 2, ctx=nnx.context(0))
    before = np.asarray(model.kernel.value).copy()
    with pytest.raises(ValueError, match=r"overlap\.safetensors .*damaged.*'bias' starts at byte 8"):
        tx.load_state_dict(model, tmp_path / "overlap.safetensors")
    np.testing.assert_array_equal(model.kernel.value, before)


def test_transformed_tensors_are_read_once(tmp_path, monkeypatch):
    """The shape check after a rule's transform must not read the tensor a second time."""
    from nnxlite.interop import _sources

    model = nnx.Sequence([nnx.Linear(3, 2, ctx=nnx.context(0))])
    w_in_out = np.arange(6, dtype=np.float32).reshape(3, 2)
    other = nnx.Sequence([nnx.Linear(3, 2, ctx=nnx.context(1))])
    other.layers[0].kernel.value = w_in_out
    rules = [Rule(r"\.weight$", transform=np.transpose)]
    tx.save_file(other, tmp_path / "m.safetensors", rules=rules)
    reads: list[str] = []
    real_read = _sources.SafetensorsSource.read
    monkeypatch.setattr(_sources.SafetensorsSource, "read",
                        lambda self, name, out=None: reads.append(name) or real_read(self, name, out))
    tx.load_state_dict(model, tmp_path / "m.safetensors", rules=rules)
    assert sorted(reads) == ["0.bias", "0.weight"]
    np.testing.assert_array_equal(model.layers[0].kernel.value, w_in_out)
    # A transform that needs real values still gets them (the stand-in fails, the tensor is read).
    reads.clear()

    def in_place(w):
        w[...] = w * 1  # writes: impossible on the read-only stand-in
        return w.T

    tx.load_state_dict(model, tmp_path / "m.safetensors", rules=[Rule(r"\.weight$", transform=in_place)])
    assert reads.count("0.weight") == 2
    np.testing.assert_array_equal(model.layers[0].kernel.value, w_in_out)


@pytest.mark.parametrize("stored", ["float32", "float16"])
def test_converted_tensors_read_through_one_scratch_buffer_stay_distinct(tmp_path, stored):
    """Transposed or cast tensors share one reused read buffer; every Variable must still get its own values."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.RandomState(0)
    arrays = {f"{i}.weight": rng.randn(5, 4).astype(stored) for i in range(3)}  # torch layout (out, in)
    arrays.update({f"{i}.bias": rng.randn(5).astype(stored) for i in range(3)})
    arrays["embed.weight"] = rng.randn(6, 4).astype(stored)  # same layout: adopted as read when float32
    safetensors_numpy.save_file(arrays, str(tmp_path / "m.safetensors"))

    class Net(nnx.Module):
        def __init__(self, ctx):
            self.layers = [nnx.Linear(4, 5, ctx=ctx) for _ in range(3)]
            self.embed = nnx.Embed(6, 4, ctx=ctx)

    model = Net(nnx.context(0))
    tx.load_state_dict(model, tmp_path / "m.safetensors", rules=[Rule(r"^(\d)\.", r"layers.\1.")])
    for i in range(3):
        np.testing.assert_array_equal(model.layers[i].kernel.value, arrays[f"{i}.weight"].astype(np.float32).T)
        np.testing.assert_array_equal(model.layers[i].bias.value, arrays[f"{i}.bias"].astype(np.float32))
    np.testing.assert_array_equal(model.embed.embedding.value, arrays["embed.weight"].astype(np.float32))


@pytest.mark.parametrize("stored", ["float32", "float16"])
def test_linear_weights_are_transposed_in_row_blocks(tmp_path, monkeypatch, stored):
    """Large Linear weights are read a block of rows at a time; tiny blocks exercise partial and uneven reads."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    monkeypatch.setattr(tx, "_BLOCK_BYTES", 64)  # 64 bytes: 3 rows of 5 float32 (or 6 of float16) per block
    rng = np.random.RandomState(0)
    arrays = {"weight": rng.randn(37, 5).astype(stored), "bias": rng.randn(37).astype(stored)}
    safetensors_numpy.save_file(arrays, str(tmp_path / "m.safetensors"))
    for model in (nnx.Linear(5, 37, ctx=nnx.context(0)), nnx.eval_shape(lambda: nnx.Linear(5, 37, ctx=nnx.context(0)))):
        tx.load_state_dict(model, tmp_path / "m.safetensors")
        np.testing.assert_array_equal(model.kernel.value, arrays["weight"].astype(np.float32).T)
        np.testing.assert_array_equal(model.bias.value, arrays["bias"].astype(np.float32))
