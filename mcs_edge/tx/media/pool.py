"""Relay sockets bound ahead of calls: a small pool per worker, so an INVITE does not bind its legs.

Theory of operation
-------------------
Binding a relay port costs a ``socket``/``bind`` and, on the uvloop reactor, a datagram endpoint
created by a loop task: about 25-30 us of CPU per socket on this machine, four sockets for a call
whose two legs do not mux RTCP (``bench/bench_call_setup.py``). :class:`RelayPortPool` keeps up to
``media.socket_pool`` sockets bound ahead, as whole allocations of the one
:class:`~mcs_edge.core.media.ports.PortAllocator` (single rtcp-mux ports and even/odd pairs, in
two queues): a leg takes one (:meth:`take`), the relay hands its endpoint to the leg's port
(:meth:`claim` + :meth:`RelayEndpoint.retarget <mcs_edge.tx.relay_endpoint.RelayEndpoint.retarget>`),
and the call set-up binds nothing. When the queue is empty the relay binds on demand as before.

* **Ports.** A pooled port is allocated in the allocator the media legs and TURN share, so TURN
  (and the on-demand path) can never be handed it; the ``media.ports`` range of the worker is the
  allocator's. A taken port belongs to its leg and goes back to the allocator and is closed when the
  leg ends (never back to the pool: the allocator's FIFO reuse keeps late packets of an ended call
  from reaching the next one).
* **Refill.** After a take, the pool refills in slices of ``SLICE`` sockets, one slice per reactor
  turn (``call_later(0)``), never in the turn of the INVITE; it stops once full.
* **Bounds.** At most ``size`` sockets (and at most an eighth of the range); no refill while fewer
  than a quarter of the range is free, and the pool gives its spares back (:meth:`trim`) when the
  range runs low, so the pool never starves TURN or calls of ports. When a leg asks for a kind the
  pool does not hold and the allocator has none left of that kind, the pool gives its ports back at
  once, sockets still bound, so the leg can get (and claim) one of them in the same turn.
* **Stray datagrams** reaching a pooled socket are dropped and counted (``media_pool_stray``); an
  endpoint the loop could not create is dropped from the pool, its port given back.
* :meth:`close` (relay stop: drain, shutdown) closes every pooled socket and gives its port back.

Counters (the relay's ``counters``): ``media_pool_taken``, ``media_pool_empty`` (a leg bound on
demand), ``media_pool_bind_errors``, ``media_pool_stray``.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.error import CannotListenError

from mcs_edge.core.media.ports import Allocation, PortAllocator
from mcs_edge.tx.relay_endpoint import RelayEndpoint, RelayEndpoints

if TYPE_CHECKING:
    from twisted.internet.base import DelayedCall

    from mcs_edge.tx.timers import Timers

__all__ = ["SLICE", "RelayPortPool"]

#: Sockets bound per refill turn (about 0.1 ms of CPU).
SLICE = 4


class RelayPortPool:
    """Relay sockets bound ahead of calls (see the module docstring)."""

    def __init__(
        self,
        endpoints: RelayEndpoints,
        allocator: PortAllocator,
        host: str,
        timers: Timers,
        size: int,
        count: Callable[[str], None],
        on_error: Callable[[str], None],
    ) -> None:
        self.endpoints = endpoints
        self.allocator = allocator
        self.host = host
        self.timers = timers
        capacity = allocator.capacity
        #: sockets the pool holds at most
        self.size = max(0, min(size, capacity // 8))
        self._reserve = capacity // 4
        self._count = count
        self._on_error = on_error
        self._singles: deque[Allocation] = deque()
        self._pairs: deque[Allocation] = deque()
        #: bound endpoints by port: pooled ones, and the ones of a taken allocation until claimed
        self._bound: dict[int, RelayEndpoint] = {}
        self._pooled_ports = 0
        self._refill_call: DelayedCall | None = None
        #: ports given back by :meth:`_unpool` whose sockets stay bound until the end of the turn
        self._orphans: list[int] = []
        self._orphan_call: DelayedCall | None = None
        self.closed = False

    # -------------------------------------------------------------------------------- figures

    @property
    def pooled(self) -> int:
        """Ports held bound in the pool (not yet taken by a leg)."""
        return self._pooled_ports

    # ------------------------------------------------------------------------------ the legs

    def take(self, rtcp_mux: bool) -> Allocation | None:
        """A bound allocation for a new leg (one port, or an even/odd pair), or None (bind on demand)."""
        queue = self._singles if rtcp_mux else self._pairs
        if not queue:
            if self.size:
                self._count("media_pool_empty")
                if not self.allocator.can_allocate(rtcp_mux=rtcp_mux):
                    self._unpool()  # the last ports of the range are pooled ones of the other kind
                self._schedule()
            return None
        alloc = queue.popleft()
        self._pooled_ports -= 1 if alloc.rtcp_port is None else 2
        self._count("media_pool_taken")
        self._schedule()
        return alloc

    def _unpool(self) -> None:
        """Give every pooled port back to the allocator now, keeping its socket bound until the end
        of this reactor turn: the leg that gets the port from the allocator claims the socket (a port
        closed now could not be bound again before the loop closed it)."""
        for queue in (self._singles, self._pairs):
            while queue:
                alloc = queue.popleft()
                self._pooled_ports -= 1 if alloc.rtcp_port is None else 2
                self.allocator.release(alloc.rtp_port)
                self._orphans.extend(p for p in (alloc.rtp_port, alloc.rtcp_port) if p is not None)
        if self._orphans and self._orphan_call is None:
            self._orphan_call = self.timers.call_later(0, self._close_orphans)

    def _close_orphans(self) -> None:
        self._orphan_call = None
        orphans, self._orphans = self._orphans, []
        for port in orphans:
            endpoint = self._bound.pop(port, None)  # not claimed by a leg in that turn
            if endpoint is not None:
                endpoint.close()

    def claim(self, port: int) -> RelayEndpoint | None:
        """The bound endpoint of ``port`` from a taken allocation, now the caller's; None if none."""
        return self._bound.pop(port, None)

    # ---------------------------------------------------------------------------------- refill

    def start(self) -> None:
        """Fill the pool (in slices, from the next reactor turn)."""
        self._schedule()

    def _schedule(self) -> None:
        if self.closed or self._refill_call is not None or not self.size:
            return
        if self._pooled_ports >= self.size:
            return
        self._refill_call = self.timers.call_later(0, self._refill)

    def _refill(self) -> None:
        """One slice: bind up to ``SLICE`` sockets; schedule the next slice while not full."""
        self._refill_call = None
        if self.closed:
            return
        if self.allocator.free <= self._reserve:
            self.trim()
            return
        bound = 0
        while bound < SLICE and self._pooled_ports < self.size:
            # singles and pairs half each (by sockets): the one with fewer sockets first
            rtcp_mux = len(self._singles) <= 2 * len(self._pairs) or self._pooled_ports + 2 > self.size
            alloc = self.allocator.allocate(rtcp_mux=rtcp_mux)
            if alloc is None:
                return
            if not self._bind(alloc):
                self.allocator.release(alloc.rtp_port)
                return  # a busy or refused port: try again after the next take
            (self._singles if rtcp_mux else self._pairs).append(alloc)
            n = 1 if alloc.rtcp_port is None else 2
            self._pooled_ports += n
            bound += n
        if self._pooled_ports < self.size:
            self._schedule()

    def _bind(self, alloc: Allocation) -> bool:
        ports = [alloc.rtp_port] if alloc.rtcp_port is None else [alloc.rtp_port, alloc.rtcp_port]
        opened: list[RelayEndpoint] = []
        for port in ports:
            try:
                endpoint = self.endpoints.open(
                    self.host,
                    port,
                    self._stray,
                    on_error=self._on_error,
                    on_failed=functools.partial(self._failed, port),
                )
            except (OSError, CannotListenError):
                self._count("media_pool_bind_errors")
                for endpoint in opened:
                    self._bound.pop(endpoint.port, None)
                    endpoint.close()
                return False
            opened.append(endpoint)
            self._bound[port] = endpoint
        return True

    def _stray(self, _data: bytes, _addr: Any) -> None:
        self._count("media_pool_stray")

    def _failed(self, port: int, _exc: BaseException) -> None:
        """The loop could not create a pooled endpoint: drop its allocation from the pool."""
        self._count("media_pool_bind_errors")
        for queue in (self._singles, self._pairs):
            for alloc in queue:
                if port in (alloc.rtp_port, alloc.rtcp_port):
                    queue.remove(alloc)
                    self._drop(alloc)
                    return

    # ------------------------------------------------------------------------------ give back

    def _drop(self, alloc: Allocation) -> None:
        """Close a pooled allocation's sockets and give its port(s) back."""
        self._pooled_ports -= 1 if alloc.rtcp_port is None else 2
        for port in (alloc.rtp_port, alloc.rtcp_port):
            if port is not None:
                endpoint = self._bound.pop(port, None)
                if endpoint is not None:
                    endpoint.close()
        self.allocator.release(alloc.rtp_port)

    def trim(self) -> None:
        """Give every pooled port back (the range runs low: TURN and calls get them)."""
        for queue in (self._singles, self._pairs):
            while queue:
                self._drop(queue.popleft())

    def close(self) -> None:
        """Stop refilling, close every pooled socket, give every pooled port back."""
        self.closed = True
        if self._refill_call is not None:
            self.timers.cancel(self._refill_call)
            self._refill_call = None
        if self._orphan_call is not None:
            self.timers.cancel(self._orphan_call)
            self._orphan_call = None
        self._orphans.clear()
        self.trim()
        for endpoint in self._bound.values():  # taken but never claimed (a failed leg bind)
            endpoint.close()
        self._bound.clear()
