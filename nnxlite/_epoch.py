"""The structural epoch: one counter that every structural edit bumps.

Graph traversals are cached (see ``graph.py``). A cache entry records the
epoch it was built at and is valid only while the epoch is unchanged, so a
structural edit anywhere (a new attribute, an append to a layer list, new
Variable metadata) can never leave a stale structure in use. Editing a
Variable's *value* is not structural and does not bump the epoch, so a
training loop keeps hitting the cache.
"""

from __future__ import annotations

_current = 0


def bump() -> None:
    """Record that some module graph changed shape."""
    global _current
    _current += 1


def current() -> int:
    """The epoch now."""
    return _current
