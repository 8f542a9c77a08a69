"""Responses: relaying answers back through their pair, failures of the next hop, unusable answers.

In: a response matched to one of our client transactions (by Via, RFC 3261 s.17.1.3), an ACK
absorbed by a server transaction, a timeout or transport error of a transaction. Out: the response
relayed to the other side (our Via removed), REGISTER and push bookkeeping on 2xx, call state, or
a local error answer.

=======================================  ==========================================================
response / event                         decision
=======================================  ==========================================================
100                                      hop-by-hop: not relayed (RFC 3261 s.16.7 step 3)
1xx with a CANCEL pending                our CANCEL goes now (RFC 3261 s.9.1)
any response                             our Via removed (RFC 3261 s.16.7 step 3), relayed on the
                                         server transaction
2xx to a client's REGISTER               Contacts restored, flow registered and bound to its
                                         instance, push binding noted; held INVITEs released
unusable SDP in a 18x (initial INVITE)   CANCEL the INVITE, 488 to the caller (media_hook.py)
unusable SDP in a 2xx (INVITE)           ACK and BYE that dialog, 488 to the caller (RFC 3261
                                         s.13.3.1.4: no half-open call)
2xx retransmission after the final       relayed (RFC 3261 s.13.3.1.4, RFC 6026: the transaction
                                         keeps a compact record)
>= 300 after a final was sent            dropped (RFC 3261 s.16.7 step 6)
no answer (Timer B/F)                    408 (RFC 3261 s.16.8)
transport error toward a PBX             503 (RFC 3261 s.16.7 / s.17.1.4)
transport error toward a client flow     430 Flow Failed (RFC 5626 s.5.3)
2xx to BYE, or the BYE's next hop gone   the call and its media end
=======================================  ==========================================================
"""

from __future__ import annotations

from typing import Any

from .cancel import Cancelling
from .destinations import Dest, FlowDest
from .message import Request, Response
from .state import LOCAL_CLASS, RELAYED_CLASS, Pair, add_request_headers
from .transaction import ClientTransaction, ServerTransaction
from .wakeup import Wakeups

__all__ = ["Responses"]


class Responses(Wakeups, Cancelling):
    """Responses and failures (see the module docstring)."""

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
        out.headers.pop_first_value("via")  # ours (matched by branch): RFC 3261 s.16.7 step 3
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
        self.count(RELAYED_CLASS[status // 100 % 7])
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
        self.problem("sip_answer_refused_early", "SIP448", tenant=pair.tenant_id, call_id=call_id)
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
        self.count(LOCAL_CLASS[4])
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
        self.problem("sip_answer_refused_after_2xx", "SIP449", tenant=pair.tenant_id, call_id=call_id)
        if dest is not None and inv is not None:
            ack = self._in_dialog_request("ACK", pair, inv, resp, inv.cseq.seq)
            ack.push_via(self._own_via(pair, dest))
            pair.refused_ack = (dest, ack.serialize())
            self._emit(dest, pair.refused_ack[1])
            bye = self._in_dialog_request("BYE", pair, inv, resp, inv.cseq.seq + 1)
            bye.push_via(self._own_via(pair, dest))
            ctx = self.layer.send_request(bye, now, reliable=dest.reliable)
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
            routes = [r for r in reversed(resp.record_routes) if not self.routing.is_ours(r.uri)]
            if routes:
                req.set_routes(list(routes))
        add_request_headers(
            req, inv.headers.get("from") or "", resp.headers.get("to") or "", inv.call_id, f"{seq} {method}"
        )
        return req

    def _own_via(self, pair: Pair, dest: Dest) -> str:
        if isinstance(dest, FlowDest):
            flow = self.flows.get(dest.flow_id)
            if flow is not None:
                return self.routing.client_via(flow)
            return self.routing.backend_via("tls")
        transport = dest.transport
        return self.routing.backend_via(transport)

    def _relay_ack(self, stx: ServerTransaction, ack: Request, now: float) -> None:
        pair = self._pairs_by_server.get(stx)
        if pair is None:
            dest = self._dest.get(stx)
            local = self.local
            if local is not None and isinstance(dest, FlowDest):
                flow = self.flows.get(dest.flow_id)
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
