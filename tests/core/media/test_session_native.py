"""Media sessions for a native SIP client (the mobile app): ICE-lite on RTP/SDES, DTLS-SRTP without
ICE, "SRTP if possible", and the edge's offers toward such a client."""

from __future__ import annotations

import base64
import secrets

from helpers.legports import RecordingPorts
from helpers.webrtc_peer import SdesPeer, WebRtcPeer, rtp_packet

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.media.sdp import Profile, SessionDescription
from mcs_edge.core.media.session import CLIENT, PBX, Leg, MediaSession, SessionSettings

PUBLIC = "203.0.113.10"
PRIVATE = "10.0.0.5"
PBX_ADDR = ("10.1.0.10", 30000)
APP = ("192.0.2.7", 20000)
STRANGER = ("192.0.2.99", 20000)
SETTINGS = SessionSettings(
    client_host=PUBLIC,
    pbx_host=PRIVATE,
    idle_timeout=30.0,
    hold_timeout=600.0,
    certificate=edge_dtls_certificate(),
    random_bytes=secrets.token_bytes,
)


def sdp(text: str) -> SessionDescription:
    return SessionDescription.parse(text)


def legs(session: MediaSession) -> tuple[Leg, Leg]:
    client, pbx = session.mline_legs[CLIENT][0], session.mline_legs[PBX][0]
    assert client is not None and pbx is not None
    return client, pbx


