"""``twistd -n mcs-edge`` that cannot start: one line naming the key, the address or path and the reason.

The real entry point runs in a subprocess. When the tests run as root, the privileges an operator's
service user lacks (binding ports below 1024, reading other users' folders) are dropped from the
child with ``setpriv``, so the same failures happen as in production.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.tools import require_tool

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def _config(tmp: Path, listen: str = "", tenant: str = "", edge: str = "") -> Path:
    state = tmp / "state"
    text = f"""
[edge]
state_dir = "{state}"
{edge}
[listen]
https = "127.0.0.1:0"
sip_tls = "off"
backend_sip = "127.0.0.1:0"
admin = "127.0.0.1:0"
{listen}
[[tenants]]
id = "rossi"
domains = ["rossi.example.com"]
backend_sip = "udp:127.0.0.1:5999"
{tenant or 'certificate = "self-signed"'}
"""
    conf = tmp / "edge.toml"
    conf.write_text(text)
    return conf


def _run(conf: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "twistd"), "-n", "--pidfile=", "mcs-edge", "--config", str(conf)]
    if os.geteuid() == 0:  # as an unprivileged service user would run it
        require_tool("setpriv", why="util-linux")
        cmd = ["setpriv", "--bounding-set", "-net_bind_service,-dac_override,-dac_read_search", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=conf.parent, check=False)


def _one_line(out: subprocess.CompletedProcess[str]) -> str:
    both = out.stdout + out.stderr
    assert out.returncode == 1, both
    assert "Traceback" not in both, both
    lines = [line for line in out.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1, both
    return lines[0]


@pytest.fixture
def taken() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


def test_taken_listen_address(tmp_path: Path, taken: int) -> None:
    """listen.https on an address another process holds: the key, the address, 'Address already in use'."""
    line = _one_line(_run(_taken_config(tmp_path, taken)))
    assert f"listen.https = 127.0.0.1:{taken}" in line and "Address already in use" in line, line


def _taken_config(tmp: Path, port: int, workers: int = 1) -> Path:
    conf = _config(tmp, edge=f"workers = {workers}")
    conf.write_text(conf.read_text().replace('https = "127.0.0.1:0"', f'https = "127.0.0.1:{port}"'))
    return conf


def test_taken_listen_address_with_workers(tmp_path: Path, taken: int) -> None:
    """The same with edge.workers = 2: the supervisor says it once and exits, no worker is left behind."""
    line = _one_line(_run(_taken_config(tmp_path, taken, workers=2)))
    assert f"listen.https = 127.0.0.1:{taken}" in line and "Address already in use" in line, line


def test_missing_certificate_file(tmp_path: Path) -> None:
    """A tenant's cert_file that does not exist: tenants[0].cert_file, the path, 'file not found'."""
    missing = tmp_path / "nowhere" / "fullchain.pem"
    conf = _config(
        tmp_path,
        tenant=f'certificate = "files"\ncert_file = "{missing}"\nkey_file = "{tmp_path / "nowhere" / "privkey.pem"}"',
    )
    line = _one_line(_run(conf))
    assert f"tenants[0].cert_file = {missing}" in line and "not found" in line, line


def test_unreadable_state_directory(tmp_path: Path) -> None:
    """A state directory the service user cannot use: edge.state_dir, the path, the reason."""
    conf = _config(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o000)
    try:
        line = _one_line(_run(conf))
    finally:
        state.chmod(0o700)
    assert f"edge.state_dir = {state}" in line, line


def test_privileged_port_without_permission(tmp_path: Path) -> None:
    """listen.admin below 1024 without the privilege: the key, the address, 'Permission denied' and the fix."""
    conf = _config(tmp_path)
    conf.write_text(conf.read_text().replace('admin = "127.0.0.1:0"', 'admin = "127.0.0.1:1023"'))
    line = _one_line(_run(conf))
    assert "listen.admin = 127.0.0.1:1023" in line and "Permission denied" in line, line
    assert "CAP_NET_BIND_SERVICE" in line


def test_taken_backend_port_of_a_worker(tmp_path: Path) -> None:
    """edge.workers = 2: worker 1's backend port (listen.backend_sip + 1) held by another process is
    one start-up error naming it, not a worker restarting forever."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        conf = _config(tmp_path, edge="workers = 2")
        text = conf.read_text().replace(
            'backend_sip = "127.0.0.1:0"', f'backend_sip = "127.0.0.1:{port - 1}"', 1
        )
        conf.write_text(text)
        line = _one_line(_run(conf))
    finally:
        s.close()
    assert f"listen.backend_sip = 127.0.0.1:{port}" in line and "Address already in use" in line, line
