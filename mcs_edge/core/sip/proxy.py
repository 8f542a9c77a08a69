"""The SIP proxy core: a transaction-stateful, tenant-bound proxy between client flows and PBXs.

Theory of operation
-------------------
Two sides. The *client side* is a set of flows (WebSocket or TLS connections from browsers and
the mobile app), each bound to one tenant when it was accepted. The *backend side* is each
tenant's PBX, reached over UDP from ``listen.backend_sip`` or over TCP/TLS (tx/sip/backend.py).

Every request that is not an ACK for a 2xx opens a server transaction on the side it came from
and, once accepted, a client transaction on the other side; the two form a
:class:`~mcs_edge.core.sip.state.Pair`. Responses flow back through the pair. An ACK for a 2xx
and other stray requests that match no transaction are forwarded statelessly on their route.

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

Where each part lives (one seam per module; each module's docstring has its decision table):

=====================  ===========================================================================
module                 part
=====================  ===========================================================================
``proxy.py``           :class:`SipProxy`: the entry points below, the event pump, the timer
``state.py``           the shared state (transactions, pairs, flows, calls, bindings) and the steps
                       every part takes (count, emit, answer locally)
``routing.py``         settings; which Route/Request-URI/Via names us; Via and Record-Route values
``destinations.py``    what leaves the core (ToFlow, ToBackend, CloseFlow, Push) and where
``registrar.py``       flows, flow tokens, REGISTER (Path or Contact aliases), instance bindings
``dialogs.py``         in-dialog admission, calls moving to a new connection, grace, local answers
``forwarding.py``      the forwarding step both directions share; stateless ACKs
``from_client.py``     client -> PBX requests (the checks, in order)
``from_backend.py``    PBX -> client requests (target flow, 430/404/403)
``responses.py``       responses back through their pair; next-hop failures; unusable answers
``cancel.py``          CANCEL
``wakeup.py``          RFC 8599 push bindings and INVITEs held while an app wakes
``media_hook.py``      the media hook (SDP rewriting) and the local service (echo) interfaces
=====================  ===========================================================================

The parts are classes stacked on :class:`~mcs_edge.core.sip.state.ProxyState` (each one takes
only the parts below it as bases); :class:`SipProxy` puts them together and is the one object the
adapter (tx/sip/router.py) talks to.

The core never touches a socket: it is fed bytes with ``receive_from_client`` /
``receive_from_backend`` and the current monotonic time; its output is a queue of
:class:`ToFlow`, :class:`ToBackend`, :class:`CloseFlow` and :class:`Push` actions drained with
``next_action()``; its single timer is ``get_timer()`` / ``handle_timer(now)`` (the transaction
layer's heap). Randomness (branches, tags, flow tokens) comes from the ``random_bytes`` it is
given. Every refusal or drop is counted in ``counters`` (name -> count); problems worth a log line
are listed in ``problems`` as ``(code, fields)`` values (problems.py) that the adapter logs,
rate-limited, under their own stable codes.
"""

from __future__ import annotations

from typing import Any

from mcs_edge.core.push.bindings import TIMEOUT_REASON
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

from .calls import Dialog
from .destinations import Action, BackendDest, CloseFlow, Dest, FlowDest, Push, ToBackend, ToFlow
from .flows import BindingKey, Flow
from .framing import PING, PONG
from .from_backend import BackendRequests
from .from_client import ClientRequests
from .media_hook import LocalService, MediaHook, PassthroughMedia
from .message import Request, Response, parse
from .responses import Responses
from .routing import Addr, ProxySettings, TenantInfo
from .state import Pair
from .transaction import (
    ClientTransaction,
    PassAck,
    PassResponse,
    Send,
    ServerTransaction,
    Terminated,
    Timeout,
    TransportError,
)

__all__ = [
    "CloseFlow",
    "Flow",
    "LocalService",
    "MediaHook",
    "Pair",
    "PassthroughMedia",
    "ProxySettings",
    "Push",
    "SipProxy",
    "TenantInfo",
    "ToBackend",
    "ToFlow",
]

#: calls ended in one timer turn when lost connections' grace runs out (whole connections at a time);
#: the rest wait for the next turn: a network blip that dropped many clients at once must not end
#: all their calls in one reactor turn (issue 21)
GRACE_CALLS_PER_TURN = 8

_FAILURES = (Timeout, TransportError)


