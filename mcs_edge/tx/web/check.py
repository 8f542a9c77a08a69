"""The network check page: an agent tests, from their browser, their network to the edge.

Theory of operation
-------------------
Served per tenant on the HTTPS port, for tenants with ``echo = true`` (the page calls the echo
service, :mod:`mcs_edge.tx.media.echo`), at ``/check`` and, always the edge's even for tenants whose
other paths go to ``backend_http``, at ``/.well-known/mcs-edge/check``:

=============================  ==============================================================
path (under either base)       what
=============================  ==============================================================
``GET <base>``                 the page (``mcs_edge/static/check.html``), no build step
``GET <base>/check.js``        the checks: plain JavaScript, a minimal SIP-over-WebSocket UA
``GET <base>/check.css``       styles
``POST <base>/report``         the figures of a finished run (JSON, below): kept as metrics
=============================  ==============================================================

The page runs, in order: TLS + WebSocket reachability, SIP OPTIONS round trips over WSS, then a
WebRTC call to the echo user (ICE and DTLS times, round-trip time, jitter and loss from
``getStats``, the bitrate sustained for about 10 s at the product's 60 KB/s budget) and shows a
pass/warn/fail report the agent can copy for support.

The report body holds figures only (no address, user or user agent; the tenant comes from the
request's binding, never from the body)::

    {"result": "pass", "ws_ms": 41, "options_ms": 3, "setup_ms": 20, "ice_ms": 110,
     "dtls_ms": 25, "rtt_ms": 1.2, "jitter_ms": 0.8, "loss_pct": 0.0, "bitrate_Bps": 55800}

Unknown keys are ignored, values are checked and clamped, a body over :data:`MAX_REPORT` bytes or
not JSON gets 400, and each source may post one report per :data:`REPORT_INTERVAL` seconds (429
otherwise; the source address is only held in a bounded in-memory table for that). Figures become
per-tenant histograms and a counter of results (metric names in :data:`FIGURES`).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, Protocol

from twisted.logger import Logger

from mcs_edge.tx.timers import wall_clock

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram
    from twisted.web.server import Request

    from mcs_edge.config import TenantConfig

__all__ = ["BASES", "FIGURES", "MAX_REPORT", "REPORT_INTERVAL", "NetworkCheck"]

BASES: Final = (b"/check", b"/.well-known/mcs-edge/check")
MAX_REPORT: Final = 4096
REPORT_INTERVAL: Final = 5.0
_MAX_SOURCES: Final = 10_000
RESULTS: Final = ("pass", "warn", "fail")

#: report key -> (metric name, help, scale to base unit, upper clamp, histogram buckets)
FIGURES: Final[dict[str, tuple[str, str, float, float, tuple[float, ...]]]] = {
    "ws_ms": (
        "mcs_edge_check_websocket_seconds",
        "Network check: TLS + WebSocket connection time",
        1e-3,
        60.0,
        (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
    ),
    "options_ms": (
        "mcs_edge_check_sip_rtt_seconds",
        "Network check: SIP OPTIONS round trip over WSS",
        1e-3,
        60.0,
        (0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2),
    ),
    "setup_ms": (
        "mcs_edge_check_call_setup_seconds",
        "Network check: echo call INVITE to 200 OK",
        1e-3,
        60.0,
        (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2),
    ),
    "ice_ms": (
        "mcs_edge_check_ice_seconds",
        "Network check: ICE connection time",
        1e-3,
        60.0,
        (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
    ),
    "dtls_ms": (
        "mcs_edge_check_dtls_seconds",
        "Network check: DTLS handshake time",
        1e-3,
        60.0,
        (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
    ),
    "rtt_ms": (
        "mcs_edge_check_rtt_seconds",
        "Network check: media round-trip time",
        1e-3,
        60.0,
        (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1),
    ),
    "jitter_ms": (
        "mcs_edge_check_jitter_seconds",
        "Network check: jitter of the echoed audio",
        1e-3,
        60.0,
        (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2),
    ),
    "loss_pct": (
        "mcs_edge_check_loss_ratio",
        "Network check: packet loss of the echoed audio",
        1e-2,
        1.0,
        (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2),
    ),
    "bitrate_Bps": (
        "mcs_edge_check_bitrate_bytes_per_second",
        "Network check: bitrate sustained through the echo",
        1.0,
        10_000_000.0,
        (10_000, 20_000, 30_000, 40_000, 50_000, 55_000, 60_000, 80_000),
    ),
}


def _asset(name: str) -> bytes:
    return (resources.files("mcs_edge") / "static" / name).read_bytes()


class MetricFactory(Protocol):
    """Where the check's counters and histograms are registered (tx/ops/metrics.EdgeMetrics)."""

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter: ...

    def histogram(self, name: str, doc: str, labels: Iterable[str] = (), **kw: Any) -> Histogram: ...


