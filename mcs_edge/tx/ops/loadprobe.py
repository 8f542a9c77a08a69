"""Loop-lag probe, garbage-collector tuning and pause accounting, overload gate driver.

Theory of operation
-------------------
:class:`LoadProbe` arms one timer every ``interval`` seconds through :class:`~mcs_edge.tx.timers.Timers`
and, when it fires, measures how late it is against the monotonic clock (*loop lag*: what the
reactor did between the deadline and now). Each sample goes to a
:class:`~mcs_edge.core.load.LagHistogram` (``mcs_edge_loop_lag_seconds``) and to the
:class:`~mcs_edge.core.load.AdmissionGate` that refuses new INVITE/REGISTER under overload (the SIP
router asks it). The same tick samples the media relay's packet total into a
:class:`~mcs_edge.core.load.RateMeter` for the media admission limit.

Idle mode. Each tick wakes the process: at 100 ticks/s that was most of an idle edge's CPU (about
1.5% of a core with 10,000 idle connections held, against 0.1% with the probe at 1 s; see
docs/performance.md). Once the reactor has been idle for ``IDLE_AFTER`` seconds (every tick's share
of time on the CPU <= ``IDLE_BUSY``, smoothed lag <= ``IDLE_LAG``, nothing refused), the probe ticks
every ``idle_interval`` instead (``overload.probe_idle_interval``; 0 keeps the normal interval) and
hands the gate a ``wake`` callback: the first message the router checks (every message from a
client, and from a PBX over UDP) wakes it back to the normal interval at once, so the lag is
measured at the normal rate whenever there is traffic (:mod:`mcs_edge.core.load.control`). An idle
tick that finds the process busy (media, keepalives, timers: more than ``IDLE_BUSY`` of the
interval on the CPU) or ``overload.lag_high`` late returns to the normal interval too; a smaller lag
of an idle process is another process holding the CPU (a shared machine), not a backlog of ours,
and keeps the idle mode. The lag histogram then holds one sample per ``idle_interval`` of idle time
instead of one per ``interval``.

:class:`GcMonitor` (process-wide, installed by ``tap.makeService`` and never by tests) hooks
``gc.callbacks`` to time every collection by generation (``mcs_edge_gc_pause_seconds``); with it
:func:`tune_gc` sets the collector for a long-lived server: generation-0 threshold raised (fewer
young collections), and :func:`freeze_startup` moves everything built before the reactor runs
(modules, config, tenant table, certificates) into the permanent generation (``gc.freeze``) so a
full collection walks only what the traffic created.

Collections on a schedule (issue 21). A collection's pause grows with the objects it walks, at
30-140 ns per reference on this machine: a young collection of 89,000 objects took 106 ms, of
7,000 about 2 ms, of 700 about 0.2 ms. The interpreter starts a young collection when allocations
minus deallocations pass the generation-0 threshold; at steady load, objects dying in the older
generations (transactions whose timers expire) offset the new ones, so the count barely moves
while the young list grows: the collection, when it comes, walks tens of thousands of objects. The
older generations' collections walk more still (every survivor, or the whole heap).

With ``overload.gc_full_interval`` set, :func:`tune_gc` puts the thresholds of generations 1 and 2
out of reach and :class:`FullCollections`, ticked by the probe, runs the collections itself:

* a young collection at every probe tick (``YOUNG_INTERVAL``, 8 ms: every tick at the default
  10 ms interval, which uvloop's millisecond timers may fire up to a millisecond early), so it walks
  10 ms of survivors: 0.2-0.5 ms with calls at half load, where 0.1 s of them (the interval until
  session 6) took 3-5 ms, and that pause, taken in the tick, made one probe tick in ten 2-5 ms late
  (the next deadline is counted from the tick's start; docs/performance.md, "Turn budget"). It is
  skipped while fewer than ``YOUNG_MIN`` objects were allocated
  since the last one (``gc.get_count()``: an idle edge allocates next to nothing); ``overload.gc_threshold`` stays the interpreter's trigger for
  allocation bursts between two ticks;
* a full collection once ``interval`` seconds have passed, at the first *calm* tick (smoothed loop
  lag and CPU share low: the queue is empty, so the pause delays only what arrives during it), or
  after ``FORCE_FACTOR * interval`` regardless, so memory in reference cycles stays bounded on an
  edge that is never calm.

The hot paths make no reference cycles (timers, calls, transactions die by reference counting), so
collections find little garbage; they remain the safety net.

Survivors frozen between full collections. A full collection walks every object alive: the
connections, flows and registrations of every agent (tens of thousands of objects with thousands of
agents) each time, though they rarely change. So after each full collection, :func:`tune_gc`'s
schedule freezes the survivors (``gc.freeze``: out of every later collection's walk; they are still
freed by reference counting when they die), and the next full collection walks only what was built
since. Every ``THAW_EVERY``-th full collection first unfreezes everything (``gc.unfreeze``), so a
reference cycle among objects that were frozen is found within ``THAW_EVERY`` intervals: memory in
such cycles stays bounded as before, the full pause over the whole heap comes once in
``THAW_EVERY`` intervals instead of every interval.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import Metric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from mcs_edge.core.load import AdmissionGate, LagHistogram, OverloadSettings, RateMeter
from mcs_edge.tx.ops.metrics import register_merge
from mcs_edge.tx.timers import Timers, cpu_time, monotonic, perf_counter

if TYPE_CHECKING:
    from mcs_edge.config import EdgeConfig

__all__ = [
    "FullCollections",
    "GcMonitor",
    "LoadProbe",
    "freeze_startup",
    "gc_monitor",
    "load_families",
    "overload_settings",
    "tune_gc",
]

register_merge("mcs_edge_overload_admitted_ratio", "min")
register_merge("mcs_edge_loop_lag_smoothed_seconds", "max")
register_merge("mcs_edge_reactor_busy_ratio", "max")


def overload_settings(config: EdgeConfig) -> OverloadSettings:
    """The gate's settings from ``[overload]``."""
    o = config.overload
    return OverloadSettings(
        enabled=o.enabled,
        lag_high=o.lag_high,
        lag_low=o.lag_low,
        retry_after=o.retry_after,
        busy_high=o.busy_high,
        max_queue_age=o.max_queue_age,
    )


