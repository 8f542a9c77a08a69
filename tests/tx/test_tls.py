"""TLS by SNI over real loopback handshakes: per-tenant certificates, policy, reload without drops."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.tlsstore import Echo, cert_env, tls_config, write_pair
from twisted.internet import protocol, threads

from mcs_edge import certs
from mcs_edge import config as c
from mcs_edge.core.tenants import TenantTable
from mcs_edge.tx.tls.certificates import CertificateStore
from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory

NAMES = {"rossi": "rossi.example.com", "bianchi": "bianchi.example.com", "verdi": "verdi.example.com"}


def _config(base: Path, unknown_sni: str = "reject", min_version: str = "1.2") -> c.EdgeConfig:
    text = f'unknown_sni = "{unknown_sni}"\nmin_version = "{min_version}"\n'
    if unknown_sni == "default":
        text += 'default_tenant = "bianchi"\n'
    return tls_config(base, NAMES, text)


def _serving(env: dict[str, Any], unknown_sni: str = "reject") -> tuple[CertificateStore, Any]:
    """A store for the config, loaded, and a TLS echo port serving it."""
    cfg = _config(env["base"], unknown_sni)
    store = CertificateStore(cfg, TenantTable(cfg.tenants))
    store.refresh()
    return store, _serve(store)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    return cert_env(tmp_path, NAMES)


def _serve(store: CertificateStore) -> Any:
    from twisted.internet import reactor

    factory = protocol.Factory.forProtocol(Echo)
    return reactor.listenTCP(0, StdlibTLSFactory(store, factory), interface="127.0.0.1")


def _client_ctx(cafile: str, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def _handshake(port: int, sni: str | None, cafile: str, **kw: Any) -> tuple[str, str]:
    """(first SAN, TLS version) of a fresh handshake."""
    ctx = _client_ctx(cafile, **kw)
    if sni is None:
        ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            cert = tls.getpeercert()
            san = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
            return san[0], str(tls.version())


def _serial(port: int, sni: str) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


@pytest_twisted.inlineCallbacks
def test_each_tenant_gets_its_own_certificate(env: dict[str, Any]) -> Any:
    """Three tenants on one port: each SNI name gets that tenant's certificate, TLS >= 1.2."""
    cfg = _config(env["base"])
    store = CertificateStore(cfg, TenantTable(cfg.tenants))
    assert sorted(store.refresh()) == sorted(NAMES)
    port = _serve(store)
    try:
        for name in NAMES.values():
            san, version = yield threads.deferToThread(
                _handshake, port.getHost().port, name, env["ca"].cert_path
            )
            assert san == name
            assert version in ("TLSv1.2", "TLSv1.3")
        san, version = yield threads.deferToThread(
            _handshake,
            port.getHost().port,
            NAMES["verdi"],
            env["ca"].cert_path,
            max_version=ssl.TLSVersion.TLSv1_2,
        )
        assert (san, version) == (NAMES["verdi"], "TLSv1.2")
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_unknown_sni_is_rejected_by_default(env: dict[str, Any]) -> Any:
    """With unknown_sni = "reject", an unknown name or no name gets an unrecognized_name alert (RFC 6066
    s.3) in answer to its ClientHello, before any key exchange."""
    _store, port = _serving(env)
    try:
        for sni in ("evil.example.net", None):
            with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
                yield threads.deferToThread(_handshake, port.getHost().port, sni, env["ca"].cert_path)
    finally:
        yield port.stopListening()


def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(data)
        out = b""
        while True:
            chunk = raw.recv(4096)
            if not chunk:
                return out
            out += chunk


