"""Media sessions in memory and virtual time: offer/answer per profile, the packet path, timers, hostile input."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from helpers.legports import RecordingPorts
from helpers.webrtc_peer import SdesPeer, WebRtcPeer, rtcp_rr, rtp_packet

from mcs_edge.certs import dtls_certificate, edge_dtls_certificate
from mcs_edge.core.media.sdp import Profile, SessionDescription
from mcs_edge.core.media.session import CLIENT, PBX, Leg, MediaSession, OutOfPorts, SessionSettings
from mcs_edge.core.rtp.dtls import DtlsState
from mcs_edge.errors import RemoteProtocolError

PUBLIC = "203.0.113.10"
PRIVATE = "10.0.0.5"
BROWSER = ("198.51.100.7", 50000)
PBX_ADDR = ("10.1.0.10", 30000)
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


def pbx_answer(
    port: int = PBX_ADDR[1], direction: str = "sendrecv", crypto: str | None = None
) -> SessionDescription:
    proto = "RTP/SAVP" if crypto else "RTP/AVP"
    lines = [
        "v=0",
        f"o=pbx 1 1 IN IP4 {PBX_ADDR[0]}",
        "s=-",
        f"c=IN IP4 {PBX_ADDR[0]}",
        "t=0 0",
        f"m=audio {port} {proto} 0",
        "a=rtpmap:0 PCMU/8000",
        f"a={direction}",
    ]
    if crypto:
        lines.append(crypto)
    return sdp("\r\n".join(lines) + "\r\n")


def pbx_offer(port: int = PBX_ADDR[1], video: bool = False) -> SessionDescription:
    lines = ["v=0", f"o=pbx 7 7 IN IP4 {PBX_ADDR[0]}", "s=-", f"c=IN IP4 {PBX_ADDR[0]}", "t=0 0"]
    lines += [f"m=audio {port} RTP/AVP 0 8", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=sendrecv"]
    if video:
        lines += [f"m=video {port + 2} RTP/AVP 96", "a=rtpmap:96 VP8/90000", "a=sendrecv"]
    return sdp("\r\n".join(lines) + "\r\n")


def handshake(
    session: MediaSession, ports: RecordingPorts, browser: WebRtcPeer, now: float, addr: Any = BROWSER
) -> None:
    """ICE check with USE-CANDIDATE, then DTLS until both ends have SRTP keys."""
    leg = session.mline_legs[CLIENT][0]
    assert leg is not None
    leg.receive(browser.check(), addr, now)
    sent = ports.take(addr)
    assert sent and sent[0][0:2] == b"\x01\x01", "binding success expected"
    if browser.dtls_role_client:
        out = browser.start_dtls(now)
    else:  # we are the DTLS client: our ClientHello followed the binding response
        browser.start_dtls(now)
        out = []
        for data in sent[1:]:
            out += browser.feed_dtls(data, now)
    for _ in range(10):
        for data in out:
            leg.receive(data, addr, now)
        out = []
        for data in ports.take(addr):
            out += browser.feed_dtls(data, now)
        if not out and browser.srtp is not None and leg.srtp is not None:
            break
    assert browser.srtp is not None and leg.srtp is not None, "DTLS did not complete"


def bridge(
    pbx_profile: Profile = Profile.RTP, now: float = 0.0, settings: SessionSettings = SETTINGS
) -> tuple[MediaSession, RecordingPorts, WebRtcPeer, SdesPeer]:
    """A browser calls a PBX through ``pbx_profile``; ICE and DTLS done."""
    ports = RecordingPorts()
    session = MediaSession("call-1", settings, ports, pbx_profile=pbx_profile, now=now)
    browser = WebRtcPeer(BROWSER)
    out = session.offer(CLIENT, sdp(browser.offer()), now, 1)
    sdes = SdesPeer()
    if pbx_profile is Profile.SDES:
        sdes.learn(out)
        answer = pbx_answer(crypto=sdes.crypto_line())
    else:
        answer = pbx_answer()
    back = session.answer(PBX, answer, now)
    browser.accept(back)
    handshake(session, ports, browser, now)
    return session, ports, browser, sdes


def legs(session: MediaSession) -> tuple[Leg, Leg]:
    client, pbx = session.mline_legs[CLIENT][0], session.mline_legs[PBX][0]
    assert client is not None and pbx is not None
    return client, pbx


# ----------------------------------------------------------------------------------- offer/answer


def test_bridge_offer_goes_to_pbx_as_plain_rtp_with_a_port_pair() -> None:
    """A WebRTC offer reaches an RTP PBX as RTP/AVP on the backend address, RTP/RTCP port pair, browser-only attributes gone."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP)
    out = session.offer(CLIENT, sdp(WebRtcPeer(BROWSER).offer()), 0.0)
    m = out.media[0]
    assert m.proto == "RTP/AVP" and out.transport(0).address == PRIVATE
    assert not m.has("ice-ufrag") and not m.has("fingerprint") and not m.has("ssrc") and not m.rtcp_mux
    client, pbx = legs(session)
    assert (client.profile, pbx.profile) == (Profile.WEBRTC, Profile.RTP)
    assert m.port == pbx.port and pbx.rtcp_port == pbx.port + 1 and client.rtcp_port is None
    assert out.origin.address == PRIVATE and out.origin.username == "-"


