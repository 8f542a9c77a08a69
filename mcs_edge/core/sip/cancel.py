"""CANCEL: matching it to its INVITE and sending our own once the INVITE may be cancelled.

In: a CANCEL from either side, and the moment a forwarded INVITE gets its first provisional
response. Out: the CANCEL's own answer, a CANCEL toward the next hop, or the INVITE's 487.

=======================================  ==========================================================
situation                                decision
=======================================  ==========================================================
CANCEL matching no INVITE transaction    481 (RFC 3261 s.16.10, s.9.2)
CANCEL of an INVITE held for a push      200, and 487 to the INVITE (RFC 8599 wake-up ends)
CANCEL of an INVITE answered here        200, no other effect (e.g. the echo service)
CANCEL of a forwarded INVITE             200 at once (RFC 3261 s.16.10); nothing more once its
                                         final response was sent
INVITE without a provisional response    our CANCEL waits for the first one (RFC 3261 s.9.1)
yet
our CANCEL                               same Request-URI, top Via, Route, From, To, Call-ID and
                                         CSeq number as the INVITE we sent (RFC 3261 s.9.1)
=======================================  ==========================================================
"""

from __future__ import annotations

from .destinations import Dest, FlowDest
from .message import Request
from .state import Pair, ProxyState, add_request_headers
from .transaction import cookie_server_key

__all__ = ["Cancelling"]


class Cancelling(ProxyState):
    """CANCEL (see the module docstring)."""

    def _cancel(self, cancel: Request, dest: Dest, now: float) -> None:
        top = cancel.top_via
        branch = top.branch or ""
        host, port = top.sent_by
        invite_tx = self.layer.server(cookie_server_key(branch, host, port, "INVITE"))
        tx, is_new = self.layer.receive_request(cancel, now, reliable=isinstance(dest, FlowDest))
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
        headers = inv.headers
        add_request_headers(
            c, headers.get("from") or "", headers.get("to") or "", inv.call_id, f"{inv.cseq.seq} CANCEL"
        )
        dest = self._dest.get(pair.client)
        if dest is None:
            return
        ctx = self.layer.send_request(c, now, reliable=dest.reliable)
        self._dest[ctx] = dest
        pair.cancel_pending = False
