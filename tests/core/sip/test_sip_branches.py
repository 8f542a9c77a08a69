"""Branches of our Vias (RFC 3261 s.8.1.1.7, s.16.6 step 8): the magic cookie and 80 bits from the
random source, never the same twice, drawn 64 at a time (one call of the source per 64)."""

from __future__ import annotations

import re
import secrets

from mcs_edge.core.sip.proxy import ProxySettings
from mcs_edge.core.sip.routing import Routing

SETTINGS = ProxySettings("edge.example.com", 443, "10.0.0.1", 5060)


def test_branches_are_the_cookie_and_80_bits_of_the_source_in_order() -> None:
    draws: list[int] = []
    stream = bytearray()

    def source(n: int) -> bytes:
        draws.append(n)
        chunk = secrets.token_bytes(n)
        stream.extend(chunk)
        return chunk

    routing = Routing(SETTINGS, lambda _host: None, source)
    branches = [routing.new_branch() for _ in range(200)]
    assert draws == [640] * 4  # 200 branches: four draws of 64 branches' worth
    assert all(re.fullmatch(r"z9hG4bK[0-9a-f]{20}", b) for b in branches)
    assert len(set(branches)) == 200
    # every branch is 10 bytes of the source at its own place in the stream (none used twice)
    slices = [stream[i : i + 10].hex() for i in range(0, len(stream), 10)]
    assert len(slices) == 256 and set(b[7:] for b in branches) <= set(slices)


def test_a_proxy_never_repeats_a_branch() -> None:
    routing = Routing(SETTINGS, lambda _host: None, secrets.token_bytes)
    seen = {routing.new_branch() for _ in range(5000)}
    assert len(seen) == 5000