class FullCollections:
    """Full collections at calm moments instead of when the interpreter decides (module docstring)."""

    FORCE_FACTOR = 10
    CALM_LAG = 0.002  # smoothed loop lag (s) at or below which the reactor counts as calm
    CALM_BUSY = 0.25  # smoothed share of wall time on the CPU at or below which it counts as calm

    YOUNG_INTERVAL = 0.008  # seconds between young (generation-0) collections: every 10 ms probe tick
    THAW_EVERY = 10  # every so many full collections walk the whole heap (frozen survivors too)
    YOUNG_MIN = 100  # tracked objects allocated (net) since the last young collection, below which it waits

    def __init__(
        self,
        interval: float,
        now: float,
        collect: Callable[[int], int] = gc.collect,
        freeze: Callable[[], None] | None = None,
        unfreeze: Callable[[], None] | None = None,
        young_pending: Callable[[], int] | None = None,
    ) -> None:
        """``freeze``/``unfreeze``: ``gc.freeze``/``gc.unfreeze`` in the edge (:func:`tune_gc`);
        without them survivors are not frozen. ``young_pending``: objects in generation 0
        (``gc.get_count()[0]``); without it every due young collection runs."""
        self.interval = interval
        self._young_pending = young_pending
        #: due young collections skipped as (next to) empty
        self.young_skipped = 0
        self._collect = collect
        self._freeze = freeze
        self._unfreeze = unfreeze
        self.calm_runs = 0
        self.forced_runs = 0
        self.young_runs = 0
        #: full collections over the whole heap (frozen survivors unfrozen first)
        self.thawed_runs = 0
        self._since_thaw = 0
        self.young_due = now + self.YOUNG_INTERVAL
        self._restart(now)

    def _restart(self, now: float) -> None:
        self.due = now + self.interval
        self.deadline = now + self.interval * self.FORCE_FACTOR

    def tick(self, now: float, lag: float, busy: float) -> bool:
        """Run the full collection when it is due and the reactor calm (or overdue), else the young
        one when due; True when a collection ran."""
        if now < self.due:
            return self._young(now)
        if lag <= self.CALM_LAG and busy <= self.CALM_BUSY:
            self.calm_runs += 1
        elif now >= self.deadline:
            self.forced_runs += 1
        else:
            return self._young(now)
        self._full()
        self._restart(now)
        self.young_due = now + self.YOUNG_INTERVAL
        return True

    def _full(self) -> None:
        """A full collection: of what was built since the last one, or (every ``THAW_EVERY``-th)
        of the whole heap; then its survivors are frozen."""
        if self._freeze is None:
            self._collect(2)
            return
        self._since_thaw += 1
        if self._since_thaw >= self.THAW_EVERY and self._unfreeze is not None:
            self._since_thaw = 0
            self.thawed_runs += 1
            self._unfreeze()
        self._collect(2)
        self._freeze()

    def _young(self, now: float) -> bool:
        if now < self.young_due:
            return False
        self.young_due = now + self.YOUNG_INTERVAL
        pending = self._young_pending
        if pending is not None and pending() < self.YOUNG_MIN:
            self.young_skipped += 1
            return False
        self.young_runs += 1
        self._collect(0)
        return True


