"""RFC 7983 / RFC 5761 first-byte demultiplexing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcs_edge.core.rtp import demux
from mcs_edge.core.rtp.demux import (
    KIND_DROP,
    KIND_DTLS,
    KIND_RTCP,
    KIND_RTP,
    KIND_STUN,
    KIND_TURN_CHANNEL,
    KIND_ZRTP,
    classify,
    classify_first_byte,
)


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (0, KIND_STUN),
        (3, KIND_STUN),
        (4, KIND_DROP),
        (15, KIND_DROP),
        (16, KIND_ZRTP),
        (19, KIND_ZRTP),
        (20, KIND_DTLS),
        (22, KIND_DTLS),
        (63, KIND_DTLS),
        (64, KIND_TURN_CHANNEL),
        (79, KIND_TURN_CHANNEL),
        (80, KIND_DROP),
        (127, KIND_DROP),
        (128, KIND_RTP),
        (191, KIND_RTP),
        (192, KIND_DROP),
        (255, KIND_DROP),
    ],
)
def test_first_byte_ranges(first: int, kind: int) -> None:
    """Every RFC 7983 range boundary maps to its kind."""
    assert classify_first_byte(first) == kind
    data = bytes([first, 0])
    assert classify(data) == kind


@pytest.mark.parametrize(
    ("second", "kind"),
    [
        (0, KIND_RTP),
        (111, KIND_RTP),
        (191, KIND_RTP),
        (192, KIND_RTCP),
        (200, KIND_RTCP),
        (206, KIND_RTCP),
        (223, KIND_RTCP),
        (224, KIND_RTP),
        (255, KIND_RTP),
    ],
)
def test_rtcp_by_second_byte(second: int, kind: int) -> None:
    """With rtcp-mux, second bytes 192..223 are RTCP, everything else is RTP (RFC 5761 s.4)."""
    assert classify(bytes([0x80, second, 0, 0])) == kind


def test_empty_and_one_byte_rtp_dropped() -> None:
    """An empty datagram and a one-byte 'RTP' datagram are dropped."""
    assert classify(b"") == KIND_DROP
    assert classify(b"\x80") == KIND_DROP
    assert classify(b"\x00") == KIND_STUN


def test_table_is_256_bytes() -> None:
    """The lookup tables are bytes objects of 256 entries (constant-time index)."""
    assert isinstance(demux._FIRST, bytes) and len(demux._FIRST) == 256
    assert isinstance(demux._SECOND, bytes) and len(demux._SECOND) == 256


@given(st.binary(max_size=64))
def test_classify_total(data: bytes) -> None:
    """classify never raises and always returns a known kind."""
    assert classify(data) in demux.KIND_NAMES
