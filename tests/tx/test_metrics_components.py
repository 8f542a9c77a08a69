"""/metrics families of the components (guard, shaping, media port pool, reverse proxy, hand-off, ACME)
move with traffic and state on a live in-process edge; the port pool drives /health/ready."""

from __future__ import annotations

import json
import random
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import LocalEdge, http, metrics, sample
from helpers.https import Conn
from helpers.phone import Phone
from helpers.wsclient import HandshakeRefused
from twisted.internet import reactor, task, threads

from mcs_edge.tx.ops.admin import MIN_FREE_PORTS

PORTS = 12  # the relay port pool of the fixture (media.ports)


def _sleep(seconds: float) -> Any:
    return task.deferLater(reactor, seconds, lambda: None)


@pytest.fixture
def edge(tmp_path: Path):  # type: ignore[no-untyped-def]
    lo = random.randrange(40000, 50000, 2)
    tail = (
        "[tenants.limits]\nmax_connections = 1\n"  # bianchi: one live client connection
        "[tenants.shaping]\nrate = 1000\nburst = 1500\n"  # bianchi: slow signalling
        f'[media]\nports = [{lo}, {lo + PORTS - 1}]\nbind = "127.0.0.1"\n'
    )
    e = LocalEdge(tmp_path, tenants=2, tail=tail, extra='public_address = "127.0.0.1"\n')
    yield e
    pytest_twisted.blockon(e.stop())


def _ready(e: LocalEdge) -> tuple[int, dict[str, Any]]:
    code, _h, body = http(e.admin, "GET", "/health/ready", None, None)
    return code, json.loads(body)["checks"]


@pytest_twisted.inlineCallbacks
def test_media_port_pool_gauge_and_readiness_follow_calls(edge: LocalEdge) -> Any:
    """Calls take relay ports (free/used gauge moves); when fewer than one call's worth are free, /health/ready fails media_ports; BYE frees them."""
    m = yield threads.deferToThread(metrics, edge.admin)
    assert sample(m, "mcs_edge_media_ports", state="free") == PORTS
    assert sample(m, "mcs_edge_media_ports", state="used") == 0
    code, checks = yield threads.deferToThread(_ready, edge)
    assert code == 200 and checks["media_ports"] == {
        "ok": True,
        "detail": f"{PORTS} of {PORTS} relay ports free",
    }
    ws = yield threads.deferToThread(edge.client)
    phone = Phone(ws, "rossi.example.com")
    calls = []
    allocator = edge.service.media.anchor.allocator
    while allocator.free >= MIN_FREE_PORTS:  # fill the pool, one call at a time
        call = yield threads.deferToThread(phone.invite)
        assert call.final == 200
        calls.append(call)
        assert len(calls) <= PORTS
    m = yield threads.deferToThread(metrics, edge.admin)
    used = sample(m, "mcs_edge_media_ports", state="used")
    assert used == allocator.in_use > 0 and sample(m, "mcs_edge_media_ports", state="free") == PORTS - used
    code, checks = yield threads.deferToThread(_ready, edge)
    assert code == 503 and checks["media_ports"]["ok"] is False
    assert checks["media_ports"]["detail"] == f"{PORTS - int(used)} of {PORTS} relay ports free"
    for call in calls:
        assert (yield threads.deferToThread(phone.bye, call)) == 200
    ws.close()
    yield _sleep(0.2)
    m = yield threads.deferToThread(metrics, edge.admin)
    assert sample(m, "mcs_edge_media_ports", state="free") == PORTS
    code, _checks = yield threads.deferToThread(_ready, edge)
    assert code == 200


def _bad_sni(port: int) -> None:
    ctx = ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            ctx.wrap_socket(raw, server_hostname="nobody.example.org").close()
        except (ssl.SSLError, OSError):
            return


