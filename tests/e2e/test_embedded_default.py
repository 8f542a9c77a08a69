"""The README's run command: twistd on the embedded default serves TLS 1.2+ for localhost."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
PORT = 8443


def _wait_ready(log: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> float:
    """Seconds until the edge logs that it is ready (EDG101)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited early: {log.read_text()}")
        if "EDG101" in log.read_text():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"edge never became ready: {log.read_text()}")


@pytest.fixture
def edge(tmp_path: Path):  # type: ignore[no-untyped-def]
    try:
        socket.create_connection(("127.0.0.1", PORT), timeout=0.2).close()
        pytest.fail(f"port {PORT} is already in use; stop the other edge first")
    except OSError:
        pass
    state = tmp_path / "state"
    log = tmp_path / "edge.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                "--reactor=uvloop",
                "mcs-edge",
                "--state-dir",
                str(state),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        _wait_ready(log, proc)
        yield proc, state, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _s_client(*extra: str) -> str:
    res = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{PORT}", "-servername", "localhost", *extra],
        input=b"",
        capture_output=True,
        timeout=20,
        check=False,
    )
    return (res.stdout + res.stderr).decode(errors="replace")


def test_embedded_default_serves_tls_and_refuses_tls_1_1(edge) -> None:  # type: ignore[no-untyped-def]
    """openssl s_client completes TLS 1.2 and 1.3 with the generated certificate; -tls1_1 is refused."""
    _proc, state, _log = edge
    ca = state / "dev-ca" / "ca.pem"
    assert ca.exists() and (state / "certs" / "demo" / "privkey.pem").exists()
    assert oct((state / "certs" / "demo" / "privkey.pem").stat().st_mode & 0o777) == "0o600"
    for version in ("-tls1_2", "-tls1_3"):
        out = _s_client(version, "-CAfile", str(ca), "-verify_return_error", "-verify_hostname", "localhost")
        assert "Verify return code: 0 (ok)" in out, out
        assert "CN=localhost" in out.replace(" = ", "=")
    out = _s_client("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert "alert protocol version" in out, out


def test_embedded_default_stops_on_sigterm(edge) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM stops the edge cleanly (twistd re-raises the signal as its exit status)."""
    proc, _state, logfile = edge
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) in (0, -signal.SIGTERM)
    log = logfile.read_text()
    assert "EDG101" in log and "Server Shut Down" in log and "Traceback" not in log, log
