"""``edge.toml`` -> one frozen, validated configuration tree.

Theory of operation
-------------------
Every section of the file is a frozen dataclass below. Each field carries, in its metadata, a
*converter*: a function ``(value, path) -> typed value`` that raises :class:`ConfigError` naming the
key path (``tenants[2].backend_sip``) and the reason. :func:`load` walks the TOML tables against
these dataclasses, rejects unknown keys, applies defaults (which live only here, in the schema),
collects *every* error, then runs the cross-field checks (unique tenant ids and domains, at most
250 tenants, default tenant exists, ACME settings present when a tenant uses ACME...). The result is
immutable: a reload builds a new :class:`EdgeConfig` and swaps it whole.

Adding a key is one field with a converter and a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mcs_edge.errors import ConfigError, ConfigErrors

__all__ = [
    "MAX_TENANTS",
    "AcmeConfig",
    "AdminConfig",
    "Backend",
    "BackendTlsConfig",
    "DnsConfig",
    "EdgeConfig",
    "EdgeSection",
    "GuardConfig",
    "HostPort",
    "LimitsConfig",
    "ListenConfig",
    "MediaConfig",
    "OverloadConfig",
    "ProxyConfig",
    "ShapingConfig",
    "SipConfig",
    "TenantConfig",
    "TenantTunnelConfig",
    "TlsConfig",
    "TunnelConfig",
    "TurnConfig",
    "embedded_default",
    "load",
    "loads",
    "parse_host_port",
]

MAX_TENANTS = 250

T = TypeVar("T")
Converter = Callable[[Any, str], Any]


# ---------------------------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostPort:
    """A ``host:port`` address; ``host`` is an IP literal or a DNS name (no brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Backend:
    """A tenant's PBX: ``transport`` is ``udp``, ``tcp`` or ``tls``; ``port`` 0 = a name located by SRV."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        if self.port == 0:
            return f"{self.transport}:{self.host}"
        return f"{self.transport}:{HostPort(self.host, self.port)}"


# Every pattern below is applied with ``fullmatch`` (never ``match`` with ``$``, which also accepts a
# trailing newline).
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_TENANT_ID_RE = re.compile(r"[a-z0-9-]{1,32}")
_VISIBLE_RE = re.compile(r"[\x21-\x7e]+")
_URL_PREFIX_RE = re.compile(r"/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _no_control(value: str, path: str) -> None:
    """No configuration string holds a control character (CR/LF would end a header or a line)."""
    if _CONTROL_RE.search(value):
        raise ConfigError(path, "contains a control character (newline, tab, NUL...)")


def _is_ip(text: str) -> bool:
    if not isinstance(text, str) or not _VISIBLE_RE.fullmatch(text):
        return False  # ipaddress accepts any scope id after '%', control characters included
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_host_port(text: str, path: str = "", allow_zero: bool = False) -> HostPort:
    """Parse ``host:port`` / ``[v6]:port``; raise :class:`ConfigError` naming ``path``.

    ``allow_zero`` admits port 0 (listeners only: "any free port", used by tests).
    """
    if not isinstance(text, str) or not text:
        raise ConfigError(path, f"{text!r} is not a host:port address")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ConfigError(path, f"{text!r} is not a [IPv6]:port address")
        host, port_text = text[1:end], text[end + 2 :]
        if not _is_ip(host) or ":" not in host:
            raise ConfigError(path, f"{host!r} is not an IPv6 address")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(path, f"{text!r} is not a host:port address (missing port)")
        if ":" in host:
            raise ConfigError(path, f"{text!r}: write IPv6 addresses as [addr]:port")
        if not (_is_ip(host) or _HOSTNAME_RE.fullmatch(host)):
            raise ConfigError(path, f"{host!r} is not a valid host name or IP address")
    if not _PORT_RE.fullmatch(port_text):  # str.isdigit() also takes non-ASCII digits
        raise ConfigError(path, f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ConfigError(path, f"{text!r}: port {port} out of range 1-65535")
    return HostPort(host, port)


# ---------------------------------------------------------------------------------------------
# Converters
# ---------------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


def c_str(max_len: int = 4096, pattern: re.Pattern[str] | None = None, what: str = "") -> Converter:
    def conv(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {_type_name(value)}")
        if len(value) > max_len:
            raise ConfigError(path, f"longer than {max_len} characters")
        _no_control(value, path)
        if pattern is not None and not pattern.fullmatch(value):
            raise ConfigError(path, f"{value!r} is not {what or 'valid'}")
        return value

    return conv


def c_secret(min_len: int = 8) -> Converter:
    def conv(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {_type_name(value)}")
        if len(value) < min_len:
            # never echo the secret itself
            raise ConfigError(path, f"too short: at least {min_len} characters")
        _no_control(value, path)
        return value

    return conv


def _within(value: float, path: str, lo: float | None, hi: float | None) -> None:
    """The range check shared by ``c_int`` and ``c_float``."""
    if lo is not None and value < lo:
        raise ConfigError(path, f"{value} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(path, f"{value} is above the maximum {hi}")


def _or_zero(within: Converter, zero: int | float) -> Converter:
    """``within``, or 0 (returned as ``zero``); a refusal says "(or 0)"."""

    def conv(value: Any, path: str) -> Any:
        if value == 0 and not isinstance(value, bool):
            return zero
        try:
            return within(value, path)
        except ConfigError as exc:
            raise ConfigError(path, f"{exc.reason} (or 0)") from None

    return conv


def c_int(lo: int | None = None, hi: int | None = None) -> Converter:
    def conv(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {_type_name(value)}")
        _within(value, path, lo, hi)
        return value

    return conv


def c_int_or_zero(lo: int, hi: int) -> Converter:
    """An integer in ``[lo, hi]``, or 0 (meaning "derived" or "off", as the key's doc says)."""
    return _or_zero(c_int(lo, hi), 0)


def c_float(lo: float | None = None, hi: float | None = None) -> Converter:
    def conv(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {_type_name(value)}")
        if value != value:  # NaN
            raise ConfigError(path, "NaN is not a number")
        _within(value, path, lo, hi)
        return float(value)

    return conv


def c_float_or_zero(lo: float, hi: float) -> Converter:
    """A number in ``[lo, hi]``, or 0 (meaning "off", as the key's doc says)."""
    return _or_zero(c_float(lo, hi), 0.0)


def c_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {_type_name(value)}")
    return value


def c_enum(*choices: str) -> Converter:
    def conv(value: Any, path: str) -> str:
        if value not in choices:
            raise ConfigError(path, f"{value!r} is not one of {', '.join(repr(c) for c in choices)}")
        return str(value)

    return conv


def c_addr(value: Any, path: str) -> HostPort:
    return parse_host_port(value, path)


def c_listen_opt(value: Any, path: str) -> HostPort | None:
    """An optional listener: ``"off"`` (or ``""``) disables it."""
    if value in ("", "off"):
        return None
    return c_listen(value, path)


def c_listen(value: Any, path: str) -> HostPort:
    hp = parse_host_port(value, path, allow_zero=True)
    if not _is_ip(hp.host):
        raise ConfigError(path, f"{hp.host!r}: listen on an IP address, not a name")
    return hp


def c_ip(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _is_ip(value):
        raise ConfigError(path, f"{value!r} is not an IP address")
    return str(ipaddress.ip_address(value))


def c_network(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a CIDR string, got {_type_name(value)}")
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ConfigError(path, f"{value!r} is not a network in CIDR form ({exc})") from None


def c_backend(value: Any, path: str) -> Backend:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected 'udp:|tcp:|tls:host:port', got {_type_name(value)}")
    transport, sep, rest = value.partition(":")
    if not sep or transport not in ("udp", "tcp", "tls"):
        raise ConfigError(path, f"{value!r} must start with udp:, tcp: or tls:")
    bare = rest[1:-1] if rest.startswith("[") and rest.endswith("]") else rest
    if _is_ip(bare) or (":" not in rest and _HOSTNAME_RE.match(rest.rstrip("."))):
        # no port (RFC 3263 s.4.2): an IP address gets the transport's default port, a name is
        # located through SRV records (port 0 here)
        if _is_ip(bare):
            return Backend(transport, str(ipaddress.ip_address(bare)), 5061 if transport == "tls" else 5060)
        return Backend(transport, rest.rstrip(".").lower(), 0)
    hp = parse_host_port(rest, path)
    return Backend(transport, hp.host, hp.port)


def c_http_url(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a URL, got {_type_name(value)}")
    if not _VISIBLE_RE.fullmatch(value):  # urlsplit silently drops tabs and newlines
        raise ConfigError(path, f"{value!r} is not an http:// or https:// URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, f"{value!r} is not an http:// or https:// URL")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(path, f"{value!r} has an invalid port") from None
    if port == 0:
        raise ConfigError(path, f"{value!r} has an invalid port")
    return value


def c_origin(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected an origin URL, got {_type_name(value)}")
    if not _VISIBLE_RE.fullmatch(value):
        raise ConfigError(path, f"{value!r} is not an origin like https://host[:port]")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(path, f"{value!r} is not an origin like https://host[:port]")
    return value.rstrip("/").lower()


def _norm_domain(value: str) -> str:
    return value.rstrip(".").lower()


def c_domain(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a domain name, got {_type_name(value)}")
    name = _norm_domain(value)
    bare = name[2:] if name.startswith("*.") else name
    if "*" in bare:
        raise ConfigError(path, f"{value!r}: a wildcard is allowed only as the whole first label ('*.x.y')")
    if name.startswith("*.") and "." not in bare:
        raise ConfigError(path, f"{value!r}: a wildcard needs at least two labels after '*.'")
    if not _HOSTNAME_RE.fullmatch(bare) and not _is_ip(bare):
        raise ConfigError(path, f"{value!r} is not a valid domain name")
    return name


def c_path(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, "expected a non-empty path string")
    _no_control(value, path)
    return value


def c_url_prefix(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _URL_PREFIX_RE.fullmatch(value):
        raise ConfigError(path, f"{value!r} is not a URL path prefix like '/rossi'")
    return value


def c_list(item: Converter, min_len: int = 0, max_len: int = 10_000) -> Converter:
    def conv(value: Any, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected an array, got {_type_name(value)}")
        if len(value) < min_len:
            raise ConfigError(path, f"needs at least {min_len} item(s)")
        if len(value) > max_len:
            raise ConfigError(path, f"has {len(value)} items, at most {max_len} allowed")
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))

    return conv


def c_port_range(value: Any, path: str) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(path, "expected [first, last], two port numbers")
    lo, hi = (c_int(1024, 65535)(v, f"{path}[{i}]") for i, v in enumerate(value))
    if lo > hi:
        raise ConfigError(path, f"first port {lo} is above last port {hi}")
    if hi - lo + 1 < 4:
        raise ConfigError(path, "the range must hold at least 4 ports")
    return (lo, hi)


def f(
    conv: Converter,
    default: Any = MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    doc: str = "",
    secret: bool = False,
) -> Any:
    """A schema field: its converter, its default (none = required) and a one-line doc.

    ``secret=True`` marks a value that must never leave the process: :func:`redact` replaces it
    in everything the admin API returns and :func:`secret_values` feeds the log redaction.
    """
    meta = {"conv": conv, "doc": doc, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type[T]) -> Converter:
    def conv(value: Any, path: str) -> T:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a table, got {_type_name(value)}")
        errors: list[ConfigError] = []
        result = _build(cls, value, path, errors)
        if errors:
            raise ConfigErrors(errors)
        assert result is not None
        return result

    return conv


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


def _default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "mcs-edge")


@dataclass(frozen=True, slots=True)
class EdgeSection:
    public_address: str = f(c_ip, "127.0.0.1", doc="what clients are told (Record-Route/Path, SDP c=, ICE)")
    backend_address: str = f(c_ip, "127.0.0.1", doc="our address as the PBXs see it")
    state_dir: str = f(c_path, factory=_default_state_dir, doc="generated keys/certs, ACME account, state")
    workers: int = f(c_int(1, 64), 1, doc="reactor processes")
    name: str = f(c_str(64), "mcs-edge", doc="product token in Server/User-Agent headers")
    drain_timeout: float = f(
        c_float(0, 86400), 30.0, doc="on SIGTERM, seconds to wait for calls to end before stopping"
    )


@dataclass(frozen=True, slots=True)
class ListenConfig:
    https: HostPort = f(c_listen, HostPort("127.0.0.1", 8443), doc="TLS: SIP over WebSocket + HTTPS")
    sip_tls: HostPort | None = f(c_listen_opt, HostPort("127.0.0.1", 5061), doc="SIP over TLS (mobile app)")
    backend_sip: HostPort = f(c_listen, HostPort("127.0.0.1", 5070), doc="UDP and TCP toward the PBXs")
    admin: HostPort = f(c_listen, HostPort("127.0.0.1", 9090), doc="admin API, /metrics, /health")
    http: HostPort | None = f(c_listen_opt, None, doc="plain HTTP: ACME HTTP-01 and redirects (optional)")
    turn: HostPort | None = f(c_listen_opt, None, doc="STUN/TURN over UDP and TCP (optional)")
    turns: HostPort | None = f(c_listen_opt, None, doc="dedicated TURN over TLS port (optional)")


@dataclass(frozen=True, slots=True)
class AdminConfig:
    token: str | None = f(
        c_secret(16), None, doc="bearer token; generated into state_dir when absent", secret=True
    )
    tls: str = f(
        c_enum("off", "self-signed", "files"),
        "off",
        doc="HTTPS on listen.admin: off, self-signed (development CA; the admin host, localhost), files",
    )
    cert_file: str | None = f(
        c_path, None, doc="admin HTTPS chain (tls = 'files'); default certs/admin/fullchain.pem"
    )
    key_file: str | None = f(
        c_path, None, doc="admin HTTPS key (tls = 'files'); default certs/admin/privkey.pem"
    )


@dataclass(frozen=True, slots=True)
class TlsConfig:
    min_version: str = f(c_enum("1.2", "1.3"), "1.2", doc="lowest TLS version accepted on every listener")
    unknown_sni: str = f(
        c_enum("reject", "default"),
        "reject",
        doc="no/unknown SNI: fail the handshake, or serve tls.default_tenant",
    )
    default_tenant: str | None = f(
        c_str(32, _TENANT_ID_RE, "a tenant id"), None, doc="tenant whose certificate answers unknown SNI"
    )
    sip_no_sni_certificate: str | None = f(
        c_str(32, _TENANT_ID_RE, "a tenant id"),
        None,
        doc="SIP/TLS clients that send no SNI (baresip, some mobile SIP stacks), when unknown_sni is not"
        " 'default': served this tenant's certificate and bound to the tenant whose SIP domain their first"
        " REGISTER names (or whose flow token their in-dialog request routes by); unset: refused",
    )
    reload_interval: float = f(
        c_float(0, 86400), 30.0, doc="seconds between certificate file checks; 0 = off"
    )
    handshake_timeout: float = f(
        c_float(1, 300),
        10.0,
        doc="seconds from accept to the end of the TLS handshake on listen.https, sip_tls and turns (then aborted)",
    )


@dataclass(frozen=True, slots=True)
class AcmeConfig:
    directory: str | None = f(c_http_url, None, doc="the CA's ACME directory URL")
    email: str | None = f(
        c_str(254, re.compile(r"[^@\s]+@[^@\s]+"), "an e-mail address"), None, doc="ACME account contact"
    )
    challenge: str = f(
        c_enum("tls-alpn-01", "http-01"),
        "tls-alpn-01",
        doc="tls-alpn-01 (listen.https) or http-01 (listen.http)",
    )
    ca_bundle: str = f(c_str(4096), "", doc="extra CA file trusted for the directory itself (testing)")
    renew_fraction: float = f(
        c_float(0.05, 0.9), 1 / 3, doc="renew when this fraction of the certificate lifetime remains"
    )
    retry_min: float = f(c_float(1, 86400), 60.0, doc="first retry delay after a failed order (doubles)")
    retry_max: float = f(c_float(1, 7 * 86400), 6 * 3600.0, doc="longest retry delay after failures")


def c_nameserver(value: Any, path: str) -> HostPort:
    if isinstance(value, str) and _is_ip(value.strip("[]")):
        return HostPort(value.strip("[]"), 53)
    hp = parse_host_port(value, path)
    if not _is_ip(hp.host):
        raise ConfigError(path, f"{hp.host!r}: a DNS server is an IP address")
    return hp


@dataclass(frozen=True, slots=True)
class DnsConfig:
    servers: tuple[HostPort, ...] = f(
        c_list(c_nameserver, 0, 8),
        (),
        doc="DNS servers (IP or IP:port) for PBX names in backend_sip; empty: those of /etc/resolv.conf",
    )
    min_ttl: float = f(c_float(0, 3600), 5.0, doc="a PBX name is re-resolved at most this often")
    max_ttl: float = f(c_float(1, 86400), 3600.0, doc="... and at least this often, whatever its TTL")
    negative_ttl: float = f(
        c_float(0, 3600), 10.0, doc="a name that did not resolve is retried after this long (503 meanwhile)"
    )


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    connect_timeout: float = f(c_float(0.1, 300), 5.0, doc="backend_http connect timeout (then 502/504)")
    read_timeout: float = f(
        c_float(0.1, 3600), 60.0, doc="backend_http silence allowed before/within a response (then 504)"
    )
    max_url_length: int = f(c_int(256, 16000), 8192, doc="longest request target proxied (else 414)")
    max_header_bytes: int = f(
        c_int(1024, 16000), 12288, doc="request line plus headers, bytes (else 431; Twisted caps at 16384)"
    )
    max_local_body: int = f(
        c_int(0, 1_048_576), 65536, doc="request body cap for what the edge answers itself (else 413)"
    )


@dataclass(frozen=True, slots=True)
class MediaConfig:
    ports: tuple[int, int] = f(c_port_range, (10000, 20000), doc="relay port range, inclusive")
    idle_timeout: float = f(
        c_float(1, 3600),
        30.0,
        doc="a leg whose peer should send and sent nothing this long ends its call's media",
    )
    hold_timeout: float = f(
        c_float(1, 86400), 3600.0, doc="the same for a peer on hold (recvonly/inactive: may stay silent)"
    )
    bind: str | None = f(
        c_ip, None, doc="IP the relay sockets bind; default 0.0.0.0 (:: if edge.public_address is IPv6)"
    )
    offload: str = f(
        c_enum("auto", "off"),
        "auto",
        doc="auto: on the asyncio (uvloop) reactor, relay sockets are read by the built-in C forwarding"
        " table, which forwards plain RTP of a leg with no SRTP or rewrite itself (docs/performance.md);"
        " without the compiled module, or on other reactors, the Python path. off: always the Python path",
    )


@dataclass(frozen=True, slots=True)
class ShapingConfig:
    rate: int = f(c_int(1000, 1_000_000_000), 60000, doc="bytes/s per connection and per media leg")
    burst: int = f(c_int(1500, 1_000_000_000), 120000, doc="bucket depth in bytes")
    aggregate_rate: int = f(
        c_int(0, 100_000_000_000),
        0,
        doc="bytes/s summed over one tenant's client connections (and, apart, over its media legs); 0 = no cap",
    )
    aggregate_burst: int = f(
        c_int_or_zero(1500, 100_000_000_000),
        0,
        doc="depth of a tenant aggregate bucket; 0 = 2 s of aggregate_rate",
    )
    send_queue: int = f(
        c_int(4096, 64 * 1024 * 1024),
        262144,
        doc="bytes held toward one client connection (rate or slow reader) before it is closed",
    )


@dataclass(frozen=True, slots=True)
class GuardConfig:
    max_connections_per_ip: int = f(
        c_int(0, 1_000_000), 64, doc="concurrent connections per source on the TLS listeners; 0 = no cap"
    )
    connection_rate_per_ip: float = f(
        c_float(0, 1_000_000), 5.0, doc="new connections per second per source, on average; 0 = no limit"
    )
    connection_burst_per_ip: int = f(c_int(1, 1_000_000), 20, doc="new connections a source may open at once")
    request_rate_per_ip: float = f(
        c_float(0, 1_000_000), 20.0, doc="SIP requests per second per source, on average; 0 = no limit"
    )
    request_burst_per_ip: int = f(c_int(1, 1_000_000), 100, doc="SIP requests a source may send at once")
    allow_networks: tuple[str, ...] = f(
        c_list(c_network), (), doc="CIDRs exempt from per-source caps and bans for every tenant"
    )
    ban_failures: int = f(
        c_int(1, 100_000), 10, doc="failed authentications from one source within ban_window that ban it"
    )
    ban_window: float = f(c_float(1, 86400), 60.0, doc="seconds over which failed authentications count")
    ban_duration: float = f(c_float(1, 30 * 86400), 600.0, doc="seconds a ban lasts")
    ipv6_prefix: int = f(c_int(32, 128), 64, doc="IPv6 sources are counted per prefix of this length")
    max_sources: int = f(
        c_int(1000, 10_000_000), 100_000, doc="sources, and apart bans, remembered at most (bounds memory)"
    )


@dataclass(frozen=True, slots=True)
class TurnConfig:
    realm: str = f(
        c_str(128, _VISIBLE_RE, "a realm (printable ASCII, no spaces)"),
        "mcs-edge",
        doc="realm in challenges on listen.turn (UDP/TCP); TLS challenges name the SNI tenant's domain",
    )
    tls_on_https: bool = f(
        c_bool, True, doc="serve TURN over TLS on listen.https (ALPN stun.turn or sniffed)"
    )
    relay_interface: str | None = f(
        c_ip, None, doc="IP the relay sockets bind; default: the host of listen.turn (else listen.https)"
    )
    max_allocations_per_user: int = f(c_int(1, 1_000_000), 10, doc="live allocations of one REST user")
    max_allocations_per_tenant: int = f(c_int(1, 1_000_000), 1000, doc="live allocations of one tenant")
    default_lifetime: float = f(c_float(60, 86400), 600.0, doc="allocation lifetime granted by default")
    max_lifetime: float = f(c_float(60, 86400), 3600.0, doc="longest allocation lifetime granted")
    nonce_lifetime: float = f(c_float(30, 86400), 600.0, doc="seconds a NONCE stays valid (then 438)")
    credential_ttl: int = f(
        c_int(60, 30 * 86400), 86400, doc="lifetime of REST credentials issued by the ice-servers endpoint"
    )
    legacy_channels: bool = f(
        c_bool, True, doc="also accept RFC 5766 channel numbers 0x5000-0x7FFF (coturn-era clients)"
    )


@dataclass(frozen=True, slots=True)
class TenantShapingConfig:
    rate: int | None = f(c_int(1000, 1_000_000_000), None)
    burst: int | None = f(c_int(1500, 1_000_000_000), None)
    aggregate_rate: int | None = f(
        c_int(0, 100_000_000_000), None, doc="this tenant's aggregate bytes/s (0 = no cap); default shaping's"
    )
    aggregate_burst: int | None = f(
        c_int_or_zero(1500, 100_000_000_000), None, doc="this tenant's aggregate depth; default shaping's"
    )


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_connections: int = f(c_int(1, 1_000_000), 2000)


@dataclass(frozen=True, slots=True)
class TenantGuardConfig:
    allow_networks: tuple[str, ...] = f(
        c_list(c_network), (), doc="this tenant's offices behind NAT: exempt from per-source caps and bans"
    )


@dataclass(frozen=True, slots=True)
class SipConfig:
    max_message_size: int = f(
        c_int(1024, 1_048_576), 65536, doc="largest SIP message (and WebSocket message) accepted"
    )
    keepalive_timeout: float = f(c_float(10, 86400), 120.0, doc="close a client connection silent this long")
    t1: float = f(
        c_float(0.05, 10), 0.5, doc="SIP timer T1 (RTT estimate): retransmissions and timeouts scale with it"
    )
    flow_grace: float = f(
        c_float(0, 3600),
        30.0,
        doc="seconds the calls of a lost client connection wait for the client to reconnect "
        "(RFC 5626 instance); 0 ends them at once",
    )
    backend_keepalive: float = f(
        c_float(5, 3600),
        60.0,
        doc="tcp:/tls: PBX connections: seconds between CRLF keepalive pings (RFC 5626), pong within 10 s",
    )
    backend_connect_timeout: float = f(
        c_float(0.5, 60), 5.0, doc="tcp:/tls: PBX connections: connect + TLS handshake time allowed"
    )
    backend_max_backoff: float = f(
        c_float(1, 3600), 60.0, doc="tcp:/tls: PBX connections: longest wait between reconnect attempts"
    )


def c_cluster_key(value: Any, path: str) -> str:
    """32 bytes in base64 (``openssl rand -base64 32``): seals secrets at rest in Redis."""
    from mcs_edge.core.cluster.secrets import parse_key

    if not isinstance(value, str):
        raise ConfigError(path, f"expected a string, got {_type_name(value)}")
    try:
        parse_key(value)
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None  # never echoes the key
    return value


_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def c_ifname(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _IFNAME_RE.match(value) or value in (".", ".."):
        raise ConfigError(path, f"{value!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
    return value


def c_tunnel_address(value: Any, path: str) -> str:
    """The edge's own address with the tunnel network's prefix: ``10.77.0.1/16``."""
    if not isinstance(value, str):
        raise ConfigError(path, f"expected an address/prefix string, got {_type_name(value)}")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise ConfigError(path, f"{value!r} is not an address/prefix like 10.77.0.1/16") from None
    net = iface.network
    if net.prefixlen >= net.max_prefixlen - 1 or iface.ip in (net.network_address, net.broadcast_address):
        raise ConfigError(path, f"{value!r}: the edge's address inside a tunnel network of several addresses")
    return str(iface)


def c_wg_key(value: Any, path: str) -> str:
    from mcs_edge.core.tunnel.wireguard import valid_key

    if not isinstance(value, str) or not valid_key(value):
        raise ConfigError(path, "not a WireGuard key (base64 of 32 bytes)")
    return value


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    enabled: bool = f(c_bool, False, doc="replicate calls and flows to Redis for a standby node (docs/ha.md)")
    redis: HostPort = f(c_addr, HostPort("127.0.0.1", 6379), doc="Redis server (host:port)")
    redis_db: int = f(c_int(0, 15), 0, doc="Redis database number")
    redis_password: str | None = f(
        c_secret(16),
        None,
        doc="Redis AUTH password (requirepass); Redis off loopback needs one",
        secret=True,
    )
    name: str = f(
        c_str(64, re.compile(r"^[A-Za-z0-9_.-]+$"), "letters, digits, '_', '.', '-'"),
        "edge",
        doc="cluster name: the prefix of every Redis key (mcs:<name>:)",
    )
    node_id: str = f(
        c_str(64, re.compile(r"^[A-Za-z0-9_.-]+$"), "letters, digits, '_', '.', '-'"),
        "node1",
        doc="this node's name in records and metrics (unique in the cluster)",
    )
    role: str = f(
        c_enum("active", "standby"),
        "active",
        doc="role at start: 'active' writes its state, 'standby' keeps a replica until promoted",
    )
    key: str | None = f(
        c_cluster_key,
        None,
        doc="AES-256-GCM key (base64 of 32 bytes) sealing ICE passwords and SRTP keys",
        secret=True,
    )
    sync_interval: float = f(c_float(0.01, 10), 0.1, doc="seconds between change scans (the write-behind)")
    refresh: float = f(
        c_float(1, 60), 5.0, doc="rewrite an unchanged record this often (SRTP indexes, record TTL)"
    )
    record_ttl: int = f(c_int(10, 86400), 120, doc="Redis TTL of a record (refreshed at every write)")
    queue_limit: int = f(c_int(100, 10_000_000), 100_000, doc="records queued at most before a full resync")
    batch: int = f(
        c_int(1, 100_000), 200, doc="records written per pipeline (txredisapi slows down past a few hundred)"
    )


@dataclass(frozen=True, slots=True)
class TunnelConfig:
    interface: str | None = f(
        c_ifname, None, doc="WireGuard interface of the per-tenant backhaul (e.g. mcs0); absent: no tunnels"
    )
    listen_port: int = f(
        c_int(1, 65535), 51820, doc="UDP port the tenants' platforms dial (edge.public_address)"
    )
    address: str | None = f(
        c_tunnel_address, None, doc="the edge's tunnel address and the tunnel network, e.g. 10.77.0.1/16"
    )
    implementation: str = f(
        c_enum("userspace"),
        "userspace",
        doc="userspace: wireguard-go programmed over its UAPI socket (the kernel path is not built yet)",
    )


@dataclass(frozen=True, slots=True)
class TenantTunnelConfig:
    address: str = f(c_ip, doc="the tenant platform's address inside the tunnel (its PBX listens there)")
    public_key: str | None = f(
        c_wg_key, None, doc="the platform's WireGuard public key; absent: the edge generates the pair once"
    )


@dataclass(frozen=True, slots=True)
class BackendTlsConfig:
    ca: str | None = f(
        c_path, None, doc="CA file (PEM) the PBX's certificate must chain to; absent: the system store"
    )
    server_name: str | None = f(
        c_domain, None, doc="name (SNI) the PBX's certificate must carry; default the backend_sip host"
    )
    cert_file: str | None = f(c_path, None, doc="client certificate (PEM) presented to the PBX (optional)")
    key_file: str | None = f(c_path, None, doc="its private key (PEM)")


@dataclass(frozen=True, slots=True)
class PushConfig:
    wait: float = f(
        c_float(1, 120),
        15.0,
        doc="seconds an incoming call waits for a woken app (RFC 8599 push) to register again; then 480",
    )
    ring: int = f(
        lambda v, p: int(c_enum("180", "100")(str(v), p)),
        180,
        doc="what the PBX gets while the call waits: 180 (ringback, an early dialog of the edge) or 100",
    )
    stale_after: float = f(
        c_float(0, 86400),
        0.0,
        doc="an app's connection silent this long is woken like a gone one (0 = only gone connections)",
    )


@dataclass(frozen=True, slots=True)
class ApnsConfig:
    key_id: str = f(c_str(32), doc="APNs auth key id (10 characters, from the .p8 key)", secret=True)
    team_id: str = f(c_str(32), doc="Apple developer team id (the JWT issuer)")
    key_file: str = f(
        c_path, doc="the APNs .p8 auth key (ES256); read at start-up, never logged", secret=True
    )
    topic: str = f(c_str(256), doc="the app's bundle id + .voip (apns-topic of VoIP pushes)")
    endpoint: str = f(
        c_http_url, "https://api.push.apple.com", doc="APNs server (api.sandbox.push.apple.com)"
    )
    ca_file: str | None = f(c_path, None, doc="CA bundle for the endpoint (default: system trust)")


@dataclass(frozen=True, slots=True)
class FcmConfig:
    service_account_file: str = f(
        c_path, doc="Firebase service account JSON (OAuth 2 JWT bearer grant); never logged", secret=True
    )
    endpoint: str = f(c_http_url, "https://fcm.googleapis.com", doc="FCM HTTP v1 server")
    oauth_url: str | None = f(
        c_http_url, None, doc="OAuth 2 token endpoint (default: the service account's token_uri)"
    )
    ca_file: str | None = f(c_path, None, doc="CA bundle for the endpoints (default: system trust)")


@dataclass(frozen=True, slots=True)
class TenantPushConfig:
    apns: ApnsConfig | None = f(section(ApnsConfig), None, doc="APNs VoIP pushes for this tenant's iOS app")
    fcm: FcmConfig | None = f(section(FcmConfig), None, doc="FCM pushes for this tenant's Android app")

    def providers(self) -> frozenset[str]:
        return frozenset(name for name in ("apns", "fcm") if getattr(self, name) is not None)


@dataclass(frozen=True, slots=True)
class OverloadConfig:
    enabled: bool = f(
        c_bool, True, doc="refuse new INVITE/REGISTER with 503 + Retry-After while the reactor lags"
    )
    probe_interval: float = f(
        c_float(0.001, 1), 0.01, doc="seconds between loop-lag samples (mcs_edge_loop_lag_seconds)"
    )
    probe_idle_interval: float = f(
        c_float_or_zero(0.01, 10),
        0.5,
        doc="seconds between loop-lag samples once the reactor has been idle for 1 s (the first message"
        " read returns to probe_interval at once); 0 = always probe_interval",
    )
    lag_high: float = f(
        c_float(0.002, 10),
        0.05,
        doc="smoothed loop lag (s) above which the admitted share of new requests falls (max_queue_age = 0)",
    )
    lag_low: float = f(
        c_float(0.001, 10),
        0.02,
        doc="loop lag (s) below which the admitted share grows again (max_queue_age = 0)",
    )
    busy_high: float = f(
        c_float(0.5, 1.01),
        0.95,
        doc="share of wall time on the CPU above which the admitted share falls (above 1 = CPU not watched;"
        " max_queue_age = 0)",
    )
    retry_after: int = f(c_int(1, 3600), 5, doc="Retry-After (s) in the 503 to a refused request")
    max_queue_age: float = f(
        c_float_or_zero(0.005, 10),
        0.03,
        doc="a new INVITE/REGISTER read this many seconds after the loop-lag probe last ran, the turn"
        " before having been that long too (the reactor is working through a backlog), gets 503 at once,"
        " and this rule alone decides (lag_high, lag_low and"
        " busy_high then only feed the metrics); 0 = off: the admitted share follows the loop lag and the CPU",
    )
    max_media_packet_rate: int = f(
        c_int(0, 100_000_000),
        0,
        doc="relayed media packets/s per worker above which new calls get 503; 0 = no limit",
    )
    backend_receive_buffer: int = f(
        c_int(0, 256 * 1024 * 1024),
        4 * 1024 * 1024,
        doc="SO_RCVBUF of the backend SIP UDP socket, bytes (capped by net.core.rmem_max); 0 = system default",
    )
    gc_freeze: bool = f(
        c_bool,
        True,
        doc="after start, move the objects built so far out of the collector's reach (gc.freeze); with "
        "gc_full_interval, also the survivors of each full collection (every 10th walks the whole heap)",
    )
    gc_threshold: int = f(
        c_int(100, 10_000_000),
        50000,
        doc="generation-0 collection threshold (allocations; Python's default 700)",
    )
    gc_full_interval: float = f(
        c_float_or_zero(1, 86400),
        60.0,
        doc="seconds between full collections, run by the edge when the reactor is calm (forced after "
        "10x this without a calm moment), with young ones at every load-probe tick (8 ms), instead of when the interpreter "
        "decides; 0 = the interpreter's automatic collections",
    )


@dataclass(frozen=True, slots=True)
class TenantConfig:
    id: str = f(c_str(32, _TENANT_ID_RE, "a tenant id ([a-z0-9-]{1,32})"))
    domains: tuple[str, ...] = f(c_list(c_domain, 1, 100))
    backend_sip: Backend = f(c_backend)
    name: str | None = f(c_str(128), None, doc="the customer's name, for people (admin panel, API)")
    backend_http: str | None = f(c_http_url, None)
    path_prefix: str | None = f(c_url_prefix, None, doc="URL path prefix routed to this tenant")
    media: str = f(c_enum("bridge", "bridge-sdes", "passthrough"), "bridge")
    app_media: str = f(
        c_enum("sdes", "dtls", "rtp"),
        "sdes",
        doc="media offered to the mobile app (SIP/TLS) on calls toward it, until it has offered itself:"
        " sdes (RTP/SAVP), dtls (DTLS-SRTP), rtp (plain); ICE-lite is always offered",
    )
    path: bool = f(c_bool, True)
    certificate: str = f(c_enum("files", "acme", "self-signed"), "files")
    acme_challenge: str | None = f(
        c_enum("tls-alpn-01", "http-01"), None, doc="this tenant's ACME challenge; default acme.challenge"
    )
    cert_file: str | None = f(c_path, None, doc="default certs/<id>/fullchain.pem")
    key_file: str | None = f(c_path, None, doc="default certs/<id>/privkey.pem")
    allowed_origins: tuple[str, ...] = f(c_list(c_origin), ())
    turn_secret: str | None = f(
        c_secret(16),
        None,
        doc="TURN REST secret: password = base64(HMAC-SHA1(secret, username)); absent: no TURN",
        secret=True,
    )
    turn_peers: tuple[str, ...] = f(
        c_list(c_network),
        (),
        doc="private/loopback networks this tenant's TURN relays may reach (e.g. its PBX)",
    )
    api_secret: str | None = f(
        c_secret(16),
        None,
        doc="bearer secret for GET /.well-known/mcs-edge/ice-servers and .../certificate (absent: off)",
        secret=True,
    )
    echo: bool = f(
        c_bool,
        False,
        doc="calls to user echo at a tenant domain are answered by the edge (media looped back); serves /check",
    )
    shaping: TenantShapingConfig = f(section(TenantShapingConfig), factory=TenantShapingConfig)
    limits: LimitsConfig = f(section(LimitsConfig), factory=LimitsConfig)
    guard: TenantGuardConfig = f(section(TenantGuardConfig), factory=TenantGuardConfig)
    backend_tls: BackendTlsConfig = f(section(BackendTlsConfig), factory=BackendTlsConfig)
    tunnel: TenantTunnelConfig | None = f(
        section(TenantTunnelConfig), None, doc="WireGuard backhaul to this tenant's platform ([tunnel])"
    )
    backend_check_interval: float = f(
        c_float_or_zero(1, 3600),
        0.0,
        doc="seconds between SIP OPTIONS to the PBX (up/down; down: new calls get 503 at once); 0 = off",
    )
    push: TenantPushConfig = f(section(TenantPushConfig), factory=TenantPushConfig)


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    edge: EdgeSection = f(section(EdgeSection), factory=EdgeSection)
    listen: ListenConfig = f(section(ListenConfig), factory=ListenConfig)
    admin: AdminConfig = f(section(AdminConfig), factory=AdminConfig)
    tls: TlsConfig = f(section(TlsConfig), factory=TlsConfig)
    acme: AcmeConfig = f(section(AcmeConfig), factory=AcmeConfig)
    media: MediaConfig = f(section(MediaConfig), factory=MediaConfig)
    shaping: ShapingConfig = f(section(ShapingConfig), factory=ShapingConfig)
    guard: GuardConfig = f(section(GuardConfig), factory=GuardConfig)
    sip: SipConfig = f(section(SipConfig), factory=SipConfig)
    proxy: ProxyConfig = f(section(ProxyConfig), factory=ProxyConfig)
    dns: DnsConfig = f(section(DnsConfig), factory=DnsConfig)
    tunnel: TunnelConfig = f(section(TunnelConfig), factory=TunnelConfig)
    turn: TurnConfig = f(section(TurnConfig), factory=TurnConfig)
    cluster: ClusterConfig = f(section(ClusterConfig), factory=ClusterConfig)
    push: PushConfig = f(section(PushConfig), factory=PushConfig)
    overload: OverloadConfig = f(section(OverloadConfig), factory=OverloadConfig)
    tenants: tuple[TenantConfig, ...] = f(c_list(section(TenantConfig)), ())
    # Where the file was read from (relative paths in it are resolved against its folder).
    base_dir: str = field(default=".", metadata={"internal": True})

    # -- derived helpers ------------------------------------------------------------------
    def tenant(self, tenant_id: str) -> TenantConfig | None:
        for t in self.tenants:
            if t.id == tenant_id:
                return t
        return None

    def resolve(self, path: str) -> str:
        """Resolve a path from the file against the file's folder."""
        p = Path(os.path.expanduser(path))
        return str(p if p.is_absolute() else Path(self.base_dir) / p)

    @property
    def state_dir(self) -> str:
        return self.resolve(self.edge.state_dir)

    def tenant_rate(self, tenant: TenantConfig) -> tuple[int, int]:
        """Effective (rate, burst) of one connection/leg of ``tenant``."""
        return (
            tenant.shaping.rate if tenant.shaping.rate is not None else self.shaping.rate,
            tenant.shaping.burst if tenant.shaping.burst is not None else self.shaping.burst,
        )


# ---------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------


def _build(cls: type[T], table: Mapping[str, Any], path: str, errors: list[ConfigError]) -> T | None:
    assert is_dataclass(cls)
    known = {fl.name: fl for fl in fields(cls) if not fl.metadata.get("internal")}
    for key in table:
        if key not in known:
            errors.append(ConfigError(_join(path, key), "unknown key"))
    kwargs: dict[str, Any] = {}
    ok = True
    for name, fl in known.items():
        sub = _join(path, name)
        if name in table:
            try:
                kwargs[name] = fl.metadata["conv"](table[name], sub)
            except ConfigErrors as exc:
                errors.extend(exc.errors)
                ok = False
            except ConfigError as exc:
                errors.append(exc)
                ok = False
        elif fl.default is MISSING and fl.default_factory is MISSING:
            errors.append(ConfigError(sub, "required key is missing"))
            ok = False
    if not ok:
        return None
    return cls(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _cross_checks(cfg: EdgeConfig) -> list[ConfigError]:
    errors: list[ConfigError] = []
    if (cfg.admin.cert_file is None) != (cfg.admin.key_file is None):
        errors.append(ConfigError("admin.cert_file", "cert_file and key_file go together"))
    if cfg.admin.tls != "files" and cfg.admin.cert_file is not None:
        errors.append(ConfigError("admin.cert_file", f"only used with tls = 'files', not {cfg.admin.tls!r}"))
    if len(cfg.tenants) > MAX_TENANTS:
        errors.append(ConfigError("tenants", f"{len(cfg.tenants)} tenants, at most {MAX_TENANTS} allowed"))
    if cfg.cluster.enabled:
        if cfg.cluster.key is None:
            errors.append(
                ConfigError("cluster.key", "required when cluster.enabled (secrets are sealed at rest)")
            )
        if cfg.edge.workers != 1:
            errors.append(ConfigError("cluster.enabled", "replication needs edge.workers = 1"))
        if cfg.cluster.record_ttl <= cfg.cluster.refresh:
            errors.append(ConfigError("cluster.record_ttl", "must be longer than cluster.refresh"))
    seen_ids: dict[str, int] = {}
    seen_domains: dict[str, str] = {}
    seen_prefixes: dict[str, str] = {}
    for i, t in enumerate(cfg.tenants):
        if t.id in seen_ids:
            errors.append(
                ConfigError(
                    f"tenants[{i}].id", f"duplicate tenant id {t.id!r} (also tenants[{seen_ids[t.id]}])"
                )
            )
        seen_ids.setdefault(t.id, i)
        for j, d in enumerate(t.domains):
            owner = seen_domains.get(d)
            if owner is not None:
                where = "this tenant" if owner == t.id else f"tenant {owner!r}"
                errors.append(
                    ConfigError(f"tenants[{i}].domains[{j}]", f"domain {d!r} already belongs to {where}")
                )
            else:
                seen_domains[d] = t.id
        if t.path_prefix is not None:
            other = seen_prefixes.get(t.path_prefix)
            if other is not None:
                errors.append(
                    ConfigError(f"tenants[{i}].path_prefix", f"{t.path_prefix!r} is used by tenant {other!r}")
                )
            seen_prefixes.setdefault(t.path_prefix, t.id)
        if t.certificate == "acme" and not cfg.acme.directory:
            errors.append(ConfigError(f"tenants[{i}].certificate", "'acme' needs acme.directory to be set"))
        if (t.cert_file is None) != (t.key_file is None):
            errors.append(ConfigError(f"tenants[{i}].cert_file", "cert_file and key_file go together"))
        if t.certificate != "files" and t.cert_file is not None:
            errors.append(
                ConfigError(
                    f"tenants[{i}].cert_file", f"only used with certificate = 'files', not {t.certificate!r}"
                )
            )
        errors.extend(_backend_checks(i, t))
        _rate, burst = cfg.tenant_rate(t)
        if burst < 1500:
            errors.append(
                ConfigError(f"tenants[{i}].shaping.burst", "must be at least 1500 bytes (one packet)")
            )
    errors.extend(_tunnel_checks(cfg))
    if cfg.dns.min_ttl > cfg.dns.max_ttl:
        errors.append(ConfigError("dns.min_ttl", "must not exceed dns.max_ttl"))
    if cfg.turn.default_lifetime > cfg.turn.max_lifetime:
        errors.append(ConfigError("turn.default_lifetime", "must not exceed turn.max_lifetime"))
    if cfg.overload.lag_low >= cfg.overload.lag_high:
        errors.append(ConfigError("overload.lag_low", "must be below overload.lag_high"))
    if 0 < cfg.overload.probe_idle_interval <= cfg.overload.probe_interval:
        errors.append(
            ConfigError("overload.probe_idle_interval", "must be 0 (off) or above overload.probe_interval")
        )
    if 0 < cfg.overload.max_queue_age <= 2 * cfg.overload.probe_interval:
        errors.append(
            ConfigError("overload.max_queue_age", "must be 0 (off) or above twice overload.probe_interval")
        )
    if cfg.shaping.burst < 1500:
        errors.append(ConfigError("shaping.burst", "must be at least 1500 bytes"))
    if cfg.tls.unknown_sni == "default":
        if cfg.tls.default_tenant is None:
            errors.append(ConfigError("tls.default_tenant", "required when tls.unknown_sni = 'default'"))
        elif cfg.tls.default_tenant not in seen_ids:
            errors.append(ConfigError("tls.default_tenant", f"no tenant with id {cfg.tls.default_tenant!r}"))
    elif cfg.tls.default_tenant is not None and cfg.tls.default_tenant not in seen_ids:
        errors.append(ConfigError("tls.default_tenant", f"no tenant with id {cfg.tls.default_tenant!r}"))
    if cfg.tls.sip_no_sni_certificate is not None and cfg.tls.sip_no_sni_certificate not in seen_ids:
        errors.append(
            ConfigError("tls.sip_no_sni_certificate", f"no tenant with id {cfg.tls.sip_no_sni_certificate!r}")
        )
    if cfg.listen.http is None and any(
        t.certificate == "acme" and (t.acme_challenge or cfg.acme.challenge) == "http-01" for t in cfg.tenants
    ):
        errors.append(ConfigError("listen.http", "required for acme.challenge = 'http-01'"))
    # listeners must not collide (same port on the same IP for the same socket type)
    tcp: dict[tuple[str, int], str] = {}
    for name in ("https", "sip_tls", "backend_sip", "admin", "http", "turn", "turns"):
        hp = getattr(cfg.listen, name)
        if hp is None or hp.port == 0:
            continue
        key = (hp.host, hp.port)
        if key in tcp:
            errors.append(ConfigError(f"listen.{name}", f"{hp} is already used by listen.{tcp[key]}"))
        else:
            tcp[key] = name
    lo, hi = cfg.media.ports
    for (_host, port), listener in tcp.items():
        if lo <= port <= hi and listener in ("backend_sip", "turn"):
            errors.append(ConfigError(f"listen.{listener}", f"port {port} lies inside media.ports {lo}-{hi}"))
    if (hi - lo + 1) < 4 * cfg.edge.workers:
        errors.append(ConfigError("media.ports", f"too few ports for {cfg.edge.workers} workers"))
    if cfg.edge.workers > 1:
        for i, t in enumerate(cfg.tenants):
            if t.push.providers():
                errors.append(
                    ConfigError(
                        f"tenants[{i}].push",
                        "push wake-up needs edge.workers = 1 (the held call and the woken app's new "
                        "connection may land on different workers)",
                    )
                )
    return errors


def _backend_checks(i: int, t: TenantConfig) -> list[ConfigError]:
    """What the runtime can do with a tenant's PBX transport (tx/sip/backend.py)."""
    errors = []
    tls = t.backend_tls
    if (tls.cert_file is None) != (tls.key_file is None):
        errors.append(
            ConfigError(f"tenants[{i}].backend_tls.cert_file", "cert_file and key_file go together")
        )
    if t.backend_sip.transport != "tls" and tls != BackendTlsConfig():
        errors.append(
            ConfigError(
                f"tenants[{i}].backend_tls", f"only used with backend_sip = 'tls:...', not {t.backend_sip}"
            )
        )
    if (
        t.media == "bridge-sdes"
        and t.backend_sip.transport != "tls"
        and not _is_loopback(t.backend_sip.host)
        and t.tunnel is None  # inside the WireGuard tunnel the keys are encrypted on the way
    ):
        # SDES puts the SRTP keys in the SDP: only over TLS (or never leaving this machine).
        errors.append(
            ConfigError(
                f"tenants[{i}].media",
                f"'bridge-sdes' sends SRTP keys in SIP: backend_sip must be tls:, not {t.backend_sip.transport}:",
            )
        )
    return errors


def _tunnel_checks(cfg: EdgeConfig) -> list[ConfigError]:
    """[tunnel] and tenants.tunnel: what the WireGuard adapter (tx/tunnel/) can set up."""
    errors: list[ConfigError] = []
    tun = cfg.tunnel
    if (tun.interface is None) != (tun.address is None):
        errors.append(ConfigError("tunnel.address", "tunnel.interface and tunnel.address go together"))
    net = ipaddress.ip_interface(tun.address) if tun.address else None
    seen: dict[str, str] = {}
    for i, t in enumerate(cfg.tenants):
        if t.tunnel is None:
            continue
        path = f"tenants[{i}].tunnel.address"
        if net is None:
            errors.append(ConfigError(f"tenants[{i}].tunnel", "needs [tunnel] interface and address"))
            continue
        ip = ipaddress.ip_address(t.tunnel.address)
        if ip not in net.network or ip in (
            net.ip,
            net.network.network_address,
            net.network.broadcast_address,
        ):
            errors.append(
                ConfigError(path, f"{ip} is not a free host address of the tunnel network {net.network}")
            )
        elif str(ip) in seen:
            errors.append(ConfigError(path, f"{ip} is already tenant {seen[str(ip)]!r}'s"))
        seen.setdefault(str(ip), t.id)
        if t.backend_sip.host != str(ip):
            errors.append(
                ConfigError(
                    f"tenants[{i}].backend_sip",
                    f"with a tunnel the PBX is reached at {ip}, not {t.backend_sip.host}",
                )
            )
        if t.backend_http is not None and urlsplit(t.backend_http).hostname != str(ip):
            errors.append(
                ConfigError(f"tenants[{i}].backend_http", f"with a tunnel the platform is reached at {ip}")
            )
    if net is not None and cfg.edge.workers > 1:
        errors.append(
            ConfigError("tunnel.interface", "the WireGuard backhaul runs with edge.workers = 1 only")
        )
    if net is not None and cfg.edge.backend_address != str(net.ip):
        errors.append(
            ConfigError(
                "edge.backend_address", f"must be the edge's tunnel address {net.ip} when [tunnel] is set"
            )
        )
    return errors


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loads(text: str, base_dir: str = ".") -> EdgeConfig:
    """Parse and validate TOML text; raise :class:`ConfigErrors` listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([ConfigError("", f"not valid TOML: {exc}")]) from None
    return from_mapping(data, base_dir)


def from_mapping(data: Mapping[str, Any], base_dir: str = ".") -> EdgeConfig:
    """Validate an already-parsed mapping (the admin API uses this for edits)."""
    errors: list[ConfigError] = []
    cfg = _build(EdgeConfig, data, "", errors)
    if cfg is None or errors:
        raise ConfigErrors(errors)
    cfg = _replace_base(cfg, base_dir)
    errors = _cross_checks(cfg)
    if errors:
        raise ConfigErrors(errors)
    return cfg


def load(path: str | os.PathLike[str]) -> EdgeConfig:
    """Read and validate ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigErrors([ConfigError("", f"cannot read {str(p)!r}: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigErrors([ConfigError("", f"{str(p)!r} is not UTF-8 text")]) from None
    return loads(text, str(p.resolve().parent))


def _replace_base(cfg: EdgeConfig, base_dir: str) -> EdgeConfig:
    import dataclasses

    return dataclasses.replace(cfg, base_dir=base_dir)


def to_mapping(obj: Any) -> Any:
    """The inverse of :func:`from_mapping`: a TOML-ready mapping of explicit values."""
    if isinstance(obj, HostPort | Backend):
        return str(obj)
    if _is_section(obj):
        out: dict[str, Any] = {}
        for fl in fields(obj):
            if fl.metadata.get("internal"):
                continue
            value = getattr(obj, fl.name)
            if value is None:
                continue
            out[fl.name] = to_mapping(value)
        return out
    if isinstance(obj, HostPort | Backend):
        return str(obj)
    if isinstance(obj, tuple | list):
        return [to_mapping(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# Secrets: fields declared with ``secret=True`` never leave the process
# ---------------------------------------------------------------------------------------------

#: What a secret value is replaced with (reading it back through the admin API keeps the secret).
REDACTED = "********"


def secret_fields(cls: type[Any]) -> frozenset[str]:
    """Names of the fields of section ``cls`` declared ``secret=True``."""
    return frozenset(fl.name for fl in fields(cls) if fl.metadata.get("secret"))


#: Sections that are absent by default (None): their class, for redaction and the key reference.
_OPTIONAL_SECTIONS: dict[tuple[type[Any], str], type[Any]] = {
    (TenantPushConfig, "apns"): ApnsConfig,
    (TenantPushConfig, "fcm"): FcmConfig,
}


def _section_of(cls: type[Any], name: str) -> type[Any] | None:
    """The section class of field ``name`` of ``cls`` (for tables and arrays of tables), or None."""
    if cls is EdgeConfig and name == "tenants":
        return TenantConfig
    if (cls, name) in _OPTIONAL_SECTIONS:
        return _OPTIONAL_SECTIONS[(cls, name)]
    for fl in fields(cls):
        if fl.name != name or fl.default_factory is MISSING:
            continue
        default = fl.default_factory()
        return type(default) if _is_section(default) else None
    return None


def redact(obj: Any, cls: type[Any] | None = None) -> Any:
    """A TOML-ready mapping of ``obj`` (a section, or a raw mapping of section ``cls``) with
    every secret field replaced by :data:`REDACTED`: the one redaction used by the admin API."""
    if _is_section(obj):
        return redact(to_mapping(obj), type(obj))
    if isinstance(obj, list | tuple):
        return [redact(v, cls) for v in obj]
    if not isinstance(obj, Mapping) or cls is None:
        return obj
    hidden = secret_fields(cls)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key in hidden and value is not None:
            out[key] = REDACTED
        else:
            sub = _section_of(cls, key) if isinstance(key, str) and is_dataclass(cls) else None
            out[key] = redact(value, sub) if sub is not None else value
    return out


def unredact(new: Mapping[str, Any], old: Mapping[str, Any], cls: type[Any]) -> dict[str, Any]:
    """``new`` (a raw table of section ``cls``) with every :data:`REDACTED` secret put back from
    ``old`` (dropped when ``old`` has none): a redacted answer sent back unchanged keeps the secrets."""
    out = dict(new)
    hidden = secret_fields(cls)
    for key, value in new.items():
        if key in hidden and value == REDACTED:
            if key in old:
                out[key] = old[key]
            else:
                out.pop(key)
        elif isinstance(value, Mapping):
            sub = _section_of(cls, key)
            prev = old.get(key)
            if sub is not None and isinstance(prev, Mapping):
                out[key] = unredact(value, prev, sub)
    return out


def secret_values(obj: Any) -> set[str]:
    """Every secret string configured in ``obj`` (a section, e.g. the whole :class:`EdgeConfig`)."""
    found: set[str] = set()
    if isinstance(obj, list | tuple):
        for v in obj:
            found |= secret_values(v)
        return found
    if not _is_section(obj):
        return found
    for fl in fields(obj):
        value = getattr(obj, fl.name)
        if fl.metadata.get("secret"):
            if isinstance(value, str) and value:
                found.add(value)
        elif _is_section(value) or isinstance(value, tuple):
            found |= secret_values(value)
    return found


EMBEDDED_DEFAULT = """\
# The embedded default: one demo tenant on localhost, loopback listeners only,
# development certificates generated into the state directory on first start.
[edge]
public_address = "127.0.0.1"
backend_address = "127.0.0.1"

[listen]
https = "127.0.0.1:8443"
sip_tls = "127.0.0.1:5061"
backend_sip = "127.0.0.1:5070"
admin = "127.0.0.1:9090"
turn = "127.0.0.1:3478"

[tls]
unknown_sni = "default"
default_tenant = "demo"

[media]
ports = [40000, 40999]
bind = "127.0.0.1"

[[tenants]]
id = "demo"
domains = ["localhost", "127.0.0.1"]
backend_sip = "udp:127.0.0.1:5080"
certificate = "self-signed"
echo = true
allowed_origins = ["https://localhost:8443", "https://127.0.0.1:8443"]
"""


def embedded_default(state_dir: str | None = None) -> EdgeConfig:
    """The configuration used when no ``--config`` is given."""
    text = EMBEDDED_DEFAULT
    if state_dir is not None:
        text = text.replace("[edge]\n", f"[edge]\nstate_dir = {_toml_str(state_dir)}\n", 1)
    return loads(text, os.getcwd())


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_section(obj: Any) -> bool:
    return (
        is_dataclass(obj)
        and not isinstance(obj, type)
        and all("conv" in fl.metadata or fl.metadata.get("internal") for fl in fields(obj))
    )


def describe_keys(cls: type[Any] = EdgeConfig, prefix: str = "") -> Sequence[tuple[str, str, str]]:
    """(key path, default, doc) for every key: used to generate the reference page."""
    rows: list[tuple[str, str, str]] = []
    for fl in fields(cls):
        if fl.metadata.get("internal"):
            continue
        path = _join(prefix, fl.name)
        default: Any
        if fl.default is not MISSING:
            default = fl.default
        elif fl.default_factory is _default_state_dir:
            default = "$XDG_STATE_HOME/mcs-edge (~/.local/state/mcs-edge)"
        elif fl.default_factory is not MISSING:
            default = fl.default_factory()
        else:
            default = "(required)"
        if _is_section(default):
            rows.extend(describe_keys(type(default), path))
            continue
        if cls is EdgeConfig and fl.name == "tenants":
            rows.extend(describe_keys(TenantConfig, "tenants[]"))
            continue
        if (cls, fl.name) in _OPTIONAL_SECTIONS:
            rows.append((path, "None", fl.metadata.get("doc", "") + " (absent: off)"))
            rows.extend(describe_keys(_OPTIONAL_SECTIONS[(cls, fl.name)], path))
            continue
        rows.append(
            (
                path,
                str(to_mapping(default)) if default != "(required)" else default,
                fl.metadata.get("doc", ""),
            )
        )
    return rows
