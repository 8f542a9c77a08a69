"""A real browser end to end: headless Chromium (Debian's package, driven by Playwright) through the edge.

* The network check page (``/check``) runs green: TLS + WebSocket, SIP OPTIONS over WSS, and a
  WebRTC call to the edge's echo service (ICE-lite, DTLS-SRTP, the relay's loop), ~10 s at the
  product's 60 KB/s budget; its report is posted and kept as per-tenant metrics.
* The real JsSIP library (npm, bundled at test time, never committed) in a test page registers
  over WSS through the edge to a sipp PBX, calls it (the PBX answers plain RTP and sipp
  ``-rtp_echo`` sends the audio back: >= 200 packets come back in 10 s, measured with getStats),
  hangs up cleanly, then is called by the PBX through its Path and answers.

The edge runs in-process on the test's reactor and advertises 127.0.0.1; Chromium gets
``--allow-loopback-in-peer-connection`` so ICE runs over loopback. The browser is driven from a
worker thread (Playwright's sync API) while the reactor serves the edge. Figures (call set-up time,
packets, the check report) are printed for the issue note (``pytest -s``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.browser import CHROMIUM, chromium_page, demo_toml, wait
from helpers.edge import InProcessEdge, StopAfter, free_udp_port, until
from helpers.sipp import Sipp
from twisted.internet import threads

pytestmark = [pytest.mark.e2e, pytest.mark.requires_tool(CHROMIUM, "npm", "module:playwright", "sipp")]

DATA = Path(__file__).resolve().parent.parent / "data"


class BrowserEdge(InProcessEdge):
    """The edge on ephemeral ports: tenant ``demo`` on ``localhost`` with echo, PBX = sipp."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.pbx_port = free_udp_port()
        self.start(demo_toml(self.state, self.pbx_port))

    def sipp(self, scenario: str, *, keys: dict[str, str] | None = None, timeout: int = 60) -> Sipp:
        return Sipp(
            self.tmp, scenario, self.pbx_port, self.backend, keys=keys, timeout=timeout, rtp_echo=True
        )


@pytest.fixture
def edge(tmp_path: Path, stop_after: StopAfter) -> Any:
    return stop_after(BrowserEdge(tmp_path))


# ------------------------------------------------------------------------------ the check page


def _run_check_page(edge: BrowserEdge) -> dict[str, Any]:
    with chromium_page(edge.origin) as (page, errors):
        page.goto(f"{edge.origin}/check")
        assert page.text_content("#domain") == "localhost"
        page.click("#start")
        result: dict[str, Any] = wait(
            page,
            "window.mcsNetworkCheck && window.mcsNetworkCheck.posted !== null && window.mcsNetworkCheck",
            90,
        )
        result["rows"] = page.eval_on_selector_all(
            "#steps tbody tr", "rows => rows.map(r => r.querySelector('.badge').textContent)"
        )
        # "Hear yourself": the (fake) microphone through the echo, then hang up
        page.click("#talk")
        wait(page, "document.getElementById('talk-status').textContent")
        result["talk"] = page.text_content("#talk-status")
        page.wait_for_timeout(2_000)
        page.click("#hangup")
        wait(page, "document.getElementById('talk-status').textContent === 'Call ended.'")
        result["errors"] = errors
        return result


@pytest_twisted.inlineCallbacks
def test_check_page_runs_green_through_the_echo_service(edge: BrowserEdge) -> Any:
    """The check page passes every step in Chromium and posts its figures; "hear yourself" connects; calls end clean."""
    result = yield threads.deferToThread(_run_check_page, edge)
    print("\n" + result["text"])
    assert result["errors"] == []
    assert result["overall"] == "pass", result["text"]
    assert result["rows"] == ["PASS"] * 9
    figures = result["figures"]
    assert figures["packets_received"] >= 400 and figures["loss_pct"] < 1
    assert figures["bitrate_Bps"] >= 48_000  # ~56 KB/s asked, the 60 KB/s budget polices above that
    assert result["posted"] == 200
    text = edge.service.metrics.render().decode()
    assert 'mcs_edge_check_reports_total{result="pass",tenant="demo"} 1.0' in text
    assert 'mcs_edge_check_rtt_seconds_count{tenant="demo"} 1.0' in text
    assert result["talk"].startswith("Connected"), result["talk"]
    echo = edge.service.echo
    assert echo.outcomes == {("demo", "answered"): 2}
    assert echo.ended == {("demo", "bye"): 2}
    assert echo.looped["demo"] >= 450
    yield until(edge.media_idle, 5, raises=False)
    assert edge.media_idle()


