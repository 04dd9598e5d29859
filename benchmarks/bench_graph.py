"""Split/merge and state/update cost against the pytree floor, side by side in one process.

The case: a chain of ``n`` ``Linear(64, 64)`` layers held in a list attribute,
plus one extra attribute that references layer 0 again (a shared reference),
so ``2 * n`` leaves. The floor is ``jax.tree_util.tree_flatten`` +
``tree_unflatten`` of a nested dict holding the same arrays.

Run: ``python benchmarks/bench_graph.py [--sizes 10 100 1000] [--quick]``.
Prints ratio tables (lower is better; 1.0 = the pytree floor). flax.nnx rows
appear when flax is installed.
"""

from __future__ import annotations

import argparse
import _bench  # noqa: F401  (first: puts this checkout's nnxlite on the path)
import timeit

import jax

import nnxlite as nnx


class Chain(nnx.Module):
    def __init__(self, n: int, *, ctx: nnx.Context):
        self.layers = [nnx.Linear(64, 64, ctx=ctx) for _ in range(n)]
        self.shared = self.layers[0]


def nested_dict(model: Chain) -> dict:
    layers = {i: {"kernel": l.kernel.value, "bias": l.bias.value} for i, l in enumerate(model.layers)}
    return {"layers": layers, "shared": layers[0]}


def best_time(fn, number: int) -> float:
    fn()  # warm caches, as a training loop would
    return min(timeit.repeat(fn, number=number, repeat=7)) / number


def measure(n: int, number: int) -> dict[str, float]:
    model = Chain(n, ctx=nnx.context(0))
    tree = nested_dict(model)

    def floor():
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        jax.tree_util.tree_unflatten(treedef, leaves)

    def split_merge():
        gd, st = nnx.split(model)
        out = nnx.merge(gd, st)
        assert out.shared is out.layers[0]

    def state_update():
        nnx.update(model, nnx.state(model))

    results = {
        "pytree floor": best_time(floor, number),
        "nnxlite split+merge": best_time(split_merge, number),
        "nnxlite state+update": best_time(state_update, number),
    }
    try:
        from flax import nnx as fnnx
    except ImportError:
        return results

    class FChain(fnnx.Module):
        def __init__(self, n, rngs):
            self.layers = fnnx.List([fnnx.Linear(64, 64, rngs=rngs) for _ in range(n)])
            self.shared = self.layers[0]

    fmodel = FChain(n, fnnx.Rngs(0))

    def flax_graph():
        gd, st = fnnx.split(fmodel)
        fnnx.merge(gd, st)

    def flax_state_update():
        fnnx.update(fmodel, fnnx.state(fmodel))

    results["flax.nnx split+merge"] = best_time(flax_graph, max(1, number // 10))
    results["flax.nnx state+update"] = best_time(flax_state_update, max(1, number // 10))
    try:
        def flax_tree():
            gd, st = fnnx.split(fmodel, graph=False)
            fnnx.merge(gd, st)
        flax_tree()
        results["flax.nnx split+merge (tree mode, no sharing)"] = best_time(flax_tree, max(1, number // 10))
    except Exception:
        pass
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args()
    print(_bench.header("split/merge overhead", ("jax", "nnxlite", "flax")))
    table = {n: measure(n, 3 if args.quick else max(5, 20000 // n)) for n in args.sizes}
    names = list(next(iter(table.values())))
    print("\n| case | " + " | ".join(f"{n} layers ({2 * n} leaves)" for n in args.sizes) + " |")
    print("|---|" + "---|" * len(args.sizes))
    for name in names:
        cells = []
        for n in args.sizes:
            r = table[n]
            cells.append(f"{r[name] / r['pytree floor']:.2f}×" if name in r else "–")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nRatios against the pytree floor (tree_flatten+tree_unflatten of a nested dict of the same arrays).")


if __name__ == "__main__":
    main()
