"""Call quality with real WebRTC peers: a clean call and a call with 5% loss on its client leg, side by side.

aiortc plays two browsers (SIP over WSS) of two tenants on one edge; each tenant's test PBX answers
plain RTP, echoes it, and answers the RTCP the edge relays (an RR echoing each SR's LSR, and an SR of
the echoed stream), so the edge sees receiver reports on both legs. On one call every 20th RTP packet
the browser sends is dropped before it leaves (5% loss on the client leg). While the calls are up
the admin API shows their figures; after BYE the per-tenant histograms on /metrics and the one
MED200 record per call say the lossy call lost about 5% and scored a lower MOS.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.aiortc_call import LoopThread, WsUa, audio_call, in_thread
from helpers.edge import InProcessEdge, StopAfter, edge_toml, media_range, tenant_toml
from helpers.media_pbx import AsyncPbx, reporting_echo_answer
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import threads
from twisted.logger import globalLogPublisher

pytestmark = pytest.mark.e2e

CALL_SECONDS = 6.0


class QualityEdge(InProcessEdge):
    """An edge with two bridge tenants, clean ``rossi`` and lossy ``verdi``, each with its own PBX."""

    TENANTS = ("rossi", "verdi")
    ORIGIN = True

    def __init__(self, tmp: Path, runner: LoopThread) -> None:
        super().__init__(tmp, runner=runner)
        self.pbx = {tid: AsyncPbx(reporting_echo_answer(self.loop_closers)) for tid in self.TENANTS}
        for pbx in self.pbx.values():
            runner.run(pbx.start())
            self.loop_closers.append(pbx.close)
        tenants = "".join(
            tenant_toml(tid, self.pbx[tid].port, media="bridge", origin=True) for tid in self.TENANTS
        )
        self.start(edge_toml(self.state, tenants, public=True, media=media_range(100)))


def drop_every_20th_rtp(pc: Any) -> dict[str, int]:
    """Make the browser's DTLS transport drop every 20th outgoing RTP packet (not RTCP): 5% loss."""
    transport = pc.getSenders()[0].transport
    send = transport._send_rtp
    seen = {"rtp": 0, "dropped": 0}

    async def lossy(data: bytes) -> None:
        if not 192 <= data[1] <= 223:
            seen["rtp"] += 1
            if seen["rtp"] % 20 == 0:
                seen["dropped"] += 1
                return
        await send(data)

    transport._send_rtp = lossy
    return seen


async def call(edge: QualityEdge, tid: str, lossy: bool, live: asyncio.Event, done: asyncio.Event) -> Any:
    ws = await in_thread(edge.client, tid)
    ua = WsUa(ws, f"{tid}.example.com")
    pc, _tone, _counter = await audio_call(ua)
    try:
        seen = drop_every_20th_rtp(pc) if lossy else None
        await asyncio.sleep(CALL_SECONDS)
        live.set()
        await done.wait()
        assert await in_thread(ua.bye) == 200
        return seen
    finally:
        await pc.close()
        ws.close()


@pytest.fixture
def edge(tmp_path: Path, runner: LoopThread, stop_after: StopAfter) -> Any:
    return stop_after(QualityEdge(tmp_path, runner))


def histogram(text: str, name: str) -> dict[tuple[str, ...], tuple[float, float]]:
    """(sum, count) of a histogram family per label values (without ``le``)."""
    out: dict[tuple[str, ...], list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for s in family.samples:
            key = tuple(v for k, v in sorted(s.labels.items()) if k != "le")
            slot = out.setdefault(key, [0.0, 0.0])
            if s.name.endswith("_sum"):
                slot[0] = s.value
            elif s.name.endswith("_count"):
                slot[1] = s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


@pytest_twisted.inlineCallbacks
def test_five_percent_loss_on_the_client_leg_shows_in_figures_metrics_and_log(edge: QualityEdge) -> Any:
    """5% loss injected on one browser's uplink: ~5% loss and a lower MOS than the clean call, live in /api/calls, per tenant on /metrics, one MED200 record per call."""
    records: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_format", "")).startswith("MED200"):
            records.append(event)

    globalLogPublisher.addObserver(observe)
    loop = edge.runner.loop
    live = {tid: asyncio.Event() for tid in edge.TENANTS}
    done = asyncio.Event()

    async def both() -> list[Any]:
        return await asyncio.gather(
            call(edge, "rossi", False, live["rossi"], done), call(edge, "verdi", True, live["verdi"], done)
        )

    future = asyncio.run_coroutine_threadsafe(both(), loop)
    try:
        for tid in edge.TENANTS:
            yield threads.deferToThread(
                lambda t=tid: asyncio.run_coroutine_threadsafe(live[t].wait(), loop).result(60)
            )
        calls = {row["tenant"]: row for row in edge.service.admin.calls(None)}
        loop.call_soon_threadsafe(done.set)
        seen = yield threads.deferToThread(future.result, 90)
    finally:
        globalLogPublisher.removeObserver(observe)
    print({tid: row["quality"] for tid, row in calls.items()}, seen)
    assert seen[1]["dropped"] >= 10
    # live, in the admin API
    clean, lossy = calls["rossi"]["quality"], calls["verdi"]["quality"]
    assert calls["verdi"]["agent"] == "sip:alice@verdi.example.com"
    assert 0.03 <= lossy["legs"]["client"]["loss_in"] <= 0.07, lossy
    assert clean["legs"]["client"]["loss_in"] <= 0.01, clean
    assert lossy["mos"] < clean["mos"] - 0.2, (lossy, clean)
    assert clean["legs"]["pbx"]["rtt_ms"] is not None and clean["legs"]["pbx"]["rtt_ms"] < 200
    assert clean["legs"]["client"]["jitter_ms"] is not None
    # per tenant, on /metrics
    text = edge.service.metrics.render().decode()
    mos = histogram(text, "mcs_edge_call_mos")
    assert mos[("rossi",)][1] == 1 and mos[("verdi",)][1] == 1
    assert mos[("verdi",)][0] < mos[("rossi",)][0] - 0.2
    loss = histogram(text, "mcs_edge_call_loss_ratio")
    assert 0.03 <= loss[("client", "verdi")][0] <= 0.07
    assert loss[("client", "rossi")][0] <= 0.01
    # one record per ended call
    by_tenant = {r["tenant"]: r for r in records}
    assert sorted(by_tenant) == ["rossi", "verdi"] and len(records) == 2
    rec = by_tenant["verdi"]
    assert rec["agent"] == "sip:alice@verdi.example.com" and rec["reason"] == "BYE"
    assert rec["duration"] >= CALL_SECONDS
    assert 0.03 <= rec["quality"]["legs"]["client"]["loss_in"] <= 0.07
    assert rec["quality"]["mos"] < by_tenant["rossi"]["quality"]["mos"]
