"""The overload gate and the lag histogram, in virtual time."""

from __future__ import annotations

from mcs_edge.core.load import AdmissionGate, LagHistogram, OverloadSettings, RateMeter


def _feed(gate: AdmissionGate, start: float, lags: list[float], interval: float = 0.01) -> float:
    now = start
    for lag in lags:
        now += interval + lag
        gate.observe_lag(lag, now)
    return now


def test_one_long_turn_refuses_nothing() -> None:
    """A single late sample (a certificate generated, a reload) followed by punctual ones never sheds."""
    gate = AdmissionGate()
    now = _feed(gate, 0.0, [0.0] * 10)
    now = _feed(gate, now, [0.4])
    now = _feed(gate, now, [0.0] * 10)
    assert gate.ratio == 1.0 and not gate.shedding
    assert all(gate.admit() for _ in range(100)) and gate.shed == 0


def test_sustained_lag_sheds_a_growing_share_deterministically() -> None:
    """Late at every sample: the admitted share falls by `decrease` per step; admission follows it exactly."""
    gate = AdmissionGate(OverloadSettings(lag_high=0.05, decrease=0.5, step=0.05))
    _feed(gate, 0.0, [0.1] * 6)
    assert 0.0 < gate.ratio <= 0.25
    ratio = gate.ratio
    admitted = sum(gate.admit() for _ in range(1000))
    assert abs(admitted - 1000 * ratio) <= 1
    assert gate.shed == 1000 - admitted


def test_gate_reopens_within_a_second_once_lag_is_gone() -> None:
    """From a fully closed gate, punctual samples restore full admission within 1 s (increase 0.1 per 50 ms)."""
    gate = AdmissionGate(OverloadSettings(min_ratio=0.0))
    now = _feed(gate, 0.0, [0.2] * 40)
    assert gate.ratio < 0.01
    t0 = now
    while gate.shedding:
        now = _feed(gate, now, [0.0])
        assert now - t0 < 1.0
    assert now - t0 <= 0.8


def test_disabled_gate_admits_everything() -> None:
    """overload.enabled = false: the ratio stays 1 whatever the lag."""
    gate = AdmissionGate(OverloadSettings(enabled=False))
    _feed(gate, 0.0, [1.0] * 20)
    assert gate.ratio == 1.0 and gate.admit()


def test_lag_histogram_buckets_and_rate_meter() -> None:
    """Samples land in the first bucket whose bound is >= the sample; cumulative counts as Prometheus wants."""
    h = LagHistogram((0.001, 0.01, float("inf")))
    for v in (0.0005, 0.001, 0.005, 3.0):
        h.observe(v)
    assert h.cumulative() == [(0.001, 2), (0.01, 3), (float("inf"), 4)]
    assert h.count == 4 and h.max == 3.0
    meter = RateMeter(1.0)
    meter.sample(0, 10.0)
    assert meter.sample(500, 10.5) == 0.0  # not a full window yet
    assert meter.sample(2000, 11.0) == 2000.0


def test_saturated_cpu_sheds_even_with_moderate_lag() -> None:
    """A process never idle (busy share >= busy_high) sheds although each turn is short; it reopens once idle again."""
    gate = AdmissionGate(OverloadSettings(busy_high=0.95))
    now = 0.0
    for _ in range(30):
        now += 0.02
        gate.observe_lag(0.01, now, busy=1.0)
    assert gate.shedding and gate.ratio < 0.5
    for _ in range(200):
        now += 0.01
        gate.observe_lag(0.0, now, busy=0.3)
    assert not gate.shedding


