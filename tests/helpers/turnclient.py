"""A small blocking TURN client (UDP, TCP or TLS) for the adapter tests, built on the STUN codec.

It learns REALM and NONCE from the first 401, signs every later request with the long-term key,
and frames STUN/ChannelData on streams. Run it in a thread (``deferToThread``), never in the
reactor thread.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import struct
import time

from mcs_edge.core.stun import message as m
from mcs_edge.core.stun.channel_data import stream_frame_length
from mcs_edge.core.stun.message import (
    CLASS_ERROR,
    CLASS_INDICATION,
    CLASS_REQUEST,
    METHOD_ALLOCATE,
    METHOD_CHANNEL_BIND,
    METHOD_CREATE_PERMISSION,
    METHOD_REFRESH,
    METHOD_SEND,
    Message,
    long_term_key,
)

Addr = tuple[str, int]


class TurnError(Exception):
    def __init__(self, code: int, msg: Message) -> None:
        super().__init__(f"TURN error {code}")
        self.code = code
        self.msg = msg


def code_of(msg: Message) -> int:
    """The error code of an error response (0 for a success)."""
    if msg.cls != CLASS_ERROR:
        return 0
    err = msg.get(m.ErrorCode)
    return err.code if err is not None else -1


class TurnClient:
    """One TURN client connection to ``server`` over ``kind`` = ``udp``, ``tcp`` or ``tls``."""

    def __init__(
        self,
        kind: str,
        server: Addr,
        username: str,
        password: str,
        *,
        server_hostname: str | None = None,
        cafile: str | None = None,
        alpn: list[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.kind = kind
        self.server = server
        self.username = username
        self.password = password
        self.timeout = timeout
        self.realm: str | None = None
        self.nonce: str | None = None
        self.buf = b""
        self.pending: list[bytes] = []
        if kind == "udp":
            self.sock: socket.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
        else:
            raw = socket.create_connection(server, timeout=timeout)
            if kind == "tls":
                ctx = (
                    ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
                )
                if alpn:
                    ctx.set_alpn_protocols(alpn)
                self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
            else:
                self.sock = raw
        self.sock.settimeout(timeout)

    @property
    def local(self) -> Addr:
        host, port = self.sock.getsockname()[:2]
        return (host, port)

    # -- wire -------------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        if self.kind == "udp":
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def recv_raw(self, timeout: float | None = None) -> bytes:
        """The next datagram or stream frame (raises socket.timeout)."""
        if self.pending:
            return self.pending.pop(0)
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        if self.kind == "udp":
            return self.sock.recv(65536)
        while True:
            length = stream_frame_length(self.buf, 0x7F) if len(self.buf) >= 4 else None
            if length is not None and len(self.buf) >= length:
                frame, self.buf = self.buf[:length], self.buf[length:]
                return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("TURN server closed the connection")
            self.buf += chunk

    def closed_by_server(self, timeout: float = 3.0) -> bool:
        """True if the server closes the stream within ``timeout`` (data before that is skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.sock.settimeout(max(0.05, deadline - time.monotonic()))
                if not self.sock.recv(65536):
                    return True
            except (ConnectionError, ssl.SSLError):
                return True
            except TimeoutError:
                return False
        return False

    # -- requests ---------------------------------------------------------------------------------
    def _build(self, method: int, attrs: tuple[m.Attribute, ...], sign: bool) -> tuple[bytes, bytes]:
        txid = Message.new_transaction_id(secrets.token_bytes)
        all_attrs = list(attrs)
        if sign and self.nonce is not None and self.realm is not None:
            all_attrs += [m.Username(self.username), m.Realm(self.realm), m.Nonce(self.nonce)]
            key = long_term_key(self.username, self.realm, self.password)
            data = Message(method, CLASS_REQUEST, txid, tuple(all_attrs)).serialize(
                integrity_key=key, fingerprint=True
            )
        else:
            data = Message(method, CLASS_REQUEST, txid, tuple(all_attrs)).serialize(fingerprint=True)
        return txid, data

    def _response(self, txid: bytes) -> Message:
        deadline = time.monotonic() + self.timeout
        skipped: list[bytes] = []
        try:
            while True:
                data = self.recv_raw(max(0.05, deadline - time.monotonic()))
                if data and data[0] < 0x40:
                    msg = Message.parse(data)
                    if msg.transaction_id == txid:
                        return msg
                skipped.append(data)
        finally:
            self.pending[:0] = skipped

    def request(self, method: int, attrs: tuple[m.Attribute, ...] = ()) -> Message:
        """A signed request; a 401/438 challenge is answered once with the new realm and nonce."""
        for _ in range(2):
            txid, data = self._build(method, attrs, sign=True)
            self.send_raw(data)
            resp = self._response(txid)
            code = code_of(resp)
            if code in (401, 438) and (self.nonce is None or code == 438):
                realm, nonce = resp.get(m.Realm), resp.get(m.Nonce)
                assert realm is not None and nonce is not None
                self.realm, self.nonce = realm.value, nonce.value
                continue
            return resp
        return resp

    def allocate(self, lifetime: int | None = None) -> Addr:
        attrs: tuple[m.Attribute, ...] = (m.RequestedTransport(17),)
        if lifetime is not None:
            attrs += (m.Lifetime(lifetime),)
        resp = self.request(METHOD_ALLOCATE, attrs)
        if resp.cls == CLASS_ERROR:
            raise TurnError(code_of(resp), resp)
        relay = resp.get(m.XorRelayedAddress)
        assert relay is not None
        return relay.address

    def permit(self, *peers: Addr) -> int:
        return code_of(self.request(METHOD_CREATE_PERMISSION, tuple(m.XorPeerAddress(*p) for p in peers)))

    def bind(self, number: int, peer: Addr) -> int:
        return code_of(self.request(METHOD_CHANNEL_BIND, (m.ChannelNumber(number), m.XorPeerAddress(*peer))))

    def refresh(self, lifetime: int) -> int:
        return code_of(self.request(METHOD_REFRESH, (m.Lifetime(lifetime),)))

    # -- data -------------------------------------------------------------------------------------
    def send_channel(self, number: int, payload: bytes) -> None:
        pad = b"\x00" * (-len(payload) & 3) if self.kind != "udp" else b""
        self.send_raw(struct.pack("!HH", number, len(payload)) + payload + pad)

    def send_indication(self, peer: Addr, payload: bytes) -> None:
        msg = Message(
            METHOD_SEND,
            CLASS_INDICATION,
            Message.new_transaction_id(secrets.token_bytes),
            (m.XorPeerAddress(*peer), m.Data(payload)),
        )
        self.send_raw(msg.serialize())

    def recv_channel(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next ChannelData (skipping STUN)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            data = self.recv_raw(max(0.05, deadline - time.monotonic()))
            if data and 0x40 <= data[0] <= 0x7F:
                number, length = struct.unpack_from("!HH", data)
                return number, data[4 : 4 + length]

    def recv_data_indication(self, timeout: float | None = None) -> tuple[Addr, bytes]:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            data = self.recv_raw(max(0.05, deadline - time.monotonic()))
            if data and data[0] < 0x40:
                msg = Message.parse(data)
                if msg.cls == CLASS_INDICATION:
                    peer, payload = msg.get(m.XorPeerAddress), msg.get(m.Data)
                    assert peer is not None and payload is not None
                    return peer.address, payload.value

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
