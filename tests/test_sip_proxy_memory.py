"""What a response context keeps once its final response went up (RFC 3261 16.7, RFC 6026).

A non-INVITE context has nothing left to do then: it is forgotten at once, not 64*T1 later
when its transactions end. An INVITE context keeps what the 2xx retransmissions, the late 2xx
of other branches and the CANCEL of pending branches need.
"""

from __future__ import annotations

import gc
import tracemalloc

from ims.sip.address import Address
from ims.sip.message import Request, Response, make_response, parse_message, serialize
from ims.sip.proxy import Defer, Forward, ProxyConfig, ProxyCore, Target
from ims.sip.transaction import CancelReceived, SendMessage, State, TransactionLayer, server_key
from tests.test_sip_proxy import (
    PROXY,
    PROXY_URI,
    UAC,
    UAS1,
    UAS2,
    World,
    answer,
    directory_router,
    only_request,
    uac_request,
)


def test_rfc3261_17_2_2_non_invite_context_forgotten_once_answered() -> None:
    world = World(directory_router(UAS1))
    message = uac_request("MESSAGE")
    world.uac.layer.send_request(message, PROXY, world.now)
    world.pump()
    answer(world.uas1, only_request(world.uas1, "MESSAGE"), 200, "d1", world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()] == [200]
    # The server transaction still waits out Timer J (17.2.2); the context is gone already.
    assert world.proxy_layer.state(server_key(message)) is State.COMPLETED
    assert len(world.proxy) == 0
    # A retransmitted request is answered by the server transaction, not forwarded again.
    world.now = 1.0
    world.proxy_layer.receive(message, world.uac.address, world.now)
    world.pump()
    assert len(world.sent(PROXY, UAC, 200)) == 2  # (the UAC's Completed absorbs it)
    assert len(world.sent(PROXY, UAS1, "MESSAGE")) == 1
    world.advance(100.0)
    assert len(world.proxy_layer) == 0 and world.proxy.get_timer() is None


def test_rfc3261_16_7_item_5_non_invite_late_branches_dropped_once_forgotten() -> None:
    world = World(directory_router(UAS1, UAS2))
    world.uac.layer.send_request(uac_request("MESSAGE"), PROXY, world.now)
    world.pump()
    second = only_request(world.uas2, "MESSAGE")
    answer(world.uas1, only_request(world.uas1, "MESSAGE"), 200, "d1", world.now)
    world.pump()
    assert len(world.proxy) == 0
    answer(world.uas2, second, 404, "d2", world.now)  # the other branch answers late
    world.pump()
    world.advance(100.0)  # and any branch left would time out meanwhile
    assert [r.to.tag for r in world.uac.responses()] == ["d1"]
    assert len(world.proxy_layer) == 0


def test_rfc6026_invite_context_after_2xx_still_forwards_2xx_and_cancels() -> None:
    world = World(directory_router(UAS1, UAS2))
    world.invite()
    first = only_request(world.uas1, "INVITE")
    second = only_request(world.uas2, "INVITE")
    ok = answer(world.uas1, first, 200, "d1", world.now)
    world.pump()
    assert [r.status_code for r in world.uac.responses()] == [100, 200]
    assert len(world.proxy) == 1  # the INVITE context lives on (RFC 6026 section 7.1)
    # 13.3.1.4: the UAS retransmits its 2xx until the ACK; each goes up (16.7 item 5).
    world.uas1.layer.send_response(first.key, ok, world.now)
    world.pump()
    assert [r.to.tag for r in world.uac.responses()] == ["d1"]
    # 9.1: the pending branch is CANCELled once it has a provisional response.
    answer(world.uas2, second, 180, "d2", world.now)
    world.pump()
    (cancel,) = world.uas2.take(CancelReceived)
    assert isinstance(cancel, CancelReceived)
    # A 2xx from the other branch, racing the CANCEL, goes up too (16.7 item 5).
    answer(world.uas2, second, 200, "d2", world.now)
    world.pump()
    assert [r.to.tag for r in world.uac.responses() if r.status_code == 200] == ["d2"]
    world.advance(400.0)
    assert len(world.proxy) == 0 and len(world.proxy_layer) == 0


def test_rfc3261_16_7_proxied_registrations_hold_little_memory() -> None:
    """A P-CSCF's case: 200 REGISTERs relayed and answered 200; the proxy's layer and core
    keep only the server transactions waiting out Timer J (and the client ones Timer K)."""
    next_hop = Address("UDP", "127.0.0.1", 5070)
    source = Address("UDP", "127.0.0.1", 5061)

    def route(request: Request, source: Address) -> Forward | Response | Defer:
        return Forward((Target(request.uri, next_hop),))

    registers: list[bytes] = []
    for i in range(200):
        request = uac_request("REGISTER", branch=f"z9hG4bKreg{i}", uri="sip:beta.example")
        raw = serialize(request.with_headers(request.headers.replaced("Call-ID", [f"r{i}"])))
        registers.append(raw)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        layer = TransactionLayer()
        core = ProxyCore(layer, ProxyConfig(PROXY_URI), route, lambda uri: next_hop)
        for raw in registers:
            layer.receive(parse_message(raw), source, 0.0)
            forwarded: list[Request | Response] = []
            while (event := layer.next_event()) is not None:
                if isinstance(event, SendMessage):
                    forwarded.append(event.message)
                else:
                    core.handle_event(event, 0.0)
            (relayed,) = forwarded
            assert isinstance(relayed, Request)
            ok = serialize(make_response(relayed, 200, to_tag="reg"))
            layer.receive(parse_message(ok), next_hop, 0.0)
            while (event := layer.next_event()) is not None:
                if not isinstance(event, SendMessage):
                    core.handle_event(event, 0.0)
        del forwarded, relayed, event
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(layer) == 400 and len(core) == 0
    assert held / 200 < 4000, f"{held / 200:.0f} bytes per relayed registration"
