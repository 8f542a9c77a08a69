"""Parser, header table, parsed views, proxy operations and size caps of ``core.sip``."""

from __future__ import annotations

import pytest

from mcs_edge.core.sip.headers import (
    Headers,
    NameAddr,
    SipUri,
    Via,
    parse_cseq,
    parse_max_forwards,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_commas,
)
from mcs_edge.core.sip.message import Limits, Request, Response, parse
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK5s8u7mtrq3\r\n"
    b"Max-Forwards: 69\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b'From: "Alice" <sip:alice@example.com>;tag=ta2jj1uq6r\r\n'
    b"Call-ID: 7j4vu9v2bq3b5l8ofmc2kn\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b"Contact: <sip:f3u2v9b8@df7jal23ls0d.invalid;transport=ws>;+sip.ice;reg-id=1;"
    b'+sip.instance="<urn:uuid:0f2c5e0c-3ad4-4c3e-a1b2-7f9c8e5d4a31>";expires=600\r\n'
    b"Expires: 600\r\n"
    b"Supported: path,gruu,outbound\r\n"
    b"Content-Length: 0\r\n\r\n"
)

RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKedge1, SIP/2.0/WSS df7.invalid;branch=z9hG4bKua1\r\n"
    b"To: <sip:alice@example.com>;tag=pbx1\r\n"
    b"From: <sip:alice@example.com>;tag=ua1\r\n"
    b"Call-ID: c1\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def req(*headers: str, start: str = "OPTIONS sip:bob@example.com SIP/2.0", body: bytes = b"") -> bytes:
    """Build a request from header lines; the mandatory ones are added unless overridden."""
    base = {
        "via": "Via: SIP/2.0/UDP h.example.com;branch=z9hG4bK1",
        "from": "From: <sip:a@example.com>;tag=1",
        "to": "To: <sip:b@example.com>",
        "call-id": "Call-ID: x@y",
        "cseq": f"CSeq: 1 {start.split(' ')[0]}",
        "max-forwards": "Max-Forwards: 70",
    }
    lines = [start]
    given = {h.split(":")[0].strip().lower() for h in headers}
    lines += [v for k, v in base.items() if k not in given]
    lines += list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_register_parses() -> None:
    """A typical REGISTER parses into the expected values."""
    msg = parse(REGISTER)
    assert isinstance(msg, Request)
    assert (msg.method, msg.uri) == ("REGISTER", "sip:example.com")
    assert msg.top_via == Via("WSS", "df7jal23ls0d.invalid", None, (("branch", "z9hG4bK5s8u7mtrq3"),))
    assert msg.from_.display_name == "Alice"
    assert msg.contacts[0].param("+sip.instance") == '"<urn:uuid:0f2c5e0c-3ad4-4c3e-a1b2-7f9c8e5d4a31>"'
    assert msg.headers.values("supported") == ["path", "gruu", "outbound"]
    assert bytes(msg) == REGISTER


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),
        (b"OPTIONS sip:a@b SIP/2.0\r\n", 400),
        (req(start="OPTIONS sip:b@example.com SIP/3.0"), 505),
        (req(start="OPTIONS sip:b@example.com SIP/2"), 400),
        (req(start="OPT IONS sip:b@example.com SIP/2.0"), 400),
        (req(start="OPT@ONS sip:b@example.com SIP/2.0"), 400),
        (req(start="OPTIONS mailto:b@example.com SIP/2.0"), 416),
        (req(start="OPTIONS sip:b@exa mple.com SIP/2.0"), 400),
        (req(start="OPTIONS sip:b@[::1 SIP/2.0"), 400),
        (req("Bad Header: x"), 400),
        (req("NoColon"), 400),
        (req("Via: SIP/2.0/UDP"), 400),
        (req("Call-ID: a b"), 400),
        (req("CSeq: x OPTIONS"), 400),
        (req("CSeq: 1 INVITE"), 400),
        (req("CSeq: 2147483648 OPTIONS"), 400),
        (req("Max-Forwards: 256"), 400),
        (req("Max-Forwards: -1"), 400),
        (req("Content-Length: 5"), 400),
        (req("Content-Length: 99999999999"), 413),
        (req("From: <sip:a@b>", "From: <sip:c@d>"), 400),
        (req('To: "unterminated <sip:b@example.com>'), 400),
        (req("Contact: <sip:a@b>;;"), 400),
        (req("Route: sip:a@b;lr, <sip:c@d"), 400),
        (req("X: a\rb"), 400),
        (b"OPTIONS sip:b@example.com SIP/2.0\r\n bad: fold\r\n\r\n", 400),
        (b"OPTIONS sip:b@example.com SIP/2.0\nVia: x\n\n", 400),
    ],
)
def test_request_errors(data: bytes, status: int) -> None:
    """Malformed requests raise RemoteProtocolError with the status to answer."""
    with pytest.raises(RemoteProtocolError) as info:
        parse(data)
    assert info.value.status_hint == status


