"""A tenant added through the admin API serves at once: a WebSocket client registers and calls a sipp PBX."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import LocalEdge, api
from helpers.phone import Phone
from helpers.wsclient import header, status
from twisted.internet import threads

pytestmark = pytest.mark.requires_tool("sipp")

SIPP_DIR = Path(__file__).resolve().parent.parent / "data" / "sipp"


def _free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _sipp(tmp: Path, scenario: str, port: int, backend: int) -> subprocess.Popen[bytes]:
    cmd = ["sipp", "-sf", str(SIPP_DIR / scenario), "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-t", "u1"]
    cmd += [
        "-timeout",
        "20s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-error_file",
        str(tmp / f"{scenario}.err"),
    ]
    cmd.append(f"127.0.0.1:{backend}")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp)


def _result(tmp: Path, proc: subprocess.Popen[bytes], scenario: str) -> int:
    rc = proc.wait(60)
    if rc != 0:
        err = tmp / f"{scenario}.err"
        print(err.read_text() if err.exists() else "", proc.stderr.read().decode() if proc.stderr else "")
    return rc


@pytest_twisted.inlineCallbacks
def test_tenant_added_by_api_registers_and_calls_then_is_removed(tmp_path: Path) -> Any:
    """POST /api/tenants; then REGISTER (401, 200 with Path) and a call through sipp, without restart; DELETE closes it."""
    e = LocalEdge(tmp_path)
    try:
        pbx_port = _free_udp_port()
        tenant = {
            "id": "verdi",
            "domains": ["verdi.example.com"],
            "backend_sip": f"udp:127.0.0.1:{pbx_port}",
            "certificate": "self-signed",
            "allowed_origins": ["https://verdi.example.com"],
        }
        code, body = yield threads.deferToThread(api, e.admin, "POST", "/api/tenants", tenant)
        assert code == 201, body
        reg = _sipp(tmp_path, "pbx_register.xml", pbx_port, e.backend)
        ws = yield threads.deferToThread(e.client, "verdi", origin="https://verdi.example.com")
        phone = Phone(ws, "verdi.example.com")
        first = yield threads.deferToThread(phone.register)
        assert status(first) == 401
        second = yield threads.deferToThread(phone.register, True)
        assert status(second) == 200 and (header(second, "Path") or "").startswith("<sip:")
        assert (yield threads.deferToThread(_result, tmp_path, reg, "pbx_register.xml")) == 0
        answer = _sipp(tmp_path, "pbx_answer.xml", pbx_port, e.backend)
        call = yield threads.deferToThread(phone.invite)
        assert call.final == 200
        assert (yield threads.deferToThread(phone.bye, call)) == 200
        assert (yield threads.deferToThread(_result, tmp_path, answer, "pbx_answer.xml")) == 0
        code, body = yield threads.deferToThread(api, e.admin, "DELETE", "/api/tenants/verdi")
        assert code == 200
        with pytest.raises(ConnectionError):
            yield threads.deferToThread(ws.recv, 5)
        assert 'id = "verdi"' not in e.conf.read_text()
    finally:
        yield e.stop()
