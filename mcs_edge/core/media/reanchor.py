"""Media follows the client: re-anchoring the client leg without the PBX noticing.

Theory of operation
-------------------
When a client's network changes it reconnects and offers again with an ICE restart (new ufrag/pwd,
maybe a new DTLS certificate, new candidates). Only the client's own transport changed: the codecs,
directions and m-lines are those already negotiated with the PBX. :func:`transport_only_change`
decides that from the client's previous and new SDP; the session then answers the offer on the edge
(:meth:`~mcs_edge.core.media.session.MediaSession.answer_locally`), re-anchoring the client leg on
its relay port, and the PBX leg is untouched: same port, same address, no re-INVITE.

=============================================  ============================================
difference between previous and new offer      decision
=============================================  ============================================
number of m-lines, media kind, proto, formats,  forward (the PBX must agree to it)
direction, mid, port 0 (rejected), BUNDLE group
ICE ufrag/pwd, fingerprint, candidates,         answer on the edge
c=/port of the client (with the above equal)
nothing at all                                  forward (e.g. a session refresh the PBX times)
=============================================  ============================================

The client's RTP may restart after that (a new peer connection has a new SSRC, a random sequence
number and timestamp). The PBX must see one continuous stream: libsrtp refuses a sequence jump
backwards, and PBX jitter buffers reset or drop on a new SSRC. :class:`StreamContinuity` is installed
on each PBX-side leg (``Leg.rewrite``) at re-anchoring. It knows the last packet the PBX got
(SSRC, sequence, timestamp, when) and maps the first stream arriving afterwards onto it: same SSRC,
the next sequence number, and a timestamp advanced by the time that passed (the PBX sees a gap in
time without a gap in sequence, as with silence suppression). Later packets of that stream keep the
same offsets; packets of other SSRCs pass unchanged. RTCP toward the PBX is rewritten to match
(:meth:`StreamContinuity.rewrite_rtcp`): the mapped SSRC in SR/RR sender fields, SDES chunks and
BYE lists, and the RTP timestamp of sender reports.
"""

from __future__ import annotations

import struct
from typing import Final

from mcs_edge.core.media.sdp import SessionDescription

__all__ = ["StreamContinuity", "clock_rate", "transport_only_change"]

_HEAD: Final = struct.Struct("!HII")  # sequence, timestamp, SSRC at offset 2
_U32: Final = struct.Struct("!I")
_SR, _RR, _SDES, _BYE = 200, 201, 202, 203
_SEQ_MOD: Final = 1 << 16
_TS_MOD: Final = 1 << 32


def _shape(sdp: SessionDescription) -> tuple[object, ...]:
    group = sdp.bundle_group
    media = tuple((m.media, m.proto, m.formats, m.rejected, m.direction, m.mid) for m in sdp.media)
    return (media, group.mids if group is not None else None)


def _transport(sdp: SessionDescription) -> tuple[object, ...]:
    out: list[object] = []
    for i, m in enumerate(sdp.media):
        t = sdp.transport(i)
        ice = t.ice
        out.append(
            (
                (ice.ufrag, ice.pwd) if ice is not None else None,
                frozenset(t.fingerprints),
                t.address,
                m.port,
            )
        )
    return tuple(out)


def transport_only_change(previous: SessionDescription, offer: SessionDescription) -> bool:
    """True when ``offer`` differs from ``previous`` in the client's transport only (see the table)."""
    if len(previous.media) != len(offer.media) or _shape(previous) != _shape(offer):
        return False
    return _transport(previous) != _transport(offer)


def clock_rate(sdp: SessionDescription | None, index: int) -> int:
    """The RTP clock rate of m-line ``index`` (its first format), 8000 for audio and 90000 for video
    when the SDP does not say."""
    if sdp is None or index >= len(sdp.media):
        return 8000
    m = sdp.media[index]
    maps = m.rtpmaps
    for fmt in m.formats:
        if fmt.isdigit() and int(fmt) in maps:
            return maps[int(fmt)].clock_rate
    return 90000 if m.media == "video" else 8000


class StreamContinuity:
    """Maps the stream that follows a re-anchoring onto the one the PBX was receiving."""

    __slots__ = ("_last", "_rate", "_since", "in_ssrc", "out_ssrc", "rewritten", "seq_offset", "ts_offset")

    def __init__(self, last_packet: bytes, last_time: float, rate: int) -> None:
        seq, ts, ssrc = _HEAD.unpack_from(last_packet, 2)
        self.out_ssrc = ssrc
        self._last = (seq, ts)
        self._since = last_time
        self._rate = rate
        self.in_ssrc: int | None = None
        self.seq_offset = 0
        self.ts_offset = 0
        self.rewritten = 0

    def rewrite(self, data: bytes, now: float) -> bytes:
        """``data`` (a plain RTP packet toward the PBX) with SSRC, sequence and timestamp mapped."""
        if len(data) < 12:
            return data
        seq, ts, ssrc = _HEAD.unpack_from(data, 2)
        if self.in_ssrc is None:
            last_seq, last_ts = self._last
            elapsed = max(1, round((now - self._since) * self._rate))
            self.in_ssrc = ssrc
            self.seq_offset = (last_seq + 1 - seq) % _SEQ_MOD
            self.ts_offset = (last_ts + elapsed - ts) % _TS_MOD
        elif ssrc != self.in_ssrc:
            return data
        if not self.seq_offset and not self.ts_offset and ssrc == self.out_ssrc:
            return data
        self.rewritten += 1
        out = bytearray(data)
        _HEAD.pack_into(
            out, 2, (seq + self.seq_offset) % _SEQ_MOD, (ts + self.ts_offset) % _TS_MOD, self.out_ssrc
        )
        return bytes(out)

    def rewrite_rtcp(self, data: bytes) -> bytes:
        """``data`` (a plain compound RTCP packet toward the PBX) with the mapped stream's SSRC and
        sender-report timestamp rewritten; anything it cannot walk passes unchanged."""
        in_ssrc = self.in_ssrc
        if in_ssrc is None or (in_ssrc == self.out_ssrc and not self.ts_offset):
            return data
        out: bytearray | None = None
        pos, n = 0, len(data)
        while pos + 8 <= n:
            count = data[pos] & 0x1F
            pt = data[pos + 1]
            end = pos + 4 * (((data[pos + 2] << 8) | data[pos + 3]) + 1)
            if end > n:
                break
            offsets: list[int] = []
            if pt in (_SR, _RR) or (pt == _SDES and count):
                offsets.append(pos + 4)
            elif pt == _BYE:
                offsets.extend(pos + 4 + 4 * i for i in range(count) if pos + 8 + 4 * i <= end)
            for at in offsets:
                if _U32.unpack_from(data, at)[0] == in_ssrc:
                    if out is None:
                        out = bytearray(data)
                    _U32.pack_into(out, at, self.out_ssrc)
                    if pt == _SR and at == pos + 4 and end >= pos + 20:
                        ts = _U32.unpack_from(data, pos + 16)[0]
                        _U32.pack_into(out, pos + 16, (ts + self.ts_offset) % _TS_MOD)
            pos = end
        return data if out is None else bytes(out)
