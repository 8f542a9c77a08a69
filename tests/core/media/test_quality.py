"""Call quality from RTCP and the relay's counters, and the E-model MOS estimate (ITU-T G.107)."""

from __future__ import annotations

import gc
import struct

import pytest

from mcs_edge.core.media.forwarding import LegCounters, SequenceTracker
from mcs_edge.core.media.quality import CallQuality, delay_ms, e_model_mos, r_factor


def block(source: int, fraction: int, cumulative: int, ext: int, jitter: int, lsr: int, dlsr: int) -> bytes:
    return struct.pack("!IIIIII", source, (fraction << 24) | (cumulative & 0xFFFFFF), ext, jitter, lsr, dlsr)


def sr(ssrc: int, msw: int, lsw: int, ts: int) -> bytes:
    body = struct.pack("!IIIIII", ssrc, msw, lsw, ts, 10, 1600)
    return struct.pack("!BBH", 0x80, 200, len(body) // 4) + body


def rr(ssrc: int, *blocks: bytes) -> bytes:
    body = struct.pack("!I", ssrc) + b"".join(blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 201, len(body) // 4) + body


def test_e_model_clean_call_and_loss() -> None:
    """No loss at 40 ms gives about 4.4; 5% random loss costs about half a point; worse is lower."""
    clean = e_model_mos(0.0, 40)
    lossy = e_model_mos(0.05, 40)
    assert 4.3 < clean <= 4.5
    assert 3.6 < lossy < 4.1
    assert e_model_mos(0.2, 40) < lossy
    assert e_model_mos(0.0, 400) < clean
    assert e_model_mos(1.0, 1000) == 1.0
    assert r_factor(0.0, 0.0) == pytest.approx(93.2)


def test_delay_is_half_rtt_plus_twice_jitter_plus_40ms() -> None:
    """The one-way delay used: rtt/2 + 2 jitter + 40 ms."""
    assert delay_ms(0.1, 0.01) == pytest.approx(50 + 20 + 40)
    assert delay_ms(None, None) == 40


def test_loss_in_from_sequence_numbers() -> None:
    """The edge's own view: 95 of 100 packets arrived is 5% loss."""
    call = CallQuality()
    counters = LegCounters()
    counters.packets = 95
    tracker = SequenceTracker(0)
    for seq in range(1, 100):
        if seq % 20 != 10:
            tracker.update(seq)
    counters.sequences[1] = tracker
    leg = call.new_leg("CLIENT", counters)
    assert leg.loss_in() == pytest.approx(0.05)
    figures = leg.figures()
    assert figures.loss == pytest.approx(0.05) and figures.mos is not None and figures.mos < 4.1


def test_rtt_from_an_sr_sent_and_the_report_echoing_it() -> None:
    """SR sent to the peer at t=10; its RR (DLSR 0.5 s) arrives at t=10.62: RTT 120 ms."""
    call = CallQuality()
    leg = call.new_leg("PBX", LegCounters())
    leg.to_peer(sr(5, 0x00010002, 0x00030000, 1000), 10.0)
    lsr = (0x0002 << 16) | 0x0003
    leg.from_peer(rr(9, block(5, 0, 0, 100, 0, lsr, 32768)), 10.62)
    assert leg.rtt == pytest.approx(0.12)
    leg.from_peer(rr(9, block(5, 0, 0, 110, 0, 12345, 0)), 11.0)  # unknown LSR: no sample
    assert leg.rtt_samples == 1


def test_jitter_converted_with_the_clock_rate_learnt_from_srs() -> None:
    """Two SRs of source 5 one second apart, 8000 ticks: 8 kHz; jitter 80 ticks is 10 ms."""
    call = CallQuality()
    client = call.new_leg("CLIENT", LegCounters())
    pbx = call.new_leg("PBX", LegCounters())
    client.from_peer(sr(5, 100, 0, 1000), 1.0)
    client.from_peer(sr(5, 101, 0, 9000), 2.0)
    assert call.clock_rate(5) == 8000
    pbx.from_peer(rr(9, block(5, 0, 0, 100, 80, 0, 0)), 2.1)
    assert pbx.jitter() == pytest.approx(0.010)


def test_reported_loss_between_first_and_latest_block() -> None:
    """Cumulative loss 0 -> 5 over 100 more packets is 5%; one block alone uses fraction lost."""
    call = CallQuality()
    leg = call.new_leg("CLIENT", LegCounters())
    leg.from_peer(rr(9, block(5, 64, 0, 100, 0, 0, 0)), 1.0)
    assert leg.loss_reported() == pytest.approx(0.25)
    leg.from_peer(rr(9, block(5, 0, 5, 200, 0, 0, 0)), 2.0)
    assert leg.loss_reported() == pytest.approx(0.05)


def test_garbage_rtcp_is_counted_not_raised() -> None:
    """A malformed report is counted and changes nothing."""
    leg = CallQuality().new_leg("CLIENT", LegCounters())
    leg.from_peer(b"\x81\xc9\x00\x01\x00\x00\x00\x09", 1.0)
    assert leg.bad_rtcp == 1 and leg.loss_reported() is None


def test_summary_combines_the_sides() -> None:
    """The call's loss is the worse side's, its RTT the sum of both sides'."""
    call = CallQuality()
    a = call.new_leg("CLIENT", LegCounters())
    b = call.new_leg("PBX", LegCounters())
    a.rtt, b.rtt = 0.05, 0.02
    a.from_peer(rr(9, block(5, 0, 0, 100, 0, 0, 0)), 1.0)
    a.from_peer(rr(9, block(5, 0, 3, 200, 0, 0, 0)), 2.0)
    b.from_peer(rr(8, block(6, 0, 0, 100, 0, 0, 0)), 1.0)
    summary = call.summary()
    assert summary["loss"] == pytest.approx(0.03)
    assert summary["rtt_ms"] == pytest.approx(70.0)
    assert set(summary["legs"]) == {"client", "pbx"}
    assert summary["mos"] < summary["legs"]["pbx"]["mos"]


def test_a_released_call_quality_is_freed_by_reference_counting() -> None:
    """A call's quality and its legs hold no reference cycle: dropping the call frees them, the cycle
    collector finds nothing (issue 21: per-call cycles made the collector stall the reactor)."""
    gc.collect()
    gc.disable()
    try:
        call = CallQuality()
        for side in ("CLIENT", "PBX"):
            leg = call.new_leg(side, LegCounters())
            leg.from_peer(sr(5, 100, 0, 1000), 1.0)
        del call, leg
        assert gc.collect() == 0
    finally:
        gc.enable()
