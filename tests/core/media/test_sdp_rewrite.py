"""Profile-driven SDP rewriting: real-world offers/answers -> expected SDP for each profile pair.

Set MCS_REGEN_SDP=1 to rewrite the golden files under tests/data/sdp/expected/ (then review them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from mcs_edge.core.media.sdp import (
    Crypto,
    Fingerprint,
    IceCredentials,
    Profile,
    SessionDescription,
)
from mcs_edge.core.media.sdp_rewrite import (
    LocalLeg,
    RelayAddress,
    host_candidate,
    rewrite_answer,
    rewrite_offer,
)
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

DATA = Path(__file__).parent.parent.parent / "data" / "sdp"
EXPECTED = DATA / "expected"
REGEN = os.environ.get("MCS_REGEN_SDP") == "1"

EDGE_FP = Fingerprint.from_digest("sha-256", bytes(range(32)))
EDGE_ICE = IceCredentials("EdGe", "edgepassword0123456789ab")
PUBLIC = "203.0.113.10"
PRIVATE = "10.20.0.1"
KEY_A = bytes(range(1, 31))
KEY_B = bytes(range(31, 61))


def load(name: str) -> SessionDescription:
    return SessionDescription.parse((DATA / name).read_bytes())


def webrtc(n: int, bundle: bool = True, setup: str | None = None) -> LocalLeg:
    relays = tuple(RelayAddress(PUBLIC, 50000 if bundle else 50000 + 2 * i) for i in range(n))
    return LocalLeg(Profile.WEBRTC, relays, ice=EDGE_ICE, fingerprint=EDGE_FP, setup=setup, bundle=bundle)


def rtp(n: int, mux: bool = False) -> LocalLeg:
    relays = tuple(RelayAddress(PRIVATE, 40000 + 2 * i, None if mux else 40001 + 2 * i) for i in range(n))
    return LocalLeg(Profile.RTP, relays)


def sdes(n: int, suites: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80",)) -> LocalLeg:
    relays = tuple(RelayAddress(PRIVATE, 40000 + 2 * i, 40001 + 2 * i) for i in range(n))
    keys = (KEY_A, KEY_B)[:n]
    return LocalLeg(Profile.SDES, relays, sdes_keys=keys, sdes_suites=suites)


def sdes_mux(n: int) -> LocalLeg:
    leg = sdes(n)
    return replace(leg, relays=tuple(RelayAddress(PRIVATE, 40000 + 2 * i) for i in range(n)))


def passthrough(n: int) -> LocalLeg:
    return LocalLeg(Profile.PASSTHROUGH, tuple(RelayAddress(PRIVATE, 40000 + 2 * i) for i in range(n)))


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    leg: LocalLeg
    offer: str | None = None  # set for answers: the original offer received on the leg


CASES = [
    # Browser -> PBX offers.
    Case("chromium_offer__rtp", "chromium_offer_max_bundle.sdp", rtp(2)),
    Case("chromium_offer__sdes_mux", "chromium_offer_max_bundle.sdp", sdes_mux(2)),
    Case("jssip_offer__rtp", "jssip_chromium_offer.sdp", rtp(1)),
    Case(
        "jssip_offer__sdes_two_suites",
        "jssip_chromium_offer.sdp",
        sdes(1, ("AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80")),
    ),
    Case("firefox_offer__rtp_mux", "firefox_offer.sdp", rtp(1, mux=True)),
    Case("aiortc_offer__sdes", "aiortc_offer.sdp", sdes(2)),
    Case("chromium_offer__passthrough", "chromium_offer_max_bundle.sdp", passthrough(2)),
    # PBX answers -> browser answers.
    Case(
        "asterisk_answer__webrtc_bundle",
        "asterisk_answer_rtp_video.sdp",
        webrtc(2),
        "chromium_offer_max_bundle.sdp",
    ),
    Case(
        "asterisk_answer_video_rejected__webrtc",
        "asterisk_answer_rtp.sdp",
        webrtc(2),
        "chromium_offer_max_bundle.sdp",
    ),
    Case(
        "freeswitch_sdes_answer__webrtc", "freeswitch_answer_sdes.sdp", webrtc(1), "jssip_chromium_offer.sdp"
    ),
    Case(
        "freeswitch_sdes_answer__webrtc_no_bundle",
        "freeswitch_answer_sdes.sdp",
        webrtc(1, bundle=False),
        "firefox_offer.sdp",
    ),
    # PBX -> browser offers, and the browser's answer back to the PBX.
    Case("freeswitch_offer__webrtc", "freeswitch_offer_rtp.sdp", webrtc(1)),
    Case("asterisk_sdes_offer__webrtc", "asterisk_offer_sdes.sdp", webrtc(1)),
    Case("chromium_answer__rtp", "chromium_answer.sdp", rtp(1), "freeswitch_offer_rtp.sdp"),
    Case(
        "chromium_answer__sdes_gcm",
        "chromium_answer.sdp",
        sdes(1, ("AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80")),
        "asterisk_offer_sdes.sdp",
    ),
    Case(
        "chromium_answer__sdes_cm_skips_mki",
        "chromium_answer.sdp",
        sdes(1, ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")),
        "asterisk_offer_sdes.sdp",
    ),
    Case("chromium_answer__passthrough", "chromium_answer.sdp", passthrough(1), "jssip_chromium_offer.sdp"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_rewrite_golden(case: Case) -> None:
    """Each fixture rewritten for a leg profile equals its reviewed golden file byte for byte."""
    src = load(case.source)
    if case.offer is None:
        out = rewrite_offer(src, case.leg)
    else:
        out = rewrite_answer(src, load(case.offer), case.leg)
    path = EXPECTED / f"{case.name}.sdp"
    if REGEN:
        path.write_bytes(bytes(out))
    assert bytes(out) == path.read_bytes()
    # The output is itself valid SDP that round-trips.
    assert bytes(SessionDescription.parse(bytes(out))) == bytes(out)


def test_webrtc_answer_has_everything_chromium_needs() -> None:
    """The browser answer carries ice-lite, our ICE creds, fingerprint, passive setup, a host candidate,
    rtcp-mux, the offer's mids and its mirrored BUNDLE group."""
    offer = load("chromium_offer_max_bundle.sdp")
    out = rewrite_answer(load("asterisk_answer_rtp_video.sdp"), offer, webrtc(2))
    assert out.has("ice-lite")
    group = out.bundle_group
    assert group is not None and group.mids == ("0", "1")
    for i, t in enumerate(out.transports()):
        assert t.proto == "UDP/TLS/RTP/SAVPF" and t.profile is Profile.WEBRTC
        assert t.mid == offer.media[i].mid
        assert t.ice == EDGE_ICE and t.fingerprints == (EDGE_FP,) and t.setup == "passive"
        assert t.rtcp_mux and t.address == PUBLIC and t.port == 50000
    assert out.transport(0).candidates == (host_candidate(RelayAddress(PUBLIC, 50000)),)
    assert out.transport(1).candidates == ()  # bundled: candidates only in the BUNDLE-tag m-line


