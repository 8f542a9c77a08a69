"""The HTTPS front on ``listen.https``: routes each request to its tenant by Host (and SNI).

A request whose Host names no tenant is refused (421 when the TLS name belongs to a tenant but the
Host does not agree with it, 404 otherwise); nothing is served for an unknown tenant. The one
exception is ``tls.unknown_sni = "default"``: a client that connected without SNI (by address) is
bound to ``tls.default_tenant`` for its HTTP and WebSocket requests too (see :func:`bound_tenant`). The reverse
proxy, the SIP WebSocket upgrade and the check page hang off :class:`FrontResource`.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from mcs_edge import __version__
from mcs_edge.tx.sip.websocket import refuse_version, take_over
from mcs_edge.tx.turn.api import render_ice_servers
from mcs_edge.tx.web.binding import bound_tenant
from mcs_edge.tx.web.handoff import CertificateHandoff
from mcs_edge.tx.web.proxy import pass_websocket
from mcs_edge.tx.web.scripts import SCRIPTS, render_script

if TYPE_CHECKING:
    from mcs_edge.tx.protect.guard import Protection
    from mcs_edge.tx.seams import LiveConfig
    from mcs_edge.tx.sip.router import SipRouter
    from mcs_edge.tx.sip.websocket import SipWebSocketFactory
    from mcs_edge.tx.tls.certificates import CertificateStore
    from mcs_edge.tx.turn.server import TurnService
    from mcs_edge.tx.web.check import NetworkCheck
    from mcs_edge.tx.web.proxy import HttpProxy

__all__ = ["FrontResource", "bound_tenant"]


class FrontResource(Resource):
    """Root of the HTTPS site."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        live: LiveConfig,
        *,
        certs: CertificateStore,
        protection: Protection,
        clock: Callable[[], float],
        add_collector: Callable[[str, Any], None],
        sip: SipRouter,
        sip_ws: SipWebSocketFactory | None,
        http_proxy: HttpProxy,
        turn: TurnService | None = None,
        check: NetworkCheck | None = None,
    ) -> None:
        """Built by the composition root after everything it hands requests to: the SIP router and
        its WebSocket factory, the reverse proxy, TURN (the iceServers endpoint) and the check page."""
        super().__init__()
        self.live = live
        self.protection = protection
        self.sip = sip
        self.sip_ws = sip_ws
        self.http_proxy = http_proxy
        self.turn = turn
        self.check = check
        self.handoff = CertificateHandoff(certs, protection.credential_failure, clock, add_collector)

    def render(self, request: Request) -> bytes:
        request.setHeader(b"server", b"mcs-edge")
        request.setHeader(b"x-content-type-options", b"nosniff")
        tenant, status, reason = bound_tenant(self.live, request)
        if tenant is None:
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"{status} {reason}\n".encode()
        turn = self.turn
        if turn is not None and request.path == b"/.well-known/mcs-edge/ice-servers":
            protection = self.protection
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
        check = self.check  # network check page (tx/web/check.py)
        if check is not None and check.handles(request.path):
            return check.render(request, tenant)  # type: ignore[no-any-return]
        upgrade = (request.getHeader("upgrade") or "").lower()
        if upgrade == "websocket":
            refused = refuse_version(request, tenant, self.sip)
            if refused is not None:
                return refused
            offered = [p.strip() for p in (request.getHeader("sec-websocket-protocol") or "").split(",")]
            if "sip" in offered and self.sip_ws is not None:
                refusal = take_over(request, self.sip_ws, tenant)
                return NOT_DONE_YET if refusal is None else refusal  # type: ignore[return-value]
            elif tenant.backend_http and pass_websocket(self.http_proxy, request, tenant):  # widget chat
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
