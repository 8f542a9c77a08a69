"""ACME against a real CA: Debian's pebble validating through the edge's own listeners.

pebble resolves tenant names with pebble-challtestsrv's DNS and really connects to the edge:
HTTP-01 on ``listen.http``, TLS-ALPN-01 (ALPN ``acme-tls/1``) on ``listen.https``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from helpers.edge import InProcessEdge, StopAfter, edge_toml, parse_metrics, until
from helpers.https import Conn
from helpers.pebble import Pebble
from helpers.ports import free_tcp_port
from twisted.internet import threads

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.requires_tool("pebble", "pebble-challtestsrv"),
]


class AcmeEdge(InProcessEdge):
    """pebble + challtestsrv + an edge whose ACME tenants it validates."""

    def __init__(self, tmp: Path, tenants: str, bad_hosts: dict[str, str] | None = None) -> None:
        super().__init__(tmp)
        self.http_port, self.https_port = free_tcp_port(), free_tcp_port()
        self.pebble = Pebble(tmp, self.http_port, self.https_port)
        for host, addr in (bad_hosts or {}).items():
            self.pebble.set_a(host, [addr])
        acme = (
            f'[acme]\ndirectory = "{self.pebble.directory}"\nemail = "ops@example.com"\n'
            f'ca_bundle = "{self.pebble.ca_file}"\nretry_min = 1\nretry_max = 2\n'
        )
        text = edge_toml(
            self.state,
            tenants,
            https=f"127.0.0.1:{self.https_port}",
            listen=f'http = "127.0.0.1:{self.http_port}"\n',
            sections=acme,
        )
        self.start(text, before=lambda service: setattr(service.acme, "poll_interval", 0.2))
        self.root = tmp / "pebble-root.pem"

    def stop(self) -> Any:
        d = super().stop()
        self.pebble.stop()
        return d

    def trust(self) -> str:
        """A CA file with pebble's issuing root (for verifying what the edge now serves)."""
        self.root.write_bytes(self.pebble.root_pem())
        return str(self.root)


def _until(predicate: Any) -> Any:
    """Wait on the reactor until ``predicate()`` is true (ACME takes its time: 60 s)."""
    return until(predicate, timeout=60.0, step=0.2)


TWO_TENANTS = """
[[tenants]]
id = "rossi"
domains = ["rossi.example.com", "www.rossi.example.com"]
backend_sip = "udp:127.0.0.1:5999"
certificate = "acme"
acme_challenge = "http-01"
[[tenants]]
id = "bianchi"
domains = ["bianchi.example.com"]
backend_sip = "udp:127.0.0.1:5998"
certificate = "acme"
acme_challenge = "tls-alpn-01"
api_secret = "bianchi-platform-secret"
"""


@pytest.fixture
def edge(tmp_path: Path, stop_after: StopAfter) -> Any:
    return stop_after(AcmeEdge(tmp_path, TWO_TENANTS))


@pytest.fixture
def edge_with_bad(tmp_path: Path):  # type: ignore[no-untyped-def]
    tenants = (
        TWO_TENANTS.split('[[tenants]]\nid = "bianchi"')[0]
        + """
[[tenants]]
id = "verdi"
domains = ["verdi.example.net"]
backend_sip = "udp:127.0.0.1:5997"
certificate = "acme"
acme_challenge = "http-01"
"""
    )
    # nothing listens on 127.0.0.2: pebble's HTTP-01 connection for verdi is refused
    e = AcmeEdge(tmp_path, tenants, bad_hosts={"verdi.example.net": "127.0.0.2"})
    yield e
    pytest_twisted.blockon(e.stop())


def _names(der: bytes) -> set[str]:
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


