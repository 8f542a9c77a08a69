"""Plain JavaScript helpers the edge serves to web clients (no build step), on every tenant's host.

=========================================  ==========================================================
path                                       what
=========================================  ==========================================================
``/.well-known/mcs-edge/reconnect.js``     calls that survive a network change: reconnect with
                                           backoff, register again, ICE restart of live sessions
                                           (``mcs_edge/static/reconnect.js``; JsSIP adapter included)
=========================================  ==========================================================

The files are read once from the package and served with a one-hour cache lifetime.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from twisted.web.server import Request

__all__ = ["SCRIPTS", "render_script"]

SCRIPTS: Final = {b"/.well-known/mcs-edge/reconnect.js": "reconnect.js"}
_cache: dict[str, bytes] = {}


def render_script(request: Request) -> bytes:
    """Serve the script at ``request.path`` (a key of :data:`SCRIPTS`)."""
    if request.method not in (b"GET", b"HEAD"):
        request.setResponseCode(405)
        request.setHeader(b"allow", b"GET, HEAD")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"405 method not allowed\n"
    name = SCRIPTS[request.path]
    data = _cache.get(name)
    if data is None:
        data = _cache[name] = (resources.files("mcs_edge") / "static" / name).read_bytes()
    request.setHeader(b"content-type", b"text/javascript; charset=utf-8")
    request.setHeader(b"cache-control", b"public, max-age=3600")
    return data
