"""Real peers of the tests (sipp, coturn, pebble, openssl, Chromium...): there, or the test does not run.

One rule for every real-peer test: when a peer is missing the test is *skipped* on a developer's
machine, and *fails* when the environment variable ``CI`` is set (``.ci/run`` sets it), so a CI
machine without a peer can never pass by skipping. Use either

* the marker ``@pytest.mark.requires_tool("sipp", ...)`` (on a test, or in ``pytestmark``), checked
  when each test is set up (tests/conftest.py imports the hooks below), or
* ``require_tool("sipp", ...)`` inside a test or fixture.

A name is an executable on ``PATH``, an absolute path, or ``module:<name>`` for a Python module.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

__all__ = ["missing", "pytest_configure", "pytest_runtest_setup", "require_tool"]

WHY = "installed by scripts/install-test-deps"


def missing(*names: str) -> list[str]:
    """The names among ``names`` that this machine lacks."""
    out = []
    for name in names:
        if name.startswith("module:"):
            present = importlib.util.find_spec(name.partition(":")[2]) is not None
        elif os.path.isabs(name):
            present = os.path.exists(name)
        else:
            present = shutil.which(name) is not None
        if not present:
            out.append(name)
    return out


def require_tool(*names: str, why: str = WHY) -> None:
    """Return when every peer is there; else skip the test, or fail it when ``CI`` is set."""
    gone = missing(*names)
    if not gone:
        return
    message = f"{', '.join(gone)} missing ({why})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: required when CI is set", pytrace=False)
    pytest.skip(message)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_tool(*names, why=...): real peers the test needs (fails under CI when missing)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(name="requires_tool"):
        require_tool(*mark.args, **mark.kwargs)
