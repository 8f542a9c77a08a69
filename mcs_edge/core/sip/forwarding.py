"""The forwarding step both request directions share, and stateless forwarding of ACKs.

In: a request that passed its direction's checks (client -> PBX in :mod:`from_client`, PBX ->
client in :mod:`from_backend`), its copy ``fwd`` with our Routes removed, Max-Forwards decremented,
Record-Route and our Via added, and where it goes. Out: a :class:`~mcs_edge.core.sip.state.Pair`
of the server transaction and a new client transaction carrying ``fwd``, after the media hook has
seen its SDP; or, for an ACK to a 2xx (no transaction, RFC 3261 s.17.1.1.3 / s.13.2.2.4), the ACK
emitted at once.

=====================================  ============================================================
step                                   rule
=====================================  ============================================================
the media hook refuses the SDP         the request is answered with the hook's status (488, 503)
client transaction reliability         RFC 3261 s.17.1.1.2: retransmitted only toward a UDP PBX
PBX request to a client flow           RFC 3261 s.16.6: Record-Route (client side first, so the
                                       client sees its own entry on top), our Via; new calls while
                                       draining get 503
ACK to a 2xx                           stateless (RFC 3261 s.16.11); dropped when Max-Forwards is 0
                                       or its Route names a flow of another tenant
=====================================  ============================================================
"""

from __future__ import annotations

from mcs_edge.errors import LocalProtocolError

from .destinations import BackendDest, Dest
from .flows import Flow
from .headers import NameAddr, SipUri
from .message import Request
from .registrar import Registrar
from .routing import Addr, response_addr
from .state import DIALOG_METHODS, REASONS, Pair
from .transaction import ServerTransaction

__all__ = ["Forwarding"]


class Forwarding(Registrar):
    """The shared forwarding step (see the module docstring)."""

    def _forward(
        self,
        tx: ServerTransaction,
        req: Request,
        fwd: Request,
        tenant_id: str,
        flow_id: int,
        from_client: bool,
        dest: Dest,
        reliable: bool,
        now: float,
    ) -> None:
        """The step both directions share: pair ``tx`` with a client transaction carrying ``fwd``
        (ready to send, our Via on top) toward ``dest``, once the media hook accepts its SDP."""
        pair = Pair(tx, tenant_id, from_client, flow_id, fwd)
        self._pairs_by_server[tx] = pair
        if fwd.body:
            refused = self.media.on_message(pair, fwd, from_client, now)
            if refused is not None:
                self._respond(tx, req, refused, REASONS.get(refused, "Refused"), now)
                return
        ctx = self.layer.send_request(fwd, now, reliable=reliable)
        pair.client = ctx
        self._pairs_by_client[ctx] = pair
        self._dest[ctx] = self._shared(dest)
        self.count("sip_requests_to_backend" if from_client else "sip_requests_to_client")
        if pair.initial and pair.method == "INVITE":
            self.calls.invite(pair.call_id, tenant_id, flow_id, from_client, now)
        # A BYE ends the call (and its media) only once the other side accepts it (2xx, or no answer
        # at all): a BYE with a guessed Call-ID gets 481 and ends nothing (see responses.py).

    def _forward_stateless(self, fwd: Request, via: str, dest: Dest, from_client: bool, now: float) -> None:
        """An ACK to a 2xx (``fwd``, our Routes removed) out to ``dest`` with our ``via`` on top, its
        SDP seen by the media hook; dropped when its Max-Forwards is already 0."""
        try:
            fwd.decrement_max_forwards()
        except LocalProtocolError:
            return
        fwd.push_via(via)
        if fwd.body:
            self.media.on_message(None, fwd, from_client, now)
        self._emit(dest, fwd.serialize())

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
        self._dest[tx] = self._shared(BackendDest(flow.tenant.id, transport, response_addr(req.top_via, src)))
        fwd.decrement_max_forwards()
        in_dialog = req.to.tag is not None
        if self.draining and not in_dialog and req.method == "INVITE":
            self.count("sip_refused_draining")
            self._respond(tx, req, 503, "Service Unavailable (draining)", now)
            return
        if req.method in DIALOG_METHODS and not in_dialog:
            fwd.prepend_record_route(self.routing.backend_rr(transport))
            fwd.prepend_record_route(self.routing.client_rr(flow))
        fwd.push_via(self.routing.client_via(flow))
        self._forward(tx, req, fwd, flow.tenant.id, flow.id, False, flow.dest, True, now)

    def _forward_ack_to_backend(self, flow: Flow, req: Request, now: float) -> None:
        fwd = req.copy()
        if self._foreign_route_token(flow, self.routing.strip_our_routes(fwd)):
            return
        transport, addr = self._backend_of(flow.tenant)
        dest = BackendDest(flow.tenant.id, transport, addr)
        self._forward_stateless(fwd, self.routing.backend_via(transport), dest, True, now)

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
                self.problem("sip_foreign_flow", "SIP444", tenant=flow.tenant.id, other=owner.tenant.id)
                return True
        return False
