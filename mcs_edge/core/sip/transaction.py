"""SIP transactions (RFC 3261 s.17 with the RFC 6026 corrections), sans-IO.

Theory of operation
-------------------
A transaction is one request and its responses between two hops. It owns the retransmission of
the request (client side, unreliable transports only) or of the last response (server side),
absorbs retransmissions coming the other way, and decides when the exchange is over.

Four state machines live here, one per (client|server) x (INVITE|non-INVITE). They are driven
by three kinds of input, always with the current monotonic time ``now``:

* ``ClientTransaction.receive_response(response, now)`` / ``ServerTransaction.receive_request
  (request, now)`` for messages matched to the transaction;
* ``ServerTransaction.send_response(response, now)`` when the TU (the proxy core) answers;
* ``handle_timer(now)`` when ``get_timer()``'s absolute deadline has passed; and
  ``transport_error(now)`` when the transport could not send.

Outputs are queued events, drained with ``next_event()`` (or ``drain_events()``): ``Send`` (bytes
to put on the wire, serialised once and re-sent as is), ``PassResponse`` (a response for the TU),
``PassAck`` (an ACK for a 2xx, which RFC 6026 hands to the TU), ``Timeout``, ``TransportError``
and finally ``Terminated``. All timers are absolute deadlines; nothing here reads a clock.

Timers (RFC 3261 table 4, RFC 6026), with T1=0.5 s, T2=4 s, T4=5 s by default (``TimerConfig``):

====  ===========================  ==================================  =====================
name  owner                        duration (unreliable)               reliable transport
====  ===========================  ==================================  =====================
A     INVITE client, Calling       T1, doubling (no cap, s.17.1.1.2)   not used
B     INVITE client, Calling       64*T1 -> Timeout                    64*T1
D     INVITE client, Completed     32 s (>= 64*T1)                     0
M     INVITE client, Accepted      64*T1 (RFC 6026)                    64*T1
E     non-INVITE client            T1, doubling up to T2; T2 once      not used
                                   Proceeding
F     non-INVITE client            64*T1 -> Timeout                    64*T1
K     non-INVITE client, Completed T4                                  0
G     INVITE server, Completed     T1, doubling up to T2               not used
H     INVITE server, Completed     64*T1 -> Timeout (no ACK)           64*T1
I     INVITE server, Confirmed     T4                                  0
J     non-INVITE server, Completed 64*T1                               0
L     INVITE server, Accepted      64*T1 (RFC 6026)                    64*T1
====  ===========================  ==================================  =====================

INVITE client transaction (s.17.1.1, RFC 6026 s.7.2)::

    state       input                 -> state       actions
    ----------  --------------------  -----------  ------------------------------------------
    Calling     timer A               Calling      resend INVITE, A *= 2
    Calling     timer B               Terminated   Timeout
    Calling     1xx                   Proceeding   PassResponse; stop A, B
    Calling/    2xx                   Accepted     PassResponse; start M
      Proceeding
    Calling/    300-699               Completed    PassResponse; send ACK; start D
      Proceeding
    Proceeding  1xx                   Proceeding   PassResponse
    Accepted    2xx                   Accepted     PassResponse (the TU ACKs each 2xx)
    Accepted    timer M               Terminated
    Completed   300-699               Completed    resend ACK
    Completed   timer D               Terminated
    any         transport error       Terminated   TransportError

non-INVITE client transaction (s.17.1.2)::

    Trying      timer E               Trying       resend, E = min(2E, T2)
    Proceeding  timer E               Proceeding   resend, E = T2
    Trying/Pr.  timer F               Terminated   Timeout
    Trying/Pr.  1xx                   Proceeding   PassResponse
    Trying/Pr.  200-699               Completed    PassResponse; start K
    Completed   any response          Completed    (absorbed)
    Completed   timer K               Terminated

INVITE server transaction (s.17.2.1, RFC 6026 s.7.1)::

    Proceeding  INVITE again          Proceeding   resend last 1xx (if any)
    Proceeding  TU 1xx                Proceeding   send
    Proceeding  TU 2xx                Accepted     send; start L
    Proceeding  TU 300-699            Completed    send; start G (unreliable), H
    Proceeding  trying timer          Proceeding   send 100 Trying (unless the TU sent a 1xx)
    Accepted    INVITE again          Accepted     (absorbed)
    Accepted    TU 2xx                Accepted     send
    Accepted    ACK                   Accepted     PassAck
    Accepted    timer L               Terminated
    Completed   INVITE again          Completed    resend final
    Completed   timer G               Completed    resend final, G = min(2G, T2)
    Completed   ACK                   Confirmed    start I
    Completed   timer H               Terminated   Timeout
    Confirmed   INVITE/ACK again      Confirmed    (absorbed)
    Confirmed   timer I               Terminated

non-INVITE server transaction (s.17.2.2)::

    Trying      request again         Trying       (absorbed)
    Trying/Pr.  TU 1xx                Proceeding   send
    Proceeding  request again         Proceeding   resend last 1xx
    Trying/Pr.  TU 200-699            Completed    send; start J
    Completed   request again         Completed    resend final
    Completed   timer J               Terminated

Matching (s.17.1.3, s.17.2.3): responses match a client transaction by the branch of their top
Via and the CSeq method. Requests match a server transaction by (branch, sent-by, method) when the
branch has the magic cookie, ACK matching its INVITE; for RFC 2543 branches by Request-URI,
From tag, Call-ID, CSeq number, top Via and method (the To tag is left out, so an ACK finds the
INVITE it acknowledges). ``TransactionLayer`` holds both tables, one timer heap and one event
queue for all transactions.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from enum import Enum

from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

from ._frozen import fast_init
from .headers import MAGIC_COOKIE, Headers, Via, parse_via_tuple
from .message import Request, Response

__all__ = [
    "TIMER_GRID",
    "ClientTransaction",
    "Event",
    "PassAck",
    "PassResponse",
    "Send",
    "ServerTransaction",
    "State",
    "Terminated",
    "Timeout",
    "TimerConfig",
    "Transaction",
    "TransactionLayer",
    "TransportError",
    "client_key",
    "cookie_server_key",
    "server_key",
]


class State(Enum):
    """Transaction states (RFC 3261 s.17, RFC 6026)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """T1, T2, T4 (RFC 3261 s.17.1.1.1, table 4), the 100 Trying delay, Timer D's floor, and the
    timer grid.

    ``granularity``: deadlines are filed on a grid of this step (rounded up, so a timer fires at
    most one step late, never early), and transactions whose deadlines fall in the same step fire
    together. Every transaction has its own deadline (its start time plus T1, T4, 64*T1), so
    without a grid a proxy at 1,000 transactions/s has a timer due every millisecond and the
    adapter re-arms a reactor timer for each; on the 1/64 s grid that is at most 64 a second. The
    RFC's timers are hundreds of milliseconds to seconds (T1 = 500 ms), so 16 ms late is well
    inside their purpose (retransmission back-off, state clean-up). A power of two keeps deadlines
    that are whole multiples of it (T1 = 0.5 s from a whole second) exactly where they were.
    0 (the default) = exact deadlines; the edge's router uses :data:`TIMER_GRID`.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    trying_delay: float | None = 0.2
    timer_d: float = 32.0
    granularity: float = 0.0


DEFAULT_TIMERS = TimerConfig()

#: The timer grid of the edge's proxy (``TimerConfig.granularity``): 1/64 s.
TIMER_GRID = 1 / 64

ClientKey = tuple[str, str]
ServerKey = tuple[str, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class Send:
    """Put ``data`` (the wire form of ``message``) on the transaction's transport.

    ``message`` is None for a retransmission by a completed transaction (only its bytes are kept).
    """

    transaction: Transaction
    message: Request | Response | None
    data: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class PassResponse:
    """A response for the TU (client transactions)."""

    transaction: ClientTransaction
    response: Response


@fast_init
@dataclass(frozen=True, slots=True)
class PassAck:
    """An ACK for a 2xx, received while the INVITE server transaction was Accepted."""

    transaction: ServerTransaction
    ack: Request


@fast_init
@dataclass(frozen=True, slots=True)
class Timeout:
    """Timer B, F or H fired: the peer did not answer (or did not ACK)."""

    transaction: Transaction


@fast_init
@dataclass(frozen=True, slots=True)
class TransportError:
    """The transport failed to send for this transaction."""

    transaction: Transaction


@fast_init
@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction is over; drop every reference to it."""

    transaction: Transaction


