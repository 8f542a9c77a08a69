"""The mobile app's path with a real native client: baresip over SIP/TLS through the edge to an echoing PBX.

baresip runs headless in a private network namespace (non-loopback address, so its ICE works),
with a tone as microphone and a file as speaker; the edge runs as operators run it (twistd); the
PBX (tests/helpers/echo_pbx.py) echoes RTP. Each case checks: audio both ways (RTP counted at the
PBX, the tone heard back at baresip), hold/resume, BYE from either side answered 200, and
afterwards no call in /api/calls and every relay port free.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.baresip import Baresip, Netns
from helpers.echo_pbx import EchoPbx
from helpers.edge import TOKEN, api, edge_toml, free_tcp_port, metrics, sample, tenant_toml
from helpers.twistd import TwistdEdge

# baresip and ip(8) are real peers; network namespaces also need root (CI runs as root)
pytestmark = pytest.mark.requires_tool("baresip", "ip")

AOR = "sip:alice@rossi.example.com"
MEDIA_PORTS = 200


def _media_range() -> tuple[int, int]:
    base = 30000 + (os.getpid() * 7919 % 100) * MEDIA_PORTS
    return base, base + MEDIA_PORTS - 1


class Setup:
    """The edge (twistd), the PBX and the namespace. ``split``: the edge tells clients (Record-Route,
    SDP) a second address of the host, so baresip sends in-dialog requests on a new connection."""

    def __init__(self, tmp: Path, split: bool = False, media_offset: int = 0) -> None:
        self.tmp = tmp
        self.ns = Netns(second_ip=split)
        try:
            self.pbx = EchoPbx()
            low, high = _media_range()
            low, high = low + media_offset, high + media_offset
            self.sip_tls = free_tcp_port("0.0.0.0" if split else self.ns.host_ip)
            public = self.ns.second_ip or self.ns.host_ip
            listen = "0.0.0.0" if split else self.ns.host_ip
            tenants = tenant_toml("rossi", self.pbx.port) + tenant_toml(
                "verdi", self.pbx.port, keys='app_media = "rtp"\n'
            )
            text = edge_toml(
                tmp / "state",
                tenants,
                edge=f'public_address = "{public}"\nbackend_address = "127.0.0.1"\n',
                sip_tls=f"{listen}:{self.sip_tls}",
                token=TOKEN,
                media=(low, high),
                media_bind=None,
                sections='[tls]\nunknown_sni = "reject"\nsip_no_sni_certificate = "rossi"\nreload_interval = 0\n',
            )
            self.edge = TwistdEdge(tmp, text)  # the production reactor (uvloop)
        except BaseException:
            self.close()
            raise

    def phone(self, name: str, account: str, aor: str = AOR) -> Baresip:
        return Baresip(
            self.tmp / name,
            self.ns,
            aor,
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


MEDIA_PORTS_SPLIT = 100


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


# baresip account parameters per media profile, and what the edge's SDP toward the app must carry
PROFILES = {
    "rtp": ("", ()),
    "rtp-ice": ("medianat=ice", ("a=ice-ufrag",)),
    "sdes": ("mediaenc=srtp-mand", ("RTP/SAVP", "a=crypto")),
    "sdes-ice": ("mediaenc=srtp-mand;medianat=ice", ("RTP/SAVP", "a=crypto", "a=ice-ufrag")),
    "sdes-optional": ("mediaenc=srtp", ("a=crypto",)),
    "sdes-optional-ice": ("mediaenc=srtp;medianat=ice", ("a=crypto", "a=ice-ufrag")),
    "dtls": ("mediaenc=dtls_srtp", ("UDP/TLS/RTP/SAVP", "a=fingerprint")),
    "dtls-ice": ("mediaenc=dtls_srtp;medianat=ice", ("UDP/TLS/RTP/SAVP", "a=fingerprint", "a=ice-ufrag")),
}


def _edge_sdp(phone: Baresip) -> str:
    """The last SDP the edge sent the app."""
    bodies = [m.split("\n\nv=0", 1)[1] for m in phone.received() if "\n\nv=0" in m]
    assert bodies, "the app received no SDP"
    return bodies[-1]


def _audio_both_ways(phone: Baresip, dialog: Any, pbx: EchoPbx, first: bool) -> None:
    """RTP reaches the PBX (counted there) and comes back to the app (its status line shows both
    directions; on the first check, the echoed tone is decoded by the app)."""
    before = dialog.rtp_in
    pbx.wait(lambda: dialog.rtp_in > before + 50, 10, "RTP from the app at the PBX")
    _wait(lambda: min(phone.bitrates()) > 30000, 10, "audio both ways at the app")
    if first:
        _wait(lambda: phone.heard() > 20, 10, "the echoed tone decoded by the app")


def _app_calls_pbx(setup: Setup, phone: Baresip, expected: tuple[str, ...]) -> None:
    pbx = setup.pbx
    mark = phone.mark()
    phone.command("dial", "sip:echo200@rossi.example.com")
    phone.wait_event("CALL_ESTABLISHED", after=mark)
    dialog = pbx.wait(
        lambda: next((d for d in pbx.dialogs.values() if d.incoming and not d.ended), None), 10, "call"
    )
    sdp = _edge_sdp(phone)
    assert all(x in sdp for x in expected), sdp
    _audio_both_ways(phone, dialog, pbx, True)
    phone.command("hold")
    pbx.wait(lambda: len(dialog.offers) >= 2 and "a=sendonly" in dialog.offers[-1], 10, "hold re-INVITE")
    phone.command("resume")
    pbx.wait(lambda: len(dialog.offers) >= 3 and "a=sendonly" not in dialog.offers[-1], 10, "resume")
    _audio_both_ways(phone, dialog, pbx, False)
    mark = phone.mark()
    phone.command("hangup")
    phone.wait_event("CALL_CLOSED", after=mark)
    pbx.wait(lambda: dialog.byes_received == 1, 10, "BYE at the PBX")
    _wait(lambda: _bye_answered(phone), 10, "200 to the app's BYE")
    assert dialog.acked >= 1
    _no_calls_and_ports_free(setup)


def _bye_answered(phone: Baresip) -> bool:
    return any(m.startswith("SIP/2.0 200") and "CSeq:" in m and " BYE\n" in m for m in phone.received())


def _invite_oks(pbx: EchoPbx, call_id: str) -> int:
    return sum(
        1 for cid, status, method in pbx.responses if cid == call_id and method == "INVITE" and status == 200
    )


def _pbx_calls_app(setup: Setup, phone: Baresip, expected: tuple[str, ...], aor: str = AOR) -> None:
    pbx = setup.pbx
    mark = phone.mark()
    call_id = pbx.call(aor)
    phone.wait_event("CALL_ESTABLISHED", after=mark)
    assert pbx.wait_response(call_id, "INVITE") == 200
    sdp = _edge_sdp(phone)  # the edge's offer
    assert all(x in sdp for x in expected), sdp
    dialog = pbx.dialogs[call_id]
    _audio_both_ways(phone, dialog, pbx, False)
    pbx.reinvite(call_id, "sendonly")
    pbx.wait(lambda: _invite_oks(pbx, call_id) >= 2, 10, "hold answered")
    pbx.reinvite(call_id, "sendrecv")
    pbx.wait(lambda: _invite_oks(pbx, call_id) >= 3, 10, "resume answered")
    _audio_both_ways(phone, dialog, pbx, False)
    mark = phone.mark()
    pbx.hangup(call_id)
    assert pbx.wait_response(call_id, "BYE") == 200
    phone.wait_event("CALL_CLOSED", after=mark)
    _no_calls_and_ports_free(setup)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_app_and_pbx_call_each_other(setup: Setup, profile: str) -> None:
    """For each media profile of the app: it calls the PBX, then the PBX calls it (the edge offers what
    the app offered). Audio both ways each time, hold/resume, BYE from each side answered 200, and
    afterwards no call in /api/calls and every relay port free."""
    account, expected = PROFILES[profile]
    phone = setup.phone(profile, account)
    try:
        phone.wait_registered()
        _app_calls_pbx(setup, phone, expected)
        _pbx_calls_app(setup, phone, expected)
    finally:
        phone.stop()


def test_an_unusable_answer_from_the_app_ends_cleanly(setup: Setup) -> None:
    """A DTLS-only app that never offered gets the tenant's default offer (SDES) and answers with DTLS:
    the edge ACKs and BYEs the app's 200 (answered 200), the PBX gets 488, nothing is left."""
    phone = setup.phone("refused", "mediaenc=dtls_srtp")
    pbx = setup.pbx
    try:
        phone.wait_registered()
        mark = phone.mark()
        call_id = pbx.call(AOR)
        assert pbx.wait_response(call_id, "INVITE") == 488
        phone.wait_event("CALL_CLOSED", after=mark)
        _wait(lambda: any(m.startswith("BYE ") for m in phone.received()), 10, "BYE to the app")
        _no_calls_and_ports_free(setup)
        m = metrics(setup.edge.admin)
        assert sample(m, "mcs_edge_sip_events_total", event="sip_answer_refused_after_2xx") >= 1
    finally:
        phone.stop()


