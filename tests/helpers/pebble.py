"""Run Debian's ``pebble`` ACME test CA with ``pebble-challtestsrv`` as its DNS, for e2e tests.

Validation is real: pebble resolves each tenant name through challtestsrv's DNS (every name ->
127.0.0.1 unless a test points it elsewhere) and connects to the edge's ``listen.http`` (HTTP-01)
or ``listen.https`` (TLS-ALPN-01) ports, which it must be told in its config: those two ports are
picked free beforehand and handed to both pebble and the edge.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from helpers.ports import free_tcp_port

from mcs_edge import certs


class Pebble:
    def __init__(self, tmp: Path, http_port: int, tls_port: int) -> None:
        self.dir = tmp / "pebble"
        self.dir.mkdir(parents=True, exist_ok=True)
        ca = certs.ensure_dev_ca(str(self.dir / "ca-state"))
        chain, key = certs.issue_leaf(ca, ("localhost", "127.0.0.1"))
        (self.dir / "cert.pem").write_bytes(chain)
        (self.dir / "key.pem").write_bytes(key)
        self.ca_file = ca.cert_path  # trusts pebble's own HTTPS (directory, management)
        self.port = free_tcp_port()
        self.mgmt_port = free_tcp_port()
        self.dns_port = free_tcp_port()
        self.chall_mgmt_port = free_tcp_port()
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                "certificate": str(self.dir / "cert.pem"),
                "privateKey": str(self.dir / "key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (self.dir / "pebble.json").write_text(json.dumps(config))
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self._log_chall = open(self.dir / "challtestsrv.log", "wb")  # noqa: SIM115
        self._log_pebble = open(self.dir / "pebble.log", "wb")  # noqa: SIM115
        self.chall = subprocess.Popen(
            [
                "pebble-challtestsrv",
                "-dns01",
                f"127.0.0.1:{self.dns_port}",
                "-management",
                f"127.0.0.1:{self.chall_mgmt_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ],
            stdout=self._log_chall,
            stderr=subprocess.STDOUT,
        )
        env = dict(os.environ)
        env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        self.proc = subprocess.Popen(
            ["pebble", "-config", str(self.dir / "pebble.json"), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            stdout=self._log_pebble,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.dir,
        )
        self._ssl = ssl.create_default_context(cafile=self.ca_file)
        self._wait_up()

    def _wait_up(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pebble exited: {self.log()}")
            try:
                urllib.request.urlopen(self.directory, context=self._ssl, timeout=2).read()
                self.set_a("ready-check.invalid", ["127.0.0.1"])
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"pebble did not come up: {last}; {self.log()}")

    def log(self) -> str:
        if not self._log_pebble.closed:
            self._log_pebble.flush()
        return (self.dir / "pebble.log").read_text(errors="replace")[-4000:]

    def _chall_post(self, path: str, body: dict[str, object]) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.chall_mgmt_port}{path}", data=json.dumps(body).encode(), method="POST"
        )
        urllib.request.urlopen(req, timeout=5).read()

    def set_a(self, host: str, addresses: list[str]) -> None:
        """Point ``host`` at ``addresses`` in the DNS pebble validates with."""
        self._chall_post("/add-a", {"host": host.rstrip(".") + ".", "addresses": addresses})

    def clear_a(self, host: str) -> None:
        """Back to the default answer (127.0.0.1) for ``host``."""
        self._chall_post("/clear-a", {"host": host.rstrip(".") + "."})

    def root_pem(self) -> bytes:
        """pebble's current issuing root (generated at start-up)."""
        url = f"https://127.0.0.1:{self.mgmt_port}/roots/0"
        return bytes(urllib.request.urlopen(url, context=self._ssl, timeout=5).read())

    def stop(self) -> None:
        for p in (self.proc, self.chall):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self._log_chall.close()
        self._log_pebble.close()
