"""Stream shaping: tell a connection's reader when to pause and until when.

Theory of operation
-------------------
Bytes already read from a TCP/TLS stream cannot be refused, only the *next* read can be delayed.
So a ``Shaper`` charges every chunk the reader got to its bucket unconditionally
(``TokenBucket.charge``; the fill may go negative, a debt) and, while the bucket is in debt
(fill below ``resume_level``, 0 by default), asks the reader to stop reading until the debt is
paid off. TCP flow control then pushes back on the sender. The adapter does::

    resume_at = shaper.data_received(len(data), now)
    if resume_at is not None:
        transport.pauseProducing()          # and arm a timer at shaper.get_timer()
    ...
    # when the timer fires:
    if shaper.handle_timer(now):
        transport.resumeProducing()         # else re-arm at shaper.get_timer()

Chunks may be larger than ``burst`` (a 64 KiB TLS read against a 16 KiB bucket): they are still
charged in full, so the long-run rate holds. Over any interval the reader consumes at most
``burst + rate * (t1 - t0) + largest chunk`` bytes. Data that arrives while paused (the transport
may still deliver what it had buffered) is charged too and pushes ``resume_at`` further out.

``handle_timer`` re-checks the bucket rather than trusting the deadline, so a timer that fires a
little early (clock granularity) simply yields a new deadline.
"""

from __future__ import annotations

from mcs_edge.core.shaping.token_bucket import TokenBucket

__all__ = ["Shaper"]


class Shaper:
    """Pause/resume advice for one stream reader driven by ``bucket``."""

    __slots__ = ("_resume_at", "bucket", "resume_level")

    def __init__(self, bucket: TokenBucket, *, resume_level: float = 0.0) -> None:
        if not (0.0 <= resume_level <= bucket.burst):
            raise ValueError(f"resume_level must be within [0, burst], got {resume_level!r}")
        self.bucket = bucket
        self.resume_level = resume_level
        self._resume_at: float | None = None

    @property
    def paused(self) -> bool:
        """Whether the reader should currently not read."""
        return self._resume_at is not None

    @property
    def resume_at(self) -> float | None:
        """When the reader may read again, or ``None`` while it is not paused."""
        return self._resume_at

    def data_received(self, n: int, now: float) -> float | None:
        """Charge ``n`` bytes read; ``resume_at`` if the reader must pause (or stay paused), else ``None``."""
        fill = self.bucket.charge(n, now)
        if self._resume_at is None and fill >= 0.0:
            return None
        # In debt, or already paused (only handle_timer un-pauses, so the adapter's timer and
        # its pauseProducing/resumeProducing calls stay paired).
        self._resume_at = self.bucket.time_when(self.resume_level, now)
        return self._resume_at

    def get_timer(self) -> float | None:
        """Deadline at which ``handle_timer`` should be called, or ``None``."""
        return self._resume_at

    def handle_timer(self, now: float) -> bool:
        """``True`` if the reader may resume now; otherwise ``get_timer()`` has the new deadline."""
        if self._resume_at is None:
            return False
        if self.bucket.available(now) >= self.resume_level:
            self._resume_at = None
            return True
        self._resume_at = self.bucket.time_when(self.resume_level, now)
        return False
