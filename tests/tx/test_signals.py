"""SIGHUP -> reload, shared by the edge process and the worker supervisor (tx/ops/signals.py)."""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet.testing import MemoryReactorClock

from mcs_edge.tx.ops.signals import SighupReload


class _Reactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[Any] = []

    def callFromThread(self, fn: Any, *args: Any) -> None:
        self.from_thread.append(fn)


def test_sighup_schedules_the_reload_and_restore_puts_the_old_handler_back() -> None:
    """While installed, SIGHUP schedules reload() in the reactor thread; restore() reinstates the previous handler."""
    before = signal.getsignal(signal.SIGHUP)
    reloads: list[int] = []
    reactor = _Reactor()
    sighup = SighupReload(reactor, lambda: reloads.append(1))
    sighup.install()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert len(reactor.from_thread) == 1
        reactor.from_thread[0]()
        assert reloads == [1]
    finally:
        sighup.restore()
    assert signal.getsignal(signal.SIGHUP) == before


def test_no_handler_without_a_real_reactor() -> None:
    """An object that is not a reactor gets no SIGHUP handler (the previous one stays)."""
    before = signal.getsignal(signal.SIGHUP)
    sighup = SighupReload(object(), lambda: None)
    sighup.install()
    assert signal.getsignal(signal.SIGHUP) == before
    sighup.restore()
