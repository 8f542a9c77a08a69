"""How late the reactor is, and who is let in when it is too late (sans-IO).

Theory of operation
-------------------
The adapter (:mod:`mcs_edge.tx.ops.loadprobe`) arms a periodic timer and reports, at each firing,
how late it fired (*loop lag*: the time the reactor spent on other work after the deadline). A
reactor that keeps up fires within a millisecond or two; one that is offered more than it can do
falls behind by the length of its turns, which grow with the work read per turn. Loop lag is
therefore the one measure of our own overload that costs nothing per message (RFC 7339 s.1 calls
the same signal "local overload": the server's own queueing delay).

:class:`LagHistogram` keeps every sample in fixed buckets (exported as a Prometheus histogram and
read by the bench for p50/p99/p99.9).

:class:`AdmissionGate` decides, per *new* INVITE or REGISTER, whether to admit it or answer it
503 with Retry-After before it is parsed (RFC 3261 s.21.5.4; RFC 7339 s.5.10: reject early). The
control law is additive-increase / multiplicative-decrease on the admitted fraction, evaluated once
per ``step`` seconds over the samples taken since the last evaluation:

=======================================================  ==============================================
samples since the last step                              admitted fraction ``ratio``
=======================================================  ==============================================
two or more, the least late and the smoothed lag both    ``ratio * decrease`` (not below ``min_ratio``)
>= ``lag_high``
smoothed lag <= ``lag_low``                              ``ratio + increase`` (up to 1.0)
otherwise                                                unchanged
=======================================================  ==============================================

A saturated CPU counts too (smoothed share of wall time spent on the CPU >= ``busy_high``): the
reactor's turns are bounded by its read sizes, so while requests queue in the kernel's socket
buffers the lag alone can look moderate; a process that is never idle is not keeping up.

Overload is sustained lateness: one long turn (a certificate generated, a reload, a collection)
and the backlog it leaves are absorbed by the smoothing (weight ``smoothing`` per sample) and
refuse nothing, while a reactor that cannot keep up is late at every sample.

The lag is sampled every ``interval``; between samples the gate also knows how long ago the probe
last ran (``last_tick``). That is the age of the reactor's current work: a reactor that reads a
backlog (tens of messages per connection per turn) does not come back to its timers until the turn
ends, so every message read after ``now - last_tick > max_queue_age`` has waited at least that long
(in the kernel's socket buffers, then in the turn). :meth:`AdmissionGate.refusal` refuses a new
INVITE/REGISTER at once in that case (reason ``queue_age``), without waiting for the next step,
provided the turn before was that long too (the probe's last sample, ``last_lag``): as for the lag,
one long turn (a certificate generated, a reload, a burst of media work in the same reactor) and
what it leaves waiting refuse nothing, while under overload every turn is long, so the rule holds
from the second long turn on (the first admits what arrived during the short turn before it):
this bounds the work admitted per turn, hence the turn's length and the queueing delay of what is
admitted (RFC 6357 s.4: refuse by delay, not by count).

With ``max_queue_age`` set (the default), the age rule decides alone and the admitted fraction stays
1. The two cannot usefully be combined: under overload a turn is the work admitted in its first
``max_queue_age`` plus the refusals of everything read after that, so the lag is about one such
turn and the CPU is saturated by definition; lowering the fraction then refuses requests the turn
had room for, while the cost of the refusals, which is what lengthens the turn, stays the same.
The age rule counts that cost where it matters: the refusals made early in a turn use up the same
budget as the work admitted in it. Measured at 3x capacity (docs/performance.md, "Overload
control"): AIMD alone let seconds of backlog build (accepted p99 of seconds, the gate reacting once
per turn, and turns of a second); AIMD with the age rule held p99 near 0.25 s with a third of the
goodput lost to a fraction stuck low; the age rule alone gave the most goodput at a p99 set by
``max_queue_age`` (about three turns of ``max_queue_age`` plus the refusals in them).

========================================  =====================================================
the gate (``AdmissionGate.refusal``)      a new INVITE/REGISTER read at ``now``
========================================  =====================================================
``enabled`` false, or no probe running     admitted
``max_queue_age`` > 0 and                  refused, ``queue_age`` (RFC 6357 s.4: by delay;
``now - last_tick > max_queue_age`` and    RFC 7339 s.5.10: early, before it is parsed)
``last_lag >= max_queue_age``
``max_queue_age`` > 0, otherwise           admitted (the fraction is 1)
``max_queue_age`` = 0                      admitted or refused (``loop_lag``) by the AIMD
                                           fraction of the table above
========================================  =====================================================

An idle reactor is sampled slowly (the probe's idle mode, ``overload.probe_idle_interval``): the
probe then sets ``wake``, and the first :meth:`AdmissionGate.late` check after it (the router makes
one per message from a client, and from a PBX over UDP) counts the reactor as having been at its
timers just now (it was idle until this read), calls ``wake(now)`` so the probe samples at its
normal interval again, and refuses nothing as late. Between an idle reactor and the first message
nothing waited.

The fraction is applied deterministically (a credit counter, no randomness): at ratio 0.25 every
fourth new request is admitted. Requests within a dialog, ACK, CANCEL, BYE and responses are
never refused here: they finish work already accepted (RFC 7339 s.5.10.1, RFC 6357 s.4). With
``increase`` 0.1 and ``step`` 0.05 s the gate reopens fully from ``min_ratio`` within 0.7 s once
the lag is gone (0.1-0.2 s for the smoothed lag to fall, then 0.5 s).

:class:`RateMeter` turns a monotonically growing count (relayed media packets) into a rate, sampled
by the same timer; the media admission limit compares it with ``overload.max_media_packet_rate``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LAG_BUCKETS", "AdmissionGate", "LagHistogram", "OverloadSettings", "RateMeter"]

#: Upper bounds (seconds) of the loop-lag histogram buckets; the last one is +Inf.
LAG_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    float("inf"),
)


class LagHistogram:
    """Cumulative-ready bucket counts of lag samples (seconds)."""

    __slots__ = ("bounds", "count", "counts", "max", "sum")

    def __init__(self, bounds: tuple[float, ...] = LAG_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(upper bound, samples <= bound)]`` as Prometheus wants them."""
        out = []
        total = 0
        for bound, n in zip(self.bounds, self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass(frozen=True, slots=True)
class OverloadSettings:
    """The gate's knobs (``[overload]`` in edge.toml)."""

    enabled: bool = True
    lag_high: float = 0.05
    lag_low: float = 0.02
    step: float = 0.05
    decrease: float = 0.7
    increase: float = 0.1
    min_ratio: float = 0.0
    retry_after: int = 5
    smoothing: float = 0.2  # weight of a new sample in the smoothed lag and busy share
    busy_high: float = 0.95  # share of wall time on the CPU (process time) that counts as saturated
    max_queue_age: float = 0.0  # refuse new requests read this long after the probe last ran; 0 = off (AIMD)


class AdmissionGate:
    """Admits a fraction of new INVITE/REGISTER requests according to the measured lag."""

    __slots__ = (
        "_credit",
        "_last_step",
        "_window_min",
        "_window_n",
        "admitted",
        "busy",
        "last_lag",
        "last_tick",
        "ratio",
        "settings",
        "shed",
        "smoothed",
        "wake",
    )

    def __init__(self, settings: OverloadSettings | None = None) -> None:
        self.settings = settings or OverloadSettings()
        self.ratio = 1.0
        self.smoothed = 0.0
        self.busy = 0.0
        self._credit = 0.0
        self._last_step: float | None = None
        self._window_min = float("inf")
        self._window_n = 0
        self.admitted = 0
        self.shed = 0
        #: When the probe last ran (``now`` of the last sample); None while no probe runs.
        self.last_tick: float | None = None
        #: The last sample's lag: how long the turn before the probe's last run took.
        self.last_lag = 0.0
        #: Set while the probe samples an idle reactor slowly: called (once) by the next :meth:`late`.
        self.wake: Callable[[float], None] | None = None

    @property
    def shedding(self) -> bool:
        return self.ratio < 1.0

    def observe_lag(self, lag: float, now: float, busy: float | None = None) -> None:
        """A lag sample at ``now`` (and the share of time on the CPU since the last one); adjusts the
        admitted fraction at most once per ``step``."""
        s = self.settings
        self.last_tick = now
        self.last_lag = lag
        self.smoothed += s.smoothing * (lag - self.smoothed)
        if busy is not None:
            self.busy += s.smoothing * (busy - self.busy)
        if lag < self._window_min:
            self._window_min = lag
        self._window_n += 1
        if self._last_step is None:
            self._last_step = now
        if now - self._last_step < s.step:
            return
        if not s.enabled or s.max_queue_age > 0.0:  # off, or the age rule decides alone
            self.ratio = 1.0
        elif self._window_n >= 2 and (
            (self._window_min >= s.lag_high and self.smoothed >= s.lag_high) or self.busy >= s.busy_high
        ):
            self.ratio = max(s.min_ratio, self.ratio * s.decrease)
        elif self._window_n < 2 and self._window_min >= s.lag_high:
            return  # one late sample so far: wait for the next before deciding
        elif self.smoothed <= s.lag_low and self.busy < s.busy_high - 0.1 and self.ratio < 1.0:
            self.ratio = min(1.0, self.ratio + s.increase)
        self._last_step = now
        self._window_min = float("inf")
        self._window_n = 0

    def late(self, now: float) -> bool:
        """Whether work read at ``now`` is older than ``max_queue_age`` (the probe has not run since)
        while the turn before this one was that long too (the probe's last sample). The first call
        after the probe went idle wakes it and is never late (module docstring)."""
        wake = self.wake
        if wake is not None:
            self.wake = None
            self.last_tick = now
            wake(now)
            return False
        last = self.last_tick
        age = self.settings.max_queue_age
        return (
            last is not None
            and age > 0.0
            and now - last > age
            and self.last_lag >= age  # the turn before was long too: sustained, not one long turn
            and self.settings.enabled
        )

    def refusal(self, now: float) -> str | None:
        """One new transaction read at ``now`` asks to come in: None to serve it, else the reason to
        refuse it (``queue_age`` or ``loop_lag``)."""
        if self.late(now):
            self.shed += 1
            return "queue_age"
        return None if self.admit() else "loop_lag"

    def admit(self) -> bool:
        """One new transaction asks to come in: True to serve it, False to refuse it (503)."""
        ratio = self.ratio
        if ratio >= 1.0:
            self.admitted += 1
            return True
        self._credit += ratio
        if self._credit >= 1.0:
            self._credit -= 1.0
            self.admitted += 1
            return True
        self.shed += 1
        return False


class RateMeter:
    """Events per second from a growing total, sampled at least ``window`` seconds apart."""

    __slots__ = ("_last", "_stamp", "rate", "window")

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self.rate = 0.0
        self._last: int | None = None
        self._stamp = 0.0

    def sample(self, total: int, now: float) -> float:
        if self._last is None:
            self._last, self._stamp = total, now
            return self.rate
        elapsed = now - self._stamp
        if elapsed >= self.window:
            self.rate = (total - self._last) / elapsed
            self._last, self._stamp = total, now
        return self.rate
