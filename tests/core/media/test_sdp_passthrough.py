"""Passthrough SDP written in place (``passthrough_body``, ``MediaSession.offer_body``/``answer_body``)
gives the same bytes and the same decisions as the model writers (``rewrite_offer``/``rewrite_answer``,
``MediaSession.offer``/``answer``), on captured SDPs and on generated variants of them."""

from __future__ import annotations

import random
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.legports import RecordingPorts
from helpers.webrtc_peer import WebRtcPeer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.media import sdp as sdp_module
from mcs_edge.core.media.sdp import Candidate, MediaTransport, Profile, SessionDescription, detect_profile
from mcs_edge.core.media.sdp_rewrite import (
    LocalLeg,
    RelayAddress,
    passthrough_body,
    rewrite_answer,
    rewrite_offer,
)
from mcs_edge.core.media.session import CLIENT, PBX, MediaSession, SessionSettings
from mcs_edge.errors import EdgeError, LocalProtocolError, RemoteProtocolError

DATA = Path(__file__).parent.parent.parent / "data" / "sdp"

#: A baresip 1.x offer with ICE (the mobile-app shape: plain RTP, RTCP on its own port, candidates).
BARESIP_OFFER = (
    "v=0\r\no=- 2890844526 2890844527 IN IP4 192.0.2.30\r\ns=-\r\nc=IN IP4 192.0.2.30\r\nt=0 0\r\n"
    "a=tool:baresip 1.0.0\r\na=ice-ufrag:Bs7k\r\na=ice-pwd:4f1c7e2b9a0d3e5f6a7b8c9d\r\n"
    "m=audio 10000 RTP/AVP 0 8 101\r\nb=AS:64\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=rtcp:10001\r\na=sendrecv\r\na=label:1\r\n"
    "a=ssrc:305419896 cname:baresip@example\r\n"
    "a=candidate:1 1 UDP 2130706431 192.0.2.30 10000 typ host\r\n"
    "a=candidate:1 2 UDP 2130706430 192.0.2.30 10001 typ host\r\n"
    "a=candidate:2 1 UDP 1694498815 198.51.100.9 41000 typ srflx raddr 192.0.2.30 rport 10000\r\n"
)
#: The plain RTP offer and answer of bench/bench_latency.py and bench/bench_call_setup.py.
PLAIN = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)


def _captured() -> dict[str, str]:
    out = {p.name: p.read_text() for p in sorted(DATA.glob("*.sdp"))}
    out.update({"expected/" + p.name: p.read_text() for p in sorted((DATA / "expected").glob("*.sdp"))})
    out["baresip_offer"] = BARESIP_OFFER
    # ICE credentials at both levels (the media level's win), a session-level fingerprint and setup
    out["baresip_offer_both_levels"] = BARESIP_OFFER.replace(
        "a=label:1\r\n", "a=label:1\r\na=ice-ufrag:Mm1x\r\na=ice-pwd:mediapassword0123456789\r\n"
    ).replace(
        "t=0 0\r\n", "t=0 0\r\na=setup:actpass\r\na=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n"
    )
    out["plain"] = PLAIN
    out["webrtc_peer_av"] = WebRtcPeer(("198.51.100.7", 50000), kinds=("audio", "video")).offer()
    out["webrtc_peer_unbundled"] = WebRtcPeer(("198.51.100.7", 50000)).offer(bundle=False)
    return out


CAPTURED = _captured()
NAMES = sorted(CAPTURED)


def _tail(sdp: SessionDescription) -> str:
    return sdp.serialize().split("\r\n", 2)[2]


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except EdgeError as exc:
        return type(exc)


# ------------------------------------------------------------------------------- variants


