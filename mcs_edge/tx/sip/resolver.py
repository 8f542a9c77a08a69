"""PBX names in ``backend_sip`` resolved with twisted.names, never blocking the reactor.

Theory of operation
-------------------
:class:`BackendResolver` answers "where is this tenant's PBX" with a
:class:`~mcs_edge.core.sip.locate.Located` (addresses in the order RFC 3263 s.4.2 gives, an expiry
from the records' TTLs clamped to ``[dns.min_ttl, dns.max_ttl]``). Queries go to ``dns.servers``
(or the ``nameserver`` lines of /etc/resolv.conf, after /etc/hosts) through a
``twisted.names.client.Resolver``; answers are cached here, one query in flight per name.

* The router sends UDP toward the first address (``locate``: from the cache when fresh, so a
  retransmission costs no lookup) and refuses requests with 503 while the name does not resolve;
* ``tx/sip/backend.py`` connects its tcp:/tls: link to the first address (``resolve``);
* every second :meth:`refresh` re-resolves the entries that expired, for every named tenant, so
  requests *from* a PBX are matched against its current addresses (``addresses``); a change
  calls ``on_change`` (the router re-indexes PBX addresses, links whose peer moved reconnect).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.error import DNSLookupError
from twisted.logger import Logger
from twisted.names import client, dns, hosts, resolve
from twisted.names.error import DNSNameError, DNSQueryTimeoutError, DomainError

from mcs_edge.core.sip.locate import Located, SrvRecord, clamp_ttl, default_port, is_ip, order_srv, srv_name

if TYPE_CHECKING:
    from mcs_edge.config import Backend, EdgeConfig, TenantConfig
    from mcs_edge.tx.timers import Timers

__all__ = ["BackendResolver", "make_resolver"]

Addr = tuple[str, int]
Key = tuple[str, str, int]
# Tries (seconds each) of one DNS query: a dead DNS server fails a name in 3 s, not twisted's 60.
_QUERY_TIMEOUT = (1, 2)


def make_resolver(config: EdgeConfig, reactor: Any, timeout: tuple[int, ...] = _QUERY_TIMEOUT) -> Any:
    """A twisted.names resolver for ``dns.servers``, or /etc/hosts then /etc/resolv.conf's servers."""
    servers = [(hp.host, hp.port) for hp in config.dns.servers]
    if servers:
        return client.Resolver(servers=servers, timeout=timeout, reactor=reactor)
    system = client.Resolver(servers=_resolv_conf() or [("127.0.0.1", 53)], timeout=timeout, reactor=reactor)
    return resolve.ResolverChain([hosts.Resolver(), system])


def _resolv_conf(path: str = "/etc/resolv.conf") -> list[Addr]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and is_ip(parts[1]):
            out.append((parts[1], 53))
    return out


