"""The proxy core toward tcp:/tls: PBXs: transport in Via, Record-Route and Path; unsendable requests get 503."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from mcs_edge.core.sip.message import Request, parse
from mcs_edge.core.sip.proxy import ProxySettings, SipProxy, ToBackend, ToFlow


@dataclass(frozen=True)
class Tenant:
    id: str
    path: bool = True


def _proxy(transport: str) -> tuple[SipProxy, int]:
    tenant = Tenant("rossi")
    proxy = SipProxy(
        ProxySettings(
            public_host="203.0.113.10", public_port=443, backend_host="10.0.0.5", backend_port=5070
        ),
        tenant_for_domain={"rossi.example.com": tenant}.get,
        backend_of=lambda t: (transport, ("10.1.0.10", 5061)),
        tenants_at=lambda ip: [tenant] if ip == "10.1.0.10" else [],
        random_bytes=secrets.token_bytes,
    )
    return proxy, proxy.open_flow(tenant, "wss", ("198.51.100.7", 40000), 0.0).id


def _req(method: str, branch: str = "z9hG4bKa1") -> bytes:
    return (
        f"{method} sip:200@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@rossi.example.com>;tag=c1\r\nTo: <sip:200@rossi.example.com>\r\n"
        f"Call-ID: call1\r\nCSeq: 1 {method}\r\nContact: <sip:alice@x.invalid;transport=ws>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_invite_toward_a_tls_pbx_names_tls_in_via_and_record_route() -> None:
    """Via SIP/2.0/TLS and a PBX-side Record-Route with transport=tls: the PBX reaches us the same way."""
    proxy, flow = _proxy("tls")
    proxy.receive_from_client(flow, _req("INVITE"), 1.0)
    sent = [a for a in proxy.drain() if isinstance(a, ToBackend)]
    assert len(sent) == 1 and sent[0].transport == "tls" and sent[0].addr == ("10.1.0.10", 5061)
    msg = parse(sent[0].data)
    assert isinstance(msg, Request)
    assert (msg.headers.first_value("via") or "").startswith("SIP/2.0/TLS 10.0.0.5:5070;")
    assert "<sip:10.0.0.5:5070;transport=tls;lr;r2=on>" in (msg.headers.get("record-route") or "")


def test_register_path_names_the_transport() -> None:
    """The Path toward a tcp: PBX carries transport=tcp (a udp: PBX gets none, as before)."""
    for transport, expected in (("tcp", ";transport=tcp;lr;ob>"), ("udp", ":5070;lr;ob>")):
        proxy, flow = _proxy(transport)
        proxy.receive_from_client(flow, _req("REGISTER"), 1.0)
        sent = [a for a in proxy.drain() if isinstance(a, ToBackend)]
        assert (parse(sent[0].data).headers.get("path") or "").endswith(expected)


def test_backend_failed_answers_pending_requests_503_at_once() -> None:
    """Requests that could not be sent get 503 + Retry-After now, not 408 at Timer B."""
    proxy, flow = _proxy("tcp")
    proxy.receive_from_client(flow, _req("INVITE"), 1.0)
    proxy.drain()
    assert proxy.backend_failed("rossi", "connection refused", 1.1) == 1
    out = [parse(a.data) for a in proxy.drain() if isinstance(a, ToFlow)]
    assert [m.status for m in out] == [503]  # type: ignore[union-attr]
    assert out[0].headers.get("retry-after") == "5"
    assert proxy.backend_failed("rossi", "again", 1.2) == 0  # nothing left pending
