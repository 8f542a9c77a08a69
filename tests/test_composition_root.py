"""tx/service.py is the composition root: only tap.py (which builds it) may import it; every adapter
gets narrow collaborators (tx/seams.py Protocols, other adapters, bound methods), never EdgeService."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mcs_edge"
ROOT = "mcs_edge.tx.service"

#: The one module besides tx/service.py itself that imports it: tap.py builds the service (and hands
#: the class to tx/ops/workers.make_worker). Never add an entry.
ALLOWED = frozenset({"tap.py"})


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_root(path: Path, package: str | None = None) -> bool:
    """Whether ``path`` imports mcs_edge.tx.service (absolute, relative, ``from mcs_edge.tx import service``;
    under TYPE_CHECKING too: the dependency is real for readers and tools)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    if package is None:
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(a.name == ROOT or a.name.startswith(ROOT + ".") for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == ROOT or module.startswith(ROOT + "."):
                return True
            if any(f"{module}.{a.name}" == ROOT for a in node.names):
                return True
    return False


def _importers() -> set[str]:
    out = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel != "tx/service.py" and imports_root(path):
            out.add(rel)
    return out


def test_only_listed_modules_import_the_composition_root() -> None:
    """Only tap.py imports tx/service.py (even under TYPE_CHECKING)."""
    assert _importers() == set(ALLOWED)


def test_checker_sees_every_import_form(tmp_path: Path) -> None:
    """Absolute, from-package, relative and TYPE_CHECKING imports are found; a docstring mention is not."""
    probes = {
        "import mcs_edge.tx.service\n": True,
        "from mcs_edge.tx import service\n": True,
        "from ..service import EdgeService\n": True,
        "from .. import service\n": True,
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mcs_edge.tx.service import EdgeService\n": True,
        '"""See :class:`~mcs_edge.tx.service.EdgeService`."""\nimport json\n': False,
        "from mcs_edge.tx.timers import Timers\nfrom ..timers import CoreTimer\n": False,
    }
    probe = tmp_path / "probe.py"
    for text, expected in probes.items():
        probe.write_text(text)
        assert imports_root(probe, package="mcs_edge.tx.web") is expected, text
