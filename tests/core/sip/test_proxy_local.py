"""The proxy core's LocalService hook (used by the echo service): claimed requests never reach a PBX."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from mcs_edge.core.sip.message import Request, Response, parse
from mcs_edge.core.sip.proxy import Flow, ProxySettings, SipProxy, ToBackend, ToFlow


@dataclass(frozen=True)
class Tenant:
    id: str
    path: bool = True


class Local:
    """Claims requests to user ``echo``; answers 200 (INVITE with a fixed To tag); records ACKs."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.closed: list[int] = []

    def claims(self, flow: Flow, request: Request) -> bool:
        return "sip:echo@" in request.uri or request.to.tag == "local1"

    def request(self, flow: Flow, request: Request, now: float) -> Response | None:
        self.seen.append(request.method)
        if request.method == "ACK":
            return None
        return Response.for_request(request, 200, "OK", to_tag="local1")

    def on_flow_closed(self, flow_id: int, now: float) -> None:
        self.closed.append(flow_id)


def _proxy() -> tuple[SipProxy, Local, int]:
    tenant = Tenant("rossi")
    proxy = SipProxy(
        ProxySettings(
            public_host="203.0.113.10", public_port=443, backend_host="10.0.0.5", backend_port=5060
        ),
        tenant_for_domain={"rossi.example.com": tenant}.get,
        backend_of=lambda t: ("udp", ("10.1.0.10", 5060)),
        tenants_at=lambda ip: [tenant] if ip == "10.1.0.10" else [],
        random_bytes=secrets.token_bytes,
    )
    local = Local()
    proxy.local = local
    flow = proxy.open_flow(tenant, "wss", ("198.51.100.7", 40000), 0.0).id
    return proxy, local, flow


def _req(
    method: str, user: str = "echo", branch: str = "z9hG4bKa1", cseq: int = 1, to_tag: str = ""
) -> bytes:
    to = f"<sip:{user}@rossi.example.com>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:{user}@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@rossi.example.com>;tag=c1\r\nTo: {to}\r\n"
        f"Call-ID: call1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _out(proxy: SipProxy) -> tuple[list[Any], list[Any]]:
    actions = proxy.drain()
    return [a for a in actions if isinstance(a, ToFlow)], [a for a in actions if isinstance(a, ToBackend)]


def test_claimed_invite_ack_and_bye_are_answered_locally() -> None:
    """INVITE (100 then the local 200), ACK of the 2xx and BYE go to the local service, nothing to the PBX."""
    proxy, local, flow = _proxy()
    proxy.receive_from_client(flow, _req("INVITE"), 1.0)
    to_flow, to_backend = _out(proxy)
    assert [parse(a.data).status for a in to_flow] == [100, 200]  # type: ignore[union-attr]
    assert to_backend == []
    proxy.receive_from_client(flow, _req("ACK", branch="z9hG4bKa2", to_tag="local1"), 1.1)
    proxy.receive_from_client(flow, _req("BYE", branch="z9hG4bKa3", cseq=2, to_tag="local1"), 1.2)
    to_flow, to_backend = _out(proxy)
    assert [parse(a.data).status for a in to_flow] == [200] and to_backend == []  # type: ignore[union-attr]
    assert local.seen == ["INVITE", "ACK", "BYE"]
    assert proxy.counters["sip_requests_local"] == 2


def test_unclaimed_requests_still_go_to_the_pbx() -> None:
    """A call to another user is forwarded as before."""
    proxy, local, flow = _proxy()
    proxy.receive_from_client(flow, _req("INVITE", user="200"), 1.0)
    _to_flow, to_backend = _out(proxy)
    assert len(to_backend) == 1 and local.seen == []


def test_cancel_after_a_local_answer_gets_200_and_send_to_flow_uses_our_via() -> None:
    """CANCEL matching a locally answered INVITE is answered 200; requests the edge sends carry our Via."""
    proxy, local, flow = _proxy()
    proxy.receive_from_client(flow, _req("INVITE"), 1.0)
    _out(proxy)
    proxy.receive_from_client(flow, _req("CANCEL"), 1.1)
    to_flow, _ = _out(proxy)
    assert [parse(a.data).status for a in to_flow] == [200]  # type: ignore[union-attr]
    bye = Request("BYE", "sip:alice@x.invalid;transport=ws")
    for name, value in (
        ("Max-Forwards", "70"),
        ("From", "<sip:echo@rossi.example.com>;tag=local1"),
        ("To", "<sip:alice@rossi.example.com>;tag=c1"),
        ("Call-ID", "call1"),
        ("CSeq", "1 BYE"),
    ):
        bye.headers.add(name, value)
    assert proxy.send_to_flow(flow, bye, 2.0)
    to_flow, _ = _out(proxy)
    sent = parse(to_flow[0].data)
    assert isinstance(sent, Request) and sent.top_via.sent_by[0] == "203.0.113.10"
    assert not proxy.send_to_flow(99, bye, 2.0)
    proxy.close_flow(flow, 3.0)
    assert local.closed == [flow]
