"""Type stub of the C extension mcs_edge/_fastfwd.c (the media relay's in-process forwarding table)."""

from collections.abc import Callable
from typing import Any

BATCH: int
SLOT: int

class Tally:
    """A counter shared by Ports: datagrams handled in C (forwarded or policed by a rule)."""

    value: int
    def __init__(self) -> None: ...

class Port:
    """One relay socket read by C: datagrams its rule takes are forwarded, the rest go to ``received``."""

    installed: bool
    fd: int
    def __init__(
        self,
        fd: int,
        received: Callable[[bytes, Any], Any],
        on_error: Callable[[str], Any],
        clock: Callable[[], float] | None = None,
        tally: Tally | None = None,
    ) -> None: ...
    def __call__(self) -> None: ...
    def sendto(self, data: bytes, addr: Any) -> None: ...
    def install(
        self,
        source: Any,
        target: Port,
        dest: Any,
        rate: float,
        burst: float,
        tokens: float,
        last: float,
        trackers: tuple[tuple[bytes, int], ...],
        current: int,
        unprotect: tuple[int, int, object, int] | None = None,
        protect: tuple[int, int, object, int] | None = None,
    ) -> None: ...
    def take(self) -> tuple[Any, ...] | None: ...
    def revoke(self) -> tuple[Any, ...] | None: ...
    def close(self) -> None: ...
