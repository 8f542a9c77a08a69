"""Relaying a PBX's response: our top Via removed, every other byte as the PBX wrote it.

The relay removes our Via with ``Headers.pop_first_value`` (no parse of the removed element; the
transaction layer is given the top Via the proxy parsed once). These tests pin the bytes: over a
table of responses (REGISTER 200 with Contacts, challenges, INVITE 1xx/2xx with SDP, 4xx/5xx/6xx,
several Vias in one or several fields, compact names, folded lines) the result is the same as with
``pop_via``, and the proxy relays exactly the PBX's message minus our Via.
"""

from __future__ import annotations

import re
import secrets

import pytest
from helpers.sipcore import Tenant, one_tenant_proxy

from mcs_edge.core.sip.message import Response, parse
from mcs_edge.core.sip.proxy import ProxySettings, SipProxy, ToBackend, ToFlow

OURS = "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKedge1"
CLIENT = "Via: SIP/2.0/WSS c1.invalid;branch=z9hG4bKua1;received=127.0.0.1;rport=40001"
SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
DIALOG = "From: <sip:u1@example.com>;tag=t1\r\nTo: <sip:pbx@example.com>;tag=p1\r\nCall-ID: c1\r\n"


def _response(start: str, vias: str, rest: str, body: bytes = b"") -> bytes:
    return f"{start}\r\n{vias}{rest}Content-Length: {len(body)}\r\n\r\n".encode() + body