@pytest.mark.parametrize(
    "data",
    [
        b"SIP/2.0 99 Too Low\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
        b"SIP/2.0 700 Too High\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
        RESPONSE.replace(b"CSeq: 2 REGISTER", b"CSeq: x"),
        RESPONSE.replace(b"Content-Length: 0", b"Content-Length: 10"),
        RESPONSE.replace(b"SIP/2.0 200", b"SIP/3.0 200"),
    ],
)
def test_bad_responses_are_dropped(data: bytes) -> None:
    """A malformed response gets status_hint None: it is dropped, never answered."""
    with pytest.raises(RemoteProtocolError) as info:
        parse(data)
    assert info.value.status_hint is None


def test_case_and_compact_forms() -> None:
    """Header names match case-insensitively and compact forms map to long names."""
    data = req(
        "v: SIP/2.0/TCP second.example.com;branch=z9hG4bK2",
        "l: 0",
        "m: <sip:c@example.com>",
        "s: hello",
        "k: path",
        "CALL-id: override",
    ).replace(b"Call-ID: x@y\r\n", b"")
    msg = parse(data)
    h = msg.headers
    assert h.get("content-length") == "0" and h.get("L") == "0"
    assert h.get("Subject") == "hello"
    assert h.get("supported") == "path"
    assert msg.call_id == "override"
    assert len(msg.vias) == 2
    assert [n for n, _ in h][-1] == "CALL-id"


def test_content_length_and_body() -> None:
    """Body equals Content-Length; extra datagram octets are dropped; no CL means the rest."""
    m1 = parse(req("Content-Length: 3", body=b"abcdef"))
    assert m1.body == b"abc"
    m2 = parse(req(body=b"abcdef"))
    assert m2.body == b"abcdef"
    assert m2.serialize().endswith(b"Content-Length: 6\r\n\r\nabcdef")
    with pytest.raises(RemoteProtocolError):
        parse(req(body=b"x"), content_length_required=True)


def test_size_caps() -> None:
    """Too large: whole message 513; too many header fields or a too long line: 400."""
    limits = Limits(max_message_size=1000, max_header_count=10, max_header_line=100)
    with pytest.raises(RemoteProtocolError) as info:
        parse(req(body=b"x" * 2000), limits=limits)
    assert info.value.status_hint == 513
    with pytest.raises(RemoteProtocolError) as info:
        parse(req(*[f"X-{i}: {i}" for i in range(10)]), limits=limits)
    assert info.value.status_hint == 400
    with pytest.raises(RemoteProtocolError) as info:
        parse(req("X-Long: " + "a" * 200), limits=limits)
    assert info.value.status_hint == 400
    with pytest.raises(RemoteProtocolError) as info:
        parse(req("X-Long: a", " " + "a" * 200), limits=limits)
    assert info.value.status_hint == 400
    assert parse(req(*[f"X-{i}: {i}" for i in range(4)]), limits=limits).headers.get("x-3") == "3"


def test_folding_is_unfolded_but_kept_on_the_wire() -> None:
    """Continuation lines join with one SP; the original text is written back unchanged."""
    data = req("Subject: first\r\n\t second\r\n  third", "Content-Length: 0")
    msg = parse(data)
    assert msg.headers.get("subject") == "first second third"
    assert bytes(msg) == data
    msg.headers.set("Subject", "changed")
    assert b"Subject: changed\r\n" in bytes(msg)


