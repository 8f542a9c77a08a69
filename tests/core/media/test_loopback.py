"""Loopback media for the echo service: the looped side's SDP and the in-memory loop, in virtual time."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from helpers.webrtc_peer import rtcp_rr, rtp_packet

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.media.loopback import LOOP_PORT, LoopbackPorts, echo_answer, echo_offer
from mcs_edge.core.media.sdp import Profile, SessionDescription
from mcs_edge.core.media.session import CLIENT, PBX, Leg, MediaSession, SessionSettings

DATA = Path(__file__).resolve().parent.parent.parent / "data" / "sdp"
CALLER = ("10.20.0.6", 24680)


class Owner:
    """The real ports' owner (the anchor in production): numbers from 40000, sends recorded."""

    def __init__(self) -> None:
        self.next = 40000
        self.open_ports: set[int] = set()
        self.sent: list[tuple[int, bytes, Any]] = []

    def open(self, leg: Leg, rtcp_mux: bool) -> bool:
        port = self.next
        self.next += 2
        leg.port = port
        leg.rtcp_port = None if rtcp_mux else port + 1
        self.open_ports.add(port)
        leg.send = lambda data, addr: self.sent.append((port, data, addr))
        leg.send_rtcp = lambda data, addr: self.sent.append((port + 1, data, addr))
        return True

    def close(self, leg: Leg) -> None:
        self.open_ports.discard(leg.port)
        leg.port = 0


def _session(owner: Owner) -> tuple[MediaSession, LoopbackPorts]:
    ports = LoopbackPorts(owner, lambda: 5.0, secrets.token_bytes)
    settings = SessionSettings(
        client_host="203.0.113.10",
        pbx_host="10.0.0.5",
        certificate=edge_dtls_certificate(),
        random_bytes=secrets.token_bytes,
    )
    return MediaSession("c1", settings, ports, pbx_profile=Profile.RTP, client_profile=Profile.RTP), ports


def test_echo_answer_accepts_every_rtp_stream_with_its_codecs_and_mirrors_direction() -> None:
    """The answer keeps formats, rtpmap/fmtp and rtcp-mux, mirrors sendonly/recvonly, rejects the rest."""
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
        "m=audio 9 RTP/AVP 111 0\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n"
        "a=rtpmap:0 PCMU/8000\r\na=rtcp-mux\r\na=sendonly\r\na=ssrc:1 cname:x\r\n"
        "m=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\na=inactive\r\n"
        "m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    )
    answer = echo_answer(offer, secrets.token_bytes)
    audio, video, data = answer.media
    assert audio.port == 9 and audio.proto == "RTP/AVP" and audio.formats == ("111", "0")
    assert audio.get_all("rtpmap") == ["111 opus/48000/2", "0 PCMU/8000"]
    assert audio.get("fmtp") == "111 useinbandfec=1" and audio.rtcp_mux
    assert audio.direction == "recvonly" and audio.get("ssrc") is None
    assert video.direction == "inactive" and video.port == 9
    assert data.rejected
    assert answer.transport(0).address == "10.0.0.5"


def test_loop_sends_the_callers_rtp_back_with_its_own_ssrc_and_drops_rtcp() -> None:
    """Caller RTP -> looped leg -> back out of the caller's leg, SSRC replaced; RTCP counted, not reflected."""
    owner = Owner()
    session, ports = _session(owner)
    out = session.offer(
        CLIENT, SessionDescription.parse((DATA / "freeswitch_offer_rtp.sdp").read_bytes()), 1.0, 1
    )
    assert out.media[0].port == LOOP_PORT
    answer = session.answer(PBX, echo_answer(out, secrets.token_bytes), 1.0)
    assert answer.media[0].port == 40000 and answer.media[0].direction == "sendrecv"
    client = next(leg for leg in session.legs if leg.side is CLIENT)
    looped = next(leg for leg in session.legs if leg.side is PBX)
    assert looped.port == LOOP_PORT and looped.remote == ("10.0.0.5", LOOP_PORT)
    for seq in (1, 2, 3):
        client.receive(rtp_packet(seq, 0xABCD, pt=8, payload=bytes([seq]) * 160), CALLER, 2.0)
    assert len(owner.sent) == 3
    ssrcs = {data[8:12] for _port, data, _addr in owner.sent}
    assert len(ssrcs) == 1 and ssrcs != {(0xABCD).to_bytes(4, "big")}
    for seq, (port, data, addr) in enumerate(owner.sent, 1):
        assert port == 40000 and addr == CALLER
        assert data[:8] == rtp_packet(seq, 0xABCD, pt=8)[:8] and data[12:] == bytes([seq]) * 160
    assert ports.looped == 3 and looped.counters.packets == 3
    client.receive_rtcp(rtcp_rr(0xABCD), ("10.20.0.6", 24681), 2.0)
    client.receive(rtcp_rr(0xABCD), CALLER, 2.0)
    assert len(owner.sent) == 3 and ports.rtcp_dropped >= 1
    session.close()
    assert owner.open_ports == set() and looped.port == 0


def test_delayed_offer_goes_to_the_caller_and_its_answer_closes_the_loop() -> None:
    """Without a caller offer the loop offers (one audio stream); the caller's answer commits both sides."""
    owner = Owner()
    session, ports = _session(owner)
    offer = echo_offer("10.0.0.5", secrets.token_bytes)
    to_caller = session.offer(PBX, offer, 1.0, 1)
    assert to_caller.media[0].port == 40000 and "111" in to_caller.media[0].formats
    caller_answer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 10.20.0.6\r\ns=-\r\nc=IN IP4 10.20.0.6\r\nt=0 0\r\n"
        f"m=audio {CALLER[1]} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp-mux\r\n"
    )
    session.answer(CLIENT, caller_answer, 1.0)
    client = next(leg for leg in session.legs if leg.side is CLIENT)
    client.receive(rtp_packet(7, 0x1234), CALLER, 2.0)
    assert [addr for _p, _d, addr in owner.sent] == [CALLER] and ports.looped == 1
    session.close()
    assert owner.open_ports == set()
