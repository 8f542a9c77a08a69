"""Which TCP transport the edge's listeners run on, and that SIP over WSS and plain HTTP go through it.

On Twisted's asyncio reactor (``pytest --reactor=asyncio``; uvloop under ``twistd --reactor=uvloop``)
the public listeners are the loop's native streams (tx/native_stream.py); on any other reactor they
are Twisted's ``listenTCP`` ports. The admin listener is Twisted's on both.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest_twisted
from helpers.edge import InProcessEdge, StopAfter, edge_toml, tenant_toml, until
from helpers.pbx import Pbx
from helpers.phone import register_instance
from twisted.internet import reactor, tcp, threads
from twisted.internet.asyncioreactor import AsyncioSelectorReactor

from mcs_edge.tx.native_stream import NativeTCPPort, StreamTransport, native_tcp


def _plain_http(port: int) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": "rossi.example.com"})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


@pytest_twisted.inlineCallbacks
def test_public_listeners_run_on_the_loops_native_streams_on_the_asyncio_reactor(
    tmp_path: Path, stop_after: StopAfter
) -> Any:
    """asyncio reactor: https, sip_tls, http and the PBX's TCP listener are NativeTCPPorts, a WSS REGISTER is answered 200 through a StreamTransport, plain HTTP answers; other reactors: Twisted's ports, same answers."""
    pbx = Pbx()
    edge = InProcessEdge(tmp_path)
    edge.closers.append(pbx.close)
    stop_after(edge)
    edge.start(
        edge_toml(
            edge.state,
            tenant_toml("rossi", pbx.port),
            sip_tls="127.0.0.1:0",
            listen='http = "127.0.0.1:0"\n',
        )
    )
    ports = edge.service.ports
    native = isinstance(reactor, AsyncioSelectorReactor)  # --reactor=asyncio
    assert native_tcp(reactor) is native
    expected = NativeTCPPort if native else tcp.Port
    for name in ("https", "sip_tls", "http"):
        assert isinstance(ports[name], expected), (name, ports[name])
    # the PBX-side TCP listener takes the backend UDP port's number, which another process on this
    # shared machine may hold on TCP (then the edge logs SIP311 and goes on without it)
    if "backend_sip_tcp" in ports:
        assert isinstance(ports["backend_sip_tcp"], expected)
    assert isinstance(ports["admin"], tcp.Port)  # Twisted's on every reactor

    ws = yield threads.deferToThread(edge.client)
    reply = yield threads.deferToThread(register_instance, ws, "rossi.example.com")
    assert reply.startswith("SIP/2.0 200 "), reply
    if native:
        https = ports["https"]
        assert len(https.connections) == 1
        (conn,) = https.connections
        assert isinstance(conn, StreamTransport) and conn.connected
    yield threads.deferToThread(ws.close)
    if native:
        yield until(lambda: not ports["https"].connections)

    status = yield threads.deferToThread(_plain_http, ports["http"].getHost().port)
    assert status in (301, 302, 307, 308), status
