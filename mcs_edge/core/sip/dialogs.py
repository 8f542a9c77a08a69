"""Dialogs across connection changes: admission of in-dialog requests, recovery, grace, local answers.

In: in-dialog requests from a client flow or a PBX, 2xx answers of initial INVITEs, expired
grace periods. Out: whether a client's in-dialog request is admitted (or the status refusing it),
calls moved to a new connection of the same client instance (RFC 5626), answers to PBX requests
for calls whose client connection is lost, the BYE that ends a call after its grace, and 200s the
edge gives itself to transport-only re-INVITEs (their ACK is absorbed).

=======================================  ===========================================================
situation                                decision
=======================================  ===========================================================
client in-dialog request, call on a      admitted from any connection of the tenant (RFC 3261
live connection                          s.12.2.1.1: a new connection to our Record-Route URI)
client in-dialog request, call's         admitted only from a connection of the same binding
connection lost (grace)                  (tenant, AOR, instance, reg-id; RFC 5626 s.4.2), which
                                         takes the call over; anyone else: 403
token of a dead connection, no binding   430 Flow Failed (RFC 5626 s.5.3)
of this connection
PBX request for a call in grace          ``flows.IN_GRACE`` (in_grace_answer); a BYE ends the call
grace expired                            BYE to the PBX with ``Reason`` (RFC 3326), call and media
                                         ended
client re-INVITE that only changed its   answered 200 here with the media hook's SDP (RFC 3261
own transport (ICE restart)              s.14.2); the PBX never sees it, nor its ACK
=======================================  ===========================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcs_edge.errors import RemoteProtocolError

from .calls import Call, Dialog
from .destinations import BackendDest
from .flows import GRACE_BYE_REASON, in_grace_answer
from .headers import parse_name_addr
from .message import Request, Response
from .routing import route_uri
from .state import Pair, ProxyState
from .transaction import ServerTransaction

if TYPE_CHECKING:
    from .flows import Flow

__all__ = ["Dialogs"]


class Dialogs(ProxyState):
    """Dialogs across connection changes (see the module docstring)."""

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
                    self.problem("sip_dialog_foreign_flow", "SIP445", tenant=flow.tenant.id)
                    return 403
                self._recover(call, flow, now)
            if call.dialog is not None and req.method not in ("ACK", "CANCEL"):
                call.dialog.cseq = max(call.dialog.cseq, req.cseq.seq)
            return None
        token = self.routing.route_token(req)
        if token is None or token == flow.token or token in self._tokens:
            return None
        key = self.flow_registry.key_of_token(token)
        if key is not None and key == self.flow_registry.binding_of(flow.id):
            return None
        if token in self._dead_tokens or key is not None:
            self.problem("sip_flow_token_refused", "SIP446", tenant=flow.tenant.id)
            return 430
        return None

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
        # The route set is the Record-Route entries as written (RFC 3261 s.12.1.2; the parser
        # validated each as a name-addr): not parsed into objects and formatted back.
        try:
            if pair.from_client:
                local, remote = req.headers.get("from"), resp.headers.get("to")
                contact = resp.headers.first_value("contact")
                routes = resp.headers.values("record-route")
                routes.reverse()
            else:
                local, remote = resp.headers.get("to"), req.headers.get("from")
                contact = req.headers.first_value("contact")
                routes = req.headers.values("record-route")
            if not local or not remote or not contact:
                return
            target = str(parse_name_addr(contact).uri)
        except (RemoteProtocolError, ValueError):
            return
        while routes and self.routing.is_ours(route_uri(routes[0])):
            routes.pop(0)
        seq = req.cseq.seq if pair.from_client else 0
        call.dialog = Dialog(local, remote, target, tuple(routes), seq)

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
            bye.headers.add("Via", self.routing.backend_via(transport))
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
            self._dest[ctx] = BackendDest(call.tenant_id, transport, addr)
        self.calls.bye(call.call_id)
        self.media.on_end(call.call_id, "flow grace expired", call.tenant_id)

    def _bye_done(self, pair: Pair) -> None:
        call_id = pair.call_id
        self.calls.bye(call_id)
        self.media.on_end(call_id, "BYE", pair.tenant_id)
