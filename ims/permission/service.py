"""The permission function on the wire: the asyncio shell around `PermissionDecider`.

`PermissionService` is both seams of ims.seams the S-CSCF talks to:
- `check(ConnectRequest)` (a `PermissionFunction`): for a `Require: ueconnect` INVITE to one
  of our subscribers, asks the decider (rules, cache, else inquiries) and waits for its
  decision. Inquiries and withdrawals go out as MESSAGE requests (docs/extension.md sections
  5.2 and 5.5) from the service's own UAC stack, along each binding's Path, so that they
  reach the UE over the flow it registered on; the deadline runs on one timer re-armed from
  `get_timer()`. Every decision is recorded in the store's `decisions` table (section 11).
  Cancelling the `check` task (the caller's CANCEL) ends the inquiry at once: recorded as
  cancelled by the caller, withdrawn at every contact asked (section 5.5).
- `receive(Request)` (a `PermissionEndpoint`): an answer MESSAGE sent to the function's URI
  (section 5.3) and a rules PUBLISH with `Event: ueconnect-rules` (section 6.3) are answered
  here; the S-CSCF hands every out-of-dialog MESSAGE and PUBLISH over first.

Which binding an answer came over (section 5.4) is read from the top Record-Route, which is
the UE's P-CSCF's and names the UE's flow with the same sealed token as the binding's Path.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ims.permission.audit import DecisionRecord
from ims.permission.bodies import ANSWER_TYPE, RULES_EVENT, RULES_TYPE
from ims.permission.errors import PermissionProtocolError, PermissionUsageError
from ims.permission.function import (
    Action,
    AnswerIgnored,
    AnswerTaken,
    Contact,
    Decided,
    DeciderConfig,
    PermissionDecider,
    PermissionQuery,
    SendInquiry,
    SendWithdrawal,
)
from ims.permission.outcomes import response_of
from ims.permission.rules import ANY, RuleSet, parse_rule_set
from ims.registrar import subscriber_for
from ims.seams import ConnectRequest, Leg, Permission
from ims.sip.address import Address, address_of_uri
from ims.sip.dialog import create_initial_request
from ims.sip.errors import ParseError, ProtocolError
from ims.sip.headers import NameAddress, parse_name_addr, split_list
from ims.sip.ids import IdSource
from ims.sip.message import Request, Response, make_response
from ims.sip.stack import SipStack, TuEvent
from ims.sip.transaction import RequestReceived, TimerSettings
from ims.sip.uri import SipUri, Uri, parse_uri
from ims.store import Binding, InvalidIdentity, Store, StoreError, Subscriber, canonical_aor

__all__ = [
    "DEFAULT_RULES_EXPIRES",
    "MAX_RULES_EXPIRES",
    "RULES_EVENT",
    "PermissionService",
    "permission_uri",
]

logger = logging.getLogger(__name__)

DEFAULT_RULES_EXPIRES = 86_400  # section 6.3
MAX_RULES_EXPIRES = 30 * 86_400  # section 6.3: at most 30 days
PERMISSION_USER = "permission"
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")  # RFC 3261 section 25.1 token


def permission_uri(home_domain: str) -> str:
    """The permission function's URI at an operator (From, P-Asserted-Identity, reply_to)."""
    return f"sip:{PERMISSION_USER}@{home_domain.lower()}"


