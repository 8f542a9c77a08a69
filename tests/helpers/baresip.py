"""baresip (Debian) as a headless native SIP client inside a private network namespace.

The namespace gets a veth pair with a non-loopback address (baresip's ICE ignores loopback): the
host end (``Netns.host_ip``) is where the edge's SIP/TLS listener and relay answer; baresip runs
with ``ip netns exec``. Audio is file based (``aufile``: a tone in, what it hears out), and the
client is driven over ``ctrl_tcp`` (netstring-framed JSON commands and events), listening on the
namespace address. Everything is created and removed by the test (root is needed for netns).
"""

from __future__ import annotations

import array
import json
import math
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import wave
from pathlib import Path
from typing import Any

BARESIP = shutil.which("baresip")


def netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


class Netns:
    """A network namespace joined to the host by a veth pair (/30 out of 10.200.0.0/13).

    ``second_ip`` gives the host end another address (the next /30's first one), reachable from the
    namespace: an edge may listen on both and tell clients the other one.
    """

    def __init__(self, second_ip: bool = False) -> None:
        tag = secrets.token_hex(3)
        self.name = f"mcsbs{tag}"
        self.host_if, self.ns_if = f"vh{tag}", f"vn{tag}"
        n = secrets.randbelow(1 << 17)  # /30 subnets of 10.200.0.0/13
        base = (10 << 24) | (200 << 16) | (n << 2)
        self.host_ip = socket.inet_ntoa((base | 1).to_bytes(4, "big"))
        self.ns_ip = socket.inet_ntoa((base | 2).to_bytes(4, "big"))
        self.second_ip = socket.inet_ntoa(((base ^ 4) | 1).to_bytes(4, "big")) if second_ip else None
        cmds = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if],
            ["ip", "link", "set", self.ns_if, "netns", self.name],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            ["ip", "netns", "exec", self.name, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", self.ns_if, "up"],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
        ]
        if self.second_ip:
            cmds += [
                ["ip", "addr", "add", f"{self.second_ip}/32", "dev", self.host_if],
                [
                    "ip",
                    "netns",
                    "exec",
                    self.name,
                    "ip",
                    "route",
                    "add",
                    f"{self.second_ip}/32",
                    "dev",
                    self.ns_if,
                ],
            ]
        try:
            for cmd in cmds:
                subprocess.run(cmd, check=True, capture_output=True, timeout=10)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


