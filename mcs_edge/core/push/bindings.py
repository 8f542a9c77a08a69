"""Push bindings (RFC 8599) and calls held while a suspended client wakes up.

Theory of operation
-------------------
The mobile app registers over SIP/TLS with a Contact URI carrying the RFC 8599 parameters
``pn-provider`` (``apns`` or ``fcm``), ``pn-prid`` (the device token) and ``pn-param`` (for APNs the
app's topic, e.g. ``ABCD1234.com.example.app.voip``), plus ``+sip.instance`` (RFC 5626). When the PBX
accepts that REGISTER (2xx), the edge, acting as the RFC 8599 SIP proxy, keeps a *push binding*:

``PushKey = (tenant id, AOR, +sip.instance)``

next to the RFC 5626 flow binding (:mod:`mcs_edge.core.sip.flows`). Decision table:

=============================================  ====================================================
event                                          effect
=============================================  ====================================================
2xx to REGISTER, pn-provider the tenant has    create or refresh the binding (prid/param/expiry);
                                               the 2xx gets ``Feature-Caps: +sip.pns="<providers>"``
                                               and ``+sip.pnspurr="<purr>"`` (RFC 8599 s.6.1, s.5.3.2)
2xx to REGISTER, pn-provider not configured    no binding; no +sip.pns for it (the UA learns the
                                               edge will not push, RFC 8599 s.5.2)
2xx to REGISTER, Contact expires=0 / Expires:0 remove the binding (the app left on purpose)
binding's expiry passes                        remove it (:meth:`PushRegistry.expire`)
provider says the token is invalid             remove it (APNs 410/BadDeviceToken, FCM UNREGISTERED)
initial INVITE from the PBX whose flow token   hold it (:class:`Waiting`), answer 180 or 100
or pn-purr names a binding with no live        (``push.ring``), send a push; the instance's new
(or a stale) connection                        REGISTER releases it toward the new connection;
                                               ``push.wait`` later -> 480 with a Reason
CANCEL of a held INVITE                        200 to the CANCEL, 487 to the INVITE, no push result
                                               waited for
=============================================  ====================================================

Several instances of one AOR: the PBX forks the call to each registered Contact (each carries its
own flow token/PURR), so each branch toward a sleeping instance is held and woken on its own; live
instances get their branch at once. The fork is the PBX's, the first to answer wins there.

``pn-purr`` (RFC 8599 s.4.1.5): the edge allocates a PURR per binding (random, passed in) and
returns it in ``+sip.pnspurr``; a request from the PBX whose Request-URI carries ``pn-purr`` is
matched to the binding by it when it has no flow token.

Clients without ``pn-provider`` (browsers, the app with push disabled) have no push binding and
behave exactly as before: a gone flow gets 430.

Sans-IO: ``now`` and the PURR are arguments; nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "FAILED_REASON",
    "PROVIDERS",
    "TIMEOUT_REASON",
    "PushBinding",
    "PushKey",
    "PushParams",
    "PushRegistry",
    "Waiting",
    "WakeTable",
    "feature_caps",
    "push_params",
]

#: Providers the edge can push through (RFC 8599 s.13.2 registry names).
PROVIDERS: Final = ("apns", "fcm")
#: Bindings kept at most (the oldest expiring first beyond this are refused).
MAX_BINDINGS: Final = 200_000
#: Device tokens and pn-param longer than this are refused (APNs tokens are 64 hex, FCM ~160).
MAX_PARAM: Final = 512
#: The Reason (RFC 3326) of the 480 sent when the woken app did not come back in time.
TIMEOUT_REASON: Final = 'SIP;cause=480;text="Push wake-up timed out"'
#: ... and when the push could not be sent at all.
FAILED_REASON: Final = 'SIP;cause=480;text="Push notification failed"'


@dataclass(frozen=True, slots=True)
class PushKey:
    tenant_id: str
    aor: str
    instance: str


@dataclass(frozen=True, slots=True)
class PushParams:
    provider: str
    prid: str
    param: str


@dataclass(slots=True, eq=False)
class PushBinding:
    key: PushKey
    params: PushParams
    purr: str
    expires_at: float
    tokens: list[str] = field(default_factory=list)  # flow tokens of connections that registered it


def push_params(uri: Any) -> PushParams | None:
    """The RFC 8599 parameters of a Contact URI, or None (absent, or malformed: clean drop)."""
    param = getattr(uri, "param", None)
    if param is None:
        return None
    provider = (param("pn-provider") or "").lower()
    prid = param("pn-prid") or ""
    if not provider or not prid or len(prid) > MAX_PARAM:
        return None
    extra = param("pn-param") or ""
    if len(extra) > MAX_PARAM:
        return None
    return PushParams(provider, prid, extra)


def feature_caps(providers: Iterable[str], purr: str | None) -> str:
    """The Feature-Caps value of a 2xx to a push REGISTER (RFC 8599 s.6.1, RFC 6809)."""
    names = ",".join(f'"{p}"' for p in sorted(providers))
    value = f"*;+sip.pns={names}" if names else "*"
    if purr:
        value += f';+sip.pnspurr="{purr}"'
    return value


class PushRegistry:
    """Push bindings by key, flow token and PURR; expiry in a lazy heap."""

    def __init__(self) -> None:
        self.bindings: dict[PushKey, PushBinding] = {}
        self._by_token: dict[str, PushKey] = {}
        self._by_purr: dict[str, PushKey] = {}
        self._heap: list[tuple[float, int, PushKey]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self.bindings)

    def register(
        self, key: PushKey, params: PushParams, token: str, expires_at: float, new_purr: str
    ) -> PushBinding | None:
        """Create or refresh the binding of ``key``; None when the table is full (refused)."""
        binding = self.bindings.get(key)
        if binding is None:
            if len(self.bindings) >= MAX_BINDINGS:
                return None
            binding = self.bindings[key] = PushBinding(key, params, new_purr, expires_at)
            self._by_purr[new_purr] = key
        binding.params = params
        binding.expires_at = expires_at
        if token not in binding.tokens:
            binding.tokens.append(token)
            self._by_token[token] = key
            while len(binding.tokens) > 8:
                old = binding.tokens.pop(0)
                if self._by_token.get(old) == key:
                    del self._by_token[old]
        self._seq += 1
        heapq.heappush(self._heap, (expires_at, self._seq, key))
        return binding

    def remove(self, key: PushKey) -> PushBinding | None:
        binding = self.bindings.pop(key, None)
        if binding is None:
            return None
        for token in binding.tokens:
            if self._by_token.get(token) == key:
                del self._by_token[token]
        self._by_purr.pop(binding.purr, None)
        return binding

    def by_token(self, token: str) -> PushBinding | None:
        key = self._by_token.get(token)
        return self.bindings.get(key) if key is not None else None

    def by_purr(self, purr: str) -> PushBinding | None:
        key = self._by_purr.get(purr)
        return self.bindings.get(key) if key is not None else None

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap:
            at, _seq, key = heap[0]
            binding = self.bindings.get(key)
            if binding is not None and binding.expires_at == at:
                return at
            heapq.heappop(heap)
        return None

    def expire(self, now: float) -> Iterator[PushBinding]:
        """Bindings whose registration expired (removed as they are yielded)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _seq, key = heapq.heappop(heap)
            binding = self.bindings.get(key)
            if binding is not None and binding.expires_at == at:
                self.remove(key)
                yield binding


