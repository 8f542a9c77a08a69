"""Requests from a client: the loop check (RFC 3261 s.16.3 step 4: a Via of ours in the request is
answered 482) and the server transaction key, both from the top Via the proxy parsed before it
added ``received`` (RFC 3261 s.18.2.1), the other Vias parsed only when there are others.

Pinned here: a Via of ours anywhere (top, a second field, inside a comma list) gets 482 and is
not forwarded; a request whose Vias are all the client's is forwarded; a retransmission (same
branch and sent-by, stamped again) is absorbed by the first request's server transaction, and the
ACK of a non-2xx final answer is matched to it (RFC 3261 s.17.2.1) rather than forwarded.
"""

from __future__ import annotations

import pytest
from helpers.sipcore import Tenant, one_tenant_proxy

from mcs_edge.core.sip.message import Request, parse
from mcs_edge.core.sip.proxy import ProxySettings, SipProxy, ToBackend, ToFlow
from mcs_edge.core.sip.routing import stamp_received
from mcs_edge.core.sip.transaction import server_key

PBX = ("127.0.0.1", 5060)
DOMAIN = "example.com"
T = Tenant("t1")
OURS_BACKEND = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKedge1;rport"
OURS_CLIENT = "SIP/2.0/WSS 127.0.0.1:443;branch=z9hG4bKedge2"
CLIENT = "SIP/2.0/WSS c1.invalid;branch=z9hG4bKua1"


def _proxy() -> tuple[SipProxy, int]:
    proxy = one_tenant_proxy(T, DOMAIN, PBX, ProxySettings("127.0.0.1", 443, "127.0.0.1", 5070))
    return proxy, proxy.open_flow(T, "wss", ("127.0.0.1", 40001), 0.0).id


def _invite(vias: list[str], method: str = "INVITE", extra: str = "") -> bytes:
    via_lines = "".join(f"Via: {v}\r\n" for v in vias)
    return (
        f"{method} sip:pbx@{DOMAIN} SIP/2.0\r\n{via_lines}Max-Forwards: 70\r\n"
        f"From: <sip:u1@{DOMAIN}>;tag=t1\r\nTo: <sip:pbx@{DOMAIN}>{extra}\r\nCall-ID: c1\r\n"
        f"CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _actions(proxy: SipProxy) -> tuple[list[bytes], list[bytes]]:
    up: list[bytes] = []
    down: list[bytes] = []
    while (action := proxy.next_action()) is not None:
        if isinstance(action, ToBackend):
            up.append(action.data)
        elif isinstance(action, ToFlow):
            down.append(action.data)
    return up, down


@pytest.mark.parametrize(
    "vias",
    [
        [f"{OURS_BACKEND}"],
        [CLIENT, OURS_BACKEND],
        [f"{CLIENT}, {OURS_BACKEND}"],
        [CLIENT, f"SIP/2.0/WSS proxy.invalid;branch=z9hG4bKp1, {OURS_CLIENT}"],
    ],
    ids=["top", "second field", "comma list", "third in a list"],
)
def test_a_via_of_ours_anywhere_is_a_loop(vias: list[str]) -> None:
    proxy, flow = _proxy()
    proxy.receive_from_client(flow, _invite(vias), 1.0)
    up, down = _actions(proxy)
    assert up == []
    assert any(d.startswith(b"SIP/2.0 482 ") for d in down)


@pytest.mark.parametrize(
    "vias",
    [
        [CLIENT],
        [CLIENT, "SIP/2.0/WSS proxy.invalid;branch=z9hG4bKp1"],
        [f"{CLIENT}, SIP/2.0/UDP 10.9.9.9:5070;branch=z9hG4bKx"],
    ],
    ids=["one", "two fields", "comma list"],
)
def test_a_request_without_our_via_is_forwarded(vias: list[str]) -> None:
    proxy, flow = _proxy()
    proxy.receive_from_client(flow, _invite(vias), 1.0)
    up, down = _actions(proxy)
    assert len(up) == 1 and up[0].startswith(b"INVITE ")
    assert not any(d.startswith(b"SIP/2.0 482 ") for d in down)


def test_a_retransmission_and_the_ack_of_a_failure_match_the_first_request() -> None:
    proxy, flow = _proxy()
    proxy.receive_from_client(flow, _invite([CLIENT]), 1.0)
    (fwd,), _down = _actions(proxy)
    proxy.receive_from_client(flow, _invite([CLIENT]), 1.1)  # retransmitted, stamped again
    assert _actions(proxy)[0] == []  # absorbed, not forwarded again
    ours = next(line for line in fwd.split(b"\r\n") if line.startswith(b"Via: "))
    busy = (
        b"SIP/2.0 486 Busy Here\r\n" + ours + b"\r\nVia: " + CLIENT.encode() + b";received=127.0.0.1\r\n"
        b"From: <sip:u1@example.com>;tag=t1\r\nTo: <sip:pbx@example.com>;tag=p1\r\nCall-ID: c1\r\n"
        b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    proxy.receive_from_backend(busy, PBX, "udp", 1.2)
    up, down = _actions(proxy)
    assert any(d.startswith(b"SIP/2.0 486 ") for d in down)
    proxy.receive_from_client(flow, _invite([CLIENT], "ACK", ";tag=p1"), 1.3)
    up, down = _actions(proxy)
    assert up == [] and down == []  # the ACK of the 486 ends at our server transaction


def test_the_key_from_the_received_top_via_is_the_stamped_requests_key() -> None:
    for via in (CLIENT, "SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK77;rport", "SIP/2.0/UDP h;branch=old2543"):
        req = parse(_invite([via]))
        assert isinstance(req, Request)
        top = req.top_via
        before = server_key(req)
        stamp_received(req, top, ("192.0.2.1", 40000))
        assert server_key(req, top) == server_key(req) == (before if top.rfc3261_branch else server_key(req))
