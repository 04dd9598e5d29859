"""Model families: checkpoint load time, forward time and peak load memory, nnxlite vs torch.

For each family (GPT-2, Llama, BERT, ViT, ResNet) at its small test config
and at one realistic size (random weights, nothing downloaded), this builds
the reference model in torch, saves it as a Hugging Face folder (or a
torchvision state dict as safetensors) and measures, side by side in one
process:

* **load**: ``nnxlite.models.X.from_pretrained(folder)`` (until every array
  is ready) vs ``transformers``' ``from_pretrained`` (torchvision: build +
  ``load_state_dict(safetensors.torch.load_file(...))``); medians of repeats;
* **forward**: the model under ``nnx.jit`` (after compiling) vs the torch
  model in eager mode under ``torch.no_grad()``, interleaved rounds, medians;
* **peak load memory**: in a fresh subprocess per library, the rise of the
  resident set (``VmHWM`` after resetting it through ``/proc/self/clear_refs``)
  while loading, divided by the checkpoint's size on disk. Target <= 1.2x.

Two more columns explain the load time: **build**, the part of nnxlite's load
spent building the model abstractly (``nnx.eval_shape``: tracing the
constructor, no weights allocated), and **copy floor**, the time to read the
checkpoint's bytes into fresh memory once (pre-faulted anonymous pages, one
``readinto``) -- what any loader that copies the weights, instead of mapping
the file lazily as ``transformers`` does, must spend.

Every case runs in its own subprocess (``--child``), one after the other, so
one family's memory and compiled code do not weigh on the next. Ratios are
nnxlite / torch (below 1 = nnxlite faster). Run:
``python benchmarks/bench_models.py [--quick | --realistic] [--rounds 5] [--only GPT-2 ...]``
(``--quick``: the small test configs only; ``--realistic``: the realistic
sizes only; neither: all ten rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nnxlite as nnx  # noqa: E402
from nnxlite import models  # noqa: E402


@dataclass
class Case:
    family: str
    size: str
    build_torch: Callable[[], Any]  # -> torch module (eval mode)
    ours: type
    torch_loader: str  # python expression of `folder` giving the loaded torch model
    inputs: Callable[[], tuple]  # numpy inputs for both
    torchvision: bool = False


def _hf(config_cls: str, model_cls: str, **kw):
    def build():
        import transformers

        return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kw)).eval()

    return build


def _ids(vocab, seq, batch=1):
    return lambda: (np.random.RandomState(0).randint(0, vocab, (batch, seq)),)


def _images(size, batch=1):
    return lambda: (np.random.RandomState(0).randn(batch, 3, size, size).astype(np.float32),)


def _resnet(depth):
    def build():
        import torchvision

        return getattr(torchvision.models, f"resnet{depth}")(num_classes=1000 if depth == 50 else 7).eval()

    return build


def cases(quick: bool) -> list[Case]:
    tiny_llm = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=64, vocab_size=103, max_position_embeddings=128)
    small = [
        Case("GPT-2", "test (2x32)", _hf("GPT2Config", "GPT2LMHeadModel", n_layer=2, n_embd=32, n_head=4,
                                         vocab_size=101, n_positions=64),
             models.GPT2, "transformers.GPT2LMHeadModel.from_pretrained(folder)", _ids(101, 12, 2)),
        Case("Llama", "test (2x32, GQA)", _hf("LlamaConfig", "LlamaForCausalLM", **tiny_llm),
             models.Llama, "transformers.LlamaForCausalLM.from_pretrained(folder)", _ids(103, 12, 2)),
        Case("BERT", "test (2x32)", _hf("BertConfig", "BertForMaskedLM", num_hidden_layers=2, hidden_size=32,
                                        num_attention_heads=4, intermediate_size=64, vocab_size=89,
                                        max_position_embeddings=32),
             models.BERT, "transformers.BertForMaskedLM.from_pretrained(folder)", _ids(89, 10, 2)),
        Case("ViT", "test (2x32, 16px)", _hf("ViTConfig", "ViTForImageClassification", num_hidden_layers=2,
                                             hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                             image_size=16, patch_size=4, num_labels=5),
             models.ViT, "transformers.ViTForImageClassification.from_pretrained(folder)", _images(16, 2)),
        Case("ResNet", "resnet18, 32px", _resnet(18), models.ResNet, "torchvision_load(18, 7, folder)",
             _images(32, 2), torchvision=True),
    ]
    if quick:
        return small
    large = [
        Case("GPT-2", "124M (12x768)", _hf("GPT2Config", "GPT2LMHeadModel"), models.GPT2,
             "transformers.GPT2LMHeadModel.from_pretrained(folder)", _ids(50257, 128)),
        Case("Llama", "~130M (12x768, 4 kv heads)",
             _hf("LlamaConfig", "LlamaForCausalLM", num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                 num_key_value_heads=4, intermediate_size=2048, vocab_size=32000),
             models.Llama, "transformers.LlamaForCausalLM.from_pretrained(folder)", _ids(32000, 128)),
        Case("BERT", "base 110M", _hf("BertConfig", "BertForMaskedLM"), models.BERT,
             "transformers.BertForMaskedLM.from_pretrained(folder)", _ids(30522, 128)),
        Case("ViT", "B/16 86M, 224px", _hf("ViTConfig", "ViTForImageClassification", num_labels=1000), models.ViT,
             "transformers.ViTForImageClassification.from_pretrained(folder)", _images(224)),
        Case("ResNet", "resnet50, 224px", _resnet(50), models.ResNet, "torchvision_load(50, 1000, folder)",
             _images(224), torchvision=True),
    ]
    return small + large


def torchvision_load(depth, classes, folder):
    import safetensors.torch
    import torchvision

    net = getattr(torchvision.models, f"resnet{depth}")(num_classes=classes)
    net.load_state_dict(safetensors.torch.load_file(str(Path(folder) / "model.safetensors")))
    return net.eval()


def _save(case: Case, net, folder: Path) -> None:
    if case.torchvision:
        import safetensors.torch

        folder.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(net.state_dict(), str(folder / "model.safetensors"))
    else:
        net.save_pretrained(folder)


def _ready(model) -> None:
    jax.block_until_ready([v for _, v in nnx.state(model).flat().items()])


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


_MEMORY_SCRIPT = r"""
import json, sys
which, family, folder, depth, classes = sys.argv[1:6]
sys.path.insert(0, {root!r})
def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
if which == "nnxlite":
    import jax, jax.numpy as jnp
    from nnxlite import models
    import nnxlite as nnx
    jnp.ones(8).block_until_ready()  # start the runtime before measuring
    load = lambda: getattr(models, family).from_pretrained(folder)
    done = lambda m: jax.block_until_ready([v for _, v in nnx.state(m).flat().items()])
