"""The sans-IO rule: nothing under mcs_edge/core imports I/O or reactor modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "mcs_edge" / "core"
FORBIDDEN = ("twisted", "asyncio", "autobahn", "socket", "txaio", "uvloop", "selectors", "threading")
FORBIDDEN_FROM_MCS = ("mcs_edge.tx",)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _violations(path: Path) -> list[str]:
    bad = []
    for lineno, name in _imports(path):
        top = name.split(".")[0]
        if top in FORBIDDEN or any(name == m or name.startswith(m + ".") for m in FORBIDDEN_FROM_MCS):
            bad.append(f"{path.relative_to(CORE.parent.parent)}:{lineno} imports {name}")
    return bad


CORE_FILES = sorted(CORE.rglob("*.py"))


def test_core_has_modules() -> None:
    """The check below really walks the core package (it is not vacuously green)."""
    assert len(CORE_FILES) >= 5


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_is_sans_io(path: Path) -> None:
    """A core module imports nothing from twisted, asyncio, autobahn, socket or the adapters."""
    assert _violations(path) == []


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself flags `from twisted.internet import reactor` and `import socket`."""
    bad = CORE / "_layering_probe_does_not_exist.py"
    probe = tmp_path / "probe.py"
    probe.write_text("import socket\nfrom twisted.internet import reactor\nimport json\n")
    names = [n for _, n in _imports(probe)]
    assert [n for n in names if n.split(".")[0] in FORBIDDEN] == ["socket", "twisted.internet"]
    assert not bad.exists()