class PermissionService:
    """The permission function of one operator, run beside its S-CSCF.

    `config` is the decider's (its `permission_uri` is where answers come), `store` holds the
    subscribers, bindings, rule sets and the decision audit, `clock` is the wall clock of
    registrations (deadlines and rule expiry are measured on it), `timers` the SIP timers of
    the UAC that sends inquiries. Call `start(host)` before use and `close()` after.
    """

    def __init__(
        self,
        config: DeciderConfig,
        *,
        store: Store,
        home_domain: str,
        clock: Callable[[], float] = time.time,
        timers: TimerSettings | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.home_domain = home_domain.lower().rstrip(".")
        self.clock = clock
        self.timers = timers
        self.decider = PermissionDecider(config)
        self.ids = IdSource()
        uri = parse_uri(config.permission_uri)
        if not isinstance(uri, SipUri) or not uri.user:
            raise PermissionUsageError(f"permission_uri {config.permission_uri} must be a sip: "
                                       "URI with a user part")
        self.uri: SipUri = uri
        self._stack: SipStack | None = None
        self._waiting: dict[str, asyncio.Future[Decided]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._callees: dict[str, str] = {}  # open inquiry -> the callee (To of withdrawals)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- life --------------------------------------------------------------------------------

    async def start(self, host: str, port: int = 0) -> Address:
        """Open the UAC that sends inquiries on host:port (0: any free port); returns it."""
        self._stack = SipStack(self._on_event, timers=self.timers)
        listener = await self._stack.listen("UDP", host, port)
        return listener.local

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        for future in self._waiting.values():
            if not future.done():
                future.cancel()
        self._waiting.clear()
        if self._stack is not None:
            await self._stack.close()

    # -- PermissionFunction ------------------------------------------------------------------

    async def check(self, request: ConnectRequest) -> Permission:
        """Decide for a `Require: ueconnect` INVITE (section 5.1); waits for the answer of
        the callee's UE when an inquiry is needed."""
        if request.leg is not Leg.TERMINATING:
            return Permission(True)
        invite = request.request
        callee = subscriber_for(self.store, invite.uri)
        if callee is None:
            return Permission(True)  # not ours: the S-CSCF answers 404 itself
        try:
            query = self._query(invite, callee)
        except PermissionProtocolError as exc:
            return Permission(False, exc.status_code, exc.reason_phrase)
        now = self.clock()
        contacts = [Contact.from_binding(b) for b in self._bindings(callee, now)]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decided] = loop.create_future()
        if query.call_id in self._waiting:
            return Permission(False, 482, "Loop Detected (a decision for this Call-ID is "
                                          "already under way)")
        self._waiting[query.call_id] = future
        try:
            self._act(self.decider.begin(query, contacts, now, rules=self._rules(callee, now)))
            decided = await future
        except asyncio.CancelledError:
            # The caller's CANCEL ended the request (the S-CSCF's deferred routing was
            # cancelled, RFC 3261 section 16.10): record it, withdraw what is still open.
            self._act(self.decider.cancel(query.call_id, self.clock()))
            raise
        finally:
            self._waiting.pop(query.call_id, None)
        if decided.allowed:
            return Permission(True)
        final = response_of(decided.outcome)
        headers = [] if final.reason is None else [("Reason", final.reason)]
        if final.unsupported:
            headers.append(("Unsupported", "ueconnect"))  # RFC 3261 section 20.40
        return Permission(False, final.status_code, final.reason_phrase, tuple(headers))

    def _query(self, invite: Request, callee: Subscriber) -> PermissionQuery:
        asserted = _identities(invite, "P-Asserted-Identity")
        caller = asserted[0] if asserted else _canonical(str(invite.from_.uri))
        caller_mno = next((u.partition("@")[2] for u in asserted if u.startswith("sip")),
                          self.home_domain) or self.home_domain
        application = (invite.headers.get("Application-ID") or ANY).strip()
        if application != ANY and not _TOKEN.fullmatch(application):
            raise PermissionProtocolError("Application-ID is not a token (docs/extension.md "
                                          "section 5.6)")
        privacy = {t.strip().lower() for v in invite.headers.get_all("Privacy")
                   for t in v.split(";")}
        return PermissionQuery(
            call_id=invite.call_id, caller=caller, caller_mno=caller_mno,
            callee=_canonical(str(invite.uri)), application=application,
            anonymous="id" in privacy, caller_aliases=tuple(asserted[1:]),
            callee_identities=callee.impus,
        )

    def _rules(self, callee: Subscriber, now: float) -> RuleSet | None:
        try:
            stored = self.store.rules.get(callee.impi, now)
        except StoreError as exc:
            logger.error("permission: rules of %s unreadable: %s", callee.impi, exc)
            return None
        if stored is None:
            return None
        try:
            return parse_rule_set(stored.body)
        except PermissionProtocolError as exc:  # validated when published: a store defect
            logger.error("permission: stored rules of %s unusable: %s", callee.impi, exc)
            return None

    def _bindings(self, subscriber: Subscriber, now: float) -> list[Binding]:
        return [b for impu in subscriber.impus
                for b in self.store.bindings.list_for_aor(impu, now)]

    # -- PermissionEndpoint ------------------------------------------------------------------

    def receive(self, request: Request) -> Response | None:
        """An answer MESSAGE to our URI or a PUBLISH to one of our subscribers: the final
        response; None for any other request."""
        try:
            if request.method == "MESSAGE" and self._is_ours(request.uri):
                return self._on_answer(request)
            if request.method == "PUBLISH":
                subscriber = subscriber_for(self.store, request.uri)
                if subscriber is not None:
                    return self._on_publish(request, subscriber)
        except ProtocolError as exc:
            return make_response(request, exc.status_code, exc.reason)
        except StoreError as exc:
            logger.error("permission: store failure: %s", exc)
            return make_response(request, 500, "Server Internal Error (permission store)")
        return None

    def _is_ours(self, uri: Uri) -> bool:
        return (isinstance(uri, SipUri) and uri.user == self.uri.user
                and uri.host.lower().rstrip(".") == self.uri.host.lower())

    def _on_answer(self, request: Request) -> Response:
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != ANSWER_TYPE:
            return make_response(request, 415, f"Unsupported Media Type (expected "
                                 f"{ANSWER_TYPE})", extra=[("Accept", ANSWER_TYPE)])
        asserted = _identities(request, "P-Asserted-Identity")
        if not asserted:
            return make_response(request, 403, "Forbidden (no asserted identity: answer "
                                 "through your P-CSCF)")
        now = self.clock()
        via = self._flow_contact(request, asserted[0], now)
        answer: Response | None = None
        rest: list[Action] = []
        for action in self.decider.answer(asserted[0], via, request.body, now):
            if isinstance(action, AnswerTaken):
                answer = make_response(request, action.status_code, action.reason_phrase)
            elif isinstance(action, AnswerIgnored):
                # Section 5.4: refused and recorded (in the log), the decision unchanged.
                logger.warning("permission: answer from %s over %s refused: %d %s "
                               "(inquiry %s)", action.from_identity, action.via.uri,
                               action.status_code, action.reason_phrase, action.inquiry)
                answer = make_response(request, action.status_code, action.reason_phrase)
            else:
                rest.append(action)
        self._act(rest)
        assert answer is not None, "the decider answers every answer"
        return answer

    def _flow_contact(self, request: Request, identity: str, now: float) -> Contact:
        """The binding whose flow the answer came over: the one whose Path's first hop is
        the top Record-Route (the P-CSCF's, carrying the same flow token, RFC 5626 5.3)."""
        try:
            routes = request.name_addrs("Record-Route")
        except ParseError:
            routes = []
        unknown = Contact(uri=f"sip:unknown-flow@{self.uri.host}")
        if not routes or not isinstance(routes[0].uri, SipUri):
            return unknown
        top = routes[0].uri
        try:
            subscriber = subscriber_for(self.store, parse_uri(identity))
        except ParseError:
            return unknown
        if subscriber is None:
            return unknown
        for binding in self._bindings(subscriber, now):
            if binding.path and _same_hop(binding.path[0], top):
                return Contact.from_binding(binding)
        return Contact(uri=str(top))

    def _on_publish(self, request: Request, subscriber: Subscriber) -> Response:
        event = (request.headers.get("Event") or "").split(";")[0].strip().lower()
        if event != RULES_EVENT:
            return make_response(request, 489, "Bad Event", extra=[("Allow-Events",
                                                                   RULES_EVENT)])
        asserted = _identities(request, "P-Asserted-Identity")
        if not any(a in subscriber.impus for a in asserted):
            return make_response(request, 403, "Forbidden (only the subscriber's own "
                                 "registered UEs may publish its rules)")
        now = self.clock()
        expires = request.header_int("Expires")
        expires = DEFAULT_RULES_EXPIRES if expires is None else min(expires, MAX_RULES_EXPIRES)
        stored = self.store.rules.get(subscriber.impi, now)
        if_match = request.headers.get("SIP-If-Match")
        if if_match is not None and (stored is None or stored.etag != if_match.strip()):
            # RFC 3903 section 6 step 3: no such entity.
            return make_response(request, 412, "Conditional Request Failed")
        if expires == 0:
            removed = self.store.rules.remove(subscriber.impi)
            self.decider.clear_cache(subscriber.impus)  # section 5.5
            etag = removed.etag if removed is not None else _new_etag()
            return make_response(request, 200, None, extra=[("SIP-ETag", etag),
                                                            ("Expires", "0")])
        if not request.body:
            if stored is None or if_match is None:
                return make_response(request, 400, "Bad Request (PUBLISH without a rule set "
                                     "and without SIP-If-Match)")
            body = stored.body  # RFC 3903 section 4.4: a refresh
        else:
            content_type = (request.headers.get("Content-Type") or "").split(";")[0]
            if content_type.strip().lower() != RULES_TYPE:
                return make_response(request, 415, f"Unsupported Media Type (expected "
                                     f"{RULES_TYPE})", extra=[("Accept", RULES_TYPE)])
            try:
                parse_rule_set(request.body)
            except PermissionProtocolError as exc:
                return make_response(request, exc.status_code, exc.reason_phrase)
            body = request.body.decode("utf-8")
            self.decider.clear_cache(subscriber.impus)  # section 5.5: a rule change
        etag = _new_etag()
        self.store.rules.put(subscriber.impi, body, etag=etag, expires_at=now + expires, now=now)
        logger.info("permission: rules of %s stored for %d s (SIP-ETag %s)", subscriber.impi,
                    expires, etag)
        return make_response(request, 200, None, extra=[("SIP-ETag", etag),
                                                        ("Expires", str(expires))])

    # -- carrying out the decider's actions ---------------------------------------------------

    def _act(self, actions: list[Action]) -> None:
        ended: list[str] = []
        for action in actions:
            if isinstance(action, Decided):
                self._record(action.record)
                if action.record.inquiry is not None:
                    ended.append(action.record.inquiry)
                future = self._waiting.get(action.call_id)
                if future is not None and not future.done():
                    future.set_result(action)
            elif isinstance(action, SendInquiry):
                self._callees[action.inquiry.inquiry] = action.inquiry.callee
                self._spawn(self._send_inquiry(action))
            elif isinstance(action, SendWithdrawal):
                inquiry = action.withdrawal.inquiry
                ended.append(inquiry)
                callee = self._callees.get(inquiry, action.contact.uri)
                self._spawn(self._message(action.contact, callee, action.body,
                                          action.content_type))
        for inquiry in ended:
            self._callees.pop(inquiry, None)
        self._rearm()

    def _record(self, record: DecisionRecord) -> None:
        logger.info("permission: %s -> %s (%s): %s by %s %s", record.caller, record.callee,
                    record.application, record.outcome, record.how, record.detail or "")
        try:
            self.store.decisions.record(record)
        except StoreError as exc:
            logger.error("permission: decision not recorded: %s", exc)

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.decider.get_timer()
        if due is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, due - self.clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._act(self.decider.handle_timer(self.clock()))

    async def _send_inquiry(self, action: SendInquiry) -> None:
        response = await self._message(action.contact, action.inquiry.callee, action.body,
                                       action.content_type, expires=action.expires)
        status = 500 if response is None else response.status_code
        if 200 <= status < 300:
            return
        logger.info("permission: inquiry %s to %s failed: %s", action.inquiry.inquiry,
                    action.contact.uri, status)
        self._act(self.decider.inquiry_failed(action.inquiry.inquiry, action.contact,
                                              self.clock(), unsupported=status == 415))

    async def _message(self, contact: Contact, to: str, body: bytes, content_type: str, *,
                       expires: int | None = None) -> Response | None:
        """One MESSAGE to `contact` along its Path (section 5.2); None when unsendable."""
        if self._stack is None:
            raise PermissionUsageError("PermissionService.start() was not called")
        try:
            target = parse_uri(contact.uri)
            route = [parse_name_addr(p, "Path") for p in contact.path]
            to_uri = parse_uri(to)
        except ParseError as exc:
            logger.warning("permission: cannot reach %s: %s", contact.uri, exc)
            return None
        extra = [("P-Asserted-Identity", f"<{self.uri}>")]
        if expires is not None:
            extra.append(("Expires", str(expires)))
        message = create_initial_request(
            "MESSAGE", target, from_=NameAddress(self.uri), to=to_uri, ids=self.ids,
            route_set=route, call_id=self.ids.call_id(self.home_domain), extra=extra,
            body=body, content_type=content_type,
        )
        try:
            hop = address_of_uri(route[0].uri if route else target)
        except (ParseError, ValueError) as exc:
            logger.warning("permission: no next hop for %s: %s", contact.uri, exc)
            return None
        return await self._stack.request(message, hop)

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work: Coroutine[Any, Any, object]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:  # one failed MESSAGE must not stop the function
            logger.exception("permission: sending a MESSAGE failed")

    def _on_event(self, event: TuEvent) -> None:
        # Nothing is addressed to this UAC's port: refuse what strays here.
        if isinstance(event, RequestReceived) and event.request.method != "ACK":
            assert self._stack is not None
            self._stack.respond(event.key, make_response(event.request, 403, "Forbidden (the "
                                                         "permission function takes no "
                                                         "requests here)"))


def _new_etag() -> str:
    return secrets.token_urlsafe(12)  # a token (RFC 3903 section 11.3.1)


def _canonical(text: str) -> str:
    try:
        return canonical_aor(text)
    except InvalidIdentity:
        return text.strip()


def _identities(request: Request, header: str) -> list[str]:
    """The canonical URIs of every value of `header` (RFC 3325 section 9.1: one or two)."""
    out: list[str] = []
    for value in request.headers.get_all(header):
        for item in split_list(value):
            try:
                out.append(_canonical(str(parse_name_addr(item, header).uri)))
            except ParseError:
                continue
    return out


def _same_hop(path: str, top: SipUri) -> bool:
    try:
        hop = parse_name_addr(path, "Path").uri
    except ParseError:
        return False
    return (isinstance(hop, SipUri) and hop.host.lower() == top.host.lower()
            and hop.port == top.port and hop.user == top.user)
