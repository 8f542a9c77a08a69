"""SIP over TCP and TLS toward tenant PBXs: one persistent connection per tenant, and PBX-opened ones.

Theory of operation
-------------------
:class:`BackendConnections` carries the router's ``ToBackend`` actions for ``tcp:`` and ``tls:``
tenants. Each such tenant gets one :class:`_TenantLink`: the sans-IO
:class:`~mcs_edge.core.sip.backend.BackendLink` decides when to connect, ping, give up and retry;
this adapter opens the socket (``TCP4ClientEndpoint``/``TCP6ClientEndpoint``, wrapped in TLS with
``wrapClientTLS`` for ``tls:``), writes, aborts, and re-arms the link's one timer. Names in
``backend_sip`` are resolved by the ``resolve`` collaborator (tx/sip/resolver.py) just before each
connect. Requests the PBX sends over the link are handed to the router like any backend input.

TLS toward the PBX verifies its certificate against ``backend_tls.ca`` (or the system store) for
``backend_tls.server_name`` (default: the ``backend_sip`` host, IP addresses included), and
presents ``backend_tls.cert_file`` when configured. The link counts as connected only once the
handshake (and so the verification) succeeded.

A PBX may also open a TCP connection to ``listen.backend_sip`` (for example toward our
Record-Route); :meth:`BackendConnections.inbound_factory` accepts those from tenant PBX
addresses only. Responses and requests whose destination is such a connection's peer go back on
it; everything else for the tenant uses its link.

Messages that could not be sent (link in backoff, connect failed, queue full) are reported with
``on_dropped(tenant_id, reason)``: the router fails the tenant's pending requests with 503 at once.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Metric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcs_edge.core.sip.backend import (
    Abort,
    BackendLink,
    Connect,
    ConnectionLost,
    Dropped,
    LinkSettings,
    LinkState,
    Write,
)
from mcs_edge.core.sip.framing import PONG, KeepalivePing, KeepalivePong, MessageBytes, StreamFramer
from mcs_edge.core.sip.message import Limits
from mcs_edge.errors import RemoteProtocolError

if TYPE_CHECKING:
    from mcs_edge.config import Backend, EdgeConfig, TenantConfig
    from mcs_edge.tx.timers import Timers

__all__ = ["BackendConnections", "client_tls_options", "link_settings"]

Addr = tuple[str, int]
#: resolve(tenant, backend) -> Deferred firing with the address to connect to (tx/sip/resolver.py)
Resolve = Callable[["TenantConfig", "Backend"], "defer.Deferred[Addr]"]


def link_settings(config: EdgeConfig) -> LinkSettings:
    sip = config.sip
    return LinkSettings(
        keepalive=sip.backend_keepalive,
        connect_timeout=sip.backend_connect_timeout,
        max_backoff=sip.backend_max_backoff,
    )


def client_tls_options(config: EdgeConfig, tenant: TenantConfig) -> Any:
    """The TLS client options toward ``tenant``'s PBX (verification on, always)."""
    tls = tenant.backend_tls
    name = tls.server_name or tenant.backend_sip.host
    if tls.ca is not None:
        pem = Path(config.resolve(tls.ca)).read_bytes()
        certs = [Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part) for part in _pem_parts(pem)]
        trust = trustRootFromCertificates(certs)
    else:
        trust = platformTrust()
    client = None
    if tls.cert_file is not None and tls.key_file is not None:
        chain = Path(config.resolve(tls.cert_file)).read_bytes()
        key = Path(config.resolve(tls.key_file)).read_bytes()
        client = PrivateCertificate.loadPEM(chain + b"\n" + key)
    return optionsForClientTLS(name, trustRoot=trust, clientCertificate=client)


def _pem_parts(pem: bytes) -> list[bytes]:
    parts = pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
    if not parts:
        raise ValueError("no certificate in the CA file")
    return parts


