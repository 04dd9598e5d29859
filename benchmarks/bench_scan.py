"""Compile time of a training step over a deep stack of blocks: scan vs unrolled, side by side.

The case: ``depth`` residual MLP blocks (``x + W2 gelu(W1 x + b1) + b2``,
width 64), batch 16; the step computes the gradient of a mean-square loss
under ``jit``. We time the first call (trace + lower + compile + one run)
minus a warm call, for each variant and depth, in one process:

* **pure JAX scan** — ``jax.lax.scan`` over a dict of stacked params (the 1.0 reference);
* **pure JAX unrolled** — a Python loop over per-layer params;
* **nnxlite nnx.scan** — blocks stacked with ``nnx.vmap`` over the constructor,
  applied with ``nnx.scan``, step under ``nnx.jit`` + ``nnx.grad``;
* **nnxlite unrolled** — a Python list of blocks, same step;
* **flax.nnx scan** — ``split_rngs`` + ``nnx.vmap`` to create, ``nnx.scan`` to apply;
* **Equinox scan** — ``eqx.filter_vmap`` to create, ``jax.lax.scan`` over
  ``eqx.partition``-ed params, ``eqx.filter_jit`` + ``eqx.filter_grad``.

Run: ``python benchmarks/bench_scan.py [--depths 4 16 64] [--quick]``.
"""

from __future__ import annotations

import argparse
import _bench  # noqa: F401  (first: puts this checkout's nnxlite on the path)
import time

import jax
import jax.numpy as jnp

import nnxlite as nnx

WIDTH, BATCH = 64, 16


class Block(nnx.Module):
    def __init__(self, *, ctx):
        self.fc1 = nnx.Linear(WIDTH, WIDTH, ctx=ctx)
        self.fc2 = nnx.Linear(WIDTH, WIDTH, ctx=ctx)

    def __call__(self, x):
        return x + self.fc2(jax.nn.gelu(self.fc1(x)))


class ScanStack(nnx.Module):
    def __init__(self, depth, *, ctx):
        self.blocks = nnx.vmap(lambda c: Block(ctx=c), axis_size=depth)(ctx)

    def __call__(self, x):
        return nnx.scan(lambda h, b: b(h), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, self.blocks)


class LoopStack(nnx.Module):
    def __init__(self, depth, *, ctx):
        self.blocks = [Block(ctx=ctx) for _ in range(depth)]

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def pure_block(p, x):
    # Same association as the module versions, x + (W2 h + b2): XLA's compile time is
    # sensitive to it (x + W2 h + b2 compiles ~4x slower unrolled on CPU).
    return x + ((jax.nn.gelu(x @ p["w1"] + p["b1"]) @ p["w2"]) + p["b2"])


def time_first_call(make_call) -> float:
    """Seconds for the first call minus a warm call (≈ trace + lower + compile)."""
    call = make_call()
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - t0
    warm = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        warm.append(time.perf_counter() - t0)
    return first - min(warm)


