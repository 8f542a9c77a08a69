"""CPU of one call set-up with media, in process: the SIP proxy core with the media relay as its hook.

The INVITE (plain RTP offer, as ``bench_latency.py``'s generator sends it) from a WSS client, the
PBX's 200 with its SDP answer, the client's ACK, the BYE and its 200: each fed to the sans-IO core
as the adapters would, with :class:`~mcs_edge.tx.media.relay.MediaRelay` (tenant ``media =
"passthrough"``) binding the relay ports on Twisted's asyncio reactor over uvloop (as in
production), and the loop run once after each message so the datagram endpoints are created and
closed inside the measured time. No TLS, no WebSocket, no UDP of the SIP messages
(``bench_latency.py`` / ``bench_sip.py`` measure those). Process CPU time, best of ``--repeat``.

    .venv/bin/python bench/bench_call_setup.py [--count 2000] [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import secrets
import tempfile
import time

import _common  # noqa: F401 (puts tests/ on sys.path)

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
_KEEP = ("via:", "from", "to: ", "call", "cseq", "reco")


def _config(tmp: str, extra: str) -> object:
    return loads(
        f'[edge]\nstate_dir = "{tmp}"\npublic_address = "127.0.0.1"\nbackend_address = "127.0.0.1"\n'
        '[listen]\nhttps = "127.0.0.1:0"\nsip_tls = "off"\nbackend_sip = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
        f'[media]\nbind = "127.0.0.1"\nports = [30000, 39999]\n{extra}'
        f'[[tenants]]\nid = "bench"\ndomains = ["{DOMAIN}"]\nbackend_sip = "udp:127.0.0.1:5060"\n'
        'certificate = "self-signed"\nmedia = "passthrough"\n'
    )


def _invite(n: int) -> bytes:
    return (
        f"INVITE sip:200@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS b.invalid;branch=z9hG4bKi{n}\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:200@{DOMAIN}>\r\nFrom: <sip:gen@{DOMAIN}>;tag=g{n}\r\n"
        f"Call-ID: c{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:gen@b.invalid;transport=ws;ob>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(OFFER)}\r\n\r\n{OFFER}"
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

    async def call(self, clock=time.process_time) -> tuple[float, float]:
        """One call: set-up CPU (INVITE, 200, ACK) and tear-down CPU (BYE, 200)."""
        self.n += 1
        n = self.n
        proxy, now = self.proxy, self.timers.now()
        t0 = clock()
        proxy.receive_from_client(self.flow, _invite(n), now)
        upstream = _drain(proxy)[0]
        await _turn()
        t1 = clock()
        ok = _answer(upstream, f"p{n}", ANSWER)
        t2 = clock()
        proxy.receive_from_backend(ok, PBX, "udp", now)
        to_client: list[bytes] = []
        _drain(proxy, to_client)
        final = next(d for d in to_client if d.startswith(b"SIP/2.0 200"))
        t3 = clock()
        ack = _in_dialog("ACK", final, n)
        t4 = clock()
        proxy.receive_from_client(self.flow, ack, now)
        _drain(proxy)
        t5 = clock()
        setup = (t1 - t0) + (t3 - t2) + (t5 - t4)
        bye = _in_dialog("BYE", final, n)
        t6 = clock()
        proxy.receive_from_client(self.flow, bye, now)
        up = _drain(proxy)[0]
        await _turn()
        t7 = clock()
        ok2 = _answer(up, None)
        t8 = clock()
        proxy.receive_from_backend(ok2, PBX, "udp", now)
        _drain(proxy)
        t9 = clock()
        return setup, (t7 - t6) + (t9 - t8)


def run(count: int, extra: str, profile: bool) -> tuple[float, float]:
    return asyncio.get_event_loop().run_until_complete(_run(count, extra, profile))


async def _run(count: int, extra: str, profile: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        s = Setup(tmp, extra)
        for _ in range(200):  # warm-up
            await s.call()
        prof = cProfile.Profile() if profile else None
        setup = teardown = 0.0
        if prof:
            prof.enable()
        for _ in range(count):
            a, b = await s.call()
            setup += a
            teardown += b
        if prof:
            prof.disable()
            stats = pstats.Stats(prof)
            stats.sort_stats("cumulative").print_stats(45)
            stats.sort_stats("tottime").print_stats(35)
        assert not s.relay.ports, f"{len(s.relay.ports)} relay ports left open"
        s.relay.stop()
        await _turn()
        return 1e6 * setup / count, 1e6 * teardown / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--extra", default="", help="more [media] keys / tables of edge.toml")
    ap.add_argument("--no-media", action="store_true", help="the proxy core alone (no media hook)")
    args = ap.parse_args()
    MEDIA[0] = not args.no_media
    if args.profile:
        run(args.count, args.extra, True)
        return
    best = min((run(args.count, args.extra, False) for _ in range(args.repeat)), key=sum)
    print(f"per call, CPU us: set-up (INVITE, 200, ACK) {best[0]:.1f}, tear-down (BYE, 200) {best[1]:.1f}")


if __name__ == "__main__":
    main()
