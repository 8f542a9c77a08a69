"""The SIP proxy core: a transaction-stateful, tenant-bound proxy between client flows and PBXs.

Theory of operation
-------------------
Two sides. The *client side* is a set of flows (WebSocket or TLS connections from browsers and
the mobile app), each bound to one tenant when it was accepted. The *backend side* is each
tenant's PBX, reached over UDP (TCP/TLS later) from ``listen.backend_sip``.

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

from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

from .calls import CallTable, address_of_record
from .framing import PING, PONG
from .headers import NameAddr, SipUri
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
)

__all__ = [
    "CloseFlow",
    "Flow",
    "LocalService",
    "MediaHook",
    "Pair",
    "ProxySettings",
    "SipProxy",
    "TenantInfo",
    "ToBackend",
    "ToFlow",
]

MAGIC = "z9hG4bK"
DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
SDP_METHODS = frozenset({"INVITE", "ACK", "UPDATE", "PRACK"})
FLOW_PARAM = "mcsf"
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
    #: The SIP/TLS listener's port (``listen.sip_tls``); None = no such listener (``public_port``).
    public_tls_port: int | None = None
    #: Every other (host, port) the edge listens on (RFC 3261 s.16.4: Routes naming them are ours).
    listen_addresses: frozenset[tuple[str, int]] = frozenset()

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


Action = ToFlow | ToBackend | CloseFlow


# Where a transaction's messages go: ("flow", flow_id) or ("backend", tenant_id, transport, addr).
Dest = tuple[Any, ...]


@dataclass(slots=True, eq=False)
class Pair:
    server: ServerTransaction
    tenant_id: str
    from_client: bool
    flow_id: int  # the client flow involved (source or target)
    request: Request  # the forwarded request (as sent)
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


class MediaHook(Protocol):
    """Rewrites SDP bodies; returns an error response status to refuse (e.g. 488, 503)."""

    def on_message(
        self, pair: Pair | None, message: Request | Response, from_client: bool, now: float
    ) -> int | None: ...

    def on_end(self, call_id: str, reason: str, tenant_id: str | None = None) -> None: ...

    def on_flow_closed(self, flow_id: int, now: float) -> None: ...


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
        self._pairs_by_server: dict[ServerTransaction, Pair] = {}
        self._pairs_by_client: dict[ClientTransaction, Pair] = {}
        self.counters: dict[str, int] = {}
        self.problems: deque[str] = deque(maxlen=256)
        #: Calls (INVITE dialogs) up, by Call-ID and by flow (admin API, metrics, drain).
        self.calls = CallTable()
        #: Graceful drain: new calls (initial INVITEs, either direction) get 503 + Retry-After.
        self.draining = False
        #: Told of every final response a PBX gives to a client's request, before it is relayed
        #: (the guard watches authentication outcomes there); None = nobody listens.
        self.on_backend_final: Callable[[Pair, Response], None] | None = None
        #: Requests answered by the edge itself (the echo service); None = everything is forwarded.
        self.local: LocalService | None = None
        self._our_hosts = settings.own_addresses()

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
        return self.layer.get_timer()

    def handle_timer(self, now: float) -> None:
        self.layer.handle_timer(now)
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
        self.flows[flow_id] = flow
        self._tokens[token] = flow_id
        return flow

    def close_flow(self, flow_id: int, now: float) -> None:
        flow = self.flows.pop(flow_id, None)
        if flow is None:
            return
        self._tokens.pop(flow.token, None)
        self.calls.flow_closed(flow_id)
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

    def tenant_of_token(self, token: str) -> Any:
        """The tenant of the live flow with ``token`` (binding a connection without SNI), or None."""
        _found, flow = self._flow_by_token(token)
        return flow.tenant if flow is not None else None

    def _flow_by_token(self, token: str) -> tuple[bool, Flow | None]:
        flow_id = self._tokens.get(token)
        if flow_id is not None:
            return True, self.flows.get(flow_id)
        return token in self._dead_tokens, None

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

    def _backend_rr(self) -> str:
        s = self.settings
        return f"<sip:{_hostport(s.backend_host, s.backend_port)};transport={s.backend_transport};lr;r2=on>"

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

    def _answer_stateless(self, request: Request, status: int, reason: str, dest: Dest) -> None:
        if request.method == "ACK":
            return
        resp = Response.for_request(request, status, reason, to_tag=new_tag())
        resp.headers.add("Server", self.settings.server_name)
        self._emit(dest, resp.serialize())

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
            if self.local is not None and self.local.claims(flow, req):
                self.local.request(flow, req, now)
                return
            self._forward_ack_to_backend(flow, req, now)
            return
        if not is_new:
            return
        self._dest[tx] = ("flow", flow.id)
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
        fwd = req.copy()
        if self._foreign_route_token(flow, self._strip_our_routes(fwd)):
            self._respond(tx, req, 403, "Forbidden (dialog of another tenant)", now)
            return
        fwd.decrement_max_forwards()
        if req.method in DIALOG_METHODS and not in_dialog:
            fwd.prepend_record_route(self._client_rr(flow))
            fwd.prepend_record_route(self._backend_rr())
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
        self._dest[ctx] = ("backend", tenant.id, transport, addr)
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
        self._dest[ctx] = ("flow", flow_id)
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
        if flow.tenant.path:
            fwd.headers.insert_first(
                "Path", f"<sip:{flow.token}@{_hostport(s.backend_host, s.backend_port)};lr;ob>"
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
            alias = f"sip:{user}@{_hostport(s.backend_host, s.backend_port)};{FLOW_PARAM}={key}"
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
        self._dest[tx] = ("backend", flow.tenant.id, transport, _response_addr(req.top_via, src))
        fwd.decrement_max_forwards()
        in_dialog = req.to.tag is not None
        if self.draining and not in_dialog and req.method == "INVITE":
            self.count("sip_refused_draining")
            self._respond(tx, req, 503, "Service Unavailable (draining)", now)
            return
        if req.method in DIALOG_METHODS and not in_dialog:
            fwd.prepend_record_route(self._backend_rr())
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
        self._dest[ctx] = ("flow", flow.id)
        self.count("sip_requests_to_client")
        self._track_call(req, in_dialog, flow.tenant.id, flow.id, False, now)

    # ------------------------------------------------------------------ CANCEL
    def _cancel(self, cancel: Request, dest: Dest, now: float) -> None:
        top = cancel.top_via
        branch = top.branch or ""
        host, port = top.sent_by
        key = (branch, host, "" if port is None else str(port), "INVITE")
        invite_tx = self.layer._servers.get(key)
        tx, is_new = self.layer.receive_request(cancel, now, reliable=dest[0] != "backend")
        if tx is None or not is_new:
            return
        self._dest[tx] = dest
        pair = self._pairs_by_server.get(invite_tx) if invite_tx is not None else None
        if pair is None:
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
        assert pair.client is not None
        inv = pair.request
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
        if resp.status >= 200 and pair.from_client and self.on_backend_final is not None:
            self.on_backend_final(pair, resp)
        if resp.status < 200:
            pair.got_provisional = True
            if pair.cancel_pending:
                self._send_cancel(pair, now)
            if resp.status == 100:
                return  # 100 is hop-by-hop
        out = resp.copy()
        out.pop_via()
        if pair.from_client and pair.request.method == "REGISTER" and resp.status < 300:
            flow = self.flows.get(pair.flow_id)
            if flow is not None:
                self._register_inbound(flow, out, resp.status)
        if pair.refused_ack is not None:
            if 200 <= resp.status < 300:
                self._emit(*pair.refused_ack)  # the far side retransmits its 2xx: ACK it again
            return
        if pair.abandoned:
            if 200 <= resp.status < 300:  # the 2xx crossed our CANCEL: end that dialog too
                self._end_refused_answer(pair, resp, now)
            return
        if out.body:
            refused = self.media.on_message(pair, out, not pair.from_client, now)
            if refused is not None and 200 <= resp.status < 300 and pair.request.method == "INVITE":
                self._end_refused_answer(pair, resp, now)
                return
            if refused is not None and resp.status < 200 and _initial_invite(pair.request):
                self._abandon(pair, now)
                return
            if refused is not None and resp.status < 300:
                out = Response.for_request(pair.server.request, 500, "Media Error")
        self.count(_RELAYED_CLASS[resp.status // 100 % 7])
        if resp.status >= 200:
            if pair.request.method == "BYE" and resp.status < 300:
                self._bye_done(pair)
            if pair.request.method == "INVITE":
                if resp.status < 300:
                    self.calls.answered(pair.request.call_id, now)
                else:
                    self.calls.failed(pair.request.call_id)
            if pair.final_sent and resp.status >= 300:
                return
            pair.final_sent = True
            if resp.status >= 300 and pair.request.method == "INVITE" and pair.request.to.tag is None:
                self.media.on_end(pair.request.call_id, f"{resp.status}")  # a failed re-INVITE keeps the call
        if resp.status in (401, 403, 407) and pair.from_client:
            self.count("sip_auth_challenges")
        self.layer.send_response(pair.server, out, now)

    def _abandon(self, pair: Pair, now: float) -> None:
        """An early answer (18x) the edge cannot relay: CANCEL the INVITE, refuse it with 488 (counted)."""
        call_id = pair.request.call_id
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
        call_id = pair.request.call_id
        dest = self._dest.get(pair.client) if pair.client is not None else None
        self.count("sip_answer_refused_after_2xx", f"{pair.tenant_id} call {call_id}: 2xx answer not usable")
        if dest is not None:
            ack = self._in_dialog_request("ACK", pair, resp, pair.request.cseq.seq)
            ack.push_via(self._own_via(pair, dest))
            pair.refused_ack = (dest, ack.serialize())
            self._emit(dest, pair.refused_ack[1])
            bye = self._in_dialog_request("BYE", pair, resp, pair.request.cseq.seq + 1)
            bye.push_via(self._own_via(pair, dest))
            ctx = self.layer.send_request(bye, now, reliable=not (dest[0] == "backend" and dest[2] == "udp"))
            self._dest[ctx] = dest  # no pair: its response is absorbed
        self.calls.failed(call_id)
        self.media.on_end(call_id, "answer refused", pair.tenant_id)
        self._refuse_invite(pair, now)

    def _in_dialog_request(self, method: str, pair: Pair, resp: Response, seq: int) -> Request:
        """ACK/BYE from the INVITE's sender's place in the dialog a 2xx (``resp``) created.

        Toward a PBX the route set is the 2xx's Record-Route reversed, minus our own entries (RFC
        3261 s.12.1.2); toward a client flow there is no further hop.
        """
        inv = pair.request
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
        call_id = pair.request.call_id
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
            if pair.request.method == "BYE":
                self._bye_done(pair)  # the far side is gone: the call is over all the same
            if pair.request.method == "INVITE":
                if pair.request.to.tag is None:
                    self.media.on_end(pair.request.call_id, reason)
                self.calls.failed(pair.request.call_id)
            self._respond(pair.server, pair.server.request, status, reason, now)
        else:
            self.count("sip_server_tx_failure")


# ---------------------------------------------------------------------------------------------


# Counter names of responses by class (index = status // 100; 0 and 7+ are not SIP classes).
_LOCAL_CLASS = tuple(f"sip_responses_local_{c}xx" for c in range(7))
_RELAYED_CLASS = tuple(f"sip_responses_relayed_{c}xx" for c in range(7))

_REASONS = {488: "Not Acceptable Here", 503: "Service Unavailable", 500: "Server Internal Error"}


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
