"""The C scanner of a message's head (mcs_edge._sipscan) against the Python path it short-cuts.

``scan`` returns ``(start line, fields, end)`` for the common head and ``None`` for everything
else, which then takes ``message._scan_head``. Wherever the C scanner answers, the Python path
must give the same start line, the same field tuples (key, name, value, raw) and the same end;
wherever the Python path refuses a head, the C scanner must not answer. Checked on every RFC 4475
torture message, on hand-picked edge cases and on arbitrary bytes (hypothesis); ``parse`` is
also run with and without the scanner over the torture messages (same message or same error).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcs_edge.core.sip import message
from mcs_edge.core.sip.headers import _KEY_CACHE, _KEY_CACHE_MAX, COMPACT_FORMS
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
