"""Call quality: loss, jitter and round-trip time per leg from RTCP and the relay's own counters, and an
E-model MOS estimate (ITU-T G.107, simplified).

Theory of operation
-------------------
Each leg of a :class:`~mcs_edge.core.media.session.MediaSession` has a :class:`LegQuality`; the
session's :class:`CallQuality` holds them. Three sources feed a leg:

* **the edge's own view of loss**: the leg's :class:`~mcs_edge.core.media.forwarding.LegCounters`
  already track, per SSRC, how many RTP packets the peer sent (sequence numbers, RFC 3550 A.1) and
  how many arrived: ``loss_in`` is lost/expected over the call, peer -> edge.
* **the peer's receiver reports**: every SR/RR block the peer sends (plain RTCP, after SRTCP
  unprotect; passthrough RTCP is opaque and not read) says how it receives what the edge relays
  to it. ``loss_reported`` is the cumulative loss between the first and the latest block about a
  source (the fraction-lost field when there is only one block); ``jitter`` is the latest
  interarrival jitter, converted from RTP timestamp units with the source's clock rate. The edge
  learns that clock rate from two SRs of the source (RTP timestamp delta over NTP delta, rounded
  to the usual audio/video rates), so no SDP is needed.
* **the edge's own view of RTT**: when an SR crosses the edge toward a peer, the edge notes the
  SR's NTP middle bits and ``now``; the peer's next report about that stream echoes them as LSR
  with DLSR, its holding time, so ``rtt = now - sent - DLSR`` is the round trip edge <-> peer
  (RFC 3550 s.6.4.1, measured at the edge instead of at the sender).

Estimate (ITU-T G.107 E-model with default values, one codec class):
``R = 93.2 - Id - Ie_eff``, ``Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)`` for the one-way delay
``d`` in ms, ``Ie_eff = Ie + (95 - Ie) Ppl / (Ppl / BurstR + Bpl)`` with ``Ie = 0``, ``Bpl = 25.1``
(G.711 with packet loss concealment, ITU-T G.113 Appendix I; used for Opus too, which has no
published values) and ``BurstR = 1`` (random loss), then ``MOS = 1 + 0.035 R + R (R - 60) (100 - R)
7e-6`` (G.107 Annex B), 1 below R = 0 and 4.5 above R = 100. The one-way delay is ``rtt / 2 +
2 jitter + 40 ms`` (a jitter buffer of twice the jitter, 20 ms packets and 20 ms of buffering).

A leg's figures use its own loss (the worse of ``loss_in`` and ``loss_reported``), jitter and RTT;
the call's use the worst loss and jitter of its legs and the sum of their RTTs (client <-> edge <->
PBX). Values are None until something was measured. Everything here runs on RTCP (a few packets
per second), never on the per-RTP-packet path; memory per leg is bounded (``MAX_SOURCES``,
``MAX_PENDING_SR``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Protocol

from mcs_edge.core.rtp.reports import ReportBlock, parse_reports
from mcs_edge.errors import RemoteProtocolError

__all__ = [
    "CallQuality",
    "LegFigures",
    "LegQuality",
    "delay_ms",
    "e_model_mos",
    "r_factor",
]

MAX_SOURCES: Final = 8
MAX_PENDING_SR: Final = 8
MAX_LEGS: Final = 16
_RATES: Final = (8000, 16000, 32000, 44100, 48000, 90000)
_RTT_MAX: Final = 10.0  # seconds: anything longer is a stale or forged LSR
_BPL: Final = 25.1
_PACKET_AND_BUFFER_MS: Final = 40.0


# ---------------------------------------------------------------------------------------- E-model


def r_factor(
    loss: float, one_way_ms: float, ie: float = 0.0, bpl: float = _BPL, burst_r: float = 1.0
) -> float:
    """The E-model's transmission rating R (G.107, default values, see the module docstring)."""
    ppl = max(0.0, min(1.0, loss)) * 100.0
    ie_eff = ie + (95.0 - ie) * ppl / (ppl / burst_r + bpl)
    d = max(0.0, one_way_ms)
    idd = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    return 93.2 - idd - ie_eff


def e_model_mos(loss: float, one_way_ms: float) -> float:
    """MOS (1 .. 4.5) from packet loss (0..1) and one-way delay (ms), G.107 Annex B."""
    r = r_factor(loss, one_way_ms)
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6


