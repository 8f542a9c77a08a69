"""RTCP SR/RR report parsing (RFC 3550 s.6.4)."""

from __future__ import annotations

import struct

import pytest

from mcs_edge.core.rtp.reports import ntp_middle, parse_reports
from mcs_edge.errors import RemoteProtocolError


def block(source: int, fraction: int, cumulative: int, ext: int, jitter: int, lsr: int, dlsr: int) -> bytes:
    return struct.pack("!IIIIII", source, (fraction << 24) | (cumulative & 0xFFFFFF), ext, jitter, lsr, dlsr)


def sr(ssrc: int, msw: int, lsw: int, ts: int, blocks: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    body = struct.pack("!IIIIII", ssrc, msw, lsw, ts, 10, 1600) + b"".join(blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 200, len(body) // 4) + body


def rr(ssrc: int, blocks: list[bytes]) -> bytes:
    body = struct.pack("!I", ssrc) + b"".join(blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 201, len(body) // 4) + body


SDES = struct.pack("!BBHI", 0x81, 202, 2, 7) + b"\x01\x02ab"


def test_sender_report_with_a_block_and_sdes() -> None:
    """An SR's sender info and block are read; the SDES after it in the compound is skipped."""
    (report,) = parse_reports(sr(7, 0x11223344, 0x55667788, 8000, [block(9, 13, 42, 70000, 80, 5, 6)]) + SDES)
    assert report.ssrc == 7 and report.sender is not None
    assert report.sender.rtp_timestamp == 8000 and report.sender.middle == 0x33445566
    (b,) = report.blocks
    assert (b.source, b.fraction_lost, b.cumulative_lost, b.highest_seq, b.jitter, b.lsr, b.dlsr) == (
        9,
        13,
        42,
        70000,
        80,
        5,
        6,
    )


def test_receiver_report_negative_cumulative_loss() -> None:
    """Cumulative loss is a signed 24-bit field (duplicates make it negative)."""
    (report,) = parse_reports(rr(3, [block(9, 0, -2, 1, 0, 0, 0)]))
    assert report.sender is None and report.blocks[0].cumulative_lost == -2


def test_report_count_beyond_the_length_is_refused() -> None:
    """RC claiming more blocks than the packet holds raises a drop error."""
    bad = bytearray(rr(3, [block(9, 0, 0, 1, 0, 0, 0)]))
    bad[0] = 0x82
    with pytest.raises(RemoteProtocolError):
        parse_reports(bytes(bad))


def test_ntp_middle_bits() -> None:
    """LSR is the middle 32 bits of the NTP timestamp."""
    assert ntp_middle(0xAABBCCDD, 0x11223344) == 0xCCDD1122
