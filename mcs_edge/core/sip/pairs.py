"""A server transaction paired with the client transaction that forwards its request (RFC 3261 s.16.6).

In: the two transactions and the request as forwarded. Out: the record the proxy keeps per forwarded
request until its final response (and, compacted, while a 2xx may still be retransmitted).
"""

from __future__ import annotations

from dataclasses import dataclass

from .destinations import Dest
from .message import Request
from .transaction import ClientTransaction, ServerTransaction

__all__ = ["Pair"]


@dataclass(slots=True, eq=False)
class Pair:
    """A server transaction and the client transaction that forwards its request.

    Once the final response is sent the pair keeps only what a 2xx retransmission needs (method,
    Call-ID, whether the INVITE was initial): ``request`` is released (None) like the transactions'.
    """

    server: ServerTransaction
    tenant_id: str
    from_client: bool
    flow_id: int  # the client flow involved (source or target)
    request: Request | None  # the forwarded request (as sent); None once the final response is sent
    client: ClientTransaction | None = None
    got_provisional: bool = False
    cancel_pending: bool = False
    final_sent: bool = False
    #: The far side's 2xx carried an answer the media relay cannot use: that dialog was ACKed and
    #: BYEd by the edge (this ACK is re-sent for each 2xx retransmission).
    refused_ack: tuple[Dest, bytes] | None = None
    #: An early answer (18x) was unusable: the INVITE was CANCELled and refused; a 2xx that still
    #: comes is ACKed and BYEd.
    abandoned: bool = False
    method: str = ""
    call_id: str = ""
    initial: bool = False  # no To tag: creates a dialog (an initial INVITE is a new call)

    def __post_init__(self) -> None:
        request = self.request
        if request is not None:
            self.method = request.method
            self.call_id = request.call_id
            self.initial = request.to.tag is None
