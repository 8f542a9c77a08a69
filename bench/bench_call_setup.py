"""CPU of one call set-up with media, in process: the SIP proxy core with the media relay as its hook.

The INVITE (plain RTP offer, as ``bench_latency.py``'s generator sends it) from a WSS client, the
PBX's 200 with its SDP answer, the client's ACK, the BYE and its 200: each fed to the sans-IO core
as the adapters would, with :class:`~mcs_edge.tx.media.relay.MediaRelay` (tenant ``media =
"passthrough"``) binding the relay ports on Twisted's asyncio reactor over uvloop (as in
production), and the loop run once after each message so the datagram endpoints are created and
closed inside the measured time. No TLS, no WebSocket, no UDP of the SIP messages
(``bench_latency.py`` / ``bench_sip.py`` measure those). Process CPU time, best of ``--repeat``.

    .venv/bin/python bench/bench_call_setup.py [--count 2000] [--repeat 5] [--profile]
        [--baseline-src DIR] [--extra 'TOML'] [--no-media] [--sdp plain|browser]

``--core`` times the media core alone instead (no SIP, no sockets): per call, the two SDP parses
and a passthrough ``MediaSession``'s offer and answer on memory ports, as the anchor calls them.

``--sdp browser`` uses a captured JsSIP/Chromium offer (BUNDLE, rtcp-mux, ICE candidates, 8 codecs;
tests/data/sdp/jssip_chromium_offer.sdp) and a Chromium answer as the PBX's (a WebRTC-capable PBX
behind a passthrough tenant) instead of the plain RTP pair.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import _common  # (puts tests/ on sys.path)

from mcs_edge import reactor as edge_reactor

edge_reactor.install()

import asyncio  # noqa: E402

from helpers.sipcore import Tenant  # noqa: E402
from twisted.internet import reactor  # noqa: E402

from mcs_edge.config import loads  # noqa: E402
from mcs_edge.core.sip.proxy import ProxySettings, SipProxy, ToBackend, ToFlow  # noqa: E402
from mcs_edge.tx.media.relay import MediaRelay  # noqa: E402
from mcs_edge.tx.timers import Timers  # noqa: E402

PBX = ("127.0.0.1", 5060)
DOMAIN = "bench.example.com"
T = Tenant("bench")
OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)
ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)
MEDIA: list[bool] = [True]
#: Relay ports: below the kernel's ephemeral range (32768-60999 by default), where other processes'
#: sockets on a shared machine would make binds fail now and then.
PORTS = [30000, 32759]
SDP_DIR = _common.ROOT / "tests" / "data" / "sdp"
#: Ports in the client's offer made different for each call (m= port, candidates), as browsers'
#: and phones' offers differ: nothing per call is found already parsed.
CALL_PORTS = {"plain": ("40002",), "browser": ("54012", "60231")}
VARY: list[str] = list(CALL_PORTS["plain"])
SDPS = {
    "plain": (OFFER, ANSWER),
    "browser": (
        (SDP_DIR / "jssip_chromium_offer.sdp").read_text(),
        (SDP_DIR / "chromium_answer.sdp").read_text(),
    ),
}
_KEEP = ("via:", "from", "to: ", "call", "cseq", "reco")


def _config(tmp: str, extra: str) -> object:
    return loads(
        f'[edge]\nstate_dir = "{tmp}"\npublic_address = "127.0.0.1"\nbackend_address = "127.0.0.1"\n'
        '[listen]\nhttps = "127.0.0.1:0"\nsip_tls = "off"\nbackend_sip = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
        f'[media]\nbind = "127.0.0.1"\nports = [{PORTS[0]}, {PORTS[1]}]\n{extra}'
        f'[[tenants]]\nid = "bench"\ndomains = ["{DOMAIN}"]\nbackend_sip = "udp:127.0.0.1:5060"\n'
        'certificate = "self-signed"\nmedia = "passthrough"\n'
    )


def _offer(n: int) -> str:
    """The client's offer of call ``n`` (its ports differ per call)."""
    offer = OFFER
    for i, port in enumerate(VARY):
        offer = offer.replace(f" {port}", f" {1024 + (n * 7 + i * 4099) % 60000}")
    return offer


def _invite(n: int) -> bytes:
    offer = _offer(n)
    return (
        f"INVITE sip:200@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS b.invalid;branch=z9hG4bKi{n}\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:200@{DOMAIN}>\r\nFrom: <sip:gen@{DOMAIN}>;tag=g{n}\r\n"
        f"Call-ID: c{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:gen@b.invalid;transport=ws;ob>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(offer)}\r\n\r\n{offer}"
    ).encode()


