"""``twistd -n mcs-edge --config FILE`` in a subprocess, as operators run it; ports read from its log.

The edge logs ``EDG101 ... https://<host>:<port>/`` once ready (the supervisor's line when
``edge.workers > 1``; workers log theirs with a ``[worker ...]`` prefix) and ``ADM100 ...
http://127.0.0.1:<port>/`` for its admin listener (the first one is the supervisor's).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent

READY = r"^\S+ \[(?!worker)[^\]]*\] EDG101 .*https://[^:]+:(\d+)/"


class TwistdEdge:
    """The edge in its own process, configured by ``text`` (written to ``tmp/edge.toml``)."""

    def __init__(
        self,
        tmp: Path,
        text: str,
        reactor: str = "uvloop",
        timeout: float = 30,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        """``prefix``: a command the process runs under (``taskset -c 0`` in the benches); ``env``:
        its environment (None = this process's); ``launcher``: what runs twistd's arguments (default
        ``twistd`` itself; bench/stallprobe.py wraps it)."""
        self.tmp = tmp
        self.conf = tmp / "edge.toml"
        self.conf.write_text(text)
        self.log = tmp / "edge.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    *(prefix or []),
                    *(launcher or [str(BIN / "twistd")]),
                    "-n",
                    "--pidfile=",
                    f"--reactor={reactor}",
                    "mcs-edge",
                    "--config",
                    str(self.conf),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                env=env,
            )
        try:
            text_now = self.wait_log(READY, timeout)
        except AssertionError:
            self.stop()
            raise
        self.https = int(re.findall(READY, text_now, re.M)[0])
        self.admin = int(re.findall(r"ADM100 .*http://127\.0\.0\.1:(\d+)/", text_now)[0])

    def wait_log(self, pattern: str, timeout: float = 30) -> str:
        """The log text once ``pattern`` (a multi-line regex) matches it; AssertionError otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if re.search(pattern, text, re.M):
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"twistd exited early:\n{text}")
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} never logged:\n{self.log.read_text()}")

    def stop(self) -> None:
        """SIGTERM (the edge drains), then wait; killed after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
