"""The answer of every guard rule: ``Decision(allowed, reason)`` with stable short reason codes.

Reason codes are part of the operator interface (metrics labels, log events, admin API): they
never change meaning and new ones are only added. Every possible decision exists once as a
module constant, so answering allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ALLOWED",
    "BANNED",
    "PER_IP_CONNECTIONS",
    "PER_IP_CONNECTION_RATE",
    "PER_IP_RATE",
    "REASONS",
    "SOURCE_TABLE_FULL",
    "TENANT_CONNECTIONS",
    "TENANT_CONNECTION_RATE",
    "TENANT_RATE",
    "Decision",
]


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to admit, and a stable short code saying which rule decided (``"ok"`` if admitted)."""

    allowed: bool
    reason: str


#: Admitted.
ALLOWED = Decision(True, "ok")
#: The source is banned (auth failures, or an operator's ban).
BANNED = Decision(False, "banned")
#: The source already holds its maximum of concurrent connections.
PER_IP_CONNECTIONS = Decision(False, "per_ip_connections")
#: The source opens new connections faster than allowed.
PER_IP_CONNECTION_RATE = Decision(False, "per_ip_connection_rate")
#: The source sends requests faster than allowed.
PER_IP_RATE = Decision(False, "per_ip_rate")
#: The tenant already holds its maximum of concurrent connections.
TENANT_CONNECTIONS = Decision(False, "tenant_connections")
#: The tenant's connections arrive faster than allowed.
TENANT_CONNECTION_RATE = Decision(False, "tenant_connection_rate")
#: The tenant's requests arrive faster than allowed.
TENANT_RATE = Decision(False, "tenant_rate")
#: The per-source table is full of sources with live connections (refuse rather than forget).
SOURCE_TABLE_FULL = Decision(False, "source_table_full")

#: Every refusal reason, for pre-creating metric series.
REASONS: tuple[str, ...] = tuple(
    d.reason
    for d in (
        BANNED,
        PER_IP_CONNECTIONS,
        PER_IP_CONNECTION_RATE,
        PER_IP_RATE,
        TENANT_CONNECTIONS,
        TENANT_CONNECTION_RATE,
        TENANT_RATE,
        SOURCE_TABLE_FULL,
    )
)
