"""The stateful proxy core (RFC 3261 section 16), sans-IO, a TU on top of TransactionLayer.

The walk of a request through this module follows section 16: validation (16.3), Route
processing (16.4), target determination (16.5, delegated to a `Router` the IMS roles supply),
forwarding to each target (16.6), response processing and best-response selection (16.7),
Timer C (16.8), CANCEL (16.10) and the stateless ACK for a 2xx (16.11). An OPTIONS addressed
to the proxy itself is answered by it (section 11).

The driver feeds every TU event of the layer to `ProxyCore.handle_event(event, now)` and its
own timer (`get_timer` / `handle_timer`: Timer C and the CANCEL guard) beside the layer's. The
proxy acts only through the layer, so everything it sends appears as the layer's SendMessage
events. Hostnames are resolved by the caller's `Resolver`; message syntax is checked by the
layer on receipt (ims.sip.checks, 16.3 item 1). A role that needs an asynchronous step before
routing returns `Defer` (then `resume`); one that needs it before a response goes upstream
returns `Hold` from its rewrite (then `release_response`).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ims.sip.address import Address
from ims.sip.errors import LocalProtocolError, ProtocolError
from ims.sip.headers import Via, parse_name_addr, split_list
from ims.sip.ids import BRANCH_MAGIC_COOKIE
from ims.sip.message import Request, Response, make_response
from ims.sip.status import reason_phrase
from ims.sip.transaction import (
    AckReceived,
    CancelReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    State,
    TransactionKey,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    TransportFailure,
    make_cancel,
    response_destination,
    transaction_identity,
)
from ims.sip.uri import SipUri, TelUri, Uri

__all__ = [
    "Defer",
    "Forward",
    "Hold",
    "ProxyConfig",
    "ProxyCore",
    "Resolver",
    "Router",
    "Target",
    "forward_to_request_uri",
    "select_best_response",
]

# Section 16.8: Timer C "MUST be set for more than 3 minutes".
TIMER_C_MINIMUM = 180.0
DEFAULT_MAX_FORWARDS = 70  # 16.6 item 3
# 16.7 item 6: within the 4xx class, responses that help the client resubmit come first.
_RESUBMISSION_HINTS = (401, 407, 415, 420, 484)
_AUTH_CHALLENGES = ("WWW-Authenticate", "Proxy-Authenticate")
# RFC 3326 section 2: why the other branches of an answered INVITE are cancelled.
_COMPLETED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'


# --- configuration and the role's hooks -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Who the proxy is and what it accepts.

    `uri` names the proxy: its host:port is the Via sent-by and, with `lr`, the Record-Route
    value. `aliases` are further URIs that mean this proxy in a Route or Request-URI (16.4).
    `supported` are the option tags accepted in Proxy-Require (16.3 item 5).
    """

    uri: SipUri
    aliases: tuple[SipUri, ...] = ()
    supported: frozenset[str] = frozenset()
    uri_schemes: frozenset[str] = frozenset({"sip", "sips", "tel"})
    timer_c: float = 185.0

    def __post_init__(self) -> None:
        if self.timer_c <= TIMER_C_MINIMUM:
            raise ValueError(
                f"Timer C must be more than {TIMER_C_MINIMUM:.0f} s (RFC 3261 16.8), "
                f"not {self.timer_c}"
            )
        if self.uri.user is not None:
            raise ValueError(f"the proxy URI names a host, not a user: {self.uri}")

    @property
    def sent_by(self) -> str:
        return self.uri.host if self.uri.port is None else f"{self.uri.host}:{self.uri.port}"

    @property
    def record_route(self) -> str:
        """Our Record-Route value: our URI with `lr` (16.6 item 4, loose routing)."""
        return f"<{self.uri.with_param('lr')}>"

    def is_local(self, uri: Uri) -> bool:
        """True when `uri` names this proxy (host and port; no user part)."""
        if not isinstance(uri, SipUri) or uri.user is not None:
            return False
        return any(_same_host_port(uri, mine) for mine in (self.uri, *self.aliases))

    def is_our_via(self, via: Via) -> bool:
        port = via.port if via.port is not None else _default_port(self.uri.scheme)
        ours = self.uri.port if self.uri.port is not None else _default_port(self.uri.scheme)
        return via.host.lower() == self.uri.host.lower() and port == ours


@dataclass(frozen=True, slots=True)
class Target:
    """One branch: the Request-URI to use and, when the role knows it, the next hop (16.5).
    Without `next_hop`, the next hop comes from the Route set or the Request-URI (16.6 item 7)
    through the Resolver."""

    uri: Uri
    next_hop: Address | None = None
    # Route values for this branch only, replacing the request's (RFC 3327 section 5.3: a
    # registrar's stored Path becomes the Route towards that contact).
    route: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """A response rewrite needs an asynchronous step (e.g. a PCP round trip) before the
    response may go upstream: the core holds it until the role calls
    `ProxyCore.release_response(token, response, now)`, which carries on exactly as if the
    rewrite had returned `response`. `token` is the role's, unique among held responses.
    While a branch holds a response, its further final responses (retransmissions of a 2xx,
    RFC 3261 section 13.3.1.4) are absorbed; the UAS keeps retransmitting until the ACK, so
    a later one goes up once the hold is released."""

    token: object


