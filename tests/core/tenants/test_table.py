"""Tenant table: names and paths to tenants, exact over wildcard, no default route."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcs_edge.core.tenants import TenantTable
from mcs_edge.core.tenants.table import normalise_host


@dataclass(frozen=True)
class T:
    id: str
    domains: tuple[str, ...]
    path_prefix: str | None = None


ROSSI = T("rossi", ("rossi.example.com", "*.rossi.example.com"), "/rossi")
BIANCHI = T("bianchi", ("bianchi.example.com", "*.example.com"), "/bianchi")
VERDI = T("verdi", ("special.example.com",), "/rossi/verdi")
TABLE = TenantTable([ROSSI, BIANCHI, VERDI])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rossi.example.com", "rossi"),
        ("ROSSI.Example.COM.", "rossi"),
        ("rossi.example.com:8443", "rossi"),
        (b"rossi.example.com", "rossi"),
        ("pbx.rossi.example.com", "rossi"),
        ("special.example.com", "verdi"),  # exact beats the *.example.com wildcard
        ("other.example.com", "bianchi"),  # wildcard
        ("a.b.example.com", None),  # a wildcard covers one label only
        ("example.com", None),
        ("evil.com", None),
        ("", None),
        (None, None),
        (b"\xff\xfe", None),
    ],
)
def test_by_name(name: str | bytes | None, expected: str | None) -> None:
    """SNI/Host/SIP-domain lookup: case-insensitive, exact names win, no default route."""
    hit = TABLE.by_name(name)
    assert (hit.id if hit else None) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/rossi", ("rossi", "/")),
        ("/rossi/app/index.html", ("rossi", "/app/index.html")),
        ("/rossi/verdi/x", ("verdi", "/x")),  # longest prefix wins
        ("/rossix", None),  # segment boundary
        ("/bianchi?x=1", ("bianchi", "/?x=1")),
        ("/", None),
    ],
)
def test_by_path(path: str, expected: tuple[str, str] | None) -> None:
    """URL path prefixes match on segment boundaries, longest first."""
    hit = TABLE.by_path(path)
    assert (None if hit is None else (hit[0].id, hit[1])) == expected


def test_owns_is_the_tenancy_check() -> None:
    """A tenant owns its names and not another tenant's."""
    assert TABLE.owns(ROSSI, "x.rossi.example.com")
    assert not TABLE.owns(ROSSI, "bianchi.example.com")
    assert not TABLE.owns(ROSSI, "nowhere.invalid")


def test_ipv6_host_header() -> None:
    """A bracketed IPv6 Host with a port normalises to the bare address."""
    assert normalise_host("[::1]:8443") == "::1"
    assert TenantTable([T("v6", ("::1",))]).by_host("[::1]:8443") is not None


@given(st.text(max_size=300))
def test_lookup_never_raises(name: str) -> None:
    """Any text as a name returns a tenant or None, never an exception."""
    TABLE.by_name(name)
    TABLE.by_path("/" + name)
