"""Which tenant an HTTPS request may reach: the one its Host *and* its TLS server name agree on.

In: the request (Host header, the TLS connection's SNI binding from tx/tls/certificates.py) and the
live config. Out: ``(tenant, status, reason)``; the HTTPS front and the reverse proxy both ask here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcs_edge.tx.tls.certificates import tls_binding

if TYPE_CHECKING:
    from twisted.web.server import Request

    from mcs_edge.config import TenantConfig
    from mcs_edge.tx.seams import LiveConfig

__all__ = ["bound_tenant"]


def bound_tenant(service: LiveConfig, request: Request) -> tuple[TenantConfig | None, int, str]:
    """(tenant, status, reason): the tenant this request may reach, or why not.

    With ``tls.unknown_sni = "default"``, a connection without SNI (or with a name no tenant owns)
    is served by ``tls.default_tenant``; its requests whose Host no tenant owns (an IP address, a
    name of no tenant) are bound to that tenant too, as the certificate already was. A Host that
    belongs to another tenant is still refused (421).
    """
    host = request.getHeader("host")
    by_host = service.tenants.by_host(host)
    by_sni, by_default = tls_binding(request.channel.transport, service.tenants, service.config)
    if by_host is None:
        if by_default and by_sni is not None:
            return by_sni, 200, ""
        return None, 404, "unknown host"
    if by_sni is not None and by_sni.id != by_host.id:
        return None, 421, "Host does not match the TLS server name"
    return by_host, 200, ""