@dataclass(slots=True, eq=False)
class Waiting:
    """An initial INVITE from the PBX held while its instance wakes up."""

    wake_id: int
    key: PushKey
    provider: str
    deadline: float
    pushed_at: float
    context: Any  # the proxy's: server transaction, forwarded request, PBX address...


class WakeTable:
    """Held INVITEs by wake id and key; deadlines in a lazy heap."""

    def __init__(self) -> None:
        self.waiting: dict[int, Waiting] = {}
        self._heap: list[tuple[float, int]] = []
        self._next = 1

    def __len__(self) -> int:
        return len(self.waiting)

    def hold(self, key: PushKey, provider: str, deadline: float, now: float, context: Any) -> Waiting:
        w = Waiting(self._next, key, provider, deadline, now, context)
        self._next += 1
        self.waiting[w.wake_id] = w
        heapq.heappush(self._heap, (deadline, w.wake_id))
        return w

    def release(self, wake_id: int) -> Waiting | None:
        return self.waiting.pop(wake_id, None)

    def of_key(self, key: PushKey) -> list[Waiting]:
        return [w for w in self.waiting.values() if w.key == key]

    def find(self, predicate: Any) -> Waiting | None:
        for w in self.waiting.values():
            if predicate(w.context):
                return w
        return None

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap and heap[0][1] not in self.waiting:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expired(self, now: float) -> Iterator[Waiting]:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, wake_id = heapq.heappop(heap)
            w = self.waiting.pop(wake_id, None)
            if w is not None:
                yield w