def _variant(text: str, draw: Callable[[Any], Any]) -> str:
    """``text`` with a few of the changes the writers treat differently (lines added, removed,
    moved, ports zeroed, c= lines at either level, LF line ends, blank lines)."""
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    edits = draw(st.lists(st.integers(0, 10), max_size=6))
    for edit in edits:
        if len(lines) <= 3:
            break
        pos = draw(st.integers(3, len(lines) - 1))
        if edit == 0:
            del lines[pos]
        elif edit == 1:
            lines.insert(pos, draw(st.sampled_from(EXTRA_LINES)))
        elif edit == 2 and lines[pos].startswith("m="):
            parts = lines[pos].split(" ")
            parts[1] = draw(st.sampled_from(("0", "0/2", "9", "5004/2")))
            lines[pos] = " ".join(parts)
        elif edit == 3:
            lines.insert(pos, lines[draw(st.integers(3, len(lines) - 1))])
        elif edit == 4:
            lines = [line for line in lines if not line.startswith("c=")]
        elif edit == 5:
            lines.insert(pos, "c=IN IP6 2001:db8::7")
        elif edit == 6:
            lines.insert(pos, "m=" + draw(st.sampled_from(EXTRA_M_LINES)))
        elif edit == 7:
            lines.insert(pos, "")
        elif edit == 8:
            lines.insert(pos, draw(st.sampled_from(("i=info", "b=AS:30", "k=prompt"))))
        elif edit == 9:
            lines[pos] = lines[pos].replace("candidate", "remote-candidates", 1)
        else:
            lines.insert(pos, draw(st.sampled_from(SESSION_OR_MEDIA)))
    sep = draw(st.sampled_from(("\r\n", "\n")))
    return sep.join(lines) + sep


EXTRA_LINES = (
    "a=candidate:9 1 udp 100 203.0.113.99 7000 typ relay raddr 0.0.0.0 rport 0",
    "a=candidate:9 2 tcp 100 2001:db8::9 7001 typ host",
    "a=ice-ufrag:Zz9y",
    "a=ice-pwd:abcdefghijklmnopqrstuv",
    "a=end-of-candidates",
    "a=rtcp:40001",
    "a=rtcp-mux",
    "a=mid:extra",
    "a=bundle-only",
    "a=sendonly",
    "a=inactive",
    "a=group:BUNDLE 0 1",
    "c=IN IP4 198.51.100.200",
    "c=IN IP4 0.0.0.0",
    "b=TIAS:64000",
    "a=flag",
    "a=rtcp:abc",
    "a=setup:bogus",
)
SESSION_OR_MEDIA = (
    "a=bundle-only",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=x:",
    "a=ice-lite",
    "a=setup:passive",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 40,
    "a=ice-ufrag:",
    "a=mid",
    "a=recvonly",
)
EXTRA_M_LINES = (
    "audio 30000 RTP/AVP 0",
    "video 0 RTP/AVP 96",
    "application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "image 40010 udptl t38",
    "audio 30000/2 RTP/SAVP 0 8",
)


def _relays(draw: Callable[[Any], Any], n: int) -> tuple[RelayAddress | None, ...]:
    hosts = st.sampled_from(("10.20.0.1", "203.0.113.10", "2001:db8::1"))
    relay = st.builds(
        RelayAddress,
        hosts,
        st.integers(1024, 65534),
        st.one_of(st.none(), st.integers(1024, 65535)),
    )
    return tuple(draw(st.lists(st.one_of(st.none(), relay, relay), min_size=n, max_size=n)))


# ----------------------------------------------------------------------- the writers alone


@pytest.mark.parametrize("name", NAMES)
def test_passthrough_body_is_the_model_writers_text_on_captured_sdps(name: str) -> None:
    """Every captured SDP, as offer and as answer to each captured SDP with as many m-lines: same text."""
    sdp = SessionDescription.parse(CAPTURED[name])
    n = len(sdp.media)
    for relays in (
        tuple(RelayAddress("10.20.0.1", 40000 + 2 * i) for i in range(n)),
        tuple(RelayAddress("2001:db8::1", 40000 + 2 * i, 40001 + 2 * i) if i else None for i in range(n)),
        tuple(RelayAddress(("10.20.0.1", "2001:db8::1")[i % 2], 40000 + 2 * i, 40001) for i in range(n)),
    ):
        leg = LocalLeg(Profile.PASSTHROUGH, relays)
        assert passthrough_body(sdp, relays) == _tail(rewrite_offer(sdp, leg))
        for other in NAMES:
            offer = SessionDescription.parse(CAPTURED[other])
            if len(offer.media) == n:
                assert passthrough_body(sdp, relays, offer) == _tail(rewrite_answer(sdp, offer, leg))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_passthrough_body_matches_the_model_writers_on_variants(data: st.DataObject) -> None:
    """Generated variants of captured SDPs and random relays: the same text, or the same error, both ways."""
    draw = data.draw
    text = _variant(CAPTURED[draw(st.sampled_from(NAMES))], draw)
    try:
        sdp = SessionDescription.parse(text)
    except EdgeError:
        return  # refused before either writer runs
    relays = _relays(draw, len(sdp.media) + draw(st.sampled_from((0, 0, 0, 1))))
    leg = LocalLeg(Profile.PASSTHROUGH, relays)
    model = _outcome(lambda: _tail(rewrite_offer(sdp, leg)))
    assert _outcome(lambda: passthrough_body(sdp, relays)) == model
    other_text = _variant(CAPTURED[draw(st.sampled_from(NAMES))], draw)
    try:
        offer = SessionDescription.parse(other_text)
    except EdgeError:
        return
    model = _outcome(lambda: _tail(rewrite_answer(sdp, offer, leg)))
    assert _outcome(lambda: passthrough_body(sdp, relays, offer)) == model