def test_bridge_answer_to_browser_is_ice_lite_passive_with_our_fingerprint() -> None:
    """The PBX's RTP answer becomes a WebRTC answer: ice-lite, our ufrag/pwd, setup passive, candidate on the public address."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP)
    session.offer(CLIENT, sdp(WebRtcPeer(BROWSER).offer()), 0.0)
    back = session.answer(PBX, pbx_answer(), 0.0)
    t = back.transport(0)
    client, pbx = legs(session)
    assert back.has("ice-lite") and t.setup == "passive" and t.proto == "UDP/TLS/RTP/SAVPF"
    assert t.ice is not None and t.ice.ufrag == session.ice_credentials[CLIENT][0]
    assert (t.candidates[0].address, t.candidates[0].port) == (PUBLIC, client.port)
    assert back.bundle_group is not None and back.bundle_group.mids == ("0",)
    assert pbx.remote == PBX_ADDR and pbx.remote_rtcp == (PBX_ADDR[0], PBX_ADDR[1] + 1)
    assert client.dtls is not None and not client.dtls.is_client and client.dtls.state is DtlsState.NEW
    assert ports.sent == []  # nothing sent before the browser speaks (never DTLS first as server)


def test_sdes_pbx_gets_our_keys_and_answer_keys_the_srtp_context() -> None:
    """bridge-sdes: the PBX offer carries a=crypto with our key; its answer's key keys the PBX leg's SRTP."""
    session, _ports, _browser, sdes = bridge(Profile.SDES)
    _client, pbx = legs(session)
    assert pbx.srtp is not None and pbx.sdes is not None and pbx.sdes[1] == sdes.key


def test_passthrough_keeps_the_peers_ice_and_dtls_and_only_moves_addresses() -> None:
    """passthrough: ICE credentials, fingerprint and setup pass unchanged; candidates become the relay's."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.PASSTHROUGH)
    a = WebRtcPeer(BROWSER, kinds=("audio", "video"))
    out = session.offer(CLIENT, sdp(a.offer()), 0.0)
    t0, t1 = out.transport(0), out.transport(1)
    assert t0.ice is not None and t0.ice.ufrag == a.ufrag and t0.fingerprints[0] == a.certificate.fingerprint
    assert not out.has("ice-lite") and out.bundle_group is not None
    pbx_leg = session.mline_legs[PBX][0]
    assert pbx_leg is not None and session.mline_legs[PBX][1] is pbx_leg  # bundled: one leg
    assert t0.candidates[0].port == t1.candidates[0].port == pbx_leg.port
    assert t0.candidates[0].address == PRIVATE


