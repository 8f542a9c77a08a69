"""Secrets never leave through the admin API or the log; admin input is validated with full matches."""

from __future__ import annotations

import io
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import TOKEN, LocalEdge, api, http
from twisted.internet import threads
from twisted.logger import Logger, formatEvent, globalLogPublisher, textFileLogObserver

from mcs_edge import config as c
from mcs_edge.tx.ops.logs import JsonLineObserver, RedactingObserver

API_SECRET = "api-secret-4f1c9a77e0b2d6"
TURN_SECRET = "turn-secret-9b3e0c55aa17f2"
SECRETS = (API_SECRET, TURN_SECRET, TOKEN)

TAIL = f'api_secret = "{API_SECRET}"\nturn_secret = "{TURN_SECRET}"\n'


@pytest.fixture
def edge(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = LocalEdge(tmp_path, tenants=2, tail=TAIL)  # the secrets belong to tenant "bianchi"
    yield e
    pytest_twisted.blockon(e.stop())


def _every_endpoint(port: int) -> list[tuple[str, str, int, bytes]]:
    """(method, path, status, body) of a request to every admin endpoint, good and bad."""
    bianchi = api(port, "GET", "/api/tenants/bianchi")[1]["tenant"]
    calls: list[tuple[str, str, Any, str | None]] = [
        ("GET", "/metrics", None, None),
        ("GET", "/health/live", None, None),
        ("GET", "/health/ready", None, None),
        ("GET", "/api/status", None, TOKEN),
        ("GET", "/api/status", None, None),
        ("GET", "/api/status", None, "wrong-token-0123456789"),
        ("GET", "/api/tenants", None, TOKEN),
        ("GET", "/api/tenants/bianchi", None, TOKEN),
        ("GET", "/api/tenants/rossi", None, TOKEN),
        ("GET", "/api/tenants/nobody", None, TOKEN),
        ("GET", "/api/connections", None, TOKEN),
        ("GET", "/api/connections?tenant=bianchi", None, TOKEN),
        ("GET", "/api/calls", None, TOKEN),
        ("GET", "/api/bans", None, TOKEN),
        ("POST", "/api/bans", {"source": "192.0.2.7", "duration": 60}, TOKEN),
        ("DELETE", "/api/bans/192.0.2.7", None, TOKEN),
        ("POST", "/api/reload", {}, TOKEN),
        # the redacted table read back: accepted, the secrets kept
        ("PUT", "/api/tenants/bianchi", bianchi, TOKEN),
        ("PATCH", "/api/tenants/bianchi", {"echo": True}, TOKEN),
        # invalid edits: the error list must not echo a secret either
        ("PATCH", "/api/tenants/bianchi", {"api_secret": "short", "domains": ["rossi.example.com"]}, TOKEN),
        ("POST", "/api/tenants", {"id": "x", "api_secret": API_SECRET}, TOKEN),
        ("POST", "/api/tenants", {**bianchi, "id": "verdi"}, TOKEN),
        ("DELETE", "/api/tenants/nobody", None, TOKEN),
        ("GET", "/api/nothing", None, TOKEN),
        ("PUT", "/api/status", None, TOKEN),
        ("GET", "/nothing", None, TOKEN),
    ]
    out = []
    for method, path, body, token in calls:
        code, _h, data = http(port, method, path, body, token)
        out.append((method, path, code, data))
    return out


@pytest_twisted.inlineCallbacks
def test_no_configured_secret_in_any_admin_answer_or_log_line(edge: LocalEdge) -> Any:
    """Every admin endpoint, with good and bad input: no answer body and no log line holds api_secret,
    turn_secret or the admin token; a redacted table sent back keeps the real secrets."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        results = yield threads.deferToThread(_every_endpoint, edge.admin)
    finally:
        globalLogPublisher.removeObserver(events.append)
    for method, path, code, body in results:
        for secret in SECRETS:
            assert secret.encode() not in body, (method, path, code, body[:300])
    by_call = {(m, p): (code, body) for m, p, code, body in results}
    code, body = by_call[("GET", "/api/tenants/bianchi")]
    doc = json.loads(body)["tenant"]
    assert code == 200 and doc["api_secret"] == c.REDACTED and doc["turn_secret"] == c.REDACTED
    assert by_call[("PUT", "/api/tenants/bianchi")][0] == 200
    assert by_call[("POST", "/api/tenants")][0] == 400
    bianchi = c.load(edge.conf).tenant("bianchi")
    assert bianchi is not None and bianchi.api_secret == API_SECRET and bianchi.turn_secret == TURN_SECRET
    assert edge.service.config.tenant("bianchi").api_secret == API_SECRET  # type: ignore[union-attr]
    for event in events:
        text = formatEvent(event)
        for secret in SECRETS:
            assert secret not in text, text


def test_every_secret_looking_key_is_marked_secret_in_the_schema() -> None:
    """Any config key named like a secret, token, password or private key carries the secret marker,
    so the one redaction covers keys added later (tunnel keys, push credentials)."""
    import re

    looks_secret = re.compile(r"(secret|token|password|passwd|key|psk|credential)", re.I)
    not_secret = {"credential_ttl", "key_file"}  # a lifetime; a path (the file is the secret)

    def walk(cls: type[Any], prefix: str) -> list[str]:
        missing = []
        for fl in fields(cls):
            if fl.metadata.get("internal"):
                continue
            sub = c._section_of(cls, fl.name)
            if sub is not None:
                missing += walk(sub, f"{prefix}{fl.name}.")
            elif looks_secret.search(fl.name) and not fl.metadata.get("secret") and fl.name not in not_secret:
                missing.append(prefix + fl.name)
        return missing

    assert walk(c.EdgeConfig, "") == []
    assert c.secret_fields(c.TenantConfig) >= {"api_secret", "turn_secret"}
    assert c.secret_fields(c.AdminConfig) == {"token"}


def test_redact_replaces_every_marked_field_and_unredact_restores_them() -> None:
    """redact() hides secrets of nested sections and tenant arrays; unredact() puts back what REDACTED stands for."""
    cfg = c.loads(
        f'[admin]\ntoken = "{TOKEN}"\n[[tenants]]\nid = "a"\ndomains = ["a.example.com"]\n'
        f'backend_sip = "udp:127.0.0.1:5060"\n{TAIL}'
    )
    whole = json.dumps(c.redact(cfg))
    assert not any(s in whole for s in SECRETS)
    assert c.secret_values(cfg) == set(SECRETS)
    back = c.unredact(
        {"id": "a", "api_secret": c.REDACTED, "turn_secret": c.REDACTED},
        {"api_secret": "x" * 16},
        c.TenantConfig,
    )
    assert back == {"id": "a", "api_secret": "x" * 16}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_never_show_a_configured_secret(fmt: str) -> None:
    """An event whose text (or traceback) holds a secret is written with ******** instead."""
    out = io.StringIO()
    sink = JsonLineObserver(out) if fmt == "json" else textFileLogObserver(out)
    observer = RedactingObserver(sink, lambda: {API_SECRET})
    log = Logger(observer=observer)
    log.info("TRN401 {tenant} got {value}", tenant="rossi", value=f"Bearer {API_SECRET}")
    try:
        raise ValueError(API_SECRET)
    except ValueError:
        log.failure("ADM500 admin request failed")
    log.info("EDG101 nothing secret {n}", n=1)
    text = out.getvalue()
    assert API_SECRET not in text
    assert text.count(c.REDACTED) >= 2 and "nothing secret 1" in text


@pytest.mark.parametrize(
    "tenant",
    [
        {"id": "rossi\n"},
        {"domains": ["verdi.example.com\n"]},
        {"path_prefix": "/verdi\n"},
        {"backend_sip": "udp:127.0.0.1:5060\n"},
        {"backend_http": "http://127.0.0.1:8080\n"},
        {"allowed_origins": ["https://verdi.example.com\n"]},
        {"turn_peers": ["10.0.0.0/8\n"]},
        {"api_secret": "0123456789abcdef\n"},
        {"backend_sip": "udp:[fe80::1%eth0\n]:5060"},
        {"backend_sip": "udp:127.0.0.1:\u0665\u0660\u0666\u0660"},  # Arabic-Indic digits
    ],
    ids=["id", "domain", "prefix", "backend", "http", "origin", "peers", "secret", "v6-scope", "digits"],
)
def test_values_ending_in_newline_or_with_foreign_digits_are_refused(tenant: dict[str, Any]) -> None:
    """Validation uses full matches: a value with a trailing newline (or non-ASCII digits) is an error."""
    table = {"id": "verdi", "domains": ["verdi.example.com"], "backend_sip": "udp:127.0.0.1:5060", **tenant}
    with pytest.raises(c.ConfigErrors):
        c.from_mapping({"tenants": [table]})


def test_global_strings_ending_in_newline_are_refused() -> None:
    """tls.default_tenant, acme.email, turn.realm, edge.name and addresses with a trailing newline fail."""
    for text in (
        '[tls]\ndefault_tenant = "demo\\n"',
        '[acme]\nemail = "ops@example.com\\n"',
        '[turn]\nrealm = "edge\\n"',
        '[edge]\nname = "edge\\r\\nX-Evil: 1"',
        '[edge]\npublic_address = "fe80::1%eth0\\n"',
        '[listen]\nadmin = "127.0.0.1:9090\\n"',
    ):
        with pytest.raises(c.ConfigErrors):
            c.loads(text)


@pytest_twisted.inlineCallbacks
def test_admin_api_refuses_ids_and_domains_ending_in_newline(edge: LocalEdge) -> Any:
    """POST/PATCH with an id, a domain or a ban source ending in a newline answer 400 and change nothing."""
    code, body = yield threads.deferToThread(
        api,
        edge.admin,
        "POST",
        "/api/tenants",
        {"id": "verdi\n", "domains": ["verdi.example.com"], "backend_sip": "udp:127.0.0.1:5060"},
    )
    assert code == 400, body
    code, body = yield threads.deferToThread(
        api, edge.admin, "PATCH", "/api/tenants/rossi", {"domains": ["rossi.example.com\n"]}
    )
    assert code == 400, body
    code, body = yield threads.deferToThread(api, edge.admin, "POST", "/api/bans", {"source": "192.0.2.1\n"})
    assert code == 400, body
    assert [t.id for t in c.load(edge.conf).tenants] == ["rossi", "bianchi"]
    assert c.load(edge.conf).tenant("rossi").domains == ("rossi.example.com",)  # type: ignore[union-attr]
