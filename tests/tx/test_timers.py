"""Timers: one owner for every timer; fired and cancelled timers die by reference counting."""

from __future__ import annotations

import gc
import weakref

from twisted.internet.task import Clock

from mcs_edge.tx.timers import SlicedSweep, Timers


def test_a_fired_timer_is_freed_without_the_cycle_collector() -> None:
    """After it fires, a timer's DelayedCall is freed at once (no reference cycle left for the
    collector: such cycles, one per timer, made the edge's collections long, issue 21)."""
    clock = Clock()
    timers = Timers(clock, clock.seconds)
    fired: list[int] = []
    gc.collect()
    gc.disable()
    try:
        ref = weakref.ref(timers.call_later(1.0, fired.append, 1))
        clock.advance(1.0)
        assert fired == [1]
        assert ref() is None
        assert len(timers) == 0
    finally:
        gc.enable()


def test_a_cancelled_timer_is_freed_without_the_cycle_collector() -> None:
    """A cancelled timer is freed at once too, and never runs."""
    clock = Clock()
    timers = Timers(clock, clock.seconds)
    fired: list[int] = []
    gc.collect()
    gc.disable()
    try:
        call = timers.call_later(1.0, fired.append, 1)
        ref = weakref.ref(call)
        timers.cancel(call)
        del call
        assert ref() is None
        clock.advance(2.0)
        assert fired == []
        assert len(timers) == 0
    finally:
        gc.enable()


class TurnClock(Clock):
    """``advance`` is one reactor turn: calls scheduled during it (``callLater(0)``) wait for the
    next, as on a real reactor (``Clock.advance`` would run them at once)."""

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        self._sortCalls()
        for call in [c for c in self.calls if c.getTime() <= self.seconds()]:
            if call in self.calls:
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


def test_a_sliced_sweep_visits_256_items_per_reactor_turn() -> None:
    """A pass over 1,000 items runs 256 per turn, yielding between slices; every item is visited once
    per pass, and the next pass starts at the next interval."""
    clock = TurnClock()
    timers = Timers(clock, clock.seconds)
    items = list(range(1000))
    seen: list[int] = []
    sweep = SlicedSweep(timers, 10.0, lambda: items, seen.append)
    sweep.start()
    clock.advance(10.0)
    assert seen == items[:256]
    clock.advance(0)
    assert seen == items[:512]
    clock.pump([0, 0])
    assert seen == items
    clock.advance(10.0)
    assert len(seen) == 1256 and sweep.passes == 2
    sweep.stop()
    assert len(timers) == 0


def test_a_failing_visit_is_logged_and_the_pass_goes_on() -> None:
    """One item raising does not end the pass."""
    clock = Clock()
    timers = Timers(clock, clock.seconds)
    seen: list[int] = []

    def visit(i: int) -> None:
        if i == 3:
            raise ValueError("boom")
        seen.append(i)

    sweep = SlicedSweep(timers, 1.0, lambda: range(6), visit, size=4)
    sweep.start()
    clock.advance(1.0)
    assert seen == [0, 1, 2, 4, 5]
    sweep.stop()
