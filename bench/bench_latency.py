"""Latency tail, loop lag, memory under call churn, leftovers and overload: one edge, one run.

What it prints (server pinned to CPU 0, generator and PBX stand-in to CPU 1 when ``taskset`` exists;
the machine is shared, so read ratios within one run):

1. **capacity**: REGISTER and INVITE/ACK/BYE (tenant ``media = "passthrough"``, so every call
   allocates relay ports) sent by ``--conns`` WSS clients through the edge to a UDP PBX stand-in
   that answers at once, closed loop with several requests in flight per connection: the
   transactions/s the edge reaches;
2. **latency at 25/50/75 % of that capacity**, open loop (requests sent on a fixed schedule;
   latency counts from the scheduled time, so a stalled generator or edge shows): p50/p99/p99.9 of
   transaction latency, and p50/p99/p99.9 of the edge's own loop lag (``mcs_edge_loop_lag_seconds``
   from its ``/metrics``, bucket upper bounds), GC pauses, edge CPU;
3. **memory**: RSS idle, then after ``--rss-seconds`` of ``--rss-rate`` calls/s;
4. **churn**: ``--churn-calls`` calls, then every client leaves; the bench waits for the RFC 3261
   timers (Timer L/M: 64*T1) and asserts from the admin API and ``/metrics`` that no call,
   connection, relay port, SIP transaction, timer or descriptor is left (exit status 1 if one is);
5. **overload** (``--overload``): REGISTER (``--overload-kind invite``: INVITE/ACK/BYE calls, with
   media) offered at 3x capacity for ``--overload-seconds`` over
   ``--overload-conns`` connections (enough that each stays under its per-connection shaping):
   goodput (2xx/s) against capacity, 503s, p99 of accepted, the edge's CPU and from it the CPU of
   one refusal, then the time until a request at 25 % load is served again. The capacity is the
   closed-loop REGISTER rate of a fresh edge with its gate off (``--overload-capacity`` gives it
   instead, for runs on a busy machine); ``OVERLOAD_DETAIL=1`` adds the gate's state every 0.5 s and
   a latency histogram; ``MCS_BENCH_PERF=file`` / ``MCS_BENCH_PYSPY=file`` sample the edge with
   ``perf record -g`` / ``py-spy record -f raw`` over the overload window, ``MCS_BENCH_PROFILE=file``
   runs that edge under cProfile.
6. **bytes per retained transaction** (``--txmem``): REGISTER and INVITE transactions completed
   through the proxy core in this process, measured with ``tracemalloc`` while Timers J/K/L/M
   still hold them, at several counts (``--txmem-counts``, bounded parse caches emptied): bytes
   per transaction is the slope between counts, so a table doubling inside one window does not
   set the figure.

Usage: ``python bench/bench_latency.py [--steps 25,50,75] [--seconds 10] [--conns 50] [--overload]
[--churn-calls 100000] [--rss-seconds 60 --rss-rate 300] [--txmem [--txmem-counts 1000,1500,3000,6000]]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import resource
import secrets
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import BIN, DOMAIN, WS, BenchEdge, bench_toml, cpu_ticks, free_port, taskset

PBX = r"""
import asyncio, sys
try:
    import uvloop
except ImportError:
    uvloop = None
SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
KEEP = (b"via", b"from", b"call-id", b"cseq", b"record-route")
class P(asyncio.DatagramProtocol):
    def connection_made(self, t):
        self.t = t
        self.port = t.get_extra_info("sockname")[1]
    def datagram_received(self, data, addr):
        head, _, _ = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method = lines[0].split(b" ", 1)[0]
        if method in (b"ACK", b"SIP/2.0"):
            return
        out = [b"SIP/2.0 200 OK"]
        to = b"To: <sip:x>"
        for l in lines[1:]:
            name = l.split(b":", 1)[0].strip().lower()
            if name in KEEP:
                out.append(l)
            elif name in (b"to", b"t"):
                to = l
        if method == b"INVITE" and b";tag=" not in to:
            to += b";tag=pbx"
        out.append(to)
        if method == b"REGISTER":
            out.append(b"Contact: <sip:u@c.invalid;transport=ws>;expires=600")
        else:
            out.append(b"Contact: <sip:pbx@127.0.0.1:%d>" % self.port)
        body = SDP if method == b"INVITE" else b""
        if body:
            out.append(b"Content-Type: application/sdp")
        out.append(b"Content-Length: %d" % len(body))
        self.t.sendto(b"\r\n".join(out) + b"\r\n\r\n" + body, addr)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", int(sys.argv[1])))
    print("READY", flush=True)
    await asyncio.Event().wait()
