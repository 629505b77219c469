"""The relay allocation table, sans-IO: permissions, latching (RFC 7362), lifetimes, bounds."""

from __future__ import annotations

import pytest

from ims.gateway.errors import (
    GatewayUsageError,
    RelayCapacityExceeded,
    RelayRefused,
    UnknownAllocation,
)
from ims.gateway.relay import PermittedPeer, RelayConfig, RelayTable, Side, is_binding_request

BILL = ("127.0.0.1", 40001)
DAVE = ("127.0.0.1", 40002)
MALLORY = ("127.0.0.9", 40001)


def table(**config: object) -> RelayTable:
    return RelayTable(RelayConfig("127.0.0.1", **config))  # type: ignore[arg-type]


def test_forwards_both_ways_and_counts() -> None:
    relay = table()
    allocation = relay.allocate(BILL, DAVE, 50000, 50001, now=0.0)
    assert allocation.caller_side == ("127.0.0.1", 50000)
    assert allocation.callee_side == ("127.0.0.1", 50001)
    assert relay.receive(allocation.id, Side.CALLER, BILL, 100, 1.0) == DAVE
    assert relay.receive(allocation.id, Side.CALLER, BILL, 20, 1.0) == DAVE
    assert relay.receive(allocation.id, Side.CALLEE, DAVE, 7, 1.0) == BILL
    counters = relay.allocation(allocation.id).counters
    assert (counters.caller_to_callee_datagrams, counters.caller_to_callee_bytes) == (2, 120)
    assert (counters.callee_to_caller_datagrams, counters.callee_to_caller_bytes) == (1, 7)
    assert counters.dropped_unpermitted == 0


@pytest.mark.parametrize(
    "side, source",
    [
        (Side.CALLER, MALLORY),  # another host
        (Side.CALLER, ("127.0.0.1", 40009)),  # the caller's address, another port
        (Side.CALLER, DAVE),  # the callee sending to the caller's port
        (Side.CALLEE, BILL),
    ],
)
def test_unpermitted_source_is_dropped_and_counted(side: Side, source: tuple[str, int]) -> None:
    relay = table()
    allocation = relay.allocate(BILL, DAVE, 50000, 50001, now=0.0)
    assert relay.receive(allocation.id, side, source, 10, 1.0) is None
    counters = relay.allocation(allocation.id).counters
    assert counters.dropped_unpermitted == 1
    assert counters.caller_to_callee_datagrams == counters.callee_to_caller_datagrams == 0
    dropped = counters.dropped_at_caller_side if side is Side.CALLER else counters.dropped_at_callee_side
    assert dropped == 1


def test_rfc7362_latching_admits_first_port_then_only_that_port() -> None:
    relay = table()
    # The callee's SDP names its private port; its CGN sends from another.
    allocation = relay.allocate(BILL, PermittedPeer("127.0.0.1", 40002, latch=True), 50000, 50001, 0.0)
    # Before latching, the callee is reached at its SDP port.
    assert relay.receive(allocation.id, Side.CALLER, BILL, 1, 1.0) == DAVE
    assert relay.receive(allocation.id, Side.CALLEE, ("127.0.0.1", 61000), 1, 1.0) == BILL
    view = relay.allocation(allocation.id)
    assert view.callee_latched and view.callee_peer == ("127.0.0.1", 61000)
    assert relay.receive(allocation.id, Side.CALLER, BILL, 1, 1.0) == ("127.0.0.1", 61000)
    # RFC 7362 section 5: no re-latching, a second port of the same address is dropped.
    assert relay.receive(allocation.id, Side.CALLEE, ("127.0.0.1", 61001), 1, 1.0) is None
    # Another address never latches.
    assert relay.receive(allocation.id, Side.CALLEE, MALLORY, 1, 1.0) is None
    assert relay.allocation(allocation.id).counters.dropped_at_callee_side == 2


def test_latching_peer_that_sends_from_its_sdp_port_latches_it() -> None:
    relay = table()
    allocation = relay.allocate(PermittedPeer(*BILL, latch=True), DAVE, 50000, 50001, 0.0)
    assert relay.receive(allocation.id, Side.CALLER, BILL, 1, 1.0) == DAVE
    assert relay.receive(allocation.id, Side.CALLER, ("127.0.0.1", 40003), 1, 1.0) is None


def test_lifetime_expiry_refresh_and_timer() -> None:
    relay = table(default_lifetime=30.0, max_lifetime=60.0)
    first = relay.allocate(BILL, DAVE, 50000, 50001, now=100.0)
    second = relay.allocate(BILL, DAVE, 50002, 50003, now=100.0, lifetime=10.0)
    assert first.expires_at == 130.0 and second.expires_at == 110.0
    assert relay.get_timer() == 110.0
    assert relay.expire(109.9) == ()
    # A datagram at the expiry instant is not forwarded even before expire() runs.
    assert relay.receive(second.id, Side.CALLER, BILL, 1, 110.0) is None
    assert [a.id for a in relay.expire(110.0)] == [second.id]
    assert second.id not in relay and relay.get_timer() == 130.0
    refreshed = relay.refresh(first.id, now=125.0, lifetime=1000.0)
    assert refreshed.expires_at == 185.0  # capped at max_lifetime
    assert relay.expire(180.0) == ()
    assert [a.id for a in relay.expire(185.0)] == [first.id]
    assert relay.get_timer() is None and len(relay) == 0


def test_traffic_does_not_extend_lifetime() -> None:
    relay = table(default_lifetime=5.0)
    allocation = relay.allocate(BILL, DAVE, 50000, 50001, now=0.0)
    relay.receive(allocation.id, Side.CALLER, BILL, 1, 4.0)
    assert relay.get_timer() == 5.0


