"""Tenant PBXs over TCP and TLS: sipp as the PBX, a WebSocket softphone as the client.

For ``tls:`` sipp (built here without TLS) sits behind a TLS front in the test (Twisted's
``portforward`` under ``listenSSL``) with its own certificate from a test CA: the edge verifies it
against ``backend_tls.ca`` and ``server_name``. Each phase runs a new sipp process on the same port,
so between phases the PBX restarts and the edge must reconnect by itself.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import InProcessEdge, edge_toml, free_tcp_port, tenant_toml, until
from helpers.phone import answer_incoming
from helpers.sipp import SIPP_DIR, Sipp
from helpers.wsclient import WSClient, header, headers, status
from twisted.internet import threads
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.protocols.portforward import ProxyFactory

from mcs_edge.certs import ensure_dev_ca, issue_leaf

pytestmark = pytest.mark.requires_tool("sipp")


def _client_leaf(ca: Any, tmp: Path) -> tuple[Path, Path]:
    """A TLS client certificate (EKU clientAuth) for the edge, signed by the PBX's CA."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge.example.net")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    chain_path, key_path = tmp / "edge-client.pem", tmp / "edge-client.key"
    chain_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return chain_path, key_path


class StreamEdge(InProcessEdge):
    """The edge with tenant rossi on ``transport`` toward sipp (through a TLS front for tls)."""

    ORIGIN = True

    def __init__(
        self, tmp: Path, transport: str, server_name: str = "pbx.example.net", client_cert: bool = False
    ) -> None:
        from twisted.internet import reactor

        super().__init__(tmp)
        self.transport = transport
        self.sipp_port = free_tcp_port()
        self.front: Any = None
        target = self.sipp_port
        tls = ""
        if transport == "tls":
            ca = ensure_dev_ca(str(tmp / "pbx-ca"))
            chain, key = issue_leaf(ca, ("pbx.example.net", "127.0.0.1"))
            cert = PrivateCertificate.loadPEM(chain + b"\n" + key)
            # with client_cert the PBX requires a certificate from its CA (cert.options(ca) verifies peers)
            options = (
                cert.options(Certificate.loadPEM(Path(ca.cert_path).read_bytes()))
                if client_cert
                else cert.options()
            )
            self.front = reactor.listenSSL(
                0, ProxyFactory("127.0.0.1", self.sipp_port), options, interface="127.0.0.1"
            )
            target = self.front.getHost().port
            tls = f'[tenants.backend_tls]\nca = "{ca.cert_path}"\nserver_name = "{server_name}"\n'
            if client_cert:
                chain_path, key_path = _client_leaf(ca, tmp)
                tls += f'cert_file = "{chain_path}"\nkey_file = "{key_path}"\n'
        if self.front is not None:
            self.closers.append(self.front.stopListening)
        tenant = tenant_toml("rossi", backend=f"{transport}:127.0.0.1:{target}", origin=True, tail=tls)
        self.start(edge_toml(self.state, tenant, sip="t1 = 0.5\nbackend_connect_timeout = 3\n"))

    def sipp(self, template: str) -> Sipp:
        """sipp as the PBX (server mode, TCP) running ``template`` with the edge's transport filled in."""
        text = (SIPP_DIR / template).read_text()
        text = text.replace("@TP@", self.transport.upper()).replace("@tp@", self.transport)
        scenario = self.tmp / f"{uuid.uuid4().hex[:6]}-{template}"
        scenario.write_text(text)
        proc = Sipp(self.tmp, scenario, self.sipp_port, transport="t1", timeout=30)
        proc.wait_listening(tcp=True)
        return proc

    def link_state(self) -> str:
        states = [s.state for s in self.service.backends.status() if s.tenant == "rossi"]
        return states[0] if states else "none"

    def connects(self) -> int:
        return sum(
            n for (name, *_), n in self.service.backends.counters.items() if name == "backend_connects"
        )