else:
    import torch, transformers, safetensors.torch, torchvision
    torch.ones(8)
    if family == "ResNet":
        def load():
            net = getattr(torchvision.models, "resnet" + depth)(num_classes=int(classes))
            net.load_state_dict(safetensors.torch.load_file(folder + "/model.safetensors"))
            return net
    else:
        arch = json.load(open(folder + "/config.json"))["architectures"][0]
        load = lambda: getattr(transformers, arch).from_pretrained(folder)
    done = lambda m: None
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    reset = True
except OSError:
    reset = False
base = status("VmRSS:")
model = load()
done(model)
print(json.dumps({{"peak": status("VmHWM:") - base, "reset": reset}}))
"""


def peak_memory(which: str, case: Case, folder: Path) -> float | None:
    """Rise of the resident set while loading, in bytes (fresh subprocess)."""
    depth = "50" if "50" in case.size else "18"
    classes = "1000" if depth == "50" else "7"
    family = {"GPT-2": "GPT2"}.get(case.family, case.family)
    script = _MEMORY_SCRIPT.format(root=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", script, which, family, str(folder), depth, classes],
        capture_output=True, text=True, timeout=900,
    )
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["peak"] if result["reset"] else None


def copy_floor(folder: Path, repeats: int) -> float:
    """Median time to read the checkpoint's bytes into fresh, pre-faulted memory (one copy, no conversion)."""
    from nnxlite.interop._sources import host_empty

    files = sorted(folder.glob("*.safetensors"))

    def read():
        for f in files:
            out = host_empty((f.stat().st_size,), np.uint8)
            with open(f, "rb", buffering=0) as handle:
                view, done = memoryview(out), 0
                while done < len(view):
                    done += handle.readinto(view[done:])
            del out

    read()
    return _median_time(read, repeats)


def build_time(case: Case, folder: Path, repeats: int) -> float:
    """Median time of the abstract build alone (``nnx.eval_shape`` of the constructor)."""
    from nnxlite.models._hub import read_config

    if case.torchvision:
        return float("nan")
    config = case.ours.config_class.from_dict(read_config(folder))
    return _median_time(lambda: nnx.eval_shape(lambda: case.ours(config)), repeats)


