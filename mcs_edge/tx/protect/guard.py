"""Protection for the listeners: per-source caps before TLS, tenant caps, request rates, bans.

Theory of operation
-------------------
One :class:`Protection` per service turns the ``[guard]``, ``[tenants.guard]`` and
``[tenants.limits]`` keys into the sans-IO guard objects of :mod:`mcs_edge.core.guard` and
drives their timers. It owns:

``allow`` (``AllowList``)
    ``guard.allow_networks`` for every tenant plus each tenant's ``guard.allow_networks``.
``bans`` (``BanList``), exposed as ``EdgeService.bans``
    auth-failure bans; the admin API lists (``list_bans``), adds (``ban``) and lifts (``lift``).
``guard`` (``SourceGuard``), exposed as ``EdgeService.guard``
    per-source caps: concurrent connections and new connections per second, checked at
    *accept* (:class:`GuardedFactory` wraps the TLS factories, so a source over its caps or
    banned is refused before any TLS work: the socket is closed at once); and SIP requests per
    second, checked by the SIP router before parsing.
``tenant_guard`` (``SourceGuard`` without per-source caps)
    the per-tenant cap on live client connections (``tenants.limits.max_connections``), checked
    when a flow is opened (a WebSocket is closed with 4008 "connection limit", a SIP-TLS
    connection is closed).
``scanners`` (``ScannerCounter``)
    requests that address no tenant, from sources bound to none (requests on the backend port
    from addresses that are no tenant's PBX, TLS with an unknown server name): dropped without
    an answer and only counted (``scanner_kinds`` breaks the count down by where they arrived).

At accept time the tenant is not known yet (SNI comes with the ClientHello). Connections are
then counted under the pseudo-tenant ``ACCEPT`` (``""``, never a tenant id), whose allow-list is
the union of every tenant's networks: an office allow-listed by any tenant passes the per-source
caps before TLS; its requests are still checked against the tenant it is bound to.

A ban is per source (IPv4 address or IPv6 prefix). The router reports PBX answers through
:meth:`Protection.observe_auth` (see :mod:`mcs_edge.core.guard.sip_auth` for what counts); the
admin API (a wrong token) and the HTTPS endpoints that take ``tenants.api_secret`` (a wrong bearer
secret) report through :meth:`Protection.credential_failure`: the same failures, the same ban, the
same allow-list exemption.
A banned source's new connections are refused at accept and its requests are dropped.

Reload (:meth:`Protection.update`) reconfigures the same objects (counts, fills and bans are
kept); ``guard.ipv6_prefix`` keys every table and takes effect only at the next start.
Refusals are logged rate-limited (at most ``LOG_BURST`` lines per second per event code).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from mcs_edge.config import EdgeConfig, GuardConfig
from mcs_edge.core.guard import (
    AllowList,
    BanList,
    BanPolicy,
    Decision,
    RateLimit,
    ScannerCounter,
    SourceGuard,
    SourceLimits,
    TenantLimits,
)
from mcs_edge.core.guard.decision import ALLOWED
from mcs_edge.core.guard.sip_auth import AuthOutcome
from mcs_edge.tx.ops.logs import RateLimitedLog
from mcs_edge.tx.timers import CoreTimer, Timers
from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory

__all__ = [
    "ACCEPT",
    "LOG_BURST",
    "GuardedFactory",
    "Protection",
    "allow_list_of",
    "ban_policy_of",
    "source_limits_of",
    "tenant_limits_of",
]

#: The pseudo-tenant of connections not bound to a tenant yet (not a valid tenant id).
ACCEPT = ""
#: Log lines per second per event code before further ones are only counted.
LOG_BURST = 10


# -- config -> core objects -------------------------------------------------------------------


def allow_list_of(config: EdgeConfig) -> AllowList:
    """Global networks, each tenant's own, and their union under ``ACCEPT``."""
    per_tenant: dict[str, tuple[str, ...]] = {
        t.id: t.guard.allow_networks for t in config.tenants if t.guard.allow_networks
    }
    union = tuple(dict.fromkeys(n for nets in per_tenant.values() for n in nets))
    if union:
        per_tenant[ACCEPT] = union
    return AllowList(config.guard.allow_networks, per_tenant)


