"""Overload control in virtual time: the loop-lag probe closes the gate, the router refuses early."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from twisted.internet.task import Clock

from mcs_edge.core.load import OverloadSettings
from mcs_edge.tx.ops.loadprobe import (
    NO_AUTOMATIC_FULL,
    FullCollections,
    LoadProbe,
    overload_settings,
    tune_gc,
)
from mcs_edge.tx.sip.router import ClientFlow, SipRouter

from .test_sip_router import CFG, Harness, _invite, _options, _status


def _register(n: int) -> bytes:
    return (
        f"REGISTER sip:rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKr{n}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:a@rossi.example.com>;tag=r{n}\r\nTo: <sip:a@rossi.example.com>\r\n"
        f"Call-ID: reg{n}\r\nCSeq: {n} REGISTER\r\nContact: <sip:a@x.invalid;transport=ws>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _in_dialog(method: str, n: int) -> bytes:
    return (
        f"{method} sip:pbx@10.1.0.10 SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKd{n}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:a@rossi.example.com>;tag=1\r\nTo: <sip:200@rossi.example.com>;tag=p1\r\n"
        f"Call-ID: c2\r\nCSeq: {n} {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _stall(clock: Clock, probe: LoadProbe, seconds: float, turns: int) -> None:
    """``turns`` reactor turns that each run ``seconds`` past the probe's deadline."""
    for _ in range(turns):
        clock.advance(probe.interval + seconds)


def _overloaded() -> tuple[Harness, LoadProbe]:
    h = Harness()
    probe = LoadProbe(h.timers, OverloadSettings(min_ratio=0.0), 0.01)
    h.router.overload = probe.gate
    probe.start()
    _stall(h.clock, probe, 0.2, 40)
    assert probe.gate.ratio < 0.01
    return h, probe


def test_probe_measures_how_late_its_timer_fires() -> None:
    """Punctual turns land in the first bucket; a 0.3 s stall lands in the 0.5 s bucket."""
    h = Harness()
    probe = LoadProbe(h.timers, OverloadSettings(), 0.01)
    probe.start()
    h.clock.pump([0.01] * 10)
    h.clock.advance(0.31)
    cumulative = dict(probe.histogram.cumulative())
    assert probe.histogram.count == 11
    assert cumulative[0.0005] == 10 and cumulative[0.2] == 10 and cumulative[0.5] == 11
    probe.stop()
    assert len(h.timers) == 0


def test_overloaded_edge_refuses_new_invite_and_register_with_503_retry_after() -> None:
    """Under sustained lag a new INVITE or REGISTER gets 503 + Retry-After and never reaches the PBX."""
    h, probe = _overloaded()
    h.send(_invite())
    h.send(_register(1))
    assert h.udp.sent == []
    assert [_status(d) for d in h.to_client] == [503, 503]
    assert all(b"\r\nRetry-After: 5\r\n" in d for d in h.to_client)
    assert h.router.shed == {"INVITE": 1, "REGISTER": 1}
    assert h.router.core.pairs == 0 and len(h.router.core.layer) == 0  # nothing parsed, nothing kept
    probe.stop()


def test_overload_never_refuses_dialog_ack_cancel_bye_or_other_methods() -> None:
    """In-dialog requests (re-INVITE, BYE), ACK, CANCEL and OPTIONS go through whatever the load."""
    h, probe = _overloaded()
    for i, method in enumerate(("INVITE", "BYE", "ACK", "UPDATE"), start=2):
        h.send(_in_dialog(method, i))
    h.send(_options())
    assert h.router.shed == {"INVITE": 0, "REGISTER": 0}
    assert len(h.udp.sent) == 5
    assert all(_status(d) != 503 for d in h.to_client)
    probe.stop()


def test_full_service_within_a_second_after_the_load_stops() -> None:
    """Once turns are punctual again, the gate reopens and a new INVITE reaches the PBX within 1 s."""
    h, probe = _overloaded()
    h.clock.pump([0.01] * 100)
    assert not probe.gate.shedding
    h.send(_invite())
    assert len(h.udp.sent) == 1
    probe.stop()


