"""One persistent stream connection (TCP or TLS) toward a tenant's PBX: when to connect, ping, retry.

Theory of operation
-------------------
A :class:`BackendLink` is the sans-IO brain of the edge's connection to one tenant PBX over a
reliable transport. The adapter (``tx/sip/backend.py``) owns the socket; it tells the link what
happened (``send``, ``connected``, ``connect_failed``, ``lost``, ``received``) with the current
monotonic ``now``, drains the link's actions (:class:`Connect`, :class:`Write`, :class:`Abort`,
:class:`Dropped`) with ``next_action()`` and re-arms one timer from ``get_timer()``.

The connection is opened on demand (the first message to send) and from then on kept: when it
breaks it is reopened, so the PBX can always reach the edge's clients over it (RFC 5626 s.3, the
edge behaves as an outbound client toward the PBX).

States and transitions (``*`` = any state but CLOSED)::

    state        event                        next         actions
    -----------  ---------------------------  -----------  ---------------------------------------
    IDLE         send                         CONNECTING   Connect; message queued
    CONNECTING   send                         CONNECTING   message queued (bounded, else Dropped)
    CONNECTING   connected                    OPEN         Write each queued message
    CONNECTING   connect_failed / timer       BACKOFF      Abort (timer); Dropped(queue)
    OPEN         send                         OPEN         Write
    OPEN         timer: keepalive due         OPEN         Write(PING), pong awaited (s.4.4.1)
    OPEN         received (pong or message)   OPEN         pong wait cleared
    OPEN         timer: no pong in 10 s       BACKOFF      Abort, ConnectionLost; failure counted
    OPEN         lost, after >= MIN_UP open   CONNECTING   ConnectionLost, Connect (a PBX may close idle)
    OPEN         lost, sooner                 BACKOFF      ConnectionLost; failure counted
    BACKOFF      send                         BACKOFF      Dropped (refused at once: 503)
    BACKOFF      timer: retry due             CONNECTING   Connect
    *            close                        CLOSED       Abort if connected; Dropped(queue)

Backoff (RFC 5626 s.4.5): after ``n`` consecutive failures the next attempt waits
``min(max_backoff, base_backoff * 2**(n-1))`` scaled by a random factor in [0.5, 1] (jitter
spreads the reconnects of many edges toward one PBX). A successful connection resets ``n``.
Keepalive (RFC 5626 s.4.4.1): a CRLFCRLF ping every ``keepalive`` seconds (randomised to 80-100%
of it) on an otherwise idle connection; a pong (CRLF) or any other input must come within
``PONG_WAIT`` seconds, else the flow has failed and is closed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from .framing import PING

__all__ = [
    "PONG_WAIT",
    "Abort",
    "BackendLink",
    "Connect",
    "ConnectionLost",
    "Dropped",
    "LinkSettings",
    "LinkState",
    "Write",
]

#: RFC 5626 s.4.4.1: "If a pong is not received within 10 seconds ... the flow has failed."
PONG_WAIT = 10.0
#: A connection lost sooner than this after it opened counts as a failed attempt (no tight loop).
MIN_UP = 5.0


class LinkState(Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    OPEN = "open"
    BACKOFF = "backoff"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class LinkSettings:
    keepalive: float = 60.0  # seconds between pings on an idle connection
    connect_timeout: float = 5.0  # a connect (and TLS handshake) taking longer has failed
    base_backoff: float = 1.0
    max_backoff: float = 60.0
    max_queue: int = 64  # messages held while connecting
    max_queue_bytes: int = 262_144


@dataclass(frozen=True, slots=True)
class Connect:
    """Open the connection now (resolve the name first when it is one)."""


@dataclass(frozen=True, slots=True)
class Write:
    data: bytes


@dataclass(frozen=True, slots=True)
class Abort:
    """Close the connection (or the attempt in flight) now."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """An open connection failed: requests sent on it get no answer (RFC 3261 s.17.1.4 transport error)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """``count`` messages could not be sent (the requests among them must fail at once)."""

    count: int
    reason: str


LinkAction = Connect | Write | Abort | Dropped | ConnectionLost


