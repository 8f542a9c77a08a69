"""What the reactor ran while the loop-lag probe waited: a diagnostic wrapper around ``twistd``.

``python bench/turnprobe.py OUT.json [--late MS] -- twistd arguments...`` runs the edge in this
process with its entry points wrapped (a clock read before and after each, one tuple appended to a
list; about 1 us per entry):

* the loop's callbacks: a read of a TCP/TLS connection (``StreamTransport.data_received``), a
  readable descriptor of Twisted's (``_readOrWrite``: the PBX's UDP socket, the admin listener),
  Twisted's timer turn (``_onTimer``: every due ``DelayedCall`` in one asyncio timer callback), a
  relay endpoint becoming ready (``connection_made``), a relay datagram;
* inside them: each SIP message from a client or a PBX (``SipRouter.data_from_client`` /
  ``data_from_backend``, labelled by method or status and CSeq method), the router's flush, each
  timer callback (``Timers.call_later``: labelled by the function), the media hook
  (``MediaRelay.on_message``: relay ports opened), ``on_end`` (closed), garbage collections.

Each probe tick (``LoadProbe._tick``) compares its deadline with the clock; when it is ``--late``
ms (default 1) or more late, the window between the deadline and the tick is attributed: the
loop's callbacks that ran in it (clipped to it), the nested entries (SIP messages by kind, timers by
function, collections), and the rest, which no wrapped entry covers: uvloop's C code (the endpoint
creation tasks, ``call_soon`` handles, the poll itself). ``OUT.json`` gets the attribution of
every late tick (at most 200,000) and, per tick, when it ran; ``bench_latency.py --turns DIR``
prints a summary per latency step.

The wrapping costs about a microsecond per entry, small beside the 50-1,000 us a message costs, but
it is a diagnosis: figures come from runs without it.
"""

from __future__ import annotations

import collections
import gc
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

clock = time.monotonic  # the probe's own clock (Timers.now), so deadlines compare directly

#: closed entries: (start, end, depth, label), the last 200,000 (a ring: trimming a list of that
#: size in one go took ~50 ms, a stall of the probe's own)
RECORDS: collections.deque[tuple[float, float, int, str]] = collections.deque(maxlen=200_000)
OPEN: list[tuple[float, str]] = []  # the entries being run, outermost first
LATE: list[dict[str, Any]] = []
#: (time, lag, Twisted timer turns, of them with none due, seconds in wrapped callbacks, process CPU time)
TICKS: list[tuple[float, float, int, int, float, float]] = []
COUNTS = [0, 0]  # Twisted timer turns since the last tick, of them with no call due
BUSY = [0.0]  # seconds in the loop's wrapped callbacks since the last tick

_CSEQ = re.compile(rb"\r\n(?:CSeq)[ \t]*:[ \t]*\d+[ \t]+([A-Z]+)", re.I)


#: (wall, process CPU) at the start of each loop callback (the last 4,096)
STARTS: list[tuple[float, float]] = []
cpu = time.process_time


def _enter(label: str) -> None:
    if not OPEN:
        STARTS.append((clock(), cpu()))
        if len(STARTS) > 8192:
            del STARTS[:4096]  # 4,096 pointers: microseconds
    OPEN.append((clock(), label))


def _leave() -> None:
    t0, label = OPEN.pop()
    t1 = clock()
    depth = len(OPEN)
    RECORDS.append((t0, t1, depth, label))
    if not depth:
        BUSY[0] += t1 - t0


def wrap(cls: Any, name: str, label: Callable[..., str] | str) -> None:
    original = getattr(cls, name)

    def wrapper(*args: Any, **kw: Any) -> Any:
        _enter(label if isinstance(label, str) else label(*args, **kw))
        try:
            return original(*args, **kw)
        finally:
            _leave()

    wrapper.__name__ = getattr(original, "__name__", name)
    setattr(cls, name, wrapper)


def _sip_label(prefix: str, data: bytes) -> str:
    if data[:8] == b"SIP/2.0 ":
        m = _CSEQ.search(data)
        return f"{prefix}:{data[8:11].decode()} {m.group(1).decode() if m else '?'}"
    return f"{prefix}:{data[: data.find(b' ')].decode(errors='replace')}"


def _fn_label(fn: Any) -> str:
    fn = getattr(fn, "__func__", fn)
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    if owner is not None and "." not in name:
        name = f"{type(owner).__qualname__}.{name}"
    return "timer:" + name


def _gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _enter(f"gc{info['generation']}")
    else:
        _leave()


