"""The PCP client core against the server core in memory, with a fake clock: RFC 6887
sections 8.1.1 (retransmission), 8.5 (epoch), 11.2.1 (renewal), 15 (deletion), 7.4 (results)."""

from __future__ import annotations

import ipaddress
import itertools
import random
from dataclasses import replace

import pytest

from ims.pcp.client import (
    MappingDeleted,
    MappingExpired,
    MappingReady,
    MappingRefused,
    MappingRequest,
    PcpClient,
    PcpClientConfig,
    PcpClientEvent,
    Phase,
    ServerStateLost,
)
from ims.pcp.codec import (
    Endpoint,
    IPAddress,
    PeerData,
    Request,
    Response,
    encode_error_response,
    encode_response,
    parse_request,
)
from ims.pcp.constants import SHORT_LIFETIME_ERRORS, Opcode, ResultCode
from ims.pcp.errors import (
    REFUSALS,
    PcpUsageError,
    RefusedNotAuthorized,
    RefusedUnknownResult,
    RefusedUnsupportedVersion,
    RefusedUserExceededQuota,
)
from ims.pcp.server import PcpServer, PcpServerConfig

ip = ipaddress.ip_address
SERVER = Endpoint(ip("100.64.0.1"), 5351)
GATEWAY = ip("100.64.0.9")
UE = ip("100.64.0.2")
PEER = Endpoint(ip("198.51.100.2"), 5000)


class FixedJitter:
    """uniform(a, b) = a + t * (b - a): t = 0.5 gives RAND = 0, t = 0 the earliest renewal."""

    def __init__(self, t: float) -> None:
        self.t = t

    def uniform(self, a: float, b: float) -> float:
        return a + self.t * (b - a)


def nonces() -> object:
    counter = itertools.count(1)
    return lambda: next(counter).to_bytes(12, "big")


def make_client(t: float = 0.0, address: IPAddress = GATEWAY) -> PcpClient:
    return PcpClient(PcpClientConfig(SERVER, address), FixedJitter(t),
                     nonce_factory=nonces())  # type: ignore[arg-type]


def make_server(now: float = 0.0, **overrides: object) -> PcpServer:
    settings: dict[str, object] = {"external_address": ip("198.51.100.1"),
                                   "control_addresses": frozenset({GATEWAY}),
                                   "min_lifetime": 10}
    settings.update(overrides)
    return PcpServer(PcpServerConfig(**settings), now, random.Random(1))  # type: ignore[arg-type]


PEER_REQ = MappingRequest(17, 4000, 100, remote_peer=PEER, third_party=UE)


class Link:
    """Carries datagrams between one client and one server; counts what the client sent."""

    def __init__(self, client: PcpClient, server: PcpServer | None) -> None:
        self.client, self.server = client, server
        self.sent: list[tuple[float, Request]] = []
        self.events: list[PcpClientEvent] = []

    def pump(self, now: float, deliver: bool = True) -> None:
        while datagrams := self.client.datagrams_to_send():
            self._carry(datagrams, now, deliver)
        while (event := self.client.next_event()) is not None:
            self.events.append(event)

    def _carry(self, datagrams: list[bytes], now: float, deliver: bool) -> None:
        for datagram in datagrams:
            self.sent.append((now, parse_request(datagram)))
            if deliver and self.server is not None:
                reply = self.server.handle_datagram(
                    datagram, Endpoint(self.client.config.client_address, 40001), now)
                if reply.response is not None:
                    self.client.receive_datagram(reply.response, SERVER, now)

    def run_until(self, end: float, deliver: bool = True) -> None:
        while (timer := self.client.get_timer()) is not None and timer <= end:
            self.client.handle_timer(timer)
            self.pump(timer, deliver)


