"""The tenant table: SNI / HTTP Host / URL path prefix / SIP domain -> tenant.

Theory of operation
-------------------
The table is built once from a validated configuration and never changes; a reload builds a new
table and the service swaps the reference whole, so a lookup never sees half a reload.

Names are compared case-insensitively without a trailing dot. A tenant's ``domains`` serve all
three roles (TLS SNI name, HTTP Host and SIP domain). Exact names win over wildcards; a wildcard
``*.example.com`` matches exactly one extra label (``a.example.com``, not ``a.b.example.com`` and
not ``example.com``), as certificate wildcards do. URL path prefixes match on segment boundaries,
the longest prefix winning.

There is no default route: a name that matches nothing returns ``None`` and the caller refuses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["TenantLike", "TenantTable", "normalise_host"]


class TenantLike(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def domains(self) -> tuple[str, ...]: ...

    @property
    def path_prefix(self) -> str | None: ...


T = TypeVar("T", bound=TenantLike)


def normalise_host(name: str | bytes | None) -> str | None:
    """Lower-case ``name``, strip a trailing dot, a ``:port`` and IPv6 brackets; None if empty."""
    if name is None:
        return None
    if isinstance(name, bytes):
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError:
            return None
    name = name.strip().lower()
    if name.startswith("["):
        end = name.find("]")
        if end < 0:
            return None
        name = name[1:end]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    return name or None


class TenantTable(Generic[T]):
    """Immutable name -> tenant lookup."""

    __slots__ = ("_by_id", "_exact", "_prefixes", "_wild")

    def __init__(self, tenants: Iterable[T]) -> None:
        self._by_id: dict[str, T] = {}
        self._exact: dict[str, T] = {}
        self._wild: dict[str, T] = {}
        prefixes: list[tuple[str, T]] = []
        for t in tenants:
            self._by_id[t.id] = t
            for d in t.domains:
                d = d.rstrip(".").lower()
                if d.startswith("*."):
                    self._wild[d[2:]] = t
                else:
                    self._exact[d] = t
            if t.path_prefix:
                prefixes.append((t.path_prefix.rstrip("/"), t))
        prefixes.sort(key=lambda p: len(p[0]), reverse=True)
        self._prefixes = tuple(prefixes)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[T]:
        return iter(self._by_id.values())

    def by_id(self, tenant_id: str) -> T | None:
        return self._by_id.get(tenant_id)

    def by_name(self, name: str | bytes | None) -> T | None:
        """The tenant owning a TLS SNI name, HTTP Host or SIP domain, or None."""
        host = normalise_host(name)
        if host is None:
            return None
        hit = self._exact.get(host)
        if hit is not None:
            return hit
        dot = host.find(".")
        if dot > 0:
            return self._wild.get(host[dot + 1 :])
        return None

    # The three roles share one namespace; the aliases say what the caller means.
    by_sni = by_name
    by_host = by_name
    by_sip_domain = by_name

    def by_path(self, path: str) -> tuple[T, str] | None:
        """(tenant, rest of the path) for the longest matching URL path prefix, or None."""
        for prefix, tenant in self._prefixes:
            if path == prefix:
                return tenant, "/"
            if path.startswith(prefix) and path[len(prefix)] in "/?":
                rest = path[len(prefix) :]
                return tenant, rest if rest.startswith("/") else "/" + rest
        return None

    def owns(self, tenant: T, name: str | bytes | None) -> bool:
        """True when ``name`` belongs to ``tenant`` (the tenancy check on every routing decision)."""
        hit = self.by_name(name)
        return hit is not None and hit.id == tenant.id
