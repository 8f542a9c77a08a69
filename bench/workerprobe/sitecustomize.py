"""bench/turnprobe.py inside the edge's *worker* processes (``edge.workers`` > 1), for diagnosis.

The supervisor starts its workers as new interpreters (``python -c ... twistd ... --worker i``), so
running the edge under ``turnprobe.py`` times the supervisor only. With this folder on
``PYTHONPATH`` and ``MCS_EDGE_TURNPROBE=DIR`` in the environment (``bench_workers.py --turns DIR``
sets both), every worker installs the turn probe at start-up and writes
``DIR/turns-worker-PID.json`` when it exits (the same format as ``turnprobe.py``; ``--late`` from
``MCS_EDGE_TURNPROBE_LATE``, ms, default 1). Besides turnprobe's entry points it times the media
relay's Python side: a datagram a forwarding rule handed on (by port kind), the rule revoked /
synced / released / installed, the anchor's timer. The report is written on SIGUSR2 (the bench
sends it after the hold) and again at exit. Any other process ignores it. A diagnosis: the
wrapping costs about a microsecond per entry, figures come from runs without it.
"""

from __future__ import annotations

import os
import sys


def _install(out_dir: str) -> None:
    import atexit
    import json
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import turnprobe

    late = float(os.environ.get("MCS_EDGE_TURNPROBE_LATE", "1")) / 1000
    turnprobe.install(late)

    from mcs_edge.core.media import anchor
    from mcs_edge.tx.media import relay

    wrap = turnprobe.wrap
    for name in ("_fast_receiver", "_receiver"):
        original = getattr(relay, name)

        def factory(
            r: object, leg: object, rtcp: bool, _original: object = original, _name: str = name
        ) -> object:
            inner = _original(r, leg, rtcp)  # type: ignore[operator]
            label = f"media datagram to Python ({'rtcp port' if rtcp else 'rtp port'}{', rule' if _name == '_fast_receiver' else ''})"

            def received(data: bytes, addr: object) -> None:
                kind = (
                    "rtcp"
                    if len(data) > 1 and 192 <= data[1] <= 223
                    else "stun"
                    if data[0] < 4
                    else "dtls"
                    if 20 <= data[0] <= 63
                    else "rtp"
                )
                turnprobe._enter(f"{label}: {kind}")
                try:
                    inner(data, addr)  # type: ignore[operator]
                finally:
                    turnprobe._leave()

            return received

        setattr(relay, name, factory)
    wrap(relay._Held, "revoke", "rule revoke")
    wrap(relay._Held, "sync", "rule sync")
    wrap(relay._Held, "release", "rule release")
    wrap(relay.MediaRelay, "consider", "rule consider/install")
    wrap(relay.MediaRelay, "sync", "relay sync (all rules)")
    wrap(anchor.MediaAnchor, "handle_timer", "media anchor timer")

    from twisted.application import app

    app._exitWithSignal = lambda sig: None  # type: ignore[attr-defined]  # exit normally: write the report
    out = Path(out_dir) / f"turns-worker-{os.getpid()}.json"

    def dump() -> None:
        with open(out, "w") as f:
            json.dump(
                {"late_ms": late * 1000, "late": turnprobe.LATE[-200_000:], "ticks": turnprobe.TICKS}, f
            )

    atexit.register(dump)
    import signal

    signal.signal(signal.SIGUSR2, lambda signum, frame: dump())  # the bench asks after the hold
    # the supervisor may be gone (and SIGTERM this worker again) before atexit runs: write the
    # report when the reactor shuts down too
    from mcs_edge.tx.ops import loadprobe

    original_start = loadprobe.LoadProbe.start

    def start(self: object) -> None:
        from twisted.internet import reactor

        if not getattr(start, "armed", False):
            start.armed = True  # type: ignore[attr-defined]
            reactor.addSystemEventTrigger("before", "shutdown", dump)  # type: ignore[attr-defined]
        original_start(self)  # type: ignore[arg-type]

    loadprobe.LoadProbe.start = start  # type: ignore[method-assign]


if os.environ.get("MCS_EDGE_TURNPROBE") and "--worker" in sys.argv:
    _install(os.environ["MCS_EDGE_TURNPROBE"])
