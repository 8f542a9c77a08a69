"""Tests for ``mcs_edge.core.guard.sources.SourceGuard``: every rule in virtual time, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcs_edge.core.guard import (
    REASONS,
    AllowList,
    BanList,
    Decision,
    RateLimit,
    ScannerCounter,
    SourceGuard,
    SourceLimits,
    TenantLimits,
)

OK = Decision(True, "ok")
NO_RATES = {"connection_rate_per_ip": None, "request_rate_per_ip": None}


def guard(**kw: object) -> SourceGuard:
    """A guard with only the limits a test names (others off)."""
    tenants = kw.pop("tenants", None)
    allow = kw.pop("allow", None)
    bans = kw.pop("bans", None)
    limits = SourceLimits(**{"max_connections_per_ip": None, **NO_RATES, **kw})  # type: ignore[arg-type]
    return SourceGuard(limits, tenants, allow, bans)  # type: ignore[arg-type]


def test_decisions_are_stable_codes() -> None:
    """Reason codes are the documented short strings and decisions are shared constants."""
    assert set(REASONS) == {
        "banned",
        "per_ip_connections",
        "per_ip_connection_rate",
        "per_ip_rate",
        "tenant_connections",
        "tenant_connection_rate",
        "tenant_rate",
        "source_table_full",
    }
    g = guard()
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) is g.admit_connection("192.0.2.2", "rossi", 0.0)


def test_per_ip_concurrent_connections() -> None:
    """The third concurrent connection of one source is refused until one closes."""
    g = guard(max_connections_per_ip=2)
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) == OK
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) == OK
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) == Decision(False, "per_ip_connections")
    assert g.admit_connection("192.0.2.2", "rossi", 0.0) == OK  # another source
    assert g.connections("192.0.2.1") == 2
    g.connection_closed("192.0.2.1", "rossi", 5.0)
    assert g.admit_connection("192.0.2.1", "rossi", 5.0) == OK
    assert g.refusals == {"per_ip_connections": 1}


def test_per_ip_connection_rate() -> None:
    """New connections per source: a burst of 2, then one per second, at exact instants."""
    g = guard(connection_rate_per_ip=RateLimit(1.0, 2.0))
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) == OK
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) == OK
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) == Decision(False, "per_ip_connection_rate")
    assert g.admit_connection("192.0.2.1", "rossi", 0.5).reason == "per_ip_connection_rate"
    assert g.admit_connection("192.0.2.1", "rossi", 1.0) == OK
    assert g.admit_connection("192.0.2.1", "rossi", 1.5).reason == "per_ip_connection_rate"
    assert g.admit_connection("192.0.2.9", "rossi", 1.5) == OK


def test_per_ip_request_rate() -> None:
    """Requests per source: a burst of 3, then two per second."""
    g = guard(request_rate_per_ip=RateLimit(2.0, 3.0))
    for _ in range(3):
        assert g.admit_request("192.0.2.1", "rossi", 10.0) == OK
    assert g.admit_request("192.0.2.1", "rossi", 10.0) == Decision(False, "per_ip_rate")
    assert g.admit_request("192.0.2.1", "rossi", 10.25).reason == "per_ip_rate"
    assert g.admit_request("192.0.2.1", "rossi", 10.5) == OK
    assert g.admit_request("192.0.2.2", "rossi", 10.5) == OK


def test_only_requests_from_idle_sources_touch_the_idle_table() -> None:
    """``idle_touched`` (the adapter re-arms the expiry timer only when it moves): a request from a
    source with a live connection leaves it alone; one from an idle or new source moves it and may
    move ``get_timer``. The per-source rate is the same either way."""
    g = guard(request_rate_per_ip=RateLimit(2.0, 3.0))
    assert g.admit_connection("192.0.2.1", "rossi", 10.0) == OK
    before = g.idle_touched
    for _ in range(3):
        assert g.admit_request("192.0.2.1", "rossi", 10.0) == OK
    assert g.admit_request("192.0.2.1", "rossi", 10.0) == Decision(False, "per_ip_rate")
    assert g.idle_touched == before and g.get_timer() is None
    assert g.admit_request("192.0.2.2", "rossi", 10.0) == OK  # a new source: idle, with a deadline
    assert g.idle_touched == before + 1 and g.get_timer() is not None
    deadline = g.get_timer()
    assert g.admit_request("192.0.2.2", "rossi", 11.0) == OK
    assert g.idle_touched == before + 2 and g.get_timer() is not None and g.get_timer() > deadline  # type: ignore[operator]


def test_ipv6_sources_are_counted_per_slash_64() -> None:
    """Hopping addresses inside one IPv6 /64 does not escape the per-source cap."""
    g = guard(max_connections_per_ip=2)
    assert g.admit_connection("2001:db8:0:1::1", "rossi", 0.0) == OK
    assert g.admit_connection("2001:db8:0:1::2", "rossi", 0.0) == OK
    assert g.admit_connection("2001:db8:0:1::3", "rossi", 0.0).reason == "per_ip_connections"
    assert g.admit_connection("2001:db8:0:2::1", "rossi", 0.0) == OK
    g.connection_closed("2001:db8:0:1::1", "rossi", 1.0)
    assert g.connections("2001:db8:0:1::abcd") == 1


def test_global_allow_list_skips_per_ip_caps_but_not_tenant_caps() -> None:
    """An allow-listed office is exempt from per-IP caps yet still bound by the tenant's."""
    g = guard(
        max_connections_per_ip=1,
        connection_rate_per_ip=RateLimit(1.0, 1.0),
        request_rate_per_ip=RateLimit(1.0, 1.0),
        allow=AllowList(["198.51.100.0/24"]),
        tenants={"rossi": TenantLimits(max_connections=3, request_rate=RateLimit(1.0, 4.0))},
    )
    for _ in range(3):
        assert g.admit_connection("198.51.100.7", "rossi", 0.0) == OK
    assert g.admit_connection("198.51.100.7", "rossi", 0.0) == Decision(False, "tenant_connections")
    assert g.connections("198.51.100.7") == 3  # counted even though exempt
    for _ in range(4):
        assert g.admit_request("198.51.100.7", "rossi", 0.0) == OK
    assert g.admit_request("198.51.100.7", "rossi", 0.0) == Decision(False, "tenant_rate")
    # The same office talking to a tenant without limits is unlimited.
    for _ in range(10):
        assert g.admit_request("198.51.100.7", "bianchi", 0.0) == OK


