"""Binding a SIP/TLS connection without SNI by its first message (mcs_edge.core.sip.binding)."""

from __future__ import annotations

from mcs_edge.core.sip.binding import ByDomain, ByFlowToken, binding_of
from mcs_edge.core.sip.message import Limits

LIMITS = Limits()


def _msg(start: str, *headers: str) -> bytes:
    method = start.split()[0] if not start.startswith("SIP/") else "INVITE"
    base = ["Via: SIP/2.0/TLS 192.0.2.7:5061;branch=z9hG4bKx", "From: <sip:a@x>;tag=1", "Call-ID: c"]
    base.append(f"CSeq: 1 {method}")
    return ("\r\n".join([start, *base, *headers, "Content-Length: 0"]) + "\r\n\r\n").encode()


def test_a_register_binds_by_its_domain() -> None:
    """REGISTER sip:Rossi.Example.com -> the domain (lower case)."""
    data = _msg("REGISTER sip:Rossi.Example.com;transport=tls SIP/2.0", "To: <sip:alice@rossi.example.com>")
    assert binding_of(data, LIMITS) == ByDomain("rossi.example.com")


def test_an_in_dialog_request_binds_by_the_flow_token_in_its_route() -> None:
    """ACK/BYE on a new connection: the user part of our Record-Route entry."""
    data = _msg(
        "BYE sip:200@10.1.0.10 SIP/2.0",
        "To: <sip:200@rossi.example.com>;tag=p",
        "Route: <sip:tok123@203.0.113.10:5061;transport=tls;lr>, <sip:10.0.0.5:5070;lr>",
    )
    assert binding_of(data, LIMITS) == ByFlowToken("tok123", "x")  # From's domain: the fallback


def test_anything_else_binds_nothing() -> None:
    """An out-of-dialog INVITE, a response, an in-dialog request without a token, garbage: None."""
    invite = _msg("INVITE sip:200@rossi.example.com SIP/2.0", "To: <sip:200@rossi.example.com>")
    response = _msg("SIP/2.0 200 OK", "To: <sip:200@rossi.example.com>;tag=p")
    no_token = _msg("BYE sip:200@x SIP/2.0", "To: <sip:200@x>;tag=p", "Route: <sip:10.0.0.5;lr>")
    for data in (invite, response, no_token, b"\x16\x03\x01garbage\r\n\r\n"):
        assert binding_of(data, LIMITS) is None
