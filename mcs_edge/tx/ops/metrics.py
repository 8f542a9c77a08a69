"""Prometheus metrics of one edge process, read at scrape time from the objects that already count.

Theory of operation
-------------------
Each edge process (the composition root, tx/service.py) owns one :class:`EdgeMetrics`: its own
``CollectorRegistry`` (never prometheus_client's global one, so several services in one process
- tests - do not collide), served as text on ``listen.admin`` at ``/metrics``.

Collect-time, not hot-path: the SIP core, the router, the TLS listeners, the ban list already keep
plain integer counters (``SipProxy.counters``, ``SipRouter.counters``, ``len(flows)``...). The
collector turns them into metric families when Prometheus scrapes; the per-message path pays
nothing beyond its existing ``dict`` increment. Components built later (media relay, TURN, ACME,
shaping) register the same way::

    def collect() -> Iterable[Metric]:
        g = GaugeMetricFamily("mcs_edge_media_ports_free", "Relay ports free", labels=[])
        g.add_metric([], allocator.free)
        yield g

    metrics.add_collector("media", collect)

or, when an event is not already counted anywhere, with a prometheus_client object bound to this
registry: ``metrics.counter("mcs_edge_turn_allocations_total", "...", ["tenant"])``.
Readiness conditions go to ``health.add_check(name, fn)`` (:mod:`mcs_edge.tx.ops.admin`).

Label policy
------------
* ``tenant`` (the tenant id) is a label on per-tenant *aggregates* only: connections, calls,
  registrations, transactions, certificate expiry. At most 250 tenants, so each such family has
  at most 250 x (other labels) series.
* Never a per-connection, per-call, per-user, per-IP or per-port series: no peer address, Call-ID,
  flow id, user name or port number as a label. Those are listed by the admin API instead.
* Other labels come from small closed sets: ``transport`` (wss, tls, udp, tcp), ``direction``,
  ``class`` (1xx..6xx), ``result``, ``listener`` (configured listener names), ``reason`` (the code
  that counted the event, from the code, never from the peer's text), ``domain`` (a configured
  certificate name).
* Units in the name (``_seconds``, ``_bytes``), counters end in ``_total``.

Several workers
---------------
With ``edge.workers > 1`` the supervisor scrapes each worker's local ``/metrics`` and merges them
with :func:`merge_expositions`: samples with the same name and labels are summed (counters, and
gauges such as connections, calls, free ports, which add up across workers), except the families
listed in :data:`MERGE_MODES` (for example certificate expiry: the minimum). A component whose
gauge must not be summed calls :func:`register_merge` at import time.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector

from mcs_edge import __version__
from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory, TlsStats

if TYPE_CHECKING:
    from mcs_edge.tx.media.relay import MediaRelay
    from mcs_edge.tx.protect.guard import Protection
    from mcs_edge.tx.sip.router import SipStats
    from mcs_edge.tx.tls.certificates import CertificateStore

__all__ = [
    "CONTENT_TYPE",
    "MERGE_MODES",
    "EdgeMetrics",
    "TlsStats",
    "acme_families",
    "certificate_families",
    "edge_families",
    "guard_families",
    "handoff_families",
    "http_proxy_families",
    "label_value",
    "media_families",
    "merge_expositions",
    "register_merge",
    "shaping_families",
    "sip_families",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Family name -> how samples of several workers combine ("sum" when absent, "min" or "max").
MERGE_MODES: dict[str, str] = {
    "mcs_edge_info": "max",
    "mcs_edge_tenants": "max",
    "mcs_edge_draining": "max",
    "mcs_edge_certificate_expiry_timestamp_seconds": "min",
    "mcs_edge_certificate_expires_in_seconds": "min",
    "mcs_edge_certificate_load_errors": "max",
    "process_start_time_seconds": "min",
    "process_max_fds": "min",
    "mcs_edge_acme_last_success_timestamp_seconds": "max",
    "mcs_edge_acme_next_renewal_timestamp_seconds": "min",
    "mcs_edge_acme_next_attempt_timestamp_seconds": "min",
    "mcs_edge_acme_failures": "max",
    "mcs_edge_acme_state": "max",
}


def register_merge(name: str, mode: str) -> None:
    """Declare how a gauge family combines across workers ("sum", "min" or "max")."""
    if mode not in ("sum", "min", "max"):
        raise ValueError(f"merge mode {mode!r} is not sum, min or max")
    MERGE_MODES[name] = mode


Collect = Callable[[], Iterable[Metric]]

#: The two kinds of collect-time family.
Kind = type[CounterMetricFamily] | type[GaugeMetricFamily]


def family(kind: Kind, name: str, doc: str, values: Any, labels: Iterable[str] = ()) -> Metric:
    """One metric family from a table of samples, the helper every collector here uses.

    ``values`` is a number (a family without labels) or a mapping from a label value (a tuple of
    them with several ``labels``) to a number; samples come out in sorted key order."""
    fam = kind(name, doc, labels=list(labels))
    if isinstance(values, Mapping):
        for key, n in sorted(values.items()):
            fam.add_metric(list(key) if isinstance(key, tuple) else [key], n)
    else:
        fam.add_metric([], values)
    return fam


def families(kind: Kind, rows: Iterable[tuple[str, str, Any, Iterable[str]]]) -> Iterator[Metric]:
    """:func:`family` for each (name, doc, values, labels) row of a table."""
    for name, doc, values, labels in rows:
        yield family(kind, name, doc, values, labels)


class _Collector:
    def __init__(self, metrics: EdgeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield from m.own_families()
        for name, fn in m.collectors():
            try:
                yield from fn()
            except Exception:
                m.collector_errors[name] = m.collector_errors.get(name, 0) + 1
        errs = CounterMetricFamily(
            "mcs_edge_metrics_collector_errors",
            "Collectors that raised during a scrape",
            labels=["collector"],
        )
        for name, n in sorted(m.collector_errors.items()):
            errs.add_metric([name], n)
        yield errs


class EdgeMetrics:
    """The metrics registry of one service (see the module docstring).

    It knows no other component: the composition root (tx/service.py) adds one collector per
    source, each given only the collaborator it reads (:func:`edge_families`, :func:`sip_families`,
    :func:`certificate_families`, :func:`guard_families`, :func:`media_families`, ...)."""

    def __init__(self, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._collectors: dict[str, Collect] = {}
        self.collector_errors: dict[str, int] = {}
        self.tls: dict[str, TlsStats] = {}
        #: Reload outcomes: "ok", "refused".
        self.reloads: dict[str, int] = {"ok": 0, "refused": 0}
        #: Admin API requests by result ("ok", "unauthorized", "bad_request", "not_found", "error").
        self.admin_requests: dict[str, int] = {}
        self.registry.register(_Collector(self))
        if process:
            ProcessCollector(registry=self.registry)

    # -- registration -----------------------------------------------------------------------
    def add_collector(self, name: str, collect: Collect) -> None:
        """Add (or replace) a collect-time source of metric families."""
        self._collectors[name] = collect

    def remove_collector(self, name: str) -> None:
        self._collectors.pop(name, None)

    def collectors(self) -> list[tuple[str, Collect]]:
        """The collectors added, in the order they were added."""
        return list(self._collectors.items())

    def count_reload(self, result: str) -> None:
        """A configuration reload ended with ``result`` ("ok" or "refused")."""
        self.reloads[result] = self.reloads.get(result, 0) + 1

    def count_admin_request(self, result: str) -> None:
        self.admin_requests[result] = self.admin_requests.get(result, 0) + 1

    def tls_stats(self, listener: str) -> TlsStats:
        """The handshake counters of ``listener`` (created on first use)."""
        stats = self.tls.get(listener)
        if stats is None:
            stats = self.tls[listener] = TlsStats()
        return stats

    def tls_factory(self, listener: str, chooser: Any, wrapped: Any, **kw: Any) -> StdlibTLSFactory:
        """A server-side TLS wrapping factory (tx/tls/stdlib_tls.py) whose handshakes count under
        ``listener``; ``kw``: its ``clock`` and ``handshake_timeout``."""
        return StdlibTLSFactory(chooser, wrapped, self.tls_stats(listener), listener=listener, **kw)

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(name, doc, list(labels), registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
        return Gauge(name, doc, list(labels), registry=self.registry)

    def histogram(self, name: str, doc: str, labels: Iterable[str] = (), **kw: Any) -> Histogram:
        return Histogram(name, doc, list(labels), registry=self.registry, **kw)

    # -- output -----------------------------------------------------------------------------
    def own_families(self) -> Iterator[Metric]:
        """What this registry counts itself: version, reloads, admin requests, TLS handshakes."""
        yield family(GaugeMetricFamily, "mcs_edge_info", "Edge version", {__version__: 1}, ["version"])
        yield from families(
            CounterMetricFamily,
            (
                ("mcs_edge_config_reloads", "Configuration reloads", self.reloads, ["result"]),
                ("mcs_edge_admin_requests", "Admin API requests", self.admin_requests, ["result"]),
            ),
        )
        hs = CounterMetricFamily(
            "mcs_edge_tls_handshakes", "TLS handshakes by outcome", labels=["listener", "result"]
        )
        for listener, stats in sorted(self.tls.items()):
            for result in ("ok", "failed", "aborted"):
                hs.add_metric([listener, result], getattr(stats, result))
        yield hs

    def render(self) -> bytes:
        """The text exposition (format 0.0.4)."""
        return bytes(generate_latest(self.registry))


def edge_families(tenants: int, draining: bool) -> Iterator[Metric]:
    """Tenants configured and the drain flag."""
    yield from families(
        GaugeMetricFamily,
        (
            ("mcs_edge_tenants", "Tenants configured", tenants, ()),
            ("mcs_edge_draining", "1 while the edge drains before stopping", 1 if draining else 0, ()),
        ),
    )


def _flow_recovery_families(stats: SipStats, counters: dict[str, int]) -> Iterator[Metric]:
    """Calls that survive a network change (core/sip/flows.py); their counters leave ``counters``."""
    yield from _popped(
        counters,
        (
            (
                "flows_replaced",
                "Client connections replaced by a new connection of the same instance (RFC 5626)",
            ),
            ("calls_recovered", "Calls moved to the new connection of their client's instance"),
            (
                "calls_lost_after_grace",
                "Calls ended with a BYE to the PBX because the client did not come back",
            ),
        ),
    )
    buckets, total = stats.recovery
    h = HistogramMetricFamily(
        "mcs_edge_call_recovery_seconds",
        "Time from a lost client connection to its calls moving to the new one",
    )
    h.add_metric([], buckets, sum_value=total)
    yield h


def _push_families(
    stats: SipStats, results: Mapping[tuple[str, str], int], counters: dict[str, int]
) -> Iterator[Metric]:
    """Push wake-up (RFC 8599; core/push, tx/push); its counters leave ``counters``."""
    yield family(
        CounterMetricFamily,
        "mcs_edge_pushes",
        "Push notifications requested, by provider and result",
        results,
        ["provider", "result"],
    )
    yield from _popped(
        counters,
        (
            ("push_calls_held", "Incoming calls held while a push woke their app"),
            ("push_calls_delivered", "Held calls delivered to the woken app's new connection"),
            ("push_calls_lost_timeout", "Held calls refused with 480: the app did not register in push.wait"),
            ("push_calls_lost_push_failed", "Held calls refused with 480: the push could not be sent"),
            ("push_calls_cancelled", "Held calls CANCELled by the PBX during the wait"),
            (
                "push_bindings_dropped_bad_token",
                "Push bindings dropped: the provider refused the device token",
            ),
        ),
    )
    yield family(
        GaugeMetricFamily, "mcs_edge_push_bindings", "Push bindings (RFC 8599) kept", stats.push_bindings
    )
    buckets, total = stats.wake_latency
    h = HistogramMetricFamily("mcs_edge_push_wake_seconds", "Time from a push to the woken app's REGISTER")
    h.add_metric([], buckets, sum_value=total)
    yield h


def sip_families(stats: SipStats, push_results: Mapping[tuple[str, str], int]) -> Iterator[Metric]:
    """The SIP router and core (:meth:`SipRouter.stats`) and the push sender's outcomes."""
    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    for kind, name, doc, values, labels in (
        (
            gauge,
            "mcs_edge_connections",
            "Live client connections",
            stats.connections,
            ["tenant", "transport"],
        ),
        (
            gauge,
            "mcs_edge_registrations",
            "Client connections with a successful REGISTER",
            stats.registrations,
            ["tenant"],
        ),
        (gauge, "mcs_edge_calls", "Calls up (INVITE dialogs)", stats.calls, ["tenant", "state"]),
        (
            counter,
            "mcs_edge_calls_started",
            "Calls started (initial INVITEs forwarded)",
            stats.calls_started,
            [],
        ),
        (
            counter,
            "mcs_edge_calls_ended",
            "Calls ended (BYE, failure or connection loss)",
            stats.calls_ended,
            [],
        ),
        (gauge, "mcs_edge_sip_transactions", "SIP transactions in progress", stats.transactions, ["tenant"]),
    ):
        yield family(kind, name, doc, values, labels)
    counters: dict[str, int] = dict(stats.core_counters)
    yield from _flow_recovery_families(stats, counters)
    yield from _push_families(stats, push_results, counters)
    req = CounterMetricFamily("mcs_edge_sip_requests", "SIP requests forwarded", labels=["direction"])
    req.add_metric(["to_backend"], counters.pop("sip_requests_to_backend", 0))
    req.add_metric(["to_client"], counters.pop("sip_requests_to_client", 0))
    yield req
    resp = CounterMetricFamily(
        "mcs_edge_sip_responses", "SIP responses sent, by class", labels=["origin", "class"]
    )
    for origin in ("relayed", "local"):
        for cls in range(1, 7):
            resp.add_metric([origin, f"{cls}xx"], counters.pop(f"sip_responses_{origin}_{cls}xx", 0))
    for leftover in [k for k in counters if k.startswith("sip_responses_")]:
        counters.pop(leftover)
    yield resp
    yield family(
        CounterMetricFamily,
        "mcs_edge_sip_events",
        "SIP events counted by the proxy core (refusals, errors)",
        counters,
        ["event"],
    )
    opened = CounterMetricFamily(
        "mcs_edge_connections_opened", "Client connections opened", labels=["tenant", "transport"]
    )
    closed = CounterMetricFamily(
        "mcs_edge_connections_closed", "Client connections closed", labels=["tenant", "transport"]
    )
    other = CounterMetricFamily(
        "mcs_edge_router_events",
        "SIP router events (refusals, send errors)",
        labels=["event", "tenant", "reason"],
    )
    for (name, tenant, reason), n in sorted(stats.router_counters.items()):
        if name == "flows_opened":
            opened.add_metric([tenant, reason], n)
        elif name == "flows_closed":
            closed.add_metric([tenant, reason], n)
        else:
            other.add_metric([name, tenant, reason], n)
    yield opened
    yield closed
    yield other


