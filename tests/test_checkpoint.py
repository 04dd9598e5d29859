"""nnx.save / nnx.restore on safetensors files."""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import nnxlite as nnx
from nnxlite import checkpoint

safetensors_numpy = pytest.importorskip("safetensors.numpy")


class Count(nnx.Variable):
    pass


class Net(nnx.Module):
    def __init__(self, seed: int, *, key=None):
        ctx = nnx.context(seed)
        self.backbone = nnx.Sequence([nnx.Linear(4, 4, ctx=ctx), nnx.Linear(4, 4, ctx=ctx)])
        self.bn = nnx.BatchNorm(4, ctx=ctx)
        self.head = nnx.Linear(4, 4, ctx=ctx)
        self.rngs = nnx.context(jax.random.key(seed) if key is None else key, dropout=seed + 1)
        self.calls = Count(0)
        self.temperature = nnx.Variable(0.5)
        self.step = nnx.OptState(jnp.asarray(0, jnp.uint32))

    def __call__(self, x):
        self.calls.value += 1
        return self.head(self.bn(jax.nn.relu(self.backbone(x))))


def values(node) -> dict:
    """Comparable host values for every path (typed keys as their key data)."""
    out = {}
    for p, v in nnx.state(node).flat().items():
        if hasattr(v, "dtype") and jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            v = ("key", str(jax.random.key_impl(v)), np.asarray(jax.random.key_data(v)))
        elif hasattr(v, "dtype"):
            v = ("array", str(v.dtype), np.asarray(v))
        out[p] = v
    return out


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for p in a:
        x, y = a[p], b[p]
        if isinstance(x, tuple):
            assert x[:2] == y[:2], p
            np.testing.assert_array_equal(x[2], y[2], err_msg=str(p))
        else:
            assert type(x) is type(y) and x == y, p


def trained(seed: int = 0) -> Net:
    model = Net(seed)
    model(jnp.ones((2, 4)))  # moves BatchNorm stats and the call counter
    model.rngs.dropout()  # and an RNG counter
    model.rngs.default()
    model.step.value = jnp.asarray(7, jnp.uint32)
    model.temperature.value = 0.25
    return model


def test_module_round_trip_in_place(tmp_path):
    model = trained(0)
    path = tmp_path / "net.safetensors"
    nnx.save(path, model)
    fresh = Net(1)
    assert nnx.restore(path, fresh) is fresh
    assert_same(values(fresh), values(model))
    # Variable objects and types are the target's own: restored in place.
    assert type(fresh.calls) is Count and fresh.calls.value == 1 and type(fresh.calls.value) is int
    assert fresh.temperature.value == 0.25 and isinstance(fresh.temperature.value, float)
    assert fresh.step.value.dtype == jnp.uint32 and int(fresh.step.value) == 7
    assert isinstance(fresh.head.kernel.value, jax.Array)


def test_rng_streams_continue_identically_after_restore(tmp_path):
    cases = [
        (jax.random.key(3), jax.random.key(4)),
        (jax.random.key(3, impl="rbg"), jax.random.key(4, impl="rbg")),
        (jax.random.PRNGKey(3), jax.random.PRNGKey(4)),  # raw uint32 keys: the stream wraps them
    ]
    for key, other in cases:
        model = Net(0, key=key)
        model.rngs.dropout()
        model.rngs.default()
        path = tmp_path / "rng.safetensors"
        nnx.save(path, model)
        fresh = nnx.restore(path, Net(0, key=other))
        assert int(fresh.rngs.dropout.count.value) == 1 and fresh.rngs.default.count.value.dtype == jnp.uint32
        for name in ("dropout", "default", "default"):
            a, b = model.rngs.make_rng(name), fresh.rngs.make_rng(name)
            if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                assert jax.random.key_impl(a) == jax.random.key_impl(b)
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            np.testing.assert_array_equal(a, b)


