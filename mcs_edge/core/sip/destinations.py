"""What leaves the proxy core and where it goes: destinations and actions.

Out of the core: :class:`ToFlow` (bytes for a client connection), :class:`ToBackend` (bytes for a
tenant's PBX over its transport), :class:`CloseFlow` and :class:`Push` (RFC 8599 wake-up), drained
by the adapter (tx/sip/router.py). Inside the core every transaction remembers a :data:`Dest`, the
place its messages go: a client flow, or a tenant's PBX at an address over a transport.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcs_edge.core.push.bindings import PushKey

__all__ = ["Action", "CloseFlow", "Dest", "Push", "ToBackend", "ToFlow"]

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ToFlow:
    flow_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ToBackend:
    tenant_id: str
    transport: str
    addr: Addr
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseFlow:
    flow_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Push:
    """Send a push notification (RFC 8599) to wake an app; the adapter reports with ``push_result``."""

    wake_id: int
    tenant_id: str
    provider: str
    prid: str
    param: str
    call_id: str
    caller: str
    key: PushKey


Action = ToFlow | ToBackend | CloseFlow | Push

# Where a transaction's messages go: ("flow", flow_id) or ("backend", tenant_id, transport, addr).
Dest = tuple[Any, ...]
