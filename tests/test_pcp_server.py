"""The CGN's PCP server core (sans-IO, fake clock): RFC 6887 sections 8.3, 11.3, 12.3, 13, 15
and the quota of RFC 6888 REQ-4."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from ims.pcp.codec import (
    ANY_IPV4,
    Endpoint,
    Filter,
    IPAddress,
    MapData,
    PeerData,
    PreferFailure,
    Request,
    Response,
    ThirdParty,
    UnknownOption,
    encode_request,
    parse_response,
)
from ims.pcp.constants import SHORT_LIFETIME_ERRORS, Opcode, ResultCode
from ims.pcp.errors import PcpUsageError
from ims.pcp.server import PcpServer, PcpServerConfig, ServerReply

ip = ipaddress.ip_address
EXTERNAL = ip("198.51.100.1")
GATEWAY = ip("100.64.0.9")
UE = ip("100.64.0.2")
PEER = Endpoint(ip("198.51.100.2"), 5000)
NONCE = b"N" * 12
T0 = 1000.0


def make_server(**overrides: object) -> PcpServer:
    settings: dict[str, object] = {"external_address": EXTERNAL,
                                   "control_addresses": frozenset({GATEWAY})}
    settings.update(overrides)
    return PcpServer(PcpServerConfig(**settings), started_at=T0,  # type: ignore[arg-type]
                     rng=random.Random(7))


def peer_request(lifetime: int = 600, nonce: bytes = NONCE, port: int = 4000,
                 internal: IPAddress = UE,
                 client: IPAddress = GATEWAY,
                 remote: Endpoint = PEER, extra: tuple[object, ...] = ()) -> bytes:
    data = PeerData(nonce, 17, port, 0, ANY_IPV4, remote.port, remote.address)
    return encode_request(Request(lifetime, client, data,
                                  (ThirdParty(internal), *extra)))  # type: ignore[arg-type]


def map_request(lifetime: int = 600, nonce: bytes = NONCE, port: int = 4000,
                options: tuple[object, ...] = (), client: IPAddress = UE,
                suggest: int = 0, protocol: int = 17) -> bytes:
    data = MapData(nonce, protocol, port, suggest, EXTERNAL if suggest else ANY_IPV4)
    return encode_request(Request(lifetime, client, data, options))  # type: ignore[arg-type]


def send(server: PcpServer, wire: bytes, source: object = GATEWAY,
         now: float = T0) -> tuple[ServerReply, Response]:
    reply = server.handle_datagram(wire, Endpoint(source, 5351), now)  # type: ignore[arg-type]
    assert reply.response is not None
    return reply, parse_response(reply.response)


def test_peer_with_third_party_from_control_address_creates_mapping() -> None:
    server = make_server()
    reply, response = send(server, peer_request())
    assert response.result_code == ResultCode.SUCCESS
    assert response.opcode == Opcode.PEER and response.lifetime == 600
    assert isinstance(response.data, PeerData)
    assert response.data.external_address == EXTERNAL
    assert response.third_party() == ThirdParty(UE)  # section 13.1: echoed
    (mapping,) = reply.changes.added
    assert mapping.internal == Endpoint(UE, 4000) and mapping.remote_peer == PEER
    assert mapping.external == Endpoint(EXTERNAL, response.data.external_port)
    assert 1024 <= mapping.external.port <= 65535


def test_rfc6887_s13_1_third_party_from_non_control_address_is_not_authorized() -> None:
    server = make_server()
    _, response = send(server, peer_request(client=UE), source=UE)
    assert response.result_code == ResultCode.NOT_AUTHORIZED
    assert response.lifetime == 1800  # long lifetime error
    assert server.mappings == ()


def test_rfc6887_s13_1_third_party_unsupported_is_unsupp_option() -> None:
    server = make_server(control_addresses=frozenset())
    _, response = send(server, peer_request())
    assert response.result_code == ResultCode.UNSUPP_OPTION


def test_rfc6887_s8_3_client_address_must_match_source() -> None:
    _, response = send(make_server(), peer_request(), source=ip("100.64.0.77"))
    assert response.result_code == ResultCode.ADDRESS_MISMATCH


def test_rfc6888_req4_quota_per_subscriber_user_ex_quota() -> None:
    server = make_server(quota=2)
    for port in (4000, 4001):
        assert send(server, peer_request(port=port))[1].result_code == ResultCode.SUCCESS
    _, response = send(server, peer_request(port=4002))
    assert response.result_code == ResultCode.USER_EX_QUOTA
    assert response.lifetime == 30  # section 7.4: a short lifetime error
    # Another subscriber is not affected.
    other = peer_request(port=4002, internal=ip("100.64.0.3"))
    assert send(server, other)[1].result_code == ResultCode.SUCCESS


def test_rfc6887_s15_lifetime_clamped() -> None:
    server = make_server(min_lifetime=120, max_lifetime=3600)
    assert send(server, peer_request(lifetime=5))[1].lifetime == 120
    assert send(server, peer_request(lifetime=99999))[1].lifetime == 3600


def test_rfc6887_s11_3_renewal_same_nonce_keeps_port_and_extends() -> None:
    server = make_server()
    _first, r1 = send(server, peer_request(lifetime=600))
    again, r2 = send(server, peer_request(lifetime=600), now=T0 + 300)
    assert r2.result_code == ResultCode.SUCCESS
    assert isinstance(r1.data, PeerData) and isinstance(r2.data, PeerData)
    assert r2.data.external_port == r1.data.external_port
    assert not again.changes  # rules unchanged
    assert server.get_timer() == T0 + 900


def test_rfc6887_s11_3_other_nonce_is_not_authorized() -> None:
    server = make_server()
    send(server, peer_request())
    _, response = send(server, peer_request(nonce=b"X" * 12))
    assert response.result_code == ResultCode.NOT_AUTHORIZED


def test_rfc6887_s15_delete_with_lifetime_zero() -> None:
    server = make_server()
    created, _ = send(server, peer_request())
    reply, response = send(server, peer_request(lifetime=0))
    assert response.result_code == ResultCode.SUCCESS and response.lifetime == 0
    assert reply.changes.removed == created.changes.added
    assert server.mappings == ()
    # Deleting what does not exist also succeeds.
    assert send(server, peer_request(lifetime=0))[1].result_code == ResultCode.SUCCESS


def test_rfc6887_s15_expiry_with_now_input() -> None:
    server = make_server(min_lifetime=10)
    send(server, peer_request(lifetime=10))
    assert server.get_timer() == T0 + 10
    assert not server.expire(T0 + 9.9)
    removed = server.expire(T0 + 10)
    assert len(removed.removed) == 1 and server.mappings == () and server.get_timer() is None


def test_rfc6887_s8_5_epoch_counts_seconds_since_start() -> None:
    server = make_server()
    assert send(server, peer_request(), now=T0)[1].epoch_time == 0
    assert send(server, peer_request(), now=T0 + 61.7)[1].epoch_time == 61


def test_rfc6887_s13_2_prefer_failure_when_suggestion_taken() -> None:
    server = make_server()
    assert send(server, map_request(suggest=40000), source=UE)[1].result_code == 0
    other = ip("100.64.0.3")
    _, taken = send(server, map_request(suggest=40000, client=other, options=(PreferFailure(),)),
                    source=other)
    assert taken.result_code == ResultCode.CANNOT_PROVIDE_EXTERNAL
    _, moved = send(server, map_request(suggest=40000, client=other), source=other)
    assert isinstance(moved.data, MapData) and moved.data.external_port != 40000


def test_rfc6887_s12_3_peer_reuses_external_port_of_same_internal_endpoint() -> None:
    server = make_server()
    _, first = send(server, peer_request())
    _, second = send(server, peer_request(remote=Endpoint(ip("198.51.100.3"), 6000)))
    assert isinstance(first.data, PeerData) and isinstance(second.data, PeerData)
    assert first.data.external_port == second.data.external_port
    assert len(server.mappings) == 2


def test_rfc6887_s7_3_unknown_mandatory_option_unsupported_optional_ignored() -> None:
    server = make_server()
    _, refused = send(server, map_request(options=(UnknownOption(99, b""),)), source=UE)
    assert refused.result_code == ResultCode.UNSUPP_OPTION
    _, fine = send(server, map_request(options=(UnknownOption(200, b"ab"),)), source=UE)
    assert fine.result_code == ResultCode.SUCCESS


def test_unsupported_protocol_and_all_ports() -> None:
    server = make_server()
    assert send(server, map_request(protocol=132), source=UE)[1].result_code \
        == ResultCode.UNSUPP_PROTOCOL
    assert send(server, map_request(port=0), source=UE)[1].result_code \
        == ResultCode.NOT_AUTHORIZED


def test_rfc6887_s13_3_excessive_remote_peers() -> None:
    server = make_server(max_filters=2)
    filters = tuple(Filter(128, 5000, ip(f"198.51.100.{i}")) for i in range(3))
    _, response = send(server, map_request(options=filters), source=UE)
    assert response.result_code == ResultCode.EXCESSIVE_REMOTE_PEERS


def test_rfc6887_s13_3_filters_replace_on_renewal_and_prefix_zero_clears() -> None:
    server = make_server()
    one = (Filter(128, 5000, ip("198.51.100.2")),)
    reply, _ = send(server, map_request(options=one), source=UE)
    assert reply.changes.added[0].filters == one
    two = (Filter(120, 0, ip("198.51.100.0")),)
    reply, _ = send(server, map_request(options=two), source=UE)
    assert reply.changes.removed[0].filters == one and reply.changes.added[0].filters == two
    reply, _ = send(server, map_request(), source=UE)          # no FILTER: kept
    assert not reply.changes
    reply, _ = send(server, map_request(options=(Filter(0, 0, ANY_IPV4),)), source=UE)
    assert reply.changes.added[0].filters == ()
    assert reply.changes.added[0].admitted() == ((None, 0),)


def test_no_resources_when_port_range_exhausted() -> None:
    server = make_server(external_ports=(40000, 40000))
    assert send(server, peer_request())[1].result_code == ResultCode.SUCCESS
    _, response = send(server, peer_request(port=4001))
    assert response.result_code == ResultCode.NO_RESOURCES
    assert ResultCode.NO_RESOURCES in SHORT_LIFETIME_ERRORS and response.lifetime == 30


def test_rfc6887_s8_3_drops_and_header_errors() -> None:
    server = make_server()
    assert server.handle_datagram(b"\x02", Endpoint(UE, 1), T0).response is None
    response_bit = bytearray(map_request())
    response_bit[1] |= 0x80
    assert server.handle_datagram(bytes(response_bit), Endpoint(UE, 1), T0).response is None
    bad_opcode = bytearray(map_request())
    bad_opcode[1] = 9
    assert send(server, bytes(bad_opcode), UE)[1].result_code == ResultCode.UNSUPP_OPCODE
    assert send(server, map_request() + b"\0\0", UE)[1].result_code \
        == ResultCode.MALFORMED_REQUEST
    assert send(server, b"\x01" + map_request()[1:], UE)[1].result_code \
        == ResultCode.UNSUPP_VERSION


def test_rfc6887_s9_nat_pmp_request_gets_nat_pmp_unsupported_version() -> None:
    reply = make_server().handle_datagram(b"\x00\x00", Endpoint(UE, 1), T0 + 5)
    assert reply.response == struct.pack("!BBHI", 0, 128, 1, 5)


def test_rfc6887_s14_1_announce_answered_with_epoch() -> None:
    _, response = send(make_server(), encode_request(Request(0, UE)), UE, now=T0 + 3)
    assert (response.opcode, response.result_code, response.lifetime, response.epoch_time) \
        == (Opcode.ANNOUNCE, 0, 0, 3)


def test_internal_networks_bound_subscribers() -> None:
    server = make_server(internal_networks=(ipaddress.ip_network("100.64.0.0/10"),))
    _, response = send(server, peer_request(internal=ip("10.0.0.1")))
    assert response.result_code == ResultCode.NOT_AUTHORIZED


def test_revert_undoes_a_creation() -> None:
    server = make_server()
    reply, _ = send(server, peer_request())
    server.revert(reply.changes)
    assert server.mappings == ()
    assert send(server, peer_request(nonce=b"Z" * 12))[1].result_code == ResultCode.SUCCESS


def test_config_is_validated() -> None:
    with pytest.raises(PcpUsageError):
        PcpServerConfig(EXTERNAL, quota=0)
    with pytest.raises(PcpUsageError):
        PcpServerConfig(EXTERNAL, min_lifetime=10, max_lifetime=5)
    with pytest.raises(PcpUsageError):
        PcpServerConfig(ip("0.0.0.0"))
