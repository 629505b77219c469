"""The S-CSCF: registrar, originating and terminating routing (TS 24.229 section 5.4), a
router for ProxyCore.

Its walk of a request:
- REGISTER: the registrar (ims.registrar) answers it.
- Originating (the top Route is our Service-Route, `orig` user part, RFC 3608): the caller
  is the P-Asserted-Identity the P-CSCF set. Require tags we do not know: 420 with
  Unsupported (RFC 3261 section 8.2.2.3). A sip: Request-URI whose domain Target-MNO
  contradicts: 400 (docs/extension.md section 4). The callee is one of our subscribers:
  terminating processing right here (same operator), whatever Target-MNO says (a number we
  serve is ours, as our ENUM record says: section 4's portability rule); a sip: Request-URI
  of our own domain without such a subscriber: 404; anything else, a tel: number not ours
  included, to our border (ENUM first there).
- Terminating (any other initial request, from our border or our own originating side): the
  Request-URI's subscriber's bindings, each contact a branch with its stored Path as Route
  (RFC 3327 section 5.3); none registered: 480; no such subscriber: 404.
- In-dialog requests follow their Route set (RFC 3261 section 16.12).
A request with `Require: ueconnect` goes through the permission function (terminating leg)
and the connectivity gateway (each leg) first (ims.seams), asynchronously. A SessionGateway
also sees the 2xx of such an INVITE, its in-dialog requests (refresh), and is told to release
on the BYE, when every branch failed, or when the request was refused after it prepared.
When completing the 2xx needs the network (PCP), the 2xx is held in the proxy core
(ims.sip.proxy.Hold, through `hold`) until the gateway is done. A CANCEL while the seams run
(the core answers it 200 and the INVITE 487, RFC 3261 section 16.10) cancels the deferred
work (`defer`'s task): the permission function withdraws its inquiry and records it as
cancelled by the caller, and a leg being prepared is released.

With `metrics`, a session starts at the first 2xx to an initial INVITE this S-CSCF routed
and ends at the dialog's BYE (the S-CSCF Record-Routes, so the BYE passes here). Sessions
whose BYE never comes are forgotten past `MAX_TRACKED_SESSIONS` newer ones, as ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from functools import partial

from ims.border import DeferWork, target_mno_contradiction
from ims.extension import OPTION_TAG, option_tags, requires_extension, target_mno_of
from ims.metrics import OperatorMetrics
from ims.pcscf import pop_own_route
from ims.permission.outcomes import REASON_PROTOCOL, Outcome, response_of
from ims.registrar import Registrar, subscriber_for
from ims.seams import (
    ConnectivityGateway,
    ConnectRequest,
    Leg,
    PermissionEndpoint,
    PermissionFunction,
    Refusal,
    SessionGateway,
)
from ims.sip.address import Address
from ims.sip.errors import ParseError
from ims.sip.headers import reason_cause
from ims.sip.message import Request, Response, make_response
from ims.sip.proxy import Defer, Forward, Hold, Target
from ims.sip.uri import SipUri, parse_uri
from ims.store import Store, Subscriber

__all__ = [
    "END_TO_END_TAGS",
    "MAX_TRACKED_SESSIONS",
    "ORIG_USER",
    "HoldWork",
    "Scscf",
    "service_route",
]

logger = logging.getLogger(__name__)

ORIG_USER = "orig"
"""The user part of our Service-Route URI that marks originating requests (TS 24.229
section 5.4.1.2.2: the S-CSCF "may include a user part ... to indicate originating")."""

END_TO_END_TAGS = frozenset(
    {"100rel", "timer", "replaces", "precondition", "histinfo", "norefersub", "tdialog",
     "join", "from-change", "path", "outbound", "gruu", "sec-agree"}
)
"""Require tags the UEs handle end to end: passed on, not refused."""

MAX_TRACKED_SESSIONS = 100_000
"""Bound on the sessions the S-CSCF remembers for the sessions gauge."""

HoldWork = Callable[[Response, Awaitable[Response]], Hold]
"""Hold `response` in the proxy core until the awaitable gives the response to forward in its
place (ims.operator.Element.hold); the response as given goes on if the work fails."""


def service_route(uri: SipUri) -> str:
    """The Service-Route value of the S-CSCF named `uri`: its URI, `orig`, `lr` (RFC 3608)."""
    return f"<{SipUri(host=uri.host, port=uri.port, user=ORIG_USER, params=(('lr', None),))}>"


# The locator's refusals (docs/extension.md section 7) and their outcome, by status code.
_LOCATOR_OUTCOMES = {404: Outcome.UNKNOWN_NUMBER, 604: Outcome.UNKNOWN_OPERATOR}


def _no_such_number(request: Request, phrase: str) -> Response:
    """404 for a number no subscriber here has; with `Reason: ueconnect;cause=7` when the
    request requires the extension (docs/extension.md section 7)."""
    extra = []
    if requires_extension(request):
        reason = response_of(Outcome.UNKNOWN_NUMBER).reason
        assert reason is not None
        extra.append(("Reason", reason))
    return make_response(request, 404, phrase, extra=extra)


def _with_locator_reason(
    watch: Callable[[Response], Response | Hold] | None,
) -> Callable[[Response], Response | Hold]:
    """The border's 404 (no such number: ENUM or the peer's S-CSCF) and 604 (no such
    operator) for a `Require: ueconnect` INVITE, with the section 7 Reason the border does
    not add (cause 7, 8), unless one is there already; then `watch`."""

    def rewrite(response: Response) -> Response | Hold:
        outcome = _LOCATOR_OUTCOMES.get(response.status_code)
        if outcome is not None and reason_cause(
                response.headers.get_all("Reason"), REASON_PROTOCOL) is None:
            reason = response_of(outcome).reason
            assert reason is not None
            response = response.with_headers(response.headers.appended("Reason", reason))
        return watch(response) if watch is not None else response

    return rewrite


class Scscf:
    """The router of one S-CSCF instance named `uri`."""

    def __init__(
        self,
        uri: SipUri,
        *,
        store: Store,
        registrar: Registrar,
        home_domain: str,
        mnc_lengths: Mapping[str, int],
        border: Address | None,
        permission: PermissionFunction,
        gateway: ConnectivityGateway,
        defer: DeferWork,
        hold: HoldWork,
        clock: Callable[[], float],
        metrics: OperatorMetrics | None = None,
        permission_endpoint: PermissionEndpoint | None = None,
    ) -> None:
        self.uri = uri
        self.permission_endpoint = permission_endpoint
        self.store = store
        self.registrar = registrar
        self.home_domain = home_domain.lower()
        self.mnc_lengths = mnc_lengths
        self.border = border
        self.permission = permission
        self.gateway = gateway
        self.defer = defer
        self.hold = hold
        self.clock = clock
        self.metrics = metrics
        self.sessions: OrderedDict[str, None] = OrderedDict()  # Call-IDs of live sessions
        self._gateway_tasks: set[asyncio.Task[None]] = set()  # releases and refreshes

    def __call__(self, request: Request, source: Address) -> Forward | Response | Defer:
        request, own = pop_own_route(request, self.uri)
        if request.method == "REGISTER":
            return self.registrar.register(request, self.clock())
        if (self.permission_endpoint is not None and request.to.tag is None
                and request.method in ("MESSAGE", "PUBLISH")):
            # Answers to inquiries and rule sets (docs/extension.md sections 5.3, 6.3).
            answer = self.permission_endpoint.receive(request)
            if answer is not None:
                return answer
        if request.to.tag is not None or request.method == "ACK":
            if request.method == "BYE":
                self._session_ended(request.call_id)
            self._in_dialog_gateway(request)
            return Forward((Target(request.uri),), request=request)
        originating = own is not None and isinstance(own.uri, SipUri) and own.uri.user == ORIG_USER
        if originating:
            return self._originating(request)
        return self._terminating(request, helped=requires_extension(request))

    # -- originating -----------------------------------------------------------------------

    def _originating(self, request: Request) -> Forward | Response | Defer:
        unknown = [
            t for t in option_tags(request, "Require")
            if t != OPTION_TAG and t not in END_TO_END_TAGS
        ]
        if unknown:
            return make_response(
                request, 420, "Bad Extension", extra=[("Unsupported", ", ".join(unknown))]
            )
        if request.headers.get("P-Asserted-Identity") is None:
            return make_response(
                request, 403, "Forbidden (no asserted identity: originate through the P-CSCF)"
            )
        contradiction = target_mno_contradiction(request, self.mnc_lengths)
        if contradiction is not None:
            return contradiction
        # docs/extension.md section 4: Target-MNO does not decide where a number is; a
        # subscriber of ours (a number ported in included) is called here, and a tel: number
        # that is not ours goes to the border, which asks ENUM before Target-MNO.
        callee = subscriber_for(self.store, request.uri)
        helped = requires_extension(request)
        if callee is not None:
            logger.info("S-CSCF %s: %s %s -> %s (same operator)", self.uri, request.method,
                        request.headers.get("P-Asserted-Identity"), request.uri)
            if helped:
                return self._with_seams(request, (Leg.ORIGINATING, Leg.TERMINATING))
            return self._deliver(request, callee)
        if self._our_domain(request):
            return _no_such_number(request, f"Not Found (no subscriber {request.uri} here)")
        if self.border is None:
            return make_response(request, 403, "Forbidden (no border configured for calls out)")
        logger.info("S-CSCF %s: %s %s -> %s (to the border)", self.uri, request.method,
                    request.headers.get("P-Asserted-Identity"), request.uri)
        if helped:
            return self._with_seams(request, (Leg.ORIGINATING,))
        return self._to_border(request)

    def _to_border(self, request: Request, *, prepared: bool = False) -> Forward:
        assert self.border is not None
        # The border's 503 says the peer operator is unreachable: the caller gets it as is.
        watch = self._session_watch(request, 1 if prepared else 0)
        if requires_extension(request):
            watch = _with_locator_reason(watch)
        return Forward(
            (Target(request.uri, self.border),), record_route=True, request=request,
            relay_503=True, rewrite_response=watch,
        )

    def _our_domain(self, request: Request) -> bool:
        uri = request.uri
        return isinstance(uri, SipUri) and uri.host.lower().rstrip(".") == self.home_domain

    # -- terminating -----------------------------------------------------------------------

    def _terminating(self, request: Request, *, helped: bool) -> Forward | Response | Defer:
        callee = subscriber_for(self.store, request.uri)
        if callee is None:
            return _no_such_number(request, f"Not Found (no subscriber {request.uri} here)")
        if helped:
            return self._with_seams(request, (Leg.TERMINATING,))
        return self._deliver(request, callee)

    def _deliver(self, request: Request, callee: Subscriber, *,
                 prepared: bool = False) -> Forward | Response:
        now = self.clock()
        bindings = [b for impu in callee.impus for b in self.store.bindings.list_for_aor(impu, now)]
        if not bindings:
            return make_response(request, 480, "Temporarily Unavailable (not registered)")
        targets = []
        for binding in bindings:
            try:
                contact = parse_uri(binding.contact)
            except ParseError:
                logger.warning("S-CSCF %s: unusable stored contact %r", self.uri, binding.contact)
                continue
            targets.append(Target(contact, route=binding.path))
        if not targets:
            return make_response(request, 480, "Temporarily Unavailable (no usable contact)")
        logger.info("S-CSCF %s: %s for %s to %d contact%s", self.uri, request.method,
                    request.uri, len(targets), "" if len(targets) == 1 else "s")
        watch = self._session_watch(request, len(targets) if prepared else 0)
        return Forward(tuple(targets), record_route=True, request=request,
                       rewrite_response=watch)

    # -- sessions (metrics) -----------------------------------------------------------------

    def _session_watch(self, request: Request, prepared_branches: int = 0
                       ) -> Callable[[Response], Response | Hold] | None:
        """What watches the responses of a forwarded INVITE: the metrics, and the gateway
        when it prepared the INVITE (`prepared_branches`: how many branches it was forked to)."""
        if request.method != "INVITE":
            return None
        metrics = (partial(self._on_invite_response, request.call_id)
                   if self.metrics is not None else None)
        gateway = self.gateway
        if not prepared_branches or not isinstance(gateway, SessionGateway):
            return metrics
        call_id = request.call_id
        failed = 0
        answered = False

        def watch(response: Response) -> Response | Hold:
            nonlocal failed, answered
            code = response.status_code
            if 200 <= code < 300:
                answered = True
                completed = gateway.complete(call_id, response)
                if not isinstance(completed, Response):
                    if metrics is not None:
                        metrics(response)  # the session starts with the 2xx, held or not
                    return self.hold(response, completed)  # the 2xx waits in the core
                response = completed
            elif code >= 300 and not answered:
                # Release once no branch can still answer (a CANCEL ends each as 487).
                failed += 1
                if failed >= prepared_branches or code >= 600:
                    self._gateway_task(gateway.release(call_id))
            return metrics(response) if metrics is not None else response

        return watch

    def _on_invite_response(self, call_id: str, response: Response) -> Response:
        # Every 2xx of the INVITE passes here (RFC 3261 section 16.7 item 5), retransmissions
        # and forks included: the first one starts the session.
        if 200 <= response.status_code < 300 and call_id not in self.sessions:
            assert self.metrics is not None
            self.sessions[call_id] = None
            self.metrics.session_started()
            while len(self.sessions) > MAX_TRACKED_SESSIONS:
                self.sessions.popitem(last=False)
                self.metrics.session_ended()
        return response

    def _in_dialog_gateway(self, request: Request) -> None:
        gateway = self.gateway
        if not isinstance(gateway, SessionGateway):
            return
        if request.method == "BYE":
            self._gateway_task(gateway.release(request.call_id))
        elif request.method != "ACK":
            self._gateway_task(gateway.refresh(request))

    def _gateway_task(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._gateway_tasks.add(task)
        task.add_done_callback(self._gateway_tasks.discard)

    def _session_ended(self, call_id: str) -> None:
        if self.metrics is not None and call_id in self.sessions:
            del self.sessions[call_id]
            self.metrics.session_ended()

    # -- the seams (issue 5 and issue 6) ----------------------------------------------------

    def _with_seams(self, request: Request, legs: tuple[Leg, ...]) -> Defer:
        return self.defer(request, self._run_seams(request, legs))

    async def _run_seams(self, request: Request, legs: tuple[Leg, ...]) -> Forward | Response:
        caller = request.headers.get("P-Asserted-Identity") or str(request.from_.uri)

        def asking(leg: Leg, request: Request = request) -> ConnectRequest:
            return ConnectRequest(
                leg=leg, caller=caller, callee=str(request.uri), call_id=request.call_id,
                target_mno=target_mno_of(request), request=request,
            )

        if Leg.TERMINATING in legs:
            # Section 5.1: nothing is asked of the gateway, for either leg, before consent.
            verdict = await self.permission.check(asking(Leg.TERMINATING))
            if not verdict.allowed:
                logger.info("S-CSCF %s: %s -> %s refused: %d %s", self.uri, caller,
                            request.uri, verdict.status_code, verdict.reason)
                return make_response(request, verdict.status_code, verdict.reason,
                                     extra=list(verdict.headers))
        try:
            decision = await self._prepare_and_route(request, legs, asking)
        except asyncio.CancelledError:
            # The caller's CANCEL came while a leg was being prepared (the proxy core
            # answered 487, RFC 3261 section 16.10): nothing may stay open for it.
            if isinstance(self.gateway, SessionGateway):
                self._gateway_task(self.gateway.release(request.call_id))
            raise
        if isinstance(decision, Response) and isinstance(self.gateway, SessionGateway):
            # Refused after a leg was prepared: nothing may stay open (section 5.1).
            self._gateway_task(self.gateway.release(request.call_id))
        return decision

    async def _prepare_and_route(self, request: Request, legs: tuple[Leg, ...],
                                 asking: Callable[[Leg, Request], ConnectRequest]
                                 ) -> Forward | Response:
        for leg in legs:
            # Each leg sees the request as the previous leg rewrote it.
            prepared = await self.gateway.prepare(asking(leg, request))
            if isinstance(prepared, Refusal):
                return make_response(request, prepared.status_code, prepared.reason)
            request = prepared
        tracked = request.method == "INVITE"
        if Leg.TERMINATING in legs:
            callee = subscriber_for(self.store, request.uri)
            if callee is None:
                return _no_such_number(request, f"Not Found (no subscriber {request.uri})")
            return self._deliver(request, callee, prepared=tracked)
        return self._to_border(request, prepared=tracked)
