"""The relay's forwarding table: which leg an RTP packet belongs to, and per-leg counters.

Theory of operation
-------------------
Shaped like aiortc's ``RtpRouter``: a pure table, no I/O. A leg registers what identifies its
incoming media: SSRCs announced in SDP (``a=ssrc``), its payload types and its MID (RFC 8843 s.15,
carried in an RTP header extension the caller extracts). :meth:`ForwardingTable.route` tries, in
order, the SSRC (one dict lookup: the per-packet fast path), then the MID, then the payload type; a
match by MID or payload type *learns* the SSRC so the next packet takes the fast path. Payload
types shared by two legs are ambiguous and never route.

:class:`LegCounters` counts packets, bytes and drops by reason for one leg, and estimates loss from
RTP sequence gaps per SSRC (RFC 3550 A.1, simplified: a jump of more than ``MAX_DROPOUT`` restarts
the count, anything within ``MAX_MISORDER`` behind is a late or duplicate packet).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Final, Generic, TypeVar

from mcs_edge.errors import LocalProtocolError

__all__ = ["MAX_DROPOUT", "MAX_MISORDER", "ForwardingTable", "LegCounters", "SequenceTracker"]

MAX_DROPOUT: Final = 3000
MAX_MISORDER: Final = 100
_SEQ_MOD: Final = 1 << 16

LegId = TypeVar("LegId", bound=Hashable)


class SequenceTracker:
    """Expected vs received packets of one SSRC from its sequence numbers (RFC 3550 A.1)."""

    __slots__ = ("base", "cycles", "max_seq", "received")

    def __init__(self, seq: int) -> None:
        self.base = seq
        self.max_seq = seq
        self.cycles = 0
        self.received = 1

    def update(self, seq: int) -> None:
        """Account for one received packet with sequence number ``seq``."""
        delta = (seq - self.max_seq) % _SEQ_MOD
        if delta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += _SEQ_MOD
            self.max_seq = seq
        elif delta <= _SEQ_MOD - MAX_MISORDER:
            # A big jump: the sender restarted; start counting afresh.
            self.base = self.max_seq = seq
            self.cycles = 0
            self.received = 0
        self.received += 1

    @property
    def expected(self) -> int:
        """Packets the sender sent since the first one we saw."""
        return self.cycles + self.max_seq - self.base + 1

    @property
    def lost(self) -> int:
        """Estimated lost packets (never negative; duplicates can make received exceed expected)."""
        return max(0, self.expected - self.received)


class LegCounters:
    """Per-leg packet, byte and drop counters plus a loss estimate."""

    __slots__ = ("bytes", "dropped", "packets", "sequences")

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.dropped: dict[str, int] = {}
        self.sequences: dict[int, SequenceTracker] = {}

    def count(self, size: int) -> None:
        """One non-RTP packet (RTCP, STUN, DTLS) of ``size`` bytes."""
        self.packets += 1
        self.bytes += size

    def count_rtp(self, size: int, ssrc: int, seq: int) -> None:
        """One RTP packet; tracks its sequence number for the loss estimate."""
        self.packets += 1
        self.bytes += size
        tracker = self.sequences.get(ssrc)
        if tracker is None:
            self.sequences[ssrc] = SequenceTracker(seq)
        else:
            tracker.update(seq)

    def drop(self, reason: str) -> None:
        """One packet dropped for ``reason`` (e.g. 'srtp-auth', 'no-route', 'policed')."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    @property
    def lost(self) -> int:
        """Estimated lost RTP packets over every SSRC."""
        return sum(t.lost for t in self.sequences.values())

    @property
    def expected(self) -> int:
        """Expected RTP packets over every SSRC."""
        return sum(t.expected for t in self.sequences.values())

    @property
    def loss_fraction(self) -> float:
        """lost / expected (0.0 before any packet)."""
        expected = self.expected
        return self.lost / expected if expected else 0.0


class ForwardingTable(Generic[LegId]):
    """Maps SSRC / MID / payload type of incoming RTP to a leg id."""

    __slots__ = ("_ambiguous_pt", "_by_mid", "_by_pt", "_by_ssrc", "_legs")

    def __init__(self) -> None:
        self._by_ssrc: dict[int, LegId] = {}
        self._by_mid: dict[str, LegId] = {}
        self._by_pt: dict[int, LegId] = {}
        self._ambiguous_pt: set[int] = set()
        self._legs: dict[LegId, tuple[str | None, frozenset[int], set[int]]] = {}

    def register(
        self,
        leg: LegId,
        *,
        mid: str | None = None,
        payload_types: Iterable[int] = (),
        ssrcs: Iterable[int] = (),
    ) -> None:
        """Add a leg with what identifies its media. Registering a leg twice is our misuse."""
        if leg in self._legs:
            raise LocalProtocolError(f"leg {leg!r} already registered")
        pts = frozenset(payload_types)
        if mid is not None:
            if mid in self._by_mid:
                raise LocalProtocolError(f"mid {mid!r} already routed")
            self._by_mid[mid] = leg
        for pt in pts:
            if pt in self._ambiguous_pt:
                continue
            if pt in self._by_pt:
                del self._by_pt[pt]
                self._ambiguous_pt.add(pt)
            else:
                self._by_pt[pt] = leg
        learned: set[int] = set()
        self._legs[leg] = (mid, pts, learned)
        for ssrc in ssrcs:
            self.bind_ssrc(ssrc, leg)

    def bind_ssrc(self, ssrc: int, leg: LegId) -> None:
        """Route ``ssrc`` to ``leg`` from now on (moves it if another leg had it)."""
        if leg not in self._legs:
            raise LocalProtocolError(f"leg {leg!r} is not registered")
        old = self._by_ssrc.get(ssrc)
        if old is not None and old != leg:
            self._legs[old][2].discard(ssrc)
        self._by_ssrc[ssrc] = leg
        self._legs[leg][2].add(ssrc)

    def unregister(self, leg: LegId) -> None:
        """Remove a leg and every route to it."""
        entry = self._legs.pop(leg, None)
        if entry is None:
            raise LocalProtocolError(f"leg {leg!r} is not registered")
        mid, pts, ssrcs = entry
        if mid is not None:
            self._by_mid.pop(mid, None)
        for ssrc in ssrcs:
            if self._by_ssrc.get(ssrc) == leg:
                del self._by_ssrc[ssrc]
        for pt in pts:
            if self._by_pt.get(pt) == leg:
                del self._by_pt[pt]
        # Recompute ambiguity for this leg's payload types from the legs that remain.
        for pt in pts & self._ambiguous_pt:
            owners = [other for other, (_, other_pts, _) in self._legs.items() if pt in other_pts]
            if len(owners) <= 1:
                self._ambiguous_pt.discard(pt)
                if owners:
                    self._by_pt[pt] = owners[0]

    def route(self, ssrc: int, payload_type: int, mid: str | None = None) -> LegId | None:
        """The leg for a packet, or None. A MID or payload-type match binds the SSRC to that leg."""
        leg = self._by_ssrc.get(ssrc)
        if leg is not None:
            return leg
        if mid is not None:
            leg = self._by_mid.get(mid)
        if leg is None:
            leg = self._by_pt.get(payload_type)
        if leg is not None:
            self._by_ssrc[ssrc] = leg
            self._legs[leg][2].add(ssrc)
        return leg

    def __len__(self) -> int:
        return len(self._legs)

    def __contains__(self, leg: object) -> bool:
        return leg in self._legs
