"""Passthrough without media injection: only sources proven by an ICE check (verified with the
peers' own credentials from the SDP) are heard; garbage is never forwarded. Memory and virtual time."""

from __future__ import annotations

import secrets
import struct

from helpers.legports import RecordingPorts
from helpers.webrtc_peer import WebRtcPeer, rtcp_rr, rtp_packet

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.media.sdp import Profile, SessionDescription
from mcs_edge.core.media.session import CLIENT, PBX, Leg, MediaSession, SessionSettings
from mcs_edge.core.media.source_gate import MAX_VERIFIED, SourceGate
from mcs_edge.core.stun import message as m

BROWSER = ("198.51.100.7", 50000)
BROWSER_NAT = ("198.51.100.7", 61000)  # the same browser seen from another candidate
PBX_PEER = ("10.1.0.10", 30000)
INJECTOR = ("192.0.2.66", 40000)
SETTINGS = SessionSettings(
    client_host="203.0.113.10",
    pbx_host="10.0.0.5",
    idle_timeout=30.0,
    certificate=edge_dtls_certificate(),
    random_bytes=secrets.token_bytes,
)


def call() -> tuple[MediaSession, RecordingPorts, WebRtcPeer, WebRtcPeer, Leg, Leg]:
    """A browser (A) calls a WebRTC PBX (B) through a passthrough tenant; offer and answer committed."""
    ports = RecordingPorts()
    session = MediaSession("pt", SETTINGS, ports, pbx_profile=Profile.PASSTHROUGH)
    a, b = WebRtcPeer(BROWSER), WebRtcPeer(PBX_PEER)
    to_b = session.offer(CLIENT, SessionDescription.parse(a.offer()), 0.0)
    answer = b.answer(to_b)  # B learns A's credentials (they pass unchanged)
    to_a = session.answer(PBX, SessionDescription.parse(answer), 0.0)
    a.accept(to_a)  # A learns B's credentials
    client, pbx = session.mline_legs[CLIENT][0], session.mline_legs[PBX][0]
    assert client is not None and pbx is not None
    return session, ports, a, b, client, pbx


def _dtls_record() -> bytes:
    return b"\x16\xfe\xfd" + bytes(8) + struct.pack("!H", 4) + b"INJE"


def _stun_request(username: str, key: bytes | None) -> bytes:
    msg = m.Message(m.METHOD_BINDING, m.CLASS_REQUEST, b"INJECTINJECT", (m.Username(username),))
    return msg.serialize(integrity_key=key, fingerprint=True)


def test_nothing_from_a_never_verified_source_reaches_the_far_peer() -> None:
    """RTP, RTCP, DTLS, STUN without or with a wrong MESSAGE-INTEGRITY and garbage from an injector: nothing forwarded, drops counted."""
    _session, ports, a, b, client, pbx = call()
    injected = [
        rtp_packet(1, 0xDEADBEEF),
        rtcp_rr(0xDEADBEEF),
        _dtls_record(),
        _stun_request(f"{b.ufrag}:{a.ufrag}", None),  # no MESSAGE-INTEGRITY
        _stun_request(f"{b.ufrag}:{a.ufrag}", b"wrong password"),  # wrong key
        _stun_request(f"{b.ufrag}:{a.ufrag}", a.pwd.encode()),  # keyed with the sender's own password
        _stun_request(f"nobody:{a.ufrag}", b.pwd.encode()),  # right key, USERNAME not for B
        b"\x00\x01\x00\x00" + bytes(16),  # STUN first byte, no magic cookie
        b"\x55" * 40,  # no RFC 7983 class
        b"\x40\x00\x00\x04data",  # TURN ChannelData on a media port
    ]
    for now, data in enumerate(injected):
        client.receive(data, INJECTOR, float(now))  # toward B
        pbx.receive(data, INJECTOR, float(now))  # toward A
    assert ports.take_all() == []
    for leg in (client, pbx):
        dropped = leg.counters.dropped
        assert dropped["unverified-source"] == 3  # RTP, RTCP, DTLS
        assert dropped["stun-unverified"] == 4
        assert dropped["garbage"] == 3
    assert client.remote == BROWSER and pbx.remote == PBX_PEER  # the latches did not move


def test_injected_media_after_a_long_silence_does_not_take_the_latch_over() -> None:
    """The relatch-after-silence rule no longer lets any source in: only a verified one may take over."""
    _session, ports, _a, _b, client, _pbx = call()
    client.receive(rtp_packet(1, 0x1111), BROWSER, 1.0)
    assert [addr for _d, addr in ports.take_all()] == [PBX_PEER]
    client.receive(rtp_packet(2, 0xDEADBEEF), INJECTOR, 100.0)  # 99 s of silence
    assert ports.take_all() == []
    assert client.remote == BROWSER


