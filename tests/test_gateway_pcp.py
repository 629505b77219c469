"""[gateway] mode = "pcp" on the wire (ims.gateway.pcp_gateway): two operators on loopback,
each asking its own PCP server (ours, ims.pcp.aioserver, on 127.0.0.1) for mappings; Bill
calls Dave with an SDP offer carrying one host candidate.

The CGNs' data plane is a mock: `Recording`, a RecordingTable (ims.pcp.nft) that also keeps
every MappingChanges it was asked to apply, stands in for nftables (which needs root; the
testbed proves the packets, tests/test_testbed_proof.py). So these tests check what the
operators ask of the CGN and put in SDP, and that the relay fallback carries datagrams.

Also: relay latching on the UE's ICE check (RFC 8445 section 7.2.2), also for UEs behind a
userspace endpoint-dependent NAT on loopback (`SymmetricNat`) whose default is their STUN
mapping, and the [gateway] pcp_* configuration keys."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aioice.stun as stun
import pytest

from ims.cli.mno import describe_open
from ims.config import ConfigError, parse_config
from ims.gateway.pcp_gateway import PcpGateway, PcpGatewayConfig, PcpOpenLeg
from ims.gateway.relay import (
    Latched,
    PermittedPeer,
    RelayConfig,
    RelayTable,
    Side,
    is_binding_request,
)
from ims.gateway.service import RelayGateway, behind_nat, default_behind_nat
from ims.operator import Operator
from ims.pcp.aioserver import RunningPcpServer, start_pcp_server
from ims.pcp.constants import Opcode
from ims.pcp.nft import RecordingTable
from ims.pcp.server import Mapping, MappingChanges, PcpServerConfig
from ims.sdp import (
    Candidate,
    CandidateType,
    IceCredentials,
    Origin,
    build_answer,
    build_offer,
    candidate_foundation,
    candidate_priority,
    negotiated_endpoints,
    parse_sdp,
    serialize_sdp,
    stream_endpoints,
)
from ims.seams import Leg
from ims.sip.message import Request
from ims.sip.uri import parse_uri
from ims.sip.useragent import CallFailed, IncomingCall
from tests.test_gateway_flows import (
    SDP,
    _answer,
    _asking,
    _closed,
    _exchange,
    _gateway_config,
    _invite,
    _offer,
    _ok,
    _registered,
    _socket,
    _until,
    run,
)
from tests.test_operator_flows import NETS, PEOPLE, start_operators
from tests.test_permission_flows import CALL, DAVE, App
from ue_ua.agent import UeAgent

BILL_HOST = ("127.0.0.1", 40000)
DAVE_HOST = ("127.0.0.1", 40002)
EXTERNAL = {"alpha": "127.0.1.100", "beta": "127.0.2.100"}  # each CGN's public address


class Recording(RecordingTable):
    """A mock of the CGN's nftables data plane: remembers rules and every change applied."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[MappingChanges] = []

    def apply(self, changes: MappingChanges) -> None:
        self.changes.append(changes)
        super().apply(changes)


@dataclass
class Cgn:
    server: RunningPcpServer
    plane: Recording

    @property
    def mappings(self) -> tuple[Mapping, ...]:
        return self.server.core.mappings

    def added(self) -> list[Mapping]:
        return [m for c in self.plane.changes for m in c.added]


@dataclass
class World:
    alpha: Operator
    beta: Operator
    cgns: dict[str, Cgn]
    agents: dict[str, UeAgent]
    apps: dict[str, App]

    def gateways(self) -> tuple[PcpGateway, PcpGateway]:
        a, b = self.alpha.gateway, self.beta.gateway
        assert isinstance(a, PcpGateway) and isinstance(b, PcpGateway)
        return a, b


async def _cgn(stack: AsyncExitStack, name: str, *, refuse: bool = False) -> Cgn:
    """Our PCP server on 127.0.0.1 for `name`'s CGN; THIRD_PARTY is allowed from the
    operators' relay addresses (whence their PCP clients send), or from nobody (`refuse`)."""
    control = frozenset() if refuse else frozenset(
        ipaddress.ip_address(f"127.0.{net}.2") for net in NETS.values())
    config = PcpServerConfig(ipaddress.ip_address(EXTERNAL[name]), control_addresses=control,
                             quota=8)
    plane = Recording()
    server = await start_pcp_server(config, "127.0.0.1", plane, port=0)
    stack.push_async_callback(server.close)
    return Cgn(server, plane)


