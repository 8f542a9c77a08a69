"""``twistd --reactor=uvloop``: Twisted's asyncio reactor running on a uvloop event loop.

The media relay opens its sockets with the loop's native datagram endpoints, so on this reactor
the per-packet path runs in uvloop's C code up to one Python call per packet (see DESIGN.md,
Performance budget). Falls back to the standard asyncio loop when uvloop is not installed.

Timers to the microsecond (issue 21). Twisted's asyncio reactor keeps its delayed calls in a heap
and arms one loop timer for the earliest (``call_at``). uvloop's timers count whole milliseconds
(``round(delay * 1000)`` from a clock truncated to the millisecond, a delay under 0.5 ms becoming
``call_soon``), and libuv's poll sleeps whole milliseconds from the time read at the start of the
loop turn: a timer fired up to about 1.5 ms early (Twisted then finds nothing due and re-arms: on
the bench's INVITE step 1,100 such empty timer turns a second) or up to about 1 ms late, the
process idle meanwhile; the load probe's late ticks held ~0.75 ms of such idle time
(``bench_latency.py --turns``, docs/performance.md). :class:`PreciseTimersReactor` arms a Linux
``timerfd`` (``CLOCK_MONOTONIC``, nanoseconds) read by the loop instead: the poll returns when the
earliest call is due, neither before nor after. Where ``timerfd`` is not available (not Linux, no
libc symbol) it is Twisted's reactor unchanged.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from typing import Any

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.posixbase import PosixReactorBase

__all__ = ["PreciseTimersReactor", "TimerFd", "install", "new_loop"]


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class TimerFd:
    """One non-blocking ``timerfd`` on ``CLOCK_MONOTONIC``: :meth:`arm` a relative delay, the
    descriptor becomes readable when it has passed; :meth:`clear` reads the expiry count."""

    __slots__ = ("_settime", "_spec", "_spec_ref", "fd")

    def __init__(self, fd: int, settime: Any) -> None:
        self.fd = fd
        self._settime = settime
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)

    @classmethod
    def open(cls) -> TimerFd | None:
        """A new timer, or None where the C library has no ``timerfd`` (not Linux)."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            create, settime = libc.timerfd_create, libc.timerfd_settime
        except (OSError, AttributeError):
            return None
        create.argtypes = [ctypes.c_int, ctypes.c_int]
        create.restype = ctypes.c_int
        settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
        settime.restype = ctypes.c_int
        fd = create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            return None
        return cls(fd, settime)

    def arm(self, delay: float) -> None:
        """Readable ``delay`` seconds from now (at once for 0 or less; a zero value would disarm)."""
        ns = int(delay * 1e9)
        if ns < 1:
            ns = 1
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(ns, 1_000_000_000)
        if self._settime(self.fd, 0, self._spec_ref, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def clear(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:  # already read (or re-armed after it fired)
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PreciseTimersReactor(AsyncioSelectorReactor):
    """Twisted's asyncio reactor with its delayed calls woken by a ``timerfd`` (module docstring)."""

    def __init__(self, eventloop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(eventloop)
        self._timerfd = TimerFd.open()
        if self._timerfd is not None:
            self._asyncioEventloop.add_reader(self._timerfd.fd, self._timerfd_fired)
            self.addSystemEventTrigger("after", "shutdown", self._close_timerfd)

    def _timerfd_fired(self) -> None:
        timerfd = self._timerfd
        if timerfd is not None:
            timerfd.clear()
        self._onTimer()

    def _reschedule(self) -> None:
        timerfd = self._timerfd
        if timerfd is None:
            super()._reschedule()
            return
        timeout = self.timeout()
        if timeout is not None:
            # the earliest call's time on the reactor's clock (timeout() just put new calls in the heap),
            # not the loop's millisecond clock: a call due sooner by under a millisecond still re-arms
            self._scheduledAt = self._pendingTimedCalls[0].time  # type: ignore[assignment]
            timerfd.arm(timeout)

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:  # noqa: N802
        if self._timerfd is None:
            return super().callLater(delay, callable, *args, **kw)
        call = PosixReactorBase.callLater(self, delay, callable, *args, **kw)
        scheduled = self._scheduledAt
        if scheduled is None or call.getTime() < scheduled:
            self._reschedule()
        return call

    def _close_timerfd(self) -> None:
        timerfd, self._timerfd = self._timerfd, None
        if timerfd is not None:
            loop = self._asyncioEventloop
            if not loop.is_closed():
                loop.remove_reader(timerfd.fd)
            timerfd.close()


def install() -> None:
    """Install the asyncio reactor over a fresh uvloop loop (made current for aiortc and friends)."""
    from twisted.internet.main import installReactor

    loop = new_loop()
    asyncio.set_event_loop(loop)
    installReactor(PreciseTimersReactor(loop))
