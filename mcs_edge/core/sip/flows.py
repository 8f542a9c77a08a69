"""Flows bound to the client's instance (RFC 5626), and the grace of a lost connection.

Theory of operation
-------------------
A *connection* (one WebSocket or TLS stream) gets a random flow token when it is accepted; the token
goes into the Path of its REGISTERs and the Record-Route of its dialogs. Connections are short-lived
on a laptop or a phone: the network changes, the WebSocket dies, the client reconnects from another
address. RFC 5626 gives the client a stable identity for that: a REGISTER Contact with
``+sip.instance`` (the UA instance URN) and ``reg-id`` (which of its flows). This module keeps the
*bindings* built from them:

``BindingKey = (tenant id, AOR, +sip.instance, reg-id)``

A binding is created when the PBX accepts (2xx) a REGISTER carrying both parameters, never on the
request alone (an unauthenticated REGISTER must not steal someone's flow). It owns the connection
that registered it, and every token that connection or an earlier one of the same binding was
given. Lookups:

=========================================  =============================================================
event                                      effect
=========================================  =============================================================
2xx to REGISTER with instance + reg-id     bind the connection; a previous connection of the same key
                                           (live or lost) is *replaced* (its tokens now resolve to the
                                           new connection; the caller moves its calls and closes it)
2xx to REGISTER with expires 0             unbind (the client left on purpose)
connection closed                          the binding keeps its tokens, without a connection, until
                                           ``grace`` has passed (:meth:`FlowRegistry.lost`)
token of an old connection (``resolve``)   the binding's current connection, if any
=========================================  =============================================================

Two connections are "the same instance" (:meth:`same_instance`) only when both are or were bound to
the same key: same tenant, same AOR, same instance URN and reg-id. A stranger presenting a token of
someone else's connection, or the same instance id under another tenant or AOR, is not.

Grace. A lost connection that carried calls is kept as a :class:`LostFlow` until ``deadline``
(``sip.flow_grace`` seconds after the loss). The proxy keeps those calls and their media; when the
instance comes back in time the calls move to the new connection, otherwise the proxy ends them
when :meth:`expired` returns the lost flow. Deadlines sit in a heap with lazy deletion (an entry is
live while its flow id is still in ``lost``); :meth:`get_timer` is the earliest.

Sans-IO: ``now`` is an argument, nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from .destinations import Addr, FlowDest
from .headers import NameAddr, SipUri

__all__ = [
    "GRACE_BYE_REASON",
    "IN_GRACE",
    "Binding",
    "BindingKey",
    "Flow",
    "FlowRegistry",
    "LostFlow",
    "RecoveryHistogram",
    "binding_key",
    "in_grace_answer",
]

#: Tokens remembered per binding (its current and last connections).
MAX_TOKENS: Final = 8
#: Bindings without a live connection kept at most (oldest forgotten first).
MAX_IDLE_BINDINGS: Final = 100_000


@dataclass(frozen=True, slots=True)
class BindingKey:
    tenant_id: str
    aor: str
    instance: str
    reg_id: str


@dataclass(slots=True, eq=False)
class Binding:
    key: BindingKey
    flow_id: int | None
    tokens: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # Contact aliases of earlier connections
    lost_at: float | None = None
    forget_at: float = 0.0
    lost_flows: list[int] = field(default_factory=list)  # its lost connections whose calls wait


@dataclass(slots=True, eq=False)
class LostFlow:
    """A closed connection whose calls wait for the instance to come back."""

    flow_id: int
    tenant_id: str
    key: BindingKey | None
    lost_at: float
    deadline: float


def _aor(uri: object) -> str:
    if isinstance(uri, SipUri):
        user = f"{uri.user}@" if uri.user else ""
        return f"sip:{user}{uri.host.lower()}"
    return str(uri).lower()


def binding_key(tenant_id: str, to: NameAddr, contacts: list[NameAddr]) -> tuple[BindingKey | None, bool]:
    """(key, unregister) from a REGISTER's To and Contacts: the first Contact with ``+sip.instance``
    and ``reg-id`` (RFC 5626 s.4.2); ``unregister`` when that Contact's ``expires`` is 0."""
    for c in contacts:
        if c.is_star:
            continue
        instance = c.param("+sip.instance")
        reg_id = c.param("reg-id")
        if not instance or not reg_id:
            continue
        expires = c.param("expires")
        return BindingKey(tenant_id, _aor(to.uri), instance.strip('"<>').lower(), reg_id), expires == "0"
    return None, False


