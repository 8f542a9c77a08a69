"""Start lines checked once: ``parse`` keeps the start lines that passed every check (RFC 3261
s.7.1, s.7.2, s.25.1), so a line seen before is not checked again; a refused line is refused every
time, with the same status, and the parsed values are the same as from a first parse."""

from __future__ import annotations

import pytest

from mcs_edge.core.sip.message import Request, Response, parse
from mcs_edge.errors import RemoteProtocolError

HEAD = (
    "Via: SIP/2.0/UDP h.example.com;branch=z9hG4bK{n}\r\nMax-Forwards: 70\r\n"
    "From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\nCall-ID: c{n}\r\n"
    "CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
)


def _request(line: str, method: str, n: int) -> bytes:
    return (line + "\r\n" + HEAD.format(n=n, method=method)).encode()


@pytest.mark.parametrize(
    ("line", "method", "status"),
    [
        ("INVITE sip:b@example.com SIP/2.0", "INVITE", None),
        ("INVITE sip:b@example.com SIP/3.0", "INVITE", 505),
        ("INVITE  sip:b@example.com SIP/2.0", "INVITE", 400),
        ("IN(VITE sip:b@example.com SIP/2.0", "IN(VITE", 400),
        ("INVITE sip:b@exa mple.com SIP/2.0", "INVITE", 400),
        ("INVITE sip:b@[::1 SIP/2.0", "INVITE", 400),
        ("INVITE mailto:b@example.com SIP/2.0", "INVITE", 416),
        ("invite sip:b@example.com SIP/2.0", "invite", None),
        ("INVITE sip:b@example.com sip/2.0", "INVITE", None),
    ],
)
def test_a_request_line_gives_the_same_outcome_every_time(line: str, method: str, status: int | None) -> None:
    outcomes = []
    for n in range(3):
        try:
            msg = parse(_request(line, method, n))
        except RemoteProtocolError as exc:
            outcomes.append(("refused", exc.status_hint))
        else:
            assert isinstance(msg, Request)
            outcomes.append((msg.method, msg.uri, msg.version))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    if status is None:
        assert outcomes[0] == (method, line.split(" ")[1], "SIP/2.0")
    else:
        assert outcomes[0] == ("refused", status)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("SIP/2.0 200 OK", (200, "OK")),
        ("SIP/2.0 180 Ringing", (180, "Ringing")),
        ("SIP/2.0 486", (486, "")),
        ("SIP/2.0 603 Decline for now", (603, "Decline for now")),
        ("SIP/2.0 2000 OK", None),
        ("SIP/2.0 20 OK", None),
        ("SIP/3.0 200 OK", None),
        ("SIP/2.0", None),
    ],
)
def test_a_status_line_gives_the_same_outcome_every_time(line: str, expected: tuple[int, str] | None) -> None:
    outcomes = []
    for n in range(3):
        data = (line + "\r\n" + HEAD.format(n=n, method="INVITE")).encode()
        try:
            msg = parse(data)
        except RemoteProtocolError as exc:
            outcomes.append(("refused", exc.status_hint))
        else:
            assert isinstance(msg, Response)
            outcomes.append((msg.status, msg.reason))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert outcomes[0] == (expected if expected is not None else ("refused", None))


def test_many_distinct_start_lines_and_long_ones_parse_as_the_first_time() -> None:
    """Past the table's bound (it is emptied) and above the cached length, lines still parse."""
    for n in range(5000):
        msg = parse(_request(f"OPTIONS sip:u{n}@example.com SIP/2.0", "OPTIONS", n))
        assert isinstance(msg, Request) and msg.uri == f"sip:u{n}@example.com"
    long_uri = "sip:" + "u" * 400 + "@example.com"
    for n in range(2):
        msg = parse(_request(f"OPTIONS {long_uri} SIP/2.0", "OPTIONS", n))
        assert isinstance(msg, Request) and msg.uri == long_uri
    with pytest.raises(RemoteProtocolError):
        parse(_request("OPTIONS sip:" + "u" * 400 + "@exa mple.com SIP/2.0", "OPTIONS", 0))


def test_a_second_request_line_field_repeated_is_still_refused() -> None:
    """The cheaper check for repeated single-valued fields refuses what it refused before, naming it."""
    data = _request("INVITE sip:b@example.com SIP/2.0", "INVITE", 1).replace(
        b"Call-ID: c1\r\n", b"Call-ID: c1\r\nRoute: <sip:p;lr>\r\nRoute: <sip:q;lr>\r\nCall-ID: c2\r\n"
    )
    with pytest.raises(RemoteProtocolError, match="more than one call-id"):
        parse(data)
    ok = _request("INVITE sip:b@example.com SIP/2.0", "INVITE", 1).replace(
        b"Call-ID: c1\r\n", b"Call-ID: c1\r\nRoute: <sip:p;lr>\r\nRoute: <sip:q;lr>\r\n"
    )
    assert parse(ok).headers.values("route") == ["<sip:p;lr>", "<sip:q;lr>"]
