"""Headless Chromium (Debian's package) driven by Playwright, and the JsSIP library for test pages.

Never downloads a browser: Playwright launches ``/usr/bin/chromium`` (``executable_path``). JsSIP
comes from the npm registry at test time into a cache directory outside the repository
(``$MCS_EDGE_TEST_CACHE``, else ``$XDG_CACHE_HOME/mcs-edge-tests``, else
``~/.cache/mcs-edge-tests``) and is bundled for the page with esbuild (JsSIP 3.13 ships CommonJS
only); nothing of it is ever committed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def chromium_page(origin: str, jssip_page: Path | None = None) -> Iterator[tuple[Any, list[str]]]:
    """A fresh headless Chromium page and the list its uncaught errors go to (blocking: run in a thread).

    With ``jssip_page`` the browser serves that HTML at ``{origin}/__test__/phone.html`` (any path under
    ``/__test__/``) and the JsSIP bundle at ``/__test__/jssip.js``, from the test, not the edge.
    ``MCS_DEBUG=1`` prints the page's console.
    """
    from playwright.sync_api import Route, sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = launch(pw, Path(profile), SERVED_BY_TEST if jssip_page is not None else None)
        try:
            if jssip_page is not None:
                bundle, html = jssip_bundle().read_bytes(), jssip_page.read_bytes()

                def serve(route: Route) -> None:
                    if route.request.url.endswith("/jssip.js"):
                        route.fulfill(status=200, body=bundle, headers={"content-type": "text/javascript"})
                    else:
                        route.fulfill(
                            status=200, body=html, headers={"content-type": "text/html; charset=utf-8"}
                        )

                ctx.route(f"{origin}/__test__/**", serve)
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: print("console:", m.text) if os.environ.get("MCS_DEBUG") else None)
            yield page, errors
        finally:
            ctx.close()


def wait(page: Any, expression: str, timeout: float = 15.0) -> Any:
    """The value of ``expression`` once it is truthy in ``page`` (Playwright's timeout error after ``timeout`` s)."""
    return page.wait_for_function(expression, timeout=timeout * 1000).json_value()


def demo_toml(state: Path, pbx_port: int, sip: str = "") -> str:
    """The browser tests' edge: tenant ``demo`` on ``localhost`` with the echo service, media on 127.0.0.1."""
    from helpers.edge import edge_toml, media_range, tenant_toml

    tenant = tenant_toml("demo", pbx_port, domains=("localhost",), keys="echo = true\n")
    return edge_toml(
        state, tenant, public=True, tls_reload=True, sip=sip, media=media_range(200, 42000, 58000)
    )
