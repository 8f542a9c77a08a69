"""The admin web panel in a real browser: headless Chromium (Debian's package, Playwright) on listen.admin.

One operator session, end to end: nothing under /panel/api works before signing in; a wrong password
is refused; the admin token signs in (cookie Secure, HttpOnly, SameSite=Strict); "Add customer" with a
mistake first shows the config's error next to the field it names, then the fixed form adds the
customer (and an edit changes its name); an agent registers for it over WSS and calls (aiortc as the browser softphone, the test PBX
echoing RTP and answering RTCP); the panel lists the agent, the live call with its quality figures;
a ban is listed and lifted; the customer is removed after confirmation. Requests without the CSRF
token, with a wrong one, or with a forged session are refused.

The Debian sipp has neither TLS nor WebSocket transport, so the agent is the suite's WSS softphone
(:class:`helpers.phone.Phone` to register, aiortc for the call) rather than sipp.

With ``MCS_EDGE_SCREENSHOTS=<dir>`` the main pages are saved there as PNG (``docs/panel/`` in the repo).
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.aiortc_call import LoopThread, WsUa, audio_call, in_thread
from helpers.browser import CHROMIUM, launch
from helpers.edge import InProcessEdge, StopAfter, edge_toml, media_range, tenant_toml
from helpers.media_pbx import AsyncPbx, reporting_echo_answer
from helpers.phone import Phone
from helpers.wsclient import WSClient, status
from twisted.internet import threads

pytestmark = [pytest.mark.e2e, pytest.mark.requires_tool(CHROMIUM, "module:playwright")]

TOKEN = "panel-test-admin-token-0123456789"
DOMAIN = "verdi.example.com"


class PanelEdge(InProcessEdge):
    """An edge with one tenant (rossi); the test adds ``verdi`` through the panel, its PBX ready."""

    def __init__(self, tmp: Path, runner: LoopThread) -> None:
        super().__init__(tmp, runner=runner)
        self.pbx = AsyncPbx(reporting_echo_answer(self.loop_closers))
        runner.run(self.pbx.start())
        self.loop_closers.append(self.pbx.close)
        tenant = tenant_toml("rossi", self.pbx.port, keys='name = "Rossi S.r.l."\n')
        self.start(
            edge_toml(self.state, tenant, public=True, token=TOKEN, tls_reload=True, media=media_range(100))
        )


@pytest.fixture
def edge(tmp_path: Path, runner: LoopThread, stop_after: StopAfter) -> Any:
    return stop_after(PanelEdge(tmp_path, runner))


def http(url: str, method: str = "GET", headers: dict[str, str] | None = None, body: Any = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def agent_call(edge: PanelEdge, ws: WSClient, hangup: asyncio.Event, up: asyncio.Event) -> int:
    """aiortc calls over the agent's registered WebSocket, holds until ``hangup``; returns the BYE's status."""
    ua = WsUa(ws, DOMAIN)
    pc, _tone, _counter = await audio_call(ua)
    try:
        up.set()
        await hangup.wait()
        return int(await in_thread(ua.bye))
    finally:
        await pc.close()


def drive(edge: PanelEdge, tmp: Path) -> dict[str, Any]:
    """The whole operator session (runs in a worker thread: Playwright's sync API blocks)."""
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{edge.admin}"
    shots = os.environ.get("MCS_EDGE_SCREENSHOTS")
    out: dict[str, Any] = {}

    def shot(page: Any, name: str) -> None:
        page.screenshot(path=str(tmp / f"{name}.png"), full_page=True)
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(shots) / f"{name}.png"), full_page=True)

    # nothing works without signing in
    out["anon_get"] = http(base + "/panel/api/tenants")
    out["anon_post"] = http(base + "/panel/api/tenants", "POST", body={"id": "x"})
    out["anon_reload"] = http(base + "/panel/api/reload", "POST")
    with sync_playwright() as p:
        ctx = launch(p, tmp / "chromium")
        try:
            ctx.set_default_timeout(30_000)
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_viewport_size({"width": 1400, "height": 900})
            page.goto(base + "/panel/")
            page.wait_for_selector("#page-signin:not([hidden])")
            shot(page, "signin")
            page.fill("#signin-password", "not-the-token")
            page.click("#signin-submit")
            page.wait_for_function("document.getElementById('signin-error').textContent.length > 0")
            out["wrong_password"] = page.text_content("#signin-error")
            page.fill("#signin-password", TOKEN)
            page.click("#signin-submit")
            page.wait_for_selector("#customers-table tr[data-tenant=rossi]")
            cookies = {ck["name"]: ck for ck in ctx.cookies()}
            out["cookie"] = cookies.get("mcs_edge_panel")
            # add a customer with a mistake first
            page.click("#add-customer")
            page.wait_for_selector("#page-edit:not([hidden])")
            page.fill("#field-id", "verdi")
            page.fill("#field-name", "Verdi S.p.A.")
            page.fill("#field-domains", DOMAIN)
            page.fill("#field-backend_sip", "udp:127.0.0.1:99999")
            page.select_option("#field-certificate", "self-signed")
            page.fill("#field-allowed_origins", f"https://{DOMAIN}")
            page.click("#save")
            page.wait_for_function("document.getElementById('error-backend_sip').textContent.length > 0")
            out["field_error"] = page.text_content("#error-backend_sip")
            out["invalid_class"] = page.get_attribute("#field-backend_sip", "class")
            out["verdi_after_mistake"] = edge.service.config.tenant("verdi") is not None
            shot(page, "add-customer-error")
            page.fill("#field-backend_sip", f"udp:127.0.0.1:{edge.pbx.port}")
            page.click("#save")
            page.wait_for_selector("#customers-table tr[data-tenant=verdi]")
            out["verdi_row"] = page.text_content("#customers-table tr[data-tenant=verdi]")
            # an agent of the new customer registers and calls
            ws = WSClient(edge.https, DOMAIN, cafile=edge.ca, origin=f"https://{DOMAIN}")
            out["register"] = status(Phone(ws, DOMAIN).register())
            hangup, up = asyncio.Event(), asyncio.Event()
            loop = edge.runner.loop
            call = asyncio.run_coroutine_threadsafe(agent_call(edge, ws, hangup, up), loop)
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(up.wait(), 60), loop).result(70)
            page.click("#nav-calls")
            page.wait_for_function(
                "[...document.querySelectorAll('#calls-table tr[data-tenant=verdi] td.mos')]"
                ".some(td => /^[0-9.]+$/.test(td.textContent))",
                timeout=30_000,
            )
            page.wait_for_function(
                "/ms$/.test(document.querySelector('#calls-table tr[data-tenant=verdi] td.rtt')?.textContent)"
                " && /ms$/.test(document.querySelector('#calls-table tr[data-tenant=verdi] td.jitter')?.textContent)",
                timeout=30_000,
            )
            out["call_row"] = page.text_content("#calls-table tr[data-tenant=verdi]")
            out["rtt"] = page.text_content("#calls-table tr[data-tenant=verdi] td.rtt")
            out["mos"] = float(page.text_content("#calls-table tr[data-tenant=verdi] td.mos") or "0")
            shot(page, "live-calls")
            page.click("#nav-customers")
            page.wait_for_function(
                "(document.querySelector('#customers-table tr[data-tenant=verdi] td.agents') || {})"
                ".textContent?.includes('sip:alice@verdi.example.com')"
            )
            out["agents_cell"] = page.text_content("#customers-table tr[data-tenant=verdi] td.agents")
            out["calls_cell"] = page.text_content("#customers-table tr[data-tenant=verdi] td.calls")
            shot(page, "customers")
            # CSRF and session checks, from the signed-in browser and by hand
            out["csrf_less_fetch"] = page.evaluate(
                "fetch('/panel/api/reload', {method: 'POST'}).then(r => r.status)"
            )
            sid = out["cookie"]["value"] if out["cookie"] else ""
            cookie = {"Cookie": f"mcs_edge_panel={sid}"}
            out["csrf_less"] = http(base + "/panel/api/tenants/rossi", "DELETE", cookie)
            out["csrf_wrong"] = http(
                base + "/panel/api/tenants/rossi", "DELETE", {**cookie, "X-CSRF-Token": "forged"}
            )
            out["session_wrong"] = http(
                base + "/panel/api/tenants", "GET", {"Cookie": "mcs_edge_panel=forged-session-id"}
            )
            out["session_ok"] = http(base + "/panel/api/tenants", "GET", cookie)
            out["rossi_kept"] = edge.service.config.tenant("rossi") is not None
            # bans: one listed, lifted from the panel
            http(
                base + "/api/bans",
                "POST",
                {"Authorization": f"Bearer {TOKEN}"},
                {"source": "198.51.100.7", "duration": 600},
            )
            page.click("#nav-bans")
            page.wait_for_selector("#bans-table tr[data-source='198.51.100.7']")
            shot(page, "bans")
            page.click("#bans-table tr[data-source='198.51.100.7'] button")
            page.wait_for_selector("#bans-table tr[data-source='198.51.100.7']", state="detached")
            out["bans_left"] = len(edge.service.bans.list_bans(edge.service.timers.now()))
            # the call ends; the customer is removed after confirmation
            loop.call_soon_threadsafe(hangup.set)
            out["bye"] = call.result(30)
            ws.close()
            # edit: the form comes filled from GET /api/tenants/verdi; PATCH changes the name only
            page.click("#nav-customers")
            page.click("#edit-verdi")
            page.wait_for_function("document.getElementById('field-name').value === 'Verdi S.p.A.'")
            out["edit_backend"] = page.input_value("#field-backend_sip")
            page.fill("#field-name", "Verdi Group")
            page.click("#save")
            page.wait_for_function(
                "document.querySelector('#customers-table tr[data-tenant=verdi]')?.textContent.includes('Verdi Group')"
            )
            edited = edge.service.config.tenant("verdi")
            out["edited"] = (edited.name, edited.backend_sip.port) if edited is not None else None
            page.click("#remove-verdi")
            page.wait_for_selector("#page-remove:not([hidden])")
            out["still_there_before_confirm"] = edge.service.config.tenant("verdi") is not None
            page.click("#confirm-remove")
            page.wait_for_selector("#customers-table tr[data-tenant=verdi]", state="detached")
            out["verdi_gone"] = edge.service.config.tenant("verdi") is None
            out["flash"] = page.text_content("#flash")
            # signing out ends the session for every later request
            page.click("#signout")
            page.wait_for_selector("#page-signin:not([hidden])")
            out["after_signout"] = http(base + "/panel/api/tenants", "GET", cookie)
        finally:
            ctx.close()
    return out