def test_typed_key_is_stored_as_key_data_with_its_impl(tmp_path):
    model = Net(0, key=jax.random.key(5, impl="rbg"))
    path = tmp_path / "k.safetensors"
    nnx.save(path, model)
    with safetensors_numpy.safe_open(str(path), "np") as f:
        manifest = json.loads(f.metadata()["nnxlite"])
        data = f.get_tensor("rngs/default/key")
        tensor_names = set(f.keys())
    entry = manifest["entries"]["rngs/default/key"]
    assert entry["kind"] == "key" and entry["impl"] == "rbg" and entry["dtype"] == "key<rbg>"
    assert entry["type"] == "nnxlite.variables.RngKey"
    np.testing.assert_array_equal(data, jax.random.key_data(model.rngs.default.key.value))
    dropout = manifest["entries"]["rngs/dropout/key"]  # an int seed: a typed key of the default impl
    assert dropout["kind"] == "key" and dropout["impl"] == "threefry2x32" and dropout["shape"] == []
    assert manifest["entries"]["backbone/layers/0/kernel"]["path"] == ["backbone", "layers", 0, "kernel"]
    calls = manifest["entries"]["calls"]
    assert calls["kind"] == "int" and calls["value"] == "0" and calls["type"].endswith(".Count")
    assert "calls" not in tensor_names  # plain Python values live in the manifest only


def test_raw_uint32_keys_of_older_checkpoints_restore_into_typed_key_streams(tmp_path):
    """Before streams held typed keys, nnxlite saved them as uint32[..., 2] arrays; those files still load."""
    model = trained(0)
    split = nnx.Rngs(params=0).split(3)  # a split stream too: uint32[3, 2] in such a file
    old = {"rngs": {"dropout": {"key": jax.random.key_data(model.rngs.dropout.key.value)}}}
    old_split = {"params": {"key": jax.random.key_data(split.params.key.value)}}
    path, path_split = tmp_path / "old.safetensors", tmp_path / "old_split.safetensors"
    nnx.save(path, nnx.State(old))
    nnx.save(path_split, nnx.State(old_split))
    entry = json.loads(safetensors_numpy.safe_open(str(path), "np").metadata()["nnxlite"])["entries"]
    assert entry["rngs/dropout/key"]["kind"] == "array" and entry["rngs/dropout/key"]["dtype"] == "uint32"

    fresh = Net(1)
    nnx.restore(path, fresh, strict=False)
    key = fresh.rngs.dropout.key.value
    assert key.dtype == model.rngs.dropout.key.value.dtype and key.shape == ()
    assert fresh.rngs.dropout.count.value.shape == ()
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(model.rngs.dropout.key.value))
    target = nnx.Rngs(params=5).split(3)
    nnx.restore(path_split, target, strict=False)
    assert target.params.key.shape == (3,)
    np.testing.assert_array_equal(jax.random.key_data(target.params.key.value), old_split["params"]["key"])
    # Raw data of the wrong shape for the target's key is still refused, naming the path.
    with pytest.raises(ValueError, match=r"params/key: expected key<fry>\[\]"):
        nnx.restore(path_split, nnx.Rngs(params=5), strict=False)


def test_state_target_returns_new_state_and_leaves_target(tmp_path):
    model = trained(0)
    path = tmp_path / "s.safetensors"
    nnx.save(path, nnx.state(model))
    target = nnx.state(Net(1))
    before = values_of_state(target)
    restored = nnx.restore(path, target)
    assert isinstance(restored, nnx.State) and restored is not target
    assert_same(values_of_state(restored), values(model))
    assert_same(values_of_state(target), before)


def values_of_state(state):
    h = nnx.merge(nnx.graphdef(Net(9)), state)
    return values(h)