def certificate_families(certs: CertificateStore, wall: float) -> Iterator[Metric]:
    """Expiry of each served certificate and load errors; ``wall`` is the Unix time now."""
    exp = GaugeMetricFamily(
        "mcs_edge_certificate_expiry_timestamp_seconds",
        "Expiry (Unix time) of the certificate served for each name",
        labels=["tenant", "domain"],
    )
    left = GaugeMetricFamily(
        "mcs_edge_certificate_expires_in_seconds",
        "Seconds until the certificate served for each name expires",
        labels=["tenant", "domain"],
    )
    for tenant_id, loaded in sorted(certs.loaded().items()):
        not_after = loaded.info.not_after.timestamp()
        names = loaded.info.names or (loaded.info.subject,)
        for name in sorted(set(names)):
            exp.add_metric([tenant_id, name], not_after)
            left.add_metric([tenant_id, name], not_after - wall)
    yield exp
    yield left
    yield family(
        GaugeMetricFamily,
        "mcs_edge_certificate_load_errors",
        "1 when the tenant's certificate files failed to load",
        dict.fromkeys(certs.errors, 1),
        ["tenant"],
    )


def guard_families(protection: Protection, now: float) -> Iterator[Metric]:
    """Bans, guard refusals, tenant-limit refusals, dropped requests, credential failures, scanners."""
    bans = protection.bans
    yield family(GaugeMetricFamily, "mcs_edge_bans", "Sources banned now", len(bans.list_bans(now)))
    kinds: dict[str, int] = dict(protection.scanner_kinds)
    unlabelled = int(protection.scanners) - sum(kinds.values())
    if unlabelled > 0:
        kinds["other"] = kinds.get("other", 0) + unlabelled
    yield from families(
        CounterMetricFamily,
        (
            ("mcs_edge_bans_created", "Bans created (by failures or by hand)", bans.bans_total, ()),
            (
                "mcs_edge_guard_refusals",
                "Connections and requests refused by the guard",
                protection.guard.refusals,
                ["reason"],
            ),
            (
                "mcs_edge_tenant_limit_refusals",
                "Client connections refused by a tenant's limits (tenants.limits), by reason",
                protection.tenant_guard.refusals,
                ["reason"],
            ),
            (
                "mcs_edge_guard_requests_dropped",
                "SIP requests dropped by the guard (bans, request rate), by reason",
                protection.requests_dropped,
                ["reason"],
            ),
            (
                "mcs_edge_credential_failures",
                "Wrong credentials counted toward per-source bans (sip, admin_token, api_secret)",
                protection.credential_failures,
                ["kind"],
            ),
            (
                "mcs_edge_scanner_drops",
                "Requests that addressed no tenant, dropped without an answer, by where they arrived",
                kinds,
                ["kind"],
            ),
        ),
    )