def _rate(rate: float, burst: int) -> RateLimit | None:
    return RateLimit(rate, float(burst)) if rate > 0 else None


def source_limits_of(guard: GuardConfig, ipv6_prefix: int | None = None) -> SourceLimits:
    """Per-source caps from ``[guard]`` (``ipv6_prefix`` overrides the configured prefix)."""
    return SourceLimits(
        max_connections_per_ip=guard.max_connections_per_ip or None,
        connection_rate_per_ip=_rate(guard.connection_rate_per_ip, guard.connection_burst_per_ip),
        request_rate_per_ip=_rate(guard.request_rate_per_ip, guard.request_burst_per_ip),
        max_entries=guard.max_sources,
        ipv6_prefix=guard.ipv6_prefix if ipv6_prefix is None else ipv6_prefix,
    )


def ban_policy_of(guard: GuardConfig, ipv6_prefix: int | None = None) -> BanPolicy:
    """The ban policy from ``[guard]``."""
    return BanPolicy(
        max_failures=guard.ban_failures,
        window=guard.ban_window,
        duration=guard.ban_duration,
        max_entries=guard.max_sources,
        ipv6_prefix=guard.ipv6_prefix if ipv6_prefix is None else ipv6_prefix,
    )


def tenant_limits_of(config: EdgeConfig) -> dict[str, TenantLimits]:
    """``tenants.limits.max_connections`` of every tenant."""
    return {t.id: TenantLimits(max_connections=t.limits.max_connections) for t in config.tenants}


def _tenant_source_limits(guard: GuardConfig, ipv6_prefix: int) -> SourceLimits:
    # The tenant guard counts connections per tenant only; its source table just tracks who is live.
    return SourceLimits(None, None, None, max_entries=guard.max_sources, ipv6_prefix=ipv6_prefix)


# -- the service-level object -----------------------------------------------------------------


