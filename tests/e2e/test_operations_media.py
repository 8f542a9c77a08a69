"""Operations during a call with real media: reloads (admin API, SIGHUP) and SIGTERM's drain keep it flowing.

aiortc plays the browser (ICE, DTLS-SRTP) toward a ``bridge`` tenant whose test PBX echoes plain
RTP (:mod:`helpers.aiortc_call`, :mod:`helpers.media_pbx`). Each test measures audio in windows of
``SEND_SECONDS``: before the operation, then after each one, and asserts that >= 90% of the frames
sent in each window came back decoded, that the PBX kept echoing from the same relay port (the
relay session was never rebuilt), and that the call ends cleanly.

* In process (the test's reactor: epoll, or asyncio with ``--reactor=asyncio``): a reload through
  ``POST /api/reload`` and one through :meth:`EdgeService.reload` exactly as the SIGHUP handler
  calls it (``reactor.callFromThread``), each with a changed file (a tenant added, the call's own
  tenant's shaping changed); the registration and the call survive, the relay keeps its ports.
* ``twistd`` as operators run it (uvloop reactor): a real SIGHUP, then SIGTERM. While draining,
  new connections are refused and a new INVITE gets 503, but the call's media keeps flowing; the
  process exits once the call's BYE has gone through.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.aiortc_call import LoopThread, WsUa, audio_call, audio_window, dtls_state, in_thread
from helpers.edge import (
    TOKEN,
    InProcessEdge,
    StopAfter,
    api,
    connect_refused,
    edge_toml,
    media_range,
    metrics,
    sample,
    tenant_toml,
)
from helpers.media_pbx import AsyncPbx, RtpEcho, plain_answer, start_echo
from helpers.phone import Phone
from helpers.twistd import TwistdEdge
from helpers.wsclient import WSClient, header, status
from twisted.internet import threads

pytestmark = pytest.mark.e2e

MIN_RATIO = 0.90
WINDOW = 2.5  # seconds of audio per measuring window


def config_text(state: Path, pbx_port: int, lo: int, extra_edge: str = "", rate: int = 2000000) -> str:
    return edge_toml(
        state,
        tenant_toml("rossi", pbx_port, media="bridge", origin=True, rate=rate),
        head="# operator comment\n",
        edge=extra_edge,
        public=True,
        token=TOKEN,
        tls_reload=True,
        media=(lo, lo + 99),
    )


VERDI = """
[[tenants]]
id = "verdi"
domains = ["verdi.example.com"]
backend_sip = "udp:127.0.0.1:5999"
certificate = "self-signed"
"""


class EchoPbx:
    """The tenant's PBX (in the loop thread): answers RTP/AVP, echoes every RTP packet."""

    def __init__(self, runner: LoopThread) -> None:
        self.runner = runner
        self.echo: RtpEcho | None = None
        self._close: Callable[[], None] | None = None
        self.pbx = AsyncPbx(self._answer)
        runner.run(self.pbx.start())

    async def _answer(self, offer: str) -> str:
        if self.echo is None:
            self.echo, self.port, self._close = await start_echo()
        assert " RTP/AVP " in offer and "a=crypto" not in offer, offer
        return plain_answer(self.port, offer)

    def close(self) -> None:
        async def close() -> None:
            if self._close is not None:
                self._close()
            self.pbx.close()

        self.runner.run(close())


Action = Callable[[], Any]


async def call_across(
    client: Callable[[], WSClient], echo_pbx: EchoPbx, actions: list[tuple[str, Action]]
) -> dict[str, Any]:
    """REGISTER, a call with audio; one window before, then each blocking action and a window after it; BYE."""
    ws = await in_thread(client)
    result: dict[str, Any] = {"echoed": []}
    ua = WsUa(ws, "rossi.example.com")
    pc = None
    try:
        result["register"] = status(await in_thread(Phone(ws, "rossi.example.com").register))
        pc, tone, counter = await audio_call(ua)
        result["dtls"] = dtls_state(pc)
        result["before"] = await audio_window(tone, counter, WINDOW)
        assert echo_pbx.echo is not None
        result["echoed"].append(echo_pbx.echo.echoed)
        for name, action in actions:
            result[f"{name}:result"] = await in_thread(action)
            result[name] = await audio_window(tone, counter, WINDOW)
            result["echoed"].append(echo_pbx.echo.echoed)
        result["bye"] = await in_thread(ua.bye)
        result["sources"] = len(echo_pbx.echo.sources)
    finally:
        if pc is not None:
            await pc.close()
        ws.close()
    return result


def check_window(result: dict[str, Any], name: str) -> None:
    sent, got = result[name]
    assert sent >= 0.8 * WINDOW * 50, f"{name}: only {sent} frames sent"
    assert got >= MIN_RATIO * sent, f"{name}: {got} of {sent} frames came back ({result})"


def check_echoed_grows(result: dict[str, Any]) -> None:
    """The PBX echoed RTP during every window (packets before and after each operation)."""
    echoed = result["echoed"]
    assert all(b - a >= 0.8 * WINDOW * 50 for a, b in zip([0, *echoed], echoed, strict=False)), echoed


# ------------------------------------------------------------------------------------ in process


class LocalMediaEdge(InProcessEdge):
    """The edge on the test's reactor, configured from a file (so reloads re-read it)."""

    ORIGIN = True

    def __init__(self, tmp: Path, runner: LoopThread) -> None:
        super().__init__(tmp, runner=runner)
        self.pbx = EchoPbx(runner)
        self.closers.append(self.pbx.close)
        self.lo = media_range(100)[0]
        self.start(config_text(self.state, self.pbx.pbx.port, self.lo))


