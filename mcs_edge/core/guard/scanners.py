"""Scanner counter: requests that match no tenant are dropped without an answer and only counted.

Theory of operation
-------------------
Internet scanners (SIPVicious ``friendly-scanner``, random OPTIONS/REGISTER sprays, TLS without
or with unknown SNI) address no tenant of ours. Answering them tells them someone is home, and
logging each one floods the log, so the adapters drop them silently and call ``record()``; the
total is exported as one number (a metric without labels: a per-source label would let scanners
create unbounded series). No per-source memory is kept here; persistent offenders that reach a
tenant are handled by ``SourceGuard`` and ``BanList``.
"""

from __future__ import annotations

__all__ = ["ScannerCounter"]


class ScannerCounter:
    """How many requests with no known tenant were dropped."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def record(self, n: int = 1) -> None:
        """Count ``n`` dropped requests."""
        self.count += n

    def __int__(self) -> int:
        return self.count
