"""Eager (un-jitted) speed of the digits MLP: nnxlite vs the same jnp ops, flax.nnx and PyTorch.

The beginner's first loop (nnxlite issue 12): an MLP ``Linear`` 64→128→128→10
with ReLU, batch 32, float32, CPU, no ``jit`` anywhere. Two cases:

* **forward** — ``model(x)``: nnxlite layers against the same ``jnp`` ops on
  the same arrays (``x @ W + b``, ``relu``), flax.nnx and Equinox layers and
  PyTorch;
* **training step** — value and gradient of a softmax cross-entropy loss
  plus an Adam update: pure JAX (``jax.value_and_grad`` + ``optax`` run
  eagerly), nnxlite (``nnx.value_and_grad`` + ``optimizer.update``: with the
  optax step run op by op, with it compiled (the default), and with the
  gradient compiled too, an idea measured here but not shipped because it
  would run the user's loss function only once per trace), the ``nnx.jit``
  step for reference, flax.nnx (``nnx.value_and_grad`` + its
  ``Optimizer.update``), Equinox (``eqx.filter_value_and_grad`` + optax,
  eagerly) and PyTorch (``loss.backward()`` + ``torch.optim.Adam``).

Variants are interleaved: each round times ``--calls`` calls of each in
turn; the table reports the median over rounds of (variant / reference in
the same round) and steps per second.

Run: ``python benchmarks/bench_eager.py [--rounds 9] [--calls 50] [--quick]``.
"""

from __future__ import annotations

import statistics

import _bench  # noqa: F401  (first: puts this checkout's nnxlite on the path)
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


def flax_mlp(fnnx):
    class FMLP(fnnx.Module):
        def __init__(self, rngs):
            self.fc1 = fnnx.Linear(SIZES[0], SIZES[1], rngs=rngs)
            self.fc2 = fnnx.Linear(SIZES[1], SIZES[2], rngs=rngs)
            self.out = fnnx.Linear(SIZES[2], SIZES[3], rngs=rngs)

        def __call__(self, x):
            return self.out(jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(x)))))

    return FMLP(fnnx.Rngs(0))


def eqx_mlp(eqx):
    """Equinox layers act on one example: batched with ``jax.vmap``, as Equinox code does."""
    keys = jax.random.split(jax.random.PRNGKey(0), 3)

    class EMLP(eqx.Module):
        fc1: eqx.nn.Linear
        fc2: eqx.nn.Linear
        out: eqx.nn.Linear

        def __init__(self):
            self.fc1 = eqx.nn.Linear(SIZES[0], SIZES[1], key=keys[0])
            self.fc2 = eqx.nn.Linear(SIZES[1], SIZES[2], key=keys[1])
            self.out = eqx.nn.Linear(SIZES[2], SIZES[3], key=keys[2])

        def __call__(self, x):
            return self.out(jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(x)))))

    return EMLP()


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
    fnnx = _bench.optional("flax.nnx")
    if fnnx is not None:
        fmodel = flax_mlp(fnnx)
        v["flax.nnx layers"] = lambda: fmodel(x)
    eqx = _bench.optional("equinox")
    if eqx is not None:
        batched = jax.vmap(eqx_mlp(eqx))
        v["Equinox layers (jax.vmap)"] = lambda: batched(x)
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
    fnnx = _bench.optional("flax.nnx")
    if fnnx is not None:
        fmodel = flax_mlp(fnnx)
        fopt = fnnx.Optimizer(fmodel, tx, wrt=fnnx.Param)

        def run_flax():
            loss, grads = fnnx.value_and_grad(lambda m: ce(m(x), y))(fmodel)
            fopt.update(fmodel, grads)
            return loss

        v["flax.nnx eager"] = run_flax
    eqx = _bench.optional("equinox")
    if eqx is not None:
        ebox = [eqx_mlp(eqx)]
        ebox.append(tx.init(eqx.filter(ebox[0], eqx.is_array)))

        def run_eqx():
            loss, grads = eqx.filter_value_and_grad(lambda m: ce(jax.vmap(m)(x), y))(ebox[0])
            updates, ebox[1] = tx.update(grads, ebox[1], eqx.filter(ebox[0], eqx.is_array))
            ebox[0] = eqx.apply_updates(ebox[0], updates)
            return loss

        v["Equinox eager (filter_value_and_grad + optax)"] = run_eqx
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


def measure(variants: dict, rounds: int, calls: int) -> tuple[dict, dict]:
    """Median ratios to the first variant, and median calls per second."""
    times = _bench.interleave(variants, rounds, calls)
    return _bench.median_ratios(times), {n: 1.0 / statistics.median(t) for n, t in times.items()}


def table(title: str, variants: dict, rounds: int, calls: int, unit: str) -> None:
    ratios, rates = measure(variants, rounds, calls)
    print(f"\n## {title}\n")
    print(f"| variant | vs {next(iter(variants))} | {unit}/s |\n|---|---|---|")
    for n in variants:
        print(f"| {n} | {ratios[n]:.2f}× | {rates[n]:,.0f} |")


def main() -> None:
    args = _bench.parser(__doc__.splitlines()[0], rounds=9, calls=50).parse_args()
    if args.quick:
        args.rounds, args.calls = 3, 10
    print(_bench.header(f"eager digits MLP {'→'.join(map(str, SIZES))}, batch {BATCH}",
                        ("jax", "optax", "nnxlite", "flax", "equinox", "torch")))
    table("Eager forward", forward_variants(), args.rounds, args.calls, "calls")
    table("Eager training step", step_variants(), args.rounds, args.calls, "steps")
    print(f"\nMedian over {args.rounds} interleaved rounds of {args.calls} calls; PyTorch on 1 thread. "
          "Lower ratio is better.")


if __name__ == "__main__":
    main()
