"""Randomness for the sans-IO core: passed in, never read here.

Core objects that need unpredictable values (tags, ICE credentials, STUN transaction ids, SSRCs,
SDP origin ids, nonce keys) take a :data:`RandomBytes` function; the adapters pass
``secrets.token_bytes`` and tests pass a deterministic one. tests/test_layering.py forbids
``secrets``, ``random``, ``os`` (``os.urandom``), ``time`` and ``datetime`` in ``mcs_edge/core``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

__all__ = ["RandomBytes", "random_int"]

#: ``n -> n`` unpredictable bytes (``secrets.token_bytes`` in the adapters).
RandomBytes: TypeAlias = Callable[[int], bytes]


def random_int(random_bytes: RandomBytes, bits: int) -> int:
    """A random integer of ``bits`` bits (0 <= value < 2**bits) drawn from ``random_bytes``."""
    return int.from_bytes(random_bytes((bits + 7) // 8), "big") >> (-bits % 8)
