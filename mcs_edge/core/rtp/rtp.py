"""RTP and RTCP headers (RFC 3550), parsed as values or peeked at without allocation.

Theory of operation
-------------------
The relay's per-packet path only needs three numbers from an RTP packet (SSRC, sequence number,
payload type) to look up a leg and count losses. The ``peek_*`` helpers read them with precompiled
:class:`struct.Struct` objects straight out of the datagram: no object is built. They check only what
they must (length, version 2) and raise :class:`RemoteProtocolError` with ``status_hint=None``
(drop) on anything else.

:class:`RtpPacket` and :class:`RtcpPacket` are full, frozen parses for tests, tools and the slow path
(rewriting, diagnostics). ``bytes(RtpPacket.parse(data)) == data`` for every valid packet, including
the CSRC list, the header extension and the padding octets.

RTCP arrives as compound packets (RFC 3550 s.6.1): :func:`parse_rtcp_compound` splits one into its
packets by the common header's length field and checks that the lengths add up exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from mcs_edge.errors import RemoteProtocolError

__all__ = [
    "RTCP_APP",
    "RTCP_BYE",
    "RTCP_PSFB",
    "RTCP_RR",
    "RTCP_RTPFB",
    "RTCP_SDES",
    "RTCP_SR",
    "RTCP_XR",
    "RTP_HEADER_LENGTH",
    "RTP_VERSION",
    "RtcpPacket",
    "RtpPacket",
    "is_rtcp",
    "parse_rtcp_compound",
    "peek_rtcp_ssrc",
    "peek_rtp",
    "peek_rtp_payload_type",
    "peek_rtp_seq",
    "peek_rtp_ssrc",
]

RTP_VERSION: Final = 2
RTP_HEADER_LENGTH: Final = 12
RTCP_HEADER_LENGTH: Final = 4

# RTCP packet types (RFC 3550 s.12.1, RFC 4585 s.6.1, RFC 3611).
RTCP_SR: Final = 200
RTCP_RR: Final = 201
RTCP_SDES: Final = 202
RTCP_BYE: Final = 203
RTCP_APP: Final = 204
RTCP_RTPFB: Final = 205
RTCP_PSFB: Final = 206
RTCP_XR: Final = 207
_RTCP_PT_MIN: Final = 192
_RTCP_PT_MAX: Final = 223

_VERSION_MASK: Final = 0xC0
_VERSION_BITS: Final = RTP_VERSION << 6
_PADDING_BIT: Final = 0x20
_EXTENSION_BIT: Final = 0x10
_CC_MASK: Final = 0x0F
_MARKER_BIT: Final = 0x80
_PT_MASK: Final = 0x7F
_RC_MASK: Final = 0x1F

_RTP_FIXED: Final = struct.Struct("!BBHII")  # b0, b1, seq, timestamp, ssrc
_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_EXT_HEADER: Final = struct.Struct("!HH")  # profile, length in 32-bit words
_RTCP_HEADER: Final = struct.Struct("!BBH")
_PEEK: Final = struct.Struct("!BHII")  # byte 1, seq, timestamp, ssrc (from offset 1)


def _drop(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason, status_hint=None)


# --------------------------------------------------------------------------------------- peek helpers


def peek_rtp(data: bytes) -> tuple[int, int, int, int]:
    """``(payload_type, sequence_number, timestamp, ssrc)`` of an RTP packet, without building objects."""
    # Literals instead of module constants: this runs once per relayed packet.
    if len(data) < 12 or data[0] & 0xC0 != 0x80:  # RTP_HEADER_LENGTH, version 2
        raise _drop("not an RTP packet")
    b1, seq, ts, ssrc = _PEEK.unpack_from(data, 1)
    return b1 & 0x7F, seq, ts, ssrc


def peek_rtp_ssrc(data: bytes) -> int:
    """SSRC of an RTP packet (bytes 8..11)."""
    if len(data) < 12 or data[0] & 0xC0 != 0x80:
        raise _drop("not an RTP packet")
    ssrc: int = _U32.unpack_from(data, 8)[0]
    return ssrc


def peek_rtp_seq(data: bytes) -> int:
    """Sequence number of an RTP packet (bytes 2..3)."""
    if len(data) < 12 or data[0] & 0xC0 != 0x80:
        raise _drop("not an RTP packet")
    seq: int = _U16.unpack_from(data, 2)[0]
    return seq


def peek_rtp_payload_type(data: bytes) -> int:
    """Payload type of an RTP packet (low 7 bits of byte 1)."""
    if len(data) < 12 or data[0] & 0xC0 != 0x80:
        raise _drop("not an RTP packet")
    return data[1] & 0x7F


def peek_rtcp_ssrc(data: bytes) -> int:
    """Sender SSRC of the first packet of an RTCP compound (bytes 4..7)."""
    if len(data) < 8 or data[0] & 0xC0 != 0x80:
        raise _drop("not an RTCP packet")
    ssrc: int = _U32.unpack_from(data, 4)[0]
    return ssrc


def is_rtcp(data: bytes) -> bool:
    """True if the second byte is an RTCP packet type (RFC 5761 s.4); needs at least 2 bytes."""
    return len(data) >= 2 and _RTCP_PT_MIN <= data[1] <= _RTCP_PT_MAX


# --------------------------------------------------------------------------------------------- RTP


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 s.5.1). ``padding`` holds the raw padding octets (count byte last)."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    payload: bytes = b""
    padding: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet; raises :class:`RemoteProtocolError` (status_hint None) if invalid."""
        if len(data) < RTP_HEADER_LENGTH:
            raise _drop(f"RTP packet too short ({len(data)} bytes)")
        b0, b1, seq, ts, ssrc = _RTP_FIXED.unpack_from(data)
        if b0 & _VERSION_MASK != _VERSION_BITS:
            raise _drop(f"RTP version {b0 >> 6} is not 2")
        pos = RTP_HEADER_LENGTH
        cc = b0 & _CC_MASK
        end = len(data)
        if pos + 4 * cc > end:
            raise _drop("RTP CSRC list truncated")
        csrc = struct.unpack_from(f"!{cc}I", data, pos) if cc else ()
        pos += 4 * cc
        ext_profile: int | None = None
        ext = b""
        if b0 & _EXTENSION_BIT:
            if pos + 4 > end:
                raise _drop("RTP header extension truncated")
            ext_profile, ext_words = _EXT_HEADER.unpack_from(data, pos)
            pos += 4
            if pos + 4 * ext_words > end:
                raise _drop("RTP header extension length exceeds packet")
            ext = bytes(data[pos : pos + 4 * ext_words])
            pos += 4 * ext_words
        padding = b""
        if b0 & _PADDING_BIT:
            if end <= pos:
                raise _drop("RTP padding bit set without padding")
            pad_len = data[-1]
            if pad_len == 0 or pos + pad_len > end:
                raise _drop(f"RTP padding length {pad_len} invalid")
            padding = bytes(data[end - pad_len :])
            end -= pad_len
        return cls(
            payload_type=b1 & _PT_MASK,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            marker=bool(b1 & _MARKER_BIT),
            csrc=tuple(csrc),
            extension_profile=ext_profile,
            extension=ext,
            payload=bytes(data[pos:end]),
            padding=padding,
        )

    def __bytes__(self) -> bytes:
        if len(self.csrc) > _CC_MASK:
            raise ValueError("at most 15 CSRCs")
        b0 = _VERSION_BITS | len(self.csrc)
        if self.padding:
            b0 |= _PADDING_BIT
        if self.extension_profile is not None:
            b0 |= _EXTENSION_BIT
        b1 = (_MARKER_BIT if self.marker else 0) | (self.payload_type & _PT_MASK)
        parts = [_RTP_FIXED.pack(b0, b1, self.sequence_number, self.timestamp, self.ssrc)]
        parts.extend(_U32.pack(c) for c in self.csrc)
        if self.extension_profile is not None:
            if len(self.extension) % 4:
                raise ValueError("RTP header extension must be a multiple of 4 bytes")
            parts.append(_EXT_HEADER.pack(self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        parts.append(self.payload)
        parts.append(self.padding)
        return b"".join(parts)


# -------------------------------------------------------------------------------------------- RTCP


@dataclass(frozen=True, slots=True)
class RtcpPacket:
    """One RTCP packet of a compound: common header fields plus the raw body after the header.

    ``count`` is RC/SC/FMT (5 bits); ``body`` starts with the sender SSRC for every standard type.
    """

    packet_type: int
    count: int
    body: bytes
    padding: bool = False

    @property
    def ssrc(self) -> int | None:
        """Sender SSRC (first word of the body), or None if the body is empty."""
        if len(self.body) < 4:
            return None
        ssrc: int = _U32.unpack_from(self.body)[0]
        return ssrc

    @classmethod
    def parse(cls, data: bytes) -> RtcpPacket:
        """Parse exactly one RTCP packet (its length field must cover ``data`` exactly)."""
        packets = parse_rtcp_compound(data)
        if len(packets) != 1:
            raise _drop("expected exactly one RTCP packet")
        return packets[0]

    def __bytes__(self) -> bytes:
        if len(self.body) % 4:
            raise ValueError("RTCP body must be a multiple of 4 bytes")
        b0 = _VERSION_BITS | (_PADDING_BIT if self.padding else 0) | (self.count & _RC_MASK)
        return _RTCP_HEADER.pack(b0, self.packet_type, len(self.body) // 4) + self.body


def parse_rtcp_compound(data: bytes) -> list[RtcpPacket]:
    """Split an RTCP compound packet (RFC 3550 s.6.1); lengths must add up to ``len(data)``."""
    packets: list[RtcpPacket] = []
    pos = 0
    end = len(data)
    if end < RTCP_HEADER_LENGTH:
        raise _drop("RTCP packet too short")
    while pos < end:
        if pos + RTCP_HEADER_LENGTH > end:
            raise _drop("RTCP header truncated")
        b0, pt, words = _RTCP_HEADER.unpack_from(data, pos)
        if b0 & _VERSION_MASK != _VERSION_BITS:
            raise _drop(f"RTCP version {b0 >> 6} is not 2")
        if not _RTCP_PT_MIN <= pt <= _RTCP_PT_MAX:
            raise _drop(f"RTCP packet type {pt} out of range")
        body_start = pos + RTCP_HEADER_LENGTH
        body_end = body_start + 4 * words
        if body_end > end:
            raise _drop("RTCP length exceeds packet")
        packets.append(
            RtcpPacket(
                packet_type=pt,
                count=b0 & _RC_MASK,
                body=bytes(data[body_start:body_end]),
                padding=bool(b0 & _PADDING_BIT),
            )
        )
        pos = body_end
    return packets
