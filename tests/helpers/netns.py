"""Network namespaces for tests: created and removed by the test, commands and Python calls inside them.

``NetNs.call(fn, ...)`` runs ``fn`` in a fresh thread that has entered the namespace (``setns(2)``
switches the calling thread only), so blocking clients (urllib, WSClient, helpers.pbx.Pbx) open
their sockets there while the test's reactor stays in the root namespace.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import subprocess
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def can_make_namespaces() -> bool:
    return (
        os.geteuid() == 0
        and os.path.exists("/dev/net/tun")
        and subprocess.run(["which", "ip"]).returncode == 0
    )


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (setns(2) is per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
    finally:
        os.close(fd)


class NetNs:
    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")

    def run(
        self, *cmd: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=60,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} in {self.name}: {done.stdout}{done.stderr}")
        return done

    def popen(self, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)

    def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``fn(*args, **kw)`` in a thread inside this namespace; its result or its exception."""
        out: list[Any] = []

        def body() -> None:
            enter_netns(self.name)
            try:
                out.append((True, fn(*args, **kw)))
            except BaseException as exc:
                out.append((False, exc))

        t = threading.Thread(target=body, daemon=True)
        t.start()
        t.join()
        ok, value = out[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def veth(a: NetNs, a_ip: str, b: NetNs, b_ip: str) -> None:
    """A veth pair between ``a`` and ``b`` with the given address/prefix on each end."""
    name_a, name_b = f"v{secrets.token_hex(3)}a", f"v{secrets.token_hex(3)}b"
    subprocess.run(
        ["ip", "link", "add", name_a, "netns", a.name, "type", "veth", "peer", name_b, "netns", b.name],
        check=True,
    )
    a.run("ip", "address", "add", a_ip, "dev", name_a)
    a.run("ip", "link", "set", name_a, "up")
    b.run("ip", "address", "add", b_ip, "dev", name_b)
    b.run("ip", "link", "set", name_b, "up")
