"""The admin panel's HTTP side on a real admin listener: pages, headers, sign-in rules, named operators."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import TOKEN, LocalEdge
from twisted.internet import threads

from mcs_edge import operators
from mcs_edge.tx.ops.panel import MAX_FAILURES

BIN = Path(sys.executable).parent


@pytest.fixture
def edge(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = LocalEdge(tmp_path)
    yield e
    pytest_twisted.blockon(e.stop())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


def req(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    r = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers or {}
    )
    if body is not None:
        r.add_header("Content-Type", "application/json")
    try:
        with urllib.request.build_opener(_NoRedirect).open(r, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def sign_in(port: int, operator: str, password: str) -> tuple[int, str, str]:
    """(status, session cookie value, CSRF token)."""
    status, headers, body = req(
        port, "POST", "/panel/api/session", {"operator": operator, "password": password}
    )
    cookie = headers.get("Set-Cookie", "")
    sid = cookie.split(";", 1)[0].split("=", 1)[1] if "=" in cookie else ""
    csrf = json.loads(body).get("csrf", "") if status == 200 else ""
    return status, sid, csrf


def test_operators_file_holds_argon2_hashes_only(tmp_path: Path) -> None:
    """add_operator stores an argon2id hash (0600, no password); verify accepts the password only."""
    operators.add_operator(str(tmp_path), "alice", "correct horse battery")
    text = (tmp_path / operators.FILE).read_text()
    assert "$argon2id$" in text and "correct horse" not in text
    assert stat.S_IMODE(os.stat(tmp_path / operators.FILE).st_mode) == 0o600
    assert operators.verify(str(tmp_path), "alice", "correct horse battery")
    assert not operators.verify(str(tmp_path), "alice", "correct horse batterx")
    assert not operators.verify(str(tmp_path), "bob", "correct horse battery")
    with pytest.raises(ValueError):
        operators.add_operator(str(tmp_path), "alice", "short")
    with pytest.raises(ValueError):
        operators.add_operator(str(tmp_path), "Admin Bob", "correct horse battery")
    assert operators.remove_operator(str(tmp_path), "alice") and not operators.load_operators(str(tmp_path))


def test_operator_cli_reads_the_password_from_stdin(tmp_path: Path) -> None:
    """`mcs-edge operator add NAME --state-dir DIR` saves a hash; a short password is refused."""
    ok = subprocess.run(
        [str(BIN / "mcs-edge"), "operator", "add", "carla", "--state-dir", str(tmp_path)],
        input="a-long-enough-password\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert operators.verify(str(tmp_path), "carla", "a-long-enough-password")
    bad = subprocess.run(
        [str(BIN / "mcs-edge"), "operator", "add", "dino", "--state-dir", str(tmp_path)],
        input="short\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "12" in bad.stderr


@pytest_twisted.inlineCallbacks
def test_pages_and_security_headers(edge: LocalEdge) -> Any:
    """/ and /panel redirect to /panel/; the page, script and style are served with a CSP without inline script."""
    root = yield threads.deferToThread(req, edge.admin, "GET", "/")
    assert root[0] == 302 and root[1]["Location"] == "/panel/"
    page = yield threads.deferToThread(req, edge.admin, "GET", "/panel/")
    assert page[0] == 200 and b"/panel/panel.js" in page[2] and b"<script>" not in page[2]
    csp = page[1]["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page[1]["X-Frame-Options"] == "DENY"
    js = yield threads.deferToThread(req, edge.admin, "GET", "/panel/panel.js")
    assert js[0] == 200 and js[1]["Content-Type"].startswith("text/javascript")
    post = yield threads.deferToThread(req, edge.admin, "POST", "/panel/panel.js", {})
    assert post[0] == 405
    # the JSON API keeps answering as before
    api = yield threads.deferToThread(req, edge.admin, "GET", "/api/status")
    assert api[0] == 401


@pytest_twisted.inlineCallbacks
def test_named_operator_signs_in_and_reaches_the_admin_api(edge: LocalEdge) -> Any:
    """An operator from operators.json signs in; /panel/api/ is the admin API; signing out needs the CSRF token."""
    operators.add_operator(str(edge.state), "alice", "correct horse battery")
    status, sid, csrf = yield threads.deferToThread(sign_in, edge.admin, "alice", "correct horse battery")
    assert status == 200 and sid and csrf
    cookie = {"Cookie": f"mcs_edge_panel={sid}"}
    tenants = yield threads.deferToThread(req, edge.admin, "GET", "/panel/api/tenants", None, cookie)
    assert tenants[0] == 200 and json.loads(tenants[2])["tenants"][0]["id"] == "rossi"
    certs = yield threads.deferToThread(req, edge.admin, "GET", "/panel/api/certificates", None, cookie)
    row = json.loads(certs[2])["certificates"][0]
    assert row["tenant"] == "rossi" and row["expires_in"] > 86400 and row["error"] is None
    me = yield threads.deferToThread(req, edge.admin, "GET", "/panel/api/session", None, cookie)
    assert json.loads(me[2]) == {"operator": "alice", "csrf": csrf}
    out = yield threads.deferToThread(req, edge.admin, "DELETE", "/panel/api/session", None, cookie)
    assert out[0] == 403
    out = yield threads.deferToThread(
        req, edge.admin, "DELETE", "/panel/api/session", None, {**cookie, "X-CSRF-Token": csrf}
    )
    assert out[0] == 200
    gone = yield threads.deferToThread(req, edge.admin, "GET", "/panel/api/tenants", None, cookie)
    assert gone[0] == 401


@pytest_twisted.inlineCallbacks
def test_sign_in_must_be_json_and_wrong_passwords_ban_the_source(edge: LocalEdge) -> Any:
    """A form-encoded sign-in is refused (415); wrong passwords count toward the admin API's per-source ban (then 403)."""
    form = yield threads.deferToThread(
        req,
        edge.admin,
        "POST",
        "/panel/api/session",
        None,
        {"Content-Type": "application/x-www-form-urlencoded"},
        f"operator=admin&password={TOKEN}".encode(),
    )
    assert form[0] == 415
    statuses = []
    for _ in range(MAX_FAILURES):
        status, _sid, _csrf = yield threads.deferToThread(sign_in, edge.admin, "admin", "wrong-token-guess")
        statuses.append(status)
    assert statuses == [401] * MAX_FAILURES  # guard.ban_failures (10) wrong ones ban the source
    status, _sid, _csrf = yield threads.deferToThread(sign_in, edge.admin, "admin", TOKEN)
    assert status == 403  # banned: not even the right token
    api = yield threads.deferToThread(
        req, edge.admin, "GET", "/api/status", None, {"Authorization": f"Bearer {TOKEN}"}
    )
    assert api[0] == 403