def delay_ms(rtt: float | None, jitter: float | None) -> float:
    """The one-way delay the estimate uses: rtt/2 + 2 jitter + 40 ms (seconds in, ms out)."""
    return (rtt or 0.0) * 500.0 + (jitter or 0.0) * 2000.0 + _PACKET_AND_BUFFER_MS


# ------------------------------------------------------------------------------------------- legs


class _Counters(Protocol):
    """What LegQuality reads from the leg's counters (LegCounters)."""

    sequences: dict[int, Any]
    packets: int


@dataclass(frozen=True, slots=True)
class LegFigures:
    """One leg's quality, as reported (seconds, ratios 0..1; None when not measured)."""

    side: str
    packets_in: int
    loss_in: float | None
    loss_reported: float | None
    jitter: float | None
    rtt: float | None
    mos: float | None

    @property
    def loss(self) -> float | None:
        values = [v for v in (self.loss_in, self.loss_reported) if v is not None]
        return max(values) if values else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "packets_in": self.packets_in,
            "loss": _round(self.loss, 4),
            "loss_in": _round(self.loss_in, 4),
            "loss_reported": _round(self.loss_reported, 4),
            "jitter_ms": _round(None if self.jitter is None else self.jitter * 1000, 1),
            "rtt_ms": _round(None if self.rtt is None else self.rtt * 1000, 1),
            "mos": _round(self.mos, 2),
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class _Source:
    """What one peer reports about one source it receives (first and latest block)."""

    __slots__ = ("first", "latest")

    def __init__(self, block: ReportBlock) -> None:
        self.first = block
        self.latest = block


class LegQuality:
    """RTCP-derived figures of one leg (see the module docstring)."""

    __slots__ = ("_clocks", "_pending_sr", "_sources", "bad_rtcp", "counters", "rtt", "rtt_samples", "side")

    def __init__(self, clocks: SourceClocks, side: str, counters: _Counters) -> None:
        self._clocks = clocks  # shared with the call, not the call itself: no reference cycle
        self.side = side
        self.counters = counters
        self._sources: dict[int, _Source] = {}
        self._pending_sr: dict[int, float] = {}  # NTP middle bits of SRs sent to the peer -> when
        self.rtt: float | None = None  # smoothed (1/8, like TCP's SRTT)
        self.rtt_samples = 0
        self.bad_rtcp = 0

    def from_peer(self, data: bytes, now: float) -> None:
        """A plain compound RTCP packet the peer sent to the edge."""
        try:
            reports = parse_reports(data)
        except RemoteProtocolError:
            self.bad_rtcp += 1
            return
        clocks = self._clocks
        for report in reports:
            if report.sender is not None:
                clocks.sender_report(report.ssrc, report.sender.ntp_seconds, report.sender.rtp_timestamp)
            for block in report.blocks:
                self._block(block, now)

    def to_peer(self, data: bytes, now: float) -> None:
        """A plain compound RTCP packet the edge sends to the peer (relayed from the other side)."""
        try:
            reports = parse_reports(data)
        except RemoteProtocolError:
            return
        pending = self._pending_sr
        for report in reports:
            if report.sender is not None:
                if len(pending) >= MAX_PENDING_SR:
                    del pending[next(iter(pending))]
                pending[report.sender.middle] = now

    def _block(self, block: ReportBlock, now: float) -> None:
        source = self._sources.get(block.source)
        if source is None:
            if len(self._sources) >= MAX_SOURCES:
                return
            self._sources[block.source] = _Source(block)
        else:
            source.latest = block
        if block.lsr:
            sent = self._pending_sr.get(block.lsr)
            if sent is not None:
                rtt = now - sent - block.dlsr / 65536.0
                if 0.0 <= rtt < _RTT_MAX:
                    self.rtt = rtt if self.rtt is None else self.rtt + (rtt - self.rtt) / 8.0
                    self.rtt_samples += 1

    # -- figures ------------------------------------------------------------------------------
    def loss_in(self) -> float | None:
        expected = lost = 0
        for tracker in self.counters.sequences.values():
            expected += tracker.expected
            lost += tracker.lost
        return lost / expected if expected else None

    def loss_reported(self) -> float | None:
        worst: float | None = None
        for source in self._sources.values():
            first, latest = source.first, source.latest
            span = (latest.highest_seq - first.highest_seq) & 0xFFFFFFFF
            if span > 0 and latest is not first:
                ratio = max(0, latest.cumulative_lost - first.cumulative_lost) / span
            else:
                ratio = latest.fraction_lost / 256.0
            ratio = min(1.0, ratio)
            worst = ratio if worst is None else max(worst, ratio)
        return worst

    def jitter(self) -> float | None:
        worst: float | None = None
        for ssrc, source in self._sources.items():
            rate = self._clocks.clock_rate(ssrc)
            if rate is None:
                continue
            value = source.latest.jitter / rate
            worst = value if worst is None else max(worst, value)
        return worst

    def figures(self) -> LegFigures:
        loss_in, reported, jitter = self.loss_in(), self.loss_reported(), self.jitter()
        losses = [v for v in (loss_in, reported) if v is not None]
        mos = e_model_mos(max(losses), delay_ms(self.rtt, jitter)) if losses else None
        return LegFigures(self.side, self.counters.packets, loss_in, reported, jitter, self.rtt, mos)


