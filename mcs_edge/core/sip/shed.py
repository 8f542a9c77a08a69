"""Refusing a new request under overload from its bytes, before it is parsed (sans-IO).

Theory of operation
-------------------
Under overload the edge must spend as little as possible on what it refuses (RFC 7339 s.5.10,
RFC 6357 s.4: a 503 that costs as much as serving the request does not relieve anything). So a
request is read once: :func:`shed_fields` checks the request line and finds the five header lines
a response needs (RFC 3261 s.8.2.6: Via, From, To, Call-ID, CSeq) in one scan of the header
section, or says the request is not one to refuse here (in C, ``mcs_edge._wirescan.shed_fields``,
when the optional extension is built: 0.3 us instead of 3.6 for a REGISTER; the Python path,
``_shed_fields``, gives the same answer on every input); :class:`Refusals` writes the 503 from those
values between a status line and a tail (Retry-After, Server, Content-Length) built once.

Which requests may be refused (RFC 7339 s.5.10.1 and RFC 3261 s.21.5.4): only those that start new
work, an initial INVITE (no To tag) and REGISTER. Never a request within a dialog (re-INVITE, BYE,
UPDATE...), ACK or CANCEL; responses are never touched. What :func:`shed_fields` decides:

====================================================  =========================================
the request's bytes                                   :func:`shed_fields`
====================================================  =========================================
request line not ``INVITE ...`` / ``REGISTER ...``    None (ACK, CANCEL, BYE, other methods and
                                                      responses are never refused: RFC 7339
                                                      s.5.10.1, RFC 3261 s.21.5.4)
an INVITE whose To has a tag (in a dialog)            None (RFC 3261 s.12.2: a re-INVITE)
one of these header lines folded                      None (RFC 3261 s.7.3.1: the parser unfolds)
no Via, or no (or an empty) From, To, Call-ID, CSeq   None (no valid response can be built from
                                                      the bytes, RFC 3261 s.8.2.6: the parser
                                                      answers 400 or drops it, as without overload)
otherwise                                             method, Via values, From, To, Call-ID,
                                                      CSeq (the first of each single header)
====================================================  =========================================

:meth:`Refusals.answer` adds a To tag when the request's To has none (RFC 3261 s.8.2.6.2).

:func:`via_branch` reads the branch of the first via-parm of the top Via (:func:`top_branch` of a
whole message): the ACK of a refused INVITE carries the INVITE's branch (RFC 3261 s.17.1.1.3), so
the adapter absorbs it instead of routing it, and a UDP retransmission of a refused request is
recognised (and dropped) by the same key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeAlias

__all__ = ["SHEDDABLE_METHODS", "Refusals", "ShedFields", "shed_fields", "top_branch", "via_branch"]

SHEDDABLE_METHODS = (b"INVITE", b"REGISTER")

# RFC 3261 s.7.3.3 compact forms; s.25.1 header names are case-insensitive
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
# header names as sent (most often canonical) -> canonical: a lower() only for the others
_NAMES = {**_COPIED, **{name.capitalize(): value for name, value in _COPIED.items()}}
_NAMES.update({b"Call-ID": b"Call-ID", b"CSeq": b"CSeq", b"VIA": b"Via"})
# the lines of the five headers, and whether the next line continues one (RFC 3261 s.7.3.1 folding)
_NEEDED = re.compile(
    rb"\r\n(via|v|from|f|to|t|call-id|i|cseq)[ \t]*:[ \t]*([^\r\n]*)(\r\n[ \t])?", re.IGNORECASE
)
_TAG = re.compile(rb";[ \t]*tag[ \t]*=", re.IGNORECASE)

#: What :func:`shed_fields` reads: (method, Via values in order, From, To, Call-ID, CSeq).
ShedFields: TypeAlias = tuple[bytes, list[bytes], bytes, bytes, bytes, bytes]


def _shed_fields(data: bytes) -> ShedFields | None:
    """The method and the values a 503 echoes when ``data`` is a new INVITE/REGISTER that can be
    answered from its bytes, else None (the table in the module docstring). The Python path of
    :func:`shed_fields`."""
    if data.startswith(b"REGISTER "):
        method = b"REGISTER"
    elif data.startswith(b"INVITE "):
        method = b"INVITE"
    else:
        return None
    head_end = data.find(b"\r\n\r\n")
    head = data if head_end < 0 else data[: head_end + 2]
    vias: list[bytes] = []
    single: dict[bytes, bytes] = {}
    for name, value, folded in _NEEDED.findall(head):
        value = value.rstrip()
        if folded or not value:
            return None  # the parser unfolds it, or answers 400 (or drops it)
        canonical = _NAMES.get(name) or _NAMES[name.lower()]
        if canonical == b"Via":
            vias.append(value)
        elif canonical not in single:
            single[canonical] = value
    if not vias or len(single) < 4:
        return None
    to = single[b"To"]
    if method == b"INVITE" and _TAG.search(to) is not None:
        return None  # within a dialog
    return method, vias, single[b"From"], to, single[b"Call-ID"], single[b"CSeq"]


_c_shed_fields: Callable[[bytes], ShedFields | None] | None
try:  # the same function in C (mcs_edge/_wirescan.c, optional; tests/core/sip/test_wirescan.py)
    from mcs_edge._wirescan import shed_fields as _c_shed_fields
except ImportError:  # pragma: no cover - depends on the build
    _c_shed_fields = None

#: :func:`_shed_fields`, in C when the extension is built (one pass over the head, no regex)
shed_fields = _shed_fields if _c_shed_fields is None else _c_shed_fields


class Refusals:
    """Stateless responses with a fixed status line and tail, built once (RFC 3261 s.8.2.6)."""

    __slots__ = ("_head", "_tail")

    def __init__(self, status: int, reason: str, retry_after: int, server: str) -> None:
        self._head = b"SIP/2.0 %d %s\r\nVia: " % (status, reason.encode("ascii", "replace"))
        self._tail = b"\r\nRetry-After: %d\r\nServer: %s\r\nContent-Length: 0\r\n\r\n" % (
            retry_after,
            server.encode("ascii", "replace"),
        )

    def answer(self, fields: ShedFields, to_tag: bytes) -> bytes:
        """The response to the request ``fields`` were read from, with ``to_tag`` when its To has none."""
        method, vias, frm, to, call_id, cseq = fields
        # a new INVITE's To has none; a To without ";" has none (no regex for the common REGISTER)
        if method == b"INVITE" or b";" not in to or _TAG.search(to) is None:
            to += b";tag=" + to_tag
        return b"".join(
            (
                self._head,
                vias[0] if len(vias) == 1 else b"\r\nVia: ".join(vias),
                b"\r\nFrom: ",
                frm,
                b"\r\nTo: ",
                to,
                b"\r\nCall-ID: ",
                call_id,
                b"\r\nCSeq: ",
                cseq,
                self._tail,
            )
        )


# RFC 3261 s.20.42: via-branch = "branch" EQUAL token
_VIA_LINE = re.compile(rb"\r\n(?:via|v)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_BRANCH = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)


def via_branch(via: bytes) -> bytes | None:
    """The branch parameter of the first via-parm of one Via header value, else None."""
    m = _BRANCH.search(via.split(b",", 1)[0])
    return None if m is None else m.group(1)


def top_branch(data: bytes) -> bytes | None:
    """The branch parameter of the top Via (first element of the first Via line), else None."""
    head_end = data.find(b"\r\n\r\n")
    line = _VIA_LINE.search(data, 0, len(data) if head_end < 0 else head_end + 2)
    return None if line is None else via_branch(line.group(1))
