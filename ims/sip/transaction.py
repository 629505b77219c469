"""The SIP transaction layer (RFC 3261 section 17, updated by RFC 6026), sans-IO.

`TransactionLayer` takes received messages, the TU's requests and responses, and the time
(`now`, any monotonic clock in seconds), and produces events drained with `next_event()`:
messages to send and what the TU must hear. It never reads a clock; `get_timer()` says when it
next wants `handle_timer(now)`. The state machines themselves are the tables in
`ims.sip.transaction_state`; this module matches messages to transactions (17.1.3, 17.2.3),
runs the tables, keeps the timers and builds the few messages a transaction builds itself: the
ACK for a non-2xx final response (17.1.1.3). `make_cancel` (9.1) is here too, since CANCEL is
built from the INVITE client transaction's request.

Requests and responses are checked with `ims.sip.checks` on receipt: a broken request is
answered statelessly (400, naming the defect), a broken response dropped (18.1.2).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from ims.sip.address import Address
from ims.sip.checks import Reject, Valid, check_message
from ims.sip.errors import LocalProtocolError, ProtocolError
from ims.sip.headers import Via
from ims.sip.ids import is_rfc3261_branch
from ims.sip.message import (
    Headers,
    Message,
    Request,
    Response,
    make_response,
    parse_message,
    serialize,
)
from ims.sip.transaction_state import (
    INITIAL,
    LIVE_TIMERS,
    RETRANSMIT_TIMERS,
    TRANSITIONS,
    Action,
    Input,
    Role,
    State,
    Stimulus,
    Timer,
    TimerSettings,
    Transition,
    timer_duration,
)

__all__ = [
    "AckReceived",
    "CancelReceived",
    "Event",
    "RequestReceived",
    "ResponseReceived",
    "SendMessage",
    "State",
    "TimerSettings",
    "TransactionKey",
    "TransactionLayer",
    "TransactionLimitReached",
    "TransactionStats",
    "TransactionTerminated",
    "TransactionTimeout",
    "TransportFailure",
    "client_key",
    "make_ack_for_error",
    "make_cancel",
    "make_trying",
    "response_destination",
    "server_key",
    "transaction_identity",
]

_M = TypeVar("_M", Request, Response)

DEFAULT_MAX_TRANSACTIONS = 10_000
DEFAULT_RETRY_AFTER = 5


# --- keys -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """What identifies one transaction (RFC 3261 section 17.1.3 and 17.2.3).

    Client side: the branch and the CSeq method. Server side: the branch, the top Via sent-by
    and the method (INVITE for an ACK); for an RFC 2543 peer (branch without the magic cookie)
    `legacy` holds Request-URI, From tag, Call-ID, CSeq number, top Via and To tag instead.
    """

    is_server: bool
    method: str
    branch: str = ""
    sent_by: str = ""
    legacy: tuple[str, ...] = ()

    def __str__(self) -> str:
        side = "server" if self.is_server else "client"
        if self.legacy:
            return f"{side} {self.method} (RFC 2543: Call-ID {self.legacy[2]})"
        at = f" from {self.sent_by}" if self.sent_by else ""
        return f"{side} {self.method} {self.branch}{at}"


def client_key(message: Message) -> TransactionKey:
    """The client transaction a request creates or a response belongs to (17.1.3)."""
    branch = message.top_via.branch or ""
    return TransactionKey(is_server=False, method=message.cseq.method, branch=branch)


def server_key(request: Request) -> TransactionKey:
    """The server transaction a request belongs to (17.2.3); an ACK maps to its INVITE."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    if is_rfc3261_branch(via.branch):
        port = "" if via.port is None else str(via.port)
        return TransactionKey(
            is_server=True,
            method=method,
            branch=via.branch or "",
            sent_by=f"{via.host.lower()}:{port}",
        )
    # RFC 2543 fallback (17.2.3, last paragraphs). The To tag of an ACK is the one of our
    # response, not of the INVITE, so the ACK's own To tag is not part of its key.
    to_tag = "" if request.method == "ACK" else (request.to.tag or "")
    legacy = (
        str(request.uri),
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.number),
        str(via),
        to_tag,
    )
    return TransactionKey(is_server=True, method=method, legacy=legacy)


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Put `message` on the wire towards `destination`."""

    message: Message
    destination: Address


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new server transaction: the TU answers it with `send_response(key, ...)`."""

    request: Request
    source: Address
    key: TransactionKey


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK that is not part of a transaction: the ACK for a 2xx (RFC 3261 13.3.1.4,
    17.2.3). `key` is the INVITE server transaction still in the Accepted state it matched
    (RFC 6026 section 7.1), else None."""

    request: Request
    source: Address
    key: TransactionKey | None = None


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """A CANCEL, which is its own non-INVITE server transaction `key` (9.2); `invite_key` is
    the live INVITE server transaction it matches, None when there is none (answer 481)."""

    request: Request
    source: Address
    key: TransactionKey
    invite_key: TransactionKey | None


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for the client transaction `key`; None for a stray response that matched
    none (RFC 6026 section 7.3: the TU decides, e.g. a proxy forwards a stray 2xx to INVITE)."""

    response: Response
    key: TransactionKey | None


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Timer B or F fired (act as on 408, 8.1.3.1), or Timer H: the ACK never came (17.2.1)."""

    key: TransactionKey
    request: Request


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """The adapter reported that a message of this transaction could not be sent (8.1.3.1).

    A server transaction that has sent its final response no longer holds the request (see
    `_WAITING`): `request` is then rebuilt from that response, with its Via, From, To, Call-ID
    and CSeq (which 8.2.6.2 copied from the request; To now tagged) and the To URI as
    Request-URI.
    """

    key: TransactionKey
    request: Request


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    key: TransactionKey


Event = (
    SendMessage
    | RequestReceived
    | AckReceived
    | CancelReceived
    | ResponseReceived
    | TransactionTimeout
    | TransportFailure
    | TransactionTerminated
)


class TransactionLimitReached(LocalProtocolError):
    """`send_request` beyond the configured number of live transactions."""


@dataclass(slots=True)
class TransactionStats:
    """Counters of what the layer discarded or refused, for the operator's metrics."""

    retransmissions_absorbed: int = 0
    stray_responses: int = 0
    rejected_malformed: int = 0
    dropped_malformed: int = 0
    rejected_overload: int = 0


