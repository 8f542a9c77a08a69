"""The SIP proxy core: a transaction-stateful, tenant-bound proxy between client flows and PBXs.

Theory of operation
-------------------
Two sides. The *client side* is a set of flows (WebSocket or TLS connections from browsers and
the mobile app), each bound to one tenant when it was accepted. The *backend side* is each
tenant's PBX, reached over UDP from ``listen.backend_sip`` or over TCP/TLS (tx/sip/backend.py).

Every request that is not an ACK for a 2xx opens a server transaction on the side it came from
and, once accepted, a client transaction on the other side; the two form a :class:`Pair`.
Responses flow back through the pair. An ACK for a 2xx and other stray requests that match no
transaction are forwarded statelessly on their route.

Routing decisions (RFC 3261 s.16, RFC 3327, RFC 5626):

* client -> PBX: the request always goes to *its own tenant's* PBX, whatever its Request-URI
  says, so no client can use the edge to reach anything else (no open relay). An initial request
  must address a domain of the flow's tenant, else 403. Our own Route entries are removed.
  Dialog-creating requests get a double Record-Route (the client-facing entry carries the flow
  token); REGISTER gets a Path with the flow token (``tenant.path``), or its Contact is rewritten
  to an alias at the edge that is mapped back on the way in (PBXs without Path support).
* PBX -> client: only from a tenant's PBX address (others are dropped and counted). The target
  flow is found from the flow token in our Route (Path / Record-Route) or in the Request-URI
  alias; a genuine token of a connection that is gone gets 430 Flow Failed; a flow of another
  tenant gets 403.
* Responses route by Via through the pair; our Via is removed before relaying.

Flows follow the client's instance (RFC 5626, :mod:`mcs_edge.core.sip.flows`): a REGISTER accepted
with ``+sip.instance``/``reg-id`` binds its connection; a later connection registering the same
binding replaces it (old tokens lead to the new connection, calls move over). A closed connection
carrying answered calls keeps them for ``flow_grace`` seconds (PBX requests for them get the
answers of ``flows.IN_GRACE``); then the edge ends them with a BYE to the PBX. In-dialog requests
from a client are admitted only on the call's connection or a connection of the same binding.
A client's re-INVITE that only changes its own transport (an ICE restart after a reconnect) is
answered by the edge when the media hook can (``answer_locally``): the PBX never sees it.

The core never touches a socket: it is fed bytes with ``receive_from_client`` /
``receive_from_backend`` and the current monotonic time; its output is a queue of
:class:`ToFlow`, :class:`ToBackend` and :class:`CloseFlow` actions drained with
``next_action()``; its single timer is ``get_timer()`` / ``handle_timer(now)`` (the transaction
layer's heap). Every problem is counted in ``counters`` (name -> count) and listed in
``problems`` for rate-limited logging by the adapter.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mcs_edge.core.push.bindings import (
    FAILED_REASON,
    TIMEOUT_REASON,
    PushKey,
    PushRegistry,
    Waiting,
    WakeTable,
    feature_caps,
    push_params,
)
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

from .calls import Call, CallTable, Dialog, address_of_record
from .flows import GRACE_BYE_REASON, BindingKey, FlowRegistry, RecoveryHistogram, binding_key, in_grace_answer
from .framing import PING, PONG
from .headers import NameAddr, SipUri, parse_name_addr
from .message import Limits, Request, Response, parse
from .transaction import (
    ClientTransaction,
    PassAck,
    PassResponse,
    Send,
    ServerTransaction,
    Terminated,
    Timeout,
    TimerConfig,
    TransactionLayer,
    TransportError,
    cookie_server_key,
)

__all__ = [
    "CloseFlow",
    "Flow",
    "LocalService",
    "MediaHook",
    "Pair",
    "ProxySettings",
    "Push",
    "SipProxy",
    "TenantInfo",
    "ToBackend",
    "ToFlow",
]

MAGIC = "z9hG4bK"
DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
SDP_METHODS = frozenset({"INVITE", "ACK", "UPDATE", "PRACK"})
FLOW_PARAM = "mcsf"
#: calls ended in one timer turn when lost connections' grace runs out (whole connections at a time);
#: the rest wait for the next turn: a network blip that dropped many clients at once must not end
#: all their calls in one reactor turn (issue 21)
GRACE_CALLS_PER_TURN = 8
Addr = tuple[str, int]


class TenantInfo(Protocol):
    """What the proxy needs of a tenant (satisfied by ``config.TenantConfig``)."""

    @property
    def id(self) -> str: ...

    @property
    def path(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ProxySettings:
    public_host: str  # Record-Route/Path host toward clients
    public_port: int  # the HTTPS (SIP over WSS) listener's port
    backend_host: str  # Via/Record-Route host toward PBXs
    backend_port: int
    backend_transport: str = "udp"
    max_message_size: int = 65536
    timers: TimerConfig = field(default_factory=TimerConfig)
    server_name: str = "mcs-edge"
    push_wait: float = 15.0  # seconds a held INVITE waits for the woken app (push.wait)
    push_ring: int = 180  # what the PBX gets while it waits: 180 or 100 (push.ring)
    push_stale: float = 0.0  # a flow silent this long is woken like a gone one (push.stale_after; 0 = off)
    #: The SIP/TLS listener's port (``listen.sip_tls``); None = no such listener (``public_port``).
    public_tls_port: int | None = None
    #: Every other (host, port) the edge listens on (RFC 3261 s.16.4: Routes naming them are ours).
    listen_addresses: frozenset[tuple[str, int]] = frozenset()
    flow_grace: float = 30.0  # seconds a lost connection's calls wait for its instance (sip.flow_grace)

    def client_port(self, transport: str) -> int:
        """The port a client of ``transport`` ("wss" or "tls") reaches us on: Record-Route, Via."""
        if transport == "tls" and self.public_tls_port is not None:
            return self.public_tls_port
        return self.public_port

    def own_addresses(self) -> set[tuple[str, int]]:
        """(host, port) pairs that name this edge: public ports of each transport, backend, listeners."""
        out = {(self.public_host.lower(), self.public_port), (self.backend_host.lower(), self.backend_port)}
        if self.public_tls_port is not None:
            out.add((self.public_host.lower(), self.public_tls_port))
        out.update((host.lower().strip("[]"), port) for host, port in self.listen_addresses)
        return out


@dataclass(slots=True, eq=False)
class Flow:
    """One client connection as the proxy sees it."""

    id: int
    token: str
    tenant: Any
    transport: str  # "wss" or "tls"
    peer: Addr
    aliases: dict[str, str] = field(default_factory=dict)  # alias key -> original Contact URI
    registered: bool = False
    last_seen: float = 0.0
    aor: str = ""  # the address of record of its last successful REGISTER (admin API, panel)


@dataclass(frozen=True, slots=True)
class ToFlow:
    flow_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ToBackend:
    tenant_id: str
    transport: str
    addr: Addr
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseFlow:
    flow_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Push:
    """Send a push notification (RFC 8599) to wake an app; the adapter reports with ``push_result``."""

    wake_id: int
    tenant_id: str
    provider: str
    prid: str
    param: str
    call_id: str
    caller: str
    key: PushKey


Action = ToFlow | ToBackend | CloseFlow | Push


# Where a transaction's messages go: ("flow", flow_id) or ("backend", tenant_id, transport, addr).
Dest = tuple[Any, ...]


@dataclass(slots=True, eq=False)
class Pair:
    """A server transaction and the client transaction that forwards its request.

    Once the final response is sent the pair keeps only what a 2xx retransmission needs (method,
    Call-ID, whether the INVITE was initial): ``request`` is released (None) like the transactions'.
    """

    server: ServerTransaction
    tenant_id: str
    from_client: bool
    flow_id: int  # the client flow involved (source or target)
    request: Request | None  # the forwarded request (as sent); None once the final response is sent
    client: ClientTransaction | None = None
    got_provisional: bool = False
    cancel_pending: bool = False
    final_sent: bool = False
    #: The far side's 2xx carried an answer the media relay cannot use: that dialog was ACKed and
    #: BYEd by the edge (this ACK is re-sent for each 2xx retransmission).
    refused_ack: tuple[Dest, bytes] | None = None
    #: An early answer (18x) was unusable: the INVITE was CANCELled and refused; a 2xx that still
    #: comes is ACKed and BYEd.
    abandoned: bool = False
    method: str = ""
    call_id: str = ""
    initial: bool = False  # no To tag: creates a dialog (an initial INVITE is a new call)

    def __post_init__(self) -> None:
        request = self.request
        if request is not None:
            self.method = request.method
            self.call_id = request.call_id
            self.initial = request.to.tag is None


class MediaHook(Protocol):
    """Rewrites SDP bodies; returns an error response status to refuse (e.g. 488, 503)."""

    def on_message(
        self, pair: Pair | None, message: Request | Response, from_client: bool, now: float
    ) -> int | None: ...

    def on_end(self, call_id: str, reason: str, tenant_id: str | None = None) -> None: ...

    def on_flow_closed(self, flow_id: int, now: float) -> None: ...

    def park(self, call_id: str, until: float, now: float) -> None:
        """The call's client connection is lost: keep its media until ``until`` (or a move/end)."""
        ...

    def move(self, call_id: str, flow_id: int, until: float, now: float) -> None:
        """The call now belongs to client connection ``flow_id``; its client leg may re-anchor
        until ``until``."""
        ...

    def answer_locally(self, tenant_id: str, request: Request, now: float) -> bytes | None:
        """The SDP answer to a client's re-INVITE that only changed the client's own transport
        (the PBX need not know), or None to forward the re-INVITE."""
        ...