def variants(depth: int) -> dict:
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, WIDTH))
    out = {}

    def init_params(key):
        k1, k2 = jax.random.split(key)
        return {
            "w1": jax.random.normal(k1, (WIDTH, WIDTH)) * 0.05,
            "b1": jnp.zeros(WIDTH),
            "w2": jax.random.normal(k2, (WIDTH, WIDTH)) * 0.05,
            "b2": jnp.zeros(WIDTH),
        }

    def pure_scan():
        stacked = jax.vmap(init_params)(jax.random.split(jax.random.PRNGKey(0), depth))

        def loss(params):
            h, _ = jax.lax.scan(lambda h, p: (pure_block(p, h), None), x, params)
            return jnp.mean(h**2)

        step = jax.jit(jax.grad(loss))
        return lambda: step(stacked)

    def pure_loop():
        layers = [init_params(k) for k in jax.random.split(jax.random.PRNGKey(0), depth)]

        def loss(params):
            h = x
            for p in params:
                h = pure_block(p, h)
            return jnp.mean(h**2)

        step = jax.jit(jax.grad(loss))
        return lambda: step(layers)

    def nnx_scan():
        model = ScanStack(depth, ctx=nnx.context(0))
        step = nnx.jit(lambda m, x: nnx.grad(lambda m: jnp.mean(m(x) ** 2))(m))
        return lambda: step(model, x)

    def nnx_loop():
        model = LoopStack(depth, ctx=nnx.context(0))
        step = nnx.jit(lambda m, x: nnx.grad(lambda m: jnp.mean(m(x) ** 2))(m))
        return lambda: step(model, x)

    out["pure JAX jax.lax.scan"] = pure_scan
    out["pure JAX unrolled loop"] = pure_loop
    out["nnxlite nnx.scan"] = nnx_scan
    out["nnxlite unrolled loop"] = nnx_loop

    fnnx = _bench.optional("flax.nnx")
    if fnnx is not None:

        class FBlock(fnnx.Module):
            def __init__(self, rngs):
                self.fc1 = fnnx.Linear(WIDTH, WIDTH, rngs=rngs)
                self.fc2 = fnnx.Linear(WIDTH, WIDTH, rngs=rngs)

            def __call__(self, x):
                return x + self.fc2(jax.nn.gelu(self.fc1(x)))

        def flax_scan():
            @fnnx.split_rngs(splits=depth)
            @fnnx.vmap(in_axes=(0,), out_axes=0)
            def create(rngs):
                return FBlock(rngs)

            blocks = create(fnnx.Rngs(0))

            @fnnx.scan(in_axes=(fnnx.Carry, 0), out_axes=fnnx.Carry)
            def forward(h, block):
                return block(h)

            step = fnnx.jit(lambda b, x: fnnx.grad(lambda b: jnp.mean(forward(x, b) ** 2))(b))
            return lambda: step(blocks, x)

        out["flax.nnx nnx.scan"] = flax_scan

    eqx = _bench.optional("equinox")
    if eqx is not None:

        class EBlock(eqx.Module):
            fc1: eqx.nn.Linear
            fc2: eqx.nn.Linear

            def __init__(self, key):
                k1, k2 = jax.random.split(key)
                self.fc1 = eqx.nn.Linear(WIDTH, WIDTH, key=k1)
                self.fc2 = eqx.nn.Linear(WIDTH, WIDTH, key=k2)

            def __call__(self, x):
                return x + jax.vmap(self.fc2)(jax.nn.gelu(jax.vmap(self.fc1)(x)))

        def eqx_scan():
            blocks = eqx.filter_vmap(EBlock)(jax.random.split(jax.random.PRNGKey(0), depth))

            def loss(blocks, x):
                params, static = eqx.partition(blocks, eqx.is_array)
                h, _ = jax.lax.scan(lambda h, p: (eqx.combine(p, static)(h), None), x, params)
                return jnp.mean(h**2)

            step = eqx.filter_jit(eqx.filter_grad(loss))
            return lambda: step(blocks, x)

        out["Equinox jax.lax.scan"] = eqx_scan
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--repeats", type=int, default=3, help="take the best of this many fresh compiles")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.depths, args.repeats = [2, 4], 1
    print(_bench.header("scan-over-layers compile time", ("jax", "nnxlite", "flax", "equinox")))
    table: dict[int, dict[str, float]] = {}
    for depth in args.depths:
        table[depth] = {}
        for _ in range(args.repeats):
            for name, make in variants(depth).items():  # interleaved: one of each, then again
                t = time_first_call(make)
                table[depth][name] = min(t, table[depth].get(name, float("inf")))
    names = list(table[args.depths[0]])
    ref = names[0]
    print("\n| variant | " + " | ".join(f"{d} blocks" for d in args.depths) + " |")
    print("|---|" + "---|" * len(args.depths))
    for name in names:
        cells = [f"{table[d][name]:.2f} s ({table[d][name] / table[d][ref]:.2f}×)" for d in args.depths]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nFirst call minus warm call (trace + lower + compile) of jit(grad(loss)), best of {args.repeats}; "
          f"ratio to pure JAX jax.lax.scan in parentheses. Residual MLP blocks, width {WIDTH}, batch {BATCH}.")


if __name__ == "__main__":
    main()
