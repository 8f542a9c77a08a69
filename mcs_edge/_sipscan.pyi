"""Type stub of the C extension mcs_edge/_sipscan.c (the head of a SIP message cut into fields, a
common Via value read)."""

def scan(
    data: bytes,
    max_line: int,
    max_count: int,
    key_cache: dict[str, str],
    compact: dict[str, str],
    cache_max: int,
    /,
) -> tuple[str, list[tuple[str, str, str, str | None]], int] | None: ...
def via(text: str, /) -> tuple[str, str, int | None, tuple[tuple[str, str | None], ...], str] | None: ...
def call_id(text: str, /) -> bool | None: ...