(uvloop.run if uvloop else asyncio.run)(main())
"""

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)


NICE: list[str] = []  # ["nice", "-n", N] with --nice
DIAGNOSE: list[str] = []  # [directory, stallprobe options...] with --diagnose
TURNS: list[str] = []  # [directory, turnprobe options...] with --turns
PBX_PID: list[int] = []  # the PBX stand-in, for its CPU share
SERVED_CPU: list[float] = []  # edge CPU seconds per transaction served at capacity (the last capacity run)
WINDOWS: list[tuple[str, float, float]] = []  # (step, perf_counter start, end): the diagnosis per step


def _taskset(cpu: int) -> list[str]:
    return [*NICE, *taskset(cpu)]


def _pin_self(cpu: int) -> None:
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


# ------------------------------------------------------------------------------------------ edge
TENANT = 'media = "passthrough"\n[tenants.limits]\nmax_connections = 100000\n'


class Edge(BenchEdge):
    def __init__(
        self, tmp: str, pbx_port: int, extra: str = "", src: str | None = None, profile: str = ""
    ) -> None:
        """``profile``: a file for twistd's cProfile statistics of this edge (they perturb it)."""
        text = bench_toml(Path(tmp) / "state", pbx_port, extra=extra, tenant=TENANT)
        self.diagnosis: Path | None = None
        launcher = None
        if profile:
            launcher = [str(BIN / "twistd"), "--profile", profile, "--profiler=cprofile", "--savestats"]
        if DIAGNOSE:  # --diagnose: the edge runs under bench/stallprobe.py
            Path(DIAGNOSE[0]).mkdir(parents=True, exist_ok=True)
            self.diagnosis = Path(DIAGNOSE[0]) / f"stalls-{os.getpid()}-{int(time.time() * 1000)}.json"
            probe = Path(__file__).resolve().parent / "stallprobe.py"
            launcher = [str(BIN / "python"), str(probe), str(self.diagnosis), *DIAGNOSE[1:], "--"]
        self.turns: Path | None = None
        if TURNS:  # --turns: the edge runs under bench/turnprobe.py
            Path(TURNS[0]).mkdir(parents=True, exist_ok=True)
            self.turns = Path(TURNS[0]) / f"turns-{os.getpid()}-{int(time.time() * 1000)}.json"
            probe = Path(__file__).resolve().parent / "turnprobe.py"
            launcher = [str(BIN / "python"), str(probe), str(self.turns), *TURNS[1:], "--"]
        super().__init__(tmp, text, _taskset(0), src=src, launcher=launcher)
        self.token = (Path(tmp) / "state" / "admin-token").read_text().strip()

    def cpu(self) -> float:
        return cpu_ticks(self.pid)

    def api(self, path: str) -> object:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}/api/{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def stop(self) -> None:
        super().stop()
        if self.turns is not None and self.turns.exists():
            _print_turns(self.turns)
        if self.diagnosis is not None and self.diagnosis.exists():
            shutil.copy(self.log, self.diagnosis.with_suffix(".log"))
            _print_diagnosis(self.diagnosis)
            codes: dict[str, int] = {}
            for code in re.findall(r"\b([A-Z]{3}\d{3})\b", self.log.read_text()):
                codes[code] = codes.get(code, 0) + 1
            print("  log lines by code:", sorted(codes.items(), key=lambda kv: -kv[1])[:15])


def _print_turns(path: Path) -> None:
    """The turn probe's attribution of late probe ticks (bench/turnprobe.py), per latency step."""
    d = json.loads(path.read_text())
    print(f"late probe ticks ({path}): what ran between a tick's deadline and the tick")
    for step, w0, w1 in WINDOWS:
        rows = [row for row in d["ticks"] if w0 <= row[0] <= w1]
        if not rows:
            continue
        ticks = [row[1] for row in rows]
        n = len(ticks)
        span = rows[-1][0] - rows[0][0] or 1.0
        print(
            f"  {step}: Twisted timer turns {sum(r[2] for r in rows) / span:.0f}/s, of them with no call due "
            f"{sum(r[3] for r in rows) / span:.0f}/s; process CPU {(rows[-1][5] - rows[0][5]) / span * 100:.0f}%, "
            f"of which in the wrapped loop callbacks {sum(r[4] for r in rows[1:]) / span * 100:.0f}% (wall)"
        )
        over = {ms: sum(1 for lag in ticks if lag >= ms / 1000) for ms in (1, 2, 5, 10)}
        print(
            f"  {step}: {n} ticks; late >= 1/2/5/10 ms: "
            + ", ".join(f"{over[ms]} ({over[ms] * 100 / n:.2f}%)" for ms in over)
        )
        worst = sorted((x for x in d["late"] if w0 <= x["t"] <= w1), key=lambda x: -x["lag"])[:3]
        for x in worst:
            parts = sorted({**x["top"], **x["nested"]}.items(), key=lambda kv: -kv[1][1])[:5]
            off = x.get("off_cpu")
            print(
                f"    late tick of {x['lag'] * 1000:.1f} ms"
                + (f" (process off the CPU {off * 1000:.1f} ms)" if off is not None else "")
                + ": "
                + ", ".join(f"{label} x{c} {sec * 1000:.2f} ms" for label, (c, sec) in parts)
            )
        for lo, hi in ((0.001, 0.002), (0.002, 1.0)):
            late = [x for x in d["late"] if w0 <= x["t"] <= w1 and lo <= x["lag"] < hi]
            if not late:
                continue
            k = len(late)
            print(
                f"    {len(late)} ticks {lo * 1000:.0f}-{hi * 1000:.0f} ms late, mean lag "
                f"{sum(x['lag'] for x in late) / k * 1000:.2f} ms; per tick: calls (count, ms)"
            )
            for key in ("top", "nested"):
                tot: dict[str, list[float]] = {}
                for x in late:
                    for label, (c, sec) in x[key].items():
                        row = tot.setdefault(label, [0, 0.0])
                        row[0] += c
                        row[1] += sec
                for label, (c, sec) in sorted(tot.items(), key=lambda kv: -kv[1][1])[:14]:
                    print(
                        f"      {'' if key == 'top' else '  '}{label:44} {c / k:6.2f} {sec / k * 1000:7.3f}"
                    )
            print(
                f"      {'not in a wrapped entry (uvloop C, tasks)':44} {'':6} {sum(x['rest'] for x in late) / k * 1000:7.3f}"
            )
            offs = sorted(x["off_cpu"] for x in late if x.get("off_cpu") is not None)
            if offs:
                print(
                    f"      of the window, the process off the CPU (wall - process CPU since the callback running "
                    f"at the deadline began): median {offs[len(offs) // 2] * 1000:.3f} ms"
                )
            if lo < 0.002:
                continue
            # each candidate's share of the late ticks: how many would be under 2 ms without it
            parts: dict[str, list[str]] = {
                "relay ports opened/closed": ["relay open_port", "relay close_port"],
                "media hook and end (ports included)": ["media hook", "media end"],
                "Twisted timers (all)": [
                    "loop:twisted timers",
                    "loop:twisted timers, none due",
                    "loop:twisted timers (before the probe)",
                ],
                "garbage collections": ["gc0", "gc1", "gc2"],
                "PBX UDP reads": ["loop:fd Port"],
                "client TCP reads": ["loop:tcp read", "loop:tcp read, a later slice"],
                "not in a wrapped entry": ["rest"],
            }
            out = []
            for what, labels in parts.items():
                saved = 0
                for x in late:
                    cut = sum(
                        (x["top"].get(lb) or x["nested"].get(lb) or (0, x["rest"] if lb == "rest" else 0.0))[
                            1
                        ]
                        for lb in labels
                    )
                    saved += x["lag"] - cut < 0.002
                out.append(f"{what} {saved} ({saved * 100 / k:.0f}%)")
            print("      late ticks >= 2 ms that would be under 2 ms without: " + "; ".join(out))


def _print_diagnosis(path: Path) -> None:
    """The stall probe's summary (bench/stallprobe.py): GC by generation, stalls, cycle census."""
    d = json.loads(path.read_text())
    print(f"diagnosis ({path}): {d['samples']} stack samples, {d['stall_count']} stalls")
    for g, row in d["gc"].items():
        print(
            f"  gen{g}: {row['n']} collections, mean {row['mean_ms']} ms, max {row['max_ms']} ms, "
            f"{row['collected']} objects freed"
        )
    for step, w0, w1 in WINDOWS:
        inside = [s for s in d["stalls"] if w0 <= s["t"] <= w1]
        gcs = [e for e in d["gc_events"] if w0 <= e[0] <= w1]
        print(
            f"  {step}: {len(inside)} stalls >= {d.get('stall_ms', 10)} ms, longest "
            f"{max((s['ms'] for s in inside), default=0)} ms; {len(gcs)} collections (gen, ms, freed, young): "
            f"{[e[1:] for e in sorted(gcs, key=lambda e: -e[1])[:6]]}"
        )
        for s in inside[:8]:
            print(f"    stall {s['ms']:6.1f} ms: {s['top'][:6]}")
    for s in d["stalls"][:15]:
        print(
            f"  stall at {s['at_s']:6.1f} s: {s['ms']:6.1f} ms, GC (gen, ms, freed, young) {s['gc']}: {s['top'][:4]}"
        )
    print("  most seen in stalls:", d["culprits"][:20])
    if d.get("big_young"):
        fo = d["fanouts"]
        print(
            f"  young collections: mean {sum(f[0] for f in fo) / max(len(fo), 1):.0f} objects, "
            f"{sum(f[1] for f in fo) / max(len(fo), 1):.0f} referents visited; biggest young containers:"
        )
        for what, n in d["big_young"][:10]:
            print(f"    {n:10d}  {what}")
        young = [e for e in d["gc_events"] if e[2] < 2]
        joined = sorted(zip(young, fo, strict=False), key=lambda x: -x[0][1])[:6]
        for e, f in joined:
            print(f"    slowest: gen{e[2]} {e[1]} ms, {f[0]} objects, {f[1]} referents, biggest {f[2][:3]}")
    if d["census"]:
        print("  cycle garbage by type:", d["census"][:25])
        print("  cycle garbage by creator:")
        for who, n in d["creators"][:40]:
            print(f"    {n:8d}  {who}")


class Kamailio:
    """Debian's kamailio with bench/kamailio/wss_udp.cfg: WSS clients -> stateful proxy -> the same UDP PBX."""

    CFG = Path(__file__).resolve().parent / "kamailio" / "wss_udp.cfg"

    def __init__(self, tmp: str, pbx_port: int, children: int = 1) -> None:
        d = Path(tmp) / "kamailio"
        d.mkdir()
        key, cert = d / "key.pem", d / "cert.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                f"/CN={DOMAIN}",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        tls = d / "tls.cfg"
        tls.write_text(
            f"[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
            f"private_key = {key}\ncertificate = {cert}\n"
        )
        self.port = free_port(socket.SOCK_STREAM)
        udp_port = free_port(socket.SOCK_DGRAM)
        text = self.CFG.read_text()
        for name, value in {
            "CHILDREN": children,
            "UDP_PORT": udp_port,
            "WSS_PORT": self.port,
            "TLS_CFG": tls,
            "PBX_PORT": pbx_port,
        }.items():
            text = text.replace(f"@{name}@", str(value))
        cfg = d / "kamailio.cfg"
        cfg.write_text(text)
        self.log = d / "kamailio.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    *_taskset(0),
                    "kamailio",
                    "-f",
                    str(cfg),
                    "-DD",
                    "-E",
                    "-m",
                    "2048",  # shared memory, MB: a transaction's request and reply stay there 5 s
                    "-M",
                    "64",
                    "-Y",
                    str(d),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        if self.proc.poll() is not None:
            raise SystemExit(f"kamailio did not start:\n{self.log.read_text()[-3000:]}")
        time.sleep(0.5)
        self.pid = self.proc.pid

    def pids(self) -> list[int]:
        out = [self.pid]
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == self.pid:
                        out.append(int(p.name))
                except (OSError, IndexError, ValueError):
                    pass
        return out

    def cpu(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                total += cpu_ticks(pid)
            except OSError:
                pass
        return total

    def metrics(self) -> dict[str, float]:
        return {}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _hist(m: dict[str, float], family: str, labels: str = "") -> list[tuple[float, float]]:
    """[(upper bound, cumulative count)] of a histogram in a parsed exposition."""
    out = []
    pat = re.compile(
        re.escape(family) + r"_bucket\{" + (re.escape(labels) + "," if labels else "") + r'le="([^"]+)"\}'
    )
    for key, value in m.items():
        hit = pat.fullmatch(key)
        if hit:
            out.append((float(hit.group(1)), value))
    return sorted(out)


def _hist_pct(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float:
    """Upper bound of the bucket holding quantile ``q`` of the samples between two scrapes."""
    b = dict(before)
    delta = [(bound, n - b.get(bound, 0.0)) for bound, n in after]
    if not delta or delta[-1][1] <= 0:
        return float("nan")
    total = delta[-1][1]
    for bound, n in delta:
        if n >= q * total:
            return bound
    return float("inf")


# ------------------------------------------------------------------------------------- client
_CALL_ID = re.compile(rb"\r\n(?:Call-ID|i)[ \t]*:[ \t]*([^\r\n]+)", re.I)
_CSEQ = re.compile(rb"\r\nCSeq[ \t]*:[ \t]*\d+[ \t]+([A-Z]+)", re.I)
_TO = re.compile(rb"\r\n(?:To|t)[ \t]*:[ \t]*([^\r\n]+)", re.I)
_RR = re.compile(rb"\r\nRecord-Route[ \t]*:[ \t]*([^\r\n]+)", re.I)


class Stats:
    def __init__(self) -> None:
        self.lat: list[float] = []
        self.ok = 0
        self.refused = 0  # 503
        self.failed = 0
        self.calls_done = 0


class Conn:
    """One WSS client; requests are matched to their answers by (Call-ID, CSeq method)."""

    def __init__(self, ws: WS, index: int, hold: float) -> None:
        self.ws = ws
        self.index = index
        self.hold = hold
        self.pending: dict[tuple[bytes, bytes], float] = {}
        self.stats = Stats()
        self.n = 0
        self.task = asyncio.ensure_future(self._read())
        self.inflight = 0
        self.idle = asyncio.Event()

    def register(self, t0: float) -> None:
        self.n += 1
        cid = f"r{self.index}-{self.n}"
        i = self.index
        self.pending[(cid.encode(), b"REGISTER")] = t0
        self.inflight += 1
        self.ws.send(
            (
                f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS c{i}.invalid;branch=z9hG4bK{cid}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:u{i}@{DOMAIN}>;tag=t{cid}\r\nTo: <sip:u{i}@{DOMAIN}>\r\n"
                f"Call-ID: {cid}\r\nCSeq: {self.n} REGISTER\r\nContact: <sip:u{i}@c{i}.invalid;transport=ws>;expires=600\r\n"
                "Supported: path, outbound\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )

    def invite(self, t0: float) -> None:
        self.n += 1
        cid = f"c{self.index}-{self.n}"
        self.pending[(cid.encode(), b"INVITE")] = t0
        self.inflight += 1
        self.ws.send(
            (
                f"INVITE sip:200@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS b.invalid;branch=z9hG4bK{cid}\r\n"
                f"Max-Forwards: 70\r\nTo: <sip:200@{DOMAIN}>\r\nFrom: <sip:gen@{DOMAIN}>;tag=g{cid}\r\n"
                f"Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:gen@b.invalid;transport=ws;ob>\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(OFFER)}\r\n\r\n{OFFER}"
            ).encode()
        )

    def _ack_and_bye(self, cid: str, msg: bytes) -> None:
        to = (_TO.search(msg) or re.match(rb"()", b"")).group(1).decode()  # type: ignore[union-attr]
        routes = [r.strip() for line in _RR.findall(msg) for r in line.decode().split(",")]
        route = f"Route: {', '.join(routes)}\r\n" if routes else ""
        d = DOMAIN
        base = f"Max-Forwards: 70\r\n{route}To: {to}\r\nFrom: <sip:gen@{d}>;tag=g{cid}\r\nCall-ID: {cid}\r\n"
        self.ws.send(
            (
                f"ACK sip:pbx@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS b.invalid;branch=z9hG4bKa{cid}\r\n"
                f"{base}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )

        def bye() -> None:
            self.pending[(cid.encode(), b"BYE")] = time.perf_counter()
            self.inflight += 1
            self.ws.send(
                (
                    f"BYE sip:pbx@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS b.invalid;branch=z9hG4bKb{cid}\r\n"
                    f"{base}CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
                ).encode()
            )

        if self.hold > 0:
            asyncio.get_running_loop().call_later(self.hold, bye)
        else:
            bye()

    async def _read(self) -> None:
        try:
            async for msg in self.ws.messages():
                if not msg.startswith(b"SIP/2.0 ") or msg[8:9] == b"1":
                    continue
                now = time.perf_counter()
                cid_m, cseq_m = _CALL_ID.search(msg), _CSEQ.search(msg)
                if cid_m is None or cseq_m is None:
                    continue
                key = (cid_m.group(1).strip(), cseq_m.group(1))
                t0 = self.pending.pop(key, None)
                if t0 is None:
                    continue
                self.inflight -= 1
                code = msg[8:11]
                st = self.stats
                if code[:1] == b"2":
                    st.ok += 1
                    st.lat.append(now - t0)
                    if key[1] == b"INVITE":
                        self._ack_and_bye(key[0].decode(), msg)
                    elif key[1] == b"BYE":
                        st.calls_done += 1
                elif code == b"503":
                    st.refused += 1
                else:
                    st.failed += 1
                if self.inflight == 0:
                    self.idle.set()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return

    def close(self) -> None:
        self.task.cancel()
        self.ws.w.close()


async def _connect(port: int, count: int, hold: float) -> list[Conn]:
    ctx = ssl._create_unverified_context()
    conns = []
    for i in range(count):
        conns.append(Conn(await WS.connect(port, DOMAIN, ctx), i, hold))
    return conns


def _merge(conns: list[Conn]) -> Stats:
    out = Stats()
    for c in conns:
        s = c.stats
        out.lat += s.lat
        out.ok += s.ok
        out.refused += s.refused
        out.failed += s.failed
        out.calls_done += s.calls_done
        c.stats = Stats()
    return out


async def _closed_loop(conns: list[Conn], kind: str, seconds: float, depth: int) -> float:
    """Transactions/s with ``depth`` requests in flight per connection (the edge's capacity)."""
    stop = time.monotonic() + seconds
    _merge(conns)

    async def run(c: Conn) -> None:
        while time.monotonic() < stop:
            while c.inflight < depth:
                (c.register if kind == "register" else c.invite)(time.perf_counter())
            c.idle.clear()
            await asyncio.sleep(0.001)

    t0 = time.monotonic()
    await asyncio.gather(*(run(c) for c in conns))
    elapsed = time.monotonic() - t0
    await _settle(conns, 5)
    st = _merge(conns)
    return st.ok / elapsed


async def _open_loop(conns: list[Conn], kind: str, rate: float, seconds: float) -> tuple[Stats, float, float]:
    """Requests at ``rate``/s on a fixed schedule, round robin over connections."""
    _merge(conns)
    gen_cpu0 = time.process_time()
    start = time.perf_counter()
    sent = 0
    total = int(rate * seconds)
    max_behind = 0.0
    while sent < total:
        now = time.perf_counter()
        due = start + sent / rate
        if due > now:
            await asyncio.sleep(max(0.001, due - now))  # never spin (SCHED_FIFO would starve the PBX)
            continue
        max_behind = max(max_behind, now - due)
        c = conns[sent % len(conns)]
        (c.register if kind == "register" else c.invite)(due)
        sent += 1
    await _settle(conns, 10)
    gen_cpu = (time.process_time() - gen_cpu0) / seconds
    return _merge(conns), gen_cpu, max_behind


async def _settle(conns: list[Conn], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(c.inflight > 0 or c.pending for c in conns):
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------- parts
async def _quiesce(edge: Edge | Kamailio, conns: list[Conn], hold: float) -> None:
    """Before a step: the previous phase's BYEs (sent ``hold`` s after each 200) answered, and the
    edge's overload gate back to admitting everything, so a step measures its own load only."""
    await asyncio.sleep(hold + 0.2)
    await _settle(conns, 10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if edge.metrics().get("mcs_edge_overload_admitted_ratio", 1.0) >= 1.0:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)


def _gc_row(before: dict[str, float], after: dict[str, float]) -> str:
    """Per generation: collections and the bucket bound of the longest pause (ms), between two scrapes."""
    out = []
    for g in range(3):
        label = f'generation="{g}"'
        b = dict(_hist(before, "mcs_edge_gc_pause_seconds", label))
        delta = [
            (bound, n - b.get(bound, 0)) for bound, n in _hist(after, "mcs_edge_gc_pause_seconds", label)
        ]
        if not delta or delta[-1][1] <= 0:
            out.append("0")
            continue
        top = next(bound for bound, n in delta if n >= delta[-1][1])
        out.append(f"{delta[-1][1]:.0f}<{top * 1000:g}")
    return "/".join(out)


def _lag_row(before: dict[str, float], after: dict[str, float]) -> str:
    hb, ha = _hist(before, "mcs_edge_loop_lag_seconds"), _hist(after, "mcs_edge_loop_lag_seconds")
    parts = [f"{_hist_pct(hb, ha, q) * 1000:7.1f}" for q in (0.5, 0.99, 0.999)]
    return " ".join(parts) + f" {_hist_over(hb, ha, 0.002):>6}" + f" {_gc_row(before, after):>22}"


def _hist_over(before: list[tuple[float, float]], after: list[tuple[float, float]], bound: float) -> str:
    """Share (%) of the samples between two scrapes above ``bound`` (a bucket bound): the p99 target
    is met when it is under 1%, which the bucket quantiles above show only to a bucket."""
    b = dict(before)
    delta = {k: n - b.get(k, 0.0) for k, n in after}
    total = delta.get(float("inf"), 0.0)
    if total <= 0 or bound not in delta:
        return "-"
    return f"{(total - delta[bound]) * 100 / total:.2f}"


async def _latency_part(
    edge: Edge | Kamailio, args: argparse.Namespace, name: str = "", rate_caps: dict[str, float] | None = None
) -> dict[str, float]:
    """Capacity, then the steps at a share of it (of ``rate_caps`` when given: the baseline's, so
    before and after are offered the same rates)."""
    conns = await _connect(edge.port, args.conns, args.hold)
    caps: dict[str, float] = {}
    print(
        f"{'scenario':24} {'load':>5} {'tx/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7} "
        f"{'lag50':>7} {'lag99':>7} {'lag99.9':>7} {'>2ms%':>6} {'GC gen0/1/2: n<max ms':>22} {'CPU%':>5} {'gen%':>5} {'pbx%':>5} {'503':>5} {'fail':>5}"
    )
    for kind in args.kinds.split(","):
        cpu0 = cpu_ticks(edge.pid)
        t0 = time.monotonic()
        cap = await _closed_loop(conns, kind, args.capacity_seconds, args.depth)
        cpu = (cpu_ticks(edge.pid) - cpu0) / (time.monotonic() - t0)
        caps[kind] = cap
        print(
            f"{name + kind + ' capacity':24} {'max':>5} {cap:7.0f} {'':81} {cpu * 100:5.0f}   CPU us/tx {cpu * 1e6 / max(cap, 1):.0f}"
        )
        for step in [int(x) for x in args.steps.split(",")]:
            base = rate_caps.get(kind, cap) if rate_caps else cap
            rate = (
                base * step / 100 / (2 if kind == "invite" else 1)
            )  # a call is 2 transactions (INVITE, BYE)
            await _quiesce(edge, conns, args.hold)
            before = edge.metrics()
            cpu0 = edge.cpu()
            pbx0 = cpu_ticks(PBX_PID[0]) if PBX_PID else 0.0
            w0 = time.perf_counter()
            st, gen_cpu, _behind = await _open_loop(conns, kind, rate, args.seconds)
            WINDOWS.append((f"{name}{kind} {step}%", w0, time.perf_counter()))
            cpu = (edge.cpu() - cpu0) / args.seconds
            pbx_cpu = (cpu_ticks(PBX_PID[0]) - pbx0) / args.seconds if PBX_PID else float("nan")
            after = edge.metrics()
            print(
                f"{name + kind:24} {step:4d}% {len(st.lat) / args.seconds:7.0f} {_pct(st.lat, 0.5) * 1000:7.2f} "
                f"{_pct(st.lat, 0.99) * 1000:7.2f} {_pct(st.lat, 0.999) * 1000:7.2f} {_lag_row(before, after)} "
                f"{cpu * 100:5.0f} {gen_cpu * 100:5.0f} {pbx_cpu * 100:5.0f} {st.refused:5d} {st.failed:5d}",
                flush=True,
            )
    print(f"{name or 'mcs-edge '}CPU per transaction at each step: CPU% x 10,000 / tx/s (us)", flush=True)
    for c in conns:
        c.close()
    return caps


async def _rss_part(edge: Edge, args: argparse.Namespace) -> None:
    idle = _rss_mib(edge.pid)
    conns = await _connect(edge.port, args.conns, args.hold)
    st, _gen, _behind = await _open_loop(conns, "invite", args.rss_rate, args.rss_seconds)
    held = edge.metrics().get("mcs_edge_sip_transactions_held", float("nan"))
    rss = _rss_mib(edge.pid)
    print(
        f"RSS idle {idle:.1f} MiB; after {args.rss_seconds:.0f} s of {args.rss_rate:.0f} calls/s "
        f"({st.calls_done} calls, {held:.0f} transactions held): {rss:.1f} MiB (+{rss - idle:.1f} MiB)"
    )
    for c in conns:
        c.close()


async def _churn_part(
    edge: Edge, args: argparse.Namespace, fds0: int, timers0: float, fds0_metric: float
) -> bool:
    conns = await _connect(edge.port, args.conns, args.hold)
    done = 0
    t0 = time.monotonic()
    while done < args.churn_calls:
        n = min(args.churn_calls - done, int(args.churn_rate * 10))
        await _open_loop(conns, "invite", args.churn_rate, n / args.churn_rate)
        done += n
    for c in conns:
        c.close()
    elapsed = time.monotonic() - t0
    deadline = time.monotonic() + 64 * 0.5 + 15
    while time.monotonic() < deadline:
        m = edge.metrics()
        if m.get("mcs_edge_sip_transactions_held", 1) == 0 and m.get("mcs_edge_timers", 1e9) <= timers0:
            break
        await asyncio.sleep(1)
    m = edge.metrics()
    status = edge.api("status")
    calls = edge.api("calls")
    flows = edge.api("connections")
    assert isinstance(status, dict) and isinstance(calls, dict) and isinstance(flows, dict)
    checks = {
        "calls (admin API)": (status["calls"], 0),
        "calls listed (admin API)": (len(calls["calls"]), 0),
        "connections/flows (admin API)": (len(flows["connections"]), 0),
        "connections (metrics)": (sum(v for k, v in m.items() if k.startswith("mcs_edge_connections{")), 0),
        "calls (metrics)": (sum(v for k, v in m.items() if k.startswith("mcs_edge_calls{")), 0),
        "relay ports used": (m.get('mcs_edge_media_ports{state="used"}', 0), 0),
        "relay ports open": (m.get("mcs_edge_media_ports_open", 0), 0),
        "SIP transactions held": (m.get("mcs_edge_sip_transactions_held", -1), 0),
        "timers": (m.get("mcs_edge_timers", -1), timers0),
        "descriptors": (_fds(edge.pid), fds0),
        "process_open_fds (metrics)": (m.get("process_open_fds", -1), fds0_metric),
    }
    ok = True
    print(f"churn: {done} calls in {elapsed:.0f} s, then every client left; leftovers:")
    for name, (value, want) in checks.items():
        good = value <= want
        ok &= good
        print(f"  {name:28} {value:8.0f}  (idle {want:.0f})  {'ok' if good else 'LEFT BEHIND'}")
    return ok


async def _overload_part(edge: Edge, args: argparse.Namespace, cap: float) -> None:
    # enough connections that each stays within its per-connection shaping (shaping.rate, 60 KB/s:
    # about 130 REGISTER/s): past it the edge paces the reading of that connection, and the bench
    # would measure the shaper instead of the gate
    conns = await _connect(edge.port, args.overload_conns, args.hold)
    before = edge.metrics()
    perf = None
    if os.environ.get("MCS_BENCH_PERF"):  # perf samples of the edge over the overload window
        perf = subprocess.Popen(
            ["perf", "record", "-g", "-q", "-o", os.environ["MCS_BENCH_PERF"], "-p", str(edge.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    series: list[str] = []
    sampler = asyncio.ensure_future(_gate_series(edge, series)) if os.environ.get("OVERLOAD_DETAIL") else None
    if os.environ.get("MCS_BENCH_PYSPY"):  # py-spy samples (Python stacks) of the edge, same window
        perf = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--nonblocking",
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                os.environ["MCS_BENCH_PYSPY"],
                "-p",
                str(edge.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    cpu0 = edge.cpu()
    kind = args.overload_kind
    per_call = 2 if kind == "invite" else 1  # a call is 2 transactions (INVITE, BYE), as in the steps
    st, gen_cpu, behind = await _open_loop(conns, kind, cap * 3 / per_call, args.overload_seconds)
    edge_cpu = (edge.cpu() - cpu0) / args.overload_seconds
    if sampler is not None:
        sampler.cancel()
        print("overload: gate every 0.5 s (admitted ratio / smoothed lag ms / busy):", " ".join(series))
    if perf is not None:
        perf.send_signal(2)
        perf.wait()
    try:
        after = edge.metrics()
    except OSError:  # the edge is still working through the backlog: its admin does not answer
        print("overload: /metrics did not answer within 10 s after the load")
        after = before
    shed = sum(v for k, v in after.items() if k.startswith("mcs_edge_overload_refused_total")) - sum(
        v for k, v in before.items() if k.startswith("mcs_edge_overload_refused_total")
    )
    good = st.ok / args.overload_seconds
    print(
        f"overload: {kind} offered {cap * 3:.0f} tx/s (3x {cap:.0f}) for {args.overload_seconds:.0f} s: goodput "
        f"{good:.0f}/s = {good / cap * 100:.0f}% of capacity; 503 {st.refused} (edge counted {shed:.0f}), "
        f"other failures {st.failed}, unanswered {sum(len(c.pending) for c in conns)}; accepted p50 "
        f"{_pct(st.lat, 0.5) * 1000:.1f} ms p99 {_pct(st.lat, 0.99) * 1000:.1f} ms; generator CPU "
        f"{gen_cpu * 100:.0f}%, max behind schedule {behind * 1000:.0f} ms; edge CPU {edge_cpu * 100:.0f}% "
        f"(over the load and its settling, per second of load)"
    )
    if SERVED_CPU and st.refused:
        refusal_us = (edge_cpu * args.overload_seconds - st.ok * SERVED_CPU[0]) / st.refused * 1e6
        print(
            f"overload: edge CPU per {kind} transaction at capacity {SERVED_CPU[0] * 1e6:.0f} us; so per refusal "
            f"about {refusal_us:.0f} us"
        )
    if os.environ.get("OVERLOAD_DETAIL"):
        bounds = [0.01, 0.1, 0.5, 1, 2, 4, 8, 12, 16, 20, 30, 60]
        counts = [
            sum(1 for x in st.lat if lo <= x < hi)
            for lo, hi in zip([0.0, *bounds], [*bounds, 1e9], strict=True)
        ]
        print("overload: accepted latency histogram (s):", dict(zip([*bounds, "inf"], counts, strict=True)))
    for c in conns:
        c.pending.clear()
        c.inflight = 0
    # recovery: the first moment from which every request at 25 % load is served
    t_end = time.perf_counter()
    recovered = None
    for _ in range(50):
        st, _gen, _behind = await _open_loop(conns, kind, cap * 0.25 / per_call, 0.2)
        if st.refused == 0 and st.failed == 0 and st.ok > 0:
            recovered = time.perf_counter() - t_end - 0.2
            break
    print(
        f"overload: full service again {recovered:.2f} s after the load stopped"
        if recovered is not None
        else "overload: not recovered within 10 s"
    )
    for c in conns:
        c.close()


async def _gate_series(edge: Edge, out: list[str]) -> None:
    """The gate's state every 0.5 s (OVERLOAD_DETAIL), read off the reactor of the generator."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            m = await loop.run_in_executor(None, edge.metrics)
        except OSError:
            out.append("-")
        else:
            out.append(
                f"{m.get('mcs_edge_overload_admitted_ratio', -1):.2f}/"
                f"{m.get('mcs_edge_loop_lag_smoothed_seconds', -1) * 1000:.0f}/"
                f"{m.get('mcs_edge_reactor_busy_ratio', -1):.2f}"
            )
        await asyncio.sleep(0.5)


def _txmem(counts: list[int]) -> None:
    """Bytes held per transaction kept by Timers J/K/L/M, measured in the proxy core."""
    import gc
    import tracemalloc

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mcs_edge.core.sip.proxy import ProxySettings, SipProxy, ToBackend, ToFlow

    class Tenant:
        id = "t"
        path = True

    tenant = Tenant()
    settings = ProxySettings("edge.example.com", 443, "127.0.0.1", 5070)
    core = SipProxy(
        settings,
        lambda host: tenant,
        lambda t: ("udp", ("127.0.0.1", 5060)),
        lambda ip: [tenant],
        random_bytes=secrets.token_bytes,
    )
    flow = core.open_flow(tenant, "wss", ("127.0.0.1", 40000), 0.0)

    def pbx_answer(data: bytes, method: str) -> bytes:
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        keep = [
            ln
            for ln in head[1:]
            if ln.split(b":", 1)[0].lower() in (b"via", b"from", b"call-id", b"cseq", b"record-route")
        ]
        to = next(ln for ln in head if ln.lower().startswith(b"to:"))
        if method == "INVITE":
            to += b";tag=pbx"
        body = (
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
            if method == "INVITE"
            else b""
        )
        extra = (
            [b"Contact: <sip:pbx@127.0.0.1:5060>", b"Content-Type: application/sdp"]
            if body
            else [b"Contact: <sip:u@c.invalid;transport=ws>;expires=600"]
        )
        return (
            b"\r\n".join([b"SIP/2.0 200 OK", *keep, to, *extra, b"Content-Length: %d" % len(body), b"", b""])
            + body
        )

    def one(i: int, method: str, now: float) -> None:
        body = OFFER if method == "INVITE" else ""
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        req = (
            f"{method} sip:{'200@' if method == 'INVITE' else ''}{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/WSS c.invalid;branch=z9hG4bK{method}{i}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:u@{DOMAIN}>;tag=f{i}\r\nTo: <sip:{'200' if method == 'INVITE' else 'u'}@{DOMAIN}>\r\n"
            f"Call-ID: {method}{i}\r\nCSeq: 1 {method}\r\nContact: <sip:u@c.invalid;transport=ws>\r\n"
            f"{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
        core.handle_timer(now)
        core.receive_from_client(flow.id, req, now)
        for action in core.drain():
            if isinstance(action, ToBackend):
                core.receive_from_backend(pbx_answer(action.data, method), ("127.0.0.1", 5060), "udp", now)
        core.handle_timer(now)  # timers due now (J, K, I on reliable transports: 0 s)
        for action in core.drain():
            assert isinstance(action, ToFlow)

    def caches() -> None:
        # Bounded parse caches (at most a few thousand entries whatever the load) are not
        # per-transaction memory: empty every one of the SIP core before each snapshot.
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("mcs_edge.core.sip"):
                for fn in vars(module).values():
                    if hasattr(fn, "cache_clear"):
                        fn.cache_clear()
        gc.collect()

    # Timers K (T4 = 5 s, REGISTER toward the UDP PBX) and L/M (64*T1 = 32 s, INVITE) keep the
    # transactions of the last 5 s / 32 s: the rate sets how many are held. A table resize can
    # land inside the window (a dict doubles at 2/3 full), so one count can read high or low:
    # bytes per transaction is the slope between counts.
    hold = {"REGISTER": 5.0, "INVITE": 32.0}
    now = 1.0
    serial = 0
    for method in ("REGISTER", "INVITE"):
        for i in range(200):
            one(-1 - i - serial, method, now)  # warm up
        serial += 200
        points: list[tuple[int, int]] = []
        for target in counts:
            rate = target / hold[method] / (2 if method == "INVITE" else 1)  # INVITE: server + client
            seconds = hold[method] * 1.25
            now += 100.0
            core.handle_timer(now)
            core.drain()
            core.calls.flow_closed(flow.id)
            caches()
            tracemalloc.start()
            snap0 = tracemalloc.take_snapshot()
            held0 = len(core.layer)
            for _ in range(int(rate * seconds)):
                one(serial, method, now)
                serial += 1
                now += 1 / rate
            core.calls.flow_closed(flow.id)  # the call table is live state, not a retained transaction
            caches()
            snap1 = tracemalloc.take_snapshot()
            tracemalloc.stop()
            held = len(core.layer) - held0
            size = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
            if os.environ.get("TXMEM_DETAIL"):
                for stat in snap1.compare_to(snap0, "lineno")[:12]:
                    print("   ", stat)
            points.append((held, size))
            print(
                f"retained {method:8}: {held:6} transactions held, {size / 1024:8.1f} KiB, {size / max(held, 1):5.0f} B each"
            )
        slopes = [(b1 - b0) / (h1 - h0) for (h0, b0), (h1, b1) in itertools.pairwise(points) if h1 != h0]
        fit = (
            statistics.linear_regression([h for h, _ in points], [b for _, b in points]).slope
            if len({h for h, _ in points}) > 1
            else float("nan")
        )
        print(
            f"retained {method:8}: {fit:.0f} bytes per transaction (least-squares slope over "
            f"{', '.join(str(h) for h, _ in points)}; between counts: {', '.join(f'{x:.0f}' for x in slopes)})"
        )
        now += 100.0
        core.handle_timer(now)
        core.drain()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--capacity-seconds", type=float, default=6)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--depth", type=int, default=4, help="requests in flight per connection for capacity")
    ap.add_argument("--steps", default="25,50,75")
    ap.add_argument("--kinds", default="register,invite")
    ap.add_argument("--hold", type=float, default=0.5, help="seconds between ACK and BYE")
    ap.add_argument("--rss-seconds", type=float, default=60)
    ap.add_argument("--rss-rate", type=float, default=300)
    ap.add_argument("--churn-calls", type=int, default=100000)
    ap.add_argument("--churn-rate", type=float, default=300)
    ap.add_argument("--overload", action="store_true")
    ap.add_argument("--overload-seconds", type=float, default=20)
    ap.add_argument(
        "--overload-capacity",
        type=float,
        default=0,
        help="take this as the edge's REGISTER capacity (tx/s) instead of measuring it (a shared machine's "
        "neighbours move the measured figure)",
    )
    ap.add_argument(
        "--overload-kind",
        choices=("register", "invite"),
        default="register",
        help="what the overload part offers: REGISTER, or INVITE/ACK/BYE calls (capacity and goodput in "
        "transactions/s, a call being two)",
    )
    ap.add_argument(
        "--overload-conns",
        type=int,
        default=200,
        help="WSS connections the overload load is spread over (each under its shaping rate)",
    )
    ap.add_argument("--overload-extra", default="", help="edge.toml text for the overload edge (defaults)")
    ap.add_argument("--txmem", action="store_true")
    ap.add_argument(
        "--txmem-counts",
        default="1000,1500,3000,6000",
        help="retained transactions to measure at (--txmem); bytes each is the slope between them",
    )
    ap.add_argument(
        "--baseline-src",
        default="",
        help="also run the latency steps (first, at rates the edge then gets too) and the overload part on "
        "the edge from this source tree (e.g. git archive main)",
    )
    ap.add_argument(
        "--kamailio", action="store_true", help="the same steps against Kamailio (bench/kamailio/)"
    )
    ap.add_argument("--extra", default="", help="extra edge.toml text (before [[tenants]])")
    ap.add_argument(
        "--nice", type=int, default=0, help="run edge, PBX and generator at this niceness (negative: root)"
    )
    ap.add_argument(
        "--rt",
        type=int,
        default=0,
        help="run edge, PBX and generator SCHED_FIFO at this priority (root; a shared machine's other "
        "load then cannot delay them: latency figures measure the edge, not the neighbours)",
    )
    ap.add_argument(
        "--diagnose",
        default="",
        help="DIR: run the edge under bench/stallprobe.py (GC callbacks, stack sampler) and print "
        "its summary; perturbs the edge, so the figures of such a run are not the edge's",
    )
    ap.add_argument(
        "--saveall", action="store_true", help="with --diagnose: gc.DEBUG_SAVEALL census of the cycles"
    )
    ap.add_argument(
        "--fanout",
        action="store_true",
        help="with --diagnose: before each young collection, list the young containers it will walk",
    )
    ap.add_argument(
        "--gc-agents",
        type=int,
        default=0,
        help="only the full-collection part: this many registered agents, calls at --gc-rate for "
        "--gc-seconds, full collections every --gc-interval s (baseline too with --baseline-src)",
    )
    ap.add_argument("--gc-rate", type=float, default=50)
    ap.add_argument("--gc-seconds", type=float, default=40)
    ap.add_argument("--gc-interval", type=float, default=5)
    ap.add_argument(
        "--stall", default="", help="with --diagnose: report busy runs longer than this many ms (default 10)"
    )
    ap.add_argument(
        "--turns",
        default="",
        help="DIR: run the edge under bench/turnprobe.py (entry points timed) and print, per step, what "
        "ran while the loop-lag probe was late; perturbs the edge a little",
    )
    ap.add_argument("--late", default="", help="with --turns: ticks at least this many ms late (default 1)")
    args = ap.parse_args()
    if args.turns:
        TURNS[:] = [args.turns, *(["--late", args.late] if args.late else [])]
    if args.diagnose:
        DIAGNOSE[:] = [
            args.diagnose,
            *(["--saveall"] if args.saveall else []),
            *(["--fanout"] if args.fanout else []),
            *(["--stall", args.stall] if args.stall else []),
        ]
    if args.nice:
        NICE[:] = ["nice", "-n", str(args.nice)]
        os.nice(args.nice)
    if args.rt:
        NICE[:] = ["chrt", "-f", str(args.rt)]
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.rt))
    if args.txmem:
        _txmem([int(x) for x in args.txmem_counts.split(",")])
        return
    if args.gc_agents:
        _gc_only(args)
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _pin_self(1)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        pbx_port = free_port(socket.SOCK_DGRAM)
        pbx_prio = (
            ["chrt", "-f", str(args.rt + 1)] if args.rt else []
        )  # the PBX answers before the generator sends
        pbx = subprocess.Popen(
            [*_taskset(1), *pbx_prio, str(BIN / "python"), "-c", PBX, str(pbx_port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert pbx.stdout is not None and pbx.stdout.readline().strip() == "READY"
        PBX_PID[:] = [pbx.pid]
        # capacity, latency, memory and churn on an edge whose gate does not watch the CPU (at capacity
        # the CPU is saturated by definition); the overload part gets a fresh edge with the defaults
        edge = Edge(tmp, pbx_port, args.extra or "[overload]\nbusy_high = 1.01\n")
        try:
            time.sleep(1.0)
            fds0 = _fds(edge.pid)
            idle = edge.metrics()
            timers0 = idle.get("mcs_edge_timers", 0)
            fds0_metric = idle.get("process_open_fds", 0)  # the scrape's own connection included
            print(
                f"edge pid {edge.pid}: idle RSS {_rss_mib(edge.pid):.1f} MiB, {fds0} descriptors, {timers0:.0f} timers"
            )
            if args.rss_seconds > 0:  # first: idle is the fresh process
                asyncio.run(_rss_part(edge, args))
            base_caps: dict[str, float] | None = None
            if args.baseline_src and args.steps:  # before/after in one run, offered the same rates
                base_edge = Edge(
                    tempfile.mkdtemp(dir=tmp),
                    pbx_port,
                    args.extra or "[overload]\nbusy_high = 1.01\n",
                    args.baseline_src,
                )
                try:
                    time.sleep(1.0)
                    base_caps = asyncio.run(_latency_part(base_edge, args, "baseline "))
                finally:
                    base_edge.stop()
            if args.steps:
                asyncio.run(_latency_part(edge, args, rate_caps=base_caps))
            if args.kamailio and args.steps:
                kam = Kamailio(tmp, pbx_port)
                print(f"kamailio pids {kam.pids()} on port {kam.port}, CPU so far {kam.cpu():.2f} s")
                try:
                    asyncio.run(_latency_part(kam, args, "kamailio "))
                finally:
                    if kam.proc.poll() is not None or os.environ.get("KAM_LOG"):
                        print("kamailio log:", kam.log.read_text()[-3000:])
                    kam.stop()
            if args.overload:
                # each tree's own capacity, on an edge whose gate is off: with the gate on, the closed
                # loop's queue (conns x depth requests) makes it refuse, and the capacity came out low
                if args.baseline_src:  # before/after in one run: the baseline tree's own capacity
                    print("baseline", end=" ")
                    base_cap = args.overload_capacity or _capacity_gate_off(
                        tmp, pbx_port, args, args.baseline_src
                    )
                cap = _capacity_gate_off(tmp, pbx_port, args, None)
                cap = args.overload_capacity or cap
                if args.baseline_src:
                    fresh = Edge(tempfile.mkdtemp(dir=tmp), pbx_port, args.overload_extra, args.baseline_src)
                    try:
                        print("baseline:")
                        asyncio.run(_overload_part(fresh, args, base_cap))
                    finally:
                        fresh.stop()
                    print("this tree:")
                fresh = Edge(
                    tempfile.mkdtemp(dir=tmp),
                    pbx_port,
                    args.overload_extra,
                    profile=os.environ.get("MCS_BENCH_PROFILE", ""),
                )
                try:
                    asyncio.run(_overload_part(fresh, args, cap))
                finally:
                    fresh.stop()
            events = {
                k: v
                for k, v in edge.metrics().items()
                if v
                and k.startswith(
                    (
                        "mcs_edge_sip_events_total",
                        "mcs_edge_router_events_total",
                        "mcs_edge_media_events_total",
                        "mcs_edge_overload_refused_total",
                    )
                )
            }
            print(
                "edge events:",
                ", ".join(f"{k.split('{', 1)[1][:-1]}={v:.0f}" for k, v in sorted(events.items())),
            )
            m = edge.metrics()
            freed = [m.get(f'mcs_edge_gc_collected_total{{generation="{g}"}}', 0.0) for g in range(3)]
            print(
                "cycle collector freed (objects in reference cycles), gen0/1/2:",
                "/".join(f"{n:.0f}" for n in freed),
            )
            if args.churn_calls > 0:
                ok = asyncio.run(_churn_part(edge, args, fds0, timers0, fds0_metric))
        finally:
            edge.stop()
            pbx.terminate()
            pbx.wait()
    print("churn: nothing left behind" if ok else "churn: LEFTOVERS (see above)")
    sys.exit(0 if ok else 1)


async def _gc_part(edge: Edge, args: argparse.Namespace, name: str) -> None:
    """``--gc-agents N``: N registered agents held, calls at a low rate: the full collections' pauses
    (``mcs_edge_gc_pause_seconds{generation="2"}``) over ``--gc-seconds``, the edge's
    ``overload.gc_full_interval`` short (set by the caller) so several fall in the window."""
    conns = await _connect(edge.port, args.gc_agents, args.hold)
    t0 = time.perf_counter()
    for c in conns:
        c.register(t0)
    deadline = time.monotonic() + 60
    while sum(c.inflight for c in conns) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    registered = _merge(conns).ok
    await asyncio.sleep(2 * args.gc_interval)  # the first full collection after start walks everything
    key = 'mcs_edge_gc_pause_seconds_{}{{generation="2"}}'
    before = edge.metrics()
    st, _gen, _behind = await _open_loop(conns[:50], "invite", args.gc_rate, args.gc_seconds)
    await asyncio.sleep(1.0)
    after = edge.metrics()
    n = after.get(key.format("count"), 0.0) - before.get(key.format("count"), 0.0)
    total = after.get(key.format("sum"), 0.0) - before.get(key.format("sum"), 0.0)
    frozen = after.get("mcs_edge_gc_frozen_objects", float("nan"))
    label = 'generation="2"'
    longest = _hist_pct(
        _hist(before, "mcs_edge_gc_pause_seconds", label),
        _hist(after, "mcs_edge_gc_pause_seconds", label),
        1.0,
    )
    print(
        f"{name}gc: {registered} agents registered, {st.calls_done} calls at {args.gc_rate:.0f}/s in "
        f"{args.gc_seconds:.0f} s: {n:.0f} full collections, mean {1000 * total / max(n, 1):.1f} ms, "
        f"longest <= {longest * 1000:.0f} ms (bucket); frozen objects {frozen:.0f}; "
        f"RSS {_rss_mib(edge.pid):.1f} MiB",
        flush=True,
    )
    for c in conns:
        c.close()


def _capacity_gate_off(tmp: str, pbx_port: int, args: argparse.Namespace, src: str | None) -> float:
    """REGISTER capacity (closed loop) of a fresh edge from ``src`` (None: this tree), gate off."""
    probe = Edge(tempfile.mkdtemp(dir=tmp), pbx_port, "[overload]\nenabled = false\n", src)
    try:
        return asyncio.run(_capacity_only(probe, args, args.overload_kind))
    finally:
        probe.stop()


async def _capacity_only(edge: Edge, args: argparse.Namespace, kind: str = "register") -> float:
    conns = await _connect(edge.port, args.conns, args.hold)
    cpu0, t0 = edge.cpu(), time.monotonic()
    cap = await _closed_loop(conns, kind, args.capacity_seconds, args.depth)
    cpu = edge.cpu() - cpu0  # the closed loop and its settling
    for c in conns:
        c.close()
    SERVED_CPU[:] = [cpu / max(1.0, cap * args.capacity_seconds)]
    print(f"{kind} capacity {cap:.0f}/s, edge CPU {cpu / (time.monotonic() - t0) * 100:.0f}%")
    return cap


def _gc_only(args: argparse.Namespace) -> None:
    """``--gc-agents``: the full-collection part on the baseline tree (if any), then on this one."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _pin_self(1)
    with tempfile.TemporaryDirectory() as tmp:
        pbx_port = free_port(socket.SOCK_DGRAM)
        pbx = subprocess.Popen(
            [*_taskset(1), str(BIN / "python"), "-c", PBX, str(pbx_port)], stdout=subprocess.PIPE, text=True
        )
        assert pbx.stdout is not None and pbx.stdout.readline().strip() == "READY"
        extra = f"[overload]\nbusy_high = 1.01\ngc_full_interval = {args.gc_interval}\n{args.extra}"
        try:
            for name, src in ([("baseline ", args.baseline_src)] if args.baseline_src else []) + [("", None)]:
                edge = Edge(tempfile.mkdtemp(dir=tmp), pbx_port, extra, src)
                try:
                    time.sleep(1.0)
                    asyncio.run(_gc_part(edge, args, name))
                finally:
                    edge.stop()
        finally:
            pbx.terminate()
            pbx.wait()


if __name__ == "__main__":
    main()
