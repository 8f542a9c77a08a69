"""Worker pieces in one process: per-worker configuration, SO_REUSEPORT listeners, merged metrics."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path
from typing import Any

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from mcs_edge import config as c
from mcs_edge.tx.ops.metrics import merge_expositions
from mcs_edge.tx.ops.workers import ReusePortReactor, parse_shared_ports, reactor_name, worker_config

TEXT = """
[edge]
state_dir = "{state}"
workers = 3
[listen]
https = "0.0.0.0:443"
backend_sip = "10.0.0.5:5060"
admin = "127.0.0.1:9090"
[media]
ports = [10000, 10999]
"""


def test_worker_config_gives_each_worker_its_backend_port_media_slice_and_local_admin(tmp_path: Path) -> None:
    """Worker i: backend_sip port + i, the i-th slice of media.ports, admin on loopback port 0, shared https kept."""
    cfg = c.loads(TEXT.format(state=tmp_path))
    w = [worker_config(cfg, i) for i in range(3)]
    assert [x.listen.backend_sip.port for x in w] == [5060, 5061, 5062]
    assert [x.listen.backend_sip.host for x in w] == ["10.0.0.5"] * 3
    slices = [x.media.ports for x in w]
    assert slices[0][0] == 10000 and slices[-1][1] == 10999
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(slices))
    assert all(x.listen.admin == c.HostPort("127.0.0.1", 0) for x in w)
    assert all(x.listen.https == cfg.listen.https for x in w)
    shared = worker_config(cfg, 1, parse_shared_ports("https=8443,bogus=1,http=x"))
    assert shared.listen.https == c.HostPort("0.0.0.0", 8443)


class _Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(self.factory.tag)  # type: ignore[attr-defined]
        self.transport.loseConnection()


def _fetch(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        data = b""
        while chunk := s.recv(100):
            data += chunk
        return data


@pytest_twisted.inlineCallbacks
def test_reuse_port_reactor_lets_two_listeners_share_an_address() -> Any:
    """Two listenTCP/listenUDP on one shared address both bind (SO_REUSEPORT); others stay ordinary."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proxy = ReusePortReactor(reactor, {("127.0.0.1", port)})
    assert reactor_name(proxy) == reactor_name(reactor)
    ports = []
    try:
        for tag in (b"a", b"b"):
            f = Factory.forProtocol(_Hello)
            f.tag = tag  # type: ignore[attr-defined]
            ports.append(proxy.listenTCP(port, f, interface="127.0.0.1"))
        ports.append(proxy.listenUDP(port, DatagramProtocol(), interface="127.0.0.1"))
        ports.append(proxy.listenUDP(port, DatagramProtocol(), interface="127.0.0.1"))
        assert {p.getHost().port for p in ports} == {port}
        from twisted.internet import threads

        got = yield threads.deferToThread(_fetch, port)
        assert got in (b"a", b"b")
        plain = proxy.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        ports.append(plain)
        assert plain.getHost().port != port
    finally:
        for p in ports:
            yield p.stopListening()


def test_merge_expositions_sums_counters_and_gauges_but_takes_the_minimum_expiry() -> None:
    """Two workers' /metrics merge: connections and counters add up, certificate expiry is the minimum."""
    w0 = (
        '# HELP mcs_edge_connections x\n# TYPE mcs_edge_connections gauge\nmcs_edge_connections{tenant="a",transport="wss"} 2\n'
        "# HELP mcs_edge_calls_started x\n# TYPE mcs_edge_calls_started counter\nmcs_edge_calls_started_total 5\n"
        '# HELP mcs_edge_certificate_expiry_timestamp_seconds x\n# TYPE mcs_edge_certificate_expiry_timestamp_seconds gauge\nmcs_edge_certificate_expiry_timestamp_seconds{tenant="a",domain="a.x"} 200\n'
    )
    w1 = w0.replace("} 2\n", "} 3\n").replace("_total 5", "_total 7").replace("} 200", "} 100")
    w1 += '# HELP mcs_edge_connections x\n# TYPE mcs_edge_connections gauge\nmcs_edge_connections{tenant="b",transport="tls"} 1\n'
    out = merge_expositions([w0, w1]).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(out)
        for s in fam.samples
    }
    assert samples[("mcs_edge_connections", (("tenant", "a"), ("transport", "wss")))] == 5
    assert samples[("mcs_edge_connections", (("tenant", "b"), ("transport", "tls")))] == 1
    assert samples[("mcs_edge_calls_started_total", ())] == 12
    assert (
        samples[("mcs_edge_certificate_expiry_timestamp_seconds", (("domain", "a.x"), ("tenant", "a")))]
        == 100
    )
