"""How much of flax.nnx's own documentation runs on nnxlite with only the import changed.

For every guide of flax's ``docs_nnx/`` folder (the jupytext ``.md`` files),
this script extracts the code cells (```` ```{code-cell} ipython3 ```` blocks
in MyST guides, ```` ```python ```` blocks in plain-markdown jupytext guides)
and runs each guide's cells in order, in a fresh namespace, in its own
subprocess, twice:

* with flax (``from flax import nnx``, as written);
* with the import replaced: ``from flax import nnx`` -> ``import nnxlite as
  nnx`` (and ``from flax.nnx import X`` -> ``from nnxlite import X``).

It reports, per guide, the cells that pass under flax, how many of those pass
under nnxlite, and the first error line of each cell that fails under nnxlite
but not under flax. Cells that need the network or a dataset download
(``tensorflow_datasets``, ``kagglehub``, ...) and cells tagged
``skip-execution`` are skipped under both. A cell tagged ``raises-exception``
passes when it raises.

This is slow (minutes per guide on a laptop) and is not part of the test
suite. Run it from the repository root::

    python benchmarks/flax_docs_compat.py                       # every guide
    python benchmarks/flax_docs_compat.py --guides randomness surgery
    python benchmarks/flax_docs_compat.py --json out.json --cell-timeout 120
    python benchmarks/flax_docs_compat.py --flax-cache /tmp/flax_runs.json   # run flax once only

``--docs`` points at a checkout of flax's ``docs_nnx`` folder (default
``/work/flaxref/docs_nnx``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Cells mentioning any of these need the network or a dataset: skipped under both libraries.
NEEDS_NETWORK = (
    "tensorflow_datasets", "tfds.", "kagglehub", "huggingface_hub", "urllib.request", "requests.get",
    "wget ", "gsutil", "datasets.load_dataset", "sentencepiece",
)

_MYST_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
_MD_CELL = re.compile(r"^```python[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


@dataclass
class Cell:
    index: int
    code: str
    tags: tuple[str, ...] = ()
    skip_reason: str = ""


@dataclass
class GuideResult:
    guide: str
    cells: int
    skipped: int
    flax: list[str] = field(default_factory=list)  # per-cell status: ok / error / skipped / timeout
    nnxlite: list[str] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)  # nnxlite first error line, for cells flax passes
    flax_errors: dict[int, str] = field(default_factory=dict)

    @property
    def flax_pass(self) -> list[int]:
        return [i for i, s in enumerate(self.flax) if s == "ok"]

    @property
    def both_pass(self) -> list[int]:
        return [i for i in self.flax_pass if i < len(self.nnxlite) and self.nnxlite[i] == "ok"]


def guides(docs: Path) -> list[Path]:
    """The jupytext guides (a jupytext header, or a paired .ipynb) under ``docs``, sorted."""
    found = []
    for path in sorted(docs.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        if "jupytext" in text[:400] or path.with_suffix(".ipynb").exists():
            if _MYST_CELL.search(text) or _MD_CELL.search(text):
                found.append(path)
    return found


def cells_of(path: Path) -> list[Cell]:
    text = path.read_text(encoding="utf-8")
    myst = "format_name: myst" in text[:400]
    pattern = _MYST_CELL if myst else _MD_CELL
    out = []
    for i, m in enumerate(pattern.finditer(text)):
        lines = m.group("body").splitlines()
        tags: tuple[str, ...] = ()
        body = []
        in_front = True
        for line in lines:
            if in_front and line.startswith(":") and ":" in line[1:]:  # MyST cell options (:tags: [...])
                key, _, value = line[1:].partition(":")
                if key.strip() == "tags":
                    tags = tuple(t.strip() for t in value.strip(" []").split(",") if t.strip())
                continue
            in_front = False
            if line.lstrip().startswith(("%", "!")):  # IPython magics and shell escapes
                continue
            body.append(line)
        code = "\n".join(body)
        cell = Cell(i, code, tags)
        if "skip-execution" in tags:
            cell.skip_reason = "skip-execution"
        elif any(word in code for word in NEEDS_NETWORK):
            cell.skip_reason = "network/dataset"
        out.append(cell)
    return out


def to_nnxlite(code: str) -> str:
    """The one change a user makes: import nnxlite as nnx instead of flax.nnx."""
    code = re.sub(r"^(\s*)from flax import nnx\b(?!\.)", r"\1import nnxlite as nnx", code, flags=re.M)
    code = re.sub(r"^(\s*)import flax\.nnx as nnx\b", r"\1import nnxlite as nnx", code, flags=re.M)
    code = re.sub(r"^(\s*)from flax\.nnx import\b", r"\1from nnxlite import", code, flags=re.M)
    return code


# The program each subprocess runs: execute the cells in one namespace, report one JSON line.
_RUNNER = r"""
import json, signal, sys, traceback, io, contextlib, os
cells = json.loads(sys.stdin.read())
timeout = int(os.environ.get("CELL_TIMEOUT", "120"))
class CellTimeout(BaseException):
    pass
def on_alarm(signum, frame):
    raise CellTimeout()
signal.signal(signal.SIGALRM, on_alarm)
try:
    import matplotlib
    matplotlib.use("Agg")
except ImportError:
    pass
