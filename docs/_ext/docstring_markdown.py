"""A griffe extension: render nnxlite's doctest-style docstrings as Markdown.

nnxlite's docstrings are written to be run by ``pytest --doctest-modules``:
``>>>`` examples, reST literal blocks introduced by ``::`` and reST roles such
as ``:class:`State```. Markdown would show ``>>>`` lines as nested block
quotes, so before mkdocstrings parses a docstring this extension

* wraps every ``>>>`` example (with its output lines) in a ```` ```pycon ````
  fence,
* turns ``Example::`` plus an indented literal block into ``Example:`` plus a
  fenced block,
* turns ``:class:`~nnxlite.State``` into ```State``` and reST links
  (```text <https://...>`_``) into Markdown links,
* ends an ``Args:`` section at a line of prose written at the level of its
  entries, instead of reading it as a malformed entry,
* expands a grouped argument entry (``in_features, out_features: widths.``
  in an ``Args:`` section) into one entry per name,
* writes a heading's code spans as plain text: mkdocstrings renders a
  docstring with its own Markdown instance, and the page's table of
  contents would otherwise resolve the code spans against the wrong
  placeholders (``Axis specs for modules (, )``, or another object's text).

It only changes how docstrings render on the site, never the source.
Loaded from ``mkdocs.yml`` (``extensions: [docs/_ext/docstring_markdown.py]``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SECTION = re.compile(r"^(?P<pad>\s*)(Args|Arguments|Parameters|Keyword Args|Other Parameters):\s*$")
_GROUPED = re.compile(r"^(?P<pad>\s+)(?P<names>[\w*]+(?:\s*,\s*[\w*]+)+):(?P<desc>.*)$")
_ITEM = re.compile(r"^\s+[\w*]+(?:\s*,\s*[\w*]+)*\s*(?:\([^)]*\))?\s*:")
_NAMES_CONTINUED = re.compile(r"^\s+[\w*]+(?:\s*,\s*[\w*]+)*\s*,\s*$")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<(https?://[^>\s]+)>`__?", re.S)
_SETEXT = re.compile(r"^\s*(-{3,}|={3,})\s*$")
_ATX = re.compile(r"^\s*#{1,6}\s")
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|obj|data|exc|const):`~?([^`]+)`")


def _role(m: re.Match) -> str:
    target = m.group(1)
    # `~a.b.C` shows `C`; `a.b.C` shows the full name (the reST convention).
    shown = target.rsplit(".", 1)[-1] if m.group(0).count("~") else target
    return f"`{shown}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _expand_grouped_args(lines: list[str]) -> list[str]:
    out: list[str] = []
    section_pad = None
    item_pad = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _SECTION.match(line)
        if m:
            section_pad, item_pad = len(m.group("pad")), None
        elif line.strip() and _indent(line) <= (section_pad if section_pad is not None else -1):
            section_pad = None
        elif section_pad is not None and line.strip():
            if item_pad is None:
                item_pad = _indent(line)
            if (
                _indent(line) == item_pad
                and not _ITEM.match(line)
                and not _NAMES_CONTINUED.match(line)
                and not (out and _NAMES_CONTINUED.match(out[-1]))
            ):
                # Prose at item level ("The other arguments are ..."): end the section there.
                out += ["", " " * section_pad + line.strip()]
                section_pad = None
                i += 1
                continue
        if section_pad is not None and _NAMES_CONTINUED.match(line):
            # `a, b,` / `c: description`: a group of names spread over several lines.
            j = i
            while j + 1 < len(lines) and _NAMES_CONTINUED.match(lines[j]) and _indent(lines[j + 1]) == _indent(line):
                j += 1
            if j > i:
                line = line.rstrip() + " " + " ".join(x.strip() for x in lines[i + 1 : j + 1])
                i = j
        g = _GROUPED.match(line) if section_pad is not None else None
        if g and _indent(line) > section_pad:
            more = []
            while i + 1 < len(lines) and lines[i + 1].strip() and _indent(lines[i + 1]) > _indent(line):
                i += 1
                more.append(lines[i])
            for name in g.group("names").split(","):
                out += [f"{g.group('pad')}{name.strip()}:{g.group('desc')}", *more]
        else:
            out.append(line)
        i += 1
    return out


def to_markdown(text: str) -> str:
    """Rewrite one docstring (see the module docstring)."""
    text = _RST_LINK.sub(lambda m: f"[{' '.join(m.group(1).split())}]({m.group(2)})", text)
    lines = _expand_grouped_args(text.splitlines())
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        pad = line[: _indent(line)]
        if stripped.startswith(("```", "~~~")):  # already a fence: copy it through
            out.append(line)
            i += 1
            while i < len(lines):
                out.append(lines[i])
                i += 1
                if lines[i - 1].strip().startswith(stripped[:3]):
                    break
            continue
        if stripped.endswith("::") and not stripped.startswith(">>>"):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > _indent(line):
                block_indent = _indent(lines[j])
                block: list[str] = []
                while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) >= block_indent):
                    block.append(lines[j][block_indent:])
                    j += 1
                while block and not block[-1].strip():
                    block.pop()
                intro = line.rstrip()[:-1]
                if intro.strip() == ":":
                    intro = ""
                lang = "pycon" if block[0].lstrip().startswith(">>>") else "python"
                out += [intro, "", f"{pad}```{lang}", *(pad + b for b in block), f"{pad}```", ""]
                i = j
                continue
        if stripped.startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= len(pad):
                block.append(lines[i][len(pad):])
                i += 1
            out += [f"{pad}```pycon", *(pad + b for b in block), f"{pad}```"]
            continue
        line = _ROLE.sub(_role, line)
        is_heading = _ATX.match(line) or (
            i + 1 < len(lines) and stripped and _SETEXT.match(lines[i + 1]) and not stripped.startswith(("-", "*"))
        )
        if is_heading and "`" in line:
            line = line.replace("`", "")
        out.append(line)
        i += 1
    return "\n".join(out)


class DocstringMarkdown(griffe.Extension):
    """Rewrite docstrings as they are loaded."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        docstring = getattr(obj, "docstring", None)
        if docstring is not None and docstring.value:
            docstring.value = to_markdown(docstring.value)
