"""Run every example end to end with ``--smoke`` (tiny sizes) in a fresh interpreter.

Each run must exit cleanly, write its PNG plot into ``--out``, and print the
lines its README promises. No timing is asserted: the numbers are only
checked to be well-formed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

for _module in ("sklearn", "matplotlib", "tqdm", "optax"):
    pytest.importorskip(_module, reason="the examples need the [examples] extra: pip install -e '.[examples]'")

ROOT = Path(__file__).resolve().parents[1]
FLOAT = r"([0-9]+(?:\.[0-9]+)?)"


def run_example(name: str, out: Path) -> str:
    """Run ``examples/<name>.py --smoke --out <out>`` from the repository root; return its stdout."""
    proc = subprocess.run(
        [sys.executable, f"examples/{name}.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        # This checkout's nnxlite, whether or not (and wherever) the package is installed.
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{name} failed\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    png = out / f"{name}.png"
    assert png.is_file(), f"{name} did not write {png}; stdout:\n{proc.stdout}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved plot: {png}" in proc.stdout
    assert "%|" in proc.stderr, "expected a tqdm progress bar on stderr"
    return proc.stdout


def accuracy_after(label: str, stdout: str) -> float:
    """The float printed as ``<label>...test accuracy: 0.xxx``, checked to be in [0, 1]."""
    match = re.search(re.escape(label) + r".*test accuracy: " + FLOAT + r"\s*$", stdout, re.MULTILINE)
    assert match, f"no line with {label!r} and 'test accuracy: <float>' in:\n{stdout}"
    value = float(match.group(1))
    assert 0.0 <= value <= 1.0
    return value


def test_eager_digits(tmp_path):
    stdout = run_example("eager_digits", tmp_path)
    assert re.search(r"^test accuracy: [01]\.[0-9]{3}$", stdout, re.MULTILINE), stdout
    accuracy_after("", stdout)  # in [0, 1]
    speed = re.search(
        rf"^eager: {FLOAT} steps/s, nnx\.jit: {FLOAT} steps/s, speed-up: {FLOAT}x$", stdout, re.MULTILINE
    )
    assert speed, stdout
    assert all(float(g) > 0 for g in speed.groups())


def test_scan_transformer(tmp_path):
    stdout = run_example("scan_transformer", tmp_path)
    assert re.search(r"dropout masks differ across the \d+ scanned layers", stdout), stdout
    # The compile-time table: a header, then one row per depth (smoke: 1 and 2 layers).
    assert re.search(r"^\s*layers\s+nnx\.scan\s+for loop$", stdout, re.MULTILINE), stdout
    rows = re.findall(rf"^\s*(\d+)\s+{FLOAT}\s+{FLOAT}$", stdout, re.MULTILINE)
    assert [int(r[0]) for r in rows] == [1, 2], stdout
    assert re.search(rf"final loss: train {FLOAT}, validation {FLOAT}", stdout), stdout
    # A generated sample between two marker lines (it may be mostly spaces after a smoke run).
    assert re.search(r"^----- sample -----\n.+\n------------------$", stdout, re.MULTILINE | re.DOTALL), stdout


def test_pretrained_backbone(tmp_path):
    stdout = run_example("pretrained_backbone", tmp_path)
    accuracy_after("pretraining on digits 0-4", stdout)
    accuracy_after("pretrained backbone (frozen) + new head", stdout)
    accuracy_after("trained from scratch", stdout)
    accuracy_after("LoRA adapters (rank 4) on the pretrained classifier", stdout)
    accuracy_after("full fine-tune of the pretrained classifier", stdout)
    assert (tmp_path / "backbone_digits_0-4.safetensors").is_file()


def test_torch_backbone(tmp_path):
    pytest.importorskip("torch", reason="the example needs the [interop] extra")
    pytest.importorskip("safetensors")
    stdout = run_example("torch_backbone", tmp_path)
    accuracy_after("torch CNN on digits 0-4", stdout)
    accuracy_after("the loaded model in nnxlite", stdout)
    accuracy_after("torch backbone (frozen) + new head", stdout)
    accuracy_after("trained from scratch", stdout)
    diff = re.search(r"nnxlite logits vs torch logits on \d+ test images: max abs diff ([0-9.e+-]+)$", stdout, re.M)
    assert diff, stdout
    assert float(diff.group(1)) < 1e-4, "the loaded nnxlite model computes different logits from torch"
    assert (tmp_path / "torch_cnn_digits_0-4.safetensors").is_file()