class LocalService(Protocol):
    """Requests the edge answers itself instead of forwarding them (the echo service, tx/media/echo.py).

    ``claims`` is asked about every request from a client after the tenant checks (initial requests
    only reach it when they address a domain of the flow's tenant); a claimed request is given to
    ``request``, whose response (None for an ACK) goes back through the server transaction.
    """

    def claims(self, flow: Flow, request: Request) -> bool: ...

    def request(self, flow: Flow, request: Request, now: float) -> Response | None: ...

    def on_flow_closed(self, flow_id: int, now: float) -> None: ...


class PassthroughMedia:
    """The media hook that changes nothing (until media anchoring is configured)."""

    def on_message(
        self, pair: Pair | None, message: Request | Response, from_client: bool, now: float
    ) -> int | None:
        return None

    def on_end(self, call_id: str, reason: str, tenant_id: str | None = None) -> None:
        return None

    def on_flow_closed(self, flow_id: int, now: float) -> None:
        return None

    def park(self, call_id: str, until: float, now: float) -> None:
        return None

    def move(self, call_id: str, flow_id: int, until: float, now: float) -> None:
        return None

    def answer_locally(self, tenant_id: str, request: Request, now: float) -> bytes | None:
        return None


def new_branch() -> str:
    return MAGIC + secrets.token_hex(10)


def new_tag() -> str:
    return secrets.token_hex(6)


