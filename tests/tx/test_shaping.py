"""Shaping wiring (tx/protect/shaping.py) in virtual time: tenant buckets, leg policers, stream shapers."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from mcs_edge import config as c
from mcs_edge.tx.protect.shaping import Shaping, StreamShaper, TenantBuckets, aggregate_of
from mcs_edge.tx.timers import Timers

BASE = """
[listen]
https = "127.0.0.1:8443"
backend_sip = "127.0.0.1:5070"
[shaping]
rate = {rate}
burst = {burst}
{shaping}
[[tenants]]
id = "rossi"
domains = ["rossi.example.com"]
backend_sip = "udp:10.1.0.10:5060"
{rossi}
[[tenants]]
id = "bianchi"
domains = ["bianchi.example.com"]
backend_sip = "udp:10.2.0.10:5060"
"""


def _config(rate: int = 1000, burst: int = 2000, shaping: str = "", rossi: str = "") -> c.EdgeConfig:
    return c.loads(BASE.format(rate=rate, burst=burst, shaping=shaping, rossi=rossi))


class FakeTransport:
    """Records what a stream shaper does to its transport."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.producer: Any = None

    def pauseProducing(self) -> None:
        assert not self.paused
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        assert self.paused
        self.paused = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming and self.producer is None
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


class Conn:
    """A protocol's side of one shaped connection."""

    def __init__(self, shaping: Shaping, tenant: str = "rossi") -> None:
        self.transport = FakeTransport()
        self.delivered: list[bytes] = []
        self.written: list[bytes] = []
        self.aborted = 0
        cfg = shaping.config.tenant(tenant)
        assert cfg is not None
        self.shaper: StreamShaper = shaping.stream(
            cfg, self.transport, self.delivered.append, self.written.append, self._abort, "wss", "192.0.2.7"
        )

    def _abort(self) -> None:
        self.aborted += 1


def _shaping(cfg: c.EdgeConfig) -> tuple[Clock, Shaping]:
    clock = Clock()
    clock.advance(100)
    return clock, Shaping(cfg, Timers(clock, now=clock.seconds))


# -- tenant buckets and leg policers -------------------------------------------------------------------


def test_aggregate_is_off_by_default_and_tenant_overrides_apply() -> None:
    """No aggregate unless configured; [tenants.shaping] overrides [shaping]; burst 0 = 2 s of rate."""
    assert aggregate_of(_config(), _config().tenants[0]) is None
    cfg = _config(
        shaping="aggregate_rate = 5000",
        rossi="[tenants.shaping]\naggregate_rate = 8000\naggregate_burst = 9000",
    )
    assert aggregate_of(cfg, cfg.tenants[0]) == (8000.0, 9000.0)
    assert aggregate_of(cfg, cfg.tenants[1]) == (5000.0, 10000.0)
    off = _config(shaping="aggregate_rate = 5000", rossi="[tenants.shaping]\naggregate_rate = 0")
    assert aggregate_of(off, off.tenants[0]) is None
    buckets = TenantBuckets(cfg, lambda: 0.0)
    assert buckets.for_tenant("rossi") is buckets.for_tenant("rossi")
    assert buckets.for_tenant("nobody") is None
    assert len(buckets) == 1


def test_leg_policer_honours_shaping_and_tenant_overrides() -> None:
    """A leg's bucket has the tenant's rate/burst; its parent is the tenant's media aggregate, not signalling's."""
    cfg = _config(
        rate=60000,
        burst=120000,
        shaping="aggregate_rate = 100000",
        rossi="[tenants.shaping]\nrate = 16000\nburst = 32000",
    )
    _clock, shaping = _shaping(cfg)
    leg = shaping.leg_policer(cfg.tenants[0])
    assert (leg.bucket.rate, leg.bucket.burst) == (16000.0, 32000.0)
    assert leg.parent is shaping.media.for_tenant("rossi")
    assert leg.parent is not None and leg.parent.rate == 100000.0
    assert leg.parent is not shaping.signalling.for_tenant("rossi")
    other = shaping.leg_policer("bianchi")
    assert (other.bucket.rate, other.bucket.burst) == (60000.0, 120000.0)
    assert other.parent is shaping.media.for_tenant("bianchi") and other.parent is not leg.parent
    unknown = shaping.leg_policer("gone")
    assert unknown.parent is None and unknown.bucket.rate == 60000.0


