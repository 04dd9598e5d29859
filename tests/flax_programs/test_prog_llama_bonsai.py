"""A Llama-style model written the way jax-ml/bonsai writes its models.

The model (``nnx.Module``, plain Python list of layers, ``nnx.Einsum``
projections, RoPE, grouped-query attention, a KV cache in ``nnx.Cache``
variables) is loaded from a torch state dict saved as safetensors: build an
abstract model with ``nnx.eval_shape``, ``nnx.split`` it, fill
``abs_state.to_pure_dict()`` by a regex key mapping, ``nnx.merge``. The unit
tests compare its logits with a small torch reference implementation.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors")
from safetensors.torch import save_file  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 64
    emb_dim: int = 32
    mlp_dim: int = 48
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 8
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6


CFG = ModelConfig()


# ----------------------------------------------------------------------------- torch reference
def torch_reference(cfg, sd, tokens):
    """A plain-torch Llama forward pass (the 'reference implementation')."""
    x = sd["model.embed_tokens.weight"][tokens]
    T = tokens.shape[1]
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    freqs = torch.outer(torch.arange(T).float(), inv)
    cos, sin = torch.cat([freqs.cos()] * 2, -1), torch.cat([freqs.sin()] * 2, -1)

    def rot(t):
        a, b = t[..., : cfg.head_dim // 2], t[..., cfg.head_dim // 2 :]
        return t * cos + torch.cat([-b, a], -1) * sin

    def norm(t, w):
        return w * t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)

    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        h = norm(x, sd[p + "input_layernorm.weight"])
        q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(1, T, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(1, T, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(1, T, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = rot(q), rot(k)
        rep = cfg.num_heads // cfg.num_kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / cfg.head_dim**0.5 + mask, -1) @ v
        x = x + att.transpose(1, 2).reshape(1, T, -1) @ sd[p + "self_attn.o_proj.weight"].T
        h = norm(x, sd[p + "post_attention_layernorm.weight"])
        gate = torch.nn.functional.silu(h @ sd[p + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ sd[p + "mlp.up_proj.weight"].T)) @ sd[p + "mlp.down_proj.weight"].T
    return norm(x, sd["model.norm.weight"]) @ sd["lm_head.weight"].T


def torch_state_dict(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    d, q, kv = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,), "lm_head.weight": (cfg.vocab_size, d)}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
            p + "mlp.gate_proj.weight": (cfg.mlp_dim, d), p + "mlp.up_proj.weight": (cfg.mlp_dim, d),
            p + "mlp.down_proj.weight": (d, cfg.mlp_dim),
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
        })
    return {k: (1.0 + 0.1 * torch.randn(s, generator=g)) if len(s) == 1 else 0.2 * torch.randn(s, generator=g) for k, s in shapes.items()}


# ----------------------------------------------------------------------------- the nnx model
def make_model_lib(nnx):
    class RMSNorm(nnx.Module):
        def __init__(self, dim, eps, *, rngs):
            self.scale = nnx.Param(jnp.ones((dim,)))
            self.eps = eps

        def __call__(self, x):
            rms = jnp.sqrt(jnp.mean(x.astype(jnp.float32) ** 2, axis=-1, keepdims=True) + self.eps)
            return self.scale.value * x / rms

    def apply_rope(x, positions, theta):
        head_dim = x.shape[-1]
        inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
        freqs = positions[..., None].astype(jnp.float32) * inv  # [B, T, H/2]
        sin, cos = jnp.sin(freqs)[:, :, None], jnp.cos(freqs)[:, :, None]
        a, b = jnp.split(x, 2, axis=-1)
        return jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    class Attention(nnx.Module):
        def __init__(self, cfg, *, rngs):
            self.cfg = cfg
            d, n, k, h = cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
            self.q_proj = nnx.Einsum("BTD,DNH->BTNH", (d, n, h), rngs=rngs)
            self.k_proj = nnx.Einsum("BSD,DKH->BSKH", (d, k, h), rngs=rngs)
            self.v_proj = nnx.Einsum("BSD,DKH->BSKH", (d, k, h), rngs=rngs)
            self.o_proj = nnx.Einsum("BTNH,NHD->BTD", (n, h, d), rngs=rngs)

        def __call__(self, x, positions, cache, mask):
            cfg = self.cfg
            q = apply_rope(self.q_proj(x), positions, cfg.rope_theta)
            k = apply_rope(self.k_proj(x), positions, cfg.rope_theta)
            v = self.v_proj(x)
            if cache is not None:
                start = cache.index.value
                cache.k.value = jax.lax.dynamic_update_slice(cache.k.value, k, (0, start, 0, 0))
                cache.v.value = jax.lax.dynamic_update_slice(cache.v.value, v, (0, start, 0, 0))
                cache.index.value = start + x.shape[1]
                k, v = cache.k.value, cache.v.value
            rep = cfg.num_heads // cfg.num_kv_heads
            k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
            logits = jnp.einsum("BTNH,BSNH->BNTS", q, k) / np.sqrt(cfg.head_dim)
            logits = jnp.where(mask[:, None], logits, -1e30)
            probs = jax.nn.softmax(logits, axis=-1)
            return self.o_proj(jnp.einsum("BNTS,BSNH->BTNH", probs, v))

    class MLP(nnx.Module):
        def __init__(self, cfg, *, rngs):
            linear = lambda i, o: nnx.Linear(i, o, use_bias=False, rngs=rngs)  # noqa: E731
            self.gate_proj = linear(cfg.emb_dim, cfg.mlp_dim)
            self.up_proj = linear(cfg.emb_dim, cfg.mlp_dim)
            self.down_proj = linear(cfg.mlp_dim, cfg.emb_dim)

        def __call__(self, x):
            return self.down_proj(nnx.silu(self.gate_proj(x)) * self.up_proj(x))

    class DecoderLayer(nnx.Module):
        def __init__(self, cfg, *, rngs):
            self.input_layernorm = RMSNorm(cfg.emb_dim, cfg.norm_eps, rngs=rngs)
            self.attn = Attention(cfg, rngs=rngs)
            self.post_attention_layernorm = RMSNorm(cfg.emb_dim, cfg.norm_eps, rngs=rngs)
            self.mlp = MLP(cfg, rngs=rngs)

        def __call__(self, x, positions, cache, mask):
            x = x + self.attn(self.input_layernorm(x), positions, cache, mask)
            return x + self.mlp(self.post_attention_layernorm(x))

    class LayerCache(nnx.Module):
        def __init__(self, cfg, batch, max_len, dtype=jnp.float32):
            shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
            self.k = nnx.Cache(jnp.zeros(shape, dtype))
            self.v = nnx.Cache(jnp.zeros(shape, dtype))
            self.index = nnx.Cache(jnp.array(0, dtype=jnp.int32))

    class Llama(nnx.Module):
        def __init__(self, cfg, *, rngs):
            self.embedder = nnx.Embed(cfg.vocab_size, cfg.emb_dim, rngs=rngs)
            self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
            self.final_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps, rngs=rngs)
            self.lm_head = nnx.Linear(cfg.emb_dim, cfg.vocab_size, use_bias=False, rngs=rngs)

        def __call__(self, tokens, positions, caches=None, mask=None):
            T = tokens.shape[1]
            if mask is None:
                mask = jnp.tril(jnp.ones((T, T), bool))[None]
            x = self.embedder(tokens)
            for i, layer in enumerate(self.layers):
                x = layer(x, positions, None if caches is None else caches[i], mask)
            return self.lm_head(self.final_norm(x))

    def init_cache(cfg, batch, max_len):
        return [LayerCache(cfg, batch, max_len) for _ in range(cfg.num_layers)]

    return Llama, init_cache


# ----------------------------------------------------------------------------- loading (params.py)
def _key_mapping(cfg):
    d, n, k, h = cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    T = lambda w: w.T  # noqa: E731
    return {
        r"model\.embed_tokens\.weight": ("embedder.embedding", None),
        r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight": (r"layers.\1.attn.q_proj.kernel", lambda w: w.reshape(n, h, d).transpose(2, 0, 1)),
        r"model\.layers\.(\d+)\.self_attn\.k_proj\.weight": (r"layers.\1.attn.k_proj.kernel", lambda w: w.reshape(k, h, d).transpose(2, 0, 1)),
        r"model\.layers\.(\d+)\.self_attn\.v_proj\.weight": (r"layers.\1.attn.v_proj.kernel", lambda w: w.reshape(k, h, d).transpose(2, 0, 1)),
        r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight": (r"layers.\1.attn.o_proj.kernel", lambda w: w.T.reshape(n, h, d)),
        r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight": (r"layers.\1.mlp.\2_proj.kernel", T),
        r"model\.layers\.(\d+)\.(input|post_attention)_layernorm\.weight": (r"layers.\1.\2_layernorm.scale", None),
        r"model\.norm\.weight": ("final_norm.scale", None),
        r"lm_head\.weight": ("lm_head.kernel", T),
    }


def _stoi(s):
    try:
        return int(s)
    except ValueError:
        return s


def create_model_from_safe_tensors(nnx, file, cfg, use_replace=False):
    Llama, _ = make_model_lib(nnx)
    abs_model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(params=0)))
    graph_def, abs_state = nnx.split(abs_model)
    state_dict = abs_state.to_pure_dict()
    mapping = _key_mapping(cfg)
    with safetensors.safe_open(file, framework="numpy") as sf:
        for torch_key in sf.keys():
            tensor = sf.get_tensor(torch_key)
            for pattern, (repl, transform) in mapping.items():
                if re.fullmatch(pattern, torch_key):
                    jax_key = re.sub(pattern, repl, torch_key)
                    break
            else:
                raise KeyError(torch_key)
            *parents, last = [_stoi(k) for k in jax_key.split(".")]
            node = state_dict
            for k in parents:
                node = node[k]
            value = transform(tensor) if transform else tensor
            if value.shape != node[last].shape:
                raise ValueError(f"{jax_key}: {value.shape} vs {node[last].shape}")
            node[last] = jnp.asarray(value)
    if use_replace:
        nnx.replace_by_pure_dict(abs_state, state_dict)
        return nnx.merge(graph_def, abs_state)
    return nnx.merge(graph_def, state_dict)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    sd = torch_state_dict(CFG)
    path = tmp_path_factory.mktemp("llama") / "model.safetensors"
    save_file(sd, str(path))
    return sd, str(path)


TOKENS = np.array([[3, 17, 42, 5, 9, 60, 1]], dtype=np.int64)


@pytest.mark.parametrize("use_replace", [False, True])
def test_logits_match_torch_reference(nnx, checkpoint, use_replace):
    sd, path = checkpoint
    model = create_model_from_safe_tensors(nnx, path, CFG, use_replace)
    assert not isinstance(model.lm_head.kernel.value, jax.ShapeDtypeStruct)
    T = TOKENS.shape[1]
    logits = model(jnp.asarray(TOKENS), jnp.arange(T)[None])
    with torch.no_grad():
        expected = torch_reference(CFG, sd, torch.from_numpy(TOKENS)).numpy()
    np.testing.assert_allclose(np.asarray(logits), expected, atol=2e-4, rtol=1e-4)


def test_kv_cache_decode_matches_prefill(nnx, checkpoint):
    sd, path = checkpoint
    model = create_model_from_safe_tensors(nnx, path, CFG)
    _, init_cache = make_model_lib(nnx)
    T, max_len = TOKENS.shape[1], 12
    tokens = jnp.asarray(TOKENS, dtype=jnp.int32)
    full = model(tokens, jnp.arange(T)[None])

    @nnx.jit
    def step(model, caches, token, pos):
        mask = (jnp.arange(max_len) <= pos)[None, None, :]
        return model(token, pos[None, None], caches, mask)[:, -1]

    caches = init_cache(CFG, 1, max_len)
    outs = [step(model, caches, tokens[:, i : i + 1], jnp.array(i)) for i in range(T)]
    np.testing.assert_allclose(jnp.stack(outs, 1), full, atol=2e-4, rtol=1e-4)
    assert int(caches[0].index.value) == T
    assert all(isinstance(c.k, nnx.Cache) for c in caches)


def test_param_count_and_abstract_shapes(nnx):
    Llama, _ = make_model_lib(nnx)
    abs_model = nnx.eval_shape(lambda: Llama(CFG, rngs=nnx.Rngs(params=0)))
    _, abs_state = nnx.split(abs_model)
    shapes = jax.tree.map(lambda x: x.shape, abs_state.to_pure_dict())
    assert shapes["layers"][1]["attn"]["q_proj"]["kernel"] == (32, 4, 8)
    assert shapes["layers"][0]["mlp"]["down_proj"]["kernel"] == (48, 32)
    n_params = sum(np.prod(s) for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))
    expected = sum(np.prod(v.shape) for v in torch_state_dict(CFG).values())
    assert n_params == expected


def test_bf16_cast_of_loaded_params(nnx, checkpoint):
    _, path = checkpoint
    model = create_model_from_safe_tensors(nnx, path, CFG)
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: x.astype(jnp.bfloat16), state)
    model_bf16 = nnx.merge(graphdef, state)
    assert model_bf16.lm_head.kernel.value.dtype == jnp.bfloat16
    positions = jnp.arange(TOKENS.shape[1])[None]
    low = model_bf16(jnp.asarray(TOKENS), positions)
    np.testing.assert_allclose(low.astype(jnp.float32), model(jnp.asarray(TOKENS), positions), atol=0.1)