def _scan_backend(port: int) -> None:
    """A datagram to the backend SIP port from an address that is no tenant's PBX."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))
        s.sendto(b"OPTIONS sip:x SIP/2.0\r\n\r\n", ("127.0.0.1", port))


def _second_connection_refused(e: LocalEdge) -> str:
    first = e.client("bianchi")
    try:
        second = e.client("bianchi")
    except (HandshakeRefused, ConnectionError) as exc:
        return f"refused at handshake: {exc}"
    try:
        second.recv(5)
    except ConnectionError:
        return f"closed: {second.closed}"
    finally:
        first.close()
    return "not refused"


def _options(ws: Any, n: int) -> str:
    for i in range(n):
        ws.send(
            f"OPTIONS sip:rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKm{i}\r\n"
            "Max-Forwards: 70\r\nTo: <sip:rossi.example.com>\r\nFrom: <sip:a@rossi.example.com>;tag=m\r\n"
            f"Call-ID: metrics-{i}\r\nCSeq: {i + 1} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    return "sent"


@pytest_twisted.inlineCallbacks
def test_guard_metrics_move_tenant_limits_dropped_requests_and_scanners(edge: LocalEdge) -> Any:
    """A tenant over its connection limit, a banned source's request, an unknown SNI and a stranger on the backend port each move their family."""
    before = yield threads.deferToThread(metrics, edge.admin)
    assert sample(before, "mcs_edge_scanner_drops_total", kind="tls_sni") == 0
    outcome = yield threads.deferToThread(_second_connection_refused, edge)
    assert outcome != "not refused"
    yield threads.deferToThread(_bad_sni, edge.https)
    yield threads.deferToThread(_bad_sni, edge.https)
    yield threads.deferToThread(_scan_backend, edge.backend)
    ws = yield threads.deferToThread(edge.client)
    edge.service.bans.ban("127.0.0.1", "rossi", edge.service.timers.now(), 60)
    yield threads.deferToThread(_options, ws, 3)
    yield _sleep(0.3)
    edge.service.bans.lift("127.0.0.1")
    ws.close()
    m = yield threads.deferToThread(metrics, edge.admin)
    assert sample(m, "mcs_edge_tenant_limit_refusals_total", reason="tenant_connections") == 1
    assert sample(m, "mcs_edge_scanner_drops_total", kind="tls_sni") == 2
    assert sample(m, "mcs_edge_scanner_drops_total", kind="backend_sip") == 1
    dropped = {
        dict(labels)["reason"]: v
        for (name, labels), v in m.items()
        if name == "mcs_edge_guard_requests_dropped_total"
    }
    assert sum(dropped.values()) == 3 and dropped == dict(edge.service.protection.requests_dropped), dropped


@pytest_twisted.inlineCallbacks
def test_shaping_events_count_paused_reads(edge: LocalEdge) -> Any:
    """A tenant shaped to 1,000 B/s sending a burst of requests has its reads paused, counted per tenant."""
    ws = yield threads.deferToThread(edge.client, "bianchi")
    yield threads.deferToThread(_options, ws, 12)
    yield _sleep(0.5)
    ws.close()
    m = yield threads.deferToThread(metrics, edge.admin)
    paused = sample(m, "mcs_edge_shaping_events_total", event="reads_paused", tenant="bianchi", reason="wss")
    assert paused >= 1
    assert sample(m, "mcs_edge_shaping_events_total", event="reads_paused", tenant="rossi", reason="wss") == 0


def _long_url_and_handoff(e: LocalEdge) -> tuple[int, int, int]:
    conn = Conn(e.https, "rossi.example.com", cafile=e.ca)
    try:
        handoff = conn.request("GET", "/.well-known/mcs-edge/certificate", "rossi.example.com").status
    finally:
        conn.close()
    conn = Conn(e.https, "rossi.example.com", cafile=e.ca)
    try:
        long_url = conn.request("GET", "/" + "a" * 9000, "rossi.example.com").status
    finally:
        conn.close()
    conn = Conn(e.https, "rossi.example.com", cafile=e.ca)
    try:
        again = conn.request(
            "GET", "/.well-known/mcs-edge/certificate", "rossi.example.com", [("Authorization", "Bearer x")]
        ).status
    finally:
        conn.close()
    return handoff, long_url, again


