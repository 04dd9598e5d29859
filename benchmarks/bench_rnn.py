"""An LSTM over a long sequence: ``nnx.RNN`` vs a hand-written ``jax.lax.scan``, side by side.

The case: ``nnx.RNN(nnx.OptimizedLSTMCell(32, 64))`` over a batch of 8
sequences, forward pass and gradient of a mean-square loss, under ``jit``.
Variants, in one process with the same weights:

* **pure JAX** — ``jax.lax.scan`` over the fused LSTM step on a dict of arrays
  (the 1.0 reference), ``jax.jit(jax.value_and_grad(...))``, with the time
  axis moved to the front and back, as any batch-major RNN must;
* **nnxlite** — ``nnx.RNN``, step under ``nnx.jit`` + ``nnx.value_and_grad``;
* **flax.nnx** — ``flax.nnx.RNN(OptimizedLSTMCell)`` under ``flax.nnx.jit``.

Reported: step time (median of interleaved rounds, ratio to pure JAX in the
same round) at the longest length, and compile time (first call minus a warm
call) for each length, to show it stays flat as the sequence grows.

Run: ``python benchmarks/bench_rnn.py [--lengths 100 1000] [--quick]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import nnxlite as nnx

IN, HIDDEN, BATCH = 32, 64, 8


def lstm_step(p, carry, x):
    c, h = carry
    i, f, g, o = jnp.split(x @ p["wi"] + h @ p["wh"] + p["bh"], 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h


def variants(length: int) -> dict:
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, length, IN))
    model = nnx.RNN(nnx.OptimizedLSTMCell(IN, HIDDEN, ctx=nnx.context(0)))
    params = {
        "wi": model.cell.dense_i.kernel.value,
        "wh": model.cell.dense_h.kernel.value,
        "bh": model.cell.dense_h.bias.value,
    }
    out = {}

    def pure():
        def loss(p, x):
            zeros = jnp.zeros((BATCH, HIDDEN))
            _, ys = jax.lax.scan(lambda c, xt: lstm_step(p, c, xt), (zeros, zeros), jnp.swapaxes(x, 0, 1))
            ys = jnp.swapaxes(ys, 0, 1)  # back to (batch, time, hidden), the layout nnx.RNN returns
            return jnp.mean(ys**2)

        step = jax.jit(jax.value_and_grad(loss))
        return lambda: step(params, x)

    def ours():
        step = nnx.jit(lambda m, x: nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(m))
        return lambda: step(model, x)

    out["pure JAX jax.lax.scan"] = pure
    out["nnxlite nnx.RNN"] = ours
    try:
        from flax import nnx as fnnx
    except ImportError:
        fnnx = None
    if fnnx is not None:
        theirs = fnnx.RNN(fnnx.OptimizedLSTMCell(IN, HIDDEN, rngs=fnnx.Rngs(0)))
        theirs.cell.dense_i.kernel.set_value(params["wi"])
        theirs.cell.dense_h.kernel.set_value(params["wh"])
        theirs.cell.dense_h.bias.set_value(params["bh"])

        @fnnx.jit
        def flax_step(m, x):
            return fnnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(m)

        out["flax.nnx nnx.RNN"] = lambda: (lambda: flax_step(theirs, x))
    return out


def compile_seconds(make_call) -> float:
    call = make_call()
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - t0
    warm = min(_timed(call) for _ in range(3))
    return first - warm


def _timed(call) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 1000, 4000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed calls per variant per round")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.lengths, args.rounds, args.steps = [100, 1000], 3, 5
    print(f"# nnx.RNN (OptimizedLSTMCell {IN}->{HIDDEN}, batch {BATCH}) — {platform.machine()}, jax {jax.__version__}\n")

    compiles: dict = {}
    for n in args.lengths:
        for name, make in variants(n).items():
            compiles.setdefault(name, {})[n] = compile_seconds(make)

    longest = max(args.lengths)
    calls = {name: make() for name, make in variants(longest).items()}
    for call in calls.values():  # compile and warm up
        jax.block_until_ready(call())
    ratios: dict = {name: [] for name in calls}
    base_times = []
    for _ in range(args.rounds):
        times = {}
        for name, call in calls.items():
            jax.block_until_ready(call())
            times[name] = statistics.median(_timed(call) for _ in range(args.steps))
        base = times["pure JAX jax.lax.scan"]
        base_times.append(base)
        for name, t in times.items():
            ratios[name].append(t / base)

    print(f"| variant | step time vs pure JAX ({longest} steps) | " + " | ".join(f"compile, {n} steps" for n in args.lengths) + " |")
    print("|---|---|" + "---|" * len(args.lengths))
    for name in calls:
        cells = " | ".join(f"{compiles[name][n]:.2f} s" for n in args.lengths)
        print(f"| {name} | {statistics.median(ratios[name]):.2f}× | {cells} |")
    print(f"| *pure JAX step time (median)* | {statistics.median(base_times) * 1e3:.1f} ms | |")
    print(
        f"\nStep: forward + gradient of a mean-square loss. Median over {args.rounds} interleaved rounds of "
        f"{args.steps} calls (ratio to pure JAX in the same round). Compile: first call minus a warm call."
    )


if __name__ == "__main__":
    main()