def test_pbx_offer_to_browser_is_actpass_and_we_follow_the_browser_answer() -> None:
    """A PBX offer reaches the browser as WebRTC actpass; a browser answering passive makes us the DTLS client, started after ICE."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP, client_profile=Profile.WEBRTC)
    out = session.offer(PBX, pbx_offer(), 0.0, 1)
    assert out.transport(0).setup == "actpass" and out.has("ice-lite")
    browser = WebRtcPeer(BROWSER)
    back = session.answer(CLIENT, sdp(browser.answer(out, setup="passive")), 0.0)
    assert back.media[0].proto == "RTP/AVP"
    client, _ = legs(session)
    assert client.dtls is not None and client.dtls.is_client and client.dtls_client_pending
    assert ports.take(BROWSER) == []  # no ClientHello before ICE found the browser
    browser.dtls_role_client = False
    handshake(session, ports, browser, 0.1)
    assert client.srtp is not None


def test_answer_without_offer_and_bad_answers_are_refused() -> None:
    """An answer must answer an offer of the other side, m-line for m-line; an SDES answer without usable keys is 488."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.SDES)
    session.offer(CLIENT, sdp(WebRtcPeer(BROWSER).offer()), 0.0)
    with pytest.raises(RemoteProtocolError) as no_crypto:
        session.answer(PBX, pbx_answer(crypto="a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:" + "A" * 64), 0.0)
    assert no_crypto.value.status_hint == 488
    two = sdp(str(pbx_answer()) + "m=video 0 RTP/AVP 96\r\n")
    with pytest.raises(RemoteProtocolError):
        session.answer(PBX, two, 0.0)
    assert session.established is False  # nothing committed


def test_ports_exhausted_raises_and_releases_what_the_offer_took() -> None:
    """No port for the second leg: OutOfPorts, and the first leg's port is given back."""
    ports = RecordingPorts(limit=1)
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP)
    with pytest.raises(OutOfPorts):
        session.offer(CLIENT, sdp(WebRtcPeer(BROWSER).offer()), 0.0)
    assert ports.open_ports == {} and session.legs == []


def test_origin_version_moves_only_when_the_body_changes() -> None:
    """Our o= line: same session id always; version bumped only when the SDP we send changed."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP)
    browser = WebRtcPeer(BROWSER)
    first = session.offer(CLIENT, sdp(browser.offer()), 0.0, 1)
    session.answer(PBX, pbx_answer(), 0.0)
    same = session.offer(CLIENT, sdp(browser.offer()), 1.0, 2)
    held = session.offer(CLIENT, sdp(browser.offer(direction="sendonly")), 2.0, 3)
    assert first.origin.session_id == same.origin.session_id == held.origin.session_id
    assert first.origin.session_version == same.origin.session_version
    assert int(held.origin.session_version) == int(first.origin.session_version) + 1


# --------------------------------------------------------------------------------------- packets


def test_bridge_srtp_to_rtp_and_back() -> None:
    """SRTP from the browser leaves as RTP to the PBX; the PBX's RTP comes back to the browser as SRTP it can decrypt."""
    session, ports, browser, _ = bridge()
    client, pbx = legs(session)
    for seq in range(10):
        client.receive(browser.srtp_packet(seq), BROWSER, 1.0)
    to_pbx = ports.take(PBX_ADDR)
    assert len(to_pbx) == 10 and to_pbx[3] == rtp_packet(3, browser.ssrcs[0])
    for seq in range(10):
        pbx.receive(rtp_packet(seq, 0x9999), PBX_ADDR, 1.0)
    to_browser = ports.take(BROWSER)
    assert browser.srtp is not None and len(to_browser) == 10
    assert browser.srtp.unprotect_rtp(to_browser[5]) == rtp_packet(5, 0x9999)
    assert client.counters.packets == pbx.counters.packets == 10 and client.counters.lost == 0
    assert pbx.tx_packets == client.tx_packets == 10


