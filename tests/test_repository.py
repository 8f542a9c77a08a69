"""The repository itself: no private key is ever tracked, and tox lists the Makefile's environments."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")


def _tracked() -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True, timeout=60
    ).stdout
    return [p for p in out.decode().split("\0") if p]


def test_no_private_key_is_tracked() -> None:
    """No file tracked by git holds a PEM private key (certs/ keeps only its README)."""
    found = []
    for rel in _tracked():
        path = ROOT / rel
        if path.is_file() and _PRIVATE_KEY.search(path.read_bytes()):
            found.append(rel)
    assert not found, f"private keys tracked by git: {found}"


def test_private_key_pattern_matches_real_keys() -> None:
    """The check above recognises the PEM forms the edge and OpenSSL write (so it can fail)."""
    for header in (b"PRIVATE KEY", b"EC PRIVATE KEY", b"RSA PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"):
        assert _PRIVATE_KEY.search(b"x\n-----BEGIN " + header + b"-----\nMIG...")
    assert not _PRIVATE_KEY.search(b"-----BEGIN CERTIFICATE-----")


def test_certs_folder_holds_only_its_readme() -> None:
    """certs/ is documented and nothing else under it is tracked."""
    under = [p for p in _tracked() if p.startswith("certs/")]
    assert under == ["certs/README.md"]
    text = (ROOT / "certs" / "README.md").read_text()
    assert "fullchain.pem" in text and "privkey.pem" in text and "dev-ca" in text and "acme" in text


def test_tox_lists_the_environments() -> None:
    """`tox -l` lists the test (both reactors), lint and typecheck environments; bench is listed too."""
    default = subprocess.run(
        [str(BIN / "tox"), "-l"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert default == ["tests", "tests-asyncio", "lint", "typecheck"]
    every = subprocess.run(
        [str(BIN / "tox"), "-a"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert "bench" in every
