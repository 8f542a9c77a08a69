"""Small interfaces the adapters are given instead of the whole service (tx/service.py).

In: nothing; these are types. The composition root (:class:`~mcs_edge.tx.service.EdgeService`)
satisfies them structurally and hands each adapter only what it reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mcs_edge.config import EdgeConfig, TenantConfig
    from mcs_edge.core.tenants import TenantTable

__all__ = ["LiveConfig"]


class LiveConfig(Protocol):
    """The current configuration and tenant table; both are replaced when the edge reloads, so
    adapters read them at use time instead of keeping a copy."""

    @property
    def config(self) -> EdgeConfig: ...

    @property
    def tenants(self) -> TenantTable[TenantConfig]: ...
