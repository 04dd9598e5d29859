"""How much of flax's own example programs runs on nnxlite with only the import changed.

A proxy for "a held-out flax.nnx program runs unchanged": the ``examples/``
folder of google/flax (v0.12.7) holds model code with its unit tests
(``gemma/``, ``lm1b/``, ``mnist/``) and stand-alone scripts
(``nnx_toy_examples/``). For every example folder this script copies the
folder to a temporary directory and runs it twice, in subprocesses:

* with flax, as written;
* with the import replaced in every ``.py`` file of the copy:
  ``from flax import nnx`` / ``import flax.nnx as nnx`` -> ``import nnxlite as nnx``,
  ``from flax.nnx import X`` -> ``from nnxlite import X``, and
  ``from flax import nnx, struct`` -> ``import nnxlite as nnx`` + ``from flax import struct``
  (``PYTHONPATH`` points at this repository so that ``nnxlite`` is this checkout).

``*_test.py`` files run under pytest; per-test results come from
``--junitxml``. Scripts run as ``python script.py`` and pass when they exit 0
within the timeout. The table gives, per file, the tests that pass under flax
and how many of those also pass under nnxlite.

Skipped under both libraries and counted separately:

* test files and scripts that import a dataset/network package that is not
  installed here (``tensorflow``, ``tensorflow_datasets``, ``datasets``,
  ``grain``; or one of the optional packages below): the import fails under
  flax already;
* tests that skip themselves (``self.skipTest``) under flax.

Long scripts are shortened by text substitution, identically for both
libraries (see ``SHORTEN`` below): the number of training steps only.

The examples need a few packages beyond the project's test extras: the
pure-Python ``absl-py``, ``ml_collections``, ``clu`` and ``jaxtyping``, and
``sentencepiece`` (a small wheel; gemma's ``sampler_test`` subclasses its
``SentencePieceProcessor`` with a mock vocabulary, no model file):
``pip install ml_collections clu sentencepiece``. They are for this benchmark
only, not nnxlite dependencies. Without one, the files importing it are
reported as skipped under both. Run from the repository root::

    python benchmarks/flax_examples_compat.py                         # every example
    python benchmarks/flax_examples_compat.py --only gemma/layers_test 01_functional
    python benchmarks/flax_examples_compat.py --flax-cache /tmp/flax_examples.json

``--examples`` points at flax's ``examples`` folder (default
``/work/flaxref/examples``).

``--tests-dir`` measures a folder of unit tests instead, such as flax's own
``tests/nnx`` (every ``*_test.py`` / ``test_*.py`` below it, one file at a time,
run in a copy of the whole folder so that relative helpers resolve)::

    python benchmarks/flax_examples_compat.py --tests-dir /work/flaxref/tests/nnx \
        --flax-cache /tmp/flax_nnx_tests.json --timeout 600 --only optimizer_test nn/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What runs: (folder, file). Tests run under pytest, scripts as programs.
TESTS = {
    "gemma": ["helpers_test.py", "layers_test.py", "modules_test.py", "positional_embeddings_test.py",
              "sampler_test.py", "transformer_test.py"],
    "lm1b": ["temperature_sampler_test.py", "train_test.py"],
    "mnist": ["train_test.py"],
}
SCRIPTS = {
    "nnx_toy_examples": ["01_functional_api.py", "02_lifted_transforms.py", "03_train_state.py",
                         "04_data_parallel_with_jit.py", "05_vae.py", "06_scan_over_layers.py",
                         "07_array_leaves.py", "08_save_load_checkpoints.py", "09_parameter_surgery.py",
                         "10_fsdp_and_optimizer.py", "hijax_basic.py", "hijax_demo.py"],
}

# Step counts shortened for both libraries (file -> [(old text, new text)]): the toy examples
# train for 10 000 steps, which says nothing more about compatibility than 200 do.
SHORTEN = {
    "01_functional_api.py": [("total_steps = 10_000", "total_steps = 200")],
    "02_lifted_transforms.py": [("total_steps = 10_000", "total_steps = 200")],
    "03_train_state.py": [("total_steps = 10_000", "total_steps = 200")],
    "04_data_parallel_with_jit.py": [("enumerate(dataset(1000, 16))", "enumerate(dataset(200, 16))")],
    "07_array_leaves.py": [("total_steps = 10_000", "total_steps = 200")],
    "10_fsdp_and_optimizer.py": [("num_steps=10_000", "num_steps=200")],
    "hijax_basic.py": [("total_steps = 10_000", "total_steps = 200")],
    "hijax_demo.py": [("total_steps = 2_000", "total_steps = 200")],
}

# Importing any of these fails here (not installed) or needs the network: skipped under both.
NEEDS_DATA = ("tensorflow", "tensorflow_datasets", "sentencepiece", "datasets", "grain", "kagglehub",
              "ml_collections", "clu")


def _split_flax_import(match: re.Match) -> str:
    """``from flax import a, nnx, b`` -> ``import nnxlite as nnx`` + ``from flax import a, b``."""
    indent, names = match.group(1), [n.strip() for n in match.group(2).split(",")]
    others = [n for n in names if n != "nnx"]
    lines = [f"{indent}import nnxlite as nnx"]
    if others:
        lines.append(f"{indent}from flax import {', '.join(others)}")
    return "\n".join(lines)


def to_nnxlite(code: str) -> str:
    """The one change a user makes: import nnxlite as nnx instead of flax.nnx."""
    code = re.sub(r"^([ \t]*)from flax import ((?:[\w ]+,)*\s*nnx\s*(?:,[\w ]+)*)[ \t]*$", _split_flax_import,
                  code, flags=re.M)
    code = re.sub(r"^(\s*)from flax import nnx\b(?!\.)", r"\1import nnxlite as nnx", code, flags=re.M)
    code = re.sub(r"^(\s*)import flax\.nnx as nnx\b", r"\1import nnxlite as nnx", code, flags=re.M)
    code = re.sub(r"^(\s*)from flax\.nnx import\b", r"\1from nnxlite import", code, flags=re.M)
    return code


@dataclass
class FileResult:
    name: str  # folder/file
    kind: str  # "test" or "script"
    flax: dict[str, str] = field(default_factory=dict)  # test id -> passed / failed / skipped
    nnxlite: dict[str, str] = field(default_factory=dict)
    skip_reason: str = ""
    errors: dict[str, str] = field(default_factory=dict)  # nnxlite's message, for tests flax passes

    @property
    def flax_pass(self) -> list[str]:
        return [t for t, s in self.flax.items() if s == "passed"]

    @property
    def both_pass(self) -> list[str]:
        return [t for t in self.flax_pass if self.nnxlite.get(t) == "passed"]

    @property
    def skipped(self) -> int:
        return sum(s == "skipped" for s in self.flax.values())


def _copy_example(src: Path, dst: Path, *, nnxlite: bool) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"))
    for path in dst.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for old, new in SHORTEN.get(path.name, []):
            text = text.replace(old, new)
        if nnxlite:
            text = to_nnxlite(text)
        path.write_text(text, encoding="utf-8")


def _env() -> dict[str, str]:
    env = dict(os.environ, MPLBACKEND="Agg", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _missing_data_module(output: str) -> str:
    for name in re.findall(r"No module named '([\w.]+)'", output):
        if name.split(".")[0] in NEEDS_DATA:
            return name
    return ""


def _first_error(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for line in reversed(lines):
        if re.match(r"^(E\s+)?[\w.]*(Error|Exception|Exit)\b", line):
            return line.removeprefix("E").strip()[:300]
    return (lines[-1] if lines else "no output")[:300]


def run_tests(folder: Path, file: str, *, nnxlite: bool, timeout: int) -> tuple[dict[str, str], dict[str, str], str]:
    """Per-test status and error line of ``file`` in a copy of ``folder``; a skip reason if the file needs data."""
    with tempfile.TemporaryDirectory(prefix="flax_examples_") as tmp:
        work = Path(tmp) / folder.name
        _copy_example(folder, work, nnxlite=nnxlite)
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
               f"--junitxml={xml}", "-o", "junit_family=xunit1", file]
        try:
            proc = subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"<file>": "failed"}, {"<file>": f"timed out after {timeout}s"}, ""
        output = proc.stdout + proc.stderr
        if not xml.exists():
            return {"<file>": "failed"}, {"<file>": _first_error(output)}, ""
        statuses, errors = {}, {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            test_id = f"{case.get('classname', '').rsplit('.', 1)[-1]}.{case.get('name')}"
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            if case.find("skipped") is not None:
                statuses[test_id] = "skipped"
            elif problem is not None:
                statuses[test_id] = "failed"
                errors[test_id] = (problem.get("message") or _first_error(problem.text or "")).splitlines()[0][:300]
            else:
                statuses[test_id] = "passed"
        if not statuses or all(s == "failed" for s in statuses.values()):
            missing = _missing_data_module(output)
            if missing:
                return {}, {}, f"needs {missing}"
        return statuses, errors, ""


def run_script(folder: Path, file: str, *, nnxlite: bool, timeout: int) -> tuple[dict[str, str], dict[str, str], str]:
    with tempfile.TemporaryDirectory(prefix="flax_examples_") as tmp:
        work = Path(tmp) / folder.name
        _copy_example(folder, work, nnxlite=nnxlite)
        try:
            proc = subprocess.run([sys.executable, file], cwd=work, env=_env(), capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"<script>": "failed"}, {"<script>": f"timed out after {timeout}s"}, ""
        if proc.returncode == 0:
            return {"<script>": "passed"}, {}, ""
        output = proc.stdout + proc.stderr
        missing = _missing_data_module(output)
        if missing:
            return {}, {}, f"needs {missing}"
        return {"<script>": "failed"}, {"<script>": _first_error(output)}, ""


def run_file(examples: Path, folder: str, file: str, kind: str, timeout: int, cache: dict | None) -> FileResult:
    runner = run_tests if kind == "test" else run_script
    src = examples / folder
    # flax's results depend only on the folder's sources (and the installed flax): reuse them when asked to.
    digest = hashlib.sha256()
    for path in sorted(src.rglob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    key = f"{folder}/{file}:{digest.hexdigest()}:{json.dumps(SHORTEN.get(file, []))}"
    if cache is not None and key in cache:
        flax, flax_errors, skip = cache[key]
    else:
        flax, flax_errors, skip = runner(src, file, nnxlite=False, timeout=timeout)
        if cache is not None and not skip:  # a missing package may be installed by the next run
            cache[key] = (flax, flax_errors, skip)
    result = FileResult(f"{folder}/{file}", kind, flax=flax, skip_reason=skip)
    if skip:
        return result
    result.nnxlite, errors, _ = runner(src, file, nnxlite=True, timeout=timeout)
    for test in result.flax_pass:
        if result.nnxlite.get(test) != "passed":
            result.errors[test] = errors.get(test) or errors.get("<file>", "not run")
    return result


def test_files(folder: Path) -> list[str]:
    """The unit-test files below ``folder``, as paths relative to it."""
    found = {p for pattern in ("*_test.py", "test_*.py") for p in folder.rglob(pattern)}
    return sorted(str(p.relative_to(folder)) for p in found if "__pycache__" not in p.parts)


def report(results: list[FileResult]) -> str:
    lines = [f"{'file':46s} {'kind':6s} {'skip':>4s} {'flax':>5s} {'nnxlite':>7s}  note"]
    totals = {"test": [0, 0], "script": [0, 0]}
    skipped_files = []
    for r in results:
        if r.skip_reason:
            skipped_files.append(r)
            lines.append(f"{r.name:46s} {r.kind:6s} {'all':>4s} {'-':>5s} {'-':>7s}  skipped under both: {r.skip_reason}")
            continue
        f, b = len(r.flax_pass), len(r.both_pass)
        totals[r.kind][0] += f
        totals[r.kind][1] += b
        lines.append(f"{r.name:46s} {r.kind:6s} {r.skipped:4d} {f:5d} {b:7d}")
    for kind, (f, b) in totals.items():
        ratio = f"{100 * b / f:.1f}%" if f else "-"
        lines.append(f"{'TOTAL ' + kind + 's':46s} {'':6s} {'':4s} {f:5d} {b:7d}  {ratio}")
    f = sum(t[0] for t in totals.values())
    b = sum(t[1] for t in totals.values())
    lines.append(f"{'TOTAL':46s} {'':6s} {'':4s} {f:5d} {b:7d}  {100 * b / f:.1f}%" if f else "TOTAL -")
    self_skipped = sum(r.skipped for r in results)
    lines.append(f"skipped under both: {len(skipped_files)} files (dataset/network imports), "
                 f"{self_skipped} tests that skip themselves under flax")
    for r in results:
        for test, err in sorted(r.errors.items()):
            lines.append(f"  {r.name} {test}: {err}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=Path, default=Path("/work/flaxref/examples"),
                        help="flax's examples folder (default: %(default)s)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="only files whose folder/name contains one of these words (default: all)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per file and library (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    parser.add_argument("--flax-cache", type=Path, default=None,
                        help="JSON file caching the flax runs between invocations (default: run flax every time)")
    parser.add_argument("--tests-dir", type=Path, default=None,
                        help="measure every *_test.py / test_*.py below this folder instead of the examples "
                             "(e.g. flax's tests/nnx)")
    args = parser.parse_args(argv)
    cache = json.loads(args.flax_cache.read_text()) if args.flax_cache and args.flax_cache.exists() else None
    if args.flax_cache and cache is None:
        cache = {}

    if args.tests_dir:
        jobs = [(args.tests_dir.name, file, "test") for file in test_files(args.tests_dir)]
        args.examples = args.tests_dir.parent
    else:
        jobs = [(folder, file, "test") for folder, files in TESTS.items() for file in files]
        jobs += [(folder, file, "script") for folder, files in SCRIPTS.items() for file in files]
    if args.only:
        jobs = [j for j in jobs if any(word in f"{j[0]}/{j[1]}" for word in args.only)]
    results = []
    for folder, file, kind in jobs:
        start = time.perf_counter()
        result = run_file(args.examples, folder, file, kind, args.timeout, cache)
        results.append(result)
        if args.flax_cache:
            args.flax_cache.write_text(json.dumps(cache))
        print(f"{result.name}: flax {len(result.flax_pass)}, nnxlite {len(result.both_pass)} "
              f"{result.skip_reason} ({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
