"""ResNet parity against torchvision resnet18 / resnet50 state dicts saved as safetensors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
safetensors_torch = pytest.importorskip("safetensors.torch")

import jax.numpy as jnp  # noqa: E402

import nnxlite as nnx  # noqa: E402
from nnxlite import models  # noqa: E402

from _model_parity import flat_grad, rel  # noqa: E402

forward = nnx.jit(lambda model, x: model(x))


def _randomize_batch_norms(net):
    """Non-trivial running statistics and affine parameters, so the BN conversion is really exercised."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)


@pytest.fixture(scope="module", params=["resnet18", "resnet50"])
def reference(request, tmp_path_factory):
    torch.manual_seed(0)
    net = getattr(torchvision.models, request.param)(num_classes=7)
    _randomize_batch_norms(net)
    net.eval()
    path = tmp_path_factory.mktemp(request.param) / f"{request.param}.safetensors"
    safetensors_torch.save_file(net.state_dict(), str(path))
    return request.param, net, path, models.ResNet.from_pretrained(path)


def _images(seed=0, size=32):
    return np.random.RandomState(seed).randn(2, 3, size, size).astype(np.float32)


def test_config_inferred_from_state_dict(reference):
    name, _, _, model = reference
    expected = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}[name]
    assert (model.config.block, model.config.layers, model.config.num_classes) == (*expected, 7)
    assert model.layer2[0].downsample is not None and model.layer2[1].downsample is None


def test_logits_match(reference):
    _, net, _, model = reference
    x = _images()
    ref = net(torch.tensor(x)).detach().numpy()
    out = forward(model, x)
    assert out.shape == (2, 7)
    assert rel(out, ref) < 1e-4


def test_gradient_matches(reference):
    _, net, _, model = reference
    x = _images(1)
    weights = np.random.RandomState(2).randn(2, 7).astype(np.float32)
    net.zero_grad()
    (net(torch.tensor(x)) * torch.tensor(weights)).sum().backward()
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) * weights)))(model)
    ref = net.layer1[0].conv1.weight.grad.numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
    assert rel(flat_grad(grads, ("layer1", 0, "conv1", "kernel")), ref) < 1e-4
    ref = net.layer3[0].bn2.weight.grad.numpy()
    assert rel(flat_grad(grads, ("layer3", 0, "bn2", "scale")), ref) < 1e-4


def test_save_pretrained_loads_in_torchvision(reference, tmp_path):
    name, net, _, model = reference
    model.save_pretrained(tmp_path)
    again = getattr(torchvision.models, name)(num_classes=7)
    again.load_state_dict(safetensors_torch.load_file(str(tmp_path / "model.safetensors")))  # strict
    again.eval()
    x = _images(3)
    np.testing.assert_allclose(again(torch.tensor(x)).detach().numpy(), net(torch.tensor(x)).detach().numpy(), atol=1e-6)


def test_train_mode_uses_batch_statistics(reference):
    name, net, path, _ = reference
    if name != "resnet18":
        pytest.skip("one depth is enough for train mode; keeps the suite fast")
    model = models.ResNet.from_pretrained(path).train()
    x = _images(4, size=64)  # batch statistics of 1x1 maps of 2 images would be too ill-conditioned to compare
    before = np.asarray(model.bn1.mean.value)
    out = nnx.jit(lambda m, x: m(x))(model, x)
    net.train()
    try:
        ref = net(torch.tensor(x)).detach().numpy()
    finally:
        net.eval()
    assert rel(out, ref) < 1e-4
    assert not np.allclose(np.asarray(model.bn1.mean.value), before)  # running averages were updated