def pbx_sdp(version: int = 1) -> SessionDescription:
    lines = [
        "v=0",
        f"o=pbx {version} {version} IN IP4 {PBX_ADDR[0]}",
        "s=-",
        f"c=IN IP4 {PBX_ADDR[0]}",
        "t=0 0",
    ]
    lines += [f"m=audio {PBX_ADDR[1]} RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "a=sendrecv"]
    return sdp("\r\n".join(lines) + "\r\n")


pbx_answer = pbx_offer = pbx_sdp


def app_offer(proto: str = "RTP/AVP", ice: WebRtcPeer | None = None, extra: tuple[str, ...] = ()) -> str:
    """An offer like baresip's: one audio m-line, RTCP on port+1 (no rtcp-mux)."""
    lines = ["v=0", f"o=- 1 1 IN IP4 {APP[0]}", "s=-", f"c=IN IP4 {APP[0]}", "t=0 0"]
    lines += [f"m=audio {APP[1]} {proto} 0", "a=rtpmap:0 PCMU/8000", "a=sendrecv", *extra]
    if ice is not None:
        lines += [
            f"a=ice-ufrag:{ice.ufrag}",
            f"a=ice-pwd:{ice.pwd}",
            f"a=candidate:1 1 UDP 2113929471 {APP[0]} {APP[1]} typ host",
            f"a=candidate:1 2 UDP 2113929470 {APP[0]} {APP[1] + 1} typ host",
        ]
    return "\r\n".join(lines) + "\r\n"


def test_ice_lite_on_a_plain_rtp_leg_answers_both_components_and_gates_media() -> None:
    """A plain RTP offer with ICE gets an ice-lite answer (candidates for RTP and RTCP); checks on both
    ports are answered; RTP is heard from the consented address only."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP)
    app = WebRtcPeer(APP)
    session.offer(CLIENT, sdp(app_offer(ice=app)), 0.0, 1)
    back = session.answer(PBX, pbx_answer(), 0.0)
    t = back.transport(0)
    client, pbx = legs(session)
    assert back.has("ice-lite") and t.proto == "RTP/AVP" and t.ice is not None
    assert sorted((c.component, c.address, c.port) for c in t.candidates) == [
        (1, PUBLIC, client.port),
        (2, PUBLIC, client.rtcp_port),
    ]
    app.accept(back)
    client.receive(rtp_packet(1, 0x1111), STRANGER, 1.0)
    assert client.counters.dropped["no-consent"] == 1
    client.receive(app.check(), APP, 1.0)
    assert ports.take(APP, port=client.port)[0][:2] == b"\x01\x01"
    client.receive_rtcp(app.check(), (APP[0], APP[1] + 1), 1.0)
    assert ports.take((APP[0], APP[1] + 1), port=client.port + 1)[0][:2] == b"\x01\x01"
    client.receive(rtp_packet(2, 0x1111), APP, 1.1)
    assert ports.take(PBX_ADDR) == [rtp_packet(2, 0x1111)]
    pbx.receive(rtp_packet(7, 0x2222), PBX_ADDR, 1.2)
    assert ports.take(APP) == [rtp_packet(7, 0x2222)]


def test_a_native_client_without_ice_is_latched_and_gets_no_ice_attributes() -> None:
    """A plain RTP offer without ICE: the answer has no ICE; the leg latches on the app's source."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP)
    session.offer(CLIENT, sdp(app_offer()), 0.0, 1)
    back = session.answer(PBX, pbx_answer(), 0.0)
    client, _pbx = legs(session)
    assert not back.has("ice-lite") and back.transport(0).ice is None and client.ice is None
    nat = ("198.51.100.20", 61000)  # the app behind NAT: its packets come from elsewhere
    client.receive(rtp_packet(1, 0x1111), nat, 1.0)
    assert ports.take(PBX_ADDR) == [rtp_packet(1, 0x1111)] and client.remote == nat


def test_rtp_avp_with_crypto_is_answered_with_srtp_not_plain() -> None:
    """'SRTP if possible' (RTP/AVP + a=crypto) is answered RTP/AVP with our key; media is SRTP both ways."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP)
    app = SdesPeer()
    session.offer(CLIENT, sdp(app_offer(extra=(app.crypto_line(),))), 0.0, 1)
    back = session.answer(PBX, pbx_answer(), 0.0)
    m = back.media[0]
    assert m.proto == "RTP/AVP" and m.cryptos and m.cryptos[0].suite == "AES_CM_128_HMAC_SHA1_80"
    client, pbx = legs(session)
    assert client.profile is Profile.SDES and client.srtp is not None
    app.learn(back)
    assert app.srtp is not None
    client.receive(app.srtp.protect_rtp(rtp_packet(1, 0x1111)), APP, 1.0)
    assert ports.take(PBX_ADDR) == [rtp_packet(1, 0x1111)]
    pbx.receive(rtp_packet(9, 0x2222), PBX_ADDR, 1.1)
    (to_app,) = ports.take(APP)
    assert to_app != rtp_packet(9, 0x2222) and app.srtp.unprotect_rtp(to_app) == rtp_packet(9, 0x2222)


def test_dtls_srtp_without_ice_latches_and_keys_srtp() -> None:
    """A DTLS-SRTP offer without ICE is accepted (not refused): the app's ClientHello from its address
    starts DTLS, SRTP flows both ways, no STUN needed."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP)
    app = WebRtcPeer(APP)
    fp = app.certificate.fingerprint
    offer = app_offer("UDP/TLS/RTP/SAVP", extra=(f"a=fingerprint:{fp}", "a=setup:active"))
    session.offer(CLIENT, sdp(offer), 0.0, 1)
    back = session.answer(PBX, pbx_answer(), 0.0)
    t = back.transport(0)
    assert t.proto == "UDP/TLS/RTP/SAVP" and t.setup == "passive" and t.rtcp_port == t.port
    client, pbx = legs(session)
    assert client.ice is None
    app.edge_fingerprints = t.fingerprints
    app.dtls_role_client = True
    out = app.start_dtls(1.0)
    for _ in range(10):
        for data in out:
            client.receive(data, APP, 1.0)
        out = []
        for data in ports.take(APP):
            out += app.feed_dtls(data, 1.0)
        if not out and app.srtp is not None and client.srtp is not None:
            break
    assert app.srtp is not None and client.srtp is not None
    client.receive(app.srtp_packet(1), APP, 1.1)
    assert len(ports.take(PBX_ADDR)) == 1
    pbx.receive(rtp_packet(5, 0x2222), PBX_ADDR, 1.2)
    (to_app,) = ports.take(APP)
    assert app.srtp.unprotect_rtp(to_app) == rtp_packet(5, 0x2222)


def test_the_edges_offer_to_a_native_dtls_client_carries_rtcp_candidates_on_one_port() -> None:
    """Toward a native client (which ignores rtcp-mux in offers) a DTLS offer names RTCP on the RTP port."""
    ports = RecordingPorts()
    session = MediaSession(
        "c", SETTINGS, ports, pbx_profile=Profile.RTP, client_profile=Profile.WEBRTC, native_client=True
    )
    out = session.offer(PBX, pbx_offer(), 0.0, 1)
    t = out.transport(0)
    assert out.media[0].rtcp_mux and t.ice is not None
    assert sorted(c.component for c in t.candidates) == [1, 2] and {c.port for c in t.candidates} == {t.port}
    assert out.media[0].rtcp is not None and out.media[0].rtcp.port == t.port


def test_the_edges_plain_and_sdes_offers_to_a_native_client_offer_ice_lite() -> None:
    """Toward the app the edge offers ICE-lite on RTP and SDES too; an answer without ICE drops it."""
    for profile in (Profile.RTP, Profile.SDES):
        ports = RecordingPorts()
        session = MediaSession(
            "c", SETTINGS, ports, pbx_profile=Profile.RTP, client_profile=profile, native_client=True
        )
        out = session.offer(PBX, pbx_offer(), 0.0, 1)
        assert out.has("ice-lite") and out.transport(0).ice is not None and out.transport(0).address == PUBLIC
        answer = app_offer("RTP/SAVP" if profile is Profile.SDES else "RTP/AVP")
        if profile is Profile.SDES:
            key = base64.b64encode(bytes(30)).decode()
            answer = answer.replace(
                "a=sendrecv", f"a=sendrecv\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}"
            )
        back = session.answer(CLIENT, sdp(answer), 0.0)
        client, _pbx = legs(session)
        assert client.ice is None and client.remote == APP and back.transport(0).address == PRIVATE
