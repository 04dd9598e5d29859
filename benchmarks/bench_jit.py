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

Two more tables give first-call times (trace + lower + compile + run) on
that chain, ``jax.jit(lambda st, x: f(nnx.merge(gd, st), x))`` reading the
same state against ``nnx.jit(f)``, and ``nnx.jit(f)`` again after one leaf is
appended to the model (a new structure: a fresh trace and compile); a
second reference row adds the ``nnx.split`` that gives ``jax.jit`` its state
(``nnx.jit`` walks the model on a first call, as ``split`` does). At
``--compile-leaves`` (default 20,000) ``f`` runs only the last layer, so
every leaf is an input but XLA has almost nothing to compile: the table
shows the frameworks' own cost. At ``--compile-chain-leaves`` (default
2,000) ``f`` is the whole forward, where XLA's compile dominates (a
20,000-leaf chain takes XLA over 15 minutes on a 2-core CPU).

Run: ``python benchmarks/bench_jit.py [--depths 2 8 24] [--leaves 200 1000 4000] [--rounds 15] [--quick]``.
"""

from __future__ import annotations

import gc
import statistics
import time

import _bench  # noqa: F401  (first: puts this checkout's nnxlite on the path)
import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnxlite as nnx

WIDTH, BATCH = 32, 8  # the training-step MLP
IN_WIDTH, IN_BATCH = 16, 8  # the inference chain


# -- the same stack of Linear layers in each framework ------------------------------------------
class Stack(nnx.Module):
    """``n`` ``Linear(width, width)`` layers, with ReLU between them when ``relu``."""

    def __init__(self, n: int, width: int, relu: bool, *, ctx: nnx.Context):
        self.layers = [nnx.Linear(width, width, ctx=ctx) for _ in range(n)]
        self.relu = relu

    def __call__(self, x):
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.relu and i < last:
                x = jax.nn.relu(x)
        return x


def pure_forward(params, x, relu: bool = True):
    """The same forward over ``params[i] = {"kernel", "bias"}`` (a list, or a dict keyed 0..n-1)."""
    n = len(params)
    for i in range(n):
        x = x @ params[i]["kernel"] + params[i]["bias"]
        if relu and i < n - 1:
            x = jax.nn.relu(x)
    return x


def flax_stack(fnnx, n: int, width: int, relu: bool):
    class FStack(fnnx.Module):
        def __init__(self, rngs):
            self.layers = fnnx.List([fnnx.Linear(width, width, rngs=rngs) for _ in range(n)])

        def __call__(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if relu and i < n - 1:
                    x = jax.nn.relu(x)
            return x

    return FStack(fnnx.Rngs(0))


def eqx_stack(eqx, n: int, width: int, relu: bool):
    class EStack(eqx.Module):
        layers: list

        def __init__(self, key):
            self.layers = [eqx.nn.Linear(width, width, key=k) for k in jax.random.split(key, n)]

        def __call__(self, x):
            for i, layer in enumerate(self.layers):
                x = x @ layer.weight.T + layer.bias
                if relu and i < n - 1:
                    x = jax.nn.relu(x)
            return x

    return EStack(jax.random.PRNGKey(0))


def boxed(step, *state):
    """A zero-argument call of a functional ``step(*state) -> (*new_state, out)`` that keeps its state."""
    box = list(state)

    def run():
        *new, out = step(*box)
        box[:] = new
        return out

    return run


# -- training step -------------------------------------------------------------------------------
def make_variants(depth: int) -> dict:
    """Each variant: a zero-argument callable doing one step (state kept between calls)."""
    tx = optax.adam(1e-3)
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, WIDTH))
    y = jax.random.normal(jax.random.PRNGKey(2), (BATCH, WIDTH))

    variants = {}
    model = Stack(depth, WIDTH, True, ctx=nnx.context(0))
    params = {i: {"kernel": l.kernel.value, "bias": l.bias.value} for i, l in enumerate(model.layers)}
    opt_state = tx.init(params)

    @jax.jit
    def pure_step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((pure_forward(p, x) - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    variants["pure JAX (jax.jit, dict params)"] = boxed(pure_step, params, opt_state)

    leaves, treedef = jax.tree_util.tree_flatten((params, opt_state))

    @jax.jit
    def leaf_step(leaves):
        p, o, loss = pure_step.__wrapped__(*jax.tree_util.tree_unflatten(treedef, leaves))
        return jax.tree_util.tree_leaves((p, o)), loss

    variants["hand-flattened leaf list"] = boxed(leaf_step, leaves)

    nmodel = Stack(depth, WIDTH, True, ctx=nnx.context(0))
    noptimizer = nnx.Optimizer(nmodel, tx)

    @nnx.jit
    def nnx_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(grads)
        return loss

    variants["nnxlite nnx.jit"] = lambda: nnx_step(nmodel, noptimizer, x, y)

    fnnx = _bench.optional("flax.nnx")
    if fnnx is not None:

        def flax_step(model, optimizer, x, y):
            loss, grads = fnnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
            optimizer.update(model, grads)
            return loss

        fmodel = flax_stack(fnnx, depth, WIDTH, True)
        fopt = fnnx.Optimizer(fmodel, tx, wrt=fnnx.Param)
        fjit = fnnx.jit(flax_step)
        variants["flax.nnx nnx.jit (graph mode)"] = lambda: fjit(fmodel, fopt, x, y)
        try:
            tmodel = flax_stack(fnnx, depth, WIDTH, True)
            topt = fnnx.Optimizer(tmodel, tx, wrt=fnnx.Param)
            tjit = fnnx.jit(flax_step, graph=False)
            tjit(tmodel, topt, x, y)
            variants["flax.nnx nnx.jit(graph=False) (tree mode)"] = lambda: tjit(tmodel, topt, x, y)
        except Exception:  # older flax without tree mode
            pass

    eqx = _bench.optional("equinox")
    if eqx is not None:
        emodel = eqx_stack(eqx, depth, WIDTH, True)

        @eqx.filter_jit
        def eqx_step(model, opt_state):
            loss, grads = eqx.filter_value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
            updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), opt_state, loss

        variants["Equinox eqx.filter_jit"] = boxed(eqx_step, emodel, tx.init(eqx.filter(emodel, eqx.is_array)))
    return variants


# -- inference call --------------------------------------------------------------------------------
def make_inference_variants(n_leaves: int) -> dict:
    """Each variant: a zero-argument callable doing one jitted forward that changes nothing."""
    n_layers = n_leaves // 2
    x = jax.random.normal(jax.random.PRNGKey(1), (IN_BATCH, IN_WIDTH))
    model = Stack(n_layers, IN_WIDTH, False, ctx=nnx.context(0))
    params = [{"kernel": l.kernel.value, "bias": l.bias.value} for l in model.layers]
    variants = {}
    pure = jax.jit(lambda p, x: pure_forward(p, x, relu=False))
    variants["pure JAX (jax.jit, list of dicts)"] = lambda: pure(params, x)

    gd, state = nnx.split(model)
    merged = jax.jit(lambda st, x: nnx.merge(gd, st)(x))
    variants["jax.jit + nnx.merge"] = lambda: merged(state, x)

    nfwd = nnx.jit(lambda m, x: m(x))
    variants["nnxlite nnx.jit"] = lambda: nfwd(model, x)

    fnnx = _bench.optional("flax.nnx")
    if fnnx is not None:
        fmodel = flax_stack(fnnx, n_layers, IN_WIDTH, False)
        ffwd = fnnx.jit(lambda m, x: m(x))
        variants["flax.nnx nnx.jit (graph mode)"] = lambda: ffwd(fmodel, x)
        try:
            tfwd = fnnx.jit(lambda m, x: m(x), graph=False)
            tfwd(fmodel, x)
            variants["flax.nnx nnx.jit(graph=False) (tree mode)"] = lambda: tfwd(fmodel, x)
        except Exception:  # older flax without tree mode
            pass

    eqx = _bench.optional("equinox")
    if eqx is not None:
        emodel = eqx_stack(eqx, n_layers, IN_WIDTH, False)
        efwd = eqx.filter_jit(lambda m, x: m(x))
        variants["Equinox eqx.filter_jit"] = lambda: efwd(emodel, x)
    return variants


# -- compile time ----------------------------------------------------------------------------------
def compile_times(n_leaves: int, repeats: int, whole_chain: bool) -> dict:
    """First-call seconds (trace + lower + compile + run) of a forward over the chain: jax.jit + merge vs nnx.jit.

    ``whole_chain`` runs every layer; otherwise only the last one, so that
    every leaf is still an input (merged, traversed, lowered) but XLA has
    almost nothing to compile and what is left is the frameworks' own work.
    Each repeat uses fresh jitted functions (a fresh trace and compile), the
    variants interleaved; the result is the median per variant.
    """
    x = jnp.ones((IN_BATCH, IN_WIDTH))

    def forward(m, x):
        return m(x) if whole_chain else m.layers[-1](x)

    # Pay JAX's one-time costs (the first trace of Linear's kernel, backend start-up) outside the timings.
    tiny = Stack(1, IN_WIDTH, False, ctx=nnx.context(0))
    jax.block_until_ready(nnx.jit(forward)(tiny, x))
    tgd, tst = nnx.split(tiny)
    jax.block_until_ready(jax.jit(lambda st, x: forward(nnx.merge(tgd, st), x))(tst, x))

    model = Stack(n_leaves // 2, IN_WIDTH, False, ctx=nnx.context(0))
    gd, state = nnx.split(model)
    times: dict[str, list] = {"jax.jit(lambda st, x: f(nnx.merge(gd, st), x))": [],
                              "nnx.split(model), then that jax.jit": [], "nnxlite nnx.jit(f)": [],
                              "nnxlite nnx.jit(f), one leaf appended": []}

    def split_then_jit():
        model.extra = nnx.Param(jnp.zeros(()))  # a structural edit, so that split walks the graph again
        del model.extra
        gc.collect()  # as _bench.first_call does
        t0 = time.perf_counter()
        gd, state = nnx.split(model)
        return time.perf_counter() - t0 + _bench.first_call(
            lambda: jax.jit(lambda st, x: forward(nnx.merge(gd, st), x))(state, x)
        )

    for _ in range(repeats):
        names = iter(times)
        times[next(names)].append(
            _bench.first_call(lambda: jax.jit(lambda st, x: forward(nnx.merge(gd, st), x))(state, x))
        )
        times[next(names)].append(split_then_jit())
        jitted = nnx.jit(forward)
        times[next(names)].append(_bench.first_call(lambda: jitted(model, x)))
        model.extra = nnx.Param(jnp.zeros(()))  # one more leaf: a new structure, traced and compiled again
        times[next(names)].append(_bench.first_call(lambda: jitted(model, x)))
        del model.extra
    return {name: statistics.median(t) for name, t in times.items()}


def measure(depth: int, rounds: int, calls: int, make=None) -> tuple[dict, float]:
    """Median ratios to the first variant, and the first variant's median time per call."""
    times = _bench.interleave((make or make_variants)(depth), rounds, calls)
    return _bench.median_ratios(times), statistics.median(next(iter(times.values())))


