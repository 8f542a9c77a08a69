"""A tenant added through the admin API serves at once: a WebSocket client registers and calls a sipp PBX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import LocalEdge, api, free_udp_port
from helpers.phone import Phone
from helpers.sipp import Sipp
from helpers.wsclient import header, status
from twisted.internet import threads

pytestmark = pytest.mark.requires_tool("sipp")


@pytest_twisted.inlineCallbacks
def test_tenant_added_by_api_registers_and_calls_then_is_removed(tmp_path: Path) -> Any:
    """POST /api/tenants; then REGISTER (401, 200 with Path) and a call through sipp, without restart; DELETE closes it."""
    e = LocalEdge(tmp_path)
    try:
        pbx_port = free_udp_port()
        tenant = {
            "id": "verdi",
            "domains": ["verdi.example.com"],
            "backend_sip": f"udp:127.0.0.1:{pbx_port}",
            "certificate": "self-signed",
            "allowed_origins": ["https://verdi.example.com"],
        }
        code, body = yield threads.deferToThread(api, e.admin, "POST", "/api/tenants", tenant)
        assert code == 201, body
        reg = Sipp(tmp_path, "pbx_register.xml", pbx_port, e.backend)
        ws = yield threads.deferToThread(e.client, "verdi", origin="https://verdi.example.com")
        phone = Phone(ws, "verdi.example.com")
        first = yield threads.deferToThread(phone.register)
        assert status(first) == 401
        second = yield threads.deferToThread(phone.register, True)
        assert status(second) == 200 and (header(second, "Path") or "").startswith("<sip:")
        assert (yield threads.deferToThread(reg.result)) == 0
        answer = Sipp(tmp_path, "pbx_answer.xml", pbx_port, e.backend)
        call = yield threads.deferToThread(phone.invite)
        assert call.final == 200
        assert (yield threads.deferToThread(phone.bye, call)) == 200
        assert (yield threads.deferToThread(answer.result)) == 0
        code, body = yield threads.deferToThread(api, e.admin, "DELETE", "/api/tenants/verdi")
        assert code == 200
        with pytest.raises(ConnectionError):
            yield threads.deferToThread(ws.recv, 5)
        assert 'id = "verdi"' not in e.conf.read_text()
    finally:
        yield e.stop()