def run_case(case: Case, rounds: int, tmp: Path) -> dict:
    import torch
    import transformers  # noqa: F401  (the loader expressions use it)

    torch.manual_seed(0)
    net = case.build_torch()
    folder = tmp / f"{case.family}-{case.size}".replace(" ", "_").replace("/", "_")
    _save(case, net, folder)
    ckpt = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    params = sum(p.numel() for p in net.parameters())
    del net

    load_ours = lambda: _ready(case.ours.from_pretrained(folder))  # noqa: E731
    load_torch = lambda: eval(case.torch_loader, {"transformers": transformers, "folder": folder,  # noqa: E731
                                                  "torchvision_load": torchvision_load})
    load_ours(), load_torch()  # warm the page cache and the import-time work
    t_load_ours = _median_time(load_ours, rounds)
    t_load_torch = _median_time(load_torch, rounds)
    t_floor = copy_floor(folder, rounds)
    t_build = build_time(case, folder, rounds)

    ours = case.ours.from_pretrained(folder)
    theirs = eval(case.torch_loader, {"transformers": transformers, "folder": folder,
                                      "torchvision_load": torchvision_load})
    inputs = case.inputs()
    forward = nnx.jit(lambda m, *xs: m(*xs))
    jax.block_until_ready(forward(ours, *inputs))  # compile
    torch_inputs = [torch.tensor(x) for x in inputs]

    def torch_forward():
        with torch.no_grad():
            theirs(*torch_inputs)

    torch_forward()
    calls = 3 if params > 10_000_000 else 20
    fwd_ours, fwd_torch = [], []
    for _ in range(rounds):  # interleaved: both see the same machine load
        fwd_ours.append(_median_time(lambda: jax.block_until_ready(forward(ours, *inputs)), calls))
        fwd_torch.append(_median_time(torch_forward, calls))
    mem_ours = peak_memory("nnxlite", case, folder)
    mem_torch = peak_memory("torch", case, folder)
    return dict(
        family=case.family, size=case.size, params=params, ckpt=ckpt,
        load_ours=t_load_ours, load_torch=t_load_torch, floor=t_floor, build=t_build,
        fwd_ours=statistics.median(fwd_ours), fwd_torch=statistics.median(fwd_torch),
        mem_ours=mem_ours, mem_torch=mem_torch,
    )


def _fmt_time(s: float) -> str:
    if s != s:  # nan: not applicable
        return "-"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_mem(peak: float | None, ckpt: int) -> str:
    return "n/a" if peak is None else f"{peak / ckpt:.2f}x"


def table(rows: list[dict]) -> str:
    lines = [
        "| family | size | params | checkpoint | load nnxlite | of which build | copy floor | load torch | ratio | "
        "forward nnx.jit | forward torch eager | ratio | peak load memory nnxlite | torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mb = r["ckpt"] / 2**20
        lines.append(
            f"| {r['family']} | {r['size']} | {r['params'] / 1e6:.2f}M | {mb:.1f} MB | {_fmt_time(r['load_ours'])} | "
            f"{_fmt_time(r['build'])} | {_fmt_time(r['floor'])} | "
            f"{_fmt_time(r['load_torch'])} | {r['load_ours'] / r['load_torch']:.2f} | {_fmt_time(r['fwd_ours'])} | "
            f"{_fmt_time(r['fwd_torch'])} | {r['fwd_ours'] / r['fwd_torch']:.2f} | "
            f"{_fmt_mem(r['mem_ours'], r['ckpt'])} | {_fmt_mem(r['mem_torch'], r['ckpt'])} |"
        )
    return "\n".join(lines)


def child(index: int, quick: bool, rounds: int) -> None:
    """Run one case in this process and print its row as JSON (the last line of stdout)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    case = cases(quick)[index]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        row = run_case(case, rounds, Path(tmp))
    row["loadavg"] = [load, os.getloadavg()[0]]
    print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small test configs only")
    parser.add_argument("--rounds", type=int, default=5, help="repeats of each timing (median)")
    parser.add_argument("--realistic", action="store_true", help="the realistic sizes only (no test configs)")
    parser.add_argument("--only", nargs="*", help="families to run (GPT-2 Llama BERT ViT ResNet)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: run one case
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.quick, args.rounds)
        return
    import torch
    import transformers

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; jax {jax.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}")
    rows = []
    for index, case in enumerate(cases(args.quick)):
        if (args.only and case.family not in args.only) or (args.realistic and index < len(cases(True))):
            continue
        command = [sys.executable, __file__, "--child", str(index), "--rounds", str(args.rounds)]
        out = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True,
                             timeout=3600)
        if out.returncode != 0:
            print(f"# {case.family} {case.size} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        before, after = rows[-1]["loadavg"]
        print(table(rows[-1:]).splitlines()[-1] + f"  <!-- load average {before:.1f} -> {after:.1f} -->", flush=True)
    print()
    print(table(rows))
    averages = [x for r in rows for x in r["loadavg"]]
    if averages:
        print(f"\nload average during the runs: {min(averages):.1f}-{max(averages):.1f}")


if __name__ == "__main__":
    main()
