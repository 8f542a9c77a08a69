"""The real-peer rule (tests/helpers/tools.py): a missing peer skips locally and fails under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_TESTS = """
import pytest
from helpers.tools import require_tool

@pytest.mark.requires_tool("mcs-edge-no-such-peer")
def test_marked():
    pass

def test_called():
    require_tool("sh", "module:mcs-edge-no-such-module")

def test_present():
    require_tool("sh", "module:pytest")
"""


def _run(tmp: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp / "conftest.py").write_text("from helpers.tools import pytest_configure, pytest_runtest_setup\n")
    (tmp / "test_peers.py").write_text(_TESTS)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT / "tests")
    if ci:
        env["CI"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp)],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env,
        timeout=120,
        check=False,
    )


def test_missing_peer_fails_under_ci(tmp_path: Path) -> None:
    """With CI set, a test whose peer is missing (marker or call) fails; one whose peers exist passes."""
    out = _run(tmp_path, ci=True)
    assert out.returncode != 0, out.stdout
    assert "required when CI is set" in out.stdout
    summary = out.stdout.splitlines()[-1]
    assert summary.startswith("1 failed, 1 passed, 1 error"), out.stdout  # marker: error in setup


def test_missing_peer_skips_without_ci(tmp_path: Path) -> None:
    """Without CI the same tests are skipped with the reason, and the run succeeds."""
    out = _run(tmp_path, ci=False)
    assert out.returncode == 0, out.stdout
    assert "2 skipped" in out.stdout and "1 passed" in out.stdout, out.stdout
    assert "mcs-edge-no-such-peer missing" in out.stdout


def test_ci_run_sets_ci() -> None:
    """.ci/run exports CI=1 itself, so CI never depends on the runner's environment."""
    text = (ROOT / ".ci" / "run").read_text()
    assert "export CI=1" in text and text.index("export CI=1") < text.index("make test")
