"""The C scanner of a message's head (mcs_edge._sipscan) against the Python path it short-cuts.

``scan`` returns ``(start line, fields, end)`` for the common head and ``None`` for everything
else, which then takes ``message._scan_head``. Wherever the C scanner answers, the Python path
must give the same start line, the same field tuples (key, name, value, raw) and the same end;
wherever the Python path refuses a head, the C scanner must not answer. Checked on every RFC 4475
torture message, on hand-picked edge cases and on arbitrary bytes (hypothesis); ``parse`` is
also run with and without the scanner over the torture messages (same message or same error).

``via`` reads a common one-element Via value (tokens only, a hostname, a port) and returns ``None``
for anything else, which then takes the Python paths of ``headers.parse_via_tuple``. Wherever it
answers, the grammar's regular expression (``headers._parse_via_items``) must accept the value
and give the same Via; checked on every Via of the torture messages, on hand-picked edge cases
and on generated values (hypothesis).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcs_edge.core.sip import _abnf, headers, message
from mcs_edge.core.sip.headers import _KEY_CACHE, _KEY_CACHE_MAX, COMPACT_FORMS, Via, _parse_via_items
from mcs_edge.core.sip.message import DEFAULT_LIMITS, Limits, _scan_head, parse
from mcs_edge.errors import RemoteProtocolError

try:
    from mcs_edge import _sipscan
except ImportError:  # pragma: no cover - depends on the build
    _sipscan = None  # type: ignore[assignment]

needs_scan = pytest.mark.skipif(_sipscan is None, reason="mcs_edge._sipscan not built")

FIXTURES = Path(__file__).resolve().parents[2] / "data" / "sip" / "rfc4475"
TORTURE = sorted(FIXTURES.glob("*.sip"))


def test_the_extension_is_built_under_ci() -> None:
    """CI builds the extension (``pip install -e``); a missing one fails there instead of skipping."""
    if _sipscan is None:
        if os.environ.get("CI"):
            pytest.fail(
                "mcs_edge._sipscan was not built (setup.py ext_modules; gcc and Python headers needed)"
            )
        pytest.skip("mcs_edge._sipscan not built")
    assert message._scan is _sipscan.scan
    assert headers._via_c is _sipscan.via
    assert message._call_id_c is _sipscan.call_id


def _c(
    data: bytes, limits: Limits = DEFAULT_LIMITS
) -> tuple[str, list[tuple[str, str, str, str | None]], int] | None:
    assert _sipscan is not None
    return _sipscan.scan(
        data, limits.max_header_line, limits.max_header_count, _KEY_CACHE, COMPACT_FORMS, _KEY_CACHE_MAX
    )


def _agree(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bool:
    """Assert the C and Python scanners agree on ``data``; return whether C answered."""
    is_request = not data.startswith(b"SIP/")
    try:
        python = _scan_head(data, is_request, limits)
    except RemoteProtocolError:
        python = None
    c = _c(data, limits)
    if c is None:
        return False
    assert python is not None, f"C answered where Python refuses: {data[:120]!r}"
    assert c == python
    return True


REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WSS c.invalid;branch=z9hG4bK1\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:u@example.com>;tag=1\r\nTo: <sip:u@example.com>\r\n"
    b"Call-ID: a1\r\nCSeq: 2 REGISTER\r\nContact: <sip:u@c.invalid;transport=ws>;expires=600\r\n"
    b"Content-Length: 0\r\n\r\n"
)


@needs_scan
def test_the_common_message_is_scanned_in_c() -> None:
    """A plain REGISTER is answered by C with the Python path's fields (the fast path is taken)."""
    assert _agree(REGISTER)
    scanned = _c(REGISTER)
    assert scanned is not None
    start, fields, end = scanned
    assert start == "REGISTER sip:example.com SIP/2.0"
    assert fields[0] == (
        "via",
        "Via",
        "SIP/2.0/WSS c.invalid;branch=z9hG4bK1",
        "Via: SIP/2.0/WSS c.invalid;branch=z9hG4bK1",
    )
    assert end == REGISTER.index(b"\r\n\r\n")


