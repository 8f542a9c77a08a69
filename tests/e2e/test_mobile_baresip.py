"""The mobile app's path with a real native client: baresip over SIP/TLS through the edge to an echoing PBX.

baresip runs headless in a private network namespace (non-loopback address, so its ICE works),
with a tone as microphone and a file as speaker; the edge runs as operators run it (twistd); the
PBX (tests/helpers/echo_pbx.py) echoes RTP. Each case checks: audio both ways (RTP counted at the
PBX, the tone heard back at baresip), hold/resume, BYE from either side answered 200, and
afterwards no call in /api/calls and every relay port free.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.baresip import BARESIP, Baresip, Netns, netns_available
from helpers.echo_pbx import EchoPbx
from helpers.edge import TOKEN, api, metrics, sample
from helpers.twistd import TwistdEdge

if not (BARESIP and netns_available()) and not os.environ.get("CI"):
    pytest.skip("baresip and root (network namespaces) are needed", allow_module_level=True)

AOR = "sip:alice@rossi.example.com"
MEDIA_PORTS = 200


def _free_port(host: str) -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _media_range() -> tuple[int, int]:
    base = 30000 + (os.getpid() * 7919 % 100) * MEDIA_PORTS
    return base, base + MEDIA_PORTS - 1


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns = Netns()
        try:
            self.pbx = EchoPbx()
            low, high = _media_range()
            self.sip_tls = _free_port(self.ns.host_ip)
            text = f"""
[edge]
state_dir = "{tmp / "state"}"
public_address = "{self.ns.host_ip}"
backend_address = "127.0.0.1"
[listen]
https = "127.0.0.1:0"
sip_tls = "{self.ns.host_ip}:{self.sip_tls}"
backend_sip = "127.0.0.1:0"
admin = "127.0.0.1:0"
[admin]
token = "{TOKEN}"
[tls]
unknown_sni = "default"
default_tenant = "rossi"
reload_interval = 0
[media]
ports = [{low}, {high}]
[[tenants]]
id = "rossi"
domains = ["rossi.example.com"]
backend_sip = "udp:127.0.0.1:{self.pbx.port}"
certificate = "self-signed"
"""
            self.edge = TwistdEdge(tmp, text, reactor="default")
        except BaseException:
            self.close()
            raise

    def phone(self, name: str, account: str) -> Baresip:
        return Baresip(
            self.tmp / name,
            self.ns,
            AOR,
            f"sip:{self.ns.host_ip}:{self.sip_tls};transport=tls",
            account,
        )

    def close(self) -> None:
        edge = getattr(self, "edge", None)
        if edge is not None:
            edge.stop()
        pbx = getattr(self, "pbx", None)
        if pbx is not None:
            pbx.close()
        self.ns.remove()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(tmp_path_factory.mktemp("mobile"))
    yield s
    s.close()


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout}s")


def _no_calls_and_ports_free(setup: Setup) -> None:
    def clean() -> bool:
        status, calls = api(setup.edge.admin, "GET", "/api/calls")
        m = metrics(setup.edge.admin)
        return (
            status == 200 and calls == {"calls": []} and sample(m, "mcs_edge_media_ports", state="used") == 0
        )

    try:
        _wait(clean, 10, "no call left and every relay port free")
    except AssertionError:
        m = metrics(setup.edge.admin)
        used = sample(m, "mcs_edge_media_ports", state="used")
        raise AssertionError(
            f"calls {api(setup.edge.admin, 'GET', '/api/calls')}, ports used {used}"
        ) from None


PROFILES = {
    "rtp": "",
    "sdes-optional": "mediaenc=srtp",
    "sdes": "mediaenc=srtp-mand",
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_app_calls_pbx(setup: Setup, profile: str) -> None:
    """The app calls the PBX: audio both ways, hold/resume, BYE from the app answered 200, nothing left."""
    phone = setup.phone(f"out-{profile}", PROFILES[profile])
    try:
        phone.wait_registered()
        mark = phone.mark()
        phone.command("dial", "sip:echo200@rossi.example.com")
        phone.wait_event("CALL_ESTABLISHED", after=mark)
        pbx = setup.pbx
        dialog = pbx.wait(
            lambda: next((d for d in pbx.dialogs.values() if d.incoming and not d.ended), None), 10, "call"
        )
        pbx.wait(lambda: dialog.rtp_in > 50, 10, "RTP from the app")
        _wait(lambda: phone.heard() > 20, 10, "the echo heard by the app")
        phone.command("hold")
        pbx.wait(lambda: len(dialog.offers) >= 2 and "a=sendonly" in dialog.offers[-1], 10, "hold re-INVITE")
        phone.command("resume")
        pbx.wait(
            lambda: len(dialog.offers) >= 3 and "a=sendonly" not in dialog.offers[-1], 10, "resume re-INVITE"
        )
        before = dialog.rtp_in
        pbx.wait(lambda: dialog.rtp_in > before + 25, 10, "RTP after resume")
        mark = phone.mark()
        phone.command("hangup")
        phone.wait_event("CALL_CLOSED", after=mark)
        pbx.wait(lambda: dialog.byes_received == 1, 10, "BYE at the PBX")
        assert dialog.acked >= 1
        _no_calls_and_ports_free(setup)
    finally:
        phone.stop()