class _Stream(Protocol):
    """Framing, keepalive answers and liveness for one connection to or from a PBX."""

    def __init__(self, owner: Any, transport_name: str, max_size: int) -> None:
        self.owner = owner  # a _TenantLink or the BackendConnections (inbound)
        self.transport_name = transport_name
        self.framer = StreamFramer(Limits(max_message_size=max_size), expect_pongs=True)
        self.peer: Addr = ("", 0)
        self.up = False

    def connectionMade(self) -> None:  # noqa: N802
        peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer = (str(ipaddress.ip_address(peer.host)), int(peer.port))
        if not IHandshakeListener.providedBy(self) or self.transport_name != "tls":
            self.up = True
            self.owner.stream_up(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        try:
            events = self.framer.feed(data)
        except RemoteProtocolError as exc:
            self.owner.stream_garbage(self, str(exc))
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        for ev in events:
            if isinstance(ev, MessageBytes):
                self.owner.stream_message(self, ev.data)
            elif isinstance(ev, KeepalivePing):
                self.write(PONG)
                self.owner.stream_alive(self)
            elif isinstance(ev, KeepalivePong):
                self.owner.stream_alive(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: N802, B008
        self.owner.stream_lost(self, _reason(reason))


@implementer(IHandshakeListener)
class _TlsStream(_Stream):
    def handshakeCompleted(self) -> None:  # noqa: N802
        self.up = True
        self.owner.stream_up(self)


class _LinkFactory(Factory):
    def __init__(self, link: _TenantLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> _Stream:  # noqa: N802
        cls = _TlsStream if self.link.backend.transport == "tls" else _Stream
        stream = cls(self.link, self.link.backend.transport, self.link.owner.max_size)
        self.link.stream = stream  # before connectionMade: that may already report it up
        return stream


@dataclass(frozen=True, slots=True)
class LinkStatus:
    tenant: str
    target: str
    state: str
    failures: int
    last_error: str
    peer: Addr | None


class _TenantLink:
    """One tenant's persistent connection: the core link plus its socket, attempt and timer."""

    def __init__(self, owner: BackendConnections, tenant: TenantConfig) -> None:
        self.owner = owner
        self.tenant = tenant
        self.backend = tenant.backend_sip
        self.core = BackendLink(owner.settings, owner.rand)
        self.stream: _Stream | None = None
        self.attempt: defer.Deferred[Any] | None = None
        self._call: Any = None
        self._deadline: float | None = None
        self.logged_down = False

    # -- stream callbacks
    def stream_up(self, stream: _Stream) -> None:
        if stream is not self.stream:
            stream.abort()
            return
        self.core.connected(self.owner.now())
        self.owner.count("backend_connects", self.tenant.id, self.backend.transport)
        self.owner.log.info(
            "SIP210 {tenant} connected to its PBX {target} ({peer})",
            tenant=self.tenant.id,
            target=str(self.backend),
            peer=f"{stream.peer[0]}:{stream.peer[1]}",
        )
        self.logged_down = False
        self.run()

    def stream_message(self, stream: _Stream, data: bytes) -> None:
        if stream is not self.stream:
            return
        self.core.received(self.owner.now())
        self.owner.deliver(data, stream.peer, self.backend.transport)
        self.run()

    def stream_alive(self, stream: _Stream) -> None:
        if stream is self.stream:
            self.core.received(self.owner.now())
            self.run()

    def stream_garbage(self, stream: _Stream, reason: str) -> None:
        self.owner.count("backend_stream_garbage", self.tenant.id, self.backend.transport)
        self.owner.log.info(
            "SIP413 {tenant} PBX stream {target} closed: {reason}",
            tenant=self.tenant.id,
            target=str(self.backend),
            reason=reason,
        )

    def stream_lost(self, stream: _Stream, reason: str) -> None:
        if stream is not self.stream:
            return
        self.stream = None
        now = self.owner.now()
        if stream.up:
            self.core.lost(reason, now)
        else:
            self.core.connect_failed(reason, now)
        self.run()

    # -- driving the core
    def send(self, data: bytes) -> None:
        self.core.send(data, self.owner.now())
        self.run()

    def run(self) -> None:
        core = self.core
        while (action := core.next_action()) is not None:
            if isinstance(action, Write):
                if self.stream is not None:
                    self.stream.write(action.data)
            elif isinstance(action, Connect):
                self._connect()
            elif isinstance(action, Abort):
                self._abort()
            elif isinstance(action, Dropped):
                self.owner.dropped(self.tenant.id, action.count, action.reason)
            elif isinstance(action, ConnectionLost):  # what was sent on it will not be answered
                self.owner.on_dropped(self.tenant.id, f"connection to the PBX lost ({action.reason})")
        if core.state is LinkState.BACKOFF and not self.logged_down:
            self.logged_down = True
            self.owner.count("backend_connect_failures", self.tenant.id, self.backend.transport)
            self.owner.log.warn(
                "SIP410 {tenant} cannot reach its PBX {target}: {reason}; retrying with backoff",
                tenant=self.tenant.id,
                target=str(self.backend),
                reason=core.last_error,
            )
        elif core.state is LinkState.BACKOFF:
            self.owner.count("backend_connect_failures", self.tenant.id, self.backend.transport)
        self._arm()

    def _arm(self) -> None:
        deadline = self.core.get_timer()
        if deadline == self._deadline and self._call is not None and self._call.active():
            return
        self.owner.timers.cancel(self._call)
        self._call = None
        self._deadline = deadline
        if deadline is not None:
            self._call = self.owner.timers.call_later(deadline - self.owner.now(), self._fire)

    def _fire(self) -> None:
        self._call = None
        self._deadline = None
        self.core.handle_timer(self.owner.now())
        self.run()

    def _connect(self) -> None:
        self._abort()
        owner = self.owner
        try:
            options = owner.tls_options(self.tenant) if self.backend.transport == "tls" else None
        except (OSError, ValueError) as exc:  # unreadable CA/client certificate
            self.core.connect_failed(f"TLS settings: {exc}", owner.now())
            return
        d = owner.resolve(self.tenant, self.backend)
        self.attempt = d

        def resolved(addr: Addr) -> Any:
            if self.attempt is not d:
                return None
            host, port = addr
            cls = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
            endpoint: Any = cls(owner.reactor, host, port, timeout=owner.settings.connect_timeout)
            if options is not None:
                endpoint = wrapClientTLS(options, endpoint)
            factory = _LinkFactory(self)
            connecting = endpoint.connect(factory)
            self.attempt = connecting
            return connecting.addCallback(connected)

        def connected(_stream: _Stream) -> None:
            self.attempt = None

        def failed(failure: Failure) -> None:
            if self.attempt is None or failure.check(defer.CancelledError):
                return
            self.attempt = None
            self.core.connect_failed(_reason(failure), owner.now())
            self.run()

        d.addCallback(resolved).addErrback(failed)

    def _abort(self) -> None:
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            attempt.cancel()
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.abort()

    def close(self, reason: str) -> None:
        self.core.close(reason)
        self.run()
        self._abort()
        self.owner.timers.cancel(self._call)
        self._call = None

    def status(self) -> LinkStatus:
        return LinkStatus(
            self.tenant.id,
            str(self.backend),
            self.core.state.value,
            self.core.failures,
            self.core.last_error,
            self.stream.peer if self.stream is not None else None,
        )


class BackendConnections:
    """Every stream connection toward or from the tenants' PBXs (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        config: EdgeConfig,
        reactor: Any,
        timers: Timers,
        deliver: Callable[[bytes, Addr, str], None],
        on_dropped: Callable[[str, str], None],
        resolve: Resolve | None = None,
        rand: Callable[[], float] = random.random,
        accept: Callable[[str], bool] = lambda _ip: False,
    ) -> None:
        """``accept(ip)``: ``ip`` is a tenant PBX address (inbound connections from others are refused)."""
        self.config = config
        self.reactor = reactor
        self.timers = timers
        self.now = timers.now
        self.deliver = deliver
        self.on_dropped = on_dropped
        self.resolve: Resolve = resolve or _literal
        self.rand = rand
        self.settings = link_settings(config)
        self.max_size = config.sip.max_message_size
        self.links: dict[str, _TenantLink] = {}
        self.inbound: dict[Addr, _Stream] = {}
        self.counters: dict[tuple[str, str, str], int] = {}
        self.accept = accept

    def tls_options(self, tenant: TenantConfig) -> Any:
        return client_tls_options(self.config, tenant)

    def count(self, name: str, tenant: str, reason: str = "") -> None:
        key = (name, tenant, reason)
        self.counters[key] = self.counters.get(key, 0) + 1

    # -- sending
    def send(self, tenant: TenantConfig, transport: str, addr: Addr, data: bytes) -> None:
        inbound = self.inbound.get(addr)
        if inbound is not None and inbound.transport_name == transport:
            inbound.write(data)
            return
        if tenant.backend_sip.transport != transport:
            self.count("backend_send_errors", tenant.id, f"transport {transport} not configured")
            return
        link = self.links.get(tenant.id)
        if (
            link is None
            or link.backend != tenant.backend_sip
            or link.tenant.backend_tls != tenant.backend_tls
        ):
            if link is not None:
                link.close("backend changed")
            link = self.links[tenant.id] = _TenantLink(self, tenant)
        link.tenant = tenant
        link.send(data)

    def dropped(self, tenant_id: str, count: int, reason: str) -> None:
        self.counters[("backend_dropped", tenant_id, "")] = (
            self.counters.get(("backend_dropped", tenant_id, ""), 0) + count
        )
        self.on_dropped(tenant_id, reason)

    # -- configuration and lifecycle
    def update(self, config: EdgeConfig, tenants: Any) -> None:
        """A reload: links of removed tenants, or whose PBX settings changed, are closed."""
        self.config = config
        self.settings = link_settings(config)
        self.max_size = config.sip.max_message_size
        for tid, link in list(self.links.items()):
            current = tenants.by_id(tid)
            if (
                current is None
                or current.backend_sip != link.backend
                or current.backend_tls != link.tenant.backend_tls
            ):
                link.close("tenant removed or its PBX changed")
                del self.links[tid]
            else:
                link.tenant = current

    def addresses_changed(self, addresses: Callable[[Backend], tuple[Addr, ...]]) -> None:
        """A PBX name now resolves elsewhere: a link still connected to an old address reconnects."""
        for link in self.links.values():
            stream = link.stream
            if stream is None or not stream.up:
                continue
            now_at = addresses(link.backend)
            if now_at and stream.peer not in now_at:
                self.log.info(
                    "SIP212 {tenant} PBX {target} moved to {addresses}: reconnecting",
                    tenant=link.tenant.id,
                    target=str(link.backend),
                    addresses=" ".join(f"{h}:{p}" for h, p in now_at),
                )
                stream.abort()

    def stop(self) -> None:
        for link in self.links.values():
            link.close("edge shutting down")
        self.links.clear()
        for stream in list(self.inbound.values()):
            stream.abort()
        self.inbound.clear()

    def status(self) -> list[LinkStatus]:
        return [link.status() for link in self.links.values()]

    def collect(self) -> Iterator[Metric]:
        """Metric families (collector ``backend_streams``): link state per tenant, counters."""
        up = GaugeMetricFamily(
            "mcs_edge_backend_connection_open",
            "1 while the tenant's tcp:/tls: connection to its PBX is open",
            labels=["tenant", "transport"],
        )
        for link in self.links.values():
            up.add_metric([link.tenant.id, link.backend.transport], 1 if link.core.is_open else 0)
        yield up
        inbound = GaugeMetricFamily("mcs_edge_backend_inbound_connections", "TCP connections opened by PBXs")
        inbound.add_metric([], len(self.inbound))
        yield inbound
        events = CounterMetricFamily(
            "mcs_edge_backend_stream_events",
            "tcp:/tls: PBX connection events (connect failures, dropped messages, refused, garbage)",
            labels=["event", "tenant", "reason"],
        )
        for (name, tenant, reason), n in sorted(self.counters.items()):
            events.add_metric([name, tenant, reason], n)
        yield events

    # -- connections opened by PBXs (TCP on listen.backend_sip)
    def inbound_factory(self) -> Factory:
        return _InboundFactory(self)

    def stream_up(self, stream: _Stream) -> None:
        if not self.accept(stream.peer[0]):
            self.count("backend_inbound_refused", "", stream.transport_name)
            stream.abort()
            return
        self.inbound[stream.peer] = stream

    def stream_message(self, stream: _Stream, data: bytes) -> None:
        if self.inbound.get(stream.peer) is stream:
            self.deliver(data, stream.peer, stream.transport_name)

    def stream_alive(self, stream: _Stream) -> None:
        return None

    def stream_garbage(self, stream: _Stream, reason: str) -> None:
        self.count("backend_stream_garbage", "", stream.transport_name)

    def stream_lost(self, stream: _Stream, reason: str) -> None:
        if self.inbound.get(stream.peer) is stream:
            del self.inbound[stream.peer]


class _InboundFactory(Factory):
    def __init__(self, owner: BackendConnections) -> None:
        self.owner = owner

    def buildProtocol(self, addr: Any) -> _Stream:  # noqa: N802
        return _Stream(self.owner, "tcp", self.owner.max_size)


def _literal(tenant: TenantConfig, backend: Backend) -> defer.Deferred[Addr]:
    return defer.succeed((backend.host, backend.port))


def _reason(failure: Failure) -> str:
    value = failure.value
    text = str(value) or type(value).__name__
    return text[:200]