def test_pure_dict_and_plain_values(tmp_path):
    tree = {
        "w": np.arange(6, dtype=np.float64).reshape(2, 3),
        "bf16": jnp.array([1.5, -2.0], jnp.bfloat16),
        "f8": jnp.array([0.5, 2.0], ml_dtypes.float8_e4m3fn),
        "c": jnp.array([1 + 2j], jnp.complex64),
        "np_scalar": np.float32(3.0),
        "nested": {"n": 12345678901234567890, "x": float("nan"), "flag": True, "name": "hi", "none": None, "z": 1j},
    }
    path = tmp_path / "tree.safetensors"
    nnx.save(path, tree)
    out = nnx.restore(path, tree).flat()
    np.testing.assert_array_equal(out[("w",)], tree["w"])
    assert isinstance(out[("w",)], np.ndarray)  # the target's container type is kept
    assert out[("bf16",)].dtype == jnp.bfloat16 and out[("bf16",)].tolist() == [1.5, -2.0]
    assert out[("f8",)].dtype == ml_dtypes.float8_e4m3fn and out[("f8",)].astype(np.float32).tolist() == [0.5, 2.0]
    assert out[("c",)].tolist() == [1 + 2j]
    assert isinstance(out[("np_scalar",)], np.floating) and out[("np_scalar",)] == 3.0
    assert out[("nested", "n")] == 12345678901234567890
    assert np.isnan(out[("nested", "x")])
    assert out[("nested", "flag")] is True and out[("nested", "name")] == "hi" and out[("nested", "none")] is None
    assert out[("nested", "z")] == 1j


def abstract_like(model):
    """The model with every value replaced by a ShapeDtypeStruct (what eval_shape builds)."""
    graphdef, state = nnx.split(model)
    def shape_dtype(x):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype) if hasattr(x, "dtype") else x

    return nnx.merge(graphdef, jax.tree.map(shape_dtype, state))


def test_restore_into_an_abstract_model(tmp_path):
    model = trained(0)
    path = tmp_path / "m.safetensors"
    nnx.save(path, model)
    abstract = abstract_like(Net(1))
    assert isinstance(abstract.head.kernel.value, jax.ShapeDtypeStruct)
    assert jax.dtypes.issubdtype(abstract.rngs.default.key.value.dtype, jax.dtypes.prng_key)
    loaded = nnx.restore(path, abstract)
    assert isinstance(loaded.head.kernel.value, jax.Array)
    assert_same(values(loaded), values(model))
    # Abstract targets are checked like concrete ones.
    wrong = abstract_like(nnx.Linear(4, 5, ctx=nnx.context(0)))
    with pytest.raises(ValueError, match="kernel: expected float32\\[4, 5\\], found float32\\[4, 4\\]"):
        nnx.restore(path, wrong, prefix="head")
    rbg = abstract_like(Net(1, key=jax.random.key(0, impl="rbg")))
    with pytest.raises(ValueError, match="rngs/default/key: expected key<rbg>\\[\\], found key<fry>\\[\\]"):
        nnx.restore(path, rbg)


def test_untyped_state_restores_into_a_typed_module(tmp_path):
    layer = nnx.Linear(4, 4, ctx=nnx.context(0))
    path = tmp_path / "pure.safetensors"
    nnx.save(path, nnx.state(layer).to_pure_dict())  # no Variable types recorded
    fresh = nnx.restore(path, nnx.Linear(4, 4, ctx=nnx.context(1)))
    np.testing.assert_array_equal(fresh.kernel.value, layer.kernel.value)


def test_load_without_target(tmp_path):
    model = trained(0)
    path = tmp_path / "m.safetensors"
    nnx.save(path, model)
    state = checkpoint.load(path)
    assert state.paths() == nnx.state(model).paths()
    assert_same(values_of_state(state), values(model))
    kinds = {p: t.__name__ for p, (t, _) in zip(state.paths(), state._structure.defs)}
    assert kinds[("backbone", "layers", 0, "kernel")] == "Param"
    assert kinds[("bn", "mean")] == "BatchStat"
    assert kinds[("rngs", "default", "count")] == "RngCount"
    assert kinds[("calls",)] == "Count"  # this test module is imported, so its class is found


