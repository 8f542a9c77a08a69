"""STUN/TURN adapters: UDP and TCP on ``listen.turn``, TLS on ``listen.https`` (shared) and ``listen.turns``.

Theory of operation
-------------------
Each listener owns one sans-IO :class:`~mcs_edge.core.stun.turn.TurnServer` (allocations are keyed
by the client's transport address, which is unique per listener) and one
:class:`~mcs_edge.tx.timers.CoreTimer`. The adapter only moves bytes: it feeds datagrams or stream
frames to the core and executes the returned actions (send to a client, send to a peer from a relay
socket, log an allocation's start and end).

Transports:

* **UDP** (``listen.turn``): one datagram = one STUN message or ChannelData.
* **TCP** (``listen.turn``) and **TLS** (``listen.turns``, and ``listen.https`` when
  ``turn.tls_on_https``): a byte stream cut into frames with
  :func:`~mcs_edge.core.stun.channel_data.stream_frame_length`; a stream that is neither STUN nor
  ChannelData, or whose buffered input would exceed one maximal frame, is closed. When the
  connection closes its allocation goes (RFC 8656 s.5).
* **The shared HTTPS port**: :class:`~mcs_edge.tx.tls.front.TlsFrontFactory` sits between the
  TLS layer and the web ``Site`` and hands each connection to TURN (ALPN ``stun.turn``, RFC 7443,
  or a first byte below 0x40: STUN) or to the web site (an HTTP method), once.

Tenancy. On TLS the SNI name binds the connection to its tenant: challenges carry that tenant's
realm and credentials of another tenant are refused (401). On UDP/TCP (and TLS without SNI)
the challenge realm is ``turn.realm`` and the tenant comes from the credentials: the REST username
is ``"<expiry>:<user>@<tenant id>"`` (what :mod:`mcs_edge.tx.turn.api` issues); a username without the
suffix is accepted when the realm the client echoes is a tenant's realm. The password is
``base64(HMAC-SHA1(tenant.turn_secret, username))``.

Relays. :class:`RelayPool` implements the core's ``RelayAllocator``: it takes a port from a
:class:`~mcs_edge.core.media.ports.PortAllocator` over ``media.ports`` (the service passes the media
relay's own allocator, so both share one pool), binds the socket at once (a port found busy is skipped, up to a few tries, then the
core answers 508) and closes it and returns the port in ``release``, which the core calls on every
deletion path (Refresh 0, expiry, connection loss, shutdown). The sockets (relays and the UDP
listener) are :class:`~mcs_edge.tx.relay_endpoint.RelayEndpoint` objects, as the media relay's: on
Twisted's asyncio reactor the loop's native datagram endpoints, whose per-packet handler *is* the
owner's ``datagram_received`` (one Python call per packet, see DESIGN.md); ``listenUDP`` on other
reactors. The advertised relayed address is ``edge.public_address``
with the bound port. The hot paths use the core's tuple forms (``channel_data``, ``peer_data``)
and the relay object attached to the allocation (``TurnServer.attach``): per packet, a handful of
dictionary lookups, one policer and one ``sendto``.

Safety. Peers are checked by :class:`TurnPolicy` on CreatePermission/ChannelBind: restricted
networks (loopback, private, link-local, multicast...) and the edge's own addresses are refused
(403) unless inside the tenant's ``turn_peers``. The one exception is the edge's public relay
address when it is a public IP, so two relay-only clients of the same edge can reach each other;
per packet, a datagram to one of the edge's own addresses is dropped unless its port is in the
relay range, so no allow-list ever reaches the edge's own services. Each allocation's traffic is
policed in each direction by a policer at the tenant's shaping rate (the service's media leg
policers: leg bucket inside the tenant's media aggregate). The TCP/TLS listeners are wrapped by the
service's per-source guard (``wrap_listener``).

Metrics (:meth:`TurnService.collect`) are read from the cores' counters at scrape time.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Metric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.application.service import MultiService, Service
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from mcs_edge.core.media.ports import PortAllocator
from mcs_edge.core.shaping import Policer, TokenBucket
from mcs_edge.core.stun.channel_data import CHANNEL_MAX, LEGACY_CHANNEL_MAX, stream_frame_length
from mcs_edge.core.stun.message import ADDRESS_FAMILY_IPV4, ADDRESS_FAMILY_IPV6
from mcs_edge.core.stun.peer_policy import PeerPolicy, is_restricted_ip
from mcs_edge.core.stun.turn import (
    AllocationCreated,
    AllocationDeleted,
    SendToClient,
    SendToPeer,
    TurnAction,
    TurnQuota,
    TurnServer,
)
from mcs_edge.errors import RemoteProtocolError
from mcs_edge.tx.native_stream import tcp_server
from mcs_edge.tx.ops.logs import RateLimitedLog
from mcs_edge.tx.ops.workers import reuse_port_for
from mcs_edge.tx.relay_endpoint import RelayEndpoint, RelayEndpoints
from mcs_edge.tx.timers import CoreTimer, Timers, wall_clock
from mcs_edge.tx.tls.certificates import tls_server_name
from mcs_edge.tx.tls.front import TlsFrontFactory
from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory, TlsStats

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from mcs_edge.config import EdgeConfig, TenantConfig
    from mcs_edge.core.tenants import TenantTable
    from mcs_edge.tx.tls.certificates import CertificateStore

__all__ = [
    "ALPN_STUN_TURN",
    "RelayPool",
    "TurnListener",
    "TurnPolicy",
    "TurnService",
    "TurnStreamProtocol",
    "turn_alpn",
    "turn_enabled",
    "turn_username",
]

Addr = tuple[str, int]

ALPN_STUN_TURN = b"stun.turn"
#: the largest stream frame: a STUN message (20 + 65535) or padded ChannelData (4 + 65536)
MAX_FRAME = 20 + 0xFFFF
_BIND_TRIES = 8
#: seconds a TCP/TLS TURN connection may stay open without an allocation
STREAM_IDLE = 60.0
_LOG_EVERY = 10.0


def turn_username(expiry: int, user: str, tenant_id: str) -> str:
    """The REST username the edge issues: ``"<expiry>:<user>@<tenant id>"``."""
    return f"{expiry}:{user}@{tenant_id}"


def tenant_realm(tenant: TenantConfig) -> str:
    """The realm of ``tenant``: its first domain that is not a wildcard (else its id)."""
    for domain in tenant.domains:
        if not domain.startswith("*."):
            return domain
    return tenant.id


def turn_enabled(config: EdgeConfig) -> bool:
    """True when any TURN listener is configured (``listen.turn``, ``listen.turns``, ``turn.tls_on_https``)."""
    return config.listen.turn is not None or config.listen.turns is not None or config.turn.tls_on_https


def turn_alpn(config: EdgeConfig) -> tuple[bytes, ...]:
    """ALPN names the TLS listeners must also accept for TURN (``stun.turn``, RFC 7443)."""
    return (ALPN_STUN_TURN,) if config.turn.tls_on_https or config.listen.turns is not None else ()


# --- policy (rebuilt on reload) -------------------------------------------------------------------


class TurnPolicy:
    """Tenants' realms, secrets, quotas, peer rules and shaping rates for the TURN cores."""

    def __init__(self, config: EdgeConfig, tenants: TenantTable[TenantConfig]) -> None:
        self.config = config
        self.realm = config.turn.realm
        self._by_id: dict[str, TenantConfig] = {t.id: t for t in tenants}
        self._by_realm: dict[str, TenantConfig] = {tenant_realm(t): t for t in tenants}
        self._secrets: dict[str, bytes] = {
            t.id: t.turn_secret.encode() for t in tenants if t.turn_secret is not None
        }
        self.quota = TurnQuota(config.turn.max_allocations_per_user, config.turn.max_allocations_per_tenant)
        self.public_ip = config.edge.public_address
        self.relay_range = config.media.ports
        own = {config.edge.public_address, config.edge.backend_address}
        listen = config.listen
        for hp in (listen.https, listen.sip_tls, listen.backend_sip, listen.admin, listen.http):
            if hp is not None:
                own.add(hp.host)
        for hp in (listen.turn, listen.turns):
            if hp is not None:
                own.add(hp.host)
        if config.turn.relay_interface is not None:
            own.add(config.turn.relay_interface)
        own = {ip for ip in own if not ipaddress.ip_address(ip).is_unspecified}
        #: the edge's own addresses: a packet to one of them must go to a relay port
        self.own_ips = frozenset(own)
        self._peers = PeerPolicy(
            own_addresses=own,
            tenant_allow_networks={t.id: t.turn_peers for t in tenants if t.turn_peers},
        )
        #: relay-to-relay on this edge is allowed when the relayed address is a public IP
        self._relay_peer_ok = not is_restricted_ip(self.public_ip)

    def lookup(self, realm: str, username: str) -> tuple[str, bytes] | None:
        """``(tenant id, secret)`` for a request's REALM and USERNAME (see the module docstring)."""
        user = username.partition(":")[2]
        _name, at, tenant_id = user.rpartition("@")
        by_user = self._by_id.get(tenant_id) if at else None
        by_realm = self._by_realm.get(realm)
        tenant = by_user or by_realm
        if tenant is None or (by_realm is not None and by_realm is not tenant):
            return None
        if realm != self.realm and realm != tenant_realm(tenant):
            return None
        secret = self._secrets.get(tenant.id)
        return None if secret is None else (tenant.id, secret)

    def quota_for(self, _tenant_id: str) -> TurnQuota:
        return self.quota

    def peer_allowed(self, tenant_id: str, ip: str) -> bool:
        if self._relay_peer_ok and ip == self.public_ip:
            return True
        return self._peers(tenant_id, ip)

    def rate_of(self, tenant_id: str) -> tuple[int, int]:
        tenant = self._by_id.get(tenant_id)
        if tenant is None:
            return self.config.shaping.rate, self.config.shaping.burst
        return self.config.tenant_rate(tenant)


