"""Fixtures shared by the e2e tests (the edge itself: tests/helpers/edge.py; peers: tests/helpers/)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from helpers.aiortc_call import LoopThread


@pytest.fixture(scope="module")
def runner() -> Iterator[LoopThread]:
    """The asyncio loop thread the aiortc peers, WSS softphones and asyncio test PBXs run in."""
    from helpers.aiortc_call import LoopThread

    r = LoopThread()
    yield r
    r.stop()
