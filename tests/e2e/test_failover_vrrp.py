"""An edge pair behind a floating address moved by keepalived (VRRP), in network namespaces.

The test builds, and removes at the end, three namespaces: ``lan`` (a bridge; Redis, the PBX with
its RTP echo and the aiortc client live there) and one per node (``a``, ``b``), each with a veth on
the bridge, ``net.ipv4.ip_nonlocal_bind = 1``, the edge (twistd) and keepalived (VRRPv3, advert
every 0.3 s, ``nopreempt``; ``notify_master`` calls ``POST /api/cluster/promote``). Clients and the
PBX only know the floating address.

The active node dies: its edge and keepalived get SIGKILL and its link goes down (the machine is
gone). Then: node b holds the floating address within 3 s, the call's audio flows again within
5 s of the kill (the client reconnects, registers with its instance id and re-offers with an ICE
restart), same Call-ID, the PBX saw no BYE; the old node, restarted, comes back as a standby and
catches up from Redis; the client's BYE ends the call on node b.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers.aiortc_call import LoopThread, WsUa, audio_call, audio_window, in_thread, wait_for
from helpers.edge import TOKEN, edge_toml, tenant_toml
from helpers.media_pbx import start_recording_pbx
from helpers.netns import enter_netns
from helpers.phone import register_instance
from helpers.redis import redis_args
from helpers.tools import require_tool
from helpers.wsclient import WSClient, status

pytestmark = pytest.mark.e2e

KEY = base64.b64encode(os.urandom(32)).decode()
REDIS_PASSWORD = secrets.token_hex(16)
INSTANCE = "<urn:uuid:6a1c2d3e-4f50-4617-8293-a4b5c6d7e8f9>"
NET = "10.213.0"
VIP = f"{NET}.100"
LAN_IP = f"{NET}.2"
NODE_IP = {"a": f"{NET}.11", "b": f"{NET}.12"}
HTTPS, BACKEND, ADMIN, REDIS, PBX_PORT = 8443, 5070, 9090, 6379, 5060
BIN = Path(sys.executable).parent
READY = r"EDG101 .*https://[^:]+:(\d+)/"


def _require(*tools: str) -> None:
    require_tool(*tools)  # fails under CI, skips elsewhere (tests/helpers/tools.py)
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("network namespaces need root: required when CI is set")
        pytest.skip("network namespaces need root")


def sh(*args: str, check: bool = True) -> str:
    out = subprocess.run(args, capture_output=True, timeout=20)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {out.stderr.decode()}")
    return out.stdout.decode()


class Net:
    """The namespaces, bridge and veths (see the module docstring)."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns = {"lan": f"mcsl{tag}", "a": f"mcsa{tag}", "b": f"mcsb{tag}"}
        lan = self.ns["lan"]
        for name in self.ns.values():
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", lan, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", lan, "link", "set", "br0", "up")
        sh("ip", "-n", lan, "addr", "add", f"{LAN_IP}/24", "dev", "br0")
        for node in ("a", "b"):
            ns = self.ns[node]
            sh(
                "ip",
                "-n",
                lan,
                "link",
                "add",
                f"eth-{node}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            sh("ip", "-n", lan, "link", "set", f"eth-{node}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{NODE_IP[node]}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1")

    def has_vip(self, node: str) -> bool:
        return f"{VIP}/" in sh("ip", "-n", self.ns[node], "-4", "addr", "show", "dev", "eth0", check=False)

    def remove(self) -> None:
        for name in self.ns.values():
            sh("ip", "netns", "del", name, check=False)


class Proc:
    """A process in a namespace, in its own process group, output to a log file."""

    def __init__(self, ns: str, args: list[str], log: Path, cwd: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )

    def wait_log(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if re.search(pattern, text, re.M):
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"exited early:\n{text[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} never logged:\n{self.log.read_text(errors='replace')[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


class Cluster:
    def __init__(self, tmp: Path) -> None:
        _require("ip", "keepalived", "redis-server", "curl")
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.net = Net()
        self.runner: LoopThread | None = None
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        lan = self.net.ns["lan"]
        self.redis = self._proc(lan, redis_args(REDIS, LAN_IP, self.tmp, REDIS_PASSWORD), "redis")
        self.redis.wait_log("Ready to accept connections", 10)
        # the client and the PBX: an asyncio loop whose thread (and executor threads) live in lan
        self.runner = LoopThread()
        self.runner.run(self._enter_lan())
        self.pbx, self.echo, self._close_pbx = self.runner.run(start_recording_pbx(LAN_IP, PBX_PORT))
        self.state = self.tmp / "state"
        self.edges: dict[str, Proc] = {}
        self.keepalived: dict[str, Proc] = {}
        self.start_node("a", "active")
        deadline = time.monotonic() + 10
        while not self.net.has_vip("a"):
            assert time.monotonic() < deadline, "node a never took the floating address"
            time.sleep(0.05)
        self.start_node("b", "standby")
        self.ca = str(self.state / "dev-ca" / "ca.pem")

    async def _enter_lan(self) -> None:
        ns = self.net.ns["lan"]
        enter_netns(ns)
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(8, initializer=enter_netns, initargs=(ns,))
        )

    def _proc(self, ns: str, args: list[str], name: str) -> Proc:
        d = self.tmp / name
        d.mkdir(exist_ok=True)
        p = Proc(ns, args, d / "log", d)
        self.procs.append(p)
        return p

    def config(self, node: str, role: str) -> str:
        cluster = (
            f'[cluster]\nenabled = true\nredis = "{LAN_IP}:{REDIS}"\nredis_password = "{REDIS_PASSWORD}"\n'
            f'name = "vrrp"\nnode_id = "{node}"\nrole = "{role}"\nkey = "{KEY}"\n'
        )
        return edge_toml(
            self.state,
            tenant_toml("rossi", PBX_PORT, LAN_IP, media="bridge", origin=True, rate=2000000),
            public=VIP,
            https=f"{VIP}:{HTTPS}",
            backend_sip=f"{VIP}:{BACKEND}",
            admin=f"127.0.0.1:{ADMIN}",
            token=TOKEN,
            sip="flow_grace = 20\n",
            media=(30000, 30999),
            media_bind=VIP,
            sections=cluster,
        )

    def start_node(self, node: str, role: str) -> None:
        ns = self.net.ns[node]
        d = self.tmp / f"node-{node}"
        d.mkdir(exist_ok=True)
        conf = d / "edge.toml"
        conf.write_text(self.config(node, role))
        edge = self._proc(
            ns,
            [str(BIN / "twistd"), "-n", "--pidfile=", "--reactor=uvloop", "mcs-edge", "--config", str(conf)],
            f"edge-{node}-{role}",
        )
        edge.wait_log(READY, 30)
        self.edges[node] = edge
        promote = d / "promote.sh"
        promote.write_text(
            "#!/bin/sh\nexec /usr/bin/curl -s -m 5 -X POST "
            f"-H 'Authorization: Bearer {TOKEN}' http://127.0.0.1:{ADMIN}/api/cluster/promote\n"
        )
        promote.chmod(0o755)
        kconf = d / "keepalived.conf"
        kconf.write_text(
            f"""global_defs {{
    router_id edge_{node}
    vrrp_version 3
    script_user root
}}
vrrp_instance edge {{
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id 51
    priority 100
    advert_int 0.3
    virtual_ipaddress {{
        {VIP}/24 dev eth0
    }}
    notify_master "{promote}"
}}
"""
        )
        self.keepalived[node] = self._proc(
            ns,
            [
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-P",
                "-f",
                str(kconf),
                "-p",
                str(d / "k.pid"),
                "-r",
                str(d / "vrrp.pid"),
            ],
            f"keepalived-{node}-{role}",
        )

    def admin(self, node: str, method: str = "GET", path: str = "/api/cluster") -> Any:
        out = sh(
            "ip",
            "netns",
            "exec",
            self.net.ns[node],
            "curl",
            "-s",
            "-m",
            "5",
            "-X",
            method,
            "-H",
            f"Authorization: Bearer {TOKEN}",
            f"http://127.0.0.1:{ADMIN}{path}",
        )
        return json.loads(out)

    def crash(self, node: str) -> None:
        """The node dies: its processes get SIGKILL, its link goes down."""
        self.edges[node].kill()
        self.keepalived[node].kill()
        sh("ip", "-n", self.net.ns[node], "link", "set", "eth0", "down")

    def revive(self, node: str) -> None:
        """The node boots again (no floating address left on it) as a standby."""
        ns = self.net.ns[node]
        sh("ip", "-n", ns, "addr", "del", f"{VIP}/24", "dev", "eth0", check=False)
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        self.start_node(node, "standby")

    def client(self) -> WSClient:
        return WSClient(
            HTTPS,
            "rossi.example.com",
            cafile=self.ca,
            origin="https://rossi.example.com",
            address=VIP,
            timeout=10,
        )

    def stop(self) -> None:
        if self.runner is not None:
            try:
                self.runner.run(self._close(), 10)
            finally:
                self.runner.stop()
        for p in reversed(self.procs):
            p.kill()
        self.net.remove()

    async def _close(self) -> None:
        if getattr(self, "_close_pbx", None) is not None:
            self._close_pbx()


def register(ws: WSClient) -> int:
    return status(register_instance(ws, "rossi.example.com", INSTANCE))


async def reconnect(cluster: Cluster, ua: WsUa, deadline: float) -> tuple[WSClient, int]:
    """A client's reconnect loop (as reconnect.js): retry the WebSocket until the address answers."""
    while True:
        try:
            ws = await in_thread(cluster.client)
            return ws, await in_thread(register, ws)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def scenario(cluster: Cluster) -> dict[str, Any]:
    result: dict[str, Any] = {}
    ws = await in_thread(cluster.client)
    assert await in_thread(register, ws) == 200
    ua = WsUa(ws, "rossi.example.com")
    pc, tone, counter = await audio_call(ua)
    result["first"] = await audio_window(tone, counter, 1.5)
    await wait_for(
        lambda: cluster.admin("b")["cluster"]["counts"] == {"call": 1, "binding": 1}, 10, "b's replica"
    )
    killed = time.monotonic()
    cluster.crash("a")
    await pc.close()
    ws.sock.close()
    await wait_for(lambda: cluster.net.has_vip("b"), 10, "the floating address on b")
    result["vip_moved_after"] = time.monotonic() - killed
    ws2, result["register"] = await reconnect(cluster, ua, killed + 10)
    ua.ws = ws2
    pc2, tone2, counter2 = await audio_call(ua)
    await wait_for(lambda: counter2.frames["audio"] > 0, 10, "audio again")
    result["media_back_after"] = time.monotonic() - killed
    result["after"] = await audio_window(tone2, counter2, 1.5)
    result["b"] = cluster.admin("b")["cluster"]
    await in_thread(cluster.revive, "a")
    await wait_for(
        lambda: cluster.admin("a")["cluster"]["counts"] == {"call": 1, "binding": 1}, 10, "a catching up"
    )
    result["a_after_restart"] = cluster.admin("a")["cluster"]
    result["vip_stays_on_b"] = cluster.net.has_vip("b") and not cluster.net.has_vip("a")
    result["pbx_before_bye"] = cluster.pbx.methods(ua.call_id)
    result["bye"] = await in_thread(ua.bye)
    await wait_for(lambda: "BYE" in cluster.pbx.methods(ua.call_id), 5, "the BYE at the PBX")
    result["pbx"] = cluster.pbx.methods(ua.call_id)
    await pc2.close()
    ws2.close()
    return result


def test_failover_vrrp_kill_active_node_call_continues(tmp_path: Path) -> None:
    """kill -9 of the active node: keepalived moves the floating address to the standby within
    3 s, audio flows again within 5 s, same Call-ID, the PBX saw no BYE; the old node restarts as
    a standby and catches up; the client's BYE ends the call on the new active node."""
    cluster = Cluster(tmp_path)
    try:
        assert cluster.runner is not None
        result = cluster.runner.run(scenario(cluster), 120)
    finally:
        cluster.stop()
    print({k: v for k, v in result.items() if k not in ("b", "a_after_restart")})
    sent, got = result["first"]
    assert sent >= 40 and got >= 0.9 * sent
    assert result["vip_moved_after"] < 3.0
    assert result["register"] == 200
    assert result["media_back_after"] < 5.0
    sent, got = result["after"]
    assert sent >= 40 and got >= 0.9 * sent
    assert result["b"]["role"] == "active" and result["b"]["took_over"]["calls"] == 1
    assert result["a_after_restart"]["role"] == "standby"
    assert result["vip_stays_on_b"]
    assert result["pbx_before_bye"] == ["INVITE", "ACK"]
    assert result["bye"] == 200
    assert result["pbx"] == ["INVITE", "ACK", "BYE"]
