"""Both directions of one shaped stream connection (a SIP WebSocket or SIP over TLS).

Theory of operation
-------------------
Inbound (``InboundPacer``). Bytes already read cannot be refused, and SIP must not be dropped,
so the pacer *delays* them: every chunk the transport hands over is charged in full to the
connection's bucket (and to the tenant's aggregate bucket, when there is one) through a
``Shaper`` per bucket. While either bucket is in debt the pacer is ``paused``: the adapter stops
reading (``pauseProducing``) and every chunk that still arrives (what the TLS layer had already
decrypted) is *held*, in order, instead of being delivered. ``handle_timer(now)`` at
``get_timer()`` releases held chunks, each charged as it goes, until a bucket is in debt again;
once nothing is held and no bucket is in debt the adapter resumes reading. TCP flow control
pushes back on the sender meanwhile. Delivered bytes over any interval are therefore at most
``burst + rate * (t1 - t0) + one chunk`` (a chunk is one TLS record, at most 16 KiB), and no byte
is lost or reordered.

The tenant bucket is shared by every connection of the tenant, each through its own ``Shaper``:
a connection that finds it in debt pauses until the debt is paid. A paused connection holds its
chunks uncharged, so each connection adds at most one chunk to the shared debt.

``max_held`` bounds what a connection may hold (the transport is paused, so only what was
already read arrives): past it ``feed`` reports ``overflowed`` and the adapter closes.

Outbound (``OutboundQueue``). Messages toward the client pass at the bucket's pace too: a
message is written at once when nothing is queued, the transport is writable (its write buffer
is not full: ``IPushProducer`` pause/resume from the transport) and the bucket is not in debt;
it is then charged in full (so a message larger than ``burst`` still goes, and the long-run rate
holds). Otherwise it waits in a FIFO bounded by ``max_bytes``; ``offer`` answers ``OVERFLOW``
for a message that does not fit, and the adapter closes the connection with a logged reason (a
client that does not read, or traffic far above its rate, must not grow memory).

Both objects follow the house shape: input methods take ``now``; ``get_timer()`` is the one
deadline; ``handle_timer(now)`` returns what became deliverable (chunks to hand to the protocol,
or messages to write), already charged.
"""

from __future__ import annotations

from collections import deque

from mcs_edge.core.shaping.shaper import Shaper
from mcs_edge.core.shaping.token_bucket import TokenBucket

__all__ = ["OVERFLOW", "QUEUED", "SEND_NOW", "InboundPacer", "OutboundQueue"]

#: ``OutboundQueue.offer`` results.
SEND_NOW = 0
QUEUED = 1
OVERFLOW = 2