def install(late: float) -> None:
    from twisted.internet import asyncioreactor

    from mcs_edge.tx import native_stream, timers
    from mcs_edge.tx.media import relay
    from mcs_edge.tx.ops import loadprobe
    from mcs_edge.tx.sip import router

    wrap(native_stream.StreamTransport, "data_received", "loop:tcp read")
    wrap(native_stream.StreamTransport, "_step", "loop:tcp read, a later slice")
    wrap(native_stream.StreamTransport, "connection_lost", "loop:tcp connection lost")
    wrap(
        asyncioreactor.AsyncioSelectorReactor,
        "_readOrWrite",
        lambda self, sel, *a: f"loop:fd {type(sel).__name__}",
    )

    def _timers_label(self: Any) -> str:
        self._insertNewDelayedCalls()
        heap = self._pendingTimedCalls
        COUNTS[0] += 1
        if heap and heap[0].time <= self.seconds():
            return "loop:twisted timers"
        COUNTS[1] += 1
        return "loop:twisted timers, none due"

    wrap(asyncioreactor.AsyncioSelectorReactor, "_onTimer", _timers_label)
    wrap(router.SipRouter, "data_from_client", lambda self, flow, data: _sip_label("client", data))
    wrap(router.SipRouter, "data_from_backend", lambda self, data, *a: _sip_label("pbx", data))
    wrap(router.SipRouter, "_flush", "router flush")
    wrap(relay.MediaRelay, "on_message", "media hook")
    wrap(relay.MediaRelay, "on_end", "media end")
    wrap(relay.MediaRelay, "open_port", "relay open_port")
    wrap(relay.MediaRelay, "close_port", "relay close_port")
    from twisted.logger import Logger

    from mcs_edge.tx import relay_endpoint
    from mcs_edge.tx.media import quality

    wrap(quality.CallQualityRecorder, "released", "call quality record (MED200)")
    wrap(Logger, "emit", "log emit (formatted, handed to the writer)")

    wrap(relay_endpoint._Native, "connection_made", "loop:relay endpoint ready")

    original_later = timers.Timers.call_later

    def call_later(self: Any, delay: float, fn: Callable[..., Any], *args: Any) -> Any:
        label = _fn_label(fn)

        def labelled(*a: Any) -> Any:
            _enter(label)
            try:
                return fn(*a)
            finally:
                _leave()

        return original_later(self, delay, labelled, *args)

    timers.Timers.call_later = call_later  # type: ignore[method-assign]
    original_tick = loadprobe.LoadProbe._tick

    def tick(self: Any) -> None:
        now = clock()
        due = self._due
        lag = now - due
        TICKS.append((now, lag, COUNTS[0], COUNTS[1], BUSY[0], time.process_time()))
        COUNTS[0] = COUNTS[1] = 0
        BUSY[0] = 0.0
        if lag >= late:
            _attribute(due, now, lag)
        original_tick(self)

    loadprobe.LoadProbe._tick = tick  # type: ignore[method-assign]
    gc.callbacks.append(_gc)


def _attribute(due: float, now: float, lag: float) -> None:
    top: dict[str, float] = {}
    top_n: dict[str, int] = {}
    nested: dict[str, float] = {}
    nested_n: dict[str, int] = {}
    covered = 0.0
    for t0, t1, depth, label in reversed(RECORDS):
        if t1 < due - 0.05:
            break
        if t1 <= due:
            continue
        d = min(t1, now) - max(t0, due)
        if d <= 0:
            continue
        if depth == 0:
            top[label] = top.get(label, 0.0) + d
            top_n[label] = top_n.get(label, 0) + 1
            covered += d
        else:
            nested[label] = nested.get(label, 0.0) + d
            nested_n[label] = nested_n.get(label, 0) + 1
    for t0, label in OPEN[:1]:  # the turn the probe runs in (Twisted's timers), up to the probe
        d = now - max(t0, due)
        if d > 0:
            top[label + " (before the probe)"] = d
            top_n[label + " (before the probe)"] = 1
            covered += d
    # CPU spent from the start of the last callback that began before the deadline to now, against
    # the wall time: the rest is time the process did not run (idle in the poll, or not scheduled)
    off = None
    c_now = cpu()
    for w, c in reversed(STARTS):
        if w <= due:
            off = (now - w) - (c_now - c)
            break
    LATE.append(
        {
            "off_cpu": off,
            "t": now,
            "lag": lag,
            "top": {k: (top_n[k], v) for k, v in top.items()},
            "nested": {k: (nested_n[k], v) for k, v in nested.items()},
            "rest": max(0.0, lag - covered),
        }
    )


def main() -> None:
    argv = sys.argv[1:]
    sep = argv.index("--")
    opts, twistd_args = argv[:sep], argv[sep + 1 :]
    out = opts[0]
    late = float(opts[opts.index("--late") + 1]) / 1000 if "--late" in opts else 0.001
    install(late)
    sys.argv = ["twistd", *twistd_args]
    from twisted.application import app
    from twisted.scripts.twistd import run

    app._exitWithSignal = lambda sig: None  # type: ignore[attr-defined]  # exit normally: write the report
    try:
        run()
    finally:
        with open(out, "w") as f:
            json.dump({"late_ms": late * 1000, "late": LATE[-200_000:], "ticks": TICKS}, f)


if __name__ == "__main__":
    main()