def test_rejected_stream_leaves_bundle_group() -> None:
    """A stream the PBX rejects is port 0 in the browser answer and is not in the BUNDLE group."""
    out = rewrite_answer(load("asterisk_answer_rtp.sdp"), load("chromium_offer_max_bundle.sdp"), webrtc(2))
    assert out.media[1].port == 0 and out.media[1].mid == "1"
    group = out.bundle_group
    assert group is not None and group.mids == ("0",)


def test_no_bundle_when_edge_declines() -> None:
    """With bundle=False the answer has no BUNDLE group and a candidate in every m-line."""
    out = rewrite_answer(
        load("asterisk_answer_rtp_video.sdp"), load("chromium_offer_max_bundle.sdp"), webrtc(2, bundle=False)
    )
    assert out.bundle_group is None
    assert [len(t.candidates) for t in out.transports()] == [1, 1]
    assert [t.port for t in out.transports()] == [50000, 50002]


def test_offer_to_pbx_strips_browser_and_transport_attributes() -> None:
    """Towards a plain-RTP PBX: no ICE, DTLS, extmap, rtcp-fb, ssrc, msid; codecs kept."""
    src = load("chromium_offer_max_bundle.sdp")
    out = rewrite_offer(src, rtp(2))
    text = str(out)
    for word in (
        "ice-",
        "candidate",
        "fingerprint",
        "setup",
        "extmap",
        "rtcp-fb",
        "ssrc",
        "msid",
        "group:BUNDLE",
        "rtcp-mux",
        "rtcp-rsize",
        "transport-cc",
    ):
        assert word not in text, word
    assert [m.formats for m in out.media] == [m.formats for m in src.media]
    assert [m.proto for m in out.media] == ["RTP/AVP", "RTP/AVP"]
    t = out.transport(0)
    assert (t.address, t.port, t.rtcp_port) == (PRIVATE, 40000, 40001)