def test_bridge_sdes_both_ways() -> None:
    """bridge-sdes: DTLS-SRTP from the browser becomes SDES-SRTP for the PBX and back."""
    session, ports, browser, sdes = bridge(Profile.SDES)
    client, pbx = legs(session)
    assert sdes.srtp is not None and browser.srtp is not None
    client.receive(browser.srtp_packet(1), BROWSER, 1.0)
    (to_pbx,) = ports.take(PBX_ADDR)
    assert sdes.srtp.unprotect_rtp(to_pbx) == rtp_packet(1, browser.ssrcs[0])
    pbx.receive(sdes.srtp.protect_rtp(rtp_packet(1, 0x4242)), PBX_ADDR, 1.0)
    (to_browser,) = ports.take(BROWSER)
    assert browser.srtp.unprotect_rtp(to_browser) == rtp_packet(1, 0x4242)


def test_rtcp_is_converted_too_and_goes_to_the_pbx_rtcp_port() -> None:
    """SRTCP from the browser (muxed) leaves as RTCP on our RTCP port toward the PBX's RTP port + 1."""
    session, ports, browser, _ = bridge()
    client, pbx = legs(session)
    assert browser.srtp is not None
    client.receive(browser.srtp.protect_rtcp(rtcp_rr(browser.ssrcs[0])), BROWSER, 1.0)
    assert ports.sent == [(pbx.port + 1, rtcp_rr(browser.ssrcs[0]), (PBX_ADDR[0], PBX_ADDR[1] + 1))]
    ports.sent.clear()
    pbx.receive_rtcp(rtcp_rr(0x9999), (PBX_ADDR[0], PBX_ADDR[1] + 1), 1.0)
    (to_browser,) = ports.take(BROWSER)
    assert browser.srtp.unprotect_rtcp(to_browser) == rtcp_rr(0x9999)


def test_symmetric_latching_on_the_pbx_side() -> None:
    """Media goes to where the PBX sends from (NAT), not to its SDP address; another source cannot take over while it talks."""
    session, ports, browser, _ = bridge()
    client, pbx = legs(session)
    natted = ("192.0.2.50", 41000)
    pbx.receive(rtp_packet(1, 0x9999), natted, 1.0)
    assert pbx.remote == natted
    client.receive(browser.srtp_packet(1), BROWSER, 1.1)
    assert ports.take(natted) and not ports.take(PBX_ADDR)
    attacker = ("203.0.113.66", 5000)
    pbx.receive(rtp_packet(2, 0x6666), attacker, 1.5)
    assert pbx.remote == natted and pbx.counters.dropped == {"foreign-source": 1}
    ports.take(BROWSER)
    pbx.receive(
        rtp_packet(3, 0x6666), attacker, 1.0 + SETTINGS.relatch_after + 0.1
    )  # the old source went silent
    assert pbx.remote == attacker


