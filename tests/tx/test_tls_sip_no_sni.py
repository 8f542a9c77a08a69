"""The SIP/TLS listener's certificates for clients that send no SNI (tls.sip_no_sni_certificate)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.tlsstore import Echo, cert_env, tls_config
from twisted.internet import protocol, threads

from mcs_edge import config as c
from mcs_edge.core.tenants import TenantTable
from mcs_edge.errors import ConfigErrors
from mcs_edge.tx.tls.certificates import CertificateStore
from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory

NAMES = {"rossi": "rossi.example.com", "verdi": "verdi.example.com"}


def _handshake(port: int, sni: str | None, cafile: str) -> str:
    """The first DNS name of the certificate served to a client sending ``sni`` (None: no SNI)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            cert = tls.getpeercert()
            return str(next(v for k, v in cert["subjectAltName"] if k == "DNS"))


def _config(base: Path, extra: str) -> c.EdgeConfig:
    return tls_config(base, NAMES, f'unknown_sni = "reject"\n{extra}')


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    return cert_env(tmp_path, NAMES)


@pytest_twisted.inlineCallbacks
def test_no_sni_gets_the_configured_certificate_on_sip_tls_only(env: dict[str, Any]) -> Any:
    """No SNI on the SIP/TLS listener: the configured tenant's certificate; SNI still picks its tenant;
    the HTTPS listener (the plain store) still refuses a handshake without SNI."""
    from twisted.internet import reactor

    cfg = _config(env["base"], 'sip_no_sni_certificate = "verdi"\n')
    store = CertificateStore(cfg, TenantTable(cfg.tenants))
    store.refresh()
    factory = protocol.Factory.forProtocol(Echo)
    sip = reactor.listenTCP(0, StdlibTLSFactory(store.sip_tls_creator(), factory), interface="127.0.0.1")
    https = reactor.listenTCP(0, StdlibTLSFactory(store, factory), interface="127.0.0.1")
    ca = env["ca"].cert_path
    try:
        san = yield threads.deferToThread(_handshake, sip.getHost().port, None, ca)
        assert san == NAMES["verdi"]
        san = yield threads.deferToThread(_handshake, sip.getHost().port, NAMES["rossi"], ca)
        assert san == NAMES["rossi"]
        with pytest.raises(OSError):
            yield threads.deferToThread(_handshake, https.getHost().port, None, ca)
    finally:
        yield sip.stopListening()
        yield https.stopListening()


@pytest_twisted.inlineCallbacks
def test_without_the_setting_no_sni_is_refused_on_sip_tls(env: dict[str, Any]) -> Any:
    """Unset (the default): a SIP/TLS client without SNI fails the handshake, as before."""
    from twisted.internet import reactor

    cfg = _config(env["base"], "")
    store = CertificateStore(cfg, TenantTable(cfg.tenants))
    store.refresh()
    sip = reactor.listenTCP(
        0,
        StdlibTLSFactory(store.sip_tls_creator(), protocol.Factory.forProtocol(Echo)),
        interface="127.0.0.1",
    )
    try:
        with pytest.raises(OSError):
            yield threads.deferToThread(_handshake, sip.getHost().port, None, env["ca"].cert_path)
    finally:
        yield sip.stopListening()


def test_the_setting_must_name_a_tenant(tmp_path: Path) -> None:
    """tls.sip_no_sni_certificate naming no tenant is refused with its key path."""
    with pytest.raises(ConfigErrors) as err:
        _config(tmp_path, 'sip_no_sni_certificate = "nobody"\n')
    assert "tls.sip_no_sni_certificate" in str(err.value)
