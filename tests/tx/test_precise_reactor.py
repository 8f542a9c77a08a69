"""The edge's reactor wakes Twisted's delayed calls with a timerfd (issue 21): calls run in order,
never before their time, cancelled and moved calls are honoured, and a loop turn is spent only when
a call is due (uvloop's millisecond timers fired early and Twisted re-armed them: empty timer turns).

The reactor is installed in a child process (this process has pytest's reactor)."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcs_edge.reactor import TimerFd

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from mcs_edge.reactor import install
install()
from twisted.internet import reactor
from twisted.internet.asyncioreactor import AsyncioSelectorReactor

turns = [0]
original = AsyncioSelectorReactor._onTimer
def counted(self):
    turns[0] += 1
    original(self)
AsyncioSelectorReactor._onTimer = counted

fired, early = [], []
def at(name, when):
    def run():
        now = reactor.seconds()
        fired.append(name)
        if now < when:
            early.append((name, when - now))
    return run

start = reactor.seconds()
delays = [0.0, 0.0003, 0.0011, 0.0019, 0.0026, 0.004, 0.0047, 0.006, 0.0074, 0.0093, 0.012, 0.02]
calls = {}
for i, d in enumerate(delays):
    calls[i] = reactor.callLater(d, at(i, start + d))
calls[5].cancel()                     # never runs
calls[11].reset(0.0135)               # moved earlier: runs after 10
calls[11].time  # noqa
moved = calls[11]
moved.func = at(11, start + 0.0135)
calls[3].delay(0.01)                  # moved later: at 0.0119, before 10
calls[3].func = at(3, start + 0.0119)

# the timer is armed for the earliest call, also when a new call is sooner by under a millisecond
armed = []
def check_armed():
    first = reactor.callLater(0.02, lambda: None)
    armed.append(abs(reactor._scheduledAt - first.getTime()) < 1e-9)
    sooner = reactor.callLater(0.0197, lambda: None)
    armed.append(abs(reactor._scheduledAt - sooner.getTime()) < 1e-9)
reactor.callLater(0.025, check_armed)

def chain(n, t0):
    # sub-millisecond delays one after the other: each must wait its own time, no more turns
    if n == 0:
        reactor.callLater(0.05, reactor.stop)
        return
    now = reactor.seconds()
    fired.append(("chain", n))
    if now < t0:
        early.append((("chain", n), t0 - now))
    d = 0.0002 + (n % 7) * 0.00013
    reactor.callLater(d, chain, n - 1, reactor.seconds() + d)
reactor.callLater(0.05, chain, 200, reactor.seconds() + 0.05)
reactor.run()
print(json.dumps({"fired": fired, "early": early, "turns": turns[0], "type": type(reactor).__name__, "armed": armed}))
"""


def test_delayed_calls_in_order_never_early_one_turn_each() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT)], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["type"] == "PreciseTimersReactor"
    assert result["armed"] == [True, True]
    plain = [x for x in result["fired"] if not isinstance(x, list)]
    assert plain == [0, 1, 2, 4, 6, 7, 8, 9, 3, 10, 11]
    assert [x[1] for x in result["fired"] if isinstance(x, list)] == list(range(200, 0, -1))
    # Twisted's clock is time.time(); allow its resolution, nothing more
    assert all(ahead < 1e-5 for _name, ahead in result["early"]), result["early"]
    # about one timer turn per distinct deadline (~214 here, plus stop): millisecond timers that fire
    # early and re-arm, or sub-millisecond ones turned into call_soon, take several turns each
    assert result["turns"] <= 260, result["turns"]


def _readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_timerfd_becomes_readable_when_armed_time_passes() -> None:
    timer = TimerFd.open()
    if timer is None:
        pytest.skip("no timerfd on this platform")
    try:
        timer.arm(0.0)  # zero would disarm a timerfd: armed for at once instead
        assert _readable(timer.fd, 1.0)
        timer.clear()
        assert not _readable(timer.fd, 0.0)
        timer.clear()  # nothing to read: no error
        t0 = time.monotonic()
        timer.arm(0.05)
        assert not _readable(timer.fd, 0.0)
        assert _readable(timer.fd, 2.0)
        assert time.monotonic() - t0 >= 0.049
        timer.clear()
        timer.arm(10.0)
        timer.arm(0.001)  # re-arming replaces the earlier time
        assert _readable(timer.fd, 1.0)
    finally:
        timer.close()