class _Silent(asyncio.DatagramProtocol):
    """A PCP server that never answers."""


async def _silent_port(stack: AsyncExitStack) -> int:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        _Silent, local_addr=("127.0.0.1", 0))
    stack.callback(transport.close)
    return int(transport.get_extra_info("sockname")[1])


@asynccontextmanager
async def world(tmp_path: Path, *, refuse: tuple[str, ...] = (), silent: tuple[str, ...] = ()
                ) -> AsyncIterator[World]:
    """Alpha and Beta with [permission] and [gateway] mode pcp towards their CGNs' PCP
    servers (`refuse`: the CGN refuses THIRD_PARTY; `silent`: nothing answers), Bill and
    Dave registered with the extension, Dave's application allowing."""
    async with AsyncExitStack() as stack:
        cgns: dict[str, Cgn] = {}
        ports: dict[str, int] = {}
        for name in NETS:
            if name in silent:
                ports[name] = await _silent_port(stack)
            else:
                cgns[name] = await _cgn(stack, name, refuse=name in refuse)
                ports[name] = cgns[name].server.port
        extra = {
            n: "\n[permission]\ndeadline = 1\n"
            f'\n[gateway]\nmode = "pcp"\nrelay_address = "127.0.{net}.2"\nlifetime = 60\n'
            f'pcp_server = "127.0.0.1:{ports[n]}"\npcp_lifetime = 120\npcp_timeout = 0.3\n'
            for n, net in NETS.items()
        }
        ops, _ = await start_operators(stack, tmp_path, extra=extra)
        apps = {name: App("allow") for name in PEOPLE}
        for app in apps.values():
            app.gate.set()
        agents = await _registered(stack, ops, apps, ("bill", "dave"))
        yield World(ops["alpha"], ops["beta"], cgns, agents, apps)


def _kinds(body: bytes) -> list[tuple[str, str]]:
    return [(c.type, c.address) for c in stream_endpoints(parse_sdp(body), 0).candidates]


def _default(body: bytes) -> tuple[str, int]:
    default = negotiated_endpoints(parse_sdp(body)).default
    return default.address, default.port


async def _call(w: World, offer: bytes) -> tuple[asyncio.Task[Any], IncomingCall]:
    task = asyncio.create_task(w.agents["bill"].ua.call(
        parse_uri(DAVE), extra=CALL, body=offer, content_type=SDP))
    incoming: IncomingCall = await asyncio.wait_for(w.agents["dave"].ua.incoming.get(), 5)
    return task, incoming


