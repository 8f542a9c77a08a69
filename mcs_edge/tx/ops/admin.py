"""The admin listener (``listen.admin``, loopback by default): JSON admin API, /metrics, /health.

Theory of operation
-------------------
One small ``twisted.web`` site. Open endpoints (for Prometheus and load balancers; keep the
listener on loopback or a management network):

* ``GET /metrics``: Prometheus text exposition (:mod:`mcs_edge.tx.ops.metrics`);
* ``GET /health/live``: 200 while the process answers;
* ``GET /health/ready``: 200 when every readiness check passes (listeners up, configuration
  loaded, not draining, plus the checks components add with ``service.health.add_check``, e.g.
  the media port pool), else 503; the body lists each check.

The JSON API under ``/api/`` needs ``Authorization: Bearer <token>``: the token is ``[admin]
token`` when set, else the content of ``<state_dir>/admin-token``, generated (0600) on first start.
A missing or wrong token gets 401 (compared with ``hmac.compare_digest``); the token is never
logged. A wrong token counts as a failed authentication of its source, like a SIP password the PBX
refused: ``guard.ban_failures`` of them within ``guard.ban_window`` ban the source (unless
``guard.allow_networks`` holds it), and a banned source gets 403 on ``/api/`` (and is refused on
the client listeners) until the ban ends. Endpoints:

==========================================  ======================================================
``GET /api/status``                         version, tenants, connections, calls, draining, workers
``GET /api/tenants``                        tenants with their connection, registration, call counts, PBX state
``POST /api/tenants``                       add a tenant (body: the ``[[tenants]]`` table as JSON)
``GET /api/tenants/<id>``                   one tenant's configuration (secrets redacted)
``GET /api/tenants/<id>/tunnel``            the tenant side's wg-quick file (its key pair generated once)
``PUT /api/tenants/<id>``                   replace a tenant's table
``PATCH /api/tenants/<id>``                 change some keys (``null`` removes a key)
``DELETE /api/tenants/<id>``                remove a tenant (its connections are closed cleanly)
``GET /api/connections[?tenant=<id>]``      live client connections
``GET /api/calls[?tenant=<id>]``            calls up (agent AOR, live quality figures)
``GET /api/certificates``                   each tenant's served certificate: names, expiry, load error
``GET /api/checks``                         each tenant's last network-check report (result, time, figures)
``GET /api/bans``                           sources banned now
``POST /api/bans``                          ban by hand: ``{"source": ip, "duration": s}``
``DELETE /api/bans/<ip>``                   lift a ban
``POST /api/reload``                        re-read the configuration (like SIGHUP)
==========================================  ======================================================

Tenant changes are validated exactly like the file and saved atomically before they are applied
(see :mod:`mcs_edge.config_store` for where); an invalid change answers 400 with every error and
changes nothing. Applying a change is a reload: live connections, registrations and calls of the
other tenants are untouched.

The resource talks to an :class:`AdminBackend`: :class:`LocalAdmin` for one edge process; the
worker supervisor (:mod:`mcs_edge.tx.ops.workers`) has its own that fans out to the workers. Backend
methods may return a Deferred.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mcs_edge import __version__
from mcs_edge import config as config_mod
from mcs_edge.config_store import ConfigSource
from mcs_edge.errors import ConfigErrors
from mcs_edge.tx.ops.logs import RateLimitedLog
from mcs_edge.tx.ops.metrics import CONTENT_TYPE
from mcs_edge.tx.sip.router import call_state

if TYPE_CHECKING:
    from mcs_edge.config import EdgeConfig
    from mcs_edge.tx.cluster.replicator import Replicator
    from mcs_edge.tx.ops.metrics import EdgeMetrics
    from mcs_edge.tx.protect.guard import Protection
    from mcs_edge.tx.seams import LiveConfig, PortPool, SipView, TunnelState
    from mcs_edge.tx.tls.certificates import CertificateStore
    from mcs_edge.tx.tunnel.wireguard import WireGuardTunnel

__all__ = [
    "TOKEN_FILE",
    "AdminBackend",
    "AdminResource",
    "AdminSite",
    "AdminToken",
    "ApiError",
    "Health",
    "LocalAdmin",
    "announce_admin",
    "load_or_create_token",
    "note_bound_ports",
]

TOKEN_FILE = "admin-token"
MAX_BODY = 1 << 20

log = Logger(namespace="mcs_edge.tx.ops.admin")


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


# ---------------------------------------------------------------------------------------------
# Token
# ---------------------------------------------------------------------------------------------


def load_or_create_token(config: EdgeConfig) -> str:
    """The admin token: ``[admin] token``, else ``<state_dir>/admin-token`` (created 0600)."""
    if config.admin.token:
        return config.admin.token
    path = os.path.join(config.state_dir, TOKEN_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
        if len(token) >= 16:
            return token
    except FileNotFoundError:
        pass
    os.makedirs(config.state_dir, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    try:
        os.link(tmp, path)  # never replace a token another process created meanwhile
    except FileExistsError:
        os.unlink(tmp)
        return load_or_create_token(config)
    os.unlink(tmp)
    log.info("ADM101 admin token generated into {path}", path=path)
    return token


class AdminToken:
    """The admin token of one process (an edge or the worker supervisor): ``[admin] token`` of the
    current configuration, else the state directory's file, read (or created) once."""

    def __init__(self, config: Callable[[], EdgeConfig]) -> None:
        self._config = config
        self._file_token: str | None = None

    def get(self) -> str:
        cfg = self._config()
        if cfg.admin.token:
            return cfg.admin.token
        if self._file_token is None:
            self._file_token = load_or_create_token(cfg)
        return self._file_token

    @property
    def cached(self) -> str | None:
        """The token once known (never reads or creates the token file): for log redaction."""
        return self._config().admin.token or self._file_token


