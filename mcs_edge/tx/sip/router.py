"""The SIP router: feeds the proxy core from client flows and the backend UDP socket.

Theory of operation
-------------------
One :class:`SipRouter` per service. Client transports (:mod:`mcs_edge.tx.sip.websocket`, the TLS stream
listener) call :meth:`open_flow` when a connection is accepted, :meth:`data_from_client` per SIP
message and :meth:`close_flow` when it ends. The backend side is one UDP socket on
``listen.backend_sip`` (:class:`BackendUDP`). After every input the router drains the core's
actions (bytes to a flow, bytes to a PBX, close a flow) and re-arms the core's single timer.
Problems the core reports (``(code, fields)`` values) are logged under their own codes, rate-limited.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import secrets
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from mcs_edge.core.guard.sip_auth import auth_outcome
from mcs_edge.core.sip.binding import ByDomain, ByFlowToken, binding_of
from mcs_edge.core.sip.calls import Call
from mcs_edge.core.sip.locate import is_ip as _is_ip
from mcs_edge.core.sip.proxy import (
    CloseFlow,
    Flow,
    LocalService,
    Pair,
    ProxySettings,
    Push,
    SipProxy,
    ToBackend,
    ToFlow,
)
from mcs_edge.core.sip.shed import Refusals, ShedFields, shed_fields, top_branch, via_branch
from mcs_edge.core.sip.transaction import TIMER_GRID, TimerConfig
from mcs_edge.logevents import EVENTS
from mcs_edge.tx.ops.logs import RateLimitedLog
from mcs_edge.tx.timers import CoreTimer

if TYPE_CHECKING:
    from mcs_edge.config import EdgeConfig, TenantConfig
    from mcs_edge.core.load import AdmissionGate
    from mcs_edge.core.sip.locate import Located
    from mcs_edge.core.sip.message import Request, Response
    from mcs_edge.core.tenants import TenantTable
    from mcs_edge.errors import RemoteProtocolError
    from mcs_edge.tx.protect.guard import Protection
    from mcs_edge.tx.sip.backend import BackendConnections
    from mcs_edge.tx.sip.health import BackendMonitor
    from mcs_edge.tx.sip.resolver import BackendResolver
    from mcs_edge.tx.timers import Timers

__all__ = ["MAX_UDP_DATAGRAM", "BackendUDP", "ClientFlow", "SipRouter"]

#: The largest UDP payload (65,535 - 8 UDP header - 20 IPv4 header = 65,507; IPv6 allows 65,527):
#: the backend socket reads whole datagrams up to the IP limit (RFC 4475 s.3.1.1.7), the SIP
#: parser then applies ``sip.max_message_size``.
MAX_UDP_DATAGRAM = 65535

# A client message that is a request: not a response, not only CRLF keepalives (group 1 set
# for a response; nothing after the CRLFs for a keepalive).
_LEADING = re.compile(rb"[\r\n]*(SIP/)?")
# Source (tenant id, IP) of recently closed flows: a PBX answer may arrive after the client left.
_CLOSED_PEERS = 16384
# Branches of requests refused under overload (their ACK is absorbed, a UDP retransmission dropped).
_REFUSED_BRANCHES = 8192


@dataclass(slots=True, eq=False)
class ClientFlow:
    """The adapter's side of a flow: how to send to and close the connection."""

    id: int
    tenant: TenantConfig
    send: Callable[[bytes], None]
    close: Callable[[int, str], None]
    transport: str
    peer: tuple[str, int]
    meta: dict[str, Any] = field(default_factory=dict)


def call_state(call: Call) -> str:
    """A call's state as the admin API and metrics name it: grace, answered or early."""
    if call.state == "grace":
        return "grace"
    return "answered" if call.answered is not None else "early"


