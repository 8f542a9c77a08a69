"""The sans-IO SIP proxy with one tenant and one UDP PBX, for core tests and bench/bench_sip_core.py."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from mcs_edge.core.sip.proxy import ProxySettings, SipProxy


@dataclass(frozen=True)
class Tenant:
    id: str
    path: bool = True


def one_tenant_proxy(tenant: Tenant, domain: str, pbx: tuple[str, int], settings: ProxySettings) -> SipProxy:
    """A proxy serving ``domain`` for ``tenant``, whose PBX at ``pbx`` is reached over UDP."""
    return SipProxy(
        settings,
        tenant_for_domain=lambda host: tenant if host == domain else None,
        backend_of=lambda _t: ("udp", pbx),
        tenants_at=lambda ip: [tenant] if ip == pbx[0] else [],
        random_bytes=secrets.token_bytes,
    )