def _register(ws: WSClient) -> str:
    contact = f'<sip:alice@{uuid.uuid4().hex[:8]}.invalid;transport=ws>;+sip.ice;reg-id=1;+sip.instance="<urn:uuid:{uuid.uuid4()}>"'
    ws.send(
        f"REGISTER sip:rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:alice@rossi.example.com>\r\nFrom: <sip:alice@rossi.example.com>;tag=r1\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 REGISTER\r\nContact: {contact};expires=600\r\n"
        "Supported: path, gruu, outbound\r\nContent-Length: 0\r\n\r\n"
    )
    return ws.recv_sip(timeout=10, skip_provisional=True)


def _invite(ws: WSClient, call_id: str, branch: str) -> None:
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
    ws.send(
        f"INVITE sip:200@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch={branch}\r\nMax-Forwards: 70\r\n"
        f"To: <sip:200@rossi.example.com>\r\nFrom: <sip:alice@rossi.example.com>;tag=c1\r\nCall-ID: {call_id}\r\n"
        f"CSeq: 1 INVITE\r\nContact: <sip:alice@x.invalid;transport=ws;ob>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    )


def _outgoing_call(ws: WSClient) -> list[int]:
    call_id, branch = uuid.uuid4().hex, "z9hG4bK" + uuid.uuid4().hex[:12]
    _invite(ws, call_id, branch)
    seen = []
    while True:
        msg = ws.recv_sip(timeout=10)
        seen.append(status(msg))
        if status(msg) >= 200:
            break
    if seen[-1] >= 300:
        return seen
    common = (
        f"From: <sip:alice@rossi.example.com>;tag=c1\r\nCall-ID: {call_id}\r\nTo: {header(msg, 'To')}\r\n"
    )
    routes = [r.strip() for line in headers(msg, "Record-Route") for r in line.split(",")]
    route = ", ".join(reversed(routes))
    target = (header(msg, "Contact") or "").strip("<>").split(">")[0]
    for cseq, method in ((1, "ACK"), (2, "BYE")):
        ws.send(
            f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
            f"Max-Forwards: 70\r\nRoute: {route}\r\n{common}CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    seen.append(status(ws.recv_sip(timeout=10)))
    return seen


def _cancel_call(ws: WSClient) -> list[int]:
    call_id, branch = uuid.uuid4().hex, "z9hG4bK" + uuid.uuid4().hex[:12]
    _invite(ws, call_id, branch)
    seen = []
    while not seen or seen[-1] != 180:
        seen.append(status(ws.recv_sip(timeout=10)))
    ws.send(
        f"CANCEL sip:200@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch={branch}\r\nMax-Forwards: 70\r\n"
        f"To: <sip:200@rossi.example.com>\r\nFrom: <sip:alice@rossi.example.com>;tag=c1\r\nCall-ID: {call_id}\r\n"
        "CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    )
    for _ in range(2):
        seen.append(status(ws.recv_sip(timeout=10)))
    ws.send(
        f"ACK sip:200@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch={branch}\r\nMax-Forwards: 70\r\n"
        f"To: <sip:200@rossi.example.com>\r\nFrom: <sip:alice@rossi.example.com>;tag=c1\r\nCall-ID: {call_id}\r\n"
        "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    return seen


@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest_twisted.inlineCallbacks
def test_pbx_over_stream_register_calls_cancel_and_restart(tmp_path: Path, transport: str) -> Any:
    """Over tcp:/tls: the PBX registers the client and calls it on the edge's connection; the client calls
    and cancels; the PBX restarts between phases and the edge reconnects each time by itself."""
    edge = StreamEdge(tmp_path, transport)
    try:
        ws = yield threads.deferToThread(edge.client)
        # 1. REGISTER, then the PBX calls the client over the same connection (INVITE/ACK/BYE)
        pbx = yield threads.deferToThread(edge.sipp, "stream_register_call.xml")
        ok = yield threads.deferToThread(_register, ws)
        assert status(ok) == 200, ok
        assert f";transport={transport};lr;ob" in (header(ok, "Path") or "")
        inv = yield threads.deferToThread(answer_incoming, ws)
        assert f"transport={transport};lr;r2=on" in inv  # our PBX-side Record-Route names the transport
        assert (yield threads.deferToThread(pbx.result)) == 0
        # 2. the PBX process is gone: the edge notices and reconnects to the new one
        pbx = yield threads.deferToThread(edge.sipp, "stream_answer.xml")
        yield until(lambda: edge.connects() >= 2 and edge.link_state() == "open")
        seen = yield threads.deferToThread(_outgoing_call, ws)
        assert seen[0] == 100 and 180 in seen and seen[-2:] == [200, 200], seen
        assert (yield threads.deferToThread(pbx.result)) == 0
        # 3. restarted again: CANCEL while ringing
        pbx = yield threads.deferToThread(edge.sipp, "pbx_cancel.xml")
        yield until(lambda: edge.connects() >= 3 and edge.link_state() == "open")
        seen = yield threads.deferToThread(_cancel_call, ws)
        assert 180 in seen and sorted(seen[-2:]) == [200, 487], seen
        assert (yield threads.deferToThread(pbx.result)) == 0
        ws.close()
    finally:
        yield edge.stop()


@pytest_twisted.inlineCallbacks
def test_tls_pbx_with_wrong_name_is_refused_at_once(tmp_path: Path) -> Any:
    """A PBX certificate that does not carry backend_tls.server_name: no connection, the call gets 503 at once."""
    edge = StreamEdge(tmp_path, "tls", server_name="other.example.net")
    try:
        pbx = yield threads.deferToThread(edge.sipp, "stream_answer.xml")
        ws = yield threads.deferToThread(edge.client)
        started = time.monotonic()
        seen = yield threads.deferToThread(_outgoing_call, ws)
        assert seen[-1] == 503 and time.monotonic() - started < 5, seen
        assert edge.connects() == 0
        failures = [k for k in edge.service.backends.counters if k[0] == "backend_connect_failures"]
        assert failures
        pbx.kill()
        ws.close()
    finally:
        yield edge.stop()


@pytest_twisted.inlineCallbacks
def test_tcp_pbx_down_gives_503_at_once(tmp_path: Path) -> Any:
    """Nothing listens at the PBX's TCP address: the client's INVITE gets 503 within seconds, not at Timer B."""
    edge = StreamEdge(tmp_path, "tcp")
    try:
        ws = yield threads.deferToThread(edge.client)
        started = time.monotonic()
        seen = yield threads.deferToThread(_outgoing_call, ws)
        assert seen[-1] == 503 and time.monotonic() - started < 5, seen
        assert edge.link_state() == "backoff"
        ws.close()
    finally:
        yield edge.stop()


@pytest.mark.parametrize("present", [True, False])
@pytest_twisted.inlineCallbacks
def test_tls_client_certificate_is_presented_when_configured(tmp_path: Path, present: bool) -> Any:
    """A PBX that requires a client certificate: with backend_tls.cert_file/key_file the call goes through;
    without them the handshake fails and the call gets 503 at once."""
    edge = StreamEdge(tmp_path, "tls", client_cert=True)
    if not present:
        import dataclasses

        cfg = edge.service.config
        tenant = cfg.tenants[0]
        bare = dataclasses.replace(tenant.backend_tls, cert_file=None, key_file=None)
        edge.service.reload(
            dataclasses.replace(cfg, tenants=(dataclasses.replace(tenant, backend_tls=bare),))
        )
    try:
        pbx = yield threads.deferToThread(edge.sipp, "stream_answer.xml")
        ws = yield threads.deferToThread(edge.client)
        seen = yield threads.deferToThread(_outgoing_call, ws)
        if present:
            assert seen[-2:] == [200, 200] and edge.connects() == 1, seen
            assert (yield threads.deferToThread(pbx.result)) == 0
        else:
            # TLS 1.3: the client's handshake ends before the PBX checks its certificate, so the PBX's
            # refusal arrives as the connection closing: the request gets 503 at once, the link backs off
            assert seen[-1] == 503 and edge.link_state() == "backoff", seen
            pbx.kill()
        ws.close()
    finally:
        yield edge.stop()
