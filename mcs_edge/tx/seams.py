"""Small interfaces the adapters are given instead of the whole service (tx/service.py).

In: nothing; these are types. Out: nothing. The composition root (tx/service.py) builds every part in
dependency order and hands each adapter only the collaborators it uses: one of these Protocols, a
concrete adapter of another capability, or a bound method. Only tap.py imports the composition root
(tests/test_composition_root.py keeps it so).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mcs_edge.config import EdgeConfig, TenantConfig
    from mcs_edge.core.sip.calls import Call
    from mcs_edge.core.tenants import TenantTable
    from mcs_edge.tx.sip.router import ClientFlow

__all__ = ["LiveConfig", "PortPool", "SipView", "TunnelState"]


class LiveConfig(Protocol):
    """The current configuration and tenant table; both are replaced when the edge reloads, so
    adapters read them at use time instead of keeping a copy."""

    @property
    def config(self) -> EdgeConfig: ...

    @property
    def tenants(self) -> TenantTable[TenantConfig]: ...


class SipView(Protocol):
    """The SIP router as operations see it (admin API, drain): client connections, calls,
    registrations (:class:`~mcs_edge.tx.sip.router.SipRouter`)."""

    @property
    def flows(self) -> Mapping[int, ClientFlow]: ...

    def calls_up(self) -> list[Call]: ...
    def call_count(self) -> int: ...
    def calls_on_flow(self, flow_id: int) -> int: ...
    def registration(self, flow_id: int) -> tuple[bool, str | None]: ...
    def registrations(self) -> dict[str, int]: ...
    def drain(self) -> None: ...


class PortPool(Protocol):
    """The relay port pool (core/media/ports.py): readiness reads how many ports are free."""

    @property
    def free(self) -> int: ...

    @property
    def capacity(self) -> int: ...


class TunnelState(Protocol):
    """The WireGuard backhaul (tx/tunnel/wireguard.py) as readiness sees it."""

    @property
    def interface(self) -> str: ...

    @property
    def running(self) -> bool: ...