class InboundPacer:
    """Charge inbound chunks to ``bucket`` (and ``tenant``); hold them, in order, while in debt."""

    __slots__ = ("_held", "_own", "_tenant", "charged_into_debt", "held_bytes", "max_held", "overflowed")

    def __init__(
        self, bucket: TokenBucket, tenant: TokenBucket | None = None, *, max_held: int = 1 << 20
    ) -> None:
        if max_held < 1:
            raise ValueError(f"max_held must be >= 1, got {max_held!r}")
        self._own = Shaper(bucket)
        self._tenant = Shaper(tenant) if tenant is not None else None
        self._held: deque[bytes] = deque()
        self.held_bytes = 0
        self.max_held = max_held
        #: Set when a chunk did not fit in ``max_held`` (the adapter should close).
        self.overflowed = False
        #: Whether the last chunk ``feed`` delivered put a bucket in debt (the reader must pause
        #: now); False otherwise. The adapter's per-read check, without asking ``paused``.
        self.charged_into_debt = False

    @property
    def bucket(self) -> TokenBucket:
        """The connection's own bucket."""
        return self._own.bucket

    def _in_debt(self) -> bool:
        tenant = self._tenant
        return self._own.paused or (tenant is not None and tenant.paused)

    @property
    def paused(self) -> bool:
        """Whether the reader should not read: chunks are held or a bucket is in debt."""
        return bool(self._held) or self._in_debt()

    def _charge(self, n: int, now: float) -> None:
        self._own.data_received(n, now)
        tenant = self._tenant
        if tenant is not None:
            tenant.data_received(n, now)

    def feed(self, chunk: bytes, now: float) -> bool:
        """``True``: deliver ``chunk`` now (it is charged; ``charged_into_debt`` says whether that
        put a bucket in debt). ``False``: it is held (or overflowed)."""
        own = self._own
        tenant = self._tenant
        if self._held or own.paused or (tenant is not None and tenant.paused):
            n = len(chunk)
            if self.held_bytes + n > self.max_held:
                self.overflowed = True
                return False
            self._held.append(chunk)
            self.held_bytes += n
            return False
        # every read of every connection comes here (a keepalive too): the charge inline
        n = len(chunk)
        debt = own.data_received(n, now) is not None
        if tenant is not None and tenant.data_received(n, now) is not None:
            debt = True
        self.charged_into_debt = debt
        return True

    def get_timer(self) -> float | None:
        """When the buckets are out of debt (both, if two), or ``None`` while not in debt."""
        deadline = self._own.get_timer()
        tenant = self._tenant
        if tenant is not None:
            other = tenant.get_timer()
            if other is not None and (deadline is None or other > deadline):
                deadline = other
        return deadline

    def handle_timer(self, now: float) -> list[bytes]:
        """Held chunks that may be delivered now, in order, each charged; may be empty."""
        self._own.handle_timer(now)
        tenant = self._tenant
        if tenant is not None:
            tenant.handle_timer(now)
        out: list[bytes] = []
        held = self._held
        while held and not self._in_debt():
            chunk = held.popleft()
            self.held_bytes -= len(chunk)
            self._charge(len(chunk), now)
            out.append(chunk)
        return out

    def drain(self) -> list[bytes]:
        """Every held chunk, uncharged, in order (shaping ends but the connection stays)."""
        out = list(self._held)
        self.clear()
        return out

    def clear(self) -> None:
        """Forget held chunks (the connection is gone)."""
        self._held.clear()
        self.held_bytes = 0


class OutboundQueue:
    """Messages toward one client, at ``bucket``'s pace and the transport's, within ``max_bytes``."""

    __slots__ = ("_bucket", "_queue", "_retry_at", "max_bytes", "queued_bytes", "writable")

    def __init__(self, bucket: TokenBucket, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}")
        self._bucket = bucket
        self._queue: deque[bytes] = deque()
        self._retry_at: float | None = None
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        #: False while the transport's write buffer is full (it paused us as its producer).
        self.writable = True

    @property
    def bucket(self) -> TokenBucket:
        """The connection's outbound bucket."""
        return self._bucket

    def __len__(self) -> int:
        """Messages waiting."""
        return len(self._queue)

    def offer(self, data: bytes, now: float) -> int:
        """``SEND_NOW`` (write ``data`` now; charged), ``QUEUED``, or ``OVERFLOW`` (not kept)."""
        bucket = self._bucket
        if not self._queue and self.writable and bucket.charge_if_not_in_debt(len(data), now):
            return SEND_NOW
        n = len(data)
        if self.queued_bytes + n > self.max_bytes:
            return OVERFLOW
        self._queue.append(data)
        self.queued_bytes += n
        self._retry_at = bucket.time_when(0.0, now)
        return QUEUED

    def set_writable(self, writable: bool, now: float) -> list[bytes]:
        """The transport paused (``False``) or resumed (``True``) us; returns messages to write now."""
        self.writable = writable
        return self.handle_timer(now) if writable else []

    def get_timer(self) -> float | None:
        """When the next queued message may go, or ``None`` (nothing queued, or not writable)."""
        if not self._queue or not self.writable:
            return None
        return self._retry_at

    def handle_timer(self, now: float) -> list[bytes]:
        """Queued messages that may be written now, in order, each charged; may be empty."""
        out: list[bytes] = []
        queue = self._queue
        bucket = self._bucket
        while queue and self.writable and bucket.available(now) >= 0.0:
            data = queue.popleft()
            self.queued_bytes -= len(data)
            bucket.charge(len(data), now)
            out.append(data)
        self._retry_at = bucket.time_when(0.0, now) if queue else None
        return out

    def drain(self) -> list[bytes]:
        """Every queued message, uncharged, in order (shaping ends but the connection stays)."""
        out = list(self._queue)
        self.clear()
        return out

    def clear(self) -> None:
        """Forget queued messages (the connection is gone)."""
        self._queue.clear()
        self.queued_bytes = 0
        self._retry_at = None
