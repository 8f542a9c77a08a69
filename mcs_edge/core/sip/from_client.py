"""Requests from a client flow toward its tenant's PBX (client -> PBX).

In: a parsed request from client flow ``flow`` (bound to one tenant when it was accepted). Out:
the request forwarded to *its own tenant's* PBX whatever its Request-URI says (no open relay), or
answered here.

The checks, in order (the first that applies decides):

=======================================  ==========================================================
check                                    decision
=======================================  ==========================================================
CANCEL                                   cancel.py
ACK to a 2xx (no transaction)            absorbed when the edge answered the re-INVITE itself;
                                         dropped when the dialog refuses this flow; else
                                         stateless to the PBX (forwarding.py)
retransmission                           absorbed by the server transaction (RFC 3261 s.17.2)
INVITE                                   100 Trying at once (RFC 3261 s.16.2)
Max-Forwards 0                           483 (RFC 3261 s.16.3 step 3)
a Via of ours (loop)                     482 (RFC 3261 s.16.3 step 4)
in-dialog, refused by dialogs.py         403 or 430 (RFC 5626 s.5.3)
initial, Request-URI domain not the      403 (tenancy is a boundary: RFC 3261 s.16.3 step 5
flow's tenant's                          "policy")
new call while draining                  503 + Retry-After
claimed by the local service (echo)      answered by it
transport-only re-INVITE                 answered here (dialogs.py)
new call, PBX down (OPTIONS check)       503 + Retry-After
our Route names another tenant's flow    403
otherwise                                forwarded: our Routes removed (RFC 3261 s.16.4),
                                         Max-Forwards - 1, double Record-Route for dialog-creating
                                         requests, Path or Contact aliases for REGISTER
                                         (registrar.py), our Via, the shared forwarding step
=======================================  ==========================================================
"""

from __future__ import annotations

from .cancel import Cancelling
from .destinations import BackendDest
from .flows import Flow
from .forwarding import Forwarding
from .headers import SipUri, Via
from .message import Request, Response
from .routing import stamp_received
from .state import DIALOG_METHODS, REASONS

__all__ = ["ClientRequests"]


class ClientRequests(Forwarding, Cancelling):
    """Client -> PBX requests (see the module docstring)."""

    def _request_from_client(self, flow: Flow, req: Request, now: float) -> None:
        tenant = flow.tenant
        # RFC 3261 s.18.2.1: note where the request really came from
        top = req.top_via
        stamp_received(req, top, flow.peer)
        if req.method == "CANCEL":
            self._cancel(req, flow.dest, now)
            return
        tx, is_new = self.layer.receive_request(req, now, reliable=True, top=top)
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
        self._dest[tx] = flow.dest
        if not self._trying_and_hops(tx, req, now):
            return
        if self._via_loop(req, top):
            self.count("sip_loop")
            self._respond(tx, req, 482, "Loop Detected", now)
            return
        in_dialog = req.to.tag is not None
        if in_dialog:
            refused = self._admit_dialog(flow, req, now)
            if refused is not None:
                self.count("sip_dialog_refused")
                self._respond(tx, req, refused, REASONS.get(refused, "Refused"), now)
                return
        if not in_dialog:
            ruri = req.request_uri
            owner = self._tenant_for_domain(ruri.host) if isinstance(ruri, SipUri) else None
            if owner is None or owner.id != tenant.id:
                self.problem(
                    "sip_foreign_domain", "SIP443", tenant=tenant.id, domain=str(getattr(ruri, "host", ruri))
                )
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
        if self._foreign_route_token(flow, self.routing.strip_our_routes(fwd)):
            self._respond(tx, req, 403, "Forbidden (dialog of another tenant)", now)
            return
        fwd.decrement_max_forwards()
        if req.method in DIALOG_METHODS and not in_dialog:
            fwd.prepend_record_route(self.routing.client_rr(flow))
            fwd.prepend_record_route(self.routing.backend_rr(self._backend_of(tenant)[0]))
        if req.method == "REGISTER":
            self._register_outbound(flow, fwd)
        transport, addr = self._backend_of(tenant)
        fwd.push_via(self.routing.backend_via(transport))
        dest = BackendDest(tenant.id, transport, addr)
        self._forward(tx, req, fwd, tenant.id, flow.id, True, dest, transport != "udp", now)

    def _via_loop(self, req: Request, top: Via) -> bool:
        """A Via of ours in the request (RFC 3261 s.16.3 step 4). ``top`` is the top Via as received
        (before ``received`` was added: the sent-by and branch looked at are the same); the others
        are parsed only when there are others."""
        if self.routing.via_is_ours(top):
            return True
        values = req.headers.get_all("via")
        if len(values) == 1 and "," not in values[0]:
            return False
        return any(self.routing.via_is_ours(v) for v in req.vias)

    def _response_from_client(self, flow: Flow, resp: Response, now: float) -> None:
        tx = self.layer.receive_response(resp, now)
        if tx is None:
            self.count("sip_stray_response")
