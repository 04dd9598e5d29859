"""Loading a PyTorch safetensors checkpoint: nnxlite vs torch, time and peak host memory.

The model is a stack of transformer-style MLP blocks (embedding, then
``LayerNorm -> Linear(d, 4d) -> Linear(4d, d)`` per block) built with the
same attribute names in both frameworks, random weights, saved once with
``safetensors.torch.save_file``.

* **time**: ``nnxlite.interop.torch.load_state_dict(model, path)`` against
  ``torch_model.load_state_dict(safetensors.torch.load_file(path))``, both
  into an already built model, medians of repeats in one process (the file
  is in the page cache after the first read).
* **peak memory**: each load runs in a fresh subprocess. After building the
  model, the peak-RSS counter is reset (``/proc/self/clear_refs``); the
  peak during the load minus the RSS before it is the memory the load
  needed, reported as a multiple of the checkpoint size. Target: <= 1.2x.
  "abstract" loads into a model built with ``nnx.eval_shape`` (no weights
  allocated before the load), so there the whole model is the load's.

    python benchmarks/bench_interop.py            # 8 blocks of d=768: ~180 MB
    python benchmarks/bench_interop.py --quick    # 2 blocks of d=256
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sizes(quick: bool) -> dict:
    return dict(blocks=2, d=256, vocab=2048) if quick else dict(blocks=8, d=768, vocab=8192)


# -- the two models -----------------------------------------------------------------------------
def torch_model(blocks: int, d: int, vocab: int):
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(d)
            self.fc1 = nn.Linear(d, 4 * d)
            self.fc2 = nn.Linear(4 * d, d)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.blocks = nn.ModuleList([Block() for _ in range(blocks)])

    return Net()


def nnx_model(blocks: int, d: int, vocab: int, seed: int = 0):
    import nnxlite as nnx

    class Block(nnx.Module):
        def __init__(self, ctx):
            self.norm = nnx.LayerNorm(d, epsilon=1e-5, ctx=ctx)
            self.fc1 = nnx.Linear(d, 4 * d, ctx=ctx)
            self.fc2 = nnx.Linear(4 * d, d, ctx=ctx)

    class Net(nnx.Module):
        def __init__(self, ctx):
            self.embed = nnx.Embed(vocab, d, ctx=ctx)
            self.blocks = [Block(ctx) for _ in range(blocks)]

    return Net(nnx.context(seed))


# -- memory, measured in a child process ---------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(kind: str, path: str, quick: bool) -> None:
    """Build the model, reset the peak-RSS counter, load, print the peak extra memory in bytes."""
    cfg = sizes(quick)
    if kind == "torch":
        import torch  # noqa: F401
        from safetensors.torch import load_file

        model = torch_model(**cfg)
        load = lambda: model.load_state_dict(load_file(path))  # noqa: E731
    else:
        import jax
        import nnxlite as nnx
        from nnxlite.interop import torch as tx

        if kind == "nnxlite-abstract":
            model = nnx.eval_shape(lambda: nnx_model(**cfg))
        else:
            model = nnx_model(**cfg)
            jax.block_until_ready(nnx.state(model))
        # Warm up what a first call compiles or imports, on a tiny model, so it is not counted.
        tx.load_state_dict(nnx.Linear(2, 2, ctx=nnx.context(0)), {"weight": jax.numpy.ones((2, 2)),
                                                                   "bias": jax.numpy.ones(2)})
        load = lambda: jax.block_until_ready(nnx.state(model) if tx.load_state_dict(model, path) else None)  # noqa: E731
    gc.collect()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    load()
    peak = _status_kb("VmHWM")
    print(json.dumps({"extra_bytes": (peak - before) * 1024}))


def peak_extra(kind: str, path: str, quick: bool) -> int:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, path] + (["--quick"] if quick else []),
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])["extra_bytes"]


# -- time, measured here -------------------------------------------------------------------------
def median_seconds(fns: dict, repeats: int) -> dict:
    """Median wall time of each function; the repeats are interleaved so machine noise hits all alike."""
    for fn in fns.values():
        fn()  # first call: page cache, imports
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model (seconds)")
    parser.add_argument("--repeats", type=int, default=5, help="timed loads per framework (median)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.quick)
        return

    import jax
    import torch
    from safetensors.torch import load_file, save_file

    import nnxlite as nnx
    from nnxlite.interop import torch as tx

    cfg = sizes(args.quick)
    torch.manual_seed(0)
    reference = torch_model(**cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        save_file(reference.state_dict(), path)
        size = os.path.getsize(path)
        n_params = sum(p.numel() for p in reference.parameters())

        t_model = torch_model(**cfg)
        n_model = nnx_model(**cfg)
        in_memory = reference.state_dict()
        times = median_seconds({
            "torch": lambda: t_model.load_state_dict(load_file(path)),
            "nnxlite": lambda: jax.block_until_ready(nnx.state(n_model) if tx.load_state_dict(n_model, path) else None),
            "nnxlite-memory": lambda: jax.block_until_ready(
                nnx.state(n_model) if tx.load_state_dict(n_model, in_memory) else None),
        }, args.repeats)
        t_torch, t_nnx, t_nnx_mem = times["torch"], times["nnxlite"], times["nnxlite-memory"]
        assert float(abs(n_model.blocks[0].fc1.kernel.value - reference.blocks[0].fc1.weight.detach().numpy().T).max()) == 0

        mem = {kind: peak_extra(kind, path, args.quick) for kind in ("torch", "nnxlite", "nnxlite-abstract")}

    print(f"model: {cfg['blocks']} blocks, d={cfg['d']}, vocab={cfg['vocab']}: {n_params / 1e6:.1f}M parameters, "
          f"checkpoint {size / 2**20:.0f} MiB (float32), jax {jax.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs\n")
    print("| load | time (median) | vs torch | peak extra memory | x checkpoint |")
    print("|---|---|---|---|---|")
    rows = [
        ("torch: `load_state_dict(load_file(path))`", t_torch, mem["torch"]),
        ("nnxlite: `load_state_dict(model, path)`", t_nnx, mem["nnxlite"]),
        ("nnxlite, abstract model (`nnx.eval_shape`)", None, mem["nnxlite-abstract"]),
        ("nnxlite from torch tensors in memory", t_nnx_mem, None),
    ]
    for label, t, extra in rows:
        time_cell = f"{t * 1e3:.0f} ms" if t is not None else "-"
        ratio = f"{t / t_torch:.2f}x" if t is not None else "-"
        mem_cell = f"{extra / 2**20:.0f} MiB" if extra is not None else "-"
        mem_ratio = f"{extra / size:.2f}x" if extra is not None else "-"
        print(f"| {label} | {time_cell} | {ratio} | {mem_cell} | {mem_ratio} |")


if __name__ == "__main__":
    main()
