"""In-memory TLS handshakes against the edge's TLS layer (tx/tls/stdlib_tls.py), no socket.

``Memory(factory)`` builds one server connection of a ``StdlibTLSFactory`` over a
``StringTransport`` and a standard-library client on memory BIOs; ``handshake()`` pumps both until
the client is done or the server closed. Used by the adapter tests (tests/tx/test_stdlib_tls.py,
test_acme.py, test_guard.py).
"""

from __future__ import annotations

import ssl
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport


def client_context(
    alpn: list[str] | None = None, max_tls: ssl.TLSVersion | None = None, cafile: str | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
    if max_tls is not None:
        ctx.maximum_version = max_tls
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class Memory:
    """One edge-side TLS connection and one client, wired through memory."""

    def __init__(
        self,
        factory: Any,
        sni: str | None = "rossi.example.com",
        ctx: ssl.SSLContext | None = None,
        peer: str = "192.0.2.7",
    ) -> None:
        self.wire = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 443), peerAddress=IPv4Address("TCP", peer, 40000)
        )
        self.server = factory.buildProtocol(self.wire.getPeer())
        self.server.makeConnection(self.wire)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = (ctx or client_context()).wrap_bio(self.incoming, self.outgoing, server_hostname=sni)

    @property
    def closed(self) -> bool:
        return bool(self.wire.disconnecting or self.wire.disconnected)

    def to_server(self, data: bytes) -> None:
        self.server.dataReceived(data)

    def from_server(self) -> bytes:
        data = self.wire.value()
        self.wire.clear()
        return data

    def pump(self) -> None:
        data = self.outgoing.read()
        if data:
            self.to_server(data)
        back = self.from_server()
        if back:
            self.incoming.write(back)

    def handshake(self) -> bool:
        """True when the client finished its handshake; False when the server refused or closed."""
        for _ in range(20):
            try:
                self.client.do_handshake()
                self.pump()  # the client's Finished
                return True
            except ssl.SSLWantReadError:
                pass
            if self.closed and not self.outgoing.pending and not self.wire.value():
                return False
            self.pump()
        raise AssertionError("handshake did not finish in 20 rounds")

    def send(self, data: bytes) -> None:
        self.client.write(data)
        self.pump()

    def receive(self) -> bytes:
        self.pump()
        out = b""
        while True:
            try:
                chunk = self.client.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return out
            if not chunk:
                return out
            out += chunk