def test_hostile_input_is_dropped_and_counted_while_the_stream_keeps_flowing() -> None:
    """Garbage, truncated RTP, wrong-ufrag STUN and stray DTLS on both relay ports: dropped and counted; the legit stream is intact."""
    session, ports, browser, _ = bridge()
    client, pbx = legs(session)
    stranger = ("203.0.113.99", 6000)
    assert browser.srtp is not None
    forwarded = 0
    for seq in range(100):
        now = 2.0 + seq * 0.02
        client.receive(browser.srtp_packet(seq), BROWSER, now)
        pbx.receive(rtp_packet(seq, 0x9999), PBX_ADDR, now)
        if seq % 10 == 0:
            client.receive(b"\xff" * 50, stranger, now)  # garbage (first byte outside RFC 7983)
            client.receive(b"", BROWSER, now)  # empty datagram
            client.receive(browser.srtp_packet(seq)[:10], BROWSER, now)  # shorter than an RTP header
            client.receive(
                browser.srtp_packet(seq)[:20], BROWSER, now
            )  # truncated SRTP: fails authentication
            client.receive(b"\x80\x00\x00\x01" + bytes(30), stranger, now)  # RTP from nowhere
            client.receive(browser.check(ufrag="wrong"), stranger, now)  # wrong ufrag -> 401, no consent
            client.receive(bytes([22, 0xFE, 0xFD]) + bytes(40), stranger, now)  # stray DTLS, no consent
            client.receive(bytes([23, 0xFE, 0xFD]) + bytes(40), BROWSER, now)  # bad DTLS record, legit source
            pbx.receive(b"\x80", PBX_ADDR, now)  # 1-byte RTP
            pbx.receive(rtp_packet(seq, 1)[:9], PBX_ADDR, now)  # truncated RTP
            pbx.receive(bytes([0, 1, 0, 0]) + bytes(16), PBX_ADDR, now)  # STUN on an RTP leg
            pbx.receive(bytes([22]) + bytes(30), PBX_ADDR, now)  # DTLS on an RTP leg
            pbx.receive(rtp_packet(seq, 0x6666), stranger, now)  # foreign source
        forwarded += 1
    to_pbx = [d for d in ports.take(PBX_ADDR)]
    to_browser = ports.take(BROWSER)
    assert len(to_pbx) == forwarded and len(to_browser) >= forwarded
    assert browser.srtp.unprotect_rtp(to_browser[-1]) == rtp_packet(99, 0x9999)
    assert client.counters.dropped["garbage"] == 20  # garbage + empty
    assert client.counters.dropped["srtp"] == 10 and client.counters.dropped["truncated"] == 10
    assert client.counters.dropped["no-consent"] == 20  # RTP and DTLS from the stranger
    assert client.counters.dropped["stun-refused"] == 10 and client.ice is not None
    assert client.ice.stats.auth_failures == 10
    assert pbx.counters.dropped["truncated"] == 20
    assert pbx.counters.dropped["stun"] == 10 and pbx.counters.dropped["dtls"] == 10
    assert pbx.counters.dropped["foreign-source"] == 10
    assert client.counters.packets == pbx.counters.packets == 100
    assert session.ended is None and client.dtls is not None and client.dtls.state is DtlsState.CONNECTED


def test_policer_drops_a_flood_from_the_legit_source() -> None:
    """Over the leg's rate the packets are dropped as 'policed' (counted), not forwarded."""
    settings = SessionSettings(
        client_host=PUBLIC,
        pbx_host=PRIVATE,
        rate=1000.0,
        burst=2000.0,
        certificate=edge_dtls_certificate(),
        random_bytes=secrets.token_bytes,
    )
    session, ports, _browser, _ = bridge(settings=settings)
    _client, pbx = legs(session)
    for seq in range(100):
        pbx.receive(rtp_packet(seq, 0x9999), PBX_ADDR, 5.0)
    assert pbx.counters.dropped.get("policed", 0) >= 85
    assert len(ports.take(BROWSER)) == 100 - pbx.counters.dropped["policed"]


# ---------------------------------------------------------------------------------------- timers


def test_idle_timeout_ends_a_session_whose_peer_went_silent() -> None:
    """The PBX stops sending: the session ends at last packet + idle_timeout, not before."""
    session, _ports, browser, _ = bridge()
    client, pbx = legs(session)
    ended: list[str] = []
    session._on_end = lambda s, reason: ended.append(reason)
    now = 1.0
    while now < 20.0:
        client.receive(browser.srtp_packet(int(now * 50)), BROWSER, now)
        pbx.receive(rtp_packet(int(now * 50), 0x9999), PBX_ADDR, now)
        now += 0.02
    last = now
    while now < last + 40.0:  # the PBX went silent; the browser keeps talking (and its consent)
        client.receive(browser.srtp_packet(int(now * 50)), BROWSER, now)
        if int(now * 50) % 250 == 0:
            client.receive(browser.check(), BROWSER, now)
        deadline = session.get_timer()
        assert deadline is not None
        if deadline <= now:
            session.handle_timer(now)
        if ended:
            break
        now += 0.02
    assert ended == ["idle timeout"]
    assert last + SETTINGS.idle_timeout - 0.05 <= now <= last + SETTINGS.idle_timeout + 0.05


