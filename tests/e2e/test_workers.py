"""twistd as operators run it: several workers under a supervisor, and SIGTERM draining a live call."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.edge import TOKEN, api, config_text, connect_refused, metrics, sample, tenant_toml
from helpers.pbx import Pbx
from helpers.phone import Phone
from helpers.twistd import TwistdEdge
from helpers.wsclient import WSClient, header, status


class Twistd(TwistdEdge):
    """``twistd -n --reactor=uvloop mcs-edge --config FILE`` in a subprocess, tenant rossi on a test PBX."""

    def __init__(
        self, tmp: Path, extra: str, listen: str = "", tenant: str = "", reactor: str = "uvloop"
    ) -> None:
        self.pbx = Pbx()
        self.state = tmp / "state"
        text = config_text(self.state, tenant_toml("rossi", self.pbx.port) + tenant, extra)
        text = text.replace('admin = "127.0.0.1:0"\n', 'admin = "127.0.0.1:0"\n' + listen, 1)
        super().__init__(tmp, text, reactor)  # a start that fails calls stop(), which closes the PBX
        self.ca = str(self.state / "dev-ca" / "ca.pem")

    def client(self) -> WSClient:
        return WSClient(self.https, "rossi.example.com", cafile=self.ca)

    def stop(self) -> None:
        super().stop()
        self.pbx.close()


@pytest.fixture
def workers2(tmp_path: Path) -> Iterator[Twistd]:
    t = Twistd(tmp_path, "workers = 2\ndrain_timeout = 10\n")
    yield t
    t.stop()


def _worker_of(t: Twistd, ws: WSClient) -> int:
    local_port = ws.sock.getsockname()[1]
    for _ in range(50):
        _code, body = api(t.admin, "GET", "/api/connections")
        for c in body["connections"]:
            if c["peer"].endswith(f":{local_port}"):
                return int(c["worker"])
        time.sleep(0.05)
    raise AssertionError("connection not listed by any worker")


def _one_client_per_worker(t: Twistd) -> dict[int, WSClient]:
    """Open connections until each worker holds one (the kernel spreads them by SO_REUSEPORT hashing)."""
    chosen: dict[int, WSClient] = {}
    for _ in range(60):
        ws = t.client()
        idx = _worker_of(t, ws)
        if idx in chosen:
            ws.close()
        else:
            chosen[idx] = ws
        if len(chosen) == 2:
            return chosen
    raise AssertionError(f"60 connections all landed on workers {sorted(chosen)}")


def _rr_port(invite: str) -> int:
    first = header(invite, "Record-Route") or ""
    return int(re.findall(r"<sip:127\.0\.0\.1:(\d+);transport=udp", first)[0])


def test_two_workers_calls_in_dialog_routing_and_a_killed_worker(workers2: Twistd) -> None:
    """workers = 2: calls through both complete; the PBX's BYE reaches the right worker; killing one leaves the other's call up."""
    t = workers2
    _code, st = api(t.admin, "GET", "/api/status")
    assert [w["ready"] for w in st["workers"]] == [True, True]
    clients = _one_client_per_worker(t)
    phones = {i: Phone(ws, "rossi.example.com", user=f"agent{i}") for i, ws in clients.items()}
    calls = {}
    for i, phone in phones.items():
        assert status(phone.register()) == 200
        calls[i] = phone.invite()
        assert calls[i].final == 200
    invites = {s.text.split("Call-ID: ")[1].split("\r\n")[0]: s for s in t.pbx.wait_for("INVITE", 2)}
    ports = {}
    for i, call in calls.items():
        seen = invites[call.call_id]
        ports[i] = seen.addr[1]
        assert _rr_port(seen.text) == seen.addr[1]  # Record-Route names the worker that sent it
    assert ports[0] != ports[1]  # each worker has its own backend SIP port
    # metrics are aggregated across the workers
    m = metrics(t.admin)
    assert sample(m, "mcs_edge_calls", tenant="rossi", state="answered") == 2
    assert sample(m, "mcs_edge_connections", tenant="rossi", transport="wss") == 2
    assert sample(m, "mcs_edge_registrations", tenant="rossi") == 2
    assert sample(m, "mcs_edge_workers", state="ready") == 2
    # in-dialog from the PBX: BYE to worker 0's Record-Route reaches worker 0's client
    t.pbx.hangup(calls[0].call_id)
    assert header(phones[0].answer_bye(), "Call-ID") == calls[0].call_id
    # a new call on worker 0, then worker 0 dies: worker 1's call is untouched
    calls[0] = phones[0].invite()
    assert calls[0].final == 200
    _code, st = api(t.admin, "GET", "/api/status")
    victim = st["workers"][0]["pid"]
    import os

    os.kill(victim, signal.SIGKILL)
    with pytest.raises((ConnectionError, OSError)):
        clients[0].recv(10)
    t.pbx.hangup(calls[1].call_id)  # the PBX ends worker 1's call: still routed, still answered
    assert header(phones[1].answer_bye(), "Call-ID") == calls[1].call_id
    calls[1] = phones[1].invite()
    assert calls[1].final == 200
    assert phones[1].bye(calls[1]) == 200
    # the supervisor restarts worker 0
    t.wait_log(r"WRK300 worker 0 .*\n(.*\n)*.*WRK101 worker 0 ")
    _code, st = api(t.admin, "GET", "/api/status")
    assert (
        st["workers"][0]["ready"] and st["workers"][0]["pid"] != victim and st["workers"][0]["restarts"] == 1
    )
    m = metrics(t.admin)
    assert sample(m, "mcs_edge_worker_restarts_total", worker="0") == 1
    clients[1].close()


def test_admin_tenant_change_reaches_every_worker(workers2: Twistd) -> None:
    """A tenant added through the supervisor's API is saved once and every worker serves it."""
    t = workers2
    new = {
        "id": "verdi",
        "domains": ["verdi.example.com"],
        "backend_sip": f"udp:127.0.0.1:{t.pbx.port}",
        "certificate": "self-signed",
    }
    code, body = api(t.admin, "POST", "/api/tenants", new)
    assert code == 201, body
    assert 'id = "verdi"' in t.conf.read_text()
    code, body = api(t.admin, "GET", "/api/tenants")
    assert [r["id"] for r in body["tenants"]] == ["rossi", "verdi"]
    m = metrics(t.admin)
    assert sample(m, "mcs_edge_tenants") == 2  # "max" across workers: every worker has both
    assert sample(m, "mcs_edge_config_reloads_total", result="ok") == 2  # one reload per worker
    code, body = api(t.admin, "GET", "/api/status", token="nope")
    assert code == 401


