"""Refusing new INVITE/REGISTER from their bytes (core/sip/shed.py)."""

from __future__ import annotations

import pytest

from mcs_edge.core.sip.message import Response, parse
from mcs_edge.core.sip.shed import refusal, sheddable, top_branch

HEAD = (
    "Via: SIP/2.0/WSS a.invalid;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=f1\r\n{to}\r\nCall-ID: k1\r\nCSeq: 1 {method}\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _msg(method: str, to: str = "To: <sip:b@example.com>") -> bytes:
    return (f"{method} sip:b@example.com SIP/2.0\r\n" + HEAD.format(to=to, method=method)).encode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_msg("INVITE"), b"INVITE"),
        (_msg("REGISTER"), b"REGISTER"),
        (_msg("INVITE", "t: <sip:b@example.com>"), b"INVITE"),
        (_msg("INVITE", "To: <sip:b@example.com>;tag=x9"), None),  # re-INVITE: within a dialog
        (_msg("INVITE", "TO: <sip:b@example.com> ; TAG = x9"), None),
        (_msg("INVITE", "To:\r\n <sip:b@example.com>;tag=x9"), None),  # folded: the parser decides
        (_msg("BYE", "To: <sip:b@example.com>;tag=x9"), None),
        (_msg("ACK"), None),
        (_msg("CANCEL"), None),
        (_msg("OPTIONS"), None),
        (b"SIP/2.0 200 OK\r\n" + HEAD.format(to="To: <sip:b@x>", method="INVITE").encode(), None),
    ],
)
def test_only_new_invite_and_register_are_sheddable(data: bytes, expected: bytes | None) -> None:
    """Initial INVITE and REGISTER may be refused; in-dialog requests, ACK, CANCEL, BYE, responses never."""
    assert sheddable(data) == expected


def test_refusal_is_a_valid_503_for_the_request() -> None:
    """The 503 copies every Via, From, To (tag added), Call-ID and CSeq, and says when to retry."""
    data = _msg("INVITE")
    out = refusal(data, 503, "Service Unavailable (overload)", 7, "e1e1", "mcs-edge")
    assert out is not None
    resp = parse(out)
    assert isinstance(resp, Response) and resp.status == 503
    assert resp.headers.get_all("via") == [
        "SIP/2.0/WSS a.invalid;branch=z9hG4bK1",
        "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0",
    ]
    assert resp.to.tag == "e1e1" and resp.call_id == "k1" and resp.cseq.method == "INVITE"
    assert resp.headers.get("retry-after") == "7"


def test_refusal_needs_the_five_headers() -> None:
    """No Call-ID: no response can be built (the full parser will answer 400 instead)."""
    data = _msg("REGISTER").replace(b"Call-ID: k1\r\n", b"")
    assert refusal(data, 503, "x", 5, "t", "s") is None


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (
            b"Via: SIP/2.0/WSS a.invalid;rport;branch=z9hG4bKx1;alias\r\nv: SIP/2.0/UDP b;branch=z9hG4bKy",
            b"z9hG4bKx1",
        ),
        (b"v:SIP/2.0/UDP b ; BRANCH = z9hG4bKc , SIP/2.0/UDP c;branch=z9hG4bKd", b"z9hG4bKc"),
        (b"Via: SIP/2.0/UDP b, SIP/2.0/UDP c;branch=z9hG4bKd", None),  # the top via-parm has none
        (b"From: <sip:a@b>;branch=no", None),
    ],
)
def test_top_branch_reads_the_first_via_parm_only(head: bytes, expected: bytes | None) -> None:
    """The ACK of a refused INVITE is matched by the branch of its top Via, nothing else."""
    data = b"ACK sip:a@b SIP/2.0\r\n" + head + b"\r\nCSeq: 1 ACK\r\n\r\nVia: x;branch=body"
    assert top_branch(data) == expected
