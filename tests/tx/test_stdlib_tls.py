"""The public listeners' TLS layer (tx/tls/stdlib_tls.py), in memory: refusals before any
cryptography, the wrapped protocol's transport (writes, close, producers, hand-over), bad input."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from helpers.tlsmem import Memory, client_context
from helpers.tlsstore import Echo, cert_env, tls_config
from twisted.internet import protocol
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.task import Clock
from twisted.logger import Logger
from zope.interface import implementer

from mcs_edge.core.tenants import TenantTable
from mcs_edge.tx.tls.certificates import CertificateStore, sent_no_sni, tls_binding
from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory, TlsStats, alert_record

NAMES = {"rossi": "rossi.example.com", "verdi": "verdi.example.com"}


@implementer(IHandshakeListener)
class Recorder(protocol.Protocol):
    """A wrapped protocol that records what its transport tells it."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.data = b""

    def connectionMade(self) -> None:
        self.events.append("made")

    def handshakeCompleted(self) -> None:
        t: Any = self.transport
        self.events.append(("handshake", t.negotiatedProtocol, t.server_name, t.sni_sent))

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.events.append("lost")


class Env:
    def __init__(self, tmp: Path, tls: str = "") -> None:
        self.env = cert_env(tmp, NAMES)
        self.cfg = tls_config(tmp, NAMES, tls)
        self.unknown: list[int] = []
        self.store = CertificateStore(
            self.cfg,
            TenantTable(self.cfg.tenants),
            alpn=(b"http/1.1", b"stun.turn"),
            on_unknown_sni=lambda: self.unknown.append(1),
        )
        assert sorted(self.store.refresh()) == sorted(NAMES)
        self.clock = Clock()
        self.stats = TlsStats()
        self.protocols: list[Recorder] = []
        self.events: list[dict[str, Any]] = []

    def factory(self, chooser: Any = None, wrapped: Any = None, timeout: float = 10.0) -> StdlibTLSFactory:
        def build(_addr: Any) -> Recorder:
            p = Recorder()
            self.protocols.append(p)
            return p

        inner = wrapped or protocol.Factory()
        if wrapped is None:
            inner.buildProtocol = build  # type: ignore[method-assign]
        factory = StdlibTLSFactory(
            chooser or self.store,
            inner,
            self.stats,
            listener="https",
            clock=self.clock,
            handshake_timeout=lambda: timeout,
        )
        return factory

    def memory(
        self, sni: str | None = "rossi.example.com", ctx: ssl.SSLContext | None = None, **kw: Any
    ) -> Memory:
        mem = Memory(self.factory(**kw), sni, ctx or client_context(cafile=self.env["ca"].cert_path))
        mem.server.log = Logger(observer=self.events.append)
        return mem


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def _stats(env: Env) -> tuple[int, int, int]:
    return env.stats.ok, env.stats.failed, env.stats.aborted


def test_handshake_connects_the_wrapped_protocol_after_it(env: Env) -> None:
    """The wrapped protocol is connected once the handshake is done, then told handshakeCompleted with
    ALPN and SNI; data flows both ways; the transport is an ISSLTransport."""
    mem = env.memory(ctx=client_context(["stun.turn", "http/1.1"], cafile=env.env["ca"].cert_path))
    assert env.protocols[0].events == []  # nothing before the ClientHello is judged
    assert mem.handshake()
    rec = env.protocols[0]
    assert rec.events == ["made", ("handshake", b"http/1.1", "rossi.example.com", True)]
    assert ISSLTransport.providedBy(mem.server) and mem.server.getHandle() is not None
    assert _stats(env) == (1, 0, 0)
    mem.send(b"REGISTER")
    assert rec.data == b"REGISTER"
    rec.transport.write(b"200 OK")  # type: ignore[union-attr]
    rec.transport.writeSequence([b" a", b" b"])  # type: ignore[union-attr]
    assert mem.receive() == b"200 OK a b"
    binding = tls_binding(mem.server, TenantTable(env.cfg.tenants), env.cfg)
    assert binding[0] is not None and binding[0].id == "rossi" and not sent_no_sni(mem.server)