CASES = {
    "compact and odd case": b"OPTIONS sip:a SIP/2.0\r\nv: SIP/2.0/UDP h\r\nI: x\r\nCONTENT-length:0\r\n\r\n",
    "space before colon": b"OPTIONS sip:a SIP/2.0\r\nVia \t: SIP/2.0/UDP h \t\r\nTo  :  <sip:b>  \r\n\r\nbody",
    "empty value": b"OPTIONS sip:a SIP/2.0\r\nSubject:\r\nX-Empty: \t \r\n\r\n",
    "colon in value": b"SIP/2.0 200 OK\r\nContact: <sip:a@b:5060>\r\n\r\n",
    "folded": b"OPTIONS sip:a SIP/2.0\r\nSubject: a\r\n b\r\n\r\n",
    "folded by tab": b"OPTIONS sip:a SIP/2.0\r\nSubject: a\r\n\tb\r\n\r\n",
    "bare LF": b"OPTIONS sip:a SIP/2.0\nVia: x\r\n\r\n",
    "bare CR": b"OPTIONS sip:a SIP/2.0\r\nVia: x\ry\r\n\r\n",
    "no empty line": b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n",
    "no colon": b"OPTIONS sip:a SIP/2.0\r\nVia x\r\n\r\n",
    "empty name": b"OPTIONS sip:a SIP/2.0\r\n: x\r\n\r\n",
    "blank name": b"OPTIONS sip:a SIP/2.0\r\nA b: x\r\n\r\n",
    "non-token name": b"OPTIONS sip:a SIP/2.0\r\nVi(a: x\r\n\r\n",
    "non-ASCII": 'OPTIONS sip:a SIP/2.0\r\nFrom: "J\u00f6rg" <sip:a>\r\n\r\n'.encode(),
    "invalid UTF-8": b"OPTIONS sip:a SIP/2.0\r\nSubject: \xff\xfe\r\n\r\n",
    "NUL": b"OPTIONS sip:a SIP/2.0\r\nSubject: a\x00b\r\n\r\n",
    "DEL": b"OPTIONS sip:a SIP/2.0\r\nSubject: a\x7fb\r\n\r\n",
    "start line only": b"OPTIONS sip:a SIP/2.0\r\n\r\n",
    "empty head": b"\r\n\r\nbody",
    "CR CR LF": b"OPTIONS sip:a SIP/2.0\r\r\n\r\n",
    "three CRLF": b"OPTIONS sip:a SIP/2.0\r\nA: b\r\n\r\n\r\n",
    "folded first line": b"OPTIONS sip:a SIP/2.0\r\n x: y\r\n\r\n",
    "non-ASCII in the body only": b"OPTIONS sip:a SIP/2.0\r\nA: b\r\n\r\n\xff\x00\n",
}


@needs_scan
@pytest.mark.parametrize("data", CASES.values(), ids=CASES.keys())
def test_edge_cases_agree(data: bytes) -> None:
    _agree(data)


@needs_scan
def test_limits_send_the_head_to_the_python_path() -> None:
    """A line longer than the cap, or more fields than the cap: C does not answer, Python refuses."""
    tight = Limits(max_message_size=65536, max_header_count=3, max_header_line=40)
    long_line = b"OPTIONS sip:a SIP/2.0\r\nSubject: " + b"x" * 40 + b"\r\n\r\n"
    many = b"OPTIONS sip:a SIP/2.0\r\n" + b"A: 1\r\n" * 4 + b"\r\n"
    exact = b"OPTIONS sip:a SIP/2.0\r\n" + b"A: 1\r\n" * 3 + b"\r\n"
    for data in (long_line, many):
        assert _c(data, tight) is None
        with pytest.raises(RemoteProtocolError):
            _scan_head(data, True, tight)
    assert _agree(exact, tight)


@needs_scan
@pytest.mark.parametrize("path", TORTURE, ids=lambda p: p.stem)
def test_torture_messages_agree(path: Path) -> None:
    _agree(path.read_bytes())


