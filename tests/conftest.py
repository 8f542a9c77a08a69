"""Shared fixtures for the mcs_edge test suite."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# real peers: skipped when missing, failed when CI is set (tests/helpers/tools.py)
from helpers.tools import pytest_configure, pytest_runtest_setup  # noqa: E402

__all__ = ["pytest_configure", "pytest_runtest_setup"]


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    """A fresh state directory outside the source tree."""
    d = tmp_path / "state"
    d.mkdir()
    return str(d)


def pytest_report_header(config: pytest.Config) -> str:
    return f"mcs_edge tests (root {ROOT}), reactor option: {config.getoption('reactor', 'default')}, pid {os.getpid()}"
