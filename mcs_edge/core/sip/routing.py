"""Routing: which entries name this edge, and the Via/Record-Route values that bring messages back.

In: the proxy's settings (the edge's addresses and ports), a tenant lookup by SIP domain and a
random source (Via branches). Out: answers (is this URI ours? which flow token does our Route
carry? is this Via ours?) and header values (Via, Record-Route). It keeps no state beyond the set
of the edge's own (host, port) pairs and never touches a message it is not handed.

=========================================  =======================================================
question                                   answer
=========================================  =======================================================
a Route or Request-URI names us            RFC 3261 s.16.4: one of our (host, port) pairs (no port
                                           = any of them), or a tenant's SIP domain on one of our
                                           ports (clients use it as their outbound proxy); a
                                           missing port is 5060, 5061 for sips: or transport=tls
our Route entries on a request             RFC 3261 s.16.4: removed before forwarding (loose
                                           routing, ``lr``); the first user part among them is
                                           our flow token (RFC 5626 s.5.3)
Record-Route of a dialog-creating request  RFC 3261 s.16.6 step 4, RFC 5658: two entries
                                           (``r2=on``), one per side; the client-facing one
                                           carries the flow token at the listener of the flow's
                                           transport (RFC 3261 s.12.2.1.1: clients may open a new
                                           connection to it)
the Via we push                            RFC 3261 s.16.6 step 8 with ``rport`` (RFC 3581);
                                           toward a WebSocket client ``SIP/2.0/WSS host``
                                           (RFC 7118 s.5.2); branch with the magic cookie
a Via is ours                              RFC 3261 s.16.3 step 4 / s.16.7 step 3: one of our
                                           (host, port) pairs and a branch with the magic cookie
received / rport on the top Via            RFC 3261 s.18.2.1, RFC 3581 s.4: the source address
where responses go                         RFC 3581 s.4: back to the source (``response_addr``)
=========================================  =======================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from mcs_edge.core.randomness import RandomBytes
from mcs_edge.errors import RemoteProtocolError

from .headers import NameAddr, SipUri, parse_name_addr
from .message import Request
from .transaction import TimerConfig

if TYPE_CHECKING:
    from .flows import Flow

__all__ = [
    "FLOW_PARAM",
    "MAGIC",
    "ProxySettings",
    "Routing",
    "TenantInfo",
    "hostport",
    "replace_uri",
    "response_addr",
    "route_uri",
    "stamp_received",
]

MAGIC = "z9hG4bK"  # RFC 3261 s.8.1.1.7: the branch cookie
FLOW_PARAM = "mcsf"  # Contact alias parameter (PBXs without Path support)
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


_BRANCHES_PER_DRAW = 64


class Routing:
    """The routing decisions of the module docstring for one set of settings."""

    def __init__(
        self, settings: ProxySettings, tenant_for_domain: Callable[[str], Any], random_bytes: RandomBytes
    ) -> None:
        self.settings = settings
        self._own(settings)
        self._tenant_for_domain = tenant_for_domain
        self._random_bytes = random_bytes
        self._branches: list[str] = []

    def update(self, settings: ProxySettings) -> None:
        """New settings (e.g. ports known once bound); the set of our own addresses follows."""
        self.settings = settings
        self._own(settings)

    def _own(self, settings: ProxySettings) -> None:
        self.own = settings.own_addresses()
        # what is_ours asks per Route entry, as sets (no walk over the pairs)
        self._own_hosts = frozenset(h for h, _p in self.own)
        self._own_ports = frozenset(p for _h, p in self.own)

    def new_branch(self) -> str:
        """A new RFC 3261 branch: the magic cookie and 80 random bits (RFC 3261 s.8.1.1.7: unique
        across space and time). Drawn 64 at a time: one call of the random source (a system call)
        per 64 branches instead of one per branch, two per INVITE transaction."""
        branches = self._branches
        if not branches:
            pool = self._random_bytes(10 * _BRANCHES_PER_DRAW).hex()
            branches.extend(MAGIC + pool[i : i + 20] for i in range(0, 20 * _BRANCHES_PER_DRAW, 20))
        return branches.pop()

    def is_ours(self, uri: SipUri | Any) -> bool:
        """Does ``uri`` name this edge (RFC 3261 s.16.4)? Any of our addresses and listening ports,
        or a tenant's SIP domain (clients use it as their outbound proxy) on one of our ports."""
        if not isinstance(uri, SipUri):
            return False
        host = uri.host.lower().strip("[]")
        port = uri.port
        if port is None:
            if host in self._own_hosts:
                return True
            secure = uri.scheme == "sips" or (uri.param("transport") or "").lower() == "tls"
            port = 5061 if secure else 5060
        elif (host, port) in self.own:
            return True
        return port in self._own_ports and self._tenant_for_domain(host) is not None

    def via(self, transport: str, host: str, port: int, branch: str) -> str:
        if transport == "wss":
            return f"SIP/2.0/WSS {host};branch={branch};rport"
        return f"SIP/2.0/{transport.upper()} {hostport(host, port)};branch={branch};rport"

    def backend_via(self, transport: str) -> str:
        """A new Via of ours toward a PBX reached over ``transport``."""
        s = self.settings
        return self.via(transport, s.backend_host, s.backend_port, self.new_branch())

    def client_via(self, flow: Flow) -> str:
        """A new Via of ours toward client connection ``flow``."""
        s = self.settings
        return self.via(flow.transport, s.public_host, s.client_port(flow.transport), self.new_branch())

    def client_rr(self, flow: Flow) -> str:
        """Our Record-Route toward a client: the flow token at the listener of the flow's transport.

        A client may send in-dialog requests to this URI on a new connection (RFC 3261 s.12.2.1.1):
        it must name the SIP/TLS listener for a TLS client, the HTTPS port for a WebSocket client.
        """
        s = self.settings
        transport = "ws" if flow.transport == "wss" else "tls"
        port = s.client_port(flow.transport)
        return f"<sip:{flow.token}@{hostport(s.public_host, port)};transport={transport};lr;r2=on>"

    def backend_rr(self, transport: str | None = None) -> str:
        """Our Record-Route toward the PBX (reached over ``transport``)."""
        s = self.settings
        tp = transport or s.backend_transport
        return f"<sip:{hostport(s.backend_host, s.backend_port)};transport={tp};lr;r2=on>"

    def via_is_ours(self, via: Any) -> bool:
        host, port = via.sent_by
        branch = via.branch or ""
        return (host.lower(), port or 5060) in self.own and branch.startswith(MAGIC)

    def strip_our_routes(self, req: Request) -> list[NameAddr]:
        """Remove the leading Route entries that name us; returns them."""
        popped: list[NameAddr] = []
        routes = req.routes
        while routes and self.is_ours(routes[0].uri):
            popped.append(routes.pop(0))
        if popped:
            req.set_routes(list(routes))
        return popped

    def route_token(self, req: Request) -> str | None:
        """The flow token (user part) of the first of our leading Route entries that has one."""
        for route in req.routes:
            uri = route.uri
            if not self.is_ours(uri):
                return None
            if isinstance(uri, SipUri) and uri.user:
                return uri.user
        return None


