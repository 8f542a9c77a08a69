"""CPU of the sans-IO SIP proxy core alone, per transaction: parse, route, edit, serialise.

No sockets, no TLS, no WebSocket: the core is fed the bytes the adapters would feed it (the
REGISTER and INVITE of ``bench_sip.py``, the PBX's answers, the ACK) and its actions are drained
and thrown away, so the figure is the part of the edge's per-transaction cost that lives in
``mcs_edge/core/sip`` (the rest is TLS, WebSocket framing and the reactor: ``bench_sip.py``).
Process CPU time (``time.process_time``), best of ``--repeat`` runs: stable on a shared machine.
The part spent on the PBX's 200 (parse, match, relay toward the client) is printed beside the total.

    .venv/bin/python bench/bench_sip_core.py [--count 20000] [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

import _common  # noqa: F401 (puts tests/ on sys.path)
from helpers.sipcore import Tenant, one_tenant_proxy

from mcs_edge.core.sip.proxy import ProxySettings, SipProxy, ToBackend, ToFlow

PBX = ("127.0.0.1", 5060)
DOMAIN = "bench.example.com"


T = Tenant("bench")


def _proxy() -> SipProxy:
    return one_tenant_proxy(T, DOMAIN, PBX, ProxySettings("127.0.0.1", 443, "127.0.0.1", 5070))


def _register(i: int, seq: int) -> bytes:
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS c{i}.invalid;branch=z9hG4bKr{seq}x{i}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:u{i}@{DOMAIN}>;tag=t{i}\r\nTo: <sip:u{i}@{DOMAIN}>\r\n"
        f"Call-ID: r{i}\r\nCSeq: {seq} REGISTER\r\nContact: <sip:u{i}@c{i}.invalid;transport=ws>;expires=600\r\n"
        "Supported: path, outbound\r\nUser-Agent: bench\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _invite(i: int, n: int) -> bytes:
    return (
        f"INVITE sip:pbx@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS c{i}.invalid;branch=z9hG4bKi{n}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:u{i}@{DOMAIN}>;tag=t{i}\r\nTo: <sip:pbx@{DOMAIN}>\r\n"
        f"Call-ID: c{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:u{i}@c{i}.invalid;transport=ws;ob>\r\n"
        "Supported: outbound\r\nUser-Agent: bench\r\nContent-Length: 0\r\n\r\n"
    ).encode()


_KEEP = ("via:", "from", "to: ", "call", "cseq", "reco")


def _answer(request: bytes, tag: str | None) -> bytes:
    """The PBX's 200 (same rules as bench_sip's responder)."""
    head = request.split(b"\r\n\r\n", 1)[0].decode()
    keep = [line for line in head.split("\r\n")[1:] if line[:4].lower() in _KEEP]
    extra = ""
    if tag is not None:
        keep = [line + f";tag={tag}" if line[:3].lower() == "to:" else line for line in keep]
        extra = f"Contact: <sip:pbx@{PBX[0]}:{PBX[1]}>\r\n"
    return ("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\n" + extra + "Content-Length: 0\r\n\r\n").encode()


def _ack(ok: bytes, i: int, n: int) -> bytes:
    lines = ok.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    routes = [
        v.strip() for line in lines if line.lower().startswith("record-route:") for v in line[13:].split(",")
    ]
    get = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in lines[1:]}
    route = "".join(f"Route: {r}\r\n" for r in reversed(routes))
    return (
        f"ACK sip:pbx@{PBX[0]}:{PBX[1]} SIP/2.0\r\nVia: SIP/2.0/WSS c{i}.invalid;branch=z9hG4bKa{n}\r\n"
        f"Max-Forwards: 70\r\n{route}From: {get['from']}\r\nTo: {get['to']}\r\nCall-ID: {get['call-id']}\r\n"
        "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _drain(proxy: SipProxy) -> list[bytes]:
    out = []
    while (action := proxy.next_action()) is not None:
        if isinstance(action, ToBackend):
            out.append(action.data)
        elif isinstance(action, ToFlow):
            pass
    return out


def run(method: str, count: int) -> tuple[float, float]:
    """CPU microseconds per transaction of ``method``: in all, and of that the PBX's answer (the
    200 received from the backend, matched and relayed to the client)."""
    proxy = _proxy()
    flows = [proxy.open_flow(T, "wss", ("127.0.0.1", 40000 + i), 0.0).id for i in range(50)]
    now = 1.0
    # pre-built client messages (the generator's cost is not the core's)
    if method == "REGISTER":
        requests = [_register(k % 50, 2 + k // 50) for k in range(count)]
    else:
        requests = [_invite(k % 50, k) for k in range(count)]
    clock = time.process_time
    spent = 0.0  # only the core's calls are timed, not the building of the peers' messages
    answers = 0.0
    for k, data in enumerate(requests):
        now += 0.001
        i = k % 50
        t0 = clock()
        proxy.receive_from_client(flows[i], data, now)
        sent = _drain(proxy)
        spent += clock() - t0
        upstream = next(d for d in sent if not d.startswith(b"SIP/"))
        if method == "REGISTER":
            answer = _answer(upstream, None)
            t0 = clock()
            proxy.receive_from_backend(answer, PBX, "udp", now)
            _drain(proxy)
            answers += clock() - t0
            spent += clock() - t0
        else:
            ok = _answer(upstream, f"p{k}")
            t0 = clock()
            proxy.receive_from_backend(ok, PBX, "udp", now)
            to_client = _collect_to_flow(proxy)
            answers += clock() - t0
            spent += clock() - t0
            # the client's ACK follows the route set the 200 carried to the client
            for response in to_client:
                ack = _ack(response, i, k)
                t0 = clock()
                proxy.receive_from_client(flows[i], ack, now)
                _drain(proxy)
                spent += clock() - t0
        if k % 1000 == 0:
            t0 = clock()
            proxy.handle_timer(now)
            _drain(proxy)
            spent += clock() - t0
    return 1e6 * spent / count, 1e6 * answers / count


def _collect_to_flow(proxy: SipProxy) -> list[bytes]:
    out = []
    while (action := proxy.next_action()) is not None:
        if isinstance(action, ToFlow) and action.data.startswith(b"SIP/2.0 200"):
            out.append(action.data)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    for method in ("REGISTER", "INVITE"):
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            run(method, args.count)
            prof.disable()
            pstats.Stats(prof).sort_stats(os.environ.get("SORT", "tottime")).print_stats(
                int(os.environ.get("ROWS", "25"))
            )
            continue
        best, answer = min(run(method, args.count) for _ in range(args.repeat))
        note = "(INVITE + 200 + ACK)" if method == "INVITE" else "(REGISTER + 200)"
        print(
            f"core {method:8} {best:7.1f} us CPU per transaction {note}, of which the PBX's 200 "
            f"{answer:5.1f} us; best of {args.repeat}"
        )


if __name__ == "__main__":
    main()
