"""Requests from a tenant's PBX toward a client flow (PBX -> client).

In: a parsed request from one of the tenants' PBX addresses (others never get here: the caller
drops and counts them) with the tenants at that address. Out: the request forwarded to the client
flow named by our Route or Request-URI, held for a push wake-up, or answered here.

The target flow is found from the flow token in our Route (Path / Record-Route, RFC 3327, RFC
5626 s.5.3) or in the Request-URI (an alias of a PBX without Path support, or the token as user
part).

=======================================  ==========================================================
check                                    decision
=======================================  ==========================================================
CANCEL                                   cancel.py
ACK to a 2xx (no transaction)            stateless to the flow when it is the tenant's, else
                                         dropped
INVITE                                   100 Trying at once (RFC 3261 s.16.2)
Max-Forwards 0                           483 (RFC 3261 s.16.3 step 3)
initial INVITE for a bound app without   held, push (wakeup.py, RFC 8599)
a live connection
call in grace (client connection lost)   dialogs.py (``flows.IN_GRACE``)
a genuine token whose connection is      430 Flow Failed (RFC 5626 s.5.3)
gone
no token of ours                         404
the flow belongs to another tenant       403
otherwise                                forwarded to the flow (forwarding.py)
=======================================  ==========================================================
"""

from __future__ import annotations

from typing import Any

from .cancel import Cancelling
from .destinations import BackendDest, Dest
from .flows import Flow
from .headers import SipUri
from .message import Request, Response
from .routing import FLOW_PARAM, Addr, response_addr, stamp_received
from .wakeup import Wakeups

__all__ = ["BackendRequests"]


class BackendRequests(Wakeups, Cancelling):
    """PBX -> client requests (see the module docstring)."""

    def _request_from_backend(
        self, tenants: list[Any], req: Request, src: Addr, transport: str, now: float
    ) -> None:
        top = req.top_via
        stamp_received(req, top, src)
        back: Dest = BackendDest(tenants[0].id, transport, response_addr(req.top_via, src))
        if req.method == "CANCEL":
            self._cancel(req, back, now)
            return
        tx, is_new = self.layer.receive_request(req, now, reliable=transport != "udp")
        if tx is None:
            fwd = req.copy()
            found, flow, _ = self._target_flow(fwd)
            if flow is not None and flow.tenant in tenants:
                self._forward_stateless(fwd, self.routing.client_via(flow), flow.dest, False, now)
            return
        if not is_new:
            return
        self._dest[tx] = back
        if not self._trying_and_hops(tx, req, now):
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
            self.problem("sip_foreign_flow", "SIP444", tenant=tenants[0].id, other=flow.tenant.id)
            self._respond(tx, req, 403, "Forbidden", now)
            return
        self._forward_to_flow(tx, req, fwd, flow, transport, src, now)

    def _target_flow(self, req: Request) -> tuple[bool, Flow | None, bool]:
        """(token found, flow, routes popped) from our Routes or a Request-URI alias."""
        routes = req.routes
        popped = False
        found = False
        flow: Flow | None = None
        while routes and self.routing.is_ours(routes[0].uri):
            uri = routes.pop(0).uri
            popped = True
            user = uri.user if isinstance(uri, SipUri) else None
            if user and not found:
                found, flow = self._flow_by_token(user)
        if popped:
            req.set_routes(list(routes))
        if not found:
            ruri = req.request_uri
            if isinstance(ruri, SipUri) and self.routing.is_ours(ruri):
                key = ruri.param(FLOW_PARAM) or ""
                token = key.split(".", 1)[0]
                if ruri.user and not key and not routes:
                    found, flow = self._flow_by_token(ruri.user)
                elif token:
                    found, flow = self._flow_by_token(token)
                    if flow is not None and key in flow.aliases:
                        req.uri = flow.aliases[key]
        return found, flow, popped

    def _response_from_backend(self, resp: Response, now: float) -> None:
        top = resp.top_via
        if not self.routing.via_is_ours(top):
            self.count("sip_stray_response")
            return
        if self.layer.receive_response(resp, now, top) is None:
            # e.g. a 2xx retransmission after the transaction ended: relay by Via to its flow
            self.count("sip_stray_response")