class FlowRegistry:
    """Bindings (instance -> connection) and lost connections in grace; see the module docstring."""

    def __init__(self, grace: float = 30.0) -> None:
        self.grace = grace
        self.bindings: dict[BindingKey, Binding] = {}
        self._by_flow: dict[int, BindingKey] = {}
        self._by_token: dict[str, BindingKey] = {}
        self._idle: OrderedDict[BindingKey, None] = OrderedDict()  # bindings without a connection
        self.lost: dict[int, LostFlow] = {}
        self._heap: list[tuple[float, int]] = []

    # ------------------------------------------------------------------------------ bindings
    def bind(
        self, key: BindingKey, flow_id: int, token: str, aliases: dict[str, str], now: float
    ) -> Binding | None:
        """Bind connection ``flow_id`` to ``key``; returns the binding when it replaced another
        connection (its ``flow_id`` then is the new one; the caller reads the old one first)."""
        old_key = self._by_flow.get(flow_id)
        if old_key is not None and old_key != key:
            self.unbind(flow_id)
        binding = self.bindings.get(key)
        replaced = None
        if binding is None:
            binding = self.bindings[key] = Binding(key, flow_id)
        elif binding.flow_id != flow_id:
            if binding.flow_id is not None:
                self._by_flow.pop(binding.flow_id, None)
            replaced = binding
            binding.flow_id = flow_id
            binding.lost_at = None
        self._idle.pop(key, None)
        self._by_flow[flow_id] = key
        if token not in binding.tokens:
            binding.tokens.append(token)
            self._by_token[token] = key
            while len(binding.tokens) > MAX_TOKENS:
                self._by_token.pop(binding.tokens.pop(0), None)
        binding.aliases.update(aliases)
        return replaced

    def unbind(self, flow_id: int) -> None:
        """The client de-registered this connection's binding."""
        key = self._by_flow.pop(flow_id, None)
        if key is None:
            return
        binding = self.bindings.pop(key, None)
        self._idle.pop(key, None)
        if binding is not None:
            for token in binding.tokens:
                self._by_token.pop(token, None)

    def binding_of(self, flow_id: int) -> BindingKey | None:
        return self._by_flow.get(flow_id)

    def resolve(self, token: str) -> Binding | None:
        """The binding that owns ``token`` (a token of its current or of an earlier connection)."""
        key = self._by_token.get(token)
        return self.bindings.get(key) if key is not None else None

    def same_instance(self, old_flow_id: int, new_flow_id: int) -> bool:
        """True when ``new_flow_id`` is bound to the key ``old_flow_id`` is or was bound to."""
        if old_flow_id == new_flow_id:
            return True
        new_key = self._by_flow.get(new_flow_id)
        if new_key is None:
            return False
        old_key = self._by_flow.get(old_flow_id)
        if old_key is None:
            lost = self.lost.get(old_flow_id)
            old_key = lost.key if lost is not None else None
        return old_key == new_key

    def key_of_token(self, token: str) -> BindingKey | None:
        return self._by_token.get(token)

    # ------------------------------------------------------------------ taken over (docs/ha.md)
    def adopt_binding(
        self, key: BindingKey, tokens: list[str], aliases: dict[str, str], now: float
    ) -> Binding:
        """A binding replicated from the node that died: no connection (the client must reconnect),
        its tokens resolve to it, forgotten after ``grace`` unless the client comes back."""
        binding = self.bindings.get(key)
        if binding is None:
            binding = self.bindings[key] = Binding(key, None)
            binding.lost_at = now
            binding.forget_at = now + self.grace
            self._idle[key] = None
        for token in tokens[-MAX_TOKENS:]:
            if token not in binding.tokens:
                binding.tokens.append(token)
                self._by_token[token] = key
        while len(binding.tokens) > MAX_TOKENS:
            self._by_token.pop(binding.tokens.pop(0), None)
        binding.aliases.update(aliases)
        return binding

    def adopt_lost(self, flow_id: int, tenant_id: str, key: BindingKey | None, now: float) -> LostFlow:
        """A lost connection standing for the calls taken over from the node that died: they wait
        ``grace`` (from ``now``, the takeover) for their client, as after a network change."""
        lost = LostFlow(flow_id, tenant_id, key, now, now + self.grace)
        self.lost[flow_id] = lost
        if key is not None and key in self.bindings:
            self.bindings[key].lost_flows.append(flow_id)
        heapq.heappush(self._heap, (lost.deadline, flow_id))
        return lost

    # ----------------------------------------------------------------------------- lost flows
    def flow_closed(self, flow_id: int, tenant_id: str, now: float, keep: bool) -> LostFlow | None:
        """Connection ``flow_id`` is gone; with ``keep`` (it carried calls) it waits ``grace``."""
        key = self._by_flow.pop(flow_id, None)
        if key is not None:
            binding = self.bindings.get(key)
            if binding is not None and binding.flow_id == flow_id:
                binding.flow_id = None
                binding.lost_at = now
                binding.forget_at = now + self.grace
                self._idle[key] = None
                self._idle.move_to_end(key)
                while len(self._idle) > MAX_IDLE_BINDINGS:
                    self._forget(next(iter(self._idle)))
        if not keep:
            return None
        lost = LostFlow(flow_id, tenant_id, key, now, now + self.grace)
        self.lost[flow_id] = lost
        if key is not None and key in self.bindings:
            self.bindings[key].lost_flows.append(flow_id)
        heapq.heappush(self._heap, (lost.deadline, flow_id))
        return lost

    def recovered(self, flow_id: int) -> LostFlow | None:
        """The lost flow has no call left (moved or ended): it needs no grace timer any more."""
        lost = self.lost.pop(flow_id, None)
        if lost is not None and lost.key is not None:
            binding = self.bindings.get(lost.key)
            if binding is not None and flow_id in binding.lost_flows:
                binding.lost_flows.remove(flow_id)
        return lost

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap and heap[0][1] not in self.lost:
            heapq.heappop(heap)
        deadline = heap[0][0] if heap else None
        if self._idle:
            forget = self.bindings[next(iter(self._idle))].forget_at
            if deadline is None or forget < deadline:
                deadline = forget
        return deadline

    def expired(self, now: float, limit: int | None = None) -> Iterator[LostFlow]:
        """Lost flows whose grace is over (removed as they are yielded), at most ``limit`` of them
        (the rest stay due: ``get_timer`` says now, so a caller ends a burst over several turns,
        issue 21); idle bindings forgotten."""
        while self._idle:
            key = next(iter(self._idle))
            if self.bindings[key].forget_at > now:
                break
            self._forget(key)
        heap = self._heap
        left = limit
        while heap and heap[0][0] <= now and (left is None or left > 0):
            _, flow_id = heapq.heappop(heap)
            lost = self.recovered(flow_id)
            if lost is not None:
                if left is not None:
                    left -= 1
                yield lost

    def _forget(self, key: BindingKey) -> None:
        self._idle.pop(key, None)
        binding = self.bindings.pop(key, None)
        if binding is not None:
            for token in binding.tokens:
                if self._by_token.get(token) == key:
                    del self._by_token[token]