@pytest_twisted.inlineCallbacks
def test_two_tenants_get_certificates_by_http01_and_tls_alpn01(edge: AcmeEdge) -> Any:
    """rossi is validated by HTTP-01, bianchi by TLS-ALPN-01; both are then served, chained to pebble."""
    acme = edge.service.acme
    yield _until(lambda: all(s["state"] == "valid" for s in acme.status().values()))
    status = acme.status()
    assert status["rossi"]["challenge"] == "http-01" and status["bianchi"]["challenge"] == "tls-alpn-01"
    assert status["rossi"]["failures"] == 0 and status["bianchi"]["failures"] == 0
    m = parse_metrics(edge.service.metrics.render().decode())
    now = time.time()
    for tid in ("rossi", "bianchi"):
        tenant = (("tenant", tid),)
        assert now - 120 < m[("mcs_edge_acme_last_success_timestamp_seconds", tenant)] <= now
        assert m[("mcs_edge_acme_next_renewal_timestamp_seconds", tenant)] > now + 86400
        assert m[("mcs_edge_acme_failures", tenant)] == 0 and m[("mcs_edge_acme_orders_total", tenant)] >= 1
        assert m[("mcs_edge_acme_state", (("state", "valid"), ("tenant", tid)))] == 1
    trust = yield threads.deferToThread(edge.trust)

    def fetch(sni: str) -> tuple[set[str], int]:
        conn = Conn(edge.https_port, sni, cafile=trust)  # verifies chain and name against pebble's root
        names = _names(conn.peer_der())
        resp = conn.request("GET", "/", host=sni)
        conn.close()
        return names, resp.status

    names, code = yield threads.deferToThread(fetch, "www.rossi.example.com")
    assert names == {"rossi.example.com", "www.rossi.example.com"} and code == 200
    names, code = yield threads.deferToThread(fetch, "bianchi.example.com")
    assert names == {"bianchi.example.com"} and code == 200
    key = Path(edge.service.config.state_dir) / "acme" / "certs" / "rossi" / "privkey.pem"
    assert key.stat().st_mode & 0o077 == 0
    assert (Path(edge.service.config.state_dir) / "acme" / "account.key").stat().st_mode & 0o077 == 0


@pytest_twisted.inlineCallbacks
def test_forced_renewal_swaps_certificate_while_open_connection_stays(edge: AcmeEdge) -> Any:
    """A renewal is served to new handshakes; a connection opened before it keeps working."""
    acme = edge.service.acme
    yield _until(lambda: acme.status().get("bianchi", {}).get("state") == "valid")
    before = yield threads.deferToThread(Conn, edge.https_port, "bianchi.example.com")
    first = yield threads.deferToThread(before.request, "GET", "/", "bianchi.example.com")
    assert first.status == 200
    old_fp = before.peer_sha256()

    ok = yield acme.renew("bianchi")
    assert ok is True
    assert acme.status()["bianchi"]["orders"] >= 2

    after = yield threads.deferToThread(Conn, edge.https_port, "bianchi.example.com")
    assert after.peer_sha256() != old_fp
    again = yield threads.deferToThread(before.request, "GET", "/", "bianchi.example.com")
    assert again.status == 200 and before.peer_sha256() == old_fp
    # the tenant's platform polls the hand-off endpoint and gets the renewed certificate
    handed = yield threads.deferToThread(
        after.request,
        "GET",
        "/.well-known/mcs-edge/certificate",
        "bianchi.example.com",
        [("Authorization", "Bearer bianchi-platform-secret")],
    )
    assert handed.status == 200 and json.loads(handed.body)["sha256"] == after.peer_sha256()
    m = parse_metrics(edge.service.metrics.render().decode())
    assert m[("mcs_edge_certificate_handoffs_total", (("result", "ok"), ("tenant", "bianchi")))] == 1
    before.close()
    after.close()


@pytest_twisted.inlineCallbacks
def test_failing_validation_leaves_other_tenant_alone_and_is_retried(edge_with_bad: AcmeEdge) -> Any:
    """verdi's HTTP-01 fails (DNS points nowhere): rossi is issued regardless; verdi succeeds on retry."""
    e = edge_with_bad
    acme = e.service.acme
    yield _until(
        lambda: acme.status()["rossi"]["state"] == "valid" and acme.status()["verdi"]["failures"] >= 1
    )
    verdi = acme.status()["verdi"]
    assert verdi["state"] in ("error", "ordering")
    m = parse_metrics(e.service.metrics.render().decode())
    assert m[("mcs_edge_acme_failures", (("tenant", "verdi"),))] >= 1
    assert verdi["last_error"] is not None or verdi["state"] == "ordering"
    rossi_orders = acme.status()["rossi"]["orders"]
    yield threads.deferToThread(e.pebble.clear_a, "verdi.example.net")  # DNS fixed: next retry validates
    yield _until(lambda: acme.status()["verdi"]["state"] == "valid")
    assert acme.status()["verdi"]["orders"] >= 2 and acme.status()["verdi"]["failures"] == 0
    m = parse_metrics(e.service.metrics.render().decode())
    assert m[("mcs_edge_acme_failures", (("tenant", "verdi"),))] == 0
    assert m[("mcs_edge_acme_state", (("state", "valid"), ("tenant", "verdi")))] == 1
    assert acme.status()["rossi"]["orders"] == rossi_orders  # untouched by verdi's retries

    conn = yield threads.deferToThread(Conn, e.https_port, "verdi.example.net")
    assert _names(conn.peer_der()) == {"verdi.example.net"}
    conn.close()
