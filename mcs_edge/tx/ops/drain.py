"""Graceful drain: stop taking new work, let calls end, then let the service stop.

Theory of operation
-------------------
``EdgeService.stopService`` (SIGTERM under twistd) calls :meth:`Drainer.start`, which returns a
Deferred that fires when the edge may stop; twistd waits for it before the reactor stops.

1. New connections: every connection-accepting (TCP) listener but ``admin`` stops listening, so
   new clients go to another node or worker; the admin listener stays for ``/health/ready``
   (which now answers 503) and ``/metrics``. UDP sockets (backend SIP, TURN, media) stay open:
   calls in progress need them.
2. New calls: the SIP core's ``draining`` flag answers every new INVITE (either direction) with
   503 and ``Retry-After``; in-dialog requests (re-INVITE, BYE...) and REGISTER refreshes pass.
3. Clients are told: a connection with no call is closed now (WebSocket close with the reason
   "edge draining"); a connection with calls is closed as soon as its last call ends.
4. The Deferred fires when no call is left, or after ``edge.drain_timeout`` seconds (the rest are
   cut, logged ``EDG301``). A drain timeout of 0 stops at once.

Calling :meth:`start` again returns a Deferred for the same drain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.application import internet
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

if TYPE_CHECKING:
    from mcs_edge.tx.seams import SipView
    from mcs_edge.tx.timers import Timers

__all__ = ["DRAIN_REASON", "Drainer"]

DRAIN_REASON = "edge draining"
POLL = 0.2


class Drainer:
    log = Logger()

    def __init__(
        self,
        timers: Timers,
        router: SipView,
        drain_timeout: Callable[[], float],
        listeners: Callable[[], Iterable[Any]],
    ) -> None:
        """``router``: calls and client flows; ``drain_timeout``: the configured default (read at
        each drain: reloads apply); ``listeners``: the services that accept connections."""
        self.timers = timers
        self.router = router
        self.drain_timeout = drain_timeout
        self.listeners = listeners
        self.draining = False
        self.finished = False
        self._waiters: list[Deferred[None]] = []
        self._loop: Any = None
        self._started = 0.0

    def start(self, timeout: float | None = None) -> Deferred[None]:
        """Begin draining (once) and return a Deferred that fires when the edge may stop."""
        if self.finished:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        if self.draining:
            return d
        self.draining = True
        self._started = self.timers.now()
        self._timeout = self.drain_timeout() if timeout is None else timeout
        self.router.drain()
        self._stop_accepting()
        calls = self.router.call_count()
        self.log.info(
            "EDG102 draining: refusing new connections and calls; {calls} call(s) up, waiting at most {timeout} s",
            calls=calls,
            timeout=self._timeout,
        )
        self._close_idle_flows()
        if not self._check():
            self._loop = self.timers.looping(POLL, self._tick)
        return d

    def _stop_accepting(self) -> None:
        stopped = []
        for child in list(self.listeners()):
            if child.name == "admin" or not getattr(child, "running", False):
                continue
            if isinstance(child, internet.TCPServer) or getattr(child, "accepts_connections", False):
                child.stopService()
                stopped.append(child.name)
        if stopped:
            self.log.info("EDG104 stopped accepting connections on {listeners}", listeners=", ".join(stopped))

    def _close_idle_flows(self) -> None:
        router = self.router
        for flow in list(router.flows.values()):
            if router.calls_on_flow(flow.id) == 0:
                flow.close(1000, DRAIN_REASON)

    def _tick(self) -> None:
        self._close_idle_flows()
        self._check()

    def _check(self) -> bool:
        elapsed = self.timers.now() - self._started
        calls = self.router.call_count()
        if calls == 0:
            self.log.info("EDG103 drained: every call ended after {elapsed:.1f} s", elapsed=elapsed)
        elif elapsed >= self._timeout:
            self.log.warn(
                "EDG301 drain timeout after {elapsed:.1f} s: closing {calls} call(s) on {flows} connection(s)",
                elapsed=elapsed,
                calls=calls,
                flows=len(self.router.flows),
            )
        else:
            return False
        self._finish()
        return True

    def _finish(self) -> None:
        if self._loop is not None:
            self.timers.stop_looping(self._loop)
            self._loop = None
        self.finished = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