@pytest_twisted.inlineCallbacks
def test_http_proxy_and_certificate_handoff_counters(edge: LocalEdge) -> Any:
    """A request target over proxy.max_url_length (414) and refused hand-offs (403) are counted with their reason."""
    handoff, long_url, again = yield threads.deferToThread(_long_url_and_handoff, edge)
    assert (handoff, long_url, again) == (403, 414, 403)
    m = yield threads.deferToThread(metrics, edge.admin)
    assert sample(m, "mcs_edge_http_proxy_events_total", tenant="-", event="url_too_long") == 1
    assert (
        sample(
            m,
            "mcs_edge_certificate_handoffs_total",
            tenant="rossi",
            result="hand_off_not_enabled_for_this_tenant",
        )
        == 2
    )


@pytest_twisted.inlineCallbacks
def test_acme_failures_next_attempt_and_state(tmp_path: Path) -> Any:
    """An ACME tenant whose CA is unreachable: failures in a row, orders, next attempt and state 'error' are exported."""
    tail = (
        '\n[[tenants]]\nid = "verdi"\ndomains = ["verdi.example.com"]\nbackend_sip = "udp:127.0.0.1:5999"\n'
        'certificate = "acme"\n[acme]\ndirectory = "https://127.0.0.1:1/dir"\nretry_min = 60\n'
    )
    e = LocalEdge(tmp_path, tail=tail)
    try:
        for _ in range(100):
            if e.service.acme.status().get("verdi", {}).get("failures", 0) >= 1:
                break
            yield _sleep(0.1)
        m = yield threads.deferToThread(metrics, e.admin)
        assert sample(m, "mcs_edge_acme_failures", tenant="verdi") == 1
        assert sample(m, "mcs_edge_acme_orders_total", tenant="verdi") == 1
        assert sample(m, "mcs_edge_acme_state", tenant="verdi", state="error") == 1
        assert sample(m, "mcs_edge_acme_state", tenant="verdi", state="valid") == 0
        wall = reactor.seconds()
        assert (
            wall + 50 < sample(m, "mcs_edge_acme_next_attempt_timestamp_seconds", tenant="verdi") < wall + 70
        )
        assert ("mcs_edge_acme_last_success_timestamp_seconds", (("tenant", "verdi"),)) not in m
        assert not any(dict(labels).get("tenant") == "rossi" for name, labels in m if "acme" in name)
    finally:
        yield e.stop()


def test_label_values_from_reason_texts_are_snake_case() -> None:
    """Reason texts become label values from a closed character set."""
    from mcs_edge.tx.ops.metrics import label_value

    assert label_value("hand-off not enabled for this tenant") == "hand_off_not_enabled_for_this_tenant"
    assert label_value("certificate being replaced, retry") == "certificate_being_replaced_retry"
    assert label_value("ok") == "ok" and label_value("--") == "unknown"


def test_family_turns_a_table_into_sorted_samples() -> None:
    """family(): a number is one unlabelled sample; a mapping gives one sample per key, sorted, tuple keys spread over the labels."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from mcs_edge.tx.ops.metrics import family

    one = family(GaugeMetricFamily, "mcs_edge_x", "x", 3)
    assert [(s.labels, s.value) for s in one.samples] == [({}, 3)]
    by = family(CounterMetricFamily, "mcs_edge_y", "y", {"b": 2, "a": 1}, ["reason"])
    assert [(s.name, s.labels, s.value) for s in by.samples] == [
        ("mcs_edge_y_total", {"reason": "a"}, 1),
        ("mcs_edge_y_total", {"reason": "b"}, 2),
    ]
    two = family(
        GaugeMetricFamily, "mcs_edge_z", "z", {("t2", "wss"): 1, ("t1", "tls"): 5}, ["tenant", "transport"]
    )
    assert [s.labels for s in two.samples] == [
        {"tenant": "t1", "transport": "tls"},
        {"tenant": "t2", "transport": "wss"},
    ]