@dataclass(frozen=True, slots=True)
class SipStats:
    """What the SIP router and its core have counted, read at once (metrics, ``SipRouter.stats``)."""

    #: Live client connections by (tenant, transport).
    connections: dict[tuple[str, str], int]
    #: Registered connections by tenant.
    registrations: dict[str, int]
    #: Calls up by (tenant, :func:`call_state`).
    calls: dict[tuple[str, str], int]
    calls_started: int
    calls_ended: int
    #: Transactions in progress by tenant.
    transactions: dict[str, int]
    #: The core's counters (a copy).
    core_counters: dict[str, int]
    #: The router's counters: (event, tenant, reason) -> n (a copy).
    router_counters: dict[tuple[str, str, str], int]
    #: Time from a lost connection to its calls moving (cumulative buckets, sum).
    recovery: tuple[list[tuple[str, int]], float]
    push_bindings: int
    #: Time from a push to the woken app's REGISTER (cumulative buckets, sum).
    wake_latency: tuple[list[tuple[str, int]], float]


def sip_listen_addresses(config: EdgeConfig) -> frozenset[tuple[str, int]]:
    """Every (host, port) a SIP message may name this edge by (RFC 3261 s.16.4: our Route entries).

    The SIP listeners (HTTPS for WSS, SIP/TLS, backend) on their configured host, and on the public
    and backend addresses when they listen on a wildcard address.
    """
    listen = config.listen
    hosts = {config.edge.public_address, config.edge.backend_address}
    out: set[tuple[str, int]] = set()
    for hp in (listen.https, listen.sip_tls, listen.backend_sip):
        if hp is None or not hp.port:
            continue
        for host in {hp.host, *hosts} if hp.host in _WILDCARDS else {hp.host}:
            out.add((host.lower(), hp.port))
    return frozenset(out)


_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def _refusals_of(config: EdgeConfig) -> Refusals:
    """The 503 every refusal under overload is written from (core/sip/shed.py)."""
    return Refusals(503, "Service Unavailable (overload)", config.overload.retry_after, config.edge.name)


class _LocalSlot:
    """The core's ``local`` hook (core/sip/proxy.LocalService), forwarding to the part attached
    with :meth:`SipRouter.attach` (the echo service); claims nothing while none is."""

    __slots__ = ("target",)

    def __init__(self) -> None:
        self.target: LocalService | None = None

    def claims(self, flow: Flow, request: Request) -> bool:
        target = self.target
        return target is not None and target.claims(flow, request)

    def request(self, flow: Flow, request: Request, now: float) -> Response | None:
        assert self.target is not None  # only called after claims() said True
        return self.target.request(flow, request, now)

    def on_flow_closed(self, flow_id: int, now: float) -> None:
        if self.target is not None:
            self.target.on_flow_closed(flow_id, now)


class BackendUDP(DatagramProtocol):
    """The backend SIP socket (UDP)."""

    def __init__(self, router: SipRouter) -> None:
        self.router = router

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        self.router.data_from_backend(datagram, addr, "udp")


