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


# ---------------------------------------------------------------------------------------------
# No wiring by attribute assignment
# ---------------------------------------------------------------------------------------------


def _chain(node: ast.expr) -> list[str]:
    """``self.a.b`` -> ["self", "a", "b"]; [] when the chain does not start at a name."""
    out: list[str] = []
    while isinstance(node, ast.Attribute):
        out.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return []
    out.append(node.id)
    return out[::-1]


def _targets(tree: ast.AST) -> list[tuple[int, list[str]]]:
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            chain = _chain(target)
            if chain:
                found.append((node.lineno, chain))
    return found


def wiring_assignments(text: str) -> list[str]:
    """Assignments of the composition root to an attribute of a part it built (``self.sip.push =
    ...``): the part must receive it in its constructor instead."""
    tree = ast.parse(text)
    return [
        f"{line}: {'.'.join(chain)}"
        for line, chain in _targets(tree)
        if chain[0] == "self" and len(chain) >= 3
    ]


def core_hook_assignments(text: str) -> list[str]:
    """Assignments to an attribute of a sans-IO core held by an adapter (``router.core.local =
    ...``, ``self.core.draining = True``): the core gets its hooks in its constructor and changes
    state through its public methods."""
    tree = ast.parse(text)
    return [
        f"{line}: {'.'.join(chain)}"
        for line, chain in _targets(tree)
        if len(chain) >= 3 and chain[-2] == "core"
    ]


def test_the_composition_root_wires_through_constructors() -> None:
    """tx/service.py assigns no attribute of a part after building it (cycles use SipRouter.attach
    or a late-bound callable, each marked 'cycle:' in the file)."""
    assert wiring_assignments((PACKAGE / "tx" / "service.py").read_text(encoding="utf-8")) == []


def test_no_adapter_sets_a_core_attribute() -> None:
    """No module of tx/ assigns an attribute of a core object (hooks are constructor arguments)."""
    found = {}
    for path in (PACKAGE / "tx").rglob("*.py"):
        hits = core_hook_assignments(path.read_text(encoding="utf-8"))
        if hits:
            found[path.relative_to(PACKAGE).as_posix()] = hits
    assert found == {}


def test_wiring_checkers_see_what_they_forbid() -> None:
    """The checkers flag attribute wiring and core hooks, not plain state or local objects."""
    assert wiring_assignments("self.sip.push = self.push\n") == ["1: self.sip.push"]
    assert wiring_assignments("self.sip.core.backend_down = f\n") == ["1: self.sip.core.backend_down"]
    assert wiring_assignments("self.config = c\nsite.timeOut = 60\nself.ports['a'] = 1\n") == []
    assert core_hook_assignments("router.core.local = self\n") == ["1: router.core.local"]
    assert core_hook_assignments("self.core.draining = True\n") == ["1: self.core.draining"]
    assert core_hook_assignments("self.core = SipProxy()\ncore_flow.last_seen = 1\n") == []
