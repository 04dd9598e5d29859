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

Also measured, each in its own table:

* **compile time** — the first call (trace + lower + compile + one step)
  minus a steady-state step, per variant;
* **gradient memory** — the temporary bytes of a compiled ``grad`` alone
  (``jax.jit(jax.grad(loss))`` vs ``nnx.jit`` of ``nnx.grad`` vs flax's),
  the case of flax issue #5116 (``nnx.grad`` reported at ~2× the temporary
  memory of ``jax.grad``);
* **per-step dispatch** — a tiny decoder (2 layers, d_model 128) where the
  step is so short that the framework's per-call cost dominates.

Attention is ``jax.nn.dot_product_attention``; on a GPU the script asks for
the cuDNN implementation and says so in its header (falling back to XLA's,
with a note, when cuDNN refuses the configuration).

Targets (nnxlite issues 4 and 12): ≥ 0.98× pure-JAX throughput, ≤ 1.0× its
peak memory, ``nnx.grad`` temporaries ≤ ``jax.grad``'s, tiny-model step
≤ 1.10× pure JAX.

Run on a GPU, one command, about 5 minutes on an H100/H200 (it stops
starting new sections after ``--budget`` seconds, default 480)::

    python benchmarks/bench_gpu_gpt.py --json gpu_results.json

