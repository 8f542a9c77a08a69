"""One clock in the adapters: no module of mcs_edge/tx/ but tx/timers.py reads a clock itself
(``time.monotonic``/``time.time``/``perf_counter``/``process_time``, ``datetime.now``/``utcnow``/
``today``, ``reactor.seconds()``). They are handed a ``now`` or use the helpers of tx/timers.py
(``wall_clock`` only where a figure is a wall-clock timestamp by nature)."""

from __future__ import annotations

import ast
from pathlib import Path

TX = Path(__file__).resolve().parents[2] / "mcs_edge" / "tx"

#: time functions that read a clock (time.sleep and time.strftime do not).
TIME_READS = frozenset(
    {
        "monotonic",
        "monotonic_ns",
        "time",
        "time_ns",
        "perf_counter",
        "perf_counter_ns",
        "process_time",
        "process_time_ns",
        "thread_time",
        "clock_gettime",
    }
)
DATETIME_READS = frozenset({"now", "utcnow", "today"})


def clock_reads(text: str) -> list[str]:
    """The clock reads of one module's source, as ``line: expression``."""
    tree = ast.parse(text)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            hits = [a.name for a in node.names if a.name in TIME_READS]
            if hits:
                found.append(f"{node.lineno}: from time import {', '.join(hits)}")
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        if (
            (isinstance(base, ast.Name) and base.id == "time" and node.attr in TIME_READS)
            or (
                node.attr in DATETIME_READS
                and (
                    (isinstance(base, ast.Name) and base.id in ("datetime", "date"))
                    or (isinstance(base, ast.Attribute) and base.attr in ("datetime", "date"))
                )
            )
            or (node.attr == "seconds" and "reactor" in ast.unparse(base).lower())
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_timers_reads_a_clock() -> None:
    """Every clock read of tx/ is in tx/timers.py."""
    found = {}
    for path in sorted(TX.rglob("*.py")):
        if path.name == "timers.py" and path.parent == TX:
            continue
        hits = clock_reads(path.read_text(encoding="utf-8"))
        if hits:
            found[path.relative_to(TX).as_posix()] = hits
    assert found == {}


def test_the_checker_sees_each_form() -> None:
    """time.*, from-time imports, datetime.now (both spellings) and reactor.seconds() are found; sleep is not."""
    assert clock_reads("import time\nx = time.monotonic()\n") == ["2: time.monotonic"]
    assert clock_reads("import time\nf = time.time\n") == ["2: time.time"]
    assert clock_reads("from time import perf_counter\n") == ["1: from time import perf_counter"]
    assert clock_reads("import datetime\nd = datetime.datetime.now(datetime.UTC)\n") == [
        "2: datetime.datetime.now"
    ]
    assert clock_reads("from datetime import datetime\nd = datetime.now()\n") == ["2: datetime.now"]
    assert clock_reads("t = self.reactor.seconds()\n") == ["1: self.reactor.seconds"]
    assert clock_reads("import time\ntime.sleep(0.1)\nx = datetime.timedelta(seconds=1)\n") == []
