"""The write side (change detection, a bounded coalescing queue) and the read side (the standby's
replica) of replication through Redis; docs/ha.md is the design.

Theory of operation
-------------------
Active node, every ``sync_interval``::

    records built (records.py)  ->  ChangeTracker.sync  ->  WriteQueue.put  ->  adapter: take/done/failed

:class:`ChangeTracker` keeps a digest of each key's last written record, computed without the
*volatile* fields (:data:`VOLATILE`: the write time and packet counters, which change all the time).
A record is queued when its digest changed, when it was last written ``refresh`` seconds ago (so the
SRTP indexes and the TTL stay fresh), or when it is new; a key that vanished is queued as a delete.

:class:`WriteQueue` is bounded and coalescing (a key queued twice is written once, with the newest
value). It has three states that health and metrics report:

=================  ==========================================================  ======================
state              meaning                                                     leaves by
=================  ==========================================================  ======================
in sync            every change was written or is queued                      --
out of sync        a write failed, Redis is down, or the queue overflowed     ``resync()``: the
                   (the change was dropped and counted)                        tracker forgets every
                                                                               digest, so the next
                                                                               sync rewrites all
=================  ==========================================================  ======================

The adapter takes at most one batch at a time (one pipeline in flight) and tells the queue how it
went. Nothing here waits: a dropped write costs a full rewrite later, never a stalled call.

Standby node: :class:`Replica` holds the last record of each key, as notifications say (``set`` ->
the adapter GETs the value -> :meth:`Replica.apply`; ``del``/``expired`` -> :meth:`Replica.apply`
with None). It measures the replication lag as ``now - record["written"]`` (the clocks of the two
nodes are NTP-synchronised; the figure is informative).

Sans-IO: ``now`` is an argument.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Final

from .records import decode, encode

__all__ = ["VOLATILE", "CachingBox", "ChangeTracker", "Replica", "WriteQueue"]

#: Fields left out of a record's digest: they change with every packet or every write.
VOLATILE: Final = frozenset({"written", "tx_packets", "rx_packets", "tx_index"})


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def digest(record: Mapping[str, Any]) -> bytes:
    return hashlib.blake2b(encode(_stable(record)), digest_size=16).digest()


class CachingBox:
    """A :class:`~mcs_edge.core.cluster.secrets.SecretBox` that seals an equal (plaintext, key) pair
    to the same value, so an unchanged record keeps an unchanged digest. Equal ciphertexts reveal
    only that the secret did not change (the same nonce is reused only with the same plaintext and
    associated data, which is not a GCM nonce misuse). Bounded LRU."""

    __slots__ = ("_box", "_cache", "limit")

    def __init__(self, box: Any, limit: int = 100_000) -> None:
        self._box = box
        self._cache: OrderedDict[tuple[bytes, bytes], dict[str, str]] = OrderedDict()
        self.limit = limit

    def seal(self, plaintext: bytes, aad: bytes) -> dict[str, str]:
        k = (plaintext, aad)
        sealed = self._cache.get(k)
        if sealed is None:
            sealed = self._cache[k] = self._box.seal(plaintext, aad)
            if len(self._cache) > self.limit:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(k)
        return sealed

    def open(self, sealed: Mapping[str, Any], aad: bytes) -> bytes:
        value: bytes = self._box.open(sealed, aad)
        return value


class ChangeTracker:
    """Which records must be written (see the module docstring)."""

    __slots__ = ("_last", "refresh")

    def __init__(self, refresh: float) -> None:
        self.refresh = refresh
        # key -> (digest, written at, the record object written: an identical object is unchanged)
        self._last: dict[str, tuple[bytes, float, object]] = {}

    def __len__(self) -> int:
        return len(self._last)

    def sync(self, records: Mapping[str, Mapping[str, Any]], now: float) -> list[tuple[str, bytes | None]]:
        """Writes (key, encoded record) and deletes (key, None) that bring Redis to ``records``."""
        out: list[tuple[str, bytes | None]] = []
        last = self._last
        for key, record in records.items():
            prev = last.get(key)
            if prev is not None and prev[2] is record and now - prev[1] < self.refresh:
                continue  # the snapshot's cache handed back the record already written
            d = digest(record)
            if prev is None or prev[0] != d or now - prev[1] >= self.refresh:
                last[key] = (d, now, record)
                out.append((key, encode(record)))
        if len(last) > len(records):  # some keys vanished
            for key in [k for k in last if k not in records]:
                del last[key]
                out.append((key, None))
        return out

    def forget(self) -> None:
        """Every record is rewritten at the next :meth:`sync` (after Redis came back)."""
        self._last.clear()


class WriteQueue:
    """Bounded, coalescing queue of writes (value None = delete); see the module docstring."""

    __slots__ = ("_pending", "dropped", "failed_batches", "in_flight", "limit", "out_of_sync", "written")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending: OrderedDict[str, bytes | None] = OrderedDict()
        self.in_flight: list[tuple[str, bytes | None]] | None = None
        self.out_of_sync = True  # nothing written yet: the first sync is a full write
        self.dropped = 0
        self.written = 0
        self.failed_batches = 0

    def __len__(self) -> int:
        return len(self._pending)

    def put_all(self, writes: Iterable[tuple[str, bytes | None]]) -> None:
        pending = self._pending
        for key, value in writes:
            if key in pending or len(pending) < self.limit:
                pending[key] = value
            else:
                self.dropped += 1
                self.out_of_sync = True

    def take(self, max_items: int) -> list[tuple[str, bytes | None]]:
        """The next batch (empty when one is in flight or nothing is queued)."""
        if self.in_flight is not None or not self._pending:
            return []
        batch: list[tuple[str, bytes | None]] = []
        pending = self._pending
        while pending and len(batch) < max_items:
            batch.append(pending.popitem(last=False))
        self.in_flight = batch
        return batch

    def done(self) -> None:
        if self.in_flight is not None:
            self.written += len(self.in_flight)
        self.in_flight = None

    def failed(self) -> None:
        """The batch was not written: Redis is behind; the next resync rewrites everything."""
        self.in_flight = None
        self.failed_batches += 1
        self.out_of_sync = True

    def clear(self) -> None:
        """Drop what is queued (a full resync follows and rewrites it anyway)."""
        self.dropped += len(self._pending)
        self._pending.clear()

    def resynced(self) -> None:
        self.out_of_sync = False


class Replica:
    """The standby's copy of the records (see the module docstring)."""

    __slots__ = ("bad", "last_lag", "max_lag", "records", "updates")

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.updates = 0
        self.bad = 0
        self.last_lag: float | None = None
        self.max_lag = 0.0

    def apply(self, key: str, data: bytes | str | None, now: float) -> bool:
        """Take the value of ``key`` (None: deleted or expired); False for a record that does not
        decode (counted in ``bad``, the old value is kept)."""
        if data is None:
            self.records.pop(key, None)
            self.updates += 1
            return True
        try:
            record = decode(data)
        except ValueError:
            self.bad += 1
            return False
        self.records[key] = record
        self.updates += 1
        written = record.get("written")
        if isinstance(written, (int, float)):
            lag = max(0.0, now - float(written))
            self.last_lag = lag
            self.max_lag = max(self.max_lag, lag)
        return True

    def counts(self) -> dict[str, int]:
        out = {"call": 0, "binding": 0}
        for record in self.records.values():
            kind = record.get("kind")
            if kind in out:
                out[kind] += 1
        return out

    def clear(self) -> None:
        self.records.clear()
