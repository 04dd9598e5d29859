"""Scaffolding the benchmark scripts share: peers that may be missing, the header line, interleaved timing.

Importing it also puts this checkout's root first on ``sys.path``, so
``python benchmarks/bench_x.py`` measures the ``nnxlite`` next to it whether
or not (and wherever) the package is installed.

Timing is *interleaved*: every round times each variant in turn (the
starting variant rotates), and a cell is the median over rounds of a
variant's time divided by the reference's time **in the same round**, which
keeps ratios stable on a machine whose speed drifts.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parser(description: str, *, rounds: int, calls: int) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the flags every interleaved benchmark takes: --rounds, --calls, --quick."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds (the median is reported)")
    p.add_argument("--calls", type=int, default=calls, help="calls per variant per round")
    p.add_argument("--quick", action="store_true", help="few rounds and calls (a smoke run)")
    return p


def optional(module: str) -> Any:
    """``import module``, or None when it is not installed (its rows are then left out)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def header(title: str, modules: tuple[str, ...] = ("jax", "optax", "nnxlite", "flax", "equinox")) -> str:
    """``# title — cpu model, backend, versions of the installed modules``."""
    import jax

    versions = []
    for name in modules:
        mod = optional(name)
        if mod is not None:
            versions.append(f"{name} {getattr(mod, '__version__', '?')}")
    return f"# {title} — {platform.processor() or platform.machine()}, {jax.devices()[0].platform}, {', '.join(versions)}"


def block(out: Any) -> None:
    """Wait for a JAX result; anything else (a torch tensor) is already computed."""
    import jax

    if hasattr(out, "block_until_ready") or isinstance(out, (tuple, list, dict)):
        jax.block_until_ready(out)


def interleave(variants: dict[str, Callable[[], Any]], rounds: int, calls: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument variant, one entry per round, timed in turn.

    Each variant first runs ``warmup`` times (compiles, caches). A round times
    ``calls`` calls of every variant, starting with a different one each round.
    """
    for run in variants.values():
        for _ in range(warmup):
            block(run())
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            run = variants[name]
            t0 = time.perf_counter()
            for _ in range(calls):
                out = run()
            block(out)
            times[name].append((time.perf_counter() - t0) / calls)
    return times


def median_ratios(times: dict[str, list[float]], reference: str | None = None) -> dict[str, float]:
    """Median over rounds of (variant time / reference time in the same round); the first variant by default."""
    ref = times[reference if reference is not None else next(iter(times))]
    return {n: statistics.median(t / b for t, b in zip(ts, ref)) for n, ts in times.items()}


def first_call(fn: Callable[[], Any]) -> float:
    """Seconds of one call of ``fn``, waiting for its result (for a first call: trace + compile + run).

    A full garbage collection runs first: with millions of live objects (a
    20,000-leaf model and its traces) one that fell inside the timing would
    add seconds to whichever variant it hit.
    """
    gc.collect()
    t0 = time.perf_counter()
    block(fn())
    return time.perf_counter() - t0
