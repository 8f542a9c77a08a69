"""The ice-servers endpoint: ``GET https://<tenant domain>/.well-known/mcs-edge/ice-servers``.

A tenant's platform (or its web widget back end) fetches the ``RTCConfiguration.iceServers`` JSON
with fresh TURN REST credentials for one user, authenticated with the tenant's bearer secret
(``tenants.api_secret``, compared in constant time). :mod:`mcs_edge.tx.web.front` hands the request here
once it is bound to one tenant (Host and SNI agree). The URLs list what the service listens on:
``stun:``/``turn:`` (UDP, TCP) at ``edge.public_address``, ``turns:`` at the request's host name
(it must match the certificate) on the HTTPS port and on ``listen.turns``.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from mcs_edge.core.stun.turn import rest_password
from mcs_edge.tx.turn.server import turn_username

if TYPE_CHECKING:
    from twisted.web.server import Request

    from mcs_edge.config import TenantConfig
    from mcs_edge.tx.turn.server import TurnService

__all__ = ["ICE_SERVERS_PATH", "ice_servers", "render_ice_servers"]

ICE_SERVERS_PATH = b"/.well-known/mcs-edge/ice-servers"
_USER_RE = re.compile(r"[A-Za-z0-9._~-]{1,64}")  # fullmatch
_TTL_RE = re.compile(r"[0-9]{1,9}")


def _url_host(ip_or_name: str) -> str:
    return f"[{ip_or_name}]" if ":" in ip_or_name else ip_or_name


def ice_servers(
    turn: TurnService,
    tenant: TenantConfig,
    host: str,
    https_port: int,
    user: str,
    ttl: int,
    wall: float,
) -> dict[str, Any]:
    """The ``RTCConfiguration.iceServers`` JSON for ``tenant`` with fresh REST credentials."""
    assert tenant.turn_secret is not None
    expiry = int(wall) + ttl
    username = turn_username(expiry, user, tenant.id)
    credential = rest_password(tenant.turn_secret.encode(), username)
    public = _url_host(turn.config.edge.public_address)
    ports = turn.ports
    stun: list[str] = []
    urls: list[str] = []
    udp = ports.get("turn_udp")
    tcp = ports.get("turn_tcp")
    if udp is not None:
        stun.append(f"stun:{public}:{udp}")
        urls.append(f"turn:{public}:{udp}?transport=udp")
    if tcp is not None:
        urls.append(f"turn:{public}:{tcp}?transport=tcp")
    if turn.https_listener is not None:
        urls.append(f"turns:{_url_host(host)}:{https_port}?transport=tcp")
    turns = ports.get("turns")
    if turns is not None:
        urls.append(f"turns:{_url_host(host)}:{turns}?transport=tcp")
    servers: list[dict[str, Any]] = []
    if stun:
        servers.append({"urls": stun})
    if urls:
        servers.append({"urls": urls, "username": username, "credential": credential})
    return {"iceServers": servers, "ttl": ttl, "expires": expiry}


def _bearer(request: Request) -> bytes | None:
    value = request.getHeader("authorization") or ""
    scheme, _sep, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode()


def render_ice_servers(
    turn: TurnService,
    request: Request,
    tenant: TenantConfig,
    on_wrong_secret: Callable[[str], None] | None = None,
) -> bytes:
    """``GET /.well-known/mcs-edge/ice-servers``: ``Authorization: Bearer <tenants.api_secret>``.

    Query: ``user`` (``[A-Za-z0-9._~-]{1,64}``, default a random id) and ``ttl`` (seconds, at most
    ``turn.credential_ttl``). 404 when the tenant has no ``api_secret`` or no ``turn_secret``, 401
    on a missing or wrong bearer token (compared in constant time; a wrong one is reported to
    ``on_wrong_secret(source)``, the guard's ban list), 400 on a bad query.
    """
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-type", b"application/json")
    if request.method not in (b"GET", b"HEAD"):
        request.setResponseCode(405)
        request.setHeader(b"allow", b"GET, HEAD")
        return b'{"error": "method not allowed"}\n'
    if tenant.api_secret is None or tenant.turn_secret is None:
        request.setResponseCode(404)
        return b'{"error": "not found"}\n'
    token = _bearer(request)
    if token is None or not hmac.compare_digest(token, tenant.api_secret.encode()):
        turn.api_refusals += 1
        client = getattr(request.getClientAddress(), "host", None)
        if token is not None and on_wrong_secret is not None and isinstance(client, str):
            on_wrong_secret(client)  # a wrong secret (not a missing one) counts toward a ban
        if turn.ratelog.allow("TRN401"):
            turn.log.warn(
                "TRN401 {tenant} ice-servers: bad or missing bearer token from {client}",
                tenant=tenant.id,
                client=request.getClientAddress().host if hasattr(request, "getClientAddress") else "?",
            )
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", b'Bearer realm="mcs-edge"')
        return b'{"error": "unauthorized"}\n'
    args = parse_qs((request.uri.partition(b"?")[2]).decode("latin-1"), max_num_fields=8)
    user = (args.get("user") or [secrets.token_hex(8)])[0]
    ttl_text = (args.get("ttl") or [str(turn.config.turn.credential_ttl)])[0]
    if not _USER_RE.fullmatch(user) or not _TTL_RE.fullmatch(ttl_text):
        request.setResponseCode(400)
        return b'{"error": "bad user or ttl"}\n'
    ttl = max(60, min(int(ttl_text), turn.config.turn.credential_ttl))
    host = (request.getRequestHostname() or b"").decode("ascii", "replace")
    https_port = getattr(request.getHost(), "port", turn.config.listen.https.port)
    body = ice_servers(turn, tenant, host, https_port, user, ttl, turn.wall())
    return (json.dumps(body) + "\n").encode()
