"""The sans-IO RFC 6455 codec: handshake key, frames in any split, fragmentation, UTF-8, limits, close codes."""

from __future__ import annotations

import os
import struct

import pytest

from mcs_edge.core.websocket.rfc6455 import (
    CLOSE,
    CRLF_PONG,
    FAIL,
    MESSAGE,
    PING,
    PONG,
    Decoder,
    accept_key,
    close_frame,
    connection_upgrade,
    frame,
    opening_answer,
)

MAX = 4096


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_accept_key_is_the_rfc_example_and_bad_keys_are_refused() -> None:
    """RFC 6455 s.1.3's worked example; a key that is not base64 of 16 octets gives None."""
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert accept_key(b"c2hvcnQ=") is None
    assert accept_key(b"not base64!!") is None
    answer = opening_answer(b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", b"sip", b"x")
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and answer.endswith(b"\r\n\r\n")
    assert b"Sec-WebSocket-Protocol: sip\r\n" in answer and b"Extensions" not in answer


def test_connection_header_needs_the_upgrade_token() -> None:
    assert connection_upgrade([b"keep-alive, Upgrade"])
    assert not connection_upgrade([b"keep-alive"])
    assert not connection_upgrade([])


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536])
def test_a_message_of_any_length_class_comes_out_whole_from_any_split(size: int) -> None:
    """7-, 16- and 64-bit lengths; fed whole, byte by byte at the start, and in two pieces anywhere."""
    payload = bytes(range(97, 123)) * (size // 26 + 1)
    payload = payload[:size]
    data = client_frame(0x1, payload)
    assert Decoder(1 << 20).feed(data) == [(MESSAGE, payload, 0, "")]
    for cut in {1, 2, 3, 5, 9, len(data) // 2, len(data) - 1}:
        if 0 < cut < len(data):
            d = Decoder(1 << 20)
            assert d.feed(data[:cut]) == []
            assert d.feed(data[cut:]) == [(MESSAGE, payload, 0, "")]
            assert d.idle


def test_several_frames_in_one_read_and_control_frames_between_fragments() -> None:
    data = (
        client_frame(0x1, b"one")
        + client_frame(0x1, b"tw", fin=False)
        + client_frame(0x9, b"hi")
        + client_frame(0x0, b"o")
        + client_frame(0xA, b"")
        + client_frame(0x2, b"\xff\x00")
    )
    assert Decoder(MAX).feed(data) == [
        (MESSAGE, b"one", 0, ""),
        (PING, b"hi", 0, ""),
        (MESSAGE, b"two", 0, ""),
        (PONG, b"", 0, ""),
        (MESSAGE, b"\xff\x00", 0, ""),  # binary: not UTF-8-checked
    ]


def test_utf8_split_between_fragments_is_valid_and_broken_one_fails_in_its_fragment() -> None:
    msg = "Jos\u00e9".encode()
    d = Decoder(MAX)
    assert d.feed(client_frame(0x1, msg[:4], fin=False)) == []
    assert d.feed(client_frame(0x0, msg[4:])) == [(MESSAGE, msg, 0, "")]
    d = Decoder(MAX)
    assert d.feed(client_frame(0x1, msg[:4], fin=False)) == []
    out = d.feed(client_frame(0x0, b"(", fin=False))
    assert out[0][0] == FAIL and out[0][2] == 1007
    d = Decoder(MAX)  # an incomplete sequence at the end of the message
    assert d.feed(client_frame(0x1, msg[:4], fin=False)) == []
    assert d.feed(client_frame(0x0, b""))[0][:3] == (FAIL, b"", 1007)
    assert Decoder(MAX).feed(client_frame(0x1, b"Jos\xc3\x28"))[0][2] == 1007


VIOLATIONS = {
    "unmasked": (client_frame(0x1, b"x", masked=False), 1002),
    "rsv1": (client_frame(0x1, b"x", rsv=4), 1002),
    "rsv3": (client_frame(0x1, b"x", rsv=1), 1002),
    "opcode-3": (client_frame(0x3, b"x"), 1002),
    "opcode-11": (client_frame(0xB, b"x"), 1002),
    "ping-126": (client_frame(0x9, b"p" * 126), 1002),
    "ping-fragmented": (client_frame(0x9, b"p", fin=False), 1002),
    "continuation-first": (client_frame(0x0, b"x"), 1002),
    "text-inside-fragmented": (client_frame(0x1, b"a", fin=False) + client_frame(0x1, b"b"), 1002),
    "close-1-byte": (client_frame(0x8, b"\x03"), 1002),
    "close-999": (client_frame(0x8, struct.pack("!H", 999)), 1002),
    "close-1005": (client_frame(0x8, struct.pack("!H", 1005)), 1002),
    "close-1015": (client_frame(0x8, struct.pack("!H", 1015)), 1002),
    "close-5000": (client_frame(0x8, struct.pack("!H", 5000)), 1002),
    "close-reason-not-utf8": (client_frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),
    "too-big": (client_frame(0x1, b"a" * (MAX + 1)), 1009),
    "too-big-fragmented": (
        b"".join(client_frame(0x1 if i == 0 else 0x0, b"a" * (MAX // 2), fin=False) for i in range(3)),
        1009,
    ),
    "64-bit-top-bit": (b"\x81\xff" + b"\x80" + b"\x00" * 7 + b"mask", 1002),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_violations_fail_with_their_code_and_the_decoder_then_reads_nothing(name: str) -> None:
    data, code = VIOLATIONS[name]
    d = Decoder(MAX)
    out = d.feed(data)
    assert out[-1][0] == FAIL and out[-1][2] == code, out
    assert d.finished and not d.idle
    assert d.feed(client_frame(0x1, b"after")) == []


def test_oversize_fails_on_the_header_before_the_payload_is_buffered() -> None:
    """1009 as soon as the 16-bit length is read: a peer cannot make the edge buffer it."""
    head = client_frame(0x1, b"a" * (MAX + 1))[:8]
    assert Decoder(MAX).feed(head)[0][2] == 1009


def test_close_frames() -> None:
    d = Decoder(MAX)
    assert d.feed(client_frame(0x8, struct.pack("!H", 1000) + b"bye") + client_frame(0x1, b"x")) == [
        (CLOSE, b"", 1000, "bye")
    ]
    assert Decoder(MAX).feed(client_frame(0x8, b"")) == [(CLOSE, b"", 1005, "")]
    assert Decoder(MAX).feed(client_frame(0x8, struct.pack("!H", 4321))) == [(CLOSE, b"", 4321, "")]


def test_keepalive_reply_only_for_one_whole_keepalive_between_frames() -> None:
    d = Decoder(MAX)
    assert d.keepalive_reply(client_frame(0x1, b"\r\n\r\n")) == CRLF_PONG
    assert d.keepalive_reply(client_frame(0x9, b"abc")) == b"\x8a\x03abc"
    assert d.keepalive_reply(client_frame(0x9, b"")) == b"\x8a\x00"
    assert d.keepalive_reply(client_frame(0x1, b"\r\n\r\r")) is None
    assert d.keepalive_reply(client_frame(0x1, b"\r\n\r\n", masked=False)) is None
    assert d.keepalive_reply(client_frame(0x1, b"\r\n\r\n") + b"\x81") is None  # glued to more
    assert d.feed(client_frame(0x1, b"a", fin=False)) == []  # a fragmented message is open
    assert d.keepalive_reply(client_frame(0x1, b"\r\n\r\n")) is None


def test_server_frames() -> None:
    assert frame(0x1, b"hi") == b"\x81\x02hi"
    assert frame(0x1, b"a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert frame(0x2, b"a" * 65536)[:10] == b"\x82\x7f" + struct.pack("!Q", 65536)
    assert close_frame(1002, "x") == b"\x88\x03\x03\xeax"
    long = close_frame(1000, "\u00e9" * 100)
    assert len(long) <= 2 + 125
    (long[4:]).decode()  # cut on a character boundary