# ------------------------------------------------------------------------------------------- call


class SourceClocks:
    """The RTP clock rates of a call's sources, learnt from pairs of their SRs (shared by its legs)."""

    __slots__ = ("_sr", "rates")

    def __init__(self) -> None:
        self.rates: dict[int, int] = {}
        self._sr: dict[int, tuple[float, int]] = {}

    def sender_report(self, ssrc: int, ntp: float, rtp_timestamp: int) -> None:
        """An SR of ``ssrc``: two of them give its RTP clock rate."""
        previous = self._sr.get(ssrc)
        if previous is None and len(self._sr) >= MAX_SOURCES:
            return
        self._sr[ssrc] = (ntp, rtp_timestamp)
        if previous is None or ssrc in self.rates:
            return
        seconds = ntp - previous[0]
        ticks = (rtp_timestamp - previous[1]) & 0xFFFFFFFF
        if seconds < 0.2 or ticks == 0 or ticks > 0x7FFFFFFF:
            return
        estimate = ticks / seconds
        rate = min(_RATES, key=lambda r: abs(r - estimate))
        if abs(rate - estimate) <= rate * 0.25:
            self.rates[ssrc] = rate

    def clock_rate(self, ssrc: int) -> int | None:
        return self.rates.get(ssrc)


class CallQuality:
    """The quality of one call: its legs' figures, clock rates learnt from SRs, the call summary.

    The call holds its legs and their shared :class:`SourceClocks`; a leg never points back at the
    call, so a released call is freed by reference counting, not left to the cycle collector.
    """

    __slots__ = ("clocks", "legs")

    def __init__(self) -> None:
        self.legs: list[LegQuality] = []
        self.clocks = SourceClocks()

    def new_leg(self, side: str, counters: _Counters) -> LegQuality:
        """The quality object of a new leg (the oldest is forgotten past MAX_LEGS)."""
        leg = LegQuality(self.clocks, side, counters)
        if len(self.legs) >= MAX_LEGS:
            del self.legs[0]
        self.legs.append(leg)
        return leg

    @property
    def rates(self) -> dict[int, int]:
        return self.clocks.rates

    def sender_report(self, ssrc: int, ntp: float, rtp_timestamp: int) -> None:
        """An SR of ``ssrc``: two of them give its RTP clock rate."""
        self.clocks.sender_report(ssrc, ntp, rtp_timestamp)

    def clock_rate(self, ssrc: int) -> int | None:
        return self.clocks.rates.get(ssrc)

    def figures(self) -> list[LegFigures]:
        """Per side ("CLIENT", "PBX"): the figures of the leg that carried the most packets."""
        best: dict[str, LegFigures] = {}
        for leg in self.legs:
            f = leg.figures()
            if leg.side not in best or f.packets_in > best[leg.side].packets_in:
                best[leg.side] = f
        return [best[s] for s in sorted(best)]

    def summary(self) -> dict[str, Any]:
        """The call's figures and each side's (JSON-ready: ms, ratios, MOS)."""
        legs = self.figures()
        losses = [f.loss for f in legs if f.loss is not None]
        jitters = [f.jitter for f in legs if f.jitter is not None]
        rtts = [f.rtt for f in legs if f.rtt is not None]
        loss = max(losses) if losses else None
        jitter = max(jitters) if jitters else None
        rtt = sum(rtts) if rtts else None
        mos = e_model_mos(loss, delay_ms(rtt, jitter)) if loss is not None else None
        return {
            "loss": _round(loss, 4),
            "jitter_ms": _round(None if jitter is None else jitter * 1000, 1),
            "rtt_ms": _round(None if rtt is None else rtt * 1000, 1),
            "mos": _round(mos, 2),
            "legs": {f.side.lower(): f.as_dict() for f in legs},
        }
