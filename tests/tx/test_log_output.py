"""Log output off the reactor thread: ThreadedOutput writes in a thread of its own, never blocks the
caller, drops and reports lines when the output does not keep up, and writes at once once closed."""

from __future__ import annotations

import io
import threading
import time

from twisted.logger import Logger, textFileLogObserver

from mcs_edge.tx.ops.logs import LoggingRoot, ThreadedOutput


class Sink(io.StringIO):
    """A stream recording which thread wrote to it; ``gate`` blocks writes until set."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()
        self.gate = threading.Event()
        self.gate.set()

    def write(self, s: str) -> int:
        self.threads.add(threading.get_ident())
        self.gate.wait(10)
        return super().write(s)


def _wait(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_lines_are_written_in_order_by_the_writer_thread() -> None:
    """The caller only buffers; the writer thread writes every line, in order, in one batch."""
    sink = Sink()
    out = ThreadedOutput(sink, delay=0.01)
    log = Logger(observer=textFileLogObserver(out))  # type: ignore[arg-type]
    for i in range(100):
        log.info("LOG300 line {i}", i=i)
    _wait(lambda: sink.getvalue().count("\n") == 100)
    lines = sink.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(i) for i in range(100)]
    assert threading.get_ident() not in sink.threads
    out.close()


def test_a_blocked_output_never_blocks_the_caller_and_drops_are_reported() -> None:
    """With the output stuck, writes return at once; past max_pending lines are dropped, counted,
    and a LOG301 line reports them when the output moves again."""
    sink = Sink()
    sink.gate.clear()
    out = ThreadedOutput(sink, max_pending=1000, delay=0.0)
    out.write("first\n")
    _wait(lambda: bool(sink.threads))  # the writer thread is stuck in write
    t0 = time.monotonic()
    for _ in range(500):
        out.write("x" * 9 + "\n")
    assert time.monotonic() - t0 < 1.0
    assert out.dropped_total == 400  # 100 lines of 10 characters fit in max_pending
    sink.gate.set()
    _wait(lambda: "LOG301 400 log line(s) dropped" in sink.getvalue())
    assert sink.getvalue().count("xxxxxxxxx\n") == 100
    out.close()


def test_closed_output_writes_synchronously() -> None:
    """After close (the root service stopping, or exit), buffered and later lines are written at
    once by the caller: the last lines before a signal ends the process are not lost."""
    sink = Sink()
    out = ThreadedOutput(sink, delay=10.0)
    out.write("buffered\n")
    root = LoggingRoot(textFileLogObserver(out))  # type: ignore[arg-type]
    root.startService()
    root.stopService()
    assert sink.getvalue() == "buffered\n"
    out.write("after\n")
    assert sink.getvalue() == "buffered\nafter\n"
    assert threading.get_ident() in sink.threads