class LoadProbe:
    """One periodic timer measuring its own lateness; feeds the histogram and the gate."""

    IDLE_AFTER = 1.0  # seconds of idle ticks before the probe slows to ``idle_interval``
    IDLE_BUSY = 0.2  # share of wall time on the CPU since the last tick at or below which it is idle
    IDLE_LAG = 0.005  # smoothed loop lag (s) at or below which the reactor counts as idle

    def __init__(
        self,
        timers: Timers,
        settings: OverloadSettings,
        interval: float = 0.01,
        media_total: Callable[[], int] | None = None,
        cpu_time: Callable[[], float] = cpu_time,
        full_collections: FullCollections | None = None,
        idle_interval: float = 0.0,
    ) -> None:
        """``idle_interval``: seconds between ticks once the reactor is idle (module docstring);
        0 (or not above ``interval``): always ``interval``."""
        #: full collections to tick; None: the process's (:func:`tune_gc` with ``full_interval``), if any
        self.full_collections = full_collections
        self.timers = timers
        self._cpu_time = cpu_time
        self._cpu_last = cpu_time()
        self._wall_last = timers.now()
        self.interval = interval
        self.histogram = LagHistogram()
        self.gate = AdmissionGate(settings)
        self.media_rate = RateMeter(1.0)
        self._media_total = media_total
        self.idle_interval = idle_interval
        #: ticks at ``idle_interval`` (the reactor idle) rather than ``interval``
        self.idle = False
        #: times traffic woke the probe out of its idle mode
        self.wakes = 0
        self._idle_since: float | None = None
        self._due = 0.0
        self._call: Any = None

    def start(self) -> None:
        if self._call is None and self.interval > 0:
            self._arm(self.timers.now(), self.interval)

    def stop(self) -> None:
        self.timers.cancel(self._call)
        self._call = None
        self.idle = False
        self._idle_since = None
        self.gate.wake = None
        self.gate.last_tick = None  # no probe, no age: nothing is refused as late

    def update(self, settings: OverloadSettings) -> None:
        self.gate.settings = settings

    def _arm(self, now: float, interval: float) -> None:
        self._due = now + interval
        self._call = self.timers.call_later(interval, self._tick)

    def _wake(self, now: float) -> None:
        """Traffic while idle (the gate's first check): back to the normal interval from ``now``."""
        if not self.idle or self._call is None:
            return
        self.wakes += 1
        self.idle = False
        self._idle_since = None
        self.timers.cancel(self._call)
        self._cpu_last, self._wall_last = self._cpu_time(), now  # the next share covers traffic only
        self._arm(now, self.interval)

    def _tick(self) -> None:
        now = self.timers.now()
        lag = now - self._due
        if lag < 0.0:
            lag = 0.0
        self.histogram.observe(lag)
        cpu = self._cpu_time()
        wall = now - self._wall_last
        busy = (cpu - self._cpu_last) / wall if wall > 0 else None
        self._cpu_last, self._wall_last = cpu, now
        gate = self.gate
        gate.observe_lag(lag, now, busy)
        if self._media_total is not None:
            self.media_rate.sample(self._media_total(), now)
        full = self.full_collections if self.full_collections is not None else _FULL
        if full is not None and full.tick(now, gate.smoothed, gate.busy):
            # its pause shows as the next tick's lag; the queue age counts from its end: what was read
            # during a collection (placed at a calm moment) is not a backlog to refuse
            gate.last_tick = self.timers.now()
        if self.idle_interval <= self.interval:
            self._arm(now, self.interval)
            return
        quiet = (busy is None or busy <= self.IDLE_BUSY) and not gate.shedding
        if self.idle:  # a late idle tick of an idle process: another process had the CPU, not a backlog
            quiet = quiet and lag < gate.settings.lag_high
        else:
            quiet = quiet and gate.smoothed <= self.IDLE_LAG
        if quiet:
            if self._idle_since is None:
                self._idle_since = now
            if self.idle or now - self._idle_since >= self.IDLE_AFTER:
                self.idle = True
                gate.wake = self._wake
                self._arm(now, self.idle_interval)
                return
        else:
            self._idle_since = None
        self.idle = False
        gate.wake = None
        self._arm(now, self.interval)


class GcMonitor:
    """Times every garbage collection, by generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.pauses = [LagHistogram() for _ in range(3)]
        self.collected = [0, 0, 0]
        self._start = 0.0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = perf_counter()
            return
        generation = min(2, int(info.get("generation", 2)))
        self.pauses[generation].observe(perf_counter() - self._start)
        self.collected[generation] += int(info.get("collected", 0))


_MONITOR: GcMonitor | None = None
_FULL: FullCollections | None = None
#: a generation-2 threshold never reached: the interpreter starts no full collection by itself
NO_AUTOMATIC_FULL = 2**31 - 1


def _gen0_count() -> int:
    return gc.get_count()[0]


def gc_monitor() -> GcMonitor | None:
    """The process's monitor, when :func:`tune_gc` installed one."""
    return _MONITOR


