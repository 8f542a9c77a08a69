"""SDP parsing, typed attribute views and byte-exact serialisation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcs_edge.core.media.sdp import (
    Attribute,
    Candidate,
    Connection,
    Crypto,
    Fingerprint,
    Group,
    IceCredentials,
    Line,
    MediaDescription,
    Origin,
    Profile,
    RtcpAttribute,
    RtpMap,
    SessionDescription,
)
from mcs_edge.errors import RemoteProtocolError

DATA = Path(__file__).parent.parent.parent / "data" / "sdp"
FIXTURES = sorted(p.name for p in DATA.glob("*.sdp")) + sorted(
    "expected/" + p.name for p in (DATA / "expected").glob("*.sdp")
)


def load(name: str) -> SessionDescription:
    return SessionDescription.parse((DATA / name).read_bytes())


@pytest.mark.parametrize("name", FIXTURES)
def test_round_trip_byte_exact(name: str) -> None:
    """Every fixture serialises back to exactly the same bytes."""
    data = (DATA / name).read_bytes()
    assert bytes(SessionDescription.parse(data)) == data
    assert bytes(SessionDescription.parse(data.decode())) == data


def test_lf_only_input_is_accepted_and_written_with_crlf() -> None:
    """Bare-LF input parses; output always uses CRLF."""
    data = (DATA / "asterisk_answer_rtp.sdp").read_bytes()
    assert bytes(SessionDescription.parse(data.replace(b"\r\n", b"\n"))) == data


def test_chromium_offer_fields() -> None:
    """Session and media fields of a Chromium max-bundle offer are exposed."""
    sdp = load("chromium_offer_max_bundle.sdp")
    assert sdp.origin == Origin("-", "4611731400430051336", "2", "IN", "IP4", "127.0.0.1")
    assert sdp.bundle_group == Group("BUNDLE", ("0", "1"))
    audio, video = sdp.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 9, "UDP/TLS/RTP/SAVPF")
    assert audio.formats == ("111", "63", "9", "0", "8", "13", "110", "126")
    assert audio.rtpmaps[111] == RtpMap(111, "opus", 48000, 2)
    assert audio.rtpmaps[0] == RtpMap(0, "PCMU", 8000)
    assert audio.mid == "0" and video.mid == "1"
    assert audio.rtcp == RtcpAttribute(9, Connection("0.0.0.0"))
    t = sdp.transport(0)
    assert t.profile is Profile.WEBRTC and t.rtcp_mux and t.rtcp_port is None
    assert t.ice == IceCredentials("yJ3a", "fG7d0Kx2s4LmN8pQ1rT5vW9z")
    assert t.setup == "actpass" and t.fingerprints[0].algorithm == "sha-256"
    assert len(t.fingerprints[0].digest) == 32
    assert t.address == "0.0.0.0" and t.direction == "sendrecv"
    assert video.get_all("ssrc-group") == ["FID 2864950181 1187347021"]


def test_firefox_session_level_fingerprint() -> None:
    """Firefox puts the fingerprint at session level; transport() falls back to it."""
    sdp = load("firefox_offer.sdp")
    assert sdp.media[0].fingerprints == ()
    assert sdp.transport(0).fingerprints == sdp.fingerprints and len(sdp.fingerprints) == 1
    assert sdp.media[0].rtpmaps[9] == RtpMap(9, "G722", 8000, 1)


def test_jssip_candidates() -> None:
    """Host, srflx (raddr/rport), tcp and mDNS candidates parse and re-serialise."""
    sdp = load("jssip_chromium_offer.sdp")
    cands = sdp.transport(0).candidates
    assert [c.type for c in cands] == ["host", "srflx", "host", "host"]
    srflx = cands[1]
    assert (srflx.address, srflx.port, srflx.related_address, srflx.related_port) == (
        "198.51.100.23",
        54012,
        "192.168.1.34",
        54012,
    )
    assert ("tcptype", "active") in cands[2].extensions
    assert cands[3].address.endswith(".local")
    assert [str(c) for c in cands] == sdp.media[0].get_all("candidate")


def test_session_level_connection_and_rtcp() -> None:
    """c= at session level and a=rtcp give the far end's RTP and RTCP addresses."""
    t = load("freeswitch_offer_rtp.sdp").transport(0)
    assert (t.address, t.port, t.rtcp_address, t.rtcp_port, t.rtcp_mux) == (
        "10.20.0.6",
        24680,
        "10.20.0.6",
        24681,
        False,
    )
    t2 = load("asterisk_answer_rtp.sdp").transport(0)
    assert (t2.rtcp_port, t2.profile) == (17333, Profile.RTP)


def test_rejected_stream() -> None:
    """Port 0 marks a rejected stream; it has no RTCP port."""
    sdp = load("asterisk_answer_rtp.sdp")
    assert sdp.media[1].rejected and sdp.transport(1).rejected and sdp.transport(1).rtcp_port is None