TABLE = {
    "register 200 contacts": _response(
        "SIP/2.0 200 OK",
        f"{OURS}\r\n{CLIENT}\r\n",
        "From: <sip:u1@example.com>;tag=t1\r\nTo: <sip:u1@example.com>;tag=p1\r\nCall-ID: r1\r\n"
        "CSeq: 2 REGISTER\r\nContact: <sip:u1@c1.invalid;transport=ws>;expires=600, "
        "<sip:u1@c2.invalid;transport=ws>;expires=30\r\nExpires: 600\r\nPath: <sip:edge.invalid;lr>\r\n",
    ),
    "401 challenge": _response(
        "SIP/2.0 401 Unauthorized",
        f"{OURS}\r\n{CLIENT}\r\n",
        "From: <sip:u1@example.com>;tag=t1\r\nTo: <sip:u1@example.com>;tag=p1\r\nCall-ID: r1\r\n"
        'CSeq: 1 REGISTER\r\nWWW-Authenticate: Digest realm="example.com", nonce="abc", algorithm=MD5\r\n',
    ),
    "407 challenge": _response(
        "SIP/2.0 407 Proxy Authentication Required",
        f"{OURS}\r\n{CLIENT}\r\n",
        f"{DIALOG}CSeq: 1 INVITE\r\n"
        'Proxy-Authenticate: Digest realm="example.com", nonce="n1", qop="auth"\r\n',
    ),
    "180 ringing": _response(
        "SIP/2.0 180 Ringing",
        f"{OURS}\r\n{CLIENT}\r\n",
        f"{DIALOG}CSeq: 1 INVITE\r\nContact: <sip:pbx@10.0.0.9>\r\n",
    ),
    "183 with sdp": _response(
        "SIP/2.0 183 Session Progress",
        f"{OURS}\r\n{CLIENT}\r\n",
        f"{DIALOG}CSeq: 1 INVITE\r\nContact: <sip:pbx@10.0.0.9>\r\nContent-Type: application/sdp\r\n",
        SDP,
    ),
    "200 invite sdp record-route": _response(
        "SIP/2.0 200 OK",
        f"{OURS}\r\n{CLIENT}\r\n",
        f"Record-Route: <sip:10.0.0.9;lr>\r\n{DIALOG}CSeq: 1 INVITE\r\nContact: <sip:pbx@10.0.0.9>\r\n"
        "Content-Type: application/sdp\r\n",
        SDP,
    ),
    "486 busy": _response("SIP/2.0 486 Busy Here", f"{OURS}\r\n{CLIENT}\r\n", f"{DIALOG}CSeq: 1 INVITE\r\n"),
    "503 retry-after": _response(
        "SIP/2.0 503 Service Unavailable",
        f"{OURS}\r\n{CLIENT}\r\n",
        f"{DIALOG}CSeq: 1 INVITE\r\nRetry-After: 5\r\n",
    ),
    "603 decline": _response("SIP/2.0 603 Decline", f"{OURS}\r\n{CLIENT}\r\n", f"{DIALOG}CSeq: 1 INVITE\r\n"),
    "vias in one field": _response(
        "SIP/2.0 200 OK",
        f"{OURS}, {CLIENT[5:]}\r\n",
        f"{DIALOG}CSeq: 1 INVITE\r\nContact: <sip:pbx@10.0.0.9>\r\n",
    ),
    "three vias": _response(
        "SIP/2.0 486 Busy Here",
        f"{OURS}\r\n{CLIENT}\r\nVia: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKx\r\n",
        f"{DIALOG}CSeq: 1 INVITE\r\n",
    ),
    "compact names": _response(
        "SIP/2.0 180 Ringing",
        f"v: {OURS[5:]}\r\nv: {CLIENT[5:]}\r\n",
        "f: <sip:u1@example.com>;tag=t1\r\nt: <sip:pbx@example.com>;tag=p1\r\ni: c1\r\nCSeq: 1 INVITE\r\n"
        "m: <sip:pbx@10.0.0.9>\r\n",
    ),
    "folded lines": _response(
        "SIP/2.0 200 OK",
        f"{OURS}\r\nVia:\r\n SIP/2.0/WSS c1.invalid\r\n\t;branch=z9hG4bKua1\r\n",
        f"{DIALOG}CSeq: 1 INVITE\r\nSubject: a\r\n  folded subject\r\n",
    ),
    "folded top via": _response(
        "SIP/2.0 200 OK",
        "Via: SIP/2.0/UDP 127.0.0.1:5070\r\n ;branch=z9hG4bKedge1\r\n" + f"{CLIENT}\r\n",
        f"{DIALOG}CSeq: 1 INVITE\r\n",
    ),
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_removing_the_top_via_writes_the_same_bytes_as_pop_via(name: str) -> None:
    resp = parse(TABLE[name])
    assert isinstance(resp, Response)
    before, after = resp.copy(), resp.copy()
    before.pop_via()
    after.headers.pop_first_value("via")
    assert after.serialize() == before.serialize()
    assert after.top_via == parse(TABLE[name]).vias[1]


@pytest.mark.parametrize("status", [180, 183, 200, 486, 503, 603])
@pytest.mark.parametrize("compact", [False, True])
def test_the_proxy_relays_the_pbx_answer_minus_its_own_via(status: int, compact: bool) -> None:
    tenant = Tenant("t")
    proxy: SipProxy = one_tenant_proxy(
        tenant, "example.com", ("127.0.0.1", 5060), ProxySettings("127.0.0.1", 443, "127.0.0.1", 5070)
    )
    flow = proxy.open_flow(tenant, "wss", ("127.0.0.1", 40001), 0.0).id
    invite = (
        b"INVITE sip:pbx@example.com SIP/2.0\r\nVia: SIP/2.0/WSS c1.invalid;branch=z9hG4bKua1\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:u1@example.com>;tag=t1\r\nTo: <sip:pbx@example.com>\r\n"
        b"Call-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:u1@c1.invalid;transport=ws;ob>\r\nContent-Length: 0\r\n\r\n"
    )
    proxy.receive_from_client(flow, invite, 1.0)
    sent = [a.data for a in proxy.drain() if isinstance(a, ToBackend)]
    upstream = next(d for d in sent if d.startswith(b"INVITE"))
    vias = re.findall(rb"(?m)^Via: .*\r\n", upstream)
    assert len(vias) == 2  # ours on top, the client's (stamped) below
    if compact:
        vias = [b"v: " + v[5:] for v in vias]
    body = SDP if status < 300 and status != 180 else b""
    extra = b"Content-Type: application/sdp\r\n" if body else b""
    answer = (
        f"SIP/2.0 {status} Answer {secrets.token_hex(2)}\r\n".encode()
        + b"".join(vias)
        + b"From: <sip:u1@example.com>;tag=t1\r\nTo: <sip:pbx@example.com>;tag=p1\r\nCall-ID: c1\r\n"
        + b"CSeq: 1 INVITE\r\nContact: <sip:pbx@127.0.0.1:5060>\r\nX-Pbx: kept as written\r\n"
        + extra
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    proxy.receive_from_backend(answer, ("127.0.0.1", 5060), "udp", 1.1)
    relayed = [a.data for a in proxy.drain() if isinstance(a, ToFlow) and a.data.startswith(b"SIP/")]
    assert relayed == [answer.replace(vias[0], b"", 1)]
