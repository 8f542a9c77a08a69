"""The call table: which INVITE dialogs are up, for whom, on which client flow.

Theory of operation
-------------------
The proxy core reports four things and the table keeps one :class:`Call` per Call-ID:

* ``invite``: an initial INVITE (no To tag) was forwarded, in either direction;
* ``answered``: a 2xx to that INVITE was relayed (the call is confirmed);
* ``failed``: the initial INVITE got a final error (>= 300), a timeout or a transport error;
  a call already answered is not ended by a failed re-INVITE;
* ``bye``: a BYE for the Call-ID was forwarded (the call ends whatever the answer to the BYE).

A client flow that closes (``flow_lost``) ends its calls that were not answered yet; answered calls
enter *grace* (``state == "grace"``, :mod:`mcs_edge.core.sip.flows`): they stay in the table, on the
lost flow's id, until the client's instance comes back (``move`` to the new flow) or the proxy ends
them (``bye``). For that last case a call remembers the dialog as the client's side sees it
(:class:`Dialog`: From/To with tags, the PBX's Contact and route set, the client's highest CSeq),
which is what the proxy needs to send the PBX a BYE in the client's name.

The table is what the admin API lists, what ``mcs_edge_calls`` counts and what a graceful drain
waits for. It is bounded by the flows: every call belongs to a live flow or to a lost flow in grace
and leaves with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcs_edge.core.sip.headers import OtherUri, SipUri

__all__ = ["Call", "CallTable", "Dialog", "address_of_record"]


def address_of_record(uri: SipUri | OtherUri) -> str:
    """``sip:user@host`` of a From/To URI: no port, parameters or display name (for lists and logs)."""
    if isinstance(uri, SipUri):
        return f"{uri.scheme}:{uri.user}@{uri.host}" if uri.user else f"{uri.scheme}:{uri.host}"
    return str(uri)[:256]


@dataclass(slots=True)
class Dialog:
    """The dialog as the client's side sees it (for requests the edge sends in the client's name)."""

    local: str  # the client's name-addr with its tag (From of a request from the client)
    remote: str  # the PBX's name-addr with its tag (To of that request)
    target: str  # the PBX's Contact URI (Request-URI)
    routes: tuple[str, ...] = ()  # the route set toward the PBX, without the edge's own entries
    cseq: int = 0  # highest CSeq the client used in the dialog


@dataclass(slots=True, eq=False)
class Call:
    call_id: str
    tenant_id: str
    flow_id: int
    from_client: bool  # the client placed it (outbound toward the PBX)
    started: float
    answered: float | None = None
    state: str = "up"  # "up" or "grace" (its client connection is lost, see flows.py)
    lost_at: float | None = None
    dialog: Dialog | None = None


class CallTable:
    """Calls by Call-ID and by flow (see the module docstring)."""

    __slots__ = ("_by_flow", "calls", "ended_total", "started_total")

    def __init__(self) -> None:
        self.calls: dict[str, Call] = {}
        self._by_flow: dict[int, set[str]] = {}
        self.started_total = 0
        self.ended_total = 0

    def __len__(self) -> int:
        return len(self.calls)

    def invite(self, call_id: str, tenant_id: str, flow_id: int, from_client: bool, now: float) -> None:
        if call_id in self.calls:
            return
        self.calls[call_id] = Call(call_id, tenant_id, flow_id, from_client, now)
        self._by_flow.setdefault(flow_id, set()).add(call_id)
        self.started_total += 1

    def answered(self, call_id: str, now: float) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.answered is None:
            call.answered = now

    def failed(self, call_id: str) -> Call | None:
        call = self.calls.get(call_id)
        if call is None or call.answered is not None:
            return None
        return self._remove(call)

    def bye(self, call_id: str) -> Call | None:
        call = self.calls.get(call_id)
        return self._remove(call) if call is not None else None

    def flow_closed(self, flow_id: int) -> list[Call]:
        ids = self._by_flow.pop(flow_id, None)
        if not ids:
            return []
        out = []
        for call_id in ids:
            call = self.calls.pop(call_id, None)
            if call is not None:
                self.ended_total += 1
                out.append(call)
        return out

    def flow_lost(self, flow_id: int, now: float) -> tuple[list[Call], list[Call]]:
        """The client connection is gone: (ended, in grace). Unanswered calls end; answered ones stay,
        in state ``grace``, on ``flow_id``."""
        ids = self._by_flow.get(flow_id)
        if not ids:
            return [], []
        ended: list[Call] = []
        grace: list[Call] = []
        for call_id in list(ids):
            call = self.calls.get(call_id)
            if call is None:
                continue
            if call.answered is None or call.dialog is None:
                ended.append(self._remove(call))
            else:
                call.state = "grace"
                call.lost_at = now
                grace.append(call)
        return ended, grace

    def of_flow(self, flow_id: int) -> list[Call]:
        """The calls on ``flow_id`` (live or lost)."""
        return [self.calls[c] for c in self._by_flow.get(flow_id, ()) if c in self.calls]

    def move(self, call: Call, flow_id: int) -> None:
        """``call`` now belongs to connection ``flow_id`` (its client's instance came back)."""
        ids = self._by_flow.get(call.flow_id)
        if ids is not None:
            ids.discard(call.call_id)
            if not ids:
                del self._by_flow[call.flow_id]
        call.flow_id = flow_id
        call.state = "up"
        call.lost_at = None
        self._by_flow.setdefault(flow_id, set()).add(call.call_id)

    def on_flow(self, flow_id: int) -> int:
        return len(self._by_flow.get(flow_id, ()))

    def by_tenant(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for call in self.calls.values():
            out[call.tenant_id] = out.get(call.tenant_id, 0) + 1
        return out

    def _remove(self, call: Call) -> Call:
        del self.calls[call.call_id]
        ids = self._by_flow.get(call.flow_id)
        if ids is not None:
            ids.discard(call.call_id)
            if not ids:
                del self._by_flow[call.flow_id]
        self.ended_total += 1
        return call
