"""The stateful proxy core (RFC 3261 section 16) between in-memory UAs, with a fake clock.

The UAC, the UASes and the proxy each run a TransactionLayer; a small in-memory network hands
each SendMessage to the layer owning the destination Address, and the proxy gets its layer's TU
events. Time only moves when a test advances it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ims.sip.address import Address
from ims.sip.message import Headers, Message, Request, Response, make_response
from ims.sip.proxy import (
    Defer,
    Forward,
    ProxyConfig,
    ProxyCore,
    Router,
    Target,
    forward_to_request_uri,
    select_best_response,
)
from ims.sip.transaction import (
    AckReceived,
    CancelReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    TransactionKey,
    TransactionLayer,
    make_cancel,
)
from ims.sip.uri import SipUri, Uri, parse_uri

PROXY = Address("UDP", "127.0.0.1", 5060)
UAC = Address("UDP", "127.0.0.1", 5061)
UAS1 = Address("UDP", "127.0.0.1", 5062)
UAS2 = Address("UDP", "127.0.0.1", 5063)
PROXY_URI = SipUri(host="127.0.0.1", port=5060)
RR = "<sip:127.0.0.1:5060;lr>"


def resolve(uri: Uri) -> Address | None:
    if isinstance(uri, SipUri) and uri.host.startswith("127."):
        return Address("UDP", uri.host, uri.port or 5060)
    return None


def contact_of(address: Address, user: str) -> SipUri:
    return SipUri(host=address.host, port=address.port, user=user)


def directory_router(*uas: Address, record_route: bool = True) -> Router:
    """dave@beta.example rings every UAS given; in-dialog requests follow their Request-URI."""

    def route(request: Request, source: Address) -> Forward | Response:
        if request.to.tag is not None:
            return forward_to_request_uri(request)
        uri = request.uri
        if isinstance(uri, SipUri) and uri.host == "beta.example" and uri.user == "dave":
            targets = tuple(Target(contact_of(a, "dave")) for a in uas)
            return Forward(targets, record_route=record_route)
        return make_response(request, 404)

    return route


class Endpoint:
    def __init__(self, address: Address) -> None:
        self.address = address
        self.layer = TransactionLayer()
        self.inbox: list[Event] = []

    def take(self, kind: type) -> list[Event]:
        found = [e for e in self.inbox if isinstance(e, kind)]
        self.inbox = [e for e in self.inbox if not isinstance(e, kind)]
        return found

    def requests(self, method: str) -> list[RequestReceived]:
        out = [e for e in self.take(RequestReceived) if isinstance(e, RequestReceived)]
        assert all(e.request.method == method for e in out), out
        return out

    def responses(self) -> list[Response]:
        return [e.response for e in self.take(ResponseReceived) if isinstance(e, ResponseReceived)]


class World:
    """A proxy between a UAC and two UASes on an in-memory network."""

    def __init__(self, router: Router, **config: object) -> None:
        self.now = 0.0
        self.proxy_layer = TransactionLayer()
        proxy_config = ProxyConfig(PROXY_URI, **config)  # type: ignore[arg-type]
        self.proxy = ProxyCore(self.proxy_layer, proxy_config, router, resolve)
        self.uac = Endpoint(UAC)
        self.uas1 = Endpoint(UAS1)
        self.uas2 = Endpoint(UAS2)
        self.endpoints = {e.address: e for e in (self.uac, self.uas1, self.uas2)}
        self.wire: list[tuple[Address, Address, Message]] = []
        self.drop: Callable[[Address, Address, Message], bool] = lambda s, d, m: False

    def pump(self) -> None:
        for _ in range(10_000):
            progressed = False
            while (event := self.proxy_layer.next_event()) is not None:
                progressed = True
                if isinstance(event, SendMessage):
                    self._deliver(PROXY, event)
                else:
                    self.proxy.handle_event(event, self.now)
            for endpoint in self.endpoints.values():
                while (event := endpoint.layer.next_event()) is not None:
                    progressed = True
                    if isinstance(event, SendMessage):
                        self._deliver(endpoint.address, event)
                    else:
                        endpoint.inbox.append(event)
            if not progressed:
                return
        raise AssertionError("the network did not settle")

    def _deliver(self, sender: Address, event: SendMessage) -> None:
        destination, message = event.destination, event.message
        self.wire.append((sender, destination, message))
        if self.drop(sender, destination, message):
            return
        if destination == PROXY:
            self.proxy_layer.receive(message, sender, self.now)
        elif destination in self.endpoints:
            self.endpoints[destination].layer.receive(message, sender, self.now)

    def advance(self, until: float) -> None:
        for _ in range(10_000):
            layers = [self.proxy_layer, *(e.layer for e in self.endpoints.values())]
            deadlines = [d for d in (x.get_timer() for x in layers) if d is not None]
            proxy_deadline = self.proxy.get_timer()
            if proxy_deadline is not None:
                deadlines.append(proxy_deadline)
            if not deadlines or min(deadlines) > until:
                break
            self.now = min(deadlines)
            for layer in layers:
                layer.handle_timer(self.now)
            self.proxy.handle_timer(self.now)
            self.pump()
        self.now = until
        self.pump()

    def sent(
        self, sender: Address, destination: Address, method_or_code: str | int
    ) -> list[Message]:
        out: list[Message] = []
        for s, d, m in self.wire:
            if s != sender or d != destination:
                continue
            label = m.method if isinstance(m, Request) else m.status_code
            if label == method_or_code:
                out.append(m)
        return out

    # -- the UAC's side --

    def invite(self, max_forwards: str = "70") -> Request:
        invite = uac_request("INVITE", max_forwards=max_forwards)
        self.uac.layer.send_request(invite, PROXY, self.now)
        self.pump()
        return invite


def uac_request(
    method: str,
    *,
    branch: str = "z9hG4bKuac1",
    uri: str = "sip:dave@beta.example",
    to_tag: str | None = None,
    cseq: int = 1,
    max_forwards: str = "70",
    extra: tuple[tuple[str, str], ...] = (),
) -> Request:
    to = "<sip:dave@beta.example>" + (f";tag={to_tag}" if to_tag else "")
    return Request(
        method,
        parse_uri(uri),
        Headers.of(
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5061;branch={branch}"),
            ("Max-Forwards", max_forwards),
            ("From", "<sip:bill@alpha.example>;tag=bill1"),
            ("To", to),
            ("Call-ID", "call-1@alpha.example"),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", "<sip:bill@127.0.0.1:5061>"),
            *extra,
            ("Content-Length", "0"),
        ),
    )


def answer(
    endpoint: Endpoint, event: RequestReceived, status: int, tag: str, now: float
) -> Response:
    extra = [("Contact", f"<{contact_of(endpoint.address, 'dave')}>")] if status < 300 else []
    response = make_response(event.request, status, to_tag=tag, extra=extra)
    endpoint.layer.send_response(event.key, response, now)
    return response


def only_request(endpoint: Endpoint, method: str) -> RequestReceived:
    (event,) = endpoint.requests(method)
    return event


# --- 16.6, 16.7, 16.11: the basic call --------------------------------------------------------


def test_rfc3261_16_basic_invite_200_ack_bye_through_the_proxy() -> None:
    world = World(directory_router(UAS1))
    world.invite()
    # 17.2.1: the proxy quenches the UAC's retransmissions with 100 Trying.
    assert [r.status_code for r in world.uac.responses()] == [100]

    incoming = only_request(world.uas1, "INVITE")
    forwarded = incoming.request
    assert str(forwarded.uri) == "sip:dave@127.0.0.1:5062"  # 16.6 item 2
    assert forwarded.headers.get("Max-Forwards") == "69"  # 16.6 item 3
    assert forwarded.headers.get_all("Record-Route") == [RR]  # 16.6 item 4, with lr
    vias = forwarded.vias
    assert len(vias) == 2 and vias[0].host == "127.0.0.1" and vias[0].port == 5060  # item 8
    assert (vias[0].branch or "").startswith("z9hG4bK")
    assert vias[1].branch == "z9hG4bKuac1"

    answer(world.uas1, incoming, 180, "dave1", world.now)
    ok = answer(world.uas1, incoming, 200, "dave1", world.now)
    world.pump()
    ringing, final = world.uac.responses()
    assert ringing.status_code == 180
    assert final.status_code == 200
    # 16.7 item 3: our Via is gone; the UAC sees exactly the Via it sent.
    assert final.headers.get_all("Via") == ["SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKuac1"]
    assert final.headers.get_all("Record-Route") == [RR]
    assert final.headers.get("To") == ok.headers.get("To")

    # 16.11: the ACK for the 2xx follows the route set, statelessly.
    ack = Request(
        "ACK",
        contact_of(UAS1, "dave"),
        Headers.of(
            ("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKack1"),
            ("Route", RR),
            ("Max-Forwards", "70"),
            ("From", "<sip:bill@alpha.example>;tag=bill1"),
            ("To", "<sip:dave@beta.example>;tag=dave1"),
            ("Call-ID", "call-1@alpha.example"),
            ("CSeq", "1 ACK"),
            ("Content-Length", "0"),
        ),
    )
    world.uac.layer.send_stateless(ack, PROXY)
    world.pump()
    (acked,) = world.uas1.take(AckReceived)
    assert isinstance(acked, AckReceived)
    assert acked.request.headers.get("Route") is None  # 16.4: our Route entry removed
    assert acked.request.headers.get("Max-Forwards") == "69"
    assert acked.request.vias[0].port == 5060 and len(acked.request.vias) == 2
    # A retransmitted ACK gets the same branch (stateless forwarding, 16.11).
    world.uac.layer.send_stateless(ack, PROXY)
    world.pump()
    (again,) = world.uas1.take(AckReceived)
    assert isinstance(again, AckReceived)
    assert again.request.vias[0].branch == acked.request.vias[0].branch

    bye = uac_request(
        "BYE",
        branch="z9hG4bKbye1",
        uri=str(contact_of(UAS1, "dave")),
        to_tag="dave1",
        cseq=2,
        extra=(("Route", RR),),
    )
    world.uac.layer.send_request(bye, PROXY, world.now)
    world.pump()
    bye_in = only_request(world.uas1, "BYE")
    assert bye_in.request.headers.get("Route") is None
    answer(world.uas1, bye_in, 200, "dave1", world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()] == [200]

    # Every transaction and response context ends; nothing is left behind.
    world.advance(200.0)
    assert len(world.proxy) == 0 and len(world.proxy_layer) == 0
    assert world.proxy.get_timer() is None


def test_rfc3261_16_7_non_2xx_best_response_forwarded_and_acked_hop_by_hop() -> None:
    world = World(directory_router(UAS1))
    world.invite()
    incoming = only_request(world.uas1, "INVITE")
    answer(world.uas1, incoming, 486, "dave1", world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()] == [100, 486]
    # 17.1.1.3: the proxy's client transaction ACKs the 486 itself; the UAC's ACK stops at the
    # proxy's server transaction.
    (ack_down,) = world.sent(PROXY, UAS1, "ACK")
    assert ack_down.top_via.branch == incoming.request.top_via.branch
    assert world.sent(UAC, PROXY, "ACK") and not world.uas1.take(AckReceived)


def test_rfc3261_16_7_item_5_forking_provisionals_and_2xx_forwarded_at_once() -> None:
    world = World(directory_router(UAS1, UAS2))
    world.invite()
    first = only_request(world.uas1, "INVITE")
    second = only_request(world.uas2, "INVITE")
    assert first.request.top_via.branch != second.request.top_via.branch
    assert first.request.top_via.branch and second.request.top_via.branch
    for endpoint, event, status, tag in (
        (world.uas1, first, 180, "d1"),
        (world.uas2, second, 180, "d2"),
        (world.uas1, first, 200, "d1"),
    ):
        answer(endpoint, event, status, tag, world.now)
        world.pump()
    responses = world.uac.responses()
    assert [(r.status_code, r.to.tag) for r in responses] == [
        (100, None),
        (180, "d1"),
        (180, "d2"),
        (200, "d1"),
    ]
    # A provisional after the final is not forwarded (16.7 item 5: "until a final response").
    answer(world.uas2, second, 183, "d2", world.now)
    world.pump()
    assert world.uac.responses() == []


def test_rfc3261_16_7_item_10_forking_cancel_reaches_the_other_branch() -> None:
    world = World(directory_router(UAS1, UAS2))
    world.invite()
    first = only_request(world.uas1, "INVITE")
    second = only_request(world.uas2, "INVITE")
    answer(world.uas2, second, 180, "d2", world.now)
    world.pump()
    answer(world.uas1, first, 200, "d1", world.now)
    world.pump()
    (cancel,) = world.uas2.take(CancelReceived)
    assert isinstance(cancel, CancelReceived) and cancel.invite_key == second.key
    assert cancel.request.headers.get("Reason") == 'SIP;cause=200;text="Call completed elsewhere"'
    assert cancel.request.top_via.branch == second.request.top_via.branch
    world.uas2.layer.send_response(cancel.key, make_response(cancel.request, 200), world.now)
    answer(world.uas2, second, 487, "d2", world.now)
    world.pump()
    # The 487 is absorbed by the proxy (a final was sent); the UAC saw one final, the 200.
    statuses = [r.status_code for r in world.uac.responses()]
    assert statuses == [100, 180, 200]
    assert world.sent(PROXY, UAS2, "ACK")  # the 487 is ACKed hop by hop


def test_rfc3261_16_7_multiple_2xx_all_forwarded() -> None:
    world = World(directory_router(UAS1, UAS2))
    world.invite()
    first = only_request(world.uas1, "INVITE")
    second = only_request(world.uas2, "INVITE")
    answer(world.uas1, first, 200, "d1", world.now)
    answer(world.uas2, second, 200, "d2", world.now)
    world.pump()
    finals = [r for r in world.uac.responses() if r.status_code == 200]
    assert [r.to.tag for r in finals] == ["d1", "d2"]


def test_rfc3261_16_7_item_5_6xx_cancels_pending_and_wins() -> None:
    world = World(directory_router(UAS1, UAS2))
    world.invite()
    first = only_request(world.uas1, "INVITE")
    second = only_request(world.uas2, "INVITE")
    answer(world.uas2, second, 180, "d2", world.now)
    answer(world.uas1, first, 603, "d1", world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()] == [100, 180]  # 6xx held
    (cancel,) = world.uas2.take(CancelReceived)
    assert isinstance(cancel, CancelReceived)
    world.uas2.layer.send_response(cancel.key, make_response(cancel.request, 200), world.now)
    answer(world.uas2, second, 487, "d2", world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()] == [603]


# --- 16.10: CANCEL --------------------------------------------------------------------------


def test_rfc3261_16_10_cancel_from_uac_answered_200_and_forwarded() -> None:
    world = World(directory_router(UAS1))
    invite = world.invite()
    incoming = only_request(world.uas1, "INVITE")
    answer(world.uas1, incoming, 180, "d1", world.now)
    world.pump()
    world.uac.responses()
    world.uac.layer.send_request(make_cancel(invite), PROXY, world.now)
    world.pump()
    # 16.10: the proxy answers the CANCEL itself, at once.
    (cancel_ok,) = world.uac.responses()
    assert cancel_ok.status_code == 200 and cancel_ok.cseq.method == "CANCEL"
    (cancel,) = world.uas1.take(CancelReceived)
    assert isinstance(cancel, CancelReceived) and cancel.invite_key == incoming.key
    world.uas1.layer.send_response(cancel.key, make_response(cancel.request, 200), world.now)
    answer(world.uas1, incoming, 487, "d1", world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()] == [487]


def test_rfc3261_9_1_cancel_waits_for_a_provisional_response_on_the_branch() -> None:
    world = World(directory_router(UAS1))
    invite = world.invite()
    incoming = only_request(world.uas1, "INVITE")
    world.uac.layer.send_request(make_cancel(invite), PROXY, world.now)
    world.pump()
    assert not world.uas1.take(CancelReceived)  # no provisional on the branch yet
    answer(world.uas1, incoming, 180, "d1", world.now)
    world.pump()
    (cancel,) = world.uas1.take(CancelReceived)
    assert isinstance(cancel, CancelReceived)


def test_rfc3261_9_2_unmatched_cancel_gets_481() -> None:
    world = World(directory_router(UAS1))
    world.uac.layer.send_request(make_cancel(uac_request("INVITE")), PROXY, world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()] == [481]


# --- 16.3: validation -------------------------------------------------------------------------


def test_rfc3261_16_3_item_3_max_forwards_zero_gets_483() -> None:
    world = World(directory_router(UAS1))
    world.invite(max_forwards="0")
    assert [r.status_code for r in world.uac.responses()] == [100, 483]
    assert not world.uas1.inbox


def test_rfc3261_16_3_item_2_unknown_uri_scheme_gets_416() -> None:
    world = World(directory_router(UAS1))
    world.uac.layer.send_request(
        uac_request("MESSAGE", uri="im:dave@beta.example"), PROXY, world.now
    )
    world.pump()
    (response,) = world.uac.responses()
    assert response.status_code == 416 and response.to.tag  # generated as a UAS: tagged


def test_rfc3261_16_3_item_5_proxy_require_unknown_gets_420_with_unsupported() -> None:
    world = World(directory_router(UAS1), supported=frozenset({"sec-agree"}))
    req = uac_request("MESSAGE", extra=(("Proxy-Require", "sec-agree, foo"),))
    world.uac.layer.send_request(req, PROXY, world.now)
    world.pump()
    (response,) = world.uac.responses()
    assert response.status_code == 420 and response.headers.get("Unsupported") == "foo"


def test_rfc3261_16_3_item_4_loop_detected_482() -> None:
    # The router sends the request back to the proxy itself, unchanged: a loop.
    def route(request: Request, source: Address) -> Forward | Response:
        return Forward((Target(request.uri, next_hop=PROXY),))

    world = World(route)
    world.uac.layer.send_request(uac_request("MESSAGE"), PROXY, world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()] == [482]
    assert len(world.sent(PROXY, PROXY, "MESSAGE")) == 1  # forwarded once, then caught


def test_rfc5393_spiral_is_not_a_loop() -> None:
    # First pass retargets to another URI at the proxy itself (a spiral), second pass to UAS1.
    def route(request: Request, source: Address) -> Forward | Response:
        if isinstance(request.uri, SipUri) and request.uri.user == "dave":
            return Forward((Target(SipUri(host="beta.example", user="dave2"), next_hop=PROXY),))
        return Forward((Target(contact_of(UAS1, "dave")),))

    world = World(route)
    world.uac.layer.send_request(uac_request("MESSAGE"), PROXY, world.now)
    world.pump()
    incoming = only_request(world.uas1, "MESSAGE")
    assert len(incoming.request.vias) == 3
    answer(world.uas1, incoming, 200, "d1", world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()] == [200]


# --- 16.4 / 16.6: routing ---------------------------------------------------------------------


def test_rfc3261_16_4_strict_route_fixup_restores_request_uri() -> None:
    # A strict router upstream put our Record-Route URI in the Request-URI and the real
    # Request-URI last in Route.
    world = World(directory_router(UAS1))
    req = uac_request(
        "BYE",
        uri="sip:127.0.0.1:5060;lr",
        to_tag="dave1",
        extra=(("Route", f"<{contact_of(UAS1, 'dave')}>"),),
    )
    world.uac.layer.send_request(req, PROXY, world.now)
    world.pump()
    incoming = only_request(world.uas1, "BYE")
    assert str(incoming.request.uri) == "sip:dave@127.0.0.1:5062"
    assert incoming.request.headers.get("Route") is None


def test_rfc3261_16_6_item_6_next_hop_strict_router_gets_request_uri_rewritten() -> None:
    # The next Route entry has no lr: it becomes the Request-URI, the target goes last.
    world = World(lambda request, source: forward_to_request_uri(request))
    req = uac_request(
        "MESSAGE",
        extra=(("Route", RR), ("Route", "<sip:127.0.0.1:5062>"), ("Route", "<sip:x@127.0.0.1>")),
    )
    world.uac.layer.send_request(req, PROXY, world.now)
    world.pump()
    incoming = only_request(world.uas1, "MESSAGE")
    assert str(incoming.request.uri) == "sip:127.0.0.1:5062"
    assert incoming.request.headers.get_all("Route") == [
        "<sip:x@127.0.0.1>",
        "<sip:dave@beta.example>",
    ]


def test_rfc3261_16_5_router_answers_itself_with_a_tagged_final_response() -> None:
    world = World(directory_router(UAS1))
    world.uac.layer.send_request(
        uac_request("MESSAGE", uri="sip:nobody@beta.example"), PROXY, world.now
    )
    world.pump()
    (response,) = world.uac.responses()
    assert response.status_code == 404 and response.to.tag


def test_unresolvable_target_gives_500_not_503() -> None:
    def route(request: Request, source: Address) -> Forward | Response:
        return Forward((Target(SipUri(host="unknown.example", user="dave")),))

    world = World(route)
    world.uac.layer.send_request(uac_request("MESSAGE"), PROXY, world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()] == [500]


# --- 16.7: best response ----------------------------------------------------------------------


def test_rfc3261_16_7_item_7_401_407_challenges_aggregated() -> None:
    world = World(directory_router(UAS1, UAS2))
    world.uac.layer.send_request(uac_request("MESSAGE"), PROXY, world.now)
    world.pump()
    for endpoint, realm, code, header in (
        (world.uas1, "one", 407, "Proxy-Authenticate"),
        (world.uas2, "two", 401, "WWW-Authenticate"),
    ):
        event = only_request(endpoint, "MESSAGE")
        response = make_response(
            event.request, code, to_tag=realm, extra=[(header, f'Digest realm="{realm}"')]
        )
        endpoint.layer.send_response(event.key, response, world.now)
    world.pump()
    (best,) = world.uac.responses()
    assert best.status_code == 401  # 16.7 item 6 prefers either; both challenges ride on it
    assert best.headers.get_all("Proxy-Authenticate") == ['Digest realm="one"']
    assert best.headers.get_all("WWW-Authenticate") == ['Digest realm="two"']


def test_rfc3261_16_7_item_6_503_becomes_500() -> None:
    world = World(directory_router(UAS1))
    world.uac.layer.send_request(uac_request("MESSAGE"), PROXY, world.now)
    world.pump()
    answer(world.uas1, only_request(world.uas1, "MESSAGE"), 503, "d1", world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()] == [500]


@pytest.mark.parametrize(
    ("codes", "chosen"),
    [
        ((486, 603, 200), 603),  # a 6xx wins over everything
        ((500, 486, 302), 302),  # else the lowest class
        ((404, 486, 407), 407),  # 4xx: the ones helping a resubmission first
        ((404, 484), 484),
        ((503, 500), 503),
    ],
)
def test_rfc3261_16_7_item_6_select_best_response(codes: tuple[int, ...], chosen: int) -> None:
    request = uac_request("INVITE")
    responses = [make_response(request, c, to_tag=str(c)) for c in codes]
    assert select_best_response(responses).status_code == chosen


def test_rfc3261_16_7_branch_timeout_counts_as_408() -> None:
    world = World(directory_router(UAS1))
    world.drop = lambda s, d, m: d == UAS1  # the UAS is unreachable
    world.invite()  # the proxy's 100 stops the UAC's own Timer B
    world.advance(31.9)
    assert [r.status_code for r in world.uac.responses()] == [100]
    world.advance(32.0)  # the proxy's Timer B for the branch
    assert [r.status_code for r in world.uac.responses()] == [408]


def test_rfc3326_cancel_reason_kept_when_the_provisional_comes_after_the_2xx() -> None:
    world = World(directory_router(UAS1, UAS2))
    world.invite()
    first = only_request(world.uas1, "INVITE")
    second = only_request(world.uas2, "INVITE")
    answer(world.uas1, first, 200, "d1", world.now)
    world.pump()
    assert not world.uas2.take(CancelReceived)  # 9.1: no CANCEL before a provisional
    answer(world.uas2, second, 180, "d2", world.now)
    world.pump()
    (cancel,) = world.uas2.take(CancelReceived)
    assert isinstance(cancel, CancelReceived)
    assert cancel.request.headers.get("Reason") == 'SIP;cause=200;text="Call completed elsewhere"'


# --- 16.8: Timer C ----------------------------------------------------------------------------


def test_rfc3261_16_8_timer_c_cancels_a_ringing_branch() -> None:
    world = World(directory_router(UAS1))
    world.invite()
    incoming = only_request(world.uas1, "INVITE")
    answer(world.uas1, incoming, 180, "d1", world.now)
    world.pump()
    world.advance(100.0)
    answer(world.uas1, incoming, 180, "d1", world.now)  # 16.7 item 2: resets Timer C
    world.pump()
    world.advance(284.0)
    assert not world.uas1.take(CancelReceived)
    world.advance(285.0)  # 100 + 185 s
    (cancel,) = world.uas1.take(CancelReceived)
    assert isinstance(cancel, CancelReceived)
    world.uas1.layer.send_response(cancel.key, make_response(cancel.request, 200), world.now)
    answer(world.uas1, incoming, 487, "d1", world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()][-1] == 487


def test_rfc3261_9_1_unanswered_cancel_gives_the_branch_up_with_408() -> None:
    world = World(directory_router(UAS1))
    world.invite()
    incoming = only_request(world.uas1, "INVITE")
    answer(world.uas1, incoming, 180, "d1", world.now)
    world.pump()
    world.drop = lambda s, d, m: d == UAS1 and isinstance(m, Request) and m.method == "CANCEL"
    world.advance(185.0)  # Timer C: CANCEL sent (and lost)
    assert world.sent(PROXY, UAS1, "CANCEL")
    world.advance(185.0 + 32.0)  # 64*T1 after the CANCEL: the branch is given up
    assert [r.status_code for r in world.uac.responses()][-1] == 408
    world.advance(400.0)
    assert len(world.proxy) == 0


def test_proxy_config_rejects_timer_c_of_three_minutes_or_less() -> None:
    with pytest.raises(ValueError, match="Timer C"):
        ProxyConfig(PROXY_URI, timer_c=180.0)


# --- stray responses (RFC 6026 section 7.3) ---------------------------------------------------


def test_rfc6026_stray_2xx_to_invite_forwarded_statelessly_other_strays_dropped() -> None:
    world = World(directory_router(UAS1))
    request = uac_request("INVITE").with_headers(
        uac_request("INVITE").headers.prepended(
            "Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKgone"
        )
    )
    ok = make_response(request, 200, to_tag="d1")
    world.proxy_layer.receive(ok, UAS1, world.now)
    world.proxy_layer.receive(make_response(request, 486, to_tag="d1"), UAS1, world.now)
    world.pump()
    (forwarded,) = [m for s, d, m in world.wire if s == PROXY and d == UAC]
    assert isinstance(forwarded, Response) and forwarded.status_code == 200
    assert forwarded.headers.get_all("Via") == ["SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKuac1"]


def test_non_invite_fork_first_2xx_wins() -> None:
    world = World(directory_router(UAS1, UAS2))
    world.uac.layer.send_request(uac_request("MESSAGE"), PROXY, world.now)
    world.pump()
    answer(world.uas1, only_request(world.uas1, "MESSAGE"), 200, "d1", world.now)
    answer(world.uas2, only_request(world.uas2, "MESSAGE"), 200, "d2", world.now)
    world.pump()
    assert [r.to.tag for r in world.uac.responses()] == ["d1"]


def test_transaction_key_of_branch_is_client_side() -> None:
    world = World(directory_router(UAS1))
    world.invite()
    keys = [k for k in world.proxy._branches]
    assert keys and all(isinstance(k, TransactionKey) and not k.is_server for k in keys)


def test_rfc3261_16_10_cancel_of_a_deferred_request_tells_the_role_once() -> None:
    """A CANCEL while the role's routing step runs (Defer): the core answers the CANCEL 200 and
    the INVITE 487 (16.10) and calls Defer.on_cancel once, so the role stops its step; a late
    resume() finds nothing to do and forwards nothing."""
    cancelled: list[str] = []

    def deferring(request: Request, source: Address) -> Defer:
        return Defer("lookup", on_cancel=lambda: cancelled.append("lookup"))

    world = World(deferring)
    invite = world.invite()
    assert cancelled == []
    world.uac.layer.send_request(make_cancel(invite), PROXY, world.now)
    world.pump()
    statuses = sorted((r.cseq.method, r.status_code) for r in world.uac.responses())
    assert ("CANCEL", 200) in statuses and ("INVITE", 487) in statuses
    assert cancelled == ["lookup"]
    route = Forward((Target(contact_of(UAS1, "dave")),))
    assert world.proxy.resume("lookup", route, world.now) is False
    world.pump()
    assert world.uas1.take(RequestReceived) == [] and cancelled == ["lookup"]


def test_a_deferred_request_resumed_normally_never_calls_on_cancel() -> None:
    cancelled: list[str] = []

    def deferring(request: Request, source: Address) -> Defer:
        return Defer("lookup", on_cancel=lambda: cancelled.append("lookup"))

    world = World(deferring)
    world.invite()
    route = Forward((Target(contact_of(UAS1, "dave")),))
    assert world.proxy.resume("lookup", route, world.now) is True
    world.pump()
    assert len(world.uas1.requests("INVITE")) == 1
    assert cancelled == []