@pytest_twisted.inlineCallbacks
def test_garbage_on_the_tls_port_gets_an_alert_and_a_clean_close(env: dict[str, Any]) -> Any:
    """Plain HTTP, or a ClientHello announcing more than 16 KiB, on a TLS port: a decode_error alert and a
    close from the server (no exception in the reactor; the port keeps serving)."""
    _store, port = _serving(env)
    p = port.getHost().port
    try:
        for data in (
            b"GET / HTTP/1.1\r\nHost: rossi.example.com\r\n\r\n",
            b"\x16\x03\x01\x00\x04\x01\x01\x00\x00",
        ):
            answer = yield threads.deferToThread(_raw_exchange, p, data)
            assert answer == b"\x15\x03\x03\x00\x02\x02\x32"  # fatal decode_error
        san, _version = yield threads.deferToThread(_handshake, p, NAMES["rossi"], env["ca"].cert_path)
        assert san == NAMES["rossi"]
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_unknown_sni_gets_default_tenant_when_configured(env: dict[str, Any]) -> Any:
    """With unknown_sni = "default", an unknown name or no name gets the default tenant's certificate."""
    _store, port = _serving(env, unknown_sni="default")
    try:
        for sni in (None, "unknown.example.net"):
            ctx_sni = sni
            san, _ = yield threads.deferToThread(
                _handshake_no_verify_name, port.getHost().port, ctx_sni, env["ca"].cert_path
            )
            assert san == NAMES["bianchi"]
    finally:
        yield port.stopListening()


def _handshake_no_verify_name(port: int, sni: str | None, cafile: str) -> tuple[str, str]:
    ctx = _client_ctx(cafile)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            cert = tls.getpeercert()
            return next(v for k, v in cert["subjectAltName"] if k == "DNS"), str(tls.version())


def _open_and_echo(port: int, sni: str, cafile: str) -> tuple[ssl.SSLSocket, int]:
    ctx = _client_ctx(cafile)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = ctx.wrap_socket(raw, server_hostname=sni)
    tls.sendall(b"before")
    assert tls.recv(100) == b"before"
    from cryptography import x509

    return tls, x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def _echo(tls: ssl.SSLSocket, data: bytes) -> bytes:
    tls.sendall(data)
    return tls.recv(100)


@pytest_twisted.inlineCallbacks
def test_replaced_certificate_is_picked_up_and_open_connection_survives(env: dict[str, Any]) -> Any:
    """New files serve new handshakes after refresh; an open connection keeps working."""
    store, port = _serving(env)
    p = port.getHost().port
    try:
        tls, old_serial = yield threads.deferToThread(_open_and_echo, p, NAMES["rossi"], env["ca"].cert_path)
        write_pair(env["ca"], env["base"] / "certs" / "rossi", (NAMES["rossi"], "www.rossi.example.com"))
        assert store.refresh() == ["rossi"]
        new_serial = yield threads.deferToThread(_serial, p, NAMES["rossi"])
        assert new_serial != old_serial
        assert (yield threads.deferToThread(_echo, tls, b"after")) == b"after"
        tls.close()
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_broken_replacement_keeps_the_old_certificate(env: dict[str, Any]) -> Any:
    """A replacement that fails to load is reported with its path; the old certificate keeps serving."""
    store, port = _serving(env)
    p = port.getHost().port
    try:
        before = yield threads.deferToThread(_serial, p, NAMES["verdi"])
        chain = env["base"] / "certs" / "verdi" / "fullchain.pem"
        chain.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        assert store.refresh() == []
        assert str(chain) in store.errors["verdi"]
        after = yield threads.deferToThread(_serial, p, NAMES["verdi"])
        assert after == before
        # a key that does not match the certificate is refused too
        ca = env["ca"]
        good_chain, _ = certs.issue_leaf(ca, (NAMES["verdi"],))
        chain.write_bytes(good_chain)
        assert store.refresh() == []
        assert "verdi" in store.errors
        assert (yield threads.deferToThread(_serial, p, NAMES["verdi"])) == before
    finally:
        yield port.stopListening()


@pytest.mark.requires_tool("openssl")
@pytest_twisted.inlineCallbacks
def test_tls_1_1_is_refused_by_the_server(env: dict[str, Any]) -> Any:
    """A TLS 1.1 ClientHello gets a protocol_version alert from the edge."""
    _store, port = _serving(env)
    try:
        cmd = [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port.getHost().port}",
            "-servername",
            NAMES["rossi"],
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ]
        out = yield threads.deferToThread(
            subprocess.run, cmd, input=b"", capture_output=True, timeout=10, check=False
        )
        text = (out.stdout + out.stderr).decode(errors="replace")
        assert "alert protocol version" in text, text
    finally:
        yield port.stopListening()
