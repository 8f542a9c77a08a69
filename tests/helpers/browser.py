"""Headless Chromium (Debian's package) driven by Playwright, and the JsSIP library for test pages.

Never downloads a browser: Playwright launches ``/usr/bin/chromium`` (``executable_path``). JsSIP
comes from the npm registry at test time into a cache directory outside the repository
(``$MCS_EDGE_TEST_CACHE``, else ``$XDG_CACHE_HOME/mcs-edge-tests``, else
``~/.cache/mcs-edge-tests``) and is bundled for the page with esbuild (JsSIP 3.13 ships CommonJS
only); nothing of it is ever committed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
JSSIP_VERSION = "3.13.8"
ESBUILD_VERSION = "0.28.2"

#: Flags that work headless as root here (see INTEROP.md): no background traffic, fake media
#: devices and permission prompts, ICE over loopback, the edge's development certificates.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--ignore-certificate-errors",
    "--autoplay-policy=no-user-gesture-required",
]


def cache_dir() -> Path:
    base = os.environ.get("MCS_EDGE_TEST_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "mcs-edge-tests"


def jssip_bundle() -> Path:
    """JsSIP as one browser script (global ``JsSIP``), installed and bundled once per cache."""
    root = cache_dir() / f"jssip-{JSSIP_VERSION}"
    bundle = root / "jssip.bundle.js"
    if bundle.exists():
        return bundle
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "package.json").exists():
        (root / "package.json").write_text('{"name": "mcs-edge-test-deps", "private": true}\n')
    subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--silent",
            f"jssip@{JSSIP_VERSION}",
            f"esbuild@{ESBUILD_VERSION}",
        ],
        cwd=root,
        check=True,
        timeout=300,
    )
    partial = root / "jssip.bundle.js.part"
    subprocess.run(
        [
            str(root / "node_modules" / ".bin" / "esbuild"),
            str(root / "node_modules" / "jssip" / "lib" / "JsSIP.js"),
            "--bundle",
            "--format=iife",
            "--global-name=JsSIP",
            f"--outfile={partial}",
            "--log-level=warning",
        ],
        cwd=root,
        check=True,
        timeout=120,
    )
    partial.replace(bundle)
    return bundle


#: A page fulfilled by Playwright (no network address) counts as public: Chromium's Local Network
#: Access checks would then block its WebSocket to the edge on loopback.
SERVED_BY_TEST = ["--disable-features=LocalNetworkAccessChecks"]


def launch(playwright: Any, user_data_dir: Path, extra_args: list[str] | None = None) -> Any:
    """A persistent headless Chromium context with the flags above (fresh ``user_data_dir``)."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS + (extra_args or []),
        ignore_https_errors=True,
        bypass_csp=True,  # lets Playwright evaluate expressions on the check page (CSP: script-src 'self')
    )
