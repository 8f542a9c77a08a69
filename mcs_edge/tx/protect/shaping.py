"""Shaping for the service: token buckets per client connection, per media leg and per tenant.

Theory of operation
-------------------
One :class:`Shaping` per service turns ``[shaping]`` and ``[tenants.shaping]`` into buckets:

* every client stream connection (SIP over WebSocket, SIP over TLS) gets a
  :class:`StreamShaper`: inbound, a :class:`~mcs_edge.core.shaping.stream.InboundPacer` at the
  tenant's ``rate``/``burst`` that pauses reading (``transport.pauseProducing``) while its bucket
  (or the tenant's aggregate bucket) is in debt and resumes it from a service timer, so SIP is
  slowed, never dropped; outbound, an :class:`~mcs_edge.core.shaping.stream.OutboundQueue` at the
  same rate, bounded by ``shaping.send_queue`` bytes, which also holds messages while the
  transport's write buffer is full (the shaper is the transport's streaming producer). Past the
  bound the connection is aborted with a logged reason (``SHP401``).
* every media leg gets a :class:`~mcs_edge.core.shaping.Policer` from :meth:`Shaping.leg_policer`:
  packets over the leg's bucket, or over the tenant's media aggregate bucket, are dropped and
  counted on the policer.
* per tenant, :class:`TenantBuckets` holds the aggregate buckets (``aggregate_rate``, 0 = none):
  one registry for the tenant's client connections (``Shaping.signalling``), one for its media
  legs (``Shaping.media``), so that a media flood never stalls the tenant's signalling.

The relay uses it with three lines (``service.shaping`` is the instance)::

    policer = service.shaping.leg_policer(tenant)      # when the leg is created
    if not policer.admit(len(packet), now):             # per packet, before forwarding
        return                                          # dropped, counted in policer.dropped_*

Reload (:meth:`Shaping.update`) reconfigures the tenant buckets in place (fill kept); buckets of
tenants removed, or whose aggregate was switched off, are forgotten (live legs and connections
keep the object they hold until they end). New connections and legs use the new rates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from mcs_edge.config import EdgeConfig, TenantConfig
from mcs_edge.core.shaping import Policer, TokenBucket
from mcs_edge.core.shaping.stream import OVERFLOW, SEND_NOW, InboundPacer, OutboundQueue
from mcs_edge.tx.timers import CoreTimer, Timers

__all__ = ["MAX_HELD", "Shaping", "StreamShaper", "TenantBuckets", "aggregate_of"]

#: Bytes a paused connection may hold (already read when it was paused) before it is closed.
MAX_HELD = 1 << 20


def aggregate_of(config: EdgeConfig, tenant: TenantConfig) -> tuple[float, float] | None:
    """The tenant's aggregate ``(rate, burst)``, or ``None`` when it has no aggregate cap."""
    sh = tenant.shaping
    rate = sh.aggregate_rate if sh.aggregate_rate is not None else config.shaping.aggregate_rate
    if rate <= 0:
        return None
    burst = sh.aggregate_burst if sh.aggregate_burst is not None else config.shaping.aggregate_burst
    if burst <= 0:
        burst = max(2 * rate, 1500)
    return float(rate), float(burst)


class TenantBuckets:
    """One aggregate bucket per tenant, created on first use, reconfigured on reload."""

    __slots__ = ("_buckets", "_config", "_now")

    def __init__(self, config: EdgeConfig, now: Callable[[], float]) -> None:
        self._config = config
        self._now = now
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def for_tenant(self, tenant_id: str) -> TokenBucket | None:
        """The tenant's aggregate bucket, or ``None`` (unknown tenant, or no aggregate cap)."""
        bucket = self._buckets.get(tenant_id)
        if bucket is not None:
            return bucket
        tenant = self._config.tenant(tenant_id)
        if tenant is None:
            return None
        agg = aggregate_of(self._config, tenant)
        if agg is None:
            return None
        bucket = self._buckets[tenant_id] = TokenBucket(agg[0], agg[1], self._now())
        return bucket

    def update(self, config: EdgeConfig) -> None:
        """Adopt a reloaded configuration: same buckets at the new rates, or forgotten."""
        self._config = config
        now = self._now()
        for tenant_id, bucket in list(self._buckets.items()):
            tenant = config.tenant(tenant_id)
            agg = aggregate_of(config, tenant) if tenant is not None else None
            if agg is None:
                del self._buckets[tenant_id]
            else:
                bucket.reconfigure(agg[0], agg[1], now)