def test_tenant_allow_list_applies_to_that_tenant_only() -> None:
    """A network allow-listed for one tenant gets per-IP caps when it talks to another tenant."""
    g = guard(max_connections_per_ip=1, allow=AllowList((), {"rossi": ["203.0.113.0/24"]}))
    assert g.admit_connection("203.0.113.5", "rossi", 0.0) == OK
    assert g.admit_connection("203.0.113.5", "rossi", 0.0) == OK
    assert g.admit_connection("203.0.113.5", "bianchi", 0.0).reason == "per_ip_connections"


def test_tenant_max_connections() -> None:
    """A tenant's concurrent connections are capped across all its sources."""
    g = guard(tenants={"rossi": TenantLimits(max_connections=2)})
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) == OK
    assert g.admit_connection("192.0.2.2", "rossi", 0.0) == OK
    assert g.admit_connection("192.0.2.3", "rossi", 0.0) == Decision(False, "tenant_connections")
    assert g.admit_connection("192.0.2.3", "bianchi", 0.0) == OK
    assert (g.tenant_connections("rossi"), g.tenant_connections("bianchi")) == (2, 1)
    g.connection_closed("192.0.2.1", "rossi", 1.0)
    assert g.admit_connection("192.0.2.3", "rossi", 1.0) == OK


def test_tenant_refusal_does_not_charge_the_source() -> None:
    """A request the tenant refuses leaves the source's allowance untouched, and vice versa."""
    g = guard(
        request_rate_per_ip=RateLimit(1.0, 2.0),
        tenants={"rossi": TenantLimits(request_rate=RateLimit(1.0, 1.0))},
    )
    assert g.admit_request("192.0.2.1", "rossi", 0.0) == OK  # tenant now empty
    assert g.admit_request("192.0.2.1", "rossi", 0.0) == Decision(False, "tenant_rate")
    assert g.admit_request("192.0.2.1", "bianchi", 0.0) == OK  # source still had 1 left
    assert g.admit_request("192.0.2.1", "bianchi", 0.0) == Decision(False, "per_ip_rate")
    assert g.admit_request("192.0.2.2", "rossi", 1.0) == OK  # the tenant refilled, not charged above


def test_tenant_connection_rate() -> None:
    """New connections per tenant: burst then rate, shared by all sources of the tenant."""
    g = guard(
        connection_rate_per_ip=RateLimit(1.0, 1.0),
        tenants={"rossi": TenantLimits(connection_rate=RateLimit(2.0, 2.0))},
    )
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) == OK
    assert g.admit_connection("192.0.2.2", "rossi", 0.0) == OK
    assert g.admit_connection("192.0.2.3", "rossi", 0.0) == Decision(False, "tenant_connection_rate")
    assert g.admit_connection("192.0.2.3", "rossi", 0.5) == OK  # source 3 was not charged at t=0
    assert g.admit_connection("192.0.2.1", "rossi", 0.5) == Decision(False, "per_ip_connection_rate")


