"""Replication through Redis (docs/ha.md): the active node writes, the standby keeps a replica.

Theory of operation
-------------------
txredisapi (a Twisted Redis client: it runs on every reactor the edge supports) carries two
connections: commands (pipelined writes, GET/SCAN) and, on a standby, a subscriber to keyspace
notifications (``PSUBSCRIBE __keyspace@<db>__:mcs:<name>:*``, as rtpengine does).

Active, every ``cluster.sync_interval``: ``snapshot()`` (core/cluster/records.py) -> ChangeTracker ->
WriteQueue -> at most one pipeline in flight (``SET key value EX ttl`` / ``DEL key``) with a
deadline. A failed or late pipeline marks the node *out of sync* and *down*; while down it pings
Redis once a second; when Redis answers again it deletes the keys of this cluster that no longer
exist here, forgets every digest and so rewrites every record (a full resync). The reactor never
waits for Redis: every call returns a Deferred whose result is only counted.

Standby: loads every key (SCAN + MGET) when its subscriber connects, then applies each
notification (``set`` -> GET, ``del``/``expired`` -> drop) to its :class:`Replica`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import txredisapi
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer
from twisted.logger import Logger

from mcs_edge.config import ClusterConfig
from mcs_edge.core.cluster.replication import CachingBox, ChangeTracker, Replica, WriteQueue
from mcs_edge.core.cluster.secrets import SecretBox, parse_key
from mcs_edge.tx.timers import Timers, cpu_time, wall_clock

__all__ = ["Replicator"]

#: seconds a pipeline or a ping may take before Redis counts as down
DEADLINE = 2.0
PING_INTERVAL = 1.0

Snapshot = Callable[[Any, str, float], dict[str, dict[str, Any]]]


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    owner: Replicator | None = None

    def connectionMade(self) -> Any:  # noqa: N802
        d = defer.maybeDeferred(super().connectionMade)
        owner = self.factory.owner

        def subscribed(_: Any) -> Any:
            if not self.connected:
                return None  # AUTH refused: txredisapi dropped the connection and says why
            owner.subscribed(self)
            return self.psubscribe(owner.pattern)

        def failed(f: Any) -> None:
            owner.log.warn("CLU303 keyspace notifications lost; the replica reloads on reconnect")

        return d.addCallback(subscribed).addErrback(failed)

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:  # noqa: N802
        self.factory.owner.notified(channel, message)

    def connectionLost(self, why: Any) -> None:  # noqa: N802
        self.factory.owner.unsubscribed()
        super().connectionLost(why)


class Replicator:
    """One node's side of replication (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        config: ClusterConfig,
        timers: Timers,
        snapshot: Snapshot,
        wall_clock: Callable[[], float] = wall_clock,
        on_promote: Callable[[Replica], tuple[int, int, int]] | None = None,
    ) -> None:
        """``on_promote``: called with the replica at promotion, before the node starts writing
        (the composition root takes it over); it returns (calls, bindings, refused) taken over."""
        assert config.key is not None  # config cross-check
        self.config = config
        self.timers = timers
        self.snapshot = snapshot
        self.wall_clock = wall_clock
        self.prefix = f"mcs:{config.name}:"
        self.pattern = f"__keyspace@{config.redis_db}__:{self.prefix}*"
        self.node = config.node_id
        self.role = config.role
        self.box = CachingBox(SecretBox(parse_key(config.key), os.urandom))
        self.tracker = ChangeTracker(config.refresh)
        self.queue = WriteQueue(config.queue_limit)
        self.replica = Replica()
        #: snapshot()'s per-call cache (core/cluster/records.py): unchanged calls are not re-encoded
        self.record_cache: dict[str, tuple[tuple[Any, ...], float, dict[str, Any]]] = {}
        self.up = False
        self.reason = "not connected yet"
        self.resyncs = 0
        self.failovers = 0
        self.last_failover: float | None = None
        self.last_write_lag: float | None = None  # seconds from scan to Redis' answer
        self.sync_seconds = 0.0  # CPU spent building and diffing records (process time)
        self.syncs = 0
        self._probing = False
        self._loop: Any = None
        self._ping_loop: Any = None
        self._redis: Any = None
        self._sub_factory: Any = None
        self._stopped = False
        self.on_promote = on_promote
        self.took_over: tuple[int, int, int] | None = None  # calls, bindings, refused at promotion
        self._kinds: dict[str, int] = {"call": 0, "binding": 0}
        self._beat = 0.0
        self._resyncing = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        c = self.config
        self._redis = txredisapi.lazyConnection(
            c.redis.host,
            c.redis.port,
            dbid=c.redis_db,
            password=c.redis_password,
            reconnect=True,
            charset=None,
            convertNumbers=False,
            connectTimeout=DEADLINE,
            replyTimeout=DEADLINE,
        )
        self._ping_loop = self.timers.looping(PING_INTERVAL, self._probe, now=True)
        if self.role == "active":
            self._loop = self.timers.looping(c.sync_interval, self._sync)
        else:
            self._subscribe()
        self.log.info(
            "CLU100 cluster node {node} ({role}) replicating to redis {host}:{port}",
            node=self.node,
            role=self.role,
            host=c.redis.host,
            port=c.redis.port,
        )

    def stop(self) -> None:
        self._stopped = True
        self.timers.stop_looping(self._loop)
        self.timers.stop_looping(self._ping_loop)
        if self._sub_factory is not None:
            self._sub_factory.stopTrying()
            self._sub_factory.disconnect()
        if self._redis is not None:
            self._redis.disconnect()

    def _subscribe(self) -> None:
        factory = txredisapi.SubscriberFactory()
        factory.protocol = _Subscriber
        factory.owner = self
        factory.charset = None
        factory.password = self.config.redis_password
        factory.initialDelay = 0.2
        factory.maxDelay = 2.0
        factory.startConnecting(
            txredisapi._makeEndpoint(self.config.redis.host, self.config.redis.port, DEADLINE, False)
        )
        self._sub_factory = factory

    # ------------------------------------------------------------------ health of the link
    def _went_down(self, reason: str) -> None:
        if self.up:
            self.log.warn(
                "CLU300 replication off: {reason}; serving on, resync when Redis is back", reason=reason
            )
        self.up = False
        self.reason = reason
        if self.queue.in_flight is not None:
            self.queue.failed()
        self.queue.out_of_sync = True

    def _probe(self) -> None:
        """Once a second: PING with a deadline; Redis back -> full resync (active)."""
        if self._probing or self._redis is None:
            return
        self._probing = True
        d = self._deadline(self._redis.ping())

        def ok(_: Any) -> None:
            if not self.up:
                self._came_back()

        def bad(f: Any) -> None:
            self._went_down(_why(f))

        def done(_: Any) -> None:
            self._probing = False

        d.addCallbacks(ok, bad).addBoth(done)

    def _came_back(self) -> None:
        self.up = True
        self.reason = ""
        self.log.info(
            "CLU101 replication on: redis {host}:{port}",
            host=self.config.redis.host,
            port=self.config.redis.port,
        )
        self._redis.execute_command("CONFIG", "SET", "notify-keyspace-events", "K$gx").addErrback(
            lambda f: self.log.warn("CLU301 cannot enable keyspace notifications: {why}", why=_why(f))
        )
        if self.role == "active":
            self._resync()

    def _deadline(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        return d.addTimeout(DEADLINE, self.timers.reactor)

    # ------------------------------------------------------------------ active: write path
    def _resync(self) -> None:
        """Redis (re)appeared: delete our cluster's keys that we no longer have, rewrite the rest."""
        self.resyncs += 1
        self.queue.clear()
        self.tracker.forget()
        self.record_cache.clear()
        self._resyncing = True
        d = self._scan_keys()

        def prune(keys: list[bytes]) -> None:
            live = self.snapshot(self.box, self.node, self.wall_clock())
            stale = [
                k.decode()
                for k in keys
                if k.decode() not in live and not k.decode().startswith(self.prefix + "node:")
            ]
            self.queue.put_all((k, None) for k in stale)

        d.addCallbacks(prune, lambda f: self._went_down(_why(f)))

    @defer.inlineCallbacks
    def _scan_keys(self) -> Any:
        cursor: Any = 0
        keys: list[bytes] = []
        while True:
            cursor, batch = yield self._deadline(self._redis.scan(cursor, self.prefix + "*", 1000))
            keys.extend(batch)
            if int(cursor) == 0:
                return keys

    def _sync(self) -> None:
        if self.role != "active":
            return
        started = cpu_time()
        now = self.wall_clock()
        records = self.snapshot(self.box, self.node, now)
        kinds = {"call": 0, "binding": 0}
        for record in records.values():
            kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
        self._kinds = kinds
        if self.up:
            self.queue.put_all(self.tracker.sync(records, now))
        self._heartbeat_due(now, len(records))
        self.sync_seconds += cpu_time() - started
        self.syncs += 1
        self._flush(now)

    def _heartbeat_due(self, now: float, count: int) -> None:
        if self.up and now - self._beat >= 1.0:
            self._beat = now
            self.queue.put_all(
                [
                    (
                        self.prefix + "node:" + self.node,
                        json.dumps(
                            {"node": self.node, "role": self.role, "written": now, "records": count}
                        ).encode(),
                    )
                ]
            )

    def _flush(self, scanned: float) -> None:
        if not self.up:
            return
        batch = self.queue.take(self.config.batch)
        if not batch:
            if self._resyncing and self.queue.in_flight is None and not len(self.queue):
                self._resyncing = False
                self.queue.resynced()
            return
        d = self._redis.pipeline()

        def write(pipe: Any) -> Any:
            ttl = self.config.record_ttl
            for key, value in batch:
                if value is None:
                    pipe.delete(key)
                elif key.startswith(self.prefix + "node:"):
                    pipe.set(key, value, expire=3)
                else:
                    pipe.set(key, value, expire=ttl)
            return pipe.execute_pipeline()

        d.addCallback(write)
        d = self._deadline(d)

        def ok(_: Any) -> None:
            self.queue.done()
            self.last_write_lag = self.wall_clock() - scanned

        def bad(f: Any) -> None:
            self.queue.failed()
            self._went_down(_why(f))

        d.addCallbacks(ok, bad)

    # ------------------------------------------------------------------ standby: replica
    def subscribed(self, proto: Any) -> None:
        """The subscriber connected: load every key, then notifications keep the replica warm."""
        d = self._load_all()
        d.addErrback(lambda f: self.log.warn("CLU302 replica read failed: {why}", why=_why(f)))

    def unsubscribed(self) -> None:
        if not self._stopped:
            self.log.warn("CLU303 keyspace notifications lost; the replica reloads on reconnect")

    @defer.inlineCallbacks
    def _load_all(self) -> Any:
        keys = yield self._scan_keys()
        keys = [k for k in keys if not k.decode().startswith(self.prefix + "node:")]
        self.replica.clear()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            values = yield self._deadline(self._redis.mget(chunk))
            now = self.wall_clock()
            for k, v in zip(chunk, values, strict=True):
                if v is not None:
                    self.replica.apply(k.decode(), v, now)

    def notified(self, channel: Any, event: Any) -> None:
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        event = event.decode() if isinstance(event, bytes) else str(event)
        key = channel.split(":", 1)[1] if channel.startswith("__keyspace@") else channel
        if key.startswith(self.prefix + "node:"):
            return
        if event in ("del", "expired"):
            self.replica.apply(key, None, self.wall_clock())
        elif event == "set":
            d = self._deadline(self._redis.get(key))
            d.addCallbacks(
                lambda v: self.replica.apply(key, v, self.wall_clock()),
                lambda f: self.log.warn("CLU302 replica read failed: {why}", why=_why(f)),
            )

    # ------------------------------------------------------------------ promotion
    def promote(self) -> dict[str, Any]:
        """This node becomes the writer (keepalived's notify_master, docs/ha.md). Idempotent."""
        if self.role != "active":
            self.role = "active"
            self.failovers += 1
            self.last_failover = self.wall_clock()
            if self._sub_factory is not None:
                self._sub_factory.stopTrying()
                self._sub_factory.disconnect()
                self._sub_factory = None
            if self.on_promote is not None:
                self.took_over = self.on_promote(self.replica)
            self.replica.clear()
            self.tracker.forget()
            self.queue.out_of_sync = True
            self._loop = self.timers.looping(self.config.sync_interval, self._sync)
            if self.up:
                self._resync()
            self.log.info("CLU102 cluster node {node} promoted to active", node=self.node)
        return self.status()

    # ------------------------------------------------------------------ operations
    def counts(self) -> dict[str, int]:
        if self.role == "active":
            return {**self._kinds, "queued": len(self.queue)}
        return self.replica.counts()

    def lag(self) -> float | None:
        return self.last_write_lag if self.role == "active" else self.replica.last_lag

    def health(self) -> tuple[bool, str]:
        """Always ready (the node serves without Redis); the detail says whether replication is on."""
        if not self.up:
            return True, f"replication off ({self.role}): {self.reason}"
        if self.role == "active" and self.queue.out_of_sync:
            return True, "replication on (active), resync in progress"
        return True, f"replication on ({self.role})"

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "role": self.role,
            "replication": "on" if self.up else "off",
            "reason": self.reason or None,
            "in_sync": self.up and not self.queue.out_of_sync if self.role == "active" else self.up,
            "lag_seconds": self.lag(),
            "counts": self.counts(),
            "written": self.queue.written,
            "dropped": self.queue.dropped,
            "resyncs": self.resyncs,
            "last_failover": self.last_failover,
            "took_over": None
            if self.took_over is None
            else dict(zip(("calls", "bindings", "refused"), self.took_over, strict=True)),
        }

    def collect(self) -> Any:
        role = GaugeMetricFamily("mcs_edge_cluster_role", "1 for this node's role", labels=["node", "role"])
        for r in ("active", "standby"):
            role.add_metric([self.node, r], 1 if self.role == r else 0)
        yield role
        yield GaugeMetricFamily(
            "mcs_edge_cluster_replication_up", "1 when Redis answers and replication runs", value=int(self.up)
        )
        lag = self.lag()
        yield GaugeMetricFamily(
            "mcs_edge_cluster_replication_lag_seconds",
            "active: scan to Redis' answer; standby: record written to applied",
            value=lag if lag is not None else 0.0,
        )
        state = GaugeMetricFamily("mcs_edge_cluster_records", "replicated records", labels=["kind"])
        for kind, n in sorted(self.counts().items()):
            state.add_metric([kind], n)
        yield state
        yield CounterMetricFamily(
            "mcs_edge_cluster_writes", "records written to Redis", value=self.queue.written
        )
        yield CounterMetricFamily(
            "mcs_edge_cluster_dropped", "changes dropped (queue full or Redis down)", value=self.queue.dropped
        )
        yield CounterMetricFamily(
            "mcs_edge_cluster_resyncs", "full rewrites after Redis came back", value=self.resyncs
        )
        yield CounterMetricFamily(
            "mcs_edge_cluster_sync_cpu_seconds",
            "CPU spent building and diffing records",
            value=self.sync_seconds,
        )
        yield GaugeMetricFamily(
            "mcs_edge_cluster_last_failover_timestamp",
            "when this node last became active (0: never)",
            value=self.last_failover or 0.0,
        )


def _why(f: Any) -> str:
    exc = getattr(f, "value", f)
    if isinstance(exc, defer.TimeoutError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}"[:200]
