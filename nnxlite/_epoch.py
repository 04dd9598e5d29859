"""The structural epoch: one counter that every structural edit bumps.

Graph traversals are cached (see ``graph.py``). A cache entry records the
epoch it was built at and is valid only while the epoch is unchanged, so a
structural edit anywhere (a new attribute, an append to a layer list, new
Variable metadata) can never leave a stale structure in use. Editing a
Variable's *value* is not structural and does not bump the epoch, so a
training loop keeps hitting the cache.


Threads: readers take the epoch *before* they traverse (see ``graph._traverse``),
and edits bump it *after* they change the graph, so a traversal that raced
with an edit is stamped with an epoch that is already stale. The increment
holds a lock: an unlocked ``+= 1`` can lose an update and even move the
counter backwards, which could make a stale entry look current again.
"""

from __future__ import annotations

import threading

_current = 0
_lock = threading.Lock()


def bump() -> None:
    """Record that some module graph changed shape."""
    global _current
    with _lock:
        _current += 1


def current() -> int:
    """The epoch now."""
    return _current
