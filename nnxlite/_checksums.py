"""Checksums of checkpoint tensors: fast enough to run on every save and load.

A checksum is written as ``"ALGORITHM:HEX"``. nnxlite writes ``xxh3_64``
(the ``xxhash`` package, part of the ``checkpoint`` extra), which hashes at
memory speed. Without ``xxhash`` it falls back to ``crc32`` from the standard
library, which is correct but several times slower on large checkpoints.
Reading verifies either kind; verifying an ``xxh3_64`` checksum needs
``xxhash`` installed (or ``verify=False``).

    >>> import numpy as np
    >>> from nnxlite import _checksums
    >>> c = _checksums.checksum(np.arange(4, dtype=np.uint8))
    >>> c.split(":")[0] in ("xxh3_64", "crc32"), _checksums.matches(c, np.arange(4, dtype=np.uint8))
    (True, True)
"""

from __future__ import annotations

import zlib
from typing import Any

try:
    import xxhash
except ImportError:  # the documented slower path
    xxhash = None

__all__ = ["checksum", "matches", "ALGORITHMS"]

ALGORITHMS = ("xxh3_64", "crc32")


def checksum(data: Any) -> str:
    """The checksum of a bytes-like object (e.g. a contiguous uint8 array)."""
    if xxhash is not None:
        return "xxh3_64:" + xxhash.xxh3_64_hexdigest(data)
    return f"crc32:{zlib.crc32(data):08x}"


def matches(expected: str, data: Any) -> bool:
    """Whether ``data`` has the checksum ``expected`` (an ``"ALGORITHM:HEX"`` string)."""
    algorithm, _, digest = expected.partition(":")
    if algorithm == "xxh3_64":
        if xxhash is None:
            raise ImportError(
                "This checkpoint's checksums are xxh3_64, and verifying them needs the 'xxhash' package: "
                "pip install xxhash (or pip install 'nnxlite[checkpoint]'); or pass verify=False to skip "
                "the check."
            )
        return xxhash.xxh3_64_hexdigest(data) == digest
    if algorithm == "crc32":
        return f"{zlib.crc32(data):08x}" == digest
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def is_well_formed(value: Any) -> bool:
    """Whether ``value`` looks like a checksum this module can verify."""
    if not isinstance(value, str):
        return False
    algorithm, sep, digest = value.partition(":")
    width = {"xxh3_64": 16, "crc32": 8}.get(algorithm)
    return bool(sep) and width == len(digest) and all(c in "0123456789abcdef" for c in digest)
