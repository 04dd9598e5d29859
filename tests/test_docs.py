"""Every ```python block in the docs and the README is executed.

One test per page. A page's blocks run in order in one fresh module
namespace, so a later block can use names an earlier block defined. A
failure names the page and the line where the failing block starts, and the
traceback points at lines of the Markdown file itself.

Conventions (also described in ``docs/contributing.md``):

* ```` ```python notest ```` -- shown but never run. Only for code that
  cannot run on one CPU (multi-host, GPU-only); say why in the text.
* ```` ```python requires=torch ```` -- run only when ``torch`` imports
  (comma-separate several modules); otherwise that block is skipped and the
  rest of the page still runs. Later blocks must not depend on it.
* ``<!-- requires: flax, equinox -->`` anywhere in a page -- skip the whole
  page unless every listed module imports.
* Blocks in other languages (```` ```bash ````, ```` ```text ````) are not run.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_REQUIRES_PAGE = re.compile(r"<!--\s*requires:\s*(?P<mods>[^>]*?)\s*-->")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    code: str
    skip: bool  # python notest
    requires: tuple[str, ...]


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/, in a stable order."""
    found = sorted(DOCS.rglob("*.md")) if DOCS.is_dir() else []
    return [ROOT / "README.md", *found]


def pages_with_code() -> list[Path]:
    """The pages that have at least one ```python block (API pages have none)."""
    return [p for p in pages() if parse_blocks(p.read_text(encoding="utf-8"))]


def parse_blocks(text: str) -> list[Block]:
    """The ```python fenced blocks of a Markdown text (fences may be indented, e.g. in lists)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group("indent"), m.group("fence"), m.group("info").strip()
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            line = lines[j]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            j += 1
        words = info.split()
        if words and words[0].lstrip(".").lower() in ("python", "py", "python3"):
            options = words[1:]
            requires: tuple[str, ...] = ()
            for opt in options:
                if opt.startswith("requires="):
                    requires += tuple(
                        r.strip() for r in opt.split("=", 1)[1].strip("\"'").split(",") if r.strip()
                    )
            blocks.append(Block(i + 1, "\n".join(body) + "\n", "notest" in options, requires))
        i = j + 1
    return blocks


def page_requirements(text: str) -> list[str]:
    mods: list[str] = []
    for m in _REQUIRES_PAGE.finditer(text):
        mods += [x.strip() for x in m.group("mods").split(",") if x.strip()]
    return mods


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


_FAST_COMPILE = "jax_disable_most_optimizations"


@pytest.fixture
def fast_compiles():
    """Doc snippets are tiny and run once: compile them quickly rather than well.

    Most of a page's run time is XLA compiling small programs (every eager
    operation is compiled on first use). Turning most XLA optimizations off
    cuts that by about a third without changing what the code computes.
    The setting is restored after each page.
    """
    try:
        old = jax.config.read(_FAST_COMPILE)
        jax.config.update(_FAST_COMPILE, True)
    except (AttributeError, KeyError):  # a JAX without the flag: run as is
        yield
        return
    try:
        yield
    finally:
        jax.config.update(_FAST_COMPILE, old)


@pytest.mark.parametrize("page", pages_with_code(), ids=_page_id)
def test_page_code_runs(page: Path, monkeypatch, tmp_path, fast_compiles):
    text = page.read_text(encoding="utf-8")
    for mod in page_requirements(text):
        pytest.importorskip(mod, reason=f"{_page_id(page)} declares <!-- requires: {mod} -->")
    blocks = parse_blocks(text)
    # Pages may write files (checkpoints): keep them out of the repository.
    monkeypatch.chdir(tmp_path)
    # A real, importable module, so that classes defined in a page can be
    # pickled and dataclasses can find their module.
    name = "nnxlite_docs_" + re.sub(r"\W", "_", _page_id(page))
    module = types.ModuleType(name)
    module.__file__ = str(page)
    monkeypatch.setitem(sys.modules, name, module)
    for block in blocks:
        if block.skip or not all(_available(m) for m in block.requires):
            continue
        # Pad with newlines so traceback line numbers are lines of the .md file.
        source = "\n" * (block.line) + block.code
        error = None
        try:
            exec(compile(source, str(page), "exec"), module.__dict__)
        except Exception:
            error = traceback.format_exc(limit=-8)
        if error is not None:
            pytest.fail(f"{_page_id(page)}: the code block starting at line {block.line} failed:\n{error}", pytrace=False)


# --------------------------------------------------------------------------------------
# The harness itself, and the site's table of contents
# --------------------------------------------------------------------------------------
def test_parse_blocks_handles_options_indentation_and_other_languages():
    text = "\n".join(
        [
            "# Title",
            "```python",
            "a = 1",
            "```",
            "1. A list item:",
            "",
            "    ```python",
            "    b = a + 1",
            "    ```",
            "```bash",
            "echo not python",
            "```",
            "````python notest",
            "```",
            "inner fence",
            "````",
            "```python requires=torch,flax",
            "import torch",
            "```",
        ]
    )
    blocks = parse_blocks(text)
    assert [b.line for b in blocks] == [2, 7, 13, 17]
    assert blocks[0].code == "a = 1\n"
    assert blocks[1].code == "b = a + 1\n"
    assert blocks[2].skip and blocks[2].code == "```\ninner fence\n"
    assert blocks[3].requires == ("torch", "flax") and not blocks[3].skip


def test_page_requirements_marker():
    assert page_requirements("x\n<!-- requires: flax, equinox -->\n") == ["flax", "equinox"]
    assert page_requirements("no marker") == []


def test_notest_blocks_are_rare():
    """``notest`` is for multi-host/GPU-only snippets; most code must run."""
    total = skipped = 0
    for page in pages():
        for block in parse_blocks(page.read_text(encoding="utf-8")):
            total += 1
            skipped += block.skip
    assert total > 0
    assert skipped <= max(3, total // 10), f"{skipped} of {total} python blocks are marked notest"


def test_every_page_is_in_the_site_navigation():
    """mkdocs.yml's nav lists every page under docs/, and every page it lists exists."""
    config = ROOT / "mkdocs.yml"
    if not config.exists():
        pytest.skip("no mkdocs.yml")
    listed = set(re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w./-]+\.md)\s*$", config.read_text(), re.M))
    present = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert not listed - present, f"mkdocs.yml lists pages that do not exist: {sorted(listed - present)}"
    assert not present - listed, f"pages missing from the nav in mkdocs.yml: {sorted(present - listed)}"


