"""Relay port allocation: singles and even/odd pairs, exhaustion, double release, worker split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcs_edge.core.media.ports import Allocation, PortAllocator, split_range
from mcs_edge.errors import LocalProtocolError


def test_pairs_are_even_odd() -> None:
    """Without rtcp-mux a leg gets an even RTP port and the next odd port for RTCP."""
    a = PortAllocator(40000, 40009)
    got = [a.allocate(rtcp_mux=False) for _ in range(5)]
    assert got == [Allocation(p, p + 1) for p in range(40000, 40010, 2)]
    assert a.allocate(rtcp_mux=False) is None
    assert a.in_use == 10 and a.free == 0


def test_singles_use_both_halves() -> None:
    """With rtcp-mux every port of the range can be handed out."""
    a = PortAllocator(40000, 40005)
    ports = sorted(x.rtp_port for x in (a.allocate(rtcp_mux=True) for _ in range(6)) if x is not None)
    assert ports == list(range(40000, 40006))
    assert a.allocate(rtcp_mux=True) is None
    assert a.in_use == 6


def test_odd_lo_even_hi_are_trimmed() -> None:
    """An odd lo and an even hi are left out so every slot is a real pair."""
    a = PortAllocator(40001, 40006)
    assert (a.first, a.last, a.capacity) == (40002, 40005, 4)


def test_release_and_reuse_fifo() -> None:
    """Released pairs go to the back of the queue (least recently used first)."""
    a = PortAllocator(40000, 40005)
    first = a.allocate(rtcp_mux=False)
    assert first is not None
    a.release(first.rtp_port)
    nxt = a.allocate(rtcp_mux=False)
    assert nxt is not None and nxt.rtp_port == 40002
    assert a.in_use == 2


def test_split_slot_recombines() -> None:
    """When both halves of a split slot are released, the slot can serve a pair again."""
    a = PortAllocator(40000, 40001)
    x = a.allocate(rtcp_mux=True)
    y = a.allocate(rtcp_mux=True)
    assert x is not None and y is not None and {x.rtp_port, y.rtp_port} == {40000, 40001}
    assert a.allocate(rtcp_mux=False) is None
    a.release(x.rtp_port)
    assert a.allocate(rtcp_mux=False) is None
    a.release(y.rtp_port)
    assert a.allocate(rtcp_mux=False) == Allocation(40000, 40001)


def test_stale_single_not_handed_out_twice() -> None:
    """A single queued before its slot recombined is not handed out twice after a re-split."""
    a = PortAllocator(40000, 40003)
    x = a.allocate(rtcp_mux=True)  # splits slot 40000: odd 40001 queued
    assert x is not None and x.rtp_port == 40000
    a.release(40000)  # slot whole again (40001 entry now stale)
    p = a.allocate(rtcp_mux=False)  # takes 40002/40003 (FIFO)
    q = a.allocate(rtcp_mux=False)  # takes 40000/40001
    assert p is not None and q is not None and q.rtp_port == 40000
    assert a.allocate(rtcp_mux=True) is None


def test_double_release_is_local_error() -> None:
    """Releasing twice, or a port never allocated, raises LocalProtocolError."""
    a = PortAllocator(40000, 40009)
    x = a.allocate(rtcp_mux=False)
    assert x is not None
    a.release(x.rtp_port)
    with pytest.raises(LocalProtocolError):
        a.release(x.rtp_port)
    with pytest.raises(LocalProtocolError):
        a.release(12345)
    with pytest.raises(LocalProtocolError):
        PortAllocator(40001, 40001)
    with pytest.raises(LocalProtocolError):
        PortAllocator(5, 70000)


def test_split_range_across_workers() -> None:
    """A range splits into consecutive even-aligned ranges, as equal as possible."""
    assert split_range(40000, 40019, 3) == [(40000, 40007), (40008, 40013), (40014, 40019)]
    assert split_range(10001, 10010, 1) == [(10002, 10009)]
    with pytest.raises(LocalProtocolError):
        split_range(40000, 40003, 3)
    with pytest.raises(LocalProtocolError):
        split_range(40000, 40003, 0)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 50)), max_size=120))
def test_allocator_model(ops: list[tuple[bool, bool, int]]) -> None:
    """Random allocate/release sequences never hand out a port twice and keep in_use exact."""
    a = PortAllocator(40000, 40015)
    live: dict[int, Allocation] = {}
    for do_alloc, mux, pick in ops:
        if do_alloc or not live:
            got = a.allocate(rtcp_mux=mux)
            if got is None:
                used = {p for x in live.values() for p in (x.rtp_port, x.rtcp_port) if p is not None}
                if mux:
                    assert len(used) == 16
                continue
            ports = {got.rtp_port} | ({got.rtcp_port} if got.rtcp_port is not None else set())
            used = {p for x in live.values() for p in (x.rtp_port, x.rtcp_port) if p is not None}
            assert not ports & used
            assert all(40000 <= p <= 40015 for p in ports)
            if got.rtcp_port is not None:
                assert got.rtp_port % 2 == 0 and got.rtcp_port == got.rtp_port + 1
            live[got.rtp_port] = got
        else:
            key = sorted(live)[pick % len(live)]
            a.release(key)
            del live[key]
        assert a.in_use == sum(1 if x.rtcp_port is None else 2 for x in live.values())