def test_media_admission_limit_refuses_new_calls_only() -> None:
    """Above overload.max_media_packet_rate a new call gets 503; a request within a dialog still goes through."""
    from mcs_edge.tx.media.relay import MediaRelay

    h = Harness()
    relay = MediaRelay(CFG, h.clock, h.timers, tenant_media=lambda _t: "passthrough")
    over = [True]
    relay.over_limit = lambda: over[0]
    router = SipRouter(CFG, h.router.tenants, h.timers, media=relay)
    router.udp = h.udp
    sent: list[bytes] = []
    flow: ClientFlow | None = router.open_flow(
        CFG.tenants[0], "wss", ("192.0.2.8", 40001), sent.append, _noop
    )
    assert flow is not None
    offer = (
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.8\r\ns=-\r\nc=IN IP4 192.0.2.8\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    )
    invite = _invite().replace(
        b"Content-Length: 0\r\n", b"Content-Type: application/sdp\r\nContent-Length: %d\r\n" % len(offer)
    )
    router.data_from_client(flow, invite + offer)
    assert [_status(d) for d in sent] == [100, 503] and h.udp.sent == []
    assert relay.counters["media_admission_refused"] == 1
    router.data_from_client(flow, _in_dialog("INVITE", 9))  # no SDP, within a dialog
    assert len(h.udp.sent) == 1
    relay.stop()
    router.stop()


def _noop(*_args: Any) -> None:
    return None


def _late(h: Harness, seconds: float) -> None:
    """The reactor is ``seconds`` into a turn that started after the probe last ran (timers wait)."""
    h.clock.rightNow += seconds


def test_request_read_late_in_a_long_turn_is_refused_by_its_age() -> None:
    """Before the gate's ratio moves, a new REGISTER read 0.2 s after the probe last ran gets 503 (queue_age);
    one read within the age limit, and requests within a dialog, still go through."""
    h = Harness()
    probe = LoadProbe(h.timers, OverloadSettings(max_queue_age=0.1), 0.01)
    h.router.overload = probe.gate
    probe.start()
    h.clock.pump([0.01] * 5)
    _stall(h.clock, probe, 0.15, 1)  # the turn before was long too (the probe's sample)
    _late(h, 0.05)
    h.send(_register(1))
    assert len(h.udp.sent) == 1 and not probe.gate.shedding
    _late(h, 0.15)
    h.send(_register(2))
    h.send(_in_dialog("BYE", 3))
    assert [_status(d) for d in h.to_client] == [503]
    assert b"\r\nRetry-After: 5\r\n" in h.to_client[0]
    assert len(h.udp.sent) == 2  # the first REGISTER and the BYE
    assert h.router.shed["queue_age:REGISTER"] == 1
    h.clock.advance(0)  # the turn ends: the probe runs, new work is fresh again
    h.send(_register(4))
    assert len(h.udp.sent) == 3
    probe.stop()
    _late(h, 1.0)
    h.send(_register(5))  # no probe running: nothing is late
    assert len(h.udp.sent) == 4


def test_ack_of_a_refused_invite_is_absorbed_not_routed() -> None:
    """The ACK of the 503 (same branch as the INVITE) ends at the edge and is counted."""
    h, probe = _overloaded()
    h.send(_invite())
    assert [_status(d) for d in h.to_client] == [503]
    ack = _invite().replace(b"INVITE sip:", b"ACK sip:").replace(b"1 INVITE", b"1 ACK")
    h.send(ack)
    assert h.udp.sent == []
    assert h.router.counters[("overload_ack_absorbed", "rossi", "")] == 1
    probe.stop()