def test_unknown_name_is_refused_before_any_cryptography(env: Env) -> None:
    """An unknown SNI name gets a plaintext fatal unrecognized_name alert (RFC 6066 s.3) and a close:
    no ServerHello, no wrapped protocol, counted as a failed handshake and by the scanner hook."""
    mem = env.memory("scanner.example.net")
    with pytest.raises(ssl.SSLWantReadError):
        mem.client.do_handshake()  # the ClientHello goes out
    mem.to_server(mem.outgoing.read())
    answer = mem.from_server()
    assert answer == alert_record(112) == b"\x15\x03\x03\x00\x02\x02\x70"
    mem.incoming.write(answer)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        mem.client.do_handshake()
    assert mem.closed and mem.server.getHandle() is None
    assert env.protocols[0].events == []
    assert _stats(env) == (0, 1, 0) and env.unknown == [1]
    assert [e["log_format"].split()[0] for e in env.events] == ["TLS300"]
    mem.server.connectionLost(None)
    assert _stats(env) == (0, 1, 0) and env.protocols[0].events == []  # counted once, never connected


def test_no_sni_is_refused_on_https_but_served_on_sip_tls_when_configured(tmp_path: Path) -> None:
    e = Env(tmp_path, 'unknown_sni = "reject"\nsip_no_sni_certificate = "verdi"\n')
    ctx = client_context(cafile=e.env["ca"].cert_path)
    ctx.check_hostname = False
    https = Memory(e.factory(), None, ctx)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        https.handshake()
    assert https.closed
    sip = Memory(e.factory(chooser=e.store.sip_tls_creator()), None, ctx)
    assert sip.handshake()
    der = sip.client.getpeercert()
    assert der is not None and ("DNS", "verdi.example.com") in der["subjectAltName"]
    assert sent_no_sni(sip.server) and sip.server.server_name is None


def test_ssl_handshake_failure_is_counted_and_closed(tmp_path: Path) -> None:
    """A client that only speaks TLS 1.2 against tls.min_version = 1.3 gets OpenSSL's protocol_version
    alert; counted failed, logged TLS400, closed; the wrapped protocol never connected."""
    e = Env(tmp_path, 'min_version = "1.3"\n')
    ctx = client_context(max_tls=ssl.TLSVersion.TLSv1_2, cafile=e.env["ca"].cert_path)
    mem = e.memory(ctx=ctx)
    with pytest.raises(ssl.SSLError):
        mem.handshake()
    assert mem.closed and _stats(e) == (0, 1, 0) and e.protocols[0].events == []
    assert [ev["log_format"].split()[0] for ev in e.events] == ["TLS400"]


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: rossi.example.com\r\n\r\n",
        b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a ServerHello
        b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00",  # a hello shorter than its random
        b"\x16\x03\x01\x00\x04\x01\x00\x40\x01",  # announces more than 16 KiB
    ],
)
def test_malformed_client_hello_gets_decode_error_and_a_close(env: Env, garbage: bytes) -> None:
    mem = env.memory()
    mem.to_server(garbage)
    assert mem.from_server() == alert_record(50) and mem.closed
    assert _stats(env) == (0, 1, 0) and env.protocols[0].events == []
    mem.to_server(b"more bytes after the refusal")  # ignored, no exception
    assert mem.from_server() == b""


def test_hello_in_tiny_records_is_bounded(env: Env) -> None:
    """A hello announced at 16 KiB sent one byte per record: refused at the ninth record."""
    mem = env.memory()
    message = b"\x01\x00\x40\x00" + bytes(16384)
    sent = 0
    for b in message:
        mem.to_server(b"\x16\x03\x03\x00\x01" + bytes((b,)))
        sent += 1
        if mem.closed:
            break
    assert mem.closed and mem.from_server() == alert_record(50)
    assert sent == 9
    assert _stats(env) == (0, 1, 0)


def test_hello_byte_by_byte(env: Env) -> None:
    """A ClientHello arriving one byte per read is buffered until whole."""
    mem = env.memory()
    with pytest.raises(ssl.SSLWantReadError):
        mem.client.do_handshake()
    for b in mem.outgoing.read():
        assert mem.from_server() == b""
        mem.to_server(bytes((b,)))
    mem.incoming.write(mem.from_server())
    assert mem.handshake()
    assert _stats(env) == (1, 0, 0)


