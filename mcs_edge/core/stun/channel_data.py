"""TURN ChannelData framing (RFC 8656 s.12.4) and stream framing of STUN/ChannelData.

Theory of operation
-------------------
A ChannelData message is a 4-byte header, ``channel number (16) | length (16)``, followed by the
application data. Channel numbers are 0x4000..0x4FFF, so the first byte (64..79) tells ChannelData
apart from STUN (0..3), DTLS (20..63) and RTP/RTCP (128..191) as RFC 7983 lays out.

Over UDP the datagram carries one message; bytes past ``4 + length`` are padding and ignored, a
datagram shorter than the claimed length is discarded. Over TCP/TLS the message is padded to a
multiple of 4 bytes, so a stream adapter cuts frames with :func:`stream_frame_length` (which also
cuts STUN messages: ``20 + length``) and calls :func:`pack_channel_data` with ``pad=True``.

The relay path (:func:`pack_channel_data`, :func:`unpack_channel_data`) is one struct call and one
slice; :class:`ChannelData` is the value form for tests and tools.

RFC 5766 allowed channels 0x4000..0x7FFF and clients of that era (coturn's own test client among
them) still use the whole range; :data:`LEGACY_CHANNEL_MAX` names it for servers that accept them
(on a TURN listener nothing else is multiplexed, so first bytes 0x50..0x7F are unambiguous there).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CHANNEL_MAX",
    "CHANNEL_MIN",
    "LEGACY_CHANNEL_MAX",
    "ChannelData",
    "is_channel_data",
    "pack_channel_data",
    "stream_frame_length",
    "unpack_channel_data",
]

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
LEGACY_CHANNEL_MAX = 0x7FFF
_HEADER = struct.Struct("!HH")
_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")


def is_channel_data(data: bytes) -> bool:
    """Cheap test: does ``data`` start like a ChannelData message (first byte 0x40..0x4F)?"""
    return len(data) >= 4 and 0x40 <= data[0] <= 0x4F


def pack_channel_data(channel: int, payload: bytes, pad: bool = False) -> bytes:
    """Frame ``payload`` on ``channel``; ``pad`` to 4 bytes for stream transports (TCP/TLS)."""
    if pad:
        return _HEADER.pack(channel, len(payload)) + payload + _PAD[len(payload) & 3]
    return _HEADER.pack(channel, len(payload)) + payload


def unpack_channel_data(data: bytes) -> tuple[int, bytes]:
    """``(channel, payload)`` of one ChannelData message; trailing padding is ignored.

    Raises :class:`RemoteProtocolError` (hint None: ChannelData is never answered).
    """
    if len(data) < 4:
        raise RemoteProtocolError("ChannelData: shorter than a header", None)
    channel, length = _HEADER.unpack_from(data)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise RemoteProtocolError(f"ChannelData: channel {channel:#06x} out of range", None)
    if 4 + length > len(data):
        raise RemoteProtocolError("ChannelData: shorter than its length field", None)
    return channel, data[4 : 4 + length]


def stream_frame_length(buf: bytes | bytearray | memoryview, max_first: int = 0x4F) -> int | None:
    """Length of the next STUN or ChannelData frame at the start of a TCP/TLS stream buffer.

    None if fewer than 4 bytes are buffered; raises :class:`RemoteProtocolError` (hint None: close
    the connection) if the stream does not start with STUN or ChannelData. ``max_first`` is the
    highest ChannelData first byte accepted (0x7F with :data:`LEGACY_CHANNEL_MAX`).
    """
    if len(buf) < 4:
        return None
    first = buf[0]
    length = (buf[2] << 8) | buf[3]
    if first < 0x40:
        return 20 + length
    if first <= max_first:
        return 4 + length + (-length & 3)
    raise RemoteProtocolError("TURN stream: neither STUN nor ChannelData", None)


@dataclass(frozen=True, slots=True)
class ChannelData:
    """One ChannelData message as a value."""

    channel: int
    data: bytes

    def __post_init__(self) -> None:
        if not CHANNEL_MIN <= self.channel <= CHANNEL_MAX:
            raise LocalProtocolError(f"ChannelData: channel {self.channel:#06x} out of range")
        if len(self.data) > 0xFFFF:
            raise LocalProtocolError("ChannelData: payload longer than 65535 bytes")

    @classmethod
    def parse(cls, data: bytes) -> ChannelData:
        """Parse one message (UDP datagram or stream frame)."""
        return cls(*unpack_channel_data(data))

    def serialize(self, pad: bool = False) -> bytes:
        """Encode; ``pad`` for stream transports."""
        return pack_channel_data(self.channel, self.data, pad)

    def __bytes__(self) -> bytes:
        return self.serialize()