# --- messages a transaction builds ------------------------------------------------------------


def make_trying(request: Request) -> Response:
    """The 100 Trying an INVITE server transaction owes within 200 ms (17.2.1): 8.2.6 rules,
    no To tag (make_response adds none to a 100), Timestamp echoed (8.2.6.1)."""
    return make_response(request, 100)


def make_ack_for_error(invite: Request, response: Response) -> Request:
    """The ACK for a 3xx-6xx response to `invite` (RFC 3261 section 17.1.1.3): Request-URI,
    Call-ID, From and CSeq number of the INVITE, To of the response, the INVITE's top Via alone
    (so the same branch), its Route header fields."""
    h = invite.headers
    top_via = h.get("Via")
    to = response.headers.get("To")
    if top_via is None or to is None:
        raise LocalProtocolError("cannot build the ACK: the INVITE or response lacks Via / To")
    items: list[tuple[str, str]] = [("Via", top_via)]
    items.extend(("Route", v) for v in h.get_all("Route"))
    items.append(("Max-Forwards", h.get("Max-Forwards") or "70"))
    items.append(("From", h.get("From") or ""))
    items.append(("To", to))
    items.append(("Call-ID", invite.call_id))
    items.append(("CSeq", f"{invite.cseq.number} ACK"))
    items.append(("Content-Length", "0"))
    return Request("ACK", invite.uri, Headers.of(*items))


