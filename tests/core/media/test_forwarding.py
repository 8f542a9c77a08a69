"""Forwarding table (SSRC / MID / payload type) and per-leg counters."""

from __future__ import annotations

import pytest

from mcs_edge.core.media.forwarding import ForwardingTable, LegCounters, SequenceTracker
from mcs_edge.errors import LocalProtocolError


def test_route_by_ssrc_mid_pt_and_learn() -> None:
    """SSRC wins; otherwise MID, then payload type; a match learns the SSRC."""
    t: ForwardingTable[str] = ForwardingTable()
    t.register("audio", mid="0", payload_types=[111, 0], ssrcs=[1111])
    t.register("video", mid="1", payload_types=[96])
    assert t.route(1111, 96) == "audio"  # known SSRC beats PT
    assert t.route(2222, 5, mid="1") == "video"  # MID
    assert t.route(2222, 111) == "video"  # learned from the MID match
    assert t.route(3333, 0) == "audio"  # PT
    assert t.route(4444, 77) is None


def test_shared_payload_type_is_ambiguous() -> None:
    """A payload type two legs share never routes; it does again once one leg is gone."""
    t: ForwardingTable[int] = ForwardingTable()
    t.register(1, payload_types=[0, 8])
    t.register(2, payload_types=[0])
    assert t.route(10, 0) is None
    assert t.route(11, 8) == 1
    t.unregister(1)
    assert t.route(12, 0) == 2
    assert t.route(11, 8) is None  # SSRC learned for leg 1 was removed with it


def test_bind_moves_ssrc_and_misuse() -> None:
    """bind_ssrc moves an SSRC between legs; double register/unregister is LocalProtocolError."""
    t: ForwardingTable[str] = ForwardingTable()
    t.register("a", ssrcs=[5])
    t.register("b")
    t.bind_ssrc(5, "b")
    assert t.route(5, 0) == "b"
    t.unregister("a")
    assert t.route(5, 0) == "b" and len(t) == 1 and "b" in t
    with pytest.raises(LocalProtocolError):
        t.register("b")
    with pytest.raises(LocalProtocolError):
        t.unregister("a")
    with pytest.raises(LocalProtocolError):
        t.bind_ssrc(1, "zzz")
    t.register("c", mid="m")
    with pytest.raises(LocalProtocolError):
        t.register("d", mid="m")


def test_sequence_loss_and_wrap() -> None:
    """Gaps count as loss; wrap-around keeps counting; reordering and duplicates do not add loss."""
    s = SequenceTracker(65530)
    for seq in [65531, 65533, 65535, 0, 2, 1, 1]:
        s.update(seq)
    assert s.expected == 9  # 65530..2
    assert s.received == 8 and s.lost == 1


def test_sequence_restart_on_big_jump() -> None:
    """A jump larger than MAX_DROPOUT restarts the count."""
    s = SequenceTracker(100)
    s.update(101)
    s.update(20000)
    s.update(20001)
    assert (s.expected, s.received, s.lost) == (2, 2, 0)


def test_leg_counters() -> None:
    """Counters add packets, bytes, drops by reason and loss over SSRCs."""
    c = LegCounters()
    for seq in (1, 2, 4, 5):
        c.count_rtp(172, 0xAA, seq)
    c.count_rtp(100, 0xBB, 7)
    c.count(80)
    c.drop("srtp-auth")
    c.drop("srtp-auth")
    c.drop("no-route")
    assert (c.packets, c.bytes) == (6, 4 * 172 + 100 + 80)
    assert c.dropped == {"srtp-auth": 2, "no-route": 1}
    assert c.lost == 1 and c.expected == 6
    assert c.loss_fraction == pytest.approx(1 / 6)
    assert LegCounters().loss_fraction == 0.0