def _outcome(data: bytes) -> object:
    try:
        msg = parse(data)
    except RemoteProtocolError as exc:
        return ("error", str(exc), exc.status_hint)
    return (type(msg).__name__, msg.serialize(), msg.body, list(msg.headers.fields))


@needs_scan
@pytest.mark.parametrize("path", TORTURE, ids=lambda p: p.stem)
def test_parse_is_the_same_with_and_without_the_scanner(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The torture messages give the same message (or the same error and status) either way."""
    data = path.read_bytes()
    with_c = _outcome(data)
    monkeypatch.setattr(message, "_scan", None)
    assert _outcome(data) == with_c


_NAMES = st.sampled_from(
    ["Via", "v", "VIA", "To", "t", "From", "Call-ID", "i", "CSeq", "Contact", "m", "X-a.b!"]
)
_LINE_PIECES = st.sampled_from([*'abcAZ09 :;<>@,\t"=-.', "\r", "\n", "\r\n", "\r\n ", "\x00", "\xe9"])
_LINE_TEXT = st.lists(_LINE_PIECES, max_size=20).map("".join)


@st.composite
def _heads(draw: st.DrawFn) -> bytes:
    lines = [draw(st.sampled_from(["INVITE sip:a@b SIP/2.0", "SIP/2.0 200 OK", "", "X"]))]
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.one_of(_NAMES, _LINE_TEXT.map(lambda t: t[:6])))
        sep = draw(st.sampled_from([":", " :", ": ", "\t:\t", "", "::"]))
        value = draw(_LINE_TEXT)
        lines.append(name + sep + value)
    tail = draw(st.sampled_from(["\r\n\r\n", "\r\n\r\nbody", "\r\n", "\n\n", "\r\n\r\n\r\n"]))
    return "\r\n".join(lines).encode("utf-8") + tail.encode()


@needs_scan
@settings(max_examples=600, deadline=None)
@given(_heads())
def test_structured_heads_agree(data: bytes) -> None:
    _agree(data)


@needs_scan
@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_agree(data: bytes) -> None:
    _agree(data)
    _agree(REGISTER[:40] + data + b"\r\n\r\n")


# ------------------------------------------------------------------------------------- Via


def _via_agree(text: str) -> bool:
    """Assert C's reading of a Via value is the grammar's; return whether C answered."""
    assert _sipscan is not None
    try:
        python: tuple[Via, ...] | None = _parse_via_items(text)
    except RemoteProtocolError:
        python = None
    c = _sipscan.via(text)
    if c is None:
        return False
    assert python is not None and len(python) == 1, f"C answered where Python refuses: {text!r}"
    assert Via(*c) == python[0]
    assert type(c[2]) is (int if python[0].port is not None else type(None))
    return True


COMMON_VIAS = [
    "SIP/2.0/WSS c0.invalid;branch=z9hG4bKi1",
    "SIP/2.0/WSS c0.invalid;branch=z9hG4bKi1;received=127.0.0.1",
    "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK3b33ca23edd5375d4a0c;rport",
    "SIP/2.0/UDP 10.0.0.5:5060;rport=5060;received=10.0.0.5;branch=z9hG4bK-524287-1---abc",
    "SIP/2.0/TLS pbx.example.com:5061;branch=z9hG4bK.a1;alias",
    "sip/2.0/udp host.:0;x",
    "SIP/2.0/UDP a-b.c-d.e:65535",
]

VIA_CASES = [
    *COMMON_VIAS,
    "",
    "SIP/2.0/UDP",
    "SIP/2.0/UDP ",
    "SIP/2.0 UDP h",
    "SIP/2.0/UDP  h",
    "SIP/2.0/UDP\th",
    "SIP / 2.0 / UDP h",
    "SIP/2.0/UDP h ;branch=x",
    "SIP/2.0/UDP h; branch=x",
    "SIP/2.0/UDP h;branch = x",
    "SIP/2.0/UDP h:5060 ",
    "SIP/2.0/UDP h : 5060",
    "SIP/2.0/UDP h:",
    "SIP/2.0/UDP h:65536",
    "SIP/2.0/UDP h:123456",
    "SIP/2.0/UDP h:005060",
    "SIP/2.0/UDP h:05060",
    "SIP/2.0/UDP h;",
    "SIP/2.0/UDP h;;a",
    "SIP/2.0/UDP h;a=",
    "SIP/2.0/UDP h;a=b=c",
    'SIP/2.0/UDP h;a="b"',
    "SIP/2.0/UDP h;received=[::1]",
    "SIP/2.0/UDP [::1]:5060;branch=z9hG4bK1",
    "SIP/2.0/UDP h, SIP/2.0/UDP g",
    "SIP/2.0/UDP a..b",
    "SIP/2.0/UDP .a",
    "SIP/2.0/UDP a.",
    "SIP/2.0/UDP a..",
    "SIP/2.0/UDP -a",
    "SIP/2.0/UDP a-",
    "SIP/2.0/UDP a.-b",
    "SIP/2.0/UDP a_b",
    "SIP/2.0/UDP 1.2.3.4.5",
    "SIP/2.0/UDP 1234.5.6.7",
    "SIP/2.1/UDP h",
    "SIP/2.0.0/UDP h",
    "SIP/2.0/UDP/X h",
    "SIPS/2.0/TLS h",
    "SIP/2.0/" + "T" * 70 + " h",
    "SIP/2.0/UDP h" + ";p" * 63,
    "SIP/2.0/UDP h" + ";p" * 64,
    "SIP/2.0/UDP h" + ";p" * 65,
    "SIP/2.0/UDP h\u00e9",
    "SIP/2.0/UDP h;a=\u00e9",
    "SIP/2.0/UDP h\x00",
]


@needs_scan
def test_common_vias_are_read_in_c() -> None:
    """The Vias of a call through the edge are read by C, as the grammar reads them."""
    for text in COMMON_VIAS:
        assert _via_agree(text), text


@needs_scan
@pytest.mark.parametrize("text", VIA_CASES)
def test_via_edge_cases_agree(text: str) -> None:
    _via_agree(text)


@needs_scan
def test_via_limits_decline() -> None:
    """Past 64 parameters, or a port above 65535, C leaves the value to the Python path."""
    assert _sipscan is not None
    assert _sipscan.via("SIP/2.0/UDP h" + ";p" * 64) is not None
    assert _sipscan.via("SIP/2.0/UDP h" + ";p" * 65) is None
    assert _sipscan.via("SIP/2.0/UDP h:65536") is None
    assert _sipscan.via(b"SIP/2.0/UDP h") is None  # type: ignore[arg-type]


@needs_scan
@pytest.mark.parametrize("path", TORTURE, ids=lambda p: p.stem)
def test_torture_vias_agree(path: Path) -> None:
    try:
        msg = parse(path.read_bytes())
    except RemoteProtocolError:
        return
    for value in msg.headers.get_all("via"):
        _via_agree(value)


@needs_scan
@pytest.mark.parametrize("path", TORTURE, ids=lambda p: p.stem)
def test_parse_vias_the_same_with_and_without_c(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The torture messages' Vias read the same (or fail the same) through parse_via_tuple either way."""
    try:
        msg = parse(path.read_bytes())
    except RemoteProtocolError:
        return

    def read(value: str) -> object:
        headers.parse_via_tuple.cache_clear()
        try:
            return headers.parse_via_tuple(value)
        except RemoteProtocolError as exc:
            return ("error", str(exc), exc.status_hint)

    values = msg.headers.get_all("via")
    with_c = [read(v) for v in values]
    monkeypatch.setattr(headers, "_via_c", None)
    assert [read(v) for v in values] == with_c
    headers.parse_via_tuple.cache_clear()


_TOKEN_CHARS = "aZ09.-!%*_+`'~"
_VIA_TOKEN = st.text(alphabet=st.sampled_from(list(_TOKEN_CHARS)), min_size=1, max_size=6)
_VIA_LABEL = st.one_of(
    st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,4}[A-Za-z0-9])?", fullmatch=True),
    st.text(alphabet=st.sampled_from([*"aZ09-_"]), max_size=4),
)
_ODD = st.sampled_from([*' \t;:=/.,-_[]"@', "\u00e9", "\x00", ";;", "=="])


