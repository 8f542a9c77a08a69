"""SRTP contexts over pylibsrtp: profiles, DTLS key layout, error mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcs_edge.core.rtp.srtp import (
    AEAD_AES_128_GCM,
    AES_CM_128_HMAC_SHA1_32,
    AES_CM_128_HMAC_SHA1_80,
    PROFILES_BY_DTLS_NAME,
    SrtpContext,
    SrtpProfile,
    keys_from_dtls,
)
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

RTP = (Path(__file__).parent.parent.parent / "data" / "rtp" / "rtp_pcmu.bin").read_bytes()
RTCP = (Path(__file__).parent.parent.parent / "data" / "rtp" / "rtcp_sr_sdes.bin").read_bytes()
ALL = [AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM]


def pair(profile: SrtpProfile) -> tuple[SrtpContext, SrtpContext]:
    a = bytes(range(profile.master_length))
    b = bytes(range(100, 100 + profile.master_length))
    return SrtpContext(profile, a, b), SrtpContext(profile, b, a)


@pytest.mark.parametrize("profile", ALL, ids=lambda p: p.name)
def test_protect_unprotect_both_ways(profile: SrtpProfile) -> None:
    """RTP and RTCP protected by one side unprotect on the other, in both directions."""
    alice, bob = pair(profile)
    srtp = alice.protect_rtp(RTP)
    assert srtp != RTP and srtp[:12] == RTP[:12]
    assert bob.unprotect_rtp(srtp) == RTP
    assert alice.unprotect_rtp(bob.protect_rtp(RTP)) == RTP
    assert bob.unprotect_rtcp(alice.protect_rtcp(RTCP)) == RTCP
    assert alice.unprotect_rtcp(bob.protect_rtcp(RTCP)) == RTCP


def test_trailer_lengths() -> None:
    """The auth tag is 10 bytes for _80, 4 for _32 and 16 for GCM."""
    for profile, tag in ((AES_CM_128_HMAC_SHA1_80, 10), (AES_CM_128_HMAC_SHA1_32, 4), (AEAD_AES_128_GCM, 16)):
        alice, _ = pair(profile)
        assert len(alice.protect_rtp(RTP)) == len(RTP) + tag


def test_auth_failure_and_replay() -> None:
    """A tampered packet and a replayed packet raise RemoteProtocolError(None)."""
    alice, bob = pair(AES_CM_128_HMAC_SHA1_80)
    srtp = alice.protect_rtp(RTP)
    tampered = srtp[:-1] + bytes([srtp[-1] ^ 1])
    with pytest.raises(RemoteProtocolError) as info:
        bob.unprotect_rtp(tampered)
    assert info.value.status_hint is None
    assert bob.unprotect_rtp(srtp) == RTP
    with pytest.raises(RemoteProtocolError):
        bob.unprotect_rtp(srtp)


def test_garbage_and_oversize() -> None:
    """Garbage and over-long packets raise RemoteProtocolError, never libsrtp errors."""
    alice, bob = pair(AEAD_AES_128_GCM)
    for data in (b"", b"\x80", bytes(20), b"\x80" * 3000):
        with pytest.raises(RemoteProtocolError):
            bob.unprotect_rtp(data)
        with pytest.raises(RemoteProtocolError):
            bob.unprotect_rtcp(data)
    with pytest.raises(RemoteProtocolError):
        alice.protect_rtp(b"\x80" * 3000)


def test_outbound_repeat_allowed() -> None:
    """Forwarding the same RTP packet twice (a far-end retransmission) is allowed outbound."""
    alice, _ = pair(AES_CM_128_HMAC_SHA1_80)
    assert alice.protect_rtp(RTP) == alice.protect_rtp(RTP)


def test_dtls_key_layout() -> None:
    """RFC 5764 s.4.2: client key|server key|client salt|server salt, mirrored per role."""
    p = AES_CM_128_HMAC_SHA1_80
    ck, sk, cs, ss = b"C" * 16, b"S" * 16, b"c" * 14, b"s" * 14
    material = ck + sk + cs + ss
    assert keys_from_dtls(p, material, is_client=True) == (ck + cs, sk + ss)
    assert keys_from_dtls(p, material, is_client=False) == (sk + ss, ck + cs)
    with pytest.raises(LocalProtocolError):
        keys_from_dtls(p, material[:-1], is_client=True)


def test_wrong_key_length() -> None:
    """A master key of the wrong length is our misuse."""
    with pytest.raises(LocalProtocolError):
        SrtpContext(AEAD_AES_128_GCM, bytes(30), bytes(28))


def test_profile_names() -> None:
    """DTLS profile names map back to profiles."""
    assert PROFILES_BY_DTLS_NAME[b"SRTP_AEAD_AES_128_GCM"] is AEAD_AES_128_GCM
    assert PROFILES_BY_DTLS_NAME[b"SRTP_AES128_CM_SHA1_80"] is AES_CM_128_HMAC_SHA1_80


@pytest.mark.parametrize("profile", ALL, ids=lambda p: p.name)
def test_interoperates_with_pylibsrtp_sessions(profile: SrtpProfile) -> None:
    """Our direct libsrtp contexts and pylibsrtp's own Session/Policy understand each other."""
    from pylibsrtp import Policy, Session

    ours_key = bytes(range(profile.master_length))
    theirs_key = bytes(range(100, 100 + profile.master_length))
    ours = SrtpContext(profile, ours_key, theirs_key)
    theirs_rx = Session(
        Policy(key=ours_key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile.libsrtp_profile)
    )
    theirs_tx = Session(
        Policy(key=theirs_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile.libsrtp_profile)
    )
    assert theirs_rx.unprotect(ours.protect_rtp(RTP)) == RTP
    assert ours.unprotect_rtp(theirs_tx.protect(RTP)) == RTP
    assert theirs_rx.unprotect_rtcp(ours.protect_rtcp(RTCP)) == RTCP
    assert ours.unprotect_rtcp(theirs_tx.protect_rtcp(RTCP)) == RTCP


def test_the_rule_gets_libsrtp_only_with_the_call_signature_it_makes() -> None:
    """A binding function of another signature (libsrtp 3's protect, here srtp_init) gives 0: the
    forwarding rule would cast it to ``(srtp_t, void *, int *)`` and corrupt memory silently."""
    from mcs_edge.core.rtp import srtp

    assert srtp._address("srtp_protect") and srtp._address("srtp_unprotect")
    assert srtp._address("srtp_init") == 0
