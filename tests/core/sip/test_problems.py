"""The proxy core's problems: values (code, fields) under stable codes registered in logevents."""

from __future__ import annotations

import ast
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from mcs_edge.core.sip.problems import FIELDS, Problem
from mcs_edge.core.sip.proxy import ProxySettings, SipProxy, ToFlow
from mcs_edge.logevents import EVENTS

SIP = Path(__file__).resolve().parents[3] / "mcs_edge" / "core" / "sip"
PBX = ("10.1.0.10", 5060)


@dataclass(frozen=True)
class Tenant:
    id: str
    path: bool = True


ROSSI, BIANCHI = Tenant("rossi"), Tenant("bianchi")


def _placeholders(fmt: str) -> set[str]:
    return {m.split(":")[0].split("!")[0] for m in re.findall(r"\{([^{}]+)\}", fmt)}


def _problem_calls() -> list[tuple[str, int, str, set[str]]]:
    """(file, line, code, keyword names) of every ``self.problem(name, code, ...)`` in core/sip."""
    out = []
    for path in sorted(SIP.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "problem"
            ):
                code = node.args[1]
                assert isinstance(code, ast.Constant), f"{path.name}:{node.lineno}: code must be a literal"
                out.append((path.name, node.lineno, code.value, {k.arg for k in node.keywords if k.arg}))
    return out


def test_every_problem_code_is_registered_with_the_fields_it_names() -> None:
    """Each code of problems.FIELDS is in logevents.EVENTS and its format names exactly those fields."""
    for code, fields in FIELDS.items():
        assert code in EVENTS, code
        assert _placeholders(EVENTS[code]) == set(fields), code


def test_every_reported_problem_uses_a_known_code_with_its_fields() -> None:
    """Every ``problem()`` call in core/sip gives a code of FIELDS and exactly that code's fields."""
    calls = _problem_calls()
    assert len(calls) >= 15  # the walk really found the call sites
    bad = [f"{f}:{line}: {code} {sorted(kw)}" for f, line, code, kw in calls if FIELDS.get(code) != kw]
    assert not bad, "\n".join(bad)
    assert {code for _f, _l, code, _kw in calls} == set(FIELDS)  # no code is registered for nothing


def test_a_refusal_is_counted_and_reported_as_a_value() -> None:
    """An initial request for another tenant's domain: 403, counted, and one Problem SIP443 whose
    fields format the registered line (no pre-formatted text)."""
    proxy = SipProxy(
        ProxySettings(
            public_host="203.0.113.10", public_port=443, backend_host="10.0.0.5", backend_port=5060
        ),
        tenant_for_domain={"rossi.example.com": ROSSI, "bianchi.example.com": BIANCHI}.get,
        backend_of=lambda t: ("udp", PBX),
        tenants_at=lambda ip: [ROSSI, BIANCHI] if ip == PBX[0] else [],
        random_bytes=secrets.token_bytes,
    )
    flow = proxy.open_flow(ROSSI, "wss", ("198.51.100.7", 40000), 0.0).id
    invite = (
        b"INVITE sip:bob@bianchi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS c.invalid;branch=z9hG4bKx1\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:a@rossi.example.com>;tag=1\r\nTo: <sip:bob@bianchi.example.com>\r\n"
        b"Call-ID: p1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    proxy.receive_from_client(flow, invite, 1.0)
    sent = [a.data for a in proxy.drain() if isinstance(a, ToFlow)]
    assert any(d.startswith(b"SIP/2.0 403") for d in sent)
    assert proxy.counters["sip_foreign_domain"] == 1
    assert list(proxy.problems) == [Problem("SIP443", {"tenant": "rossi", "domain": "bianchi.example.com"})]
    (problem,) = proxy.problems
    assert (
        EVENTS[problem.code]
        .format(**problem.fields)
        .startswith("rossi request for domain bianchi.example.com")
    )
