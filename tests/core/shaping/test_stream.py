"""Tests for ``InboundPacer`` and ``OutboundQueue``: both directions of a shaped stream, in virtual time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcs_edge.core.shaping import TokenBucket
from mcs_edge.core.shaping.stream import OVERFLOW, QUEUED, SEND_NOW, InboundPacer, OutboundQueue

# -- InboundPacer -------------------------------------------------------------------------------


def test_chunks_within_the_burst_are_delivered_at_once() -> None:
    """A connection under its rate reads freely: every chunk is delivered, nothing is paused."""
    p = InboundPacer(TokenBucket(1000.0, 3000.0, 0.0))
    assert p.feed(b"a" * 1000, 0.0) is True
    assert p.feed(b"b" * 1000, 0.5) is True
    assert p.paused is False and p.charged_into_debt is False
    assert p.get_timer() is None


def test_debt_pauses_holds_in_order_and_releases_at_the_rate() -> None:
    """Past the bucket the reader pauses; later chunks are held and released in order as debt is paid."""
    p = InboundPacer(TokenBucket(1000.0, 1000.0, 0.0))
    assert p.feed(b"1" * 1500, 0.0) is True  # charged in full: 500 bytes of debt
    assert p.paused is True and p.charged_into_debt is True  # the reader pauses at once
    assert p.get_timer() == pytest.approx(0.5)
    assert p.feed(b"2" * 400, 0.1) is False  # held (what TLS had already decrypted)
    assert p.feed(b"3" * 400, 0.1) is False
    assert p.held_bytes == 800
    assert p.handle_timer(0.3) == []  # early timer: still in debt, new deadline
    assert p.get_timer() == pytest.approx(0.5)
    assert p.handle_timer(0.5) == [b"2" * 400]  # out of debt: one chunk goes, -400 again
    assert p.paused is True
    assert p.get_timer() == pytest.approx(0.9)
    assert p.handle_timer(0.9) == [b"3" * 400]
    assert p.held_bytes == 0 and p.paused is True  # nothing held, still in debt: keep not reading
    assert p.handle_timer(1.3) == []
    assert p.paused is False
    assert p.get_timer() is None


def test_release_stops_when_the_bucket_is_in_debt_again() -> None:
    """Held chunks are released one by one while the bucket is out of debt."""
    p = InboundPacer(TokenBucket(100.0, 100.0, 0.0))
    assert p.feed(b"x" * 150, 0.0) is True
    for _ in range(3):
        assert p.feed(b"y" * 100, 0.0) is False
    assert p.get_timer() == pytest.approx(0.5)
    assert p.handle_timer(0.5) == [b"y" * 100]  # -100 after it
    assert p.get_timer() == pytest.approx(1.5)
    assert p.handle_timer(1.5) == [b"y" * 100]
    assert p.handle_timer(2.5) == [b"y" * 100]
    assert p.held_bytes == 0


def test_tenant_debt_pauses_another_connection_of_the_tenant() -> None:
    """The tenant aggregate is shared: one connection's traffic can pause another of the same tenant."""
    tenant = TokenBucket(1000.0, 1000.0, 0.0)
    a = InboundPacer(TokenBucket(10_000.0, 10_000.0, 0.0), tenant)
    b = InboundPacer(TokenBucket(10_000.0, 10_000.0, 0.0), tenant)
    assert a.feed(b"a" * 900, 0.0) is True
    assert b.feed(b"b" * 600, 0.0) is True  # tenant now at -500: b pauses
    assert (a.paused, b.paused) == (False, True)
    assert (a.charged_into_debt, b.charged_into_debt) == (False, True)
    assert a.feed(b"a" * 100, 0.0) is True  # a charges the tenant further and finds it in debt
    assert a.paused is True
    assert b.get_timer() == pytest.approx(0.5)  # b saw -500
    assert b.feed(b"b2", 0.1) is False
    assert b.handle_timer(0.5) == []  # a pushed the debt to -600: not yet
    assert b.get_timer() == pytest.approx(0.6)
    assert b.handle_timer(0.6) == [b"b2"]


