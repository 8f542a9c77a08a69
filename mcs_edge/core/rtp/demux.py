"""First-byte demultiplexing of a media port (RFC 7983, RFC 5761).

Theory of operation
-------------------
One relay port carries STUN, DTLS, SRTP/SRTCP (and, in principle, ZRTP and TURN channel data).
RFC 7983 s.7 tells them apart by the first byte of the datagram::

    0..3      STUN            16..19    ZRTP          20..63    DTLS
    64..79    TURN channel    128..191  RTP / RTCP    anything else: drop

RTP and RTCP on one port (rtcp-mux) are told apart by the second byte (RFC 5761 s.4): RTCP packet
types 192..223 fall where an RTP packet would have marker=1 and payload type 64..95, which RFC 5761
forbids for RTP. Both decisions are one index into a 256-byte table, so :func:`classify` costs two
byte lookups and never allocates. Kinds are small ints (module constants), not enum members, so the
per-packet path compares ints.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "KIND_DROP",
    "KIND_DTLS",
    "KIND_NAMES",
    "KIND_RTCP",
    "KIND_RTP",
    "KIND_STUN",
    "KIND_TURN_CHANNEL",
    "KIND_ZRTP",
    "classify",
    "classify_first_byte",
]

KIND_DROP: Final = 0
KIND_STUN: Final = 1
KIND_ZRTP: Final = 2
KIND_DTLS: Final = 3
KIND_TURN_CHANNEL: Final = 4
KIND_RTP: Final = 5
KIND_RTCP: Final = 6

KIND_NAMES: Final[dict[int, str]] = {
    KIND_DROP: "drop",
    KIND_STUN: "stun",
    KIND_ZRTP: "zrtp",
    KIND_DTLS: "dtls",
    KIND_TURN_CHANNEL: "turn-channel",
    KIND_RTP: "rtp",
    KIND_RTCP: "rtcp",
}

# RFC 7983 s.7 first-byte ranges (inclusive).
_RANGES: Final = (
    (0, 3, KIND_STUN),
    (16, 19, KIND_ZRTP),
    (20, 63, KIND_DTLS),
    (64, 79, KIND_TURN_CHANNEL),
    (128, 191, KIND_RTP),
)
# RFC 5761 s.4: second byte 192..223 is RTCP (SR=200, RR=201, SDES=202, BYE=203, APP=204, 205, 206...).
_RTCP_SECOND_BYTE_LO: Final = 192
_RTCP_SECOND_BYTE_HI: Final = 223


def _build_first() -> bytes:
    table = bytearray(256)
    for lo, hi, kind in _RANGES:
        for b in range(lo, hi + 1):
            table[b] = kind
    return bytes(table)


def _build_second() -> bytes:
    table = bytearray([KIND_RTP]) * 256
    for b in range(_RTCP_SECOND_BYTE_LO, _RTCP_SECOND_BYTE_HI + 1):
        table[b] = KIND_RTCP
    return bytes(table)


_FIRST: Final = _build_first()
_SECOND: Final = _build_second()


def classify_first_byte(first: int) -> int:
    """Kind of a datagram from its first byte alone (RTP and RTCP both give ``KIND_RTP``)."""
    return _FIRST[first]


def classify(data: bytes) -> int:
    """Kind of a datagram (one of the ``KIND_*`` constants); empty or unknown input is ``KIND_DROP``.

    An RTP/RTCP datagram shorter than 2 bytes is ``KIND_DROP`` (it cannot be either).
    """
    if not data:
        return KIND_DROP
    kind = _FIRST[data[0]]
    if kind == KIND_RTP:
        if len(data) < 2:
            return KIND_DROP
        return _SECOND[data[1]]
    return kind