def make_cancel(invite: Request, *, reason: str | None = None) -> Request:
    """The CANCEL for `invite` (RFC 3261 section 9.1): Request-URI, Call-ID, To, From and CSeq
    number identical (tags included), the INVITE's top Via alone so it reaches the same server
    transaction, its Route header fields, no Require / Proxy-Require. `reason` is an optional
    RFC 3326 Reason value, e.g. 'SIP;cause=200;text="Call completed elsewhere"'."""
    if invite.method != "INVITE":
        raise LocalProtocolError(f"only an INVITE can be cancelled, not {invite.method}")
    h = invite.headers
    top_via = h.get("Via")
    if top_via is None:
        raise LocalProtocolError("cannot build the CANCEL: the INVITE has no Via")
    items: list[tuple[str, str]] = [("Via", top_via)]
    items.extend(("Route", v) for v in h.get_all("Route"))
    items.append(("Max-Forwards", h.get("Max-Forwards") or "70"))
    items.append(("From", h.get("From") or ""))
    items.append(("To", h.get("To") or ""))
    items.append(("Call-ID", invite.call_id))
    items.append(("CSeq", f"{invite.cseq.number} CANCEL"))
    if reason is not None:
        items.append(("Reason", reason))
    items.append(("Content-Length", "0"))
    return Request("CANCEL", invite.uri, Headers.of(*items))


def _default_port(transport: str) -> int:
    return 5061 if transport.upper() in ("TLS", "WSS") else 5060


def response_destination(via: Via, source: Address | None = None) -> Address:
    """Where a response goes (RFC 3261 section 18.2.2 with RFC 3581 section 4).

    `source` is where the request came from: on a reliable transport the response goes back
    the same way (the same connection). Otherwise: the `received` address (else the sent-by
    host), at the `rport` port when the client asked for it (else the sent-by port). Without a
    source (a response forwarded statelessly) the Via's transport is used. `maddr` is not
    honoured: it would let a request steer responses at a third party.
    """
    if source is not None and source.reliable:
        return source
    transport = source.transport if source is not None else via.transport.upper()
    rport = via.rport
    if rport is not None:
        host = via.received or (source.host if source is not None else via.host)
        if rport:
            port = int(rport)
        elif source is not None:
            port = source.port
        else:
            port = via.port or _default_port(transport)
    else:
        host = via.received or via.host
        port = via.port or _default_port(transport)
    if host.startswith("["):
        host = host[1:-1]
    return Address(transport, host, port)


def transaction_identity(message: _M) -> _M:
    """`message` with only Via, From, To, Call-ID and CSeq, and no body: what identifies its
    transaction and dialog (17.1.3, 17.2.3, 12) and what a response to it copies (8.2.6.2).
    What is kept of a message that only has to be recognised, or answered, any more."""
    h = message.headers
    items = [("Via", v) for v in h.get_all("Via")]
    items.extend((n, v) for n in ("From", "To", "Call-ID", "CSeq") if (v := h.get(n)) is not None)
    headers = Headers(tuple(items))
    if isinstance(message, Request):
        return Request(message.method, message.uri, headers, b"", message.version)
    return Response(message.status_code, message.reason, headers, b"", message.version)


def _request_of_response(method: str, response: Response | None) -> Request | None:
    """A stand-in for the request a server transaction no longer holds (TransportFailure):
    the Via, From, To, Call-ID and CSeq its response copied (8.2.6.2), the To URI as
    Request-URI."""
    if response is None:
        return None
    try:
        uri = response.to.uri
    except ProtocolError:
        return None
    return Request(method, uri, transaction_identity(response).headers)


# --- the layer --------------------------------------------------------------------------------


# The states in which a transaction only waits out retransmissions, after the TU has its
# outcome: the request is no longer needed, and is let go (RFC 3261 17.2.2 Completed: Timer J
# keeps the final response for retransmission; 17.2.1 Confirmed: ACKs absorbed; RFC 6026 7.1
# Accepted: INVITEs absorbed, ACKs and the TU's 2xx passed on; 17.1.2.2 Completed and RFC 6026
# 7.2 Accepted: responses absorbed or passed up). An INVITE client in Completed keeps its
# request: it builds the ACK for each retransmitted final response from it (17.1.1.3). So does
# an INVITE server in Completed: Timer H reports a timeout with it.
_WAITING = frozenset({
    (Role.NON_INVITE_SERVER, State.COMPLETED),
    (Role.INVITE_SERVER, State.CONFIRMED),
    (Role.INVITE_SERVER, State.ACCEPTED),
    (Role.NON_INVITE_CLIENT, State.COMPLETED),
    (Role.INVITE_CLIENT, State.ACCEPTED),
})