class Protection:
    """The guard objects of one service, their timers and the rules that use them."""

    log = Logger()

    def __init__(self, config: EdgeConfig, timers: Timers) -> None:
        self.timers = timers
        self.config = config
        self.ipv6_prefix = config.guard.ipv6_prefix
        self.allow = allow_list_of(config)
        self.bans = BanList(ban_policy_of(config.guard), self.allow)
        self.guard = SourceGuard(source_limits_of(config.guard), {}, self.allow, self.bans)
        self.tenant_guard = SourceGuard(
            _tenant_source_limits(config.guard, self.ipv6_prefix), tenant_limits_of(config), self.allow, None
        )
        self.scanners = ScannerCounter()
        #: Scanner drops by where they arrived ("backend_sip", "tls_sni", ...).
        self.scanner_kinds: dict[str, int] = {}
        #: Requests dropped by the SIP router, by reason code.
        self.requests_dropped: dict[str, int] = {}
        #: Wrong credentials reported by :meth:`credential_failure`, by what was tried.
        self.credential_failures: dict[str, int] = {}
        self._bans_timer = CoreTimer(timers, self.bans)
        self._guard_timer = CoreTimer(timers, self.guard)
        self._tenant_timer = CoreTimer(timers, self.tenant_guard)
        self._logs = RateLimitedLog(self.log, burst=LOG_BURST, window=1.0, now=timers.now)
        self._stopped = False

    # -- configuration ------------------------------------------------------------------------
    def update(self, config: EdgeConfig) -> None:
        """Adopt a reloaded configuration (counts, fills and bans are kept)."""
        now = self.timers.now()
        if config.guard.ipv6_prefix != self.ipv6_prefix:
            self.log.warn(
                "GRD300 guard.ipv6_prefix changed to {new}: it takes effect at the next restart ({old} kept)",
                new=config.guard.ipv6_prefix,
                old=self.ipv6_prefix,
            )
        prefix = self.ipv6_prefix
        self.config = config
        allow = allow_list_of(config)
        self.allow = allow
        self.bans.reconfigure(ban_policy_of(config.guard, prefix), allow, now)
        self.guard.reconfigure(source_limits_of(config.guard, prefix), {}, allow, now)
        self.tenant_guard.reconfigure(
            _tenant_source_limits(config.guard, prefix), tenant_limits_of(config), allow, now
        )
        self._arm()

    def _arm(self) -> None:
        if self._stopped:
            return
        self._bans_timer.arm()
        self._guard_timer.arm()
        self._tenant_timer.arm()

    @property
    def armed(self) -> int:
        """How many of the guard's timers are pending (at most three)."""
        return sum(t.active for t in (self._bans_timer, self._guard_timer, self._tenant_timer))

    def stop(self) -> None:
        """Cancel the timers; later events (connections closing during shutdown) arm none."""
        self._stopped = True
        self._bans_timer.cancel()
        self._guard_timer.cancel()
        self._tenant_timer.cancel()

    # -- accept (before TLS) --------------------------------------------------------------------
    def admit_accept(self, host: str, listener: str) -> bool:
        """A TCP connection from ``host`` arrived on ``listener``: may it go on to TLS?"""
        try:
            decision = self.guard.admit_connection(host, ACCEPT, self.timers.now())
        except ValueError:  # not an IP address (a UNIX socket in tests): nothing to count
            return True
        self._arm()
        if decision.allowed:
            return True
        if self._logs.allow("GRD401"):
            self.log.info(
                "GRD401 connection from {source} on {listener} refused before TLS: {reason}",
                source=host,
                listener=listener,
                reason=decision.reason,
            )
        return False

    def accept_closed(self, host: str) -> None:
        """A connection admitted by :meth:`admit_accept` has ended."""
        try:
            self.guard.connection_closed(host, ACCEPT, self.timers.now())
        except ValueError:
            return
        self._arm()

    # -- flows (bound to a tenant) --------------------------------------------------------------
    def flow_opened(self, tenant_id: str, host: str) -> Decision:
        """A client connection bound to ``tenant_id`` wants to become a flow (tenant cap)."""
        try:
            decision = self.tenant_guard.admit_connection(host, tenant_id, self.timers.now())
        except ValueError:  # not an IP address (a UNIX socket in tests): nothing to count
            return ALLOWED
        self._arm()
        if not decision.allowed and self._logs.allow("GRD402"):
            self.log.info(
                "GRD402 {tenant} connection from {source} refused: {reason}",
                tenant=tenant_id,
                source=host,
                reason=decision.reason,
            )
        return decision

    def flow_closed(self, tenant_id: str, host: str) -> None:
        """A flow admitted by :meth:`flow_opened` has ended."""
        try:
            self.tenant_guard.connection_closed(host, tenant_id, self.timers.now())
        except ValueError:
            return
        self._arm()

    def admit_request(self, tenant_id: str, host: str) -> bool:
        """One SIP request from ``host`` on a flow of ``tenant_id``: bans and request rate."""
        guard = self.guard
        touched = guard.idle_touched
        try:
            decision = guard.admit_request(host, tenant_id, self.timers.now())
        except ValueError:
            return True
        # Only the source table's idle part has a deadline (the bans were only read): a request on
        # a live connection's source (every WSS and SIP/TLS request) leaves it, and the timer, alone.
        if guard.idle_touched != touched and not self._stopped:
            self._guard_timer.arm()
        if decision.allowed:
            return True
        reason = decision.reason
        self.requests_dropped[reason] = self.requests_dropped.get(reason, 0) + 1
        if self._logs.allow("GRD403"):
            self.log.info(
                "GRD403 {tenant} request from {source} dropped: {reason}",
                tenant=tenant_id,
                source=host,
                reason=reason,
            )
        return False

    def is_banned(self, host: str, tenant_id: str | None = None) -> bool:
        """Whether ``host`` is banned now (for ``tenant_id``: its allow-list exempts)."""
        try:
            return self.bans.is_banned(host, self.timers.now(), tenant_id)
        except ValueError:
            return False

    # -- authentication outcomes ----------------------------------------------------------------
    def observe_auth(self, tenant_id: str, host: str, outcome: AuthOutcome) -> None:
        """The PBX answered an authenticated request from ``host`` (see ``core.guard.sip_auth``)."""
        now = self.timers.now()
        if outcome.success:
            try:
                self.bans.record_auth_success(host, tenant_id, now, outcome.user)
            except ValueError:
                return
            finally:
                self._arm()
            return
        self.credential_failure(host, tenant_id, "sip", outcome.user)

    def credential_failure(
        self, host: str, tenant_id: str | None, what: str, user: str | None = None
    ) -> None:
        """``host`` presented wrong credentials (``what``): ``sip`` (a password the PBX refused),
        ``admin_token`` (``tenant_id`` None: only the global allow-list exempts) or ``api_secret``. Counted
        toward the same per-source ban (``guard.ban_failures`` within ``guard.ban_window``)."""
        now = self.timers.now()
        try:
            ban = self.bans.record_auth_failure(host, tenant_id, now, user)
        except ValueError:  # not an IP address (a UNIX socket in tests)
            return
        finally:
            self._arm()
        self.credential_failures[what] = self.credential_failures.get(what, 0) + 1
        if ban is None:
            return
        if ban.enforced:
            self.log.warn(
                "GRD301 {tenant} source {source} banned for {duration:.0f} s after {failures} failed"
                " authentication(s) (last: {what}, user {user})",
                tenant=tenant_id or "-",
                source=ban.source,
                duration=ban.until - ban.since,
                failures=ban.failures,
                what=what,
                user=user,
            )
        else:
            self.log.info(
                "GRD302 {tenant} source {source} reached {failures} failed authentication(s) but is"
                " allow-listed: not banned",
                tenant=tenant_id or "-",
                source=ban.source,
                failures=ban.failures,
            )

    # -- scanners -----------------------------------------------------------------------------
    def scanner(self, kind: str) -> None:
        """Count one request that addressed no tenant (dropped without an answer)."""
        self.scanners.record()
        self.scanner_kinds[kind] = self.scanner_kinds.get(kind, 0) + 1


