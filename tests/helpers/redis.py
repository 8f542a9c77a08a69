"""redis-server for the cluster tests (and bench/bench_cluster.py): no persistence, keyspace notifications."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from helpers.ports import free_tcp_port


def redis_args(
    port: int, bind: str, workdir: Path | str, password: str | None = None, notify: bool = True
) -> list[str]:
    """The redis-server command line: ``bind:port``, nothing saved, keyspace events (what a standby
    watches) unless ``notify`` is false."""
    args = ["redis-server", "--bind", bind, "--port", str(port)]
    if password is not None:
        args += ["--requirepass", password]
    args += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    if notify:
        args += ["--notify-keyspace-events", "K$gx"]
    return args


class Redis:
    """redis-server on a free loopback port; stop() and start() again on the same port."""

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = workdir
        self.port = free_tcp_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            redis_args(self.port, "127.0.0.1", self.workdir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.cli("PING") == "PONG":
                    return
            except (OSError, subprocess.CalledProcessError):
                pass
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), "--raw", *args], capture_output=True, check=True, timeout=5
        )
        return out.stdout.decode().strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