Event = Send | PassResponse | PassAck | Timeout | TransportError | Terminated


# Method names of keys, shared (a key outlives its parsed message: no copy per transaction).
_METHODS = {
    m: m
    for m in (
        *("INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "PRACK", "SUBSCRIBE", "NOTIFY"),
        *("PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"),
    )
}

_SENT_BY: dict[str, str] = {}
_SENT_BY_MAX = 4096


def client_key(branch: str, method: str) -> ClientKey:
    """Client transaction key (s.17.1.3): top Via branch and CSeq method (ACK counts as INVITE)."""
    return branch, "INVITE" if method == "ACK" else _METHODS.get(method, method)


def cookie_server_key(branch: str, host: str, port: int | None, method: str) -> ServerKey:
    """Server transaction key for an RFC 3261 branch: (branch, sent-by, method), sent-by as one string."""
    method = "INVITE" if method == "ACK" else _METHODS.get(method, method)
    sent_by = host if port is None else f"{host}:{port}"
    # One shared string per sent-by, not a copy per transaction (58 B each kept while Timers
    # L/H/J hold the transaction). Bounded: past the limit new values are simply not shared.
    shared = _SENT_BY.get(sent_by)
    if shared is None:
        if len(_SENT_BY) < _SENT_BY_MAX:
            _SENT_BY[sent_by] = sent_by
        shared = sent_by
    return branch, shared, method


def server_key(request: Request, top: Via | None = None) -> ServerKey:
    """Server transaction key of a request (s.17.2.3); ACK maps to its INVITE.

    ``top``: the top Via as received, already parsed by the caller (the request's own may have
    been stamped with ``received`` since: the branch and sent-by, all an RFC 3261 key holds, are
    the same); an RFC 2543 key is made from the request's Via as it is now, as without ``top``.
    """
    method = "INVITE" if request.method == "ACK" else request.method
    if top is not None:
        branch = top.branch
        if branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
            host, port = top.sent_by
            return cookie_server_key(branch, host, port, method)
    via = parse_via_tuple(request.headers.first_value("via") or "")[0]
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
        host, port = via.sent_by
        return cookie_server_key(branch, host, port, method)
    cseq = request.cseq
    from_tag = request.from_.tag or ""
    return ("2543", request.uri, from_tag, request.call_id, str(cseq.seq), str(via), method)


class Transaction:
    """State, timers and event queue shared by client and server transactions."""

    __slots__ = (
        "_events",
        "_layer",
        "_request",
        "config",
        "deadlines",
        "due_bucket",
        "is_invite",
        "key",
        "method",
        "reliable",
        "state",
    )

    def __init__(
        self,
        request: Request,
        reliable: bool,
        config: TimerConfig,
        events: deque[Event] | None,
    ) -> None:
        self._request: Request | None = request
        # The shared name, not the parsed message's string (57 B kept per retained transaction).
        self.method = _METHODS.get(request.method, request.method)
        self.reliable = reliable
        self.config = config
        self.is_invite = self.method == "INVITE"
        self.state = State.TERMINATED
        self.deadlines: dict[str, float] = {}
        self._events: deque[Event] = deque() if events is None else events
        self._layer: TransactionLayer | None = None
        self.due_bucket: float | None = None  # the layer's bucket this transaction sits in
        self.key: tuple[str, ...] = ()

    @property
    def request(self) -> Request:
        """The request that created the transaction (released once it completes, see above)."""
        request = self._request
        if request is None:
            raise LocalProtocolError(f"{self!r}: the request was released when the transaction completed")
        return request

    @property
    def released(self) -> bool:
        """True once only the compact record is left (no parsed messages)."""
        return self._request is None

    def _release(self) -> None:
        """Keep only the compact record (match key, state, deadlines, bytes to resend)."""
        self._request = None

    # --- output -------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """Pop the next queued event (``None`` when empty)."""
        return self._events.popleft() if self._events else None

    def drain_events(self) -> list[Event]:
        """Pop every queued event."""
        out = list(self._events)
        self._events.clear()
        return out

    # --- timers -------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest absolute deadline, or ``None``."""
        return min(self.deadlines.values()) if self.deadlines else None

    def timer(self, name: str) -> float | None:
        """The deadline of one named timer (``"A"`` ... ``"M"``), or ``None``."""
        return self.deadlines.get(name)

    def _start(self, name: str, deadline: float) -> None:
        self.deadlines[name] = deadline
        if self._layer is not None:
            self._layer.schedule(self)

    def _stop(self, *names: str) -> None:
        for name in names:
            self.deadlines.pop(name, None)

    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline is at or before ``now``, earliest first."""
        while self.state is not State.TERMINATED:
            due = [(t, n) for n, t in self.deadlines.items() if t <= now]
            if not due:
                return
            deadline, name = min(due)
            del self.deadlines[name]
            self._fire(name, deadline, now)

    def _fire(self, name: str, deadline: float, now: float) -> None:
        raise NotImplementedError

    def transport_error(self, now: float) -> None:
        """The transport failed: report it and terminate (s.17.1.4, s.17.2.4)."""
        if self.state is State.TERMINATED:
            return
        self._events.append(TransportError(self))
        self._terminate()

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self.deadlines.clear()
        self._events.append(Terminated(self))
        if self._layer is not None:
            self._layer.forget(self)

    def _send(self, message: Request | Response | None, data: bytes | None = None) -> bytes:
        if data is None:
            assert message is not None
            data = message.serialize()
        self._events.append(Send(self, message, data))
        return data

    def _end_after(self, name: str, now: float, delay: float) -> None:
        """Start the timer that ends a completed transaction; 0 (reliable transport): end now."""
        if delay <= 0.0:
            self._terminate()
        else:
            self._start(name, now + delay)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.state.value} {self.key!r}>"


class ClientTransaction(Transaction):
    """A client transaction (s.17.1): sends ``request`` at construction time."""

    __slots__ = ("_ack_data", "_interval", "_request_data", "last_response")

    def __init__(
        self,
        request: Request,
        now: float,
        *,
        reliable: bool,
        config: TimerConfig = DEFAULT_TIMERS,
        events: deque[Event] | None = None,
        layer: TransactionLayer | None = None,
        key: ClientKey | None = None,
    ) -> None:
        if request.method == "ACK":
            raise LocalProtocolError("ACK is not sent in a client transaction")
        super().__init__(request, reliable, config, events)
        top = request.top_via
        branch = top.branch
        if branch is None or not branch.startswith(MAGIC_COOKIE):
            raise LocalProtocolError("client transactions need a z9hG4bK branch in the top Via")
        self.key = client_key(branch, request.cseq.method) if key is None else key
        self._layer = layer
        self.last_response: Response | None = None
        self._ack_data: bytes | None = None
        t1 = config.t1
        self._interval = t1
        self._request_data = self._send(request)
        if self.is_invite:
            self.state = State.CALLING
            if not reliable:
                self._start("A", now + t1)
            self._start("B", now + 64 * t1)
        else:
            self.state = State.TRYING
            if not reliable:
                self._start("E", now + t1)
            self._start("F", now + 64 * t1)

    def _release(self) -> None:
        super()._release()
        self._request_data = b""
        self.last_response = None

    def _fire(self, name: str, deadline: float, now: float) -> None:
        state = self.state
        t2 = self.config.t2
        if name == "A" and state is State.CALLING:
            self._send(self.request, self._request_data)
            self._interval *= 2
            self._start("A", deadline + self._interval)
        elif name == "E" and state in (State.TRYING, State.PROCEEDING):
            self._send(self.request, self._request_data)
            self._interval = t2 if state is State.PROCEEDING else min(2 * self._interval, t2)
            self._start("E", deadline + self._interval)
        elif (name == "B" and state is State.CALLING) or (
            name == "F" and state in (State.TRYING, State.PROCEEDING)
        ):
            self._events.append(Timeout(self))
            self._terminate()
        elif name in ("D", "K", "M"):
            self._terminate()

    def receive_response(self, response: Response, now: float) -> None:
        """Feed a response matched to this transaction."""
        status = response.status
        state = self.state
        if state is State.TERMINATED:
            return
        if self.is_invite:
            if state in (State.CALLING, State.PROCEEDING):
                self.last_response = response
                self._events.append(PassResponse(self, response))
                if status < 200:
                    self.state = State.PROCEEDING
                    self._stop("A", "B")
                elif status < 300:
                    self.state = State.ACCEPTED
                    self._stop("A", "B")
                    self._release()
                    self._start("M", now + 64 * self.config.t1)
                else:
                    self.state = State.COMPLETED
                    self._stop("A", "B")
                    self._ack_data = self._send(self._build_ack(response))
                    self._release()
                    self._end_after("D", now, 0.0 if self.reliable else self.config.timer_d)
            elif state is State.ACCEPTED:
                if 200 <= status < 300:
                    self._events.append(PassResponse(self, response))
            elif state is State.COMPLETED and status >= 300 and self._ack_data is not None:
                self._send(None, self._ack_data)
        elif state in (State.TRYING, State.PROCEEDING):
            self.last_response = response
            self._events.append(PassResponse(self, response))
            if status < 200:
                if state is State.TRYING:
                    self.state = State.PROCEEDING
            else:
                self.state = State.COMPLETED
                self._stop("E", "F")
                self._release()
                self._end_after("K", now, 0.0 if self.reliable else self.config.t4)

    def _build_ack(self, response: Response) -> Request:
        """The ACK for a non-2xx final response (s.17.1.1.3)."""
        req = self.request.headers
        fields: list[tuple[str, str]] = [("Via", req.first_value("via") or "")]
        for name, value in req:
            if name.lower() == "route":
                fields.append((name, value))
        fields.append(("Max-Forwards", "70"))
        fields.append(("From", req.get("from") or ""))
        fields.append(("To", response.headers.get("to") or req.get("to") or ""))
        fields.append(("Call-ID", req.get("call-id") or ""))
        fields.append(("CSeq", f"{self.request.cseq.seq} ACK"))
        fields.append(("Content-Length", "0"))
        return Request("ACK", self.request.uri, Headers(fields))


class ServerTransaction(Transaction):
    """A server transaction (s.17.2), created for a request that matched no transaction."""

    __slots__ = ("_interval", "_last_data", "last_response")

    def __init__(
        self,
        request: Request,
        now: float,
        *,
        reliable: bool,
        config: TimerConfig = DEFAULT_TIMERS,
        events: deque[Event] | None = None,
        layer: TransactionLayer | None = None,
        key: ServerKey | None = None,
    ) -> None:
        if request.method == "ACK":
            raise LocalProtocolError("an ACK does not create a server transaction")
        super().__init__(request, reliable, config, events)
        self.key = server_key(request) if key is None else key
        self._layer = layer
        self.last_response: Response | None = None
        self._last_data: bytes | None = None
        self._interval = config.t1
        if self.is_invite:
            self.state = State.PROCEEDING
            if config.trying_delay is not None:
                self._start("trying", now + config.trying_delay)
        else:
            self.state = State.TRYING

    def _release(self) -> None:
        super()._release()
        self.last_response = None

    def receive_request(self, request: Request, now: float) -> None:
        """Feed a retransmitted request (or the ACK) matched to this transaction."""
        state = self.state
        if request.method == "ACK":
            if not self.is_invite:
                return
            if state is State.COMPLETED:
                self.state = State.CONFIRMED
                self._stop("G", "H")
                self._last_data = None
                self._end_after("I", now, 0.0 if self.reliable else self.config.t4)
            elif state is State.ACCEPTED:
                self._events.append(PassAck(self, request))
            return
        if state in (State.PROCEEDING, State.COMPLETED) and self._last_data is not None:
            self._send(self.last_response, self._last_data)
        # Trying, Accepted, Confirmed, Terminated: absorbed

    def send_response(self, response: Response, now: float) -> None:
        """Send the TU's response through the transaction."""
        status = response.status
        state = self.state
        config = self.config
        if self.is_invite:
            if state is State.PROCEEDING:
                self._stop("trying")
                self.last_response = response
                self._last_data = self._send(response)
                if status >= 300:
                    self.state = State.COMPLETED
                    self._release()
                    if not self.reliable:
                        self._start("G", now + config.t1)
                    self._start("H", now + 64 * config.t1)
                elif status >= 200:
                    self.state = State.ACCEPTED
                    self._release()
                    self._last_data = None  # 2xx retransmissions come from the TU (RFC 6026)
                    self._start("L", now + 64 * config.t1)
            elif state is State.ACCEPTED and 200 <= status < 300:
                self._send(response)
            else:
                raise LocalProtocolError(f"cannot send {status} in state {state.value}")
        else:
            if state in (State.TRYING, State.PROCEEDING):
                self.last_response = response
                self._last_data = self._send(response)
                if status < 200:
                    self.state = State.PROCEEDING
                else:
                    self.state = State.COMPLETED
                    self._release()
                    self._end_after("J", now, 0.0 if self.reliable else 64 * config.t1)
            else:
                raise LocalProtocolError(f"cannot send {status} in state {state.value}")

    def _fire(self, name: str, deadline: float, now: float) -> None:
        state = self.state
        if name == "trying" and state is State.PROCEEDING and self.last_response is None:
            self.last_response = Response.for_request(self.request, 100, "Trying")
            self._last_data = self._send(self.last_response)
        elif name == "G" and state is State.COMPLETED and self._last_data is not None:
            self._send(None, self._last_data)
            self._interval = min(2 * self._interval, self.config.t2)
            self._start("G", deadline + self._interval)
        elif name == "H" and state is State.COMPLETED:
            self._events.append(Timeout(self))
            self._terminate()
        elif name in ("I", "J", "L"):
            self._terminate()


class TransactionLayer:
    """Both transaction tables, one timer heap and one event queue.

    ``send_request`` starts a client transaction; ``receive_response`` and ``receive_request``
    route incoming messages; ``get_timer``/``handle_timer`` drive every timer; ``next_event``
    drains the events of all transactions. Terminated transactions leave the tables by themselves.
    """

    __slots__ = ("_buckets", "_clients", "_events", "_grid", "_heap", "_servers", "config")

    def __init__(self, config: TimerConfig = DEFAULT_TIMERS) -> None:
        self.config = config
        # steps per second of the timer grid (TimerConfig.granularity), 0 = exact deadlines
        self._grid = 1 / config.granularity if config.granularity > 0 else 0.0
        self._clients: dict[ClientKey, ClientTransaction] = {}
        self._servers: dict[ServerKey, ServerTransaction] = {}
        self._events: deque[Event] = deque()
        # Timers: each transaction is filed under its earliest deadline rounded up to the grid (a
        # list when several share it); the heap holds those grid points as plain floats, so an outdated one holds no
        # transaction alive and costs a few bytes until it is popped.
        self._buckets: dict[float, Transaction | list[Transaction]] = {}
        self._heap: list[float] = []

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    def send_request(self, request: Request, now: float, *, reliable: bool) -> ClientTransaction:
        """Start a client transaction for ``request`` (its top Via carries a fresh branch)."""
        key = client_key(request.top_via.branch or "", request.cseq.method)
        if key in self._clients:
            raise LocalProtocolError(f"client transaction {key!r} already exists")
        tx = ClientTransaction(
            request, now, reliable=reliable, config=self.config, events=self._events, layer=self, key=key
        )
        self._clients[key] = tx
        return tx

    def receive_response(
        self, response: Response, now: float, top: Via | None = None
    ) -> ClientTransaction | None:
        """Route a response to its client transaction; ``None`` when it matches none (``top``: its
        top Via when the caller parsed it already)."""
        branch = (response.top_via if top is None else top).branch
        if branch is None:
            return None
        tx = self._clients.get(client_key(branch, response.cseq.method))
        if tx is not None:
            tx.receive_response(response, now)
        return tx

    def server(self, key: ServerKey) -> ServerTransaction | None:
        """The server transaction with this key (see :func:`cookie_server_key`)."""
        return self._servers.get(key)

    def find_server(self, request: Request) -> ServerTransaction | None:
        """The server transaction a request (or ACK, or retransmission) belongs to."""
        try:
            return self._servers.get(server_key(request))
        except RemoteProtocolError:
            return None

    def receive_request(
        self, request: Request, now: float, *, reliable: bool, top: Via | None = None
    ) -> tuple[ServerTransaction | None, bool]:
        """Route a request: ``(tx, True)`` for a new server transaction the TU must handle,
        ``(tx, False)`` for a retransmission or ACK absorbed by ``tx``, ``(None, False)`` for an
        ACK that matches no transaction (an ACK for a 2xx: forward it statelessly). ``top``: see
        :func:`server_key`.
        """
        key = server_key(request, top)
        tx = self._servers.get(key)
        if tx is not None:
            tx.receive_request(request, now)
            return tx, False
        if request.method == "ACK":
            return None, False
        tx = ServerTransaction(
            request, now, reliable=reliable, config=self.config, events=self._events, layer=self, key=key
        )
        self._servers[key] = tx
        return tx, True

    def send_response(self, tx: ServerTransaction, response: Response, now: float) -> None:
        """Send the TU's response through ``tx`` (same as ``tx.send_response``)."""
        tx.send_response(response, now)

    def get_timer(self) -> float | None:
        """The earliest deadline of any transaction (possibly of a timer stopped since: harmless)."""
        heap = self._heap
        buckets = self._buckets
        while heap:
            if heap[0] in buckets:
                return heap[0]
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Fire every due timer of every transaction."""
        heap = self._heap
        buckets = self._buckets
        while heap and heap[0] <= now:
            entry = buckets.pop(heapq.heappop(heap), None)
            if entry is None:
                continue
            for tx in entry if isinstance(entry, list) else (entry,):
                tx.due_bucket = None
                if tx.state is not State.TERMINATED:
                    tx.handle_timer(now)
                    self.schedule(tx)

    def next_event(self) -> Event | None:
        """Pop the next event of any transaction."""
        return self._events.popleft() if self._events else None

    def drain_events(self) -> list[Event]:
        """Pop every queued event."""
        out = list(self._events)
        self._events.clear()
        return out

    def schedule(self, tx: Transaction) -> None:
        """File ``tx`` under its earliest deadline (after a timer started or fired)."""
        deadlines = tx.deadlines
        due = min(deadlines.values()) if deadlines else None
        if due is not None and self._grid:
            due = math.ceil(due * self._grid) / self._grid
        old = tx.due_bucket
        if due == old:
            return
        if old is not None:
            self._unfile(tx, old)
        tx.due_bucket = due
        if due is not None:
            buckets = self._buckets
            entry = buckets.get(due)
            if entry is None:
                buckets[due] = tx
                heapq.heappush(self._heap, due)
            elif isinstance(entry, list):
                entry.append(tx)
            else:
                buckets[due] = [entry, tx]

    def _unfile(self, tx: Transaction, due: float) -> None:
        buckets = self._buckets
        entry = buckets.get(due)
        if entry is tx:
            del buckets[due]
        elif isinstance(entry, list) and tx in entry:
            entry.remove(tx)
            if not entry:
                del buckets[due]

    def forget(self, tx: Transaction) -> None:
        if tx.due_bucket is not None:
            self._unfile(tx, tx.due_bucket)
            tx.due_bucket = None
        if isinstance(tx, ClientTransaction):
            key = (tx.key[0], tx.key[1])
            if self._clients.get(key) is tx:
                del self._clients[key]
        elif isinstance(tx, ServerTransaction) and self._servers.get(tx.key) is tx:
            del self._servers[tx.key]