def test_rfc6887_map_filter_then_peer_then_filter_replaced_and_deleted_after_bye(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w:
            alpha, beta = w.gateways()
            task, incoming = await _call(w, _offer(BILL_HOST))

            # Alpha, at the offer: MAP for THIRD_PARTY(Bill's host) admitting nobody yet
            # (RFC 6887 13.1, 13.3); the offer's default is its srflx candidate.
            [mapped] = w.cgns["alpha"].added()
            assert mapped.opcode is Opcode.MAP
            assert (str(mapped.internal.address), mapped.internal.port) == BILL_HOST
            [nobody] = mapped.filters
            assert nobody.prefix_length == 128 and nobody.remote_peer_port == 0
            assert str(nobody.network()) == "0.0.0.0/32"
            xb = (EXTERNAL["alpha"], mapped.external.port)
            offer = stream_endpoints(parse_sdp(incoming.request.body), 0)
            assert _kinds(incoming.request.body) == [
                ("host", "127.0.0.1"), ("srflx", EXTERNAL["alpha"]), ("relay", "127.0.2.2")]
            srflx = offer.candidates[1]
            assert (srflx.related_address, srflx.related_port) == ("0.0.0.0", 9)
            assert _default(incoming.request.body) == xb  # the stand-by relay is no default
            assert not w.cgns["beta"].mappings  # Dave's port is unknown before the answer
            assert len(beta.relay.list()) == 1  # Beta's stand-by relay

            answered = await incoming.accept(_answer(incoming.request.body, DAVE_HOST), SDP)
            call = await task
            await asyncio.wait_for(answered.acked.wait(), 5)

            # Beta, at the answer: PEER for THIRD_PARTY(Dave's host) towards the offer's
            # default (RFC 6887 12); the stand-by relay is gone.
            [peer] = w.cgns["beta"].mappings
            assert peer.opcode is Opcode.PEER
            assert (str(peer.internal.address), peer.internal.port) == DAVE_HOST
            assert peer.remote_peer is not None
            assert (str(peer.remote_peer.address), peer.remote_peer.port) == xb
            xd = (EXTERNAL["beta"], peer.external.port)
            assert not beta.relay.list()
            # The answer Bill gets: Dave's host and Beta's srflx, the default.
            assert _kinds(call.remote_body) == [("host", "127.0.0.1"), ("srflx", EXTERNAL["beta"])]
            assert _default(call.remote_body) == xd

            # Alpha, at the answer: the same MAP (same nonce, same external port) whose FILTER
            # now admits only Beta's mapping (RFC 6887 13.3: renewal FILTERs replace).
            [renewed] = w.cgns["alpha"].mappings
            assert (renewed.mapping_id, renewed.nonce, renewed.external) == (
                mapped.mapping_id, mapped.nonce, mapped.external)
            [only] = renewed.filters
            assert (str(only.remote_peer_address), only.remote_peer_port) == xd
            assert only.prefix_length == 128
            assert w.cgns["alpha"].plane.changes[-1].removed == (mapped,)

            # The listing shows both mappings.
            [alpha_leg] = alpha.open_legs()
            [beta_leg] = beta.open_legs()
            assert isinstance(alpha_leg, PcpOpenLeg) and isinstance(beta_leg, PcpOpenLeg)
            assert (alpha_leg.leg, alpha_leg.opcode, beta_leg.leg, beta_leg.opcode) == (
                Leg.ORIGINATING, "MAP", Leg.TERMINATING, "PEER")
            assert alpha_leg.answered and 100 < alpha_leg.lifetime_left <= 120
            text = describe_open(w.alpha)
            assert "1 call leg open" in text
            assert (f"PCP MAP internal 127.0.0.1:40000 external {xb[0]}:{xb[1]} peer "
                    f"{xd[0]}:{xd[1]}") in text
            assert "s of lifetime left" in text
            assert (alpha.mappings_opened, beta.mappings_opened) == (2, 1)
            assert alpha.fallbacks == beta.fallbacks == 0

            assert (await call.bye()).status_code == 200
            # The server drops the mapping from its table, then (a step later) its rules.
            await _until(lambda: not any(c.mappings or c.plane.rules for c in w.cgns.values()),
                         "both mappings and their rules deleted (RFC 6887 15)")
            await _until(lambda: _closed(alpha, beta), "nothing open at either operator")

    run(main())


def test_refusing_cgns_fall_back_to_the_relays_which_carry_the_datagrams(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, refuse=("alpha", "beta")) as w, AsyncExitStack() as sockets:
            alpha, beta = w.gateways()
            bill = await _socket(sockets)
            dave = await _socket(sockets)
            task, incoming = await _call(w, _offer(bill.address))
            # Alpha's MAP refused (UNSUPP_OPTION: no THIRD_PARTY here): its relay, default.
            assert _kinds(incoming.request.body) == [
                ("host", "127.0.0.1"), ("relay", "127.0.1.2"), ("relay", "127.0.2.2")]
            assert _default(incoming.request.body)[0] == "127.0.1.2"
            assert alpha.fallbacks == 1 and alpha.mappings_refused == 1
            answered = await incoming.accept(_answer(incoming.request.body, dave.address), SDP)
            call = await task
            await asyncio.wait_for(answered.acked.wait(), 5)
            # Beta's PEER refused too: its stand-by relay took the leg.
            assert beta.fallbacks == 1 and beta.mappings_refused == 1
            assert _kinds(call.remote_body) == [
                ("host", "127.0.0.1"), ("relay", "127.0.2.2"), ("relay", "127.0.1.2")]
            assert not w.cgns["alpha"].mappings and not w.cgns["beta"].mappings
            # Bill sends to the answer's default (Alpha); Dave, an ICE agent, to Beta's relay
            # candidate in the offer (the offer's default is Alpha's, facing Beta only).
            to_alpha = _default(call.remote_body)
            beta_relay = stream_endpoints(parse_sdp(incoming.request.body), 0).candidates[-1]
            to_beta = (beta_relay.address, beta_relay.port)
            await _exchange(bill, to_alpha, dave, to_beta, count=20)
            assert (await call.bye()).status_code == 200
            await _until(lambda: _closed(alpha, beta), "both relays released")

    run(main())


def test_unanswered_pcp_falls_back_within_pcp_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, silent=("beta",)) as w:
            alpha, beta = w.gateways()
            task, incoming = await _call(w, _offer(BILL_HOST))
            answered = await incoming.accept(_answer(incoming.request.body, DAVE_HOST), SDP)
            call = await task  # the 2xx waited out Beta's pcp_timeout (0.3 s), held
            await asyncio.wait_for(answered.acked.wait(), 5)
            assert beta.fallbacks == 1 and beta.mappings_refused == 1
            assert alpha.fallbacks == 0
            # Beta relays; Alpha's MAP admits Beta's relay port, the answer's default.
            [relayed] = beta.relay.list()
            assert _default(call.remote_body) == relayed.caller_side
            [mapping] = w.cgns["alpha"].mappings
            [only] = mapping.filters
            assert (str(only.remote_peer_address), only.remote_peer_port) == relayed.caller_side
            assert (await call.bye()).status_code == 200
            await _until(lambda: not w.cgns["alpha"].mappings and _closed(alpha, beta),
                         "everything released")

    run(main())