def test_release_returns_final_counters_and_forgets() -> None:
    relay = table()
    allocation = relay.allocate(BILL, DAVE, 50000, 50001, now=0.0)
    relay.receive(allocation.id, Side.CALLER, BILL, 3, 0.5)
    final = relay.release(allocation.id)
    assert final.counters.caller_to_callee_bytes == 3
    assert relay.receive(allocation.id, Side.CALLER, BILL, 3, 0.6) is None
    with pytest.raises(UnknownAllocation, match=f"no relay allocation {allocation.id}"):
        relay.release(allocation.id)
    with pytest.raises(UnknownAllocation):
        relay.refresh(allocation.id, 1.0)


def test_bounded_allocations_raise_typed_error() -> None:
    relay = table(max_allocations=2)
    relay.allocate(BILL, DAVE, 50000, 50001, 0.0)
    relay.allocate(BILL, DAVE, 50002, 50003, 0.0)
    with pytest.raises(RelayCapacityExceeded, match="maximum of 2 allocations") as caught:
        relay.allocate(BILL, DAVE, 50004, 50005, 0.0)
    assert isinstance(caught.value, RelayRefused) and caught.value.limit == 2
    assert len(relay) == 2


@pytest.mark.parametrize(
    "caller, callee, ports, lifetime, message",
    [
        (("bill.example", 1), DAVE, (50000, 50001), None, "not an IP address"),
        (("::1", 40001), DAVE, (50000, 50001), None, "not IPv4"),
        ((BILL[0], 0), DAVE, (50000, 50001), None, "outside 1..65535"),
        (BILL, DAVE, (50000, 50000), None, "each side needs its own"),
        (BILL, DAVE, (50000, 50001), 0.0, "positive number"),
        (BILL, DAVE, (50000, 50001), float("nan"), "positive number"),
    ],
)
def test_api_misuse_is_a_usage_error(
    caller: tuple[str, int], callee: tuple[str, int], ports: tuple[int, int],
    lifetime: float | None, message: str,
) -> None:
    relay = table()
    with pytest.raises(GatewayUsageError, match=message):
        relay.allocate(caller, callee, *ports, now=0.0, lifetime=lifetime)
    assert len(relay) == 0


def test_ipv6_addresses_are_compared_in_canonical_form() -> None:
    relay = RelayTable(RelayConfig("0:0::1"))
    allocation = relay.allocate(("0::1", 40001), ("::1", 40002), 50000, 50001, 0.0)
    assert allocation.caller_side == ("::1", 50000)
    assert relay.receive(allocation.id, Side.CALLER, ("::1", 40001), 1, 0.1) == ("::1", 40002)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_allocations": 0}, {"default_lifetime": -1.0}, {"default_lifetime": 10.0, "max_lifetime": 5.0}],
)
def test_bad_config_is_a_usage_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(GatewayUsageError):
        RelayConfig("127.0.0.1", **kwargs)  # type: ignore[arg-type]


def test_permit_moves_the_one_admitted_peer_of_a_side() -> None:
    # The callee's endpoint is known only from the answer: permit() replaces the placeholder.
    relay = table()
    allocation = relay.allocate(BILL, ("127.0.0.1", 9), 50000, 50001, now=0.0)
    assert relay.receive(allocation.id, Side.CALLEE, DAVE, 10, 1.0) is None
    relay.permit(allocation.id, Side.CALLEE, DAVE)
    assert relay.receive(allocation.id, Side.CALLEE, DAVE, 10, 1.0) == BILL
    assert relay.receive(allocation.id, Side.CALLER, BILL, 10, 1.0) == DAVE
    assert relay.receive(allocation.id, Side.CALLEE, ("127.0.0.1", 9), 10, 1.0) is None


# RFC 5769 section 2.1, "Sample request": a Binding request with USERNAME "evtj:h6vY",
# MESSAGE-INTEGRITY under the short-term password "VOkJxbRl1RmTxUk/WvJxBt" and FINGERPRINT
# (the standard STUN test vector; its USERNAME padding is spaces, which section 2.1 allows).
RFC5769_SAMPLE_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"  # SOFTWARE "STUN test client"
    "002400046e0001ff"  # PRIORITY
    "80290008932ff9b151263b36"  # ICE-CONTROLLED
    "000600096576746a3a68367659202020"  # USERNAME "evtj:h6vY"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"  # MESSAGE-INTEGRITY
    "80280004e57a3bcf")  # FINGERPRINT
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"


def test_rfc5769_sample_request_latches_with_its_username_and_password() -> None:
    """RFC 5769 section 2.1: the relay's latch check accepts the standard vector, and only
    with its USERNAME and the password its MESSAGE-INTEGRITY was made with (RFC 8489 14.5)."""
    assert is_binding_request(RFC5769_SAMPLE_REQUEST, b"evtj:h6vY", RFC5769_PASSWORD)
    assert is_binding_request(RFC5769_SAMPLE_REQUEST, b"evtj:h6vY")  # USERNAME only
    assert not is_binding_request(RFC5769_SAMPLE_REQUEST, b"evtj:h6vY", b"not the password")
    assert not is_binding_request(RFC5769_SAMPLE_REQUEST, b"h6vY:evtj", RFC5769_PASSWORD)
    tampered = bytearray(RFC5769_SAMPLE_REQUEST)
    tampered[30] ^= 0x01  # one bit of SOFTWARE, under the integrity
    assert not is_binding_request(bytes(tampered), b"evtj:h6vY", RFC5769_PASSWORD)
    assert not is_binding_request(RFC5769_SAMPLE_REQUEST[:-1], b"evtj:h6vY", RFC5769_PASSWORD)
