"""nnxlite.interop.torch against real torch modules: outputs after loading, export round trips, gradients.

Each test builds a torch module with random weights, loads its state dict
into the nnxlite layer with the same attribute names, and compares forward
outputs (fp32, 1e-5); then exports the nnxlite weights, loads them into a
fresh torch module and compares again.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import nnxlite as nnx  # noqa: E402
from nnxlite.interop import torch as tx  # noqa: E402

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def randn(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def torch_out(module, x: np.ndarray, *args) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x), *args).numpy()


def channels_last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)


def channels_first(y) -> np.ndarray:
    return np.moveaxis(np.asarray(y), -1, 1)


def assert_round_trip(model, fresh_torch_module, x, *, nchw=False):
    """Export the nnxlite weights into a fresh torch module; it must compute what nnxlite does."""
    missing, unexpected = fresh_torch_module.load_state_dict(tx.state_dict(model), strict=True)
    assert not missing and not unexpected
    fresh_torch_module.eval()
    y_nnx = model(jnp.asarray(channels_last(x) if nchw else x))
    y_nnx = channels_first(y_nnx) if nchw else np.asarray(y_nnx)
    np.testing.assert_allclose(torch_out(fresh_torch_module, x), y_nnx, atol=ATOL, rtol=1e-5)


# --------------------------------------------------------------------------------------
# Layer by layer
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias):
    t = nn.Linear(5, 3, bias=bias)
    model = nnx.Linear(5, 3, use_bias=bias, ctx=nnx.context(0))
    assert tx.load_state_dict(model, t.state_dict()) == tx.LoadResult([], [], [])
    x = randn(4, 5)
    np.testing.assert_allclose(model(jnp.asarray(x)), torch_out(t, x), atol=ATOL)
    assert_round_trip(model, nn.Linear(5, 3, bias=bias), x)


@pytest.mark.parametrize(
    "dims, kwargs",
    [
        (1, dict(stride=2, padding=1)),
        (2, dict(padding=1, groups=2)),
        (3, dict(stride=1, padding=0, dilation=1)),
    ],
)
def test_conv(dims, kwargs):
    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    t = conv_cls(4, 6, 3, **kwargs)
    model = nnx.Conv(
        4, 6, (3,) * dims, strides=kwargs.get("stride", 1), padding=kwargs.get("padding", 0),
        feature_group_count=kwargs.get("groups", 1), ctx=nnx.context(0),
    )
    tx.load_state_dict(model, t.state_dict())
    x = randn(2, 4, *(7,) * dims)
    np.testing.assert_allclose(channels_first(model(jnp.asarray(channels_last(x)))), torch_out(t, x), atol=ATOL)
    assert_round_trip(model, conv_cls(4, 6, 3, **kwargs), x, nchw=True)


@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_conv_transpose2d(transpose_kernel):
    t = nn.ConvTranspose2d(4, 3, kernel_size=3, stride=2)  # padding=0 is lax's 'VALID'
    model = nnx.ConvTranspose(4, 3, (3, 3), strides=2, padding="VALID", transpose_kernel=transpose_kernel,
                              ctx=nnx.context(0))
    tx.load_state_dict(model, t.state_dict())
    x = randn(2, 4, 5, 6)
    np.testing.assert_allclose(channels_first(model(jnp.asarray(channels_last(x)))), torch_out(t, x), atol=ATOL)
    assert_round_trip(model, nn.ConvTranspose2d(4, 3, kernel_size=3, stride=2), x, nchw=True)


def test_embedding():
    t = nn.Embedding(10, 4)
    model = nnx.Embed(10, 4, ctx=nnx.context(0))
    tx.load_state_dict(model, t.state_dict())
    ids = np.array([[1, 2, 9], [0, 0, 3]])
    np.testing.assert_allclose(model(jnp.asarray(ids)), torch_out(t, ids), atol=ATOL)
    fresh = nn.Embedding(10, 4)
    fresh.load_state_dict(tx.state_dict(model))
    np.testing.assert_allclose(torch_out(fresh, ids), torch_out(t, ids))


def _randomize(module):
    """Non-trivial affine parameters and running statistics (torch initializes them to 1/0)."""
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.dtype.is_floating_point:
                tensor.copy_(torch.rand_like(tensor) + 0.5 if "var" in name else torch.randn_like(tensor))
    return module


def test_layer_norm():
    t = _randomize(nn.LayerNorm(6))
    model = nnx.LayerNorm(6, epsilon=1e-5, ctx=nnx.context(0))
    tx.load_state_dict(model, t.state_dict())
    x = randn(3, 4, 6)
    np.testing.assert_allclose(model(jnp.asarray(x)), torch_out(t, x), atol=ATOL)
    assert_round_trip(model, nn.LayerNorm(6), x)


def test_group_norm():
    t = _randomize(nn.GroupNorm(3, 6))
    model = nnx.GroupNorm(6, num_groups=3, epsilon=1e-5, ctx=nnx.context(0))
    tx.load_state_dict(model, t.state_dict())
    x = randn(2, 6, 5, 5)
    np.testing.assert_allclose(channels_first(model(jnp.asarray(channels_last(x)))), torch_out(t, x), atol=ATOL)
    assert_round_trip(model, nn.GroupNorm(3, 6), x, nchw=True)


@pytest.mark.parametrize("torch_cls, spatial", [(nn.BatchNorm1d, ()), (nn.BatchNorm2d, (4, 4))])
def test_batch_norm_eval_running_stats(torch_cls, spatial):
    t = _randomize(torch_cls(5)).eval()
    with torch.no_grad():
        t.num_batches_tracked.fill_(7)
    model = nnx.BatchNorm(5, use_running_average=True, epsilon=1e-5, ctx=nnx.context(0))
    assert "num_batches_tracked" in t.state_dict()
    tx.load_state_dict(model, t.state_dict())  # num_batches_tracked accepted and dropped
    np.testing.assert_allclose(model.mean.value, t.running_mean.numpy())
    np.testing.assert_allclose(model.var.value, t.running_var.numpy())
    x = randn(3, 5, *spatial)
    y = model(jnp.asarray(channels_last(x)))
    np.testing.assert_allclose(channels_first(y), torch_out(t, x), atol=ATOL)
    assert_round_trip(model, torch_cls(5), x, nchw=True)  # strict load: num_batches_tracked is exported


@pytest.mark.parametrize("bias", [True, False])
def test_multihead_attention_packed(bias):
    t = nn.MultiheadAttention(8, 2, bias=bias, batch_first=True)
    if bias:
        _randomize(t)  # torch zeroes the biases
    model = nnx.MultiHeadAttention(2, 8, use_bias=bias, ctx=nnx.context(0))
    tx.load_state_dict(model, t.state_dict())
    q, kv = randn(2, 5, 8, seed=1), randn(2, 7, 8, seed=2)
    with torch.no_grad():
        expected = t(torch.from_numpy(q), torch.from_numpy(kv), torch.from_numpy(kv), need_weights=False)[0].numpy()
    np.testing.assert_allclose(model(jnp.asarray(q), jnp.asarray(kv)), expected, atol=ATOL)
    fresh = nn.MultiheadAttention(8, 2, bias=bias, batch_first=True)
    fresh.load_state_dict(tx.state_dict(model))
    for name, tensor in t.state_dict().items():
        np.testing.assert_allclose(fresh.state_dict()[name].numpy(), tensor.numpy(), atol=1e-7, err_msg=name)


def test_multihead_attention_separate_kv_dims():
    t = _randomize(nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True))
    assert "k_proj_weight" in t.state_dict()
    model = nnx.MultiHeadAttention(2, 8, in_kv_features=6, ctx=nnx.context(0))
    tx.load_state_dict(model, t.state_dict())
    q, kv = randn(2, 5, 8, seed=1), randn(2, 7, 6, seed=2)
    with torch.no_grad():
        expected = t(torch.from_numpy(q), torch.from_numpy(kv), torch.from_numpy(kv), need_weights=False)[0].numpy()
    np.testing.assert_allclose(model(jnp.asarray(q), jnp.asarray(kv)), expected, atol=ATOL)
    assert sorted(tx.state_dict(model)) == sorted(t.state_dict())


# --------------------------------------------------------------------------------------
# A nested model
# --------------------------------------------------------------------------------------
class TorchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3))
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.features(x).mean(dim=(2, 3))
        for block in self.blocks:
            x = x + torch.tanh(block(x))
        return self.head(self.norm(x))


class Net(nnx.Module):
    """TorchNet with the same attribute names, channels last."""

    def __init__(self, ctx):
        self.features = nnx.Sequence([
            nnx.Conv(3, 4, (3, 3), padding=1, ctx=ctx), nnx.BatchNorm(4, epsilon=1e-5, ctx=ctx), nnx.relu,
            nnx.Conv(4, 8, (3, 3), padding="VALID", ctx=ctx),
        ])
        self.blocks = [nnx.Linear(8, 8, ctx=ctx), nnx.Linear(8, 8, ctx=ctx)]
        self.norm = nnx.LayerNorm(8, epsilon=1e-5, ctx=ctx)
        self.head = nnx.Linear(8, 3, ctx=ctx)

    def __call__(self, x):
        x = self.features(x).mean(axis=(1, 2))
        for block in self.blocks:
            x = x + jnp.tanh(block(x))
        return self.head(self.norm(x))


def test_nested_module_forward_round_trip_and_gradient():
    t = _randomize(TorchNet()).eval()
    model = Net(nnx.context(0)).eval()
    assert set(tx.torch_names(model)) == set(t.state_dict())
    tx.load_state_dict(model, t.state_dict())
    x = randn(2, 3, 6, 6)
    np.testing.assert_allclose(model(jnp.asarray(channels_last(x))), torch_out(t, x), atol=ATOL, rtol=1e-5)
    assert_round_trip(model, TorchNet(), x, nchw=True)

    # The gradient of a loss w.r.t. one weight equals torch's, transposed into nnxlite's layout.
    xt = torch.from_numpy(x)
    t(xt).square().sum().backward()
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(channels_last(x))) ** 2))(model)
    np.testing.assert_allclose(grads["blocks"][1]["kernel"], t.blocks[1].weight.grad.numpy().T, atol=1e-4, rtol=1e-4)
    conv_grad = np.transpose(t.features[3].weight.grad.numpy(), (2, 3, 1, 0))
    np.testing.assert_allclose(grads["features"]["layers"][3]["kernel"], conv_grad, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------
# Inputs: torch modules, dtypes, safetensors files
# --------------------------------------------------------------------------------------
def test_accepts_an_nn_module_and_casts_dtypes():
    t = nn.Linear(4, 2).to(torch.bfloat16)
    model = nnx.Linear(4, 2, ctx=nnx.context(0))  # float32
    tx.load_state_dict(model, t)
    assert model.kernel.dtype == jnp.float32
    np.testing.assert_array_equal(model.kernel.value, t.weight.float().detach().numpy().T)
    bf16 = nnx.Linear(4, 2, param_dtype=jnp.bfloat16, ctx=nnx.context(0))
    tx.load_state_dict(bf16, t)
    exported = tx.state_dict(bf16)
    assert exported["weight"].dtype == torch.bfloat16
    assert torch.equal(exported["weight"], t.weight.detach())


def test_safetensors_file_written_by_torch(tmp_path):
    from safetensors.torch import save_file

    t = _randomize(TorchNet()).eval()
    save_file(t.state_dict(), str(tmp_path / "model.safetensors"))
    for source in (tmp_path / "model.safetensors", tmp_path, str(tmp_path)):
        model = Net(nnx.context(1)).eval()
        tx.load_state_dict(model, source)
        x = randn(2, 3, 6, 6)
        np.testing.assert_allclose(model(jnp.asarray(channels_last(x))), torch_out(t, x), atol=ATOL, rtol=1e-5)


def test_save_file_is_read_by_torch(tmp_path):
    from safetensors.torch import load_file

    model = Net(nnx.context(0)).eval()
    tx.save_file(model, tmp_path / "net.safetensors")
    fresh = TorchNet().eval()
    fresh.load_state_dict(load_file(str(tmp_path / "net.safetensors")))
    x = randn(2, 3, 6, 6)
    np.testing.assert_allclose(torch_out(fresh, x), model(jnp.asarray(channels_last(x))), atol=ATOL, rtol=1e-5)


# --------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------
def test_rules_rename_transform_and_drop_both_ways():
    """A Hugging Face style checkpoint: other names, a Conv1D stored (in, out), an extra buffer."""
    t = TorchNet()
    sd = {}
    for name, tensor in t.state_dict().items():
        name = name.replace("blocks.", "encoder.layer.")
        if name.startswith("encoder.layer.") and name.endswith(".weight"):
            tensor = tensor.T.contiguous()  # stored (in, out)
        sd["backbone." + name] = tensor
    sd["backbone.rotary.inv_freq"] = torch.ones(4)
    rules = [
        tx.Rule(r"^backbone\.", ""),
        tx.Rule(r"^encoder\.layer\.(\d+)\.weight$", r"blocks.\1.weight", np.transpose),
        tx.Rule(r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
        tx.Rule(r"\.inv_freq$", None),
    ]
    model = Net(nnx.context(0)).eval()
    result = tx.load_state_dict(model, sd, rules=rules)
    assert result.ignored_keys == ["backbone.rotary.inv_freq"]
    np.testing.assert_array_equal(model.blocks[0].kernel.value, t.blocks[0].weight.detach().numpy().T)

    exported = tx.state_dict(model, rules=rules)
    assert set(exported) == set(sd) - {"backbone.rotary.inv_freq"}
    for name, tensor in exported.items():
        assert torch.equal(tensor, sd[name]), name


def test_error_lists_everything_and_changes_nothing():
    t = TorchNet()
    sd = dict(t.state_dict())
    sd["head.weight"] = torch.zeros(4, 8)  # shape mismatch
    sd["extra.weight"] = torch.zeros(3)  # fits nothing
    del sd["norm.bias"]  # missing
    model = Net(nnx.context(0))
    before = jax.tree.map(np.array, nnx.state(model))
    with pytest.raises(tx.StateDictError) as info:
        tx.load_state_dict(model, sd)
    message = str(info.value)
    assert "'extra.weight'" in message
    assert "norm/bias: expects 'norm.bias'" in message
    assert "'head.weight': found shape (4, 8), expected (3, 8) for nnxlite head/kernel" in message
    assert "Linear.weight (out, in)" in message  # the rule behind the expected shape
    assert info.value.unexpected == ["extra.weight"] and info.value.missing == ["norm.bias"]
    after = nnx.state(model)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, before, after))), "model was changed"

    # strict=False loads what fits and reports the rest; shape mismatches still raise.
    with pytest.raises(tx.StateDictError, match="shape mismatches"):
        tx.load_state_dict(model, sd, strict=False)
    del sd["head.weight"]
    result = tx.load_state_dict(model, sd, strict=False)
    assert sorted(result.missing_keys) == ["head.weight", "norm.bias"]
    assert result.unexpected_keys == ["extra.weight"]
    np.testing.assert_array_equal(model.norm.scale.value, t.norm.weight.detach().numpy())


def test_renamed_shape_mismatch_names_the_user_rule():
    sd = {"enc.weight": torch.zeros(2, 5), "enc.bias": torch.zeros(3)}
    model = nnx.Sequence([nnx.Linear(4, 3, ctx=nnx.context(0))])
    with pytest.raises(tx.StateDictError) as info:
        tx.load_state_dict(model, sd, rules=[tx.Rule(r"^enc\.", "0.")])
    text = str(info.value)
    assert "'enc.weight' (renamed '0.weight' by Rule('^enc\\\\.', '0.'))" in text
    assert "found shape (2, 5), expected (3, 4)" in text


def test_loaded_arrays_never_share_memory_with_the_torch_tensors():
    """An in-place torch update (optimizer.step) must not reach into the loaded JAX arrays."""
    t = nn.Linear(3, 1)  # (1, 3) transposed is still contiguous: the case that could alias
    model = nnx.Linear(3, 1, ctx=nnx.context(0))
    tx.load_state_dict(model, t)
    kernel, bias = np.array(model.kernel.value), np.array(model.bias.value)
    with torch.no_grad():
        t.weight.add_(1.0)
        t.bias.add_(1.0)
    np.testing.assert_array_equal(model.kernel.value, kernel)
    np.testing.assert_array_equal(model.bias.value, bias)
    sd = {"weight": np.zeros((1, 3), np.float32), "bias": np.zeros(1, np.float32)}
    tx.load_state_dict(model, sd)
    sd["bias"][0] = 5.0
    assert float(model.bias.value[0]) == 0.0
