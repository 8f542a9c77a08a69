"""Certificate hand-off: each tenant's platform downloads its own chain and key, and nothing else."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers.edge import InProcessEdge, StopAfter, edge_toml, tenant_toml
from helpers.https import Conn
from twisted.internet import threads
from twisted.logger import formatEvent, globalLogPublisher

pytestmark = pytest.mark.e2e

ROSSI_SECRET = "rossi-secret-0123456789"
BIANCHI_SECRET = "bianchi-secret-987654321"
PATH = "/.well-known/mcs-edge/certificate"


class HandoffEdge(InProcessEdge):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        tenants = (
            tenant_toml(
                "rossi", 5999, keys=f'backend_http = "http://127.0.0.1:9"\napi_secret = "{ROSSI_SECRET}"\n'
            )
            + tenant_toml("bianchi", 5998, keys=f'api_secret = "{BIANCHI_SECRET}"\n')
            + tenant_toml("verdi", 5997)
        )
        self.start(edge_toml(self.state, tenants))
        self.port = self.https

    def fetch(self, sni: str, secret: str | None, host: str | None = None, method: str = "GET") -> Any:
        conn = Conn(self.port, sni, cafile=self.ca)
        headers = [("Authorization", f"Bearer {secret}")] if secret is not None else []
        try:
            resp = conn.request(method, PATH, host or sni, headers)
            resp.served_sha256 = hashlib.sha256(conn.peer_der()).hexdigest()  # type: ignore[attr-defined]
            return resp
        finally:
            conn.close()


@pytest.fixture
def edge(tmp_path: Path, stop_after: StopAfter) -> Any:
    return stop_after(HandoffEdge(tmp_path))


@pytest_twisted.inlineCallbacks
def test_handoff_returns_own_chain_and_key_with_secret(edge: HandoffEdge) -> Any:
    """With its secret, a tenant gets the chain the edge serves for it, the matching key and the expiry."""
    resp = yield threads.deferToThread(edge.fetch, "rossi.example.com", ROSSI_SECRET)
    assert resp.status == 200 and resp.header("cache-control") == "no-store"
    got = json.loads(resp.body)
    assert got["tenant"] == "rossi" and got["names"] == ["rossi.example.com"]
    leaf = x509.load_pem_x509_certificate(got["certificate_chain"].encode())
    key = serialization.load_pem_private_key(got["private_key"].encode(), None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert leaf.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    assert got["sha256"] == resp.served_sha256  # exactly the certificate on the wire
    assert got["not_after"] == leaf.not_valid_after_utc.isoformat()


@pytest_twisted.inlineCallbacks
def test_every_download_is_logged_without_secrets(edge: HandoffEdge) -> Any:
    """A download logs tenant and fingerprint (WEB210); neither the secret nor the key is ever logged."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        ok = yield threads.deferToThread(edge.fetch, "rossi.example.com", ROSSI_SECRET)
        yield threads.deferToThread(edge.fetch, "rossi.example.com", ROSSI_SECRET + "x")
    finally:
        globalLogPublisher.removeObserver(events.append)
    texts = [formatEvent(e) for e in events]
    assert any(t.startswith("WEB210 rossi certificate handed off") for t in texts)
    assert any(t.startswith("WEB410 rossi certificate hand-off refused") for t in texts)
    key_line = json.loads(ok.body)["private_key"].splitlines()[1]
    for t in texts:
        assert ROSSI_SECRET not in t and key_line not in t


@pytest_twisted.inlineCallbacks
def test_handoff_refuses_without_or_with_wrong_secret(edge: HandoffEdge) -> Any:
    """No credentials: 401 with a Bearer challenge; a wrong or another tenant's secret: 403."""
    resp = yield threads.deferToThread(edge.fetch, "rossi.example.com", None)
    assert resp.status == 401 and "Bearer" in (resp.header("www-authenticate") or "")
    resp = yield threads.deferToThread(edge.fetch, "rossi.example.com", "wrong-secret-wrong-secret")
    assert resp.status == 403 and b"BEGIN" not in resp.body
    resp = yield threads.deferToThread(edge.fetch, "rossi.example.com", BIANCHI_SECRET)
    assert resp.status == 403 and b"BEGIN" not in resp.body
    resp = yield threads.deferToThread(edge.fetch, "rossi.example.com", ROSSI_SECRET, method="POST")
    assert resp.status == 405


@pytest_twisted.inlineCallbacks
def test_handoff_never_returns_another_tenants_material(edge: HandoffEdge) -> Any:
    """Host/SNI games give 421; bianchi's secret on bianchi's name gives bianchi's, never rossi's."""
    resp = yield threads.deferToThread(edge.fetch, "rossi.example.com", BIANCHI_SECRET, "bianchi.example.com")
    assert resp.status == 421 and b"BEGIN" not in resp.body
    resp = yield threads.deferToThread(edge.fetch, "bianchi.example.com", ROSSI_SECRET, "rossi.example.com")
    assert resp.status == 421 and b"BEGIN" not in resp.body
    resp = yield threads.deferToThread(edge.fetch, "bianchi.example.com", BIANCHI_SECRET)
    got = json.loads(resp.body)
    assert resp.status == 200 and got["tenant"] == "bianchi" and got["names"] == ["bianchi.example.com"]
    rossi_key = (Path(edge.service.config.state_dir) / "certs" / "rossi" / "privkey.pem").read_text()
    assert got["private_key"] != rossi_key


@pytest_twisted.inlineCallbacks
def test_handoff_is_off_for_tenant_without_secret(edge: HandoffEdge) -> Any:
    """verdi has no api_secret: any credentials are refused with 403."""
    resp = yield threads.deferToThread(edge.fetch, "verdi.example.com", "anything-anything-anything")
    assert resp.status == 403
