"""Start-up time and resident memory of the embedded default, beside a bare `twistd web` as the floor.

Prints, for N runs each: seconds from exec to ready (the EDG101 line / port open), and VmRSS/PSS
once ready. First run includes generating the development CA and certificate (cold); later runs
reuse them (warm).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
RUNS = 3


def _mem(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def _run(cmd: list[str], ready: str | int, cwd: str) -> tuple[float, int, int]:
    log = Path(cwd) / "out.log"
    with log.open("wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"exited early: {log.read_text()}")
            if isinstance(ready, str):
                if ready in log.read_text():
                    break
            else:
                try:
                    socket.create_connection(("127.0.0.1", ready), timeout=0.1).close()
                    break
                except OSError:
                    pass
            time.sleep(0.005)
        elapsed = time.monotonic() - start
        time.sleep(0.5)
        rss, pss = _mem(proc.pid)
        return elapsed, rss, pss
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def main() -> None:
    print(f"{'what':44} {'start s':>8} {'RSS KiB':>8} {'PSS KiB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        state = str(Path(tmp) / "state")
        for i in range(RUNS):
            t, rss, pss = _run(
                [
                    str(BIN / "twistd"),
                    "-n",
                    "--pidfile=",
                    "--reactor=uvloop",
                    "mcs-edge",
                    "--state-dir",
                    state,
                ],
                "EDG101",
                tmp,
            )
            print(
                f"{'mcs-edge embedded default ' + ('(cold)' if i == 0 else '(warm)'):44} {t:8.3f} {rss:8d} {pss:8d}"
            )
        for _ in range(RUNS):
            t, rss, pss = _run(
                [
                    str(BIN / "twistd"),
                    "-n",
                    "--pidfile=",
                    "web",
                    "--listen",
                    "tcp:18080:interface=127.0.0.1",
                    "--path",
                    tmp,
                ],
                18080,
                tmp,
            )
            print(f"{'floor: twistd web (plain HTTP, default reactor)':44} {t:8.3f} {rss:8d} {pss:8d}")


if __name__ == "__main__":
    main()
