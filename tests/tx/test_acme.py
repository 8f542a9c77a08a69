"""ACME adapter pieces without a CA: TLS-ALPN-01 certificate selection, the plain-HTTP listener, scheduling."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from helpers.https import Conn
from helpers.tlsmem import Memory, client_context
from helpers.tlsstore import Echo
from twisted.internet import threads
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock

from mcs_edge import certs
from mcs_edge import config as c
from mcs_edge.core.tenants import TenantTable
from mcs_edge.files import atomic_write
from mcs_edge.tx.service import EdgeService
from mcs_edge.tx.timers import Timers
from mcs_edge.tx.tls.acme import ACME_IDENTIFIER_OID, AcmeError, AcmeManager, _alpn_challenge_context
from mcs_edge.tx.tls.certificates import CertificateStore
from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory


def _config(state: Path, extra: str = "") -> c.EdgeConfig:
    return c.loads(
        f"""
[edge]
state_dir = "{state}"
[listen]
https = "127.0.0.1:0"
http = "127.0.0.1:0"
sip_tls = "off"
backend_sip = "127.0.0.1:0"
admin = "127.0.0.1:0"
[acme]
directory = "https://127.0.0.1:1/dir"
retry_min = 10
retry_max = 100
[[tenants]]
id = "rossi"
domains = ["rossi.example.com", "*.rossi.example.com"]
backend_sip = "udp:127.0.0.1:5999"
certificate = "acme"
[[tenants]]
id = "bianchi"
domains = ["bianchi.example.com"]
backend_sip = "udp:127.0.0.1:5998"
certificate = "self-signed"
{extra}
"""
    )


# -- TLS-ALPN-01 certificate selection (RFC 8737) ------------------------------------------------


def _handshake(
    store: CertificateStore, sni: str, alpn: list[str] | None, max_tls: Any
) -> tuple[Any, str | None]:
    """Run one handshake in memory through the edge's TLS layer: (peer certificate, negotiated ALPN)."""
    mem = Memory(StdlibTLSFactory(store, Factory.forProtocol(Echo)), sni, client_context(alpn, max_tls))
    assert mem.handshake()
    der = mem.client.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der), mem.client.selected_alpn_protocol()


@pytest.fixture
def store(tmp_path: Path) -> CertificateStore:
    cfg = _config(tmp_path / "state")
    tenants = TenantTable(cfg.tenants)
    s = CertificateStore(cfg, tenants)
    s.refresh()
    return s


@pytest.mark.parametrize("max_tls", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_acme_tls_client_gets_challenge_certificate(store: CertificateStore, max_tls: Any) -> None:
    """A ClientHello offering acme-tls/1 for a pending name gets the RFC 8737 certificate, in TLS 1.3
    and, since the certificate is chosen from the ClientHello before the handshake, in TLS 1.2."""
    store.set_acme_challenge(
        "Rossi.Example.com", _alpn_challenge_context(store, "rossi.example.com", "tok.thumb")
    )
    cert, alpn = _handshake(store, "rossi.example.com", ["acme-tls/1"], max_tls)
    assert alpn == "acme-tls/1"
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["rossi.example.com"]


def test_ordinary_clients_never_see_the_challenge_certificate(store: CertificateStore) -> None:
    """Without acme-tls/1, or once the challenge is removed, the tenant's usual certificate is served."""
    store.set_acme_challenge(
        "bianchi.example.com", _alpn_challenge_context(store, "bianchi.example.com", "tok.thumb")
    )
    for alpn, tls in ((["http/1.1"], ssl.TLSVersion.TLSv1_3), (["http/1.1"], ssl.TLSVersion.TLSv1_2)):
        cert, chosen = _handshake(store, "bianchi.example.com", alpn, tls)
        assert chosen != "acme-tls/1"
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    store.set_acme_challenge("bianchi.example.com", None)
    cert, chosen = _handshake(store, "bianchi.example.com", ["acme-tls/1"], ssl.TLSVersion.TLSv1_3)
    assert chosen != "acme-tls/1"


# -- scheduling and backoff (virtual time, no CA) --------------------------------------------------


class _Manager:
    def __init__(self, tmp: Path, now: datetime.datetime) -> None:
        self.clock = Clock()
        self.cfg = _config(tmp / "state")
        self.tenants = TenantTable(self.cfg.tenants)
        self.store = CertificateStore(self.cfg, self.tenants)
        self.timers = Timers(self.clock, self.clock.seconds)
        self.issued: list[str] = []
        self.now = now
        self.acme = AcmeManager(
            self.cfg,
            self.tenants,
            self.store,
            self.timers,
            self.clock,
            self.issued.append,
            wall=lambda: self.now,
            blocking=self._blocking,
        )
        self.calls = 0

    def _blocking(self, fn: Any, *args: Any) -> Any:
        from twisted.internet import defer

        self.calls += 1
        return defer.fail(AcmeError("CA unreachable (test)"))


def _write_cert(m: _Manager, names: tuple[str, ...], days: int, age_days: float) -> None:
    ca = certs.ensure_dev_ca(m.cfg.state_dir)
    chain, key = certs.issue_leaf(ca, names, days=days)
    chain_path, key_path = m.store.paths_for(m.cfg.tenants[0])
    atomic_write(key_path, key, 0o600)
    atomic_write(chain_path, chain, 0o644)
    m.now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=age_days)