def test_consent_loss_ends_the_session() -> None:
    """The browser stops its consent checks (RFC 7675): after 30 s the session ends with 'consent lost'."""
    session, _ports, browser, _ = bridge()
    ended: list[str] = []
    session._on_end = lambda s, reason: ended.append(reason)
    client, pbx = legs(session)
    now = 0.0
    while not ended and now < 60:
        pbx.receive(rtp_packet(int(now * 50), 0x9999), PBX_ADDR, now)
        client.receive(browser.srtp_packet(int(now * 50)), BROWSER, now)  # media alone is no consent
        deadline = session.get_timer()
        if deadline is not None and deadline <= now:
            session.handle_timer(now)
        now += 0.1
    assert ended == ["consent lost"] and 29.5 < now < 31


def test_held_peer_gets_the_hold_timeout() -> None:
    """A PBX that answered recvonly (browser put it on hold) may stay silent for hold_timeout, not idle_timeout."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP)
    browser = WebRtcPeer(BROWSER)
    session.offer(CLIENT, sdp(browser.offer(direction="sendonly")), 0.0)
    session.answer(PBX, pbx_answer(direction="recvonly"), 0.0)
    client, pbx = legs(session)
    assert (client.limit, pbx.limit) == (SETTINGS.idle_timeout, SETTINGS.hold_timeout)


def test_unanswered_offer_times_out() -> None:
    """An offer nobody answers ends the session after offer_timeout (the SIP side normally ends it sooner)."""
    ports = RecordingPorts()
    ended: list[str] = []
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP, on_end=lambda s, r: ended.append(r))
    session.offer(CLIENT, sdp(WebRtcPeer(BROWSER).offer()), 0.0)
    assert session.get_timer() == SETTINGS.offer_timeout
    session.handle_timer(SETTINGS.offer_timeout)
    assert ended == ["offer not answered"]
    session.close()
    assert ports.open_ports == {}


def test_dtls_retransmission_is_driven_by_the_session_timer() -> None:
    """A lost server flight is resent when the session's timer fires (virtual time)."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP)
    browser = WebRtcPeer(BROWSER)
    session.offer(CLIENT, sdp(browser.offer()), 0.0)
    browser.accept(session.answer(PBX, pbx_answer(), 0.0))
    client, _ = legs(session)
    client.receive(browser.check(), BROWSER, 1.0)
    ports.take()
    for data in browser.start_dtls(1.0):
        client.receive(data, BROWSER, 1.0)
    first = ports.take(BROWSER)
    assert first
    deadline = session.get_timer()
    assert deadline is not None and deadline == pytest.approx(2.0)
    session.handle_timer(deadline)
    assert ports.take(BROWSER) == first


# ------------------------------------------------------------------------------ re-INVITE, restart


def test_hold_and_unhold_keep_ports_keys_and_dtls() -> None:
    """Re-offers (sendonly, then sendrecv) keep the legs, the SRTP context and the DTLS association."""
    session, ports, browser, _ = bridge()
    client, pbx = legs(session)
    srtp, dtls, port = client.srtp, client.dtls, pbx.port
    held = session.offer(CLIENT, sdp(browser.offer(direction="sendonly")), 5.0, 2)
    assert held.media[0].direction == "sendonly" and held.media[0].port == port
    session.answer(PBX, pbx_answer(direction="recvonly"), 5.0)
    session.offer(CLIENT, sdp(browser.offer()), 6.0, 3)
    back = session.answer(PBX, pbx_answer(), 6.0)
    assert (
        back.transport(0).ice is not None
        and back.transport(0).ice.ufrag == session.ice_credentials[CLIENT][0]
    )
    assert client.srtp is srtp and client.dtls is dtls and legs(session) == (client, pbx)
    client.receive(browser.srtp_packet(500), BROWSER, 6.1)
    assert ports.take(PBX_ADDR) == [rtp_packet(500, browser.ssrcs[0])]


