"""The admin web panel on ``listen.admin``: plain HTML/JS pages over the JSON admin API, behind a sign-in.

Theory of operation
-------------------
``/panel/`` serves ``mcs_edge/static/panel.html``, ``panel.js`` and ``panel.css`` (no build step, no
inline script or style: the Content-Security-Policy allows only this origin's files). The pages
(customers, add/edit customer, live calls with quality, bans, reload) are drawn by ``panel.js`` from
the JSON admin API. The panel holds no state of the edge and has no way of its own to change it:
``/panel/api/<path>`` *is* the admin API (:class:`~mcs_edge.tx.ops.admin.AdminResource`, the same
routes, validation and errors as ``/api/<path>``), reached with a session instead of the bearer
token:

==============================  ==================================================================
``POST /panel/api/session``     sign in: ``{"operator": name, "password": ...}``; operator
                                ``admin`` with the admin token, or a named operator (argon2id
                                hashes in ``<state_dir>/operators.json``, :mod:`mcs_edge.operators`).
                                Sets the session cookie and answers the CSRF token.
``GET /panel/api/session``      who is signed in, and the CSRF token (the page reloads)
``DELETE /panel/api/session``   sign out
``* /panel/api/<path>``         forwarded to the admin API's ``/api/<path>``
==============================  ==================================================================

Sessions: a random id (256 bits) in the cookie ``mcs_edge_panel`` (``Secure; HttpOnly;
SameSite=Strict; Path=/panel``), kept in memory (a restart signs everyone out), ended after
``IDLE`` seconds without a request or ``LIFETIME`` seconds in all, at most ``MAX_SESSIONS`` at a time
(the oldest goes). Every request that changes something (any method but GET/HEAD, sign-out
included) must carry the session's CSRF token in ``X-CSRF-Token``; sign-in must be JSON (a plain
HTML form from another site cannot post it). Without a valid session every ``/panel/api/`` request
but sign-in gets 401; a missing or wrong CSRF token gets 403. Failed sign-ins are counted
(``mcs_edge_admin_requests_total{result="panel_signin_failed"}``), logged rate-limited (``ADM402``),
count toward the per-source ban of the admin API (a banned source gets 403), and more than
``MAX_FAILURES`` in ``FAILURE_WINDOW`` seconds from anywhere refuse every sign-in with 429 until the
window passes. Successful ones are logged (``ADM200``, the operator's name, never a secret).
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from mcs_edge.operators import verify
from mcs_edge.tx.ops.admin import MAX_BODY, AdminBackend, AdminResource, AdminSite
from mcs_edge.tx.ops.logs import RateLimitedLog

__all__ = ["COOKIE", "PanelResource", "admin_site_with_panel"]

COOKIE: Final = "mcs_edge_panel"
IDLE: Final = 8 * 3600.0
LIFETIME: Final = 24 * 3600.0
MAX_SESSIONS: Final = 256
MAX_FAILURES: Final = 10
FAILURE_WINDOW: Final = 60.0
CSP: Final = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_STATIC: Final = {
    "": ("panel.html", b"text/html; charset=utf-8"),
    "panel.js": ("panel.js", b"text/javascript; charset=utf-8"),
    "panel.css": ("panel.css", b"text/css; charset=utf-8"),
}
_SAFE: Final = frozenset({"GET", "HEAD"})


@dataclass(slots=True)
class _Session:
    operator: str
    csrf: str
    created: float
    seen: float


def _static(name: str) -> bytes:
    return (resources.files("mcs_edge") / "static" / name).read_bytes()


class PanelResource(Resource):
    """``/panel/...`` (see the module docstring)."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        backend: AdminBackend,
        api: AdminResource,
        state_dir: Callable[[], str],
        now: Callable[[], float],
    ) -> None:
        super().__init__()
        self.backend = backend
        self.api = api
        self._state_dir = state_dir
        self._now = now
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        self._failures: deque[float] = deque()
        self.refusals = RateLimitedLog(self.log, burst=5, window=10.0)

    # -- dispatch -------------------------------------------------------------------------------
    def render(self, request: Request) -> Any:
        request.setHeader(b"content-security-policy", CSP)
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        path = (request.path or b"/").decode("latin-1")
        method = request.method.decode("latin-1")
        if path == "/panel":
            request.setResponseCode(302)
            request.setHeader(b"location", b"/panel/")
            return b""
        rest = path[len("/panel/") :]
        if rest in _STATIC:
            if method not in _SAFE:
                return self._json(request, 405, {"error": f"method {method} not allowed here"})
            name, ctype = _STATIC[rest]
            request.setHeader(b"content-type", ctype)
            return _static(name)
        if rest == "api/session":
            return self._session_endpoint(request, method)
        if rest.startswith("api/"):
            session = self._session(request)
            if session is None:
                return self._refuse(request, 401, "sign in first")
            if method not in _SAFE and not self._csrf_ok(request, session):
                return self._refuse(request, 403, "missing or wrong CSRF token")
            return self._forward(request, "/" + rest)
        return self._json(request, 404, {"error": "not found"})

    # -- sessions -------------------------------------------------------------------------------
    def _session(self, request: Request) -> _Session | None:
        sid = request.getCookie(COOKIE.encode())
        if not sid:
            return None
        key = sid.decode("latin-1")
        session = self.sessions.get(key)
        if session is None:
            return None
        now = self._now()
        if now - session.seen > IDLE or now - session.created > LIFETIME:
            del self.sessions[key]
            return None
        session.seen = now
        return session

    @staticmethod
    def _csrf_ok(request: Request, session: _Session) -> bool:
        given = request.getHeader("x-csrf-token") or ""
        return hmac.compare_digest(given.encode(), session.csrf.encode())

    def _session_endpoint(self, request: Request, method: str) -> bytes:
        if method == "POST":
            return self._sign_in(request)
        session = self._session(request)
        if session is None:
            return self._refuse(request, 401, "sign in first")
        if method == "GET":
            return self._json(request, 200, {"operator": session.operator, "csrf": session.csrf})
        if method == "DELETE":
            if not self._csrf_ok(request, session):
                return self._refuse(request, 403, "missing or wrong CSRF token")
            sid = (request.getCookie(COOKIE.encode()) or b"").decode("latin-1")
            self.sessions.pop(sid, None)
            self._set_cookie(request, "", expire=True)
            return self._json(request, 200, {"signed_out": True})
        return self._json(request, 405, {"error": f"method {method} not allowed here"})

    def _sign_in(self, request: Request) -> bytes:
        now = self._now()
        host = str(getattr(request.getClientAddress(), "host", "?"))
        if self.backend.is_banned(host):  # the admin API's per-source bans (wrong tokens, SIP failures)
            return self._refuse(request, 403, "source banned")
        while self._failures and now - self._failures[0] > FAILURE_WINDOW:
            self._failures.popleft()
        if len(self._failures) >= MAX_FAILURES:
            return self._refuse(request, 429, "too many failed sign-ins: wait a minute")
        ctype = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return self._refuse(request, 415, "sign-in must be JSON")
        data = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        try:
            body = json.loads(data) if len(data) <= MAX_BODY else None
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return self._refuse(request, 400, "the body must be a JSON object")
        operator = body.get("operator") or "admin"
        password = body.get("password")
        if not isinstance(operator, str) or not isinstance(password, str) or not password:
            return self._refuse(request, 400, "'operator' and 'password' must be strings")
        if operator == "admin":
            ok = hmac.compare_digest(password.encode(), self.backend.token().encode())
        else:
            ok = verify(self._state_dir(), operator, password)
        if not ok:
            self._failures.append(now)
            self.backend.credential_failure(host)  # counts toward a ban of the source, like a wrong token
            return self._refuse(request, 401, "wrong operator or password", signin=True)
        sid = secrets.token_urlsafe(32)
        session = _Session(operator, secrets.token_urlsafe(32), now, now)
        self.sessions[sid] = session
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        self._set_cookie(request, sid)
        peer = request.getClientAddress()
        self.log.info(
            "ADM200 panel sign-in by {operator} from {peer}",
            operator=operator,
            peer=getattr(peer, "host", "?"),
        )
        self.backend.count("panel_signin")
        return self._json(request, 200, {"operator": operator, "csrf": session.csrf})

    @staticmethod
    def _set_cookie(request: Request, value: str, expire: bool = False) -> None:
        cookie = f"{COOKIE}={value}; Path=/panel; Secure; HttpOnly; SameSite=Strict"
        if expire:
            cookie += "; Max-Age=0"
        request.setHeader(b"set-cookie", cookie.encode())

    # -- forwarding to the admin API ------------------------------------------------------------
    def _forward(self, request: Request, api_path: str) -> Any:
        """Hand the request to the admin API as ``api_path`` with the bearer token it requires."""
        request.path = api_path.encode("latin-1")
        request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + self.backend.token().encode()])
        return self.api.render(request)

    # -- output ---------------------------------------------------------------------------------
    def _refuse(self, request: Request, status: int, reason: str, signin: bool = False) -> bytes:
        peer = request.getClientAddress()
        self.refusals.warn(
            "ADM402",
            "ADM402 panel request refused from {peer}: {reason}",
            peer=getattr(peer, "host", "?"),
            reason=reason,
        )
        self.backend.count("panel_signin_failed" if signin else "panel_refused")
        return self._json(request, status, {"error": reason})

    @staticmethod
    def _json(request: Request, status: int, payload: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return (json.dumps(payload) + "\n").encode()


class _Root(Resource):
    """``/panel...`` to the panel, everything else to the admin API resource."""

    isLeaf = True

    def __init__(self, api: AdminResource, panel: PanelResource) -> None:
        super().__init__()
        self.api = api
        self.panel = panel

    def render(self, request: Request) -> Any:
        path = request.path or b"/"
        if path == b"/panel" or path.startswith(b"/panel/"):
            return self.panel.render(request)
        if path == b"/":
            request.setResponseCode(302)
            request.setHeader(b"location", b"/panel/")
            return b""
        return self.api.render(request)


def admin_site_with_panel(
    backend: AdminBackend, state_dir: Callable[[], str], now: Callable[[], float]
) -> Site:
    """The admin listener's site: the JSON API, /metrics, /health and the panel."""
    api = AdminResource(backend)
    panel = PanelResource(backend, api, state_dir, now)
    site = AdminSite(_Root(api, panel))
    site.displayTracebacks = False
    site.timeOut = 30
    return site