def test_held_bytes_are_bounded() -> None:
    """A connection holding more than max_held bytes is flagged for closing; the excess is not kept."""
    p = InboundPacer(TokenBucket(100.0, 100.0, 0.0), max_held=250)
    p.feed(b"x" * 200, 0.0)
    assert p.feed(b"y" * 200, 0.0) is False
    assert p.overflowed is False
    assert p.feed(b"z" * 51, 0.0) is False
    assert p.overflowed is True
    assert p.held_bytes == 200
    assert p.drain() == [b"y" * 200]
    assert p.held_bytes == 0
    with pytest.raises(ValueError):
        InboundPacer(TokenBucket(1.0, 1.0, 0.0), max_held=0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.0, 0.5), st.integers(1, 3000)), min_size=1, max_size=60),
    st.floats(100.0, 5000.0),
    st.floats(1500.0, 6000.0),
)
def test_property_paced_reader_never_exceeds_the_bound_and_loses_nothing(
    arrivals: list[tuple[float, int]], rate: float, burst: float
) -> None:
    """Delivered bytes over any prefix stay within burst + rate * t + one chunk; all chunks arrive in order."""
    p = InboundPacer(TokenBucket(rate, burst, 0.0))
    t = 0.0
    delivered: list[tuple[float, bytes]] = []
    sent: list[bytes] = []
    biggest = 0

    def run_timers(until: float) -> None:
        while (deadline := p.get_timer()) is not None and deadline <= until:
            for chunk in p.handle_timer(deadline):
                delivered.append((deadline, chunk))

    for i, (gap, size) in enumerate(arrivals):
        t += gap
        run_timers(t)
        chunk = i.to_bytes(2, "big") * (size // 2 + 1)
        sent.append(chunk)
        biggest = max(biggest, len(chunk))
        if p.feed(chunk, t):
            delivered.append((t, chunk))
    run_timers(float("inf"))
    assert [c for _, c in delivered] == sent
    total = 0
    for when, chunk in delivered:
        total += len(chunk)
        assert total <= burst + rate * when + biggest + 1e-6


# -- OutboundQueue ------------------------------------------------------------------------------


def test_outbound_sends_at_once_within_the_bucket() -> None:
    """Messages under the rate are written at once and charged."""
    q = OutboundQueue(TokenBucket(1000.0, 2000.0, 0.0), 10_000)
    assert q.offer(b"a" * 1500, 0.0) == SEND_NOW
    assert q.offer(b"b" * 1500, 0.0) == SEND_NOW  # fill 500 >= 0: goes, debt 1000
    assert q.offer(b"c" * 100, 0.0) == QUEUED
    assert q.get_timer() == pytest.approx(1.0)
    assert q.handle_timer(0.5) == []
    assert q.handle_timer(1.0) == [b"c" * 100]
    assert len(q) == 0 and q.get_timer() is None


def test_outbound_keeps_order_behind_a_queue() -> None:
    """Once something waits, later messages queue behind it even if tokens are back."""
    q = OutboundQueue(TokenBucket(100.0, 100.0, 0.0), 10_000)
    assert q.offer(b"1" * 200, 0.0) == SEND_NOW
    assert q.offer(b"2", 0.0) == QUEUED
    assert q.offer(b"3", 5.0) == QUEUED  # tokens are back, but "2" is first
    assert q.handle_timer(5.0) == [b"2", b"3"]


def test_outbound_message_larger_than_burst_still_goes() -> None:
    """A message bigger than the burst is sent when the bucket is not in debt (the long-run rate holds)."""
    q = OutboundQueue(TokenBucket(1000.0, 1500.0, 0.0), 100_000)
    assert q.offer(b"x" * 60_000, 0.0) == SEND_NOW
    assert q.offer(b"y", 0.0) == QUEUED
    assert q.get_timer() == pytest.approx(58.5)


def test_outbound_queue_overflow_is_reported_and_not_kept() -> None:
    """A message that does not fit in max_bytes is refused with OVERFLOW."""
    q = OutboundQueue(TokenBucket(100.0, 100.0, 0.0), 300)
    q.offer(b"x" * 200, 0.0)
    assert q.offer(b"a" * 200, 0.0) == QUEUED
    assert q.offer(b"b" * 100, 0.0) == QUEUED
    assert q.offer(b"c", 0.0) == OVERFLOW
    assert (len(q), q.queued_bytes) == (2, 300)


def test_outbound_waits_for_the_transport() -> None:
    """While the transport's buffer is full nothing is written and no timer runs; resuming flushes."""
    q = OutboundQueue(TokenBucket(1000.0, 1000.0, 0.0), 10_000)
    assert q.set_writable(False, 0.0) == []
    assert q.offer(b"a", 0.0) == QUEUED
    assert q.get_timer() is None
    assert q.handle_timer(1.0) == []
    assert q.set_writable(True, 1.0) == [b"a"]
    assert q.drain() == []
    q.set_writable(False, 1.0)
    q.offer(b"b", 1.0)
    assert q.drain() == [b"b"] and q.queued_bytes == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 0.3), st.integers(1, 2000)), min_size=1, max_size=60))
def test_property_outbound_rate_bound_and_order(offers: list[tuple[float, int]]) -> None:
    """Written bytes stay within burst + rate * t + one message; what is not refused is written in order."""
    rate, burst = 1000.0, 1500.0
    q = OutboundQueue(TokenBucket(rate, burst, 0.0), 8000)
    t = 0.0
    written: list[tuple[float, bytes]] = []
    kept: list[bytes] = []
    for i, (gap, size) in enumerate(offers):
        t += gap
        while (deadline := q.get_timer()) is not None and deadline <= t:
            written += [(deadline, m) for m in q.handle_timer(deadline)]
        msg = i.to_bytes(2, "big") * (size // 2 + 1)
        verdict = q.offer(msg, t)
        if verdict != OVERFLOW:
            kept.append(msg)
        if verdict == SEND_NOW:
            written.append((t, msg))
    while (deadline := q.get_timer()) is not None:
        written += [(deadline, m) for m in q.handle_timer(deadline)]
    assert [m for _, m in written] == kept
    total = 0
    for when, msg in written:
        total += len(msg)
        assert total <= burst + rate * when + 4002