def test_ice_restart_with_the_same_certificate_keeps_dtls_and_switches_address() -> None:
    """New ufrag/pwd: new local credentials in our answer; old path works until the peer nominates under the new ones."""
    session, ports, browser, _ = bridge()
    client, _pbx = legs(session)
    old_ufrag, old_pwd = browser.edge_ufrag, browser.edge_pwd
    srtp = client.srtp
    browser.ufrag, browser.pwd = "restart1", "restartpassword012345678"
    session.offer(CLIENT, sdp(browser.offer()), 10.0, 2)
    back = session.answer(PBX, pbx_answer(), 10.0)
    browser.accept(back)
    assert browser.edge_ufrag != old_ufrag
    client.receive(browser.srtp_packet(600), BROWSER, 10.1)  # still flowing on the old pair
    assert ports.take(PBX_ADDR)
    moved = ("198.51.100.7", 50002)
    client.receive(
        browser.check(ufrag=old_ufrag, pwd=old_pwd), moved, 10.2
    )  # old credentials from a new place:
    assert client.remote == BROWSER  # answered, but selects nothing new
    ports.take()
    client.receive(browser.check(), moved, 10.3)
    assert client.remote == moved and client.srtp is srtp
    client.receive(browser.srtp_packet(601), moved, 10.4)
    assert ports.take(PBX_ADDR) == [rtp_packet(601, browser.ssrcs[0])]


def test_new_fingerprint_starts_a_new_dtls_association_without_dropping_the_call() -> None:
    """A re-offer with a new certificate: new DTLS association; old keys serve until the new handshake completes."""

    session, ports, browser, _ = bridge()
    client, pbx = legs(session)
    old_srtp, old_dtls = client.srtp, client.dtls
    new = WebRtcPeer(("198.51.100.7", 50010), certificate=dtls_certificate("new"))
    session.offer(CLIENT, sdp(new.offer()), 20.0, 2)
    new.accept(session.answer(PBX, pbx_answer(), 20.0))
    assert client.dtls is not old_dtls and client.srtp is old_srtp
    client.receive(browser.srtp_packet(700), BROWSER, 20.1)  # the old association still carries media
    assert ports.take(PBX_ADDR)
    handshake(session, ports, new, 20.2, addr=new.addr)
    assert client.srtp is not old_srtp and client.remote == new.addr
    client.receive(new.srtp_packet(1), new.addr, 20.3)
    assert ports.take(PBX_ADDR) == [rtp_packet(1, new.ssrcs[0])]
    client.receive(browser.srtp_packet(701), BROWSER, 20.4)  # old keys no longer accepted
    assert client.counters.dropped.get("srtp") == 1
    pbx.receive(rtp_packet(9, 0x9999), PBX_ADDR, 20.5)
    (to_new,) = ports.take(new.addr)
    assert new.srtp is not None and new.srtp.unprotect_rtp(to_new) == rtp_packet(9, 0x9999)


def test_stray_dtls_of_an_old_association_does_not_kill_the_new_one() -> None:
    """Before the new handshake, a non-ClientHello record (e.g. the old peer's alert) is dropped as stray."""

    session, _ports, _browser, _ = bridge()
    client, _ = legs(session)
    new = WebRtcPeer(BROWSER, certificate=dtls_certificate("new2"))
    session.offer(CLIENT, sdp(new.offer()), 20.0, 2)
    session.answer(PBX, pbx_answer(), 20.0)
    client.receive(bytes([21, 0xFE, 0xFD]) + bytes(8) + b"\x00\x02\x02\x28", BROWSER, 20.1)  # an alert record
    assert client.counters.dropped == {"dtls-stray": 1} and session.ended is None


