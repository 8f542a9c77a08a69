"""The e2e tests' one edge helper: config text, the edge in process on the test's reactor, waits, admin HTTP.

* :func:`edge_toml` / :func:`tenant_toml` write the config (ephemeral ports on loopback);
  ports for peers and the relay come from :mod:`helpers.ports` (re-exported here).
* :class:`InProcessEdge` starts :class:`EdgeService` from that text (written to ``tmp/edge.toml``
  so reloads re-read it), exposes its listening ports, a WSS client, the relay's state, and stops
  it with the peers registered in ``closers`` (``loop_closers`` run in the asyncio peers' loop).
  :class:`LocalEdge` is the common case: tenants on a :class:`helpers.pbx.Pbx`.
* :func:`until` / :func:`sleep` wait on the reactor (Deferreds); in asyncio: ``aiortc_call.wait_for``.
* :func:`http`, :func:`api`, :func:`metrics`, :func:`sample` talk to the admin listener.
"""

from __future__ import annotations

import inspect
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers.pbx import Pbx
from helpers.ports import free_tcp_port, free_udp_port, media_range
from helpers.wsclient import WSClient

from mcs_edge import config as c
from mcs_edge.tx.service import EdgeService

if TYPE_CHECKING:
    from helpers.aiortc_call import LoopThread

__all__ = [
    "TOKEN",
    "InProcessEdge",
    "LocalEdge",
    "StopAfter",
    "api",
    "config_text",
    "connect_refused",
    "edge_toml",
    "free_tcp_port",
    "free_udp_port",
    "http",
    "media_range",
    "metrics",
    "on_reactor",
    "parse_metrics",
    "sample",
    "sleep",
    "tenant_toml",
    "until",
]

TOKEN = "test-admin-token-0123456789"

#: the ``stop_after`` fixture of tests/e2e/conftest.py: registers an edge, returns it, stops it at teardown
StopAfter = Callable[[Any], Any]


def tenant_toml(
    tid: str,
    pbx_port: int | None = None,
    host: str = "127.0.0.1",
    *,
    backend: str | None = None,
    domains: tuple[str, ...] | None = None,
    media: str | None = None,
    origin: bool = False,
    keys: str = "",
    rate: int | None = None,
    tail: str = "",
) -> str:
    """One ``[[tenants]]`` (self-signed; PBX ``udp:host:pbx_port`` unless ``backend``); ``keys`` are more
    of its lines, ``rate`` adds ``[tenants.shaping]`` (burst twice that), ``tail`` its other sub-tables."""
    names = domains or (f"{tid}.example.com",)
    listed = ", ".join(json.dumps(d) for d in names)
    target = backend or f"udp:{host}:{pbx_port}"
    text = (
        f'\n[[tenants]]\nid = "{tid}"\ndomains = [{listed}]\n'
        f'backend_sip = "{target}"\ncertificate = "self-signed"\n'
    )
    if media is not None:
        text += f'media = "{media}"\n'
    if origin:
        text += f'allowed_origins = ["https://{names[0]}"]\n'
    text += keys
    if rate is not None:
        text += f"[tenants.shaping]\nrate = {rate}\nburst = {2 * rate}\n"
    return text + tail


def edge_toml(
    state: Path,
    tenants: str,
    *,
    head: str = "",
    edge: str = "",
    public: bool | str = False,
    https: str = "127.0.0.1:0",
    sip_tls: str = "off",
    backend_sip: str = "127.0.0.1:0",
    admin: str = "127.0.0.1:0",
    listen: str = "",
    token: str | None = None,
    tls_reload: bool = False,
    sip: str = "",
    media: tuple[int, int] | None = None,
    media_bind: str | None = "127.0.0.1",
    media_keys: str = "",
    sections: str = "",
) -> str:
    """An edge.toml with ephemeral listeners on loopback (unless given); ``edge``/``listen``/``sip``/
    ``media_keys`` are more keys of those tables, ``public`` the address advertised to clients and the PBX
    (``True``: 127.0.0.1), ``sections`` other tables (they come before the tenants)."""
    text = f'{head}[edge]\nstate_dir = "{state}"\n'
    if public:
        address = "127.0.0.1" if public is True else public
        text += f'public_address = "{address}"\nbackend_address = "{address}"\n'
    text += edge
    text += (
        f'[listen]\nhttps = "{https}"\nsip_tls = "{sip_tls}"\nbackend_sip = "{backend_sip}"\n'
        f'admin = "{admin}"\n{listen}'
    )
    if token is not None:
        text += f'[admin]\ntoken = "{token}"\n'
    if tls_reload:
        text += "[tls]\nreload_interval = 0\n"
    if sip:
        text += f"[sip]\n{sip}"
    if media is not None:
        bind = f'bind = "{media_bind}"\n' if media_bind is not None else ""
        text += f"[media]\nports = [{media[0]}, {media[1]}]\n{bind}{media_keys}"
    return text + sections + tenants


def config_text(state: Path, tenants: str, extra: str = "", token: bool = True) -> str:
    return edge_toml(
        state,
        tenants,
        head="# operator comment: kept by admin API edits\n",
        edge=extra,
        token=TOKEN if token else None,
        tls_reload=True,
    )