def test_failed_invite_and_refused_call_leave_nothing_mapped(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w:
            alpha, beta = w.gateways()
            # Dave's UE rejects: Alpha's MAP is deleted, Beta's stand-by relay released.
            task, incoming = await _call(w, _offer(BILL_HOST))
            assert len(w.cgns["alpha"].mappings) == 1 and len(beta.relay.list()) == 1
            incoming.reject(486)
            with pytest.raises(CallFailed):
                await task
            await _until(lambda: not w.cgns["alpha"].mappings and _closed(alpha, beta),
                         "released after the 486")
            # Dave's permission refuses: nothing was asked of Beta's CGN at all.
            w.apps["dave"].decision = "deny"
            with pytest.raises(CallFailed) as failed:
                await w.agents["bill"].ua.call(parse_uri(DAVE), extra=CALL,
                                               body=_offer(BILL_HOST), content_type=SDP)
            assert failed.value.response.status_code == 603
            await _until(lambda: not w.cgns["alpha"].mappings and _closed(alpha, beta),
                         "released after the 603")
            assert not w.cgns["beta"].added()
            assert len(w.cgns["alpha"].added()) == 2  # one MAP per call, both deleted

    run(main())


# -- relay latching (RFC 8445 section 7.2.2 checks) ---------------------------------------------


def _check(username: str, password: str | None) -> bytes:
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST,
                           attributes={"USERNAME": username, "PRIORITY": 1})
    if password is not None:
        message.add_message_integrity(password.encode())
        message.add_fingerprint()
    return bytes(message)


def test_rfc8445_7_2_2_binding_request_username_and_integrity() -> None:
    good = _check("dave:bill", "p" * 22)
    assert is_binding_request(good, b"dave:bill", b"p" * 22)
    assert is_binding_request(good, b"dave:bill")
    assert not is_binding_request(good, b"bill:dave", b"p" * 22)
    assert not is_binding_request(good, b"dave:bill", b"q" * 22)  # wrong password
    assert not is_binding_request(_check("dave:bill", None), b"dave:bill", b"p" * 22)
    assert not is_binding_request(good[:-4], b"dave:bill")  # truncated
    assert not is_binding_request(b"game datagram" * 3, b"dave:bill")
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                            attributes={"USERNAME": "dave:bill"})
    assert not is_binding_request(bytes(response), b"dave:bill")