def media_families(relay: MediaRelay) -> Iterator[Metric]:
    """What the media relay counts, and its port pool (media legs and TURN relays share it)."""
    relay.sync()  # counters of the legs held by C forwarding rules
    anchor = relay.anchor
    events = {k: n for k, n in relay.counters.items() if isinstance(k, str) and isinstance(n, int)}
    yield from families(
        CounterMetricFamily,
        (
            ("mcs_edge_media_events", "Media relay events (drops by reason, errors)", events, ["event"]),
            (
                "mcs_edge_media_dropped",
                "Media packets dropped by the relay, by reason (garbage, unverified-source, policed ...)",
                anchor.dropped(),
                ["reason"],
            ),
        ),
    )
    allocator = anchor.allocator
    yield from families(
        GaugeMetricFamily,
        (
            ("mcs_edge_media_ports_open", "Relay ports open", len(relay.ports), ()),
            (
                "mcs_edge_media_ports",
                "Relay ports of media.ports (this worker's slice), by state",
                {"free": allocator.free, "used": allocator.in_use},
                ["state"],
            ),
        ),
    )


def shaping_families(counters: Mapping[tuple[str, str, str], int]) -> Iterator[Metric]:
    """Shaping events (``Shaping.counters``: (event, tenant, reason) -> n)."""
    events = {
        tuple(str(k) for k in key): n
        for key, n in counters.items()
        if isinstance(key, tuple) and len(key) == 3 and isinstance(n, int)
    }
    yield family(
        CounterMetricFamily,
        "mcs_edge_shaping_events",
        "Shaping events (connections closed, reads paused)",
        events,
        ["event", "tenant", "reason"],
    )