def test_work_read_long_after_the_last_probe_is_refused_by_age() -> None:
    """`refusal(now)`: within max_queue_age of the last sample nothing is late; past it, after a turn
    that was that long too, every new request is refused as `queue_age` whatever the ratio; no sample
    yet or a disabled gate: never late."""
    gate = AdmissionGate(OverloadSettings(max_queue_age=0.1))
    assert not gate.late(5.0)  # no probe has run
    now = _feed(gate, 0.0, [0.0, 0.0, 0.12])
    assert gate.ratio == 1.0
    assert gate.refusal(now + 0.09) is None
    assert gate.refusal(now + 0.11) == "queue_age"
    assert gate.shed == 1 and gate.admitted == 1
    off = AdmissionGate(OverloadSettings(max_queue_age=0.0))
    _feed(off, 0.0, [0.0])
    assert off.refusal(100.0) is None
    disabled = AdmissionGate(OverloadSettings(enabled=False))
    _feed(disabled, 0.0, [0.0])
    assert disabled.refusal(100.0) is None


def test_age_rule_decides_alone_and_the_fraction_stays_one() -> None:
    """With max_queue_age set, sustained lag and a saturated CPU leave the admitted fraction at 1:
    lowering it would refuse work the turn has room for while the refusals' cost, which lengthens the
    turn, stays (module docstring); only age refuses, and it refuses every new request past it."""
    gate = AdmissionGate(OverloadSettings(max_queue_age=0.03, busy_high=0.95))
    now = 0.0
    assert gate.last_lag == 0.0
    for _ in range(100):
        now += 0.1
        gate.observe_lag(0.09, now, busy=1.0)
    assert gate.ratio == 1.0 and not gate.shedding
    assert gate.smoothed > 0.05 and gate.busy > 0.95  # still measured (metrics)
    assert gate.refusal(now + 0.02) is None
    assert [gate.refusal(now + 0.031 + i * 0.001) for i in range(5)] == ["queue_age"] * 5
    assert gate.shed == 5 and gate.admitted == 1


def test_gate_decision_table() -> None:
    """One row per line of the module's table: disabled or unprobed gates admit; with an age limit,
    age alone refuses; without one, the AIMD fraction decides (RFC 6357 s.4, RFC 7339 s.5.10)."""
    rows: list[tuple[OverloadSettings, bool, float, str | None]] = [
        # settings, lag of the probe's last sample (None: no probe ran), seconds since it, expected
        (OverloadSettings(enabled=False, max_queue_age=0.03), 0.05, 1.0, None),
        (OverloadSettings(max_queue_age=0.03), None, 1.0, None),
        (OverloadSettings(max_queue_age=0.03), 0.05, 0.031, "queue_age"),
        (OverloadSettings(max_queue_age=0.03), 0.03, 0.031, "queue_age"),
        (OverloadSettings(max_queue_age=0.03), 0.05, 0.029, None),
        (OverloadSettings(max_queue_age=0.03), 0.01, 1.0, None),  # one long turn after a short one
        (OverloadSettings(max_queue_age=0.0), 0.05, 5.0, None),  # no age rule, fraction still 1
    ]
    for settings, lag, age, expected in rows:
        gate = AdmissionGate(settings)
        if lag is not None:
            gate.observe_lag(lag, 10.0)
        assert gate.refusal(10.0 + age) == expected, (settings, lag, age)
    aimd = AdmissionGate(OverloadSettings(max_queue_age=0.0, min_ratio=0.0))
    _feed(aimd, 0.0, [0.2] * 40)
    assert aimd.refusal(aimd.last_tick or 0.0) == "loop_lag"


def test_one_long_turn_refuses_nothing_by_age_two_in_a_row_do() -> None:
    """A long turn after short ones (a certificate generated, a burst of media work) refuses nothing
    read late in it; when the turn before was long too (the probe's sample says so), it refuses."""
    gate = AdmissionGate(OverloadSettings(max_queue_age=0.03))
    now = _feed(gate, 0.0, [0.0] * 5)
    assert gate.refusal(now + 0.5) is None  # first long turn: served
    gate.observe_lag(0.5, now + 0.5)  # the probe runs after it and measures it
    now += 0.5
    assert gate.refusal(now + 0.02) is None  # within the age
    assert gate.refusal(now + 0.04) == "queue_age"  # second long turn: refused
    gate.observe_lag(0.04, now + 0.05)
    gate.observe_lag(0.0, now + 0.06)  # a punctual turn: the next long one is a first again
    assert gate.refusal(now + 0.5) is None
