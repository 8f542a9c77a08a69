"""tls.unknown_sni = "default": a client that connects by address (no SNI) is served by the default tenant."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.https import Conn
from helpers.pbx import Pbx
from helpers.wsclient import HandshakeRefused, WSClient
from twisted.internet import threads

from mcs_edge import config as c
from mcs_edge.tx.service import EdgeService


class Edge:
    def __init__(self, tmp: Path, unknown_sni: str) -> None:
        from twisted.internet import reactor

        self.pbx = Pbx()
        default = 'default_tenant = "demo"\n' if unknown_sni == "default" else ""
        text = f"""
[edge]
state_dir = "{tmp / "state"}"
[listen]
https = "127.0.0.1:0"
sip_tls = "off"
backend_sip = "127.0.0.1:0"
admin = "127.0.0.1:0"
[tls]
reload_interval = 0
unknown_sni = "{unknown_sni}"
{default}
[[tenants]]
id = "demo"
domains = ["demo.example.com"]
backend_sip = "udp:127.0.0.1:{self.pbx.port}"
certificate = "self-signed"
[[tenants]]
id = "rossi"
domains = ["rossi.example.com"]
backend_sip = "udp:127.0.0.1:{self.pbx.port}"
certificate = "self-signed"
"""
        self.service = EdgeService(c.loads(text), reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.port = self.service.ports["https"].getHost().port

    def get(self, sni: str | None, host: str) -> Any:
        conn = Conn(self.port, sni)  # sni None: Python sends no server_name extension
        try:
            return conn.request("GET", "/", host)
        finally:
            conn.close()

    def stop(self) -> Any:
        self.pbx.close()
        return self.service.stopService()


@pytest.fixture
def default_edge(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = Edge(tmp_path, "default")
    yield e
    pytest_twisted.blockon(e.stop())


@pytest.fixture
def reject_edge(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = Edge(tmp_path, "reject")
    yield e
    pytest_twisted.blockon(e.stop())


@pytest_twisted.inlineCallbacks
def test_client_without_sni_is_served_by_the_default_tenant(default_edge: Edge) -> Any:
    """No SNI, Host = the edge's IP address: the default tenant's page, and its SIP WebSocket upgrade."""
    e = default_edge
    resp = yield threads.deferToThread(e.get, None, f"127.0.0.1:{e.port}")
    assert resp.status == 200 and b"demo.example.com" in resp.body
    ws = yield threads.deferToThread(WSClient, e.port, "127.0.0.1")  # an IP: no SNI is sent
    try:
        assert ws.protocol == "sip"
        flows = list(e.service.sip.flows.values())
        assert [f.tenant.id for f in flows] == ["demo"]
    finally:
        ws.close()


@pytest_twisted.inlineCallbacks
def test_client_without_sni_cannot_reach_another_tenant_by_host(default_edge: Edge) -> Any:
    """No SNI (bound to the default tenant) with Host = another tenant's name: 421, never that tenant."""
    e = default_edge
    resp = yield threads.deferToThread(e.get, None, "rossi.example.com")
    assert resp.status == 421
    resp = yield threads.deferToThread(e.get, "rossi.example.com", "127.0.0.1")  # SNI of a tenant
    assert resp.status == 404  # a named tenant's connection is never rebound to the default one
    resp = yield threads.deferToThread(e.get, "rossi.example.com", "rossi.example.com")
    assert resp.status == 200 and b"rossi.example.com" in resp.body


@pytest_twisted.inlineCallbacks
def test_unknown_sni_reject_refuses_clients_without_sni(reject_edge: Edge) -> Any:
    """tls.unknown_sni = "reject": a client without SNI fails the TLS handshake."""
    with pytest.raises((ssl.SSLError, OSError, HandshakeRefused)):
        yield threads.deferToThread(WSClient, reject_edge.port, "127.0.0.1")