def _timestamp(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


#: ACME order states (``AcmeManager.status()``), each a series of ``mcs_edge_acme_state``.
ACME_STATES = ("idle", "ordering", "valid", "error")


def acme_families(status: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """Per ACME tenant: last success, next renewal, failures in a row, state (``AcmeManager.status()``)."""
    last = GaugeMetricFamily(
        "mcs_edge_acme_last_success_timestamp_seconds",
        "When (Unix time) this process last had a certificate issued for the tenant",
        labels=["tenant"],
    )
    renew = GaugeMetricFamily(
        "mcs_edge_acme_next_renewal_timestamp_seconds",
        "When (Unix time) the tenant's certificate is due for renewal",
        labels=["tenant"],
    )
    attempt = GaugeMetricFamily(
        "mcs_edge_acme_next_attempt_timestamp_seconds",
        "When (Unix time) the next order is tried after a failure",
        labels=["tenant"],
    )
    failures = GaugeMetricFamily(
        "mcs_edge_acme_failures", "Failed ACME orders in a row (0 after a success)", labels=["tenant"]
    )
    orders = CounterMetricFamily("mcs_edge_acme_orders", "ACME orders started", labels=["tenant"])
    state = GaugeMetricFamily(
        "mcs_edge_acme_state", "1 for the tenant's current ACME state", labels=["tenant", "state"]
    )
    for tenant_id, st in sorted(status.items()):
        for family, key in ((last, "last_issued"), (renew, "renew_at"), (attempt, "next_attempt")):
            ts = _timestamp(st.get(key))
            if ts is not None:
                family.add_metric([tenant_id], ts)
        failures.add_metric([tenant_id], int(st.get("failures", 0)))
        orders.add_metric([tenant_id], int(st.get("orders", 0)))
        for name in ACME_STATES:
            state.add_metric([tenant_id, name], 1 if st.get("state") == name else 0)
    yield from (last, renew, attempt, failures, orders, state)


def http_proxy_families(counters: Mapping[tuple[str, str], int]) -> Iterator[Metric]:
    """The reverse proxy's refusals and events (``HttpProxy.counters``: (tenant, event) -> n)."""
    yield _by_tenant_and_code(
        "mcs_edge_http_proxy_events",
        "Reverse proxy refusals and events ('-' when the request was bound to no tenant)",
        counters,
        "event",
    )


def handoff_families(counters: Mapping[tuple[str, str], int]) -> Iterator[Metric]:
    """The certificate hand-off's outcomes (``CertificateHandoff.counters``: (tenant, outcome) -> n)."""
    yield _by_tenant_and_code(
        "mcs_edge_certificate_handoffs",
        "Certificate hand-off requests by outcome ('ok' or the refusal)",
        counters,
        "result",
    )


def _by_tenant_and_code(name: str, doc: str, counters: Mapping[tuple[str, str], int], label: str) -> Metric:
    """A counter by (tenant, a code's reason text as a label value); samples in the counters' order."""
    c = CounterMetricFamily(name, doc, labels=["tenant", label])
    for (tenant, text), n in sorted(counters.items()):
        c.add_metric([tenant, label_value(text)], n)
    return c


def _popped(counters: dict[str, int], rows: Iterable[tuple[str, str]]) -> Iterator[Metric]:
    """One counter ``mcs_edge_<name>`` per (name, doc) row, its value taken out of ``counters``."""
    for name, doc in rows:
        yield family(CounterMetricFamily, f"mcs_edge_{name}", doc, counters.pop(name, 0))


_NOT_LABEL = re.compile(r"[^a-z0-9]+")


def label_value(text: str) -> str:
    """A code's own reason text as a label value: lower case, runs of other characters as ``_``."""
    return _NOT_LABEL.sub("_", text.lower()).strip("_") or "unknown"


# ---------------------------------------------------------------------------------------------
# Several workers
# ---------------------------------------------------------------------------------------------


class _Static:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def merge_expositions(texts: Iterable[str], extra: Iterable[Metric] = ()) -> bytes:
    """Merge the text expositions of several workers into one (see the module docstring).

    A family in ``extra`` replaces the workers' family of the same name."""
    extra = list(extra)
    replaced = {m.name for m in extra}
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name in replaced:
                continue
            target = families.get(fam.name)
            if target is None:
                target = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                values[fam.name] = {}
            mode = MERGE_MODES.get(fam.name, "sum")
            acc = values[fam.name]
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                old = acc.get(key)
                if old is None:
                    acc[key] = s.value
                elif mode == "min":
                    acc[key] = min(old, s.value)
                elif mode == "max":
                    acc[key] = max(old, s.value)
                elif s.name.endswith("_created"):
                    acc[key] = min(old, s.value)
                else:
                    acc[key] = old + s.value
    out: list[Metric] = []
    for name, fam in families.items():
        for (sample_name, labels), value in values[name].items():
            fam.add_sample(sample_name, dict(labels), value)
        out.append(fam)
    out.extend(extra)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Static(out))
    return bytes(generate_latest(reg))