Without a GPU it refuses unless ``--smoke`` (tiny sizes on CPU, to check
that it runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
TINY = Config(layers=2, d_model=128, heads=4, seq=128, vocab=256, batch=8)
TINY_SMOKE = dataclasses.replace(TINY, dtype="float32", seq=32)

# The attention implementation passed to jax.nn.dot_product_attention (set by main()).
ATTENTION = {"implementation": None}


def pick_attention(cfg: Config) -> str | None:
    """``"cudnn"`` when the device accepts this configuration on the cuDNN path, else None (XLA)."""
    if jax.devices()[0].platform != "gpu":
        return None
    shape = (1, cfg.seq, cfg.heads, cfg.d_model // cfg.heads)
    q = jnp.ones(shape, jnp.dtype(cfg.dtype))
    try:
        f = jax.jit(lambda q: jax.nn.dot_product_attention(q, q, q, is_causal=True, implementation="cudnn"))
        jax.block_until_ready(f(q))
        return "cudnn"
    except Exception as err:  # unsupported dtype / head size / cuDNN version
        print(f"note: cuDNN attention unavailable ({type(err).__name__}: {str(err)[:200]}); using XLA's")
        return None


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
    a = jax.nn.dot_product_attention(
        q.reshape(shape), k.reshape(shape), v.reshape(shape), is_causal=True, **ATTENTION
    )
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


def make_variants(cfg: Config, tx, with_flax: bool = True) -> dict:
    """name -> (step callable with no arguments, lowered step for memory analysis).

    Also records, in ``GRAD_LOWERED``, a compiled-able ``grad`` of the loss alone per variant.
    """
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
    pure_loss = lambda p, tokens: gpt_loss(p["top"], p["blocks"], tokens, cfg.heads)  # noqa: E731
    GRAD_LOWERED["jax.grad"] = lambda: jax.jit(jax.grad(pure_loss)).lower(params, tokens)

    # nnxlite
    model = GPT(copy(top), copy(blocks), cfg.heads)
    optimizer = nnx.Optimizer(model, tx)

    def nnx_step(model, optimizer, tokens):
        loss, grads = nnx.value_and_grad(lambda m: m.loss(tokens))(model)
        optimizer.update(grads)
        return loss

    nnx_jit = nnx.jit(nnx_step, donate_argnums=(0, 1))
    out["nnxlite"] = (lambda: nnx_jit(model, optimizer, tokens), nnx_jit.lower(model, optimizer, tokens))
    nnx_grad = nnx.jit(lambda m, tokens: nnx.grad(lambda m: m.loss(tokens))(m))
    GRAD_LOWERED["nnxlite nnx.grad"] = lambda: nnx_grad.lower(model, tokens)

    # flax.nnx
    try:
        from flax import nnx as fnnx
    except ImportError:
        fnnx = None
    if fnnx is None or not with_flax:
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
    flax_grad = fnnx.jit(lambda m, tokens: fnnx.grad(lambda m: m.loss(tokens))(m))
    GRAD_LOWERED["flax.nnx nnx.grad"] = lambda: flax_grad.lower(fmodel, tokens)
    return out


GRAD_LOWERED: dict = {}


def peak_bytes(lowered) -> tuple[float, float] | tuple[None, None]:
    """(peak, temporary) bytes of the compiled program from XLA's memory analysis."""
    if lowered is None:
        return None, None
    m = lowered.compile().memory_analysis()
    if m is None:
        return None, None
    peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return float(peak), float(m.temp_size_in_bytes)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def ratio(a, b) -> str:
    return f"{a / b:.3f}×" if a is not None and b else "n/a"


def time_variants(variants: dict, rounds: int, steps: int) -> tuple[dict, dict]:
    """(first-call seconds, per-round step seconds) per variant; rounds interleaved, rotated."""
    first, per_step = {}, {n: [] for n in variants}
    for name, (run, _) in variants.items():
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        first[name] = time.perf_counter() - t0
        jax.block_until_ready(run())
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            run = variants[name][0]
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = run()
            jax.block_until_ready(loss)
            per_step[name].append((time.perf_counter() - t0) / steps)
    return first, per_step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; runs on CPU (checks the script only)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median reported)")
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round (GPT-small)")
    parser.add_argument("--tiny-steps", type=int, default=200, help="steps per variant per round (tiny model)")
    parser.add_argument("--batch", type=int, default=None, help="override the GPT-small batch size (default 8)")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds after which no new section starts (the whole run fits in 10 minutes)")
    parser.add_argument("--no-flax", action="store_true", help="skip the flax.nnx variants")
    parser.add_argument("--json", type=str, default=None, help="also write every number to this JSON file")
    args = parser.parse_args()
    t_start = time.perf_counter()
    device = jax.devices()[0]
    if device.platform != "gpu" and not args.smoke:
        print(f"No GPU found (default device: {device.platform}); run with --smoke for a tiny CPU check.")
        return
    cfg, tiny = (SMOKE, TINY_SMOKE) if args.smoke else (Config(), TINY)
    if args.batch:
        cfg = dataclasses.replace(cfg, batch=args.batch)
    if args.smoke:
        args.rounds, args.steps, args.tiny_steps = 2, 2, 5
    tx = optax.adamw(3e-4, weight_decay=0.1)
    versions = [f"jax {jax.__version__}", f"optax {optax.__version__}", f"nnxlite {nnx.__version__}"]
    try:
        import flax

        versions.append(f"flax {flax.__version__}")
    except ImportError:
        pass
    kind = getattr(device, "device_kind", device.platform)
    ATTENTION["implementation"] = pick_attention(cfg)
    print(f"# GPT decoder training — {kind}, {platform.machine()}, {', '.join(versions)}")
    print(f"config: {cfg}")
    print(f"attention: jax.nn.dot_product_attention(implementation={ATTENTION['implementation']!r})")
    results: dict = {"device": str(kind), "versions": versions, "config": dataclasses.asdict(cfg),
                     "attention": ATTENTION["implementation"]}

    # -- 1. GPT-small: throughput, MFU, memory, compile time ------------------------------------
    variants = make_variants(cfg, tx, with_flax=not args.no_flax)
    first, per_step = time_variants(variants, args.rounds, args.steps)
    names = list(variants)
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in str(kind)), None)
    fpt = flops_per_token(cfg)
    tokens_per_step = cfg.batch * cfg.seq
    memory = {n: peak_bytes(variants[n][1]) for n in names}
    base = names[0]
    base_rate = tokens_per_step / statistics.median(per_step[base])
    compile_s = {n: first[n] - statistics.median(per_step[n]) for n in names}
    print("\n## GPT-small training step\n")
    print("| variant | tokens/s | vs pure JAX | MFU | compiled peak memory | vs pure JAX | temp bytes | vs pure JAX "
          "| compile time | vs pure JAX |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results["gpt"] = {}
    for name in names:
        rate = tokens_per_step / statistics.median(per_step[name])
        peak, temp = memory[name]
        mfu = rate * fpt / peak_flops if peak_flops else None
        print(f"| {name} | {rate:,.0f} | {rate / base_rate:.3f}× | {f'{mfu:.1%}' if mfu else 'n/a'} "
              f"| {fmt_bytes(peak)} | {ratio(peak, memory[base][0])} | {fmt_bytes(temp)} | {ratio(temp, memory[base][1])} "
              f"| {compile_s[name]:.1f} s | {compile_s[name] / compile_s[base]:.2f}× |")
        results["gpt"][name] = {"tokens_per_s": rate, "mfu": mfu, "peak_bytes": peak, "temp_bytes": temp,
                                "compile_s": compile_s[name]}
    print(f"\nMedian of {args.rounds} interleaved rounds of {args.steps} steps; {fpt / 1e9:.2f} GFLOP/token; "
          "compile time = first call minus a steady step.")
    if device.platform == "gpu":
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            print(f"process peak bytes in use (all variants): {stats['peak_bytes_in_use'] / 2**30:.2f} GiB")
    del variants

    # -- 2. gradient temporaries: nnx.grad vs jax.grad (flax #5116) ---------------------------------
    if time.perf_counter() - t_start < args.budget:
        grads = {n: peak_bytes(make()) for n, make in GRAD_LOWERED.items()}
        base_temp = grads["jax.grad"][1]
        print("\n## Gradient alone: compiled temporary memory\n")
        print("| variant | temp bytes | vs jax.grad | peak memory |\n|---|---|---|---|")
        for name, (peak, temp) in grads.items():
            print(f"| {name} | {fmt_bytes(temp)} | {ratio(temp, base_temp)} | {fmt_bytes(peak)} |")
        results["grad_memory"] = {n: {"peak_bytes": p, "temp_bytes": t} for n, (p, t) in grads.items()}
    else:
        print("\n(gradient-memory section skipped: over --budget)")
    GRAD_LOWERED.clear()

    # -- 3. tiny model: per-step dispatch ------------------------------------------------------------
    if time.perf_counter() - t_start < args.budget:
        variants = make_variants(tiny, tx, with_flax=not args.no_flax)
        GRAD_LOWERED.clear()
        _, per_step = time_variants(variants, max(args.rounds, 5), args.tiny_steps)
        names = list(variants)
        base_t = statistics.median(per_step[names[0]])
        print(f"\n## Tiny decoder ({tiny.layers}×{tiny.d_model}, seq {tiny.seq}, batch {tiny.batch}): per-step time\n")
        print("| variant | step time | vs pure JAX |\n|---|---|---|")
        results["tiny"] = {}
        for name in names:
            # ratio per round (same-round pairs are robust to drift), then the median
            r = statistics.median(a / b for a, b in zip(per_step[name], per_step[names[0]]))
            t = statistics.median(per_step[name])
            print(f"| {name} | {t * 1e6:,.0f} µs | {r:.2f}× |")
            results["tiny"][name] = {"step_s": t, "ratio": r}
        print(f"\nbase step {base_t * 1e6:,.0f} µs; median of per-round ratios.")
    else:
        print("\n(tiny-model section skipped: over --budget)")
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
