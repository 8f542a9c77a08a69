"""Tests for ``mcs_edge.core.guard.bans.BanList``: thresholds, forgiveness, allow-lists, deadlines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcs_edge.core.guard import AllowList, Ban, BanList, BanPolicy

IP = "192.0.2.66"


def fail(
    bans: BanList, times: list[float], ip: str = IP, tenant: str | None = "rossi", user: str = "100"
) -> list[Ban | None]:
    """Record one failure at each of ``times``."""
    return [bans.record_auth_failure(ip, tenant, t, user) for t in times]


def test_ten_failures_in_a_minute_ban_for_ten_minutes() -> None:
    """The defaults: the 10th failure within 60 s bans the source for 600 s, exactly."""
    bans = BanList()
    results = fail(bans, [float(t) for t in range(10)])
    assert results[:9] == [None] * 9
    assert results[9] == Ban("192.0.2.66", "rossi", 9.0, 609.0, 10)
    assert bans.is_banned(IP, 9.0)
    assert bans.is_banned(IP, 608.999)
    assert not bans.is_banned(IP, 609.0)
    assert bans.list_bans(100.0) == [results[9]]
    assert bans.bans_total == 1
    assert not bans.is_banned("192.0.2.67", 100.0)


def test_failures_older_than_the_window_do_not_count() -> None:
    """The window is (now - 60, now]: a failure exactly 60 s old has left it."""
    bans = BanList()
    assert fail(bans, [0.0] + [60.0] * 8) == [None] * 9
    assert bans.failure_count(IP, 60.0) == 8
    assert bans.record_auth_failure(IP, "rossi", 60.0, "100") is None  # 9 within the window
    assert bans.record_auth_failure(IP, "rossi", 60.5, "100") is not None  # 10th
    assert bans.is_banned(IP, 61.0)


def test_configurable_policy() -> None:
    """3 failures in 10 s ban for 30 s when configured so."""
    bans = BanList(BanPolicy(max_failures=3, window=10.0, duration=30.0))
    assert fail(bans, [0.0, 5.0]) == [None, None]
    ban = bans.record_auth_failure(IP, None, 9.5)
    assert ban == Ban(IP, None, 9.5, 39.5, 3)
    with pytest.raises(ValueError, match="max_failures"):
        BanPolicy(max_failures=0)
    with pytest.raises(ValueError, match="window"):
        BanPolicy(window=0.0)
    with pytest.raises(ValueError, match="max_entries"):
        BanPolicy(max_entries=0)
    with pytest.raises(ValueError, match="ipv6_prefix"):
        BanPolicy(ipv6_prefix=-1)


def test_failures_are_counted_per_source_across_users() -> None:
    """A sprayer changing user names on every attempt is still banned at the threshold."""
    bans = BanList()
    results = [bans.record_auth_failure(IP, "rossi", float(i), f"user{i}") for i in range(10)]
    assert results[9] is not None


def test_success_forgives_only_that_users_failures() -> None:
    """Behind a NAT, a 200 for one user clears that user's failures, never another's."""
    bans = BanList()
    fail(bans, [0.0] * 5, user="alice")
    fail(bans, [1.0] * 4, user="bob")
    assert bans.record_auth_success(IP, "rossi", 2.0, "alice") == 5
    assert bans.failure_count(IP, 2.0) == 4
    # Bob (or an attacker with a valid account of his own) cannot clear failures of other users.
    fail(bans, [3.0] * 5, user="victim")
    assert bans.record_auth_success(IP, "rossi", 4.0, "attacker") == 0
    assert bans.record_auth_success(IP, "bianchi", 4.0, "victim") == 0  # same user, other tenant
    assert bans.record_auth_success(IP, "rossi", 4.0, None) == 0
    assert bans.record_auth_failure(IP, "rossi", 5.0, "victim") is not None  # 4 + 5 + 1


def test_success_clearing_every_failure_drops_the_record() -> None:
    """When a success forgives all failures the source's record is gone."""
    bans = BanList()
    fail(bans, [0.0, 1.0])
    assert bans.record_auth_success(IP, "rossi", 2.0, "100") == 2
    assert bans.failure_records == 0
    assert bans.record_auth_success(IP, "rossi", 2.0, "100") == 0
    assert bans.get_timer() is None