def test_rfc8445_7_2_2_relay_port_latches_on_the_ue_check_then_only_that_source() -> None:
    table = RelayTable(RelayConfig("127.0.0.1"))
    behind = PermittedPeer("100.64.0.2", 40000, ice_username="dave:bill", ice_password="p" * 22)
    allocation = table.allocate(behind, ("127.0.0.1", 41000), 50000, 50002, 0.0, 60)
    cgn = ("127.0.0.7", 61000)  # what the relay sees of Bill: his CGN's mapping
    game = b"\x01game"
    assert table.receive(allocation.id, Side.CALLER, cgn, len(game), 1.0, game) is None
    wrong = _check("eve:bill", "p" * 22)
    assert table.receive(allocation.id, Side.CALLER, cgn, len(wrong), 1.0, wrong) is None
    # Until Bill latches, Dave's datagrams go where SDP said.
    assert table.receive(allocation.id, Side.CALLEE, ("127.0.0.1", 41000), 1, 1.0) == (
        "100.64.0.2", 40000)
    check = _check("dave:bill", "p" * 22)
    assert table.receive(allocation.id, Side.CALLER, cgn, len(check), 1.0, check) == (
        "127.0.0.1", 41000)
    assert table.receive(allocation.id, Side.CALLER, cgn, len(game), 1.0, game) is not None
    assert table.receive(allocation.id, Side.CALLEE, ("127.0.0.1", 41000), 1, 1.0) == cgn
    # Locked: the same valid check from elsewhere is dropped (no hijack, RFC 7362 section 5).
    other = ("127.0.0.8", 61000)
    assert table.receive(allocation.id, Side.CALLER, other, len(check), 1.0, check) is None
    view = table.allocation(allocation.id)
    assert view.caller_latched and view.caller_peer == cgn
    assert view.counters.dropped_at_caller_side == 3
    # The latch is reported once, for the driver's log.
    assert table.pop_latches() == (Latched(allocation.id, Side.CALLER, cgn),)
    assert table.pop_latches() == ()


def test_rfc6598_rfc1918_peers_latch_loopback_and_public_stay_exact() -> None:
    assert behind_nat("100.64.0.2") and behind_nat("10.1.2.3") and behind_nat("192.168.1.1")
    assert behind_nat("172.16.0.1") and behind_nat("fd00::1")
    assert not behind_nat("127.0.0.1") and not behind_nat("::1")
    assert not behind_nat("198.51.100.1") and not behind_nat("100.128.0.1")
    assert not behind_nat("relay.example")


def test_relay_gateway_latches_a_ue_behind_a_cgn_on_the_session_ufrags() -> None:
    async def main() -> None:
        gateway = RelayGateway.start(RelayConfig("127.0.0.1"), lifetime=60)
        try:
            bill = ("100.64.0.2", 40000)
            offer = _offer(bill)
            prepared = await gateway.prepare(_asking(_invite(offer)))
            assert isinstance(prepared, Request)
            answer = _answer(prepared.body, ("127.0.0.1", 41000))  # Dave: loopback, exact
            gateway.complete("c1@test", _ok(answer))
            [allocation] = gateway.relay.list()
            table = gateway.table
            bill_ice = _credentials(offer)
            dave_ice = _credentials(answer)
            # Bill's checks name Dave's ufrag first and are signed with Dave's password.
            check = _check(f"{dave_ice.ufrag}:{bill_ice.ufrag}", dave_ice.pwd)
            cgn = ("127.0.0.7", 61000)
            assert table.receive(allocation.id, Side.CALLER, cgn, 4, 1e9, b"data") is None
            assert table.receive(allocation.id, Side.CALLER, cgn, len(check),
                                 asyncio.get_running_loop().time(), check) == ("127.0.0.1", 41000)
            assert gateway.relay.list()[0].caller_latched
            # Dave, on loopback, is admitted exactly as SDP names him, without a check.
            assert table.receive(allocation.id, Side.CALLEE, ("127.0.0.1", 41000), 1,
                                 asyncio.get_running_loop().time()) == cgn
        finally:
            await gateway.close()

    run(main())


