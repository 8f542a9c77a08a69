"""RFC 3261 s.18.2.1 / RFC 3581 s.4: the top Via of a request notes where it came from."""

from __future__ import annotations

import pytest

from mcs_edge.core.sip.message import Request, parse
from mcs_edge.core.sip.routing import stamp_received


def _request(via: str) -> Request:
    msg = parse(
        (
            f"OPTIONS sip:a@example.com SIP/2.0\r\nVia: {via}\r\nVia: SIP/2.0/UDP second.example.com\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n"
            "Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Request)
    return msg


@pytest.mark.parametrize(
    ("via", "peer", "stamped"),
    [
        # the usual case: received appended to the Via as the client wrote it
        (
            "SIP/2.0/WSS c1.invalid;branch=z9hG4bKa",
            "192.0.2.7",
            "SIP/2.0/WSS c1.invalid;branch=z9hG4bKa;received=192.0.2.7",
        ),
        (
            "SIP/2.0/WSS c1.invalid;branch=z9hG4bKa, SIP/2.0/WSS other.invalid;branch=z9hG4bKb",
            "2001:db8::7",
            "SIP/2.0/WSS c1.invalid;branch=z9hG4bKa;received=[2001:db8::7]",
        ),
        # rport without a value is filled in (RFC 3581), received replaced when already there
        (
            "SIP/2.0/UDP c1.example.com;rport;branch=z9hG4bKa",
            "192.0.2.7",
            "SIP/2.0/UDP c1.example.com;rport=40000;branch=z9hG4bKa;received=192.0.2.7",
        ),
        (
            "SIP/2.0/UDP c1.example.com;received=198.51.100.1;branch=z9hG4bKa",
            "192.0.2.7",
            "SIP/2.0/UDP c1.example.com;received=192.0.2.7;branch=z9hG4bKa",
        ),
        # sent-by is the source already: nothing to note
        (
            "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa",
            "192.0.2.7",
            "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa",
        ),
    ],
)
def test_top_via_notes_the_source(via: str, peer: str, stamped: str) -> None:
    req = _request(via)
    stamp_received(req, req.top_via, (peer, 40000))
    assert req.headers.first_value("via") == stamped
    assert req.vias[-1].host == "second.example.com"  # only the top element changes
    assert len(req.vias) == (3 if "other.invalid" in via else 2)
