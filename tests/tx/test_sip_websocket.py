"""The SIP WebSocket factory's own state in virtual time: the WSS400 log budget."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from mcs_edge import config as c
from mcs_edge.tx.sip.websocket import LOG_PER_SECOND, SipWebSocketFactory

CFG = c.loads(
    '[listen]\nhttps = "127.0.0.1:8443"\n[[tenants]]\nid = "rossi"\ndomains = ["rossi.example.com"]\n'
    'backend_sip = "udp:10.1.0.10:5060"\n'
)


def test_protocol_error_lines_are_limited_to_ten_a_second() -> None:
    """may_log allows LOG_PER_SECOND lines in one second, none more, and a new budget the next second."""
    clock = Clock()
    clock.advance(1000.2)
    router: Any = None
    factory = SipWebSocketFactory(router, CFG, clock)
    assert [factory.may_log() for _ in range(LOG_PER_SECOND + 5)] == [True] * LOG_PER_SECOND + [False] * 5
    clock.advance(0.5)
    assert not factory.may_log()
    clock.advance(0.5)
    assert factory.may_log()
