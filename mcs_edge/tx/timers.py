"""One owner for every timer of the service, and the one clock of the adapters.

Core objects expose ``get_timer()`` (an absolute monotonic deadline or None) and
``handle_timer(now)``. :class:`CoreTimer` keeps exactly one ``DelayedCall`` per core object and
re-arms it after each input; :class:`Timers` tracks every delayed and looping call it made so that
shutdown cancels them all, and logs (never loses) an exception raised by a timer callback.

``now`` is monotonic. The reactor's own clock (``reactor.seconds()``) is wall-clock on real
reactors, so deadlines are turned into delays against our monotonic ``now`` and scheduled with
``callLater``. Tests pass a ``Clock`` and ``now=clock.seconds`` so both agree in virtual time.

No other module of tx/ reads a clock (tests/tx/test_one_clock.py): they are handed a ``now``
(usually ``Timers.now``) or use :data:`monotonic`, :data:`wall_clock` / :func:`wall_datetime`
(only where a figure is a wall-clock timestamp by nature), :data:`cpu_time` or :data:`perf_counter`.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = [
    "CoreTimer",
    "SlicedSweep",
    "TimedCore",
    "Timers",
    "cpu_time",
    "monotonic",
    "perf_counter",
    "wall_clock",
    "wall_datetime",
]


# The clocks are the time module's own functions (aliases, not wrappers: per-packet code calls
# ``now()`` and pays no extra Python frame).

#: The adapters' clock (seconds, monotonic): the default ``now`` of :class:`Timers`, and the clock
#: of a process that has no ``Timers`` of its own. Nothing else in tx/ reads a clock.
monotonic: Callable[[], float] = time.monotonic

#: Unix time (seconds) for the few figures that are wall-clock timestamps by nature: certificate
#: expiry, report times shown to operators, provider tokens, WireGuard handshakes. Durations and
#: deadlines use the monotonic ``now``.
wall_clock: Callable[[], float] = time.time

#: The highest-resolution interval clock (GC pauses are sub-millisecond).
perf_counter: Callable[[], float] = time.perf_counter

#: CPU seconds of this process (work measured per task: replication, load probe).
cpu_time: Callable[[], float] = time.process_time


def wall_datetime() -> datetime.datetime:
    """:data:`wall_clock` as an aware UTC datetime (ACME orders and certificate dates)."""
    return datetime.datetime.now(datetime.UTC)


T = TypeVar("T")


class TimedCore(Protocol):
    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> Any: ...


class Timers:
    """Every timer of one service: created here, cancelled here."""

    log = Logger()

    def __init__(self, reactor: IReactorTime, now: Callable[[], float] | None = None) -> None:
        self.reactor = reactor
        self.now: Callable[[], float] = now or monotonic
        self._calls: set[DelayedCall] = set()
        self._loops: set[LoopingCall] = set()

    def __len__(self) -> int:
        return len(self._calls) + len(self._loops)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> DelayedCall:
        # ``run`` needs its DelayedCall and the DelayedCall holds ``run``: a reference cycle, broken
        # when the call fires (``holder.pop()``) or is cancelled (Twisted drops ``func``), so a
        # timer is freed by reference counting, never left to the cycle collector (issue 21)
        holder: list[DelayedCall] = []

        def run() -> None:
            self._calls.discard(holder.pop())
            try:
                fn(*args)
            except Exception:
                self.log.failure("TMR500 timer callback {fn!r} failed", fn=fn)

        call = self.reactor.callLater(max(0.0, delay), run)
        holder.append(call)  # type: ignore[arg-type]
        self._calls.add(call)  # type: ignore[arg-type]
        return call  # type: ignore[return-value]

    def cancel(self, call: DelayedCall | None) -> None:
        if call is not None:
            self._calls.discard(call)
            if call.active():
                call.cancel()

    def looping(self, interval: float, fn: Callable[[], Any], now: bool = False) -> LoopingCall:
        def guarded() -> None:
            try:
                fn()
            except Exception:
                self.log.failure("TMR501 periodic task {fn!r} failed", fn=fn)

        loop = LoopingCall(guarded)
        loop.clock = self.reactor
        self._loops.add(loop)
        loop.start(interval, now=now)
        return loop

    def stop_looping(self, loop: LoopingCall | None) -> None:
        if loop is not None:
            self._loops.discard(loop)
            if loop.running:
                loop.stop()

    def cancel_all(self) -> None:
        for call in list(self._calls):
            if call.active():
                call.cancel()
        self._calls.clear()
        for loop in list(self._loops):
            if loop.running:
                loop.stop()
        self._loops.clear()


class CoreTimer:
    """Drives one core object's single timer: ``arm()`` after every input, ``cancel()`` at the end.

    ``arm()`` runs after every message, so it must be cheap: when the call already armed fires at or
    before the core's new deadline it is kept (it is cancelled when the core has no deadline left) (firing early costs one ``handle_timer`` that finds
    nothing due, then re-arms), and the reactor's timer queue is touched only when the deadline
    moves earlier. Under load the core's earliest deadline moves later with almost every answer
    (the oldest transaction completes), and re-scheduling each time was a tenth of the CPU.
    """

    __slots__ = ("_call", "_core", "_deadline", "_on_fire", "_timers")

    def __init__(self, timers: Timers, core: TimedCore, on_fire: Callable[[Any], None] | None = None) -> None:
        self._timers = timers
        self._core = core
        self._call: DelayedCall | None = None
        self._deadline: float | None = None
        self._on_fire = on_fire

    def arm(self) -> None:
        deadline = self._core.get_timer()
        call = self._call
        if call is not None and call.active():
            armed = self._deadline
            if armed is not None and deadline is not None and armed <= deadline:
                return
        elif deadline is None and self._deadline is None:
            return
        self.cancel()
        if deadline is None:
            return
        self._deadline = deadline
        self._call = self._timers.call_later(deadline - self._timers.now(), self._fire)

    def _fire(self) -> None:
        self._call = None
        self._deadline = None
        result = self._core.handle_timer(self._timers.now())
        if self._on_fire is not None:
            self._on_fire(result)
        self.arm()

    def cancel(self) -> None:
        if self._call is not None:
            self._timers.cancel(self._call)
        self._call = None
        self._deadline = None

    @property
    def active(self) -> bool:
        return self._call is not None and self._call.active()


class SlicedSweep(Generic[T]):
    """A periodic pass over a collection, ``size`` items per reactor turn (issue 21).

    Every ``interval`` seconds the pass takes a snapshot of ``items()`` and calls ``visit`` on each
    item, ``size`` at a time, yielding to the reactor between slices (``call_later(0)``), so a sweep
    over 10,000 connections never holds the reactor for the whole pass. A pass still running when
    the next is due is not restarted. ``visit`` sees items the snapshot holds: it must check that an
    item is still current (a flow closed between two slices).
    """

    def __init__(
        self,
        timers: Timers,
        interval: float,
        items: Callable[[], Iterable[T]],
        visit: Callable[[T], Any],
        size: int = 256,
    ) -> None:
        self.timers = timers
        self.interval = interval
        self.items = items
        self.visit = visit
        self.size = size
        self.passes = 0
        self._pending: list[T] | None = None
        self._pos = 0
        self._loop: LoopingCall | None = None
        self._call: DelayedCall | None = None

    def start(self) -> None:
        if self._loop is None:
            self._loop = self.timers.looping(self.interval, self._begin)

    def stop(self) -> None:
        self.timers.stop_looping(self._loop)
        self._loop = None
        self.timers.cancel(self._call)
        self._call = None
        self._pending = None

    def _begin(self) -> None:
        if self._pending is not None:
            return
        self._pending = list(self.items())
        self._pos = 0
        self.passes += 1
        self._slice()

    def _slice(self) -> None:
        self._call = None
        pending = self._pending
        if pending is None:
            return
        end = self._pos + self.size
        for item in pending[self._pos : end]:
            try:
                self.visit(item)
            except Exception:
                Timers.log.failure("TMR501 periodic task {fn!r} failed", fn=self.visit)
        self._pos = end
        if end < len(pending):
            self._call = self.timers.call_later(0, self._slice)
        else:
            self._pending = None