def stamp_received(req: Request, top: Any, peer: Addr) -> None:
    """RFC 3261 s.18.2.1 / RFC 3581 s.4: note where the request really came from on its top Via."""
    host, _port = top.sent_by
    # an IPv6 source in brackets (the form RFC 5118's IPv6 Via examples use): this edge's own
    # parser refuses a bare IPv6 via-received, and the PBX's answer echoes this Via back to it
    source = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
    if host != peer[0] and host != source and not top.has_param("received") and not top.has_param("rport"):
        # the usual case (a WebSocket client's Via names an .invalid host): one parameter
        # appended to the Via as written, no Via object built and formatted again
        text = req.headers.first_value("via")
        if text is not None:
            req.replace_top_via(f"{text};received={source}")
            return
    via = top
    changed = False
    if host != peer[0] and host != source:
        via = via.with_param("received", source)
        changed = True
    if top.has_param("rport") and top.rport is None:
        via = via.with_param("rport", str(peer[1]))
        changed = True
    if changed:
        req.replace_top_via(via)


def response_addr(via: Any, src: Addr) -> Addr:
    """Where to send responses (RFC 3581: back to the source when rport; else received/sent-by)."""
    return src


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def replace_uri(value: NameAddr, uri: str) -> str:
    """``value`` (a name-addr with params) with its URI replaced."""
    text = str(value)
    lt, gt = text.find("<"), text.find(">")
    if lt >= 0 and gt > lt:
        return text[: lt + 1] + uri + text[gt:]
    return f"<{uri}>" + text[len(str(value.uri)) :]


def route_uri(text: str) -> Any:
    try:
        return parse_name_addr(text).uri
    except (RemoteProtocolError, ValueError):
        return None