class NetworkCheck:
    """Serves the check page and takes its reports (see the module docstring).

    Collaborators: ``metrics`` registers its figures; ``clock`` is the adapters' clock
    (``Timers.now``) for the per-source report interval.
    """

    log = Logger()

    def __init__(
        self, metrics: MetricFactory, clock: Callable[[], float], wall: Callable[[], float] = wall_clock
    ) -> None:
        self.clock = clock
        self.wall = wall  # the report's wall-clock time (admin API, panel)
        self._assets: dict[str, bytes] = {}
        self._sources: OrderedDict[str, float] = OrderedDict()
        #: The last report of each tenant (result, wall-clock time, figures kept): the admin API and panel.
        self.last: dict[str, dict[str, Any]] = {}
        self.reports: Counter = metrics.counter(
            "mcs_edge_check_reports", "Network check reports by overall result", ["tenant", "result"]
        )
        self.refused: Counter = metrics.counter(
            "mcs_edge_check_reports_refused", "Network check reports refused", ["reason"]
        )
        self.histograms: dict[str, Histogram] = {
            key: metrics.histogram(name, doc, ["tenant"], buckets=buckets)
            for key, (name, doc, _scale, _top, buckets) in FIGURES.items()
        }

    # ------------------------------------------------------------------------------ routing
    @staticmethod
    def base_of(path: bytes) -> bytes | None:
        """The base a request path is under (``/check`` ...), or None when it is not the check's."""
        for base in BASES:
            if path == base or path.startswith(base + b"/"):
                return base
        return None

    def handles(self, path: bytes) -> bool:
        return self.base_of(path) is not None

    def render(self, request: Request, tenant: TenantConfig) -> bytes:
        """Answer a request whose path :meth:`handles`."""
        base = self.base_of(request.path) or BASES[0]
        rest = request.path[len(base) :]
        request.setHeader(b"referrer-policy", b"no-referrer")
        if not tenant.echo:
            return _text(request, 404, "the network check is not enabled for this domain")
        if rest == b"/report":
            if request.method != b"POST":
                request.setHeader(b"allow", b"POST")
                return _text(request, 405, "method not allowed")
            return self._report(request, tenant)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _text(request, 405, "method not allowed")
        if rest in (b"", b"/"):
            return self._page(request, base)
        if rest == b"/check.js":
            return self._static(request, "check.js", b"text/javascript; charset=utf-8")
        if rest == b"/check.css":
            return self._static(request, "check.css", b"text/css; charset=utf-8")
        return _text(request, 404, "not found")

    # ---------------------------------------------------------------------------- the page
    def _load(self, name: str) -> bytes:
        data = self._assets.get(name)
        if data is None:
            data = self._assets[name] = _asset(name)
        return data

    def _page(self, request: Request, base: bytes) -> bytes:
        host = (request.getHeader("host") or "").rsplit("]", 1)
        name = host[0] + "]" if len(host) == 2 else host[0].split(":", 1)[0]
        config = json.dumps({"domain": name.lower(), "report": (base + b"/report").decode()})
        config = config.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        page = self._load("check.html").replace(b"{{BASE}}", base).replace(b"{{CONFIG}}", config.encode())
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            b"img-src 'self' data:; media-src 'self' blob: mediastream:; base-uri 'none'; "
            b"form-action 'none'; frame-ancestors 'none'",
        )
        return page

    def _static(self, request: Request, name: str, content_type: bytes) -> bytes:
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"max-age=300")
        return self._load(name)

    # --------------------------------------------------------------------------- the report
    def _admit(self, source: str) -> bool:
        now = self.clock()
        sources = self._sources
        last = sources.get(source)
        if last is not None and now - last < REPORT_INTERVAL:
            return False
        sources[source] = now
        sources.move_to_end(source)
        while len(sources) > _MAX_SOURCES:
            sources.popitem(last=False)
        return True

    def _report(self, request: Request, tenant: TenantConfig) -> bytes:
        peer: Any = request.getClientAddress()
        source = str(getattr(peer, "host", ""))
        body = request.content.read(MAX_REPORT + 1) if request.content is not None else b""
        if len(body) > MAX_REPORT:
            self.refused.labels("too_large").inc()
            return _text(request, 413, "report too large")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self.refused.labels("bad_json").inc()
            return _text(request, 400, "report must be a JSON object")
        if not isinstance(data, dict):
            self.refused.labels("bad_json").inc()
            return _text(request, 400, "report must be a JSON object")
        result = data.get("result")
        if result not in RESULTS:
            self.refused.labels("bad_result").inc()
            return _text(request, 400, "result must be pass, warn or fail")
        if not self._admit(source):
            self.refused.labels("rate").inc()
            request.setHeader(b"retry-after", str(int(REPORT_INTERVAL)).encode())
            return _text(request, 429, "one report per source every few seconds")
        kept = 0
        figures: dict[str, float] = {}
        for key, (_name, _doc, scale, top, _buckets) in FIGURES.items():
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                continue
            self.histograms[key].labels(tenant.id).observe(min(max(value * scale, 0.0), top))
            figures[key] = min(max(float(value), 0.0), top / scale if scale else top)
            kept += 1
        self.last[tenant.id] = {"result": result, "time": round(self.wall()), "figures": figures}
        self.reports.labels(tenant.id, result).inc()
        self.log.info(
            "CHK200 {tenant} network check reported: {result} ({kept} figures)",
            tenant=tenant.id,
            result=result,
            kept=kept,
        )
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps({"ok": True, "kept": kept}).encode()


def _text(request: Request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return f"{status} {text}\n".encode()