def test_sigterm_during_a_call_drains_it(tmp_path: Path) -> None:
    """SIGHUP then SIGTERM with a call up: reloads keep it; no new connections or calls (503); twistd exits once it ends."""
    t = Twistd(tmp_path, "drain_timeout = 20\n")
    try:
        ws = t.client()
        phone = Phone(ws, "rossi.example.com")
        call = phone.invite()
        assert call.final == 200
        # SIGHUP mid-call: an invalid file is refused (CFG400), a valid one applied (CFG201)
        good = t.conf.read_text()
        t.conf.write_text(good + "[bogus]\n")
        t.proc.send_signal(signal.SIGHUP)
        t.wait_log(r"CFG400 reload refused: bogus: unknown key")
        t.conf.write_text(good + tenant_toml("verdi", t.pbx.port))
        t.proc.send_signal(signal.SIGHUP)
        t.wait_log(r"CFG201 configuration reloaded: 2 tenant")
        t.proc.send_signal(signal.SIGTERM)
        t.wait_log(r"EDG102 draining")
        time.sleep(0.5)
        assert t.proc.poll() is None
        assert connect_refused(t.https)
        ws.send(
            "INVITE sip:300@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKterm1\r\n"
            "Max-Forwards: 70\r\nTo: <sip:300@rossi.example.com>\r\nFrom: <sip:a@rossi.example.com>;tag=t1\r\n"
            "Call-ID: sigterm-new\r\nCSeq: 1 INVITE\r\nContact: <sip:a@x.invalid;transport=ws>\r\nContent-Length: 0\r\n\r\n"
        )
        refused = ws.recv_sip(timeout=10, skip_provisional=True)
        assert status(refused) == 503 and header(refused, "Retry-After")
        code, _b = api(t.admin, "GET", "/api/status", token=TOKEN)
        assert code == 200
        assert phone.bye(call) == 200
        assert t.proc.wait(15) in (0, -signal.SIGTERM)
        log = t.log.read_text()
        assert "EDG103 drained" in log and "Traceback (most recent call last)" not in log, log
    finally:
        t.stop()


TURN_SECRET = "rossi-turn-secret-0123"


