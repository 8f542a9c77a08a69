"""The HTTPS front on ``listen.https``: routes each request to its tenant by Host (and SNI).

A request whose Host names no tenant is refused (421 when the TLS name belongs to a tenant but the
Host does not agree with it, 404 otherwise); nothing is served for an unknown tenant. The one
exception is ``tls.unknown_sni = "default"``: a client that connected without SNI (by address) is
bound to ``tls.default_tenant`` for its HTTP and WebSocket requests too (see :func:`bound_tenant`). The reverse
proxy, the SIP WebSocket upgrade and the check page hang off :class:`FrontResource`.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from mcs_edge import __version__
from mcs_edge.tx.tls.certificates import tls_binding
from mcs_edge.tx.web.scripts import SCRIPTS, render_script

if TYPE_CHECKING:
    from mcs_edge.config import TenantConfig
    from mcs_edge.tx.seams import LiveConfig
    from mcs_edge.tx.service import EdgeService

__all__ = ["FrontResource", "bound_tenant"]


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


class FrontResource(Resource):
    """Root of the HTTPS site."""

    isLeaf = True
    log = Logger()

    def __init__(self, service: EdgeService) -> None:
        super().__init__()
        self.service = service
        from mcs_edge.tx.web.handoff import CertificateHandoff

        self.handoff = CertificateHandoff(
            service.certs,
            service.protection.credential_failure,
            service.timers.now,
            service.metrics.add_collector,
        )

    def render(self, request: Request) -> bytes:
        request.setHeader(b"server", b"mcs-edge")
        request.setHeader(b"x-content-type-options", b"nosniff")
        tenant, status, reason = bound_tenant(self.service, request)
        if tenant is None:
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"{status} {reason}\n".encode()
        turn = getattr(self.service, "turn", None)
        if turn is not None and request.path == b"/.well-known/mcs-edge/ice-servers":
            from mcs_edge.tx.turn.api import render_ice_servers

            protection = self.service.protection
            return render_ice_servers(
                turn,
                request,
                tenant,
                lambda host: protection.credential_failure(host, tenant.id, "api_secret"),
            )
        if request.path == b"/.well-known/mcs-edge/certificate":
            return self.handoff.render(request, tenant)
        if request.path in SCRIPTS:  # helpers for web clients (tx/web/scripts.py)
            return render_script(request)
        check = getattr(self.service, "check", None)  # network check page (tx/web/check.py)
        if check is not None and check.handles(request.path):
            return check.render(request, tenant)  # type: ignore[no-any-return]
        upgrade = (request.getHeader("upgrade") or "").lower()
        if upgrade == "websocket":
            from mcs_edge.tx.sip.websocket import refuse_version

            refused = refuse_version(request, tenant, getattr(self.service, "sip", None))
            if refused is not None:
                return refused
            offered = [p.strip() for p in (request.getHeader("sec-websocket-protocol") or "").split(",")]
            if "sip" in offered and self.service.sip_ws is not None:
                from mcs_edge.tx.sip.websocket import take_over

                refusal = take_over(request, self.service.sip_ws, tenant)
                return NOT_DONE_YET if refusal is None else refusal  # type: ignore[return-value]
            elif tenant.backend_http and getattr(self.service, "http_proxy", None) is not None:
                from mcs_edge.tx.web.proxy import pass_websocket  # widget chat etc.

                if pass_websocket(self.service.http_proxy, request, tenant):
                    return NOT_DONE_YET  # type: ignore[return-value]
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"400 WebSocket subprotocol 'sip' required\n"
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return b"405 method not allowed\n"
        if request.path != b"/":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"404 not found\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return _landing(tenant).encode()


def _landing(tenant: Any) -> str:
    name = html.escape(tenant.domains[0])
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mcs_edge</title></head><body>"
        f"<h1>mcs_edge {html.escape(__version__)}</h1><p>Edge for <b>{name}</b> is running.</p>"
        + (
            "<p><a href='/check'>Network check</a>: test this computer's connection for calls.</p>"
            if tenant.echo
            else ""
        )
        + "</body></html>\n"
    )