class Shaping:
    """Buckets of one service (see the module docstring)."""

    def __init__(self, config: EdgeConfig, timers: Timers) -> None:
        self.config = config
        self.timers = timers
        self.signalling = TenantBuckets(config, timers.now)
        self.media = TenantBuckets(config, timers.now)
        #: (event, tenant, reason) -> count: "stream_closed" by reason, "reads_paused".
        self.counters: dict[tuple[str, str, str], int] = {}
        self.streams: set[StreamShaper] = set()
        self.stopped = False

    def update(self, config: EdgeConfig) -> None:
        """Adopt a reloaded configuration."""
        self.config = config
        self.signalling.update(config)
        self.media.update(config)

    def stop(self) -> None:
        """Service shutdown: every connection becomes unshaped (reading resumed, timers cancelled)."""
        self.stopped = True
        for shaper in list(self.streams):
            shaper.stop(resume=True)

    def count(self, event: str, tenant: str, reason: str = "") -> None:
        key = (event, tenant, reason)
        self.counters[key] = self.counters.get(key, 0) + 1

    def _tenant(self, tenant: TenantConfig | str) -> TenantConfig | None:
        if isinstance(tenant, str):
            return self.config.tenant(tenant)
        return tenant

    def rate_of(self, tenant: TenantConfig | str) -> tuple[float, float]:
        """Per-connection / per-leg ``(rate, burst)`` of ``tenant`` (``[shaping]`` if unknown)."""
        t = self._tenant(tenant)
        if t is None:
            return float(self.config.shaping.rate), float(self.config.shaping.burst)
        rate, burst = self.config.tenant_rate(t)
        return float(rate), float(burst)

    def leg_policer(self, tenant: TenantConfig | str) -> Policer:
        """A policer for a new media leg of ``tenant``: its own bucket inside the tenant's aggregate."""
        rate, burst = self.rate_of(tenant)
        tenant_id = tenant if isinstance(tenant, str) else tenant.id
        return Policer(TokenBucket(rate, burst, self.timers.now()), self.media.for_tenant(tenant_id))

    def stream(
        self,
        tenant: TenantConfig,
        transport: Any,
        deliver: Callable[[bytes], None],
        write: Callable[[bytes], None],
        abort: Callable[[], None],
        kind: str,
        peer: Any,
    ) -> StreamShaper:
        """A started :class:`StreamShaper` for a new client connection of ``tenant``."""
        shaper = StreamShaper(self, tenant.id, transport, deliver, write, abort, kind, peer)
        if self.stopped:
            shaper.stopped = True  # shutting down: pass-through
        else:
            self.streams.add(shaper)
            shaper.start()
        return shaper