def tune_gc(
    thresholds: tuple[int, int, int],
    monitor: bool = True,
    full_interval: float = 0.0,
    now: Callable[[], float] = monotonic,
    freeze_survivors: bool = False,
) -> FullCollections | None:
    """Set the collector thresholds of this process and time its pauses; with ``full_interval``,
    full collections are left to the :class:`FullCollections` returned (the probe ticks it), which
    with ``freeze_survivors`` freezes what survives each of them (module docstring)."""
    global _MONITOR, _FULL
    gen0, gen1, gen2 = thresholds
    if full_interval > 0:
        gen1 = gen2 = NO_AUTOMATIC_FULL
        if freeze_survivors:
            _FULL = FullCollections(
                full_interval, now(), gc.collect, gc.freeze, gc.unfreeze, young_pending=_gen0_count
            )
        else:
            _FULL = FullCollections(full_interval, now(), young_pending=_gen0_count)
    else:
        _FULL = None
    gc.set_threshold(gen0, gen1, gen2)
    if monitor and _MONITOR is None:
        _MONITOR = GcMonitor()
        _MONITOR.install()
    return _FULL


def freeze_startup() -> None:
    """Collect once, then move every object alive now into the permanent generation."""
    gc.collect()
    gc.freeze()


def _buckets(hist: LagHistogram) -> list[tuple[str, float]]:
    return [("+Inf" if b == float("inf") else repr(b), n) for b, n in hist.cumulative()]


def load_families(
    probe: LoadProbe, shed: Mapping[str, int], media_refused: int, timers: int, transactions: int
) -> Iterator[Metric]:
    """Loop lag, the overload gate, refusals, GC pauses, pending timers and transactions."""
    h = HistogramMetricFamily(
        "mcs_edge_loop_lag_seconds", "How late the periodic probe timer fired (reactor loop lag)"
    )
    h.add_metric([], _buckets(probe.histogram), probe.histogram.sum)
    yield h
    g = GaugeMetricFamily("mcs_edge_loop_lag_smoothed_seconds", "Smoothed loop lag the overload gate acts on")
    g.add_metric([], probe.gate.smoothed)
    yield g
    g = GaugeMetricFamily(
        "mcs_edge_reactor_busy_ratio", "Smoothed share of wall time the process spent on the CPU"
    )
    g.add_metric([], probe.gate.busy)
    yield g
    g = GaugeMetricFamily(
        "mcs_edge_overload_admitted_ratio", "Share of new INVITE/REGISTER admitted (1 = no shedding)"
    )
    g.add_metric([], probe.gate.ratio)
    yield g
    c = CounterMetricFamily(
        "mcs_edge_overload_refused",
        "Requests refused 503 under overload, by reason and method",
        labels=["reason", "method"],
    )
    for key, n in sorted(shed.items()):
        reason, _, method = key.rpartition(":")  # "METHOD" (loop lag) or "reason:METHOD"
        c.add_metric([reason or "loop_lag", method], n)
    c.add_metric(["media_load", "INVITE"], media_refused)
    yield c
    g = GaugeMetricFamily("mcs_edge_media_packet_rate", "Relayed media packets per second (this worker)")
    g.add_metric([], probe.media_rate.rate)
    yield g
    g = GaugeMetricFamily("mcs_edge_timers", "Timers pending in the service (delayed and periodic calls)")
    g.add_metric([], timers)
    yield g
    g = GaugeMetricFamily(
        "mcs_edge_sip_transactions_held",
        "SIP transactions held, including completed ones kept by RFC 3261 timers",
    )
    g.add_metric([], transactions)
    yield g
    monitor = _MONITOR
    if monitor is not None:
        h = HistogramMetricFamily(
            "mcs_edge_gc_pause_seconds", "Garbage collection pauses, by generation", labels=["generation"]
        )
        for generation, hist in enumerate(monitor.pauses):
            h.add_metric([str(generation)], _buckets(hist), hist.sum)
        yield h
        c = CounterMetricFamily(
            "mcs_edge_gc_collected",
            "Objects freed by the cycle collector, by generation (garbage in reference cycles)",
            labels=["generation"],
        )
        for generation, n in enumerate(monitor.collected):
            c.add_metric([str(generation)], n)
        yield c
        g = GaugeMetricFamily(
            "mcs_edge_gc_frozen_objects",
            "Objects in the permanent generation (start-up, and survivors of the last full collection)",
        )
        g.add_metric([], gc.get_freeze_count())
        yield g