def test_calls_toward_a_new_app_follow_the_tenants_app_media(setup: Setup) -> None:
    """A plain-RTP app of a tenant with app_media = "rtp", bound by its REGISTER's domain (it sends no
    SNI and the edge rejects unknown SNI), is called by the PBX before it ever offered: plain RTP."""
    aor = "sip:alice@verdi.example.com"
    phone = setup.phone("verdi-rtp", "", aor)
    try:
        phone.wait_registered()
        _pbx_calls_app(setup, phone, ("RTP/AVP",), aor)
        assert "a=crypto" not in _edge_sdp(phone)
    finally:
        phone.stop()


def test_in_dialog_requests_on_a_new_connection(tmp_path: Path) -> None:
    """The edge's Record-Route names another address than the app's outbound proxy: baresip sends its
    ACK, re-INVITEs and BYE on a new TLS connection (no SNI, bound by the flow token); all work."""
    split = Setup(tmp_path, split=True, media_offset=MEDIA_PORTS - MEDIA_PORTS_SPLIT)
    try:
        account, expected = PROFILES["sdes-ice"]
        phone = split.phone("split", account)
        try:
            phone.wait_registered()
            _app_calls_pbx(split, phone, expected)
            assert split.ns.second_ip is not None
            pattern = rf"\nTLS {re.escape(split.ns.ns_ip)}:\d+ -> ([\d.]+):\d+\n"
            sent_to = set(re.findall(pattern, phone.log(None)))
            assert sent_to == {split.ns.host_ip, split.ns.second_ip}, sent_to
            _pbx_calls_app(split, phone, expected)
        finally:
            phone.stop()
    finally:
        split.close()


