"""sipp as a test's PBX (Debian's sip-tester: UDP and TCP, no TLS or WebSocket): one process per scenario.

Scenarios live in tests/data/sipp. Each run writes its errors to ``<tmp>/<scenario>.err``;
:meth:`Sipp.result` waits for the exit code and prints those errors when it is not 0.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from helpers.ports import free_udp_port

SIPP_DIR = Path(__file__).resolve().parent.parent / "data" / "sipp"


class Sipp:
    """One sipp process on ``127.0.0.1:port`` running ``scenario`` (a name in tests/data/sipp or a path)."""

    def __init__(
        self,
        tmp: Path,
        scenario: str | Path,
        port: int,
        remote: int | None = None,
        *,
        transport: str = "u1",
        calls: int = 1,
        keys: dict[str, str] | None = None,
        timeout: int = 20,
        rtp_echo: bool = False,
        args: tuple[str, ...] = (),
    ) -> None:
        """``remote``: the edge's backend port sipp sends to (a UAC, or a UAS that must know it)."""
        self.tmp = tmp
        self.path = Path(scenario) if Path(scenario).is_absolute() else SIPP_DIR / scenario
        self.port = port
        self.err = tmp / f"{self.path.name}.err"
        cmd = ["sipp", "-sf", str(self.path), "-i", "127.0.0.1", "-p", str(port), "-m", str(calls)]
        cmd += ["-t", transport]
        if rtp_echo:
            cmd += ["-rtp_echo", "-mp", str(free_udp_port() & ~1)]
        cmd += ["-timeout", f"{timeout}s", "-timeout_error", "-nostdin", "-trace_err"]
        cmd += ["-error_file", str(self.err), *args]
        for k, v in (keys or {}).items():
            cmd += ["-key", k, v]
        if remote is not None:
            cmd.append(f"127.0.0.1:{remote}")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp)

    def errors(self) -> str:
        """What sipp reported: its error file and its stderr."""
        err = self.err.read_text() if self.err.exists() else ""
        return f"{err}\n{self.proc.stderr.read().decode() if self.proc.stderr else ''}"

    def result(self, timeout: float = 60) -> int:
        """sipp's exit code (0: the scenario passed); its errors are printed otherwise."""
        rc = self.proc.wait(timeout)
        if rc != 0:
            print(self.errors())
        return rc

    def wait_listening(self, timeout: float = 10.0, tcp: bool = False) -> None:
        """Until sipp has bound its port (UDP), or accepts connections on it (``tcp``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if tcp:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return
                except OSError:
                    pass
            else:
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    probe.bind(("127.0.0.1", self.port))
                except OSError:
                    return
                finally:
                    probe.close()
            time.sleep(0.02)
        raise AssertionError(f"sipp not listening on 127.0.0.1:{self.port} (exit {self.proc.poll()})")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
