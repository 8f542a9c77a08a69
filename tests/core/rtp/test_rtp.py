"""RTP/RTCP header parsing, serialisation and peek helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcs_edge.core.rtp.rtp import (
    RTCP_PSFB,
    RTCP_SDES,
    RTCP_SR,
    RtcpPacket,
    RtpPacket,
    is_rtcp,
    parse_rtcp_compound,
    peek_rtcp_ssrc,
    peek_rtp,
    peek_rtp_payload_type,
    peek_rtp_seq,
    peek_rtp_ssrc,
)
from mcs_edge.errors import RemoteProtocolError

DATA = Path(__file__).parent.parent.parent / "data" / "rtp"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


@pytest.mark.parametrize("name", ["rtp_pcmu.bin", "rtp_opus_ext.bin", "rtp_csrc_padding.bin"])
def test_rtp_round_trip(name: str) -> None:
    """Valid RTP fixtures serialise back byte for byte."""
    data = load(name)
    assert bytes(RtpPacket.parse(data)) == data


def test_rtp_fields_pcmu() -> None:
    """The PCMU fixture's header fields are decoded."""
    p = RtpPacket.parse(load("rtp_pcmu.bin"))
    assert (p.payload_type, p.sequence_number, p.timestamp, p.ssrc) == (0, 4711, 16000, 0x1234ABCD)
    assert p.marker and p.csrc == () and p.extension_profile is None
    assert len(p.payload) == 160 and p.padding == b""


def test_rtp_fields_extension_csrc_padding() -> None:
    """Header extension, CSRC list and padding are split out."""
    p = RtpPacket.parse(load("rtp_opus_ext.bin"))
    assert p.extension_profile == 0xBEDE and len(p.extension) == 12 and p.payload_type == 111
    assert p.sequence_number == 65535 and p.ssrc == 0xDEADBEEF and not p.marker
    q = RtpPacket.parse(load("rtp_csrc_padding.bin"))
    assert q.csrc == (0x11111111, 0x22222222)
    assert q.payload == b"\x01\x02\x03" and q.padding == b"\x00\x00\x00\x04"


@pytest.mark.parametrize("name", ["rtp_opus_ext_truncated.bin", "rtp_invalid_version.bin"])
def test_rtp_invalid_fixtures(name: str) -> None:
    """Truncated and wrong-version packets raise RemoteProtocolError with status_hint None."""
    with pytest.raises(RemoteProtocolError) as info:
        RtpPacket.parse(load(name))
    assert info.value.status_hint is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80" * 11,
        bytes([0x81]) + bytes(11),
        bytes([0x90]) + bytes(11),
        bytes([0xA0]) + bytes(11),
        bytes([0xA0]) + bytes(10) + b"\x10",
    ],
)
def test_rtp_malformed(data: bytes) -> None:
    """Short header, missing CSRC, extension or bad padding are rejected."""
    with pytest.raises(RemoteProtocolError):
        RtpPacket.parse(data)


def test_peek_matches_parse() -> None:
    """peek helpers agree with the full parse."""
    for name in ["rtp_pcmu.bin", "rtp_opus_ext.bin", "rtp_csrc_padding.bin"]:
        data = load(name)
        p = RtpPacket.parse(data)
        assert peek_rtp(data) == (p.payload_type, p.sequence_number, p.timestamp, p.ssrc)
        assert peek_rtp_ssrc(data) == p.ssrc
        assert peek_rtp_seq(data) == p.sequence_number
        assert peek_rtp_payload_type(data) == p.payload_type


@pytest.mark.parametrize("fn", [peek_rtp, peek_rtp_ssrc, peek_rtp_seq, peek_rtp_payload_type, peek_rtcp_ssrc])
def test_peek_rejects_short_and_bad_version(fn: object) -> None:
    """peek helpers raise RemoteProtocolError(None) on short or non-v2 input."""
    assert callable(fn)
    for data in (b"", b"\x80\x00", bytes([0x40]) + bytes(15)):
        with pytest.raises(RemoteProtocolError) as info:
            fn(data)
        assert info.value.status_hint is None


def test_rtcp_compound_round_trip() -> None:
    """An SR+SDES compound splits into two packets and re-serialises exactly."""
    data = load("rtcp_sr_sdes.bin")
    packets = parse_rtcp_compound(data)
    assert [p.packet_type for p in packets] == [RTCP_SR, RTCP_SDES]
    assert packets[0].count == 1 and packets[0].ssrc == 0x1234ABCD
    assert b"".join(bytes(p) for p in packets) == data
    assert peek_rtcp_ssrc(data) == 0x1234ABCD
    assert is_rtcp(data)


def test_rtcp_single_pli() -> None:
    """A PLI parses as one PSFB packet with FMT 1."""
    data = load("rtcp_pli.bin")
    p = RtcpPacket.parse(data)
    assert (p.packet_type, p.count, p.ssrc) == (RTCP_PSFB, 1, 0xDEADBEEF)
    assert bytes(p) == data


def test_rtcp_truncated_and_bad_type() -> None:
    """A truncated compound or a non-RTCP packet type is rejected."""
    with pytest.raises(RemoteProtocolError):
        parse_rtcp_compound(load("rtcp_sr_sdes_truncated.bin"))
    with pytest.raises(RemoteProtocolError):
        parse_rtcp_compound(bytes([0x80, 96, 0, 0]))
    with pytest.raises(RemoteProtocolError):
        RtcpPacket.parse(load("rtcp_sr_sdes.bin"))


def test_rtp_not_rtcp() -> None:
    """An RTP packet is not classified as RTCP."""
    assert not is_rtcp(load("rtp_pcmu.bin"))


@given(st.binary(max_size=200))
def test_fuzz_rtp_parsers(data: bytes) -> None:
    """RTP/RTCP parse and peek never raise anything but RemoteProtocolError."""
    for fn in (
        RtpPacket.parse,
        parse_rtcp_compound,
        peek_rtp,
        peek_rtp_ssrc,
        peek_rtp_seq,
        peek_rtp_payload_type,
        peek_rtcp_ssrc,
    ):
        try:
            fn(data)
        except RemoteProtocolError:
            pass


@given(st.binary(min_size=12, max_size=200))
def test_fuzz_rtp_round_trip(data: bytes) -> None:
    """Whatever parses as RTP serialises back to the same bytes."""
    try:
        p = RtpPacket.parse(data)
    except RemoteProtocolError:
        return
    assert bytes(p) == data
