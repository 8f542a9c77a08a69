"""Tests of ChannelData framing and TURN stream framing."""

from __future__ import annotations

import pytest

from mcs_edge.core.stun.channel_data import (
    ChannelData,
    is_channel_data,
    pack_channel_data,
    stream_frame_length,
    unpack_channel_data,
)
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError


def test_round_trip_udp_unpadded() -> None:
    """Over UDP a ChannelData message is header + payload with no padding, and parses back."""
    data = bytes(ChannelData(0x4001, b"abcde"))
    assert data == b"\x40\x01\x00\x05abcde"
    assert ChannelData.parse(data) == ChannelData(0x4001, b"abcde")


def test_stream_padding_is_added_and_ignored() -> None:
    """Over TCP the message is padded to 4 bytes; the parser ignores the padding."""
    data = ChannelData(0x4FFF, b"abcde").serialize(pad=True)
    assert data == b"\x4f\xff\x00\x05abcde\x00\x00\x00"
    assert unpack_channel_data(data) == (0x4FFF, b"abcde")
    assert pack_channel_data(0x4000, b"abcd", pad=True) == b"\x40\x00\x00\x04abcd"


@pytest.mark.parametrize(
    "data",
    [b"\x40\x00\x00", b"\x3f\xff\x00\x00", b"\x50\x00\x00\x00", b"\x40\x00\x00\x05abcd"],
    ids=["short", "below-range", "above-range", "truncated"],
)
def test_bad_channel_data_is_dropped(data: bytes) -> None:
    """Short, out-of-range or truncated ChannelData raises RemoteProtocolError with hint None."""
    with pytest.raises(RemoteProtocolError) as info:
        unpack_channel_data(data)
    assert info.value.status_hint is None


def test_value_checks_channel_range() -> None:
    """Constructing ChannelData outside 0x4000..0x4FFF is our misuse."""
    with pytest.raises(LocalProtocolError):
        ChannelData(0x5000, b"")


def test_is_channel_data() -> None:
    """The first byte 0x40..0x4F marks ChannelData (RFC 7983)."""
    assert is_channel_data(b"\x40\x00\x00\x00")
    assert is_channel_data(b"\x4f\x00\x00\x00")
    assert not is_channel_data(b"\x00\x01\x00\x00")
    assert not is_channel_data(b"\x50\x00\x00\x00")
    assert not is_channel_data(b"\x40")


def test_stream_frame_length() -> None:
    """Stream framing: STUN is 20 + length, ChannelData is 4 + padded length, garbage is refused."""
    assert stream_frame_length(b"\x00\x01") is None
    assert stream_frame_length(b"\x00\x01\x00\x08") == 28
    assert stream_frame_length(bytearray(b"\x40\x01\x00\x05")) == 12
    assert stream_frame_length(memoryview(b"\x40\x01\x00\x08")) == 12
    with pytest.raises(RemoteProtocolError):
        stream_frame_length(b"\x80\x00\x00\x00")
    with pytest.raises(RemoteProtocolError):
        stream_frame_length(b"\x74\x74\x00\x05")  # RFC 5766 range: refused unless asked for
    assert stream_frame_length(b"\x74\x74\x00\x05", max_first=0x7F) == 12