def test_create_peer_mapping_via_third_party() -> None:
    client, server = make_client(), make_server()
    link = Link(client, server)
    mapping_id = client.request(PEER_REQ, 0.0)
    link.pump(0.0)
    (ready,) = link.events
    assert isinstance(ready, MappingReady) and not ready.renewed
    assert ready.external == server.mappings[0].external and ready.lifetime == 100
    assert client.mapping(mapping_id).phase is Phase.ESTABLISHED
    (_, request), = link.sent
    assert request.opcode is Opcode.PEER and request.third_party() is not None


def test_rfc6887_s8_1_1_retransmission_schedule_irt_3_mrt_1024() -> None:
    client = make_client(t=0.5)  # RAND = 0: the bare doubling
    link = Link(client, None)
    client.request(PEER_REQ, 0.0)
    link.pump(0.0)
    link.run_until(5000.0)
    times = [t for t, _ in link.sent]
    assert times[:12] == [0, 3, 9, 21, 45, 93, 189, 381, 765, 1533, 2557, 3581]
    # Every retransmission is the same request (same nonce).
    assert len({r.data.nonce for _, r in link.sent if r.data}) == 1


def test_rfc6887_s8_1_1_retransmission_randomised_from_previous_rt() -> None:
    client = make_client(t=1.0)  # RAND = +0.1 each time
    link = Link(client, None)
    client.request(PEER_REQ, 0.0)
    link.pump(0.0)
    link.run_until(20.0)
    times = [t for t, _ in link.sent]
    assert times[1] == pytest.approx(3.3)                 # (1 + 0.1) * IRT
    assert times[2] == pytest.approx(3.3 + 1.1 * 6.6)     # (1 + 0.1) * 2 * RTprev


def test_rfc6887_s11_2_1_renewal_at_half_lifetime_keeps_port() -> None:
    client, server = make_client(t=0.0), make_server()
    link = Link(client, server)
    client.request(PEER_REQ, 0.0)
    link.pump(0.0)
    first = link.events[0]
    assert isinstance(first, MappingReady)
    assert client.get_timer() == 50.0  # 1/2 of the 100 s lifetime
    link.run_until(50.0)
    assert [t for t, _ in link.sent] == [0.0, 50.0]
    renewal = link.sent[1][1]
    assert renewal.data is not None and renewal.data.external_port == first.external.port
    renewed = link.events[1]
    assert isinstance(renewed, MappingReady) and renewed.renewed
    assert renewed.external == first.external and renewed.expires_at == 150.0


def test_rfc6887_s11_2_1_unanswered_renewals_then_expiry() -> None:
    client, server = make_client(t=0.0), make_server()
    link = Link(client, server)
    client.request(PEER_REQ, 0.0)
    link.pump(0.0)
    link.run_until(200.0, deliver=False)
    times = [t for t, _ in link.sent]
    # 1/2, 3/4, 7/8, 15/16 of 100 s, then only 4 s apart at least, never at/after expiry.
    assert times[:5] == [0.0, 50.0, 75.0, 87.5, 93.75]
    assert all(b - a >= 4.0 for a, b in itertools.pairwise(times[1:]))
    assert all(t < 100.0 for t in times)
    assert isinstance(link.events[-1], MappingExpired)
    assert client.mapping_ids == ()


def test_rfc6887_s15_delete_sends_lifetime_zero_with_same_nonce() -> None:
    client, server = make_client(), make_server()
    link = Link(client, server)
    mapping_id = client.request(PEER_REQ, 0.0)
    link.pump(0.0)
    client.delete(mapping_id, 5.0)
    link.pump(5.0)
    assert isinstance(link.events[-1], MappingDeleted)
    delete = link.sent[-1][1]
    assert delete.lifetime == 0 and delete.data is not None
    assert delete.data.nonce == link.sent[0][1].data.nonce  # type: ignore[union-attr]
    assert server.mappings == () and client.mapping_ids == ()