def test_mismatches_are_reported_together_and_nothing_is_written(tmp_path):
    path = tmp_path / "m.safetensors"
    nnx.save(path, trained(0))

    class Other(Net):
        def __init__(self):
            super().__init__(1)
            self.head = nnx.Linear(4, 3, ctx=nnx.context(0))  # shape mismatch
            self.bn.mean.value = self.bn.mean.value.astype(jnp.float16)  # dtype mismatch
            del self.temperature  # missing from the target: unexpected in the file
            self.extra = nnx.Param(jnp.zeros(2))  # missing from the file
            self.calls = nnx.BatchStat(jnp.zeros(()))  # kind mismatch (int in the file)

    target = Other()
    before = values(target)
    with pytest.raises(ValueError) as err:
        nnx.restore(path, target)
    text = str(err.value)
    assert "nothing was restored" in text
    assert "missing from the checkpoint (1): extra" in text
    assert "unexpected in the checkpoint (1): temperature" in text
    assert "head/kernel: expected float32[4, 3], found float32[4, 4]" in text
    assert "head/bias: expected float32[3], found float32[4]" in text
    assert "bn/mean: expected float16[4], found float32[4]" in text
    assert "calls: expected float32[], found int" in text
    assert_same(values(target), before)


def test_variable_type_mismatch_is_an_error(tmp_path):
    class A(nnx.Module):
        def __init__(self, t):
            self.x = t(jnp.zeros(2))

    path = tmp_path / "t.safetensors"
    nnx.save(path, A(nnx.Param))
    with pytest.raises(ValueError, match="x: expected Variable type BatchStat, found Param"):
        nnx.restore(path, A(nnx.BatchStat))
    nnx.restore(path, A(nnx.Param))


def test_partial_restore_into_a_submodule(tmp_path):
    donor = trained(0)
    path = tmp_path / "backbone.safetensors"
    nnx.save(path, donor.backbone)
    model = Net(1)
    others = {p: v for p, v in values(model).items() if p[0] != "backbone"}
    nnx.restore(path, model.backbone)
    assert_same(values(model.backbone), values(donor.backbone))
    assert_same({p: v for p, v in values(model).items() if p[0] != "backbone"}, others)


def test_prefix_selects_a_subtree_of_a_whole_model_checkpoint(tmp_path):
    donor = trained(0)
    path = tmp_path / "whole.safetensors"
    nnx.save(path, donor)
    target = nnx.Sequence([nnx.Linear(4, 4, ctx=nnx.context(5)), nnx.Linear(4, 4, ctx=nnx.context(5))])
    nnx.restore(path, target, prefix="backbone")
    assert_same(values(target), values(donor.backbone))
    nnx.restore(path, target.layers[1], prefix=("backbone", "layers", 1))
    kernel = nnx.Param(jnp.zeros((4, 4)))  # a prefix naming one Variable fills a Variable target
    nnx.restore(path, kernel, prefix="head/kernel")
    np.testing.assert_array_equal(kernel.value, donor.head.kernel.value)
    with pytest.raises(ValueError, match="(?s)under prefix 'head'.*missing from the checkpoint"):
        nnx.restore(path, target, prefix="head")


def test_non_strict_restores_the_intersection(tmp_path):
    path = tmp_path / "m.safetensors"
    donor = trained(0)
    nnx.save(path, donor)

    class Grown(nnx.Module):
        def __init__(self):
            self.head = nnx.Linear(4, 4, ctx=nnx.context(9))
            self.adapter = nnx.Param(jnp.ones(3))

    target = Grown()
    with pytest.raises(ValueError, match="adapter"):
        nnx.restore(path, target)
    nnx.restore(path, target, strict=False)
    np.testing.assert_array_equal(target.head.kernel.value, donor.head.kernel.value)
    np.testing.assert_array_equal(target.adapter.value, jnp.ones(3))
    # Shape mismatches are still errors when not strict.
    target.head = nnx.Linear(4, 5, ctx=nnx.context(0))
    with pytest.raises(ValueError, match="head/kernel: expected float32\\[4, 5\\]"):
        nnx.restore(path, target, strict=False)