def test_passthrough_body_refuses_what_the_model_writers_refuse() -> None:
    """Relay addresses that do not match the m-lines, or an answer with another number of m-lines:
    both writers raise the same error."""
    one = SessionDescription.parse(PLAIN)
    two = SessionDescription.parse(CAPTURED["asterisk_answer_rtp_video.sdp"])
    relay = (RelayAddress("10.20.0.1", 40000),)
    for sdp, relays, offer in ((one, (), None), (one, relay, two), (two, relay * 2, one), (two, relay, one)):
        leg = LocalLeg(Profile.PASSTHROUGH, relays)
        if offer is None:
            model = _outcome(lambda: rewrite_offer(sdp, leg))  # noqa: B023
        else:
            model = _outcome(lambda: rewrite_answer(sdp, offer, leg))  # noqa: B023
        assert model in (LocalProtocolError, RemoteProtocolError)
        assert _outcome(lambda: passthrough_body(sdp, relays, offer)) is model  # noqa: B023


# --------------------------------------------------------------------- whole sessions, both ways


def _settings(seed: int) -> SessionSettings:
    rng = random.Random(seed)
    return SessionSettings(
        client_host="203.0.113.10",
        pbx_host="10.0.0.5",
        certificate=CERTIFICATE,
        random_bytes=lambda n: rng.randbytes(n),
    )


CERTIFICATE = edge_dtls_certificate()


def _leg_state(session: MediaSession) -> list[tuple[Any, ...]]:
    out = []
    for leg in session.legs:
        gate = leg.gate
        out.append(
            (
                leg.side,
                leg.index,
                leg.port,
                leg.rtcp_port,
                leg.remote,
                leg.sdp_remote,
                leg.remote_rtcp,
                leg.limit,
                leg.target.port if leg.target is not None else None,
                sorted(leg.route_map),
                leg.router is not None,
                gate.credentials if gate is not None else None,
            )
        )
    return out


def _step(
    session: MediaSession, kind: str, side: Any, sdp: SessionDescription, now: float, as_bytes: bool
) -> bytes:
    if kind == "offer":
        if as_bytes:
            return session.offer_body(side, sdp, now, now)
        return bytes(session.offer(side, sdp, now, now))
    if as_bytes:
        return session.answer_body(side, sdp, now)
    return bytes(session.answer(side, sdp, now))


def _run(session: MediaSession, steps: list[tuple[str, Any, str]], as_bytes: bool) -> list[Any]:
    out: list[Any] = []
    for i, (kind, side, text) in enumerate(steps):
        try:
            sdp = SessionDescription.parse(text)
        except EdgeError as exc:
            out.append(type(exc))  # refused before the session sees it (the anchor answers 488)
            continue
        out.append(_outcome(lambda: _step(session, kind, side, sdp, float(i), as_bytes)))  # noqa: B023
        out.append(_leg_state(session))
        out.append((session.pending_offer_side, session.established, session.profiles))
    return out


def _both_ways(steps: list[tuple[str, Any, str]], seed: int = 7) -> list[Any]:
    results = []
    for as_bytes in (False, True):
        session = MediaSession("c", _settings(seed), RecordingPorts(), pbx_profile=Profile.PASSTHROUGH)
        results.append(_run(session, steps, as_bytes))
        session.close()
    assert results[0] == results[1]
    return results[1]


