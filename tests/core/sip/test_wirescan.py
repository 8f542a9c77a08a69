"""The C helpers of mcs_edge._wirescan against the Python paths they short-cut.

``shed_fields`` (core/sip/shed.py) must give the same answer in C and in Python on every input:
the same tuple or None. ``ws_messages`` decodes the whole data frames at the start of a read and
stops at anything else; the decoder with it must give the same events, in the same order, as the
decoder without it, whatever the bytes and however they are split between reads. Checked on the
RFC 4475 torture messages, hand-picked edge cases and arbitrary input (hypothesis).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcs_edge.core.sip import shed
from mcs_edge.core.websocket import rfc6455
from mcs_edge.core.websocket.rfc6455 import Decoder, Event

try:
    from mcs_edge import _wirescan
except ImportError:  # pragma: no cover - depends on the build
    _wirescan = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(_wirescan is None, reason="mcs_edge._wirescan not built")

TORTURE = sorted((Path(__file__).resolve().parents[2] / "data" / "sip" / "rfc4475").glob("*.sip"))


def test_the_extension_is_built_under_ci() -> None:
    """CI builds the extension (``pip install -e``); a missing one fails there instead of skipping."""
    if _wirescan is None:
        if os.environ.get("CI"):
            pytest.fail(
                "mcs_edge._wirescan was not built (setup.py ext_modules; gcc and Python headers needed)"
            )
        pytest.skip("mcs_edge._wirescan not built")
    assert shed.shed_fields is _wirescan.shed_fields
    assert rfc6455._ws_messages is _wirescan.ws_messages


# -- shed_fields ---------------------------------------------------------------------------------


def _same_shed(data: bytes) -> shed.ShedFields | None:
    assert _wirescan is not None
    python = shed._shed_fields(data)
    c = _wirescan.shed_fields(data)
    assert c == python, (data, c, python)
    return python


REGISTER = (
    b"REGISTER sip:rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS c1.invalid;branch=z9hG4bK1\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:u1@rossi.example.com>;tag=t1\r\nTo: <sip:u1@rossi.example.com>\r\n"
    b"Call-ID: R1-0123\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
)
INVITE = REGISTER.replace(b"REGISTER", b"INVITE").replace(b"To: <sip:u1", b"To: <sip:200")

EDGE_CASES = [
    REGISTER,
    INVITE,
    INVITE.replace(b"To: <sip:200@rossi.example.com>", b"To: <sip:200@rossi.example.com>;tag=x"),
    INVITE.replace(b"To: <sip:200@rossi.example.com>", b"To: <sip:200@rossi.example.com> ; TAG = x"),
    INVITE.replace(b"To: <sip:200@rossi.example.com>", b'To: "a;tag=b" <sip:200@rossi.example.com>'),
    INVITE.replace(b"To: <sip:200@rossi.example.com>", b"To: <sip:200@rossi.example.com>;tagx=1"),
    REGISTER.replace(b"To: <sip:u1@rossi.example.com>", b"To: <sip:u1@rossi.example.com>;tag=a"),
    REGISTER.replace(b"Via: ", b"v: ").replace(b"From: ", b"f: ").replace(b"To: ", b"t: "),
    REGISTER.replace(b"Call-ID: ", b"i: "),
    REGISTER.replace(b"Via: ", b"VIA :  \t"),
    REGISTER.replace(b"CSeq: 1 REGISTER", b"cseq:1 REGISTER \t "),
    REGISTER.replace(b"CSeq: 1 REGISTER", b"CSeq: 1 REGISTER\x0b\x0c"),
    REGISTER.replace(b"Call-ID: R1-0123", b"Call-ID:"),
    REGISTER.replace(b"Call-ID: R1-0123", b"Call-ID:   "),
    REGISTER.replace(b"Call-ID: R1-0123\r\n", b""),
    REGISTER.replace(b"Via: SIP/2.0/WSS c1.invalid;branch=z9hG4bK1\r\n", b""),
    REGISTER.replace(b"Via: SIP/2.0/WSS c1.invalid;branch=z9hG4bK1", b"Via: SIP/2.0/WSS a\r\n b"),
    REGISTER.replace(b"Via: SIP/2.0/WSS c1.invalid;branch=z9hG4bK1", b"Via: a\r\n\tb"),
    REGISTER.replace(b"Max-Forwards: 70", b"Via: SIP/2.0/UDP p;branch=z9hG4bK2, SIP/2.0/UDP q"),
    REGISTER.replace(b"Max-Forwards: 70", b"\r\n".join(b"Via: SIP/2.0/UDP p%d" % i for i in range(40))),
    REGISTER.replace(b"Max-Forwards: 70", b"From: <sip:second@x>"),
    REGISTER.replace(b"Max-Forwards: 70", b"To: "),
    REGISTER.replace(b"Max-Forwards: 70", b"Vias: x"),
    REGISTER.replace(b"Max-Forwards: 70", b"v ia: x"),
    REGISTER.replace(b"Max-Forwards: 70", b"X-To: y\rTo: bare-cr"),
    REGISTER.replace(b"Max-Forwards: 70", b"X: a\nTo: bare-lf"),
    REGISTER.replace(b"Max-Forwards: 70", b"X: a\r\r\nTo: z"),
    REGISTER.replace(b"Max-Forwards: 70", b"To\x00: z"),
    REGISTER.replace(b"\r\n\r\n", b"\r\n"),
    REGISTER.replace(b"\r\n\r\n", b"\r\n\r\nVia: body\r\n\r\n"),
    REGISTER[:-2] + b" \r\n",
    REGISTER.replace(b"From: <sip:u1@rossi.example.com>;tag=t1", b"From: \xc3\xa9 <sip:u1@x>;tag=t1"),
    b"REGISTER",
    b"REGISTER ",
    b"INVITE ",
    b"REGISTER sip:x SIP/2.0\r\n",
    b"REGISTER sip:x SIP/2.0\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\nCSeq: e",
    b"REGISTER sip:x SIP/2.0\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\nCSeq: e\r",
    b"REGISTER sip:x SIP/2.0\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\nCSeq: e\r\n \r\n\r\n",
    b"OPTIONS sip:x SIP/2.0\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\nCSeq: e\r\n\r\n",
    b"register sip:x SIP/2.0\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\nCSeq: e\r\n\r\n",
    b"SIP/2.0 200 OK\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\nCSeq: e\r\n\r\n",
    b"INVITE sip:x SIP/2.0\r\n\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\nCSeq: e\r\n\r\n",
    b"INVITE sip:x SIP/2.0\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\r\n\r\nCSeq: e\r\n\r\n",
    b"INVITE sip:x SIP/2.0\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\nCSeq: e\r\n\r\n\r\n",
    b"INVITE sip:x SIP/2.0\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\nCSeq: e\r\n\r",
    b"INVITE sip:x SIP/2.0\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\nCSeq: e\r\n\r\n\tx",
    b"INVITE sip:x SIP/2.0\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\n\r\n\r\nCSeq: e\r\n\r\n",
    b"INVITE sip:x SIP/2.0\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\nCSeq: e\r\n \r\n\r\n",
]


@needs_c
@pytest.mark.parametrize("data", EDGE_CASES)
def test_shed_fields_agree_on_edge_cases(data: bytes) -> None:
    _same_shed(data)


@needs_c
def test_shed_fields_answer_the_common_requests() -> None:
    assert _same_shed(REGISTER) is not None
    assert _same_shed(INVITE) is not None
    assert _same_shed(EDGE_CASES[2]) is None  # re-INVITE
    assert _same_shed(EDGE_CASES[16]) is None  # folded Via


@needs_c
@pytest.mark.parametrize("path", TORTURE, ids=lambda p: p.name)
def test_shed_fields_agree_on_torture_messages(path: Path) -> None:
    data = path.read_bytes()
    _same_shed(data)
    for method in (b"INVITE ", b"REGISTER "):
        _same_shed(method + data.split(b" ", 1)[-1])


_LINE_NAMES = st.sampled_from(
    [
        b"Via",
        b"v",
        b"VIA",
        b"From",
        b"f",
        b"To",
        b"t",
        b"TO",
        b"Call-ID",
        b"i",
        b"call-id",
        b"CSeq",
        b"cseq",
        b"X",
        b"Vias",
        b"Tos",
        b"Contact",
        b"",
    ]
)
_VALUES = st.one_of(
    st.sampled_from([b"a", b"<sip:x>;tag=1", b" b ", b"", b"\t", b"x;Tag =y", b"c\r\n d", b"e\rf", b"g\nh"]),
    st.binary(max_size=12),
)


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"INVITE ", b"REGISTER ", b"ACK ", b""]))
    lines = draw(
        st.lists(
            st.tuples(_LINE_NAMES, st.sampled_from([b":", b" :", b"\t: ", b": ", b""]), _VALUES), max_size=12
        )
    )
    head = b"\r\n".join(n + sep + v for n, sep, v in lines)
    end = draw(st.sampled_from([b"\r\n\r\n", b"\r\n", b"", b"\r\n\r\nVia: x\r\n"]))
    return method + b"sip:x SIP/2.0\r\n" + head + end


@needs_c
@settings(max_examples=1500, deadline=None)
@given(_requests())
def test_shed_fields_agree_on_generated_requests(data: bytes) -> None:
    _same_shed(data)


@needs_c
@settings(max_examples=600, deadline=None)
@given(st.sampled_from([b"INVITE ", b"REGISTER "]), st.binary(max_size=200))
def test_shed_fields_agree_on_arbitrary_bytes(method: bytes, rest: bytes) -> None:
    _same_shed(method + rest)


# -- ws_messages ---------------------------------------------------------------------------------


def _frame(
    opcode: int, payload: bytes, mask: bytes = b"\x11\x22\x33\x44", fin: bool = True, rsv: int = 0
) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0xFE, n)
    else:
        head = struct.pack("!BBQ", b0, 0xFF, n)
    key = (mask * (n // 4 + 1))[:n]
    return head + mask + bytes(a ^ b for a, b in zip(payload, key, strict=True))


def _events(chunks: list[bytes], max_message: int, c: bool) -> list[Event]:
    saved = rfc6455._ws_messages
    if not c:
        rfc6455._ws_messages = None
    try:
        decoder = Decoder(max_message)
        out: list[Event] = []
        for chunk in chunks:
            out.extend(decoder.feed(chunk))
        return out
    finally:
        rfc6455._ws_messages = saved


def _same_events(chunks: list[bytes], max_message: int) -> list[Event]:
    python = _events(chunks, max_message, False)
    c = _events(chunks, max_message, True)
    assert c == python, (chunks, c, python)
    return python


FRAMES = [
    _frame(0x1, REGISTER),
    _frame(0x1, REGISTER, mask=b"\x00\x00\x00\x00"),
    _frame(0x2, b"\x00\xff" * 7),
    _frame(0x1, b""),
    _frame(0x1, b"\r\n\r\n"),
    _frame(0x1, "é€😀".encode()),
    _frame(0x1, b"\xc3"),  # invalid UTF-8: 1007
    _frame(0x1, b"ok\xff"),
    _frame(0x1, b"a" * 200),
    _frame(0x1, b"a" * 70000),
    _frame(0x9, b"ping"),
    _frame(0xA, b"pong"),
    _frame(0x8, struct.pack("!H", 1000) + b"bye"),
    _frame(0x1, b"frag", fin=False),
    _frame(0x0, b"ment"),
    _frame(0x0, b"end"),
    _frame(0x1, b"rsv", rsv=4),
    _frame(0x3, b"reserved opcode"),
    _frame(0x1, b"x")[:1] + bytes((0x01,)) + b"x",  # unmasked
    bytes((0x81, 0xFF)) + b"\x80" + b"\x00" * 7 + b"abcd",  # 64-bit length, top bit set
    bytes((0x81, 0xFF)) + (5).to_bytes(8, "big") + b"abcd" + b"hello",  # 64-bit form of a short length
]


@needs_c
@pytest.mark.parametrize("index", range(len(FRAMES)))
def test_ws_messages_agree_on_each_frame(index: int) -> None:
    frame = FRAMES[index]
    for max_message in (16, 1000, 1 << 20):
        _same_events([frame], max_message)
        _same_events([frame + FRAMES[0]], max_message)
        _same_events([FRAMES[0] + frame + FRAMES[0]], max_message)
        _same_events([frame[:3], frame[3:]], max_message)


@needs_c
def test_ws_messages_decodes_a_run_of_messages() -> None:
    assert _wirescan is not None
    data = FRAMES[0] + FRAMES[5] + FRAMES[10] + FRAMES[0]
    events, pos = _wirescan.ws_messages(data, 0, 1 << 20)
    assert [e[1] for e in events] == [REGISTER, "é€😀".encode()]
    assert pos == len(FRAMES[0]) + len(FRAMES[5])  # stopped at the ping: Python answers it
    events = _same_events([data], 1 << 20)
    assert [e[0] for e in events] == [rfc6455.MESSAGE, rfc6455.MESSAGE, rfc6455.PING, rfc6455.MESSAGE]


@needs_c
@settings(max_examples=800, deadline=None)
@given(
    picks=st.lists(st.sampled_from(range(len(FRAMES))), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=4),
    max_message=st.sampled_from([16, 300, 1 << 20]),
)
def test_ws_messages_agree_on_frame_sequences(picks: list[int], cuts: list[int], max_message: int) -> None:
    data = b"".join(FRAMES[i] for i in picks)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    _same_events(chunks, max_message)


@needs_c
@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([4, 100, 1 << 20]))
def test_ws_messages_agree_on_arbitrary_bytes(data: bytes, max_message: int) -> None:
    _same_events([data], max_message)
    _same_events([FRAMES[0] + data], max_message)
