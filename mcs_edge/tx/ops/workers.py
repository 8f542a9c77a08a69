"""Several reactor processes under one supervisor (``edge.workers = N``).

Theory of operation
-------------------
One Python reactor uses one core. With ``workers = N > 1``, ``twistd mcs-edge`` runs a
:class:`Supervisor` that owns no client connection: it starts N worker processes (the same
``twistd mcs-edge`` with ``--worker i``), restarts a worker that dies, serves the admin listener
(aggregating the workers), forwards SIGHUP and, on SIGTERM, lets every worker drain and waits.

Each worker is an ordinary edge process (the composition root, tx/service.py) with a per-worker
configuration (:func:`worker_config`):

* **Client listeners are shared** (``https``, ``sip_tls``, ``http``, ``turn``, ``turns``): every
  worker opens its own socket on the same address with ``SO_REUSEPORT`` and the kernel spreads new
  connections over the workers (by a hash of the 4-tuple). Twisted's ``listenTCP`` has no such
  flag, so the worker's reactor is wrapped in :class:`ReusePortReactor`, whose ``listenTCP`` /
  ``listenUDP`` create the socket with ``SO_REUSEPORT`` for those addresses and hand it to
  ``adoptStreamPort`` / ``adoptDatagramPort``. Code that binds sockets itself (e.g. on the asyncio
  loop) checks ``reuse_port_for(reactor, host, port)``. A listener configured on port 0 is given a
  real port by the supervisor first: it binds (never listens on) a reservation socket with
  ``SO_REUSEPORT``, which keeps the port while workers come and go and receives no connection.
  ``turn`` is reserved on TCP only (a bound UDP socket in the group would receive its share of
  the datagrams); the workers bind its UDP socket on the same number. The bound numbers are in
  the supervisor's ``/api/status`` (``listeners``).
* **The backend SIP port is per worker**: ``listen.backend_sip`` port + worker index (port 0 stays
  0: each worker gets its own ephemeral port). The SIP router writes the bound port into Via,
  Record-Route and Path, so in-dialog requests and requests to a registered client come back from
  the PBX to the worker that holds the client's connection.
* **The media port range is split** with :func:`mcs_edge.core.media.ports.split_range`.
* **A local admin listener** on ``127.0.0.1:0`` (same token) that the supervisor calls.

Control channel: the worker writes one JSON line on file descriptor 3 when it is ready
(``{"event": "ready", "admin": port, "backend": port, ...}``). A worker whose supervisor dies gets
SIGTERM (Linux ``PR_SET_PDEATHSIG``) and drains.

Metrics: the supervisor's ``/metrics`` scrapes every worker's ``/metrics`` and merges them
(:func:`mcs_edge.tx.ops.metrics.merge_expositions`), adding ``mcs_edge_workers`` and
``mcs_edge_worker_restarts_total``; ``mcs_edge_admin_requests_total`` is the supervisor's own count
(the operators' requests; the workers' counts would only be the supervisor's fan-out calls). Wrong
admin tokens ban their source at the supervisor's admin listener (its own ban list). The JSON API fans out (connections, calls and bans are
concatenated with their ``worker``; tenant changes are saved once, then every worker reloads).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.application import internet
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from mcs_edge import __version__, certs
from mcs_edge.config import EdgeConfig, HostPort
from mcs_edge.config_store import ConfigSource
from mcs_edge.core.media.ports import split_range
from mcs_edge.errors import ConfigErrors, StartupError
from mcs_edge.tx.ops.admin import AdminToken, ApiError, announce_admin, note_bound_ports
from mcs_edge.tx.ops.admin_tls import admin_tls
from mcs_edge.tx.ops.metrics import merge_expositions
from mcs_edge.tx.ops.panel import admin_site_with_panel
from mcs_edge.tx.ops.signals import SighupReload
from mcs_edge.tx.ops.startup import os_reason
from mcs_edge.tx.protect.guard import Protection
from mcs_edge.tx.relay_endpoint import asyncio_loop_of, bind_socket
from mcs_edge.tx.timers import Timers, monotonic

__all__ = [
    "CONTROL_FD_ENV",
    "SHARED_LISTENERS",
    "ReusePortReactor",
    "Supervisor",
    "make_worker",
    "reactor_name",
    "reuse_port_for",
    "worker_config",
]

#: listen.* fields every worker opens with SO_REUSEPORT.
SHARED_LISTENERS = ("https", "sip_tls", "http", "turn", "turns")
CONTROL_FD_ENV = "MCS_EDGE_CONTROL_FD"
CONTROL_FD = 3
REAP_INTERVAL = 0.5


def _reap() -> None:
    try:
        from twisted.internet.process import reapAllProcesses
    except ImportError:  # pragma: no cover - not POSIX
        return
    reapAllProcesses()


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


def parse_shared_ports(text: str | None) -> dict[str, int]:
    """``https=8443,sip_tls=5061`` (the supervisor's ``--shared-ports``) -> mapping."""
    out: dict[str, int] = {}
    for item in (text or "").split(","):
        name, sep, port = item.partition("=")
        if sep and name in SHARED_LISTENERS and port.isdigit():
            out[name] = int(port)
    return out


def worker_config(config: EdgeConfig, index: int, shared_ports: dict[str, int] | None = None) -> EdgeConfig:
    """The configuration worker ``index`` runs with (see the module docstring)."""
    n = config.edge.workers
    listen = config.listen
    changes: dict[str, Any] = {}
    for name, port in (shared_ports or {}).items():
        hp = getattr(listen, name)
        if hp is not None:
            changes[name] = HostPort(hp.host, port)
    b = listen.backend_sip
    changes["backend_sip"] = HostPort(b.host, b.port + index if b.port else 0)
    admin_host = "::1" if ":" in listen.admin.host else "127.0.0.1"
    changes["admin"] = HostPort(admin_host, 0)
    lo, hi = config.media.ports
    media = replace(config.media, ports=split_range(lo, hi, n)[index])
    admin = replace(config.admin, tls="off", cert_file=None, key_file=None)  # the supervisor talks plain HTTP
    return replace(config, listen=replace(listen, **changes), media=media, admin=admin)


def shared_addresses(config: EdgeConfig) -> set[tuple[str, int]]:
    out = set()
    for name in SHARED_LISTENERS:
        hp = getattr(config.listen, name)
        if hp is not None and hp.port:
            out.add((hp.host, hp.port))
    return out


def reuse_port_for(reactor: Any, host: str, port: int) -> bool:
    """True when a socket bound to ``host:port`` must set ``SO_REUSEPORT`` (worker processes)."""
    shared = getattr(reactor, "mcs_shared_addresses", None)
    return shared is not None and (host, port) in shared


class ReusePortReactor:
    """The worker's reactor: listeners on shared addresses get ``SO_REUSEPORT`` sockets."""

    def __init__(self, reactor: Any, shared: set[tuple[str, int]]) -> None:
        self._reactor = reactor
        self.mcs_shared_addresses = frozenset(shared)
        directlyProvides(self, *providedBy(reactor))

    @property
    def wrapped(self) -> Any:
        """The real reactor this one wraps."""
        return self._reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:  # noqa: N802
        if (interface, port) not in self.mcs_shared_addresses:
            return self._reactor.listenTCP(port, factory, backlog, interface)
        from twisted.internet.error import CannotListenError

        try:
            sock = bind_socket(interface, port, socket.SOCK_STREAM, reuse_port=True)
            sock.listen(backlog)
        except OSError as exc:
            raise CannotListenError(interface, port, exc) from exc
        try:
            return self._reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        finally:
            sock.close()

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:  # noqa: N802, N803
        if (interface, port) not in self.mcs_shared_addresses:
            return self._reactor.listenUDP(port, protocol, interface, maxPacketSize)
        from twisted.internet.error import CannotListenError

        try:
            sock = bind_socket(interface, port, socket.SOCK_DGRAM, reuse_port=True)
        except OSError as exc:
            raise CannotListenError(interface, port, exc) from exc
        try:
            return self._reactor.adoptDatagramPort(sock.fileno(), sock.family, protocol, maxPacketSize)
        finally:
            sock.close()


class _WorkerControl(Service):
    """Tells the supervisor (fd 3) when the worker is ready."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        ports: Callable[[], Mapping[str, Any]],
        media_ports: Callable[[], tuple[int, int]],
        index: int,
        fd: int | None,
    ) -> None:
        """``ports``: the edge's bound listening ports by name; ``media_ports``: its media slice."""
        self.reactor = reactor
        self.ports = ports
        self.media_ports = media_ports
        self.index = index
        self.fd = fd

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.reactor.callLater(0, self._ready)

    def _ready(self) -> None:
        ports = {name: port.getHost().port for name, port in self.ports().items()}
        msg = {
            "event": "ready",
            "index": self.index,
            "pid": os.getpid(),
            "admin": ports.get("admin"),
            "backend": ports.get("backend_sip_udp"),
            "ports": ports,
            "media": list(self.media_ports()),
        }
        if self.fd is None:
            return
        try:
            os.write(self.fd, (json.dumps(msg) + "\n").encode())
        except OSError:
            pass


class EdgeBuilder(Protocol):
    """Builds one edge process (the composition root's ``EdgeService``, handed in by tap.py)."""

    def __call__(
        self,
        config: EdgeConfig,
        reactor: Any,
        config_path: str | None = None,
        *,
        worker_index: int | None = None,
        config_overrides: Callable[[EdgeConfig], EdgeConfig] | None = None,
    ) -> Edge: ...


class Edge(Protocol):
    """What the worker side reads of the edge it built."""

    reactor: Any
    ports: dict[str, Any]

    @property
    def config(self) -> EdgeConfig: ...

    def addService(self, service: IService) -> None: ...  # noqa: N802


def make_worker(
    build: EdgeBuilder,
    config: EdgeConfig,
    reactor: Any,
    config_path: str | None,
    index: int,
    shared_ports: dict[str, int],
) -> Edge:
    """The edge of worker ``index`` (called by ``makeService`` for ``--worker``); ``build`` is the
    composition root's edge class (tap.py hands it in: nothing here imports tx/service.py)."""
    _die_with_parent()
    wcfg = worker_config(config, index, shared_ports)
    edge = build(
        wcfg,
        ReusePortReactor(reactor, shared_addresses(wcfg)),
        config_path,
        worker_index=index,
        config_overrides=lambda cfg: worker_config(cfg, index, shared_ports),
    )
    fd_text = os.environ.get(CONTROL_FD_ENV)
    control = _WorkerControl(
        edge.reactor,
        lambda: edge.ports,
        lambda: edge.config.media.ports,
        index,
        int(fd_text) if fd_text else None,
    )
    edge.addService(control)
    return edge


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def reactor_name(reactor: Any) -> str | None:
    """The ``twistd --reactor`` name of ``reactor`` (for starting workers the same way)."""
    if isinstance(reactor, ReusePortReactor):
        reactor = reactor.wrapped
    module = type(reactor).__module__
    if "asyncioreactor" in module:
        loop = asyncio_loop_of(reactor)
        return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    for name in ("epoll", "poll", "select", "kqueue"):
        if f"{name}reactor" in module:
            return name
    return None


# ---------------------------------------------------------------------------------------------
# Supervisor side
# ---------------------------------------------------------------------------------------------


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.pid: int | None = None
        self.info: dict[str, Any] = {}
        self.ready = False
        self.started = 0.0
        self.ended: Deferred[None] | None = None
        self._buf = b""

    def connectionMade(self) -> None:  # noqa: N802
        self.pid = self.transport.pid if self.transport is not None else None  # type: ignore[attr-defined]
        self.started = monotonic()
        self.ended = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        if childFD != CONTROL_FD:
            return
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("event") == "ready":
                self.info = msg
                self.ready = True
                self.supervisor.worker_ready(self)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        self.ready = False
        ended, self.ended = self.ended, None
        self.supervisor.worker_ended(self, reason)
        if ended is not None:
            ended.callback(None)

    def signal(self, sig: str) -> None:
        if self.transport is not None and self.ended is not None:
            try:
                self.transport.signalProcess(sig)
            except (OSError, ProcessExitedAlready):
                return  # the process is already gone


class Supervisor(MultiService):
    """Starts, watches and stops the worker processes (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        config: EdgeConfig,
        reactor: Any,
        config_path: str | None,
        worker_args: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.setName("mcs-edge-supervisor")
        self.reactor = reactor
        self.config = config
        self.config_path = config_path
        self.config_source = ConfigSource(config_path, None if config_path else config.edge.state_dir)
        self.worker_args = list(worker_args)
        self.workers: list[_Worker] = []
        self.restarts = [0] * config.edge.workers
        self._delays = [0.0] * config.edge.workers
        self._restart_calls: dict[int, Any] = {}
        self._reservations: list[socket.socket] = []
        self.shared_ports: dict[str, int] = {}
        self.stopping = False
        self._announced = False
        self._reaper: LoopingCall | None = None
        # bans for the supervisor's own admin listener (wrong tokens); workers keep their own
        self.timers = Timers(reactor)
        self.protection = Protection(config, self.timers)
        self.admin = SupervisorAdmin(self)
        self._sighup = SighupReload(reactor, self.admin.reload)  # tx/ops/signals.py
        self.ports: dict[str, Any] = {}
        site = admin_site_with_panel(self.admin, lambda: self.config.state_dir, monotonic)
        tls = admin_tls(config)  # [admin] tls: the supervisor's admin listener is the operators' one
        server = (
            internet.TCPServer(
                config.listen.admin.port, site, interface=config.listen.admin.host, reactor=reactor
            )
            if tls is None
            else internet.SSLServer(
                config.listen.admin.port, site, tls, interface=config.listen.admin.host, reactor=reactor
            )
        )
        server.setName("admin")
        server.setServiceParent(self)

    # -- lifecycle ---------------------------------------------------------------------------
    def privilegedStartService(self) -> None:  # noqa: N802
        try:
            os.makedirs(self.config.state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StartupError("edge.state_dir", self.config.state_dir, os_reason(exc)) from None
        self.admin.token()
        # Workers starting together would each create a development CA (the last one written wins the
        # file, the others serve leaves it did not sign): create it and the self-signed leaves once here.
        for tenant in self.config.tenants:
            if tenant.certificate == "self-signed":
                certs.ensure_self_signed(self.config.state_dir, tenant.id, tenant.domains)
        self._reserve_ports()
        self._probe_backend_ports()
        super().privilegedStartService()

    def _reserve_ports(self) -> None:
        for name in SHARED_LISTENERS:
            hp = getattr(self.config.listen, name)
            if hp is None:
                continue
            try:
                sock = bind_socket(
                    hp.host, hp.port, socket.SOCK_STREAM, reuse_port=True
                )  # bound, never listening
            except OSError as exc:
                raise StartupError(f"listen.{name}", str(hp), os_reason(exc, hp.port)) from None
            self._reservations.append(sock)
            self.shared_ports[name] = sock.getsockname()[1]

    def _probe_backend_ports(self) -> None:
        """Each worker binds ``listen.backend_sip`` port + its index: check they are free now, so a
        taken one is one start-up error instead of a worker restarting forever."""
        b = self.config.listen.backend_sip
        if not b.port:
            return
        family = socket.AF_INET6 if ":" in b.host else socket.AF_INET
        for index in range(self.config.edge.workers):
            port = b.port + index
            probe = socket.socket(family, socket.SOCK_DGRAM)
            try:
                probe.bind((b.host, port))
            except OSError as exc:
                where = str(HostPort(b.host, port))
                raise StartupError("listen.backend_sip", where, os_reason(exc, port)) from None
            finally:
                probe.close()

    def startService(self) -> None:  # noqa: N802
        super().startService()
        note_bound_ports(self, self.ports)
        announce_admin(self.ports)
        n = self.config.edge.workers
        self.log.info("WRK100 supervisor: starting {workers} worker(s)", workers=n)
        self.workers = [_Worker(self, i) for i in range(n)]
        for w in self.workers:
            self._spawn(w)
        self._sighup.install()
        # A safety net under SIGCHLD: a child signal can be lost (two workers exiting together on
        # some reactor/loop combinations); reaping is a cheap waitpid(WNOHANG) per worker.
        self._reaper = LoopingCall(_reap)
        self._reaper.clock = self.reactor
        self._reaper.start(REAP_INTERVAL, now=False)

    def _argv(self, index: int) -> list[str]:
        args = [
            sys.executable,
            "-c",
            "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
            "-n",
            "--pidfile=",
        ]
        name = reactor_name(self.reactor)
        if name is not None:
            args.append(f"--reactor={name}")
        args += ["mcs-edge"]
        if self.config_path is not None:
            args += ["--config", self.config_path]
        args += ["--worker", str(index), *self.worker_args]
        ports = ",".join(f"{k}={v}" for k, v in sorted(self.shared_ports.items()))
        if ports:
            args += ["--shared-ports", ports]
        return args

    def _spawn(self, w: _Worker) -> None:
        env = dict(os.environ)
        env[CONTROL_FD_ENV] = str(CONTROL_FD)
        w.ready = False
        w.info = {}
        try:
            self.reactor.spawnProcess(
                w,
                sys.executable,
                self._argv(w.index),
                env=env,
                childFDs={0: "w", 1: 1, 2: 2, CONTROL_FD: "r"},
            )
        except Exception as exc:
            self.log.error(
                "WRK500 worker {index} could not be started: {error}", index=w.index, error=str(exc)
            )
            self._schedule_restart(w)

    def worker_ready(self, w: _Worker) -> None:
        """Worker ``w`` wrote its ready line (fd 3)."""
        self._delays[w.index] = 0.0
        self.log.info(
            "WRK101 worker {index} (pid {pid}) ready: backend SIP port {backend_port}, media ports {media}",
            index=w.index,
            pid=w.pid,
            backend_port=w.info.get("backend"),
            media=w.info.get("media"),
        )
        if not self._announced and all(x.ready for x in self.workers):
            self._announced = True
            port = self.shared_ports.get("https", self.config.listen.https.port)
            names = ", ".join(d for t in self.config.tenants for d in t.domains[:1])
            self.log.info(
                "EDG101 mcs_edge ready: {tenants} tenant(s) ({names}); point a client at https://{host}:{port}/",
                tenants=len(self.config.tenants),
                names=names,
                host=self.config.tenants[0].domains[0]
                if self.config.tenants
                else self.config.listen.https.host,
                port=port,
            )

    def worker_ended(self, w: _Worker, reason: Failure) -> None:
        """Worker ``w``'s process exited: restart it unless stopping."""
        if self.stopping:
            return
        self.restarts[w.index] += 1
        self._schedule_restart(w, reason)

    def _schedule_restart(self, w: _Worker, reason: Failure | None = None) -> None:
        uptime = monotonic() - w.started if w.started else 0.0
        delay = 0.5 if uptime > 30 else min(30.0, max(0.5, self._delays[w.index] * 2))
        self._delays[w.index] = delay
        self.log.warn(
            "WRK300 worker {index} (pid {pid}) exited ({reason}); restarting in {delay:.1f} s",
            index=w.index,
            pid=w.pid,
            reason=str(reason.value) if reason is not None else "spawn failed",
            delay=delay,
        )

        def again() -> None:
            self._restart_calls.pop(w.index, None)
            if not self.stopping:
                self._spawn(w)

        self._restart_calls[w.index] = self.reactor.callLater(delay, again)

    def stopService(self) -> Any:  # noqa: N802
        self.stopping = True
        self._sighup.restore()
        for call in self._restart_calls.values():
            if call.active():
                call.cancel()
        self._restart_calls.clear()
        waits = []
        for w in self.workers:
            if w.ended is not None:
                waits.append(w.ended)
                w.signal("TERM")
        limit = self.config.edge.drain_timeout + 15.0
        killer = self.reactor.callLater(limit, self._kill_all, limit)
        d = defer.DeferredList(waits)

        def done(_: Any) -> Any:
            if killer.active():
                killer.cancel()
            if self._reaper is not None and self._reaper.running:
                self._reaper.stop()
            for sock in self._reservations:
                sock.close()
            self._reservations.clear()
            self.protection.stop()
            self.timers.cancel_all()
            return MultiService.stopService(self)

        return d.addCallback(done)

    def _kill_all(self, limit: float) -> None:
        for w in self.workers:
            if w.ended is not None:
                self.log.warn(
                    "WRK301 worker {index} did not stop within {timeout} s: killed",
                    index=w.index,
                    timeout=limit,
                )
                w.signal("KILL")


class SupervisorAdmin:
    """The admin backend of the supervisor: fans out to the workers' local admin listeners."""

    log = Logger()

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self._token = AdminToken(lambda: supervisor.config)
        self.failed_scrapes = 0
        #: Admin API requests answered by the supervisor, by result (``mcs_edge_admin_requests``).
        self.requests: dict[str, int] = {}

    @property
    def source(self) -> ConfigSource:
        return self.sup.config_source

    def token(self) -> str:
        return self._token.get()

    @property
    def cached_token(self) -> str | None:
        """The token once known (never reads or creates the token file): for log redaction."""
        return self._token.cached

    def count(self, result: str) -> None:
        self.requests[result] = self.requests.get(result, 0) + 1

    def credential_failure(self, host: str) -> None:
        self.sup.protection.credential_failure(host, None, "admin_token")

    def is_banned(self, host: str) -> bool:
        return self.sup.protection.is_banned(host)

    def config(self) -> EdgeConfig:
        return self.sup.config

    # -- talking to workers -----------------------------------------------------------------
    def _up(self) -> list[_Worker]:
        return [w for w in self.sup.workers if w.ready and w.info.get("admin")]

    def _call(self, w: _Worker, method: str, path: str, body: Any = None) -> Deferred[tuple[int, bytes]]:
        from twisted.web.client import Agent, readBody
        from twisted.web.http_headers import Headers

        agent = Agent(self.sup.reactor, connectTimeout=2)
        url = f"http://127.0.0.1:{w.info['admin']}{path}".encode()
        headers = Headers({b"authorization": [f"Bearer {self.token()}".encode()]})
        producer = None
        if body is not None:
            from io import BytesIO

            from twisted.web.client import FileBodyProducer

            producer = FileBodyProducer(BytesIO(json.dumps(body).encode()))
            headers.addRawHeader(b"content-type", b"application/json")
        d = agent.request(method.encode(), url, headers, producer)

        def got(response: Any) -> Any:
            return readBody(response).addCallback(lambda data: (response.code, data))

        result: Deferred[tuple[int, bytes]] = d.addCallback(got)
        result.addTimeout(5, self.sup.reactor)
        return result

    def _all(self, method: str, path: str, body: Any = None) -> Deferred[list[tuple[_Worker, int, Any]]]:
        workers = self._up()
        calls = [self._call(w, method, path, body) for w in workers]

        def collect(results: list[tuple[bool, Any]]) -> list[tuple[_Worker, int, Any]]:
            out = []
            for w, (ok, value) in zip(workers, results, strict=True):
                if not ok:
                    self.failed_scrapes += 1
                    continue
                code, data = value
                out.append((w, code, data))
            return out

        return defer.DeferredList(calls, consumeErrors=True).addCallback(collect)

    def _json_all(self, path: str) -> Deferred[list[Any]]:
        def parse(results: list[tuple[_Worker, int, Any]]) -> list[Any]:
            out = []
            for _w, code, data in results:
                if code == 200:
                    try:
                        out.append(json.loads(data))
                    except ValueError:
                        continue
            return out

        return self._all("GET", path).addCallback(parse)

    # -- backend API ---------------------------------------------------------------------------
    def metrics(self) -> Deferred[bytes]:
        def merge(results: list[tuple[_Worker, int, Any]]) -> bytes:
            texts = [data.decode("utf-8", "replace") for _w, code, data in results if code == 200]
            up = GaugeMetricFamily("mcs_edge_workers", "Worker processes by state", labels=["state"])
            ready = sum(1 for w in self.sup.workers if w.ready)
            up.add_metric(["ready"], ready)
            up.add_metric(["down"], len(self.sup.workers) - ready)
            restarts = CounterMetricFamily(
                "mcs_edge_worker_restarts", "Worker processes restarted after exiting", labels=["worker"]
            )
            for i, n in enumerate(self.sup.restarts):
                restarts.add_metric([str(i)], n)
            scrapes = CounterMetricFamily("mcs_edge_worker_scrape_failures", "Worker scrapes that failed")
            scrapes.add_metric([], self.failed_scrapes)
            # the admin API is the supervisor's: the workers' own counts are its fan-out calls
            admin = CounterMetricFamily("mcs_edge_admin_requests", "Admin API requests", labels=["result"])
            for result, n in sorted(self.requests.items()):
                admin.add_metric([result], n)
            return merge_expositions(texts, [up, restarts, scrapes, admin])

        return self._all("GET", "/metrics").addCallback(merge)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        for w in self.sup.workers:
            checks[f"worker{w.index}"] = {"ok": w.ready, "detail": f"pid {w.pid}" if w.ready else "down"}
        ok = any(w.ready for w in self.sup.workers) and not self.sup.stopping
        checks["draining"] = {
            "ok": not self.sup.stopping,
            "detail": "draining" if self.sup.stopping else "accepting",
        }
        return ok, checks

    def status(self) -> Deferred[dict[str, Any]]:
        def build(statuses: list[Any]) -> dict[str, Any]:
            return {
                "version": __version__,
                "pid": os.getpid(),
                "workers": [
                    {"index": w.index, "pid": w.pid, "ready": w.ready, "restarts": self.sup.restarts[w.index]}
                    for w in self.sup.workers
                ],
                "tenants": len(self.sup.config.tenants),
                "listeners": dict(self.sup.shared_ports),  # shared client ports, as bound (port 0 resolved)
                "connections": sum(s.get("connections", 0) for s in statuses),
                "calls": sum(s.get("calls", 0) for s in statuses),
                "draining": self.sup.stopping,
                "config": self.source.tenants_file,
            }

        return self._json_all("/api/status").addCallback(build)

    def tenant_stats(self) -> Deferred[dict[str, dict[str, Any]]]:
        def merge(docs: list[Any]) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for doc in docs:
                for row in doc.get("tenants", []):
                    slot = out.setdefault(row["id"], {"connections": 0, "registrations": 0, "calls": 0})
                    for k in ("connections", "registrations", "calls"):
                        slot[k] += int(row.get(k, 0))
                    backend = row.get("backend")  # each worker checks the PBX: "down" anywhere wins
                    if backend is not None and (
                        slot.get("backend") is None or backend.get("state") == "down"
                    ):
                        slot["backend"] = backend
            return out

        return self._json_all("/api/tenants").addCallback(merge)

    def certificates(self) -> Deferred[list[Any]]:
        """Every worker loads the same certificates: the first answer is the edge's."""
        return self._json_all("/api/certificates").addCallback(
            lambda docs: docs[0].get("certificates", []) if docs else []
        )

    def checks(self) -> Deferred[dict[str, Any]]:
        """The newest network-check report of each tenant across the workers."""

        def merge(docs: list[Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for doc in docs:
                for tid, rep in (doc.get("checks") or {}).items():
                    if tid not in out or rep.get("time", 0) > out[tid].get("time", 0):
                        out[tid] = rep
            return out

        return self._json_all("/api/checks").addCallback(merge)

    def _concat(self, path: str, key: str) -> Deferred[list[Any]]:
        return self._json_all(path).addCallback(lambda docs: [x for d in docs for x in d.get(key, [])])

    def connections(self, tenant: str | None) -> Deferred[list[Any]]:
        return self._concat("/api/connections" + (f"?tenant={tenant}" if tenant else ""), "connections")

    def calls(self, tenant: str | None) -> Deferred[list[Any]]:
        return self._concat("/api/calls" + (f"?tenant={tenant}" if tenant else ""), "calls")

    def bans(self) -> Deferred[list[Any]]:
        def merge(bans: list[Any]) -> list[Any]:
            by_source: dict[str, Any] = {}
            for b in bans:
                old = by_source.get(b["source"])
                if old is None or b.get("remaining", 0) > old.get("remaining", 0):
                    by_source[b["source"]] = b
            return list(by_source.values())

        return self._concat("/api/bans", "bans").addCallback(merge)

    def ban(self, source: str, tenant: str | None, duration: float | None) -> Deferred[Any]:
        body: dict[str, Any] = {"source": source}
        if tenant is not None:
            body["tenant"] = tenant
        if duration is not None:
            body["duration"] = duration

        def first(results: list[tuple[_Worker, int, Any]]) -> Any:
            for _w, code, data in results:
                if code == 201:
                    return json.loads(data).get("ban")
            return {"source": source}

        return self._all("POST", "/api/bans", body).addCallback(first)

    def cluster(self) -> Any:
        raise ApiError(404, "cluster replication runs with edge.workers = 1 only")

    def promote(self) -> Any:
        raise ApiError(404, "cluster replication runs with edge.workers = 1 only")

    def lift(self, source: str) -> Deferred[bool]:
        return self._all("DELETE", f"/api/bans/{source}").addCallback(
            lambda results: any(code == 200 for _w, code, _d in results)
        )

    def reload(self) -> Any:
        try:
            cfg = self.source.load()
        except ConfigErrors as exc:
            errors = [str(e) for e in exc.errors]
            for err in errors:
                self.log.error("CFG400 reload refused: {error}", error=err)
            return (False, errors)
        return self.apply(cfg).addCallback(lambda ok: (ok, [] if ok else ["a worker refused the reload"]))

    def apply(self, config: EdgeConfig) -> Deferred[bool]:
        self.sup.config = config
        self.sup.protection.update(config)
        self.log.info("CFG201 configuration reloaded: {count} tenant(s)", count=len(config.tenants))
        return self._all("POST", "/api/reload").addCallback(
            lambda results: all(code == 200 for _w, code, _d in results)
        )