def _first_message_without_sni(setup: Setup, text: str) -> bytes:
    """Connect to the SIP/TLS listener without SNI, send ``text``; what comes back before the close."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((setup.ns.host_ip, setup.sip_tls), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=None) as tls:
            tls.sendall(text.encode())
            got = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except (ssl.SSLError, OSError):
                    break
                if not chunk:
                    break
                got += chunk
                if b"\r\n\r\n" in got:
                    break
            return got


def test_a_connection_without_sni_is_bound_only_by_a_first_request_naming_a_tenant(setup: Setup) -> None:
    """No SNI: a REGISTER for a tenant's domain is answered; an OPTIONS or a REGISTER for an unknown
    domain as first message closes the connection unanswered (SIP402)."""

    def request(method: str, domain: str) -> str:
        return (
            f"{method} sip:{domain} SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.9:5061;branch=z9hG4bK{method}{domain[:3]}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:bob@{domain}>;tag=b\r\nTo: <sip:bob@{domain}>\r\n"
            f"Call-ID: nosni-{method}-{domain}\r\nCSeq: 1 {method}\r\nContact: <sip:bob@10.0.0.9:5061;transport=tls>\r\n"
            "Content-Length: 0\r\n\r\n"
        )

    assert _first_message_without_sni(setup, request("REGISTER", "verdi.example.com")).startswith(
        b"SIP/2.0 200"
    )
    assert _first_message_without_sni(setup, request("OPTIONS", "rossi.example.com")) == b""
    assert _first_message_without_sni(setup, request("REGISTER", "unknown.example.net")) == b""
    setup.edge.wait_log(r"SIP402 TLS connection from .* without SNI closed")
