"""Crash safety of nnx.save: SIGKILL a saving process at random moments, check what is on disk.

A forked child saves two models, A and B, to the same path over and over; the
parent kills it with SIGKILL after a random delay (up to about four saves'
time), then checks that the file on disk is exactly A or exactly B (checksums
verified, every byte compared). After all kills, one more save must leave no
temporary file behind.

    python benchmarks/crash_safety.py             # 20 kills, a ~4 MB model (what the test suite runs)
    python benchmarks/crash_safety.py --full      # 200 kills, a ~64 MB model
    python benchmarks/crash_safety.py --json      # one JSON line (for tests)

Only numpy arrays are saved, so the forked children never start a jax
backend (fork and a running XLA runtime do not mix).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nnxlite as nnx  # noqa: E402
from nnxlite import checkpoint  # noqa: E402


def make_model(seed: int, total_bytes: int) -> dict:
    rng = np.random.default_rng(seed)
    n = max(total_bytes // 4 // 8, 1)
    return {f"layer{i}": {"kernel": rng.standard_normal(n).astype(np.float32), "step": seed} for i in range(8)}


def flat(tree: dict) -> dict:
    return {f"{k}/{kk}": v for k, d in tree.items() for kk, v in d.items()}


def on_disk(path: str) -> dict | None:
    """The file's contents (numpy arrays, checksums verified), or None if it is unreadable."""
    try:
        with checkpoint._Reader(path) as reader:
            return {key: reader.value(key) for key in reader.entries}
    except (ValueError, OSError):
        return None


def same(found: dict | None, expected: dict) -> bool:
    if found is None or found.keys() != expected.keys():
        return False
    for k, v in expected.items():
        got = found[k]
        if isinstance(v, np.ndarray):
            if not (isinstance(got, np.ndarray) and got.dtype == v.dtype and np.array_equal(got, v)):
                return False
        elif type(got) is not type(v) or got != v:
            return False
    return True


def temp_files(directory: str, path: str) -> list[str]:
    prefix = f".{os.path.basename(path)}."
    return sorted(n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(".tmp"))


def run(kills: int, total_bytes: int, directory: str, seed: int) -> dict:
    path = os.path.join(directory, "model.safetensors")
    models = [make_model(0, total_bytes), make_model(1, total_bytes)]
    expected = [flat(m) for m in models]
    nnx.save(path, models[0])
    t0 = time.perf_counter()
    nnx.save(path, models[0])
    save_s = time.perf_counter() - t0
    rng = random.Random(seed)
    report = {"kills": 0, "old": 0, "new": 0, "bad": [], "temp_files_seen_after_kills": 0, "save_s": round(save_s, 4)}
    for k in range(kills):
        before = on_disk(path)
        pid = os.fork()
        if pid == 0:  # the child: save B, A, B, ... until killed
            try:
                i = 1
                while True:
                    nnx.save(path, models[i % 2])
                    i += 1
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0, 4 * save_s))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        report["kills"] += 1
        found = on_disk(path)
        if same(found, expected[0]):
            report["old" if same(before, expected[0]) else "new"] += 1
        elif same(found, expected[1]):
            report["new" if same(before, expected[0]) else "old"] += 1
        else:
            report["bad"].append(k)
        report["temp_files_seen_after_kills"] += len(temp_files(directory, path))
    nnx.save(path, models[0])
    report["temp_files_after_next_save"] = temp_files(directory, path)
    if not same(on_disk(path), expected[0]):
        report["bad"].append("final save")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=None)
    parser.add_argument("--full", action="store_true", help="200 kills of a ~64 MB model")
    parser.add_argument("--dir", default=None, help="folder to save into (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kills = args.kills if args.kills is not None else (200 if args.full else 20)
    size = (64 if args.full else 4) * 2**20
    if args.dir:
        report = run(kills, size, args.dir, args.seed)
    else:
        with tempfile.TemporaryDirectory() as d:
            report = run(kills, size, d, args.seed)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['kills']} SIGKILLs mid-save ({size >> 20} MB model, one save {report['save_s'] * 1e3:.1f} ms):")
        print(f"  file was the old model {report['old']} times, the new one {report['new']} times, "
              f"neither {len(report['bad'])} times")
        print(f"  temp files left by the kills: {report['temp_files_seen_after_kills']} in all; "
              f"after the next save: {len(report['temp_files_after_next_save'])}")
    sys.exit(1 if report["bad"] or report["temp_files_after_next_save"] else 0)


if __name__ == "__main__":
    main()