def test_legs_of_one_tenant_share_the_aggregate_in_virtual_time() -> None:
    """Two legs at full rate inside a tenant aggregate of 1.5 legs: together they never exceed it."""
    cfg = _config(rate=10000, burst=10000, shaping="aggregate_rate = 15000\naggregate_burst = 15000")
    _clock, shaping = _shaping(cfg)
    a, b = shaping.leg_policer("rossi"), shaping.leg_policer("rossi")
    passed = 0
    for i in range(1000):  # 10 s, each leg offers 20000 B/s
        now = 100 + i * 0.01
        passed += 200 * (a.admit(200, now) + b.admit(200, now))
    assert passed <= 15000 + 15000 * 10 + 400
    assert passed >= 15000 * 10 * 0.98
    assert a.parent_dropped_packets + b.parent_dropped_packets > 0


def test_reload_reconfigures_tenant_buckets_and_forgets_disabled_ones() -> None:
    """update(): the same bucket at the new rate; tenants whose aggregate is off (or gone) are forgotten."""
    cfg = _config(shaping="aggregate_rate = 5000")
    _clock, shaping = _shaping(cfg)
    bucket = shaping.media.for_tenant("rossi")
    assert shaping.media.for_tenant("bianchi") is not None
    shaping.update(_config(shaping="aggregate_rate = 7000", rossi="[tenants.shaping]\naggregate_rate = 7000"))
    assert shaping.media.for_tenant("rossi") is bucket and bucket is not None and bucket.rate == 7000.0
    shaping.update(_config(rossi="[tenants.shaping]\naggregate_rate = 7000"))
    assert shaping.media.for_tenant("bianchi") is None
    assert len(shaping.media) == 1


# -- stream shaper -------------------------------------------------------------------------------------


def test_connection_over_its_rate_is_paused_not_dropped() -> None:
    """Reading pauses when the bucket is in debt; held chunks arrive in order at the rate; reading resumes."""
    clock, shaping = _shaping(_config(rate=1000, burst=2000))
    conn = Conn(shaping)
    chunks = [bytes([i]) * 500 for i in range(10)]  # 5000 bytes at once: 2.5 x the burst
    for chunk in chunks:
        conn.shaper.data_received(chunk)
    assert conn.delivered == chunks[:5]  # 2500 charged: 500 of debt
    assert conn.transport.paused and conn.transport.pauses == 1
    clock.advance(0.5)
    assert conn.delivered == chunks[:6]
    clock.advance(1.0)  # 500 bytes of debt paid per 0.5 s: two more chunks
    assert conn.delivered == chunks[:8]
    clock.advance(10.0)
    assert conn.delivered == chunks
    assert not conn.transport.paused
    assert shaping.counters[("reads_paused", "rossi", "wss")] == 1
    assert conn.aborted == 0


def test_tenant_aggregate_pauses_its_other_connections() -> None:
    """One busy connection of a tenant with an aggregate pauses the tenant's others, not other tenants."""
    clock, shaping = _shaping(
        _config(rate=10000, burst=10000, shaping="aggregate_rate = 2000\naggregate_burst = 2000")
    )
    busy, quiet, elsewhere = Conn(shaping), Conn(shaping), Conn(shaping, "bianchi")
    busy.shaper.data_received(b"x" * 3000)
    quiet.shaper.data_received(b"y" * 10)
    assert quiet.transport.paused
    elsewhere.shaper.data_received(b"z" * 3000)
    elsewhere.shaper.data_received(b"z" * 10)
    assert elsewhere.transport.paused and elsewhere.delivered == [b"z" * 3000]  # its own aggregate
    quiet.shaper.data_received(b"w")
    assert quiet.delivered == [b"y" * 10]
    clock.advance(1.0)
    assert quiet.delivered == [b"y" * 10, b"w"]


def test_outbound_is_paced_and_overflow_closes_with_a_logged_reason() -> None:
    """Messages beyond the rate wait; past shaping.send_queue bytes the connection is aborted and SHP401 logged."""
    clock, shaping = _shaping(_config(rate=1000, burst=1500, shaping="send_queue = 4096"))
    conn = Conn(shaping)
    conn.shaper.send(b"a" * 1500)
    conn.shaper.send(b"b" * 1000)  # the bucket is empty, not in debt: goes (debt 1000)
    conn.shaper.send(b"c" * 10)
    assert conn.written == [b"a" * 1500, b"b" * 1000]
    clock.advance(1.0)
    assert conn.written == [b"a" * 1500, b"b" * 1000, b"c" * 10]
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(6):
            conn.shaper.send(b"c" * 1000)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert conn.aborted == 1
    assert conn.shaper.stopped and conn.transport.producer is None
    assert shaping.counters[("stream_closed", "rossi", "overflow")] == 1
    assert any(str(e.get("log_format", "")).startswith("SHP401") for e in events)
    assert clock.getDelayedCalls() == []


