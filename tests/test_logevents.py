"""The log code registry stays true: every code the code logs is in mcs_edge.logevents, with its format."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mcs_edge.logevents import CODE_RE, EVENTS, code_of

ROOT = Path(__file__).resolve().parents[1] / "mcs_edge"
_CODED = re.compile(r"^([A-Z]{3}[0-9]{3}) ")
_LEVELS = {"info", "warn", "warning", "error", "failure", "critical"}


def logged_formats(source: str) -> list[tuple[int, str, str]]:
    """(line, code, format after the code) of every call argument that is a coded format string."""
    out: list[tuple[int, str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        for arg in node.args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                m = _CODED.match(arg.value)
                if m:
                    out.append((node.lineno, m.group(1), arg.value[m.end() :]))
    return out


def uncoded_log_lines(source: str) -> list[tuple[int, str]]:
    """(line, format) of ``...log.<level>("...")`` calls (not debug) whose format has no code."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in _LEVELS or "log" not in ast.unparse(node.func.value).lower():
            continue
        first = node.args[0] if node.args else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str) and not _CODED.match(first.value):
            out.append((node.lineno, first.value))
        elif isinstance(first, ast.JoinedStr):
            out.append((node.lineno, ast.unparse(first)))
    return out


def _sources() -> list[tuple[str, str]]:
    return [(str(p.relative_to(ROOT.parent)), p.read_text()) for p in sorted(ROOT.rglob("*.py"))]


def test_every_logged_code_is_registered_with_the_format_it_is_logged_with() -> None:
    """Each 'AAAnnn ...' format string passed to a call in mcs_edge/ is in EVENTS under its code, verbatim."""
    problems = []
    seen = set()
    for path, text in _sources():
        if path.endswith("logevents.py"):
            continue
        for line, code, fmt in logged_formats(text):
            seen.add(code)
            if code not in EVENTS:
                problems.append(f"{path}:{line}: {code} is not registered")
            elif EVENTS[code] != fmt:
                problems.append(f"{path}:{line}: {code} logs {fmt!r}, registered as {EVENTS[code]!r}")
    assert not problems, "\n".join(problems)
    assert len(seen) >= 50  # the walk really found the tree's log calls


def test_log_lines_above_debug_carry_a_code() -> None:
    """No info/warn/error log line in mcs_edge/ goes out without a stable code (or as an f-string)."""
    problems = [
        f"{path}:{line}: {fmt!r}" for path, text in _sources() for line, fmt in uncoded_log_lines(text)
    ]
    assert not problems, "\n".join(problems)


def test_registered_codes_are_well_formed_and_in_a_documented_area() -> None:
    """Every key is AAAnnn with a documented area and a kind digit 1..5, and code_of reads it back."""
    import mcs_edge.logevents as le

    areas = set(re.findall(r"^([A-Z]{3}) {5,}\S", le.__doc__ or "", re.M))
    assert {"EDG", "SIP", "MED", "TRN", "GRD"} <= areas
    for code, fmt in EVENTS.items():
        assert CODE_RE.match(code) and len(code) == 6, code
        assert code[:3] in areas, f"{code}: area {code[:3]} is not in the module docstring"
        assert code[3] in "12345", code
        assert code_of(f"{code} {fmt}") == code


def test_the_checks_catch_an_unregistered_or_changed_code_and_an_uncoded_line() -> None:
    """The walkers find what they must: an unknown code, a changed format, a line without a code."""
    source = (
        "class X:\n"
        "    def f(self):\n"
        '        self.log.warn("ZZZ999 {what} broke", what=1)\n'
        '        self.log.info("EDG103 drained: every call ended", elapsed=1)\n'
        '        self.log.error("no code here {x}", x=1)\n'
        '        self.log.debug("debug lines may go without {x}", x=1)\n'
        '        self.log.info(f"pre-formatted {self}")\n'
    )
    found = logged_formats(source)
    assert [(code, fmt) for _line, code, fmt in found] == [
        ("ZZZ999", "{what} broke"),
        ("EDG103", "drained: every call ended"),
    ]
    assert "ZZZ999" not in EVENTS and EVENTS["EDG103"] != found[1][2]
    assert [line for line, _fmt in uncoded_log_lines(source)] == [5, 7]