@pytest.fixture
def local(tmp_path: Path, runner: LoopThread, stop_after: StopAfter) -> Any:
    return stop_after(LocalMediaEdge(tmp_path, runner))


def _relay_ports(e: LocalMediaEdge) -> list[tuple[int, ...]]:
    return [tuple(leg.port for leg in s.legs) for s in list(e.service.media.anchor.sessions.values())]


@pytest_twisted.inlineCallbacks
def test_reloads_mid_call_keep_media_flowing_and_the_registration(
    local: LocalMediaEdge, runner: LoopThread
) -> Any:
    """Admin-API and SIGHUP-path reloads (a tenant added, the call's tenant re-shaped) mid-call: audio keeps coming back, same relay ports, registration kept."""
    from twisted.internet import reactor
    from twisted.internet.threads import blockingCallFromThread

    seen: dict[str, Any] = {}

    def api_reload() -> Any:
        seen["ports_before"] = blockingCallFromThread(reactor, _relay_ports, local)
        local.conf.write_text(config_text(local.state, local.pbx.pbx.port, local.lo, rate=1500000) + VERDI)
        return api(local.admin, "POST", "/api/reload")

    def sighup_reload() -> Any:
        local.conf.write_text(config_text(local.state, local.pbx.pbx.port, local.lo, rate=1000000) + VERDI)
        ok = blockingCallFromThread(reactor, local.service.reload)  # what the SIGHUP handler calls
        seen["ports_after"] = blockingCallFromThread(reactor, _relay_ports, local)
        seen["metrics"] = metrics(local.admin)
        return ok

    result = yield threads.deferToThread(
        runner.run,
        call_across(local.client, local.pbx, [("api_reload", api_reload), ("sighup_reload", sighup_reload)]),
        120,
    )
    print(result)
    assert result["register"] == 200 and result["dtls"] == "connected"
    assert result["api_reload:result"] == (200, {"reloaded": True})
    assert result["sighup_reload:result"] is True
    for name in ("before", "api_reload", "sighup_reload"):
        check_window(result, name)
    check_echoed_grows(result)
    assert result["sources"] == 1  # the PBX always heard the same relay port
    assert seen["ports_before"] == seen["ports_after"] and len(seen["ports_before"]) == 1
    m = seen["metrics"]
    assert sample(m, "mcs_edge_config_reloads_total", result="ok") == 2
    assert sample(m, "mcs_edge_registrations", tenant="rossi") == 1
    assert sample(m, "mcs_edge_calls", tenant="rossi", state="answered") == 1
    assert local.service.config.tenant("rossi").shaping.rate == 1000000  # type: ignore[union-attr]
    assert local.service.tenants.by_id("verdi") is not None
    assert result["bye"] == 200
    assert local.service.media.anchor.ports_in_use == 0 and not local.service.media.anchor.sessions


# ---------------------------------------------------------------------------------------- twistd


def _new_invite(ws: WSClient) -> str:
    ws.send(
        "INVITE sip:300@rossi.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:10]}\r\n"
        "Max-Forwards: 70\r\nTo: <sip:300@rossi.example.com>\r\nFrom: <sip:a@rossi.example.com>;tag=t1\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@x.invalid;transport=ws>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return ws.recv_sip(timeout=10, skip_provisional=True)


def test_sighup_then_sigterm_drain_keep_the_calls_media_flowing(tmp_path: Path, runner: LoopThread) -> None:
    """twistd (uvloop): SIGHUP mid-call, then SIGTERM: audio keeps flowing through the reload and the drain; new calls get 503; the process exits after BYE."""
    pbx = EchoPbx(runner)
    lo = media_range(100)[0]
    state = tmp_path / "state"
    t = TwistdEdge(tmp_path, config_text(state, pbx.pbx.port, lo, extra_edge="drain_timeout = 30\n"))
    ca = str(state / "dev-ca" / "ca.pem")
    clients: list[WSClient] = []

    def client() -> WSClient:
        ws = WSClient(t.https, "rossi.example.com", cafile=ca, origin="https://rossi.example.com")
        clients.append(ws)
        return ws

    def sighup() -> str:
        t.conf.write_text(config_text(state, pbx.pbx.port, lo, "drain_timeout = 30\n", 1000000) + VERDI)
        t.proc.send_signal(signal.SIGHUP)
        t.wait_log(r"CFG201 configuration reloaded: 2 tenant")
        return "reloaded"

    def sigterm() -> dict[str, Any]:
        t.proc.send_signal(signal.SIGTERM)
        t.wait_log(r"EDG102 draining")
        refused = _new_invite(clients[0])
        return {
            "connect_refused": connect_refused(t.https),
            "invite": status(refused),
            "retry_after": header(refused, "Retry-After"),
            "running": t.proc.poll() is None,
        }

    try:
        result = runner.run(call_across(client, pbx, [("sighup", sighup), ("sigterm", sigterm)]), 120)
        print(result)
        assert result["register"] == 200 and result["dtls"] == "connected"
        for name in ("before", "sighup", "sigterm"):
            check_window(result, name)
        check_echoed_grows(result)
        assert result["sources"] == 1
        drain = result["sigterm:result"]
        assert drain["running"] and drain["connect_refused"]
        assert drain["invite"] == 503 and drain["retry_after"]
        assert result["bye"] == 200
        assert t.proc.wait(15) in (0, -signal.SIGTERM)
        log = t.log.read_text()
        assert "EDG103 drained" in log and "EDG301" not in log, log
        assert "Traceback (most recent call last)" not in log, log
    finally:
        t.stop()
        pbx.close()