# ------------------------------------------------------------------------------------- decisions

#: What a PBX request for a call in grace gets while its client is away (the connection is lost,
#: the instance may come back). After the grace period the call is over and requests get 430 as
#: for any dead flow (RFC 5626 s.5.3).
#:
#: * re-INVITE / UPDATE: 491 Request Pending. RFC 3261 s.14.1 makes the PBX retry after a random
#:   2.1-4 s (it did not create the Call-ID) or 0-2 s: by then the client is often back, and the
#:   retry reaches it. A 5xx/408 would end the dialog in many PBXs.
#: * BYE: 200 OK, and the call ends on the edge at once (the PBX hung up; the client learns it
#:   when its re-INVITE gets 481).
#: * anything else (INFO, NOTIFY, OPTIONS, MESSAGE, REFER ...): 480 Temporarily Unavailable with a
#:   Retry-After of the grace left.
IN_GRACE: Final = {
    "INVITE": (491, "Request Pending (client reconnecting)"),
    "UPDATE": (491, "Request Pending (client reconnecting)"),
    "BYE": (200, "OK"),
}
IN_GRACE_OTHER: Final = (480, "Temporarily Unavailable (client reconnecting)")

#: The Reason (RFC 3326) of the BYE the edge sends when the grace period ran out.
GRACE_BYE_REASON: Final = 'SIP;cause=430;text="Client connection lost"'


def in_grace_answer(method: str) -> tuple[int, str]:
    """The answer to a PBX request for a call in grace (see :data:`IN_GRACE`)."""
    return IN_GRACE.get(method, IN_GRACE_OTHER)


class RecoveryHistogram:
    """Time from a connection loss to its calls moving to the instance's new connection (seconds)."""

    BUCKETS: Final = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(self.BUCKETS)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        for i, bound in enumerate(self.BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                return

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs, ending with "+Inf", as Prometheus wants them."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip(self.BUCKETS, self.counts, strict=True):
            running += n
            out.append((repr(bound), running))
        out.append(("+Inf", self.count))
        return out


@dataclass(slots=True, eq=False)
class Flow:
    """One client connection as the proxy sees it."""

    id: int
    token: str
    tenant: Any
    transport: str  # "wss" or "tls"
    peer: Addr
    aliases: dict[str, str] = field(default_factory=dict)  # alias key -> original Contact URI
    registered: bool = False
    last_seen: float = 0.0
    aor: str = ""  # the address of record of its last successful REGISTER (admin API, panel)
    #: Where its transactions' messages go (one value per flow, shared by them).
    dest: FlowDest = field(init=False)

    def __post_init__(self) -> None:
        self.dest = FlowDest(self.id)