def test_banned_sources_are_refused_first() -> None:
    """A banned source is refused for connections and requests; the allow-list still wins."""
    allow = AllowList((), {"rossi": ["192.0.2.0/24"]})
    bans = BanList(allow=allow)
    g = guard(bans=bans, allow=allow)
    bans.ban("192.0.2.66", "bianchi", 0.0, 100.0)
    assert g.admit_connection("192.0.2.66", "bianchi", 1.0) == Decision(False, "banned")
    assert g.admit_request("192.0.2.66", "bianchi", 1.0) == Decision(False, "banned")
    assert g.admit_connection("192.0.2.66", "rossi", 1.0) == OK
    assert g.admit_connection("192.0.2.66", "bianchi", 100.0) == OK  # ban over
    assert g.refusals == {"banned": 2}
    assert len(g) == 1  # refused-as-banned sources take no table slot


def test_table_full_of_live_sources_refuses_new_ones() -> None:
    """With every slot held by a live connection a new source is refused, not an old one forgotten."""
    g = guard(max_entries=2)
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) == OK
    assert g.admit_connection("192.0.2.2", "rossi", 0.0) == OK
    assert g.admit_connection("192.0.2.3", "rossi", 0.0) == Decision(False, "source_table_full")
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) == OK  # known sources still fine
    assert len(g) == 2


def test_new_source_evicts_the_least_recently_used_idle_one() -> None:
    """When full, a new source takes the slot of the idle source used longest ago."""
    g = guard(max_entries=2, request_rate_per_ip=RateLimit(1.0, 1.0))
    assert g.admit_request("192.0.2.1", "rossi", 0.0) == OK
    assert g.admit_request("192.0.2.2", "rossi", 0.25) == OK
    assert g.admit_request("192.0.2.1", "rossi", 0.5).reason == "per_ip_rate"  # touches .1
    assert g.admit_request("192.0.2.3", "rossi", 0.75) == OK  # evicts .2
    assert len(g) == 2
    assert g.admit_request("192.0.2.1", "rossi", 0.75).reason == "per_ip_rate"  # .1 kept its state
    assert g.admit_request("192.0.2.2", "rossi", 0.75) == OK  # .2 was forgotten: fresh allowance


def test_idle_sources_expire_when_their_buckets_are_full_again() -> None:
    """Idle sources expire exactly idle_ttl after last use; sources with connections never do."""
    g = guard(connection_rate_per_ip=RateLimit(2.0, 10.0), request_rate_per_ip=RateLimit(10.0, 20.0))
    assert g.get_timer() is None
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) == OK
    assert g.admit_request("192.0.2.2", "rossi", 1.0) == OK
    assert g.get_timer() == 6.0  # ttl = max(10/2, 20/10) = 5 s after t=1
    g.handle_timer(5.999)
    assert len(g) == 2
    g.handle_timer(6.0)
    assert len(g) == 1 and g.get_timer() is None  # the live source stays
    g.connection_closed("192.0.2.1", "rossi", 7.0)
    assert g.get_timer() == 12.0
    g.handle_timer(12.0)
    assert len(g) == 0


def test_idle_sources_without_rate_limits_are_not_kept() -> None:
    """With no per-source rate limits an idle source carries no state worth keeping."""
    g = guard(max_connections_per_ip=5)
    g.admit_connection("192.0.2.1", "rossi", 3.0)
    g.connection_closed("192.0.2.1", "rossi", 4.0)
    assert g.get_timer() == 4.0
    g.handle_timer(4.0)
    assert len(g) == 0


def test_closing_unknown_connections_is_harmless() -> None:
    """A close for a source or tenant with no live connection changes nothing."""
    g = guard(tenants={"rossi": TenantLimits(max_connections=1)})
    g.connection_closed("192.0.2.1", "rossi", 0.0)
    assert g.tenant_connections("rossi") == 0
    assert g.admit_connection("192.0.2.1", "rossi", 0.0) == OK
    assert g.admit_connection("192.0.2.2", "rossi", 0.0).reason == "tenant_connections"


