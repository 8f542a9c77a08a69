"""Push wake-up of the mobile app (RFC 8599) end to end: the edge (twistd, uvloop), local HTTP/2 APNs
and FCM stand-ins over TLS (tests/helpers/push_providers.py), a SIP/TLS app that sleeps and wakes on
the push, and a UDP PBX that echoes RTP (tests/helpers/echo_pbx.py). No external tool: never skipped."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.echo_pbx import EchoPbx
from helpers.edge import free_tcp_port, metrics, sample
from helpers.push_app import App
from helpers.push_providers import PUSH_WAIT, TOPIC, ProviderStandIn, push_edge_toml
from helpers.twistd import TwistdEdge
from helpers.wsclient import header

WAIT = PUSH_WAIT  # push.wait of the edge under test


class RecordingPbx(EchoPbx):
    """The echo PBX, keeping the INVITEs it sends (to CANCEL one)."""

    def __init__(self) -> None:
        self.sent_invites: dict[str, tuple[str, tuple[str, int]]] = {}
        super().__init__()

    def _send(self, text: str, addr: tuple[str, int]) -> None:
        if text.startswith("INVITE "):
            self.sent_invites[header(text, "Call-ID") or ""] = (text, addr)
        super()._send(text, addr)

    def cancel(self, call_id: str) -> None:
        invite, addr = self.sent_invites[call_id]
        head = invite.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = [
            line
            for line in head[1:]
            if line.split(":", 1)[0].lower() in ("via", "route", "from", "to", "call-id", "max-forwards")
        ]
        text = "\r\n".join(
            [head[0].replace("INVITE", "CANCEL", 1), *keep, "CSeq: 1 CANCEL", "Content-Length: 0", "", ""]
        )
        with self._lock:
            super()._send(text, addr)


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.providers = ProviderStandIn(tmp)
        self.pbx = RecordingPbx()
        self.sip_tls = free_tcp_port()
        text = push_edge_toml(tmp / "state", self.providers, self.pbx.port, self.sip_tls)
        try:
            self.edge = TwistdEdge(tmp, text)  # the production reactor (uvloop): push needs asyncio
        except BaseException:
            self.pbx.close()
            self.providers.close()
            raise

    def app(self, user: str, provider: str) -> App:
        return App(self.sip_tls, user, provider, secrets.token_hex(32))

    def asleep(self, app: App) -> str:
        """The app registers with push parameters and its connection closes (the phone sleeps)."""
        app.connect()
        ok = app.register()
        assert ok.startswith("SIP/2.0 200"), ok
        caps = header(ok, "Feature-Caps") or ""
        assert '+sip.pns="apns","fcm"' in caps and "+sip.pnspurr=" in caps, ok
        app.close()
        time.sleep(0.3)  # the edge sees the close
        return self.pbx.call(app.aor)

    def metric(self, name: str, **labels: str) -> float:
        return sample(metrics(self.edge.admin), name, **labels)

    def close(self) -> None:
        self.edge.stop()
        self.pbx.close()
        self.providers.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(tmp_path_factory.mktemp("push"))
    yield s
    s.close()


def _woken_call(setup: Setup, provider: str, user: str) -> dict[str, Any]:
    app = setup.app(user, provider)
    call_id = setup.asleep(app)
    push = setup.providers.wait_push(app.token)
    assert push["provider"] == provider and not setup.providers.problems
    # the PBX hears ringing while the app wakes
    setup.pbx.wait(lambda: any(c == call_id and s == 180 for c, s, _m in setup.pbx.responses), 5, "180")
    app.connect()  # the app wakes on the push, reconnects and registers
    ok = app.register()
    assert ok.startswith("SIP/2.0 200"), ok
    invite = app.read()
    assert invite.startswith("INVITE "), invite
    assert header(invite, "Call-ID") == call_id
    app.answer(invite)
    assert setup.pbx.wait_response(call_id, "INVITE") == 200
    ack = app.read()
    assert ack.startswith("ACK "), ack
    echoed = app.media_echo(invite)
    assert echoed >= 10, f"only {echoed} RTP packets came back"
    setup.pbx.hangup(call_id)
    bye = app.read()
    assert bye.startswith("BYE "), bye
    app.close()
    return push


def test_apns_push_wakes_the_app_and_the_call_is_answered_with_media(setup: Setup) -> None:
    """Sleeping app (apns) -> VoIP push with a valid ES256 provider token -> it registers again -> the held INVITE arrives, is answered, RTP echoes."""
    before = setup.metric("mcs_edge_push_calls_delivered_total")
    push = _woken_call(setup, "apns", "alice")
    assert push["headers"]["apns-push-type"] == "voip" and push["headers"]["apns-topic"] == TOPIC
    assert "aps" in push["payload"] and push["payload"]["call-id"]
    assert setup.metric("mcs_edge_push_calls_delivered_total") == before + 1
    assert setup.metric("mcs_edge_pushes_total", provider="apns", result="sent") >= 1
    assert setup.metric("mcs_edge_push_wake_seconds_count") >= 1


def test_fcm_push_wakes_the_app_and_the_call_is_answered_with_media(setup: Setup) -> None:
    """The same with FCM HTTP v1: the edge got an OAuth 2 token by the JWT bearer grant and used it."""
    push = _woken_call(setup, "fcm", "bruno")
    assert push["payload"]["android"]["priority"] == "high" and push["payload"]["data"]["call-id"]
    assert setup.providers.token_grants >= 1
    assert setup.metric("mcs_edge_pushes_total", provider="fcm", result="sent") >= 1


def test_apns_app_that_does_not_wake_gets_480_after_push_wait(setup: Setup) -> None:
    """Nobody registers within push.wait: the PBX gets 480 (with a Reason), counted as lost."""
    app = setup.app("carla", "apns")
    started = time.monotonic()
    call_id = setup.asleep(app)
    setup.providers.wait_push(app.token)
    assert setup.pbx.wait_response(call_id, "INVITE", timeout=WAIT + 10) == 480
    assert time.monotonic() - started >= WAIT - 0.5
    assert setup.metric("mcs_edge_push_calls_lost_timeout_total") >= 1


def test_fcm_cancel_during_the_wait(setup: Setup) -> None:
    """The caller hangs up while the app wakes: 487 to the INVITE; the app registering later gets no INVITE."""
    app = setup.app("dario", "fcm")
    call_id = setup.asleep(app)
    setup.providers.wait_push(app.token)
    setup.pbx.cancel(call_id)
    assert setup.pbx.wait_response(call_id, "INVITE") == 487
    app.connect()
    assert app.register().startswith("SIP/2.0 200")
    with pytest.raises(AssertionError, match="nothing from the edge"):
        app.read(timeout=1.0)
    app.close()
    assert setup.metric("mcs_edge_push_calls_cancelled_total") >= 1


@pytest.mark.parametrize("provider", ["apns", "fcm"])
def test_invalid_token_answer_removes_the_binding(setup: Setup, provider: str) -> None:
    """The provider says the device token is invalid (APNs 410 Unregistered, FCM 404 UNREGISTERED): 480 at
    once, the binding is dropped, the next call gets 430 without a push."""
    app = setup.app(f"elena-{provider}", provider)
    setup.providers.bad_tokens.add(app.token)
    dropped = setup.metric("mcs_edge_push_bindings_dropped_bad_token_total")
    call_id = setup.asleep(app)
    started = time.monotonic()
    assert setup.pbx.wait_response(call_id, "INVITE") == 480
    assert time.monotonic() - started < WAIT
    assert setup.metric("mcs_edge_push_bindings_dropped_bad_token_total") == dropped + 1
    assert setup.metric("mcs_edge_pushes_total", provider=provider, result="bad_token") >= 1
    pushes = len(setup.providers.pushes)
    second = setup.pbx.call(app.aor)
    assert setup.pbx.wait_response(second, "INVITE") == 430
    assert len(setup.providers.pushes) == pushes


def test_fcm_rate_limit_backs_the_provider_off(setup: Setup) -> None:
    """FCM answers 429 (Retry-After: 60): the call gets 480 at once; the next push of the tenant within the
    back-off is not sent at all (480 at once), both counted rate_limited. Last in the file: it leaves FCM
    backed off for this edge."""
    first = setup.app("franco", "fcm")
    setup.providers.limited_tokens.add(first.token)
    limited = setup.metric("mcs_edge_pushes_total", provider="fcm", result="rate_limited")
    call_id = setup.asleep(first)
    assert setup.pbx.wait_response(call_id, "INVITE") == 480
    second = setup.app("gina", "fcm")
    pushes = len(setup.providers.pushes)
    started = time.monotonic()
    call_id = setup.asleep(second)
    assert setup.pbx.wait_response(call_id, "INVITE") == 480
    assert time.monotonic() - started < WAIT and len(setup.providers.pushes) == pushes
    assert setup.metric("mcs_edge_pushes_total", provider="fcm", result="rate_limited") == limited + 2