ns = {"__name__": "__main__"}
results = []
for cell in cells:
    if cell["skip"]:
        results.append(["skipped", ""])
        continue
    sink = io.StringIO()
    signal.alarm(timeout)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            code = compile(cell["code"], f"<cell {cell['index']}>", "exec")
            exec(code, ns)
        status, err = "ok", ""
    except CellTimeout:
        status, err = "timeout", f"timed out after {timeout}s"
    except BaseException as e:
        status = "error"
        lines = traceback.format_exception_only(type(e), e)
        err = lines[-1].strip().splitlines()[0] if lines else type(e).__name__
        if isinstance(e, (SystemExit, KeyboardInterrupt)):
            err = type(e).__name__
    finally:
        signal.alarm(0)
    if "raises-exception" in cell["tags"]:
        status, err = ("ok", "") if status == "error" else ("error", "expected an exception")
    results.append([status, err[:300]])
print("@@RESULT@@" + json.dumps(results))
"""


def run_cells(cells: list[Cell], *, nnxlite: bool, cell_timeout: int, guide_timeout: int) -> list[tuple[str, str]]:
    payload = [
        {"index": c.index, "code": to_nnxlite(c.code) if nnxlite else c.code, "skip": bool(c.skip_reason),
         "tags": list(c.tags)}
        for c in cells
    ]
    env = dict(os.environ, CELL_TIMEOUT=str(cell_timeout), MPLBACKEND="Agg", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        with tempfile.TemporaryDirectory(prefix="flax_docs_") as cwd:  # guides write files (checkpoints)
            proc = subprocess.run(
                [sys.executable, "-c", _RUNNER], input=json.dumps(payload), capture_output=True, text=True,
                timeout=guide_timeout, env=env, cwd=cwd,
            )
    except subprocess.TimeoutExpired:
        return [("timeout", "guide timed out")] * len(cells)
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("@@RESULT@@"):
            return [tuple(r) for r in json.loads(line[len("@@RESULT@@"):])]
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return [("error", f"runner crashed: {tail[0][:200]}")] * len(cells)


def run_guide(path: Path, docs: Path, cell_timeout: int, cache: dict | None = None) -> GuideResult:
    cells = cells_of(path)
    guide_timeout = max(600, cell_timeout * len(cells))
    # flax's results depend only on the cells (and the installed flax): reuse them when asked to.
    digest = hashlib.sha256(json.dumps([c.code for c in cells]).encode()).hexdigest()
    if cache is not None and digest in cache:
        flax = [tuple(r) for r in cache[digest]]
    else:
        flax = run_cells(cells, nnxlite=False, cell_timeout=cell_timeout, guide_timeout=guide_timeout)
        if cache is not None:
            cache[digest] = flax
    ours = run_cells(cells, nnxlite=True, cell_timeout=cell_timeout, guide_timeout=guide_timeout)
    result = GuideResult(
        guide=str(path.relative_to(docs)), cells=len(cells), skipped=sum(bool(c.skip_reason) for c in cells),
        flax=[s for s, _ in flax], nnxlite=[s for s, _ in ours],
    )
    for i, ((fs, ferr), (ns, nerr)) in enumerate(zip(flax, ours)):
        if fs == "ok" and ns != "ok":
            result.errors[i] = nerr
        if fs != "ok" and fs != "skipped":
            result.flax_errors[i] = ferr
    return result


def report(results: list[GuideResult]) -> str:
    lines = [f"{'guide':42s} {'cells':>5s} {'skip':>4s} {'flax':>5s} {'nnxlite':>7s} {'ratio':>6s}"]
    total_flax = total_both = 0
    for r in results:
        f, b = len(r.flax_pass), len(r.both_pass)
        total_flax += f
        total_both += b
        ratio = f"{100 * b / f:5.1f}%" if f else "   -  "
        lines.append(f"{r.guide:42s} {r.cells:5d} {r.skipped:4d} {f:5d} {b:7d} {ratio:>6s}")
    ratio = f"{100 * total_both / total_flax:5.1f}%" if total_flax else "-"
    lines.append(f"{'TOTAL':42s} {'':5s} {'':4s} {total_flax:5d} {total_both:7d} {ratio:>6s}")
    for r in results:
        for i, err in sorted(r.errors.items()):
            lines.append(f"  {r.guide} cell {i}: {err}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=Path("/work/flaxref/docs_nnx"),
                        help="flax's docs_nnx folder (default: %(default)s)")
    parser.add_argument("--guides", nargs="*", default=None,
                        help="only guides whose path contains one of these words (default: all)")
    parser.add_argument("--cell-timeout", type=int, default=180, help="seconds per cell (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    parser.add_argument("--flax-cache", type=Path, default=None,
                        help="JSON file caching the flax runs between invocations (default: run flax every time)")
    args = parser.parse_args(argv)
    cache = json.loads(args.flax_cache.read_text()) if args.flax_cache and args.flax_cache.exists() else None
    if args.flax_cache and cache is None:
        cache = {}

    paths = guides(args.docs)
    if args.guides:
        paths = [p for p in paths if any(word in str(p.relative_to(args.docs)) for word in args.guides)]
    results = []
    for path in paths:
        start = time.perf_counter()
        result = run_guide(path, args.docs, args.cell_timeout, cache)
        results.append(result)
        if args.flax_cache:
            args.flax_cache.write_text(json.dumps(cache))
        print(f"{result.guide}: flax {len(result.flax_pass)}/{result.cells}, nnxlite {len(result.both_pass)} "
              f"({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
