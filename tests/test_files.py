"""The one atomic file write (mcs_edge/files.py) used for keys, certificates and saved configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mcs_edge.files import atomic_write


def _mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_new_file_is_private_and_folder_created(tmp_path: Path) -> None:
    """No mode: a new file is 0600 (it may be a key or hold secrets); missing folders are made."""
    target = tmp_path / "a" / "b" / "key.pem"
    atomic_write(target, b"secret")
    assert target.read_bytes() == b"secret" and _mode(target) == 0o600


def test_existing_mode_is_kept_and_explicit_mode_wins(tmp_path: Path) -> None:
    target = tmp_path / "edge.toml"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write(target, "new ü")
    assert target.read_text(encoding="utf-8") == "new ü" and _mode(target) == 0o640
    atomic_write(target, b"cert", 0o644)
    assert _mode(target) == 0o644


def test_failed_write_leaves_target_and_no_temporary_file(tmp_path: Path) -> None:
    """os.replace onto a non-empty directory fails: the error surfaces, nothing is left behind."""
    target = tmp_path / "busy"
    target.mkdir()
    (target / "inside").write_text("x")
    with pytest.raises(OSError):
        atomic_write(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    assert (target / "inside").read_text() == "x"