@st.composite
def _vias(draw: st.DrawFn) -> str:
    """Mostly well-formed Vias of every shape the C reader takes, some with one character changed."""
    protocol = draw(st.sampled_from(["SIP/2.0/", "SIP/2.0/", "sip/2.0/", "SIP/2.1/", "X/y/"]))
    transport = draw(st.one_of(st.sampled_from(["UDP", "udp", "WSS", "TLS", "TCP"]), _VIA_TOKEN))
    host = ".".join(draw(st.lists(_VIA_LABEL, min_size=1, max_size=4)))
    if draw(st.integers(0, 9)) == 0:
        host += "."
    if draw(st.integers(0, 4)) == 0:
        host = draw(st.sampled_from(["[::1]", "[2001:db8::1]", "1.2.3.4", "255.255.255.255", "1.2.3"]))
    port = draw(st.one_of(st.just(""), st.integers(0, 9_999_999).map(lambda p: f":{p}"), st.just(":05060")))
    params = ""
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.one_of(st.sampled_from(["branch", "rport", "received", "ttl", "maddr"]), _VIA_TOKEN))
        value = draw(
            st.one_of(st.none(), _VIA_TOKEN, st.sampled_from(["z9hG4bK1", "1.2.3.4", "[::1]", '"q"']))
        )
        params += ";" + name + ("" if value is None else "=" + value)
    text = protocol + transport + " " + host + port + params
    if draw(st.integers(0, 2)) == 0:  # one character inserted or replaced somewhere
        at = draw(st.integers(0, len(text)))
        odd = draw(_ODD)
        text = text[:at] + odd + text[at + draw(st.integers(0, 1)) :]
    return text


