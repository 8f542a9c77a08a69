"""Chromium keeps its call when its WebSocket dies: JsSIP with the edge's reconnect.js, and the check page.

* JsSIP (npm, bundled at test time) with ``/.well-known/mcs-edge/reconnect.js`` and a stable
  instance id calls an asyncio PBX that answers plain RTP and echoes it (tests/helpers/media_pbx.py).
  The test aborts the browser's WebSocket at the edge. JsSIP reconnects, registers again, the helper
  renegotiates with an ICE restart; the edge answers that re-INVITE itself. Audio comes back within
  3 s, the PBX saw one INVITE, no BYE and no re-INVITE, and its RTP is one SSRC without a sequence
  jump.
* The check page's "Hear yourself" echo call survives the same abort (new WebSocket, ICE restart
  in the same dialog).

Chromium's WebSocket keeps its local IP (moving a running browser to another address needs a network
namespace per browser); its ICE restart gathers new candidates, so its media comes from a new
source address (new port), which the test checks on the edge's client leg.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.aiortc_call import LoopThread
from helpers.browser import CHROMIUM, chromium_page, demo_toml, wait
from helpers.edge import InProcessEdge, StopAfter, on_reactor, until
from helpers.media_pbx import start_recording_pbx
from twisted.internet import threads

pytestmark = [pytest.mark.e2e, pytest.mark.requires_tool(CHROMIUM, "npm", "module:playwright")]

DATA = Path(__file__).resolve().parent.parent / "data"


class RecoveryBrowserEdge(InProcessEdge):
    """Tenant ``demo`` on ``localhost`` (echo on), its PBX an asyncio UAS with an RTP echo."""

    def __init__(self, tmp: Path, runner: LoopThread) -> None:
        super().__init__(tmp, runner=runner)
        self.pbx, self.echo, close = runner.run(start_recording_pbx())
        self.loop_closers.append(close)
        self.start(demo_toml(self.state, self.pbx.port, sip="flow_grace = 20\n"))

    def client_media_source(self) -> Any:
        """Where the (only) call's client leg sends media: the browser's ICE-selected address."""
        sessions = list(self.service.media.anchor.sessions.values())
        legs = [leg for s in sessions for leg in s.legs if leg.side.name == "CLIENT"]
        return legs[0].remote if legs else None


@pytest.fixture
def edge(tmp_path: Path, runner: LoopThread, stop_after: StopAfter) -> Any:
    return stop_after(RecoveryBrowserEdge(tmp_path, runner))


def _kill(edge: RecoveryBrowserEdge) -> int:
    return int(on_reactor(edge.kill_connections))


def _packets_after(page: Any, expression: str, baseline: int, timeout: float) -> float:
    """Seconds until ``expression`` (a packet count) exceeds ``baseline`` by 25 (half a second of audio)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if page.evaluate(expression) > baseline + 25:
            return time.monotonic() - start
        page.wait_for_timeout(50)
    raise AssertionError(f"no audio back within {timeout} s")


# ------------------------------------------------------------------------------------- JsSIP


