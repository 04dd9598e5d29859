"""Eager (un-jitted) speed of the digits MLP: nnxlite vs the same jnp ops, flax.nnx and PyTorch.

The beginner's first loop (nnxlite issue 12): an MLP ``Linear`` 64→128→128→10
with ReLU, batch 32, float32, CPU, no ``jit`` anywhere. Two cases:

* **forward** — ``model(x)``: nnxlite layers against the same ``jnp`` ops on
  the same arrays (``x @ W + b``, ``relu``), flax.nnx layers and PyTorch;
* **training step** — value and gradient of a softmax cross-entropy loss
  plus an Adam update: pure JAX (``jax.value_and_grad`` + ``optax`` run
  eagerly), nnxlite (``nnx.value_and_grad`` + ``optimizer.update``: with the
  optax step run op by op, with it compiled (the default), and with the
  gradient compiled too, an idea measured here but not shipped because it
  would run the user's loss function only once per trace), the ``nnx.jit``
  step for reference, flax.nnx and PyTorch (``loss.backward()`` +
  ``torch.optim.Adam``).

Variants are interleaved: each round times ``--calls`` calls of each in
turn; the table reports the median over rounds of (variant / reference in
the same round) and steps per second.

Run: ``python benchmarks/bench_eager.py [--rounds 9] [--calls 50] [--quick]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnxlite as nnx

SIZES = (64, 128, 128, 10)
BATCH = 32


class MLP(nnx.Module):
    def __init__(self, *, ctx):
        self.fc1 = nnx.Linear(SIZES[0], SIZES[1], ctx=ctx)
        self.fc2 = nnx.Linear(SIZES[1], SIZES[2], ctx=ctx)
        self.out = nnx.Linear(SIZES[2], SIZES[3], ctx=ctx)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(x)))))


def pure_forward(p, x):
    x = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    x = jax.nn.relu(x @ p["fc2"]["kernel"] + p["fc2"]["bias"])
    return x @ p["out"]["kernel"] + p["out"]["bias"]


def data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(BATCH, SIZES[0])).astype(np.float32))
    y = jnp.asarray(rng.integers(0, SIZES[-1], size=(BATCH,)).astype(np.int32))
    return x, y


def forward_variants() -> dict:
    x, _ = data()
    model = MLP(ctx=nnx.context(0))
    params = nnx.state(model).to_pure_dict()
    v = {"pure JAX (same jnp ops)": lambda: pure_forward(params, x), "nnxlite layers": lambda: model(x)}
    try:
        from flax import nnx as fnnx

        class FMLP(fnnx.Module):
            def __init__(self, rngs):
                self.fc1 = fnnx.Linear(SIZES[0], SIZES[1], rngs=rngs)
                self.fc2 = fnnx.Linear(SIZES[1], SIZES[2], rngs=rngs)
                self.out = fnnx.Linear(SIZES[2], SIZES[3], rngs=rngs)

            def __call__(self, x):
                return self.out(jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(x)))))

        fmodel = FMLP(fnnx.Rngs(0))
        v["flax.nnx layers"] = lambda: fmodel(x)
    except ImportError:
        pass
    torch = _torch()
    if torch is not None:
        tmodel, tx = _torch_model(torch), torch.from_numpy(np.array(x))

        def run_torch():
            with torch.no_grad():
                return tmodel(tx)

        v["PyTorch eager"] = run_torch
    return v


def _torch():
    try:
        import torch

        torch.set_num_threads(1)
        return torch
    except ImportError:
        return None


def _torch_model(torch):
    nn = torch.nn
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def step_variants() -> dict:
    x, y = data()
    tx = optax.adam(1e-3)
    v = {}

    def ce(logits, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    model = MLP(ctx=nnx.context(0))
    box = [nnx.state(model).to_pure_dict()]
    box.append(tx.init(box[0]))

    def run_pure():
        loss, g = jax.value_and_grad(lambda p: ce(pure_forward(p, x), y))(box[0])
        updates, box[1] = tx.update(g, box[1], box[0])
        box[0] = optax.apply_updates(box[0], updates)
        return loss

    v["pure JAX eager (value_and_grad + optax)"] = run_pure

    def nnx_variant(compile_eager: bool = True, compiled_grad: bool = False):
        m = MLP(ctx=nnx.context(0))
        opt = nnx.Optimizer(m, tx)
        opt.compile_eager = compile_eager
        # The idea measured (not shipped): what a cached compiled gradient would give.
        grad_fn = nnx.jit(lambda m, x, y: nnx.value_and_grad(lambda m: ce(m(x), y))(m))

        def run():
            if compiled_grad:
                loss, grads = grad_fn(m, x, y)
            else:
                loss, grads = nnx.value_and_grad(lambda m: ce(m(x), y))(m)
            opt.update(grads)
            return loss

        return run

    v["nnxlite eager, op-by-op optax update (compile_eager=False)"] = nnx_variant(compile_eager=False)
    v["nnxlite eager (default: compiled optax update)"] = nnx_variant()
    v["nnxlite, + compiled gradient (idea, not shipped)"] = nnx_variant(compiled_grad=True)
    jm = MLP(ctx=nnx.context(0))
    jopt = nnx.Optimizer(jm, tx)

    @nnx.jit
    def jit_step(m, opt, x, y):
        loss, grads = nnx.value_and_grad(lambda m: ce(m(x), y))(m)
        opt.update(grads)
        return loss

    v["nnxlite nnx.jit step (reference)"] = lambda: jit_step(jm, jopt, x, y)
    try:
        from flax import nnx as fnnx

        class FMLP(fnnx.Module):
            def __init__(self, rngs):
                self.fc1 = fnnx.Linear(SIZES[0], SIZES[1], rngs=rngs)
                self.fc2 = fnnx.Linear(SIZES[1], SIZES[2], rngs=rngs)
                self.out = fnnx.Linear(SIZES[2], SIZES[3], rngs=rngs)

            def __call__(self, x):
                return self.out(jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(x)))))

        fmodel = FMLP(fnnx.Rngs(0))
        fopt = fnnx.Optimizer(fmodel, tx, wrt=fnnx.Param)

        def run_flax():
            loss, grads = fnnx.value_and_grad(lambda m: ce(m(x), y))(fmodel)
            fopt.update(fmodel, grads)
            return loss

        v["flax.nnx eager"] = run_flax
    except ImportError:
        pass
    torch = _torch()
    if torch is not None:
        tmodel = _torch_model(torch)
        topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
        tx_, ty = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y)).long()
        lossf = torch.nn.CrossEntropyLoss()

        def run_torch():
            topt.zero_grad()
            loss = lossf(tmodel(tx_), ty)
            loss.backward()
            topt.step()
            return loss

        v["PyTorch eager"] = run_torch
    return v


def _sync(out):
    if hasattr(out, "block_until_ready"):
        out.block_until_ready()


def measure(variants: dict, rounds: int, calls: int) -> tuple[dict, dict]:
    for run in variants.values():
        for _ in range(3):
            _sync(run())
    names = list(variants)
    ratios = {n: [] for n in names}
    rates = {n: [] for n in names}
    for r in range(rounds):
        times = {}
        for name in names[r % len(names):] + names[: r % len(names)]:
            run = variants[name]
            t0 = time.perf_counter()
            for _ in range(calls):
                out = run()
            _sync(out)
            times[name] = (time.perf_counter() - t0) / calls
        for n in names:
            ratios[n].append(times[n] / times[names[0]])
            rates[n].append(1.0 / times[n])
    return {n: statistics.median(v) for n, v in ratios.items()}, {n: statistics.median(v) for n, v in rates.items()}


def table(title: str, variants: dict, rounds: int, calls: int, unit: str) -> None:
    ratios, rates = measure(variants, rounds, calls)
    print(f"\n## {title}\n")
    print(f"| variant | vs {next(iter(variants))} | {unit}/s |\n|---|---|---|")
    for n in variants:
        print(f"| {n} | {ratios[n]:.2f}× | {rates[n]:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (the median is reported)")
    parser.add_argument("--calls", type=int, default=50, help="calls per variant per round")
    parser.add_argument("--quick", action="store_true", help="few rounds and calls (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls = 3, 10
    print(f"# eager digits MLP {'→'.join(map(str, SIZES))}, batch {BATCH} — "
          f"{platform.machine()}, {jax.devices()[0].platform}, jax {jax.__version__}, nnxlite {nnx.__version__}")
    table("Eager forward", forward_variants(), args.rounds, args.calls, "calls")
    table("Eager training step", step_variants(), args.rounds, args.calls, "steps")
    print(f"\nMedian over {args.rounds} interleaved rounds of {args.calls} calls; PyTorch on 1 thread. "
          "Lower ratio is better.")


if __name__ == "__main__":
    main()
