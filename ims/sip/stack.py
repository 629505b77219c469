"""The asyncio driver of the transaction layer: transports, the clock, one timer.

`SipStack` owns its transports (one per transport and IP family), one `TransactionLayer`, the
loop's clock (`loop.time()`) and a single timer handle re-armed from `get_timer()`. Received
messages go to `layer.receive`; the layer's events are drained at once: `SendMessage` is
written by the transport matching the destination (a failure goes back as
`layer.transport_error`, RFC 3261 section 8.1.3.1 / 17.1.4), everything else is for the
transaction user (TU): the `handler` given at construction, unless the TU awaits the
transaction through `request()`.

Requests built with the placeholder Via sent-by of `ims.sip.dialog` get the sending
transport's address here (section 18.1.1), before the layer keeps them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ims.sip.address import Address, ip_version
from ims.sip.dialog import with_sent_by
from ims.sip.errors import LocalProtocolError, ProtocolError
from ims.sip.message import Message, Request, Response, make_response
from ims.sip.transaction import (
    AckReceived,
    CancelReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    TimerSettings,
    TransactionKey,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    TransportFailure,
    client_key,
    server_key,
)
from ims.sip.transport import (
    SipTransport,
    TcpTransport,
    TlsPolicy,
    TlsTransport,
    TransportError,
    TransportSettings,
    UdpTransport,
)
from ims.sip.uri import SipUri

logger = logging.getLogger(__name__)

TuEvent = (
    RequestReceived
    | AckReceived
    | CancelReceived
    | ResponseReceived
    | TransactionTimeout
    | TransportFailure
    | TransactionTerminated
)
"""What the layer tells the TU (every layer event but SendMessage)."""

EventHandler = Callable[[TuEvent], Awaitable[None] | None]
"""The TU: called for each event in order; a coroutine it returns runs as a task."""


class SansIoCore(Protocol):
    """A sans-IO TU that acts through the layer and keeps timers of its own (ProxyCore)."""

    def handle_event(self, event: Event, now: float) -> None: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

Direction = Literal["in", "out"]


class MessageObserver(Protocol):
    """Sees every message the stack receives from a transport ("in") and every message a
    transport sent for it ("out", retransmissions included): for traces and metrics. `now` is
    wall-clock time (`time.time()`), not the loop's clock, so traces of processes line up.
    An exception it raises is counted in `StackStats.observer_errors`, never propagated."""

    def on_message(
        self, direction: Direction, message: Message, local: Address, remote: Address, now: float
    ) -> None: ...


ProvisionalHandler = Callable[[Response], None]

_ROUTES_LIMIT = 4096

# RFC 3261 section 8.1.3.1: a timeout is treated as 408, a transport failure as 503. The
# reason phrases say the response was made here, not received.
TIMEOUT_REASON = "Request Timeout (no response)"
TRANSPORT_FAILURE_REASON = "Service Unavailable (transport failure)"


@dataclass(slots=True)
class _Waiter:
    """A client transaction whose final response a `request()` call awaits."""

    final: asyncio.Future[Response]
    on_provisional: ProvisionalHandler | None = None


@dataclass(slots=True)
class StackStats:
    """Counters of the driver itself; the layer and each transport keep their own."""

    send_failures: int = 0
    handler_errors: int = 0
    observer_errors: int = 0


class SipStack:
    """Transports + one TransactionLayer + the real clock, for one SIP element."""

    def __init__(
        self,
        handler: EventHandler,
        *,
        timers: TimerSettings | None = None,
        layer: TransactionLayer | None = None,
        core: SansIoCore | None = None,
        observer: MessageObserver | None = None,
    ) -> None:
        """`handler` gets the TU events; with a sans-IO `core` (for example a ProxyCore on
        this stack's `layer`), the core gets them instead and its timer is driven too.
        `observer` sees every message received and sent (traces, metrics)."""
        self._handler = handler
        self._observer = observer
        self.core = core
        # The transports deliver only messages that passed ims.sip.checks: not checked twice.
        self.layer = layer if layer is not None else TransactionLayer(timers, check_messages=False)
        self._loop = asyncio.get_running_loop()
        self._transports: dict[tuple[str, int], SipTransport] = {}
        # (transport, host) -> the endpoint that sends there: saves parsing the host per send.
        self._routes: dict[tuple[str, str], SipTransport | None] = {}
        self._waiters: dict[TransactionKey, _Waiter] = {}
        self._failures: dict[TransactionKey, str] = {}  # why a send failed, for the 503
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        self._closed = False
        self.stats = StackStats()

    # -- transports --

    async def listen(
        self,
        transport: str,
        host: str,
        port: int = 0,
        *,
        settings: TransportSettings | None = None,
        tls: TlsPolicy | None = None,
    ) -> SipTransport:
        """Open a "UDP", "TCP" or "TLS" endpoint on `host`:`port` feeding this stack; raises
        BindError. Port 0 picks a free one: read it from the result's `local`. TLS needs
        `tls`, which says whose certificates are accepted (mutual TLS, RFC 5922); the TLS
        endpoint also opens the stack's connections to "TLS" destinations."""
        opened: SipTransport
        kind = transport.upper()
        if kind == "UDP":
            opened = await UdpTransport.open(host, port, self.receive, settings=settings)
        elif kind == "TCP":
            opened = await TcpTransport.open(host, port, self.receive, settings=settings)
        elif kind == "TLS":
            if tls is None:
                raise LocalProtocolError("a TLS endpoint needs a TlsPolicy (tls=)")
            opened = await TlsTransport.open(host, port, self.receive, tls=tls,
                                             settings=settings)
        else:
            raise LocalProtocolError(f"unsupported transport {transport!r}: use UDP, TCP or TLS")
        self.add_transport(opened)
        return opened

    def add_transport(self, transport: SipTransport) -> None:
        """Use an endpoint opened elsewhere; its on_message must be this stack's `receive`.
        The first endpoint of a transport and IP family carries all sends of that kind."""
        self._transports.setdefault(_kind(transport.local), transport)
        self._routes.clear()

    @property
    def transports(self) -> tuple[SipTransport, ...]:
        return tuple(self._transports.values())

    def transport_for(self, destination: Address) -> SipTransport | None:
        """The endpoint that sends to `destination` (same transport and IP family)."""
        route = (destination.transport, destination.host)
        try:
            return self._routes[route]
        except KeyError:
            pass
        try:
            transport = self._transports.get(_kind(destination))
        except ValueError:
            return None
        if len(self._routes) >= _ROUTES_LIMIT:
            self._routes.clear()
        self._routes[route] = transport
        return transport

    # -- inputs --

    def receive(self, message: Message, source: Address) -> None:
        """A message from a transport (the transports' on_message callback)."""
        if self._closed:
            return
        if self._observer is not None:
            self._observe(self._observer, "in", message, self._local_for(source), source)
        self.layer.receive(message, source, self._loop.time())
        self._drain()

    def send_request(self, request: Request, destination: Address) -> TransactionKey:
        """Start a client transaction; its events go to the handler. A placeholder Via sent-by
        is filled from the transport that serves `destination`."""
        key = self.layer.send_request(self._sent_by(request, destination), destination, self._now())
        self._drain()
        return key

    async def request(
        self,
        request: Request,
        destination: Address,
        *,
        on_provisional: ProvisionalHandler | None = None,
    ) -> Response:
        """Send `request` in a client transaction and return its final response.

        Provisional responses go to `on_provisional`. A timeout (Timer B/F) returns a 408 and
        a transport failure a 503 built here (RFC 3261 section 8.1.3.1), with reason phrases
        that say so. For an INVITE the TU then sends the ACK for a 2xx (`send_stateless`);
        later 2xx retransmissions reach the handler.
        """
        request = self._sent_by(request, destination)
        key = self.layer.send_request(request, destination, self._now())
        waiter = _Waiter(self._loop.create_future(), on_provisional)
        self._waiters[key] = waiter
        self._drain()
        try:
            return await waiter.final
        finally:
            if self._waiters.get(key) is waiter:
                del self._waiters[key]

    def respond(self, key: TransactionKey, response: Response) -> None:
        """Send `response` on the server transaction `key` (from RequestReceived)."""
        self.layer.send_response(key, response, self._now())
        self._drain()

    def send_stateless(self, message: Message, destination: Address) -> None:
        """Send outside any transaction: the ACK for a 2xx, a stateless forward."""
        if isinstance(message, Request):
            message = self._sent_by(message, destination)
        self.layer.send_stateless(message, destination)
        self._drain()

    def drive(self, action: Callable[[float], object]) -> None:
        """Run `action(now)` against the layer or the core outside a received message (e.g.
        `ProxyCore.resume` once a DNS lookup is done), then send what it produced."""
        if self._closed:
            return
        action(self._now())
        self._drain()

    async def close(self) -> None:
        """Stop the timer, fail pending `request()` calls, close every transport."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for waiter in self._waiters.values():
            if not waiter.final.done():
                waiter.final.set_exception(LocalProtocolError("the SIP stack was closed"))
        self._waiters.clear()
        for task in list(self._tasks):
            task.cancel()
        for transport in self._transports.values():
            await transport.close()

    # -- the loop --

    def _now(self) -> float:
        return self._loop.time()

    def _sent_by(self, request: Request, destination: Address) -> Request:
        transport = self.transport_for(destination)
        return request if transport is None else with_sent_by(request, transport.local)

    def _drain(self) -> None:
        if self._draining:
            return  # a handler called back into the stack: the outer loop carries on
        self._draining = True
        try:
            while (event := self.layer.next_event()) is not None:
                if isinstance(event, SendMessage):
                    self._send(event)
                else:
                    self._dispatch(event)
        finally:
            self._draining = False
        self._rearm()

    def _rearm(self) -> None:
        if self._closed:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_deadline = None
            return
        deadline = self.layer.get_timer()
        if self.core is not None:
            core_deadline = self.core.get_timer()
            if core_deadline is not None and (deadline is None or core_deadline < deadline):
                deadline = core_deadline
        current = self._timer_deadline
        if deadline is None or (current is not None and current <= deadline):
            # The armed timer fires no later than needed: keep it. Firing early costs one empty
            # handle_timer and a re-arm, far less than a new loop timer per message (a proxy's
            # earliest deadline moves with nearly every message as timers stop).
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_deadline = None
        now = self._now()
        self.layer.handle_timer(now)
        if self.core is not None:
            self.core.handle_timer(now)
        self._drain()

    def _send(self, event: SendMessage) -> None:
        transport = self.transport_for(event.destination)
        if transport is None:
            self._send_failed(event.message, f"no transport to {event.destination}")
            return
        if isinstance(transport, UdpTransport):
            # A datagram never blocks: send now, no task per message.
            try:
                transport.send_now(event.message, event.destination)
            except (TransportError, LocalProtocolError) as exc:
                self._send_failed(event.message, str(exc))
                return
            if self._observer is not None:
                self._observe(self._observer, "out", event.message, transport.local,
                              event.destination)
            return
        self._spawn(self._write(transport, event.message, event.destination))

    async def _write(self, transport: SipTransport, message: Message, destination: Address) -> None:
        try:
            await transport.send(message, destination)
        except (TransportError, LocalProtocolError) as exc:
            self._send_failed(message, str(exc))
            return
        if self._observer is not None:
            self._observe(self._observer, "out", message, transport.local, destination)

    def _local_for(self, source: Address) -> Address:
        """The endpoint a message from `source` came in on, for the observer: the one that
        answers there (transports do not say which of them delivered)."""
        transport = self.transport_for(source)
        if transport is None:
            transport = next(iter(self._transports.values()), None)
        return Address(source.transport, "0.0.0.0", 0) if transport is None else transport.local

    def _observe(self, observer: MessageObserver, direction: Direction, message: Message,
                 local: Address, remote: Address) -> None:
        try:
            observer.on_message(direction, message, local, remote, time.time())
        except Exception:  # a trace or metrics bug must not stop the stack
            self.stats.observer_errors += 1
            if self.stats.observer_errors == 1:  # once: it would fail for every message
                logger.exception("the message observer failed (further failures are counted "
                                 "in stats.observer_errors)")

    def _send_failed(self, message: Message, why: str) -> None:
        self.stats.send_failures += 1
        logger.info("send failed: %s", why)
        key = _transaction_of(message)
        if key is None or self._closed or self.layer.state(key) is None:
            return  # stateless, or the transaction is gone: nobody to tell
        self._failures[key] = why
        self.layer.transport_error(key, self._now())
        self._drain()

    def _dispatch(self, event: TuEvent) -> None:
        if self.core is not None:
            try:
                self.core.handle_event(event, self._now())
            except Exception:  # a core bug must not stop the stack
                self.stats.handler_errors += 1
                logger.exception("the SIP core failed on %s", type(event).__name__)
            return
        if isinstance(event, ResponseReceived) and event.key is not None:
            waiter = self._waiters.get(event.key)
            if waiter is not None and not waiter.final.done():
                response = event.response
                if response.status_code >= 200:
                    waiter.final.set_result(response)
                elif waiter.on_provisional is not None:
                    try:
                        waiter.on_provisional(response)
                    except Exception:  # the caller's bug must not stop the stack
                        self.stats.handler_errors += 1
                        logger.exception("on_provisional failed on %s", response.status_code)
                return
        elif isinstance(event, TransactionTimeout | TransportFailure):
            waiter = self._waiters.get(event.key)
            why = self._failures.pop(event.key, None)
            if waiter is not None and not waiter.final.done():
                if isinstance(event, TransactionTimeout):
                    answer = make_response(event.request, 408, TIMEOUT_REASON)
                else:
                    reason = TRANSPORT_FAILURE_REASON if why is None else _failure_reason(why)
                    answer = make_response(event.request, 503, reason)
                waiter.final.set_result(answer)
                return
        elif isinstance(event, TransactionTerminated):
            self._failures.pop(event.key, None)
        try:
            result = self._handler(event)
        except Exception:  # a TU bug must not stop the stack
            self.stats.handler_errors += 1
            logger.exception("the SIP event handler failed on %s", type(event).__name__)
            return
        if result is not None:
            self._spawn(self._guarded(result))

    async def _guarded(self, awaitable: Awaitable[None]) -> None:
        try:
            await awaitable
        except Exception:
            self.stats.handler_errors += 1
            logger.exception("the SIP event handler task failed")

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _kind(address: Address) -> tuple[str, int]:
    """(transport, IP version): which endpoint serves an address. ValueError for a name."""
    version = ip_version(address.host)
    if version is None:
        raise ValueError(f"{address.host!r} is not an IP address")
    return address.transport.upper(), version


def _transaction_of(message: Message) -> TransactionKey | None:
    """The transaction a message we sent belongs to, to report its send failure: the client
    transaction of a request, the server transaction of a response (RFC 3261 17.1.3, 17.2.3).
    A response to an RFC 2543 peer is not found this way; its transaction times out instead."""
    try:
        if isinstance(message, Request):
            return None if message.method == "ACK" else client_key(message)
        probe = Request(message.cseq.method, SipUri(host="invalid"), message.headers)
        return server_key(probe)
    except ProtocolError:
        return None


def _failure_reason(why: str) -> str:
    """A Reason-Phrase carrying the cause: printable, one line, bounded (section 25.1)."""
    text = "".join(c if c.isprintable() else "?" for c in why)
    return f"Service Unavailable ({text[:100]})"
