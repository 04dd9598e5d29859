"""Per-step overhead of a jitted training step, side by side in one process.

The case (nnxlite issue 4): ``step(model, optimizer, x, y)`` runs
``value_and_grad`` of an MSE loss and an Adam update on an MLP of width 32
with ``depth`` Linear layers (ReLU between), batch 8, on CPU. Every variant
computes the same thing with the same optax optimizer:

* **pure JAX** — ``jax.jit`` over a dict of params and the optax state,
  returning the new ones (the 1.0 reference);
* **leaf list** — ``jax.jit`` over one hand-flattened list of all leaves
  (the floor for any framework that keeps state in Python objects);
* **nnxlite** — ``nnx.jit(step)(model, optimizer, x, y)`` updating in place;
* **flax.nnx** — ``nnx.jit`` (graph mode) and ``nnx.jit(..., graph=False)``
  (tree mode), when flax is installed;
* **Equinox** — ``eqx.filter_jit`` returning the new model and opt state.

Timings are interleaved: each round times ``--calls`` steps of every variant
in turn, and the table reports the median over rounds of each variant's time
divided by pure JAX's time *in the same round* (robust to machine drift), plus
the absolute median pure-JAX step time.

A second table times an **inference call** (nnxlite issue 12): a jitted
forward ``f(model, x)`` through a chain of ``Linear(16, 16)`` layers (2
leaves each) that changes no Variable, at 200, 1,000 and 4,000 leaves:

* **pure JAX** — ``jax.jit(forward)(params, x)`` over a list of dicts;
* **jax.jit + nnx.merge** — ``jax.jit(lambda st, x: nnx.merge(gd, st)(x))``;
* **nnxlite** — ``nnx.jit(lambda m, x: m(x))(model, x)``;
* **flax.nnx** (graph and tree mode) and **Equinox** ``eqx.filter_jit``.

A third table gives the first-call (trace + compile) time of a function
that reads every leaf once (the mean of each, summed) at ``--compile-leaves``
leaves, for nnxlite against ``jax.jit`` reading the same arrays.

Run: ``python benchmarks/bench_jit.py [--depths 2 8 24] [--leaves 200 1000 4000] [--rounds 15] [--quick]``.
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

WIDTH, BATCH = 32, 8


class MLP(nnx.Module):
    def __init__(self, depth: int, *, ctx: nnx.Context):
        self.layers = [nnx.Linear(WIDTH, WIDTH, ctx=ctx) for _ in range(depth)]

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


def pure_forward(params: dict, x):
    n = len(params)
    for i in range(n):
        x = x @ params[i]["kernel"] + params[i]["bias"]
        if i < n - 1:
            x = jax.nn.relu(x)
    return x


def make_variants(depth: int) -> dict:
    """Each variant: a zero-argument callable doing one step (state kept between calls)."""
    tx = optax.adam(1e-3)
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, WIDTH))
    y = jax.random.normal(jax.random.PRNGKey(2), (BATCH, WIDTH))
    variants = {}

    # -- pure JAX ----------------------------------------------------------------------
    model = MLP(depth, ctx=nnx.context(0))
    params = {i: {"kernel": l.kernel.value, "bias": l.bias.value} for i, l in enumerate(model.layers)}
    opt_state = tx.init(params)

    @jax.jit
    def pure_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((pure_forward(p, x) - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    pure_box = [params, opt_state]

    def run_pure():
        pure_box[0], pure_box[1], loss = pure_step(pure_box[0], pure_box[1], x, y)
        return loss

    variants["pure JAX (jax.jit, dict params)"] = run_pure

    # -- hand-flattened leaf list -------------------------------------------------------
    leaves, treedef = jax.tree_util.tree_flatten((params, opt_state))

    @jax.jit
    def leaf_step(leaves, x, y):
        p, o = jax.tree_util.tree_unflatten(treedef, leaves)
        p, o, loss = pure_step.__wrapped__(p, o, x, y)
        return jax.tree_util.tree_leaves((p, o)), loss

    leaf_box = [leaves]

    def run_leaf():
        leaf_box[0], loss = leaf_step(leaf_box[0], x, y)
        return loss

    variants["hand-flattened leaf list"] = run_leaf

    # -- nnxlite --------------------------------------------------------------------------
    nmodel = MLP(depth, ctx=nnx.context(0))
    noptimizer = nnx.Optimizer(nmodel, tx)

    @nnx.jit
    def nnx_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(grads)
        return loss

    variants["nnxlite nnx.jit"] = lambda: nnx_step(nmodel, noptimizer, x, y)

    # -- flax.nnx -------------------------------------------------------------------------
    try:
        from flax import nnx as fnnx
    except ImportError:
        fnnx = None
    if fnnx is not None:

        class FMLP(fnnx.Module):
            def __init__(self, depth, rngs):
                self.layers = fnnx.List([fnnx.Linear(WIDTH, WIDTH, rngs=rngs) for _ in range(depth)])

            def __call__(self, x):
                for i, layer in enumerate(self.layers):
                    x = layer(x)
                    if i < len(self.layers) - 1:
                        x = jax.nn.relu(x)
                return x

        def flax_step(model, optimizer, x, y):
            loss, grads = fnnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
            optimizer.update(model, grads)
            return loss

        fmodel = FMLP(depth, fnnx.Rngs(0))
        fopt = fnnx.Optimizer(fmodel, tx, wrt=fnnx.Param)
        fjit = fnnx.jit(flax_step)
        variants["flax.nnx nnx.jit (graph mode)"] = lambda: fjit(fmodel, fopt, x, y)
        try:
            tmodel = FMLP(depth, fnnx.Rngs(0))
            topt = fnnx.Optimizer(tmodel, tx, wrt=fnnx.Param)
            tjit = fnnx.jit(flax_step, graph=False)
            tjit(tmodel, topt, x, y)
            variants["flax.nnx nnx.jit(graph=False) (tree mode)"] = lambda: tjit(tmodel, topt, x, y)
        except Exception:  # older flax without tree mode
            pass

    # -- Equinox --------------------------------------------------------------------------
    try:
        import equinox as eqx
    except ImportError:
        eqx = None
    if eqx is not None:

        class EMLP(eqx.Module):
            layers: list

            def __init__(self, depth, key):
                keys = jax.random.split(key, depth)
                self.layers = [eqx.nn.Linear(WIDTH, WIDTH, key=k) for k in keys]

            def __call__(self, x):
                for i, layer in enumerate(self.layers):
                    x = x @ layer.weight.T + layer.bias
                    if i < len(self.layers) - 1:
                        x = jax.nn.relu(x)
                return x

        emodel = EMLP(depth, jax.random.PRNGKey(0))
        eopt = tx.init(eqx.filter(emodel, eqx.is_array))

        @eqx.filter_jit
        def eqx_step(model, opt_state, x, y):
            loss, grads = eqx.filter_value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
            updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), opt_state, loss

        ebox = [emodel, eopt]

        def run_eqx():
            ebox[0], ebox[1], loss = eqx_step(ebox[0], ebox[1], x, y)
            return loss

        variants["Equinox eqx.filter_jit"] = run_eqx
    return variants


IN_WIDTH, IN_BATCH = 16, 8


class Chain(nnx.Module):
    def __init__(self, n_layers: int, *, ctx: nnx.Context):
        self.layers = [nnx.Linear(IN_WIDTH, IN_WIDTH, ctx=ctx) for _ in range(n_layers)]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def chain_forward(params: list, x):
    for p in params:
        x = x @ p["kernel"] + p["bias"]
    return x


def make_inference_variants(n_leaves: int) -> dict:
    """Each variant: a zero-argument callable doing one jitted forward that changes nothing."""
    n_layers = n_leaves // 2
    x = jax.random.normal(jax.random.PRNGKey(1), (IN_BATCH, IN_WIDTH))
    model = Chain(n_layers, ctx=nnx.context(0))
    params = [{"kernel": l.kernel.value, "bias": l.bias.value} for l in model.layers]
    variants = {}
    pure = jax.jit(chain_forward)
    variants["pure JAX (jax.jit, list of dicts)"] = lambda: pure(params, x)

    gd, state = nnx.split(model)
    merged = jax.jit(lambda st, x: nnx.merge(gd, st)(x))
    variants["jax.jit + nnx.merge"] = lambda: merged(state, x)

    nfwd = nnx.jit(lambda m, x: m(x))
    variants["nnxlite nnx.jit"] = lambda: nfwd(model, x)

    try:
        from flax import nnx as fnnx
    except ImportError:
        fnnx = None
    if fnnx is not None:

        class FChain(fnnx.Module):
            def __init__(self, n, rngs):
                self.layers = fnnx.List([fnnx.Linear(IN_WIDTH, IN_WIDTH, rngs=rngs) for _ in range(n)])

            def __call__(self, x):
                for layer in self.layers:
                    x = layer(x)
                return x

        fmodel = FChain(n_layers, fnnx.Rngs(0))
        ffwd = fnnx.jit(lambda m, x: m(x))
        variants["flax.nnx nnx.jit (graph mode)"] = lambda: ffwd(fmodel, x)
        try:
            tfwd = fnnx.jit(lambda m, x: m(x), graph=False)
            tfwd(fmodel, x)
            variants["flax.nnx nnx.jit(graph=False) (tree mode)"] = lambda: tfwd(fmodel, x)
        except Exception:  # older flax without tree mode
            pass

    try:
        import equinox as eqx
    except ImportError:
        eqx = None
    if eqx is not None:

        class EChain(eqx.Module):
            layers: list

            def __init__(self, n, key):
                self.layers = [eqx.nn.Linear(IN_WIDTH, IN_WIDTH, key=k) for k in jax.random.split(key, n)]

            def __call__(self, x):
                for layer in self.layers:
                    x = x @ layer.weight.T + layer.bias
                return x

        emodel = EChain(n_layers, jax.random.PRNGKey(0))
        efwd = eqx.filter_jit(lambda m, x: m(x))
        variants["Equinox eqx.filter_jit"] = lambda: efwd(emodel, x)
    return variants


def read_all(layers) -> jax.Array:
    """A function that reads every leaf once (cheap to compile, unlike a 10,000-layer chain)."""
    total = jnp.zeros(())
    for layer in layers:
        total = total + jnp.mean(layer["kernel"]) + jnp.mean(layer["bias"])
    return total


def compile_times(n_leaves: int) -> dict:
    """First call (trace + lower + compile + run) of a function reading every leaf: nnxlite vs jax.jit."""
    model = Chain(n_leaves // 2, ctx=nnx.context(0))
    params = [{"kernel": l.kernel.value, "bias": l.bias.value} for l in model.layers]

    def nnx_read(m):
        return read_all([{"kernel": l.kernel.value, "bias": l.bias.value} for l in m.layers])

    out = {}
    t0 = time.perf_counter()
    jax.block_until_ready(jax.jit(read_all)(params))
    out["jax.jit reading the params"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(nnx.jit(nnx_read)(model))
    out["nnxlite nnx.jit"] = time.perf_counter() - t0
    model.extra = nnx.Param(jnp.zeros(()))  # one more leaf: a new structure, compiled again
    t0 = time.perf_counter()
    jax.block_until_ready(nnx.jit(nnx_read)(model))
    out["nnxlite nnx.jit, one leaf appended"] = time.perf_counter() - t0
    return out


def measure(depth: int, rounds: int, calls: int, make=None) -> tuple[dict, float]:
    variants = (make or make_variants)(depth)
    for run in variants.values():  # compile and warm every cache
        for _ in range(3):
            jax.block_until_ready(run())
    names = list(variants)
    ratios: dict[str, list] = {n: [] for n in names}
    pure_times = []
    for r in range(rounds):
        times = {}
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            run = variants[name]
            t0 = time.perf_counter()
            for _ in range(calls):
                out = run()
            jax.block_until_ready(out)
            times[name] = (time.perf_counter() - t0) / calls
        base = times[names[0]]
        pure_times.append(base)
        for n in names:
            ratios[n].append(times[n] / base)
    return {n: statistics.median(v) for n, v in ratios.items()}, statistics.median(pure_times)


def check_equal(depth: int = 2, steps: int = 3) -> float:
    """Max abs difference between nnxlite and pure-JAX params after a few steps (same init)."""
    tx = optax.adam(1e-3)
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, WIDTH))
    y = jax.random.normal(jax.random.PRNGKey(2), (BATCH, WIDTH))
    model = MLP(depth, ctx=nnx.context(0))
    params = {i: {"kernel": l.kernel.value, "bias": l.bias.value} for i, l in enumerate(model.layers)}
    opt_state = tx.init(params)
    optimizer = nnx.Optimizer(model, tx)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(grads)
        return loss

    @jax.jit
    def pure_step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((pure_forward(p, x) - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for _ in range(steps):
        step(model, optimizer, x, y)
        params, opt_state, _ = pure_step(params, opt_state)
    return max(
        float(np.max(np.abs(np.asarray(l.kernel.value) - np.asarray(params[i]["kernel"]))))
        for i, l in enumerate(model.layers)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="nnx.jit per-call overhead against pure JAX, flax.nnx and Equinox",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 8, 24], help="MLP depths of the training table")
    parser.add_argument("--leaves", type=int, nargs="+", default=[200, 1000, 4000],
                        help="leaf counts of the inference-call table (0 to skip it)")
    parser.add_argument("--compile-leaves", type=int, default=20000,
                        help="leaf count of the compile-time table (0 to skip it)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (the median is reported)")
    parser.add_argument("--calls", type=int, default=200, help="calls per variant per round")
    parser.add_argument("--quick", action="store_true", help="few rounds and calls, smaller compile case (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls = 3, 20
        args.compile_leaves = min(args.compile_leaves, 2000)
    versions = [f"jax {jax.__version__}", f"optax {optax.__version__}", f"nnxlite {nnx.__version__}"]
    for mod in ("flax", "equinox"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    print(f"# jit training-step overhead — {platform.processor() or platform.machine()}, "
          f"{jax.devices()[0].platform}, {', '.join(versions)}")
    print(f"max |nnxlite - pure JAX| kernel difference after 3 steps: {check_equal():.2e}")
    results = {d: measure(d, args.rounds, args.calls) for d in args.depths}
    names = list(next(iter(results.values()))[0])
    print("\n| variant | " + " | ".join(f"{d} layers" for d in args.depths) + " |")
    print("|---|" + "---|" * len(args.depths))
    for name in names:
        cells = [f"{results[d][0][name]:.2f}×" for d in args.depths]
        print(f"| {name} | " + " | ".join(cells) + " |")
    cells = [f"{results[d][1] * 1e6:.0f} µs" for d in args.depths]
    print("| *pure JAX step time (median)* | " + " | ".join(cells) + " |")
    print(f"\nMedian over {args.rounds} interleaved rounds of {args.calls} steps of (variant time / pure-JAX time "
          f"in the same round); MLP width {WIDTH}, batch {BATCH}, Adam. Lower is better.")

    leaves = [n for n in args.leaves if n > 0]
    if leaves:
        # Fewer calls for the big chains: one pure-JAX call is ~10 ms at 4,000 leaves.
        inf = {n: measure(n, args.rounds, max(3, args.calls * 200 // max(n, 200)), make_inference_variants)
               for n in leaves}
        names = list(next(iter(inf.values()))[0])
        print("\n## Inference call (jitted forward, no Variable changes)\n")
        print("| variant | " + " | ".join(f"{n:,} leaves" for n in leaves) + " |")
        print("|---|" + "---|" * len(leaves))
        for name in names:
            print(f"| {name} | " + " | ".join(f"{inf[n][0][name]:.2f}×" for n in leaves) + " |")
        print("| *pure JAX call time (median)* | " + " | ".join(f"{inf[n][1] * 1e6:.0f} µs" for n in leaves) + " |")
        print(f"\nChain of Linear({IN_WIDTH}, {IN_WIDTH}), batch {IN_BATCH}; median over {args.rounds} interleaved "
              "rounds of (variant time / pure-JAX time in the same round). Lower is better.")
    if args.compile_leaves > 0:
        ct = compile_times(args.compile_leaves)
        base = ct["jax.jit reading the params"]
        print(f"\n## First call (trace + compile) at {args.compile_leaves:,} leaves\n")
        print("| variant | seconds | vs jax.jit |\n|---|---|---|")
        for name, t in ct.items():
            print(f"| {name} | {t:.2f} s | {t / base:.2f}× |")


if __name__ == "__main__":
    main()
