"""WebSocket/datagram parsing and the TCP/TLS stream framer (keepalives, caps, chunking)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcs_edge.core.sip.framing import (
    PONG,
    KeepalivePing,
    KeepalivePong,
    MessageBytes,
    StreamFramer,
    parse_datagram,
    parse_websocket_message,
)
from mcs_edge.core.sip.message import Limits, Request, parse
from mcs_edge.errors import RemoteProtocolError

MSG = (
    b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP h.example.com;branch=z9hG4bK1\r\n"
    b"From: <sip:a@example.com>;tag=1\r\n"
    b"To: <sip:b@example.com>\r\n"
    b"Call-ID: x@y\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Max-Forwards: 70\r\n"
    b"l: 5\r\n\r\n"
    b"hello"
)
MSG2 = MSG.replace(b"l: 5", b"Content-Length  :\r\n 0").replace(b"hello", b"")


def test_websocket_message_text_and_binary() -> None:
    """A WebSocket text or binary message is one SIP message; Content-Length is optional."""
    no_cl = MSG.replace(b"l: 5\r\n", b"")
    msg = parse_websocket_message(no_cl.decode())
    assert isinstance(msg, Request) and msg.body == b"hello"
    assert parse_websocket_message(MSG).body == b"hello"
    with pytest.raises(RemoteProtocolError) as info:
        parse_websocket_message(MSG.replace(b"l: 5", b"l: 6"))
    assert info.value.status_hint == 400


def test_datagram_keepalive() -> None:
    """A datagram of CRLFs is a keepalive; anything else is parsed."""
    assert parse_datagram(b"\r\n\r\n") is None
    assert parse_datagram(b"\r\n") is None
    msg = parse_datagram(MSG)
    assert msg is not None and msg.body == b"hello"


def test_stream_messages_and_keepalives() -> None:
    """The framer cuts messages at Content-Length and reports pings and pongs."""
    framer = StreamFramer()
    events = framer.feed(b"\r\n\r\n" + MSG + MSG2 + b"\r\n" + MSG)
    assert events == [
        KeepalivePing(),
        MessageBytes(MSG),
        MessageBytes(MSG2),
        KeepalivePong(),
        MessageBytes(MSG),
    ]
    assert framer.buffered == 0
    assert parse(MSG2, content_length_required=True).body == b""
    assert PONG == b"\r\n"


def test_lone_crlf_waits_unless_pongs_are_expected() -> None:
    """A trailing CRLF may be half a ping: it waits, unless this side sends the pings."""
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r\n") == [KeepalivePing()]
    client = StreamFramer(expect_pongs=True)
    assert client.feed(b"\r\n") == [KeepalivePong()]


def test_stream_errors() -> None:
    """Missing or bad Content-Length, stray bytes and oversize input raise RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError):
        StreamFramer().feed(MSG.replace(b"l: 5\r\n", b""))
    with pytest.raises(RemoteProtocolError):
        StreamFramer().feed(MSG.replace(b"l: 5", b"l: -5"))
    with pytest.raises(RemoteProtocolError):
        StreamFramer().feed(MSG.replace(b"l: 5", b"l: 5\r\nContent-Length: 6"))
    with pytest.raises(RemoteProtocolError) as info:
        StreamFramer().feed(MSG.replace(b"l: 5", b"l: 99999999"))
    assert info.value.status_hint == 413
    with pytest.raises(RemoteProtocolError):
        StreamFramer().feed(b"\nOPTIONS")
    small = StreamFramer(Limits(max_message_size=100))
    with pytest.raises(RemoteProtocolError) as info:
        small.feed(b"X" * 101)
    assert info.value.status_hint == 513
    with pytest.raises(RemoteProtocolError):
        StreamFramer(Limits(max_message_size=200)).feed(MSG.replace(b"l: 5", b"l: 150"))


def test_incomplete_input_is_kept() -> None:
    """A partial message is buffered until its body is complete."""
    framer = StreamFramer()
    assert framer.feed(MSG[:-2]) == []
    assert framer.buffered == len(MSG) - 2
    assert framer.feed(MSG[-2:]) == [MessageBytes(MSG)]


STREAM = b"\r\n\r\n" + MSG + b"\r\n" + MSG2 + b"\r\n\r\n" + MSG


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_chunking_invariance(cuts: list[int]) -> None:
    """Any split of a byte stream into chunks yields the same events as feeding it whole."""
    whole = StreamFramer().feed(STREAM)
    framer = StreamFramer()
    events = []
    points = [0, *sorted(cuts), len(STREAM)]
    for a, b in itertools.pairwise(points):
        events += framer.feed(STREAM[a:b])
    assert events == whole
    assert len([e for e in whole if isinstance(e, MessageBytes)]) == 3


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=5))
def test_framer_garbage_raises_only_remote_protocol_error(data: bytes, cuts: list[int]) -> None:
    """Random bytes fed in random chunks never raise anything but RemoteProtocolError."""
    framer = StreamFramer(Limits(max_message_size=200))
    points = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    try:
        for a, b in itertools.pairwise(points):
            for event in framer.feed(data[a:b]):
                if isinstance(event, MessageBytes):
                    parse(event.data, content_length_required=True)
    except RemoteProtocolError:
        pass