# --- relay sockets -------------------------------------------------------------------------------


class _Relay:
    """One allocation's relay socket: peer datagrams in, client-bound data out, two policers."""

    __slots__ = (
        "addr",
        "endpoint",
        "errors",
        "listener",
        "now",
        "peer_data",
        "policer_in",
        "policer_out",
        "port",
        "sendto",
        "tenant",
    )

    def __init__(self, listener: TurnListener, addr: Addr, port: int) -> None:
        self.listener = listener
        self.addr = addr
        self.port = port
        self.tenant = ""
        self.endpoint: RelayEndpoint | None = None
        #: the endpoint's sendto (the loop's own once its endpoint exists)
        self.sendto: Callable[[bytes, Addr], None] = _discard
        self.errors = 0
        self.now = listener.now
        self.peer_data = listener.server.peer_data
        # admit nothing until attach() installs the tenant's policers (toward client / toward peer)
        self.policer_in = self.policer_out = Policer(TokenBucket(0.0, 0.0, 0.0))

    def ready(self, sendto: Callable[[bytes, Addr], None]) -> None:
        self.sendto = sendto

    def socket_error(self, _kind: str) -> None:
        self.errors += 1  # e.g. ICMP unreachable from a gone peer: counted, nothing else

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """A datagram from a peer: the per-packet path toward the client."""
        if len(addr) != 2:
            addr = (addr[0], addr[1])
        now = self.now()
        hit = self.peer_data(self.addr, addr, data, now)
        if hit is None:
            return
        out = hit[1]
        if not self.policer_in.admit(len(out), now):
            self.listener.dropped_policed += 1
            return
        self.listener.send_to_client(hit[0], out)

    def close(self) -> None:
        """Close the socket; an asyncio endpoint still being created closes itself on arrival."""
        self.sendto = _discard
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None


