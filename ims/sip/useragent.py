"""An asyncio SIP user agent: register, place and answer calls, end them.

The transaction user of RFC 3261 sections 8, 10, 12-15 on top of `SipStack`: the sans-IO
pieces (RegisterClient, Dialog) decide, this module only owns the tasks and the clock. Requests
go to one next hop (an outbound proxy such as a P-CSCF, else the Request-URI's IP literal);
in-dialog requests follow the route set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from ims.sip.address import Address, address_of_uri
from ims.sip.dialog import (
    CallDoesNotExist,
    Dialog,
    DialogId,
    DialogTable,
    create_initial_request,
    reject,
)
from ims.sip.digest import DigestClient
from ims.sip.errors import LocalProtocolError, ProtocolError, SipError
from ims.sip.headers import NameAddress
from ims.sip.ids import IdSource
from ims.sip.message import Request, Response, make_response
from ims.sip.registration import (
    RegisterClient,
    Registered,
    RegistrationConfig,
    RegistrationFailed,
    SendRequest,
    Unregistered,
)
from ims.sip.stack import TIMEOUT_REASON, SipStack, TuEvent
from ims.sip.transaction import (
    AckReceived,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    TimerSettings,
    TransactionKey,
)
from ims.sip.uri import SipUri, Uri

logger = logging.getLogger(__name__)

ALLOW = ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")


class CallFailed(SipError):
    """A call attempt ended with a final non-2xx response (or a local 408/503)."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"{response.status_code} {response.reason}")
        self.response = response
        self.status_code = response.status_code
        self.reason = response.reason


class RegistrationError(SipError):
    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(f"registration failed: {status_code} {reason}")
        self.status_code = status_code
        self.reason = reason


@dataclass(eq=False)
class Call:
    """A confirmed INVITE dialog."""

    ua: UserAgent
    dialog: Dialog
    invite: Request
    remote_body: bytes
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    ack: Request | None = None  # UAC: the ACK we sent, re-sent on 2xx retransmissions
    acked: asyncio.Event = field(default_factory=asyncio.Event)  # UAS: the peer's ACK came

    async def bye(self) -> Response:
        """End the call (section 15.1.1); returns the BYE's final response."""
        return await self.ua._send_bye(self)


@dataclass(eq=False)
class IncomingCall:
    """An INVITE waiting for our answer."""

    ua: UserAgent
    request: Request
    source: Address
    key: TransactionKey
    to_tag: str
    answered: bool = False
    cancelled: bool = False

    def ring(self) -> None:
        self.ua.stack.respond(self.key, make_response(self.request, 180, to_tag=self.to_tag))

    async def accept(self, body: bytes = b"", content_type: str | None = None) -> Call:
        return await self.ua._accept(self, body, content_type)

    def reject(self, status_code: int = 486, reason: str | None = None) -> None:
        if self.answered:
            raise LocalProtocolError("the call was already answered")
        self.answered = True
        response = make_response(self.request, status_code, reason, to_tag=self.to_tag)
        self.ua.stack.respond(self.key, response)


IncomingHandler = Callable[[IncomingCall], Awaitable[None] | None]

RequestHandler = Callable[[Request, Address], Awaitable[Response] | Response]
"""Answers an out-of-dialog request other than INVITE and OPTIONS (a MESSAGE, RFC 3428):
given the request and the address it came from, the final response to send."""


