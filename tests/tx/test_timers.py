"""Timers: one owner for every timer; fired and cancelled timers die by reference counting."""

from __future__ import annotations

import gc
import weakref

from twisted.internet.task import Clock

from mcs_edge.tx.timers import Timers


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
