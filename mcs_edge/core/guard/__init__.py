"""mcs_edge.core.guard: per-source caps, rate limits and auth-failure bans (pure counters with deadlines).

``SourceGuard`` admits connections and requests per source and per tenant, ``BanList`` bans
sources after repeated authentication failures, ``ScannerCounter`` counts tenant-less requests.
Every answer is a ``Decision(allowed, reason)`` with a stable reason code.
"""

from __future__ import annotations

from mcs_edge.core.guard.addresses import AllowList, Source, source_of
from mcs_edge.core.guard.bans import Ban, BanList, BanPolicy
from mcs_edge.core.guard.decision import REASONS, Decision
from mcs_edge.core.guard.scanners import ScannerCounter
from mcs_edge.core.guard.sources import RateLimit, SourceGuard, SourceLimits, TenantLimits

__all__ = [
    "REASONS",
    "AllowList",
    "Ban",
    "BanList",
    "BanPolicy",
    "Decision",
    "RateLimit",
    "ScannerCounter",
    "Source",
    "SourceGuard",
    "SourceLimits",
    "TenantLimits",
    "source_of",
]
