"""Relay port allocation plan: single ports (rtcp-mux) and even/odd RTP/RTCP pairs, O(1) each.

Theory of operation
-------------------
The inclusive range ``[lo, hi]`` is cut into *slots* of two ports, ``(even, even + 1)`` (an odd
``lo`` or an even ``hi`` is left out, so every slot is a real RTP/RTCP pair as RFC 3550 s.11
recommends). Each slot has a two-bit mask of halves in use.

* A *pair* (RTCP not muxed) takes a whole free slot from ``_free_pairs`` (FIFO, so a port just
  released is reused last and late packets of the previous call rarely reach the next one).
* A *single* port (rtcp-mux) takes a free half of a split slot from ``_free_singles`` if there is
  one, else splits a whole slot: the even half is handed out, the odd half queued as a single.
* Releasing the last used half of a slot makes the whole slot a free pair again. Its partner may
  still sit in ``_free_singles``; that entry is skipped lazily when popped (a port is queued at most
  once, tracked by ``_queued``), so every operation is amortised O(1) with no scan.

Double release, or release of a port never handed out, is our own bug: :class:`LocalProtocolError`.
An exhausted range returns ``None``; the caller answers 503. :func:`split_range` cuts one range into
equal even-aligned ranges for N worker processes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mcs_edge.errors import LocalProtocolError

__all__ = ["Allocation", "PortAllocator", "split_range"]

_EVEN_BIT = 1
_ODD_BIT = 2
_BOTH = _EVEN_BIT | _ODD_BIT


@dataclass(frozen=True, slots=True)
class Allocation:
    """Ports handed out for one m-line of one leg; ``rtcp_port`` None means RTCP is muxed."""

    rtp_port: int
    rtcp_port: int | None = None


def _slot_bounds(lo: int, hi: int) -> tuple[int, int]:
    """First even port and last odd port of ``[lo, hi]``."""
    if not 0 <= lo <= hi <= 65535:
        raise LocalProtocolError(f"bad port range {lo}..{hi}")
    first = lo + (lo & 1)
    last = hi - (1 - (hi & 1))
    return first, last


def split_range(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """Cut ``[lo, hi]`` into ``n`` consecutive inclusive ranges of whole even/odd slots.

    Slots are shared out as evenly as possible (the first ranges get one more when it does not
    divide); raises LocalProtocolError if there are fewer slots than workers.
    """
    if n < 1:
        raise LocalProtocolError("need at least one worker")
    first, last = _slot_bounds(lo, hi)
    slots = (last - first + 1) // 2
    if slots < n:
        raise LocalProtocolError(f"{slots} port pairs cannot be split across {n} workers")
    per, extra = divmod(slots, n)
    out: list[tuple[int, int]] = []
    start = first
    for i in range(n):
        count = per + (1 if i < extra else 0)
        out.append((start, start + 2 * count - 1))
        start += 2 * count
    return out


class PortAllocator:
    """Hands out relay ports from one worker's range; every operation is amortised O(1)."""

    __slots__ = ("_allocs", "_free_pairs", "_free_singles", "_mask", "_queued", "first", "in_use", "last")

    def __init__(self, lo: int, hi: int) -> None:
        self.first, self.last = _slot_bounds(lo, hi)
        if self.last < self.first:
            raise LocalProtocolError(f"port range {lo}..{hi} holds no even/odd pair")
        self._free_pairs: deque[int] = deque(range(self.first, self.last + 1, 2))
        self._free_singles: deque[int] = deque()
        self._queued: set[int] = set()
        self._mask: dict[int, int] = {}
        self._allocs: dict[int, Allocation] = {}
        self.in_use = 0  # ports currently handed out

    @property
    def capacity(self) -> int:
        """Ports in the plan."""
        return self.last - self.first + 1

    @property
    def free(self) -> int:
        """Ports not handed out."""
        return self.capacity - self.in_use

    def allocate(self, *, rtcp_mux: bool) -> Allocation | None:
        """One port (``rtcp_mux``) or an even/odd pair; None when the range is exhausted."""
        if rtcp_mux:
            port = self._pop_single()
            if port is None:
                return None
            alloc = Allocation(port)
            self.in_use += 1
        else:
            if not self._free_pairs:
                return None
            base = self._free_pairs.popleft()
            self._mask[base] = _BOTH
            alloc = Allocation(base, base + 1)
            self.in_use += 2
        self._allocs[alloc.rtp_port] = alloc
        return alloc

    def claim(self, rtp_port: int, *, rtcp_mux: bool) -> Allocation | None:
        """Hand out this very port (or even/odd pair): a node taking over another node's calls keeps
        their relay ports (docs/ha.md). None when it is outside the range or already handed out.
        O(range) (a takeover, not the call set-up path)."""
        if not self.first <= rtp_port <= self.last or rtp_port in self._allocs:
            return None
        base = rtp_port & ~1
        mask = self._mask.get(base, 0)
        if not rtcp_mux:
            if rtp_port & 1 or mask or base not in self._free_pairs:
                return None
            self._free_pairs.remove(base)
            self._mask[base] = _BOTH
            alloc = Allocation(base, base + 1)
            self.in_use += 2
        else:
            bit = _ODD_BIT if rtp_port & 1 else _EVEN_BIT
            if mask & bit:
                return None
            if not mask:
                if base not in self._free_pairs:
                    return None
                self._free_pairs.remove(base)
                self._queue_single(base + 1 if bit == _EVEN_BIT else base)
            self._mask[base] = mask | bit
            alloc = Allocation(rtp_port)
            self.in_use += 1
        self._allocs[alloc.rtp_port] = alloc
        return alloc

    def release(self, rtp_port: int) -> None:
        """Give back the allocation whose RTP port is ``rtp_port`` (with its RTCP port, if any)."""
        alloc = self._allocs.pop(rtp_port, None)
        if alloc is None:
            raise LocalProtocolError(f"port {rtp_port} is not allocated (double release?)")
        base = rtp_port & ~1
        if alloc.rtcp_port is not None:
            self._mask.pop(base, None)
            self._free_pairs.append(base)
            self.in_use -= 2
            return
        self.in_use -= 1
        bit = _ODD_BIT if rtp_port & 1 else _EVEN_BIT
        mask = self._mask[base] & ~bit
        if mask:
            self._mask[base] = mask
            self._queue_single(rtp_port)
        else:
            del self._mask[base]  # partner was free (queued as a single): whole slot is free again
            self._free_pairs.append(base)

    def is_allocated(self, rtp_port: int) -> bool:
        """True if ``rtp_port`` is the RTP port of a live allocation."""
        return rtp_port in self._allocs

    # --------------------------------------------------------------------------------- internals

    def _queue_single(self, port: int) -> None:
        if port not in self._queued:
            self._queued.add(port)
            self._free_singles.append(port)

    def _pop_single(self) -> int | None:
        while self._free_singles:
            port = self._free_singles.popleft()
            self._queued.discard(port)
            base = port & ~1
            bit = _ODD_BIT if port & 1 else _EVEN_BIT
            mask = self._mask.get(base, 0)
            if mask and not mask & bit:  # still half of a split slot whose partner is in use
                self._mask[base] = mask | bit
                return port
        if not self._free_pairs:
            return None
        base = self._free_pairs.popleft()
        self._mask[base] = _EVEN_BIT
        self._queue_single(base + 1)
        return base