def test_sdes_crypto_lines() -> None:
    """a=crypto: tag, suite, key||salt, lifetime and MKI."""
    cryptos = load("asterisk_offer_sdes.sdp").transport(0).cryptos
    assert [(c.tag, c.suite, len(c.key)) for c in cryptos] == [
        (1, "AEAD_AES_128_GCM", 28),
        (2, "AES_CM_128_HMAC_SHA1_80", 30),
        (3, "AES_CM_128_HMAC_SHA1_32", 30),
    ]
    assert cryptos[1].lifetime == "2^31" and cryptos[1].mki == (1, 4)
    assert cryptos[0].lifetime is None and cryptos[0].mki is None
    assert load("asterisk_offer_sdes.sdp").transport(0).profile is Profile.SDES


@pytest.mark.parametrize(
    "value",
    [
        "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32",
        "1 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUxCcnQ3SnlEYnJEN0dpQnJNdnRDQ2NE|1048576",
        "9 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR UNENCRYPTED_SRTCP",
        "2 FUTURE_SUITE inline:AAAA",
    ],
)
def test_crypto_round_trip(value: str) -> None:
    """Crypto values (RFC 4568 examples) re-serialise exactly."""
    assert str(Crypto.parse(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        "x AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
        "1 AES_CM_128_HMAC_SHA1_80 inline:short",
        "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!",
        "1 AES_CM_128_HMAC_SHA1_80 uri:http://example.com/key",
        "1 AES_CM_128_HMAC_SHA1_80",
        "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|1:4|2^20",
        "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|1|2|3",
    ],
)
def test_crypto_invalid(value: str) -> None:
    """Malformed a=crypto values raise RemoteProtocolError(488)."""
    with pytest.raises(RemoteProtocolError) as info:
        Crypto.parse(value)
    assert info.value.status_hint == 488


def test_fingerprint() -> None:
    """Fingerprints parse case-insensitively and check the digest length."""
    fp = Fingerprint.from_digest("SHA-256", bytes(range(32)))
    assert fp.algorithm == "sha-256" and Fingerprint.parse(str(fp)) == fp and fp.digest == bytes(range(32))
    with pytest.raises(RemoteProtocolError):
        Fingerprint.parse("sha-256 AB:CD")
    with pytest.raises(RemoteProtocolError):
        Fingerprint.parse("sha-256 not-hex")


def test_candidate_round_trip() -> None:
    """A candidate with raddr/rport and extensions re-serialises exactly."""
    v = "1606961068 1 udp 1686052607 198.51.100.23 54012 typ srflx raddr 192.168.1.34 rport 54012 generation 0"
    assert str(Candidate.parse(v)) == v


@pytest.mark.parametrize(
    "value",
    [
        "1 1 udp 1 1.2.3.4 5 host",
        "1 x udp 1 1.2.3.4 5 typ host",
        "1 1 udp 1 1.2.3.4 99999 typ host",
        "1 1 udp 1 1.2.3.4 5 typ host generation",
    ],
)
def test_candidate_invalid(value: str) -> None:
    """Malformed candidates raise RemoteProtocolError(488)."""
    with pytest.raises(RemoteProtocolError):
        Candidate.parse(value)


def test_build_and_edit() -> None:
    """Descriptions can be built from values, edited and serialised."""
    m = MediaDescription("audio", 4000, "RTP/AVP", ("0",), attributes=(Attribute("rtpmap", "0 PCMU/8000"),))
    sdp = SessionDescription(Origin("-", "1", "1", "IN", "IP4", "192.0.2.1"), media=(m,))
    sdp = sdp.with_connection(Connection.for_host("192.0.2.1")).with_attributes(Attribute("ice-lite"))
    text = str(sdp)
    assert text == (
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=ice-lite\r\n"
        "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    assert SessionDescription.parse(text) == sdp
    assert sdp.without("ice-lite").attributes == ()
    m2 = m.with_connection(Connection.for_host("2001:db8::1")).with_attributes(Attribute("rtcp-mux"))
    assert m2.lines == (Line("c", "IN IP6 2001:db8::1"),) and m2.rtcp_mux
    assert m2.without("rtcp-mux", "rtpmap").attributes == ()


def test_direction_and_port_count() -> None:
    """The last direction attribute wins; m= port counts round-trip."""
    text = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 4000/2 RTP/AVP 0\r\na=sendonly\r\n"
    sdp = SessionDescription.parse(text)
    assert sdp.media[0].port_count == 2 and sdp.media[0].direction == "sendonly"
    assert str(sdp) == text
    assert sdp.transport(0).address is None


BASE = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v=0\r\n",
        "v=1\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\n",
        "o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\ns=-\r\n",
        "v=0\r\no=- 1 1 IN IP4\r\ns=-\r\n",
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nt=0 0\r\n",
        BASE + "garbage\r\n",
        BASE + "A=foo\r\n",
        BASE + "m=audio 70000 RTP/AVP 0\r\n",
        BASE + "m=audio 4000 RTP/AVP\r\n",
        BASE + "m=audio x RTP/AVP 0\r\n",
        BASE + "m=audio 4000 RTP/AVP 0\r\nt=0 0\r\n",
        BASE + "c=IN IP4\r\n",
        BASE + "a=setup:maybe\r\n",
        BASE + "a=rtcp-mux:1\r\n",
        BASE + "a=ice-ufrag:bad ufrag\r\n",
        BASE + "a=mid\r\n",
        BASE + "a=rtpmap:300 PCMU/8000\r\n",
        BASE + "a=rtpmap:0 PCMU\r\n",
        BASE + "a=fmtp:x foo\r\n",
        BASE + "a=extmap:0 urn:x\r\n",
        BASE + "a=ssrc:abc cname:x\r\n",
        BASE + "a=group:\r\n",
        BASE + "a=rtcp:99999\r\n",
        BASE + "a=\r\n",
        BASE + "a=bad name:1\r\n",
        BASE + "a=x\rmid:1\r\n",
    ],
)
def test_bad_sdp_is_488(text: str) -> None:
    """Malformed SDP raises RemoteProtocolError with status_hint 488."""
    with pytest.raises(RemoteProtocolError) as info:
        SessionDescription.parse(text)
    assert info.value.status_hint == 488