@pytest_twisted.inlineCallbacks
def test_operator_adds_a_customer_sees_its_agent_and_call_quality_then_removes_it(
    edge: PanelEdge, tmp_path: Path
) -> Any:
    """Sign-in, add (mistake first, error names the field), agent and live call with quality, ban lifted, remove; CSRF-less, forged-session and anonymous requests refused."""
    out = yield threads.deferToThread(drive, edge, tmp_path)
    print({k: v for k, v in out.items() if k != "cookie"})
    assert out["anon_get"] == 401 and out["anon_post"] == 401 and out["anon_reload"] == 401
    assert "wrong" in out["wrong_password"]
    cookie = out["cookie"]
    assert cookie is not None and cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert "backend_sip" in out["field_error"] and "99999" in out["field_error"]
    assert "invalid" in (out["invalid_class"] or "")
    assert not out["verdi_after_mistake"]
    assert "Verdi S.p.A." in out["verdi_row"] and DOMAIN in out["verdi_row"]
    assert out["register"] == 200
    assert "sip:alice@verdi.example.com" in out["agents_cell"] and out["calls_cell"].strip() == "1"
    assert "sip:alice@verdi.example.com" in out["call_row"]
    assert 4.0 <= out["mos"] <= 4.5 and out["rtt"].endswith(" ms")
    assert out["csrf_less_fetch"] == 403 and out["csrf_less"] == 403 and out["csrf_wrong"] == 403
    assert out["session_wrong"] == 401 and out["session_ok"] == 200 and out["rossi_kept"]
    assert out["bans_left"] == 0
    assert out["bye"] == 200
    assert out["edit_backend"] == f"udp:127.0.0.1:{edge.pbx.port}"
    assert out["edited"] == ("Verdi Group", edge.pbx.port)
    assert out["still_there_before_confirm"] and out["verdi_gone"] and "removed" in out["flash"]
    assert out["after_signout"] == 401
    saved = edge.conf.read_text()
    assert 'id = "rossi"' in saved and 'id = "verdi"' not in saved