def _answer(request: bytes, tag: str | None, body: str = "") -> bytes:
    head = request.split(b"\r\n\r\n", 1)[0].decode()
    keep = [line for line in head.split("\r\n")[1:] if line[:4].lower() in _KEEP]
    extra = ""
    if tag is not None:
        keep = [line + f";tag={tag}" if line[:3].lower() == "to:" else line for line in keep]
        extra = f"Contact: <sip:pbx@{PBX[0]}:{PBX[1]}>\r\n"
    if body:
        extra += "Content-Type: application/sdp\r\n"
    return (
        "SIP/2.0 200 OK\r\n"
        + "\r\n".join(keep)
        + "\r\n"
        + extra
        + f"Content-Length: {len(body)}\r\n\r\n"
        + body
    ).encode()


def _in_dialog(method: str, ok: bytes, n: int) -> bytes:
    lines = ok.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    routes = [
        v.strip() for line in lines if line.lower().startswith("record-route:") for v in line[13:].split(",")
    ]
    get = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in lines[1:]}
    route = "".join(f"Route: {r}\r\n" for r in routes)
    cseq = 1 if method == "ACK" else 2
    return (
        f"{method} sip:pbx@{PBX[0]}:{PBX[1]} SIP/2.0\r\nVia: SIP/2.0/WSS b.invalid;branch=z9hG4bK{method[0]}{n}\r\n"
        f"Max-Forwards: 70\r\n{route}From: {get['from']}\r\nTo: {get['to']}\r\nCall-ID: {get['call-id']}\r\n"
        f"CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _drain(proxy: SipProxy, to_client: list[bytes] | None = None) -> list[bytes]:
    out = []
    while (action := proxy.next_action()) is not None:
        if isinstance(action, ToBackend):
            out.append(action.data)
        elif isinstance(action, ToFlow) and to_client is not None:
            to_client.append(action.data)
    return out


async def _turn() -> None:
    """Let the loop run what the last message scheduled (endpoint tasks, closes)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


class Setup:
    def __init__(self, tmp: str, extra: str) -> None:
        config = _config(tmp, extra)
        self.timers = Timers(reactor)
        self.relay = MediaRelay(config, reactor, self.timers, tenant_media=lambda _t: "passthrough")  # type: ignore[arg-type]
        self.proxy = SipProxy(
            ProxySettings("127.0.0.1", 443, "127.0.0.1", 5070),
            tenant_for_domain=lambda host: T if host == DOMAIN else None,
            backend_of=lambda _t: ("udp", PBX),
            tenants_at=lambda ip: [T] if ip == PBX[0] else [],
            media=self.relay if MEDIA[0] else None,
            random_bytes=secrets.token_bytes,
        )
        self.flow = self.proxy.open_flow(T, "wss", ("127.0.0.1", 40000), 0.0).id
        self.n = 0

    async def call(self, clock: Callable[[], float] = time.process_time) -> tuple[float, ...]:
        """One call; CPU of: the INVITE's own turn, the loop's work after it (endpoint tasks, pool
        refill), the 200 and the ACK, the tear-down (BYE, its turn, its 200)."""
        self.n += 1
        n = self.n
        proxy, now = self.proxy, self.timers.now()
        t0 = clock()
        proxy.receive_from_client(self.flow, _invite(n), now)
        upstream = _drain(proxy)[0]
        t1 = clock()
        await _turn()
        t2 = clock()
        ok = _answer(upstream, f"p{n}", ANSWER)
        t3 = clock()
        proxy.receive_from_backend(ok, PBX, "udp", now)
        to_client: list[bytes] = []
        _drain(proxy, to_client)
        final = next(d for d in to_client if d.startswith(b"SIP/2.0 200"))
        t4 = clock()
        ack = _in_dialog("ACK", final, n)
        t5 = clock()
        proxy.receive_from_client(self.flow, ack, now)
        _drain(proxy)
        t6 = clock()
        bye = _in_dialog("BYE", final, n)
        t7 = clock()
        proxy.receive_from_client(self.flow, bye, now)
        up = _drain(proxy)[0]
        await _turn()
        t8 = clock()
        ok2 = _answer(up, None)
        t9 = clock()
        proxy.receive_from_backend(ok2, PBX, "udp", now)
        _drain(proxy)
        t10 = clock()
        return (t1 - t0, t2 - t1, (t4 - t3) + (t6 - t5), (t8 - t7) + (t10 - t9))


PARTS = ("INVITE turn", "loop after it", "200 + ACK", "BYE + 200", "total")
CORE_PARTS = ("parse offer", "offer", "parse answer", "answer", "total")


def run_core(count: int) -> list[float]:
    """The media core alone (see the module docstring): CPU us per call by part."""
    from helpers.legports import RecordingPorts

    from mcs_edge.certs import edge_dtls_certificate
    from mcs_edge.core.media.sdp import Profile, SessionDescription
    from mcs_edge.core.media.session import CLIENT, PBX, MediaSession, SessionSettings

    class Ports(RecordingPorts):
        def close(self, leg: object) -> None:
            self.open_ports.pop(leg.port, None)  # type: ignore[attr-defined]
            leg.port = 0  # type: ignore[attr-defined]

    settings = SessionSettings(
        client_host="203.0.113.10",
        pbx_host="10.0.0.5",
        certificate=edge_dtls_certificate(),
        random_bytes=secrets.token_bytes,
    )
    ports = Ports(limit=1 << 30)
    answer_body = ANSWER.encode()
    clock = time.process_time
    sums = [0.0] * 4
    for n in range(200 + count):
        session = MediaSession(f"c{n}", settings, ports, pbx_profile=Profile.PASSTHROUGH)
        offer_body = _offer(n).encode()
        t0 = clock()
        offer = SessionDescription.parse(offer_body)
        t1 = clock()
        if hasattr(session, "offer_body"):
            session.offer_body(CLIENT, offer, 0.0, 1)
        else:  # a tree from before offer_body
            bytes(session.offer(CLIENT, offer, 0.0, 1))
        t2 = clock()
        answer = SessionDescription.parse(answer_body)
        t3 = clock()
        if hasattr(session, "answer_body"):
            session.answer_body(PBX, answer, 0.0)
        else:
            bytes(session.answer(PBX, answer, 0.0))
        t4 = clock()
        session.close()
        if n >= 200:
            for i, x in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                sums[i] += x
    out = [1e6 * x / count for x in sums]
    return [*out, sum(out)]


def run(count: int, extra: str, profile: bool) -> list[float]:
    return asyncio.get_event_loop().run_until_complete(_run(count, extra, profile))


async def _run(count: int, extra: str, profile: bool) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        s = Setup(tmp, extra)
        for _ in range(200):  # warm-up
            await s.call()
        prof = cProfile.Profile() if profile else None
        sums = [0.0] * 4
        if prof:
            prof.enable()
        for _ in range(count):
            for i, x in enumerate(await s.call()):
                sums[i] += x
        if prof:
            prof.disable()
            stats = pstats.Stats(prof)
            stats.sort_stats("cumulative").print_stats(45)
            stats.sort_stats("tottime").print_stats(35)
        assert not s.relay.ports, f"{len(s.relay.ports)} relay ports left open"
        s.relay.stop()
        await _turn()
        out = [1e6 * x / count for x in sums]
        return [*out, sum(out)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--extra", default="", help="more [media] keys / tables of edge.toml")
    ap.add_argument("--no-media", action="store_true", help="the proxy core alone (no media hook)")
    ap.add_argument("--sdp", choices=sorted(SDPS), default="plain", help="offer/answer pair (see above)")
    ap.add_argument("--ports", default="30000-32759", help="relay port range LO-HI")
    ap.add_argument("--core", action="store_true", help="the media core alone (see above)")
    ap.add_argument(
        "--baseline-src",
        default="",
        help="also run the edge from this source tree (e.g. git archive main), alternating with this tree",
    )
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one run, figures as JSON
    args = ap.parse_args()
    MEDIA[0] = not args.no_media
    global OFFER, ANSWER
    OFFER, ANSWER = SDPS[args.sdp]
    VARY[:] = CALL_PORTS[args.sdp]
    PORTS[:] = [int(x) for x in args.ports.split("-")]
    if args.profile:
        run(args.count, args.extra, True)
        return
    if args.json:
        print(json.dumps(run_core(args.count) if args.core else run(args.count, args.extra, False)))
        return
    trees = (
        {"this tree": ""}
        if not args.baseline_src
        else {"baseline": args.baseline_src, "this tree": os.environ.get("BENCH_THIS_SRC", "")}
    )
    results: dict[str, list[list[float]]] = {name: [] for name in trees}
    for _ in range(args.repeat):  # alternate the trees: drift of a shared machine hits both
        for name, src in trees.items():
            results[name].append(_subprocess(src, args))
    print(f"per call, CPU us (best of {args.repeat} by total; {args.count} calls each)")
    print(f"{'':12}" + "".join(f"{p:>15}" for p in (CORE_PARTS if args.core else PARTS)))
    for name, runs in results.items():
        best = min(runs, key=lambda r: r[-1])
        print(f"{name:12}" + "".join(f"{x:15.1f}" for x in best))


def _subprocess(src: str, args: argparse.Namespace) -> list[float]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        __file__,
        "--json",
        "--count",
        str(args.count),
        "--extra",
        args.extra,
        "--sdp",
        args.sdp,
        "--ports",
        args.ports,
    ]
    if args.no_media:
        cmd.append("--no-media")
    if args.core:
        cmd.append("--core")
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return [float(x) for x in json.loads(out.strip().splitlines()[-1])]


if __name__ == "__main__":
    main()