def test_bad_bytes_and_size() -> None:
    """Non-UTF-8 and oversize bodies are 488."""
    with pytest.raises(RemoteProtocolError):
        SessionDescription.parse(BASE.encode() + b"a=x:\xff\r\n")
    with pytest.raises(RemoteProtocolError):
        SessionDescription.parse(BASE + "a=x:" + "y" * 70000 + "\r\n")


def test_unknown_attributes_kept_in_order() -> None:
    """Unknown attributes survive in order, flags and values alike."""
    text = BASE + "a=zzz\r\na=x-custom:1 2 3\r\nm=audio 4000 RTP/AVP 0\r\na=foo\r\na=bar:baz\r\na=foo\r\n"
    sdp = SessionDescription.parse(text)
    assert [a.name for a in sdp.media[0].attributes] == ["foo", "bar", "foo"]
    assert sdp.media[0].get("foo") == "" and sdp.media[0].get("missing") is None
    assert str(sdp) == text


_LINE = st.one_of(
    st.sampled_from(
        [
            "v=0",
            "o=- 1 1 IN IP4 1.2.3.4",
            "s=-",
            "t=0 0",
            "c=IN IP4 1.2.3.4",
            "m=audio 9 RTP/AVP 0",
            "a=rtcp-mux",
            "a=setup:passive",
            "a=mid:0",
            "a=group:BUNDLE 0",
            "a=candidate:1 1 udp 1 1.2.3.4 5 typ host",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
            "a=rtpmap:0 PCMU/8000",
            "a=rtcp:9 IN IP4 0.0.0.0",
            "a=ice-ufrag:abcd",
            "a=extmap:1 urn:x",
            "a=ssrc:1 cname:x",
            "m=video 0 UDP/TLS/RTP/SAVPF 96",
        ]
    ),
    st.text(max_size=40),
)


@settings(max_examples=300)
@given(st.lists(_LINE, max_size=20), st.sampled_from(["\r\n", "\n"]))
def test_fuzz_structured(lines: list[str], eol: str) -> None:
    """Random mixes of valid and garbage lines never raise anything but RemoteProtocolError."""
    text = eol.join(["v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-", *lines]) + eol
    try:
        sdp = SessionDescription.parse(text)
    except RemoteProtocolError as exc:
        assert exc.status_hint == 488
        return
    again = SessionDescription.parse(bytes(sdp))
    assert again == sdp
    sdp.transports()


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_bytes(data: bytes) -> None:
    """Arbitrary bytes never raise anything but RemoteProtocolError."""
    try:
        SessionDescription.parse(data)
    except RemoteProtocolError:
        pass


@given(st.text(max_size=120))
def test_fuzz_typed_values(value: str) -> None:
    """Typed attribute parsers never raise anything but RemoteProtocolError."""
    for parser in (
        Candidate.parse,
        Crypto.parse,
        Fingerprint.parse,
        RtpMap.parse,
        Group.parse,
        RtcpAttribute.parse,
        Origin.parse,
        Connection.parse,
    ):
        try:
            parser(value)
        except RemoteProtocolError:
            pass


@pytest.mark.parametrize(
    "text",
    ["v=0\r\n\r\no=- 1 1 IN IP4 192.0.2.1\r\n", "v=0\n\n\n\ns=-\n", "\r\n\r\nv=0\r\n\r\n"],
)
def test_blank_lines_do_not_count_as_the_three_first_lines(text: str) -> None:
    """Fewer than v=, o=, s= once blank lines are skipped: 488 (it was an IndexError, out of the media hook)."""
    with pytest.raises(RemoteProtocolError) as err:
        SessionDescription.parse(text)
    assert err.value.status_hint == 488


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "", "t=0 0", "a=x", "m=audio 9 RTP/AVP 0"]
        ),
        max_size=8,
    )
)
def test_any_arrangement_of_lines_parses_or_is_refused_with_488(lines: list[str]) -> None:
    """Short bodies of real and blank lines in any order: a description or RemoteProtocolError, nothing else."""
    try:
        SessionDescription.parse("\r\n".join(lines) + "\r\n")
    except RemoteProtocolError as exc:
        assert exc.status_hint == 488
