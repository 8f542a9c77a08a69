"""Tests for ``mcs_edge.core.shaping.token_bucket``: exact virtual-time behaviour and properties."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcs_edge.core.shaping.token_bucket import (
    ADMITTED,
    REFUSED_PARENT,
    REFUSED_SELF,
    TokenBucket,
    try_consume_all,
)

# -- exact timestamps -------------------------------------------------------------------------


def test_exact_timestamps() -> None:
    """A 100 B/s, 1000 B bucket admits and refuses at exactly the computed instants."""
    b = TokenBucket(100.0, 1000.0, 0.0)
    assert b.try_consume(600, 0.0) == (True, 0.0)
    # 400 left; 600 more needs 200 more bytes = 2 s.
    assert b.try_consume(600, 0.0) == (False, 2.0)
    assert b.try_consume(600, 1.0) == (False, 2.0)
    assert b.available(1.0) == 500.0
    assert b.try_consume(600, 2.0) == (True, 2.0)
    assert b.available(2.0) == 0.0
    # Empty: 25 bytes take exactly 250 ms.
    assert b.try_consume(25, 2.0) == (False, 2.25)
    assert b.try_consume(25, 2.125) == (False, 2.25)
    assert b.try_consume(25, 2.25) == (True, 2.25)
    assert b.try_consume(125, 3.25) == (False, 3.5)
    assert b.try_consume(100, 3.25) == (True, 3.25)


def test_starts_full_unless_told() -> None:
    """A new bucket holds ``burst``; ``tokens=`` sets the initial fill, capped at ``burst``."""
    assert TokenBucket(10.0, 50.0, 5.0).available(5.0) == 50.0
    assert TokenBucket(10.0, 50.0, 5.0, tokens=0).available(5.0) == 0.0
    assert TokenBucket(10.0, 50.0, 5.0, tokens=80).available(5.0) == 50.0


def test_burst_cannot_be_banked_twice() -> None:
    """After a long idle period the admitted volume is capped at ``burst``, not accumulated."""
    b = TokenBucket(100.0, 1000.0, 0.0)
    assert b.try_consume(1000, 0.0) == (True, 0.0)
    # Idle for an hour: 360,000 bytes "earned", but only 1000 may be banked.
    assert b.available(3600.0) == 1000.0
    assert b.try_consume(1000, 3600.0) == (True, 3600.0)
    assert b.try_consume(25, 3600.0) == (False, 3600.25)
    # Idling again refills to burst once, not twice.
    assert b.try_consume(1000, 7200.0) == (True, 7200.0)
    assert b.try_consume(25, 7200.0) == (False, 7200.25)


def test_larger_than_burst_is_never_admissible() -> None:
    """A request above ``burst`` is refused with ``retry_at = inf`` and takes nothing."""
    b = TokenBucket(100.0, 1000.0, 0.0)
    assert b.try_consume(1001, 0.0) == (False, math.inf)
    assert b.try_consume(1001, 1e9) == (False, math.inf)
    assert b.available(1e9) == 1000.0
    assert b.try_consume(1000, 1e9) == (True, 1e9)


def test_zero_rate_never_refills() -> None:
    """With ``rate == 0`` the bucket is a one-off allowance and a refusal says ``inf``."""
    b = TokenBucket(0.0, 10.0, 0.0)
    assert b.try_consume(10, 0.0) == (True, 0.0)
    assert b.try_consume(1, 1e6) == (False, math.inf)


def test_zero_size_is_always_admitted() -> None:
    """Consuming nothing is allowed even from an empty bucket."""
    b = TokenBucket(1.0, 1.0, 0.0, tokens=0)
    assert b.try_consume(0, 0.0) == (True, 0.0)


def test_stale_now_credits_nothing_and_retry_is_not_in_the_past() -> None:
    """A ``now`` older than the last update credits nothing twice and never yields a past retry_at."""
    b = TokenBucket(100.0, 1000.0, 0.0, tokens=0)
    assert b.try_consume(500, 10.0) == (True, 10.0)  # 1000 earned by t=10, 500 left
    # A caller with a slightly older clock: no credit for [5, 10] again.
    assert b.available(5.0) == 500.0
    assert b.try_consume(600, 5.0) == (False, 11.0)
    assert b.try_consume(500, 5.0) == (True, 5.0)
    assert b.available(10.0) == 0.0
    assert b.try_consume(25, 10.0) == (False, 10.25)


def test_consume_matches_try_consume() -> None:
    """``consume`` is ``try_consume`` without the retry time."""
    b = TokenBucket(100.0, 1000.0, 0.0)
    assert b.consume(600, 0.0) is True
    assert b.consume(600, 0.0) is False
    assert b.consume(600, 1.0) is False
    assert b.consume(600, 2.0) is True
    assert b.available(2.0) == 0.0


def test_peek_and_available_change_nothing() -> None:
    """``peek``, ``available`` and ``time_when`` answer questions without mutating the bucket."""
    b = TokenBucket(100.0, 1000.0, 0.0, tokens=0)
    before = repr(b)
    assert b.peek(500, 2.0) == (False, 5.0)
    assert b.peek(500, 5.0) == (True, 5.0)
    assert b.available(7.0) == 700.0
    assert b.time_when(900, 7.0) == 9.0
    assert b.time_when(100, 7.0) == 7.0
    assert b.time_when(1001, 7.0) == math.inf
    assert repr(b) == before


def test_charge_runs_into_debt() -> None:
    """``charge`` takes unconditionally; a debt delays every later admission."""
    b = TokenBucket(100.0, 1000.0, 0.0)
    assert b.charge(1500, 0.0) == -500.0
    assert b.try_consume(25, 0.0) == (False, 5.25)
    assert b.time_when(0.0, 0.0) == 5.0
    assert b.try_consume(100, 6.0) == (True, 6.0)


def test_reconfigure_keeps_the_fill_clamped() -> None:
    """A reload credits earned tokens at the old rate, then caps the fill at the new burst."""
    b = TokenBucket(100.0, 1000.0, 0.0, tokens=0)
    b.reconfigure(10.0, 400.0, 2.0)  # 200 earned at the old rate
    assert (b.rate, b.burst) == (10.0, 400.0)
    assert b.available(2.0) == 200.0
    assert b.available(12.0) == 300.0  # new rate from t=2 on
    b.reconfigure(10.0, 250.0, 12.0)
    assert b.available(12.0) == 250.0
    b.reconfigure(1000.0, 5000.0, 12.0)  # a larger burst gives no free tokens
    assert b.available(12.0) == 250.0
    assert b.available(13.0) == 1250.0


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(-1.0, 10.0), (1.0, -10.0), (math.inf, 10.0), (1.0, math.inf), (math.nan, 1.0), (1.0, math.nan)],
)
def test_invalid_configuration_is_refused(rate: float, burst: float) -> None:
    """Negative, infinite or NaN rate/burst raise ``ValueError`` at construction and reload."""
    with pytest.raises(ValueError, match="must be finite"):
        TokenBucket(rate, burst, 0.0)
    b = TokenBucket(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="must be finite"):
        b.reconfigure(rate, burst, 0.0)


# -- hierarchy ----------------------------------------------------------------------------------


def test_try_consume_all_is_atomic() -> None:
    """A refusal by one level leaves every level uncharged; the retry time is the latest one."""
    leg = TokenBucket(100.0, 1000.0, 0.0)
    tenant = TokenBucket(10.0, 500.0, 0.0)
    assert try_consume_all((leg, tenant), 400, 0.0) == (True, 0.0)
    assert (leg.available(0.0), tenant.available(0.0)) == (600.0, 100.0)
    # The tenant lacks 200 (20 s at 10 B/s); the leg has enough and must not be charged.
    assert try_consume_all((leg, tenant), 300, 0.0) == (False, 20.0)
    assert (leg.available(0.0), tenant.available(0.0)) == (600.0, 100.0)
    # Both lack: the later of the two retry times (leg: 3 s, tenant: 30 s).
    leg.charge(500, 0.0)
    assert try_consume_all((leg, tenant), 400, 0.0) == (False, 30.0)
    assert try_consume_all((tenant, leg), 400, 0.0) == (False, 30.0)
    assert try_consume_all((leg, tenant), 700, 0.0) == (False, math.inf)  # above the tenant's burst
    assert (leg.available(0.0), tenant.available(0.0)) == (100.0, 100.0)
    assert try_consume_all((leg, tenant), 400, 30.0) == (True, 30.0)
    assert try_consume_all([], 10, 1.0) == (True, 1.0)


def test_consume_within_charges_both_or_neither() -> None:
    """``consume_within`` names which level refused and charges nobody on a refusal."""
    leg = TokenBucket(100.0, 1000.0, 0.0)
    tenant = TokenBucket(10.0, 500.0, 0.0)
    assert leg.consume_within(tenant, 400, 0.0) == ADMITTED
    assert leg.consume_within(tenant, 300, 0.0) == REFUSED_PARENT
    assert (leg.available(0.0), tenant.available(0.0)) == (600.0, 100.0)
    assert leg.consume_within(tenant, 700, 0.0) == REFUSED_SELF
    assert (leg.available(0.0), tenant.available(0.0)) == (600.0, 100.0)
    assert leg.consume_within(tenant, 200, 10.0) == ADMITTED
    assert (leg.available(10.0), tenant.available(10.0)) == (800.0, 0.0)


# -- properties ---------------------------------------------------------------------------------

rates = st.one_of(st.just(0.0), st.floats(min_value=0.001, max_value=1e7))
bursts = st.floats(min_value=0.0, max_value=1e7)
steps = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=50.0)),  # time step
        st.integers(min_value=0, max_value=2_000_000),  # request size
    ),
    max_size=60,
)


def _run(rate: float, burst: float, ops: list[tuple[float, int]]) -> tuple[TokenBucket, float]:
    b = TokenBucket(rate, burst, 0.0)
    now = 0.0
    for dt, n in ops:
        now += dt
        b.try_consume(n, now)
    return b, now


@given(rates, bursts, steps)
def test_property_admitted_volume_is_bounded(rate: float, burst: float, ops: list[tuple[float, int]]) -> None:
    """Over any interval [t0, t1] at most burst + rate*(t1 - t0) is admitted."""
    b = TokenBucket(rate, burst, 0.0)
    now = 0.0
    admitted: list[tuple[float, int]] = []
    for dt, n in ops:
        now += dt
        if b.try_consume(n, now)[0]:
            admitted.append((now, n))
    for i in range(len(admitted)):
        total = 0
        for j in range(i, len(admitted)):
            total += admitted[j][1]
            span = admitted[j][0] - admitted[i][0]
            bound = burst + rate * span
            assert total <= bound * (1 + 1e-9) + 1e-6


@given(rates, bursts, steps)
def test_property_retry_at_is_now_or_later_and_admits(
    rate: float, burst: float, ops: list[tuple[float, int]]
) -> None:
    """retry_at == now when admitted, > now when refused, and retrying at retry_at succeeds."""
    b = TokenBucket(rate, burst, 0.0)
    now = 0.0
    for dt, n in ops:
        now += dt
        peeked, peek_retry_at = b.peek(n, now)
        before = copy.copy(b)
        allowed, retry_at = b.try_consume(n, now)
        assert peeked == allowed
        if allowed:
            assert retry_at == peek_retry_at == now
            continue
        assert retry_at > now and peek_retry_at > now
        if retry_at == math.inf:
            assert n > burst or rate == 0.0
            assert peek_retry_at == math.inf
        else:
            assert copy.copy(b).try_consume(n, retry_at) == (True, retry_at)
            assert before.try_consume(n, peek_retry_at) == (True, peek_retry_at)


@given(
    st.floats(min_value=1.0, max_value=1e6),
    st.floats(min_value=1.0, max_value=1e6),
    steps,
    st.integers(min_value=1, max_value=1_000_000),
)
def test_property_retry_at_is_the_earliest(
    rate: float, burst: float, ops: list[tuple[float, int]], n: int
) -> None:
    """Noticeably before retry_at the request is still refused."""
    b, now = _run(rate, burst, ops)
    allowed, retry_at = b.peek(n, now)
    if allowed or retry_at == math.inf:
        return
    earlier = retry_at - 1e-6 * (1.0 + retry_at)
    if earlier > now:
        assert b.peek(n, earlier)[0] is False


@given(rates, bursts, steps, st.integers(min_value=0, max_value=2_000_000), st.integers(min_value=1))
def test_property_larger_sizes_are_refused_too(
    rate: float, burst: float, ops: list[tuple[float, int]], n: int, extra: int
) -> None:
    """If size n is refused at t, every larger size is refused at t."""
    b, now = _run(rate, burst, ops)
    if not b.peek(n, now)[0]:
        assert b.peek(n + extra, now)[0] is False
        assert copy.copy(b).try_consume(n + extra, now)[0] is False


@given(rates, bursts, steps, st.integers(min_value=0, max_value=2_000_000), st.floats(0.0, 1e4))
def test_property_monotone_in_time(
    rate: float, burst: float, ops: list[tuple[float, int]], n: int, later: float
) -> None:
    """A size admissible at t stays admissible at any later time (absent other consumption)."""
    b, now = _run(rate, burst, ops)
    if b.peek(n, now)[0]:
        assert b.peek(n, now + later)[0] is True
    assert b.available(now + later) >= b.available(now)


@settings(max_examples=50)
@given(rates, bursts, steps)
def test_property_consume_agrees_with_try_consume(
    rate: float, burst: float, ops: list[tuple[float, int]]
) -> None:
    """``consume`` and ``try_consume`` make the same decisions on the same inputs."""
    a = TokenBucket(rate, burst, 0.0)
    b = TokenBucket(rate, burst, 0.0)
    now = 0.0
    for dt, n in ops:
        now += dt
        assert a.consume(n, now) == b.try_consume(n, now)[0]
        assert a.available(now) == b.available(now)


@given(rates, bursts, rates, bursts, steps)
def test_property_hierarchy_never_charges_on_refusal(
    r1: float, b1: float, r2: float, b2: float, ops: list[tuple[float, int]]
) -> None:
    """In a two-level hierarchy the leg is charged exactly when the tenant is."""
    leg, tenant = TokenBucket(r1, b1, 0.0), TokenBucket(r2, b2, 0.0)
    solo = TokenBucket(r1, b1, 0.0)  # mirrors the leg, charged only on admission
    now = 0.0
    for dt, n in ops:
        now += dt
        verdict = leg.consume_within(tenant, n, now)
        if verdict == ADMITTED:
            solo.charge(n, now)
        # Equal up to rounding: refilling in several steps rounds differently than in one.
        assert leg.available(now) == pytest.approx(solo.available(now), rel=1e-12, abs=1e-6)
        assert tenant.available(now) >= 0.0