@dataclass(slots=True, eq=False)
class _Transaction:
    key: TransactionKey
    role: Role
    request: Request | None  # None once waiting (_WAITING): the TU has the outcome
    peer: Address  # client: where the request goes; server: where responses go
    state: State = State.TERMINATED
    last_response: Response | None = None
    # A non-INVITE server in Completed: its final response as sent, instead of last_response.
    # Only a lost response makes it needed again (17.2.2), so it waits as bytes for 64*T1.
    sent_final: bytes | None = None
    timers: dict[Timer, int] = field(default_factory=dict)  # timer -> token of its heap entry
    # The last interval of each retransmission timer (A, E, G), for their back-off; made only
    # when one runs, i.e. over an unreliable transport.
    intervals: dict[Timer, float] | None = None


class TransactionLayer:
    """All client and server transactions of one SIP element (RFC 3261 section 17).

    At most `max_transactions` live at once: beyond that `send_request` raises
    TransactionLimitReached and a new request is answered statelessly with 503 and
    Retry-After `retry_after` seconds (RFC 3261 21.5.4), so memory stays bounded.
    """

    def __init__(
        self,
        settings: TimerSettings | None = None,
        *,
        max_transactions: int = DEFAULT_MAX_TRANSACTIONS,
        retry_after: int = DEFAULT_RETRY_AFTER,
        check_messages: bool = True,
    ) -> None:
        if max_transactions < 1:
            raise ValueError(f"max_transactions must be at least 1, not {max_transactions}")
        if retry_after < 0:
            raise ValueError(f"retry_after must not be negative, not {retry_after}")
        self.settings = settings if settings is not None else TimerSettings()
        self.max_transactions = max_transactions
        self.retry_after = retry_after
        self.check_messages = check_messages
        self.stats = TransactionStats()
        self._transactions: dict[TransactionKey, _Transaction] = {}
        self._events: deque[Event] = deque()
        self._heap: list[tuple[float, int, TransactionKey, Timer]] = []
        self._token = 0

    # -- inspection --

    def __len__(self) -> int:
        """The number of live transactions."""
        return len(self._transactions)

    def state(self, key: TransactionKey) -> State | None:
        """The state of a live transaction, None once it has terminated."""
        txn = self._transactions.get(key)
        return None if txn is None else txn.state

    def request_of(self, key: TransactionKey) -> Request | None:
        """The request that created a live transaction; None once it is only waiting for
        retransmissions to end (it no longer holds the request then)."""
        txn = self._transactions.get(key)
        return None if txn is None else txn.request

    # -- inputs --

    def receive(self, message: Message, source: Address, now: float) -> None:
        """A message from the transport, `source` being where it came from."""
        if isinstance(message, Response):
            self._receive_response(message, now)
        else:
            self._receive_request(message, source, now)

    def send_request(self, request: Request, destination: Address, now: float) -> TransactionKey:
        """Start a client transaction for `request` (its top Via must carry a z9hG4bK branch)."""
        if request.method == "ACK":
            raise LocalProtocolError(
                "an ACK is not a transaction: send the ACK for a 2xx with send_stateless "
                "(the ACK for a non-2xx is built by the INVITE client transaction)"
            )
        try:
            via = request.top_via
            cseq = request.cseq
        except ProtocolError as exc:
            raise LocalProtocolError(f"cannot start a client transaction: {exc.reason}") from None
        if not is_rfc3261_branch(via.branch):
            raise LocalProtocolError(
                "the top Via needs a branch starting with z9hG4bK (RFC 3261 section 8.1.1.7)"
            )
        if cseq.method != request.method:
            raise LocalProtocolError(f"CSeq method {cseq.method} differs from {request.method}")
        key = client_key(request)
        if key in self._transactions:
            raise LocalProtocolError(f"a {key} transaction is already live: use a new branch")
        if len(self._transactions) >= self.max_transactions:
            raise TransactionLimitReached(
                f"{self.max_transactions} transactions are live, the configured maximum; "
                "retry later or raise max_transactions"
            )
        role = Role.INVITE_CLIENT if request.method == "INVITE" else Role.NON_INVITE_CLIENT
        txn = _Transaction(key, role, request, destination)
        self._transactions[key] = txn
        self._apply(txn, INITIAL[role], now, request, None)
        return key

    def send_response(self, key: TransactionKey, response: Response, now: float) -> None:
        """The TU's response for the server transaction `key`."""
        txn = self._transactions.get(key)
        if txn is None or not txn.role.is_server:
            raise LocalProtocolError(f"no live server transaction {key}")
        code = response.status_code
        if not 100 <= code <= 699:
            raise LocalProtocolError(f"status code {code} is out of range")
        stimulus = (
            Stimulus.SEND_PROVISIONAL
            if code < 200
            else Stimulus.SEND_SUCCESS
            if code < 300
            else Stimulus.SEND_FAILURE
        )
        if not self._step(txn, stimulus, now, response, None):
            raise LocalProtocolError(
                f"cannot send {code} in the {txn.state.value} state of the {txn.role.value} "
                f"transaction {key}"
            )

    def send_trying(self, key: TransactionKey, now: float) -> None:
        """Send 100 Trying on the INVITE server transaction `key` (17.2.1)."""
        txn = self._transactions.get(key)
        if txn is None or not txn.role.is_server:
            raise LocalProtocolError(f"no live server transaction {key}")
        if txn.request is None:
            raise LocalProtocolError(
                f"cannot send 100 in the {txn.state.value} state of the {txn.role.value} "
                f"transaction {key}"
            )
        self.send_response(key, make_trying(txn.request), now)

    def send_stateless(self, message: Message, destination: Address) -> None:
        """Send outside any transaction: the ACK for a 2xx, a statelessly forwarded message."""
        self._events.append(SendMessage(message, destination))

    def transport_error(self, key: TransactionKey, now: float) -> None:
        """The adapter could not send a message of transaction `key` (17.1.4, 17.2.4)."""
        txn = self._transactions.get(key)
        if txn is None:
            return
        if txn.request is None and not txn.role.is_server:
            # Completed (17.1.2.2, figure 6) and Accepted (RFC 6026 figure 5) send nothing: a
            # failure reported now is of a request the peer has answered. Nothing to tell.
            return
        self._step(txn, Stimulus.TRANSPORT_ERROR, now, None, None)

    def abandon(self, key: TransactionKey) -> None:
        """Destroy a client transaction the TU has given up on: an INVITE whose CANCEL got no
        final response within 64*T1 (RFC 3261 section 9.1), a branch after Timer C (16.8).
        Later responses for it are stray. Emits TransactionTerminated; unknown keys are ignored.
        """
        txn = self._transactions.get(key)
        if txn is not None and not txn.role.is_server:
            txn.state = State.TERMINATED
            self._terminate(txn)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at `now`."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, token, key, timer = heapq.heappop(heap)
            txn = self._transactions.get(key)
            if txn is None or txn.timers.get(timer) != token:
                continue  # cancelled, or the transaction is gone
            del txn.timers[timer]
            self._step(txn, timer, now, None, None)

    # -- outputs --

    def get_timer(self) -> float | None:
        """The earliest deadline of a running timer (same clock as `now`), None if none."""
        heap = self._heap
        while heap:
            _, token, key, timer = heap[0]
            txn = self._transactions.get(key)
            if txn is not None and txn.timers.get(timer) == token:
                return heap[0][0]
            heapq.heappop(heap)
        return None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # -- receiving --

    def _receive_request(self, request: Request, source: Address, now: float) -> None:
        if self.check_messages:
            verdict = check_message(request)
            if not isinstance(verdict, Valid):
                if isinstance(verdict, Reject):
                    self._reject(request, source, verdict.status_code, verdict.reason)
                else:
                    self.stats.dropped_malformed += 1
                return
        try:
            key = server_key(request)
        except ProtocolError as exc:
            self._reject(request, source, exc.status_code, exc.reason)
            return
        if request.method == "ACK":
            txn = self._match_ack(key, request)
            if txn is None:
                self._events.append(AckReceived(request, source))
            else:
                self._step(txn, Stimulus.ACK, now, request, source)
            return
        txn = self._transactions.get(key)
        if txn is not None and txn.role.is_server:
            self.stats.retransmissions_absorbed += 1
            self._step(txn, Stimulus.REQUEST, now, request, source)
            return
        if len(self._transactions) >= self.max_transactions:
            self.stats.rejected_overload += 1
            extra = [("Retry-After", str(self.retry_after))]
            self._reply_stateless(request, source, 503, None, extra)
            return
        role = Role.INVITE_SERVER if request.method == "INVITE" else Role.NON_INVITE_SERVER
        txn = _Transaction(key, role, request, response_destination(request.top_via, source))
        self._transactions[key] = txn
        self._apply(txn, INITIAL[role], now, request, source)

    def _match_ack(self, key: TransactionKey, ack: Request) -> _Transaction | None:
        if not key.legacy:
            txn = self._transactions.get(key)
            return txn if txn is not None and txn.role is Role.INVITE_SERVER else None
        # RFC 2543 (17.2.3): the ACK's To tag must be the one of the response we sent; the
        # INVITE itself carried no To tag, or (re-INVITE) the same one.
        ack_tag = ack.to.tag or ""
        for to_tag in dict.fromkeys(("", ack_tag)):
            txn = self._transactions.get(replace(key, legacy=(*key.legacy[:5], to_tag)))
            if txn is None or txn.role is not Role.INVITE_SERVER:
                continue
            sent = txn.last_response if txn.last_response is not None else txn.request
            sent_tag = (sent.to.tag if sent is not None else None) or ""
            if sent_tag == ack_tag:
                return txn
        return None

    def _receive_response(self, response: Response, now: float) -> None:
        if self.check_messages and not isinstance(check_message(response), Valid):
            self.stats.dropped_malformed += 1  # 18.1.2: a broken response is discarded
            return
        try:
            key = client_key(response)
        except ProtocolError:
            self.stats.dropped_malformed += 1
            return
        txn = self._transactions.get(key) if key.branch else None
        if txn is None:
            self.stats.stray_responses += 1
            self._events.append(ResponseReceived(response, None))
            return
        code = response.status_code
        stimulus = (
            Stimulus.PROVISIONAL
            if code < 200
            else Stimulus.SUCCESS
            if code < 300
            else Stimulus.FAILURE
        )
        if not self._step(txn, stimulus, now, response, None):
            self.stats.retransmissions_absorbed += 1

    def _reject(self, request: Request, source: Address, status: int, reason: str) -> None:
        self.stats.rejected_malformed += 1
        self._reply_stateless(request, source, status, reason, ())

    def _reply_stateless(
        self,
        request: Request,
        source: Address,
        status: int,
        reason: str | None,
        extra: Iterable[tuple[str, str]],
    ) -> None:
        if request.method == "ACK":
            return  # an ACK is never answered (17.1.1.3)
        try:
            destination = response_destination(request.top_via, source)
        except ProtocolError:
            self.stats.dropped_malformed += 1  # no usable Via: nowhere to answer
            return
        response = make_response(request, status, reason, extra=extra)
        self._events.append(SendMessage(response, destination))

    # -- running the tables --

    def _step(
        self,
        txn: _Transaction,
        stimulus: Input,
        now: float,
        message: Message | None,
        source: Address | None,
    ) -> bool:
        transition = TRANSITIONS.get((txn.role, txn.state, stimulus))
        if transition is None:
            return False
        self._apply(txn, transition, now, message, source)
        return True

    def _apply(
        self,
        txn: _Transaction,
        transition: Transition,
        now: float,
        message: Message | None,
        source: Address | None,
    ) -> None:
        txn.state = transition.state
        live = LIVE_TIMERS.get((txn.role, txn.state), frozenset())
        for timer in [t for t in txn.timers if t not in live]:
            del txn.timers[timer]
        for action in transition.actions:
            self._perform(txn, action, message, source)
        if txn.state is State.TERMINATED:
            self._terminate(txn)
            return
        due_now: list[Timer] = []
        for timer in transition.arm:
            intervals = txn.intervals
            previous = intervals.get(timer) if intervals is not None else None
            interval = timer_duration(
                timer, txn.state, self.settings, txn.peer.reliable, previous
            )
            if interval is None:
                continue
            if timer in RETRANSMIT_TIMERS:
                if intervals is None:
                    intervals = txn.intervals = {}
                intervals[timer] = interval
            if interval <= 0:
                due_now.append(timer)
            else:
                self._arm(txn, timer, now + interval)
        for timer in due_now:
            if self._transactions.get(txn.key) is txn:
                self._step(txn, timer, now, None, None)
        if (txn.role, txn.state) in _WAITING and self._transactions.get(txn.key) is txn:
            self._let_go(txn)

    @staticmethod
    def _let_go(txn: _Transaction) -> None:
        """Keep of a waiting transaction only what the rest of its life needs (_WAITING)."""
        txn.request = None
        txn.intervals = None
        last = txn.last_response
        if last is None:
            return
        if txn.role is Role.NON_INVITE_SERVER:
            txn.sent_final = serialize(last)
            txn.last_response = None
        else:
            # Accepted and Confirmed retransmit nothing (17.2.1, RFC 6026 7.1): the response
            # only identifies the transaction (the To tag an RFC 2543 ACK must carry).
            txn.last_response = transaction_identity(last)

    @staticmethod
    def _final_sent(txn: _Transaction) -> Response | None:
        """The response a server transaction sent last, from its bytes when it kept those."""
        if txn.last_response is None and txn.sent_final is not None:
            try:
                sent = parse_message(txn.sent_final)
            except ProtocolError:
                return None  # not a message a peer could have read either
            return sent if isinstance(sent, Response) else None
        return txn.last_response

    def _perform(
        self, txn: _Transaction, action: Action, message: Message | None, source: Address | None
    ) -> None:
        if action is Action.SEND:
            assert message is not None
            if isinstance(message, Response):
                txn.last_response = message
                txn.sent_final = None
            self._events.append(SendMessage(message, txn.peer))
        elif action is Action.RETRANSMIT:
            if txn.role.is_server:
                last = self._final_sent(txn)
                if last is not None:
                    self._events.append(SendMessage(last, txn.peer))
            else:
                assert txn.request is not None  # retransmitted only before a response
                self._events.append(SendMessage(txn.request, txn.peer))
        elif action is Action.PASS_TO_TU:
            self._events.append(self._to_tu(txn, message, source))
        elif action is Action.SEND_ACK:
            assert isinstance(message, Response) and txn.request is not None
            ack = make_ack_for_error(txn.request, message)
            self._events.append(SendMessage(ack, txn.peer))
        elif action is Action.REPORT_TIMEOUT:
            assert txn.request is not None  # B, F, H fire only where it is kept
            self._events.append(TransactionTimeout(txn.key, txn.request))
        elif action is Action.REPORT_TRANSPORT_ERROR:
            request = txn.request
            if request is None:
                request = _request_of_response(txn.key.method, self._final_sent(txn))
            if request is not None:
                self._events.append(TransportFailure(txn.key, request))

    def _to_tu(self, txn: _Transaction, message: Message | None, source: Address | None) -> Event:
        if isinstance(message, Response):
            return ResponseReceived(message, txn.key)
        assert message is not None and source is not None
        if message.method == "ACK":
            return AckReceived(message, source, txn.key)
        if message.method == "CANCEL":
            invite_key = replace(txn.key, method="INVITE")
            invite = self._transactions.get(invite_key)
            found = invite is not None and invite.role is Role.INVITE_SERVER
            return CancelReceived(message, source, txn.key, invite_key if found else None)
        return RequestReceived(message, source, txn.key)

    def _arm(self, txn: _Transaction, timer: Timer, deadline: float) -> None:
        self._token += 1
        txn.timers[timer] = self._token
        heapq.heappush(self._heap, (deadline, self._token, txn.key, timer))
        if len(self._heap) > 1024 and len(self._heap) > 8 * len(self._transactions):
            self._compact()

    def _compact(self) -> None:
        """Drop heap entries of cancelled timers, so the heap stays bounded by live timers."""
        valid = []
        for entry in self._heap:
            txn = self._transactions.get(entry[2])
            if txn is not None and txn.timers.get(entry[3]) == entry[1]:
                valid.append(entry)
        heapq.heapify(valid)
        self._heap = valid

    def _terminate(self, txn: _Transaction) -> None:
        txn.timers.clear()
        if self._transactions.get(txn.key) is txn:
            del self._transactions[txn.key]
        self._events.append(TransactionTerminated(txn.key))
