"""User renaming rules for state dicts: ``Rule(regex, target, transform)``.

A rule rewrites checkpoint names into the names nnxlite derives from the
model (its attribute paths joined with dots, in PyTorch layout), and may
transform the array on the way. Rules apply in order, each to the name the
previous ones produced, so a family's name map is a short list of
independent renames. Exporting runs the list backwards with each rule's
inverse, which is derived from the regex when it is a literal with groups
(``r"^encoder\\.layer\\.(\\d+)\\."``) and can be given with ``inverse=``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Rule"]

# The default target: the matched text itself, so the name is unchanged (a rule that only transforms).
KEEP_NAME = r"\g<0>"

# Regex characters that make a pattern more than "literal text with groups".
_META = set(".^$*+?{}[]|()\\")


class Rule:
    """Rename checkpoint names matching ``pattern`` (a regex) to ``target``, optionally transforming the array.

    ``target`` is a ``re.sub`` replacement (``\\1`` for groups), or None to
    *drop* the matching names (tied weights stored twice, buffers nnxlite
    computes itself). ``transform`` maps the checkpoint's array to PyTorch
    layout of the renamed target (e.g. ``np.transpose`` for Hugging Face's
    GPT-2 ``Conv1D``, which stores ``(in, out)``); ``untransform`` is its
    inverse for :func:`~nnxlite.interop.torch.state_dict` (default: the same
    function, right for transposes).

    >>> import numpy as np
    >>> rule = Rule(r"^encoder\\.layer\\.(\\d+)\\.", r"blocks.\\1.")
    >>> rule.apply("encoder.layer.3.attention.weight")
    'blocks.3.attention.weight'
    >>> rule.invert("blocks.3.attention.weight")      # derived inverse, used when exporting
    'encoder.layer.3.attention.weight'
    >>> Rule(r"\\.attn\\.bias$", None).apply("h.0.attn.bias") is None   # dropped
    True
    >>> Rule(r"\\.c_fc\\.weight$", transform=np.transpose).apply("h.0.mlp.c_fc.weight")  # same name, transposed
    'h.0.mlp.c_fc.weight'

    Args:
      pattern: a regular expression searched for in each name.
      target: the replacement, or None to drop matching names; by default
        the name is kept (a rule that only transforms the array).
      transform: ``array -> array`` applied when loading a matching name.
      untransform: ``array -> array`` applied when exporting (default: ``transform``).
      inverse: ``(pattern, target)`` for exporting, when it cannot be derived.
    """

    __slots__ = ("pattern", "target", "transform", "untransform", "_regex", "_inverse")

    def __init__(
        self,
        pattern: str,
        target: str | None = KEEP_NAME,
        transform: Callable[[Any], Any] | None = None,
        *,
        untransform: Callable[[Any], Any] | None = None,
        inverse: tuple[str, str] | None = None,
    ):
        self.pattern = pattern
        self.target = target
        self.transform = transform
        self.untransform = untransform if untransform is not None else transform
        self._regex = re.compile(pattern)
        if inverse is not None:
            self._inverse: tuple[re.Pattern, str] | str | None = (re.compile(inverse[0]), inverse[1])
        elif target is None:
            self._inverse = None
        elif target == KEEP_NAME:
            self._inverse = (self._regex, KEEP_NAME)
        else:
            self._inverse = _derive_inverse(pattern, target)

    def matches(self, name: str) -> bool:
        return self._regex.search(name) is not None

    def apply(self, name: str) -> str | None:
        """The renamed ``name`` (unchanged if it does not match; None if the rule drops it)."""
        if not self.matches(name):
            return name
        if self.target is None:
            return None
        return self._regex.sub(self.target, name, count=1)

    def inverse_matches(self, name: str) -> bool:
        inverse = self._inverse
        return isinstance(inverse, tuple) and inverse[0].search(name) is not None

    def invert(self, name: str) -> str:
        """The checkpoint name that :meth:`apply` turns into ``name`` (unchanged if none)."""
        if self.target is None:
            return name
        if isinstance(self._inverse, str):
            raise ValueError(
                f"{self!r} cannot be inverted for exporting: {self._inverse} "
                f"Pass inverse=(pattern, target), the rule for the other direction."
            )
        regex, target = self._inverse
        return regex.sub(target, name, count=1)

    def __repr__(self) -> str:
        extra = ", transform" if self.transform is not None else ""
        return f"Rule({self.pattern!r}, {self.target!r}{extra})"


def apply_rules(rules: Sequence[Rule], name: str) -> tuple[str | None, list[Rule]]:
    """``name`` after every rule in order, and the rules that matched (None name: dropped)."""
    matched = []
    for rule in rules:
        if rule.matches(name):
            matched.append(rule)
            name = rule.apply(name)
            if name is None:
                break
    return name, matched


def invert_rules(rules: Sequence[Rule], name: str) -> tuple[str, list[Rule]]:
    """The checkpoint name that the rules turn into the model-side ``name``, and the rules that fire on it.

    Each rule's inverse may or may not have to be undone (a later rule can
    consume what an earlier one produced), so the candidates are searched
    last rule first and each is checked by running the rules forwards.
    """

    def search(i: int, current: str):
        if i == 0:
            forward, matched = apply_rules(rules, current)
            return (current, matched) if forward == name else None
        rule = rules[i - 1]
        if rule.target is not None and rule.inverse_matches(current):
            found = search(i - 1, rule.invert(current))
            if found is not None:
                return found
        return search(i - 1, current)

    found = search(len(rules), name)
    if found is None:
        raise ValueError(
            f"state_dict: no checkpoint name turns into the model's {name!r} under the rules "
            f"{list(rules)}; a rule renames it away and no rule's inverse gives it back. "
            f"Give the rule an inverse=(pattern, target)."
        )
    return found


def check_invertible(rules: Sequence[Rule]) -> None:
    """Raise one error naming every renaming rule whose inverse is unknown (exporting needs them)."""
    bad = [f"  {rule!r}: {rule._inverse}" for rule in rules if isinstance(rule._inverse, str)]
    if bad:
        raise ValueError(
            "state_dict: these rules cannot be run backwards to name the exported arrays:\n" + "\n".join(bad)
            + "\nGive each an inverse=(pattern, target), the rename for the export direction."
        )


# --------------------------------------------------------------------------------------
# Deriving the inverse of "literal text with capture groups"
# --------------------------------------------------------------------------------------
def _derive_inverse(pattern: str, target: str) -> tuple[re.Pattern, str] | str:
    """``(regex, replacement)`` undoing ``re.sub(pattern, target)``, or a string saying why not."""
    parts = _split_pattern(pattern)
    if isinstance(parts, str):
        return parts
    anchored_start = parts and parts[0] == ("anchor", "^")
    anchored_end = parts and parts[-1] == ("anchor", "$")
    groups = [text for kind, text in parts if kind == "group"]
    refs = _split_target(target)
    if isinstance(refs, str):
        return refs
    used = [r for kind, r in refs if kind == "ref"]
    if sorted(used) != list(range(1, len(groups) + 1)):
        return f"its target {target!r} must use each of the pattern's {len(groups)} group(s) exactly once."
    # Inverse regex: the target's literal text, escaped, with each reference replaced by its group.
    new_index = {}
    inverse_regex = "^" if anchored_start else ""
    for kind, value in refs:
        if kind == "text":
            inverse_regex += re.escape(value)
        else:
            new_index[value] = len(new_index) + 1
            inverse_regex += f"({groups[value - 1]})"
    inverse_regex += "$" if anchored_end else ""
    # Inverse replacement: the pattern's literal text, with each group replaced by a reference.
    inverse_target, group_no = "", 0
    for kind, value in parts:
        if kind == "text":
            inverse_target += value.replace("\\", "\\\\")
        elif kind == "group":
            group_no += 1
            inverse_target += f"\\g<{new_index[group_no]}>"
    return re.compile(inverse_regex), inverse_target


def _split_pattern(pattern: str) -> list[tuple[str, str]] | str:
    """Split into ("text", literal), ("group", regex) and ("anchor", "^"/"$") parts."""
    parts: list[tuple[str, str]] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n or pattern[i + 1].isalnum():
                return f"its pattern {pattern!r} uses a character class ({pattern[i:i + 2]}) outside a group."
            parts.append(("text", pattern[i + 1]))
            i += 2
        elif c in "^$":
            if (c == "^" and i != 0) or (c == "$" and i != n - 1):
                return f"its pattern {pattern!r} has an anchor in the middle."
            parts.append(("anchor", c))
            i += 1
        elif c == "(":
            end = _group_end(pattern, i)
            if end is None or pattern.startswith("(?", i):
                return f"its pattern {pattern!r} has a group that is not a plain capture group."
            parts.append(("group", pattern[i + 1:end]))
            i = end + 1
        elif c in _META:
            return f"its pattern {pattern!r} uses {c!r} outside a group, so the text it matched is unknown."
        else:
            parts.append(("text", c))
            i += 1
    # Merge consecutive literal characters.
    merged: list[tuple[str, str]] = []
    for kind, text in parts:
        if kind == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


def _group_end(pattern: str, start: int) -> int | None:
    """Index of the ``)`` closing the group opened at ``start`` (escapes and classes skipped)."""
    depth, i, in_class = 0, start, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _split_target(target: str) -> list[tuple[str, Any]] | str:
    """Split a replacement into ("text", literal) and ("ref", group number) parts."""
    parts: list[tuple[str, Any]] = []
    for piece in re.split(r"(\\\d+|\\g<\d+>)", target):
        if not piece:
            continue
        m = re.fullmatch(r"\\(\d+)|\\g<(\d+)>", piece)
        if m:
            parts.append(("ref", int(m.group(1) or m.group(2))))
        elif "\\" in piece:
            return f"its target {target!r} uses an escape other than a group reference."
        else:
            parts.append(("text", piece))
    return parts
