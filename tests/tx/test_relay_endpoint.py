"""Relay endpoints on the running reactor (epoll: listenUDP; --reactor=asyncio: native datagram endpoints)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet import task

from mcs_edge.tx.relay_endpoint import RelayEndpoints, asyncio_loop_of, bind_socket

reactor: Any = _reactor


def _peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    return sock


def _wait(condition: Any, timeout: float = 5.0) -> Any:
    """A Deferred firing once ``condition()`` is true (polled on the reactor)."""
    deadline = reactor.seconds() + timeout

    def check() -> None:
        if condition():
            loop.stop()
        elif reactor.seconds() > deadline:
            loop.stop()
            raise AssertionError("condition not met in time")

    loop = task.LoopingCall(check)
    return loop.start(0.01)


@pytest_twisted.inlineCallbacks
def test_datagrams_both_ways_and_sendto_works_before_the_endpoint_exists() -> Any:
    """Bound before open() returns; sendto works at once, and so does the sender handed to on_ready at
    once (a TURN client's first ChannelData can come before the loop's endpoint exists); on asyncio
    the loop's own sendto is handed over next."""
    endpoints = RelayEndpoints(reactor)
    got: list[tuple[bytes, Any]] = []
    ready: list[Any] = []
    peer = _peer()
    peer_addr = peer.getsockname()
    endpoint = endpoints.open(
        "127.0.0.1", 0, lambda data, addr: got.append((data, addr)), on_ready=ready.append
    )
    try:
        assert endpoint.port != 0
        endpoint.sendto(b"early", peer.getsockname())  # before the loop's endpoint exists (asyncio)
        assert peer.recvfrom(100)[0] == b"early"
        peer.sendto(b"in", ("127.0.0.1", endpoint.port))
        yield _wait(lambda: got)
        assert got[0] == (b"in", peer.getsockname())
        if asyncio_loop_of(reactor) is not None:
            assert endpoint.native and endpoints.native
            # first the bound socket's sender (at open), then the loop's own sendto (endpoint ready)
            assert len(ready) == 2 and ready[-1] == endpoint.transport.sendto  # type: ignore[union-attr]
            ready[0](b"early out", peer.getsockname())
            assert peer.recvfrom(100)[0] == b"early out"
        else:
            assert not endpoint.native and not endpoints.native
            assert len(ready) == 1
        ready[-1](b"out", peer.getsockname())
        assert peer.recvfrom(100)[0] == b"out"
    finally:
        yield endpoint.close()
        endpoints.close()
        peer.close()
    endpoint.sendto(b"after close", peer_addr)  # a no-op, never an error


@pytest_twisted.inlineCallbacks
def test_a_busy_port_raises_and_a_closed_endpoint_frees_its_port() -> Any:
    endpoints = RelayEndpoints(reactor)
    first = endpoints.open("127.0.0.1", 0, lambda data, addr: None)
    port = first.port
    with pytest.raises(Exception) as info:  # OSError (asyncio) or CannotListenError (listenUDP)
        endpoints.open("127.0.0.1", port, lambda data, addr: None)
    assert "ddress" in str(info.value)  # "Address already in use"
    yield first.close()
    yield _wait(lambda: _free(port))
    again = endpoints.open("127.0.0.1", port, lambda data, addr: None)
    yield again.close()
    endpoints.close()


def _free(port: int) -> bool:
    try:
        bind_socket("127.0.0.1", port).close()
    except OSError:
        return False
    return True


@pytest_twisted.inlineCallbacks
def test_closing_before_the_endpoint_exists_closes_the_socket() -> Any:
    """close() right after open() (asyncio: the endpoint task still pending) leaks no socket."""
    endpoints = RelayEndpoints(reactor)
    endpoint = endpoints.open("127.0.0.1", 0, lambda data, addr: None)
    port = endpoint.port
    yield endpoint.close()
    yield _wait(lambda: _free(port))
    endpoints.close()


def test_reuse_port_lets_two_sockets_share_an_address() -> None:
    """SO_REUSEPORT (worker processes' shared listeners): a second bind succeeds only with it."""
    first = bind_socket("127.0.0.1", 0, reuse_port=True)
    try:
        port = first.getsockname()[1]
        with pytest.raises(OSError):
            bind_socket("127.0.0.1", port).close()
        bind_socket("127.0.0.1", port, reuse_port=True).close()
    finally:
        first.close()


def test_send_errors_are_counted_not_raised() -> None:
    """A datagram the socket refuses (too long for UDP) calls on_error('send'); nothing raises."""
    errors: list[str] = []
    endpoints = RelayEndpoints(reactor)
    endpoint = endpoints.open("127.0.0.1", 0, lambda data, addr: None, on_error=errors.append)
    try:
        endpoint.sendto(bytes(70000), ("127.0.0.1", 9))
        assert errors == ["send"]
    finally:
        endpoint.close()
        endpoints.close()


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
def test_bound_sockets_are_non_blocking_from_creation(kind: int) -> None:
    """``bind_socket`` makes the socket non-blocking (created so, without a separate call), of the
    kind asked, bound where asked."""
    sock = bind_socket("127.0.0.1", 0, kind)
    try:
        assert sock.getblocking() is False and sock.gettimeout() == 0.0
        assert sock.type == kind
        assert sock.getsockname()[0] == "127.0.0.1" and sock.getsockname()[1] > 0
    finally:
        sock.close()