def _turn_round_trip(t: Twistd, kind: str, port: int) -> int:
    """One allocation over ``kind`` (udp, tcp, tls) on ``port``, a datagram relayed both ways, Refresh 0; the relay port."""
    from helpers.turnclient import TurnClient

    from mcs_edge.core.stun.turn import rest_password
    from mcs_edge.tx.turn.server import turn_username

    username = turn_username(int(time.time()) + 600, "alice", "rossi")
    password = rest_password(TURN_SECRET.encode(), username)
    kw = {"server_hostname": "rossi.example.com", "cafile": t.ca} if kind == "tls" else {}
    client = TurnClient(kind, ("127.0.0.1", port), username, password, **kw)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.2", 0))
    peer.settimeout(5)
    try:
        relay = client.allocate()
        assert client.bind(0x4001, peer.getsockname()) == 0
        client.send_channel(0x4001, b"to peer")
        data, src = peer.recvfrom(2048)
        assert data == b"to peer" and src == relay
        peer.sendto(b"to client", relay)
        assert client.recv_channel() == (0x4001, b"to client")
        assert client.refresh(0) == 0
        return relay[1]
    finally:
        peer.close()
        client.close()


@pytest.mark.parametrize("reactor", ["uvloop", "epoll"])
def test_two_workers_serve_turn_on_shared_udp_tcp_and_tls_ports(tmp_path: Path, reactor: str) -> None:
    """workers = 2 with TURN: both workers bind the shared UDP/TCP/TLS ports (SO_REUSEPORT) and relay; TLS handshakes are counted."""
    import random

    from mcs_edge.core.media.ports import split_range

    lo = random.randrange(33000, 39000, 2)
    slices = split_range(lo, lo + 199, 2)
    t = Twistd(
        tmp_path,
        'workers = 2\npublic_address = "127.0.0.1"\n',
        listen='turn = "127.0.0.1:0"\nturns = "127.0.0.1:0"\n',
        tenant=f'turn_secret = "{TURN_SECRET}"\nturn_peers = ["127.0.0.0/8"]\n[media]\nports = [{lo}, {lo + 199}]\n',
        reactor=reactor,
    )
    try:
        _code, st = api(t.admin, "GET", "/api/status")
        assert [w["ready"] for w in st["workers"]] == [True, True]
        ports = {
            "udp": st["listeners"]["turn"],
            "tcp": st["listeners"]["turn"],
            "tls": st["listeners"]["turns"],
        }
        seen: dict[str, set[int]] = {kind: set() for kind in ports}
        done = dict.fromkeys(ports, 0)
        for _ in range(40):  # new client ports until each worker has relayed on each transport
            for kind, port in ports.items():
                if len(seen[kind]) < 2:
                    relay_port = _turn_round_trip(t, kind, port)
                    done[kind] += 1
                    seen[kind].add(next(i for i, (a, b) in enumerate(slices) if a <= relay_port <= b))
            if all(len(s) == 2 for s in seen.values()):
                break
        assert seen == {"udp": {0, 1}, "tcp": {0, 1}, "tls": {0, 1}}, (seen, done)
        m = metrics(t.admin)  # aggregated across the workers
        for kind, n in done.items():
            assert sample(m, "mcs_edge_turn_allocations_created_total", listener=kind) == n
            assert sample(m, "mcs_edge_turn_allocations_deleted_total", listener=kind) == n
        assert sample(m, "mcs_edge_tls_handshakes_total", listener="turns", result="ok") == done["tls"]
        log = t.log.read_text()
        assert "Traceback (most recent call last)" not in log, log
    finally:
        t.stop()


def test_supervisor_counts_admin_requests_and_bans_wrong_tokens(tmp_path: Path) -> None:
    """workers = 2: mcs_edge_admin_requests_total counts the operators' requests at the supervisor (not
    its fan-out calls to the workers); guard.ban_failures wrong tokens ban the source at the supervisor."""
    t = Twistd(tmp_path, "workers = 2\ndrain_timeout = 5\n", tenant="\n[guard]\nban_failures = 3\n")
    try:
        for path in ("/api/status", "/api/tenants", "/api/connections"):
            code, _body = api(t.admin, "GET", path)
            assert code == 200
        assert api(t.admin, "GET", "/api/status", token=None)[0] == 401
        m = metrics(t.admin)  # counted once answered: not in its own figures
        assert sample(m, "mcs_edge_admin_requests_total", result="ok") == 3
        assert sample(m, "mcs_edge_admin_requests_total", result="unauthorized") == 1
        for i in range(3):
            assert api(t.admin, "GET", "/api/status", token=f"wrong-{i}-0123456789abcdef")[0] == 401
        assert api(t.admin, "GET", "/api/status")[0] == 403  # banned: even the right token
        m = metrics(t.admin)
        assert sample(m, "mcs_edge_admin_requests_total", result="ok") == 4  # + the first /metrics
        assert sample(m, "mcs_edge_admin_requests_total", result="unauthorized") == 4
        assert sample(m, "mcs_edge_admin_requests_total", result="banned") == 1
    finally:
        t.stop()
