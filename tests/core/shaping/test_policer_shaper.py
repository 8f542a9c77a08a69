"""Tests for ``Policer`` (packet drops, leg-in-tenant hierarchy) and ``Shaper`` (stream pause/resume)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcs_edge.core.shaping import Policer, Shaper, TokenBucket

# -- Policer ------------------------------------------------------------------------------------


def test_policer_drops_and_counts() -> None:
    """Packets beyond the bucket are dropped and counted in packets and bytes."""
    p = Policer(TokenBucket(1000.0, 500.0, 0.0))
    assert p.admit(200, 0.0) is True
    assert p.admit(200, 0.0) is True
    assert p.admit(200, 0.0) is False
    assert (p.dropped_packets, p.dropped_bytes, p.parent_dropped_packets) == (1, 200, 0)
    assert p.admit(200, 0.125) is True  # 100 left + 125 earned
    assert p.admit(1000, 10.0) is False  # above burst: never admissible
    assert (p.dropped_packets, p.dropped_bytes) == (2, 1200)


def test_policer_tenant_refusal_does_not_charge_the_leg() -> None:
    """A packet the tenant refuses costs the leg nothing; one the leg refuses costs the tenant nothing."""
    tenant = TokenBucket(100.0, 300.0, 0.0)
    leg_a = Policer(TokenBucket(1000.0, 1000.0, 0.0), tenant)
    leg_b = Policer(TokenBucket(1000.0, 100.0, 0.0), tenant)
    assert leg_a.admit(250, 0.0) is True
    assert leg_a.admit(100, 0.0) is False  # tenant has 50
    assert (leg_a.dropped_packets, leg_a.parent_dropped_packets) == (1, 1)
    assert leg_a.bucket.available(0.0) == 750.0
    assert leg_b.admit(150, 1.0) is False  # leg b's burst is 100; tenant untouched
    assert (leg_b.dropped_packets, leg_b.parent_dropped_packets) == (1, 0)
    assert tenant.available(1.0) == 150.0
    assert leg_b.admit(100, 1.0) is True
    assert tenant.available(1.0) == 50.0


@given(
    st.lists(
        st.tuples(st.booleans(), st.floats(0.0, 1.0), st.integers(0, 400)),
        max_size=80,
    )
)
def test_property_policed_legs_respect_the_tenant_bound(ops: list[tuple[bool, float, int]]) -> None:
    """Across all its legs a tenant never forwards more than burst + rate * elapsed."""
    tenant = TokenBucket(500.0, 1000.0, 0.0)
    legs = (Policer(TokenBucket(400.0, 800.0, 0.0), tenant), Policer(TokenBucket(400.0, 800.0, 0.0), tenant))
    now = 0.0
    forwarded = 0
    for which, dt, size in ops:
        now += dt
        if legs[which].admit(size, now):
            forwarded += size
    assert forwarded <= 1000.0 + 500.0 * now + 1e-6


# -- Shaper -------------------------------------------------------------------------------------


def test_shaper_pauses_until_the_debt_is_paid() -> None:
    """Reading past the bucket pauses the reader exactly until the debt is repaid."""
    s = Shaper(TokenBucket(1000.0, 4000.0, 0.0))
    assert s.data_received(4000, 0.0) is None  # exactly empty: keep reading
    assert s.paused is False and s.get_timer() is None
    assert s.data_received(500, 0.0) == 0.5  # 500 in debt at 1000 B/s
    assert s.paused is True and s.resume_at == 0.5
    assert s.handle_timer(0.5) is True
    assert s.paused is False and s.get_timer() is None
    assert s.handle_timer(0.75) is False  # not paused: nothing to do


def test_shaper_charges_chunks_larger_than_burst() -> None:
    """A chunk bigger than the burst is charged in full, so the long-run rate holds."""
    s = Shaper(TokenBucket(1024.0, 1024.0, 0.0))
    assert s.data_received(65536, 0.0) == 63.0  # 64512 bytes of debt at 1 KiB/s
    assert s.handle_timer(63.0) is True


def test_shaper_data_while_paused_extends_the_pause() -> None:
    """Data the transport delivers after pausing is charged and moves resume_at out."""
    s = Shaper(TokenBucket(1000.0, 1000.0, 0.0))
    assert s.data_received(1500, 0.0) == 0.5
    assert s.data_received(250, 0.25) == 0.75  # 250 of 500 repaid, then 250 more owed: 500
    assert s.data_received(0, 0.375) == 0.75  # still paused: keeps reporting resume_at
    assert s.handle_timer(0.5) is False
    assert s.handle_timer(0.75) is True


def test_shaper_early_timer_gives_a_new_deadline() -> None:
    """A timer that fires early leaves the reader paused with a fresh deadline."""
    s = Shaper(TokenBucket(1000.0, 1000.0, 0.0))
    assert s.data_received(2000, 0.0) == 1.0
    assert s.handle_timer(0.75) is False
    assert s.get_timer() == 1.0
    assert s.handle_timer(1.0) is True


def test_shaper_resume_level_adds_hysteresis() -> None:
    """With ``resume_level`` the reader resumes only once that many bytes are banked."""
    s = Shaper(TokenBucket(1000.0, 2000.0, 0.0), resume_level=500.0)
    assert s.data_received(2500, 0.0) == 1.0  # 500 debt + 500 level
    assert s.handle_timer(0.5) is False
    assert s.handle_timer(1.0) is True
    with pytest.raises(ValueError, match="resume_level"):
        Shaper(TokenBucket(1000.0, 2000.0, 0.0), resume_level=2500.0)


@given(st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 100_000)), max_size=60))
def test_property_shaped_reader_respects_the_rate(ops: list[tuple[float, int]]) -> None:
    """A reader that obeys the shaper reads at most burst + rate * elapsed + one chunk."""
    s = Shaper(TokenBucket(10_000.0, 20_000.0, 0.0))
    now = 0.0
    total = 0
    largest = 0
    for dt, size in ops:
        now += dt
        timer = s.get_timer()
        if timer is not None:
            now = max(now, timer)  # the reader waits for the timer before reading again
            assert s.handle_timer(now) is True
        total += size
        largest = max(largest, size)
        resume_at = s.data_received(size, now)
        assert resume_at is None or resume_at > now
    assert total <= 20_000.0 + 10_000.0 * now + largest + 1e-6


@given(
    st.booleans(),
    st.lists(st.tuples(st.floats(0.0, 0.05), st.integers(0, 1500)), max_size=120),
)
def test_policer_check_then_refused_is_admit(with_parent: bool, packets: list[tuple[float, int]]) -> None:
    """The relay's per-packet form (``check``, then ``refused`` on a refusal) decides and counts exactly
    as ``admit``, with and without a tenant bucket, packet by packet."""

    def policer() -> Policer:
        return Policer(
            TokenBucket(8000.0, 3000.0, 0.0), TokenBucket(6000.0, 2500.0, 0.0) if with_parent else None
        )

    slow, fast = policer(), policer()
    now = 0.0
    for step, size in packets:
        now += step
        admitted = fast.check(size, now)
        if not admitted:
            fast.refused(size)
        assert admitted is slow.admit(size, now)
    assert (fast.dropped_packets, fast.dropped_bytes, fast.parent_dropped_packets) == (
        slow.dropped_packets,
        slow.dropped_bytes,
        slow.parent_dropped_packets,
    )
    assert fast.bucket.available(now) == slow.bucket.available(now)
    if with_parent:
        assert fast.parent is not None and slow.parent is not None
        assert fast.parent.available(now) == slow.parent.available(now)
