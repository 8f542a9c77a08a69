"""Packaging: the wheel ships the twistd plugin and twistd finds it on every reactor."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (whl,) = out.glob("mcs_edge-*.whl")
    return whl, res.stdout + res.stderr


@pytest.fixture(scope="module")
def wheel(built: tuple[Path, str]) -> Path:
    return built[0]


def test_build_prints_no_packaging_warning(built: tuple[Path, str]) -> None:
    """Building the wheel gives no setuptools warning about packages left out of the configuration."""
    output = built[1]
    assert "absent from the `packages` configuration" not in output, output[-3000:]
    assert "Package would be ignored" not in output


def test_wheel_ships_every_tracked_module(wheel: Path) -> None:
    """Every Python file of mcs_edge/ tracked by git is in the wheel (sub-packages were once left out)."""
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "mcs_edge", "twisted"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [p for p in tracked if p.endswith((".py", ".html", ".js", ".css")) and p not in names]
    assert not missing, missing


def test_wheel_contains_the_plugin_file(wheel: Path) -> None:
    """The wheel ships twisted/plugins/mcs_edge_plugin.py and no __init__.py under twisted/."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/mcs_edge_plugin.py" in names
    assert "twisted/plugins/mcs_edge_reactors.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "mcs_edge/tx/service.py" in names and "mcs_edge/core/tenants/table.py" in names


def test_plugin_file_holds_only_the_service_maker() -> None:
    """The plugin file imports nothing but ServiceMaker (importing the reactor there breaks --reactor)."""
    text = (ROOT / "twisted" / "plugins" / "mcs_edge_plugin.py").read_text()
    imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["from twisted.application.service import ServiceMaker"]


@pytest.mark.parametrize("reactor", [None, "asyncio", "uvloop", "epoll"])
def test_twistd_lists_the_plugin(reactor: str | None) -> None:
    """`twistd --help` lists mcs-edge, and `twistd mcs-edge --help` works, on each reactor."""
    args = [str(BIN / "twistd")] + ([f"--reactor={reactor}"] if reactor else [])
    listing = subprocess.run([*args, "--help"], capture_output=True, text=True, timeout=60, check=True)
    assert "mcs-edge" in listing.stdout
    own = subprocess.run(
        [*args, "mcs-edge", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--config" in own.stdout


def test_check_config_cli_prints_every_error(tmp_path: Path) -> None:
    """`mcs-edge check-config` exits 1 and prints each error with its key path."""
    bad = tmp_path / "edge.toml"
    bad.write_text(
        '[edge]\nworkers = 0\n[[tenants]]\nid = "x"\ndomains = ["x.example.com"]\nbackend_sip = "udp:h:0"\n'
    )
    res = subprocess.run(
        [str(BIN / "mcs-edge"), "check-config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1
    assert "edge.workers" in res.stderr and "tenants[0].backend_sip" in res.stderr
    good = tmp_path / "good.toml"
    good.write_text('[[tenants]]\nid = "x"\ndomains = ["x.example.com"]\nbackend_sip = "udp:h:5060"\n')
    res = subprocess.run(
        [str(BIN / "mcs-edge"), "check-config", str(good)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr


def test_wheel_ships_the_network_check_page(wheel: Path) -> None:
    """The check page's HTML, JavaScript and CSS are package data (served by mcs_edge/tx/web/check.py)."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"mcs_edge/static/check.html", "mcs_edge/static/check.js", "mcs_edge/static/check.css"} <= names