class SipProxy(ClientRequests, BackendRequests, Responses):
    """The proxy core (see the module docstring); built with
    ``SipProxy(settings, tenant_for_domain, backend_of, tenants_at, media, random_bytes=...)``."""

    def update_settings(self, settings: ProxySettings) -> None:
        """New settings (e.g. ports known once bound); the set of our own addresses follows."""
        self.settings = settings
        self.routing.update(settings)

    def next_action(self) -> Action | None:
        self._pump()
        return self._actions.popleft() if self._actions else None

    def drain(self) -> list[Action]:
        self._pump()
        out = list(self._actions)
        self._actions.clear()
        return out

    def get_timer(self) -> float | None:
        # asked after every message (the adapter re-arms its timer): no list, no generator
        due = self.layer.get_timer()
        for other in (self.flow_registry.get_timer(), self.push_registry.get_timer(), self.wakes.get_timer()):
            if other is not None and (due is None or other < due):
                due = other
        return due

    def handle_timer(self, now: float) -> None:
        self.layer.handle_timer(now)
        for _binding in list(self.push_registry.expire(now)):
            self.count("push_bindings_expired")
        for waiting in list(self.wakes.expired(now)):
            self.problem(
                "push_calls_lost_timeout", "PSH405", tenant=waiting.key.tenant_id, aor=waiting.key.aor
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

    def pairs_by_tenant(self) -> dict[str, int]:
        """Transactions in progress per tenant id (metrics)."""
        out: dict[str, int] = {}
        for pair in self._pairs_by_server.values():
            out[pair.tenant_id] = out.get(pair.tenant_id, 0) + 1
        return out

    def start_draining(self) -> None:
        """Graceful drain: new calls (initial INVITEs, either direction) get 503 + Retry-After."""
        self.draining = True

    def close_flow(self, flow_id: int, now: float) -> None:
        flow = self.flows.pop(flow_id, None)
        if flow is None:
            return
        self._tokens.pop(flow.token, None)
        self._dest_pool.pop(FlowDest(flow_id), None)
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
            self.problem("sip_backend_unreachable", "SIP447", tenant=tenant_id, count=failed, reason=reason)
        self._pump(now)
        return failed

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
            self.problem("sip_bad_from_client", "SIP440", tenant=flow.tenant.id, error=str(exc))
            self._reject_garbage(data, exc, flow.dest)
            return
        try:
            if isinstance(msg, Response):
                self._response_from_client(flow, msg, now)
            else:
                self._request_from_client(flow, msg, now)
        except (RemoteProtocolError, LocalProtocolError, ValueError) as exc:
            self.problem("sip_bad_from_client", "SIP440", tenant=flow.tenant.id, error=str(exc))
            self._refuse_unprocessable(msg, flow.dest)
        self._pump(now)

    def reject_unframed(self, flow_id: int, data: bytes, exc: RemoteProtocolError) -> None:
        """A stream transport cannot frame ``data`` (e.g. no Content-Length): answer it if it can be."""
        self._reject_garbage(data, exc, FlowDest(flow_id))

    def receive_from_backend(self, data: bytes, src: Addr, transport: str, now: float) -> None:
        tenants = list(self._tenants_at(src[0]))
        if not tenants:
            self.problem("sip_unknown_backend", "SIP442", source=f"{src[0]}:{src[1]}")
            return
        if not data.strip(b"\r\n"):
            return  # keepalive
        back: Dest = BackendDest(tenants[0].id, transport, src)
        try:
            msg = parse(data, limits=self.limits, require_max_forwards=False)
        except RemoteProtocolError as exc:
            self._bad_from_backend(tenants[0].id, src, exc)
            self._reject_garbage(data, exc, back)  # e.g. 416 for an unsupported Request-URI scheme
            return
        try:
            if isinstance(msg, Response):
                self._response_from_backend(msg, now)
            else:
                self._request_from_backend(tenants, msg, src, transport, now)
        except (RemoteProtocolError, LocalProtocolError, ValueError) as exc:
            self._bad_from_backend(tenants[0].id, src, exc)
            self._refuse_unprocessable(msg, back)
        self._pump(now)

    def _bad_from_backend(self, tenant_id: str, src: Addr, exc: Exception) -> None:
        self.problem(
            "sip_bad_from_backend", "SIP441", tenant=tenant_id, source=f"{src[0]}:{src[1]}", error=str(exc)
        )

    def send_to_flow(self, flow_id: int, request: Request, now: float) -> bool:
        """Send a request the edge itself originates (e.g. the echo service's BYE) to a client flow.

        Our Via is pushed; a client transaction retransmits and times out as usual; its response
        is absorbed (no pair). False when the flow is gone.
        """
        flow = self.flows.get(flow_id)
        if flow is None:
            return False
        request.push_via(self.routing.client_via(flow))
        ctx = self.layer.send_request(request, now, reliable=True)
        self._dest[ctx] = self._shared(FlowDest(flow_id))
        self.count("sip_requests_local_to_client")
        self._pump(now)
        return True

    def push_result(self, push: Push, outcome: str, now: float) -> None:
        """The adapter's report for ``push``: "sent", "bad_token", "rate_limited" or "error"."""
        self._push_outcome(push, outcome, now)
        self._pump(now)

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
            elif isinstance(ev, _FAILURES):
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