def test_sdes_offer_keys() -> None:
    """An SDES offer carries one a=crypto per configured suite with our key prefix, per m-line."""
    out = rewrite_offer(
        load("jssip_chromium_offer.sdp"), sdes(1, ("AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80"))
    )
    cryptos = out.transport(0).cryptos
    assert [(c.tag, c.suite, c.key) for c in cryptos] == [
        (1, "AEAD_AES_128_GCM", KEY_A[:28]),
        (2, "AES_CM_128_HMAC_SHA1_80", KEY_A),
    ]
    assert out.media[0].proto == "RTP/SAVP"


def test_sdes_answer_picks_first_acceptable() -> None:
    """The SDES answer uses the offer's first acceptable suite and its tag; MKI lines are skipped."""
    offer = load("asterisk_offer_sdes.sdp")
    leg = sdes(1, ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"))
    out = rewrite_answer(load("chromium_answer.sdp"), offer, leg)
    assert [(c.tag, c.suite, c.key) for c in out.transport(0).cryptos] == [
        (3, "AES_CM_128_HMAC_SHA1_32", KEY_A)
    ]
    gcm = replace(leg, sdes_suites=("AEAD_AES_128_GCM",))
    out = rewrite_answer(load("chromium_answer.sdp"), offer, gcm)
    assert [(c.tag, c.suite, c.key) for c in out.transport(0).cryptos] == [
        (1, "AEAD_AES_128_GCM", KEY_A[:28])
    ]


def test_sdes_answer_without_acceptable_suite_is_488() -> None:
    """No acceptable a=crypto in the PBX's offer is a 488."""
    leg = sdes(1)
    with pytest.raises(RemoteProtocolError) as info:
        rewrite_answer(load("chromium_answer.sdp"), load("asterisk_offer_sdes.sdp"), leg)
    assert info.value.status_hint == 488


def test_answer_mline_count_mismatch_is_488() -> None:
    """An answer with a different number of m-lines than the offer is a 488."""
    with pytest.raises(RemoteProtocolError) as info:
        rewrite_answer(load("asterisk_answer_rtp.sdp"), load("jssip_chromium_offer.sdp"), webrtc(1))
    assert info.value.status_hint == 488


def test_pbx_offer_to_browser_uses_actpass_mids_and_bundle() -> None:
    """A plain RTP PBX offer becomes a WebRTC offer: actpass, invented mid, BUNDLE, ice-lite, no a=rtcp."""
    out = rewrite_offer(load("freeswitch_offer_rtp.sdp"), webrtc(1))
    t = out.transport(0)
    assert t.setup == "actpass" and t.mid == "0" and t.rtcp_mux and t.rtcp_port is None
    assert out.has("ice-lite") and out.bundle_group is not None and out.bundle_group.mids == ("0",)
    assert not out.media[0].has("rtcp")


def test_answer_to_pbx_drops_invented_mid() -> None:
    """The browser's answer to an invented mid goes back to a mid-less PBX offer without a=mid."""
    out = rewrite_answer(load("chromium_answer.sdp"), load("freeswitch_offer_rtp.sdp"), rtp(1))
    assert out.media[0].mid is None and out.bundle_group is None
    assert out.transport(0).rtcp_port == 40001


def test_passthrough_keeps_far_end_crypto_and_ice() -> None:
    """Passthrough keeps the browser's ICE credentials, fingerprint, setup and proto; candidates are ours."""
    src = load("chromium_offer_max_bundle.sdp")
    out = rewrite_offer(src, passthrough(2))
    for i in range(2):
        a, b = src.transport(i), out.transport(i)
        assert (a.ice, a.fingerprints, a.setup, a.proto) == (b.ice, b.fingerprints, b.setup, b.proto)
        assert b.candidates == (host_candidate(RelayAddress(PRIVATE, 40000 + 2 * i)),)
        assert b.address == PRIVATE and b.port == 40000 + 2 * i
    assert out.bundle_group == src.bundle_group
    assert out.get_all("extmap-allow-mixed") == src.get_all("extmap-allow-mixed")


def test_data_channel_rejected_unless_passthrough() -> None:
    """A data-channel m-line cannot be converted towards a PBX: it is rejected with port 0."""
    text = (DATA / "jssip_chromium_offer.sdp").read_text().replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 1")
    text += "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sctp-port:5000\r\n"
    src = SessionDescription.parse(text)
    out = rewrite_offer(src, rtp(2))
    assert out.media[1].port == 0 and out.media[1].mid == "1" and not out.media[1].has("sctp-port")
    kept = rewrite_offer(src, passthrough(2))
    assert kept.media[1].port == 40002 and kept.media[1].has("sctp-port")


def test_relay_none_rejects_stream() -> None:
    """A None relay address rejects that m-line (e.g. no port left for video)."""
    leg = replace(rtp(2), relays=(RelayAddress(PRIVATE, 40000, 40001), None))
    out = rewrite_offer(load("chromium_offer_max_bundle.sdp"), leg)
    assert [m.port for m in out.media] == [40000, 0]


@pytest.mark.parametrize(
    "leg",
    [
        replace(webrtc(2), ice=None),
        replace(webrtc(2), relays=(RelayAddress(PUBLIC, 1, 2), RelayAddress(PUBLIC, 1, 2))),
        rtp(1),
        replace(sdes(2), sdes_keys=(KEY_A,)),
        replace(sdes(2), sdes_keys=(b"short", b"short")),
        replace(sdes(2), sdes_suites=("NULL_HMAC_SHA1_80",)),
    ],
)
def test_local_misuse(leg: LocalLeg) -> None:
    """Inconsistent leg parameters are our own misuse (LocalProtocolError)."""
    with pytest.raises(LocalProtocolError):
        rewrite_offer(load("chromium_offer_max_bundle.sdp"), leg)


def test_answer_setup_actpass_is_misuse() -> None:
    """An answer towards a browser cannot say actpass."""
    with pytest.raises(LocalProtocolError):
        rewrite_answer(
            load("asterisk_answer_rtp_video.sdp"),
            load("chromium_offer_max_bundle.sdp"),
            webrtc(2, setup="actpass"),
        )


def test_answer_profile_must_match_offer() -> None:
    """Answering an SDES offer with an RTP leg is a caller bug."""
    with pytest.raises(LocalProtocolError):
        rewrite_answer(load("chromium_answer.sdp"), load("asterisk_offer_sdes.sdp"), rtp(1))


def test_crypto_values_used_are_valid() -> None:
    """Generated a=crypto lines parse back to the same values."""
    c = Crypto(1, "AES_CM_128_HMAC_SHA1_80", KEY_A)
    assert Crypto.parse(str(c)) == c