# -- the accept-time wrapper ------------------------------------------------------------------


class _GuardedProtocol(ProtocolWrapper):
    """Reports the end of an admitted connection to the guard."""

    factory: GuardedFactory
    _host: str | None = None

    def admitted(self, host: str) -> None:
        """The guard admitted this connection from ``host``: its end is reported to the guard."""
        self._host = host

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        host, self._host = self._host, None
        if host is not None:
            self.factory.protection.accept_closed(host)
        super().connectionLost(reason)


class GuardedFactory(WrappingFactory[_GuardedProtocol]):
    """Wraps a listener's (TLS) factory: sources over their caps, or banned, get no protocol.

    Returning ``None`` from ``buildProtocol`` makes the port close the socket at once, so a
    refused source costs no TLS handshake and no memory. An admitted connection of a
    :class:`StdlibTLSFactory` is its TLS protocol itself, which calls its ``on_lost`` (the guard's
    release) when it ends; any other protocol is wrapped in a :class:`_GuardedProtocol`.
    """

    protocol = _GuardedProtocol

    def __init__(self, wrapped: Any, protection: Protection, listener: str) -> None:
        super().__init__(wrapped)
        self.protection = protection
        self.listener = listener

    def buildProtocol(self, addr: IAddress | None) -> Any:  # noqa: N802
        host = getattr(addr, "host", None)
        if isinstance(host, str):
            protection = self.protection
            if not protection.admit_accept(host, self.listener):
                return None
            if isinstance(self.wrappedFactory, StdlibTLSFactory):
                # The TLS connection reports its own end (``on_lost``): no wrapper on its path, so
                # each read and write of every connection takes one step less.
                try:
                    tls = self.wrappedFactory.buildProtocol(addr)  # type: ignore[arg-type]
                except BaseException:
                    protection.accept_closed(host)
                    raise
                if tls is None:  # pragma: no cover - the wrapped factory refused
                    protection.accept_closed(host)
                    return None
                tls.on_lost = _Release(protection, host)
                return tls
            try:
                proto = super().buildProtocol(addr)
            except BaseException:
                protection.accept_closed(host)
                raise
            if proto.wrappedProtocol is None:  # pragma: no cover - the wrapped factory refused
                protection.accept_closed(host)
                return None
            proto.admitted(host)
            return proto
        return super().buildProtocol(addr)


class _Release:
    """Reports the end of a connection admitted from ``host`` to the guard (once)."""

    __slots__ = ("host", "protection")

    def __init__(self, protection: Protection, host: str) -> None:
        self.protection = protection
        self.host = host

    def __call__(self) -> None:
        self.protection.accept_closed(self.host)