def write_tone(path: Path, seconds: float = 60.0, rate: int = 8000, freq: float = 440.0) -> None:
    samples = array.array(
        "h", (int(8000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(int(seconds * rate)))
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def loud_frames(path: Path, threshold: int = 1000) -> int:
    """How many 20 ms frames of a (possibly unfinished) 8 kHz s16 WAV carry sound above ``threshold``."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    at = data.find(b"data")
    if at < 0:
        return 0
    data = data[at + 8 :]
    samples = array.array("h")
    samples.frombytes(data[: len(data) - len(data) % 2])
    loud = 0
    for i in range(0, len(samples) - 160, 160):
        if max(abs(x) for x in samples[i : i + 160]) > threshold:
            loud += 1
    return loud


def _netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


class Baresip:
    """One baresip process in ``ns`` with one account; see the module docstring.

    ``account`` holds the extra account parameters (``mediaenc=...;medianat=ice``).
    """

    def __init__(
        self,
        workdir: Path,
        ns: Netns,
        aor: str,
        outbound: str,
        account: str = "",
        ca_file: str | None = None,
    ) -> None:
        assert BARESIP is not None
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ns = ns
        self.tone = self.dir / "in.wav"
        self.dumps = self.dir / "dumps"
        self.dumps.mkdir(exist_ok=True)
        write_tone(self.tone)
        self.ctrl_port = 4444
        params = f";{account}" if account else ""
        (self.dir / "accounts").write_text(
            f'<{aor};transport=tls>;auth_pass=secret;outbound="{outbound}";regint=600;'
            f"answermode=auto;audio_codecs=pcmu;ptime=20{params}\n"
        )
        cafile = f"sip_cafile\t{ca_file}\n" if ca_file else ""
        (self.dir / "config").write_text(
            "poll_method\tepoll\n"
            f"sip_listen\t{ns.ns_ip}:5060\n{cafile}"
            f"audio_player\talsa,null\naudio_source\taufile,{self.tone}\naudio_alert\talsa,null\n"
            f"snd_path\t{self.dumps}\n"
            "ausrc_srate\t8000\nauplay_srate\t8000\nausrc_channels\t1\nauplay_channels\t1\n"
            "rtp_ports\t20000-20999\nrtcp_mux\tno\njitter_buffer_delay\t1-5\nrtp_timeout\t0\n"
            f"net_interface\t{ns.ns_if}\n"
            "module_path\t/usr/lib/baresip/modules\n"
            "module\tg711.so\nmodule\taufile.so\nmodule\talsa.so\nmodule\tsndfile.so\nmodule\tsrtp.so\nmodule\tdtls_srtp.so\nmodule\tice.so\n"
            "module_tmp\tuuid.so\nmodule_tmp\taccount.so\n"
            "module_app\tmenu.so\nmodule_app\tctrl_tcp.so\n"
            f"ctrl_tcp_listen\t{ns.ns_ip}:{self.ctrl_port}\n"
        )
        self.log_path = self.dir / "baresip.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, BARESIP, "-f", str(self.dir), "-s", "-v"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        self.events: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.sock = self._connect()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 15
        while True:
            try:
                return socket.create_connection((self.ns.ns_ip, self.ctrl_port), timeout=2)
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"baresip ctrl_tcp not reachable:\n{self.log()}") from None
                time.sleep(0.1)

    def _read(self) -> None:
        buf = b""
        self.sock.settimeout(None)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b":" in buf:
                length, _, rest = buf.partition(b":")
                if not length.isdigit() or len(rest) < int(length) + 1:
                    break
                n = int(length)
                msg, buf = rest[:n], rest[n + 1 :]
                try:
                    obj = json.loads(msg)
                except ValueError:
                    continue
                with self._lock:
                    (self.events if obj.get("event") else self.responses).append(obj)

    def heard(self) -> int:
        """Loud 20 ms frames in what baresip decoded (sndfile dumps of every call so far)."""
        return sum(loud_frames(p) for p in self.dumps.glob("dump-*-dec.wav"))

    def bitrates(self) -> tuple[int, int]:
        """The last ``audio=TX/RX (bit/s)`` of baresip's call status line (0, 0 before any)."""
        found = re.findall(r"audio=(\d+)/(\d+) \(bit/s\)", self.log()[-4000:])
        return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)

    def log(self, tail: int | None = 20000) -> str:
        """baresip's output (its last ``tail`` characters; None: all of it)."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def command(self, command: str, params: str = "", timeout: float = 10.0) -> dict[str, Any]:
        token = secrets.token_hex(4)
        payload = json.dumps({"command": command, "params": params, "token": token}).encode()
        self.sock.sendall(_netstring(payload))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for r in self.responses:
                    if r.get("token") == token:
                        return r
            time.sleep(0.02)
        raise AssertionError(f"baresip: no response to {command}:\n{self.log()}")

    def wait_event(self, kind: str, timeout: float = 15.0, after: int = 0) -> dict[str, Any]:
        """The first event of type ``kind`` among events[after:]."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for ev in self.events[after:]:
                    if ev.get("type") == kind:
                        return ev
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        types = [e.get("type") for e in self.events]
        raise AssertionError(f"baresip: no {kind} event (saw {types}):\n{self.log()}")

    def wait_registered(self, timeout: float = 15.0) -> None:
        """REGISTER answered 200 (the event may come before the control connection: the log says it too)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(e.get("type") == "REGISTER_OK" for e in self.events):
                    return
            if re.search(r"\} 200 OK \(.*\) \[\d+ binding", self.log()):
                return
            time.sleep(0.05)
        raise AssertionError(f"baresip did not register:\n{self.log()}")

    def received(self) -> list[str]:
        """SIP messages baresip received (from its ``-s`` trace), oldest first."""
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log(None))
        out = []
        for m in re.finditer(
            rf"\n\w+ \S+ -> {re.escape(self.ns.ns_ip)}:\d+\n(.*?)(?=\n\w+ \S+ -> |\Z)", text, re.S
        ):
            out.append(m.group(1))
        return out

    def mark(self) -> int:
        with self._lock:
            return len(self.events)

    def stop(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
