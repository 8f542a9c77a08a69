"""RFC 4475 torture messages: each fixture is parsed and must give what the RFC expects.

Valid messages (s.3.1.1) parse with the right values and round-trip byte for byte; invalid ones
(s.3.1.2) raise ``RemoteProtocolError`` with the status a proxy must answer (``None`` for
responses, which are dropped); the transaction and application-layer ones (s.3.2-3.4) either parse
(the proxy decides later) or are refused with the status a proxy must send.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mcs_edge.core.sip.headers import OtherUri, SipUri
from mcs_edge.core.sip.message import Request, Response, parse
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

FIXTURES = Path(__file__).resolve().parents[2] / "data" / "sip" / "rfc4475"


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.sip").read_bytes()


def parse_request(name: str) -> Request:
    msg = parse(load(name))
    assert isinstance(msg, Request)
    return msg


VALID = [
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
    # 3.2 / 3.3: syntactically fine, semantics are the proxy's business
    "badbranch",
    "unksm2",
    "bext01",
    "invut",
    "regaut01",
    "bcast",
    "zeromf",
    "cparam01",
    "cparam02",
    "regescrt",
    "sdp01",
    # 3.1.2.12: a proxy does not interpret Date; RFC 4475 lets it ignore the bad field
    "baddate",
]

INVALID = [
    # (fixture, status hint): requests are answered, responses dropped (None)
    ("badinv01", 400),  # 3.1.2.1 extraneous header field separators
    ("clerr", 400),  # 3.1.2.2 Content-Length larger than message
    ("ncl", 400),  # 3.1.2.3 negative Content-Length
    ("scalar02", 400),  # 3.1.2.4 overlarge request scalars
    ("scalarlg", None),  # 3.1.2.5 overlarge response scalars: drop
    ("quotbal", 400),  # 3.1.2.6 unterminated quoted string
    ("ltgtruri", 400),  # 3.1.2.7 <> around the Request-URI
    ("lwsruri", 400),  # 3.1.2.8 LWS in the Request-URI
    ("lwsstart", 400),  # 3.1.2.9 multiple SP in the request line
    ("trws", 400),  # 3.1.2.10 SP at the end of the request line
    ("escruri", 400),  # 3.1.2.11 escaped headers in the Request-URI
    ("regbadct", 400),  # 3.1.2.13 URI with ? not in <>
    ("badaspec", 400),  # 3.1.2.14 spaces inside <addr-spec>
    ("baddn", 400),  # 3.1.2.15 non-token characters in an unquoted display name
    ("badvers", 505),  # 3.1.2.16 unknown SIP version
    ("mismatch01", 400),  # 3.1.2.17 CSeq method mismatch
    ("mismatch02", 400),  # 3.1.2.18 unknown method with CSeq mismatch
    ("bigcode", None),  # 3.1.2.19 overlarge response code: drop
    ("insuf", 400),  # 3.3.1 missing To, From, Call-ID, Max-Forwards
    ("unkscm", 416),  # 3.3.2 unknown Request-URI scheme
    ("novelsc", 416),  # 3.3.3 scheme the edge does not route
    ("multi01", 400),  # 3.3.8 several values in single-value fields
    ("mcl01", 400),  # 3.3.9 several Content-Length values
]


@pytest.mark.parametrize("name", VALID)
def test_valid_message_parses_and_round_trips(name: str) -> None:
    """Every syntactically valid torture message parses and serialises back byte for byte."""
    data = load(name)
    msg = parse(data)
    assert bytes(msg) == data
    assert parse(bytes(msg)) == msg


@pytest.mark.parametrize(("name", "status"), INVALID)
def test_invalid_message_is_refused_with_the_right_status(name: str, status: int | None) -> None:
    """Every invalid torture message raises RemoteProtocolError with the status to answer."""
    with pytest.raises(RemoteProtocolError) as info:
        parse(load(name))
    assert info.value.status_hint == status


def test_all_fixtures_are_classified() -> None:
    """No fixture is left without an expectation."""
    names = {p.stem for p in FIXTURES.glob("*.sip")}
    classified = set(VALID) | {n for n, _ in INVALID} | {"dblreq", "inv2543"}
    assert names == classified
    assert len(names) == 49


def test_wsinv_values() -> None:
    """3.1.1.1: folding, escapes, compact forms, odd casing and leading zeros are understood."""
    msg = parse_request("wsinv")
    assert msg.method == "INVITE"
    uri = msg.request_uri
    assert isinstance(uri, SipUri)
    assert uri.user == "vivekg"
    assert uri.host == "chair-dnrc.example.com"
    assert uri.has_param("unknownparam")
    assert msg.to.tag == "1918181833n"
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert (msg.cseq.seq, msg.cseq.method) == (9, "INVITE")
    vias = msg.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (contact,) = msg.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.param("newparam") == "newvalue"
    assert contact.has_param("secondparam") and contact.param("secondparam") is None
    assert contact.param("q") == "0.33"
    (route,) = msg.routes
    assert isinstance(route.uri, SipUri) and route.uri.has_param("lr")
    assert route.uri.param("unknownwith") == "value"
    assert len(msg.body) == 150


def test_intmeth_values() -> None:
    """3.1.1.2: unusual but legal characters in method, URI, branch, display names, Call-ID."""
    msg = parse_request("intmeth")
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = msg.request_uri
    assert isinstance(uri, SipUri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    frm = msg.from_
    assert frm.display_name == "token1~` token2'+_ token3*%!.-"
    assert frm.tag == "_token~1'+`*%!-."
    assert frm.param("fromParam''~+*_!.-%") == '"работающий"'
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_escapes_are_kept_as_written() -> None:
    """3.1.1.3-3.1.1.5: %-escapes stay escaped; % in a method or header name is not an escape."""
    esc01 = parse_request("esc01")
    assert esc01.uri == "sip:sips%3Auser%40example.com@example.net"
    (contact,) = esc01.contacts
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.params == (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))
    escnull = parse_request("escnull")
    assert [str(c.uri) for c in escnull.contacts] == [
        "sip:%00@host5.example.com",
        "sip:%00%00@host5.example.com",
    ]
    esc02 = parse_request("esc02")
    assert esc02.method == "RE%47IST%45R"
    assert len(esc02.contacts) == 2
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert esc02.to.display_name == "%Z%45"


def test_lwsdisp_and_semiuri_and_transports() -> None:
    """3.1.1.6, 3.1.1.9, 3.1.1.10: token display name glued to <, ; in user, odd transports."""
    assert parse_request("lwsdisp").from_.display_name == "caller"
    semi = parse_request("semiuri")
    uri = semi.request_uri
    assert isinstance(uri, SipUri) and uri.user == "user;par=u%40example.net" and uri.params == ()
    assert len(semi.headers.values("Accept")) == 6
    assert [v.transport for v in parse_request("transports").vias] == [
        "UDP",
        "SCTP",
        "TLS",
        "UNKNOWN",
        "TCP",
    ]


def test_longreq_values() -> None:
    """3.1.1.7: long values and 34 Via fields under many spellings of Via and v."""
    msg = parse_request("longreq")
    vias = msg.vias
    assert len(vias) == 34
    assert vias[0].host == "sip33.example.com"
    assert vias[-1].received == "192.0.2.5"
    assert msg.to.uri == parse_request("longreq").to.uri
    assert isinstance(msg.to.uri, SipUri) and msg.to.uri.port == 6000


def test_dblreq_extra_octets_are_discarded() -> None:
    """3.1.1.8: octets after Content-Length in a datagram are ignored (RFC 3261 s.18.3)."""
    data = load("dblreq")
    msg = parse_request("dblreq")
    assert msg.method == "REGISTER"
    assert msg.body == b""
    assert msg.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert bytes(msg) == data[: data.index(b"INVITE")]


def test_mpart01_binary_body_is_kept() -> None:
    """3.1.1.11: a multipart body with NUL and bare CR octets is carried unchanged."""
    msg = parse_request("mpart01")
    assert len(msg.body) == 553
    assert b"\x00" in msg.body and b"\r\x01" in msg.body
    assert msg.top_via.has_param("rport") and msg.top_via.rport is None


def test_reason_phrases() -> None:
    """3.1.1.12, 3.1.1.13: UTF-8 and empty reason phrases."""
    unreason = parse(load("unreason"))
    assert isinstance(unreason, Response)
    assert unreason.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    noreason = parse(load("noreason"))
    assert isinstance(noreason, Response)
    assert (noreason.status, noreason.reason) == (100, "")


def test_badbranch_is_not_an_rfc3261_branch() -> None:
    """3.2.1: a branch of just the magic cookie is not treated as an RFC 3261 branch."""
    via = parse_request("badbranch").top_via
    assert via.branch == "z9hG4bK"
    assert not via.rfc3261_branch


def test_unknown_schemes_in_header_fields() -> None:
    """3.3.4: unknown schemes in To, From and Contact parse as opaque URIs."""
    msg = parse_request("unksm2")
    assert msg.to.uri == OtherUri("isbn", "isbn:2983792873")
    assert isinstance(msg.from_.uri, OtherUri) and msg.from_.uri.scheme == "http"
    assert isinstance(msg.contacts[0].uri, OtherUri)


def test_bext01_lists_extensions() -> None:
    """3.3.5: Require and Proxy-Require are readable as lists (the proxy answers 420)."""
    msg = parse_request("bext01")
    assert msg.headers.values("Proxy-Require") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]


def test_zero_max_forwards_cannot_be_decremented() -> None:
    """3.3.11: Max-Forwards 0 parses; a proxy must answer 483 rather than forward."""
    msg = parse_request("zeromf")
    assert msg.max_forwards == 0
    with pytest.raises(LocalProtocolError, match="483"):
        msg.decrement_max_forwards()


def test_contact_parameters_vs_uri_parameters() -> None:
    """3.3.12/3.3.13: without <> the parameter belongs to the Contact, with <> to the URI."""
    (c1,) = parse_request("cparam01").contacts
    assert c1.has_param("unknownparam")
    assert isinstance(c1.uri, SipUri) and not c1.uri.has_param("unknownparam")
    (c2,) = parse_request("cparam02").contacts
    assert not c2.has_param("unknownparam")
    assert isinstance(c2.uri, SipUri) and c2.uri.has_param("unknownparam")


def test_regescrt_keeps_uri_headers() -> None:
    """3.3.14: an escaped header inside a <> Contact URI is legal and kept."""
    (contact,) = parse_request("regescrt").contacts
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.headers == "Route=%3Csip:sip.example.com%3E"


def test_bcast_second_via() -> None:
    """3.3.10: a broadcast address in the second Via is readable for the proxy to refuse."""
    msg = parse(load("bcast"))
    assert msg.vias[1].host == "255.255.255.255"


def test_inv2543_without_max_forwards() -> None:
    """3.4.1: the RFC 2543 INVITE is accepted when Max-Forwards is optional (RFC 3261 s.16.3)
    and refused by the default strict check."""
    data = load("inv2543")
    with pytest.raises(RemoteProtocolError) as info:
        parse(data)
    assert info.value.status_hint == 400
    msg = parse(data, require_max_forwards=False)
    assert isinstance(msg, Request)
    assert msg.top_via.branch is None
    assert msg.from_.tag is None
    assert msg.body.startswith(b"v=0") and msg.body.endswith(b"RTP/AVP 0\r\n")
    assert msg.decrement_max_forwards() == 70
