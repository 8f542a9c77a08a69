"""Refusing new INVITE/REGISTER from their bytes (core/sip/shed.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcs_edge.core.sip.message import Response, parse
from mcs_edge.core.sip.shed import Refusals, shed_fields, top_branch, via_branch

HEAD = (
    "Via: SIP/2.0/WSS a.invalid;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=f1\r\n{to}\r\nCall-ID: k1\r\nCSeq: 1 {method}\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _msg(method: str, to: str = "To: <sip:b@example.com>") -> bytes:
    return (f"{method} sip:b@example.com SIP/2.0\r\n" + HEAD.format(to=to, method=method)).encode()


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


# -- the one-scan fast path: shed_fields + Refusals -------------------------------------------------
REFUSALS = Refusals(503, "Service Unavailable (overload)", 7, "mcs-edge")


@pytest.mark.parametrize(
    ("data", "method"),
    [
        (_msg("INVITE"), b"INVITE"),
        (_msg("REGISTER"), b"REGISTER"),
        (_msg("REGISTER", "To: <sip:b@example.com>;tag=r1"), b"REGISTER"),
        (_msg("INVITE", "t: <sip:b@example.com>"), b"INVITE"),
        (_msg("INVITE", "To: <sip:b@example.com>;tag=x9"), None),  # re-INVITE: within a dialog
        (_msg("INVITE", "TO: <sip:b@example.com> ; TAG = x9"), None),
        (_msg("INVITE", "t:<sip:b@example.com>;tag=x9"), None),
        (_msg("INVITE", "To:\r\n <sip:b@example.com>;tag=x9"), None),  # folded: the parser decides
        (_msg("REGISTER", "To: <sip:b@example.com>\r\n\t;tag=x9"), None),
        (_msg("BYE", "To: <sip:b@example.com>;tag=x9"), None),
        (_msg("BYE"), None),
        (_msg("ACK"), None),
        (_msg("ACK", "To: <sip:b@example.com>;tag=x9"), None),
        (_msg("CANCEL"), None),
        (_msg("OPTIONS"), None),
        (_msg("UPDATE", "To: <sip:b@example.com>;tag=x9"), None),
        (b"SIP/2.0 200 OK\r\n" + HEAD.format(to="To: <sip:b@x>", method="INVITE").encode(), None),
        (b"SIP/2.0 503 x\r\n" + HEAD.format(to="To: <sip:b@x>", method="REGISTER").encode(), None),
        (_msg("INVITE").replace(b"INVITE sip:", b"invite sip:", 1), None),  # not the method token
    ],
)
def test_shed_fields_refuses_only_new_invite_and_register(data: bytes, method: bytes | None) -> None:
    """The fast path refuses initial INVITE and REGISTER only: never a request within a dialog,
    ACK, CANCEL, BYE, another method or a response (RFC 7339 s.5.10.1, RFC 3261 s.21.5.4)."""
    fields = shed_fields(data)
    assert (fields[0] if fields is not None else None) == method


@pytest.mark.parametrize("method", ["INVITE", "REGISTER"])
def test_fast_refusal_echoes_via_from_to_call_id_cseq_and_says_when_to_retry(method: str) -> None:
    """The 503 carries every Via in order, From, To with a tag of ours, Call-ID and CSeq of the
    request (RFC 3261 s.8.2.6), Retry-After and Content-Length: 0; the full parser accepts it."""
    data = _msg(method).replace(b"Call-ID: k1", b"i: k1 ")  # compact form, trailing blank
    fields = shed_fields(data)
    assert fields is not None
    out = REFUSALS.answer(fields, b"e1e1")
    resp = parse(out)
    assert isinstance(resp, Response) and resp.status == 503
    assert resp.headers.get_all("via") == [
        "SIP/2.0/WSS a.invalid;branch=z9hG4bK1",
        "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0",
    ]
    assert resp.headers.get("from") == "<sip:a@example.com>;tag=f1"
    assert resp.headers.get("to") == "<sip:b@example.com>;tag=e1e1"
    assert resp.call_id == "k1" and resp.cseq.method == method and resp.cseq.seq == 1
    assert resp.headers.get("retry-after") == "7"
    assert resp.headers.get("content-length") == "0" and resp.body == b""
    assert via_branch(fields[1][0]) == b"z9hG4bK1"


def test_fast_refusal_keeps_the_to_tag_a_register_already_has() -> None:
    fields = shed_fields(_msg("REGISTER", "To: <sip:b@example.com>;tag=r1"))
    assert fields is not None
    resp = parse(REFUSALS.answer(fields, b"e1e1"))
    assert isinstance(resp, Response) and resp.to.tag == "r1"


@pytest.mark.parametrize("missing", ["Via", "From", "Call-ID", "CSeq"])
@pytest.mark.parametrize("method", ["INVITE", "REGISTER"])
def test_fast_refusal_leaves_a_request_without_a_needed_header_to_the_parser(
    missing: str, method: str
) -> None:
    """No Via, From, Call-ID or CSeq (or an empty one): no valid response can be built from the
    bytes, so the request goes on to the full parser (which answers 400 or drops it)."""
    lines = _msg(method).split(b"\r\n")
    kept = [ln for ln in lines if not ln.startswith(missing.encode() + b":")]
    assert shed_fields(b"\r\n".join(kept)) is None
    emptied = [ln.split(b":", 1)[0] + b": " if ln.startswith(missing.encode() + b":") else ln for ln in lines]
    assert shed_fields(b"\r\n".join(emptied)) is None
    assert shed_fields(_msg(method).replace(b"To: <sip:b@example.com>\r\n", b"")) is None


@given(st.binary(max_size=600))
def test_fast_refusal_never_raises_on_garbage(tail: bytes) -> None:
    """Whatever follows the request line, shed_fields does not raise, and what it accepts gives a 503."""
    for prefix in (b"REGISTER sip:a SIP/2.0\r\n", b"INVITE sip:b SIP/2.0\r\n", b""):
        fields = shed_fields(prefix + tail)
        if fields is not None:
            out = REFUSALS.answer(fields, b"t1")
            assert out.startswith(b"SIP/2.0 503 ") and out.endswith(b"\r\nContent-Length: 0\r\n\r\n")
            via_branch(fields[1][0])


@pytest.mark.parametrize("cut", range(0, len(_msg("INVITE")) + 1, 7))
def test_fast_refusal_never_raises_on_a_truncated_request(cut: int) -> None:
    data = _msg("INVITE")[:cut]
    fields = shed_fields(data)
    if fields is not None:
        assert REFUSALS.answer(fields, b"t1").startswith(b"SIP/2.0 503 ")