def test_panel_on_the_supervisor_of_two_workers(tmp_path: Path) -> None:
    """With edge.workers = 2 the supervisor serves the panel; its API calls fan out to the workers."""
    from helpers.edge import TOKEN as HELPER_TOKEN
    from helpers.edge import config_text, tenant_toml
    from helpers.pbx import Pbx
    from helpers.twistd import TwistdEdge

    pbx = Pbx()
    edge = None
    try:
        text = config_text(tmp_path / "state", tenant_toml("rossi", pbx.port), "workers = 2\n")
        edge = TwistdEdge(tmp_path, text, timeout=90)  # two workers start slowly on a loaded machine
        base = f"http://127.0.0.1:{edge.admin}"
        r = urllib.request.Request(
            base + "/panel/api/session",
            data=json.dumps({"operator": "admin", "password": HELPER_TOKEN}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(r, timeout=10) as resp:
            sid = resp.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]
        cookie = {"Cookie": f"mcs_edge_panel={sid}"}
        for path in ("tenants", "certificates", "checks", "calls", "connections", "bans"):
            assert http(f"{base}/panel/api/{path}", "GET", cookie) == 200, path
        r = urllib.request.Request(base + "/panel/api/certificates", headers=cookie)
        with urllib.request.urlopen(r, timeout=10) as resp:
            (row,) = json.loads(resp.read())["certificates"]
        assert row["tenant"] == "rossi" and row["expires_in"] > 86400
        assert http(f"{base}/panel/api/reload", "POST", cookie) == 403
    finally:
        if edge is not None:
            edge.stop()
        pbx.close()
