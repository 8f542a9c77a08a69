"""The persistent PBX link's decisions (core/sip/backend.py): connect on demand, keepalive, backoff."""

from __future__ import annotations

from mcs_edge.core.sip.backend import (
    PONG_WAIT,
    Abort,
    BackendLink,
    Connect,
    ConnectionLost,
    Dropped,
    LinkSettings,
    LinkState,
    Write,
)
from mcs_edge.core.sip.framing import PING

SETTINGS = LinkSettings(keepalive=30.0, connect_timeout=5.0, base_backoff=1.0, max_backoff=8.0, max_queue=2)


def drain(link: BackendLink) -> list[object]:
    out = []
    while (a := link.next_action()) is not None:
        out.append(a)
    return out


def new(rand: float = 1.0 - 1e-9) -> BackendLink:
    return BackendLink(SETTINGS, lambda: rand)


def test_first_message_opens_the_connection_and_is_sent_once_connected() -> None:
    """Nothing happens until there is something to send; queued messages go out in order on connect."""
    link = new()
    assert link.state is LinkState.IDLE and link.get_timer() is None
    link.send(b"A", 0.0)
    link.send(b"B", 0.1)
    assert drain(link) == [Connect()]
    assert link.get_timer() == 5.0  # connect timeout
    link.connected(0.5)
    assert drain(link) == [Write(b"A"), Write(b"B")]
    link.send(b"C", 1.0)
    assert drain(link) == [Write(b"C")]


def test_queue_is_bounded_while_connecting() -> None:
    """A third message while connecting (max_queue 2) is dropped and reported, not held."""
    link = new()
    for data in (b"1", b"2", b"3"):
        link.send(data, 0.0)
    assert drain(link) == [Connect(), Dropped(1, "queue toward the PBX full")]


def test_connect_failure_drops_the_queue_and_backs_off_exponentially() -> None:
    """RFC 5626 s.4.5: waits double per failure up to the maximum; sends in backoff are refused at once."""
    link = new()
    link.send(b"INVITE", 0.0)
    drain(link)
    link.connect_failed("connection refused", 0.1)
    actions = drain(link)
    assert actions == [Dropped(1, "PBX unreachable (connection refused)")]
    assert link.state is LinkState.BACKOFF
    waits = []
    now = 0.1
    for _ in range(5):
        deadline = link.get_timer()
        assert deadline is not None
        waits.append(round(deadline - now, 3))
        now = deadline
        link.handle_timer(now)
        assert drain(link) == [Connect()]
        link.connect_failed("refused", now)
        drain(link)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    link.send(b"OPTIONS", now)
    assert drain(link) == [Dropped(1, "PBX unreachable (refused)")]


def test_jitter_scales_the_wait_between_half_and_all() -> None:
    """The random factor (injected) spreads reconnects: 0 gives half the wait."""
    link = new(rand=0.0)
    link.send(b"x", 0.0)
    link.connect_failed("refused", 0.0)
    assert link.get_timer() == 0.5


def test_connect_timeout_aborts_the_attempt() -> None:
    """No connection within connect_timeout: the attempt is aborted and counts as a failure."""
    link = new()
    link.send(b"x", 0.0)
    drain(link)
    link.handle_timer(5.0)
    assert drain(link) == [Abort("connect timeout"), Dropped(1, "PBX unreachable (connect timeout)")]
    assert link.state is LinkState.BACKOFF and link.failures == 1


def test_keepalive_ping_and_missing_pong_fails_the_flow() -> None:
    """RFC 5626 s.4.4.1: CRLFCRLF after the keepalive interval; no pong within 10 s closes the connection."""
    link = new()
    link.send(b"x", 0.0)
    link.connected(0.0)
    drain(link)
    ping_at = link.get_timer()
    assert ping_at is not None and 24.0 <= ping_at <= 30.0
    link.handle_timer(ping_at)
    assert drain(link) == [Write(PING)]
    assert link.get_timer() == ping_at + PONG_WAIT
    link.handle_timer(ping_at + PONG_WAIT)
    assert drain(link) == [Abort("no keepalive pong"), ConnectionLost("no keepalive pong")]
    assert link.state is LinkState.BACKOFF


def test_pong_keeps_the_connection() -> None:
    """A pong (or any input) in time clears the wait; the next ping is scheduled."""
    link = new()
    link.send(b"x", 0.0)
    link.connected(0.0)
    drain(link)
    t = link.get_timer()
    assert t is not None
    link.handle_timer(t)
    drain(link)
    link.received(t + 1)
    nxt = link.get_timer()
    assert nxt is not None and nxt > t + PONG_WAIT
    assert link.state is LinkState.OPEN


def test_long_lived_connection_lost_reconnects_at_once() -> None:
    """A PBX closing an established connection (restart, idle close): reconnect now, no failure counted."""
    link = new()
    link.send(b"x", 0.0)
    link.connected(0.0)
    drain(link)
    link.lost("closed", 60.0)
    assert drain(link) == [ConnectionLost("closed"), Connect()] and link.failures == 0


def test_connection_lost_right_after_opening_backs_off() -> None:
    """A connection that dies at once (e.g. refused after accept) is a failure: no tight reconnect loop."""
    link = new()
    link.send(b"x", 0.0)
    link.connected(0.0)
    drain(link)
    link.lost("reset", 1.0)
    assert drain(link) == [ConnectionLost("reset")] and link.state is LinkState.BACKOFF and link.failures == 1


def test_success_resets_the_backoff() -> None:
    """After a successful connection the next failure waits the base time again."""
    link = new()
    link.send(b"x", 0.0)
    link.connect_failed("refused", 0.0)
    link.handle_timer(1.0)
    link.connect_failed("refused", 1.0)
    assert link.failures == 2
    link.handle_timer(10.0)
    link.connected(10.0)
    assert link.failures == 0
    link.lost("reset", 11.0)
    assert abs((link.get_timer() or 0) - 12.0) < 1e-6


def test_close_aborts_and_drops_everything() -> None:
    """A removed tenant: the connection and queued messages go; later sends are refused."""
    link = new()
    link.send(b"x", 0.0)
    drain(link)
    link.close("tenant removed")
    assert drain(link) == [Abort("tenant removed"), Dropped(1, "tenant removed")]
    assert link.get_timer() is None
    link.send(b"y", 1.0)
    assert drain(link) == [Dropped(1, "link closed")]
