"""Operations on a live in-process edge: /metrics, /health, the admin API's token, reload, drain."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import TOKEN, LocalEdge, api, connect_refused, http, metrics, sample, tenant_toml
from helpers.phone import Phone
from helpers.wsclient import header, status
from twisted.internet import reactor, task, threads
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure


def _sleep(seconds: float) -> Any:
    return task.deferLater(reactor, seconds, lambda: None)


@pytest.fixture
def edge(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = LocalEdge(tmp_path, tenants=2)
    yield e
    pytest_twisted.blockon(e.stop())


def _traffic(e: LocalEdge) -> tuple[str, Any, int]:
    ws = e.client()
    phone = Phone(ws, "rossi.example.com")
    reg = phone.register()
    call = phone.invite()
    bye = phone.bye(call)
    ws.close()
    return reg, call, bye


@pytest_twisted.inlineCallbacks
def test_metrics_parse_and_counters_move_with_traffic(edge: LocalEdge) -> Any:
    """/metrics parses with prometheus_client's parser; a register + call + bye moves the counters."""
    before = yield threads.deferToThread(metrics, edge.admin)
    assert sample(before, "mcs_edge_tenants") == 2
    assert sample(before, "mcs_edge_sip_requests_total", direction="to_backend") == 0
    expiry = sample(
        before, "mcs_edge_certificate_expiry_timestamp_seconds", tenant="rossi", domain="rossi.example.com"
    )
    assert expiry > 1e9
    assert ("process_cpu_seconds_total", ()) in before
    ws = yield threads.deferToThread(edge.client)
    phone = Phone(ws, "rossi.example.com")
    reg = yield threads.deferToThread(phone.register)
    assert status(reg) == 200
    call = yield threads.deferToThread(phone.invite)
    assert call.final == 200
    during = yield threads.deferToThread(metrics, edge.admin)
    assert sample(during, "mcs_edge_connections", tenant="rossi", transport="wss") == 1
    assert sample(during, "mcs_edge_registrations", tenant="rossi") == 1
    assert sample(during, "mcs_edge_calls", tenant="rossi", state="answered") == 1
    assert sample(during, "mcs_edge_tls_handshakes_total", listener="https", result="ok") >= 1
    assert (yield threads.deferToThread(phone.bye, call)) == 200
    ws.close()
    yield _sleep(0.2)
    after = yield threads.deferToThread(metrics, edge.admin)
    assert sample(after, "mcs_edge_sip_requests_total", direction="to_backend") >= 3  # REGISTER, INVITE, BYE
    assert sample(after, "mcs_edge_sip_responses_total", origin="relayed", **{"class": "2xx"}) >= 3
    assert sample(after, "mcs_edge_calls_started_total") == 1
    assert sample(after, "mcs_edge_calls_ended_total") == 1
    assert sample(after, "mcs_edge_calls", tenant="rossi", state="answered") == 0
    assert sample(after, "mcs_edge_connections_opened_total", tenant="rossi", transport="wss") == 1
    assert sample(after, "mcs_edge_connections_closed_total", tenant="rossi", transport="wss") == 1
    assert sample(after, "mcs_edge_connections", tenant="rossi", transport="wss") == 0


def _bad_sni(port: int) -> None:
    ctx = ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            ctx.wrap_socket(raw, server_hostname="nobody.example.org").close()
        except (ssl.SSLError, OSError):
            return


@pytest_twisted.inlineCallbacks
def test_tls_handshake_failures_are_counted(edge: LocalEdge) -> Any:
    """A client asking for a name no tenant owns fails its handshake, counted as failed."""
    yield threads.deferToThread(_bad_sni, edge.https)
    yield _sleep(0.1)
    m = yield threads.deferToThread(metrics, edge.admin)
    assert sample(m, "mcs_edge_tls_handshakes_total", listener="https", result="failed") == 1
    assert sample(m, "mcs_edge_tls_handshakes_total", listener="https", result="ok") == 0


@pytest_twisted.inlineCallbacks
def test_health_live_and_ready(edge: LocalEdge) -> Any:
    """/health/live answers 200; /health/ready lists its checks and fails when a component's check fails."""
    code, _h, body = yield threads.deferToThread(http, edge.admin, "GET", "/health/live", None, None)
    assert code == 200 and json.loads(body)["status"] == "ok"
    code, _h, body = yield threads.deferToThread(http, edge.admin, "GET", "/health/ready", None, None)
    doc = json.loads(body)
    assert code == 200 and set(doc["checks"]) >= {"listeners", "config", "draining"}
    edge.service.health.add_check("media_ports", lambda: (False, "0 of 500 free"))
    code, _h, body = yield threads.deferToThread(http, edge.admin, "GET", "/health/ready", None, None)
    assert code == 503 and json.loads(body)["checks"]["media_ports"] == {
        "ok": False,
        "detail": "0 of 500 free",
    }


