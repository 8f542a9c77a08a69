"""RTCP sender and receiver reports (RFC 3550 s.6.4): sender info and report blocks as values.

Theory of operation
-------------------
:func:`parse_reports` takes one plain (already SRTCP-unprotected) compound RTCP packet, splits it
with :func:`~mcs_edge.core.rtp.rtp.parse_rtcp_compound` and returns the SR and RR packets in it as
:class:`Report` values; other packet types (SDES, BYE, APP, feedback, XR) are skipped. Layouts
(RFC 3550 s.6.4.1 and s.6.4.2), after the 4-byte common header::

    SR: sender SSRC | NTP timestamp (64) | RTP timestamp | packet count | octet count | blocks...
    RR: sender SSRC | blocks...
    report block (24 bytes): SSRC of source | fraction lost (8) | cumulative lost (24, signed) |
                             extended highest sequence number | interarrival jitter |
                             last SR (LSR, middle 32 bits of its NTP timestamp) | delay since last SR (DLSR, 1/65536 s)

A packet whose report count (RC) needs more bytes than its length gives is refused with
:class:`~mcs_edge.errors.RemoteProtocolError` (drop), like every other malformed RTCP.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from mcs_edge.core.rtp.rtp import RTCP_RR, RTCP_SR, parse_rtcp_compound
from mcs_edge.errors import RemoteProtocolError

__all__ = ["Report", "ReportBlock", "SenderInfo", "ntp_middle", "parse_reports"]

_SENDER_INFO: Final = struct.Struct("!IIIIII")  # ssrc, ntp msw, ntp lsw, rtp ts, packets, octets
_BLOCK: Final = struct.Struct("!IIIIII")  # ssrc, fraction<<24|cumulative, ext seq, jitter, lsr, dlsr
_BLOCK_SIZE: Final = 24


@dataclass(frozen=True, slots=True)
class SenderInfo:
    """The sender information of an SR (RFC 3550 s.6.4.1)."""

    ntp_msw: int
    ntp_lsw: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int

    @property
    def ntp_seconds(self) -> float:
        """The NTP timestamp as seconds (since 1900; only differences matter here)."""
        return self.ntp_msw + self.ntp_lsw / 4294967296.0

    @property
    def middle(self) -> int:
        """The middle 32 bits of the NTP timestamp: what a receiver echoes as LSR."""
        return ntp_middle(self.ntp_msw, self.ntp_lsw)


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block: how the reporter receives the stream of ``source``."""

    source: int
    fraction_lost: int  # 0..255, lost/expected since the previous report, times 256
    cumulative_lost: int  # signed: duplicates can make it negative
    highest_seq: int  # extended highest sequence number received
    jitter: int  # interarrival jitter, in RTP timestamp units of the source
    lsr: int
    dlsr: int


@dataclass(frozen=True, slots=True)
class Report:
    """An SR (``sender`` set) or an RR from ``ssrc`` with its report blocks."""

    ssrc: int
    sender: SenderInfo | None
    blocks: tuple[ReportBlock, ...]


def ntp_middle(msw: int, lsw: int) -> int:
    """Middle 32 bits of a 64-bit NTP timestamp (RFC 3550 s.6.4.1, LSR)."""
    return ((msw & 0xFFFF) << 16) | (lsw >> 16)


def _blocks(body: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    if offset + count * _BLOCK_SIZE > len(body):
        raise RemoteProtocolError("RTCP report count exceeds the packet", status_hint=None)
    out = []
    for i in range(count):
        ssrc, word, ext, jitter, lsr, dlsr = _BLOCK.unpack_from(body, offset + i * _BLOCK_SIZE)
        cumulative = word & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        out.append(ReportBlock(ssrc, word >> 24, cumulative, ext, jitter, lsr, dlsr))
    return tuple(out)


def parse_reports(data: bytes) -> list[Report]:
    """The SRs and RRs of a plain compound RTCP packet (see the module docstring)."""
    out: list[Report] = []
    for packet in parse_rtcp_compound(data):
        body = packet.body
        if packet.packet_type == RTCP_SR:
            if len(body) < _SENDER_INFO.size:
                raise RemoteProtocolError("RTCP SR shorter than its sender info", status_hint=None)
            ssrc, msw, lsw, ts, packets, octets = _SENDER_INFO.unpack_from(body)
            sender = SenderInfo(msw, lsw, ts, packets, octets)
            out.append(Report(ssrc, sender, _blocks(body, _SENDER_INFO.size, packet.count)))
        elif packet.packet_type == RTCP_RR:
            if len(body) < 4:
                raise RemoteProtocolError("RTCP RR without sender SSRC", status_hint=None)
            out.append(Report(struct.unpack_from("!I", body)[0], None, _blocks(body, 4, packet.count)))
    return out
