"""A token bucket with lazy refill: the one rate limiter every shaping and guard rule is built on.

Theory of operation
-------------------
A bucket holds up to ``burst`` tokens (bytes for media and streams, events for the guard) and gains
``rate`` tokens per second. Nothing ticks: the bucket remembers its fill ``tokens`` at the time
``last`` and, whenever it is asked a question at time ``now``, first credits
``(now - last) * rate`` tokens, capped at ``burst``. No timer exists per bucket, so a million idle
buckets cost nothing but their memory.

``try_consume(n, now)`` takes ``n`` tokens if the bucket holds them and answers
``(allowed, retry_at)``. ``retry_at`` is the earliest time at which ``n`` tokens will be there if
nobody else takes any: ``now`` when allowed, otherwise strictly later than ``now``, never in the
past. Since the fill never exceeds ``burst``, a request for ``n > burst`` can never be admitted;
it is refused with ``retry_at = math.inf``. A bucket with ``rate == 0`` never refills, so a
refusal from it also says ``math.inf``.

Guarantees, each pinned by a hypothesis property in ``tests/core/shaping``:

* over any interval ``[t0, t1]`` ``try_consume`` admits at most ``burst + rate * (t1 - t0)``;
* idling does not bank tokens beyond ``burst`` (``test_burst_cannot_be_banked_twice``);
* if ``n`` is refused at ``t``, every ``m > n`` is refused at ``t``;
* if ``n`` would be admitted at ``t`` it would be admitted at any ``t' > t`` (monotone in time);
* at ``retry_at`` the refused request is admitted (given no other consumption in between).

Time is a monotonic ``now`` supplied by the caller. A ``now`` older than the bucket's ``last``
(two callers sharing a bucket with slightly different clocks) credits nothing and does not move
``last`` back, so tokens are never credited twice for the same interval.

Two mutating operations beside ``try_consume`` serve the helpers in this package: ``charge``
takes tokens unconditionally (the fill may go negative: a *debt* that a stream reader works off by
pausing, see ``shaper.py``), and ``refill`` brings the bucket up to ``now`` and returns the fill
(used to test several buckets before charging any, see ``try_consume_all`` and ``policer.py``).
Refilling early is invisible: the bucket answers the same questions afterwards.

Performance: ``try_consume`` runs per packet. It does one subtraction and one comparison when
several packets share the same ``now`` (the adapter passes one loop time per batch) and adds one
multiply-add and a cap otherwise; slots, no allocation beyond the result tuple, no call on the
admitted path. ``consume`` is the same with a bare ``bool`` result for callers that do not need
``retry_at``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["ADMITTED", "REFUSED_PARENT", "REFUSED_SELF", "TokenBucket", "try_consume_all"]

#: Results of ``TokenBucket.consume_within``.
ADMITTED = 0
REFUSED_SELF = 1
REFUSED_PARENT = 2

_INF = math.inf
_nextafter = math.nextafter


def _check(rate: float, burst: float) -> None:
    if not (0.0 <= rate < _INF):
        raise ValueError(f"rate must be finite and >= 0, got {rate!r}")
    if not (0.0 <= burst < _INF):
        raise ValueError(f"burst must be finite and >= 0, got {burst!r}")


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked; starts full unless ``tokens`` is given."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, now: float, *, tokens: float | None = None) -> None:
        _check(rate, burst)
        self._rate = float(rate)
        self._burst = float(burst)
        self._tokens = self._burst if tokens is None else min(float(tokens), self._burst)
        self._last = float(now)

    def __repr__(self) -> str:
        return (
            f"TokenBucket(rate={self._rate!r}, burst={self._burst!r},"
            f" tokens={self._tokens!r}, last={self._last!r})"
        )

    @property
    def rate(self) -> float:
        """Tokens credited per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """Largest fill; also the largest request that can ever be admitted."""
        return self._burst

    # -- the hot path -------------------------------------------------------------------------

    def try_consume(self, n: float, now: float) -> tuple[bool, float]:
        """Take ``n`` tokens if present: ``(True, now)``, else ``(False, retry_at)`` with nothing taken."""
        tokens = self._tokens
        elapsed = now - self._last
        if elapsed > 0.0:
            tokens += elapsed * self._rate
            if tokens > self._burst:
                tokens = self._burst
            self._last = now
            if n <= tokens:
                self._tokens = tokens - n
                return True, now
            self._tokens = tokens
            return False, self._time_when(n, tokens, now)
        if n <= tokens:
            self._tokens = tokens - n
            return True, now
        return False, self._time_when(n, tokens, self._last)

    def consume(self, n: float, now: float) -> bool:
        """Take ``n`` tokens if present; the ``bool`` half of ``try_consume`` without building a tuple."""
        tokens = self._tokens
        elapsed = now - self._last
        if elapsed > 0.0:
            tokens += elapsed * self._rate
            if tokens > self._burst:
                tokens = self._burst
            self._last = now
            if n <= tokens:
                self._tokens = tokens - n
                return True
            self._tokens = tokens
            return False
        if n <= tokens:
            self._tokens = tokens - n
            return True
        return False

    def consume_within(self, parent: TokenBucket, n: float, now: float) -> int:
        """Take ``n`` from this bucket and ``parent`` atomically, or from neither.

        Returns ``ADMITTED`` (0), ``REFUSED_SELF`` (1: this bucket lacks ``n``; ``parent`` is not
        touched) or ``REFUSED_PARENT`` (2: ``parent`` lacks ``n``; this bucket is not charged).
        The per-packet form of ``try_consume_all`` for a two-level hierarchy (leg in tenant).
        """
        tokens = self.refill(now)
        if n > tokens:
            return REFUSED_SELF
        ptokens = parent.refill(now)
        if n > ptokens:
            return REFUSED_PARENT
        parent._tokens = ptokens - n
        self._tokens = tokens - n
        return ADMITTED

    # -- questions that change nothing ----------------------------------------------------------

    def _fill_at(self, now: float) -> float:
        elapsed = now - self._last
        if elapsed > 0.0:
            tokens = self._tokens + elapsed * self._rate
            return self._burst if tokens > self._burst else tokens
        return self._tokens

    def available(self, now: float) -> float:
        """The fill at ``now`` (negative while a ``charge`` debt is outstanding); changes nothing."""
        return self._fill_at(now)

    def peek(self, n: float, now: float) -> tuple[bool, float]:
        """What ``try_consume(n, now)`` would answer, without taking anything."""
        if n <= self._fill_at(now):
            return True, now
        return False, self._time_when(n, self._tokens, self._last)

    def time_when(self, level: float, now: float) -> float:
        """Earliest time ``>= now`` at which the fill reaches ``level`` (``inf`` if it never will)."""
        if level <= self._fill_at(now):
            return now
        return self._time_when(level, self._tokens, self._last)

    def _time_when(self, level: float, tokens: float, last: float) -> float:
        # ``tokens`` is the fill at ``last``; the fill at the caller's ``now`` is below ``level``.
        # Computed from the state the next refill will start from, with the same formula, so
        # the answer is exact for that state. The cap does not matter: level <= burst.
        rate = self._rate
        if level > self._burst or rate <= 0.0:
            return _INF
        t = last + (level - tokens) / rate
        # Division and addition round; step forward until the refill formula used by
        # try_consume really reaches ``level`` at ``t``, so retrying at ``t`` succeeds.
        while tokens + (t - last) * rate < level:
            t = _nextafter(t, _INF)
        return t

    def state(self) -> tuple[float, float]:
        """``(tokens, last)``: the fill and the time it was computed at (see :meth:`restore`)."""
        return self._tokens, self._last

    # -- other mutations -----------------------------------------------------------------------

    def restore(self, tokens: float, last: float) -> None:
        """Adopt ``(tokens, last)`` from :meth:`state` of a copy that ran elsewhere meanwhile (the
        relay's in-process forwarding runs this bucket's arithmetic in C while it holds a leg)."""
        self._tokens = min(float(tokens), self._burst)
        self._last = float(last)

    def refill(self, now: float) -> float:
        """Credit the tokens earned up to ``now`` and return the fill (observably a no-op)."""
        elapsed = now - self._last
        if elapsed > 0.0:
            tokens = self._tokens + elapsed * self._rate
            self._tokens = self._burst if tokens > self._burst else tokens
            self._last = now
        return self._tokens

    def charge(self, n: float, now: float) -> float:
        """Take ``n`` tokens unconditionally (the fill may go negative); return the new fill."""
        tokens = self._tokens  # refill(now) inline: every read and every write of a stream comes here
        elapsed = now - self._last
        if elapsed > 0.0:
            tokens += elapsed * self._rate
            if tokens > self._burst:
                tokens = self._burst
            self._last = now
        tokens -= n
        self._tokens = tokens
        return tokens

    def charge_if_not_in_debt(self, n: float, now: float) -> bool:
        """Take ``n`` tokens (the fill may go negative) if the fill at ``now`` is not negative; else
        take nothing. ``available(now) >= 0`` then ``charge(n, now)`` in one call."""
        tokens = self._tokens
        elapsed = now - self._last
        if elapsed > 0.0:
            tokens += elapsed * self._rate
            if tokens > self._burst:
                tokens = self._burst
            self._last = now
            self._tokens = tokens
        if tokens < 0.0:
            return False
        self._tokens = tokens - n
        return True

    def reconfigure(self, rate: float, burst: float, now: float) -> None:
        """Switch to a new ``rate``/``burst`` at ``now``, keeping the fill (capped at the new burst).

        Tokens earned before ``now`` are credited at the old rate, so a reload neither gives
        a free burst nor takes back what was already earned (beyond the new cap).
        """
        _check(rate, burst)
        self.refill(now)
        self._rate = float(rate)
        self._burst = float(burst)
        if self._tokens > self._burst:
            self._tokens = self._burst


def try_consume_all(buckets: Iterable[TokenBucket], n: float, now: float) -> tuple[bool, float]:
    """Take ``n`` from every bucket, or from none: ``(True, now)`` or ``(False, retry_at)``.

    This is the hierarchy rule (leg bucket inside tenant bucket, per-IP inside per-tenant): a unit
    passes only if every level admits it, and a level that refuses does not leave the others
    charged. ``retry_at`` is the latest of the refusing buckets' ``retry_at``: each bucket's
    admission is monotone in time, so that is the first moment all of them admit ``n``.
    """
    chain = tuple(buckets)
    retry_at = now
    for bucket in chain:
        tokens = bucket.refill(now)
        if n > tokens:
            t = bucket.time_when(n, now)  # refilled at now: the same deadline as from its state
            if t > retry_at:
                retry_at = t
    if retry_at > now:
        return False, retry_at
    for bucket in chain:
        bucket.charge(n, now)  # already refilled at now: only takes n
    return True, now
