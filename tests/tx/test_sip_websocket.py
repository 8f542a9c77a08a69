"""The SIP WebSocket adapter in virtual time: the WSS400 log budget, the liveness sweep, keepalives, closing,
the hand-off from HTTP."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mcs_edge import config as c
from mcs_edge.tx.sip.websocket import (
    CLOSE_TIMEOUT,
    LOG_PER_SECOND,
    SipWebSocketFactory,
    SipWebSocketProtocol,
    take_over,
)

CFG = c.loads(
    '[listen]\nhttps = "127.0.0.1:8443"\n[[tenants]]\nid = "rossi"\ndomains = ["rossi.example.com"]\n'
    'backend_sip = "udp:10.1.0.10:5060"\n'
)


def test_protocol_error_lines_are_limited_to_ten_a_second() -> None:
    """may_log allows LOG_PER_SECOND lines in one second, none more, and a new budget the next second."""
    clock = Clock()
    clock.advance(1000.2)
    router: Any = None
    factory = SipWebSocketFactory(router, CFG, clock, clock.seconds)
    assert [factory.may_log() for _ in range(LOG_PER_SECOND + 5)] == [True] * LOG_PER_SECOND + [False] * 5
    clock.advance(0.5)
    assert not factory.may_log()
    clock.advance(0.5)
    assert factory.may_log()


class _Router:
    """The router's side of a flow, as the protocol uses it."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.messages: list[bytes] = []
        self.touched = 0
        self.closed: list[str] = []
        self.counters: dict[tuple[str, str, str], int] = {}

    def open_flow(self, tenant: Any, transport: str, peer: Any, send: Any, close: Any) -> Any:
        return None if self.refuse else object()

    def data_from_client(self, flow: Any, data: bytes) -> None:
        self.messages.append(data)

    def touch(self, flow: Any) -> None:
        self.touched += 1

    def close_flow(self, flow: Any, reason: str) -> None:
        self.closed.append(reason)

    def count(self, name: str, tenant: str, reason: str = "") -> None:
        key = (name, tenant, reason)
        self.counters[key] = self.counters.get(key, 0) + 1


def _open(router: _Router) -> tuple[Clock, SipWebSocketFactory, SipWebSocketProtocol, StringTransport]:
    clock = Clock()
    factory = SipWebSocketFactory(router, CFG, clock, clock.seconds)  # type: ignore[arg-type]
    proto = SipWebSocketProtocol(factory, CFG.tenants[0], ("192.0.2.1", 4000))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.start()
    return clock, factory, proto, transport


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    return (
        bytes((0x80 | opcode, 0x80 | len(payload)))
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


def test_silent_connection_is_pinged_then_aborted_by_the_sweep_without_a_timer_of_its_own() -> None:
    """A period with a read: nothing; a silent period: one ping; silent a period after it: aborted, counted, flow closed."""
    router = _Router()
    clock, factory, proto, transport = _open(router)
    aborted: list[bool] = []
    transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    assert not clock.getDelayedCalls()
    factory.sweep()  # opened in this period
    assert transport.value() == b""
    factory.sweep()
    assert transport.value() == b"\x89\x00"  # ping
    proto.dataReceived(_masked(0xA, b""))  # pong
    factory.sweep()
    factory.sweep()
    assert transport.value() == b"\x89\x00" * 2
    assert not aborted
    factory.sweep()
    assert aborted == [True]
    assert router.counters[("ws_ping_timeouts", "rossi", "")] == 1
    proto.connectionLost(Failure(ConnectionDone()))
    assert router.closed == ["ping timeout"] and factory.connections == set()


def test_keepalive_is_answered_without_the_router_and_messages_reach_it() -> None:
    router = _Router()
    _, _, proto, transport = _open(router)
    proto.dataReceived(_masked(0x1, b"\r\n\r\n"))
    assert transport.value() == b"\x81\x02\r\n" and router.touched == 1 and router.messages == []
    proto.dataReceived(_masked(0x1, b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
    assert router.messages == [b"OPTIONS sip:x SIP/2.0\r\n\r\n"]


def test_peer_close_is_echoed_and_a_connection_that_does_not_flush_is_aborted() -> None:
    router = _Router()
    clock, _, proto, transport = _open(router)
    aborted: list[bool] = []
    transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    proto.dataReceived(_masked(0x8, b"\x03\xe8bye"))
    assert transport.value() == b"\x88\x02\x03\xe8" and transport.disconnecting
    assert router.closed == ["bye"]  # the flow ends with the close frame, before TCP closes
    clock.advance(CLOSE_TIMEOUT)
    assert aborted == [True]
    proto.connectionLost(Failure(ConnectionDone()))
    assert router.closed == ["bye"] and not clock.getDelayedCalls()  # once only


def test_a_flow_the_router_closes_is_released_at_once_and_once() -> None:
    router = _Router()
    _, _, proto, transport = _open(router)
    proto._close_flow(1000, "keepalive timeout")
    assert transport.disconnecting and len(router.closed) == 1
    proto.sweep(), proto.sweep(), proto.sweep()  # a closing connection is not aborted twice
    proto.connectionLost(Failure(ConnectionDone()))
    assert len(router.closed) == 1


def test_refused_flow_closes_with_4008() -> None:
    router = _Router(refuse=True)
    _, _, _, transport = _open(router)
    assert transport.value() == b"\x88\x12\x0f\xa8connection limit" and transport.disconnecting


class _Upgrade(Resource):
    """A resource that hands a SIP WebSocket upgrade over as the front does."""

    isLeaf = True

    def __init__(self, factory: SipWebSocketFactory) -> None:
        super().__init__()
        self.factory = factory
        self.requests: list[weakref.ref[Request]] = []

    def render(self, request: Request) -> Any:
        self.requests.append(weakref.ref(request))
        refusal = take_over(request, self.factory, CFG.tenants[0])
        return NOT_DONE_YET if refusal is None else refusal


def test_hand_off_leaves_no_reference_cycle_between_http_channel_and_request() -> None:
    """Once the WebSocket owns the connection, the HTTP channel and its request are freed by
    reference counting alone (no cycle left for the collector: gc is disabled here)."""
    clock = Clock()
    factory = SipWebSocketFactory(_Router(), CFG, clock, clock.seconds)  # type: ignore[arg-type]
    resource = _Upgrade(factory)
    site = Site(resource)
    channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 4000))
    assert channel is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 4000))
    gc.collect()
    gc.disable()
    try:
        channel.makeConnection(transport)
        channel.dataReceived(
            b"GET / HTTP/1.1\r\nHost: rossi.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: sip\r\n\r\n"
        )
        assert b"101 Switching Protocols" in transport.value()
        proto = transport.protocol
        assert isinstance(proto, SipWebSocketProtocol)
        channel_ref = weakref.ref(channel)
        (request_ref,) = resource.requests
        del channel
        assert channel_ref() is None
        assert request_ref() is None
        proto.connectionLost(Failure(ConnectionDone()))
    finally:
        gc.enable()