def test_bad_record_after_the_handshake_closes_cleanly(env: Env) -> None:
    """A record that does not decrypt: OpenSSL's alert, a close, TLS400, the wrapped protocol lost."""
    mem = env.memory()
    assert mem.handshake()
    mem.to_server(b"\x17\x03\x03\x00\x20" + bytes(32))
    assert mem.closed
    assert [ev["log_format"].split()[0] for ev in env.events] == ["TLS400"]
    mem.server.connectionLost(None)
    assert env.protocols[0].events[-1] == "lost"
    assert _stats(env) == (1, 0, 0)  # the handshake itself was fine


def test_handshake_timeout_aborts_and_counts(env: Env) -> None:
    mem = env.memory(timeout=5.0)
    mem.to_server(b"\x16\x03\x01")  # a few bytes, then silence
    env.clock.advance(4.9)
    assert not mem.closed
    env.clock.advance(0.2)
    assert mem.wire.disconnecting or mem.closed
    assert _stats(env) == (0, 0, 1)
    mem.server.connectionLost(None)
    assert _stats(env) == (0, 0, 1)
    assert env.clock.getDelayedCalls() == []


def test_timer_cancelled_at_handshake_and_on_early_loss(env: Env) -> None:
    mem = env.memory()
    assert env.clock.getDelayedCalls()
    assert mem.handshake()
    assert env.clock.getDelayedCalls() == []
    lost = env.memory()
    lost.server.connectionLost(None)
    assert env.clock.getDelayedCalls() == [] and _stats(env) == (1, 0, 1)


def test_lose_connection_sends_close_notify_then_lingers_until_the_peer_closes(env: Env) -> None:
    """loseConnection: close_notify at once; what the peer still sends is read and dropped (no reset
    losing the last answer) until its close_notify, which closes the TCP connection."""
    mem = env.memory()
    assert mem.handshake()
    rec = env.protocols[0]
    rec.transport.write(b"413 too large")  # type: ignore[union-attr]
    rec.transport.loseConnection()  # type: ignore[union-attr]
    rec.transport.write(b"dropped after close")  # type: ignore[union-attr]
    assert not mem.closed
    mem.pump()
    assert mem.client.read(100) == b"413 too large"
    assert mem.client.read(100) == b""  # close_notify (the stdlib reads it as end of data)
    mem.send(b"the rest of a large body" * 100)  # still sending: dropped, not delivered
    assert not mem.closed and rec.data == b""
    mem.client.unwrap()  # the client's close_notify (the edge's is already in)
    mem.pump()
    assert mem.closed
    assert env.clock.getDelayedCalls() == []


def test_lingering_ends_after_two_seconds_without_the_peer(env: Env) -> None:
    mem = env.memory()
    assert mem.handshake()
    env.protocols[0].transport.loseConnection()  # type: ignore[union-attr]
    env.clock.advance(1.9)
    assert not mem.closed
    env.clock.advance(0.2)
    assert mem.closed


def test_peer_close_notify_is_answered_and_closes_at_once(env: Env) -> None:
    mem = env.memory()
    assert mem.handshake()
    with pytest.raises(ssl.SSLWantReadError):
        mem.client.unwrap()
    mem.pump()
    assert mem.closed and env.clock.getDelayedCalls() == []
    mem.client.unwrap()  # the edge's close_notify came back


def test_wrapped_protocol_can_be_replaced_after_the_handshake(env: Env) -> None:
    """The hand-over of tx/tls/front.py and the WebSocket upgrade: later reads reach the new protocol."""
    mem = env.memory()
    assert mem.handshake()
    new = Recorder()
    mem.server.wrappedProtocol = new
    new.makeConnection(mem.server)
    mem.send(b"to the new one")
    assert new.data == b"to the new one" and env.protocols[0].data == b""
    mem.server.connectionLost(None)
    assert new.events[-1] == "lost" and "lost" not in env.protocols[0].events