ResponseRewrite = Callable[[Response], Response | Hold]
"""A role's edit of each response of a branch before it goes upstream (e.g. a border folding
internal Record-Route entries, a P-CSCF learning Service-Route); may raise ProtocolError, or
return a `Hold` to finish the edit later."""


@dataclass(frozen=True, slots=True)
class Forward:
    """The routing decision to proxy the request to `targets` in parallel (16.6).

    `record_route` asks to stay on the path of the dialog (16.6 item 4), with
    `record_route_uri` (plus `lr`) instead of the proxy's own URI when set; `extra_headers` are
    added to every forwarded copy (16.6 item 5, e.g. P-Asserted-Identity). `request` is the
    request as the role rewrote it (Route set, identity headers), None for the one it was given.
    `hide_vias` sends only our Via downstream and rebuilds upstream responses' Vias from the
    received request (topology hiding at a border). `rewrite_response` edits every response of
    the branches before it goes upstream."""

    targets: tuple[Target, ...]
    record_route: bool = False
    extra_headers: tuple[tuple[str, str], ...] = ()
    request: Request | None = None
    record_route_uri: SipUri | None = None
    hide_vias: bool = False
    rewrite_response: ResponseRewrite | None = None
    # RFC 3263 section 4.3: try the targets one after the other, the next on a 408 / 503 /
    # transport failure; when all fail so, answer `exhausted` (e.g. 503 with Retry-After).
    failover: bool = False
    exhausted: Response | None = None
    # A 503 from these targets speaks of what lies beyond them (an operator's own border
    # reporting the peer operator unreachable): relayed with its Retry-After, not turned
    # into 16.7 item 6's 500.
    relay_503: bool = False


@dataclass(frozen=True, slots=True)
class Defer:
    """The router needs an asynchronous step (a DNS lookup) first: the request waits until the
    role calls `ProxyCore.resume(token, decision, now)`. `token` is the role's, unique among
    deferred requests. Never for an ACK (forwarded statelessly, it cannot wait). `on_cancel`
    is called once when a CANCEL ends the request while it waits (16.10: the core has answered
    the CANCEL 200 and the request 487), so that the role stops its step."""

    token: object
    on_cancel: Callable[[], object] | None = None


class Router(Protocol):
    """The role's target determination (16.5): forward, answer with a final response, or
    defer the decision."""

    def __call__(self, request: Request, source: Address) -> Forward | Response | Defer: ...


Resolver = Callable[[Uri], Address | None]
"""Next hop of a URI (RFC 3263 done by the caller); None when it cannot be reached."""


def forward_to_request_uri(request: Request, *, record_route: bool = False) -> Forward:
    """The decision for a request that is not for this domain or is in a dialog: its
    Request-URI is the only target (16.5)."""
    return Forward((Target(request.uri),), record_route=record_route)