def _pbx_invite(branch: str = "z9hG4bKpbx1") -> bytes:
    return (
        f"INVITE sip:a@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.10:5060;branch={branch}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:200@rossi.example.com>;tag=p9\r\nTo: <sip:a@rossi.example.com>\r\n"
        "Call-ID: pbx1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_new_invite_from_the_pbx_over_udp_gets_one_503_and_its_retransmissions_are_dropped() -> None:
    """Under overload a PBX's new INVITE is answered 503 over UDP once; a retransmission is dropped and
    counted; the PBX's ACK of the 503 ends at the edge; nothing reaches the client."""
    h, probe = _overloaded()
    pbx = ("10.1.0.10", 5060)
    h.router.data_from_backend(_pbx_invite(), pbx, "udp")
    assert [(_status(d), addr) for d, addr in h.udp.sent] == [(503, pbx)]
    assert b"\r\nRetry-After: 5\r\n" in h.udp.sent[0][0]
    h.router.data_from_backend(_pbx_invite(), pbx, "udp")
    assert len(h.udp.sent) == 1
    assert h.router.counters[("overload_retransmission_dropped", "", "udp")] == 1
    ack = _pbx_invite().replace(b"INVITE sip:", b"ACK sip:").replace(b"7 INVITE", b"7 ACK")
    h.router.data_from_backend(ack, pbx, "udp")
    assert h.router.counters[("overload_ack_absorbed", "", "udp")] == 1
    assert h.to_client == [] and h.router.core.pairs == 0
    probe.stop()


def test_full_collection_waits_for_a_calm_reactor() -> None:
    """Due after the interval, the full collection runs at the first calm tick (low lag, low CPU),
    not while the reactor lags or the CPU is busy; the next one is due an interval later."""
    runs: list[int] = []
    full = FullCollections(60.0, 0.0, lambda gen: runs.append(gen) or 0)
    full.young_due = float("inf")  # young collections: see the next test
    assert not full.tick(30.0, 0.0, 0.0)  # not due yet
    assert not full.tick(61.0, 0.05, 0.1)  # due, but the loop lags
    assert not full.tick(61.5, 0.0, 0.9)  # due, but the CPU is busy
    assert full.tick(62.0, 0.001, 0.2)
    assert runs == [2] and full.calm_runs == 1 and full.forced_runs == 0
    full.young_due = float("inf")
    assert not full.tick(121.0, 0.0, 0.0)
    assert full.tick(122.0, 0.0, 0.0)


def test_full_collections_freeze_survivors_and_walk_the_whole_heap_every_tenth() -> None:
    """Each full collection freezes its survivors; every THAW_EVERY-th unfreezes everything first."""
    calls: list[str] = []
    full = FullCollections(
        60.0,
        0.0,
        lambda gen: calls.append(f"collect{gen}") or 0,
        lambda: calls.append("freeze"),
        lambda: calls.append("unfreeze"),
    )
    for k in range(1, 2 * FullCollections.THAW_EVERY + 1):
        full.young_due = float("inf")
        assert full.tick(60.0 * k + 1, 0.0, 0.0)
    thaw = FullCollections.THAW_EVERY
    one = ["collect2", "freeze"]
    assert calls == one * (thaw - 1) + ["unfreeze", *one] + one * (thaw - 1) + ["unfreeze", *one]
    assert full.thawed_runs == 2 and full.calm_runs == 2 * thaw


class _Node:
    def __init__(self) -> None:
        self.other: Any = None


def test_a_cycle_among_frozen_survivors_is_collected_at_the_next_thaw() -> None:
    """The real collector: an object alive at a full collection is frozen; when it later dies in a
    reference cycle, the collections that walk only newer objects leave it, the thawed one frees it."""
    full = FullCollections(60.0, 0.0, gc.collect, gc.freeze, gc.unfreeze)
    try:
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle, alive while we hold it
        gone = weakref.ref(a)
        full.young_due = float("inf")
        assert full.tick(61.0, 0.0, 0.0)  # full collection 1: a and b survive, frozen
        assert gc.get_freeze_count() > 0
        del a, b  # now garbage, in a cycle, frozen
        k = 1
        while full.thawed_runs == 0 and k < 100:
            assert gone() is not None  # not walked while frozen
            k += 1
            full.young_due = float("inf")
            assert full.tick(60.0 * k + 1, 0.0, 0.0)
        assert k == FullCollections.THAW_EVERY and gone() is None
    finally:
        gc.unfreeze()


def test_full_collection_forced_on_an_edge_never_calm() -> None:
    """An edge never calm still gets its full collection after FORCE_FACTOR intervals."""
    runs: list[int] = []
    full = FullCollections(60.0, 0.0, lambda gen: runs.append(gen) or 0)
    for t in range(60, 600, 10):
        full.tick(float(t), 0.5, 1.0)
    assert 2 not in runs
    assert full.tick(600.0, 0.5, 1.0)
    assert runs[-1] == 2 and full.forced_runs == 1


def test_young_collections_at_every_probe_tick_whatever_the_load() -> None:
    """Young collections run at every 10 ms tick (one firing a millisecond early included), busy or
    not, so each walks only 10 ms of survivors; never twice within YOUNG_INTERVAL."""
    runs: list[int] = []
    full = FullCollections(60.0, 0.0, lambda gen: runs.append(gen) or 0)
    assert not full.tick(0.005, 0.5, 1.0)
    assert full.tick(0.009, 0.5, 1.0)
    assert not full.tick(0.012, 0.5, 1.0)
    assert full.tick(0.0185, 0.5, 1.0)
    assert full.tick(0.0285, 0.5, 1.0)
    assert runs == [0, 0, 0] and full.young_runs == 3


def test_young_collection_waits_while_next_to_nothing_was_allocated() -> None:
    """A due young collection with fewer than YOUNG_MIN new objects is skipped (an idle edge), and
    runs at the next tick once enough were allocated."""
    runs: list[int] = []
    pending = [3]
    full = FullCollections(60.0, 0.0, lambda gen: runs.append(gen) or 0, young_pending=lambda: pending[0])
    assert not full.tick(0.1, 0.0, 0.0) and not full.tick(0.2, 0.0, 0.0)
    assert runs == [] and full.young_skipped == 2
    pending[0] = FullCollections.YOUNG_MIN
    assert full.tick(0.35, 0.0, 0.0)
    assert runs == [0] and full.young_runs == 1


def test_probe_ticks_the_full_collections() -> None:
    """The load probe drives the full collections: one after 60 s of calm turns in virtual time."""
    h = Harness()
    runs: list[int] = []
    full = FullCollections(60.0, h.clock.seconds(), lambda gen: runs.append(gen) or 0)
    probe = LoadProbe(h.timers, OverloadSettings(), 0.5, cpu_time=lambda: 0.0, full_collections=full)
    probe.start()
    h.clock.pump([0.5] * 118)
    assert 2 not in runs and len(runs) == 118  # a young collection each tick (0.5 s apart)
    h.clock.pump([0.5] * 4)
    assert runs.count(2) == 1
    probe.stop()


def test_tune_gc_hands_full_collections_to_the_probe() -> None:
    """With full_interval, the interpreter's own collections of generations 1 and 2 are off (their
    thresholds out of reach) and tune_gc returns the schedule the probe ticks; without, they are back."""
    before = gc.get_threshold()
    try:
        full = tune_gc((before[0], before[1], before[2]), monitor=False, full_interval=30.0)
        assert full is not None and full.interval == 30.0
        gc.collect(0)
        full.young_due = 0.0
        assert not full.tick(0.0, 0.0, 0.0) and full.young_skipped == 1  # nothing allocated since
        assert gc.get_threshold() == (before[0], NO_AUTOMATIC_FULL, NO_AUTOMATIC_FULL)
        assert tune_gc(before, monitor=False) is None
        assert gc.get_threshold() == before
    finally:
        tune_gc(before, monitor=False)


def _idle_probe(h: Harness, cpu: list[float], **settings: Any) -> LoadProbe:
    probe = LoadProbe(
        h.timers, OverloadSettings(**settings), 0.01, cpu_time=lambda: cpu[0], idle_interval=0.5
    )
    h.router.overload = probe.gate
    probe.start()
    return probe


def test_probe_of_an_idle_reactor_ticks_every_idle_interval() -> None:
    """After 1 s without CPU use or lag the probe ticks every 0.5 s, not every 10 ms: 20 wake-ups in
    10 idle seconds instead of 1,000 (the idle edge's CPU went mostly to these)."""
    h = Harness()
    probe = _idle_probe(h, [0.0])
    h.clock.pump([0.01] * 99)
    assert not probe.idle and probe.histogram.count == 99
    h.clock.pump([0.01] * 11)
    assert probe.idle
    count = probe.histogram.count
    h.clock.pump([0.001] * 10000)  # 10 idle seconds
    assert count + 19 <= probe.histogram.count <= count + 21
    assert len(h.timers) == 1
    probe.stop()
    assert len(h.timers) == 0 and probe.gate.wake is None


def test_first_message_wakes_an_idle_probe_and_is_not_late() -> None:
    """A REGISTER read 0.4 s after the idle probe's last tick is served (the reactor was idle, not
    behind: queue_age refuses nothing), and the probe samples every 10 ms again from that moment."""
    h = Harness()
    probe = _idle_probe(h, [0.0], max_queue_age=0.1)
    h.clock.pump([0.01] * 110)
    assert probe.idle
    h.clock.pump([0.4])
    h.send(_register(1))
    assert len(h.udp.sent) == 1 and h.to_client == [] and h.router.shed.get("queue_age:REGISTER", 0) == 0
    assert probe.wakes == 1 and not probe.idle
    count = probe.histogram.count
    h.clock.pump([0.01] * 5)
    assert probe.histogram.count == count + 5
    _late(h, 0.15)  # then one long turn: served (one long turn refuses nothing)
    h.send(_register(2))
    assert h.to_client == []
    h.clock.advance(0)  # the probe measures it
    _late(h, 0.15)  # a second long turn in a row: the age check works again at once
    h.send(_register(3))
    assert [_status(d) for d in h.to_client] == [503]
    probe.stop()


def _next_tick(h: Harness) -> float:
    """Seconds until the probe's tick (the one timer pending)."""
    (call,) = h.clock.getDelayedCalls()
    return call.getTime() - h.clock.seconds()


def test_idle_probe_returns_to_its_interval_when_busy_or_late_without_a_message() -> None:
    """CPU use with no SIP message (media, timers) or a late idle tick brings back 10 ms samples, and
    a stall after that is shed as before; a busy reactor never slows its probe."""
    h = Harness()
    cpu = [0.0]
    probe = _idle_probe(h, cpu)
    h.clock.pump([0.01] * 110)
    assert probe.idle
    cpu[0] += 0.05  # 10% of the next 0.5 s (keepalives answered below the router): still idle
    h.clock.advance(_next_tick(h))
    assert probe.idle
    cpu[0] += 0.15  # 30% of the next 0.5 s on the CPU
    h.clock.pump([0.5])
    assert not probe.idle and probe.gate.wake is None
    h.clock.pump([0.01] * 150)
    assert probe.idle
    h.clock.advance(_next_tick(h) + 0.03)  # the idle tick fires 30 ms late: another process had the CPU
    assert probe.idle
    h.clock.advance(_next_tick(h) + 0.2)  # the idle tick fires 0.2 s late
    assert not probe.idle
    _stall(h.clock, probe, 0.2, 40)
    assert probe.gate.ratio < 0.01
    h.send(_invite())
    assert [_status(d) for d in h.to_client] == [503]
    probe.stop()

    busy = Harness()
    clock = busy.clock
    probe = LoadProbe(busy.timers, OverloadSettings(), 0.01, cpu_time=clock.seconds, idle_interval=0.5)
    probe.start()
    clock.pump([0.01] * 500)
    assert not probe.idle and probe.histogram.count == 500
    probe.stop()


def test_probe_without_idle_interval_keeps_its_interval() -> None:
    h = Harness()
    probe = LoadProbe(h.timers, OverloadSettings(), 0.01, cpu_time=lambda: 0.0)
    probe.start()
    h.clock.pump([0.01] * 300)
    assert not probe.idle and probe.histogram.count == 300 and probe.gate.wake is None
    probe.stop()


def test_default_gate_refuses_new_work_read_late_in_a_turn_never_dialog_ack_cancel_bye() -> None:
    """With the configured defaults (the age rule on) a long turn's new INVITE and REGISTER get 503 +
    Retry-After before they are parsed; a re-INVITE, BYE, ACK, CANCEL and UPDATE read in the same turn
    go on to the PBX; the next punctual turn serves new requests again (RFC 3261 s.21.5.4, RFC 7339
    s.5.10.1)."""
    h = Harness()
    probe = LoadProbe(h.timers, overload_settings(CFG), CFG.overload.probe_interval)
    assert probe.gate.settings.max_queue_age == CFG.overload.max_queue_age > 0
    h.router.overload = probe.gate
    probe.start()
    h.clock.pump([0.01] * 5)
    _stall(h.clock, probe, 0.2, 1)  # a long turn (the probe measures it), then
    _late(h, 0.2)  # another, busy for 0.2 s since the probe last ran
    h.send(_invite())
    h.send(_register(1))
    for i, method in enumerate(("INVITE", "BYE", "ACK", "UPDATE"), start=2):
        h.send(_in_dialog(method, i))
    cancel = _invite().replace(b"INVITE sip:", b"CANCEL sip:").replace(b"1 INVITE", b"1 CANCEL")
    h.send(cancel)
    refused = [d for d in h.to_client if _status(d) == 503]
    assert len(refused) == 2 and all(b"\r\nRetry-After: 5\r\n" in d for d in refused)
    assert {d.split(b"\r\nCSeq: ", 1)[1].split(b"\r\n", 1)[0] for d in refused} == {
        b"1 INVITE",
        b"1 REGISTER",
    }
    sent = [d.split(b" ", 1)[0] for d, _addr in h.udp.sent]
    assert sent.count(b"INVITE") == 1 and {b"BYE", b"ACK", b"UPDATE"} <= set(sent)  # the re-INVITE
    # the CANCEL is handled by the proxy (its INVITE was refused statelessly: 481), never refused 503
    assert [_status(d) for d in h.to_client if b"\r\nCSeq: 1 CANCEL\r\n" in d] == [481]
    assert h.router.shed == {"INVITE": 0, "REGISTER": 0, "queue_age:INVITE": 1, "queue_age:REGISTER": 1}
    assert probe.gate.ratio == 1.0
    h.clock.advance(0)  # the turn ends, the probe runs: new work is fresh again
    h.send(_register(9))
    assert any(d.startswith(b"REGISTER ") for d, _addr in h.udp.sent)
    probe.stop()


def test_request_read_after_a_collection_in_the_probe_is_not_refused_by_age() -> None:
    """A collection run by the probe's tick (0.2 s here) does not make the requests read right after it
    late: the queue age counts from the end of the probe's own work (a calm edge is not behind)."""
    h = Harness()

    def collect(_generation: int) -> int:
        h.clock.rightNow += 0.2  # the collection's pause
        return 0

    full = FullCollections(60.0, h.clock.seconds(), collect)
    probe = LoadProbe(h.timers, overload_settings(CFG), 0.01, cpu_time=lambda: 0.0, full_collections=full)
    h.router.overload = probe.gate
    probe.start()
    for _ in range(20):  # until the tick that runs the young collection
        h.clock.advance(0.01)
        if full.young_runs:
            break
    assert full.young_runs == 1
    h.send(_register(1))  # read in the same turn, right after the collection
    assert len(h.udp.sent) == 1 and h.router.shed.get("queue_age:REGISTER", 0) == 0
    probe.stop()


def test_pbx_invite_read_late_gets_one_503_and_its_retransmission_is_dropped_with_the_default_gate() -> None:
    """With the configured defaults (the age rule), a PBX's new INVITE over UDP read late in a turn
    is answered 503 + Retry-After once; its retransmission, read late too, is dropped and counted."""
    h = Harness()
    probe = LoadProbe(h.timers, overload_settings(CFG), CFG.overload.probe_interval)
    h.router.overload = probe.gate
    probe.start()
    h.clock.pump([0.01] * 5)
    _stall(h.clock, probe, 0.2, 1)
    _late(h, 0.2)
    pbx = ("10.1.0.10", 5060)
    h.router.data_from_backend(_pbx_invite(), pbx, "udp")
    h.router.data_from_backend(_pbx_invite(), pbx, "udp")
    assert [(_status(d), addr) for d, addr in h.udp.sent] == [(503, pbx)]
    assert b"\r\nRetry-After: 5\r\n" in h.udp.sent[0][0]
    assert h.router.counters[("overload_retransmission_dropped", "", "udp")] == 1
    assert h.router.shed["queue_age:INVITE"] == 1 and h.to_client == []
    probe.stop()