def test_headers_table_operations() -> None:
    """Headers: get, get_all, values, insert_first, set, remove, pop/replace first value."""
    h = Headers([("Route", "<sip:a;lr>, <sip:b;lr>"), ("X", "1"), ("route", "<sip:c;lr>")])
    assert h.get_all("ROUTE") == ["<sip:a;lr>, <sip:b;lr>", "<sip:c;lr>"]
    assert h.values("route") == ["<sip:a;lr>", "<sip:b;lr>", "<sip:c;lr>"]
    assert h.first_value("route") == "<sip:a;lr>"
    assert h.pop_first_value("route") == "<sip:a;lr>"
    assert h.get("route") == "<sip:b;lr>"
    h.replace_first_value("route", "<sip:z;lr>")
    assert h.values("route") == ["<sip:z;lr>", "<sip:c;lr>"]
    h.insert_first("Route", "<sip:top;lr>")
    assert h.values("route")[0] == "<sip:top;lr>"
    h.insert_first("New", "n")
    assert next(iter(h)) == ("New", "n")
    h.set("x", "2")
    assert h.get("X") == "2" and h.count("x") == 1
    h.set("Y", "3")
    assert "y" in h and h.count("Y") == 1
    assert h.remove("route") == 3
    assert h.pop_first_value("route") is None
    assert "route" not in h
    with pytest.raises(LocalProtocolError):
        h.add("X", "a\r\nInjected: 1")
    with pytest.raises(LocalProtocolError):
        h.add("Bad Name", "x")
    with pytest.raises(LocalProtocolError):
        h.replace_first_value("route", "x")


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("a", ["a"]),
        ("a, b ,c", ["a", "b", "c"]),
        ('"x, y" <sip:a>, <sip:b,c>', ['"x, y" <sip:a>', "<sip:b,c>"]),
        ('"q\\", z" <sip:a>;p=1, <sip:b>', ['"q\\", z" <sip:a>;p=1', "<sip:b>"]),
        ("a,,b", ["a", "", "b"]),
    ],
)
def test_split_commas(value: str, items: list[str]) -> None:
    """Commas inside quoted strings and <> do not split list values."""
    assert split_commas(value) == items


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:alice@atlanta.com", SipUri("atlanta.com", "alice")),
        (
            "sips:alice:secret@atlanta.com:5061;transport=tcp;lr?subject=x",
            SipUri(
                "atlanta.com",
                "alice",
                5061,
                (("transport", "tcp"), ("lr", None)),
                "subject=x",
                "secret",
                "sips",
            ),
        ),
        ("sip:[2001:db8::1]:5060", SipUri("[2001:db8::1]", None, 5060)),
        ("sip:[::ffff:192.0.2.1];maddr=x", SipUri("[::ffff:192.0.2.1]", None, None, (("maddr", "x"),))),
        ("SIP:192.0.2.4", SipUri("192.0.2.4")),
        (
            "sip:+1-212-555-1212:1234@gateway.com;user=phone",
            SipUri("gateway.com", "+1-212-555-1212", None, (("user", "phone"),), None, "1234"),
        ),
    ],
)
def test_parse_sip_uri(text: str, expected: SipUri) -> None:
    """SIP URIs split into user, password, host, port, params and headers."""
    uri = parse_uri(text)
    assert uri == expected
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize("text", ["sip:", "sip:a@", "sip:[::1", "sip:host:99999", "nocolon", "sip:a b"])
def test_parse_bad_uri(text: str) -> None:
    """Bad URIs raise RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError):
        parse_uri(text)


@pytest.mark.parametrize(
    ("text", "display", "uri", "params"),
    [
        ("<sip:a@b>", None, "sip:a@b", ()),
        ('"A \\"B\\"" <sip:a@b>;tag=1', 'A "B"', "sip:a@b", (("tag", "1"),)),
        ("Bob Smith <sip:a@b;lr>;expires=5", "Bob Smith", "sip:a@b;lr", (("expires", "5"),)),
        ("sip:a@b;tag=x", None, "sip:a@b", (("tag", "x"),)),
        ("tel:+123;tag=1", None, "tel:+123", (("tag", "1"),)),
        ("<sip:[::1]:5060>;received=[2001:db8::1]", None, "sip:[::1]:5060", (("received", "[2001:db8::1]"),)),
    ],
)
def test_parse_name_addr(
    text: str, display: str | None, uri: str, params: tuple[tuple[str, str | None], ...]
) -> None:
    """name-addr and addr-spec forms give display name, URI and header params."""
    na = parse_name_addr(text)
    assert (na.display_name, str(na.uri), na.params) == (display, uri, params)
    assert parse_name_addr(str(na)) == na


def test_contact_star() -> None:
    """Contact: * parses as the wildcard."""
    msg = parse(req("Contact: *", "Expires: 0", start="REGISTER sip:example.com SIP/2.0"))
    (star,) = msg.contacts
    assert star.is_star and str(star) == "*"


def test_parse_via_values() -> None:
    """Via: transport, sent-by (IPv6 too), branch, received, rport."""
    (v1, v2) = parse_via(
        "SIP/2.0/udp [2001:db8::9]:5070;rport=1234;received=192.0.2.1;branch=z9hG4bKa, SIP/2.0/TLS h"
    )
    assert (v1.transport, v1.host, v1.port) == ("UDP", "[2001:db8::9]", 5070)
    assert (v1.rport, v1.received, v1.branch, v1.rfc3261_branch) == (1234, "192.0.2.1", "z9hG4bKa", True)
    assert v1.sent_by == ("[2001:db8::9]", 5070)
    assert (v2.transport, v2.branch, v2.rfc3261_branch) == ("TLS", None, False)
    v3 = v2.with_param("received", "1.2.3.4").with_param("RECEIVED", "5.6.7.8")
    assert str(v3) == "SIP/2.0/TLS h;received=5.6.7.8"
    assert parse_via(str(v1)) == [v1]


def test_cseq_and_max_forwards() -> None:
    """CSeq and Max-Forwards parse with their range checks."""
    assert parse_cseq("0009  INVITE") == parse_cseq("9 INVITE")
    assert str(parse_cseq("9 INVITE")) == "9 INVITE"
    assert parse_max_forwards("0068") == 68
    for bad in ("", "7a", "256", "²"):
        with pytest.raises(RemoteProtocolError):
            parse_max_forwards(bad)


def test_proxy_operations() -> None:
    """push/pop Via, Record-Route, Route, Max-Forwards and body replacement as a proxy does."""
    msg = parse(REGISTER)
    top = msg.top_via
    edge_via = Via("UDP", "10.0.0.1", 5060, (("branch", "z9hG4bKedge1"),))
    msg.replace_top_via(top.with_param("received", "198.51.100.7").with_param("rport", "40000"))
    msg.push_via(edge_via)
    msg.prepend_record_route("<sip:10.0.0.1;lr>")
    msg.prepend_record_route(NameAddr(SipUri("edge.example.com", params=(("lr", None),))))
    assert msg.decrement_max_forwards() == 68
    msg.set_body(b"hello", "text/plain")
    out = parse(bytes(msg))
    assert [v.host for v in out.vias] == ["10.0.0.1", "df7jal23ls0d.invalid"]
    assert out.vias[1].received == "198.51.100.7" and out.vias[1].rport == 40000
    assert [str(r.uri) for r in out.record_routes] == ["sip:edge.example.com;lr", "sip:10.0.0.1;lr"]
    assert out.max_forwards == 68
    assert (out.body, out.content_type) == (b"hello", "text/plain")
    assert out.pop_via() == edge_via
    assert out.top_via.host == "df7jal23ls0d.invalid"
    out.set_body(b"")
    assert out.content_type is None and out.headers.get("content-length") == "0"


def test_route_operations() -> None:
    """Routes in one field or several are read, popped and replaced in order."""
    msg = parse(req("Route: <sip:p1;lr>, <sip:p2;lr>", "Route: <sip:p3;lr>"))
    assert [str(r.uri) for r in msg.routes] == ["sip:p1;lr", "sip:p2;lr", "sip:p3;lr"]
    first = msg.pop_route()
    assert first is not None and str(first.uri) == "sip:p1;lr"
    assert [str(r.uri) for r in parse(bytes(msg)).routes] == ["sip:p2;lr", "sip:p3;lr"]
    msg.set_routes(["<sip:q;lr>"])
    assert msg.headers.get_all("route") == ["<sip:q;lr>"]
    msg.set_routes([])
    assert msg.pop_route() is None


def test_response_parsing_and_for_request() -> None:
    """Responses parse; for_request copies the transaction headers and adds a To tag."""
    resp = parse(RESPONSE)
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason, resp.to.tag) == (200, "OK", "pbx1")
    assert [v.branch for v in resp.vias] == ["z9hG4bKedge1", "z9hG4bKua1"]
    resp.pop_via()
    assert parse(bytes(resp)).top_via.branch == "z9hG4bKua1"
    request = parse(REGISTER)
    assert isinstance(request, Request)
    made = Response.for_request(request, 401, "Unauthorized", to_tag="t9")
    again = parse(bytes(made))
    assert isinstance(again, Response)
    assert (again.status, again.to.tag, again.call_id, again.cseq.method) == (
        401,
        "t9",
        request.call_id,
        "REGISTER",
    )
    with pytest.raises(LocalProtocolError):
        Response(42)


def test_copy_is_independent() -> None:
    """A copied message can be changed without touching the original."""
    msg = parse(REGISTER)
    assert isinstance(msg, Request)
    other = msg.copy()
    other.push_via("SIP/2.0/UDP x;branch=z9hG4bKz")
    assert len(msg.vias) == 1 and len(other.vias) == 2
    assert msg != other