def test_missing_certificate_is_ordered_at_once_and_failures_back_off(tmp_path: Path) -> None:
    """No certificate: an order starts at once; each failure doubles the wait (10, 20, 40 s +-10%), capped."""
    m = _Manager(tmp_path, datetime.datetime.now(datetime.UTC))
    m.acme.start()
    assert list(m.acme.status()) == ["rossi"]  # only ACME tenants are managed
    delays = []
    for _ in range(5):
        m.clock.advance(0)
        st = m.acme.status()["rossi"]
        assert st["state"] == "error" and "CA unreachable" in st["last_error"]
        delays.append(min(dc.getTime() for dc in m.clock.getDelayedCalls()) - m.clock.seconds())
        m.clock.advance(delays[-1])
    for got, want in zip(delays, (10, 20, 40, 80, 100), strict=True):
        assert want * 0.89 <= got <= want * 1.11
    assert m.acme.status()["rossi"]["failures"] == 6
    assert m.acme.status()["rossi"]["skipped_names"] == ["*.rossi.example.com"]  # wildcards need DNS-01
    m.acme.stop()
    assert m.clock.getDelayedCalls() == []


def test_renewal_is_due_when_a_third_of_the_lifetime_remains(tmp_path: Path) -> None:
    """A 90-day certificate 10 days old waits until day 60; at day 61 it is ordered at once."""
    m = _Manager(tmp_path, datetime.datetime.now(datetime.UTC))
    _write_cert(m, ("rossi.example.com",), days=90, age_days=10)
    m.acme.start()
    st = m.acme.status()["rossi"]
    assert st["state"] == "valid" and m.calls == 0
    renew_at = datetime.datetime.fromisoformat(st["renew_at"])
    not_after = datetime.datetime.fromisoformat(st["not_after"])
    assert abs((not_after - renew_at).total_seconds() - 30 * 86400) < 3600
    assert [dc.getTime() for dc in m.clock.getDelayedCalls()] == [86400.0]  # re-checked daily until due
    m.acme.stop()

    late = _Manager(tmp_path, datetime.datetime.now(datetime.UTC))
    late.now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=61)
    late.acme.start()
    late.clock.advance(0)
    assert late.calls >= 1 and late.acme.status()["rossi"]["orders"] == 1
    late.acme.stop()


def test_names_changed_by_reload_trigger_a_new_order(tmp_path: Path) -> None:
    """A certificate that does not cover the tenant's (new) names is replaced at once."""
    m = _Manager(tmp_path, datetime.datetime.now(datetime.UTC))
    _write_cert(m, ("old.example.com",), days=90, age_days=1)
    m.acme.start()
    m.clock.advance(0)
    assert m.calls >= 1 and m.acme.status()["rossi"]["orders"] == 1
    m.acme.stop()


# -- the plain-HTTP listener ------------------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    svc = EdgeService(_config(tmp_path / "state"), reactor)
    svc.acme.start = lambda: None  # type: ignore[method-assign]  # no CA here
    svc.privilegedStartService()
    svc.startService()
    yield svc
    pytest_twisted.blockon(svc.stopService())


@pytest_twisted.inlineCallbacks
def test_plain_http_answers_challenges_and_redirects(service: EdgeService) -> Any:
    """HTTP-01 answered for the token's own host only; tenant hosts redirect to HTTPS; others 404."""
    port = service.ports["http"].getHost().port
    https = service.ports["https"].getHost().port
    service.acme._http01["tok123"] = ("rossi.example.com", "tok123.thumb")

    def run() -> list[Any]:
        out = []
        conn = Conn(port, tls=False)
        out.append(conn.request("GET", "/.well-known/acme-challenge/tok123", "rossi.example.com:80"))
        out.append(conn.request("GET", "/.well-known/acme-challenge/tok123", "bianchi.example.com"))
        out.append(conn.request("GET", "/.well-known/acme-challenge/other", "rossi.example.com"))
        out.append(conn.request("GET", "/app?x=1", "bianchi.example.com"))
        out.append(conn.request("POST", "/api", "rossi.example.com", body=b"{}"))
        out.append(conn.request("GET", "/", "evil.example.org"))
        conn.close()
        big = Conn(port, tls=False)
        out.append(big.request("POST", "/", "rossi.example.com", body=b"x" * 10000))
        big.close()
        return out

    ok, wrong_host, unknown, redirect, post, evil, big = yield threads.deferToThread(run)
    assert ok.status == 200 and ok.body == b"tok123.thumb"
    assert wrong_host.status == 404 and unknown.status == 404
    assert redirect.status == 301
    assert redirect.header("location") == f"https://bianchi.example.com:{https}/app?x=1"
    assert post.status == 308
    assert evil.status == 404 and evil.header("location") is None
    assert big.status == 413