# --------------------------------------------------------------------------------------- bundle


def test_bundled_audio_and_video_route_to_separate_pbx_legs() -> None:
    """One bundled browser port, two PBX legs: packets route by SSRC (and payload type), replies all go to the browser."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP)
    browser = WebRtcPeer(BROWSER, kinds=("audio", "video"))
    out = session.offer(CLIENT, sdp(browser.offer()), 0.0, 1)
    assert [m.proto for m in out.media] == ["RTP/AVP", "RTP/AVP"] and out.media[0].port != out.media[1].port
    answer = sdp(
        "v=0\r\no=pbx 1 1 IN IP4 10.1.0.10\r\ns=-\r\nc=IN IP4 10.1.0.10\r\nt=0 0\r\n"
        "m=audio 30000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\nm=video 30002 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"
    )
    browser.accept(session.answer(PBX, answer, 0.0))
    client = session.mline_legs[CLIENT][0]
    assert client is not None and session.mline_legs[CLIENT][1] is client and client.router is not None
    handshake(session, ports, browser, 0.1)
    client.receive(browser.srtp_packet(1, index=0), BROWSER, 1.0)
    client.receive(browser.srtp_packet(1, index=1), BROWSER, 1.0)
    client.receive(browser.srtp_packet(2, index=1), BROWSER, 1.0)
    assert [(p, a) for p, _, a in ports.sent] == [
        (out.media[0].port, ("10.1.0.10", 30000)),
        (out.media[1].port, ("10.1.0.10", 30002)),
        (out.media[1].port, ("10.1.0.10", 30002)),
    ]


def test_pbx_downgrade_to_plain_rtp_is_followed() -> None:
    """A client answering our WebRTC offer with plain RTP/AVP: the client leg becomes an RTP leg (no ICE, no SRTP)."""
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP, client_profile=Profile.WEBRTC)
    session.offer(PBX, pbx_offer(), 0.0)
    plain = "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0\r\n"
    back = session.answer(CLIENT, sdp(plain), 0.0)
    client, _pbx = legs(session)
    assert back.media[0].proto == "RTP/AVP" and client.profile is Profile.RTP and client.ice is None
    client.receive(rtp_packet(1, 0x1234), BROWSER, 1.0)
    assert ports.take(PBX_ADDR) == [rtp_packet(1, 0x1234)]


def test_srtp_protect_failure_is_a_counted_drop_not_an_exception() -> None:
    """The PBX's sequence numbers jump far back: libsrtp refuses to protect ('index too old'); counted, never raised."""
    session, ports, _browser, _ = bridge()
    client, pbx = legs(session)
    for i, seq in enumerate((40000, 40001, 40002, 30000, 30001)):
        pbx.receive(rtp_packet(seq, 0x9999), PBX_ADDR, 1.0 + i * 0.02)
    assert len(ports.take(BROWSER)) == 3 and client.counters.dropped == {"srtp-protect": 2}


def test_junk_from_a_new_source_never_moves_the_latch() -> None:
    """Before the PBX's first packet, junk (1-byte RTP, bad SRTP) from an attacker does not latch; the PBX's real packet does."""
    session, _ports, _browser, sdes = bridge(Profile.SDES)
    _client, pbx = legs(session)
    attacker = ("203.0.113.66", 5000)
    assert sdes.srtp is not None
    for i in range(20):
        pbx.receive(b"\x80", attacker, 1.0 + i * 0.1)
        pbx.receive(rtp_packet(i, 0x6666), attacker, 1.0 + i * 0.1)  # not SRTP: fails authentication
    assert pbx.remote == PBX_ADDR and pbx.counters.packets == 0
    natted = ("192.0.2.50", 41000)
    pbx.receive(sdes.srtp.protect_rtp(rtp_packet(1, 0x4242)), natted, 3.0)
    assert pbx.remote == natted and pbx.counters.packets == 1
    assert pbx.counters.dropped == {"truncated": 20, "srtp": 20}
