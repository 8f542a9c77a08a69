"""Push wake-up of the mobile app (RFC 8599) with real sipp as the tenant PBX: the edge (twistd, uvloop),
the local HTTP/2 APNs and FCM stand-ins (tests/helpers/push_providers.py), the SIP/TLS app of
tests/helpers/push_app.py, and sipp (UDP) that accepts the app's REGISTERs, calls it, checks the answer,
echoes its RTP (``-rtp_echo``) and hangs up, or checks the 480 and its Reason when the app never wakes.
Scenarios: tests/data/sipp/push_*.xml. Fails (never skips) under CI without sipp."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.edge import api, free_tcp_port, free_udp_port, metrics, sample
from helpers.push_app import App
from helpers.push_providers import PUSH_WAIT, TOPIC, ProviderStandIn, push_edge_toml
from helpers.sipp import SIPP_DIR, Sipp
from helpers.twistd import TwistdEdge
from helpers.wsclient import header

pytestmark = pytest.mark.requires_tool("sipp")

WAIT = PUSH_WAIT  # push.wait of the edge under test


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.providers = ProviderStandIn(tmp)
        self.pbx_port = free_udp_port()  # sipp's SIP port
        self.backend = free_udp_port()  # the edge's backend SIP port, sipp's remote
        self.sip_tls = free_tcp_port()
        text = push_edge_toml(tmp / "state", self.providers, self.pbx_port, self.sip_tls, self.backend)
        try:
            self.edge = TwistdEdge(tmp, text)  # the production reactor (uvloop): push needs asyncio
        except BaseException:
            self.providers.close()
            raise

    def sipp(self, scenario: str, *args: str, keys: dict[str, str] | None = None, uac: bool = False) -> Sipp:
        return Sipp(self.tmp, scenario, self.pbx_port, self.backend if uac else None, keys=keys, args=args)

    def sipp_ok(self, proc: Sipp) -> None:
        rc = proc.proc.wait(40)
        assert rc == 0, f"sipp {proc.path.name} exited {rc}:\n{proc.errors()}"

    def asleep(self, user: str, provider: str) -> tuple[App, dict[str, str]]:
        """The app registers (sipp accepts) with push parameters, then its connection closes (the phone
        sleeps). Returns it with the sipp keys that address it: its Contact and its Path (flow token)."""
        app = App(self.sip_tls, user, provider, secrets.token_hex(32))
        reg = self.sipp("push_register.xml")
        reg.wait_listening()
        app.connect()
        ok = app.register()
        assert ok.startswith("SIP/2.0 200"), ok
        assert '+sip.pns="apns","fcm"' in (header(ok, "Feature-Caps") or ""), ok
        self.sipp_ok(reg)
        app.close()
        time.sleep(0.3)  # the edge sees the close
        contact = (header(ok, "Contact") or "").split(">")[0].lstrip("<")
        return app, {"route": header(ok, "Path") or "", "contact": contact, "aor": app.aor}

    def metric(self, name: str, **labels: str) -> float:
        return sample(metrics(self.edge.admin), name, **labels)

    def close(self) -> None:
        self.edge.stop()
        self.providers.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(tmp_path_factory.mktemp("push-sipp"))
    yield s
    s.close()


def _sipp_calls_sleeping_app(setup: Setup, provider: str, user: str) -> dict[str, Any]:
    app, keys = setup.asleep(user, provider)
    delivered = setup.metric("mcs_edge_push_calls_delivered_total")
    media = free_udp_port()
    call = setup.sipp(
        "push_call_answered.xml",
        "-oocsf", str(SIPP_DIR / "push_register.xml"),  # the woken app's REGISTER
        "-rtp_echo", "-mp", str(media), "-mi", "127.0.0.1",
        keys=keys,
        uac=True,
    )  # fmt: skip
    try:
        push = setup.providers.wait_push(app.token)
        assert push["provider"] == provider and not setup.providers.problems
        app.connect()  # woken by the push: reconnect and register again
        ok = app.register()
        assert ok.startswith("SIP/2.0 200"), ok
        invite = app.read()
        assert invite.startswith("INVITE "), invite
        app.answer(invite)
        ack = app.read()
        assert ack.startswith("ACK "), ack
        stop = threading.Event()
        counts: list[tuple[int, int]] = []
        rtp = threading.Thread(target=lambda: counts.append(app.media_until(invite, stop)))
        rtp.start()
        try:
            bye = app.read(timeout=15)
        finally:
            stop.set()
            rtp.join(5)
        assert bye.startswith("BYE "), bye
        app.respond(bye)
        setup.sipp_ok(call)
    finally:
        call.kill()
        app.close()
    sent, received = counts[0]
    assert sent >= 20 and received >= 10, f"RTP: {sent} sent, {received} echoed back by sipp"
    assert setup.metric("mcs_edge_push_calls_delivered_total") == delivered + 1
    deadline = time.monotonic() + 5
    while True:
        status, calls = api(setup.edge.admin, "GET", "/api/calls")
        assert status == 200
        if not calls["calls"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert calls["calls"] == [], calls
    return push


def test_apns_push_wakes_the_app_for_a_sipp_call_answered_with_rtp(setup: Setup) -> None:
    """sipp (PBX) calls the sleeping app: 180 while held, APNs VoIP push, the app re-registers (sipp's
    out-of-call scenario accepts it), the held INVITE reaches it, 200/ACK, RTP both ways through the edge
    (sipp echoes), sipp's BYE gets 200, no call left in /api/calls."""
    push = _sipp_calls_sleeping_app(setup, "apns", "alice")
    assert push["headers"]["apns-push-type"] == "voip" and push["headers"]["apns-topic"] == TOPIC


def test_fcm_push_wakes_the_app_for_a_sipp_call_answered_with_rtp(setup: Setup) -> None:
    """The same with FCM HTTP v1 (high-priority data message)."""
    push = _sipp_calls_sleeping_app(setup, "fcm", "bruno")
    assert push["payload"]["android"]["priority"] == "high" and push["payload"]["data"]["call-id"]


def test_apns_sipp_call_to_an_app_that_does_not_wake_gets_480_with_reason(setup: Setup) -> None:
    """The app gets its push but never registers again: after push.wait sipp receives 480 whose Reason
    (checked by the scenario's regexp) says the wake-up timed out; sipp ACKs; counted as lost."""
    app, keys = setup.asleep("carla", "apns")
    lost = setup.metric("mcs_edge_push_calls_lost_timeout_total")
    started = time.monotonic()
    call = setup.sipp("push_call_timeout.xml", keys=keys, uac=True)
    try:
        setup.providers.wait_push(app.token)
        setup.sipp_ok(call)
    finally:
        call.kill()
    assert time.monotonic() - started >= WAIT - 0.5
    assert setup.metric("mcs_edge_push_calls_lost_timeout_total") == lost + 1
