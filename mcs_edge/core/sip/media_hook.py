"""The proxy's hooks: media anchoring and requests the edge answers itself.

:class:`MediaHook` is what the proxy hands every SDP body to (implemented by
:class:`mcs_edge.core.media.anchor.MediaAnchor`): in, a request or response with its pair and
direction; out, None (the body was rewritten in place) or an error status that refuses the message.
It also hears of ended calls, lost and moved connections, and may answer a client's re-INVITE that
only changed the client's own transport (:meth:`MediaHook.answer_locally`, RFC 3261 s.14: the PBX
need not know). :class:`PassthroughMedia` changes nothing.

:class:`LocalService` is asked about each client request after the tenant checks (the echo
service, :mod:`mcs_edge.core.media.echo_ua`); a claimed request is answered by it, not forwarded.

=========================================  =================================================
the hook answers                           the proxy does
=========================================  =================================================
None to a request's SDP                    forwards the request with the rewritten body
a status to a request's SDP                answers the request with that status (488, 503)
a status to a 18x answer (initial INVITE)  CANCELs the INVITE, answers 488 (RFC 3261 s.9.1)
a status to a 2xx answer (INVITE)          ACKs and BYEs that dialog, answers 488
                                           (RFC 3261 s.13.3.1.4: no half-open call)
a status to another 1xx or 2xx             relays 500 "Media Error" instead
=========================================  =================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .message import Request, Response

if TYPE_CHECKING:
    from .flows import Flow
    from .pairs import Pair

__all__ = ["LocalService", "MediaHook", "PassthroughMedia"]


class MediaHook(Protocol):
    """Rewrites SDP bodies; returns an error response status to refuse (e.g. 488, 503)."""

    def on_message(
        self, pair: Pair | None, message: Request | Response, from_client: bool, now: float
    ) -> int | None: ...

    def on_end(self, call_id: str, reason: str, tenant_id: str | None = None) -> None: ...

    def on_flow_closed(self, flow_id: int, now: float) -> None: ...

    def park(self, call_id: str, until: float, now: float) -> None:
        """The call's client connection is lost: keep its media until ``until`` (or a move/end)."""
        ...

    def move(self, call_id: str, flow_id: int, until: float, now: float) -> None:
        """The call now belongs to client connection ``flow_id``; its client leg may re-anchor
        until ``until``."""
        ...

    def answer_locally(self, tenant_id: str, request: Request, now: float) -> bytes | None:
        """The SDP answer to a client's re-INVITE that only changed the client's own transport
        (the PBX need not know), or None to forward the re-INVITE."""
        ...


class LocalService(Protocol):
    """Requests the edge answers itself instead of forwarding them (the echo service, tx/media/echo.py).

    ``claims`` is asked about every request from a client after the tenant checks (initial requests
    only reach it when they address a domain of the flow's tenant); a claimed request is given to
    ``request``, whose response (None for an ACK) goes back through the server transaction.
    """

    def claims(self, flow: Flow, request: Request) -> bool: ...

    def request(self, flow: Flow, request: Request, now: float) -> Response | None: ...

    def on_flow_closed(self, flow_id: int, now: float) -> None: ...


class PassthroughMedia:
    """The media hook that changes nothing (until media anchoring is configured)."""

    def on_message(
        self, pair: Pair | None, message: Request | Response, from_client: bool, now: float
    ) -> int | None:
        return None

    def on_end(self, call_id: str, reason: str, tenant_id: str | None = None) -> None:
        return None

    def on_flow_closed(self, flow_id: int, now: float) -> None:
        return None

    def park(self, call_id: str, until: float, now: float) -> None:
        return None

    def move(self, call_id: str, flow_id: int, until: float, now: float) -> None:
        return None

    def answer_locally(self, tenant_id: str, request: Request, now: float) -> bytes | None:
        return None