class SipRouter:
    log = Logger()

    def __init__(
        self,
        config: EdgeConfig,
        tenants: TenantTable[TenantConfig],
        timers: Timers,
        backend_port: int | None = None,
        media: Any = None,
        *,
        protection: Protection | None = None,
        resolver: BackendResolver | None = None,
        overload: AdmissionGate | None = None,
    ) -> None:
        """``media``: the proxy's MediaHook (tx/media/relay.MediaRelay), None = SDP untouched;
        ``protection``: per-source guard, tenant caps and bans (tx/protect/guard.py), None = off;
        ``resolver``: PBX names (tx/sip/resolver.py), None = IP addresses only; ``overload``: the
        admission gate (core/load, driven by tx/ops/loadprobe.py), None = off. The parts that send
        through the router are attached once with :meth:`attach`."""
        self.timers = timers
        self.media = media
        self.flows: dict[int, ClientFlow] = {}
        self.udp: Any = None  # IListeningPort of BackendUDP, once bound (backend_socket)
        self._udp_sendto: Callable[[bytes, tuple[str, int]], int] | None = None  # its socket's sendto
        self.counters: dict[tuple[str, str, str], int] = {}
        self._log_budget = 0.0
        self._log_stamp = 0.0
        self.config = config
        self.tenants = tenants
        self._backends: dict[str, list[TenantConfig]] = {}
        self.protection = protection
        #: Sends the core's push requests (tx/push/providers.py), attached; None = push off.
        self.push: Any = None
        self._closed_peers: OrderedDict[int, tuple[str, str]] = OrderedDict()
        #: tcp:/tls: PBX connections (tx/sip/backend.py), attached; None = UDP only.
        self.streams: BackendConnections | None = None
        self.resolver = resolver
        #: OPTIONS checks of the PBXs (tx/sip/health.py), attached; None = off.
        self.health: BackendMonitor | None = None
        self.overload = overload
        self._local = _LocalSlot()
        self._attached = False
        #: New INVITE/REGISTER refused under overload: by method for the loop-lag gate, by
        #: ``"queue_age:METHOD"`` for requests read too late in a turn (metrics).
        self.shed: dict[str, int] = {"INVITE": 0, "REGISTER": 0}
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        #: The core's problems, rate-limited per code (the one RateLimitedLog, tx/ops/logs.py).
        self._problem_log = RateLimitedLog(self.log, burst=10, window=1.0, now=timers.now)
        self._tag_prefix = secrets.token_hex(4)  # To tags of refusals: prefix + counter, no syscall each
        #: (reason, method) -> (key in :attr:`shed`, To tag prefix): nothing formatted per refusal
        self._shed_keys: dict[tuple[str, bytes], tuple[str, bytes]] = {}
        self._refusals = _refusals_of(config)
        self._build(config, tenants, backend_port)

    def _build(
        self, config: EdgeConfig, tenants: TenantTable[TenantConfig], backend_port: int | None
    ) -> None:
        listen = config.listen
        settings = ProxySettings(
            public_host=config.edge.public_address,
            public_port=listen.https.port,
            backend_host=config.edge.backend_address,
            backend_port=backend_port or listen.backend_sip.port,
            max_message_size=config.sip.max_message_size,
            timers=TimerConfig(t1=config.sip.t1, granularity=TIMER_GRID),
            server_name=config.edge.name,
            flow_grace=config.sip.flow_grace,
            push_wait=config.push.wait,
            push_ring=config.push.ring,
            push_stale=config.push.stale_after,
            public_tls_port=listen.sip_tls.port if listen.sip_tls is not None else None,
            listen_addresses=sip_listen_addresses(config),
        )
        self.core = SipProxy(
            settings,
            tenant_for_domain=lambda host: self.tenants.by_sip_domain(host),
            backend_of=self._backend_of,
            tenants_at=lambda ip: self._backends.get(ip, ()),
            media=self.media,
            random_bytes=secrets.token_bytes,
            on_backend_final=self._observe_final,
            local=self._local,
            backend_down=self._backend_down,
            push_providers=self._push_providers,
        )
        self.timer = CoreTimer(self.timers, self.core, on_fire=lambda _result: self._flush())
        self.stopped = False  # set by stop(): no timer is armed after it
        self._index_backends(tenants)

    def attach(
        self,
        *,
        streams: BackendConnections | None = None,
        health: BackendMonitor | None = None,
        push: Any = None,
        local: LocalService | None = None,
    ) -> None:
        """Attach the parts that are built after the router because they send through it (the
        one registration step of the composition root, called once before the service starts).

        They and the router need each other: tcp:/tls: PBX connections deliver into
        :meth:`data_from_backend` and carry its messages; the OPTIONS checks send through
        :meth:`send_to_backend` and tell it a PBX is down; the push sender reports to
        :meth:`push_done`; the echo service (the core's ``local`` hook) sends its BYEs through
        :meth:`send_to_flow`. None leaves a part off."""
        if self._attached:
            raise RuntimeError("SipRouter.attach called twice")
        self._attached = True
        self.streams = streams
        self.health = health
        self.push = push
        self._local.target = local

    def backend_socket(self, udp: Any) -> None:
        """The bound backend UDP socket (``IListeningPort`` of :class:`BackendUDP`), once listening.

        Datagrams to a PBX's IP address go out through the socket's own ``sendto`` (the port's
        ``getHandle()``): Twisted's ``Port.write`` checks the address with ``isIPAddress`` and
        wraps the call, 3.6 us against 1.3 us per datagram here (one or two per transaction)."""
        self.udp = udp
        handle = getattr(udp, "getHandle", None)
        sock = handle() if handle is not None else None
        self._udp_sendto = sock.sendto if isinstance(sock, socket.socket) else None

    @property
    def proxy_settings(self) -> ProxySettings:
        """The core's current settings (addresses and ports this edge is known by)."""
        return self.core.settings

    def flow_grace(self) -> float:
        """How long a lost client connection's calls wait for it (``sip.flow_grace``, reloadable)."""
        return self.core.flow_registry.grace

    def flow_transport(self, flow_id: int) -> str | None:
        """The transport ("wss", "tls") of client connection ``flow_id``, None when it is gone."""
        flow = self.core.flows.get(flow_id)
        return None if flow is None else flow.transport

    def send_to_flow(self, flow_id: int, request: Request) -> None:
        """Send a request the edge originates (the echo service's BYE) to a client connection."""
        if self.core.send_to_flow(flow_id, request, self.timers.now()):
            self.handle_timer()  # flush the core's output and re-arm its timer

    def _backend_down(self, tenant_id: str) -> bool:
        return self.health is not None and self.health.is_down(tenant_id)

    def _push_providers(self, tenant: Any) -> frozenset[str]:
        return self.push.providers(tenant) if self.push is not None else frozenset()

    def _index_backends(self, tenants: TenantTable[TenantConfig]) -> None:
        index: dict[str, list[TenantConfig]] = {}
        for t in tenants:
            host = t.backend_sip.host
            try:
                host = str(ipaddress.ip_address(host))
            except ValueError:  # a DNS name: matched against the addresses it resolved to
                if self.resolver is not None:
                    for ip in {ip for ip, _port in self.resolver.addresses(t.backend_sip)}:
                        index.setdefault(ip, []).append(t)
                continue
            index.setdefault(host, []).append(t)
        self._backends = index

    def set_backend_port(self, port: int) -> None:
        """The real bound port (when configured as 0) goes into Via/Record-Route/Path."""
        self._set_ports(backend_port=port)

    def set_public_port(self, port: int) -> None:
        """The HTTPS (SIP over WSS) listener's bound port: Record-Route/Via toward WebSocket clients."""
        self._set_ports(public_port=port)

    def set_public_tls_port(self, port: int) -> None:
        """The SIP/TLS listener's bound port: Record-Route/Via toward TLS clients (the mobile app)."""
        self._set_ports(public_tls_port=port)

    def _set_ports(self, **ports: int) -> None:
        old = self.core.settings
        new = replace(old, **ports)  # type: ignore[arg-type]
        bound = {(old.public_host, p) for p in ports.values()} | {
            (old.backend_host, p) for p in ports.values()
        }
        new = replace(new, listen_addresses=old.listen_addresses | frozenset(bound))
        if new != old:
            self.core.update_settings(new)

    def update(self, config: EdgeConfig, tenants: TenantTable[TenantConfig]) -> None:
        """Adopt a reloaded configuration; flows of removed tenants are closed."""
        self.config = config
        self._refusals = _refusals_of(config)
        self.tenants = tenants
        self.core.flow_registry.grace = config.sip.flow_grace
        self.core.update_settings(
            replace(
                self.core.settings,
                push_wait=config.push.wait,
                push_ring=config.push.ring,
                push_stale=config.push.stale_after,
            )
        )
        if self.push is not None:
            self.push.update(config)
        self._index_backends(tenants)
        for flow in list(self.flows.values()):
            current = tenants.by_id(flow.tenant.id)
            if current is None:
                flow.close(1001, "tenant removed")
            else:
                flow.tenant = current
                core_flow = self.core.flows.get(flow.id)
                if core_flow is not None:
                    core_flow.tenant = current

    def _backend_of(self, tenant: TenantConfig) -> tuple[str, tuple[str, int]]:
        current = self.tenants.by_id(tenant.id) or tenant
        b = current.backend_sip
        return b.transport, (b.host, b.port)

    # ------------------------------------------------------------------ client flows
    def open_flow(
        self,
        tenant: TenantConfig,
        transport: str,
        peer: tuple[str, int],
        send: Callable[[bytes], None],
        close: Callable[[int, str], None],
    ) -> ClientFlow | None:
        protection = self.protection
        if protection is not None:
            decision = protection.flow_opened(tenant.id, peer[0])
            if not decision.allowed:
                self.count("flows_refused", tenant.id, decision.reason)
                return None
        core_flow = self.core.open_flow(tenant, transport, peer, self.timers.now())
        flow = ClientFlow(core_flow.id, tenant, send, close, transport, peer)
        self.flows[flow.id] = flow
        self.count("flows_opened", tenant.id, transport)
        return flow

    def tenant_for_first_request(self, data: bytes) -> TenantConfig | None:
        """The tenant a SIP/TLS connection without SNI is bound to by its first message (or None)."""
        hint = binding_of(data, self.core.limits)
        if isinstance(hint, ByDomain):
            tenant: TenantConfig | None = self.tenants.by_sip_domain(hint.host)
            return tenant
        if isinstance(hint, ByFlowToken):
            owner = self.core.tenant_of_token(hint.token)
            if owner is not None:
                return self.tenants.by_id(owner.id)
            return self.tenants.by_sip_domain(hint.domain) if hint.domain else None
        return None

    def data_from_client(self, flow: ClientFlow, data: bytes) -> None:
        protection = self.protection
        if protection is not None:
            if data[:1] in b"\r\n":  # leading CRLFs (or nothing): what follows them decides
                m = _LEADING.match(data)
                is_request = m is not None and m.group(1) is None and m.end() < len(data)  # or garbage
            else:
                is_request = not data.startswith(b"SIP/")
            if is_request and not protection.admit_request(flow.tenant.id, flow.peer[0]):
                self.count("requests_dropped", flow.tenant.id, flow.transport)
                return
        now = self.timers.now()
        gate = self.overload
        if gate is not None and (gate.ratio < 1.0 or gate.late(now)):
            fields = shed_fields(data)
            if fields is not None:
                reason = gate.refusal(now)
                if reason is not None:
                    flow.send(self._refusal(fields, reason))
                    return
        if self._refused and data.startswith(b"ACK ") and self._absorb_ack(data):
            self.count("overload_ack_absorbed", flow.tenant.id)
            return
        self.core.receive_from_client(flow.id, data, now)
        self._flush()

    def _absorb_ack(self, data: bytes) -> bool:
        """The ACK of a 503 sent under overload (same branch as the INVITE, RFC 3261 s.17.1.1.3)."""
        branch = top_branch(data)
        return branch is not None and self._refused.pop(branch, False) is None

    def reject_unframed(self, flow: ClientFlow, data: bytes, exc: RemoteProtocolError) -> None:
        """A stream flow's bytes cannot be framed: answer the request they start, if possible."""
        self.core.reject_unframed(flow.id, data, exc)
        self._flush()

    def _refusal(self, fields: ShedFields, reason: str) -> bytes:
        """503 + Retry-After from the request's bytes, before it is parsed (core/sip/shed.py)."""
        method = fields[0]
        keys = self._shed_keys.get((reason, method))
        if keys is None:
            name = method.decode()
            keys = self._shed_keys[reason, method] = (
                name if reason == "loop_lag" else f"{reason}:{name}",
                f"{self._tag_prefix}{name[0]}{reason[0]}".encode(),
            )
        key, tag = keys
        shed = self.shed
        n = shed[key] = shed.get(key, 0) + 1
        if method == b"INVITE":
            branch = via_branch(fields[1][0])
            if branch is not None:
                refused = self._refused
                refused[branch] = None
                if len(refused) > _REFUSED_BRANCHES:
                    refused.popitem(last=False)
        return self._refusals.answer(fields, b"%s%x" % (tag, n))

    def touch(self, flow: ClientFlow) -> None:
        """A keepalive arrived on ``flow``: it is alive."""
        core_flow = self.core.flows.get(flow.id)
        if core_flow is not None:
            core_flow.last_seen = self.timers.now()

    def sweep_idle(self) -> int:
        """Close stream flows silent for longer than ``sip.keepalive_timeout`` (WebSockets ping)."""
        return sum(self.sweep_flow(flow) for flow in self.sweepable_flows())

    def sweepable_flows(self) -> list[ClientFlow]:
        """The flows :meth:`sweep_flow` may close: SIP over TCP/TLS, not the WebSockets (their own
        liveness sweep pings them), so a pass over 10,000 WSS agents visits none of them."""
        return [flow for flow in self.flows.values() if flow.transport != "wss"]

    def sweep_flow(self, flow: ClientFlow) -> bool:
        """Close ``flow`` if it is a live stream flow silent for longer than ``sip.keepalive_timeout``
        (one step of the service's sliced sweep; a flow closed meanwhile is left alone)."""
        if flow.transport == "wss" or self.flows.get(flow.id) is not flow:
            return False
        core_flow = self.core.flows.get(flow.id)
        if core_flow is None or self.timers.now() - core_flow.last_seen <= self.config.sip.keepalive_timeout:
            return False
        self.count("flows_idle_closed", flow.tenant.id, flow.transport)
        flow.close(1000, "keepalive timeout")
        return True

    def close_flow(self, flow: ClientFlow, reason: str) -> None:
        if self.flows.pop(flow.id, None) is None:
            return
        if self.protection is not None:
            self.protection.flow_closed(flow.tenant.id, flow.peer[0])
            closed = self._closed_peers
            closed[flow.id] = (flow.tenant.id, flow.peer[0])
            if len(closed) > _CLOSED_PEERS:
                closed.popitem(last=False)
        self.core.close_flow(flow.id, self.timers.now())
        self.count("flows_closed", flow.tenant.id, flow.transport)
        self._flush()

    # ------------------------------------------------------------------ backend
    def data_from_backend(self, data: bytes, addr: tuple[str, int], transport: str) -> None:
        if self.protection is not None and addr[0] not in self._backends:
            # Not a tenant's PBX (a scanner on the backend port): dropped quietly, only counted.
            self.protection.scanner("backend_sip")
            self.core.count("sip_unknown_backend")
            return
        if self.health is not None and self.health.claims(data):
            self.health.response(data, addr)
            return
        now = self.timers.now()
        gate = self.overload
        if transport == "udp" and gate is not None and self._shed_from_backend(gate, data, addr, now):
            return
        self.core.receive_from_backend(data, addr, transport, now)
        self._flush()

    def _shed_from_backend(self, gate: AdmissionGate, data: bytes, addr: tuple[str, int], now: float) -> bool:
        """A new INVITE from a PBX over UDP under overload: 503 once, its retransmissions dropped."""
        if not (self._refused or gate.shedding or gate.late(now)):
            return False
        if data.startswith(b"ACK "):  # the PBX's ACK of our 503: ends there
            if self._refused and self._absorb_ack(data):
                self.count("overload_ack_absorbed", "", "udp")
                return True
            return False
        fields = shed_fields(data)
        if fields is None or fields[0] != b"INVITE":
            return False
        branch = via_branch(fields[1][0])
        if branch is not None and branch in self._refused:
            self.count("overload_retransmission_dropped", "", "udp")
            return True
        if not (gate.shedding or gate.late(now)):
            return False
        reason = gate.refusal(now)
        if reason is None:
            return False
        answer = self._refusal(fields, reason)
        if self.udp is not None:
            try:
                self.udp.write(answer, addr)
            except Exception as exc:  # e.g. EHOSTUNREACH
                self.count("backend_send_errors", "", type(exc).__name__)
        return True

    def reindex_backends(self) -> None:
        """PBX names resolved to new addresses: requests from them are matched from now on."""
        self._index_backends(self.tenants)

    def _send_udp_named(self, action: ToBackend) -> None:
        """UDP toward a PBX given by name: the resolver's first address, or 503 while it does not resolve."""
        tenant = self.tenants.by_id(action.tenant_id)
        resolver = self.resolver
        if tenant is None or resolver is None or tenant.backend_sip.host != action.addr[0]:
            self.count("backend_send_errors", action.tenant_id, "unknown backend name")
            return

        def send(located: Located) -> None:
            if not located.addresses:
                self.count("backend_send_errors", action.tenant_id, "name does not resolve")
                self.backend_failed(action.tenant_id, located.error or "name does not resolve")
                return
            try:
                self.udp.write(action.data, located.addresses[0])
            except Exception as exc:
                self.count("backend_send_errors", action.tenant_id, type(exc).__name__)

        resolver.locate(tenant.backend_sip).addCallback(send)

    def is_backend_address(self, ip: str) -> bool:
        """``ip`` is a tenant PBX's address (connections from others are refused)."""
        return ip in self._backends

    def backend_failed(self, tenant_id: str, reason: str) -> None:
        """Messages toward ``tenant_id``'s PBX could not be sent: its pending requests get 503 now."""
        if self.health is not None:
            self.health.transport_failed(tenant_id, reason)
        self.core.backend_failed(tenant_id, reason, self.timers.now())
        self._flush()

    def send_to_backend(self, tenant: TenantConfig, data: bytes) -> None:
        """Send bytes the edge itself originates (OPTIONS checks) to ``tenant``'s PBX, its transport."""
        transport, addr = self._backend_of(tenant)
        self._to_backend(ToBackend(tenant.id, transport, addr, data))

    def backend_via(self) -> tuple[str, int]:
        s = self.core.settings
        return s.backend_host, s.backend_port

    def _observe_final(self, pair: Pair, response: Response) -> None:
        """A PBX's final answer to a client's request: authentication failures and successes."""
        protection = self.protection
        if protection is None or pair.request is None:
            return
        outcome = auth_outcome(pair.request, response)
        if outcome is None:
            return
        flow = self.flows.get(pair.flow_id)
        source = (flow.tenant.id, flow.peer[0]) if flow is not None else self._closed_peers.get(pair.flow_id)
        if source is not None:
            protection.observe_auth(source[0], source[1], outcome)

    def _flush(self) -> None:
        core = self.core
        while (action := core.next_action()) is not None:
            if isinstance(action, ToFlow):
                flow = self.flows.get(action.flow_id)
                if flow is not None:
                    flow.send(action.data)
            elif isinstance(action, ToBackend):
                self._to_backend(action)
            elif isinstance(action, CloseFlow):
                flow = self.flows.get(action.flow_id)
                if flow is not None:
                    flow.close(1000, action.reason)
            elif isinstance(action, Push):
                if self.push is None:
                    core.push_result(action, "error", self.timers.now())
                else:
                    self.push.send(action)
        if not self.stopped:
            self.timer.arm()
        self._log_problems()

    def _to_backend(self, action: ToBackend) -> None:
        if action.transport == "udp" and self.udp is not None:
            if not _is_ip(action.addr[0]):
                if self.resolver is not None:
                    self._send_udp_named(action)
                    return
            elif (sendto := self._udp_sendto) is not None:
                try:
                    sendto(action.data, action.addr)
                except ConnectionRefusedError:
                    pass  # an earlier datagram's ICMP port unreachable (Port.write ignores it too)
                except OSError as exc:  # e.g. EHOSTUNREACH, EMSGSIZE (named as Port.write raises it)
                    name = "MessageLengthError" if exc.errno == errno.EMSGSIZE else type(exc).__name__
                    self.count("backend_send_errors", action.tenant_id, name)
                return
            try:
                self.udp.write(action.data, action.addr)
            except Exception as exc:  # e.g. EHOSTUNREACH
                self.count("backend_send_errors", action.tenant_id, type(exc).__name__)
        else:
            tenant = self.tenants.by_id(action.tenant_id)
            if self.streams is not None and tenant is not None:
                self.streams.send(tenant, action.transport, action.addr, action.data)
            else:
                self.count(
                    "backend_send_errors", action.tenant_id, f"transport {action.transport} not available"
                )

    def handle_timer(self) -> None:
        self._flush()

    def push_done(self, push: Push, outcome: str) -> None:
        """The provider's outcome for ``push`` (tx/push/providers.py) goes to the core."""
        now = self.timers.now()
        self.core.push_result(push, outcome, now)
        problems = getattr(self.push, "problems", None)
        if now - self._log_stamp >= 1.0:
            self._log_stamp = now
            self._log_budget = 10
        while problems:
            problem = problems.pop(0)
            if self._log_budget <= 0:
                self.count("log_suppressed", "", "push")
                continue
            self._log_budget -= 1
            self.log.info("PSH400 {problem}", problem=problem)
        self._flush()

    # ------------------------------------------------------------------ counting and logging
    def count(self, name: str, tenant: str, reason: str = "") -> None:
        key = (name, tenant, reason)
        self.counters[key] = self.counters.get(key, 0) + 1

    def _log_problems(self) -> None:
        if self.core.notices:
            self._log_notices()
        problems = self.core.problems
        # each under its own code (core/sip/problems.py), at most 10 lines per code per second
        while problems:
            code, fields = problems.popleft()
            if not self._problem_log.info(code, f"{code} {EVENTS[code]}", **fields):
                self.count("log_suppressed", "", "sip")

    def _log_notices(self) -> None:
        """Calls that survived a network change, or did not (core/sip/flows.py); rate-limited."""
        notices = self.core.notices
        now = self.timers.now()
        if now - self._log_stamp >= 1.0:
            self._log_stamp = now
            self._log_budget = 10
        while notices:
            kind, tenant, call_id, seconds = notices.popleft()
            if self._log_budget <= 0:
                self.count("log_suppressed", "", "sip")
                continue
            self._log_budget -= 1
            if kind == "recovered":
                self.log.info(
                    "SIP230 {tenant} call {call_id} moved to a new connection of its client after {seconds} s",
                    tenant=tenant,
                    call_id=call_id,
                    seconds=round(seconds, 3),
                )
            else:
                self.log.info(
                    "SIP430 {tenant} call {call_id} ended: its client did not come back within {grace} s"
                    " (BYE to the PBX)",
                    tenant=tenant,
                    call_id=call_id,
                    grace=seconds,
                )

    # ------------------------------------------------------------------ public view (admin, metrics, drain)
    def calls_up(self) -> list[Call]:
        """The calls (INVITE dialogs) up now."""
        return list(self.core.calls.calls.values())

    def transaction_count(self) -> int:
        """SIP transactions the core keeps (loaded state, for the load metrics)."""
        return len(self.core.layer)

    def call_count(self) -> int:
        return len(self.core.calls)

    def calls_on_flow(self, flow_id: int) -> int:
        """Calls carried by the client connection ``flow_id``."""
        return self.core.calls.on_flow(flow_id)

    def registration(self, flow_id: int) -> tuple[bool, str | None]:
        """(registered, AOR or None) of the client connection ``flow_id``."""
        cf = self.core.flows.get(flow_id)
        if cf is None:
            return False, None
        return bool(cf.registered), cf.aor or None

    def registrations(self) -> dict[str, int]:
        """Registered client connections by tenant id."""
        out: dict[str, int] = {}
        for cf in self.core.flows.values():
            if cf.registered:
                out[cf.tenant.id] = out.get(cf.tenant.id, 0) + 1
        return out

    def drain(self) -> None:
        """Graceful drain: new calls get 503 from now on (tx/ops/drain.py)."""
        self.core.start_draining()

    def stats(self) -> SipStats:
        core = self.core
        conns: dict[tuple[str, str], int] = {}
        for flow in self.flows.values():
            key = (flow.tenant.id, flow.transport)
            conns[key] = conns.get(key, 0) + 1
        calls: dict[tuple[str, str], int] = {}
        for call in core.calls.calls.values():
            ckey = (call.tenant_id, call_state(call))
            calls[ckey] = calls.get(ckey, 0) + 1
        return SipStats(
            connections=conns,
            registrations=self.registrations(),
            calls=calls,
            calls_started=core.calls.started_total,
            calls_ended=core.calls.ended_total,
            transactions=core.pairs_by_tenant(),
            core_counters=dict(core.counters),
            router_counters=dict(self.counters),
            recovery=(core.recovery.cumulative(), core.recovery.sum),
            push_bindings=len(core.push_registry),
            wake_latency=(core.wake_latency.cumulative(), core.wake_latency.sum),
        )

    def stop(self) -> None:
        self.stopped = True  # connections lost after this arm no timer (the service's are cancelled)
        self.timer.cancel()
        for flow in list(self.flows.values()):
            flow.close(1001, "edge shutting down")
