"""GPT-style decoder training throughput and memory: nnxlite vs pure JAX vs flax.nnx.

The case: a GPT-2-small-shaped decoder (12 layers, d_model 768, 12 heads,
sequence 1024, vocabulary 50304, tied embeddings) trained with AdamW in
bfloat16 (parameters, optimizer state and compute), state donated to the step.
All variants share the same layer math (functions of arrays below) and start
from the same parameters, so they differ only in how the framework moves
state in and out of ``jit``:

* **pure JAX** — ``jax.jit`` over a dict of params and the optax state;
* **nnxlite** — ``nnx.jit(step, donate_argnums=(0, 1))(model, optimizer, tokens)``;
* **flax.nnx** — ``nnx.jit`` (graph mode) with ``nnx.Optimizer``, when installed.

Reported per variant: tokens/s (median of interleaved rounds), model FLOP
utilisation (6·N + 12·L·d·T FLOPs per token against the device's dense bf16
peak), and the compiled step's peak memory from XLA's memory analysis
(arguments + outputs + temporaries − aliased bytes), plus its temporary
bytes alone: this is where a ``grad`` that kept a second copy of the
parameters (flax issue #5116) would show.

Targets (nnxlite issue 4): ≥ 0.98× pure-JAX throughput, ≤ 1.05× its peak memory.

Run on a GPU: ``python benchmarks/bench_gpu_gpt.py``. Without a GPU it
refuses unless ``--smoke`` (tiny sizes on CPU, to check that it runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnxlite as nnx

# Dense bf16 peak FLOP/s by device kind (substring match on jax's device_kind).
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "V100": 125e12,
}


@dataclasses.dataclass(frozen=True)
class Config:
    layers: int = 12
    d_model: int = 768
    heads: int = 12
    seq: int = 1024
    vocab: int = 50304
    batch: int = 8
    dtype: str = "bfloat16"


SMOKE = Config(layers=2, d_model=64, heads=4, seq=64, vocab=256, batch=2, dtype="float32")


# -- the shared math -------------------------------------------------------------------------
def layer_norm(x, scale, bias, eps=1e-5):
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), -1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def block_fn(p: dict, x, heads: int):
    b, t, d = x.shape
    h = layer_norm(x, p["ln1_scale"], p["ln1_bias"])
    qkv = h @ p["attn_w"] + p["attn_b"]
    q, k, v = jnp.split(qkv, 3, axis=-1)
    shape = (b, t, heads, d // heads)
    a = jax.nn.dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), is_causal=True)
    x = x + a.reshape(b, t, d) @ p["proj_w"] + p["proj_b"]
    h = layer_norm(x, p["ln2_scale"], p["ln2_bias"])
    h = jax.nn.gelu(h @ p["fc_w"] + p["fc_b"]) @ p["out_w"] + p["out_b"]
    return x + h


def gpt_loss(p: dict, blocks: list, tokens, heads: int):
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    x = p["wte"][inputs] + p["wpe"][: inputs.shape[1]]
    for bp in blocks:
        x = block_fn(bp, x, heads)
    x = layer_norm(x, p["lnf_scale"], p["lnf_bias"])
    logits = (x @ p["wte"].T).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def init_params(cfg: Config, key) -> tuple[dict, list]:
    dt = jnp.dtype(cfg.dtype)
    d = cfg.d_model
    keys = iter(jax.random.split(key, 4 + 6 * cfg.layers))

    def normal(shape, std=0.02):
        return (jax.random.normal(next(keys), shape, jnp.float32) * std).astype(dt)

    top = {
        "wte": normal((cfg.vocab, d)),
        "wpe": normal((cfg.seq, d), 0.01),
        "lnf_scale": jnp.ones(d, dt),
        "lnf_bias": jnp.zeros(d, dt),
    }
    blocks = []
    for _ in range(cfg.layers):
        blocks.append({
            "ln1_scale": jnp.ones(d, dt), "ln1_bias": jnp.zeros(d, dt),
            "attn_w": normal((d, 3 * d)), "attn_b": jnp.zeros(3 * d, dt),
            "proj_w": normal((d, d), 0.02 / np.sqrt(2 * cfg.layers)), "proj_b": jnp.zeros(d, dt),
            "ln2_scale": jnp.ones(d, dt), "ln2_bias": jnp.zeros(d, dt),
            "fc_w": normal((d, 4 * d)), "fc_b": jnp.zeros(4 * d, dt),
            "out_w": normal((4 * d, d), 0.02 / np.sqrt(2 * cfg.layers)), "out_b": jnp.zeros(d, dt),
        })
    return top, blocks


def flops_per_token(cfg: Config) -> float:
    d, L = cfg.d_model, cfg.layers
    n_non_embedding = L * (12 * d * d + 13 * d)
    return 6 * n_non_embedding + 6 * cfg.vocab * d + 12 * L * d * (cfg.seq - 1)


# -- the variants ----------------------------------------------------------------------------
class Block(nnx.Module):
    def __init__(self, arrays: dict):
        for name, a in arrays.items():
            setattr(self, name, nnx.Param(a))
        self.names = tuple(arrays)

    def arrays(self) -> dict:
        return {n: getattr(self, n).value for n in self.names}


class GPT(nnx.Module):
    def __init__(self, top: dict, blocks: list, heads: int):
        for name, a in top.items():
            setattr(self, name, nnx.Param(a))
        self.top_names = tuple(top)
        self.blocks = [Block(b) for b in blocks]
        self.heads = heads

    def loss(self, tokens):
        top = {n: getattr(self, n).value for n in self.top_names}
        return gpt_loss(top, [b.arrays() for b in self.blocks], tokens, self.heads)


def make_variants(cfg: Config, tx) -> dict:
    """name -> (step callable with no arguments, lowered step for memory analysis)."""
    top, blocks = init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (cfg.batch, cfg.seq + 1), 0, cfg.vocab)
    copy = lambda t: jax.tree.map(lambda a: jnp.array(a, copy=True), t)  # noqa: E731 (donation needs own buffers)
    out = {}

    # pure JAX
    params = copy({"top": top, "blocks": blocks})
    opt_state = tx.init(params)

    def pure_step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(lambda p: gpt_loss(p["top"], p["blocks"], tokens, cfg.heads))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    pure_jit = jax.jit(pure_step, donate_argnums=(0, 1))
    pure_lowered = pure_jit.lower(params, opt_state, tokens)  # lowering donates nothing yet
    box = [params, opt_state]

    def run_pure():
        box[0], box[1], loss = pure_jit(box[0], box[1], tokens)
        return loss

    out["pure JAX"] = (run_pure, pure_lowered)

    # nnxlite
    model = GPT(copy(top), copy(blocks), cfg.heads)
    optimizer = nnx.Optimizer(model, tx)

    def nnx_step(model, optimizer, tokens):
        loss, grads = nnx.value_and_grad(lambda m: m.loss(tokens))(model)
        optimizer.update(grads)
        return loss

    nnx_jit = nnx.jit(nnx_step, donate_argnums=(0, 1))
    out["nnxlite"] = (lambda: nnx_jit(model, optimizer, tokens), nnx_jit.lower(model, optimizer, tokens))

    # flax.nnx
    try:
        from flax import nnx as fnnx
    except ImportError:
        return out

    class FBlock(fnnx.Module):
        def __init__(self, arrays):
            for name, a in arrays.items():
                setattr(self, name, fnnx.Param(a))
            self.names = tuple(arrays)

        def arrays(self):
            return {n: getattr(self, n)[...] for n in self.names}

    class FGPT(fnnx.Module):
        def __init__(self, top, blocks, heads):
            for name, a in top.items():
                setattr(self, name, fnnx.Param(a))
            self.top_names = tuple(top)
            self.blocks = fnnx.List([FBlock(b) for b in blocks])
            self.heads = heads

        def loss(self, tokens):
            t = {n: getattr(self, n)[...] for n in self.top_names}
            return gpt_loss(t, [b.arrays() for b in self.blocks], tokens, self.heads)

    fmodel = FGPT(copy(top), copy(blocks), cfg.heads)
    fopt = fnnx.Optimizer(fmodel, tx, wrt=fnnx.Param)

    def flax_step(model, optimizer, tokens):
        loss, grads = fnnx.value_and_grad(lambda m: m.loss(tokens))(model)
        optimizer.update(model, grads)
        return loss

    flax_jit = fnnx.jit(flax_step, donate_argnums=(0, 1))
    try:
        flax_lowered = flax_jit.lower(fmodel, fopt, tokens)
    except Exception:
        flax_lowered = None
    out["flax.nnx"] = (lambda: flax_jit(fmodel, fopt, tokens), flax_lowered)
    return out


def peak_bytes(lowered) -> tuple[float, float] | tuple[None, None]:
    if lowered is None:
        return None, None
    m = lowered.compile().memory_analysis()
    if m is None:
        return None, None
    peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return float(peak), float(m.temp_size_in_bytes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; runs on CPU")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args()
    device = jax.devices()[0]
    if device.platform != "gpu" and not args.smoke:
        print(f"No GPU found (default device: {device.platform}); run with --smoke for a tiny CPU check.")
        return
    cfg = SMOKE if args.smoke else Config()
    if args.batch:
        cfg = dataclasses.replace(cfg, batch=args.batch)
    if args.smoke:
        args.rounds, args.steps = 2, 2
    tx = optax.adamw(3e-4, weight_decay=0.1)
    versions = [f"jax {jax.__version__}", f"optax {optax.__version__}", f"nnxlite {nnx.__version__}"]
    try:
        import flax

        versions.append(f"flax {flax.__version__}")
    except ImportError:
        pass
    kind = getattr(device, "device_kind", device.platform)
    print(f"# GPT decoder training — {kind}, {platform.machine()}, {', '.join(versions)}")
    print(f"config: {cfg}")
    variants = make_variants(cfg, tx)
    for run, _ in variants.values():
        for _ in range(2):
            jax.block_until_ready(run())
    names = list(variants)
    rates: dict[str, list] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            run = variants[name][0]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = run()
            jax.block_until_ready(loss)
            rates[name].append(args.steps * cfg.batch * cfg.seq / (time.perf_counter() - t0))
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in str(kind)), None)
    fpt = flops_per_token(cfg)
    base_rate = statistics.median(rates[names[0]])
    base_peak, base_temp = peak_bytes(variants[names[0]][1])
    print("\n| variant | tokens/s | vs pure JAX | MFU | compiled peak memory | vs pure JAX | temp bytes | vs pure JAX |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        rate = statistics.median(rates[name])
        peak, temp = peak_bytes(variants[name][1]) if name != names[0] else (base_peak, base_temp)
        mfu = f"{rate * fpt / peak_flops:.1%}" if peak_flops else "n/a"
        peak_s = "n/a" if peak is None else f"{peak / 2**30:.2f} GiB" if peak >= 2**30 else f"{peak / 2**20:.2f} MiB"
        peak_r = f"{peak / base_peak:.3f}×" if peak is not None and base_peak else "n/a"
        temp_s = f"{temp / 2**20:.1f} MiB" if temp is not None else "n/a"
        temp_r = f"{temp / base_temp:.3f}×" if temp is not None and base_temp else "n/a"
        print(f"| {name} | {rate:,.0f} | {rate / base_rate:.3f}× | {mfu} | {peak_s} | {peak_r} | {temp_s} | {temp_r} |")
    if device.platform == "gpu":
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            print(f"\nprocess peak bytes in use (all variants): {stats['peak_bytes_in_use'] / 2**30:.2f} GiB")
    print(f"\nMedian of {args.rounds} interleaved rounds of {args.steps} steps; {fpt / 1e9:.2f} GFLOP/token.")


if __name__ == "__main__":
    main()
