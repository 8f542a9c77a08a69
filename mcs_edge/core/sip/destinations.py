"""What leaves the proxy core and where it goes: destinations and actions.

Out of the core: :class:`ToFlow` (bytes for a client connection), :class:`ToBackend` (bytes for a
tenant's PBX over its transport), :class:`CloseFlow` and :class:`Push` (RFC 8599 wake-up), drained
by the adapter (tx/sip/router.py). Inside the core every transaction remembers a :data:`Dest`, the
place its messages go: a client connection (:class:`FlowDest`) or a tenant's PBX at an address
over a transport (:class:`BackendDest`). One value per destination is shared by its transactions
(``ProxyState._shared``), so they are small immutable tuples.

==============================  ===================================================================
destination                     transaction reliability (RFC 3261 s.17.1.1.2, s.17.1.2.2, s.18)
==============================  ===================================================================
``FlowDest``                    reliable (WebSocket, TLS): no retransmissions, Timer A/E off
``BackendDest``, udp            unreliable: requests retransmitted
``BackendDest``, tcp or tls     reliable
==============================  ===================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from mcs_edge.core.push.bindings import PushKey

from ._frozen import fast_init

__all__ = ["Action", "BackendDest", "CloseFlow", "Dest", "FlowDest", "Push", "ToBackend", "ToFlow"]

Addr = tuple[str, int]


class FlowDest(NamedTuple):
    """A client connection (WebSocket or TLS) by its flow id."""

    flow_id: int

    @property
    def reliable(self) -> bool:
        return True


class BackendDest(NamedTuple):
    """A tenant's PBX at ``addr`` over ``transport`` ("udp", "tcp" or "tls")."""

    tenant_id: str
    transport: str
    addr: Addr

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


@fast_init
@dataclass(frozen=True, slots=True)
class ToFlow:
    flow_id: int
    data: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class ToBackend:
    tenant_id: str
    transport: str
    addr: Addr
    data: bytes


@fast_init
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

#: Where a transaction's messages go.
Dest = FlowDest | BackendDest
