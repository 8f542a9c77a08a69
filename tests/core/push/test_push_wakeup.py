"""RFC 8599 push bindings and wake-up through the proxy core (virtual time; providers are the adapter's)."""

from __future__ import annotations

import uuid
from dataclasses import replace

from core.media.test_anchor import PBX_SIP, PRIVATE, Harness, _lines, _value, status

from mcs_edge.core.push.bindings import PushKey, PushParams, PushRegistry, feature_caps, push_params
from mcs_edge.core.sip.headers import parse_name_addr
from mcs_edge.core.sip.proxy import CloseFlow, Push, ToBackend, ToFlow

INSTANCE = "<urn:uuid:00000000-0000-4000-8000-00000000a19e>"
TOKEN = "a" * 64
TOPIC = "ABCD.com.example.team.voip"
SENT: list[str] = []  # what the last REGISTER's connection received


def _harness(providers: frozenset[str] = frozenset({"apns", "fcm"})) -> Harness:
    h = Harness()
    h.proxy.push_providers = lambda tenant: providers
    return h


def _register(h: Harness, flow: int, provider: str | None = "apns", expires: int = 300) -> tuple[int, str]:
    pn = f";pn-provider={provider};pn-prid={TOKEN};pn-param={TOPIC}" if provider else ""
    text = (
        "REGISTER sip:rossi.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:10]}\r\nMax-Forwards: 70\r\n"
        "From: <sip:alice@rossi.example.com>;tag=r1\r\nTo: <sip:alice@rossi.example.com>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 REGISTER\r\n"
        f'Contact: <sip:alice@x.invalid;transport=tls{pn}>;reg-id=1;+sip.instance="{INSTANCE}";expires={expires}\r\n'
        "Content-Length: 0\r\n\r\n"
    )
    h.proxy.receive_from_client(flow, text.encode(), h.now)
    req = next(a.data.decode() for a in h.proxy.drain() if isinstance(a, ToBackend))
    vias = "".join(f"{line}\r\n" for line in _lines(req, "Via"))
    reply = (
        f"SIP/2.0 200 OK\r\n{vias}From: {_value(req, 'From')}\r\nTo: {_value(req, 'To')};tag=p\r\n"
        f"Call-ID: {_value(req, 'Call-ID')}\r\nCSeq: 1 REGISTER\r\nContact: {_value(req, 'Contact')}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    h.proxy.receive_from_backend(reply.encode(), PBX_SIP, "udp", h.now)
    out = [a.data.decode() for a in h.proxy.drain() if isinstance(a, ToFlow) and a.flow_id == flow]
    SENT[:] = out
    return status(out)[0], out[0]


def _invite(h: Harness, route: str, branch: str) -> str:
    return (
        "INVITE sip:alice@x.invalid;transport=tls SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PBX_SIP[0]}:5060;branch={branch}\r\nMax-Forwards: 70\r\n"
        f"Route: {route}\r\nFrom: <sip:200@rossi.example.com>;tag=p9\r\nTo: <sip:alice@rossi.example.com>\r\n"
        "Call-ID: push-call\r\nCSeq: 1 INVITE\r\nContact: <sip:pbx@10.1.0.10:5060>\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def _pbx(h: Harness, text: str) -> tuple[list[str], dict[int, list[str]], list[Push]]:
    h.proxy.receive_from_backend(text.encode(), PBX_SIP, "udp", h.now)
    backend: list[str] = []
    flows: dict[int, list[str]] = {}
    pushes: list[Push] = []
    for a in h.proxy.drain():
        if isinstance(a, ToBackend):
            backend.append(a.data.decode())
        elif isinstance(a, ToFlow):
            flows.setdefault(a.flow_id, []).append(a.data.decode())
        elif isinstance(a, Push):
            pushes.append(a)
    return backend, flows, pushes


def _asleep(h: Harness, provider: str = "apns") -> tuple[str, list[Push], list[str]]:
    """The app registered with push parameters, then its connection closed; the PBX calls it."""
    flow = h.flow()
    code, ok = _register(h, flow, provider)
    assert code == 200 and '+sip.pns="apns","fcm"' in _value(ok, "Feature-Caps")
    route = f"<sip:{h.proxy.flows[flow].token}@{PRIVATE}:5060;lr;ob>"
    h.proxy.close_flow(flow, h.now)
    h.proxy.drain()
    backend, _flows, pushes = _pbx(h, _invite(h, route, "z9hG4bKpush1"))
    return route, pushes, backend


def test_push_params_and_feature_caps_apns_fcm() -> None:
    """pn-* parameters are read from the Contact URI; malformed ones are a clean None; Feature-Caps lists providers and the PURR."""
    uri = parse_name_addr(f"<sip:a@x.invalid;pn-provider=apns;pn-prid={TOKEN};pn-param={TOPIC}>").uri
    assert push_params(uri) == PushParams("apns", TOKEN, TOPIC)
    assert push_params(parse_name_addr("<sip:a@x.invalid;pn-provider=fcm>").uri) is None
    assert push_params(parse_name_addr(f"<sip:a@x.invalid;pn-provider=fcm;pn-prid={'x' * 600}>").uri) is None
    assert feature_caps({"fcm", "apns"}, "p1") == '*;+sip.pns="apns","fcm";+sip.pnspurr="p1"'


def test_registry_refresh_expiry_apns() -> None:
    """A binding is refreshed in place (same PURR), found by token and PURR, and removed at expiry."""
    reg = PushRegistry()
    key = PushKey("rossi", "sip:alice@rossi.example.com", "urn:uuid:1")
    b = reg.register(key, PushParams("apns", "t1", "topic"), "tok1", 100.0, "purr1")
    assert b is not None
    again = reg.register(key, PushParams("apns", "t2", "topic"), "tok2", 200.0, "purr2")
    assert again is b and b.purr == "purr1" and b.params.prid == "t2"
    assert reg.by_token("tok1") is b and reg.by_token("tok2") is b and reg.by_purr("purr1") is b
    assert list(reg.expire(150.0)) == [] and reg.get_timer() == 200.0
    assert [x.key for x in reg.expire(200.0)] == [key] and len(reg) == 0 and reg.by_token("tok1") is None


def test_apns_wake_up_delivers_the_held_invite_to_the_new_connection() -> None:
    """The gone app's INVITE is held (180 to the PBX), a push is requested; its new REGISTER releases it there."""
    h = _harness()
    _route, pushes, backend = _asleep(h)
    assert [p.provider for p in pushes] == ["apns"] and pushes[0].prid == TOKEN and pushes[0].param == TOPIC
    assert sorted(status(backend)) == [100, 180]
    h.now += 2.0
    h.proxy.push_result(pushes[0], "sent", h.now)
    new = h.flow()
    h.proxy.receive_from_client(new, b"", h.now)
    code, _ok = _register(h, new)
    assert code == 200
    # the INVITE goes to the new connection right after the REGISTER's 2xx, with its flow token
    assert [m.split(" ", 1)[0] for m in SENT] == ["SIP/2.0", "INVITE"]
    assert h.proxy.flows[new].token in SENT[1]
    assert h.proxy.counters["push_calls_delivered"] == 1
    assert h.proxy.wake_latency.count == 1 and h.proxy.wake_latency.sum == 2.0


def test_fcm_wake_up_times_out_with_480_and_a_reason() -> None:
    """Nobody comes back within push.wait: 480 with a Reason, counted."""
    h = _harness()
    _route, pushes, _backend = _asleep(h, "fcm")
    assert pushes[0].provider == "fcm"
    h.now = 15.0
    h.proxy.handle_timer(h.now)
    backend = [a.data.decode() for a in h.proxy.drain() if isinstance(a, ToBackend)]
    assert status(backend) == [480] and "Push wake-up timed out" in _value(backend[0], "Reason")
    assert h.proxy.counters["push_calls_lost_timeout"] == 1 and len(h.proxy.wakes) == 0


def test_apns_cancel_during_the_wait() -> None:
    """CANCEL of a held INVITE: 200 to the CANCEL, 487 to the INVITE; a later REGISTER forwards nothing."""
    h = _harness()
    _route, _pushes, _backend = _asleep(h)
    cancel = (
        "CANCEL sip:alice@x.invalid;transport=tls SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PBX_SIP[0]}:5060;branch=z9hG4bKpush1\r\nMax-Forwards: 70\r\n"
        "From: <sip:200@rossi.example.com>;tag=p9\r\nTo: <sip:alice@rossi.example.com>\r\n"
        "Call-ID: push-call\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    )
    backend, _flows, _ = _pbx(h, cancel)
    assert sorted(status(backend)) == [200, 487]
    new = h.flow()
    assert _register(h, new)[0] == 200
    assert "push_calls_delivered" not in h.proxy.counters and len(h.proxy.wakes) == 0


def test_apns_bad_token_drops_the_binding_and_refuses_the_call() -> None:
    """The provider says the device token is invalid: the binding goes, the PBX gets 480 at once."""
    h = _harness()
    route, pushes, _backend = _asleep(h)
    h.proxy.push_result(pushes[0], "bad_token", h.now)
    backend = [a.data.decode() for a in h.proxy.drain() if isinstance(a, ToBackend)]
    assert status(backend) == [480] and len(h.proxy.push_registry) == 0
    # the next call is the old behaviour: 430, no push
    backend, _flows, pushes = _pbx(h, _invite(h, route, "z9hG4bKpush2").replace("push-call", "call-2"))
    assert pushes == [] and 430 in status(backend)


def test_clients_without_push_parameters_are_unchanged_fcm() -> None:
    """No pn-provider, or push off for the tenant: no Feature-Caps, a gone flow gets 430, no push."""
    for providers, provider in ((frozenset({"apns", "fcm"}), None), (frozenset(), "fcm")):
        h = _harness(providers)
        flow = h.flow()
        code, ok = _register(h, flow, provider)
        assert code == 200 and "Feature-Caps" not in ok
        route = f"<sip:{h.proxy.flows[flow].token}@{PRIVATE}:5060;lr;ob>"
        h.proxy.close_flow(flow, h.now)
        h.proxy.drain()
        backend, _flows, pushes = _pbx(h, _invite(h, route, "z9hG4bKnp1"))
        assert pushes == [] and 430 in status(backend)


def test_apns_unregister_removes_the_binding_and_other_provider_is_not_advertised() -> None:
    """expires=0 removes the binding; a provider the tenant lacks gets no binding and only the configured ones advertised."""
    h = _harness()
    flow = h.flow()
    assert _register(h, flow)[0] == 200 and len(h.proxy.push_registry) == 1
    assert _register(h, flow, expires=0)[0] == 200 and len(h.proxy.push_registry) == 0
    h2 = _harness(frozenset({"fcm"}))
    f2 = h2.flow()
    _code, ok = _register(h2, f2, "apns")
    assert _value(ok, "Feature-Caps") == '*;+sip.pns="fcm"' and len(h2.proxy.push_registry) == 0
    assert not any(isinstance(a, CloseFlow) for a in h2.proxy.drain())


def test_apns_stale_connection_is_woken_like_a_gone_one() -> None:
    """push.stale_after: a connection silent that long gets the push; the new connection replaces it and gets the call."""
    h = _harness()
    h.proxy.update_settings(replace(h.proxy.settings, push_stale=60.0))
    old = h.flow()
    assert _register(h, old)[0] == 200
    route = f"<sip:{h.proxy.flows[old].token}@{PRIVATE}:5060;lr;ob>"
    h.now = 30.0
    _b, flows, pushes = _pbx(h, _invite(h, route, "z9hG4bKfresh"))
    assert pushes == [] and [m.split(" ", 1)[0] for m in flows[old]] == ["INVITE"]  # not stale yet
    h.now = 200.0
    _b, flows, pushes = _pbx(h, _invite(h, route, "z9hG4bKstale").replace("push-call", "call-2"))
    assert len(pushes) == 1 and old not in flows
    new = h.flow()
    assert _register(h, new)[0] == 200
    assert [m.split(" ", 1)[0] for m in SENT] == ["SIP/2.0", "INVITE"] and "call-2" in SENT[1]


def test_fcm_two_devices_the_live_one_at_once_the_sleeping_one_woken() -> None:
    """The PBX forks to both registered devices: the live one gets its branch at once, the sleeping one is pushed."""
    h = _harness()
    global INSTANCE
    live = h.flow()
    assert _register(h, live, "fcm")[0] == 200
    live_route = f"<sip:{h.proxy.flows[live].token}@{PRIVATE}:5060;lr;ob>"
    saved, INSTANCE = INSTANCE, "<urn:uuid:00000000-0000-4000-8000-0000000000b2>"
    try:
        asleep = h.flow()
        assert _register(h, asleep, "fcm")[0] == 200
        sleep_route = f"<sip:{h.proxy.flows[asleep].token}@{PRIVATE}:5060;lr;ob>"
        h.proxy.close_flow(asleep, h.now)
        h.proxy.drain()
    finally:
        INSTANCE = saved
    _b, flows, pushes = _pbx(h, _invite(h, live_route, "z9hG4bKfork1"))
    assert pushes == [] and [m.split(" ", 1)[0] for m in flows[live]] == ["INVITE"]
    _b, flows, pushes = _pbx(h, _invite(h, sleep_route, "z9hG4bKfork2"))
    assert [p.provider for p in pushes] == ["fcm"] and flows == {}
    assert len(h.proxy.push_registry) == 2


def test_apns_request_addressed_by_pn_purr() -> None:
    """RFC 8599 s.4.1.5: an INVITE whose Request-URI carries the PURR the edge returned (no Route) is matched to the binding."""
    h = _harness()
    flow = h.flow()
    _code, ok = _register(h, flow)
    purr = _value(ok, "Feature-Caps").split('+sip.pnspurr="', 1)[1].split('"', 1)[0]
    h.proxy.close_flow(flow, h.now)
    h.proxy.drain()
    text = _invite(h, "x", "z9hG4bKpurr").replace("Route: x\r\n", "")
    text = text.replace(
        "INVITE sip:alice@x.invalid;transport=tls", f"INVITE sip:alice@{PRIVATE}:5060;pn-purr={purr}"
    )
    _b, _flows, pushes = _pbx(h, text)
    assert len(pushes) == 1 and pushes[0].prid == TOKEN
