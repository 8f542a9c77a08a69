"""Is the tenant's PBX answering? SIP OPTIONS probes (RFC 3261 s.11) and the up/down decision.

Theory of operation
-------------------
One :class:`BackendHealth` per tenant with ``backend_check_interval`` > 0. Every ``interval``
seconds it asks for one probe (:class:`SendProbe` with a fresh branch; the adapter sends the bytes
of :func:`options_request` over the tenant's configured transport). Over UDP the probe is
retransmitted at T1, 2·T1, 4·T1... (RFC 3261 s.17.1.2.2) until it is answered or ``timeout``
passes; over TCP/TLS it is sent once. Decisions::

    event                                   state after    note
    --------------------------------------  -------------  ---------------------------------------
    any response but 503                    UP             a PBX answering anything is alive (s.11)
    503 response                            DOWN           the PBX says it cannot serve
    no response within timeout              DOWN           after ``down_after`` probes in a row
    transport failure (link in backoff,     DOWN           at once: nothing can reach it
      name does not resolve)

Every change is reported once as :class:`StateChanged` (for logs, metrics and the admin API);
while DOWN the proxy answers new calls 503 + Retry-After at once instead of waiting for Timer B.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

__all__ = ["BackendHealth", "HealthState", "SendProbe", "StateChanged", "options_request"]

#: Branch prefix of probes: "h" is no hex digit, so proxy branches (MAGIC + hex) never match it.
PROBE_BRANCH = "z9hG4bKh"


class HealthState(Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class SendProbe:
    branch: str
    retransmission: bool = False


@dataclass(frozen=True, slots=True)
class StateChanged:
    old: HealthState
    new: HealthState
    reason: str


HealthAction = SendProbe | StateChanged


class BackendHealth:
    """See the module docstring."""

    def __init__(
        self,
        interval: float,
        reliable: bool,
        token: Callable[[], str],
        t1: float = 0.5,
        timeout: float | None = None,
        down_after: int = 1,
    ) -> None:
        self.interval = interval
        self.reliable = reliable
        self.timeout = timeout if timeout is not None else min(interval, 5.0)
        self.t1 = t1
        self.down_after = down_after
        self._token = token  # random text for branches (injected)
        self.state = HealthState.UNKNOWN
        self.reason = ""
        self.misses = 0
        self.changed_at = 0.0
        self._branch: str | None = None
        self._next_probe: float | None = None
        self._retransmit: float | None = None
        self._rt_interval = t1
        self._give_up: float | None = None
        self._actions: list[HealthAction] = []

    def start(self, now: float, first_in: float = 0.0) -> None:
        self._next_probe = now + first_in

    def next_action(self) -> HealthAction | None:
        return self._actions.pop(0) if self._actions else None

    def get_timer(self) -> float | None:
        times = [t for t in (self._next_probe, self._retransmit, self._give_up) if t is not None]
        return min(times) if times else None

    def is_probe(self, branch: str) -> bool:
        return self._branch is not None and branch == self._branch

    def handle_timer(self, now: float) -> None:
        if self._give_up is not None and now >= self._give_up:
            self._branch = self._retransmit = self._give_up = None
            self.misses += 1
            if self.misses >= self.down_after:
                self._set(HealthState.DOWN, f"no answer to OPTIONS within {self.timeout:g} s", now)
        if self._retransmit is not None and now >= self._retransmit and self._branch is not None:
            self._actions.append(SendProbe(self._branch, retransmission=True))
            self._rt_interval = min(self._rt_interval * 2, 4.0)  # T2 = 4 s
            self._retransmit = now + self._rt_interval
        if self._next_probe is not None and now >= self._next_probe:
            self._next_probe = now + self.interval
            if self._branch is None:  # one probe at a time
                self._branch = PROBE_BRANCH + self._token()
                self._actions.append(SendProbe(self._branch))
                self._give_up = now + self.timeout
                self._rt_interval = self.t1
                self._retransmit = None if self.reliable else now + self.t1

    def response(self, branch: str, status: int, now: float) -> None:
        if not self.is_probe(branch) or status < 200:
            return
        self._branch = self._retransmit = self._give_up = None
        self.misses = 0
        if status == 503:
            self._set(HealthState.DOWN, "PBX answered OPTIONS with 503", now)
        else:
            self._set(HealthState.UP, f"PBX answered OPTIONS with {status}", now)

    def transport_failed(self, reason: str, now: float) -> None:
        self._branch = self._retransmit = self._give_up = None
        self._set(HealthState.DOWN, reason, now)

    def _set(self, state: HealthState, reason: str, now: float) -> None:
        self.reason = reason
        if state is self.state:
            return
        self._actions.append(StateChanged(self.state, state, reason))
        self.state = state
        self.changed_at = now


def options_request(
    *,
    branch: str,
    transport: str,
    via_host: str,
    via_port: int,
    target: str,
    domain: str,
    call_id: str,
    tag: str,
    server_name: str,
) -> bytes:
    """An OPTIONS toward ``target`` (``host`` or ``host:port``) for the tenant ``domain``."""
    via_hostport = f"[{via_host}]:{via_port}" if ":" in via_host else f"{via_host}:{via_port}"
    return (
        f"OPTIONS sip:{target} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} {via_hostport};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{server_name}@{domain}>;tag={tag}\r\n"
        f"To: <sip:{target}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Accept: application/sdp\r\n"
        f"User-Agent: {server_name}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