def test_optimizer_checkpoint_resumes_training_exactly(tmp_path):
    def loss_fn(model, x):
        return jnp.mean(model(x) ** 2)

    x = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
    model = Net(0)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    for _ in range(3):
        optimizer.update(nnx.grad(loss_fn)(model, x))
    path = tmp_path / "opt.safetensors"
    nnx.save(path, optimizer)

    resumed = nnx.Optimizer(Net(1), optax.adam(1e-2))
    nnx.restore(path, resumed)
    assert int(resumed.step.value) == 3
    for _ in range(2):
        optimizer.update(nnx.grad(loss_fn)(model, x))
        resumed.update(nnx.grad(loss_fn)(resumed.model, x))
    assert_same(values(resumed), values(optimizer))


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    old = trained(0)
    nnx.save(path, old)
    real_write = checkpoint._write_bytes
    calls = []

    def crashing_write(f, data):
        calls.append(len(memoryview(data).cast("B")))
        if len(calls) == 3:  # a half-written file: the header and some tensors are on disk
            raise OSError("disk full")
        real_write(f, data)

    monkeypatch.setattr(checkpoint, "_write_bytes", crashing_write)
    with pytest.raises(OSError, match="disk full"):
        nnx.save(path, trained(1))
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]  # the temporary file was removed
    assert_same(values(nnx.restore(path, Net(2))), values(old))

    # A crash at the rename step behaves the same.
    monkeypatch.setattr(checkpoint, "_write_bytes", real_write)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("power cut")))
    with pytest.raises(OSError, match="power cut"):
        nnx.save(path, trained(1))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]
    assert_same(values(nnx.restore(path, Net(2))), values(old))


def test_overwrite_and_truncated_file_errors(tmp_path):
    path = tmp_path / "m.safetensors"
    nnx.save(path, trained(0))
    if os.name == "posix":
        umask = os.umask(0o022)
        os.umask(umask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file, not owner-only
    nnx.save(path, trained(1))
    assert_same(values(nnx.restore(path, Net(2))), values(trained(1)))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        nnx.restore(broken, Net(0))
    with pytest.raises(FileNotFoundError):
        nnx.restore(tmp_path / "nope.safetensors", Net(0))


def test_foreign_safetensors_file_without_manifest(tmp_path):
    path = tmp_path / "foreign.safetensors"
    kernel = np.arange(6, dtype=np.float32).reshape(2, 3)
    safetensors_numpy.save_file({"kernel": kernel, "bias": np.ones(3, np.float32)}, str(path))
    layer = nnx.restore(path, nnx.Linear(2, 3, ctx=nnx.context(0)))
    np.testing.assert_array_equal(layer.kernel.value, kernel)
    with pytest.raises(ValueError, match="bias: expected float32\\[4\\], found float32\\[3\\]"):
        nnx.restore(path, nnx.Linear(2, 4, ctx=nnx.context(0)))


def test_save_errors(tmp_path):
    class Weird(nnx.Module):
        def __init__(self):
            self.v = nnx.Variable(object())

    with pytest.raises(TypeError, match="Cannot save v: a object"):
        nnx.save(tmp_path / "w.safetensors", Weird())

    clash = nnx.State({("a", 0): jnp.ones(1), ("a", "0"): jnp.ones(1)})
    with pytest.raises(ValueError, match="tensor name 'a/0'"):
        nnx.save(tmp_path / "c.safetensors", clash)

    @jax.jit
    def inside(x):
        nnx.save(tmp_path / "j.safetensors", {"x": x})
        return x

    with pytest.raises(TypeError, match="traced value"):
        inside(jnp.ones(2))
    assert not os.listdir(tmp_path)


def test_save_and_restore_do_not_need_the_safetensors_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    nnx.save(tmp_path / "x.safetensors", {"x": jnp.arange(3.0)})
    np.testing.assert_array_equal(nnx.restore(tmp_path / "x.safetensors", {"x": jnp.zeros(3)})["x"], jnp.arange(3.0))


def test_files_open_in_the_safetensors_library(tmp_path):
    model = trained(0)
    path = tmp_path / "m.safetensors"
    nnx.save(path, model)
    tensors = safetensors_numpy.load_file(str(path))
    np.testing.assert_array_equal(tensors["head/kernel"], model.head.kernel.value)
    assert tensors["bn/mean"].dtype == np.float32 and "calls" not in tensors
    with safetensors_numpy.safe_open(str(path), "np") as f:
        assert set(f.metadata()) == {"nnxlite", "nnxlite_checksum"}