class UserAgent:
    """One AOR's user agent with one contact."""

    def __init__(
        self,
        aor: Uri,
        *,
        display_name: str | None = None,
        outbound_proxy: Address | None = None,
        route_set: Iterable[NameAddress] = (),
        ids: IdSource | None = None,
        timers: TimerSettings | None = None,
        user_agent: str = "ueconnect",
    ) -> None:
        self.aor = aor
        self.display_name = display_name
        self.outbound_proxy = outbound_proxy
        self.route_set = tuple(route_set)
        self.ids = ids or IdSource()
        self.timers = timers or TimerSettings()
        self.user_agent = user_agent
        self.on_incoming: IncomingHandler | None = None
        self.on_request: RequestHandler | None = None
        self.allow: tuple[str, ...] = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS")
        self.incoming: asyncio.Queue[IncomingCall] = asyncio.Queue()
        self.dialogs = DialogTable()
        self.calls: dict[DialogId, Call] = {}
        self._pending: dict[TransactionKey, IncomingCall] = {}
        self._registration: RegisterClient | None = None
        self._registration_task: asyncio.Task[None] | None = None
        self._stack: SipStack | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.contact: SipUri | None = None

    # -- set-up ---------------------------------------------------------------------------

    @property
    def stack(self) -> SipStack:
        if self._stack is None:
            raise LocalProtocolError("UserAgent.start() was not called")
        return self._stack

    async def start(self, host: str = "127.0.0.1", port: int = 0, transport: str = "UDP") -> None:
        """Listen on host:port (0 picks a port) and derive the Contact from it."""
        self._stack = SipStack(self._on_event, timers=self.timers)
        listener = await self._stack.listen(transport, host, port)
        local = listener.local
        user = self.aor.user if isinstance(self.aor, SipUri) and self.aor.user else "ue"
        host_text = f"[{local.host}]" if ":" in local.host else local.host
        params: tuple[tuple[str, str | None], ...] = ()
        if transport != "UDP":
            params = (("transport", transport.lower()),)
        self.contact = SipUri(host=host_text, user=user, port=local.port, params=params)

    async def close(self) -> None:
        if self._registration_task is not None:
            self._registration_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._stack is not None:
            await self._stack.close()

    def _next_hop(self, uri: Uri) -> Address:
        if self.outbound_proxy is not None:
            return self.outbound_proxy
        return address_of_uri(uri)

    def _name_addr(self) -> NameAddress:
        display = f'"{self.display_name}"' if self.display_name else None
        return NameAddress(self.aor, display)

    # -- registration (section 10.2) -------------------------------------------------------

    async def register(
        self,
        registrar: SipUri,
        *,
        username: str,
        password: str,
        expires: int = 600,
        extra: Iterable[tuple[str, str]] = (),
    ) -> Registered:
        """Register our contact and keep it refreshed; returns the first Registered event."""
        if self.contact is None:
            raise LocalProtocolError("UserAgent.start() was not called")
        config = RegistrationConfig(
            registrar=registrar,
            aor=self.aor,
            contact=self.contact,
            expires=expires,
            route_set=self.route_set,
            extra=tuple(extra),
        )
        client = RegisterClient(
            config, ids=self.ids, digest=DigestClient(username=username, password=password)
        )
        self._registration = client
        loop = asyncio.get_running_loop()
        first: asyncio.Future[Registered] = loop.create_future()
        client.register(loop.time())
        self._registration_task = asyncio.create_task(self._run_registration(client, first))
        return await first

    async def unregister(self) -> None:
        client = self._registration
        if client is None:
            return
        loop = asyncio.get_running_loop()
        client.unregister(loop.time())
        done: asyncio.Future[Registered] = loop.create_future()
        await self._pump_registration(client, done)

    async def _run_registration(
        self, client: RegisterClient, first: asyncio.Future[Registered]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._pump_registration(client, first)
                deadline = client.get_timer()
                if deadline is None:
                    return
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                client.handle_timer(loop.time())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # surface to the first waiter, never die silently
            logger.exception("registration task failed")
            if not first.done():
                first.set_exception(exc)

    async def _pump_registration(
        self, client: RegisterClient, first: asyncio.Future[Registered]
    ) -> None:
        loop = asyncio.get_running_loop()
        while (event := client.next_event()) is not None:
            if isinstance(event, SendRequest):
                response = await self.stack.request(
                    event.request, self._next_hop(event.request.uri)
                )
                if response.status_code == 408 and response.reason == TIMEOUT_REASON:
                    client.transaction_timeout(loop.time())
                else:
                    client.receive_response(response, loop.time())
            elif isinstance(event, Registered):
                logger.info("registered %s for %ss", self.aor, event.expires)
                if not first.done():
                    first.set_result(event)
            elif isinstance(event, RegistrationFailed):
                logger.warning("registration failed: %s %s", event.status_code, event.reason)
                if not first.done():
                    first.set_exception(RegistrationError(event.status_code, event.reason))
            elif isinstance(event, Unregistered):
                logger.info("unregistered %s", self.aor)

    # -- outgoing calls (section 13.2) -------------------------------------------------------

    async def call(
        self,
        target: Uri,
        *,
        to: NameAddress | Uri | None = None,
        extra: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> Call:
        """Send an INVITE and wait for the call to be confirmed; raise CallFailed otherwise."""
        if self.contact is None:
            raise LocalProtocolError("UserAgent.start() was not called")
        headers = [("User-Agent", self.user_agent), *extra]
        invite = create_initial_request(
            "INVITE",
            target,
            from_=self._name_addr(),
            to=to if to is not None else target,
            ids=self.ids,
            contact=self.contact,
            route_set=self.route_set,
            extra=headers,
            body=body,
            content_type=content_type,
        )
        destination = self._next_hop(invite.uri if not self.route_set else self.route_set[0].uri)
        response = await self.stack.request(invite, destination, on_provisional=on_provisional)
        if response.status_code >= 300:
            raise CallFailed(response)
        dialog = Dialog.from_uac(invite, response)
        ack = dialog.create_ack(invite, ids=self.ids)
        call = Call(self, dialog, invite, response.body, ack=ack)
        self.dialogs.put(dialog)
        self.calls[dialog.id] = call
        self.stack.send_stateless(ack, self._in_dialog_hop(dialog, ack))
        return call

    async def send_request(
        self,
        method: str,
        target: Uri,
        *,
        to: NameAddress | Uri | None = None,
        extra: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Response:
        """Send a request outside any dialog that creates none (MESSAGE, RFC 3428; PUBLISH,
        RFC 3903) through the outbound proxy and route set; returns its final response (a
        local 408 or 503 when none came, section 8.1.3.1)."""
        if method in ("INVITE", "ACK", "CANCEL", "REGISTER"):
            raise LocalProtocolError(f"{method} has its own method on UserAgent")
        request = create_initial_request(
            method,
            target,
            from_=self._name_addr(),
            to=to if to is not None else target,
            ids=self.ids,
            route_set=self.route_set,
            extra=[("User-Agent", self.user_agent), *extra],
            body=body,
            content_type=content_type,
        )
        destination = self._next_hop(target if not self.route_set else self.route_set[0].uri)
        return await self.stack.request(request, destination)

    def _in_dialog_hop(self, dialog: Dialog, request: Request) -> Address:
        if self.outbound_proxy is not None:
            return self.outbound_proxy
        if dialog.route_set:
            return address_of_uri(dialog.route_set[0].uri)
        return address_of_uri(request.uri)

    async def _send_bye(self, call: Call) -> Response:
        dialog, bye = call.dialog.create_bye(ids=self.ids)
        self.dialogs.put(dialog)
        call.dialog = dialog
        response = await self.stack.request(bye, self._in_dialog_hop(dialog, bye))
        self._end(call)
        return response

    def _end(self, call: Call) -> None:
        self.dialogs.remove(call.dialog.id)
        self.calls.pop(call.dialog.id, None)
        call.ended.set()

    # -- incoming requests (section 8.2, 12.2.2, 13.3) -----------------------------------------

    def _on_event(self, event: TuEvent) -> Awaitable[None] | None:
        if isinstance(event, RequestReceived):
            return self._on_request(event)
        if isinstance(event, AckReceived):
            dialog_id = DialogId.of_incoming_request(event.request)
            call = self.calls.get(dialog_id) if dialog_id else None
            if call is not None:
                call.acked.set()
        elif isinstance(event, CancelReceived):
            self._on_cancel(event)
        elif isinstance(event, ResponseReceived):
            self._on_stray_response(event.response)
        return None

    def _on_stray_response(self, response: Response) -> None:
        # A retransmitted 2xx to our INVITE: the ACK is sent again (section 13.2.2.4).
        if response.status_code // 100 != 2 or response.cseq.method != "INVITE":
            return
        call = self.calls.get(DialogId.of_incoming_response(response))
        if call is not None and call.ack is not None:
            self.stack.send_stateless(call.ack, self._in_dialog_hop(call.dialog, call.ack))

    def _on_cancel(self, event: CancelReceived) -> None:
        pending = self._pending.get(event.invite_key) if event.invite_key else None
        if pending is None:
            self.stack.respond(event.key, make_response(event.request, 481))
            return
        self.stack.respond(event.key, make_response(event.request, 200))
        if not pending.answered:
            pending.answered = pending.cancelled = True
            self.stack.respond(
                pending.key, make_response(pending.request, 487, to_tag=pending.to_tag)
            )

    async def _on_request(self, event: RequestReceived) -> None:
        request = event.request
        if request.to.tag is not None:
            self._on_in_dialog(event)
            return
        if request.method == "INVITE":
            # Section 8.2.6.1 / 17.2.1: a 100 at once quenches retransmissions and lets
            # proxies cancel this branch (they wait for a provisional before a CANCEL, 9.1).
            self.stack.respond(event.key, make_response(request, 100))
            incoming = IncomingCall(self, request, event.source, event.key, self.ids.tag())
            self._pending[event.key] = incoming
            if self.on_incoming is not None:
                result = self.on_incoming(incoming)
                if result is not None:
                    await result
            else:
                await self.incoming.put(incoming)
        elif request.method == "OPTIONS":
            allow = [("Allow", ", ".join(self.allow))]
            self.stack.respond(event.key, make_response(request, 200, extra=allow))
        elif self.on_request is not None and request.method in self.allow:
            self.stack.respond(event.key, await self._answer_request(request, event.source))
        else:
            # Section 8.2.1: a method we do not handle is answered 405 with Allow.
            allow = [("Allow", ", ".join(self.allow))]
            self.stack.respond(event.key, make_response(request, 405, extra=allow))

    async def _answer_request(self, request: Request, source: Address) -> Response:
        assert self.on_request is not None
        try:
            result = self.on_request(request, source)
            return await result if isinstance(result, Awaitable) else result
        except Exception:  # the application's bug must not leave the request unanswered
            logger.exception("on_request failed on %s", request.method)
            return make_response(request, 500, "Server Internal Error (request handler failed)")

    def _on_in_dialog(self, event: RequestReceived) -> None:
        request = event.request
        try:
            dialog = self.dialogs.for_request(request)
            if dialog is None:
                raise CallDoesNotExist("no such dialog")
            dialog = dialog.receive_request(request, ids=self.ids)
        except ProtocolError as exc:
            self.stack.respond(event.key, reject(request, exc))
            return
        response = make_response(request, 200)
        dialog = dialog.send_response(request, response)
        self.dialogs.put(dialog)
        call = self.calls.get(dialog.id)
        if call is not None:
            call.dialog = dialog
        self.stack.respond(event.key, response)
        if request.method == "BYE" and call is not None:
            self._end(call)

    async def _accept(self, incoming: IncomingCall, body: bytes, content_type: str | None) -> Call:
        if incoming.answered:
            raise LocalProtocolError("the call was already answered or cancelled")
        if self.contact is None:
            raise LocalProtocolError("UserAgent.start() was not called")
        incoming.answered = True
        self._pending.pop(incoming.key, None)
        response = make_response(
            incoming.request,
            200,
            to_tag=incoming.to_tag,
            extra=[("Contact", f"<{self.contact}>"), ("User-Agent", self.user_agent)],
            body=body,
            content_type=content_type,
        )
        dialog = Dialog.from_uas(incoming.request, response)
        dialog = dialog.send_response(incoming.request, response)
        call = Call(self, dialog, incoming.request, incoming.request.body)
        self.dialogs.put(dialog)
        self.calls[dialog.id] = call
        self.stack.respond(incoming.key, response)
        if not incoming.source.reliable:
            task = asyncio.create_task(self._retransmit_2xx(call, incoming.key, response))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return call

    async def _retransmit_2xx(self, call: Call, key: TransactionKey, response: Response) -> None:
        """Section 13.3.1.4: the UAS core resends the 2xx until the ACK, T1 doubling to T2,
        and gives up (ending the dialog with a BYE) after 64*T1."""
        t1, t2 = self.timers.t1, self.timers.t2
        interval, waited = t1, 0.0
        while waited < 64 * t1:
            try:
                await asyncio.wait_for(call.acked.wait(), interval)
                return
            except TimeoutError:
                waited += interval
                interval = min(2 * interval, t2)
                try:
                    self.stack.respond(key, response)
                except SipError:
                    break
        if not call.acked.is_set() and not call.ended.is_set():
            logger.warning("no ACK for the 2xx of %s; ending the call", call.dialog.id.call_id)
            await call.bye()
