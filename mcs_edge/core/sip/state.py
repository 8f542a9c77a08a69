"""The proxy's shared state and the steps every part of it takes.

In: the proxy's settings, tenant lookups (by SIP domain, the PBX of a tenant, the tenants at a PBX
address), the media hook and a random source, given once by the adapter. Out: actions queued for
the adapter (:mod:`~mcs_edge.core.sip.destinations`), counters and problems.

:class:`ProxyState` holds what the parts of the proxy share -- the transaction layer, the
:class:`Pair` of server and client transaction for each forwarded request, where each
transaction's messages go, the flows, the call table, flow and push bindings -- and the steps all
parts take: count, emit bytes to a destination, answer a request locally. Each part adds one seam
on top of it (:mod:`~mcs_edge.core.sip.proxy` lists them).

Answers the edge gives itself:

=============================  ================================================================
answer                         rule
=============================  ================================================================
100 Trying to an INVITE        RFC 3261 s.16.2 step 3 / s.17.2.1: at once, without a To tag
any other local answer         RFC 3261 s.8.2.6.2: a To tag of ours, ``Server`` the edge's name
503                            RFC 3261 s.21.5.4, s.20.33: with ``Retry-After: 5``
a request too broken to parse  RFC 3261 s.16.3 step 1, s.21.4.1: the status its parse error
                               suggests (400, 413, 416 ...), built from its raw Via/From/To/
                               Call-ID/CSeq lines; no answer to an ACK or without those lines
                               (dropped, counted)
a request that cannot be       RFC 3261 s.16.3: 400, stateless (no transaction was made)
processed after parsing
=============================  ================================================================
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from mcs_edge.core.push.bindings import PushRegistry, WakeTable
from mcs_edge.core.randomness import RandomBytes
from mcs_edge.errors import RemoteProtocolError

from .calls import CallTable
from .destinations import Action, Dest, FlowDest, ToBackend, ToFlow
from .flows import FlowRegistry, RecoveryHistogram
from .media_hook import LocalService, MediaHook, PassthroughMedia
from .message import Limits, Request, Response
from .pairs import Pair
from .problems import Problem
from .routing import Addr, ProxySettings, Routing
from .transaction import ClientTransaction, ServerTransaction, TransactionLayer

if TYPE_CHECKING:
    from .flows import Flow

__all__ = [
    "DIALOG_METHODS",
    "LOCAL_CLASS",
    "REASONS",
    "RELAYED_CLASS",
    "Pair",
    "ProxyState",
    "add_request_headers",
    "error_from_bytes",
]

DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})

# Counter names of responses by class (index = status // 100; 0 and 7+ are not SIP classes).
LOCAL_CLASS = tuple(f"sip_responses_local_{c}xx" for c in range(7))
RELAYED_CLASS = tuple(f"sip_responses_relayed_{c}xx" for c in range(7))

REASONS = {488: "Not Acceptable Here", 503: "Service Unavailable", 500: "Server Internal Error"}


class ProxyState:
    """What the parts of the proxy share (see the module docstring)."""

    def __init__(
        self,
        settings: ProxySettings,
        tenant_for_domain: Callable[[str], Any],
        backend_of: Callable[[Any], tuple[str, Addr]],
        tenants_at: Callable[[str], Iterable[Any]],
        media: MediaHook | None = None,
        *,
        random_bytes: RandomBytes,
        on_backend_final: Callable[[Pair, Response], None] | None = None,
        local: LocalService | None = None,
        backend_down: Callable[[str], bool] | None = None,
        push_providers: Callable[[Any], frozenset[str]] | None = None,
    ) -> None:
        self.settings = settings
        #: The random source of branches, tags and flow tokens (``secrets.token_bytes`` in the adapter).
        self.random_bytes = random_bytes
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
        self._dest_pool: dict[Dest, Dest] = {}  # one value per destination, shared by its transactions
        self._pairs_by_server: dict[ServerTransaction, Pair] = {}
        self._pairs_by_client: dict[ClientTransaction, Pair] = {}
        self.counters: dict[str, int] = {}
        #: Problems for the adapter to log under their own codes (problems.py), oldest first.
        self.problems: deque[Problem] = deque(maxlen=256)
        #: Call recoveries and losses for the adapter's log: ("recovered" | "lost", tenant, Call-ID, seconds).
        self.notices: deque[tuple[str, str, str, float]] = deque(maxlen=256)
        #: Calls (INVITE dialogs) up, by Call-ID and by flow (admin API, metrics, drain).
        self.calls = CallTable()
        #: Graceful drain: new calls (initial INVITEs, either direction) get 503 + Retry-After.
        self.draining = False
        #: Told of every final response a PBX gives to a client's request, before it is relayed
        #: (the guard watches authentication outcomes there); None = nobody listens.
        self.on_backend_final: Callable[[Pair, Response], None] | None = on_backend_final
        #: Requests answered by the edge itself (the echo service); None = everything is forwarded.
        self.local: LocalService | None = local
        #: backend_down(tenant_id): its PBX does not answer (OPTIONS check): new calls get 503 at once.
        self.backend_down: Callable[[str], bool] | None = backend_down
        #: Which entries name this edge; Via and Record-Route values (routing.py).
        self.routing = Routing(settings, tenant_for_domain, random_bytes)
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
        self.push_providers: Callable[[Any], frozenset[str]] = push_providers or (lambda tenant: frozenset())
        #: Time from the push to the woken app's REGISTER (seconds).
        self.wake_latency = RecoveryHistogram()

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def problem(self, name: str, code: str, **fields: object) -> None:
        """Count ``name`` and report problem ``code`` with ``fields`` (problems.py) to the adapter."""
        self.counters[name] = self.counters.get(name, 0) + 1
        self.problems.append(Problem(code, fields))

    def _new_tag(self) -> str:
        return self.random_bytes(6).hex()

    def _flow_by_token(self, token: str) -> tuple[bool, Flow | None]:
        flow_id = self._tokens.get(token)
        if flow_id is not None:
            return True, self.flows.get(flow_id)
        binding = self.flow_registry.resolve(token)
        if binding is not None and binding.flow_id is not None and binding.flow_id in self.flows:
            return True, self.flows[binding.flow_id]  # a token of an earlier connection of the instance
        return token in self._dead_tokens or binding is not None, None

    def _respond(self, tx: ServerTransaction, request: Request, status: int, reason: str, now: float) -> None:
        self.count(LOCAL_CLASS[status // 100 % 7])
        resp = Response.for_request(request, status, reason, to_tag=self._new_tag() if status > 100 else None)
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
        resp = Response.for_request(request, status, reason, to_tag=self._new_tag())
        resp.headers.add("Server", self.settings.server_name)
        self._emit(dest, resp.serialize())

    def _trying_and_hops(self, tx: ServerTransaction, req: Request, now: float) -> bool:
        """A new server transaction of either direction: 100 Trying to an INVITE at once (RFC 3261
        s.16.2), 483 when Max-Forwards is 0 (s.16.3 step 3). False when the request is answered."""
        if req.method == "INVITE":
            self.layer.send_response(tx, Response.for_request(req, 100, "Trying"), now)
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            self._respond(tx, req, 483, "Too Many Hops", now)
            return False
        return True

    def _refuse_unprocessable(self, msg: Request | Response, dest: Dest) -> None:
        """A request that parsed but cannot be processed: 400, stateless (RFC 3261 s.16.3); no
        answer to a response or an ACK."""
        if isinstance(msg, Request) and msg.method != "ACK":
            self.count("sip_refused_400")
            self._answer_stateless(msg, 400, "Bad Request", dest)

    def _shared(self, dest: Dest) -> Dest:
        pool = self._dest_pool
        if len(pool) > 65536:  # e.g. a PBX sending from ever new ports: start over
            pool.clear()
        return pool.setdefault(dest, dest)

    def _emit(self, dest: Dest, data: bytes) -> bool:
        if isinstance(dest, FlowDest):
            if dest.flow_id not in self.flows:
                return False
            self._actions.append(ToFlow(dest.flow_id, data))
        else:
            self._actions.append(ToBackend(dest.tenant_id, dest.transport, dest.addr, data))
        return True

    def _reject_garbage(self, data: bytes, exc: RemoteProtocolError, dest: Dest) -> None:
        """Answer a request too broken to parse with the status its error suggests (none for ACK)."""
        status = exc.status_hint
        if status is None or status < 400:
            self.count("sip_dropped_unanswerable")
            return
        resp = error_from_bytes(data, status, str(exc)[:80])
        if resp is None:
            self.count("sip_dropped_unanswerable")
            return
        self.count(f"sip_refused_{status}")
        self._emit(dest, resp)


def add_request_headers(req: Request, from_: str, to: str, call_id: str, cseq: str) -> None:
    """The rest of a request the edge builds itself (RFC 3261 s.8.1.1: a CANCEL, s.9.1, or an
    ACK/BYE in a dialog, s.12.2.1.1): Max-Forwards, From, To, Call-ID, CSeq, an empty body."""
    headers = req.headers
    headers.add("Max-Forwards", "70")
    headers.add("From", from_)
    headers.add("To", to)
    headers.add("Call-ID", call_id)
    headers.add("CSeq", cseq)
    headers.add("Content-Length", "0")


def error_from_bytes(data: bytes, status: int, reason: str) -> bytes | None:
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