def test_release_deletes_by_nonce_without_creating() -> None:
    server = make_server()
    creator = make_client()
    link = Link(creator, server)
    mapping_id = creator.request(PEER_REQ, 0.0)
    link.pump(0.0)
    nonce = creator.mapping(mapping_id).nonce
    other = make_client()
    link2 = Link(other, server)
    other.release(PEER_REQ, nonce, 1.0)
    link2.pump(1.0)
    assert [r.lifetime for _, r in link2.sent] == [0]
    assert isinstance(link2.events[-1], MappingDeleted) and server.mappings == ()


def test_rfc6887_s8_5_server_restart_detected_and_mappings_recreated() -> None:
    client, server = make_client(t=0.0), make_server(now=0.0)
    link = Link(client, server)
    first = client.request(PEER_REQ, 0.0)
    second = client.request(MappingRequest(17, 4001, 1000, remote_peer=PEER, third_party=UE),
                            0.0)
    link.pump(0.0)
    assert sum(isinstance(e, MappingReady) for e in link.events) == 2
    # The CGN restarts at t=30: a fresh table and epoch 0.
    link.server = make_server(now=30.0)
    link.run_until(50.0)  # first's renewal at 50 s meets epoch 20 where 50 was expected
    lost = [e for e in link.events if isinstance(e, ServerStateLost)]
    assert lost and lost[0].epoch_time == 20 and lost[0].recreating == (second,)
    assert {m.mapping_id for m in link.server.mappings} == {"m1", "m2"}
    assert client.mapping(first).phase is Phase.ESTABLISHED
    assert client.mapping(second).phase is Phase.ESTABLISHED


def test_rfc6887_s8_5_epoch_rules() -> None:
    client = make_client()
    client.receive_datagram(encode_response(Response(Opcode.ANNOUNCE, 0, 0, 100)), SERVER, 0.0)
    # 10 s later the server says 110: consistent, nothing happens.
    client.receive_datagram(encode_response(Response(Opcode.ANNOUNCE, 0, 0, 110)), SERVER, 10.0)
    assert client.next_event() is None
    # Going back by one second is tolerated; by two it is not.
    client.receive_datagram(encode_response(Response(Opcode.ANNOUNCE, 0, 0, 109)), SERVER, 10.0)
    assert client.next_event() is None
    client.receive_datagram(encode_response(Response(Opcode.ANNOUNCE, 0, 0, 107)), SERVER, 10.0)
    assert isinstance(client.next_event(), ServerStateLost)
    # Server time running far faster than ours (client_delta + 2 < server_delta - sd/16).
    client.receive_datagram(encode_response(Response(Opcode.ANNOUNCE, 0, 0, 200)), SERVER, 20.0)
    assert isinstance(client.next_event(), ServerStateLost)


@pytest.mark.parametrize("code", [c for c in ResultCode if c is not ResultCode.SUCCESS])
def test_rfc6887_s7_4_every_result_code_has_a_typed_outcome(code: ResultCode) -> None:
    client = make_client()
    mapping_id = client.request(PEER_REQ, 0.0)
    (wire,) = client.datagrams_to_send()
    lifetime = 30 if code in SHORT_LIFETIME_ERRORS else 1800
    client.receive_datagram(encode_error_response(wire, code, lifetime, 0), SERVER, 1.0)
    event = client.next_event()
    assert isinstance(event, MappingRefused) and event.mapping_id == mapping_id
    assert type(event.error) is REFUSALS[code]
    assert event.error.result_code is code and event.error.retry_after == lifetime
    assert event.error.transient == (code in SHORT_LIFETIME_ERRORS)
    assert code.name in str(event.error)
    assert not event.kept and client.mapping_ids == ()


def test_unknown_result_code_is_typed_too() -> None:
    client = make_client()
    client.request(PEER_REQ, 0.0)
    (wire,) = client.datagrams_to_send()
    client.receive_datagram(encode_error_response(wire, 99, 60, 0), SERVER, 1.0)  # type: ignore[arg-type]
    event = client.next_event()
    assert isinstance(event, MappingRefused) and isinstance(event.error, RefusedUnknownResult)


