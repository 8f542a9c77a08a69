"""Locating a PBX by name (RFC 3263 s.4, RFC 2782): which records to ask for, in which order to use them.

Theory of operation
-------------------
``backend_sip`` always names its transport (``udp:``, ``tcp:``, ``tls:``), so RFC 3263 s.4.1's
NAPTR step, which only chooses a transport when the URI does not, has nothing to decide: the
lookup starts at s.4.2.

=====================================  ===================================================================
target in backend_sip                  what is looked up (RFC 3263 s.4.2)
=====================================  ===================================================================
IP address, with or without port       nothing; the port defaults to 5060 (udp/tcp) or 5061 (tls)
name with a port                       A (then AAAA when there is no A) of the name, that port
name without a port                    SRV ``_sip._udp`` / ``_sip._tcp`` / ``_sips._tcp`` + name; each
                                       target's A/AAAA in SRV order (RFC 2782 priority, then weighted
                                       random); no SRV records: A/AAAA of the name, default port
=====================================  ===================================================================

The answer is a list of addresses to try in order, valid for the smallest TTL seen on the way,
clamped to ``[min_ttl, max_ttl]``; a name that does not resolve is remembered for ``negative_ttl``
so that requests meanwhile are refused at once (503) instead of waiting for DNS again.
:class:`Located` carries one answer; :func:`order_srv` orders SRV records with injected randomness.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PORTS",
    "Located",
    "SrvRecord",
    "clamp_ttl",
    "default_port",
    "is_ip",
    "order_srv",
    "srv_name",
]

Addr = tuple[str, int]

#: RFC 3261 s.19.1.2: default ports per transport.
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
#: RFC 3263 s.4.2 (with RFC 3261 s.26.2 for sips): the SRV service label per transport.
_SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}


@functools.lru_cache(maxsize=256)
def is_ip(host: str) -> bool:
    """``host`` is an IPv4 or IPv6 address (not a name). Memoised: the router asks it for every
    request toward a PBX, and ``ipaddress.ip_address`` took 2-3% of the edge's CPU at 1,000 INVITE/s
    (the same few PBX addresses each time; the cache is bounded)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def default_port(transport: str) -> int:
    return DEFAULT_PORTS[transport]


def srv_name(transport: str, host: str) -> str:
    return _SRV_PREFIX[transport] + host.rstrip(".")


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str
    ttl: int


def order_srv(records: Sequence[SrvRecord], rand: Callable[[], float]) -> list[SrvRecord]:
    """RFC 2782: lowest priority first; within a priority, weighted random order (weight 0 last)."""
    out: list[SrvRecord] = []
    for prio in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == prio and r.target not in ("", ".")]
        group.sort(key=lambda r: r.weight)  # zero weights first, as RFC 2782 asks, for the running sum
        while group:
            total = sum(r.weight for r in group)
            pick = rand() * total if total else 0.0
            running = 0
            chosen = group[0]
            for r in group:
                running += r.weight
                if running >= pick:
                    chosen = r
                    break
            out.append(chosen)
            group.remove(chosen)
    return out


def clamp_ttl(ttl: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, ttl))


@dataclass(frozen=True, slots=True)
class Located:
    """One answer: the addresses to try in order (empty with ``error`` when the name did not resolve)."""

    addresses: tuple[Addr, ...]
    expires: float
    error: str = ""
    #: the failure may pass (DNS servers did not answer): the last good answer may be served stale
    #: meanwhile (RFC 8767); a name that does not exist (NXDOMAIN) is not transient.
    transient: bool = False

    def fresh(self, now: float) -> bool:
        return now < self.expires
