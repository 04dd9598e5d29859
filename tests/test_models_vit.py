"""ViT parity against transformers' ViTForImageClassification (random tiny config, nothing downloaded)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

import nnxlite as nnx  # noqa: E402
from nnxlite import models  # noqa: E402

from _model_parity import flat_grad, quiet_transformers, rel  # noqa: E402

forward = nnx.jit(lambda model, x: model(x))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    quiet_transformers()
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, image_size=16,
        patch_size=4, num_labels=5,
    )
    hf = transformers.ViTForImageClassification(config).eval()
    folder = tmp_path_factory.mktemp("vit")
    hf.save_pretrained(folder)
    return hf, folder, models.ViT.from_pretrained(folder)


def _pixels(seed=0):
    return np.random.RandomState(seed).randn(2, 3, 16, 16).astype(np.float32)


def test_logits_match_nchw_and_nhwc(reference):
    hf, _, model = reference
    x = _pixels()
    ref = hf(torch.tensor(x)).logits.detach().numpy()
    out = forward(model, x)
    assert out.shape == (2, 5) and model.config.num_labels == 5
    assert rel(out, ref) < 1e-4
    np.testing.assert_allclose(np.asarray(forward(model, x.transpose(0, 2, 3, 1))), np.asarray(out), atol=1e-6)


def test_gradient_matches(reference):
    hf, _, model = reference
    x = _pixels(1)
    weights = np.random.RandomState(2).randn(2, 5).astype(np.float32)
    hf.zero_grad()
    (hf(torch.tensor(x)).logits * torch.tensor(weights)).sum().backward()
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) * weights)))(model)
    # Conv weight OIHW in torch, HWIO here.
    ref = hf.vit.embeddings.patch_embeddings.projection.weight.grad.numpy().transpose(2, 3, 1, 0)
    path = ("vit", "embeddings", "patch_embeddings", "projection", "kernel")
    assert rel(flat_grad(grads, path), ref) < 1e-4
    ref = hf.vit.embeddings.position_embeddings.grad.numpy()
    assert rel(flat_grad(grads, ("vit", "embeddings", "position_embeddings")), ref) < 1e-4


def test_save_pretrained_loads_in_transformers(reference, tmp_path):
    hf, _, model = reference
    model.save_pretrained(tmp_path)
    again = transformers.ViTForImageClassification.from_pretrained(tmp_path).eval()
    x = _pixels(3)
    ref = hf(torch.tensor(x)).logits.detach().numpy()
    np.testing.assert_allclose(again(torch.tensor(x)).logits.detach().numpy(), ref, rtol=0, atol=1e-6)


def test_wrong_image_layout_is_refused(reference):
    _, _, model = reference
    with pytest.raises(ValueError, match="NCHW"):
        model(np.zeros((2, 16, 16), np.float32))