def _pairs() -> list[tuple[str, str]]:
    """Each captured SDP as offer, answered by up to three captured SDPs with as many m-lines."""
    count = {name: len(SessionDescription.parse(text).media) for name, text in CAPTURED.items()}
    out = []
    for offer in NAMES:
        answers = [a for a in NAMES if count[a] == count[offer]]
        start = NAMES.index(offer) % len(answers)
        out += [(offer, a) for a in (answers[start:] + answers[:start])[:3]]
    return out


@pytest.mark.parametrize(("offer", "answer"), _pairs())
def test_session_bodies_are_the_model_path_bytes_and_state(offer: str, answer: str) -> None:
    """A passthrough session fed the same offer/answer (and a re-offer) through ``offer_body``/
    ``answer_body`` or ``offer``/``answer``: the same bytes out, the same legs, remotes and routes."""
    o, a = CAPTURED[offer], CAPTURED[answer]
    out = _both_ways(
        [
            ("offer", CLIENT, o),
            ("answer", PBX, a),
            ("offer", PBX, a),
            ("answer", CLIENT, o),
            ("offer", CLIENT, o),
        ]
    )
    assert isinstance(out[0], bytes) and isinstance(out[3], bytes)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_session_bodies_match_on_variants(data: st.DataObject) -> None:
    """Generated offers, answers and re-offers: same bytes or the same refusal, same state after each."""
    draw = data.draw
    steps = []
    side = draw(st.sampled_from((CLIENT, PBX)))
    for _ in range(draw(st.integers(2, 4))):
        text = _variant(CAPTURED[draw(st.sampled_from(NAMES))], draw)
        steps.append(("offer", side, text))
        steps.append(("answer", 1 - side, _variant(CAPTURED[draw(st.sampled_from(NAMES))], draw)))
        side = draw(st.sampled_from((CLIENT, PBX)))
    _both_ways([(k, CLIENT if s == CLIENT else PBX, t) for k, s, t in steps], seed=secrets.randbelow(1000))


def test_origin_version_moves_the_same_way() -> None:
    """The o= version moves only when the body changed, in both writers (same re-offers, same versions)."""
    held = PLAIN.replace("a=sendrecv", "a=sendonly")
    out = _both_ways(
        [("offer", CLIENT, PLAIN), ("answer", PBX, PLAIN), ("offer", CLIENT, PLAIN), ("offer", CLIENT, held)]
    )
    versions = [SessionDescription.parse(b).origin.session_version for b in out[0::3] if isinstance(b, bytes)]
    assert versions == ["1", "1", "1", "2"]


# ------------------------------------------------------------------ transport() in one pass


def _transport_by_properties(sdp: SessionDescription, index: int) -> MediaTransport:
    """``SessionDescription.transport`` as it was written before the one-pass version: each value
    read through its property (the reference the one-pass reading must agree with)."""
    m = sdp.media[index]
    conn = m.connection or sdp.connection
    address = conn.address.split("/")[0] if conn is not None else None
    rtcp = m.rtcp
    mux = m.rtcp_mux
    rtcp_port: int | None
    rtcp_address = address
    if m.rejected or mux:
        rtcp_port = None
    elif rtcp is not None:
        rtcp_port = rtcp.port
        if rtcp.connection is not None:
            rtcp_address = rtcp.connection.address
    else:
        rtcp_port = m.port + 1
    formats = tuple(int(f) for f in m.formats if re.fullmatch(r"[0-9]{1,10}", f) and int(f) <= 127)
    return MediaTransport(
        index=index,
        media=m.media,
        proto=m.proto,
        profile=detect_profile(m),
        rejected=m.rejected,
        mid=m.mid,
        address=address,
        port=m.port,
        rtcp_address=rtcp_address if rtcp_port is not None else None,
        rtcp_port=rtcp_port,
        rtcp_mux=mux,
        ice=m.ice_credentials or sdp.ice_credentials,
        ice_lite=sdp.has("ice-lite") or m.has("ice-lite"),
        candidates=m.candidates,
        fingerprints=m.fingerprints or sdp.fingerprints,
        setup=m.setup if m.setup is not None else sdp.get("setup"),
        cryptos=m.cryptos,
        payload_types=formats,
        direction=m.direction,
    )