@pytest_twisted.inlineCallbacks
def test_admin_api_refuses_missing_or_wrong_token(edge: LocalEdge) -> Any:
    """No token or a wrong one: 401 with WWW-Authenticate; the right one: 200. The token is never logged."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        code, headers, _b = yield threads.deferToThread(http, edge.admin, "GET", "/api/status", None, None)
        assert code == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
        code, _h, _b = yield threads.deferToThread(
            http, edge.admin, "GET", "/api/status", None, "wrong-" + TOKEN
        )
        assert code == 401
        code, _h, _b = yield threads.deferToThread(http, edge.admin, "GET", "/api/status", None, TOKEN[:-1])
        assert code == 401
        code, body = yield threads.deferToThread(api, edge.admin, "GET", "/api/status")
        assert code == 200 and body["tenants"] == 2
    finally:
        globalLogPublisher.removeObserver(events)
    assert not any(TOKEN[:12] in repr(e) for e in events)
    m = yield threads.deferToThread(metrics, edge.admin)
    assert sample(m, "mcs_edge_admin_requests_total", result="unauthorized") == 3


def test_token_generated_into_state_dir_with_mode_0600(tmp_path: Path) -> None:
    """Without [admin] token the edge generates one into state_dir/admin-token (0600) and keeps it."""
    from mcs_edge import config as c
    from mcs_edge.tx.ops.admin import load_or_create_token

    cfg = c.loads(f'[edge]\nstate_dir = "{tmp_path / "state"}"\n')
    token = load_or_create_token(cfg)
    path = tmp_path / "state" / "admin-token"
    assert path.read_text().strip() == token and len(token) >= 32
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_or_create_token(cfg) == token


@pytest_twisted.inlineCallbacks
def test_admin_lists_connections_calls_and_lifts_bans(edge: LocalEdge) -> Any:
    """Connections and calls are listed per tenant; a ban is listed and lifted."""
    ws = yield threads.deferToThread(edge.client)
    phone = Phone(ws, "rossi.example.com")
    call = yield threads.deferToThread(phone.invite)
    code, body = yield threads.deferToThread(api, edge.admin, "GET", "/api/connections?tenant=rossi")
    assert code == 200 and len(body["connections"]) == 1 and body["connections"][0]["calls"] == 1
    code, body = yield threads.deferToThread(api, edge.admin, "GET", "/api/connections?tenant=bianchi")
    assert body["connections"] == []
    code, body = yield threads.deferToThread(api, edge.admin, "GET", "/api/calls")
    assert [(x["call_id"], x["tenant"], x["state"]) for x in body["calls"]] == [
        (call.call_id, "rossi", "answered")
    ]
    code, body = yield threads.deferToThread(api, edge.admin, "GET", "/api/tenants")
    rows = {r["id"]: r for r in body["tenants"]}
    assert rows["rossi"]["calls"] == 1 and rows["rossi"]["connections"] == 1 and rows["bianchi"]["calls"] == 0
    yield threads.deferToThread(phone.bye, call)
    ws.close()
    edge.service.bans.ban("192.0.2.7", "rossi", edge.service.timers.now(), 60)
    code, body = yield threads.deferToThread(api, edge.admin, "GET", "/api/bans")
    assert [b["source"] for b in body["bans"]] == ["192.0.2.7"]
    code, body = yield threads.deferToThread(api, edge.admin, "DELETE", "/api/bans/192.0.2.7")
    assert code == 200 and body == {"lifted": True}
    code, body = yield threads.deferToThread(api, edge.admin, "DELETE", "/api/bans/192.0.2.7")
    assert code == 404
    assert not edge.service.bans.is_banned("192.0.2.7", edge.service.timers.now())


@pytest_twisted.inlineCallbacks
def test_admin_adds_updates_and_removes_tenants_persisting_to_the_file(edge: LocalEdge) -> Any:
    """Tenant add/update/remove are validated like the file, saved into it (comments kept) and applied live."""
    new = {
        "id": "verdi",
        "domains": ["verdi.example.com"],
        "backend_sip": f"udp:127.0.0.1:{edge.pbx.port}",
        "certificate": "self-signed",
    }
    code, body = yield threads.deferToThread(api, edge.admin, "POST", "/api/tenants", new)
    assert code == 201, body
    text = edge.conf.read_text()
    assert text.startswith("# operator comment") and 'id = "verdi"' in text
    assert edge.service.tenants.by_id("verdi") is not None
    code, body = yield threads.deferToThread(api, edge.admin, "POST", "/api/tenants", new)
    assert code == 409
    bad = dict(new, id="neri", backend_sip="udp:127.0.0.1:99999")
    code, body = yield threads.deferToThread(api, edge.admin, "POST", "/api/tenants", bad)
    assert code == 400
    assert any(e.startswith("tenants[3].backend_sip: ") for e in body["errors"]), body
    bad = dict(new, id="neri", domains=["rossi.example.com"])
    code, body = yield threads.deferToThread(api, edge.admin, "POST", "/api/tenants", bad)
    assert code == 400
    assert any("already belongs to tenant 'rossi'" in e for e in body["errors"]), body
    assert "neri" not in edge.conf.read_text()
    code, body = yield threads.deferToThread(
        api, edge.admin, "PATCH", "/api/tenants/verdi", {"media": "passthrough"}
    )
    assert code == 200, body
    assert edge.service.config.tenant("verdi").media == "passthrough"  # type: ignore[union-attr]
    code, body = yield threads.deferToThread(api, edge.admin, "GET", "/api/tenants/verdi")
    assert body["tenant"]["media"] == "passthrough" and body["tenant"]["domains"] == ["verdi.example.com"]
    # a connection of a tenant that is then removed is closed cleanly
    ws = yield threads.deferToThread(edge.client, "verdi")
    code, body = yield threads.deferToThread(api, edge.admin, "DELETE", "/api/tenants/verdi")
    assert code == 200
    with pytest.raises(ConnectionError):
        yield threads.deferToThread(ws.recv, 5)
    assert ws.closed is not None and "tenant removed" in ws.closed[1]
    assert 'id = "verdi"' not in edge.conf.read_text()
    assert edge.service.tenants.by_id("verdi") is None


@pytest_twisted.inlineCallbacks
def test_reload_mid_call_keeps_call_and_registration(edge: LocalEdge) -> Any:
    """SIGHUP-style and API reloads during a call: the call and the registration survive; the PBX's BYE reaches the client."""
    ws = yield threads.deferToThread(edge.client)
    phone = Phone(ws, "rossi.example.com")
    assert status((yield threads.deferToThread(phone.register))) == 200
    call = yield threads.deferToThread(phone.invite)
    assert call.final == 200
    edge.conf.write_text(edge.conf.read_text() + tenant_toml("verdi", edge.pbx.port))
    assert edge.service.reload() is True
    code, body = yield threads.deferToThread(api, edge.admin, "POST", "/api/reload")
    assert code == 200 and body == {"reloaded": True}
    assert edge.service.tenants.by_id("verdi") is not None
    m = yield threads.deferToThread(metrics, edge.admin)
    assert sample(m, "mcs_edge_registrations", tenant="rossi") == 1
    assert sample(m, "mcs_edge_calls", tenant="rossi", state="answered") == 1
    assert sample(m, "mcs_edge_config_reloads_total", result="ok") == 2
    edge.pbx.hangup(call.call_id)
    bye = yield threads.deferToThread(phone.answer_bye)
    assert header(bye, "Call-ID") == call.call_id
    yield _sleep(0.2)
    assert len(edge.service.sip.core.calls) == 0
    ws.close()


