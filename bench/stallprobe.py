"""Where the edge's reactor stalls: a diagnostic wrapper around ``twistd`` for bench runs.

``python bench/stallprobe.py OUT.json [--saveall] -- twistd arguments...`` runs the edge in this
process with three instruments, and writes what they saw to ``OUT.json`` when the edge exits:

* **GC callbacks**: every collection's start (``time.perf_counter``), duration, generation, objects
  collected, and the young-generation population before it;
* **cycle census** (``--saveall``, a diagnostic run only: memory grows): ``gc.DEBUG_SAVEALL`` keeps
  what each collection found unreachable in ``gc.garbage``; after each collection the new garbage
  is tallied by type, and for the objects that name their creator (frames, functions, bound
  methods, cells, instance dictionaries) by that creator, so the census says which code builds
  reference cycles per transaction;
* **stack sampler**: a thread that wakes every ``--interval`` ms and records the main thread's
  stack. A sample whose stack is deeper than the idle reactor's is *busy*; a gap between two
  samples longer than the interval means the main thread held the GIL in C code (a collection, a
  long C call). Runs of busy samples or gaps longer than ``--stall`` ms are *stalls*; the report
  aggregates the innermost frames of the project's and libraries' code seen in them.

``bench_latency.py --diagnose DIR`` starts the edge through this wrapper and prints the summary.
Diagnostics perturb the edge (the sampler takes the GIL ~1,000 times/s): use it to find causes,
and a plain run for the figures.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import sys
import threading
import time
import types
from typing import Any


class GcLog:
    def __init__(self, saveall: bool) -> None:
        self.events: list[tuple[float, float, int, int, int]] = []
        self.census: collections.Counter[str] = collections.Counter()
        self.creators: collections.Counter[str] = collections.Counter()
        self.saveall = saveall
        self._t0 = 0.0
        self._young = 0
        self._seen = 0
        self.fanout = False
        #: per young collection: referents its objects point to (what the collector visits), and
        #: the containers with the most of them
        self.fanouts: list[tuple[int, int, list[tuple[int, str]]]] = []
        self.big: collections.Counter[str] = collections.Counter()

    def _fanout(self, generation: int) -> None:
        total = 0
        objs = [o for g in range(generation + 1) for o in gc.get_objects(g)]
        tops: list[tuple[int, str]] = []
        for o in objs:
            n = len(gc.get_referents(o))
            total += n
            if n > 500:
                tops.append((n, _describe(o)))
        tops.sort(reverse=True)
        for n, what in tops[:5]:
            self.big[what] += n
        self.fanouts.append((len(objs), total, tops[:5]))

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._young = gc.get_count()[0]
            if self.fanout and int(info["generation"]) < 2:
                self._fanout(int(info["generation"]))
            self._t0 = time.perf_counter()
            return
        t1 = time.perf_counter()
        self.events.append(
            (self._t0, t1 - self._t0, int(info["generation"]), int(info["collected"]), self._young)
        )
        if self.saveall:
            garbage = gc.garbage
            for obj in garbage[self._seen :]:
                self.census[type(obj).__qualname__] += 1
                who = _creator(obj)
                if who:
                    self.creators[who] += 1
            self._seen = len(garbage)


def _describe(obj: Any) -> str:
    """A young container with many referents: its type and a hint of what it holds."""
    kind = type(obj).__qualname__
    try:
        if isinstance(obj, dict):
            items = list(obj.items())[:2]
            return (
                f"dict {{{', '.join(f'{type(k).__qualname__}: {type(v).__qualname__}' for k, v in items)}}}"
            )
        if isinstance(obj, list | set | tuple | collections.deque):
            first = next(iter(obj), None)
            return f"{kind} of {type(first).__qualname__}"
    except Exception:  # a dict changing size under us: diagnostics only
        pass
    return f"{type(obj).__module__}.{kind}"


def _creator(obj: Any) -> str | None:
    if isinstance(obj, types.FrameType):
        return f"frame {obj.f_code.co_qualname} ({obj.f_code.co_filename.rsplit('/', 2)[-1]})"
    if isinstance(obj, types.FunctionType):
        return f"function {obj.__qualname__} ({obj.__code__.co_filename.rsplit('/', 2)[-1]})"
    if isinstance(obj, types.MethodType):
        return f"bound method {type(obj.__self__).__qualname__}.{obj.__func__.__name__}"
    if isinstance(obj, types.CellType):
        try:
            return f"cell holding {type(obj.cell_contents).__qualname__}"
        except ValueError:
            return "cell (empty)"
    if isinstance(obj, BaseException):
        return f"exception {type(obj).__qualname__}"
    if isinstance(obj, types.TracebackType):
        return f"traceback at {obj.tb_frame.f_code.co_qualname}"
    mod = type(obj).__module__
    if mod not in ("builtins",):
        return f"instance {mod}.{type(obj).__qualname__}"
    return None


# the main thread's innermost Python frame while the reactor waits for events (or runs C code)
IDLE = frozenset(
    {
        "internet/asyncioreactor.py:AsyncioSelectorReactor.run",  # uvloop: run_forever is C
        "python3.11/selectors.py:EpollSelector.select",
        "internet/epollreactor.py:EPollReactor.doPoll",
    }
)


# file names of the edge's modules (the sampler keeps the last two path components)
OWN = frozenset(
    f"{p.parent.name}/{p.name}"
    for p in __import__("pathlib").Path(__file__).resolve().parent.parent.joinpath("mcs_edge").rglob("*.py")
)


class Sampler(threading.Thread):
    def __init__(self, main: int, interval: float) -> None:
        super().__init__(daemon=True, name="stallprobe")
        self.main = main
        self.interval = interval
        self.samples: list[tuple[float, int, tuple[str, ...]]] = []
        self.running = True

    def run(self) -> None:
        # under SCHED_FIFO (bench --rt) a thread of equal priority never preempts the busy main
        # thread: sample one priority above it, and ask for the GIL sooner than the default 5 ms
        policy = os.sched_getscheduler(0)
        if policy in (os.SCHED_FIFO, os.SCHED_RR):
            prio = os.sched_getparam(0).sched_priority
            os.sched_setscheduler(0, policy, os.sched_param(min(prio + 1, 99)))
        sys.setswitchinterval(0.0002)
        frames = sys._current_frames
        while self.running:
            time.sleep(self.interval)
            t = time.perf_counter()
            frame = frames().get(self.main)
            stack: list[str] = []
            depth = 0
            while frame is not None:
                depth += 1
                if len(stack) < 40:
                    code = frame.f_code
                    stack.append(f"{'/'.join(code.co_filename.rsplit('/', 2)[-2:])}:{code.co_qualname}")
                frame = frame.f_back
            self.samples.append((t, depth, tuple(stack)))


def _report(gclog: GcLog, sampler: Sampler, stall: float) -> dict[str, Any]:
    samples = [x for x in sampler.samples if any("Reactor.run" in fr for fr in x[2])]  # reactor running
    t_first = samples[0][0] if samples else 0.0
    stalls: list[dict[str, Any]] = []
    culprits: collections.Counter[str] = collections.Counter()
    run: list[tuple[float, int, tuple[str, ...]]] = []
    prev = samples[0][0] if samples else 0.0

    def close(run: list[tuple[float, int, tuple[str, ...]]], gap_end: float | None = None) -> None:
        if not run:
            return
        start, end = run[0][0], (gap_end if gap_end is not None else run[-1][0])
        if end - start < stall:
            return
        gcs = [e for e in gclog.events if start - 0.005 <= e[0] <= end]
        tops: collections.Counter[str] = collections.Counter()
        for _, _, stack in run:
            # the innermost frame (self time) and the innermost frame of the edge's own code
            tops[stack[0]] += 1
            own = next((fr for fr in stack if fr.split(":", 1)[0] in OWN), None)
            if own is not None and own != stack[0]:
                tops["in " + own] += 1
        for fr, n in tops.items():
            culprits[fr] += n
        stalls.append(
            {
                "at_s": round(start - t_first, 2),
                "t": start,
                "ms": round((end - start) * 1000, 1),
                "samples": len(run),
                "gc": [(g, round(d * 1000, 1), c, y) for _, d, g, c, y in gcs],
                "top": tops.most_common(8),
            }
        )

    for sample in samples:
        t, depth, _stack = sample
        gap = t - prev
        prev = t
        if gap > stall:  # the GIL was held in C code for the whole gap
            close(run)
            run = []
            close([(t - gap, depth, ("<GIL held: C code, e.g. a collection>",)), sample], t)
            continue
        if _stack[0] not in IDLE:
            run.append(sample)
        else:
            close(run)
            run = []
    close(run)
    by_gen: dict[int, list[float]] = {0: [], 1: [], 2: []}
    for _, d, g, _, _ in gclog.events:
        by_gen[g].append(d)
    return {
        "samples": len(samples),
        "gc": {
            str(g): {
                "n": len(v),
                "max_ms": round(max(v, default=0) * 1000, 2),
                "mean_ms": round(sum(v) / len(v) * 1000, 2) if v else 0,
                "collected": sum(e[3] for e in gclog.events if e[2] == g),
            }
            for g, v in by_gen.items()
        },
        "stalls": sorted(stalls, key=lambda s: -s["ms"])[:2000],
        "gc_events": [(round(t, 4), round(d * 1000, 2), g, c, y) for t, d, g, c, y in gclog.events],
        "stall_count": len(stalls),
        "culprits": culprits.most_common(40),
        "census": gclog.census.most_common(40),
        "fanouts": gclog.fanouts,
        "big_young": gclog.big.most_common(20),
        "creators": gclog.creators.most_common(60),
    }


def main() -> None:
    argv = sys.argv[1:]
    sep = argv.index("--")
    opts, twistd_args = argv[:sep], argv[sep + 1 :]
    out = opts[0]
    saveall = "--saveall" in opts
    interval = float(opts[opts.index("--interval") + 1]) / 1000 if "--interval" in opts else 0.001
    stall = float(opts[opts.index("--stall") + 1]) / 1000 if "--stall" in opts else 0.01
    gclog = GcLog(saveall)
    gclog.fanout = "--fanout" in opts
    gc.callbacks.append(gclog)
    if saveall:
        gc.set_debug(gc.DEBUG_SAVEALL)
    sampler = Sampler(threading.get_ident(), interval)
    sampler.start()
    sys.argv = ["twistd", *twistd_args]
    from twisted.application import app
    from twisted.scripts.twistd import run

    app._exitWithSignal = lambda sig: None  # type: ignore[attr-defined]  # exit normally: write the report
    try:
        run()
    finally:
        sampler.running = False
        gc.callbacks.remove(gclog)
        with open(out, "w") as f:
            json.dump(_report(gclog, sampler, stall), f, indent=1)


if __name__ == "__main__":
    main()
