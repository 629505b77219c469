"""The proxy core holding a response while the role finishes its rewrite asynchronously
(ims.sip.proxy.Hold, ProxyCore.release_response): the S-CSCF holds a 2xx while the
connectivity gateway asks the CGN for a mapping. In-memory UAs and a fake clock, as in
tests/test_sip_proxy.py."""

from __future__ import annotations

import pytest

from ims.sip.errors import LocalProtocolError
from ims.sip.message import Request, Response, make_response
from ims.sip.proxy import Forward, Hold, Target
from ims.sip.transaction import CancelReceived, RequestReceived, make_cancel
from tests.test_sip_proxy import (
    PROXY,
    UAS1,
    UAS2,
    World,
    answer,
    contact_of,
    only_request,
)


class Holding:
    """A router whose rewrite holds every final response (or only 2xx) and counts calls;
    after `cached` is set it rewrites at once, as a gateway does for retransmissions."""

    def __init__(self, *uas: object, finals: bool = False) -> None:
        self.uas = uas
        self.finals = finals
        self.calls: list[int] = []
        self.tokens = 0
        self.cached: str | None = None

    def __call__(self, request: Request, source: object) -> Forward | Response:
        if request.to.tag is not None:
            return Forward((Target(request.uri),))
        targets = tuple(Target(contact_of(a, "dave")) for a in self.uas)  # type: ignore[arg-type]
        return Forward(targets, record_route=True, rewrite_response=self.rewrite)

    def rewrite(self, response: Response) -> Response | Hold:
        self.calls.append(response.status_code)
        held = response.status_code >= 200 if self.finals else 200 <= response.status_code < 300
        if not held:
            return response
        if self.cached is not None:
            return _tagged(response, self.cached)
        self.tokens += 1
        return Hold(("t", self.tokens))


def _tagged(response: Response, value: str) -> Response:
    return response.with_headers(response.headers.appended("X-Rewritten", value))


def _finals(world: World) -> list[Response]:
    return [r for r in world.uac.responses() if r.status_code >= 200]


def _held_2xx(world: World) -> tuple[RequestReceived, Response]:
    world.invite()
    incoming = only_request(world.uas1, "INVITE")
    answer(world.uas1, incoming, 180, "d1", world.now)
    ok = answer(world.uas1, incoming, 200, "d1", world.now)
    world.pump()
    return incoming, ok


def test_rfc3261_16_7_item_5_held_2xx_goes_up_when_released_and_retransmissions_are_absorbed(
) -> None:
    router = Holding(UAS1)
    world = World(router)
    incoming, ok = _held_2xx(world)
    assert [r.status_code for r in world.uac.responses()] == [100, 180]  # the 2xx waits
    assert world.proxy.held == 1
    # RFC 3261 13.3.1.4: the UAS retransmits its 2xx until the ACK; held, each is absorbed
    # without asking the role again.
    for _ in range(2):
        world.uas1.layer.send_response(incoming.key, ok, world.now)
        world.pump()
    assert router.calls == [180, 200]
    assert world.uac.responses() == []

    upstream = Response(ok.status_code, ok.reason, ok.headers.without_first("Via"), ok.body)
    assert world.proxy.release_response(("t", 1), _tagged(upstream, "once"), world.now)
    world.pump()
    (final,) = _finals(world)
    assert final.status_code == 200 and final.headers.get("X-Rewritten") == "once"
    assert final.headers.get_all("Via") == ["SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKuac1"]
    assert world.proxy.held == 0
    assert not world.proxy.release_response(("t", 1), upstream, world.now)  # released once

    # After the release a retransmission goes through the rewrite again, which answers from
    # what it completed (no second hold).
    router.cached = "cached"
    world.uas1.layer.send_response(incoming.key, ok, world.now)
    world.pump()
    (again,) = _finals(world)
    assert again.headers.get("X-Rewritten") == "cached"