@pytest_twisted.inlineCallbacks
def test_invalid_reload_is_refused_with_errors(edge: LocalEdge) -> Any:
    """A broken file: the API reload answers 400 with each error, SIGHUP reload refuses, the old config stays."""
    good = edge.conf.read_text()
    edge.conf.write_text(good + "[media]\nports = [5, 1]\nbogus = true\n")
    code, body = yield threads.deferToThread(api, edge.admin, "POST", "/api/reload")
    assert code == 400
    assert any(e.startswith("media.ports") for e in body["errors"]) and any(
        "media.bogus" in e for e in body["errors"]
    )
    assert edge.service.reload() is False
    assert [t.id for t in edge.service.config.tenants] == ["rossi", "bianchi"]
    m = yield threads.deferToThread(metrics, edge.admin)
    assert sample(m, "mcs_edge_config_reloads_total", result="refused") == 2
    edge.conf.write_text(good)


def _invite_status(phone: Phone) -> tuple[int, str | None]:
    call = phone.invite()
    return call.final, None


def _raw_invite(ws: Any) -> str:
    ws.send(
        "INVITE sip:300@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKdrain1\r\n"
        "Max-Forwards: 70\r\nTo: <sip:300@rossi.example.com>\r\nFrom: <sip:a@rossi.example.com>;tag=d1\r\n"
        "Call-ID: drain-new-call\r\nCSeq: 1 INVITE\r\nContact: <sip:a@x.invalid;transport=ws>\r\nContent-Length: 0\r\n\r\n"
    )
    return ws.recv_sip(timeout=10, skip_provisional=True)


