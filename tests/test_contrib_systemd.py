"""contrib/systemd/mcs-edge.service: `systemd-analyze verify` passes and the unit says what the edge needs."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mcs_edge.config import EdgeSection

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "systemd" / "mcs-edge.service"
BIN = Path(sys.executable).parent
ANALYZE = shutil.which("systemd-analyze")

needs_analyze = pytest.mark.requires_tool(
    "systemd-analyze", why="Debian package systemd, scripts/install-test-deps"
)


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def _verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None, "systemd-analyze missing (Debian package systemd)"
    # The unit points at /opt/mcs-edge; verify checks the commands exist, so aim them at this venv.
    unit = tmp_path / "mcs-edge.service"
    unit.write_text(text.replace("/opt/mcs-edge/bin/", f"{BIN}/"))
    return subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


@needs_analyze
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit with no complaint at all."""
    res = _verify(tmp_path, UNIT.read_text())
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stderr


@needs_analyze
def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    """The check can fail: a misspelt value is reported (which the test above would refuse)."""
    res = _verify(tmp_path, UNIT.read_text().replace("KillMode=mixed", "KillMode=mixd"))
    assert "mixd" in res.stderr


def test_unit_runs_twistd_on_uvloop_with_the_etc_config() -> None:
    """ExecStart is twistd -n --reactor=uvloop mcs-edge --config /etc/mcs-edge/edge.toml."""
    start = _service()["ExecStart"].split()
    assert Path(start[0]).name == "twistd"
    assert "-n" in start and "--reactor=uvloop" in start
    i = start.index("mcs-edge")
    assert start[i + 1 : i + 3] == ["--config", "/etc/mcs-edge/edge.toml"]


def test_unit_reload_stop_and_drain() -> None:
    """Reload is SIGHUP, stop is SIGTERM with a timeout above the default edge.drain_timeout."""
    svc = _service()
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["KillSignal"] == "SIGTERM"
    assert float(svc["TimeoutStopSec"]) > EdgeSection().drain_timeout + 5


def test_unit_capabilities_and_hardening() -> None:
    """Only CAP_NET_BIND_SERVICE and CAP_NET_ADMIN, no new privileges, read-only system, a state dir."""
    svc = _service()
    assert set(svc["AmbientCapabilities"].split()) == {"CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"}
    assert set(svc["CapabilityBoundingSet"].split()) == {"CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"}
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict"
    assert svc["StateDirectory"] == "mcs-edge"
    assert svc["User"] != "root"