def _candidate(kind: CandidateType, address: tuple[str, int],
               related: tuple[str, int] | None = None) -> Candidate:
    return Candidate(candidate_foundation(kind, address[0]), 1, "UDP", candidate_priority(kind),
                     address[0], address[1], kind, *(related or (None, None)))


def test_default_behind_nat_is_a_private_host_or_a_reflexive_candidate() -> None:
    def stream(*candidates: Candidate) -> Any:
        body = serialize_sdp(build_offer(
            origin=Origin.for_address("127.0.0.1", "1"),
            credentials=IceCredentials.generate(secrets.token_bytes), candidates=candidates))
        return stream_endpoints(parse_sdp(body), 0)

    host = _candidate(CandidateType.HOST, ("100.64.0.2", 40000))
    srflx = _candidate(CandidateType.SRFLX, ("198.51.100.1", 61000), ("100.64.0.2", 40000))
    assert default_behind_nat(stream(host))  # RFC 6598 address
    # RFC 8445 5.1.4 makes the srflx the default: the CGN's mapping towards the STUN server,
    # which an endpoint-dependent CGN does not reuse towards the relay (RFC 4787 4.1).
    assert stream(host, srflx).default.address == "198.51.100.1"
    assert default_behind_nat(stream(host, srflx))
    assert not default_behind_nat(stream(_candidate(CandidateType.HOST, ("127.0.0.1", 40000))))
    assert not default_behind_nat(stream(_candidate(CandidateType.HOST, ("192.0.2.7", 40000))))
    # Another operator's relay port sends from the port it announced: exact.
    relay = _candidate(CandidateType.RELAY, ("192.0.2.11", 50000), ("0.0.0.0", 9))
    assert stream(host, srflx, relay).default.address == "192.0.2.11"
    assert not default_behind_nat(stream(host, srflx, relay))


class _Mapped(asyncio.DatagramProtocol):
    """One external port of `SymmetricNat`: admits only its destination (RFC 4787 section 5,
    address and port-dependent filtering) and hands what it admits to the UE."""

    def __init__(self, destination: tuple[str, int],
                 inside: asyncio.Queue[tuple[bytes, tuple[str, int]]]) -> None:
        self.destination = destination
        self.inside = inside
        self.transport: asyncio.DatagramTransport | None = None
        self.filtered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's UDP transport is a DatagramTransport in behaviour, not by class.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        source = (str(addr[0]), addr[1])
        if source == self.destination:
            self.inside.put_nowait((data, source))
        else:
            self.filtered += 1


class SymmetricNat:
    """A UE behind an endpoint-dependent ("symmetric") CGN, on loopback: each destination the
    UE sends to gets its own port on `public` (RFC 4787 section 4.1, address and
    port-dependent mapping), as the testbed's nftables CGN with fully random ports does."""

    def __init__(self, stack: AsyncExitStack, public: str) -> None:
        self.stack = stack
        self.public = public
        self.ports: dict[tuple[str, int], _Mapped] = {}
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    async def mapping(self, destination: tuple[str, int]) -> tuple[str, int]:
        """The external endpoint towards `destination` (made on first use)."""
        mapped = self.ports.get(destination)
        if mapped is None:
            _, mapped = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Mapped(destination, self.received), local_addr=(self.public, 0))
            assert mapped.transport is not None
            self.stack.callback(mapped.transport.close)
            self.ports[destination] = mapped
        assert mapped.transport is not None
        return self.public, int(mapped.transport.get_extra_info("sockname")[1])

    async def send(self, data: bytes, to: tuple[str, int]) -> None:
        await self.mapping(to)
        transport = self.ports[to].transport
        assert transport is not None
        transport.sendto(data, to)

    async def take(self, count: int, timeout: float = 5.0) -> list[bytes]:
        return [(await asyncio.wait_for(self.received.get(), timeout))[0] for _ in range(count)]


