"""Call quality for operators: per-tenant histograms on /metrics and one log record per ended call.

Theory of operation
-------------------
The media anchor tells :meth:`CallQualityRecorder.released` about every live media session it
releases (BYE, CANCEL, failure, timeout, connection loss, shutdown), before the legs are closed.
The recorder reads the session's :class:`~mcs_edge.core.media.quality.CallQuality` (figures from
RTCP and the relay's counters, E-model MOS) and

* observes, for calls that carried media, per tenant: ``mcs_edge_call_mos`` (the call's
  estimate), and per tenant and side (``leg`` = client, pbx): ``mcs_edge_call_loss_ratio``,
  ``mcs_edge_call_jitter_seconds``, ``mcs_edge_call_rtt_seconds`` (label policy of
  :mod:`mcs_edge.tx.ops.metrics`: tenant and a closed set, never a per-call series);
* logs one ``MED200`` record: tenant, agent AOR, Call-ID, duration, end reason and the quality of
  the call and of each leg (no address, no media content). With ``--log-format=json`` that is one
  JSON object per ended call.

While a call is up, :meth:`live` gives the same figures for the admin API (``GET /api/calls``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from mcs_edge.core.media.anchor import CallInfo
from mcs_edge.core.media.session import MediaSession

__all__ = ["CallQualityRecorder"]

MOS_BUCKETS = (1.0, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4, 4.5)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 1.0)
JITTER_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5)
RTT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


class CallQualityRecorder:
    """Histograms and end-of-call records (see the module docstring)."""

    log = Logger(namespace="mcs_edge.tx.media.quality")

    def __init__(self, metrics: Any, now: Callable[[], float]) -> None:
        self._now = now
        self.mos = metrics.histogram(
            "mcs_edge_call_mos", "E-model MOS estimate of ended calls", ["tenant"], buckets=MOS_BUCKETS
        )
        self.loss = metrics.histogram(
            "mcs_edge_call_loss_ratio",
            "Packet loss of ended calls per side (worse of the edge's view and the peer's reports)",
            ["tenant", "leg"],
            buckets=LOSS_BUCKETS,
        )
        self.jitter = metrics.histogram(
            "mcs_edge_call_jitter_seconds",
            "Interarrival jitter reported by each side's peer, ended calls",
            ["tenant", "leg"],
            buckets=JITTER_BUCKETS,
        )
        self.rtt = metrics.histogram(
            "mcs_edge_call_rtt_seconds",
            "Round-trip time edge <-> peer of each side, ended calls",
            ["tenant", "leg"],
            buckets=RTT_BUCKETS,
        )
        self.recorded = 0

    def live(self, session: MediaSession | None) -> dict[str, Any] | None:
        """The quality figures of a call that is up (None without a media session)."""
        return None if session is None else session.quality.summary()

    def released(self, session: MediaSession, reason: str) -> None:
        """A media session ends: observe its figures and log its record."""
        info = session.owner_data
        if not isinstance(info, CallInfo):
            return
        quality = session.quality.summary()
        tenant = info.tenant_id
        legs = quality["legs"]
        if quality["mos"] is not None:
            self.mos.labels(tenant).observe(quality["mos"])
        for side, figures in legs.items():
            if not figures["packets_in"]:
                continue
            if figures["loss"] is not None:
                self.loss.labels(tenant, side).observe(figures["loss"])
            if figures["jitter_ms"] is not None:
                self.jitter.labels(tenant, side).observe(figures["jitter_ms"] / 1000.0)
            if figures["rtt_ms"] is not None:
                self.rtt.labels(tenant, side).observe(figures["rtt_ms"] / 1000.0)
        self.recorded += 1
        self.log.info(
            "MED200 {tenant} call of {agent} ended after {duration:.1f} s ({reason}): MOS {mos}, loss {loss}",
            tenant=tenant,
            agent=info.agent,
            call_id=session.key,
            duration=round(max(0.0, self._now() - info.started), 3),
            reason=reason,
            mos=quality["mos"],
            loss=quality["loss"],
            quality=quality,
        )