class SipProxy:
    """The proxy core (see the module docstring)."""

    def __init__(
        self,
        settings: ProxySettings,
        tenant_for_domain: Callable[[str], Any],
        backend_of: Callable[[Any], tuple[str, Addr]],
        tenants_at: Callable[[str], Iterable[Any]],
        media: MediaHook | None = None,
    ) -> None:
        self.settings = settings
        self.limits = Limits(max_message_size=settings.max_message_size)
        self.layer = TransactionLayer(settings.timers)
        self._tenant_for_domain = tenant_for_domain
        self._backend_of = backend_of
        self._tenants_at = tenants_at
        self.media: MediaHook = media or PassthroughMedia()
        self.flows: dict[int, Flow] = {}
        self._tokens: dict[str, int] = {}
        self._next_flow = 1
        self._dead_tokens: dict[str, None] = {}  # recently closed flows (bounded) for 430
        self._actions: deque[Action] = deque()
        self._dest: dict[Any, Dest] = {}
        self._dest_pool: dict[Dest, Dest] = {}  # one tuple per destination, shared by its transactions
        self._pairs_by_server: dict[ServerTransaction, Pair] = {}
        self._pairs_by_client: dict[ClientTransaction, Pair] = {}
        self.counters: dict[str, int] = {}
        self.problems: deque[str] = deque(maxlen=256)
        #: Call recoveries and losses for the adapter's log: ("recovered" | "lost", tenant, Call-ID, seconds).
        self.notices: deque[tuple[str, str, str, float]] = deque(maxlen=256)
        #: Calls (INVITE dialogs) up, by Call-ID and by flow (admin API, metrics, drain).
        self.calls = CallTable()
        #: Graceful drain: new calls (initial INVITEs, either direction) get 503 + Retry-After.
        self.draining = False
        #: Told of every final response a PBX gives to a client's request, before it is relayed
        #: (the guard watches authentication outcomes there); None = nobody listens.
        self.on_backend_final: Callable[[Pair, Response], None] | None = None
        #: Requests answered by the edge itself (the echo service); None = everything is forwarded.
        self.local: LocalService | None = None
        #: backend_down(tenant_id): its PBX does not answer (OPTIONS check): new calls get 503 at once.
        self.backend_down: Callable[[str], bool] | None = None
        self._our_hosts = settings.own_addresses()
        #: Bindings of connections to client instances and lost connections in grace (flows.py).
        self.flow_registry = FlowRegistry(settings.flow_grace)
        #: Time from a connection loss to its calls moving to the new connection.
        self.recovery = RecoveryHistogram()
        self._local_acks: dict[tuple[str, int], None] = {}  # re-INVITEs answered here: ACK absorbed
        self._tenant_objects: dict[str, Any] = {}  # tenant id -> tenant of its latest connection
        #: RFC 8599 push bindings and the INVITEs held while their app wakes (core/push/bindings.py).
        self.push_registry = PushRegistry()
        self.wakes = WakeTable()
        #: The providers configured for a tenant (none: push is off for it, no +sip.pns advertised).
        self.push_providers: Callable[[Any], frozenset[str]] = lambda tenant: frozenset()
        #: Time from the push to the woken app's REGISTER (seconds).
        self.wake_latency = RecoveryHistogram()

    def update_settings(self, settings: ProxySettings) -> None:
        """New settings (e.g. ports known once bound); the set of our own addresses follows."""
        self.settings = settings
        self._our_hosts = settings.own_addresses()

    # ------------------------------------------------------------------ bookkeeping
    def count(self, name: str, problem: str | None = None) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1
        if problem is not None:
            self.problems.append(f"{name}: {problem}")

    def next_action(self) -> Action | None:
        self._pump()
        return self._actions.popleft() if self._actions else None

    def drain(self) -> list[Action]:
        self._pump()
        out = list(self._actions)
        self._actions.clear()
        return out

    def get_timer(self) -> float | None:
        times = [
            x
            for x in (
                self.layer.get_timer(),
                self.flow_registry.get_timer(),
                self.push_registry.get_timer(),
                self.wakes.get_timer(),
            )
            if x is not None
        ]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self.layer.handle_timer(now)
        for _binding in list(self.push_registry.expire(now)):
            self.count("push_bindings_expired")
        for waiting in list(self.wakes.expired(now)):
            self.count(
                "push_calls_lost_timeout", f"{waiting.key.tenant_id}: {waiting.key.aor} did not wake up"
            )
            self._fail_waiting(waiting, TIMEOUT_REASON, now)
        ended = 0
        while ended < GRACE_CALLS_PER_TURN:
            lost_flows = list(self.flow_registry.expired(now, 1))
            if not lost_flows:
                break
            for call in self.calls.of_flow(lost_flows[0].flow_id):
                if call.state == "grace":
                    self._end_after_grace(call, now)
                    ended += 1
        self._pump(now)

    @property
    def pairs(self) -> int:
        return len(self._pairs_by_server)

    # ------------------------------------------------------------------ flows
    def open_flow(self, tenant: Any, transport: str, peer: Addr, now: float) -> Flow:
        flow_id = self._next_flow
        self._next_flow += 1
        token = secrets.token_hex(12)
        flow = Flow(flow_id, token, tenant, transport, peer, last_seen=now)
        self._tenant_objects[tenant.id] = tenant
        self.flows[flow_id] = flow
        self._tokens[token] = flow_id
        return flow

    def close_flow(self, flow_id: int, now: float) -> None:
        flow = self.flows.pop(flow_id, None)
        if flow is None:
            return
        self._tokens.pop(flow.token, None)
        self._dest_pool.pop(("flow", flow_id), None)
        _ended, grace = self.calls.flow_lost(flow_id, now)
        lost = self.flow_registry.flow_closed(flow_id, flow.tenant.id, now, keep=bool(grace))
        if lost is not None:
            self.count("flows_lost_with_calls")
            for call in grace:
                self.media.park(call.call_id, lost.deadline, now)
        self.media.on_flow_closed(flow_id, now)
        if self.local is not None:
            self.local.on_flow_closed(flow_id, now)
        self._dead_tokens[flow.token] = None
        if len(self._dead_tokens) > 100_000:
            self._dead_tokens.pop(next(iter(self._dead_tokens)))
        # transactions toward this flow fail now instead of at Timer B/F
        for pair in list(self._pairs_by_client.values()):
            if pair.flow_id == flow_id and not pair.from_client and pair.client is not None:
                pair.client.transport_error(now)
        self._pump(now)

    def backend_failed(self, tenant_id: str, reason: str, now: float) -> int:
        """Requests toward ``tenant_id``'s PBX that could not be sent: each still unanswered one gets
        503 now (RFC 3261 s.16.7 / s.17.1.4 transport error) instead of waiting for Timer B/F.
        Returns how many failed."""
        failed = 0
        for pair in list(self._pairs_by_client.values()):
            if (
                pair.from_client
                and pair.tenant_id == tenant_id
                and pair.client is not None
                and not pair.got_provisional
                and not pair.final_sent
            ):
                pair.client.transport_error(now)
                failed += 1
        if failed:
            self.count("sip_backend_unreachable", f"{tenant_id}: {failed} request(s) refused, {reason}")
        self._pump(now)
        return failed

    def tenant_of_token(self, token: str) -> Any:
        """The tenant of the live flow with ``token`` (binding a connection without SNI), or None."""
        _found, flow = self._flow_by_token(token)
        return flow.tenant if flow is not None else None

    def adopt_binding(self, key: BindingKey, tokens: list[str], aliases: dict[str, str], now: float) -> None:
        """A flow binding taken over from the node that died (core/cluster, docs/ha.md)."""
        self.flow_registry.adopt_binding(key, tokens, aliases, now)
        for token in tokens:
            self._dead_tokens[token] = None

    def adopt_call(
        self,
        call_id: str,
        tenant: Any,
        from_client: bool,
        started: float,
        dialog: Dialog,
        key: BindingKey | None,
        token: str | None,
        now: float,
    ) -> tuple[int, float]:
        """A call taken over from the node that died: in grace on a lost flow of its binding, as if
        its client's connection had just closed. (lost flow id, grace deadline)."""
        flow_id = self._next_flow
        self._next_flow += 1
        self._tenant_objects[tenant.id] = tenant
        self.calls.invite(call_id, tenant.id, flow_id, from_client, started)
        self.calls.answered(call_id, started)
        call = self.calls.calls[call_id]
        call.dialog = dialog
        call.state = "grace"
        call.lost_at = now
        if token is not None:
            self._dead_tokens[token] = None
        lost = self.flow_registry.adopt_lost(flow_id, tenant.id, key, now)
        return flow_id, lost.deadline

    def _flow_by_token(self, token: str) -> tuple[bool, Flow | None]:
        flow_id = self._tokens.get(token)
        if flow_id is not None:
            return True, self.flows.get(flow_id)
        binding = self.flow_registry.resolve(token)
        if binding is not None and binding.flow_id is not None and binding.flow_id in self.flows:
            return True, self.flows[binding.flow_id]  # a token of an earlier connection of the instance
        return token in self._dead_tokens or binding is not None, None

    # ------------------------------------------------------------------ helpers
    def _is_ours(self, uri: SipUri | Any) -> bool:
        """Does ``uri`` name this edge (RFC 3261 s.16.4)? Any of our addresses and listening ports,
        or a tenant's SIP domain (clients use it as their outbound proxy) on one of our ports."""
        if not isinstance(uri, SipUri):
            return False
        host = uri.host.lower().strip("[]")
        port = uri.port
        if any(host == h and (port is None or port == p) for h, p in self._our_hosts):
            return True
        if port is None:
            secure = uri.scheme == "sips" or (uri.param("transport") or "").lower() == "tls"
            port = 5061 if secure else 5060
        return any(port == p for _h, p in self._our_hosts) and self._tenant_for_domain(host) is not None

    def _via(self, transport: str, host: str, port: int, branch: str) -> str:
        if transport == "wss":
            return f"SIP/2.0/WSS {host};branch={branch};rport"
        return f"SIP/2.0/{transport.upper()} {_hostport(host, port)};branch={branch};rport"

    def _client_rr(self, flow: Flow) -> str:
        """Our Record-Route toward a client: the flow token at the listener of the flow's transport.

        A client may send in-dialog requests to this URI on a new connection (RFC 3261 s.12.2.1.1):
        it must name the SIP/TLS listener for a TLS client, the HTTPS port for a WebSocket client.
        """
        s = self.settings
        transport = "ws" if flow.transport == "wss" else "tls"
        port = s.client_port(flow.transport)
        return f"<sip:{flow.token}@{_hostport(s.public_host, port)};transport={transport};lr;r2=on>"

    def _client_via(self, flow: Flow) -> str:
        s = self.settings
        return self._via(flow.transport, s.public_host, s.client_port(flow.transport), new_branch())

    def _backend_rr(self, transport: str | None = None) -> str:
        s = self.settings
        tp = transport or s.backend_transport
        return f"<sip:{_hostport(s.backend_host, s.backend_port)};transport={tp};lr;r2=on>"

    def _respond(self, tx: ServerTransaction, request: Request, status: int, reason: str, now: float) -> None:
        self.count(_LOCAL_CLASS[status // 100 % 7])
        resp = Response.for_request(request, status, reason, to_tag=new_tag() if status > 100 else None)
        resp.headers.add("Server", self.settings.server_name)
        if status == 503:
            resp.headers.add("Retry-After", "5")
        self.layer.send_response(tx, resp, now)
        pair = self._pairs_by_server.get(tx)
        if pair is not None and status >= 200:
            pair.final_sent = True
            pair.request = None

    def _answer_stateless(self, request: Request, status: int, reason: str, dest: Dest) -> None:
        if request.method == "ACK":
            return
        resp = Response.for_request(request, status, reason, to_tag=new_tag())
        resp.headers.add("Server", self.settings.server_name)
        self._emit(dest, resp.serialize())

    def _shared(self, dest: Dest) -> Dest:
        pool = self._dest_pool
        if len(pool) > 65536:  # e.g. a PBX sending from ever new ports: start over
            pool.clear()
        return pool.setdefault(dest, dest)

    def _emit(self, dest: Dest, data: bytes) -> bool:
        if dest[0] == "flow":
            if dest[1] not in self.flows:
                return False
            self._actions.append(ToFlow(dest[1], data))
        else:
            self._actions.append(ToBackend(dest[1], dest[2], dest[3], data))
        return True

    # ------------------------------------------------------------------ event pump
    def _pump(self, now: float = 0.0) -> None:
        layer = self.layer
        while (ev := layer.next_event()) is not None:
            if isinstance(ev, Send):
                dest = self._dest.get(ev.transaction)
                if dest is None or not self._emit(dest, ev.data):
                    ev.transaction.transport_error(now)
            elif isinstance(ev, PassResponse):
                self._relay_response(ev.transaction, ev.response, now)
            elif isinstance(ev, PassAck):
                self._relay_ack(ev.transaction, ev.ack, now)
            elif isinstance(ev, Timeout | TransportError):
                self._on_failure(ev.transaction, isinstance(ev, Timeout), now)
            elif isinstance(ev, Terminated):
                self._dest.pop(ev.transaction, None)
                tx = ev.transaction
                if isinstance(tx, ServerTransaction):
                    pair = self._pairs_by_server.pop(tx, None)
                    if pair is not None and pair.client is not None:
                        self._pairs_by_client.pop(pair.client, None)
                elif isinstance(tx, ClientTransaction):
                    pair = self._pairs_by_client.get(tx)
                    if pair is not None and pair.final_sent:
                        self._pairs_by_client.pop(tx, None)

    # ------------------------------------------------------------------ input: client side
    def receive_from_client(self, flow_id: int, data: bytes, now: float) -> None:
        flow = self.flows.get(flow_id)
        if flow is None:
            return
        flow.last_seen = now
        if not data.strip(b"\r\n"):
            if data == PING or data.endswith(PING):
                self._actions.append(ToFlow(flow_id, PONG))
            return
        try:
            msg = parse(data, limits=self.limits, require_max_forwards=False)
        except RemoteProtocolError as exc:
            self.count("sip_bad_from_client", str(exc))
            self._reject_garbage(data, exc, ("flow", flow_id))
            return
        try:
            if isinstance(msg, Response):
                self._response_from_client(flow, msg, now)
            else:
                self._request_from_client(flow, msg, now)
        except (RemoteProtocolError, LocalProtocolError, ValueError) as exc:
            self.count("sip_bad_from_client", str(exc))
            if isinstance(msg, Request) and msg.method != "ACK":
                self.count("sip_refused_400")
                self._answer_stateless(msg, 400, "Bad Request", ("flow", flow_id))
        self._pump(now)

    def reject_unframed(self, flow_id: int, data: bytes, exc: RemoteProtocolError) -> None:
        """A stream transport cannot frame ``data`` (e.g. no Content-Length): answer it if it can be."""
        self._reject_garbage(data, exc, ("flow", flow_id))

    def _reject_garbage(self, data: bytes, exc: RemoteProtocolError, dest: Dest) -> None:
        """Answer a request too broken to parse with the status its error suggests (none for ACK)."""
        status = exc.status_hint
        if status is None or status < 400:
            self.count("sip_dropped_unanswerable")
            return
        resp = _error_from_bytes(data, status, str(exc)[:80])
        if resp is None:
            self.count("sip_dropped_unanswerable")
            return
        self.count(f"sip_refused_{status}")
        self._emit(dest, resp)

    def _request_from_client(self, flow: Flow, req: Request, now: float) -> None:
        tenant = flow.tenant
        # RFC 3261 s.18.2.1: note where the request really came from
        top = req.top_via
        self._stamp_received(req, top, flow.peer)
        if req.method == "CANCEL":
            self._cancel(req, ("flow", flow.id), now)
            return
        tx, is_new = self.layer.receive_request(req, now, reliable=True)
        if tx is None:  # ACK for a 2xx: stateless, along the route to this tenant's PBX
            ack_key = (req.call_id, req.cseq.seq)
            if ack_key in self._local_acks:
                del self._local_acks[ack_key]
                return  # the ACK of a re-INVITE the edge answered itself
            if self._admit_dialog(flow, req, now) is not None:
                self.count("sip_dialog_refused")
                return
            if self.local is not None and self.local.claims(flow, req):
                self.local.request(flow, req, now)
                return
            self._forward_ack_to_backend(flow, req, now)
            return
        if not is_new:
            return
        self._dest[tx] = self._shared(("flow", flow.id))
        if req.method == "INVITE":
            self._respond_trying(tx, req, now)
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            self._respond(tx, req, 483, "Too Many Hops", now)
            return
        if any(self._via_is_ours(v) for v in req.vias):
            self.count("sip_loop")
            self._respond(tx, req, 482, "Loop Detected", now)
            return
        in_dialog = req.to.tag is not None
        if in_dialog:
            refused = self._admit_dialog(flow, req, now)
            if refused is not None:
                self.count("sip_dialog_refused")
                self._respond(tx, req, refused, _REASONS.get(refused, "Refused"), now)
                return
        if not in_dialog:
            ruri = req.request_uri
            owner = self._tenant_for_domain(ruri.host) if isinstance(ruri, SipUri) else None
            if owner is None or owner.id != tenant.id:
                self.count("sip_foreign_domain", f"{tenant.id} -> {getattr(ruri, 'host', ruri)}")
                self._respond(tx, req, 403, "Forbidden (domain not served for this connection)", now)
                return
        if self.draining and not in_dialog and req.method == "INVITE":
            self.count("sip_refused_draining")
            self._respond(tx, req, 503, "Service Unavailable (draining)", now)
            return
        if self.local is not None and self.local.claims(flow, req):
            self.count("sip_requests_local")
            response = self.local.request(flow, req, now)
            if response is not None:
                self.layer.send_response(tx, response, now)
            return
        if in_dialog and self._answer_locally(flow, tx, req, now):
            return
        if not in_dialog and req.method == "INVITE" and self.backend_down and self.backend_down(tenant.id):
            self.count("sip_refused_backend_down")
            self._respond(tx, req, 503, "Service Unavailable (PBX down)", now)
            return
        fwd = req.copy()
        if self._foreign_route_token(flow, self._strip_our_routes(fwd)):
            self._respond(tx, req, 403, "Forbidden (dialog of another tenant)", now)
            return
        fwd.decrement_max_forwards()
        if req.method in DIALOG_METHODS and not in_dialog:
            fwd.prepend_record_route(self._client_rr(flow))
            fwd.prepend_record_route(self._backend_rr(self._backend_of(tenant)[0]))
        if req.method == "REGISTER":
            self._register_outbound(flow, fwd)
        transport, addr = self._backend_of(tenant)
        branch = new_branch()
        fwd.push_via(self._via(transport, self.settings.backend_host, self.settings.backend_port, branch))
        pair = Pair(tx, tenant.id, True, flow.id, fwd)
        self._pairs_by_server[tx] = pair
        if fwd.body:
            refused = self.media.on_message(pair, fwd, True, now)
            if refused is not None:
                self._respond(tx, req, refused, _REASONS.get(refused, "Refused"), now)
                return
        ctx = self.layer.send_request(fwd, now, reliable=transport != "udp")
        pair.client = ctx
        self._pairs_by_client[ctx] = pair
        self._dest[ctx] = self._shared(("backend", tenant.id, transport, addr))
        self.count("sip_requests_to_backend")
        self._track_call(req, in_dialog, tenant.id, flow.id, True, now)

    def _track_call(
        self, req: Request, in_dialog: bool, tenant_id: str, flow_id: int, from_client: bool, now: float
    ) -> None:
        method = req.method
        if method == "INVITE" and not in_dialog:
            self.calls.invite(req.call_id, tenant_id, flow_id, from_client, now)
        # A BYE ends the call (and its media) only once the other side accepts it (2xx, or no answer
        # at all): a BYE with a guessed Call-ID gets 481 and ends nothing (see _relay_response).

    def send_to_flow(self, flow_id: int, request: Request, now: float) -> bool:
        """Send a request the edge itself originates (e.g. the echo service's BYE) to a client flow.

        Our Via is pushed; a client transaction retransmits and times out as usual; its response
        is absorbed (no pair). False when the flow is gone.
        """
        flow = self.flows.get(flow_id)
        if flow is None:
            return False
        request.push_via(self._client_via(flow))
        ctx = self.layer.send_request(request, now, reliable=True)
        self._dest[ctx] = self._shared(("flow", flow_id))
        self.count("sip_requests_local_to_client")
        self._pump(now)
        return True

    def _respond_trying(self, tx: ServerTransaction, req: Request, now: float) -> None:
        resp = Response.for_request(req, 100, "Trying")
        self.layer.send_response(tx, resp, now)

    def _stamp_received(self, req: Request, top: Any, peer: Addr) -> None:
        host, _port = top.sent_by
        via = top
        changed = False
        if host != peer[0]:
            via = via.with_param("received", peer[0])
            changed = True
        if top.has_param("rport") and top.rport is None:
            via = via.with_param("rport", str(peer[1]))
            changed = True
        if changed:
            req.replace_top_via(via)

    def _via_is_ours(self, via: Any) -> bool:
        host, port = via.sent_by
        branch = via.branch or ""
        return (host.lower(), port or 5060) in self._our_hosts and branch.startswith(MAGIC)

    def _strip_our_routes(self, req: Request) -> list[NameAddr]:
        popped: list[NameAddr] = []
        routes = req.routes
        while routes and self._is_ours(routes[0].uri):
            popped.append(routes.pop(0))
        if popped:
            req.set_routes(list(routes))
        return popped

    def _register_outbound(self, flow: Flow, fwd: Request) -> None:
        s = self.settings
        transport = self._backend_of(flow.tenant)[0]
        tp = "" if transport == "udp" else f";transport={transport}"  # the PBX reaches us the same way
        if flow.tenant.path:
            fwd.headers.insert_first(
                "Path", f"<sip:{flow.token}@{_hostport(s.backend_host, s.backend_port)}{tp};lr;ob>"
            )
            supported = fwd.headers.get("supported") or ""
            if "path" not in [x.strip().lower() for x in supported.split(",")]:
                fwd.headers.set("Supported", f"{supported}, path" if supported else "path")
            return
        # No Path support: rewrite every Contact to an alias at the edge that maps back to the flow.
        contacts = fwd.contacts
        if not contacts or any(c.is_star for c in contacts):
            return
        out = []
        for c in contacts:
            uri = c.uri
            user = uri.user if isinstance(uri, SipUri) and uri.user else "u"
            key = (
                f"{flow.token}.{len(flow.aliases)}"
                if str(uri) not in flow.aliases.values()
                else next(k for k, v in flow.aliases.items() if v == str(uri))
            )
            flow.aliases[key] = str(uri)
            alias = f"sip:{user}@{_hostport(s.backend_host, s.backend_port)}{tp};{FLOW_PARAM}={key}"
            out.append(_replace_uri(c, alias))
        fwd.headers.set("Contact", ", ".join(out))

    def _foreign_route_token(self, flow: Flow, popped: list[NameAddr]) -> bool:
        """True (counted) when our Route names a flow of another tenant than ``flow``'s.

        An in-dialog request may arrive on another connection than the dialog's flow (a client
        that opens a new connection to our Record-Route URI, RFC 3261 s.12.2.1.1): it is routed
        like any other, as long as the flow token in our Route belongs to the same tenant.
        """
        for entry in popped:
            uri = entry.uri
            user = uri.user if isinstance(uri, SipUri) else None
            if not user:
                continue
            _found, owner = self._flow_by_token(user)
            if owner is not None and owner.tenant is not flow.tenant and owner.tenant.id != flow.tenant.id:
                self.count("sip_foreign_flow", f"{flow.tenant.id} -> route of {owner.tenant.id}")
                return True
        return False

    def _forward_ack_to_backend(self, flow: Flow, req: Request, now: float) -> None:
        fwd = req.copy()
        if self._foreign_route_token(flow, self._strip_our_routes(fwd)):
            return
        try:
            fwd.decrement_max_forwards()
        except LocalProtocolError:
            return
        transport, addr = self._backend_of(flow.tenant)
        fwd.push_via(
            self._via(transport, self.settings.backend_host, self.settings.backend_port, new_branch())
        )
        if fwd.body:
            self.media.on_message(None, fwd, True, now)
        self._emit(("backend", flow.tenant.id, transport, addr), fwd.serialize())

    def _response_from_client(self, flow: Flow, resp: Response, now: float) -> None:
        tx = self.layer.receive_response(resp, now)
        if tx is None:
            self.count("sip_stray_response")

    # ------------------------------------------------------------------ input: backend side
    def receive_from_backend(self, data: bytes, src: Addr, transport: str, now: float) -> None:
        tenants = list(self._tenants_at(src[0]))
        if not tenants:
            self.count("sip_unknown_backend", f"from {src[0]}:{src[1]}")
            return
        if not data.strip(b"\r\n"):
            return  # keepalive
        back: Dest = ("backend", tenants[0].id, transport, src)
        try:
            msg = parse(data, limits=self.limits, require_max_forwards=False)
        except RemoteProtocolError as exc:
            self.count("sip_bad_from_backend", str(exc))
            self._reject_garbage(data, exc, back)  # e.g. 416 for an unsupported Request-URI scheme
            return
        try:
            if isinstance(msg, Response):
                self._response_from_backend(msg, now)
            else:
                self._request_from_backend(tenants, msg, src, transport, now)
        except (RemoteProtocolError, LocalProtocolError, ValueError) as exc:
            self.count("sip_bad_from_backend", str(exc))
            if isinstance(msg, Request) and msg.method != "ACK":
                self.count("sip_refused_400")
                self._answer_stateless(msg, 400, "Bad Request", back)
        self._pump(now)

    def _response_from_backend(self, resp: Response, now: float) -> None:
        top = resp.top_via
        if not self._via_is_ours(top):
            self.count("sip_stray_response")
            return
        if self.layer.receive_response(resp, now) is None:
            # e.g. a 2xx retransmission after the transaction ended: relay by Via to its flow
            self.count("sip_stray_response")

    def _target_flow(self, req: Request) -> tuple[bool, Flow | None, bool]:
        """(token found, flow, routes popped) from our Routes or a Request-URI alias."""
        routes = req.routes
        popped = False
        found = False
        flow: Flow | None = None
        while routes and self._is_ours(routes[0].uri):
            uri = routes.pop(0).uri
            popped = True
            user = uri.user if isinstance(uri, SipUri) else None
            if user and not found:
                found, flow = self._flow_by_token(user)
        if popped:
            req.set_routes(list(routes))
        if not found:
            ruri = req.request_uri
            if isinstance(ruri, SipUri) and self._is_ours(ruri):
                key = ruri.param(FLOW_PARAM) or ""
                token = key.split(".", 1)[0]
                if ruri.user and not key and not routes:
                    found, flow = self._flow_by_token(ruri.user)
                elif token:
                    found, flow = self._flow_by_token(token)
                    if flow is not None and key in flow.aliases:
                        req.uri = flow.aliases[key]
        return found, flow, popped

    def _request_from_backend(
        self, tenants: list[Any], req: Request, src: Addr, transport: str, now: float
    ) -> None:
        top = req.top_via
        self._stamp_received(req, top, src)
        back: Dest = ("backend", tenants[0].id, transport, _response_addr(req.top_via, src))
        if req.method == "CANCEL":
            self._cancel(req, back, now)
            return
        tx, is_new = self.layer.receive_request(req, now, reliable=transport != "udp")
        if tx is None:
            fwd = req.copy()
            found, flow, _ = self._target_flow(fwd)
            if flow is not None and flow.tenant in tenants:
                try:
                    fwd.decrement_max_forwards()
                except LocalProtocolError:
                    return
                fwd.push_via(self._client_via(flow))
                if fwd.body:
                    self.media.on_message(None, fwd, False, now)
                self._emit(("flow", flow.id), fwd.serialize())
            return
        if not is_new:
            return
        self._dest[tx] = back
        if req.method == "INVITE":
            self._respond_trying(tx, req, now)
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            self._respond(tx, req, 483, "Too Many Hops", now)
            return
        fwd = req.copy()
        found, flow, _ = self._target_flow(fwd)
        if self._hold_for_push(tx, req, fwd, flow, tenants, transport, src, now):
            return
        if flow is None and found and self._answer_in_grace(tx, req, tenants, now):
            return
        if flow is None:
            if found:
                self.count("sip_flow_failed")
                self._respond(tx, req, 430, "Flow Failed", now)
            else:
                self.count("sip_no_flow")
                self._respond(tx, req, 404, "Not Found", now)
            return
        if flow.tenant not in tenants:
            self.count("sip_foreign_flow", f"{tenants[0].id} -> flow of {flow.tenant.id}")
            self._respond(tx, req, 403, "Forbidden", now)
            return
        self._forward_to_flow(tx, req, fwd, flow, transport, src, now)

    def _forward_to_flow(
        self,
        tx: ServerTransaction,
        req: Request,
        fwd: Request,
        flow: Flow,
        transport: str,
        src: Addr,
        now: float,
    ) -> None:
        """Forward a PBX request (its copy ``fwd``, our Routes popped) to client connection ``flow``."""
        self._dest[tx] = self._shared(
            ("backend", flow.tenant.id, transport, _response_addr(req.top_via, src))
        )
        fwd.decrement_max_forwards()
        in_dialog = req.to.tag is not None
        if self.draining and not in_dialog and req.method == "INVITE":
            self.count("sip_refused_draining")
            self._respond(tx, req, 503, "Service Unavailable (draining)", now)
            return
        if req.method in DIALOG_METHODS and not in_dialog:
            fwd.prepend_record_route(self._backend_rr(transport))
            fwd.prepend_record_route(self._client_rr(flow))
        fwd.push_via(self._client_via(flow))
        pair = Pair(tx, flow.tenant.id, False, flow.id, fwd)
        self._pairs_by_server[tx] = pair
        if fwd.body:
            refused = self.media.on_message(pair, fwd, False, now)
            if refused is not None:
                self._respond(tx, req, refused, _REASONS.get(refused, "Refused"), now)
                return
        ctx = self.layer.send_request(fwd, now, reliable=True)
        pair.client = ctx
        self._pairs_by_client[ctx] = pair
        self._dest[ctx] = self._shared(("flow", flow.id))
        self.count("sip_requests_to_client")
        self._track_call(req, in_dialog, flow.tenant.id, flow.id, False, now)

    # ------------------------------------------------------------------ flows bound to the instance
    def _bind_instance(self, flow: Flow, register: Request, now: float) -> None:
        """A 2xx to ``register``: bind ``flow`` to the client's instance; replace an earlier connection."""
        try:
            key, unregister = binding_key(flow.tenant.id, register.to, register.contacts)
        except (RemoteProtocolError, ValueError):
            return
        registry = self.flow_registry
        if key is None:
            return
        if unregister:
            if registry.binding_of(flow.id) == key:
                registry.unbind(flow.id)
            return
        previous = registry.bindings.get(key)
        previous_flow = previous.flow_id if previous is not None else None
        lost_flows = list(previous.lost_flows) if previous is not None else []
        replaced = registry.bind(key, flow.id, flow.token, flow.aliases, now)
        if replaced is None:
            return
        for k, v in replaced.aliases.items():
            flow.aliases.setdefault(k, v)  # Contact aliases the PBX may still use
        self.count("flows_replaced")
        if previous_flow is not None and previous_flow != flow.id and previous_flow in self.flows:
            old = self.flows[previous_flow]
            self._tokens.pop(old.token, None)
            for call in self.calls.of_flow(previous_flow):
                self._recover(call, flow, now)
            self._actions.append(
                CloseFlow(previous_flow, "replaced by a new connection of the same instance")
            )
        for lost_id in lost_flows:
            for call in self.calls.of_flow(lost_id):
                self._recover(call, flow, now)

    def _recover(self, call: Call, flow: Flow, now: float) -> None:
        """``call`` moves to ``flow`` (the same instance, reconnected)."""
        old_flow, lost_at = call.flow_id, call.lost_at
        self.calls.move(call, flow.id)
        if not self.calls.of_flow(old_flow):
            self.flow_registry.recovered(old_flow)
        self.media.move(call.call_id, flow.id, now + self.flow_registry.grace, now)
        self.count("calls_recovered")
        if lost_at is not None:
            self.recovery.observe(now - lost_at)
            self.notices.append(("recovered", call.tenant_id, call.call_id, now - lost_at))

    # ------------------------------------------------------------------ push wake-up (RFC 8599)
    def _note_push(self, flow: Flow, register: Request, out: Response, now: float) -> None:
        """A 2xx to ``register``: create, refresh or remove its push binding (core/push/bindings.py)."""
        providers = self.push_providers(flow.tenant)
        if not providers:
            return  # push is off for this tenant: nothing advertised, nothing kept
        try:
            contacts = register.contacts
        except (RemoteProtocolError, ValueError):
            return
        for contact in contacts:
            if contact.is_star:
                continue
            params = push_params(contact.uri)
            if params is None:
                continue
            instance = (contact.param("+sip.instance") or "").strip('"<>').lower()
            if not instance:
                self.count(
                    "push_register_without_instance", f"{flow.tenant.id}: pn-provider without +sip.instance"
                )
                return
            key = PushKey(flow.tenant.id, _aor(register.to.uri), instance)
            if params.provider not in providers:
                self.count(
                    "push_provider_unsupported", f"{flow.tenant.id}: pn-provider {params.provider[:16]!r}"
                )
                out.headers.add("Feature-Caps", feature_caps(providers, None))
                return
            expires = _granted_expiry(out, register, contact, instance)
            if expires <= 0:
                if self.push_registry.remove(key) is not None:
                    self.count("push_bindings_removed")
                return
            known = key in self.push_registry.bindings
            binding = self.push_registry.register(
                key, params, flow.token, now + expires, secrets.token_hex(8)
            )
            if binding is None:
                self.count("push_bindings_refused", f"{flow.tenant.id}: push binding table full")
                return
            self.count("push_bindings_refreshed" if known else "push_bindings_registered")
            out.headers.add("Feature-Caps", feature_caps(providers, binding.purr))
            return

    def _push_binding_of(self, req: Request) -> Any:
        """The push binding an INVITE from the PBX targets: by our flow token, else by pn-purr."""
        registry = self.push_registry
        for route in req.routes:
            uri = route.uri
            if not self._is_ours(uri):
                break
            if isinstance(uri, SipUri) and uri.user:
                return registry.by_token(uri.user)
        ruri = req.request_uri
        if isinstance(ruri, SipUri):
            purr = ruri.param("pn-purr")
            if purr:
                return registry.by_purr(purr)
            if self._is_ours(ruri):
                key = ruri.param(FLOW_PARAM) or ""
                token = key.split(".", 1)[0] if key else (ruri.user or "")
                if token:
                    return registry.by_token(token)
        return None

    def _hold_for_push(
        self,
        tx: ServerTransaction,
        req: Request,
        fwd: Request,
        flow: Flow | None,
        tenants: list[Any],
        transport: str,
        src: Addr,
        now: float,
    ) -> bool:
        """An initial INVITE for an app whose connection is gone (or stale): hold it and push."""
        if req.method != "INVITE" or req.to.tag is not None or self.draining:
            return False
        stale = self.settings.push_stale
        if flow is not None and not (stale > 0 and now - flow.last_seen > stale):
            return False
        binding = self._push_binding_of(req)
        if binding is None or binding.key.tenant_id not in {t.id for t in tenants}:
            return False
        key = binding.key
        waiting = self.wakes.hold(
            key, binding.params.provider, now + self.settings.push_wait, now, (tx, req, fwd, transport, src)
        )
        self.count("push_calls_held")
        if self.settings.push_ring == 180:
            self._respond(tx, req, 180, "Ringing", now)
        caller = req.headers.get("from") or ""
        self._actions.append(
            Push(
                waiting.wake_id,
                key.tenant_id,
                binding.params.provider,
                binding.params.prid,
                binding.params.param,
                req.call_id,
                caller[:256],
                key,
            )
        )
        return True

    def _release_woken(self, flow_id: int, now: float) -> None:
        """The app registered again on ``flow_id``: its held INVITEs go there."""
        flow = self.flows.get(flow_id)
        bkey = self.flow_registry.binding_of(flow_id)
        if flow is None or bkey is None or not self.wakes.waiting:
            return
        key = PushKey(bkey.tenant_id, bkey.aor, bkey.instance)
        for waiting in self.wakes.of_key(key):
            self.wakes.release(waiting.wake_id)
            tx, req, fwd, transport, src = waiting.context
            self.wake_latency.observe(now - waiting.pushed_at)
            self.count("push_calls_delivered")
            self._forward_to_flow(tx, req, fwd, flow, transport, src, now)

    def push_result(self, push: Push, outcome: str, now: float) -> None:
        """The adapter's report for ``push``: "sent", "bad_token", "rate_limited" or "error"."""
        waiting = self.wakes.waiting.get(push.wake_id)
        if outcome == "bad_token":
            binding = self.push_registry.bindings.get(push.key)
            if binding is not None and binding.params.prid == push.prid:  # not re-registered with a new token
                self.push_registry.remove(push.key)
                self.count("push_bindings_dropped_bad_token")
        if outcome != "sent" and waiting is not None:
            self.wakes.release(waiting.wake_id)
            self.count("push_calls_lost_push_failed", f"{push.tenant_id}: push {outcome}")
            self._fail_waiting(waiting, FAILED_REASON, now)
        self._pump(now)

    def _fail_waiting(self, waiting: Waiting, reason: str, now: float) -> None:
        tx, req = waiting.context[0], waiting.context[1]
        resp = Response.for_request(req, 480, "Temporarily Unavailable", to_tag=new_tag())
        resp.headers.add("Server", self.settings.server_name)
        resp.headers.add("Reason", reason)
        self.count(_LOCAL_CLASS[4])
        self.layer.send_response(tx, resp, now)

    def _admit_dialog(self, flow: Flow, req: Request, now: float) -> int | None:
        """May ``flow`` send this in-dialog request? None, or the status refusing it (403/430).

        While the call's connection is alive, any connection of its tenant may (a client that opens
        a new connection to our Record-Route URI, RFC 3261 s.12.2.1.1; other tenants' tokens are
        refused by :meth:`_foreign_route_token`). Once it is lost (grace), only a connection of the
        same binding (tenant, AOR, instance, reg-id) may, and it takes the call over; anyone else
        gets 403. A token of a dead connection that belongs to no binding of this connection gets
        430 (RFC 5626 s.5.3).
        """
        call = self.calls.calls.get(req.call_id)
        if call is not None and call.tenant_id == flow.tenant.id:
            if call.flow_id != flow.id and call.flow_id not in self.flows:
                if not self.flow_registry.same_instance(call.flow_id, flow.id):
                    self.count("sip_dialog_foreign_flow", f"{flow.tenant.id}: call of another connection")
                    return 403
                self._recover(call, flow, now)
            if call.dialog is not None and req.method not in ("ACK", "CANCEL"):
                call.dialog.cseq = max(call.dialog.cseq, req.cseq.seq)
            return None
        token = self._route_token(req)
        if token is None or token == flow.token or token in self._tokens:
            return None
        key = self.flow_registry.key_of_token(token)
        if key is not None and key == self.flow_registry.binding_of(flow.id):
            return None
        if token in self._dead_tokens or key is not None:
            self.count("sip_flow_token_refused", f"{flow.tenant.id}: token of another connection")
            return 430
        return None

    def _route_token(self, req: Request) -> str | None:
        for route in req.routes:
            uri = route.uri
            if not self._is_ours(uri):
                return None
            if isinstance(uri, SipUri) and uri.user:
                return uri.user
        return None

    def _answer_locally(self, flow: Flow, tx: ServerTransaction, req: Request, now: float) -> bool:
        """Answer a client's re-INVITE here when it only changed the client's own transport."""
        if req.method != "INVITE" or not req.body or "session-expires" in req.headers:
            return False
        call = self.calls.calls.get(req.call_id)
        if call is None or call.dialog is None or call.flow_id != flow.id or call.state != "up":
            return False
        body = self.media.answer_locally(flow.tenant.id, req, now)
        if body is None:
            return False
        resp = Response.for_request(req, 200, "OK")
        resp.headers.add("Contact", f"<{call.dialog.target}>")
        resp.headers.add("Server", self.settings.server_name)
        resp.set_body(body, "application/sdp")
        self.layer.send_response(tx, resp, now)
        acks = self._local_acks
        acks[(req.call_id, req.cseq.seq)] = None
        if len(acks) > 10_000:
            acks.pop(next(iter(acks)))
        self.count("sip_reinvites_answered_locally")
        return True

    def _note_dialog(self, pair: Pair, resp: Response) -> None:
        """The 2xx of an initial INVITE: remember the dialog as the client's side sees it."""
        req = pair.request
        call = self.calls.calls.get(pair.call_id)
        if req is None or call is None or call.dialog is not None:
            return  # a 2xx retransmission: the dialog was noted at the first one
        try:
            if pair.from_client:
                local, remote = req.headers.get("from"), resp.headers.get("to")
                contacts = resp.contacts
                routes = [str(r) for r in reversed(resp.record_routes)]
            else:
                local, remote = resp.headers.get("to"), req.headers.get("from")
                contacts = req.contacts
                routes = [str(r) for r in req.record_routes]
        except (RemoteProtocolError, ValueError):
            return
        if not local or not remote or not contacts:
            return
        while routes and self._is_ours(_route_uri(routes[0])):
            routes.pop(0)
        seq = req.cseq.seq if pair.from_client else 0
        call.dialog = Dialog(local, remote, str(contacts[0].uri), tuple(routes), seq)

    def _answer_in_grace(self, tx: ServerTransaction, req: Request, tenants: list[Any], now: float) -> bool:
        """A PBX request for a call whose client connection is lost and in grace (flows.IN_GRACE)."""
        call = self.calls.calls.get(req.call_id)
        if call is None or call.state != "grace" or req.to.tag is None:
            return False
        if not any(t.id == call.tenant_id for t in tenants):
            return False
        status, reason = in_grace_answer(req.method)
        self.count("sip_requests_in_grace")
        self._respond(tx, req, status, reason, now)
        if req.method == "BYE":
            self._end_call(call, "BYE")
        return True

    def _end_call(self, call: Call, reason: str) -> None:
        lost_flow = call.flow_id
        self.calls.bye(call.call_id)
        self.media.on_end(call.call_id, reason, call.tenant_id)
        if not self.calls.of_flow(lost_flow):
            self.flow_registry.recovered(lost_flow)

    def _end_after_grace(self, call: Call, now: float) -> None:
        """The client did not come back in time: BYE to the PBX (with a Reason), free everything."""
        dialog = call.dialog
        tenant = self._tenant_objects.get(call.tenant_id)
        self.count("calls_lost_after_grace")
        self.notices.append(("lost", call.tenant_id, call.call_id, self.flow_registry.grace))
        if dialog is not None and tenant is not None:
            transport, addr = self._backend_of(tenant)
            dialog.cseq += 1
            bye = Request("BYE", dialog.target)
            s = self.settings
            bye.headers.add("Via", self._via(transport, s.backend_host, s.backend_port, new_branch()))
            bye.headers.add("Max-Forwards", "70")
            for route in dialog.routes:
                bye.headers.add("Route", route)
            bye.headers.add("From", dialog.local)
            bye.headers.add("To", dialog.remote)
            bye.headers.add("Call-ID", call.call_id)
            bye.headers.add("CSeq", f"{dialog.cseq} BYE")
            bye.headers.add("Reason", GRACE_BYE_REASON)
            bye.headers.add("User-Agent", s.server_name)
            bye.headers.add("Content-Length", "0")
            ctx = self.layer.send_request(bye, now, reliable=transport != "udp")
            self._dest[ctx] = ("backend", call.tenant_id, transport, addr)
        self.calls.bye(call.call_id)
        self.media.on_end(call.call_id, "flow grace expired", call.tenant_id)

    # ------------------------------------------------------------------ CANCEL
    def _cancel(self, cancel: Request, dest: Dest, now: float) -> None:
        top = cancel.top_via
        branch = top.branch or ""
        host, port = top.sent_by
        invite_tx = self.layer.server(cookie_server_key(branch, host, port, "INVITE"))
        tx, is_new = self.layer.receive_request(cancel, now, reliable=dest[0] != "backend")
        if tx is None or not is_new:
            return
        self._dest[tx] = dest
        pair = self._pairs_by_server.get(invite_tx) if invite_tx is not None else None
        if pair is None:
            waiting = self.wakes.find(lambda ctx: ctx[0] is invite_tx) if invite_tx is not None else None
            if waiting is not None:  # held for a push wake-up: 200 to the CANCEL, 487 to the INVITE
                self.wakes.release(waiting.wake_id)
                self.count("push_calls_cancelled")
                self._respond(tx, cancel, 200, "OK", now)
                self._respond(waiting.context[0], waiting.context[1], 487, "Request Terminated", now)
                return
            if invite_tx is not None:  # answered here (e.g. by the echo service): no effect
                self._respond(tx, cancel, 200, "OK", now)
                return
            self._respond(tx, cancel, 481, "Call/Transaction Does Not Exist", now)
            return
        self._respond(tx, cancel, 200, "OK", now)
        if pair.final_sent:
            return
        if pair.client is None or not pair.got_provisional:
            pair.cancel_pending = True  # RFC 3261 s.9.1: CANCEL only after a provisional response
            return
        self._send_cancel(pair, now)

    def _send_cancel(self, pair: Pair, now: float) -> None:
        inv = pair.request
        if pair.client is None or inv is None:
            return
        c = Request("CANCEL", inv.uri)
        c.headers.add("Via", inv.headers.first_value("via") or "")
        for name in ("route",):
            for v in inv.headers.get_all(name):
                c.headers.add("Route", v)
        c.headers.add("Max-Forwards", "70")
        c.headers.add("From", inv.headers.get("from") or "")
        c.headers.add("To", inv.headers.get("to") or "")
        c.headers.add("Call-ID", inv.call_id)
        c.headers.add("CSeq", f"{inv.cseq.seq} CANCEL")
        c.headers.add("Content-Length", "0")
        dest = self._dest.get(pair.client)
        if dest is None:
            return
        ctx = self.layer.send_request(c, now, reliable=not (dest[0] == "backend" and dest[2] == "udp"))
        self._dest[ctx] = dest
        pair.cancel_pending = False

    # ------------------------------------------------------------------ relaying responses
    def _relay_response(self, ctx: ClientTransaction, resp: Response, now: float) -> None:
        pair = self._pairs_by_client.get(ctx)
        if pair is None:
            return  # e.g. the 200 for a CANCEL we sent
        status = resp.status
        if status >= 200 and pair.from_client and not pair.final_sent and self.on_backend_final is not None:
            self.on_backend_final(pair, resp)
        if status < 200:
            pair.got_provisional = True
            if pair.cancel_pending:
                self._send_cancel(pair, now)
            if status == 100:
                return  # 100 is hop-by-hop
        out = resp.copy()
        out.pop_via()
        method = pair.method
        if pair.from_client and method == "REGISTER" and status < 300:
            flow = self.flows.get(pair.flow_id)
            if flow is not None:
                self._register_inbound(flow, out, status)
                if status >= 200:
                    self._bind_instance(flow, pair.server.request, now)
                    self._note_push(flow, pair.server.request, out, now)
        if pair.refused_ack is not None:
            if 200 <= status < 300:
                self._emit(*pair.refused_ack)  # the far side retransmits its 2xx: ACK it again
            return
        if pair.abandoned:
            if 200 <= status < 300:  # the 2xx crossed our CANCEL: end that dialog too
                self._end_refused_answer(pair, resp, now)
            return
        if out.body:
            refused = self.media.on_message(pair, out, not pair.from_client, now)
            if refused is not None and status < 300 and pair.final_sent:
                return  # a 2xx retransmission the media layer refuses: dropped
            if refused is not None and 200 <= status < 300 and method == "INVITE":
                self._end_refused_answer(pair, resp, now)
                return
            if refused is not None and status < 200 and method == "INVITE" and pair.initial:
                self._abandon(pair, now)
                return
            if refused is not None and status < 300:
                out = Response.for_request(pair.server.request, 500, "Media Error")
        self.count(_RELAYED_CLASS[status // 100 % 7])
        if status >= 200:
            if method == "BYE" and status < 300:
                self._bye_done(pair)
            if method == "INVITE":
                if status < 300:
                    self.calls.answered(pair.call_id, now)
                    if pair.initial:
                        self._note_dialog(pair, resp)
                else:
                    self.calls.failed(pair.call_id)
            if pair.final_sent and status >= 300:
                return
            pair.final_sent = True
            if status >= 300 and method == "INVITE" and pair.initial:
                self.media.on_end(pair.call_id, f"{status}")  # a failed re-INVITE keeps the call
        if status in (401, 403, 407) and pair.from_client:
            self.count("sip_auth_challenges")
        self.layer.send_response(pair.server, out, now)
        if pair.from_client and method == "REGISTER" and 200 <= status < 300:
            self._release_woken(pair.flow_id, now)
        if status >= 200:
            pair.request = None  # only the compact record stays while Timer L/J keeps the pair

    def _abandon(self, pair: Pair, now: float) -> None:
        """An early answer (18x) the edge cannot relay: CANCEL the INVITE, refuse it with 488 (counted)."""
        call_id = pair.call_id
        self.count("sip_answer_refused_early", f"{pair.tenant_id} call {call_id}: 18x answer not usable")
        pair.abandoned = True
        if pair.client is not None:
            self._send_cancel(pair, now)
        self.calls.failed(call_id)
        self.media.on_end(call_id, "answer refused", pair.tenant_id)
        self._refuse_invite(pair, now)

    def _refuse_invite(self, pair: Pair, now: float) -> None:
        if pair.final_sent:
            return
        error = Response.for_request(pair.server.request, 488, "Not Acceptable Here (answer not usable)")
        error.headers.add("Server", self.settings.server_name)
        self.count(_LOCAL_CLASS[4])
        pair.final_sent = True
        self.layer.send_response(pair.server, error, now)

    def _end_refused_answer(self, pair: Pair, resp: Response, now: float) -> None:
        """A 2xx whose answer the edge cannot relay: ACK it and BYE that dialog on the side that sent
        it, answer the INVITE's sender with an error, end the call and its media; counted.

        Without this the answering side would keep its dialog open (retransmitting an unACKed 2xx,
        RFC 3261 s.13.3.1.4) while the caller gets an error: a half-open call.
        """
        call_id = pair.call_id
        inv = pair.request  # kept: a refused pair never reaches the compact state
        dest = self._dest.get(pair.client) if pair.client is not None else None
        self.count("sip_answer_refused_after_2xx", f"{pair.tenant_id} call {call_id}: 2xx answer not usable")
        if dest is not None and inv is not None:
            ack = self._in_dialog_request("ACK", pair, inv, resp, inv.cseq.seq)
            ack.push_via(self._own_via(pair, dest))
            pair.refused_ack = (dest, ack.serialize())
            self._emit(dest, pair.refused_ack[1])
            bye = self._in_dialog_request("BYE", pair, inv, resp, inv.cseq.seq + 1)
            bye.push_via(self._own_via(pair, dest))
            ctx = self.layer.send_request(bye, now, reliable=not (dest[0] == "backend" and dest[2] == "udp"))
            self._dest[ctx] = dest  # no pair: its response is absorbed
        self.calls.failed(call_id)
        self.media.on_end(call_id, "answer refused", pair.tenant_id)
        self._refuse_invite(pair, now)

    def _in_dialog_request(self, method: str, pair: Pair, inv: Request, resp: Response, seq: int) -> Request:
        """ACK/BYE from the INVITE's sender's place in the dialog a 2xx (``resp``) created.

        Toward a PBX the route set is the 2xx's Record-Route reversed, minus our own entries (RFC
        3261 s.12.1.2); toward a client flow there is no further hop.
        """
        contacts = resp.contacts
        target = str(contacts[0].uri) if contacts and not contacts[0].is_star else inv.uri
        req = Request(method, target)
        if pair.from_client:
            routes = [r for r in reversed(resp.record_routes) if not self._is_ours(r.uri)]
            if routes:
                req.set_routes(list(routes))
        req.headers.add("Max-Forwards", "70")
        req.headers.add("From", inv.headers.get("from") or "")
        req.headers.add("To", resp.headers.get("to") or "")
        req.headers.add("Call-ID", inv.call_id)
        req.headers.add("CSeq", f"{seq} {method}")
        req.headers.add("Content-Length", "0")
        return req

    def _own_via(self, pair: Pair, dest: Dest) -> str:
        if dest[0] == "flow":
            flow = self.flows.get(dest[1])
            if flow is not None:
                return self._client_via(flow)
        s = self.settings
        transport = dest[2] if dest[0] == "backend" else "tls"
        return self._via(transport, s.backend_host, s.backend_port, new_branch())

    def _bye_done(self, pair: Pair) -> None:
        call_id = pair.call_id
        self.calls.bye(call_id)
        self.media.on_end(call_id, "BYE", pair.tenant_id)

    def _register_inbound(self, flow: Flow, resp: Response, status: int) -> None:
        if status >= 200:
            flow.registered = True
            try:
                flow.aor = address_of_record(resp.to.uri)
            except RemoteProtocolError:
                flow.aor = ""
        if flow.tenant.path or not flow.aliases:
            return
        contacts = resp.headers.get_all("contact")
        if not contacts:
            return
        restored = []
        for value in resp.contacts:
            uri = value.uri
            key = uri.param(FLOW_PARAM) if isinstance(uri, SipUri) else None
            original = flow.aliases.get(key or "")
            restored.append(_replace_uri(value, original) if original else str(value))
        resp.headers.set("Contact", ", ".join(restored))

    def _relay_ack(self, stx: ServerTransaction, ack: Request, now: float) -> None:
        pair = self._pairs_by_server.get(stx)
        if pair is None:
            dest = self._dest.get(stx)
            local = self.local
            if local is not None and dest is not None and dest[0] == "flow":
                flow = self.flows.get(dest[1])
                if flow is not None and local.claims(flow, ack):
                    local.request(flow, ack, now)
            return
        flow = self.flows.get(pair.flow_id)
        if pair.from_client and flow is not None:
            self._forward_ack_to_backend(flow, ack, now)

    def _on_failure(self, tx: Any, timeout: bool, now: float) -> None:
        if isinstance(tx, ClientTransaction):
            pair = self._pairs_by_client.get(tx)
            if pair is None or pair.final_sent:
                return
            if timeout:
                self.count("sip_backend_timeout" if pair.from_client else "sip_client_timeout")
                status, reason = 408, "Request Timeout (no answer from the next hop)"
            else:
                self.count("sip_transport_error")
                if pair.from_client:
                    status, reason = 503, "Service Unavailable (next hop unreachable)"
                else:
                    status, reason = 430, "Flow Failed"
            if pair.method == "BYE":
                self._bye_done(pair)  # the far side is gone: the call is over all the same
            if pair.method == "INVITE":
                if pair.initial:
                    self.media.on_end(pair.call_id, reason)
                self.calls.failed(pair.call_id)
            self._respond(pair.server, pair.server.request, status, reason, now)
        else:
            self.count("sip_server_tx_failure")


# ---------------------------------------------------------------------------------------------


# Counter names of responses by class (index = status // 100; 0 and 7+ are not SIP classes).
_LOCAL_CLASS = tuple(f"sip_responses_local_{c}xx" for c in range(7))
_RELAYED_CLASS = tuple(f"sip_responses_relayed_{c}xx" for c in range(7))

_REASONS = {488: "Not Acceptable Here", 503: "Service Unavailable", 500: "Server Internal Error"}


def _aor(uri: Any) -> str:
    if isinstance(uri, SipUri):
        user = f"{uri.user}@" if uri.user else ""
        return f"sip:{user}{uri.host.lower()}"
    return str(uri).lower()


def _granted_expiry(out: Response, register: Request, contact: NameAddr, instance: str) -> int:
    """Seconds the registrar granted the push Contact: its 2xx Contact's expires, the 2xx's Expires,
    the request's (RFC 3261 s.10.2.1.1); 3600 when nobody said."""
    candidates: list[str | None] = []
    try:
        for c in out.contacts:
            if not c.is_star and (c.param("+sip.instance") or "").strip('"<>').lower() == instance:
                candidates.append(c.param("expires"))
    except (RemoteProtocolError, ValueError):
        pass
    candidates += [out.headers.get("expires"), contact.param("expires"), register.headers.get("expires")]
    for value in candidates:
        if value is not None and value.strip().isdigit():
            return int(value.strip())
    return 3600


def _initial_invite(request: Request) -> bool:
    return request.method == "INVITE" and request.to.tag is None


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _replace_uri(value: NameAddr, uri: str) -> str:
    """``value`` (a name-addr with params) with its URI replaced."""
    text = str(value)
    lt, gt = text.find("<"), text.find(">")
    if lt >= 0 and gt > lt:
        return text[: lt + 1] + uri + text[gt:]
    return f"<{uri}>" + text[len(str(value.uri)) :]


def _route_uri(text: str) -> Any:
    try:
        return parse_name_addr(text).uri
    except (RemoteProtocolError, ValueError):
        return None


def _response_addr(via: Any, src: Addr) -> Addr:
    """Where to send responses (RFC 3581: back to the source when rport; else received/sent-by)."""
    return src


def _error_from_bytes(data: bytes, status: int, reason: str) -> bytes | None:
    """A best-effort error response to a request too broken to parse (needs Via/From/To/Call-ID/CSeq)."""
    try:
        head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    except Exception:  # pragma: no cover - decode with replace does not raise
        return None
    lines = head.split("\r\n")
    if not lines or lines[0].startswith("SIP/"):
        return None
    wanted = {
        "via": "Via",
        "v": "Via",
        "from": "From",
        "f": "From",
        "to": "To",
        "t": "To",
        "call-id": "Call-ID",
        "i": "Call-ID",
        "cseq": "CSeq",
    }
    got: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        key = wanted.get(name.strip().lower())
        if sep and key:
            got.setdefault(key, []).append(value.strip())
    if not all(k in got for k in ("Via", "From", "To", "Call-ID", "CSeq")):
        return None
    if got["CSeq"][0].split()[-1:] == ["ACK"]:
        return None
    safe = "".join(ch for ch in reason if 32 <= ord(ch) < 127)
    out = [f"SIP/2.0 {status} {safe or 'Bad Request'}"]
    out += [f"Via: {v}" for v in got["Via"]]
    for k in ("From", "To", "Call-ID", "CSeq"):
        out.append(f"{k}: {got[k][0]}")
    out += ["Content-Length: 0", "", ""]
    return "\r\n".join(out).encode()