def select_best_response(responses: Sequence[Response]) -> Response:
    """Choose among the final responses of a response context (16.7 item 6): a 6xx if any,
    else the lowest class, preferring 401, 407, 415, 420, 484 within 4xx."""
    if not responses:
        raise LocalProtocolError("no final response to choose from")
    global_failures = [r for r in responses if r.status_code >= 600]
    if global_failures:
        return global_failures[0]
    lowest = min(r.status_code // 100 for r in responses)
    in_class = [r for r in responses if r.status_code // 100 == lowest]
    if lowest == 4:
        for code in _RESUBMISSION_HINTS:
            for r in in_class:
                if r.status_code == code:
                    return r
    return in_class[0]


# --- state ------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Branch:
    key: TransactionKey
    request: Request | None  # as forwarded; None once not needed for a CANCEL (_finished)
    destination: Address
    context: _Context
    provisional: bool = False  # any 1xx, 100 included (9.1: CANCEL only after one)
    final: bool = False
    cancel_pending: bool = False  # CANCEL wanted but no provisional yet (16.10)
    cancel_sent: bool = False
    cancel_reason: str | None = None  # RFC 3326 Reason for the CANCEL, when one is due
    hide_vias: bool = False  # only our Via went downstream: rebuild upstream Vias
    held: int = 0  # final responses of this branch the role holds (Hold), not yet released
    give_up_status: int = 408  # the response assumed if the branch never answers (16.8)
    timer: int | None = None  # token of the Timer C / CANCEL guard heap entry


@dataclass(eq=False, slots=True)
class _Context:
    """The response context of one server transaction (16.6 item 1, 16.7)."""

    server_key: TransactionKey
    request: Request  # as received
    branches: list[_Branch] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)  # final non-2xx, for 16.7 item 6
    final_sent: bool = False
    cancelled: bool = False
    server_alive: bool = True
    rewrite_response: ResponseRewrite | None = None
    # Serial forwarding (Forward.failover): the targets not tried yet and how to try them.
    failover: tuple[Forward, Request, str] | None = None
    relay_503: bool = False
    untried: list[Target] = field(default_factory=list)
    holding: int = 0  # held responses of its branches: no best response is chosen meanwhile

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    def pending(self) -> list[_Branch]:
        return [b for b in self.branches if not b.final]


# --- the core ---------------------------------------------------------------------------------


class ProxyCore:
    """A transaction-stateful proxy (RFC 3261 section 16) driven by TransactionLayer events."""

    def __init__(
        self,
        layer: TransactionLayer,
        config: ProxyConfig,
        router: Router,
        resolver: Resolver,
    ) -> None:
        self.layer = layer
        self.config = config
        self.router = router
        self.resolver = resolver
        self._contexts: dict[TransactionKey, _Context] = {}
        self._branches: dict[TransactionKey, _Branch] = {}
        self._heap: list[tuple[float, int, TransactionKey]] = []
        self._token = 0
        # Requests whose routing the role deferred: token -> (context, routed, loop hash).
        self._deferred: dict[object, tuple[_Context, Request, str]] = {}
        self._on_cancel_hooks: dict[object, Callable[[], object]] = {}  # Defer.on_cancel
        # Responses a rewrite holds (Hold): token -> the branch it came on, whether final.
        self._held: dict[object, tuple[_Branch, bool]] = {}

    # -- driver interface --

    def handle_event(self, event: Event, now: float) -> None:
        """A TU event drained from the layer (SendMessage events are the driver's, not ours)."""
        if isinstance(event, RequestReceived):
            self._on_request(event.request, event.source, event.key, now)
        elif isinstance(event, ResponseReceived):
            self._on_response(event.response, event.key, now)
        elif isinstance(event, CancelReceived):
            self._on_cancel(event, now)
        elif isinstance(event, AckReceived):
            self._on_ack(event.request, event.source)
        elif isinstance(event, TransactionTimeout | TransportFailure):
            branch = self._branches.get(event.key)
            if branch is not None:
                # 16.7 / 8.1.3.1: a timeout counts as 408, a transport failure as 503.
                status = 408 if isinstance(event, TransactionTimeout) else 503
                self._branch_failed(branch, status, now)
        elif isinstance(event, TransactionTerminated):
            self._on_terminated(event.key)

    def get_timer(self) -> float | None:
        """The earliest Timer C / CANCEL guard deadline, None if none runs."""
        heap = self._heap
        while heap:
            _, token, key = heap[0]
            branch = self._branches.get(key)
            if branch is not None and branch.timer == token:
                return heap[0][0]
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, token, key = heapq.heappop(heap)
            branch = self._branches.get(key)
            if branch is None or branch.timer != token:
                continue
            branch.timer = None
            self._on_branch_timer(branch, now)

    def __len__(self) -> int:
        """The number of live response contexts."""
        return len(self._contexts)

    # -- 16.3 to 16.6: a new request --

    def _on_request(
        self, request: Request, source: Address, key: TransactionKey, now: float
    ) -> None:
        context = _Context(key, request)
        self._contexts[key] = context
        if request.method == "INVITE":
            self.layer.send_trying(key, now)  # 17.2.1; quenches the UAC's Timer A
        if self._is_options_for_us(request):
            self._answer_options(context, now)
            return
        loop_hash = _loop_hash(request)
        rejection = self._validate(request, loop_hash)
        if rejection is not None:
            self._answer(context, *rejection, now=now)
            return
        try:
            routed = self._process_route(request)
            decision = self.router(routed, source)
        except ProtocolError as exc:  # a header the role needed was malformed
            self._answer(context, exc.status_code, exc.reason, now=now)
            return
        if isinstance(decision, Defer):
            if decision.token in self._deferred:
                raise LocalProtocolError(f"defer token {decision.token!r} is in use")
            self._deferred[decision.token] = (context, routed, loop_hash)
            if decision.on_cancel is not None:
                self._on_cancel_hooks[decision.token] = decision.on_cancel
            return
        self._decided(context, routed, decision, loop_hash, now)

    def resume(self, token: object, decision: Forward | Response, now: float) -> bool:
        """The role's decision for a request it deferred (`Defer(token)`). False when the token
        is unknown or the request no longer waits (answered, cancelled: then 487 here)."""
        entry = self._deferred.pop(token, None)
        self._on_cancel_hooks.pop(token, None)
        if entry is None:
            return False
        context, routed, loop_hash = entry
        if context.final_sent or not context.server_alive:
            return False
        if context.cancelled:
            self._answer(context, 487, None, now=now)  # 9.2: the request was cancelled
            return False
        self._decided(context, routed, decision, loop_hash, now)
        return True

    @property
    def deferred(self) -> int:
        """How many requests wait for `resume`."""
        return len(self._deferred)

    def release_response(self, token: object, response: Response, now: float) -> bool:
        """The response a rewrite held (`Hold(token)`), as rewritten: forwarding carries on as
        if the rewrite had returned it (16.7 items 5 to 10). False when the token is unknown
        (released already)."""
        entry = self._held.pop(token, None)
        if entry is None:
            return False
        branch, final = entry
        if final:
            branch.held -= 1
        branch.context.holding -= 1
        self._forward_response(branch, response, now)
        self._maybe_finish(branch.context, now)  # other branches may have ended meanwhile
        return True

    @property
    def held(self) -> int:
        """How many responses wait for `release_response`."""
        return len(self._held)

    def _decided(
        self,
        context: _Context,
        routed: Request,
        decision: Forward | Response,
        loop_hash: str,
        now: float,
    ) -> None:
        if isinstance(decision, Response):
            if decision.status_code < 200:
                raise LocalProtocolError("the router must answer with a final response")
            self._send_final(context, self._with_to_tag(context, decision), now)
            return
        if not decision.targets:
            self._answer(context, 480, "No target for the request", now=now)
            return
        context.rewrite_response = decision.rewrite_response
        context.relay_503 = decision.relay_503
        if decision.request is not None:
            routed = decision.request
        if decision.failover:
            context.failover = (decision, routed, loop_hash)
            context.untried = list(decision.targets[1:])
            self._fork(context, routed, decision.targets[0], decision, loop_hash, 0, now)
        else:
            for index, target in enumerate(decision.targets):
                self._fork(context, routed, target, decision, loop_hash, index, now)
        self._maybe_finish(context, now)

    def _validate(
        self, request: Request, loop_hash: str
    ) -> tuple[int, str, list[tuple[str, str]]] | None:
        """Section 16.3 items 2 to 5; item 1 (syntax) was done by the layer on receipt."""
        uri = request.uri
        scheme = ("tel" if isinstance(uri, TelUri) else uri.scheme).lower()
        if scheme not in self.config.uri_schemes:
            return 416, f"URI scheme {scheme} not supported", []  # item 2
        try:
            max_forwards = request.header_int("Max-Forwards", 255)
        except ProtocolError as exc:
            return 400, exc.reason, []
        if max_forwards == 0:
            return 483, "Too Many Hops", []  # item 3
        if self._is_loop(request, loop_hash):
            return 482, "Loop Detected", []  # item 4
        unsupported = [
            tag
            for value in request.headers.get_all("Proxy-Require")
            for tag in split_list(value)
            if tag and tag not in self.config.supported
        ]
        if unsupported:  # item 5
            return 420, "Bad Extension", [("Unsupported", ", ".join(unsupported))]
        return None

    def _is_options_for_us(self, request: Request) -> bool:
        """Section 11: an OPTIONS addressed to this proxy (its URI, no user part, as the
        Request-URI, and a Route set, if any, of our own entries only). The proxy is its final
        recipient whatever the Max-Forwards, 0 included (16.3 item 3)."""
        if request.method != "OPTIONS" or not self.config.is_local(request.uri):
            return False
        if "Route" not in request.headers:
            return True
        try:
            return all(self.config.is_local(route.uri) for route in request.name_addrs("Route"))
        except ProtocolError:
            return False  # left to the routing below, which answers the malformed Route

    def _answer_options(self, context: _Context, now: float) -> None:
        """Section 11.2: 200 with what this proxy accepts and supports. Allow is omitted: it
        is ambiguous from a proxy, which is method agnostic. As the request's UAS the proxy
        honours Require (8.2.2.3: 420 listing the unknown tags in Unsupported)."""
        unsupported = [
            tag
            for value in context.request.headers.get_all("Require")
            for tag in split_list(value)
            if tag and tag not in self.config.supported
        ]
        if unsupported:
            self._answer(context, 420, "Bad Extension", [("Unsupported", ", ".join(unsupported))],
                         now=now)
            return
        capabilities = [
            ("Accept", "*/*"),  # bodies are forwarded, never read: none is refused
            ("Accept-Encoding", "identity"),
            ("Accept-Language", "en"),
            ("Supported", ", ".join(sorted(self.config.supported))),
        ]
        self._answer(context, 200, None, capabilities, now=now)

    def _is_loop(self, request: Request, loop_hash: str | None = None) -> bool:
        """16.3 item 4 with RFC 5393 section 4.2: one of our Vias carries the loop hash this
        request has now, so it came back unchanged (a spiral changes the hash). The hash is
        computed only when a Via of ours is there to compare it with."""
        prefix: str | None = None
        for via in request.vias:
            if self.config.is_our_via(via):
                if prefix is None:
                    digest = loop_hash if loop_hash is not None else _loop_hash(request)
                    prefix = f"{BRANCH_MAGIC_COOKIE}{digest}."
                if (via.branch or "").startswith(prefix):
                    return True
        return False

    def _process_route(self, request: Request) -> Request:
        """Section 16.4: undo a strict router's rewrite, then drop our own Route entry."""
        headers = request.headers
        routes = headers.get_all("Route")
        if routes and self.config.is_local(request.uri):
            # The previous hop was a strict router: our Record-Route URI is the Request-URI,
            # the real one is the last Route value.
            last = request.name_addrs("Route")[-1]
            request = request.with_uri(last.uri).with_headers(
                headers.replaced("Route", routes[:-1])
            )
        for _ in range(len(routes)):  # we may have record-routed twice (RFC 5658)
            if "Route" not in request.headers:
                break
            if not self.config.is_local(request.name_addrs("Route")[0].uri):
                break
            request = request.with_headers(request.headers.without_first("Route"))
        return request

    def _fork(
        self,
        context: _Context,
        request: Request,
        target: Target,
        decision: Forward,
        loop_hash: str,
        index: int,
        now: float,
    ) -> None:
        """Section 16.6: one copy of the request towards one target."""
        headers = request.headers
        max_forwards = request.header_int("Max-Forwards", 255)
        headers = headers.replaced(  # item 3
            "Max-Forwards",
            [str(DEFAULT_MAX_FORWARDS if max_forwards is None else max_forwards - 1)],
        )
        if decision.record_route:  # item 4
            value = self.config.record_route
            if decision.record_route_uri is not None:
                value = f"<{decision.record_route_uri.with_param('lr')}>"
            headers = headers.prepended("Record-Route", value)
        if decision.hide_vias:
            headers = headers.without("Via")
        if target.route is not None:
            headers = headers.replaced("Route", target.route)
        for name, value in decision.extra_headers:  # item 5
            headers = headers.appended(name, value)
        copy = request.with_uri(target.uri).with_headers(headers)  # items 1, 2
        copy, next_hop_uri = _postprocess_routing(copy)  # item 6
        destination = target.next_hop or self.resolver(next_hop_uri)  # item 7
        if destination is None:
            context.responses.append(
                make_response(context.request, 503, f"No route to {next_hop_uri}")
            )
            return
        branch = f"{BRANCH_MAGIC_COOKIE}{loop_hash}.{_branch_hash(context, target, index)}"
        via = f"SIP/2.0/{destination.transport} {self.config.sent_by};branch={branch}"
        copy = copy.with_headers(copy.headers.prepended("Via", via))  # item 8
        try:
            key = self.layer.send_request(copy, destination, now)  # item 10
        except LocalProtocolError:  # transaction limit, or a duplicate target
            context.responses.append(make_response(context.request, 503))
            return
        entry = _Branch(key, copy, destination, context, hide_vias=decision.hide_vias)
        context.branches.append(entry)
        self._branches[key] = entry
        if context.is_invite:
            self._arm(entry, now + self.config.timer_c)  # item 11: Timer C

    # -- 16.7: responses --

    def _on_response(self, response: Response, key: TransactionKey | None, now: float) -> None:
        branch = self._branches.get(key) if key is not None else None
        if branch is None:
            if key is None:
                self._forward_stray(response)
            return  # a response to our CANCEL, or to a branch given up on
        if branch.held and response.status_code >= 200:
            return  # a retransmission of the final response held (Hold): absorbed
        upstream = self._upstream(branch, response)
        if upstream is None:
            return
        if isinstance(upstream, Hold):
            self._hold(branch, upstream.token, response.status_code)
            return
        self._forward_response(branch, upstream, now)

    def _hold(self, branch: _Branch, token: object, status: int) -> None:
        if token in self._held:
            raise LocalProtocolError(f"hold token {token!r} is in use")
        final = status >= 200
        self._held[token] = (branch, final)
        branch.context.holding += 1
        if final:
            branch.held += 1
            # The branch has its final response: Timer C and a CANCEL no longer apply.
            branch.final = True
            branch.timer = None

    def _forward_response(self, branch: _Branch, upstream: Response, now: float) -> None:
        """Items 5 to 10 for a response after our Via and the role's rewrite."""
        context = branch.context
        code = upstream.status_code
        if code < 200:
            branch.provisional = True
            if branch.cancel_pending:
                self._send_cancel(branch, now)
            timer_c_running = branch.timer is not None and not branch.cancel_sent
            if code > 100 and context.is_invite and timer_c_running:
                self._arm(branch, now + self.config.timer_c)  # 16.7 item 2
            if code > 100 and not context.final_sent:
                self._send_upstream(context, upstream, now)  # item 5: forwarded at once
            return
        if not branch.final:
            branch.final = True
            branch.timer = None
        if 200 <= code < 300:
            # Item 5: every 2xx goes up at once, even after another 2xx (RFC 6026: the
            # server transaction in Accepted takes them; once it is gone, statelessly).
            if context.final_sent and not context.is_invite:
                return
            self._send_final(context, upstream, now)
            if context.is_invite:
                self._cancel_pending(context, now, _COMPLETED_ELSEWHERE)
            return
        if context.final_sent:
            return
        context.responses.append(upstream)
        if code >= 600 and context.is_invite:
            self._cancel_pending(context, now, None)  # item 5 (6xx)
        self._maybe_finish(context, now)

    def _upstream(self, branch: _Branch, response: Response) -> Response | Hold | None:
        """Item 3 (our Via removed), then the role's rewrite (which may hold the response).
        A response the rewrite cannot read becomes a 502 (final) or is dropped (provisional)."""
        context = branch.context
        headers = response.headers.without_first("Via")
        if branch.hide_vias:
            headers = headers.replaced("Via", context.request.headers.get_all("Via"))
        upstream = response.with_headers(headers)
        if context.rewrite_response is None:
            return upstream
        try:
            return context.rewrite_response(upstream)
        except ProtocolError as exc:
            if response.status_code < 200:
                return None
            return make_response(context.request, 502, f"Bad Gateway ({exc.reason})")

    def _maybe_finish(self, context: _Context, now: float) -> None:
        """Item 6: with no branch pending, send the best response of the context."""
        if context.final_sent or context.holding or context.pending():
            return
        if context.failover is not None and self._fail_over(context, now):
            return
        if not context.responses:
            self._answer(context, 408, None, now=now)
            return
        best = select_best_response(context.responses)
        if best.status_code == 503 and not context.relay_503:
            # Item 6: a 503 would make the client think this proxy is unavailable. The 500
            # keeps what the 503 said failed ("No route to ..."), so the caller can act on it.
            reason = None
            if best.reason and best.reason != reason_phrase(503):
                reason = f"{reason_phrase(500)} ({best.reason[:100]})"  # bounded: 25.1
            self._answer(context, 500, reason, now=now)
            return
        if best.status_code in (401, 407):
            best = _aggregate_challenges(best, context.responses)  # item 7
        self._send_final(context, best, now)

    def _fail_over(self, context: _Context, now: float) -> bool:
        """RFC 3263 section 4.3: the last target did not answer (408, 503, no route): try the
        next; True while a branch is pending again or the final response was sent."""
        assert context.failover is not None
        decision, routed, loop_hash = context.failover
        while (
            context.responses
            and context.responses[-1].status_code in (408, 503)
            and not context.cancelled
        ):
            if not context.untried:
                if decision.exhausted is None:
                    return False
                self._send_final(context, self._with_to_tag(context, decision.exhausted), now)
                return True
            target = context.untried.pop(0)
            index = len(decision.targets) - len(context.untried) - 1
            self._fork(context, routed, target, decision, loop_hash, index, now)
            if context.pending():
                return True
        return False

    def _send_upstream(self, context: _Context, response: Response, now: float) -> None:
        if context.server_alive and self.layer.state(context.server_key) is not None:
            self.layer.send_response(context.server_key, response, now)

    def _send_final(self, context: _Context, response: Response, now: float) -> None:
        state = self.layer.state(context.server_key)
        sendable = state in (State.PROCEEDING, State.TRYING) or (
            state is State.ACCEPTED and 200 <= response.status_code < 300
        )
        if sendable:
            self.layer.send_response(context.server_key, response, now)
        elif 200 <= response.status_code < 300 and context.is_invite:
            # The server transaction is gone (Timer L): a late 2xx still reaches the UAC.
            self._forward_upstream_statelessly(response)
        if not context.final_sent:
            context.final_sent = True
            self._finished(context)

    def _finished(self, context: _Context) -> None:
        """The final response went up: keep only what the context still has to do.

        16.7 item 9 keeps a response context until its transactions end. For a non-INVITE
        request it has nothing left to do by then: later responses are not forwarded (item 5),
        its pending branches are not CANCELled (9.1: never a non-INVITE), retransmissions of
        the request are the server transaction's (17.2.2). A response of a branch no longer
        known gets exactly that, so the context is forgotten now rather than 64*T1 later. An
        INVITE context lives on: 2xx retransmissions and the late 2xx of other branches go up
        (item 5, RFC 6026 section 7.3) and pending branches are CANCELled (item 10); the
        responses gathered for item 6 and the requests of answered branches are let go."""
        if not context.is_invite:
            for branch in context.branches:
                if self._branches.get(branch.key) is branch:
                    del self._branches[branch.key]
                    branch.timer = None
            if self._contexts.get(context.server_key) is context:
                self._drop(context)
            return
        context.responses.clear()
        context.failover = None
        context.untried.clear()
        # Still read: its Vias (restored on the 2xx of a branch that hid them) and what a
        # response to it copies; its body and other fields are not.
        context.request = transaction_identity(context.request)
        for branch in context.branches:
            if branch.final:
                branch.request = None

    def _answer(
        self,
        context: _Context,
        status: int,
        reason: str | None,
        extra: Iterable[tuple[str, str]] = (),
        *,
        now: float,
    ) -> None:
        """A response generated by the proxy itself (acting as a UAS, 8.2.6)."""
        response = make_response(
            context.request, status, reason, to_tag=_to_tag(context), extra=extra
        )
        self._send_final(context, response, now)

    def _with_to_tag(self, context: _Context, response: Response) -> Response:
        to = response.headers.get("To")
        if response.status_code == 100 or to is None:
            return response
        name_addr = parse_name_addr(to, "To")
        if name_addr.tag is not None:
            return response
        tagged = str(name_addr.with_param("tag", _to_tag(context)))
        return response.with_headers(response.headers.replaced("To", [tagged]))

    def _forward_stray(self, response: Response) -> None:
        """RFC 6026 section 7.3 / RFC 3261 16.7: a 2xx to an INVITE that matches no client
        transaction is forwarded statelessly; any other stray response is dropped."""
        if not (200 <= response.status_code < 300 and response.cseq.method == "INVITE"):
            return
        if not self.config.is_our_via(response.top_via):
            return  # not sent through us: nothing to forward it to
        self._forward_upstream_statelessly(
            response.with_headers(response.headers.without_first("Via"))
        )

    def _forward_upstream_statelessly(self, response: Response) -> None:
        if response.headers.get("Via") is None:
            return  # the Via was ours alone: the response was meant for us
        self.layer.send_stateless(response, response_destination(response.top_via))

    # -- 16.8, 16.10: Timer C and CANCEL --

    def _on_cancel(self, event: CancelReceived, now: float) -> None:
        context = None if event.invite_key is None else self._contexts.get(event.invite_key)
        if context is None:
            # 16.10 would forward an unknown CANCEL statelessly, for a proxy that may have
            # forwarded the INVITE statelessly; this proxy never does, so 481 (9.2).
            response = make_response(event.request, 481, to_tag=None)
            self.layer.send_response(event.key, response, now)
            return
        ok = make_response(event.request, 200, to_tag=_to_tag(context))
        self.layer.send_response(event.key, ok, now)
        context.cancelled = True
        waiting = [t for t, entry in self._deferred.items() if entry[0] is context]
        if waiting and not context.final_sent:
            del self._deferred[waiting[0]]  # its late resume() finds nothing to do
            self._answer(context, 487, None, now=now)
            hook = self._on_cancel_hooks.pop(waiting[0], None)
            if hook is not None:
                hook()
            return
        if not context.final_sent:
            self._cancel_pending(context, now, event.request.headers.get("Reason"))

    def _cancel_pending(self, context: _Context, now: float, reason: str | None) -> None:
        for branch in context.pending():
            branch.give_up_status = 487
            branch.cancel_reason = reason
            if branch.provisional:
                self._send_cancel(branch, now)
            else:
                branch.cancel_pending = True  # 9.1: not before a provisional response

    def _send_cancel(self, branch: _Branch, now: float) -> None:
        branch.cancel_pending = False
        if branch.cancel_sent or branch.final or branch.request is None:
            return
        branch.cancel_sent = True
        cancel = make_cancel(branch.request, reason=branch.cancel_reason)
        # Its responses come back as ResponseReceived for a key that is no branch: ignored.
        with contextlib.suppress(LocalProtocolError):  # no room: the guard still ends it
            self.layer.send_request(cancel, branch.destination, now)
        # 9.1: without a final response 64*T1 after the CANCEL, give the branch up.
        self._arm(branch, now + 64 * self.layer.settings.t1)

    def _on_branch_timer(self, branch: _Branch, now: float) -> None:
        if branch.final:
            return
        if branch.provisional and not branch.cancel_sent:
            # 16.8: Timer C with a provisional response: CANCEL the branch.
            branch.give_up_status = 408
            self._send_cancel(branch, now)
            return
        # 16.8 without a provisional response, or 9.1 after an unanswered CANCEL.
        self._branch_failed(branch, branch.give_up_status, now)
        self.layer.abandon(branch.key)

    def _branch_failed(self, branch: _Branch, status: int, now: float) -> None:
        if branch.final:
            return
        branch.final = True
        branch.timer = None
        context = branch.context
        if not context.final_sent:
            context.responses.append(make_response(context.request, status))
        self._maybe_finish(context, now)

    def _arm(self, branch: _Branch, deadline: float) -> None:
        self._token += 1
        branch.timer = self._token
        heapq.heappush(self._heap, (deadline, self._token, branch.key))
        if len(self._heap) > 1024 and len(self._heap) > 4 * len(self._branches):
            # Drop entries of stopped timers so the heap stays bounded by live branches.
            self._heap = [
                e for e in self._heap if (b := self._branches.get(e[2])) and b.timer == e[1]
            ]
            heapq.heapify(self._heap)

    # -- 16.11: ACK for a 2xx --

    def _on_ack(self, ack: Request, source: Address) -> None:
        """An ACK for a 2xx is its own transaction end to end: forward it statelessly along
        its Route set (16.11), with a branch that is the same for its retransmissions. The
        router decides its target as for any request, so that routing policy (a fixed next
        hop, a registrar lookup) applies to the ACK as it did to the INVITE."""
        try:
            max_forwards = ack.header_int("Max-Forwards", 255)
            if max_forwards == 0 or self._is_loop(ack):
                return  # an ACK is never answered
            routed = self._process_route(ack)
            if self.config.is_local(routed.uri) and routed.headers.get("Route") is None:
                return  # the ACK is for us (a 2xx we generated)
            decision = self.router(routed, source)
        except ProtocolError:
            return
        if isinstance(decision, Response | Defer) or not decision.targets:
            return
        if decision.request is not None:
            routed = decision.request
        target = decision.targets[0]
        headers = routed.headers.replaced(
            "Max-Forwards",
            [str(DEFAULT_MAX_FORWARDS if max_forwards is None else max_forwards - 1)],
        )
        copy, next_hop_uri = _postprocess_routing(
            routed.with_uri(target.uri).with_headers(headers)
        )
        destination = target.next_hop or self.resolver(next_hop_uri)
        if destination is None:
            return
        top = ack.top_via
        branch = BRANCH_MAGIC_COOKIE + _digest(
            "ack", top.branch or "", top.host, str(top.port), ack.call_id, str(ack.cseq.number)
        )
        via = f"SIP/2.0/{destination.transport} {self.config.sent_by};branch={branch}"
        copy_headers = copy.headers.without("Via") if decision.hide_vias else copy.headers
        self.layer.send_stateless(
            copy.with_headers(copy_headers.prepended("Via", via)), destination
        )

    # -- bookkeeping --

    def _on_terminated(self, key: TransactionKey) -> None:
        branch = self._branches.pop(key, None)
        if branch is not None:
            branch.timer = None
            context = branch.context
            if not context.server_alive and not self._has_live_branch(context):
                self._drop(context)
            return
        server_context = self._contexts.get(key)
        if server_context is not None:
            server_context.server_alive = False
            if not self._has_live_branch(server_context):
                self._drop(server_context)

    def _drop(self, context: _Context) -> None:
        """Forget a finished response context. Its branches point back at it: unlinking them
        lets reference counting free both at once rather than the cycle collector, later."""
        self._contexts.pop(context.server_key, None)
        context.branches.clear()

    def _has_live_branch(self, context: _Context) -> bool:
        return any(b.key in self._branches for b in context.branches)


# --- helpers ----------------------------------------------------------------------------------


def _default_port(scheme: str) -> int:
    return 5061 if scheme == "sips" else 5060


def _same_host_port(a: SipUri, b: SipUri) -> bool:
    a_port = a.port if a.port is not None else _default_port(a.scheme)
    b_port = b.port if b.port is not None else _default_port(b.scheme)
    return a.host.lower().rstrip(".") == b.host.lower().rstrip(".") and a_port == b_port


def _postprocess_routing(request: Request) -> tuple[Request, Uri]:
    """16.6 items 6 and 7: if the next Route is a strict router (no `lr`), it becomes the
    Request-URI and the Request-URI goes last in Route; the next hop is the first Route value,
    else the Request-URI."""
    routes = request.headers.get_all("Route")
    if not routes:
        return request, request.uri
    first = request.name_addrs("Route")[0].uri
    if isinstance(first, SipUri) and first.param("lr") is not None:
        return request, first
    rewritten = [*routes[1:], f"<{request.uri}>"]
    return request.with_uri(first).with_headers(request.headers.replaced("Route", rewritten)), first


def _digest(*parts: str) -> str:
    """A short stable hash: branch parts must be tokens (25.1) and the same on every run."""
    data = "\x00".join(parts).encode("utf-8", "surrogateescape")
    return hashlib.sha256(data).hexdigest()[:20]


def _loop_hash(request: Request) -> str:
    """The part of our branch that detects loops (16.6 item 8, RFC 5393 section 4.2): the
    fields a request keeps when it comes back to us unchanged, as received."""
    h = request.headers
    from_tag = request.from_.tag or ""
    to_tag = request.to.tag or ""
    return _digest(
        str(request.uri),
        from_tag,
        to_tag,
        request.call_id,
        str(request.cseq.number),
        "|".join(h.get_all("Route")),
        "|".join(h.get_all("Proxy-Require")),
        "|".join(h.get_all("Proxy-Authorization")),
    )[:12]


def _branch_hash(context: _Context, target: Target, index: int) -> str:
    """The per-branch part: derived from the server transaction, so a retransmitted request
    maps to the same branch (16.6 item 8), and from the target."""
    key = context.server_key
    return _digest(key.branch, key.sent_by, key.method, *key.legacy, str(target.uri), str(index))[
        :16
    ]


def _to_tag(context: _Context) -> str:
    """The To tag of responses the proxy generates for this request (8.2.6.2): stable across
    the transaction's lifetime, unique per server transaction."""
    key = context.server_key
    return _digest("to-tag", key.branch, key.sent_by, key.method, *key.legacy)[:16]


def _aggregate_challenges(best: Response, responses: Sequence[Response]) -> Response:
    """16.7 item 7: the chosen 401/407 carries every WWW-/Proxy-Authenticate of every 401 and
    407 in the context, unchanged."""
    headers = best.headers.without(*_AUTH_CHALLENGES)
    for response in responses:
        if response.status_code in (401, 407):
            for name, value in response.headers:
                if name.lower() in ("www-authenticate", "proxy-authenticate"):
                    headers = headers.appended(name, value)
    return best.with_headers(headers)
