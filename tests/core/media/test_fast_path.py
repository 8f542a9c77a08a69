"""The per-packet fast path of ``Leg.receive`` (RTP from the current source): it must decide, count
and forward exactly as the general path, drop reasons included (the general path still takes
everything else: new sources, RTCP, short packets, STUN, DTLS)."""

from __future__ import annotations

import secrets
from typing import Any

from helpers.legports import RecordingPorts
from helpers.webrtc_peer import rtcp_rr, rtp_packet

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.media.sdp import Profile, SessionDescription
from mcs_edge.core.media.session import CLIENT, PBX, Leg, MediaSession, SessionSettings
from mcs_edge.core.shaping import Policer, TokenBucket

PHONE = ("198.51.100.7", 50000)
PBX_ADDR = ("10.1.0.10", 30000)
SETTINGS = SessionSettings(
    client_host="203.0.113.10",
    pbx_host="10.0.0.5",
    certificate=edge_dtls_certificate(),
    random_bytes=secrets.token_bytes,
)


def plain(addr: tuple[str, int], user: str) -> SessionDescription:
    return SessionDescription.parse(
        f"v=0\r\no={user} 1 1 IN IP4 {addr[0]}\r\ns=-\r\nc=IN IP4 {addr[0]}\r\nt=0 0\r\n"
        f"m=audio {addr[1]} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )


def rtp_call(policer: Any = None) -> tuple[MediaSession, RecordingPorts, Leg, Leg]:
    """A SIP phone (plain RTP) calls a PBX through a ``bridge`` tenant: two RTP legs, SDP addresses known."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP, policer=policer)
    session.offer(CLIENT, plain(PHONE, "phone"), 0.0)
    session.answer(PBX, plain(PBX_ADDR, "pbx"), 0.0)
    client, pbx = session.mline_legs[CLIENT][0], session.mline_legs[PBX][0]
    assert client is not None and pbx is not None
    assert client.remote == PHONE and pbx.remote == PBX_ADDR  # RTP from these takes the fast path
    return session, ports, client, pbx


def test_fast_path_forwards_and_counts_exactly() -> None:
    """Packets, bytes, the loss estimate, idle time, the last packet kept for re-anchoring and the
    far leg's send counters are exact after a stream with a gap and a late packet."""
    _session, ports, client, pbx = rtp_call()
    sent = [rtp_packet(seq, 0x1234, payload=bytes(100 + seq)) for seq in (1, 2, 3, 5, 6, 4, 7)]
    for i, packet in enumerate(sent):
        client.receive(packet, PHONE, 1.0 + i * 0.02)
    assert ports.take(PBX_ADDR) == sent
    assert client.counters.packets == 7 and client.counters.bytes == sum(map(len, sent))
    tracker = client.counters.sequences[0x1234]
    assert (tracker.received, tracker.expected, tracker.lost) == (7, 7, 0)
    assert client.counters.dropped == {} and client.last_rx == 1.0 + 6 * 0.02
    assert pbx.tx_packets == 7 and pbx.tx_bytes == sum(map(len, sent)) and pbx.last_rtp == sent[-1]
    client.receive(rtp_packet(10, 0x1234), PHONE, 2.0)  # 8 and 9 lost
    assert (tracker.received, tracker.expected, tracker.lost) == (8, 10, 2)


def test_fast_path_refusals_are_counted_like_the_general_path() -> None:
    """Policed (by the leg's bucket or by the tenant's), no destination, a send that raises: each a
    counted drop on the same leg and under the same reason as before; nothing raises."""
    tenant = TokenBucket(0.0, 500.0, 0.0)  # the tenant aggregate: 500 bytes, never refilled
    _session, ports, client, pbx = rtp_call(policer=lambda: Policer(TokenBucket(1e9, 1e9, 0.0), tenant))
    packet = rtp_packet(1, 0x77)  # 172 bytes: two fit in the tenant's 500
    for seq in range(1, 5):
        client.receive(rtp_packet(seq, 0x77), PHONE, 1.0)
    assert len(ports.take(PBX_ADDR)) == 2 and client.counters.dropped == {"policed": 2}
    assert (client.policer.dropped_packets, client.policer.parent_dropped_packets) == (2, 2)
    assert client.policer.dropped_bytes == 2 * len(packet) and client.counters.packets == 2

    _session, ports, client, pbx = rtp_call()

    def broken(_data: bytes, _addr: Any) -> None:
        raise OSError("network unreachable")

    pbx.send = broken
    client.receive(packet, PHONE, 1.0)
    assert pbx.counters.dropped == {"send-error": 1} and pbx.tx_packets == 0
    assert client.counters.packets == 1  # received and counted on its own leg
    pbx.remote = None
    client.receive(rtp_packet(2, 0x77), PHONE, 1.1)
    assert pbx.counters.dropped == {"send-error": 1, "no-destination": 1}


def test_rtcp_and_short_packets_from_the_current_source_take_the_general_path() -> None:
    """An RTCP report on the RTP port (RFC 5761 payload types 200-204 here: 201) is counted and
    sent on the far leg's RTCP port; an RTP packet shorter than its fixed header is 'truncated'."""
    _session, ports, client, pbx = rtp_call()
    client.receive(rtp_packet(1, 0x55), PHONE, 1.0)
    report = rtcp_rr(0x55)
    client.receive(report, PHONE, 1.1)
    assert ports.take(PBX_ADDR, port=pbx.port) == [rtp_packet(1, 0x55)]
    assert pbx.rtcp_port is not None
    assert ports.take(port=pbx.rtcp_port) == [report]
    client.receive(rtp_packet(2, 0x55)[:11], PHONE, 1.2)
    assert client.counters.dropped == {"truncated": 1} and client.counters.packets == 2


def test_sequence_accounting_follows_ssrc_changes_and_the_tracking_limit() -> None:
    """The fast path keeps the last SSRC's tracker: interleaved SSRCs, a return to an earlier one and
    SSRCs beyond the tracking limit are accounted exactly as one tracker per SSRC (at most 32)."""
    _session, ports, client, _pbx = rtp_call()
    order = [(1, 0xA), (1, 0xB), (2, 0xA), (3, 0xA), (2, 0xB), (5, 0xA), (3, 0xB)]
    for i, (seq, ssrc) in enumerate(order):
        client.receive(rtp_packet(seq, ssrc), PHONE, 1.0 + i * 0.01)
    a, b = client.counters.sequences[0xA], client.counters.sequences[0xB]
    assert (a.received, a.expected, a.lost) == (4, 5, 1) and (b.received, b.expected, b.lost) == (3, 3, 0)
    for ssrc in range(0x100, 0x100 + 40):  # only 32 SSRCs are tracked; every packet is still forwarded
        client.receive(rtp_packet(1, ssrc), PHONE, 2.0)
        client.receive(rtp_packet(2, ssrc), PHONE, 2.0)
    assert len(client.counters.sequences) == 32 and client.counters.packets == len(order) + 80
    assert len(ports.take(PBX_ADDR)) == len(order) + 80
    assert all(t.received == 2 for s, t in client.counters.sequences.items() if s >= 0x100)
