"""Packet policing: admit or drop each packet against a bucket, optionally inside a parent bucket.

Theory of operation
-------------------
A media leg owns a ``Policer`` around its own ``TokenBucket`` (bytes/s of that leg). A tenant may
also cap the sum of its legs: then every leg's policer gets the tenant's bucket as ``parent``, and
a packet passes only if *both* admit it. The two are charged atomically: the leg is tested first
(it is the cheaper, more often binding test), the parent is charged only if the leg could admit
the packet, and the leg is charged only if the parent did. A packet refused by the tenant
therefore costs the leg nothing, and one refused by the leg costs the tenant nothing.

Policing drops: there is no queue and no ``retry_at`` on this path. Drops are counted on the
policer (``dropped_packets``, ``dropped_bytes``; ``parent_dropped_packets`` is the part refused by
the parent) for the adapter to export; admitted packets are not counted here, to keep the
admitted path to one call.

Per packet the media relay calls ``check`` (the same decision as :meth:`Policer.admit`, without
counting a refusal) and, only on a refusal, ``refused``: without a parent ``check`` *is* the
bucket's ``consume``, so an admitted packet costs one Python frame, not two. Every packet is still
charged to the bucket at its own time and size: the decisions are exactly those of ``admit``.
"""

from __future__ import annotations

from collections.abc import Callable

from mcs_edge.core.shaping.token_bucket import ADMITTED, REFUSED_PARENT, TokenBucket

__all__ = ["Policer"]


class Policer:
    """Admit or drop packets against ``bucket`` (and ``parent``, when given), counting drops."""

    __slots__ = ("bucket", "check", "dropped_bytes", "dropped_packets", "parent", "parent_dropped_packets")

    def __init__(self, bucket: TokenBucket, parent: TokenBucket | None = None) -> None:
        self.bucket = bucket
        self.parent = parent
        self.dropped_packets = 0
        self.dropped_bytes = 0
        self.parent_dropped_packets = 0
        #: ``check(size, now)``: True admits (tokens taken); False refuses (the caller then calls
        #: :meth:`refused`). The bucket's own ``consume`` when there is no parent.
        self.check: Callable[[int, float], bool] = bucket.consume if parent is None else self._check_within

    def _check_within(self, size: int, now: float) -> bool:
        verdict = self.bucket.consume_within(self.parent, size, now)  # type: ignore[arg-type]
        if verdict == ADMITTED:
            return True
        if verdict == REFUSED_PARENT:
            self.parent_dropped_packets += 1
        return False

    def refused(self, size: int) -> None:
        """Count a packet of ``size`` bytes that ``check`` refused."""
        self.dropped_packets += 1
        self.dropped_bytes += size

    def admit(self, size: int, now: float) -> bool:
        """``True``: forward the packet of ``size`` bytes; ``False``: drop it (counted)."""
        if self.check(size, now):
            return True
        self.dropped_packets += 1
        self.dropped_bytes += size
        return False