@implementer(IPushProducer)
class StreamShaper:
    """Both directions of one client connection, driven by the service timers.

    The protocol routes every chunk it receives through :meth:`data_received` (which calls
    ``deliver`` now or later, in order), every message it sends through :meth:`send` (which
    calls ``write`` now or later), and calls :meth:`stop` before it closes the transport and
    when the connection is lost (the shaper is the transport's producer: a TLS transport
    closes only once it is unregistered). A stopped shaper passes everything straight through.
    """

    log = Logger()

    def __init__(
        self,
        shaping: Shaping,
        tenant_id: str,
        transport: Any,
        deliver: Callable[[bytes], None],
        write: Callable[[bytes], None],
        abort: Callable[[], None],
        kind: str,
        peer: Any,
    ) -> None:
        self._shaping = shaping
        self._timers = timers = shaping.timers
        self.tenant_id = tenant_id
        self.transport = transport
        self._deliver = deliver
        self._write = write
        self._abort = abort
        self.kind = kind
        self.peer = peer
        rate, burst = shaping.rate_of(tenant_id)
        now = timers.now()
        self.inbound = InboundPacer(
            TokenBucket(rate, burst, now), shaping.signalling.for_tenant(tenant_id), max_held=MAX_HELD
        )
        self.outbound = OutboundQueue(TokenBucket(rate, burst, now), shaping.config.shaping.send_queue)
        self._in_timer = CoreTimer(timers, self.inbound, on_fire=self._deliver_released)
        self._out_timer = CoreTimer(timers, self.outbound, on_fire=self._write_released)
        self.reading_paused = False
        self.stopped = False
        self._producing = False

    def start(self) -> None:
        """Become the transport's streaming producer (to learn when its write buffer is full)."""
        register = getattr(self.transport, "registerProducer", None)
        if register is None:
            return
        try:
            register(self, True)
        except RuntimeError:  # another producer is registered: rate shaping still works
            return
        self._producing = True

    # -- inbound ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        """A chunk read from the transport: delivered now, or held while reading is paused."""
        if self.admit(data):
            self._deliver(data)

    def admit(self, data: bytes) -> bool:
        """Account for a chunk; True: the caller handles it now, False: held (delivered later) or refused."""
        if self.stopped:
            return True
        inbound = self.inbound
        if inbound.feed(data, self._timers.now()):
            if inbound.charged_into_debt or self.reading_paused:
                self._sync_reading()
            return True
        if inbound.overflowed:
            self._overflow(f"more than {inbound.max_held} bytes arrived while reading was paused")
            return False
        self._sync_reading()
        return False

    def _deliver_released(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            if self.stopped:
                return
            self._deliver(chunk)
        self._sync_reading()

    def _sync_reading(self) -> None:
        if self.stopped:
            return
        paused = self.inbound.paused
        if paused != self.reading_paused:
            self.reading_paused = paused
            transport = self.transport
            if paused:
                self._shaping.count("reads_paused", self.tenant_id, self.kind)
                transport.pauseProducing()
            else:
                transport.resumeProducing()
        self._in_timer.arm()

    # -- outbound -----------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """A message toward the client: written now, queued, or (past the bound) the connection aborted."""
        if self.stopped:
            self._write(data)
            return
        verdict = self.outbound.offer(data, self._timers.now())
        if verdict == SEND_NOW:
            self._write(data)
        elif verdict == OVERFLOW:
            self._overflow(f"send queue over {self.outbound.max_bytes} bytes")
        else:
            self._out_timer.arm()

    def _write_released(self, messages: list[bytes]) -> None:
        for data in messages:
            if self.stopped:
                return
            self._write(data)

    # -- IPushProducer (the transport's write buffer) -------------------------------------------
    def pauseProducing(self) -> None:  # noqa: N802
        if not self.stopped:
            self.outbound.set_writable(False, self._timers.now())
            self._out_timer.arm()

    def resumeProducing(self) -> None:  # noqa: N802
        if not self.stopped:
            self._write_released(self.outbound.set_writable(True, self._timers.now()))
            self._out_timer.arm()

    def stopProducing(self) -> None:  # noqa: N802
        self._producing = False  # the transport is gone and forgets us itself
        self.stop()

    # -- end ----------------------------------------------------------------------------------
    def _overflow(self, reason: str) -> None:
        self._shaping.count("stream_closed", self.tenant_id, "overflow")
        self.log.warn(
            "SHP401 {tenant} {kind} connection from {peer} closed: {reason}",
            tenant=self.tenant_id,
            kind=self.kind,
            peer=self.peer,
            reason=reason,
        )
        self.stop()
        self._abort()

    def stop(self, resume: bool = False) -> None:
        """Release timers, held and queued bytes, the producer registration (idempotent).

        With ``resume`` (service shutdown, the connection stays up) reading is resumed and held
        chunks and queued messages are handed over first, so nothing is lost.
        """
        if self.stopped:
            return
        self.stopped = True
        self._shaping.streams.discard(self)
        self._in_timer.cancel()
        self._out_timer.cancel()
        if resume:
            for chunk in self.inbound.drain():
                self._deliver(chunk)
            for data in self.outbound.drain():
                self._write(data)
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resumeProducing()
        self.inbound.clear()
        self.outbound.clear()
        if self._producing:
            self._producing = False
            unregister = getattr(self.transport, "unregisterProducer", None)
            if unregister is not None:
                unregister()