# ------------------------------------------------------------------------------------- JsSIP


def _jssip_session(edge: BrowserEdge) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with chromium_page(edge.origin, DATA / "browser" / "jssip.html") as (page, errors):
        # 1. REGISTER through the edge to the sipp registrar (which requires the edge's Path)
        reg = edge.sipp("browser_register.xml")
        page.goto(f"{edge.origin}/__test__/phone.html")
        wait(page, "window.phone.registered || window.phone.failed")
        phone = page.evaluate("window.phone")
        assert phone["registered"], phone
        assert reg.result() == 0
        out["path"] = phone["path"]

        # 2. a call the PBX answers with plain RTP; sipp echoes the audio back
        answer = edge.sipp("browser_answer_echo.xml")
        time.sleep(0.3)
        started = time.monotonic()
        index = page.evaluate("window.placeCall('sip:200@localhost')")
        wait(
            page,
            f"window.phone.calls[{index}].connected_ms !== null || window.phone.calls[{index}].failed",
        )
        out["answered_s"] = time.monotonic() - started
        call = page.evaluate(f"window.phone.calls[{index}]")
        assert call["failed"] is None, call
        out["outgoing"] = call
        first = page.evaluate(f"window.audioStats({index})")
        page.wait_for_timeout(10_000)
        last = page.evaluate(f"window.audioStats({index})")
        out["outgoing_stats"] = {"first": first, "last": last}
        page.evaluate(f"window.hangUp({index})")
        wait(page, f"window.phone.calls[{index}].ended !== null")
        out["outgoing_end"] = page.evaluate(f"window.phone.calls[{index}]")
        out["answer_rc"] = answer.result()

        # 3. the PBX calls the registered page through its Path; the page answers
        contact = phone["contact"].split(">", 1)[0].lstrip("<")
        incoming = edge.sipp("browser_call_client.xml", keys={"route": phone["path"], "contact": contact})
        wait(page, f"window.phone.calls.length > {index + 1}")
        index += 1
        wait(
            page,
            f"window.phone.calls[{index}].connected_ms !== null || window.phone.calls[{index}].failed",
        )
        page.wait_for_timeout(3_000)
        out["incoming_stats"] = page.evaluate(f"window.audioStats({index})")
        wait(page, f"window.phone.calls[{index}].ended !== null || window.phone.calls[{index}].failed")
        out["incoming"] = page.evaluate(f"window.phone.calls[{index}]")
        out["incoming_rc"] = incoming.result()
        out["errors"] = errors
    return out


@pytest_twisted.inlineCallbacks
def test_jssip_registers_calls_through_the_edge_and_is_called(edge: BrowserEdge) -> Any:
    """JsSIP registers over WSS to sipp, hears >= 200 echoed packets in 10 s, hangs up, and answers the PBX's call."""
    out = yield threads.deferToThread(_jssip_session, edge)
    outgoing, stats = out["outgoing"], out["outgoing_stats"]
    received = stats["last"]["packetsReceived"] - stats["first"]["packetsReceived"]
    print(
        f"\nJsSIP call set-up: INVITE to confirmed {outgoing['confirmed_ms']:.0f} ms, to media connected"
        f" {outgoing['connected_ms']:.0f} ms; packets back in 10 s: {received}"
        f" (total {stats['last']['packetsReceived']}, sent {stats['last']['packetsSent']},"
        f" lost {stats['last']['packetsLost']}); incoming call: answered in"
        f" {out['incoming']['connected_ms']:.0f} ms, packets {out['incoming_stats']['packetsReceived']}"
    )
    assert out["errors"] == []
    assert out["path"] and ";lr;ob" in out["path"]
    assert received >= 200
    assert out["outgoing_end"]["ended"] == "local" and out["outgoing_end"]["failed"] is None
    assert out["answer_rc"] == 0  # sipp got the BYE and answered it
    assert out["incoming"]["direction"] == "incoming" and out["incoming"]["failed"] is None
    assert out["incoming"]["confirmed_ms"] is not None and out["incoming"]["ended"] == "remote"
    assert out["incoming_stats"]["packetsReceived"] >= 50
    assert out["incoming_rc"] == 0
    yield until(edge.media_idle, 5, raises=False)
    assert edge.media_idle()