@pytest_twisted.inlineCallbacks
def test_failed_sign_ins_from_allow_listed_sources_are_throttled(tmp_path: Path) -> Any:
    """Sources exempt from bans (guard.allow_networks) still meet the global limit: 429 after MAX_FAILURES."""
    e = LocalEdge(tmp_path, tail='[guard]\nallow_networks = ["127.0.0.0/8"]\n')
    try:
        for _ in range(MAX_FAILURES):
            status, _sid, _csrf = yield threads.deferToThread(sign_in, e.admin, "admin", "wrong-token-guess")
            assert status == 401
        status, _sid, _csrf = yield threads.deferToThread(sign_in, e.admin, "admin", TOKEN)
        assert status == 429
    finally:
        yield e.stop()


@pytest_twisted.inlineCallbacks
def test_last_network_check_of_each_tenant_is_listed(tmp_path: Path) -> Any:
    """A check report posted on the tenant's page shows up in GET /api/checks (the panel's customers page)."""
    from helpers.https import Conn

    e = LocalEdge(tmp_path, tail="echo = true\n")
    try:

        def post() -> Any:
            conn = Conn(e.https, "rossi.example.com", cafile=e.ca)
            try:
                body = json.dumps({"result": "warn", "rtt_ms": 42.5, "loss_pct": 0.5, "who": "me"}).encode()
                return conn.request("POST", "/check/report", host=f"rossi.example.com:{e.https}", body=body)
            finally:
                conn.close()

        yield threads.deferToThread(post)
        status, sid, _csrf = yield threads.deferToThread(sign_in, e.admin, "admin", TOKEN)
        assert status == 200
        got = yield threads.deferToThread(
            req, e.admin, "GET", "/panel/api/checks", None, {"Cookie": f"mcs_edge_panel={sid}"}
        )
        rep = json.loads(got[2])["checks"]["rossi"]
        assert rep["result"] == "warn" and rep["figures"] == {"rtt_ms": 42.5, "loss_pct": 0.5}
        assert rep["time"] > 1.7e9
    finally:
        yield e.stop()


def test_admin_tls_keys_are_checked_together() -> None:
    """admin.cert_file needs key_file and tls = 'files'; the errors name the key."""
    from mcs_edge import config as c
    from mcs_edge.errors import ConfigErrors

    with pytest.raises(ConfigErrors) as err:
        c.loads('[admin]\ntls = "self-signed"\ncert_file = "a.pem"\n')
    text = "\n".join(str(e) for e in err.value.errors)
    assert "admin.cert_file" in text and "key_file" in text and "tls = 'files'" in text
    with pytest.raises(ConfigErrors):
        c.loads('[admin]\ntls = "https"\n')


@pytest_twisted.inlineCallbacks
def test_admin_listener_over_https_with_the_development_ca(tmp_path: Path) -> Any:
    """[admin] tls = "self-signed": the panel and API answer over HTTPS (dev CA), plain HTTP gets nothing."""
    import ssl

    e = LocalEdge(tmp_path, token=False, tail=f'[admin]\ntoken = "{TOKEN}"\ntls = "self-signed"\n')
    try:

        def fetch(scheme: str, path: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
            ctx = ssl.create_default_context(cafile=e.ca)
            r = urllib.request.Request(f"{scheme}://127.0.0.1:{e.admin}{path}", data=data)
            if data is not None:
                r.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(r, timeout=10, context=ctx) as resp:
                    return resp.status, dict(resp.headers), resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, dict(exc.headers), exc.read()

        page = yield threads.deferToThread(fetch, "https", "/panel/")
        assert page[0] == 200 and b"panel.js" in page[2]
        body = json.dumps({"operator": "admin", "password": TOKEN}).encode()
        signed = yield threads.deferToThread(fetch, "https", "/panel/api/session", body)
        assert signed[0] == 200 and "Secure" in signed[1]["Set-Cookie"]
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            yield threads.deferToThread(fetch, "http", "/health/live")
    finally:
        yield e.stop()
