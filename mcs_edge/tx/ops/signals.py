"""SIGHUP: reload the configuration. One handler for the edge process and the worker supervisor.

In: the SIGHUP signal. Out: the reload callback, run in the reactor thread. :meth:`SighupReload.install`
at start keeps the previous handler; :meth:`SighupReload.restore` at stop puts it back. Outside the
main thread (tests) or without a real reactor, nothing is installed.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorCore

__all__ = ["SighupReload"]


class SighupReload:
    """SIGHUP -> ``reload()`` in the reactor thread, between :meth:`install` and :meth:`restore`."""

    def __init__(self, reactor: Any, reload: Callable[[], Any]) -> None:
        self.reactor = reactor
        self.reload = reload
        self._old: Any = None

    def install(self) -> None:
        if not hasattr(signal, "SIGHUP") or not IReactorCore.providedBy(self.reactor):
            return
        try:
            self._old = signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        except ValueError:  # not in the main thread (tests)
            self._old = None

    def restore(self) -> None:
        if self._old is not None:
            try:
                signal.signal(signal.SIGHUP, self._old)
            except ValueError:
                pass
            self._old = None