def _behind_cgn(nat_srflx: tuple[str, int], credentials: IceCredentials,
                offer: bytes | None = None) -> bytes:
    """A UE's description as the testbed's UEs write it: host 100.64.0.2 (RFC 6598) and the
    server reflexive candidate a STUN server saw, the default (RFC 8445 section 5.1.4)."""
    candidates = [_candidate(CandidateType.HOST, (UE_HOST, 40000)),
                  _candidate(CandidateType.SRFLX, nat_srflx, (UE_HOST, 40000))]
    origin = Origin.for_address(UE_HOST, "1")
    if offer is None:
        return serialize_sdp(build_offer(origin=origin, credentials=credentials,
                                         candidates=candidates))
    return serialize_sdp(build_answer(parse_sdp(offer), origin=origin, credentials=credentials,
                                      candidates=candidates))


UE_HOST = "100.64.0.2"
STUN_SERVER = ("127.0.0.53", 3478)  # nothing listens: only the NAT's mapping towards it counts


def test_rfc7362_relays_latch_ues_whose_default_is_their_stun_mapping_of_a_symmetric_cgn(
        tmp_path: Path) -> None:
    """Regression (testbed proof c): both CGNs refuse PCP, both operators relay, and each UE's
    default is its srflx candidate, the mapping its endpoint-dependent CGN made towards the
    STUN server. Each UE reaches its operator's relay from another port of the CGN, so a relay
    admitting the srflx exactly dropped every datagram; it must latch on the UE's check."""

    async def main() -> None:
        async with world(tmp_path, refuse=("alpha", "beta")) as w, AsyncExitStack() as stack:
            alpha, beta = w.gateways()
            bill = SymmetricNat(stack, EXTERNAL["alpha"])
            dave = SymmetricNat(stack, EXTERNAL["beta"])
            bill_ice = IceCredentials.generate(secrets.token_bytes)
            dave_ice = IceCredentials.generate(secrets.token_bytes)
            bill_srflx = await bill.mapping(STUN_SERVER)
            dave_srflx = await dave.mapping(STUN_SERVER)
            task, incoming = await _call(w, _behind_cgn(bill_srflx, bill_ice))
            answer = _behind_cgn(dave_srflx, dave_ice, incoming.request.body)
            answered = await incoming.accept(answer, SDP)
            call = await task
            await asyncio.wait_for(answered.acked.wait(), 5)
            assert alpha.fallbacks == beta.fallbacks == 1
            to_alpha = _default(call.remote_body)  # Alpha's relay, caller side
            beta_relay = stream_endpoints(parse_sdp(incoming.request.body), 0).candidates[-1]
            to_beta = (beta_relay.address, beta_relay.port)  # Beta's relay, callee side
            assert to_alpha[0] == "127.0.1.2" and to_beta[0] == "127.0.2.2"

            # The ICE checks (RFC 8445 7.2.2: "<receiver's ufrag>:<sender's ufrag>", signed
            # with the receiver's password) latch each relay port facing a UE.
            await bill.send(_check(f"{dave_ice.ufrag}:{bill_ice.ufrag}", dave_ice.pwd), to_alpha)
            await _until(lambda: alpha.relay.list()[0].caller_latched, "Alpha latched Bill")
            await dave.send(_check(f"{bill_ice.ufrag}:{dave_ice.ufrag}", bill_ice.pwd), to_beta)
            [from_dave] = await bill.take(1)  # relayed by Beta, then Alpha, to Bill's latch
            assert is_binding_request(from_dave, f"{bill_ice.ufrag}:{dave_ice.ufrag}".encode())
            [alpha_leg] = alpha.relay.list()
            [beta_leg] = beta.relay.list()
            assert alpha_leg.caller_peer == await bill.mapping(to_alpha) != bill_srflx
            assert beta_leg.callee_latched
            assert beta_leg.callee_peer == await dave.mapping(to_beta) != dave_srflx
            # The relays face each other exactly (each sends from the port it announced).
            assert not alpha_leg.callee_latched and not beta_leg.caller_latched

            for n in range(20):
                await bill.send(b"a %d" % n, to_alpha)
            assert sorted(await dave.take(20)) == sorted(b"a %d" % n for n in range(20))
            for n in range(20):
                await dave.send(b"b %d" % n, to_beta)
            assert sorted(await bill.take(20)) == sorted(b"b %d" % n for n in range(20))
            [alpha_leg] = alpha.relay.list()
            counters = alpha_leg.counters
            assert (counters.caller_to_callee_datagrams, counters.callee_to_caller_datagrams,
                    counters.dropped_unpermitted) == (21, 21, 0)
            assert (await call.bye()).status_code == 200
            await _until(lambda: _closed(alpha, beta), "both relays released")

    run(main())