class BackendLink:
    """See the module docstring."""

    def __init__(self, settings: LinkSettings, rand: Callable[[], float]) -> None:
        self.settings = settings
        self._rand = rand  # uniform in [0, 1): jitter
        self.state = LinkState.IDLE
        self.failures = 0
        self.last_error = ""
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._actions: deque[LinkAction] = deque()
        self._deadline: float | None = None  # connect timeout / retry time
        self._opened_at = 0.0
        self._ping_at: float | None = None
        self._pong_by: float | None = None

    # ------------------------------------------------------------------ output
    def next_action(self) -> LinkAction | None:
        return self._actions.popleft() if self._actions else None

    def get_timer(self) -> float | None:
        if self.state is LinkState.OPEN:
            times = [t for t in (self._ping_at, self._pong_by) if t is not None]
            return min(times) if times else None
        if self.state in (LinkState.CONNECTING, LinkState.BACKOFF):
            return self._deadline
        return None

    @property
    def is_open(self) -> bool:
        return self.state is LinkState.OPEN

    # ------------------------------------------------------------------ input
    def send(self, data: bytes, now: float) -> None:
        state = self.state
        if state is LinkState.OPEN:
            self._actions.append(Write(data))
            self._ping_at = now + self._keepalive()
        elif state is LinkState.IDLE:
            self._enqueue(data)
            self._connect(now)
        elif state is LinkState.CONNECTING:
            self._enqueue(data)
        elif state is LinkState.BACKOFF:
            self._actions.append(Dropped(1, f"PBX unreachable ({self.last_error or 'connect failed'})"))
        else:
            self._actions.append(Dropped(1, "link closed"))

    def connected(self, now: float) -> None:
        if self.state is not LinkState.CONNECTING:
            return
        self.state = LinkState.OPEN
        self.failures = 0
        self.last_error = ""
        self._deadline = None
        self._opened_at = now
        self._pong_by = None
        while self._queue:
            self._actions.append(Write(self._queue.popleft()))
        self._queued_bytes = 0
        self._ping_at = now + self._keepalive()

    def connect_failed(self, reason: str, now: float) -> None:
        if self.state is not LinkState.CONNECTING:
            return
        self._fail(reason, now)

    def lost(self, reason: str, now: float) -> None:
        if self.state is not LinkState.OPEN:
            if self.state is LinkState.CONNECTING:
                self._fail(reason, now)
            return
        self._ping_at = self._pong_by = None
        self._actions.append(ConnectionLost(reason))
        if now - self._opened_at >= MIN_UP:
            self.last_error = reason
            self._connect(now)
        else:
            self._fail(reason, now)

    def received(self, now: float) -> None:
        """Any input (a pong, a message) shows the connection is alive."""
        if self.state is LinkState.OPEN:
            self._pong_by = None
            if self._ping_at is None:
                self._ping_at = now + self._keepalive()

    def handle_timer(self, now: float) -> None:
        state = self.state
        if state is LinkState.OPEN:
            if self._pong_by is not None and now >= self._pong_by:
                self._actions.append(Abort("no keepalive pong"))
                self._actions.append(ConnectionLost("no keepalive pong"))
                self._fail("no keepalive pong", now)
                return
            if self._ping_at is not None and now >= self._ping_at:
                self._actions.append(Write(PING))
                self._pong_by = now + PONG_WAIT
                self._ping_at = now + self._keepalive()
        elif state is LinkState.CONNECTING:
            if self._deadline is not None and now >= self._deadline:
                self._actions.append(Abort("connect timeout"))
                self._fail("connect timeout", now)
        elif state is LinkState.BACKOFF and self._deadline is not None and now >= self._deadline:
            self._connect(now)

    def close(self, reason: str) -> None:
        """The link is no longer wanted (tenant removed or changed, shutdown)."""
        if self.state is LinkState.CLOSED:
            return
        if self.state in (LinkState.OPEN, LinkState.CONNECTING):
            self._actions.append(Abort(reason))
        self._drop_queue(reason)
        self.state = LinkState.CLOSED
        self._deadline = self._ping_at = self._pong_by = None

    # ------------------------------------------------------------------ internals
    def _keepalive(self) -> float:
        return self.settings.keepalive * (0.8 + 0.2 * self._rand())

    def _enqueue(self, data: bytes) -> None:
        s = self.settings
        if len(self._queue) >= s.max_queue or self._queued_bytes + len(data) > s.max_queue_bytes:
            self._actions.append(Dropped(1, "queue toward the PBX full"))
            return
        self._queue.append(data)
        self._queued_bytes += len(data)

    def _connect(self, now: float) -> None:
        self.state = LinkState.CONNECTING
        self._deadline = now + self.settings.connect_timeout
        self._actions.append(Connect())

    def _fail(self, reason: str, now: float) -> None:
        self.failures += 1
        self.last_error = reason
        self._drop_queue(f"PBX unreachable ({reason})")
        s = self.settings
        wait = min(s.max_backoff, s.base_backoff * 2 ** min(self.failures - 1, 30))
        self.state = LinkState.BACKOFF
        self._deadline = now + wait * (0.5 + 0.5 * self._rand())
        self._ping_at = self._pong_by = None

    def _drop_queue(self, reason: str) -> None:
        if self._queue:
            self._actions.append(Dropped(len(self._queue), reason))
            self._queue.clear()
            self._queued_bytes = 0