def test_failures_without_user_are_never_forgiven() -> None:
    """A failure whose user is unknown stays counted after any success."""
    bans = BanList()
    bans.record_auth_failure(IP, "rossi", 0.0)
    assert bans.record_auth_success(IP, "rossi", 1.0, "100") == 0
    assert bans.failure_count(IP, 1.0) == 1


def test_global_allow_list_is_never_banned_but_counted() -> None:
    """An allow-listed office reaching the threshold gets an unenforced ban record to log."""
    bans = BanList(allow=AllowList(["192.0.2.0/24"]))
    results = fail(bans, [float(t) for t in range(10)])
    assert results[9] == Ban(IP, "rossi", 9.0, 609.0, 10, enforced=False)
    assert not bans.is_banned(IP, 10.0)
    assert bans.list_bans(10.0) == []
    assert bans.exempt_threshold_hits == 1
    assert bans.failure_count(IP, 10.0) == 0  # counting starts again
    assert fail(bans, [float(t) for t in range(10, 20)])[9] is not None
    assert bans.exempt_threshold_hits == 2


def test_tenant_allow_list_exempts_for_that_tenant() -> None:
    """Failures against a tenant that trusts the office never ban it; its own requests pass any ban."""
    bans = BanList(allow=AllowList((), {"rossi": ["192.0.2.0/24"]}))
    assert fail(bans, [0.0] * 10, tenant="rossi")[9] == Ban(IP, "rossi", 0.0, 600.0, 10, enforced=False)
    assert not bans.is_banned(IP, 1.0)
    ban = fail(bans, [1.0] * 10, tenant="bianchi")[9]
    assert ban is not None and ban.enforced
    assert bans.is_banned(IP, 2.0)
    assert bans.is_banned(IP, 2.0, "bianchi")
    assert not bans.is_banned(IP, 2.0, "rossi")


def test_failures_while_banned_are_ignored() -> None:
    """A banned source's late failures neither extend the ban nor build a new count."""
    bans = BanList(BanPolicy(max_failures=2, window=10.0, duration=100.0))
    fail(bans, [0.0, 0.0])
    assert fail(bans, [50.0] * 5) == [None] * 5
    assert bans.ban_of(IP, 50.0) == Ban(IP, "rossi", 0.0, 100.0, 2)
    assert bans.failure_count(IP, 50.0) == 0
    assert not bans.is_banned(IP, 100.0)
    assert bans.ban_of(IP, 100.0) is None


def test_manual_ban_and_lift() -> None:
    """Operators can ban and lift by hand; lifting also clears the failure count."""
    bans = BanList()
    assert bans.ban(IP, None, 10.0, 50.0) == Ban(IP, None, 10.0, 60.0, 0)
    assert bans.is_banned(IP, 59.0)
    assert bans.lift(IP) is True
    assert not bans.is_banned(IP, 20.0)
    assert bans.lift(IP) is False
    fail(bans, [30.0] * 3)
    bans.lift(IP)
    assert bans.failure_count(IP, 30.0) == 0
    assert bans.ban(IP, "rossi", 40.0).until == 640.0  # the policy's duration by default


def test_ipv6_bans_cover_the_slash_64() -> None:
    """A ban earned from one IPv6 address covers the whole /64 it came from."""
    bans = BanList()
    for i in range(10):
        bans.record_auth_failure(f"2001:db8:0:7::{i + 1:x}", "rossi", 0.0, "100")
    assert bans.is_banned("2001:db8:0:7::ffff", 1.0)
    assert not bans.is_banned("2001:db8:0:8::1", 1.0)
    assert bans.list_bans(1.0)[0].source == "2001:db8:0:7::/64"


def test_deadlines_expire_bans_and_failure_records_exactly() -> None:
    """get_timer names the next expiry; handle_timer drops exactly what has expired."""
    bans = BanList(BanPolicy(max_failures=2, window=10.0, duration=100.0))
    assert bans.get_timer() is None
    bans.record_auth_failure("192.0.2.1", "rossi", 0.0)
    assert bans.get_timer() == 10.0
    bans.record_auth_failure("192.0.2.2", "rossi", 5.0)
    bans.record_auth_failure("192.0.2.2", "rossi", 5.0)  # banned until 105
    assert bans.get_timer() == 10.0
    bans.handle_timer(9.999)
    assert bans.failure_records == 1
    bans.handle_timer(10.0)
    assert bans.failure_records == 0
    assert bans.get_timer() == 105.0
    bans.handle_timer(104.0)
    assert bans.ban_records == 1
    bans.handle_timer(105.0)
    assert bans.ban_records == 0 and bans.get_timer() is None