def _discard(_data: bytes, _addr: Addr) -> None:
    return None


class RelayPool:
    """The TURN cores' ``RelayAllocator``: relay ports from the media range, sockets bound at once."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        ports: PortAllocator,
        bind_ip: str,
        public_ip: str,
        now: Callable[[], float],
        leg_policer: Callable[[str], Policer] | None = None,
    ) -> None:
        self.reactor = reactor
        self.ports = ports
        self.leg_policer = leg_policer
        self.bind_ip = bind_ip
        self.public_ip = public_ip
        self.now = now
        self.endpoints = RelayEndpoints(reactor)
        self.family = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
        #: live relays by relayed address
        self.relays: dict[Addr, _Relay] = {}
        self.bind_failures = 0
        #: ports found busy, withheld from the allocator until it runs dry (or shutdown)
        self.busy: list[int] = []

    def __len__(self) -> int:
        return len(self.relays)

    def for_listener(self, listener: TurnListener) -> _ListenerAllocator:
        return _ListenerAllocator(self, listener)

    def allocate(self, listener: TurnListener, tenant: str, family: int, even_port: bool) -> Addr | None:
        want = ADDRESS_FAMILY_IPV6 if self.family == socket.AF_INET6 else ADDRESS_FAMILY_IPV4
        if family != want:
            return None
        retried = False
        for _ in range(_BIND_TRIES):
            alloc = self.ports.allocate(rtcp_mux=not even_port)
            if alloc is None:
                if retried or not self.busy:
                    return None
                self._release_busy()  # the range ran dry: give the withheld ports one more chance
                retried = True
                continue
            port = alloc.rtp_port
            relay = _Relay(listener, (self.public_ip, port), port)
            relay.tenant = tenant
            if self._bind(relay):
                self.relays[relay.addr] = relay
                return relay.addr
            # Taken by another socket (another process, an ephemeral port): withhold it, or the
            # allocator (which hands a just-released single port out first) would offer it again.
            self.busy.append(port)
            self.bind_failures += 1
        return None

    def _release_busy(self) -> None:
        busy, self.busy = self.busy, []
        for port in busy:
            self.ports.release(port)

    def _bind(self, relay: _Relay) -> bool:
        try:
            relay.endpoint = self.endpoints.open(
                self.bind_ip,
                relay.port,
                relay.datagram_received,
                on_ready=relay.ready,
                on_error=relay.socket_error,
                on_failed=lambda exc: self.log.error(
                    "TRN501 relay endpoint on port {port} failed: {err}", port=relay.port, err=exc
                ),
            )
        except CannotListenError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                self.log.error(
                    "TRN500 relay bind {ip}:{port} failed: {err}", ip=self.bind_ip, port=relay.port, err=exc
                )
            return False
        return True

    def release(self, relay_addr: Addr) -> None:
        relay = self.relays.pop(relay_addr, None)
        if relay is None:
            return
        relay.close()
        self.ports.release(relay.port)

    def attach(self, relay_addr: Addr, tenant: str, rate: int, burst: int, now: float) -> _Relay | None:
        """Start policing ``relay_addr`` at the tenant's rate (on AllocationCreated): the service's
        media leg policers (leg bucket inside the tenant's media aggregate) when given, else a
        plain bucket per direction."""
        relay = self.relays.get(relay_addr)
        if relay is not None:
            relay.tenant = tenant
            if self.leg_policer is not None:
                relay.policer_in = self.leg_policer(tenant)
                relay.policer_out = self.leg_policer(tenant)
            else:
                relay.policer_in = Policer(TokenBucket(rate, burst, now))
                relay.policer_out = Policer(TokenBucket(rate, burst, now))
        return relay

    def close(self) -> None:
        """Shutdown: close whatever is still open (the cores released their allocations first)."""
        for relay_addr in list(self.relays):
            self.release(relay_addr)
        self._release_busy()
        self.endpoints.close()


class _ListenerAllocator:
    """The pool as seen by one listener's core (relays remember which listener owns them)."""

    __slots__ = ("listener", "pool")

    def __init__(self, pool: RelayPool, listener: TurnListener) -> None:
        self.pool = pool
        self.listener = listener

    def allocate(self, tenant: str, family: int, even_port: bool) -> Addr | None:
        return self.pool.allocate(self.listener, tenant, family, even_port)

    def release(self, relay: Addr) -> None:
        self.pool.release(relay)


# --- listeners -----------------------------------------------------------------------------------


class TurnListener:
    """One listener's TURN core, timer and client transports (UDP socket or stream connections)."""

    log = Logger()

    def __init__(self, turn: TurnService, name: str, *, stream: bool) -> None:
        self.turn = turn
        self.name = name
        self.stream = stream
        self.now = turn.now
        self.pool = turn.pool
        # the lambdas read turn.policy at call time, so a reload applies to every later request
        self.server = TurnServer(
            realm=turn.policy.realm,
            lookup=lambda realm, username: turn.policy.lookup(realm, username),
            relay_allocator=turn.pool.for_listener(self),
            peer_allowed=lambda tenant, ip: turn.policy.peer_allowed(tenant, ip),
            quota_for=lambda tenant: turn.policy.quota_for(tenant),
            stream=stream,
            random_bytes=secrets.token_bytes,
            nonce_secret=turn.nonce_secret,
            nonce_lifetime=turn.config.turn.nonce_lifetime,
            default_lifetime=turn.config.turn.default_lifetime,
            max_lifetime=turn.config.turn.max_lifetime,
            families=frozenset(
                {ADDRESS_FAMILY_IPV6 if ":" in turn.config.edge.public_address else ADDRESS_FAMILY_IPV4}
            ),
            channel_max=LEGACY_CHANNEL_MAX if turn.config.turn.legacy_channels else CHANNEL_MAX,
        )
        #: highest first byte of ChannelData (0x4F, or 0x7F with legacy channel numbers)
        self.cd_max = self.server.channel_first_max
        self.channel_data = self.server.channel_data
        self.timer = CoreTimer(turn.timers, self.server, self.run)
        self.endpoint: RelayEndpoint | None = None  # UDP
        self.sendto: Callable[[bytes, Addr], None] = _discard
        self.conns: dict[Addr, TurnStreamProtocol] = {}
        self.errors = 0
        self.dropped_policed = 0
        self.dropped_own = 0
        self.dropped_not_ready = 0
        self.dropped_no_client = 0
        self._own_ips = turn.policy.own_ips
        self._relay_lo, self._relay_hi = turn.policy.relay_range

    # -- UDP --------------------------------------------------------------------------------------
    def ready(self, sendto: Callable[[bytes, Addr], None]) -> None:
        self.sendto = sendto

    def socket_error(self, _kind: str) -> None:
        self.errors += 1  # e.g. ICMP unreachable from a gone client: counted, nothing else

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """A datagram from a client on the UDP listener (ChannelData: the per-packet path to peers)."""
        if len(addr) != 2:
            addr = (addr[0], addr[1])
        if data and 0x40 <= data[0] <= self.cd_max:
            now = self.now()
            hit = self.channel_data(data, addr, now)
            if hit is not None:
                self.to_peer(hit[0], hit[1], hit[2], now)
            return
        self.receive(data, addr)

    # -- both -------------------------------------------------------------------------------------
    def receive(self, data: bytes, client: Addr, realm: str | None = None, tenant: str | None = None) -> None:
        """A STUN message (control path) from ``client``."""
        try:
            actions = self.server.receive(
                data, client, self.now(), self.turn.wall(), realm=realm, tenant=tenant
            )
        except Exception:  # never into the reactor: the core is tested not to raise
            self.log.failure("TRN502 {listener}: TURN core raised on input", listener=self.name)
            return
        self.run(actions)
        self.timer.arm()

    def to_peer(self, relay: object, peer: Addr, data: bytes, now: float) -> None:
        """Send one datagram from its allocation's relay socket (the per-packet path toward peers);
        ``relay`` is the :class:`_Relay` attached to the allocation, or its relayed address."""
        if relay.__class__ is not _Relay:
            relay = self.pool.relays.get(relay)  # type: ignore[call-overload]
            if relay is None:
                self.dropped_not_ready += 1
                return
        if peer[0] in self._own_ips and not self._relay_lo <= peer[1] <= self._relay_hi:
            self.dropped_own += 1
            return
        if not relay.policer_out.admit(len(data), now):  # type: ignore[attr-defined]
            self.dropped_policed += 1
            return
        relay.sendto(data, peer)  # type: ignore[attr-defined]

    def send_to_client(self, client: Addr, data: bytes) -> None:
        if self.stream:
            conn = self.conns.get(client)
            if conn is None or conn.transport is None:
                self.dropped_no_client += 1
                return
            conn.transport.write(data)
        else:
            self.sendto(data, client)

    def run(self, actions: list[TurnAction] | None) -> None:
        """Execute the core's actions."""
        if not actions:
            return
        now = self.now()
        for action in actions:
            if isinstance(action, SendToClient):
                self.send_to_client(action.client, action.data)
            elif isinstance(action, SendToPeer):
                self.to_peer(action.relay, action.peer, action.data, now)
            elif isinstance(action, AllocationCreated):
                rate, burst = self.turn.policy.rate_of(action.tenant)
                relay = self.pool.attach(action.relay, action.tenant, rate, burst, now)
                if relay is not None:
                    self.server.attach(action.relay, relay)
                conn = self.conns.get(action.client) if self.stream else None
                if conn is not None:
                    conn.allocated()
                self.log.info(
                    "TRN100 {listener} allocation {relay} for {tenant} user {user} from {client} ({lifetime:.0f} s)",
                    listener=self.name,
                    relay=f"{action.relay[0]}:{action.relay[1]}",
                    tenant=action.tenant,
                    user=action.username.partition(":")[2],
                    client=f"{action.client[0]}:{action.client[1]}",
                    lifetime=action.lifetime,
                )
            elif isinstance(action, AllocationDeleted):
                conn = self.conns.get(action.client) if self.stream else None
                if conn is not None and action.reason in ("refresh", "expired"):
                    conn.unallocated()
                self.log.info(
                    "TRN101 {listener} allocation {relay} of {tenant} ended: {reason}",
                    listener=self.name,
                    relay=f"{action.relay[0]}:{action.relay[1]}",
                    tenant=action.tenant,
                    reason=action.reason,
                )

    def client_gone(self, client: Addr) -> None:
        self.conns.pop(client, None)
        self.run(self.server.client_gone(client))
        self.timer.arm()

    def close(self) -> None:
        """Shutdown: every allocation deleted (relays released), timer cancelled, sockets closed."""
        self.run(self.server.close())
        self.timer.cancel()
        for conn in list(self.conns.values()):
            if conn.transport is not None:
                conn.transport.abortConnection()
        self.conns.clear()
        self.sendto = _discard
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            endpoint.close()

    def counters(self) -> dict[str, int]:
        out = self.server.counters.as_dict()
        out.update(
            dropped_policed=self.dropped_policed,
            dropped_own_address=self.dropped_own,
            dropped_relay_not_ready=self.dropped_not_ready,
            dropped_client_gone=self.dropped_no_client,
            socket_errors=self.errors,
            allocations=len(self.server),
        )
        return out


class TurnStreamProtocol(Protocol):
    """One TURN client over TCP or TLS: STUN/ChannelData frames in, one allocation at most."""

    log = Logger()
    transport: Any = None

    def __init__(self, listener: TurnListener, tls: bool) -> None:
        self.listener = listener
        self.tls = tls
        self.client: Addr = ("", 0)
        self._buf = b""
        self._bound = False
        self._realm: str | None = None
        self._tenant: str | None = None
        self._idle: Any = None

    def connectionMade(self) -> None:  # noqa: N802
        peer = self.transport.getPeer()
        self.client = (peer.host, peer.port)
        self.listener.conns[self.client] = self
        self.unallocated()

    def allocated(self) -> None:
        """The connection holds an allocation: it lives as long as the allocation (or the client)."""
        if self._idle is not None:
            self.listener.turn.timers.cancel(self._idle)
            self._idle = None

    def unallocated(self) -> None:
        """No allocation (yet, or any more): close the connection unless one comes within
        ``TurnService.stream_idle`` seconds, so idle connections cannot pile up."""
        self.allocated()
        self._idle = self.listener.turn.timers.call_later(self.listener.turn.stream_idle, self._idle_close)

    def _idle_close(self) -> None:
        self._idle = None
        if self.transport is not None:
            self.transport.loseConnection()

    def _bind_tenant(self) -> None:
        """TLS: the SNI name (not the default tenant) binds this connection to a tenant."""
        self._bound = True
        if not self.tls:
            return
        name = tls_server_name(self.transport)
        tenant = self.listener.turn.tenants.by_sni(name) if name else None
        if tenant is not None:
            self._tenant = tenant.id
            self._realm = tenant_realm(tenant)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self._bound:
            self._bind_tenant()
        buf = self._buf + data if self._buf else data
        listener = self.listener
        size = len(buf)
        pos = 0
        while size - pos >= 4:
            try:
                length = stream_frame_length(buf if pos == 0 else buf[pos : pos + 4], listener.cd_max)
            except RemoteProtocolError:
                listener.server.counters.dropped_malformed += 1
                if listener.turn.ratelog.allow("TRN400"):
                    self.log.info(
                        "TRN400 {listener}: not STUN/ChannelData from {client}; closing",
                        listener=listener.name,
                        client=self.client[0],
                    )
                self._buf = b""
                self.transport.loseConnection()
                return
            assert length is not None
            if size - pos < length:
                break
            frame = buf[pos : pos + length] if (pos or length != size) else buf
            pos += length
            if frame[0] >= 0x40:
                now = listener.now()
                hit = listener.channel_data(frame, self.client, now)
                if hit is not None:
                    listener.to_peer(hit[0], hit[1], hit[2], now)
            else:
                listener.receive(frame, self.client, self._realm, self._tenant)
            if self.transport is None or self.client not in listener.conns:
                return  # closed while handling
        rest = buf[pos:] if pos else buf
        if len(rest) > MAX_FRAME + 4:
            self.transport.loseConnection()
            rest = b""
        self._buf = rest

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self._buf = b""
        self.allocated()  # cancels the idle timer
        if self.listener.conns.get(self.client) is self:
            self.listener.client_gone(self.client)


class TurnStreamFactory(Factory):
    """Builds :class:`TurnStreamProtocol` for one stream listener."""

    noisy = False

    def __init__(self, listener: TurnListener, tls: bool) -> None:
        self.listener = listener
        self.tls = tls

    def buildProtocol(self, addr: Any) -> TurnStreamProtocol:  # noqa: N802
        proto = TurnStreamProtocol(self.listener, self.tls)
        proto.factory = self
        return proto


# --- the service -------------------------------------------------------------------------------


class _UdpListenerService(Service):
    """Opens the TURN UDP socket on start (native asyncio endpoint when available), closes it on stop."""

    def __init__(self, turn: TurnService, listener: TurnListener, host: str, port: int) -> None:
        self.turn = turn
        self.listener = listener
        self.host = host
        self.port = port
        self.bound_port: int | None = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        listener = self.listener
        try:
            endpoint = self.turn.pool.endpoints.open(
                self.host,
                self.port,
                listener.datagram_received,
                on_ready=listener.ready,
                on_error=listener.socket_error,
                on_failed=lambda exc: self.turn.log.error(
                    "TRN503 TURN UDP endpoint on {host}:{port} failed: {err}",
                    host=self.host,
                    port=self.bound_port,
                    err=exc,
                ),
                reuse_port=reuse_port_for(self.turn.reactor, self.host, self.port),  # shared by workers
            )
        except OSError as exc:
            raise CannotListenError(self.host, self.port, exc) from exc
        self.bound_port = endpoint.port
        listener.endpoint = endpoint

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        endpoint, self.listener.endpoint = self.listener.endpoint, None
        self.listener.close()
        return endpoint.close() if endpoint is not None else None


class TurnService(MultiService):
    """All TURN listeners of the edge, their relay pool and the ice-servers endpoint's data."""

    log = Logger()

    def __init__(
        self,
        config: EdgeConfig,
        tenants: TenantTable[TenantConfig],
        reactor: Any,
        timers: Timers,
        certs: CertificateStore,
        *,
        ports: PortAllocator | None = None,
        leg_policer: Callable[[str], Policer] | None = None,
        wrap_listener: Callable[[str, Any], Any] | None = None,
        wall: Callable[[], float] = wall_clock,
    ) -> None:
        super().__init__()
        self.setName("turn")
        self.config = config
        self.tenants = tenants
        self.reactor = reactor
        self.timers = timers
        self.now = timers.now
        self.wall = wall
        self.certs = certs
        self.policy = TurnPolicy(config, tenants)
        self.nonce_secret = secrets.token_bytes(32)
        self.ratelog = RateLimitedLog(self.log, burst=1, window=_LOG_EVERY, now=self.now)
        #: ice-servers requests refused for a bad bearer token
        self.api_refusals = 0
        #: seconds a TCP/TLS connection may stay open without an allocation
        self.stream_idle = STREAM_IDLE
        listen = config.listen
        bind_ip = config.turn.relay_interface
        if bind_ip is None:
            bind_ip = (listen.turn or listen.turns or listen.https).host
        #: relay ports: a shared allocator when the edge has one, else our own over media.ports
        self.pool = RelayPool(
            reactor,
            ports if ports is not None else PortAllocator(*config.media.ports),
            bind_ip,
            config.edge.public_address,
            self.now,
            leg_policer,
        )
        #: wraps each TCP listener's factory (the service's per-source guard), by listener name
        self._wrap = wrap_listener or (lambda _name, factory: factory)
        self.listeners: dict[str, TurnListener] = {}
        self._udp: _UdpListenerService | None = None
        self._tcp_servers: dict[str, Any] = {}
        if listen.turn is not None:
            udp = self._listener("udp", stream=False)
            self._udp = _UdpListenerService(self, udp, listen.turn.host, listen.turn.port)
            self._udp.setName("turn_udp")
            self._udp.setServiceParent(self)
            tcp = self._listener("tcp", stream=True)
            self._add_tcp("turn_tcp", listen.turn, TurnStreamFactory(tcp, tls=False))
        #: the ``turns`` listener's TLS layer; its handshakes count in the service's metrics (start)
        self.turns_tls: StdlibTLSFactory | None = None
        if listen.turns is not None:
            turns = self._listener("tls", stream=True)
            self.turns_tls = StdlibTLSFactory(
                certs,
                TurnStreamFactory(turns, tls=True),
                TlsStats(),
                listener="turns",
                clock=reactor,
                handshake_timeout=lambda: self.config.tls.handshake_timeout,
            )
            self._add_tcp("turns", listen.turns, self.turns_tls)
        self.https_listener: TurnListener | None = (
            self._listener("https", stream=True) if config.turn.tls_on_https else None
        )

    def _listener(self, name: str, *, stream: bool) -> TurnListener:
        listener = TurnListener(self, name, stream=stream)
        self.listeners[name] = listener
        return listener

    def _add_tcp(self, name: str, hp: Any, factory: Any) -> None:
        factory = self._wrap(name, factory)
        server = tcp_server(hp.port, factory, interface=hp.host, reactor=self.reactor)  # tx/native_stream.py
        server.setName(name)
        server.setServiceParent(self)
        self._tcp_servers[name] = server

    # -- wiring helpers ---------------------------------------------------------------------------
    def https_factory(self, site: Any) -> Any:
        """What the TLS layer on ``listen.https`` should wrap: the front, or ``site`` alone."""
        if self.https_listener is None:
            return site
        idle = float(getattr(site, "timeOut", None) or 60.0)
        return TlsFrontFactory(site, TurnStreamFactory(self.https_listener, tls=True), self.timers, idle)

    def update(self, config: EdgeConfig, tenants: TenantTable[TenantConfig]) -> None:
        """Reload: new tenants, secrets, quotas, peer rules and rates (listeners stay)."""
        self.config = config
        self.tenants = tenants
        self.policy = TurnPolicy(config, tenants)

    @property
    def ports(self) -> dict[str, int]:
        """Bound ports by listener name (``turn_udp``, ``turn_tcp``, ``turns``)."""
        out: dict[str, int] = {}
        if self._udp is not None and self._udp.bound_port is not None:
            out["turn_udp"] = self._udp.bound_port
        for name, server in self._tcp_servers.items():
            port = getattr(server, "_port", None)
            if port is not None:
                out[name] = port.getHost().port
        return out

    def counters(self) -> dict[str, dict[str, int]]:
        """Per-listener counters (for metrics)."""
        out = {name: listener.counters() for name, listener in self.listeners.items()}
        out["relays"] = {"live": len(self.pool), "bind_failures": self.pool.bind_failures}
        return out

    def allocations(self) -> int:
        return sum(len(listener.server) for listener in self.listeners.values())

    def collect(self) -> Iterator[Metric]:
        """Prometheus families, read at scrape time (``service.metrics.add_collector("turn", ...)``)."""
        live = GaugeMetricFamily("mcs_edge_turn_allocations", "Live TURN allocations", labels=["tenant"])
        per_tenant: dict[str, int] = {}
        for listener in self.listeners.values():
            for tenant, count in listener.server.allocations_by_tenant().items():
                per_tenant[tenant] = per_tenant.get(tenant, 0) + count
        for tenant, count in sorted(per_tenant.items()):
            live.add_metric([tenant], count)
        yield live
        created = CounterMetricFamily(
            "mcs_edge_turn_allocations_created", "TURN allocations created", labels=["listener"]
        )
        deleted = CounterMetricFamily(
            "mcs_edge_turn_allocations_deleted", "TURN allocations ended", labels=["listener"]
        )
        refused = CounterMetricFamily(
            "mcs_edge_turn_requests_refused",
            "TURN requests answered with an error",
            labels=["listener", "reason"],
        )
        dropped = CounterMetricFamily(
            "mcs_edge_turn_packets_dropped", "TURN packets dropped", labels=["listener", "reason"]
        )
        for name, listener in sorted(self.listeners.items()):
            counters = listener.counters()
            created.add_metric([name], counters["allocations_created"])
            deleted.add_metric([name], counters["allocations_deleted"])
            for reason, key in _REFUSALS:
                refused.add_metric([name, reason], counters[key])
            for reason, key in _DROPS:
                dropped.add_metric([name, reason], counters[key])
        yield from (created, deleted, refused, dropped)
        relays = GaugeMetricFamily("mcs_edge_turn_relays", "Open TURN relay sockets", labels=[])
        relays.add_metric([], len(self.pool))
        yield relays
        bind = CounterMetricFamily(
            "mcs_edge_turn_relay_bind_failures", "Relay ports found busy and skipped", labels=[]
        )
        bind.add_metric([], self.pool.bind_failures)
        yield bind
        api = CounterMetricFamily(
            "mcs_edge_turn_ice_servers_refused", "ice-servers requests with a bad bearer token", labels=[]
        )
        api.add_metric([], self.api_refusals)
        yield api

    def startService(self) -> None:  # noqa: N802
        # Count ``turns`` handshakes with the other TLS listeners (``mcs_edge_tls_handshakes``),
        # as ``service.metrics.tls_factory("turns", ...)`` would, before the port opens.
        metrics = getattr(self.parent, "metrics", None)
        if self.turns_tls is not None and metrics is not None:
            self.turns_tls.stats = metrics.tls_stats("turns")
        super().startService()

    def stopService(self) -> Any:  # noqa: N802
        result = super().stopService()
        for listener in self.listeners.values():
            listener.close()
        self.pool.close()
        return result


_REFUSALS = (
    ("challenge", "auth_challenges"),
    ("auth_failure", "auth_failures"),
    ("stale_nonce", "stale_nonces"),
    ("forbidden_peer", "forbidden_peers"),
    ("quota", "quota_refusals"),
    ("bad_request", "bad_requests"),
)
_DROPS = (
    ("malformed", "dropped_malformed"),
    ("no_allocation", "dropped_no_allocation"),
    ("no_channel", "dropped_no_channel"),
    ("no_permission", "dropped_no_permission"),
    ("policed", "dropped_policed"),
    ("own_address", "dropped_own_address"),
    ("relay_not_ready", "dropped_relay_not_ready"),
    ("client_gone", "dropped_client_gone"),
)