class InProcessEdge:
    """The edge on the test's reactor, started from ``text`` (at once, or by :meth:`start` once a subclass
    has its peers up and registered their closers); :meth:`stop` returns a Deferred."""

    ORIGIN = False  # whether :meth:`client` sends the tenant's Origin by default

    def __init__(self, tmp: Path, text: str | None = None, runner: LoopThread | None = None) -> None:
        self.tmp = tmp
        self.runner = runner
        self.closers: list[Callable[[], Any]] = []  # peers closed before the edge stops, in this thread
        self.loop_closers: list[Callable[[], Any]] = []  # closed in ``runner``'s loop (may be async)
        self.state = tmp / "state"
        self.conf = tmp / "edge.toml"
        self.ca = str(self.state / "dev-ca" / "ca.pem")
        if text is not None:
            self.start(text)

    def start(self, text: str, before: Callable[[EdgeService], None] | None = None) -> None:
        """Write ``text``, build the service (``before`` may adjust it before it starts), start it."""
        from twisted.internet import reactor

        self.conf.write_text(text)
        self.service = EdgeService(c.load(self.conf), reactor, config_path=str(self.conf))
        if before is not None:
            before(self.service)
        self.service.privilegedStartService()
        self.service.startService()
        # 0 for a listener the service does not open (a cluster standby listens only once promoted)
        self.https = self.port("https")
        self.admin = self.port("admin")
        self.backend = self.port("backend_sip_udp")
        self.origin = f"https://localhost:{self.https}"

    def port(self, name: str) -> int:
        """The port the listener ``name`` (``https``, ``admin``, ``sip_tls``, ``backend_sip_udp``) got; 0
        when it is not listening."""
        port = self.service.ports.get(name)
        return 0 if port is None else int(port.getHost().port)

    def client(
        self, tenant: str = "rossi", source: str | None = None, *, origin: str | bool | None = None, **kw: Any
    ) -> WSClient:
        """A WSS client of ``tenant.example.com`` (from ``source``); ``origin`` is its Origin header, or
        ``True`` for the tenant's own (``None``: the class's ``ORIGIN`` says which)."""
        if source is not None:
            kw["source"] = source
        if origin is None:
            origin = self.ORIGIN
        if origin is True:
            origin = f"https://{tenant}.example.com"
        if origin:
            kw["origin"] = origin
        return WSClient(self.https, f"{tenant}.example.com", cafile=self.ca, **kw)

    def kill_connections(self) -> int:
        """Abort every client connection at the edge (in the reactor thread), as a lost network does."""
        flows = list(self.service.sip.flows.values())
        for flow in flows:
            proto = getattr(flow.close, "__self__", None)
            assert proto is not None
            proto.abort()  # tx/sip/websocket.py: the TCP connection is aborted, no closing handshake
        return len(flows)

    def media_idle(self) -> bool:
        """No media session, relay port or echo call left."""
        anchor = self.service.media.anchor
        return not anchor.sessions and anchor.allocator.in_use == 0 and not self.service.echo.calls

    def relay_state(self) -> dict[str, int]:
        media = self.service.media
        return {
            "ports_in_use": media.anchor.ports_in_use,
            "sockets": len(media.ports),
            "sessions": len(media.anchor.sessions),
        }

    def stop(self) -> Any:
        if self.loop_closers:
            assert self.runner is not None

            async def close_all() -> None:
                for close in self.loop_closers:
                    result = close()
                    if inspect.isawaitable(result):
                        await result

            self.runner.run(close_all())
        for close in self.closers:
            close()
        return self.service.stopService()


def until(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    step: float = 0.05,
    raises: bool = True,
    threaded: bool = False,
) -> Any:
    """A Deferred that fires once ``predicate()`` holds, checked every ``step`` on the reactor (in a thread
    with ``threaded``, for a blocking predicate such as an admin API request); after ``timeout`` seconds
    TimeoutError, or (``raises=False``) it just fires and the test asserts the predicate itself."""
    from twisted.internet import defer, threads

    @defer.inlineCallbacks
    def loop() -> Any:
        deadline = time.monotonic() + timeout
        while not ((yield threads.deferToThread(predicate)) if threaded else predicate()):
            if time.monotonic() > deadline:
                if raises:
                    raise TimeoutError(f"condition not met within {timeout} s")
                return
            yield sleep(step)

    return loop()


def sleep(seconds: float) -> Any:
    """A Deferred firing after ``seconds`` on the reactor."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def connect_refused(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP connection to ``host:port`` is refused (nobody listens, or a draining edge)."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return True
    return False


def on_reactor(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in the reactor thread from another thread and wait for its result."""
    from twisted.internet import reactor, threads

    return threads.blockingCallFromThread(reactor, fn)


class LocalEdge(InProcessEdge):
    """Tenant ``rossi`` (and ``bianchi`` with ``tenants=2``) on one :class:`Pbx`, the admin token set."""

    def __init__(
        self, tmp: Path, extra: str = "", token: bool = True, tenants: int = 1, tail: str = ""
    ) -> None:
        """``extra`` goes into ``[edge]``; ``tail`` after the last tenant (its sub-tables, other tables)."""
        super().__init__(tmp)
        self.pbx = Pbx()
        self.closers.append(self.pbx.close)
        text = tenant_toml("rossi", self.pbx.port)
        if tenants > 1:
            text += tenant_toml("bianchi", self.pbx.port)
        self.start(config_text(self.state, text + tail, extra, token))


def http(
    port: int, method: str, path: str, body: Any = None, token: str | None = TOKEN, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request to the admin listener."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def api(port: int, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    status, _h, data = http(port, method, path, body, token)
    return status, json.loads(data) if data else None


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed with prometheus_client's parser: (name, labels) -> value."""
    status, headers, data = http(port, "GET", "/metrics", token=None)
    assert status == 200 and headers.get("Content-Type", "").startswith("text/plain")
    return parse_metrics(data.decode())


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, labels) -> value of every sample in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)