def test_renewal_short_lifetime_error_keeps_mapping_long_one_drops() -> None:
    client = make_client(t=0.0)
    mapping_id = client.request(PEER_REQ, 0.0)
    (wire,) = client.datagrams_to_send()
    ok = Response(Opcode.PEER, 0, 100, 0, parse_request(wire).data)
    client.receive_datagram(encode_response(ok), SERVER, 0.0)
    client.handle_timer(50.0)
    (renewal,) = client.datagrams_to_send()
    client.receive_datagram(encode_error_response(renewal, ResultCode.NO_RESOURCES, 30, 50),
                            SERVER, 50.0)
    events = [client.next_event(), client.next_event()]
    refused = events[1]
    assert isinstance(refused, MappingRefused) and refused.renewal and refused.kept
    assert client.get_timer() == 75.0  # the renewal schedule goes on
    client.handle_timer(75.0)
    (renewal,) = client.datagrams_to_send()
    client.receive_datagram(encode_error_response(renewal, ResultCode.NOT_AUTHORIZED, 1800, 75),
                            SERVER, 75.0)
    refused = client.next_event()
    assert isinstance(refused, MappingRefused) and not refused.kept
    assert mapping_id not in client.mapping_ids


def test_quota_outcome_through_the_server() -> None:
    client, server = make_client(), make_server(quota=1)
    link = Link(client, server)
    client.request(PEER_REQ, 0.0)
    client.request(MappingRequest(17, 4001, 100, remote_peer=PEER, third_party=UE), 0.0)
    link.pump(0.0)
    refused = [e for e in link.events if isinstance(e, MappingRefused)]
    assert len(refused) == 1 and isinstance(refused[0].error, RefusedUserExceededQuota)
    assert refused[0].error.transient


def test_third_party_from_non_control_address_refused_not_authorized() -> None:
    client, server = make_client(address=ip("100.64.0.50")), make_server()
    link = Link(client, server)
    client.request(PEER_REQ, 0.0)
    link.pump(0.0)
    (event,) = link.events
    assert isinstance(event, MappingRefused) and isinstance(event.error, RefusedNotAuthorized)


def test_responses_not_from_server_or_not_matching_are_ignored() -> None:
    client = make_client()
    client.request(PEER_REQ, 0.0)
    (wire,) = client.datagrams_to_send()
    data = parse_request(wire).data
    ok = encode_response(Response(Opcode.PEER, 0, 100, 0, data))
    client.receive_datagram(ok, Endpoint(ip("100.64.0.66"), 5351), 0.0)   # wrong source
    client.receive_datagram(ok, Endpoint(SERVER.address, 9999), 0.0)      # wrong port
    assert isinstance(data, PeerData)
    wrong_nonce = Response(Opcode.PEER, 0, 100, 0, replace(data, nonce=b"\xff" * 12))
    client.receive_datagram(encode_response(wrong_nonce), SERVER, 0.0)
    client.receive_datagram(b"\x02\x82garbage", SERVER, 0.0)
    assert client.next_event() is None
    client.receive_datagram(ok, SERVER, 0.0)
    assert isinstance(client.next_event(), MappingReady)


def test_rfc6887_s9_nat_pmp_answer_fails_outstanding_requests() -> None:
    client = make_client()
    client.request(PEER_REQ, 0.0)
    client.receive_datagram(b"\x00\x82\x00\x01\x00\x00\x00\x05", SERVER, 0.0)
    event = client.next_event()
    assert isinstance(event, MappingRefused)
    assert isinstance(event.error, RefusedUnsupportedVersion)


def test_request_validation() -> None:
    with pytest.raises(PcpUsageError):
        MappingRequest(17, 4000, 0)
    with pytest.raises(PcpUsageError):
        MappingRequest(17, 0, 10)
    with pytest.raises(PcpUsageError):
        MappingRequest(17, 4000, 10, remote_peer=PEER, prefer_failure=True)
    with pytest.raises(PcpUsageError):
        make_client().delete(42, 0.0)
