"""Per-source and per-tenant caps on connections and requests, in bounded memory.

Theory of operation
-------------------
The listeners ask ``admit_connection(ip, tenant, now)`` when a connection has been bound to a
tenant, report ``connection_closed(ip, tenant, now)`` when it ends, and ask
``admit_request(ip, tenant, now)`` for every request on it. Each answer is a ``Decision`` whose
``reason`` names the rule that refused. Rules, in the order they are checked:

=============================  ===========================================  ===================
rule                           counted per                                  reason
=============================  ===========================================  ===================
banned (``BanList``)           source                                       ``banned``
table slot for a new source    (all sources)                                ``source_table_full``
concurrent connections         source, unless allow-listed                  ``per_ip_connections``
concurrent connections         tenant (``TenantLimits.max_connections``)    ``tenant_connections``
new connections per second     source, unless allow-listed                  ``per_ip_connection_rate``
new connections per second     tenant                                       ``tenant_connection_rate``
requests per second            source, unless allow-listed                  ``per_ip_rate``
requests per second            tenant                                       ``tenant_rate``
=============================  ===========================================  ===================

A *source* is an IPv4 address or an IPv6 /64 (``addresses.py``). Rates are token buckets
(burst, then a steady rate); the per-source and the tenant bucket are charged together or not at
all (``TokenBucket.consume_within``), so a request refused for the tenant does not use up the
source's allowance and vice versa. Allow-listed networks (global, or the tenant's own: offices
behind one NAT) skip the per-source caps but still count against the tenant's. Connections are
counted for allow-listed sources too, so ``connection_closed`` is right even if a reload changed
the allow-list in between.

Bounded memory
    The source table holds at most ``max_entries`` sources. Sources with live connections are
    never evicted (their counts must stay right); the others are kept in LRU order and
    expire ``idle_ttl`` after their last use, the time any per-source bucket needs to refill
    from empty, so dropping them loses nothing. A new source that finds the table full evicts
    the least recently used idle source (which at worst gives that source a fresh allowance);
    if every slot holds a live connection, the new source is refused (``source_table_full``):
    the worker is then past any sane connection count anyway. Per-tenant state is bounded by
    the tenant table. ``get_timer()``/``handle_timer(now)`` drive the idle expiry.

Give the ``BanList`` passed in the same ``AllowList`` object as the guard, so both agree on who
is exempt (``reconfigure`` both with the same new one).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from mcs_edge.core.guard.addresses import Address, AllowList, Source, source_of
from mcs_edge.core.guard.bans import BanList
from mcs_edge.core.guard.decision import (
    ALLOWED,
    BANNED,
    PER_IP_CONNECTION_RATE,
    PER_IP_CONNECTIONS,
    PER_IP_RATE,
    SOURCE_TABLE_FULL,
    TENANT_CONNECTION_RATE,
    TENANT_CONNECTIONS,
    TENANT_RATE,
    Decision,
)
from mcs_edge.core.shaping.token_bucket import ADMITTED, REFUSED_SELF, TokenBucket

__all__ = ["RateLimit", "SourceGuard", "SourceLimits", "TenantLimits"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate`` events per second on average, up to ``burst`` at once."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (0.0 < self.rate < math.inf):
            raise ValueError(f"rate must be finite and > 0, got {self.rate!r}")
        if not (1.0 <= self.burst < math.inf):
            raise ValueError(f"burst must be finite and >= 1, got {self.burst!r}")

    def bucket(self, now: float) -> TokenBucket:
        """A full bucket for this limit."""
        return TokenBucket(self.rate, self.burst, now)


@dataclass(frozen=True, slots=True)
class SourceLimits:
    """Per-source caps (``None`` = no cap) and the size of the source table."""

    max_connections_per_ip: int | None = 64
    connection_rate_per_ip: RateLimit | None = RateLimit(5.0, 20.0)
    request_rate_per_ip: RateLimit | None = RateLimit(20.0, 100.0)
    max_entries: int = 100_000
    ipv6_prefix: int = 64

    def __post_init__(self) -> None:
        if self.max_connections_per_ip is not None and self.max_connections_per_ip < 1:
            raise ValueError(f"max_connections_per_ip must be >= 1, got {self.max_connections_per_ip!r}")
        if self.max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {self.max_entries!r}")
        if not (0 <= self.ipv6_prefix <= 128):
            raise ValueError(f"ipv6_prefix must be within [0, 128], got {self.ipv6_prefix!r}")

    @property
    def idle_ttl(self) -> float:
        """How long an idle source is remembered: the longest refill of a per-source bucket."""
        limits = (self.connection_rate_per_ip, self.request_rate_per_ip)
        return max((lim.burst / lim.rate for lim in limits if lim is not None), default=0.0)


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """Caps on the sum over all sources of one tenant (``None`` = no cap)."""

    max_connections: int | None = None
    connection_rate: RateLimit | None = None
    request_rate: RateLimit | None = None

    def __post_init__(self) -> None:
        if self.max_connections is not None and self.max_connections < 0:
            raise ValueError(f"max_connections must be >= 0, got {self.max_connections!r}")


_NO_TENANT_LIMITS = TenantLimits()


class _Entry:
    """One source: live connection count, lazily created buckets, LRU time."""

    __slots__ = ("address", "conn_bucket", "connections", "exempt", "last", "req_bucket")

    def __init__(self, address: Address, exempt: bool, now: float) -> None:
        self.address = address
        self.exempt = exempt  # globally allow-listed (tenant lists are checked per call)
        self.connections = 0
        self.conn_bucket: TokenBucket | None = None
        self.req_bucket: TokenBucket | None = None
        self.last = now


class _Tenant:
    __slots__ = ("conn_bucket", "connections", "limits", "req_bucket")

    def __init__(self, limits: TenantLimits, now: float) -> None:
        self.limits = limits
        self.connections = 0
        self.conn_bucket = limits.connection_rate.bucket(now) if limits.connection_rate else None
        self.req_bucket = limits.request_rate.bucket(now) if limits.request_rate else None


def _rebucket(bucket: TokenBucket | None, limit: RateLimit | None, now: float) -> TokenBucket | None:
    if limit is None or bucket is None:
        return None  # created lazily (full) on next use
    bucket.reconfigure(limit.rate, limit.burst, now)
    return bucket


class SourceGuard:
    """Connection and request admission per source and per tenant; see the module docstring."""

    def __init__(
        self,
        limits: SourceLimits | None = None,
        tenants: Mapping[str, TenantLimits] | None = None,
        allow: AllowList | None = None,
        bans: BanList | None = None,
    ) -> None:
        self._limits = limits if limits is not None else SourceLimits()
        self._tenant_limits: dict[str, TenantLimits] = dict(tenants or {})
        self._allow = allow if allow is not None else AllowList()
        self._bans = bans
        self._ttl = self._limits.idle_ttl
        self._live: dict[int, _Entry] = {}
        self._idle: OrderedDict[int, _Entry] = OrderedDict()
        self._tenants: dict[str, _Tenant] = {}
        #: Refusals by reason code since start.
        self.refusals: dict[str, int] = {}
        #: Counts the admissions that used or added an idle source (so :meth:`get_timer` may have
        #: moved): a caller compares it before and after a request to re-arm only then.
        self.idle_touched = 0

    # -- configuration ------------------------------------------------------------------------

    def reconfigure(
        self,
        limits: SourceLimits,
        tenants: Mapping[str, TenantLimits],
        allow: AllowList,
        now: float,
    ) -> None:
        """Apply a reload: counts are kept, buckets keep their fill (capped), the allow-list is swapped.

        If the new ``max_entries`` is smaller, idle sources are evicted down to it; live ones
        stay and new sources are refused until the table shrinks below the cap.
        """
        if limits.ipv6_prefix != self._limits.ipv6_prefix:
            raise ValueError("ipv6_prefix cannot change on reload (it keys the source table)")
        self._limits = limits
        self._tenant_limits = dict(tenants)
        self._allow = allow
        self._ttl = limits.idle_ttl
        for entry in (*self._live.values(), *self._idle.values()):
            entry.exempt = allow.is_global(entry.address)
            entry.conn_bucket = _rebucket(entry.conn_bucket, limits.connection_rate_per_ip, now)
            entry.req_bucket = _rebucket(entry.req_bucket, limits.request_rate_per_ip, now)
        for name, state in list(self._tenants.items()):
            tl = self._tenant_limits.get(name, _NO_TENANT_LIMITS)
            state.limits = tl
            state.conn_bucket = _rebucket(state.conn_bucket, tl.connection_rate, now)
            if state.conn_bucket is None and tl.connection_rate is not None:
                state.conn_bucket = tl.connection_rate.bucket(now)
            state.req_bucket = _rebucket(state.req_bucket, tl.request_rate, now)
            if state.req_bucket is None and tl.request_rate is not None:
                state.req_bucket = tl.request_rate.bucket(now)
            self._maybe_forget_tenant(name, state)
        while self._idle and len(self) > limits.max_entries:
            self._idle.popitem(last=False)
        self.handle_timer(now)

    # -- bookkeeping --------------------------------------------------------------------------

    def __len__(self) -> int:
        """Sources held in the table (live and idle); never above ``max_entries`` by admission."""
        return len(self._live) + len(self._idle)

    def connections(self, ip: str | Address) -> int:
        """Live connections of the source of ``ip``."""
        key = source_of(ip, self._limits.ipv6_prefix).key
        entry = self._live.get(key)
        return entry.connections if entry is not None else 0

    def tenant_connections(self, tenant: str) -> int:
        """Live connections of ``tenant``."""
        state = self._tenants.get(tenant)
        return state.connections if state is not None else 0

    def _refuse(self, decision: Decision) -> Decision:
        self.refusals[decision.reason] = self.refusals.get(decision.reason, 0) + 1
        return decision

    def _entry(self, source: Source, now: float) -> _Entry | None:
        key = source.key
        entry = self._live.get(key)
        if entry is not None:
            return entry
        idle = self._idle
        self.idle_touched += 1
        entry = idle.get(key)
        if entry is not None:
            idle.move_to_end(key)
            entry.last = now
            return entry
        if len(self._live) + len(idle) >= self._limits.max_entries:
            if not idle:
                return None
            idle.popitem(last=False)
        entry = idle[key] = _Entry(source.address, self._allow.is_global(source.address), now)
        return entry

    def _tenant(self, tenant: str, now: float) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant(self._tenant_limits.get(tenant, _NO_TENANT_LIMITS), now)
        return state

    def _maybe_forget_tenant(self, tenant: str, state: _Tenant) -> None:
        # A tenant without configured limits keeps no state once it has no connections.
        if state.connections == 0 and tenant not in self._tenant_limits:
            del self._tenants[tenant]

    def _exempt(self, entry: _Entry, tenant: str) -> bool:
        return entry.exempt or self._allow.for_tenant(entry.address, tenant)

    # -- admission ----------------------------------------------------------------------------

    def admit_connection(self, ip: str | Address, tenant: str, now: float) -> Decision:
        """Decide on a new connection from ``ip`` bound to ``tenant``; if allowed it is counted."""
        limits = self._limits
        source = source_of(ip, limits.ipv6_prefix)
        bans = self._bans
        if bans is not None and bans.is_banned(source.address, now, tenant):
            return self._refuse(BANNED)
        entry = self._entry(source, now)
        if entry is None:
            return self._refuse(SOURCE_TABLE_FULL)
        exempt = self._exempt(entry, tenant)
        cap = limits.max_connections_per_ip
        if not exempt and cap is not None and entry.connections >= cap:
            return self._refuse(PER_IP_CONNECTIONS)
        state = self._tenant(tenant, now)
        tcap = state.limits.max_connections
        if tcap is not None and state.connections >= tcap:
            self._maybe_forget_tenant(tenant, state)
            return self._refuse(TENANT_CONNECTIONS)
        ip_bucket: TokenBucket | None = None
        if not exempt and limits.connection_rate_per_ip is not None:
            ip_bucket = entry.conn_bucket
            if ip_bucket is None:
                ip_bucket = entry.conn_bucket = limits.connection_rate_per_ip.bucket(now)
        refusal = self._charge(
            ip_bucket, state.conn_bucket, now, PER_IP_CONNECTION_RATE, TENANT_CONNECTION_RATE
        )
        if refusal is not None:
            self._maybe_forget_tenant(tenant, state)
            return self._refuse(refusal)
        if entry.connections == 0:
            del self._idle[source.key]
            self._live[source.key] = entry
        entry.connections += 1
        state.connections += 1
        return ALLOWED

    def connection_closed(self, ip: str | Address, tenant: str, now: float) -> None:
        """A connection admitted by ``admit_connection(ip, tenant, ...)`` has ended."""
        key = source_of(ip, self._limits.ipv6_prefix).key
        entry = self._live.get(key)
        if entry is not None:
            entry.connections -= 1
            if entry.connections == 0:
                del self._live[key]
                entry.last = now
                self._idle[key] = entry
        state = self._tenants.get(tenant)
        if state is not None and state.connections > 0:
            state.connections -= 1
            self._maybe_forget_tenant(tenant, state)

    def admit_request(self, ip: str | Address, tenant: str, now: float) -> Decision:
        """Decide on one request from ``ip`` for ``tenant`` (per-source and tenant request rates)."""
        limits = self._limits
        source = source_of(ip, limits.ipv6_prefix)
        bans = self._bans
        if bans is not None and bans.is_banned(source.address, now, tenant):
            return self._refuse(BANNED)
        ip_bucket: TokenBucket | None = None
        if limits.request_rate_per_ip is not None:
            # every request of every client comes here: a live source is found without _entry
            entry = self._live.get(source.key) or self._entry(source, now)
            if entry is None:
                return self._refuse(SOURCE_TABLE_FULL)
            if not entry.exempt and not self._allow.for_tenant(entry.address, tenant):  # _exempt
                ip_bucket = entry.req_bucket
                if ip_bucket is None:
                    ip_bucket = entry.req_bucket = limits.request_rate_per_ip.bucket(now)
        state = self._tenants.get(tenant)
        tenant_bucket = state.req_bucket if state is not None else None
        if tenant_bucket is None:
            if tenant not in self._tenant_limits:  # the common case: a per-source rate only
                if ip_bucket is None or ip_bucket.consume(1.0, now):
                    return ALLOWED
                return self._refuse(PER_IP_RATE)
            tenant_bucket = self._tenant(tenant, now).req_bucket
        refusal = self._charge(ip_bucket, tenant_bucket, now, PER_IP_RATE, TENANT_RATE)
        return ALLOWED if refusal is None else self._refuse(refusal)

    @staticmethod
    def _charge(
        ip_bucket: TokenBucket | None,
        tenant_bucket: TokenBucket | None,
        now: float,
        ip_refusal: Decision,
        tenant_refusal: Decision,
    ) -> Decision | None:
        # One event from both buckets, or from neither.
        if ip_bucket is not None:
            if tenant_bucket is None:
                return None if ip_bucket.consume(1.0, now) else ip_refusal
            verdict = ip_bucket.consume_within(tenant_bucket, 1.0, now)
            if verdict == ADMITTED:
                return None
            return ip_refusal if verdict == REFUSED_SELF else tenant_refusal
        if tenant_bucket is not None and not tenant_bucket.consume(1.0, now):
            return tenant_refusal
        return None

    # -- deadlines ----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When the least recently used idle source expires, or ``None`` if none is held."""
        if not self._idle:
            return None
        return next(iter(self._idle.values())).last + self._ttl

    def handle_timer(self, now: float) -> None:
        """Forget idle sources unused for ``idle_ttl`` (their buckets are full again by now)."""
        idle = self._idle
        ttl = self._ttl
        while idle:
            if next(iter(idle.values())).last + ttl > now:  # the same sum as get_timer()
                break
            idle.popitem(last=False)