@pytest.mark.parametrize("name", NAMES)
def test_transport_reads_what_the_properties_read_on_captured_sdps(name: str) -> None:
    """Every m-line of every captured SDP: the one-pass transport equals the property-by-property one."""
    sdp = SessionDescription.parse(CAPTURED[name])
    for i in range(len(sdp.media)):
        assert sdp.transport(i) == _transport_by_properties(sdp, i)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_transport_reads_what_the_properties_read_on_variants(data: st.DataObject) -> None:
    """Generated variants (session/media fallbacks, duplicates, flags, rejected lines): the same transports."""
    text = _variant(CAPTURED[data.draw(st.sampled_from(NAMES))], data.draw)
    try:
        sdp = SessionDescription.parse(text)
    except EdgeError:
        return
    for i in range(len(sdp.media)):
        assert sdp.transport(i) == _transport_by_properties(sdp, i)


# ------------------------------------------------------------ lines shared between descriptions


@pytest.mark.parametrize("name", NAMES)
def test_parse_with_shared_lines_equals_a_fresh_parse(name: str) -> None:
    """A description parsed while the shared attributes/lines are warm equals one parsed from empty tables."""
    warm = SessionDescription.parse(CAPTURED[name])
    sdp_module._SHARED_ATTRIBUTES.clear()
    sdp_module._SHARED_LINES.clear()
    cold = SessionDescription.parse(CAPTURED[name])
    assert warm == cold and warm.serialize() == cold.serialize()
    assert SessionDescription.parse(CAPTURED[name]) == cold


def test_shared_lines_stay_bounded_and_keep_per_call_values_out() -> None:
    """Many SDPs with per-call attributes and lines: the shared tables never pass their bound, candidates
    and credentials are never kept, long values are not kept, and a malformed value is still refused."""
    for i in range(6000):
        text = PLAIN.replace(
            "a=sendrecv", f"a=sendrecv\r\na=x-call:{i}\r\na=ice-ufrag:u{i}\r\na=ice-pwd:p{i:022d}"
        )
        SessionDescription.parse(text.replace("127.0.0.1\r\nt=", f"10.{i // 256 % 256}.{i % 256}.1\r\nt="))
        assert len(sdp_module._SHARED_ATTRIBUTES) <= sdp_module._MAX_SHARED
        assert len(sdp_module._SHARED_LINES) <= sdp_module._MAX_SHARED
    SessionDescription.parse(PLAIN.replace("a=sendrecv", "a=x-long:" + "y" * 500))
    kept = {a.name for a in sdp_module._SHARED_ATTRIBUTES.values()}
    assert not kept & {"ice-ufrag", "ice-pwd", "candidate"} and "x-long" not in kept
    SessionDescription.parse(PLAIN.replace("a=sendrecv", "a=rtpmap:0 PCMU/8000"))
    with pytest.raises(RemoteProtocolError):
        SessionDescription.parse(PLAIN.replace("a=sendrecv", "a=rtpmap:0 PCMU"))


def test_candidates_and_fingerprints_read_again_are_the_parsed_ones_and_stay_bounded() -> None:
    """transport() reads candidates and fingerprints parsed moments before (equal values); thousands
    of distinct candidates keep the table within its bound; a bad one is refused every time."""
    sdp_module._CANDIDATES.clear()
    sdp = SessionDescription.parse(CAPTURED["jssip_chromium_offer.sdp"])
    assert sdp.transport(0).candidates == tuple(Candidate.parse(v) for v in sdp.media[0].get_all("candidate"))
    for i in range(3000):
        line = f"a=candidate:1 1 udp 2130706431 10.1.{i // 256 % 256}.{i % 256} {1024 + i} typ host"
        SessionDescription.parse(PLAIN + line + "\r\n")
        assert len(sdp_module._CANDIDATES) <= sdp_module._MAX_TYPED
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            SessionDescription.parse(PLAIN + "a=candidate:1 1 udp 2130706431 10.1.1.1 99999 typ host\r\n")