def _credentials(body: bytes) -> IceCredentials:
    credentials = stream_endpoints(parse_sdp(body), 0).credentials
    assert credentials is not None
    return credentials


# -- configuration ------------------------------------------------------------------------------


def test_gateway_pcp_config_keys(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    config = parse_config(_gateway_config(
        tmp_path, '[gateway]\nmode = "pcp"\npcp_server = "198.51.100.1"\n'), path)
    assert config.gateway is not None
    assert (config.gateway.pcp_server is not None and str(config.gateway.pcp_server)
            == "198.51.100.1:5351")
    assert (config.gateway.pcp_lifetime, config.gateway.pcp_timeout) == (120, 3.0)
    config = parse_config(_gateway_config(
        tmp_path, '[gateway]\nmode = "pcp"\npcp_server = "[::1]:6000"\npcp_lifetime = 60\n'
        "pcp_timeout = 0.5\n"), path)
    assert config.gateway is not None and str(config.gateway.pcp_server) == "[::1]:6000"
    assert (config.gateway.pcp_lifetime, config.gateway.pcp_timeout) == (60, 0.5)
    for bad, word in (('mode = "pcp"', "pcp_server.*missing"),
                      ('mode = "pcp"\npcp_server = "cgn.example"', "not an IP address"),
                      ('mode = "pcp"\npcp_server = "0.0.0.0"', "unspecified"),
                      ('mode = "pcp"\npcp_server = "1.2.3.4"\npcp_timeout = 0', "out of range"),
                      ('mode = "pcp"\npcp_server = "1.2.3.4"\npcp_lifetime = 1.5',
                       "not an integer"),
                      ('pcp_server = "1.2.3.4"', 'mode "pcp" only'),
                      ('mode = "relay"\npcp_timeout = 2', 'mode "pcp" only'),
                      ('mode = "pcp"\npcp_server = "1.2.3.4"\npcp_lifetme = 5', "did you mean")):
        with pytest.raises(ConfigError, match=word):
            parse_config(_gateway_config(tmp_path, f"[gateway]\n{bad}\n"), path)


def test_rfc4028_session_expiry_and_close_delete_the_mappings() -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            cgn = await _cgn(stack, "alpha")
            config = PcpGatewayConfig("127.0.0.1", cgn.server.port, lifetime=120, timeout=0.5)
            gateway = await PcpGateway.start(config, RelayConfig("127.0.1.2"), lifetime=60)
            stack.push_async_callback(gateway.close)
            # A session of 1 s (Session-Expires) that nobody refreshes: released at expiry.
            short = _invite(_offer(BILL_HOST), extra="Session-Expires: 1\r\n")
            assert isinstance(await gateway.prepare(_asking(short)), Request)
            assert len(cgn.mappings) == 1
            await asyncio.sleep(0.6)
            await gateway.refresh(_invite(b""))  # RFC 4028 section 10: starts again
            await asyncio.sleep(0.6)
            assert len(cgn.mappings) == 1
            await _until(lambda: not cgn.mappings and not gateway.open_legs(),
                         "deleted at session expiry", timeout=2)
            # What is still mapped when the gateway closes is deleted too.
            other = _invite(_offer(("127.0.0.1", 40004))).with_headers(
                _invite(b"").headers.replaced("Call-ID", ["c2@test"]))
            assert isinstance(await gateway.prepare(_asking(other)), Request)
            assert len(cgn.mappings) == 1
            await gateway.close()
            assert not cgn.mappings

    run(main())