def test_docstring_extension_renders_doctests_as_markdown():
    """docs/_ext/docstring_markdown.py, the griffe extension the API pages use."""
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("_docstring_markdown", DOCS / "_ext" / "docstring_markdown.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    text = "\n".join(
        [
            "Summary with :class:`~nnxlite.State` and `docs <https://example.org>`_.",
            "",
            "Example::",
            "",
            "    >>> 1 + 1",
            "    2",
            "",
            ">>> x = 3",
            "",
            "Args:",
            "  a, b: two names.",
            "  c,",
            "  d: split over lines.",
            "  Prose at entry level ends the section.",
        ]
    )
    out = ext.to_markdown(text).splitlines()
    assert out[0] == "Summary with `State` and [docs](https://example.org)."
    assert out[2] == "Example:" and out[4:8] == ["```pycon", ">>> 1 + 1", "2", "```"]
    assert out[out.index(">>> x = 3") - 1] == "```pycon"
    assert "  a: two names." in out and "  b: two names." in out
    assert "  c: split over lines." in out and "  d: split over lines." in out
    assert "Prose at entry level ends the section." in out


def test_docstring_headings_keep_their_code_text_in_the_table_of_contents():
    """Code spans in docstring headings become plain text (the site's ToC showed 'Axis specs for modules (, )')."""
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("_docstring_markdown", DOCS / "_ext" / "docstring_markdown.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    text = "Intro with ``code``.\n\nAxis specs (``vmap``, ``scan``)\n-------------------------------\n\n### Also `here`\n\n- a list item\n"
    out = ext.to_markdown(text).splitlines()
    assert out[0] == "Intro with ``code``."  # prose keeps its code spans
    assert out[2] == "Axis specs (vmap, scan)" and out[5] == "### Also here"
    assert "- a list item" in out