def test_full_transport_buffer_holds_writes_until_resumed() -> None:
    """As the transport's producer the shaper queues while the write buffer is full, then flushes in order."""
    clock, shaping = _shaping(_config(rate=100000, burst=100000))
    conn = Conn(shaping)
    assert conn.transport.producer is conn.shaper
    conn.shaper.pauseProducing()
    conn.shaper.send(b"1")
    conn.shaper.send(b"2")
    assert conn.written == []
    clock.advance(10)
    assert conn.written == []
    conn.shaper.resumeProducing()
    assert conn.written == [b"1", b"2"]


def test_too_much_data_while_paused_aborts() -> None:
    """A transport that keeps delivering while paused (more than MAX_HELD) gets the connection aborted."""
    _clock, shaping = _shaping(_config(rate=1000, burst=2000))
    conn = Conn(shaping)
    conn.shaper.data_received(b"x" * 3000)
    for _ in range(17):
        conn.shaper.data_received(b"y" * 65536)
    assert conn.aborted == 1 and conn.shaper.stopped


def test_shutdown_hands_everything_over_and_unregisters() -> None:
    """Shaping.stop(): held chunks delivered, queued messages written, reading resumed, timers gone."""
    clock, shaping = _shaping(_config(rate=1000, burst=1500))
    conn = Conn(shaping)
    conn.shaper.data_received(b"a" * 2000)
    conn.shaper.data_received(b"b")
    conn.shaper.send(b"c" * 2000)
    conn.shaper.send(b"d")
    assert conn.transport.paused
    shaping.stop()
    assert conn.delivered == [b"a" * 2000, b"b"]
    assert conn.written == [b"c" * 2000, b"d"]
    assert not conn.transport.paused and conn.transport.producer is None
    assert clock.getDelayedCalls() == []
    conn.shaper.data_received(b"e")  # stopped: straight through
    conn.shaper.send(b"f")
    assert conn.delivered[-1] == b"e" and conn.written[-1] == b"f"
    late = Conn(shaping)
    assert late.shaper.stopped and late.transport.producer is None


def test_connection_loss_releases_timers() -> None:
    """stopProducing (the transport went away) cancels the shaper's timers and forgets held data."""
    clock, shaping = _shaping(_config(rate=1000, burst=1500))
    conn = Conn(shaping)
    conn.shaper.data_received(b"a" * 3000)
    conn.shaper.data_received(b"b")
    conn.shaper.send(b"c" * 3000)
    conn.shaper.send(b"d")
    assert len(clock.getDelayedCalls()) == 2
    conn.shaper.stopProducing()
    assert clock.getDelayedCalls() == []
    assert conn.shaper.inbound.held_bytes == 0 and conn.shaper.outbound.queued_bytes == 0
    assert not shaping.streams


@pytest.mark.parametrize("rate", [16000, 60000, 1_000_000])
def test_paced_stream_rate_in_virtual_time(rate: int) -> None:
    """A stream pushed at 10x its rate is delivered at the configured rate (within 1% over 10 s, after the burst)."""
    clock, shaping = _shaping(_config(rate=rate, burst=rate * 2))
    conn = Conn(shaping)
    chunk = b"x" * 1000
    step = 1000 / (rate * 10)  # the client offers 10 x the rate
    t0 = clock.seconds()
    while clock.seconds() - t0 < 12.0:
        if not conn.transport.paused:
            conn.shaper.data_received(chunk)
        clock.advance(step)
        if clock.seconds() - t0 >= 2.0 and not hasattr(conn, "mark"):
            conn.mark = sum(map(len, conn.delivered))  # type: ignore[attr-defined]
    delivered = sum(map(len, conn.delivered)) - conn.mark  # type: ignore[attr-defined]
    assert delivered / 10.0 == pytest.approx(rate, rel=0.01)


def test_leg_at_three_times_its_rate_loses_two_thirds_while_a_well_behaved_leg_loses_nothing() -> None:
    """Two legs of one tenant (with an aggregate): the 3x sender has ~2/3 dropped, the other keeps < 0.1% loss."""
    cfg = _config(rate=10000, burst=20000, shaping="aggregate_rate = 25000\naggregate_burst = 50000")
    _clock, shaping = _shaping(cfg)
    bad, good = shaping.leg_policer("rossi"), shaping.leg_policer("rossi")
    sent = {"bad": 0, "good": 0}
    for tick in range(60 * 150):  # 60 s; the bad leg sends 150 x 200 B/s (3x), the good one 50 x 200 B/s (1x)
        now = 100 + tick / 150
        bad.admit(200, now)
        sent["bad"] += 1
        if tick % 3 == 0:
            good.admit(200, now)
            sent["good"] += 1
    assert bad.dropped_packets / sent["bad"] == pytest.approx(2 / 3, abs=0.02)
    assert good.dropped_packets / sent["good"] < 0.001
