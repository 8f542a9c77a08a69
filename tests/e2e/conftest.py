"""Fixtures shared by the e2e tests (the edge itself: tests/helpers/edge.py; peers: tests/helpers/)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from helpers.aiortc_call import LoopThread

T = TypeVar("T")


@pytest.fixture(scope="module")
def runner() -> Iterator[LoopThread]:
    """The asyncio loop thread the aiortc peers, WSS softphones and asyncio test PBXs run in."""
    from helpers.aiortc_call import LoopThread

    r = LoopThread()
    yield r
    r.stop()


@pytest.fixture
def stop_after() -> Iterator[Callable[[T], T]]:
    """``stop_after(edge)`` returns ``edge`` and stops it when the test ends (``stop()`` may return a
    Deferred: the test waits for it on the reactor)."""
    import pytest_twisted

    started: list[Any] = []

    def register(thing: T) -> T:
        started.append(thing)
        return thing

    yield register
    for thing in reversed(started):
        pytest_twisted.blockon(thing.stop())
