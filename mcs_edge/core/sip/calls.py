"""The call table: which INVITE dialogs are up, for whom, on which client flow.

Theory of operation
-------------------
The proxy core reports four things and the table keeps one :class:`Call` per Call-ID:

* ``invite``: an initial INVITE (no To tag) was forwarded, in either direction;
* ``answered``: a 2xx to that INVITE was relayed (the call is confirmed);
* ``failed``: the initial INVITE got a final error (>= 300), a timeout or a transport error;
  a call already answered is not ended by a failed re-INVITE;
* ``bye``: a BYE for the Call-ID was forwarded (the call ends whatever the answer to the BYE).

A client flow that closes ends its calls (``flow_closed``): the edge can no longer reach that end.
The table is what the admin API lists, what ``mcs_edge_calls`` counts and what a graceful drain
waits for. It is bounded by the flows: every call belongs to a live flow and leaves with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcs_edge.core.sip.headers import OtherUri, SipUri

__all__ = ["Call", "CallTable", "address_of_record"]


def address_of_record(uri: SipUri | OtherUri) -> str:
    """``sip:user@host`` of a From/To URI: no port, parameters or display name (for lists and logs)."""
    if isinstance(uri, SipUri):
        return f"{uri.scheme}:{uri.user}@{uri.host}" if uri.user else f"{uri.scheme}:{uri.host}"
    return str(uri)[:256]


@dataclass(slots=True, eq=False)
class Call:
    call_id: str
    tenant_id: str
    flow_id: int
    from_client: bool  # the client placed it (outbound toward the PBX)
    started: float
    answered: float | None = None


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
