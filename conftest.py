"""Repository-level pytest configuration.

``nnxlite.bridge`` needs flax (Linen), an optional dependency; without it,
its doctests are not collected (``tests/test_bridge.py`` skips on its own).
"""

import importlib.util


def _has_flax() -> bool:
    try:
        return importlib.util.find_spec("flax") is not None
    except ImportError:
        return False


collect_ignore_glob = [] if _has_flax() else ["nnxlite/bridge/*"]
