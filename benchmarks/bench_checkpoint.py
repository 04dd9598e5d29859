"""What checksums cost: a save/restore cycle of a 1 GB model, with and without them, in one run.

Three ways of doing the same cycle (save the model to a file, fsync'ed, then read
it all back into host arrays), measured side by side, interleaved, median of
repeats:

* nnxlite (default): per-tensor and manifest checksums written and verified;
* nnxlite without checksums: the hash replaced by a constant, ``verify=False``;
* the ``safetensors`` library's ``save_file`` / ``load_file`` (a peer reference;
  it writes no checksums and does not fsync).

    python benchmarks/bench_checkpoint.py            # 1 GB model
    python benchmarks/bench_checkpoint.py --quick    # 64 MB model

The number to watch is ``checksum cost``: the default cycle over the unchecked
one (the goal is below 1.20).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nnxlite as nnx  # noqa: E402
from nnxlite import _checksums, checkpoint  # noqa: E402


def make_model(total_bytes: int, n_tensors: int = 16) -> dict:
    n = total_bytes // 4 // n_tensors
    return {f"layer{i}": {"kernel": np.arange(i, i + n, dtype=np.float32)} for i in range(n_tensors)}


def cycle_nnxlite(path: str, model: dict, target: dict, verify: bool) -> tuple[float, float]:
    t0 = time.perf_counter()
    nnx.save(path, model)
    t1 = time.perf_counter()
    out = nnx.restore(path, target, verify=verify)
    t2 = time.perf_counter()
    del out
    return t1 - t0, t2 - t1


def cycle_safetensors(path: str, model: dict) -> tuple[float, float]:
    import safetensors.numpy as stn

    flat = {f"{k}/kernel": v["kernel"] for k, v in model.items()}
    t0 = time.perf_counter()
    stn.save_file(flat, path)
    t1 = time.perf_counter()
    out = stn.load_file(path)
    t2 = time.perf_counter()
    del out
    return t1 - t0, t2 - t1


class _NoChecksums:
    """Replace the hash by a constant for the unchecked baseline."""

    def __enter__(self):
        self.real = _checksums.checksum
        _checksums.checksum = lambda data: "xxh3_64:" + "0" * 16

    def __exit__(self, *exc):
        _checksums.checksum = self.real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 64 MB model")
    parser.add_argument("--size-mb", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--no-peer", action="store_true", help="skip the safetensors library (less memory)")
    args = parser.parse_args()
    size_mb = args.size_mb or (64 if args.quick else 1024)
    model = make_model(size_mb << 20)
    target = model  # restore returns new arrays; the target only gives shapes (saves 1 GB of memory)
    times: dict[str, list[tuple[float, float]]] = {"checked": [], "unchecked": [], "safetensors": []}
    try:
        import safetensors.numpy  # noqa: F401
    except ImportError:
        args.no_peer = True
    if args.no_peer:
        del times["safetensors"]
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = os.path.join(d, "model.safetensors")
        cycle_nnxlite(path, model, target, True)  # warm up (page cache, imports)
        for _ in range(args.repeats):
            times["checked"].append(cycle_nnxlite(path, model, target, True))
            gc.collect()
            with _NoChecksums():
                times["unchecked"].append(cycle_nnxlite(path, model, target, False))
            gc.collect()
            if "safetensors" in times:
                times["safetensors"].append(cycle_safetensors(path + ".lib", model))
                os.unlink(path + ".lib")
                gc.collect()
    t0 = time.perf_counter()
    for v in model.values():
        _checksums.checksum(v["kernel"].view(np.uint8))
    hash_gbs = (size_mb << 20) / (time.perf_counter() - t0) / 1e9

    def med(name, part=None):
        xs = [s + l if part is None else (s, l)[part] for s, l in times[name]]
        return statistics.median(xs)

    algorithm = _checksums.checksum(b"").split(":")[0]
    print(f"checkpoint save + restore of a {size_mb} MB model ({len(model)} tensors), median of {args.repeats}")
    print(f"  {'':32s} {'save s':>8s} {'load s':>8s} {'cycle s':>8s}")
    labels = {"checked": f"nnxlite, {algorithm} checksums", "unchecked": "nnxlite, no checksums",
              "safetensors": "safetensors library (no fsync)"}
    for name in times:
        print(f"  {labels[name]:32s} {med(name, 0):8.3f} {med(name, 1):8.3f} {med(name):8.3f}")
    print(f"  checksum cost (checked / unchecked cycle): {med('checked') / med('unchecked'):.3f}x"
          f"  (save {med('checked', 0) / med('unchecked', 0):.3f}x, load {med('checked', 1) / med('unchecked', 1):.3f}x)")
    ratios = sorted((c[0] + c[1]) / (u[0] + u[1]) for c, u in zip(times["checked"], times["unchecked"]))
    print(f"  per-round ratios (checked / unchecked, same round): {', '.join(f'{r:.3f}' for r in ratios)}"
          f"; fastest cycles: {min(s + l for s, l in times['checked']) / min(s + l for s, l in times['unchecked']):.3f}x")
    if "safetensors" in times:
        print(f"  nnxlite checked cycle / safetensors library cycle: {med('checked') / med('safetensors'):.3f}x")
    print(f"  {algorithm} throughput on this machine: {hash_gbs:.1f} GB/s")


if __name__ == "__main__":
    main()
