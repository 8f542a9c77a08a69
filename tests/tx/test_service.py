"""EdgeService: start, serve TLS, reload (good and bad), stop with every timer cancelled."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import threads

from mcs_edge import config as c
from mcs_edge.tx.service import EdgeService

TENANT = '[[tenants]]\nid = "{id}"\ndomains = ["{id}.example.com"]\nbackend_sip = "udp:127.0.0.1:5080"\ncertificate = "self-signed"\n'


def _text(state: Path, *ids: str, extra: str = "") -> str:
    return (
        f'[edge]\nstate_dir = "{state}"\n[listen]\nhttps = "127.0.0.1:0"\nsip_tls = "off"\n'
        f'backend_sip = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n[tls]\nreload_interval = 5\n{extra}'
        + "".join(TENANT.format(id=i) for i in ids)
    )


def _get(port: int, host: str, cafile: str) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


def _start(cfg: c.EdgeConfig, path: str | None = None) -> EdgeService:
    from twisted.internet import reactor

    svc = EdgeService(cfg, reactor, config_path=path)
    svc.privilegedStartService()
    svc.startService()
    return svc


@pytest_twisted.inlineCallbacks
def test_service_serves_reloads_and_stops_cleanly(tmp_path: Path) -> Any:
    """A started edge serves its tenant; a valid reload adds a tenant; an invalid one is refused; stop cancels timers."""
    state = tmp_path / "state"
    conf = tmp_path / "edge.toml"
    conf.write_text(_text(state, "rossi"))
    svc = _start(c.load(conf), str(conf))
    try:
        port = svc.ports["https"].getHost().port
        ca = str(state / "dev-ca" / "ca.pem")
        status, body = yield threads.deferToThread(_get, port, "rossi.example.com", ca)
        assert status == 200 and b"rossi.example.com" in body
        # the certificate check loop, the idle-flow sweep, and the guard's expiry timers if armed
        # ... plus the loop-lag probe (tx/ops/loadprobe.py) and the WebSocket liveness sweep
        assert len(svc.timers) == 4 + svc.protection.armed

        conf.write_text(_text(state, "rossi", "bianchi"))
        assert svc.reload() is True
        status, body = yield threads.deferToThread(_get, port, "bianchi.example.com", ca)
        assert status == 200 and b"bianchi.example.com" in body

        conf.write_text(_text(state, "rossi", "bianchi") + "[edge]\nbogus = 1\n")
        assert svc.reload() is False
        assert [t.id for t in svc.config.tenants] == ["rossi", "bianchi"]

        # Host of another tenant than the TLS name: 421, never served
        ctx_status = yield threads.deferToThread(_misdirected, port, ca)
        assert ctx_status == 421
    finally:
        yield svc.stopService()
    assert len(svc.timers) == 0
    assert not svc.running


def _misdirected(port: int, cafile: str) -> int:
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="rossi.example.com") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: bianchi.example.com\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    return int(data.split(b" ", 2)[1])


@pytest_twisted.inlineCallbacks
def test_removed_tenant_is_no_longer_served(tmp_path: Path) -> Any:
    """After a reload that removes a tenant, its name no longer completes a handshake."""
    state = tmp_path / "state"
    svc = _start(c.loads(_text(state, "rossi", "verdi")))
    try:
        port = svc.ports["https"].getHost().port
        ca = str(state / "dev-ca" / "ca.pem")
        status, _ = yield threads.deferToThread(_get, port, "verdi.example.com", ca)
        assert status == 200
        assert svc.reload(c.loads(_text(state, "rossi"))) is True
        try:
            yield threads.deferToThread(_get, port, "verdi.example.com", ca)
        except ssl.SSLError:
            pass
        else:
            raise AssertionError("removed tenant still served")
    finally:
        yield svc.stopService()
