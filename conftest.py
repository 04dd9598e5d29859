"""Repository-level pytest configuration.

``nnxlite.bridge`` needs flax (Linen), an optional dependency; without it,
its doctests are not collected (``tests/test_bridge.py`` skips on its own).
"""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("flax") else ["nnxlite/bridge/*"]