def _jssip_recovery(edge: RecoveryBrowserEdge) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with chromium_page(edge.origin, DATA / "browser" / "jssip_reconnect.html") as (page, errors):
        page.goto(f"{edge.origin}/__test__/phone.html")
        wait(page, "window.phone.registered > 0 || window.phone.failed")
        assert page.evaluate("window.phone.failed") is None
        index = page.evaluate("window.placeCall('sip:200@localhost')")
        wait(
            page,
            f"window.phone.calls[{index}].connected_ms !== null || window.phone.calls[{index}].failed",
        )
        assert page.evaluate(f"window.phone.calls[{index}].failed") is None
        page.wait_for_timeout(1_500)
        before = page.evaluate(f"window.audioStats({index})")
        out["source_before"] = on_reactor(edge.client_media_source)
        echoed_before = len(edge.echo.stream)
        assert _kill(edge) == 1
        killed = time.monotonic()
        _packets_after(
            page,
            f"window.audioStats({index}).then(s => s.packetsReceived)",
            before["packetsReceived"],
            10,
        )
        out["audio_back_s"] = time.monotonic() - killed
        wait(page, "window.phone.states.includes('recovered') || window.phone.states.includes('gave-up')")
        out["states"] = page.evaluate("window.phone.states")
        out["source_after"] = on_reactor(edge.client_media_source)
        first = page.evaluate(f"window.audioStats({index})")
        page.wait_for_timeout(3_000)
        last = page.evaluate(f"window.audioStats({index})")
        out["after"] = (
            last["packetsSent"] - first["packetsSent"],
            last["packetsReceived"] - first["packetsReceived"],
        )
        out["stream"] = edge.echo.stream[max(0, echoed_before - 50) :]
        invite = next(r for r in edge.pbx.requests if r.startswith("INVITE "))
        call_id = next(
            line.split(":", 1)[1].strip()
            for line in invite.split("\r\n")
            if line.lower().startswith("call-id:")
        )
        out["pbx_before_hangup"] = edge.pbx.methods(call_id)
        out["registers"] = sum(1 for r in edge.pbx.requests if r.startswith("REGISTER "))
        page.evaluate(f"window.hangUp({index})")
        wait(page, f"window.phone.calls[{index}].ended !== null")
        deadline = time.monotonic() + 5
        while "BYE" not in edge.pbx.methods(call_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        out["pbx_methods"] = edge.pbx.methods(call_id)
        out["counters"] = dict(edge.service.sip.core.counters)
        out["errors"] = errors
    return out


@pytest_twisted.inlineCallbacks
def test_jssip_call_survives_a_killed_websocket(edge: RecoveryBrowserEdge) -> Any:
    """JsSIP + reconnect.js: WebSocket aborted at the edge; reconnect, re-REGISTER, ICE restart answered by the edge; audio back within 3 s; the PBX saw no BYE or re-INVITE and one continuous RTP stream."""
    out = yield threads.deferToThread(_jssip_recovery, edge)
    print({k: v for k, v in out.items() if k != "stream"})
    assert out["errors"] == []
    assert "recovered" in out["states"], out["states"]
    assert out["audio_back_s"] < 3.0  # the network is back at once: the abort only kills the WebSocket
    sent, received = out["after"]
    assert sent >= 100 and received >= 0.9 * sent, out["after"]
    assert out["source_before"] is not None and out["source_after"] is not None
    assert out["source_after"] != out["source_before"]  # the ICE restart moved the browser's media
    assert out["pbx_before_hangup"] == ["INVITE", "ACK"]
    assert out["pbx_methods"] == ["INVITE", "ACK", "BYE"]
    assert out["registers"] >= 2
    assert out["counters"].get("sip_reinvites_answered_locally", 0) >= 1
    assert out["counters"].get("calls_recovered", 0) == 1
    stream = out["stream"]
    assert len({ssrc for ssrc, _ in stream}) == 1, "the PBX saw another SSRC"
    jumps = [(b - a) % 65536 for (_, a), (_, b) in itertools.pairwise(stream)]
    assert max(jumps) <= 3, f"sequence jump toward the PBX: {max(jumps)}"
    yield until(edge.media_idle, 5, raises=False)
    assert edge.media_idle()


# ------------------------------------------------------------------------------ the check page


def _check_page_recovery(edge: RecoveryBrowserEdge) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with chromium_page(edge.origin) as (page, errors):
        page.goto(f"{edge.origin}/check")
        page.click("#talk")
        wait(page, "document.getElementById('talk-status').textContent.startsWith('Connected')")
        page.wait_for_timeout(1_000)
        stats = "window.mcsTalk.pc.getStats().then(r => { let n = 0; r.forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'audio') n = s.packetsReceived; }); return n; })"
        before = page.evaluate(stats)
        assert _kill(edge) == 1
        killed = time.monotonic()
        _packets_after(page, stats, before, 10)
        out["audio_back_s"] = time.monotonic() - killed
        wait(page, "window.mcsTalk.recovered > 0")
        out["status"] = page.text_content("#talk-status")
        out["states"] = page.evaluate("window.mcsTalk.states")
        page.click("#hangup")
        wait(page, "document.getElementById('talk-status').textContent === 'Call ended.'")
        out["errors"] = errors
    return out


@pytest_twisted.inlineCallbacks
def test_check_page_hear_yourself_survives_a_killed_websocket(edge: RecoveryBrowserEdge) -> Any:
    """The check page's echo call: WebSocket aborted at the edge, reconnect.js opens a new one and restarts ICE in the same dialog; the echo continues and hangs up cleanly."""
    out = yield threads.deferToThread(_check_page_recovery, edge)
    print(out)
    assert out["errors"] == []
    assert out["states"][:1] == ["lost"] and "recovered" in out["states"]
    assert out["status"].startswith("Reconnected")
    assert out["audio_back_s"] < 3.0
    echo = edge.service.echo
    assert echo.outcomes.get(("demo", "recovered")) == 1
    assert echo.ended == {("demo", "bye"): 1}
    yield until(edge.media_idle, 5, raises=False)
    assert edge.media_idle()