def test_lifted_and_replaced_bans_leave_no_stale_deadline() -> None:
    """After a lift or a replacement the timer shows the real next expiry."""
    bans = BanList()
    bans.ban("192.0.2.1", None, 0.0, 10.0)
    bans.ban("192.0.2.2", None, 0.0, 20.0)
    bans.lift("192.0.2.1")
    assert bans.get_timer() == 20.0
    bans.ban("192.0.2.2", None, 0.0, 30.0)
    assert bans.get_timer() == 30.0
    bans.handle_timer(20.0)
    assert bans.is_banned("192.0.2.2", 25.0)


def test_ban_table_is_bounded_and_evicts_the_soonest_ending() -> None:
    """With max_entries bans held, a new one replaces the ban that ends soonest."""
    bans = BanList(BanPolicy(max_entries=2))
    bans.ban("192.0.2.1", None, 0.0, 30.0)
    bans.ban("192.0.2.2", None, 0.0, 10.0)
    bans.ban("192.0.2.3", None, 0.0, 20.0)
    assert [b.source for b in bans.list_bans(0.0)] == ["192.0.2.1", "192.0.2.3"]


def test_failure_table_is_bounded_and_evicts_the_stalest() -> None:
    """With max_entries failure records, a new source evicts the one that failed longest ago."""
    bans = BanList(BanPolicy(max_entries=2))
    fail(bans, [0.0], ip="192.0.2.1")
    fail(bans, [1.0], ip="192.0.2.2")
    fail(bans, [2.0], ip="192.0.2.1")
    fail(bans, [3.0], ip="192.0.2.3")
    assert bans.failure_records == 2
    assert bans.failure_count("192.0.2.2", 3.0) == 0
    assert bans.failure_count("192.0.2.1", 3.0) == 2


def test_reconfigure_applies_the_new_allow_list_at_once() -> None:
    """A reload that allow-lists a banned source stops enforcing its ban immediately."""
    bans = BanList()
    bans.ban(IP, None, 0.0)
    bans.reconfigure(BanPolicy(), AllowList(["192.0.2.0/24"]), 1.0)
    assert not bans.is_banned(IP, 1.0)
    bans.reconfigure(BanPolicy(max_failures=2), AllowList(), 2.0)
    assert bans.is_banned(IP, 2.0)
    assert bans.policy.max_failures == 2


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["fail", "success", "timer", "lift"]),
            st.integers(0, 40),
            st.sampled_from(["a", "b", None]),
            st.floats(0.0, 30.0),
        ),
        max_size=150,
    ),
    st.integers(1, 5),
)
def test_property_tables_are_bounded(
    steps: list[tuple[str, int, str | None, float]], max_entries: int
) -> None:
    """Failure records and bans never exceed max_entries; timers never point into the past."""
    bans = BanList(BanPolicy(max_failures=3, window=20.0, duration=50.0, max_entries=max_entries))
    now = 0.0
    for op, host, user, dt in steps:
        now += dt
        ip = f"192.0.2.{host}"
        if op == "fail":
            ban = bans.record_auth_failure(ip, "rossi", now, user)
            if ban is not None:
                assert bans.is_banned(ip, now) and ban.until == now + 50.0
        elif op == "success":
            bans.record_auth_success(ip, "rossi", now, user)
        elif op == "lift":
            bans.lift(ip)
            assert not bans.is_banned(ip, now)
        else:
            timer = bans.get_timer()
            if timer is not None:
                now = max(now, timer)
                bans.handle_timer(now)
                after = bans.get_timer()
                assert after is None or after > now
        assert bans.failure_records <= max_entries
        assert bans.ban_records <= max_entries
        assert len(bans) <= 2 * max_entries
        for b in bans.list_bans(now):
            assert b.since <= now < b.until