class BackendResolver:
    """See the module docstring."""

    log = Logger()

    def __init__(
        self,
        config: EdgeConfig,
        timers: Timers,
        resolver: Any,
        rand: Callable[[], float] = random.random,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_change``: called after an answer changed the addresses of a name."""
        self.config = config
        self.timers = timers
        self.resolver = resolver
        self.rand = rand
        self.cache: dict[Key, Located] = {}
        self._inflight: dict[Key, defer.Deferred[Located]] = {}
        self.counters: dict[tuple[str, str], int] = {}
        self.on_change = on_change
        self._failing: set[Key] = set()

    @staticmethod
    def key(backend: Backend) -> Key:
        return (backend.transport, backend.host, backend.port)

    @staticmethod
    def needs_lookup(backend: Backend) -> bool:
        return not is_ip(backend.host)

    def addresses(self, backend: Backend) -> tuple[Addr, ...]:
        """The last known addresses (possibly stale) of a named backend; () before its first answer."""
        located = self.cache.get(self.key(backend))
        return located.addresses if located is not None else ()

    def locate(self, backend: Backend) -> defer.Deferred[Located]:
        """The addresses of ``backend`` (fires at once from a fresh cache entry)."""
        if not self.needs_lookup(backend):
            port = backend.port or default_port(backend.transport)
            return defer.succeed(Located(((backend.host, port),), float("inf")))
        key = self.key(backend)
        located = self.cache.get(key)
        if located is not None and located.fresh(self.timers.now()):
            return defer.succeed(located)
        pending = self._inflight.get(key)
        if pending is None:
            pending = self._inflight[key] = self._query(backend)
            pending.addBoth(self._done, key, backend)
        out: defer.Deferred[Located] = defer.Deferred()

        def fan_out(result: Located) -> Located:
            out.callback(result)
            return result

        pending.addCallback(fan_out)
        return out

    def resolve(self, tenant: TenantConfig, backend: Backend) -> defer.Deferred[Addr]:
        """The first address of ``backend`` (for a connection); fails with DNSLookupError."""

        def first(located: Located) -> Addr:
            if not located.addresses:
                raise DNSLookupError(located.error or f"{backend.host} does not resolve")
            return located.addresses[0]

        return self.locate(backend).addCallback(first)

    def refresh(self, backends: Iterable[Backend]) -> None:
        """Re-resolve every named backend whose answer expired (or was never asked)."""
        now = self.timers.now()
        for backend in backends:
            if not self.needs_lookup(backend):
                continue
            located = self.cache.get(self.key(backend))
            if located is None or not located.fresh(now):
                self.locate(backend)

    def update(self, config: EdgeConfig) -> None:
        """Adopt a reloaded configuration (``sip.*`` resolver settings are read at use)."""
        self.config = config

    def forget(self, keep: Iterable[Backend]) -> None:
        """Drop answers for names no tenant uses any more."""
        wanted = {self.key(b) for b in keep}
        for key in list(self.cache):
            if key not in wanted:
                del self.cache[key]
                self._failing.discard(key)

    # -- internals
    def _done(self, outcome: Any, key: Key, backend: Backend) -> Located:
        result: Located
        self._inflight.pop(key, None)
        if isinstance(outcome, Located):
            result = outcome
        else:  # an unexpected failure: treated as "does not resolve"
            result = Located((), self.timers.now() + self.config.dns.negative_ttl, _text(outcome))
        old = self.cache.get(key)
        if not result.addresses and result.transient and old is not None and old.addresses:
            # RFC 8767 serve-stale: DNS did not answer; keep the last good addresses, ask again soon
            self.log.warn(
                "SIP412 PBX name {name} ({transport}): {reason}; keeping {addresses} meanwhile",
                name=backend.host,
                transport=backend.transport,
                reason=result.error,
                addresses=" ".join(f"{h}:{p}" for h, p in old.addresses),
            )
            self.counters[("stale", key[1])] = self.counters.get(("stale", key[1]), 0) + 1
            result = Located(old.addresses, result.expires, result.error)
        self.cache[key] = result
        if not result.addresses:
            self.counters[("failed", key[1])] = self.counters.get(("failed", key[1]), 0) + 1
            if key not in self._failing:
                self._failing.add(key)
                self.log.warn(
                    "SIP411 PBX name {name} ({transport}) does not resolve: {reason}",
                    name=backend.host,
                    transport=backend.transport,
                    reason=result.error,
                )
        else:
            self.counters[("resolved", key[1])] = self.counters.get(("resolved", key[1]), 0) + 1
            if key in self._failing or old is None or old.addresses != result.addresses:
                self._failing.discard(key)
                self.log.info(
                    "SIP211 PBX name {name} ({transport}) resolves to {addresses}",
                    name=backend.host,
                    transport=backend.transport,
                    addresses=" ".join(f"{h}:{p}" for h, p in result.addresses),
                )
        if old is None or old.addresses != result.addresses:
            self.on_change()
        return result

    @defer.inlineCallbacks
    def _query(self, backend: Backend) -> Any:
        dns_cfg = self.config.dns
        transport, host, port = backend.transport, backend.host, backend.port
        ttls: list[float] = []
        errors: list[str] = []
        transient = False
        targets: list[Addr] = []
        if port == 0:  # RFC 3263 s.4.2: SRV for the transport, else the name itself on the default port
            records: list[SrvRecord] = []
            try:
                answers, _authority, _additional = yield self.resolver.lookupService(
                    srv_name(transport, host)
                )
                for rr in answers:
                    if rr.type == dns.SRV:
                        p = rr.payload
                        records.append(
                            SrvRecord(p.priority, p.weight, p.port, str(p.target).rstrip("."), rr.ttl)
                        )
            except (DNSNameError, DomainError):
                pass  # no SRV: the name itself
            except DNSQueryTimeoutError:
                errors.append("SRV query timed out")
                transient = True
            except Exception as exc:
                errors.append(f"SRV: {_text(exc)}")
                transient = True
            if transient:
                targets = []  # no fallback to the bare name when the SRV question got no answer
            elif records:
                ttls.append(min(r.ttl for r in records))
                targets = [(r.target, r.port) for r in order_srv(records, self.rand)]
            else:
                targets = [(host, default_port(transport))]
        else:
            targets = [(host, port)]
        addresses: list[Addr] = []
        for name, target_port in targets:
            if is_ip(name):
                addresses.append((name, target_port))
                continue
            try:
                ips, ttl = yield self._address_records(name)
            except DNSLookupError as exc:
                errors.append(str(exc))
                continue
            except Exception as exc:  # timeouts, refused: the DNS servers may come back
                errors.append(f"{name}: {_text(exc)}")
                transient = True
                continue
            ttls.append(ttl)
            addresses.extend((ip, target_port) for ip in ips if (ip, target_port) not in addresses)
        now = self.timers.now()
        if not addresses:
            error = "; ".join(errors) or f"no address for {host}"
            return Located((), now + dns_cfg.negative_ttl, error, transient=transient)
        ttl = clamp_ttl(min(ttls) if ttls else dns_cfg.max_ttl, dns_cfg.min_ttl, dns_cfg.max_ttl)
        return Located(tuple(addresses), now + ttl)

    @defer.inlineCallbacks
    def _address_records(self, name: str) -> Any:
        """(IPs, smallest TTL) of ``name``: A records, else AAAA."""
        for lookup, rtype in (
            (self.resolver.lookupAddress, dns.A),
            (self.resolver.lookupIPV6Address, dns.AAAA),
        ):
            try:
                answers, _authority, _additional = yield lookup(name)
            except (DNSNameError, DomainError) as exc:
                if rtype == dns.AAAA:
                    raise DNSLookupError(f"{name}: {_text(exc)}") from None
                continue
            found = [rr for rr in answers if rr.type == rtype]
            if found:
                return [rr.payload.dottedQuad() for rr in found] if rtype == dns.A else [
                    _v6(rr.payload.address) for rr in found
                ], min(rr.ttl for rr in found)
        raise DNSLookupError(f"{name}: no A or AAAA record")


def _v6(packed: bytes) -> str:
    import ipaddress

    return str(ipaddress.IPv6Address(packed))


def _text(value: Any) -> str:
    exc = getattr(value, "value", value)
    name = type(exc).__name__
    text = str(exc)
    return (f"{name}: {text}" if text else name)[:200]