def test_reconfigure_keeps_counts_and_applies_new_caps() -> None:
    """A reload keeps live counts and bucket fills and applies new limits and allow-lists."""
    g = guard(max_connections_per_ip=5, request_rate_per_ip=RateLimit(1.0, 10.0))
    for _ in range(3):
        g.admit_connection("192.0.2.1", "rossi", 0.0)
    for _ in range(8):
        g.admit_request("192.0.2.1", "rossi", 0.0)  # 2 left
    g.reconfigure(
        SourceLimits(
            max_connections_per_ip=3, connection_rate_per_ip=None, request_rate_per_ip=RateLimit(1.0, 4.0)
        ),
        {"rossi": TenantLimits(max_connections=4)},
        AllowList(),
        0.0,
    )
    assert g.admit_connection("192.0.2.1", "rossi", 0.0).reason == "per_ip_connections"
    assert g.admit_request("192.0.2.1", "rossi", 0.0) == OK
    assert g.admit_request("192.0.2.1", "rossi", 0.0) == OK
    assert g.admit_request("192.0.2.1", "rossi", 0.0).reason == "per_ip_rate"  # fill kept: 2, not 4
    assert g.admit_connection("192.0.2.2", "rossi", 0.0) == OK  # tenant: 3 live (counted before) + 1
    assert g.admit_connection("192.0.2.3", "rossi", 0.0).reason == "tenant_connections"
    g.reconfigure(
        SourceLimits(max_connections_per_ip=3, connection_rate_per_ip=None, request_rate_per_ip=None),
        {},
        AllowList(["192.0.2.0/24"]),
        1.0,
    )
    assert g.admit_connection("192.0.2.1", "rossi", 1.0) == OK  # now allow-listed
    with pytest.raises(ValueError, match="ipv6_prefix"):
        g.reconfigure(SourceLimits(ipv6_prefix=56), {}, AllowList(), 2.0)


def test_invalid_limits_are_refused() -> None:
    """Nonsense limits raise ``ValueError`` when built."""
    with pytest.raises(ValueError, match="rate"):
        RateLimit(0.0, 1.0)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(1.0, 0.5)
    with pytest.raises(ValueError, match="max_entries"):
        SourceLimits(max_entries=0)
    with pytest.raises(ValueError, match="max_connections_per_ip"):
        SourceLimits(max_connections_per_ip=0)
    with pytest.raises(ValueError, match="ipv6_prefix"):
        SourceLimits(ipv6_prefix=200)
    with pytest.raises(ValueError, match="max_connections"):
        TenantLimits(max_connections=-1)


def test_scanner_counter() -> None:
    """Tenant-less requests are only counted, as one number."""
    c = ScannerCounter()
    c.record()
    c.record(4)
    assert c.count == 5 == int(c)


# -- bounded memory ------------------------------------------------------------------------------

ips = st.one_of(
    st.sampled_from(["192.0.2.1", "192.0.2.2", "198.51.100.7", "2001:db8::1", "2001:db8::2"]),
    st.integers(0, 2**32 - 1).map(lambda i: f"{i >> 24}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"),
)
ops = st.lists(
    st.tuples(
        st.sampled_from(["connect", "close", "request", "timer"]),
        ips,
        st.sampled_from(["rossi", "bianchi"]),
        st.floats(0.0, 3.0),
    ),
    max_size=120,
)


@settings(max_examples=200)
@given(ops, st.integers(1, 6))
def test_property_table_is_bounded_and_counts_are_exact(
    steps: list[tuple[str, str, str, float]], max_entries: int
) -> None:
    """The source table never exceeds max_entries and live counts match admitted minus closed."""
    g = SourceGuard(
        SourceLimits(
            max_connections_per_ip=3,
            connection_rate_per_ip=RateLimit(1.0, 2.0),
            request_rate_per_ip=RateLimit(2.0, 4.0),
            max_entries=max_entries,
        ),
        {"rossi": TenantLimits(max_connections=4, request_rate=RateLimit(5.0, 5.0))},
        AllowList(["198.51.100.0/24"]),
    )
    live: dict[tuple[str, str], int] = {}
    now = 0.0
    for op, ip, tenant, dt in steps:
        now += dt
        if op == "connect":
            if g.admit_connection(ip, tenant, now).allowed:
                live[ip, tenant] = live.get((ip, tenant), 0) + 1
        elif op == "close":
            if live.get((ip, tenant)):
                live[ip, tenant] -= 1
                g.connection_closed(ip, tenant, now)
        elif op == "request":
            g.admit_request(ip, tenant, now)
        else:
            timer = g.get_timer()
            if timer is not None:
                now = max(now, timer)
                g.handle_timer(now)
                assert g.get_timer() is None or g.get_timer() > now  # type: ignore[operator]
        assert len(g) <= max_entries
        for t in ("rossi", "bianchi"):
            assert g.tenant_connections(t) == sum(n for (_, tt), n in live.items() if tt == t)
        assert g.tenant_connections("rossi") <= 4
    for (ip, _), _n in live.items():
        from mcs_edge.core.guard.addresses import source_of

        same = sum(n for (i2, _), n in live.items() if source_of(i2).key == source_of(ip).key)
        assert g.connections(ip) == same