def check_equal(depth: int = 2, steps: int = 3) -> float:
    """Max abs difference between nnxlite and pure-JAX params after a few steps (same init)."""
    tx = optax.adam(1e-3)
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, WIDTH))
    y = jax.random.normal(jax.random.PRNGKey(2), (BATCH, WIDTH))
    model = Stack(depth, WIDTH, True, ctx=nnx.context(0))
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
    parser = _bench.parser("nnx.jit per-call overhead against pure JAX, flax.nnx and Equinox", rounds=15, calls=200)
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 8, 24], help="MLP depths of the training table")
    parser.add_argument("--leaves", type=int, nargs="+", default=[200, 1000, 4000],
                        help="leaf counts of the inference-call table (0 to skip it)")
    parser.add_argument("--compile-leaves", type=int, default=20000,
                        help="leaf count of the compile-time table of a forward through the last layer (0 to skip it)")
    parser.add_argument("--compile-chain-leaves", type=int, default=2000,
                        help="leaf count of the compile-time table of the whole chain's forward (0 to skip it)")
    parser.add_argument("--compile-repeats", type=int, default=3, help="fresh compiles per variant (the median)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls = 3, 20
        args.compile_leaves = min(args.compile_leaves, 2000)
        args.compile_chain_leaves = min(args.compile_chain_leaves, 400)
        args.compile_repeats = 1
    print(_bench.header("jit training-step overhead"))
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
    for n, whole in ((args.compile_leaves, False), (args.compile_chain_leaves, True)):
        if n <= 0:
            continue
        ct = compile_times(n, args.compile_repeats, whole)
        base = next(iter(ct.values()))
        f = "m(x), the whole chain" if whole else "m.layers[-1](x), every leaf an input"
        print(f"\n## First call (trace + lower + compile + run) at {n:,} leaves, f = lambda m, x: {f}\n")
        print("| variant | seconds | vs jax.jit |\n|---|---|---|")
        for name, t in ct.items():
            print(f"| {name} | {t:.2f} s | {t / base:.2f}× |")
        print(f"\nChain of {n // 2:,} Linear({IN_WIDTH}, {IN_WIDTH}), batch {IN_BATCH}; median of "
              f"{args.compile_repeats} interleaved fresh compiles (JAX's one-time start-up paid beforehand).")

if __name__ == "__main__":
    main()