# ---------------------------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------------------------

Check = Callable[[], tuple[bool, str]]


class Health:
    """Readiness checks: name -> fn() -> (ok, detail). Components add their own."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def remove_check(self, name: str) -> None:
        self._checks.pop(name, None)

    def ready(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        results: dict[str, dict[str, Any]] = {}
        ok = True
        for name, check in list(self._checks.items()):
            try:
                passed, detail = check()
            except Exception as exc:
                passed, detail = False, f"check failed: {type(exc).__name__}"
            results[name] = {"ok": bool(passed), "detail": detail}
            ok = ok and bool(passed)
        return ok, results


def service_checks(
    live: LiveConfig,
    running: Callable[[], bool],
    listeners: Callable[[], Iterable[Any]],
    draining: Callable[[], bool],
    allocator: PortPool | None = None,
    tunnel: TunnelState | None = None,
) -> dict[str, Check]:
    """The readiness checks every edge process has. ``running``: the service is started;
    ``listeners``: its listening services (named ``twisted.application`` services); ``draining``:
    the drain has begun (tx/ops/drain.py); ``allocator``: the relay port pool; ``tunnel``: the
    WireGuard backhaul, when configured."""

    def listeners_up() -> tuple[bool, str]:
        if not running():
            return False, "not started"
        missing = [
            child.name
            for child in listeners()
            if child.name != "admin" and _bound_port(child, "n/a") is None and not draining()
        ]
        return (not missing), ("missing: " + ", ".join(missing)) if missing else "up"

    def config() -> tuple[bool, str]:
        return True, f"{len(live.config.tenants)} tenant(s)"

    def drain_state() -> tuple[bool, str]:
        return (not draining()), "draining" if draining() else "accepting"

    def tunnel_up() -> tuple[bool, str]:
        if tunnel is None:
            return True, "no [tunnel]"
        return (
            (True, f"{tunnel.interface} up")
            if tunnel.running
            else (False, f"wireguard-go for {tunnel.interface} is not running")
        )

    def media_ports() -> tuple[bool, str]:
        if allocator is None:
            return True, "no media relay"
        free, capacity = allocator.free, allocator.capacity
        return free >= MIN_FREE_PORTS, f"{free} of {capacity} relay ports free"

    checks: dict[str, Check] = {
        "listeners": listeners_up,
        "config": config,
        "draining": drain_state,
        "media_ports": media_ports,
    }
    if live.config.tunnel.interface is not None:  # the WireGuard backhaul (tx/tunnel/wireguard.py)
        checks["tunnel"] = tunnel_up
    return checks


def _bound_port(server: Any, default: Any = None) -> Any:
    """The listening port of a ``twisted.application.internet`` server (None while not bound).

    twisted keeps it in the private ``_port`` of ``TCPServer``/``UDPServer``/``SSLServer``
    and offers no public accessor: this is the one place that reads it."""
    return getattr(server, "_port", default)


def note_bound_ports(services: Iterable[Any], ports: dict[str, Any]) -> None:
    """Add the listening port of each started ``services`` child to ``ports`` by its name."""
    for child in services:
        port = _bound_port(child)
        if port is not None:
            ports[child.name] = port


def announce_admin(ports: Mapping[str, Any]) -> None:
    """Log where the admin listener answers (ADM100), once it is bound."""
    admin = ports.get("admin")
    if admin is not None:
        where = admin.getHost()
        log.info(
            "ADM100 admin API, /metrics and /health on http://{host}:{port}/",
            host=where.host,
            port=where.port,
        )


#: Relay ports one more call may need (two legs, each an RTP/RTCP pair without rtcp-mux): below
#: this the port pool is exhausted and ``/health/ready`` fails its ``media_ports`` check.
MIN_FREE_PORTS = 4


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


class AdminBackend(Protocol):
    @property
    def source(self) -> ConfigSource: ...

    def token(self) -> str: ...
    def count(self, result: str) -> None: ...
    def credential_failure(self, host: str) -> None: ...
    def is_banned(self, host: str) -> bool: ...
    def config(self) -> EdgeConfig: ...
    def metrics(self) -> bytes | Deferred[bytes]: ...
    def ready(self) -> Any: ...
    def status(self) -> Any: ...
    def tenant_stats(self) -> Any: ...
    def connections(self, tenant: str | None) -> Any: ...
    def calls(self, tenant: str | None) -> Any: ...
    def bans(self) -> Any: ...
    def certificates(self) -> Any: ...
    def checks(self) -> Any: ...
    def ban(self, source: str, tenant: str | None, duration: float | None) -> Any: ...
    def lift(self, source: str) -> Any: ...
    def reload(self) -> Any: ...
    def apply(self, config: EdgeConfig) -> Any: ...
    def cluster(self) -> Any: ...
    def promote(self) -> Any: ...


class LocalAdmin:
    """The admin backend of one edge process: each collaborator is handed in by the composition
    root (tx/service.py); none is reached through another."""

    def __init__(
        self,
        live: LiveConfig,
        source: ConfigSource,
        *,
        metrics: EdgeMetrics,
        protection: Protection,
        health: Health,
        sip: SipView,
        certs: CertificateStore,
        clock: Callable[[], float],
        wall: Callable[[], float],
        apply: Callable[[EdgeConfig], bool],
        reload: Callable[[], tuple[bool, list[str]]],
        draining: Callable[[], bool],
        media_session: Callable[[str], Any],
        check_reports: Callable[[], Mapping[str, dict[str, Any]]],
        backend_state: Callable[[str], dict[str, Any] | None],
        tunnel: WireGuardTunnel | None = None,
        cluster: Replicator | None = None,
        worker: int | None = None,
    ) -> None:
        """``apply``: swap in a validated configuration; ``reload``: re-read it from ``source``
        ((ok, errors)); ``media_session``: a call's media session by Call-ID (or None);
        ``check_reports``: the network-check reports by tenant (tx/web/check.py);
        ``backend_state``: a tenant's PBX as the OPTIONS check sees it (tx/sip/health.py)."""
        self.live = live
        self._source = source
        self._metrics = metrics
        self._protection = protection
        self._health = health
        self._sip = sip
        self._certs = certs
        self._clock = clock
        self._wall = wall
        self._apply = apply
        self._reload = reload
        self._draining = draining
        self._media_session = media_session
        self._check_reports = check_reports
        self._backend_state = backend_state
        self._tunnel = tunnel
        self._cluster = cluster
        self.worker = worker
        self._token = AdminToken(lambda: live.config)

    @property
    def source(self) -> ConfigSource:
        return self._source

    def token(self) -> str:
        return self._token.get()

    @property
    def cached_token(self) -> str | None:
        """The token once known (never reads or creates the token file): for log redaction."""
        return self._token.cached

    def count(self, result: str) -> None:
        self._metrics.count_admin_request(result)

    def credential_failure(self, host: str) -> None:
        self._protection.credential_failure(host, None, "admin_token")

    def is_banned(self, host: str) -> bool:
        return self._protection.is_banned(host)

    def config(self) -> EdgeConfig:
        return self.live.config

    def metrics(self) -> bytes:
        return self._metrics.render()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return self._health.ready()

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "worker": self.worker,
            "pid": os.getpid(),
            "tenants": len(self.live.config.tenants),
            "connections": len(self._sip.flows),
            "calls": self._sip.call_count(),
            "draining": self._draining(),
            "config": self.source.tenants_file,
        }

    def cluster(self) -> dict[str, Any]:
        replicator = self._cluster
        if replicator is None:
            raise ApiError(404, "cluster.enabled is false")
        return {"cluster": replicator.status()}

    def promote(self) -> dict[str, Any]:
        """keepalived's notify_master (docs/ha.md): this node becomes the active one."""
        replicator = self._cluster
        if replicator is None:
            raise ApiError(404, "cluster.enabled is false")
        return {"cluster": replicator.promote()}

    def tenant_stats(self) -> dict[str, dict[str, Any]]:
        sip = self._sip
        out: dict[str, dict[str, Any]] = {}

        def slot(tid: str) -> dict[str, Any]:
            return out.setdefault(tid, {"connections": 0, "registrations": 0, "calls": 0})

        for flow in sip.flows.values():
            slot(flow.tenant.id)["connections"] += 1
        for tid, n in sip.registrations().items():
            slot(tid)["registrations"] += n
        for call in sip.calls_up():
            slot(call.tenant_id)["calls"] += 1
        for t in self.live.config.tenants:  # the PBX as the OPTIONS check sees it (tx/sip/health.py)
            state = self._backend_state(t.id)
            if state is not None:
                slot(t.id)["backend"] = state
            tunnel = self._tunnel.peer_status(t) if self._tunnel is not None else None
            if tunnel is not None:
                slot(t.id)["tunnel"] = tunnel
        return out

    def connections(self, tenant: str | None) -> list[dict[str, Any]]:
        sip = self._sip
        out = []
        for flow in sip.flows.values():
            if tenant is not None and flow.tenant.id != tenant:
                continue
            registered, aor = sip.registration(flow.id)
            out.append(
                {
                    "id": flow.id,
                    "worker": self.worker,
                    "tenant": flow.tenant.id,
                    "transport": flow.transport,
                    "peer": f"{flow.peer[0]}:{flow.peer[1]}",
                    "registered": registered,
                    "aor": aor,
                    "calls": sip.calls_on_flow(flow.id),
                }
            )
        return out

    def calls(self, tenant: str | None) -> list[dict[str, Any]]:
        now = self._clock()
        out = []
        for call in self._sip.calls_up():
            if tenant is not None and call.tenant_id != tenant:
                continue
            out.append(
                {
                    "call_id": call.call_id,
                    "worker": self.worker,
                    "tenant": call.tenant_id,
                    "connection": call.flow_id,
                    "direction": "from_client" if call.from_client else "to_client",
                    "state": call_state(call),
                    "age": round(now - call.started, 3),
                    **_call_media(self._media_session(call.call_id)),
                }
            )
        return out

    def checks(self) -> dict[str, dict[str, Any]]:
        """Per tenant: the last network-check report posted to this process (tx/web/check.py)."""
        return dict(self._check_reports())

    def certificates(self) -> list[dict[str, Any]]:
        """Per tenant: the certificate it serves (names, expiry) or why its files do not load."""
        loaded = self._certs.loaded()
        errors = self._certs.errors
        wall = self._wall()
        out = []
        for t in self.live.config.tenants:
            cert = loaded.get(t.id)
            row: dict[str, Any] = {"tenant": t.id, "mode": t.certificate, "error": errors.get(t.id)}
            if cert is not None:
                info = cert.info
                row.update(
                    names=list(info.names or (info.subject,)),
                    not_after=info.not_after.isoformat(),
                    expires_in=round(info.not_after.timestamp() - wall),
                )
            out.append(row)
        return out

    def bans(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [_ban_json(b, now) for b in self._protection.bans.list_bans(now)]

    def ban(self, source: str, tenant: str | None, duration: float | None) -> dict[str, Any]:
        now = self._clock()
        return _ban_json(self._protection.bans.ban(source, tenant, now, duration), now)

    def lift(self, source: str) -> bool:
        return self._protection.bans.lift(source)

    def reload(self) -> tuple[bool, list[str]]:
        return self._reload()

    def apply(self, config: EdgeConfig) -> bool:
        return self._apply(config)

    def tunnel_config(self, tenant_id: str) -> Any:
        """(200, text/plain, wg-quick file) for the tenant side of its tunnel (tx/tunnel/wireguard.py)."""
        tenant = self.live.config.tenant(tenant_id)
        if tenant is None:
            raise ApiError(404, f"no tenant {tenant_id!r}")
        if self._tunnel is None or tenant.tunnel is None:
            raise ApiError(404, f"tenant {tenant_id!r} has no tunnel")
        return self._tunnel.tenant_config(tenant).addCallback(
            lambda text: (200, "text/plain; charset=utf-8", text.encode())
        )


def _call_media(session: Any) -> dict[str, Any]:
    """The agent's AOR and the live quality figures of a call's media (tx/media/quality.py)."""
    if session is None:
        return {"agent": None, "quality": None}
    info = session.owner_data
    return {"agent": getattr(info, "agent", None) or None, "quality": session.quality.summary()}


def _ban_json(ban: Any, now: float) -> dict[str, Any]:
    return {
        "source": ban.source,
        "tenant": ban.tenant,
        "failures": ban.failures,
        "remaining": round(max(0.0, ban.until - now), 1),
        "enforced": ban.enforced,
    }


# ---------------------------------------------------------------------------------------------
# The resource
# ---------------------------------------------------------------------------------------------


class AdminSite(Site):
    """The admin site: no access log (scrapes every few seconds would flood it)."""

    def log(self, request: Any) -> None:
        return None


def admin_site(backend: AdminBackend) -> AdminSite:
    site = AdminSite(AdminResource(backend))
    site.displayTracebacks = False
    site.timeOut = 30
    return site


class AdminResource(Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, backend: AdminBackend) -> None:
        super().__init__()
        self.backend = backend
        self.refusals = RateLimitedLog(self.log, burst=5, window=10.0)

    def render(self, request: Request) -> Any:
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        path = (request.path or b"/").decode("latin-1")
        method = request.method.decode("latin-1")
        d = maybeDeferred(self._route, request, method, path)
        d.addCallbacks(
            lambda result: self._write(request, result),
            lambda failure: self._fail(request, method, path, failure),
        )
        d.addErrback(lambda _f: None)  # the connection may be gone: nothing left to do
        return NOT_DONE_YET

    # -- dispatch -----------------------------------------------------------------------------
    def _route(self, request: Request, method: str, path: str) -> Any:
        b = self.backend
        if path == "/metrics":
            self._only(method, "GET", "HEAD")
            return maybeDeferred(b.metrics).addCallback(lambda body: (200, CONTENT_TYPE, body))
        if path == "/health/live":
            self._only(method, "GET", "HEAD")
            return 200, {"status": "ok"}
        if path == "/health/ready":
            self._only(method, "GET", "HEAD")
            return maybeDeferred(b.ready).addCallback(
                lambda r: (200 if r[0] else 503, {"status": "ready" if r[0] else "not ready", "checks": r[1]})
            )
        if not (path == "/api" or path.startswith("/api/")):
            raise ApiError(404, "not found")
        self._authorize(request)
        parts = [unquote(p) for p in path.split("/")[2:] if p]
        tenant_q = _query(request, "tenant")
        if parts == ["status"]:
            self._only(method, "GET")
            return maybeDeferred(b.status)
        if parts == ["tenants"]:
            if method == "GET":
                return maybeDeferred(b.tenant_stats).addCallback(self._tenant_list)
            self._only(method, "POST")
            return self._add_tenant(_json_body(request))
        if len(parts) == 3 and parts[0] == "tenants" and parts[2] == "tunnel":
            self._only(method, "GET")
            tunnel_config = getattr(b, "tunnel_config", None)  # LocalAdmin only: no tunnels with workers
            if tunnel_config is None:
                raise ApiError(404, "no tunnels with workers")
            return maybeDeferred(tunnel_config, parts[1])
        if len(parts) == 2 and parts[0] == "tenants":
            tid = parts[1]
            if method == "GET":
                return self._get_tenant(tid)
            if method in ("PUT", "PATCH"):
                return self._update_tenant(tid, _json_body(request), method == "PATCH")
            self._only(method, "DELETE")
            return self._remove_tenant(tid)
        if parts == ["connections"]:
            self._only(method, "GET")
            return maybeDeferred(b.connections, tenant_q).addCallback(lambda c: {"connections": c})
        if parts == ["calls"]:
            self._only(method, "GET")
            return maybeDeferred(b.calls, tenant_q).addCallback(lambda c: {"calls": c})
        if parts == ["checks"]:
            self._only(method, "GET")
            return maybeDeferred(b.checks).addCallback(lambda x: {"checks": x})
        if parts == ["certificates"]:
            self._only(method, "GET")
            return maybeDeferred(b.certificates).addCallback(lambda x: {"certificates": x})
        if parts == ["bans"]:
            if method == "GET":
                return maybeDeferred(b.bans).addCallback(lambda x: {"bans": x})
            self._only(method, "POST")
            body = _json_body(request)
            source = body.get("source")
            duration = body.get("duration")
            if not isinstance(source, str) or not _is_ip(source):
                raise ApiError(400, "'source' must be an IP address")
            if duration is not None and (
                isinstance(duration, bool)
                or not isinstance(duration, int | float)
                or not 0 < duration <= 31_536_000
            ):
                raise ApiError(400, "'duration' must be a number of seconds (0 < d <= 1 year)")
            tenant = body.get("tenant")
            return maybeDeferred(
                b.ban, source, tenant if isinstance(tenant, str) else None, duration
            ).addCallback(lambda ban: (201, {"ban": ban}))
        if len(parts) == 2 and parts[0] == "bans":
            self._only(method, "DELETE")
            if not _is_ip(parts[1]):
                raise ApiError(400, "not an IP address")
            return maybeDeferred(b.lift, parts[1]).addCallback(
                lambda lifted: {"lifted": True} if lifted else _raise(ApiError(404, "no ban on this source"))
            )
        if parts == ["cluster"]:
            self._only(method, "GET")
            return maybeDeferred(b.cluster)
        if parts == ["cluster", "promote"]:
            self._only(method, "POST")
            return maybeDeferred(b.promote)
        if parts == ["reload"]:
            self._only(method, "POST")
            return maybeDeferred(b.reload).addCallback(
                lambda r: (
                    {"reloaded": True} if r[0] else (400, {"error": "configuration refused", "errors": r[1]})
                )
            )
        raise ApiError(404, "not found")

    @staticmethod
    def _only(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise ApiError(405, f"method {method} not allowed here")

    def _authorize(self, request: Request) -> None:
        host = str(getattr(request.getClientAddress(), "host", "?"))
        if self.backend.is_banned(host):  # banned after wrong tokens (or SIP failures): no more tries
            self.refusals.warn("ADM403", "ADM403 admin request refused from {peer}: source banned", peer=host)
            self.backend.count("banned")
            raise ApiError(403, "source banned")
        header = request.getHeader("authorization") or ""
        scheme, _, given = header.partition(" ")
        expected = self.backend.token()
        if scheme.lower() != "bearer" or not given:
            reason = "missing token"
        elif not hmac.compare_digest(given.strip().encode(), expected.encode()):
            reason = "wrong token"
            self.backend.credential_failure(host)  # feeds the per-source ban list (guard.ban_*)
        else:
            return
        self.refusals.warn(
            "ADM401",
            "ADM401 admin request refused from {peer}: {reason}",
            peer=host,
            reason=reason,
        )
        self.backend.count("unauthorized")
        raise ApiError(401, reason)

    # -- tenants --------------------------------------------------------------------------------
    def _tenant_list(self, stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
        cfg = self.backend.config()
        out = []
        for t in cfg.tenants:
            row: dict[str, Any] = {
                "id": t.id,
                "domains": list(t.domains),
                "backend_sip": str(t.backend_sip),
                "media": t.media,
                "certificate": t.certificate,
                "name": t.name,
            }
            row.update(stats.get(t.id, {"connections": 0, "registrations": 0, "calls": 0}))
            out.append(row)
        return {"tenants": out}

    def _get_tenant(self, tid: str) -> dict[str, Any]:
        t = self.backend.config().tenant(tid)
        if t is None:
            raise ApiError(404, f"no tenant {tid!r}")
        return {"tenant": config_mod.redact(t)}

    def _raw_tenants(self) -> list[dict[str, Any]]:
        try:
            return self.backend.source.tenants_raw()
        except ConfigErrors as exc:
            raise ApiError(
                409, "the configuration on disk is invalid: fix it first", [str(e) for e in exc.errors]
            ) from None

    def _add_tenant(self, body: dict[str, Any]) -> Any:
        tenants = self._raw_tenants()
        tid = body.get("id")
        if any(t.get("id") == tid for t in tenants):
            raise ApiError(409, f"tenant {tid!r} exists")
        tenants.append(_drop_nulls(body))
        return self._commit(tenants, tid, "added", 201)

    def _update_tenant(self, tid: str, body: dict[str, Any], patch: bool) -> Any:
        tenants = self._raw_tenants()
        i = next((n for n, t in enumerate(tenants) if t.get("id") == tid), -1)
        if i < 0:
            raise ApiError(404, f"no tenant {tid!r}")
        if body.get("id", tid) != tid:
            raise ApiError(400, "a tenant's id cannot change: remove it and add a new one")
        new = dict(tenants[i]) if patch else {}
        new.update(body)
        new["id"] = tid
        # a redacted answer sent back (secrets shown as REDACTED) keeps the secrets it had
        new = config_mod.unredact(new, tenants[i], config_mod.TenantConfig)
        tenants[i] = _drop_nulls(new)
        return self._commit(tenants, tid, "updated", 200)

    def _remove_tenant(self, tid: str) -> Any:
        tenants = self._raw_tenants()
        kept = [t for t in tenants if t.get("id") != tid]
        if len(kept) == len(tenants):
            raise ApiError(404, f"no tenant {tid!r}")
        return self._commit(kept, tid, "removed", 200)

    def _commit(self, tenants: list[dict[str, Any]], tid: Any, action: str, status: int) -> Any:
        source = self.backend.source
        try:
            _data, cfg = source.with_tenants(tenants)
        except ConfigErrors as exc:
            errors = [str(e) for e in exc.errors]
            for err in errors:
                self.log.info("CFG401 admin change refused: {error}", error=err)
            raise ApiError(400, "invalid tenant", errors) from None
        try:
            path = source.save_tenants(tenants)
        except (OSError, ValueError) as exc:
            self.log.error(
                "CFG500 cannot save the configuration to {path}: {error}",
                path=source.tenants_file,
                error=str(exc),
            )
            raise ApiError(500, "the change could not be saved; nothing was applied") from None
        self.log.info(
            "CFG202 tenant {tenant} {action} through the admin API, saved to {path}",
            tenant=tid,
            action=action,
            path=path,
        )
        return maybeDeferred(self.backend.apply, cfg).addCallback(
            lambda _ok: (status, {"tenant": tid, action: True, "saved_to": path})
        )

    # -- output -------------------------------------------------------------------------------
    def _write(self, request: Request, result: Any) -> None:
        status = 200
        ctype = "application/json"
        if isinstance(result, tuple) and len(result) == 3:
            status, ctype, body = result
        elif isinstance(result, tuple):
            status, payload = result
            body = _dumps(payload)
        else:
            body = _dumps(result)
        if ctype == "application/json":
            body = self._scrub(body)
        self.backend.count("ok" if status < 400 else "bad_request")
        _finish(request, status, ctype, body)

    def _scrub(self, body: bytes) -> bytes:
        """Last line of defence behind :func:`mcs_edge.config.redact`: no configured secret (nor the
        admin token) leaves in a JSON answer, whatever code path built it."""
        try:
            found = config_mod.secret_values(self.backend.config()) | {self.backend.token()}
        except Exception:  # the token file became unreadable: nothing to compare with
            found = config_mod.secret_values(self.backend.config())
        for secret in found:
            for form in {secret.encode(), json.dumps(secret)[1:-1].encode()}:
                if form and form in body:
                    body = body.replace(form, config_mod.REDACTED.encode())
        return body

    def _fail(self, request: Request, method: str, path: str, failure: Failure) -> None:
        exc = failure.value
        if isinstance(exc, ApiError):
            if exc.status != 401 and exc.message != "source banned":
                self.backend.count("bad_request" if exc.status < 500 else "error")
            payload: dict[str, Any] = {"error": exc.message}
            if exc.errors:
                payload["errors"] = exc.errors
            if exc.status == 401:
                request.setHeader(b"www-authenticate", b'Bearer realm="mcs-edge"')
            _finish(request, exc.status, "application/json", self._scrub(_dumps(payload)))
            return
        self.backend.count("error")
        self.log.failure("ADM500 admin request {method} {path} failed", failure, method=method, path=path)
        _finish(request, 500, "application/json", _dumps({"error": "internal error"}))


def _finish(request: Request, status: int, ctype: str, body: bytes) -> None:
    if request.finished or request.channel is None:
        return
    request.setResponseCode(status)
    request.setHeader(b"content-type", ctype.encode())
    request.setHeader(b"content-length", str(len(body)).encode())
    request.setHeader(b"cache-control", b"no-store")  # answers may hold a key handed over once
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()


def _raise(exc: Exception) -> Any:
    raise exc


def _query(request: Request, name: str) -> str | None:
    values = request.args.get(name.encode()) if request.args else None
    return values[0].decode("utf-8", "replace") if values else None


def _json_body(request: Request) -> dict[str, Any]:
    data = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(data) > MAX_BODY:
        raise ApiError(413, "body too large")
    try:
        obj = json.loads(data or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "the body must be a JSON object")
    return obj


def _drop_nulls(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if v is None:
            continue
        out[k] = _drop_nulls(v) if isinstance(v, dict) else v
    return out


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