def test_rfc3261_16_8_timer_c_does_not_cancel_a_branch_whose_2xx_is_held() -> None:
    world = World(Holding(UAS1))
    _held_2xx(world)
    world.advance(400.0)  # well past Timer C (185 s)
    assert not world.uas1.take(CancelReceived)
    assert not world.sent(PROXY, UAS1, "CANCEL")


def test_rfc3261_16_7_item_6_no_best_response_while_a_2xx_is_held() -> None:
    router = Holding(UAS1, UAS2)
    world = World(router)
    world.invite()
    first = only_request(world.uas1, "INVITE")
    second = only_request(world.uas2, "INVITE")
    answer(world.uas1, first, 200, "d1", world.now)
    world.pump()
    answer(world.uas2, second, 486, "d2", world.now)  # the other branch fails meanwhile
    world.pump()
    assert _finals(world) == []  # no 486 chosen as best: a 2xx is on its way
    ok = [m for s, d, m in world.wire if s == UAS1 and isinstance(m, Response)][-1]
    upstream = Response(ok.status_code, ok.reason, ok.headers.without_first("Via"), ok.body)
    world.proxy.release_response(("t", 1), upstream, world.now)
    world.pump()
    assert [(r.status_code, r.to.tag) for r in _finals(world)] == [(200, "d1")]


def test_held_final_non_2xx_takes_part_in_best_response_selection_once_released() -> None:
    router = Holding(UAS1, UAS2, finals=True)
    world = World(router)
    world.invite()
    first = only_request(world.uas1, "INVITE")
    second = only_request(world.uas2, "INVITE")
    answer(world.uas1, first, 486, "d1", world.now)
    answer(world.uas2, second, 404, "d2", world.now)
    world.pump()
    assert world.proxy.held == 2 and _finals(world) == []
    busy = make_response(first.request, 486, to_tag="d1")
    missing = make_response(second.request, 404, to_tag="d2")
    world.proxy.release_response(("t", 2), missing, world.now)
    world.pump()
    assert _finals(world) == []  # the other one is still held
    world.proxy.release_response(("t", 1), busy, world.now)
    world.pump()
    assert [r.status_code for r in _finals(world)] == [404]  # 16.7 item 6: lowest class


def test_cancel_while_a_2xx_is_held_still_lets_the_2xx_through() -> None:
    router = Holding(UAS1)
    world = World(router)
    _, ok = _held_2xx(world)
    invite = next(m for _, _, m in world.wire if isinstance(m, Request) and m.method == "INVITE")
    world.uac.layer.send_request(make_cancel(invite), PROXY, world.now)
    world.pump()
    assert not world.sent(PROXY, UAS1, "CANCEL")  # the branch has its final response
    upstream = Response(ok.status_code, ok.reason, ok.headers.without_first("Via"), ok.body)
    world.proxy.release_response(("t", 1), upstream, world.now)
    world.pump()
    assert [r.status_code for r in _finals(world)][-1] == 200


def test_a_hold_token_in_use_is_api_misuse() -> None:
    class Twice(Holding):
        def rewrite(self, response: Response) -> Response | Hold:
            return Hold("same") if response.status_code >= 200 else response

    world = World(Twice(UAS1, UAS2))
    world.invite()
    first = only_request(world.uas1, "INVITE")
    second = only_request(world.uas2, "INVITE")
    answer(world.uas1, first, 200, "d1", world.now)
    world.pump()
    answer(world.uas2, second, 200, "d2", world.now)
    with pytest.raises(LocalProtocolError, match="in use"):
        world.pump()


def test_without_holds_nothing_is_held() -> None:
    world = World(Holding(UAS1, finals=False))
    world.invite()
    incoming = only_request(world.uas1, "INVITE")
    answer(world.uas1, incoming, 486, "d1", world.now)
    world.pump()
    assert world.proxy.held == 0
    assert [r.status_code for r in _finals(world)] == [486]
