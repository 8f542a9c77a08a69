"""Auth-failure bans: N failed authentications from a source within W seconds ban it for D seconds.

Theory of operation
-------------------
The adapters report authentication outcomes: ``record_auth_failure`` for a 401/403 from the PBX
to a request that *carried credentials* (the first 401 challenge of every REGISTER is normal
digest traffic and must not be reported, nor a 401 with ``stale=true``), and for a failed TURN
allocation; ``record_auth_success`` for a 200 to an authenticated REGISTER. When a source
reaches ``max_failures`` failures within ``window`` seconds (the half-open interval
``(now - window, now]``), it is banned for ``duration`` seconds (defaults: 10 in 60 s, ban
600 s). ``is_banned`` is what the connection and request guards consult.

What is counted, and what a success forgives
    Failures are counted per *source* (IPv4 address or IPv6 /64, see ``addresses.py``), across
    all users and tenants, because the ban is per source and a password sprayer changes the user
    name on every attempt: counting per (source, user) would let it try N-1 passwords on every
    account. Each failure remembers the (tenant, user) it was for. A success forgives only the
    failures of *that same* (tenant, user): behind an office NAT, agent A who mistyped and then
    logged in clears her own failures, while agent B's successes (or an attacker's, using an
    account of his own) never clear failures recorded against other accounts. A forged success
    is impossible: it needs that account's password. A failure without a user (e.g. a malformed
    Authorization header) is never forgiven.

Allow-listed sources
    A source in the global allow-list, or in the allow-list of the tenant the failure was for, is
    never banned, but its failures are still counted: reaching the threshold returns a ``Ban``
    with ``enforced=False`` (not stored, not enforced) for the adapter to log, and counts in
    ``exempt_threshold_hits``. ``is_banned(ip, now, tenant)`` is also false for a source
    allow-listed (globally, or for ``tenant``), so a ban earned against one tenant never locks
    out another tenant's trusted office, and a reload that allow-lists a banned source takes
    effect at once.

While a source is banned further failures are ignored (it should not reach the PBX anyway); the
ban is not extended. Operators can ``ban`` and ``lift`` by hand (admin API).

Bounded memory, deadlines
    Failure records exist only for sources that failed within the last ``window`` seconds; they
    are kept in LRU order of their last failure and expire ``window`` seconds after it. At most
    ``max_entries`` failure records and ``max_entries`` bans exist: a new failure record evicts
    the record with the oldest last failure, a new ban evicts the ban that ends soonest.
    ``get_timer()`` is the next expiry (a ban's ``until`` or a record's end), ``handle_timer(now)``
    drops what has expired. ``is_banned`` checks ``until`` itself, so a late timer never extends a
    ban.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass

from mcs_edge.core.guard.addresses import Address, AllowList, Source, source_of

__all__ = ["Ban", "BanList", "BanPolicy"]


@dataclass(frozen=True, slots=True)
class BanPolicy:
    """``max_failures`` within ``window`` seconds ban a source for ``duration`` seconds."""

    max_failures: int = 10
    window: float = 60.0
    duration: float = 600.0
    max_entries: int = 100_000
    ipv6_prefix: int = 64

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {self.max_failures!r}")
        if not (self.window > 0.0 and self.duration > 0.0):
            raise ValueError(f"window and duration must be > 0, got {self.window!r}, {self.duration!r}")
        if self.max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {self.max_entries!r}")
        if not (0 <= self.ipv6_prefix <= 128):
            raise ValueError(f"ipv6_prefix must be within [0, 128], got {self.ipv6_prefix!r}")


@dataclass(frozen=True, slots=True)
class Ban:
    """One ban as the admin API lists it. ``tenant`` is the tenant of the failure that tripped it."""

    source: str
    tenant: str | None
    since: float
    until: float
    failures: int
    enforced: bool = True


class _Failures:
    __slots__ = ("display", "events", "touched")

    def __init__(self, display: str) -> None:
        self.display = display
        # (time, tenant, user), oldest first, at most max_failures long.
        self.events: list[tuple[float, str | None, str | None]] = []
        self.touched = 0.0


class BanList:
    """Failure counters and bans for all sources, with one deadline for the adapter's timer."""

    def __init__(self, policy: BanPolicy | None = None, allow: AllowList | None = None) -> None:
        self._policy = policy if policy is not None else BanPolicy()
        self._allow = allow if allow is not None else AllowList()
        self._failures: OrderedDict[int, _Failures] = OrderedDict()
        self._bans: dict[int, Ban] = {}
        self._expiry: list[tuple[float, int]] = []  # heap of (until, key); stale entries skipped
        #: Bans created (by failures or by hand) since start.
        self.bans_total = 0
        #: Times an allow-listed source reached the threshold and was not banned.
        self.exempt_threshold_hits = 0

    @property
    def policy(self) -> BanPolicy:
        """The policy in force."""
        return self._policy

    def reconfigure(self, policy: BanPolicy, allow: AllowList, now: float) -> None:
        """Apply a reloaded policy and allow-list; existing bans keep their ``until``.

        A ban on a source that the new allow-list covers stops being enforced at once
        (``is_banned`` consults the allow-list in force). Failure records older than the new
        window expire now.
        """
        self._policy = policy
        self._allow = allow
        self.handle_timer(now)

    def _source(self, ip: str | Address) -> Source:
        return source_of(ip, self._policy.ipv6_prefix)

    # -- queries ------------------------------------------------------------------------------

    def is_banned(self, ip: str | Address, now: float, tenant: str | None = None) -> bool:
        """Whether ``ip`` is banned at ``now`` (never if allow-listed, globally or for ``tenant``)."""
        if not self._bans:
            return False
        source = self._source(ip)
        ban = self._bans.get(source.key)
        if ban is None or ban.until <= now:
            return False
        return not self._allow.allows(source.address, tenant)

    def ban_of(self, ip: str | Address, now: float) -> Ban | None:
        """The ban in force on ``ip`` at ``now``, if any."""
        ban = self._bans.get(self._source(ip).key)
        return ban if ban is not None and ban.until > now else None

    def list_bans(self, now: float) -> list[Ban]:
        """Bans in force at ``now``, oldest first (for the admin API)."""
        return sorted((b for b in self._bans.values() if b.until > now), key=lambda b: (b.since, b.source))

    def failure_count(self, ip: str | Address, now: float) -> int:
        """Failures of ``ip`` within the window ending at ``now``."""
        record = self._failures.get(self._source(ip).key)
        if record is None:
            return 0
        window = self._policy.window
        return sum(1 for t, _, _ in record.events if t + window > now)

    @property
    def failure_records(self) -> int:
        """Sources with failures held (at most ``max_entries``)."""
        return len(self._failures)

    @property
    def ban_records(self) -> int:
        """Bans held, including expired ones not yet dropped by ``handle_timer`` (at most ``max_entries``)."""
        return len(self._bans)

    def __len__(self) -> int:
        """Failure records plus bans held: what ``max_entries`` bounds (each at most max_entries)."""
        return len(self._failures) + len(self._bans)

    # -- events -------------------------------------------------------------------------------

    def record_auth_failure(
        self, ip: str | Address, tenant: str | None, now: float, user: str | None = None
    ) -> Ban | None:
        """Count one failed authentication; return the ``Ban`` if this failure trips the threshold.

        The returned ban has ``enforced=False`` when the source is allow-listed (logged, not
        enforced). Failures of a source that is already banned are ignored.
        """
        policy = self._policy
        source = self._source(ip)
        key = source.key
        ban = self._bans.get(key)
        if ban is not None and ban.until > now:
            return None
        record = self._failures.get(key)
        if record is None:
            if len(self._failures) >= policy.max_entries:
                self._failures.popitem(last=False)
            record = self._failures[key] = _Failures(source.display)
        else:
            self._failures.move_to_end(key)
        record.touched = now
        events = record.events
        window = policy.window
        if events and events[0][0] + window <= now:
            events[:] = [e for e in events if e[0] + window > now]
        events.append((now, tenant, user))
        if len(events) < policy.max_failures:
            return None
        del self._failures[key]
        failures = len(events)
        if self._allow.allows(source.address, tenant):
            self.exempt_threshold_hits += 1
            return Ban(source.display, tenant, now, now + policy.duration, failures, enforced=False)
        return self._add_ban(key, Ban(source.display, tenant, now, now + policy.duration, failures))

    def record_auth_success(self, ip: str | Address, tenant: str | None, now: float, user: str | None) -> int:
        """Forgive the recorded failures of this (tenant, user) from ``ip``; return how many."""
        if user is None:
            return 0
        key = self._source(ip).key
        record = self._failures.get(key)
        if record is None:
            return 0
        before = len(record.events)
        record.events[:] = [e for e in record.events if e[1] != tenant or e[2] != user]
        if not record.events:
            del self._failures[key]
        return before - len(record.events)

    def ban(self, ip: str | Address, tenant: str | None, now: float, duration: float | None = None) -> Ban:
        """Ban ``ip`` by hand for ``duration`` (default: the policy's) seconds, replacing any ban.

        The ban is listed even for an allow-listed source, but ``is_banned`` stays false for it
        (and for a source allow-listed for the tenant asking): the allow-list always wins.
        """
        source = self._source(ip)
        until = now + (self._policy.duration if duration is None else duration)
        self._failures.pop(source.key, None)
        return self._add_ban(source.key, Ban(source.display, tenant, now, until, 0))

    def lift(self, ip: str | Address) -> bool:
        """Remove the ban and failure record of ``ip``; ``True`` if it was banned."""
        key = self._source(ip).key
        self._failures.pop(key, None)
        return self._bans.pop(key, None) is not None

    def _add_ban(self, key: int, ban: Ban) -> Ban:
        bans = self._bans
        if key not in bans:
            while len(bans) >= self._policy.max_entries:
                self._evict_soonest()
        bans[key] = ban
        heapq.heappush(self._expiry, (ban.until, key))
        if len(self._expiry) > 2 * len(bans) + 64:
            self._expiry = [(b.until, k) for k, b in bans.items()]
            heapq.heapify(self._expiry)
        self.bans_total += 1
        return ban

    def _evict_soonest(self) -> None:
        expiry = self._expiry
        while expiry:
            until, key = heapq.heappop(expiry)
            ban = self._bans.get(key)
            if ban is not None and ban.until == until:
                del self._bans[key]
                return
        # Every ban has a heap entry, so this is unreachable; a scan keeps _add_ban's loop finite.
        del self._bans[min(self._bans, key=lambda k: self._bans[k].until)]

    # -- deadlines ----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next expiry (of a ban or of a failure record), or ``None`` if nothing is held."""
        expiry = self._expiry
        while expiry:
            until, key = expiry[0]
            ban = self._bans.get(key)
            if ban is not None and ban.until == until:
                break
            heapq.heappop(expiry)
        deadline = expiry[0][0] if expiry else None
        if self._failures:
            first = next(iter(self._failures.values()))
            failures_end = first.touched + self._policy.window
            if deadline is None or failures_end < deadline:
                deadline = failures_end
        return deadline

    def handle_timer(self, now: float) -> None:
        """Drop bans and failure records that have expired by ``now``."""
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            until, key = heapq.heappop(expiry)
            ban = self._bans.get(key)
            if ban is not None and ban.until == until:
                del self._bans[key]
        window = self._policy.window
        failures = self._failures
        while failures:
            if next(iter(failures.values())).touched + window > now:  # the same sum as get_timer()
                break
            failures.popitem(last=False)
