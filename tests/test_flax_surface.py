"""flax.nnx's public surface, checked mechanically against nnxlite.

When flax is installed, these tests compare:

* every public name of ``flax.nnx`` (``dir(flax.nnx)``) with ``dir(nnxlite)``;
* the names each flax.nnx submodule (``nnx.statelib``, ``nnx.graph``, ...)
  shares with the top level, with the same submodule of nnxlite;
* every parameter of every layer constructor and ``__call__`` (names, and the
  order of the positional ones);
* the public methods and attributes of ``Variable``, ``State``, ``Rngs``,
  ``RngStream``, ``Optimizer`` and ``Module``.

A gap fails the test unless it is on the allow-list in
``docs/guides/from_flax_nnx.md`` (between the ``surface-allowlist`` markers),
one ``- `key`: reason`` line per gap (``*`` in a key matches anything). Run this file as a script to print the
current gaps in that format::

    python tests/test_flax_surface.py
"""

from __future__ import annotations

import fnmatch
import inspect
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guides" / "from_flax_nnx.md"
if str(ROOT) not in sys.path:  # running as a script
    sys.path.insert(0, str(ROOT))

_ALLOW_BLOCK = re.compile(r"<!--\s*surface-allowlist:start\s*-->(.*?)<!--\s*surface-allowlist:end\s*-->", re.S)
_ALLOW_LINE = re.compile(r"^\s*[-*]\s+`(?P<key>[^`]+)`\s*[:—-]+\s*(?P<reason>\S.*)$")

# Classes whose public methods must exist in nnxlite under the same name.
METHOD_CLASSES = ("Variable", "State", "Rngs", "RngStream", "Optimizer", "Module")


def allow_list() -> dict[str, str]:
    """``{key: reason}`` parsed from the guide; every entry must give a reason."""
    text = GUIDE.read_text(encoding="utf-8")
    block = _ALLOW_BLOCK.search(text)
    if block is None:
        return {}
    entries: dict[str, str] = {}
    for line in block.group(1).splitlines():
        m = _ALLOW_LINE.match(line)
        if m:
            entries[m.group("key").strip()] = m.group("reason").strip()
    return entries


def _public(obj) -> list[str]:
    return sorted(n for n in dir(obj) if not n.startswith("_"))


def name_gaps(flax_nnx, ours) -> list[str]:
    """Top-level names of flax.nnx that nnxlite lacks, and submodule names (``statelib.State``)."""
    gaps = [n for n in _public(flax_nnx) if not hasattr(ours, n)]
    top = {id(getattr(flax_nnx, n)) for n in _public(flax_nnx)}
    for sub in _public(flax_nnx):
        mod = getattr(flax_nnx, sub)
        if not isinstance(mod, types.ModuleType) or not mod.__name__.startswith("flax.nnx"):
            continue
        mine = getattr(ours, sub, None)
        if not isinstance(mine, types.ModuleType):
            continue  # the submodule itself is reported as a top-level gap
        for n in _public(mod):
            value = getattr(mod, n)
            if isinstance(value, types.ModuleType) or id(value) not in top:
                continue  # only the names a submodule shares with the top level
            if not hasattr(mine, n):
                gaps.append(f"{sub}.{n}")
    return gaps


def _params(fn) -> tuple[list[str], set[str], bool]:
    """(positional names, all named parameters, takes **kwargs) of a signature, without self."""
    sig = inspect.signature(fn)
    positional, named, var_kw = [], set(), False
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is p.VAR_POSITIONAL:
            continue
        else:
            named.add(p.name)
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                positional.append(p.name)
    return positional, named, var_kw


def signature_gaps(flax_nnx, ours) -> list[str]:
    """``Layer.__init__(name)`` for each missing parameter, ``Layer.__call__ positional`` for order."""
    gaps = []
    for name in _public(flax_nnx):
        theirs = getattr(flax_nnx, name)
        if not (inspect.isclass(theirs) and issubclass(theirs, flax_nnx.Module)) or not hasattr(ours, name):
            continue
        mine = getattr(ours, name)
        for method in ("__init__", "__call__"):
            if method not in vars(theirs) and not any(method in vars(b) for b in theirs.__mro__[1:-1]):
                continue
            try:
                t_pos, t_named, _ = _params(getattr(theirs, method))
                m_pos, m_named, m_kw = _params(getattr(mine, method))
            except (TypeError, ValueError):
                continue
            if not m_kw:
                gaps += [f"{name}.{method}({p})" for p in sorted(t_named - m_named)]
            if m_pos[: len(t_pos)] != t_pos and set(t_pos) <= m_named | ({"*"} if m_kw else set()):
                gaps.append(f"{name}.{method} positional")
    return gaps


def method_gaps(flax_nnx, ours) -> list[str]:
    """``Class.method`` for each public method/attribute of the core classes that nnxlite lacks."""
    gaps = []
    for cls in METHOD_CLASSES:
        theirs, mine = getattr(flax_nnx, cls, None), getattr(ours, cls, None)
        if theirs is None or mine is None:
            continue
        gaps += [f"{cls}.{n}" for n in _public(theirs) if not hasattr(mine, n)]
    return gaps


def all_gaps() -> list[str]:
    from flax import nnx as flax_nnx

    import nnxlite

    return name_gaps(flax_nnx, nnxlite) + signature_gaps(flax_nnx, nnxlite) + method_gaps(flax_nnx, nnxlite)


@pytest.fixture(scope="module")
def gaps() -> list[str]:
    pytest.importorskip("flax")
    return all_gaps()


def test_allow_list_entries_give_reasons():
    entries = allow_list()
    assert entries, f"no surface allow-list found in {GUIDE}"
    for key, reason in entries.items():
        assert len(reason) > 3, f"allow-list entry {key!r} needs a reason"


@pytest.mark.parametrize("kind", ["names", "signatures", "methods"])
def test_flax_surface_is_covered(gaps, kind):
    from flax import nnx as flax_nnx

    import nnxlite

    found = {"names": name_gaps, "signatures": signature_gaps, "methods": method_gaps}[kind](flax_nnx, nnxlite)
    allowed = allow_list()
    missing = [g for g in found if not any(fnmatch.fnmatchcase(g, key) for key in allowed)]
    assert not missing, (
        f"{len(missing)} flax.nnx {kind} missing in nnxlite and not on the allow-list in "
        f"{GUIDE.relative_to(ROOT)}:\n  " + "\n  ".join(missing)
    )


def test_layers_accept_rngs_and_ctx_as_one_parameter():
    import jax.numpy as jnp

    import nnxlite as nnx

    a = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    b = nnx.Linear(2, 3, ctx=nnx.context(0))
    assert jnp.array_equal(a.kernel.value, b.kernel.value)
    with pytest.raises(TypeError, match="both ctx= and rngs="):
        nnx.Linear(2, 3, rngs=nnx.Rngs(0), ctx=nnx.context(0))
    with pytest.raises(TypeError, match="rngs=nnx.Rngs"):
        nnx.Linear(2, 3)


if __name__ == "__main__":
    for gap in all_gaps():
        print(f"- `{gap}`: not yet")
