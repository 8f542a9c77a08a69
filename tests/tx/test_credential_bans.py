"""Wrong admin tokens and wrong api_secret bearer tokens feed the per-source ban list (allow-list exempt)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import TOKEN, LocalEdge, http, metrics, sample
from helpers.https import Conn
from twisted.internet import threads

API_SECRET = "api-secret-4f1c9a77e0b2d6"


def _edge(tmp: Path, allow: bool) -> LocalEdge:
    guard = "[guard]\nban_failures = 3\nban_window = 60\nban_duration = 600\n"
    if allow:
        guard += 'allow_networks = ["127.0.0.0/8"]\n'
    return LocalEdge(tmp, tail=f'api_secret = "{API_SECRET}"\n{guard}')


@pytest.fixture
def edge(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = _edge(tmp_path, allow=False)
    yield e
    pytest_twisted.blockon(e.stop())


@pytest.fixture
def allowed_edge(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = _edge(tmp_path, allow=True)
    yield e
    pytest_twisted.blockon(e.stop())


def _tls_refused(port: int) -> bool:
    """True when the edge closes a new connection before (or during) the TLS handshake."""
    ctx = ssl._create_unverified_context()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            ctx.wrap_socket(raw, server_hostname="rossi.example.com").close()
    except (ssl.SSLError, OSError):
        return True
    return False


def _wrong_admin_tokens(port: int, n: int) -> list[int]:
    return [http(port, "GET", "/api/status", None, f"wrong-token-{i:04d}-0123456789")[0] for i in range(n)]


@pytest_twisted.inlineCallbacks
def test_wrong_admin_tokens_ban_the_source(edge: LocalEdge) -> Any:
    """guard.ban_failures wrong admin tokens ban the source: then even the right token gets 403 and
    the source's new TLS connections are refused; missing tokens do not count."""
    codes = yield threads.deferToThread(
        lambda: [http(edge.admin, "GET", "/api/status", None, None)[0] for _ in range(4)]
    )
    assert codes == [401] * 4
    assert not edge.service.protection.is_banned("127.0.0.1")
    codes = yield threads.deferToThread(_wrong_admin_tokens, edge.admin, 3)
    assert codes == [401, 401, 401]
    assert edge.service.protection.is_banned("127.0.0.1")
    code, _h, _b = yield threads.deferToThread(http, edge.admin, "GET", "/api/status", None, TOKEN)
    assert code == 403
    assert (yield threads.deferToThread(_tls_refused, edge.https))
    m = yield threads.deferToThread(metrics, edge.admin)
    assert sample(m, "mcs_edge_credential_failures_total", kind="admin_token") == 3
    assert sample(m, "mcs_edge_admin_requests_total", result="banned") == 1


@pytest_twisted.inlineCallbacks
def test_allow_listed_source_is_never_banned_for_wrong_tokens(allowed_edge: LocalEdge) -> Any:
    """A source in guard.allow_networks keeps its access after many wrong admin tokens and api_secrets."""
    e = allowed_edge
    codes = yield threads.deferToThread(_wrong_admin_tokens, e.admin, 7)
    assert codes == [401] * 7
    statuses = yield threads.deferToThread(_wrong_api_secrets, e, 4)
    assert statuses == [403] * 4
    assert not e.service.protection.is_banned("127.0.0.1")
    code, _h, _b = yield threads.deferToThread(http, e.admin, "GET", "/api/status", None, TOKEN)
    assert code == 200
    assert not (yield threads.deferToThread(_tls_refused, e.https))


def _wrong_api_secrets(e: LocalEdge, n: int, secret: str | None = "wrong-secret-0123456789") -> list[int]:
    out = []
    for _ in range(n):
        conn = Conn(e.https, "rossi.example.com", cafile=e.ca)
        try:
            headers = [("Authorization", f"Bearer {secret}")] if secret else []
            resp = conn.request("GET", "/.well-known/mcs-edge/certificate", "rossi.example.com", headers)
            out.append(resp.status)
        finally:
            conn.close()
    return out


@pytest_twisted.inlineCallbacks
def test_wrong_api_secret_bearer_tokens_ban_the_source(edge: LocalEdge) -> Any:
    """Wrong tenants.api_secret bearer tokens on the certificate hand-off count like SIP auth failures:
    the third bans the source (new connections refused); requests without a token do not count."""
    statuses = yield threads.deferToThread(_wrong_api_secrets, edge, 3, None)
    assert statuses == [401] * 3
    assert not edge.service.protection.is_banned("127.0.0.1")
    statuses = yield threads.deferToThread(_wrong_api_secrets, edge, 3)
    assert statuses == [403] * 3
    assert edge.service.protection.is_banned("127.0.0.1")
    assert (yield threads.deferToThread(_tls_refused, edge.https))
    assert edge.service.protection.credential_failures == {"api_secret": 3}