def test_a_verified_check_lets_a_new_candidate_in_and_then_move_the_latch() -> None:
    """A's check from a new address, keyed with B's ice-pwd, reaches B; that address may then send media and latch."""
    _session, ports, a, _b, client, _pbx = call()
    check = a.check()
    client.receive(check, BROWSER_NAT, 1.0)
    assert ports.take_all() == [(check, PBX_PEER)]
    rtp = rtp_packet(5, 0x1111)
    client.receive(rtp, BROWSER_NAT, 1.1)
    assert ports.take_all() == [(rtp, PBX_PEER)]
    assert client.remote == BROWSER_NAT


def test_a_response_from_a_new_address_verifies_with_the_responders_own_password() -> None:
    """B answers A's check from another address: the response (keyed with B's pwd) is forwarded to the candidate that asked."""
    _session, ports, a, b, client, pbx = call()
    check = a.check()
    client.receive(check, BROWSER, 1.0)
    ports.take_all()
    txid = check[8:20]
    response = m.Message(
        m.METHOD_BINDING, m.CLASS_SUCCESS, txid, (m.XorMappedAddress(BROWSER[0], BROWSER[1]),)
    ).serialize(integrity_key=b.pwd.encode(), fingerprint=True)
    pbx.receive(response, ("10.1.0.10", 30002), 1.1)
    assert ports.take_all() == [(response, BROWSER)]
    forged = m.Message(m.METHOD_BINDING, m.CLASS_SUCCESS, txid, ()).serialize(
        integrity_key=a.pwd.encode(), fingerprint=True
    )
    pbx.receive(forged, INJECTOR, 1.2)
    assert ports.take_all() == []


def test_an_ice_restart_keeps_the_previous_credentials_for_checks_in_flight() -> None:
    """The gate keeps the current and the previous ufrag/pwd of a peer, no more."""
    gate = SourceGate()
    gate.set_credentials("u1", "p1")
    gate.set_credentials("u2", "p2")
    gate.set_credentials("u3", "p3")
    assert gate.credentials == ((b"u3", b"p3"), (b"u2", b"p2"))


def test_verified_sources_are_bounded() -> None:
    """At most MAX_VERIFIED sources are remembered per leg, the oldest forgotten first."""
    _session, _ports, a, _b, client, _pbx = call()
    for i in range(MAX_VERIFIED + 3):
        client.receive(a.check(), ("198.51.100.7", 20000 + i), 1.0)
    gate = client.gate
    assert gate is not None and len(gate.verified) == MAX_VERIFIED
    assert not gate.knows(("198.51.100.7", 20000)) and gate.knows(("198.51.100.7", 20000 + MAX_VERIFIED + 2))


def test_without_ice_credentials_the_leg_falls_back_to_latching() -> None:
    """A passthrough peer whose SDP has no ICE credentials cannot be verified: symmetric latching, as before."""
    ports = RecordingPorts()
    session = MediaSession("pt", SETTINGS, ports, pbx_profile=Profile.PASSTHROUGH)
    offer = "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0\r\n"
    answer = (
        "v=0\r\no=- 1 1 IN IP4 10.1.0.10\r\ns=-\r\nc=IN IP4 10.1.0.10\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n"
    )
    session.offer(CLIENT, SessionDescription.parse(offer), 0.0)
    session.answer(PBX, SessionDescription.parse(answer), 0.0)
    client = session.mline_legs[CLIENT][0]
    assert client is not None and client.gate is not None and not client.gate.enforcing
    client.receive(rtp_packet(1, 0x1111), BROWSER_NAT, 1.0)
    assert [addr for _d, addr in ports.take_all()] == [PBX_PEER]


def test_an_injector_flood_does_not_spend_the_peers_policing_budget() -> None:
    """Refused sources are dropped before the leg's policer: the real peer's media still flows after a flood."""
    _session, ports, _a, b, client, _pbx = call()
    forged = _stun_request(f"{b.ufrag}:x", b"guessed")
    rtp = rtp_packet(1, 0x1111)
    for i in range(2000):  # 2000 x 64+ bytes in 0.2 s: far over the leg's 120 KB burst
        client.receive(forged, INJECTOR, 1.0 + i * 1e-4)
        client.receive(rtp[:12] + bytes(60), INJECTOR, 1.0 + i * 1e-4)
    client.receive(rtp, BROWSER, 1.3)
    assert ports.take_all() == [(rtp, PBX_PEER)]
    assert "policed" not in client.counters.dropped