def test_producers_are_registered_below_and_pauses_reach_them(env: Env) -> None:
    """A streaming producer (twisted.web's proxy) is registered on the transport below; its pauses and
    resumes come from there; the wrapped protocol's pause/resume of reading reach the transport below."""

    @implementer(IHandshakeListener)
    class Producer:
        def __init__(self) -> None:
            self.state: list[str] = []

        def pauseProducing(self) -> None:
            self.state.append("pause")

        def resumeProducing(self) -> None:
            self.state.append("resume")

        def stopProducing(self) -> None:
            self.state.append("stop")

    mem = env.memory()
    assert mem.handshake()
    transport: Any = env.protocols[0].transport
    producer = Producer()
    transport.registerProducer(producer, True)
    assert mem.wire.producer is producer and mem.wire.streaming
    mem.wire.producer.pauseProducing()
    mem.wire.producer.resumeProducing()
    assert producer.state == ["pause", "resume"]
    for i in range(3):
        transport.write(b"chunk%d " % i)
    assert mem.receive() == b"chunk0 chunk1 chunk2 "
    transport.pauseProducing()
    assert mem.wire.producerState == "paused"
    transport.resumeProducing()
    assert mem.wire.producerState == "producing"
    transport.unregisterProducer()
    assert mem.wire.producer is None


def test_echo_through_a_real_factory_and_large_writes(env: Env) -> None:
    """A write larger than a record (64 KiB) arrives whole."""
    mem = Memory(
        env.factory(wrapped=protocol.Factory.forProtocol(Echo)), "verdi.example.com", client_context()
    )
    assert mem.handshake()
    payload = bytes(range(256)) * 256
    mem.send(payload)
    got = b""
    for _ in range(10):
        got += mem.receive()
        if len(got) >= len(payload):
            break
    assert got == payload


def test_pem_is_loaded_from_memory_and_the_fallback_leaves_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    """context_from_pem: through a memfd nothing is written; without memfd_create the PEM goes to a
    0600 file of the scratch directory, removed at once; a key of another certificate is refused."""
    from mcs_edge import certs
    from mcs_edge.tx.tls import certificates as tc

    ca = certs.ensure_dev_ca(str(tmp_path / "state"))
    chain, key = certs.issue_leaf(ca, ("rossi.example.com",))
    scratch = tmp_path / "scratch"
    ctx = tc.make_server_context("1.2", (b"http/1.1",))
    tc.context_from_pem(ctx, chain, key, str(scratch))
    assert not scratch.exists()
    modes: list[int] = []
    real_load = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, path: str, *a: Any) -> None:
        modes.append(Path(path).stat().st_mode & 0o777)
        real_load(self, path, *a)

    monkeypatch.delattr(tc.os, "memfd_create")
    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    tc.context_from_pem(tc.make_server_context("1.2", ()), chain, key, str(scratch))
    assert modes == [0o600] and list(scratch.iterdir()) == []
    _other_chain, other_key = certs.issue_leaf(ca, ("verdi.example.com",))
    with pytest.raises(ssl.SSLError):
        tc.context_from_pem(tc.make_server_context("1.2", ()), chain, other_key, str(scratch))
    assert list(scratch.iterdir()) == []


def test_answers_to_the_records_of_one_read_go_out_in_one_write(env: Env) -> None:
    """Three records read at once, each answered by the wrapped protocol: one write below (one system
    call per read instead of one per answer), all three answers in it, in order; a write made outside
    a read still goes out at once."""
    mem = Memory(
        env.factory(wrapped=protocol.Factory.forProtocol(Echo)), "verdi.example.com", client_context()
    )
    assert mem.handshake()
    writes: list[bytes] = []
    below = mem.wire.write

    def counted(data: bytes) -> None:
        writes.append(data)
        below(data)

    mem.wire.write = counted  # type: ignore[method-assign]
    for part in (b"one;", b"two;", b"three;"):
        mem.client.write(part)  # three records
    mem.pump()
    assert len(writes) == 1
    assert mem.receive() == b"one;two;three;"
    mem.server.write(b"later")
    assert len(writes) == 2 and mem.receive() == b"later"


def test_records_of_one_read_reach_the_wrapped_protocol_in_one_call(env: Env) -> None:
    """Three records read at once are handed on as one chunk (one pass of the protocols above per
    read); a close_notify after them still delivers them first, then closes."""
    mem = env.memory()
    assert mem.handshake()
    proto = env.protocols[0]
    calls: list[bytes] = []
    proto.dataReceived = calls.append  # type: ignore[method-assign]
    for part in (b"one;", b"two;", b"three;"):
        mem.client.write(part)
    mem.pump()
    assert calls == [b"one;two;three;"]
    mem.client.write(b"last;")
    try:
        mem.client.unwrap()
    except ssl.SSLWantReadError:
        pass
    mem.pump()
    assert calls[1:] == [b"last;"] and mem.closed