@pytest_twisted.inlineCallbacks
def test_drain_waits_for_calls_refuses_new_ones_and_tells_idle_clients(tmp_path: Path) -> Any:
    """stopService drains: new INVITE 503 + Retry-After, new connections refused, idle WS closed with a reason, stop after BYE."""
    e = LocalEdge(tmp_path, extra="drain_timeout = 30\n")
    stopped: list[Any] = []
    try:
        ws = yield threads.deferToThread(e.client)
        idle = yield threads.deferToThread(e.client)
        phone = Phone(ws, "rossi.example.com")
        call = yield threads.deferToThread(phone.invite)
        assert call.final == 200
        d = e.service.stopService()
        d.addBoth(stopped.append)
        yield _sleep(0.3)
        assert not stopped
        assert (yield threads.deferToThread(connect_refused, e.https))
        with pytest.raises(ConnectionError):
            yield threads.deferToThread(idle.recv, 5)
        assert idle.closed == (1000, "edge draining")
        refused = yield threads.deferToThread(_raw_invite, ws)
        assert status(refused) == 503 and header(refused, "Retry-After")
        code, _h, _b = yield threads.deferToThread(http, e.admin, "GET", "/health/ready", None, None)
        assert code == 503
        assert (yield threads.deferToThread(phone.bye, call)) == 200
        for _ in range(50):
            if stopped:
                break
            yield _sleep(0.1)
        assert len(stopped) == 1 and not isinstance(stopped[0], Failure)
        assert not e.service.running and len(e.service.timers) == 0
    finally:
        e.pbx.close()
        if not stopped:
            yield e.service.stopService()


@pytest_twisted.inlineCallbacks
def test_drain_timeout_cuts_remaining_calls(tmp_path: Path) -> Any:
    """A call that does not end within edge.drain_timeout is cut and the service stops."""
    e = LocalEdge(tmp_path, extra="drain_timeout = 0.5\n")
    try:
        ws = yield threads.deferToThread(e.client)
        call = yield threads.deferToThread(Phone(ws, "rossi.example.com").invite)
        assert call.final == 200
        t0 = reactor.seconds()
        yield e.service.stopService()
        assert 0.4 <= reactor.seconds() - t0 < 5
        with pytest.raises(ConnectionError):
            yield threads.deferToThread(ws.recv, 5)
    finally:
        e.pbx.close()


def test_json_log_lines_carry_the_code() -> None:
    """The JSON observer writes one object per line with code, level, message and the event's keys."""
    import io

    from twisted.logger import Logger

    from mcs_edge.tx.ops.logs import JsonLineObserver

    out = io.StringIO()
    log = Logger(observer=JsonLineObserver(out, {"worker": 1}))
    log.warn("SIP400 {problem}", problem="bad Via", peer=("1.2.3.4", 5))
    doc = json.loads(out.getvalue().splitlines()[0])
    assert doc["code"] == "SIP400" and doc["level"] == "warn" and doc["message"] == "SIP400 bad Via"
    assert doc["problem"] == "bad Via" and doc["worker"] == 1 and doc["peer"] == ["1.2.3.4", 5]


def test_rate_limited_log_summarises_suppressed_lines() -> None:
    """At most `burst` lines per window per key; the rest are counted and summarised once with LOG300."""
    from twisted.logger import Logger

    from mcs_edge.tx.ops.logs import RateLimitedLog

    seen: list[dict[str, Any]] = []
    now = [0.0]
    rl = RateLimitedLog(Logger(observer=seen.append), burst=3, window=1.0, now=lambda: now[0])
    for _ in range(10):
        rl.info("SIP400", "SIP400 {problem}", problem="x")
    assert len(seen) == 3 and rl.suppressed_total == 7
    now[0] = 1.5
    rl.info("SIP400", "SIP400 {problem}", problem="x")
    assert [e["log_format"][:6] for e in seen[3:]] == ["LOG300", "SIP400"] and seen[3]["count"] == 7
