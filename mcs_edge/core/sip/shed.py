"""Refusing a new request under overload from its bytes, before it is parsed (sans-IO).

Theory of operation
-------------------
Under overload the edge must spend as little as possible on what it refuses (RFC 7339 s.5.10,
RFC 6357 s.4: a 503 that costs as much as serving the request does not relieve anything). So
:func:`sheddable` looks at the request line and, for an INVITE, at the To header line only, and
:func:`refusal` builds the 503 by copying the five header lines a response needs (RFC 3261
s.8.2.6: Via, From, To with a tag added, Call-ID, CSeq) from the raw bytes.

Which requests may be refused (RFC 7339 s.5.10.1 and RFC 3261 s.21.5.4): only those that start
new work, an initial INVITE (no To tag) and REGISTER. Never a request within a dialog (re-INVITE,
BYE, UPDATE...), ACK or CANCEL; responses are never touched. When the To line cannot be found on
a line of its own (folded or missing) the request is *not* refused here: the full parser sees it.

:func:`top_branch` reads the branch of the first Via line: the ACK of a refused INVITE carries the
INVITE's branch (RFC 3261 s.17.1.1.3), so the adapter absorbs it instead of routing it, and a UDP
retransmission of a refused request is recognised (and dropped) by the same key.
"""

from __future__ import annotations

import re

__all__ = ["SHEDDABLE_METHODS", "refusal", "sheddable", "top_branch"]

SHEDDABLE_METHODS = (b"INVITE", b"REGISTER")

# RFC 3261 s.7.3.3 compact form "t"; s.25.1 header names are case-insensitive
_TO_LINE = re.compile(rb"\r\n(?:to|t)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_TAG = re.compile(rb";[ \t]*tag[ \t]*=", re.IGNORECASE)
_COPIED = {
    b"via": b"Via",
    b"v": b"Via",
    b"from": b"From",
    b"f": b"From",
    b"to": b"To",
    b"t": b"To",
    b"call-id": b"Call-ID",
    b"i": b"Call-ID",
    b"cseq": b"CSeq",
}


def sheddable(data: bytes) -> bytes | None:
    """The method (``b"INVITE"``/``b"REGISTER"``) when ``data`` starts new work; else None."""
    if data.startswith(b"REGISTER "):
        return b"REGISTER"
    if not data.startswith(b"INVITE "):
        return None
    head_end = data.find(b"\r\n\r\n")
    head = data if head_end < 0 else data[: head_end + 2]
    m = _TO_LINE.search(head)
    if m is None or head[m.end() : m.end() + 3] in (b"\r\n ", b"\r\n\t"):
        return None  # no To line of its own, or folded: let the parser decide
    if _TAG.search(m.group(1)) is not None:
        return None  # within a dialog
    return b"INVITE"


_NEEDED = re.compile(rb"\r\n(via|v|from|f|to|t|call-id|i|cseq)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_CANONICAL = dict(_COPIED)


def refusal(
    data: bytes, status: int, reason: str, retry_after: int, to_tag: str, server: str
) -> bytes | None:
    """A stateless response to the request in ``data`` (None when a needed header is missing)."""
    head_end = data.find(b"\r\n\r\n")
    head = data if head_end < 0 else data[: head_end + 2]
    vias: list[bytes] = []
    single: dict[bytes, bytes] = {}
    for name, value in _NEEDED.findall(head):
        canonical = _CANONICAL[name.lower()]
        if canonical == b"Via":
            vias.append(b"Via: " + value.rstrip())
        elif canonical not in single:
            single[canonical] = value.rstrip()
    if not vias or len(single) < 4:
        return None
    to = single[b"To"]
    if _TAG.search(to) is None:
        to += b";tag=" + to_tag.encode("ascii")
    return b"\r\n".join(
        [
            b"SIP/2.0 %d %s" % (status, reason.encode("ascii", "replace")),
            *vias,
            b"From: " + single[b"From"],
            b"To: " + to,
            b"Call-ID: " + single[b"Call-ID"],
            b"CSeq: " + single[b"CSeq"],
            b"Retry-After: %d" % retry_after,
            b"Server: " + server.encode("ascii", "replace"),
            b"Content-Length: 0\r\n\r\n",
        ]
    )


# RFC 3261 s.20.42: via-branch = "branch" EQUAL token
_VIA_LINE = re.compile(rb"\r\n(?:via|v)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_BRANCH = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)


def top_branch(data: bytes) -> bytes | None:
    """The branch parameter of the top Via (first element of the first Via line), else None."""
    head_end = data.find(b"\r\n\r\n")
    line = _VIA_LINE.search(data, 0, len(data) if head_end < 0 else head_end + 2)
    if line is None:
        return None
    m = _BRANCH.search(line.group(1).split(b",", 1)[0])
    return None if m is None else m.group(1)