@needs_scan
@settings(max_examples=1500, deadline=None)
@given(_vias())
def test_structured_vias_agree(text: str) -> None:
    _via_agree(text)


@needs_scan
@settings(max_examples=600, deadline=None)
@given(st.text(alphabet=st.sampled_from([*'SIP/2.0UDh .:;=-_,[]"x19', "\t", "\u00e9"]), max_size=40))
def test_arbitrary_via_text_agrees(text: str) -> None:
    _via_agree(text)
    _via_agree("SIP/2.0/UDP " + text)


# --------------------------------------------------------------------------------- Call-ID


def _call_id_agree(text: str) -> None:
    assert _sipscan is not None
    c = _sipscan.call_id(text)
    if c is None:
        assert not text.isascii()
        return
    assert c == (_abnf.CALL_ID_RE.fullmatch(text) is not None), text


CALL_IDS = [
    "c1",
    "a84b4c76e66710@pc33.atlanta.com",
    "3f5e7a1c-9b2d-4e8f-a6c1-0d2e4f6a8b9c",
    'a\\b"c<d>:e/[f]?{g}(h)',
    "",
    "@",
    "@b",
    "a@",
    "a@b@c",
    "a b",
    "a\tb",
    "a;b",
    "a,b",
    "a=b",
    "a#b",
    "a\x00b",
    "a\x7fb",
    "\u00e9",
    "a@\u00e9",
]


@needs_scan
@pytest.mark.parametrize("text", CALL_IDS)
def test_call_id_cases_agree(text: str) -> None:
    _call_id_agree(text)


@needs_scan
@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x80), max_size=12))
def test_arbitrary_call_ids_agree(text: str) -> None:
    _call_id_agree(text)
    _call_id_agree(text + "@" + text)


@needs_scan
def test_every_ascii_character_in_a_call_id_agrees() -> None:
    for code in range(128):
        for text in (chr(code), f"a{chr(code)}b", f"a@b{chr(code)}", f"{chr(code)}@b"):
            _call_id_agree(text)
