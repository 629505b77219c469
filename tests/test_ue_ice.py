"""The UE's ICE agent (ue_ua.ice) on 127.0.0.1: two agents, a tiny UDP forwarder standing in
for an operator relay, a silent socket, a tiny STUN server. RFC 8445, RFC 7675, RFC 8839."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aioice
import pytest
from aioice import stun

from ims.sdp import Candidate, CandidateType, candidate_foundation, candidate_priority
from ue_ua.errors import ConnectionClosed, ConnectivityFailed, UeUsageError
from ue_ua.ice import (
    IceAgent,
    Path,
    PathChanged,
    TransportPolicy,
    from_aioice,
    to_aioice,
    usable_remote_candidates,
)

LOOPBACK = "127.0.0.1"


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


def candidate(kind: str, host: str, port: int, transport: str = "UDP") -> Candidate:
    related = {} if kind == CandidateType.HOST else {"related_address": "0.0.0.0",
                                                       "related_port": 9}
    return Candidate(candidate_foundation(kind, host), 1, transport, candidate_priority(kind),
                     host, port, kind, **related)  # type: ignore[arg-type]


async def pair(policy_a: TransportPolicy = "all", policy_b: TransportPolicy = "all",
               **kwargs: Any) -> tuple[IceAgent, IceAgent]:
    a = IceAgent(controlling=True, bind_host=LOOPBACK, policy=policy_a, **kwargs)
    b = IceAgent(controlling=False, bind_host=LOOPBACK, policy=policy_b, **kwargs)
    await a.gather()
    await b.gather()
    return a, b


class Forwarder(asyncio.DatagramProtocol):
    """An operator relay in miniature: what reaches one port leaves from the other, to the
    one peer that port's far side permits (the relay of ims/gateway, without the SDP)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.other: Forwarder | None = None
        self.peer: tuple[str, int] | None = None
        self.count = 0
        self.closed = False  # the path is not open yet: what the permitted peer sends is lost
        self.dropped = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr != self.peer or self.other is None or self.other.transport is None:
            return  # only the permitted peer gets through
        if self.closed:
            self.dropped.set()
            return
        self.count += 1
        assert self.other.peer is not None
        self.other.transport.sendto(data, self.other.peer)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port


async def relay_between(a: tuple[str, int], b: tuple[str, int]) -> tuple[Forwarder, Forwarder]:
    """Two ports: `facing_a` admits only a, `facing_b` only b."""
    loop = asyncio.get_running_loop()
    _, facing_a = await loop.create_datagram_endpoint(Forwarder, local_addr=(LOOPBACK, 0))
    _, facing_b = await loop.create_datagram_endpoint(Forwarder, local_addr=(LOOPBACK, 0))
    facing_a.peer, facing_b.peer = a, b
    facing_a.other, facing_b.other = facing_b, facing_a
    return facing_a, facing_b


async def close_all(agents: tuple[IceAgent, ...], relays: tuple[Forwarder, ...]) -> None:
    for agent in agents:
        await agent.close()
    for side in relays:
        assert side.transport is not None
        side.transport.close()


def host_of(agent: IceAgent) -> tuple[str, int]:
    (local,) = agent.local_candidates
    return local.address, local.port


# -- candidates ---------------------------------------------------------------------------------


def test_local_candidates_only_on_bind_host() -> None:
    # The network rule: aioice's own gathering would bind every interface of the machine.
    async def main() -> None:
        agent = IceAgent(controlling=True, bind_host=LOOPBACK)
        gathered = await agent.gather()
        assert [(c.address, c.type) for c in gathered] == [(LOOPBACK, "host")]
        assert gathered[0].priority == candidate_priority(CandidateType.HOST)
        await agent.close()

    run(main())


def test_bind_host_and_policy_are_checked() -> None:
    with pytest.raises(UeUsageError, match="not an IP address"):
        IceAgent(controlling=True, bind_host="localhost")
    with pytest.raises(UeUsageError, match="transport policy"):
        IceAgent(controlling=True, bind_host=LOOPBACK, policy="turn")  # type: ignore[arg-type]


def test_sdp_candidates_convert_both_ways() -> None:
    relay = candidate(CandidateType.RELAY, "127.0.1.1", 40000)
    converted = to_aioice(relay)
    assert converted is not None
    assert (converted.host, converted.port, converted.type) == ("127.0.1.1", 40000, "relay")
    assert (converted.related_address, converted.related_port) == ("0.0.0.0", 9)
    assert from_aioice(converted) == relay
    own = aioice.Candidate("f" * 32, 1, "udp", 2130706431, LOOPBACK, 5000, "host")
    assert from_aioice(own).transport == "UDP" and from_aioice(own).type == "host"


def test_rfc8839_5_1_fqdn_and_tcp_candidates_are_ignored() -> None:
    fqdn = candidate(CandidateType.HOST, "ue.example.org", 5000)
    tcp = candidate(CandidateType.HOST, LOOPBACK, 5000, transport="TCP")
    assert to_aioice(fqdn) is None and to_aioice(tcp) is None
    assert usable_remote_candidates([fqdn, tcp], "all") == ()


def test_relay_policy_keeps_only_relay_candidates() -> None:
    host = candidate(CandidateType.HOST, LOOPBACK, 5000)
    srflx = candidate(CandidateType.SRFLX, "127.0.0.9", 5001)
    relay = candidate(CandidateType.RELAY, "127.0.1.1", 5002)
    assert usable_remote_candidates([host, srflx, relay], "all") == (host, srflx, relay)
    assert usable_remote_candidates([host, srflx, relay], "relay") == (relay,)


class StunServer(asyncio.DatagramProtocol):
    """Answers Binding requests with a fixed XOR-MAPPED-ADDRESS, as a CGN's public side would
    look to a STUN server (RFC 8489 section 14.2)."""

    def __init__(self, mapped: tuple[str, int]) -> None:
        self.mapped = mapped
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = stun.parse_message(data)
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = self.mapped
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)


def test_stun_server_gives_a_server_reflexive_candidate() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: StunServer(("127.0.0.9", 40404)), local_addr=(LOOPBACK, 0))
        server = transport.get_extra_info("sockname")[:2]
        agent = IceAgent(controlling=True, bind_host=LOOPBACK, stun_server=server)
        gathered = await agent.gather()
        host, srflx = gathered
        assert host.type == "host" and host.address == LOOPBACK
        # RFC 8839 section 5.1: a srflx candidate carries its base as raddr/rport.
        assert (srflx.type, srflx.address, srflx.port) == ("srflx", "127.0.0.9", 40404)
        assert (srflx.related_address, srflx.related_port) == (host.address, host.port)
        await agent.close()
        transport.close()

    run(main())


# -- checks -------------------------------------------------------------------------------------


def test_two_agents_connect_directly_and_carry_datagrams() -> None:
    async def main() -> None:
        a, b = await pair()
        await a.set_remote(b.credentials, b.local_candidates)
        await b.set_remote(a.credentials, a.local_candidates)
        path_a, path_b = await asyncio.gather(a.connect(5), b.connect(5))
        assert path_a == Path("direct", host_of(a), host_of(b))
        assert path_b == Path("direct", host_of(b), host_of(a))
        for i in range(50):
            await a.send(b"ping %d" % i)
            assert await b.recv() == b"ping %d" % i
            await b.send(b"pong %d" % i)
            assert await a.recv() == b"pong %d" % i
        await a.close()
        await b.close()
        with pytest.raises(ConnectionClosed, match="closed locally"):
            await a.recv()
        with pytest.raises(ConnectionClosed):
            await b.send(b"late")

    run(main())


def test_path_kind_relay_when_the_selected_remote_candidate_is_a_relay() -> None:
    async def main() -> None:
        a, b = await pair("relay", "relay")
        facing_a, facing_b = await relay_between(host_of(a), host_of(b))
        # Each side learns the relay port facing it, as the operators' SDP additions say.
        kept_a = await a.set_remote(b.credentials, [
            *b.local_candidates, candidate(CandidateType.RELAY, *facing_a.address)])
        kept_b = await b.set_remote(a.credentials, [
            *a.local_candidates, candidate(CandidateType.RELAY, *facing_b.address)])
        assert [c.type for c in kept_a] == [c.type for c in kept_b] == ["relay"]
        path_a, path_b = await asyncio.gather(a.connect(5), b.connect(5))
        assert path_a == Path("relay", host_of(a), facing_a.address)
        assert path_b == Path("relay", host_of(b), facing_b.address)
        before = facing_a.count
        await a.send(b"through the relay")
        assert await b.recv() == b"through the relay"
        assert facing_a.count == before + 1
        await close_all((a, b), (facing_a, facing_b))

    run(main())


def test_relay_policy_answers_no_check_from_outside_the_relays() -> None:
    # b (policy all) knows a's host candidate and would win a direct pair; a (policy relay)
    # does not answer b's direct checks, so the only pair is through the relay.
    async def main() -> None:
        a, b = await pair("relay", "all")
        facing_a, facing_b = await relay_between(host_of(a), host_of(b))
        await a.set_remote(b.credentials, [
            *b.local_candidates, candidate(CandidateType.RELAY, *facing_a.address)])
        await b.set_remote(a.credentials, [
            *a.local_candidates, candidate(CandidateType.RELAY, *facing_b.address)])
        path_a, path_b = await asyncio.gather(a.connect(5), b.connect(5))
        assert path_a.kind == "relay" and path_b.kind == "relay"
        assert path_b.remote == facing_b.address
        await close_all((a, b), (facing_a, facing_b))

    run(main())


def test_rfc8445_7_3_1_4_a_check_on_an_in_progress_pair_triggers_a_check_at_once() -> None:
    # The testbed's case: the callee checks before the path is open (the caller's operator has
    # not opened it yet), so its first check is lost. When the caller's nominating check then
    # arrives on that pair, the callee checks again at once (a triggered check) instead of
    # waiting for its retransmission (RTO 500 ms, RFC 8489 section 6.2.1).
    async def main() -> None:
        caller, callee = await pair("relay", "relay")  # controlling, controlled
        facing_callee, facing_caller = await relay_between(host_of(callee), host_of(caller))
        await callee.set_remote(caller.credentials, [
            candidate(CandidateType.RELAY, *facing_callee.address)])
        await caller.set_remote(callee.credentials, [
            candidate(CandidateType.RELAY, *facing_caller.address)])
        facing_callee.closed = True
        checking = asyncio.ensure_future(callee.connect(5))
        await asyncio.wait_for(facing_callee.dropped.wait(), 2)  # its first check is lost
        facing_callee.closed = False  # the path opens
        opened = time.monotonic()
        path = await caller.connect(5)
        assert (await checking).kind == path.kind == "relay"
        waited = time.monotonic() - opened
        # Without the triggered check the callee completes only with its retransmission,
        # RETRY_RTO after its lost first check.
        assert waited < 0.4 * stun.RETRY_RTO, f"{waited * 1000:.0f} ms after the path opened"
        await close_all((callee, caller), (facing_callee, facing_caller))

    run(main())


def test_bounded_setup_names_the_pairs_tried() -> None:
    async def main() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind((LOOPBACK, 0))
        try:
            a = IceAgent(controlling=True, bind_host=LOOPBACK)
            await a.gather()
            peer = IceAgent(controlling=False, bind_host=LOOPBACK)  # only for credentials
            await a.set_remote(peer.credentials,
                               [candidate(CandidateType.HOST, *silent.getsockname())])
            began = time.monotonic()
            with pytest.raises(ConnectivityFailed, match=r"1 of 1 pairs tried") as caught:
                await a.connect(0.5)
            assert 0.4 < time.monotonic() - began < 2.0
            assert (caught.value.pairs_tried, caught.value.pairs_total) == (1, 1)
            assert a.closed
        finally:
            silent.close()

    run(main())


def test_relay_policy_without_relay_candidates_fails_at_once() -> None:
    async def main() -> None:
        a, b = await pair("relay")
        await a.set_remote(b.credentials, b.local_candidates)
        began = time.monotonic()
        with pytest.raises(ConnectivityFailed, match="no usable candidate of type relay"):
            await a.connect(5)
        assert time.monotonic() - began < 1.0
        await b.close()

    run(main())


def test_connect_needs_gather_and_remote() -> None:
    async def main() -> None:
        a = IceAgent(controlling=True, bind_host=LOOPBACK)
        with pytest.raises(UeUsageError, match="gather"):
            await a.connect(1)
        await a.gather()
        with pytest.raises(UeUsageError, match="set_remote"):
            await a.connect(1)
        await a.close()

    run(main())


# -- consent freshness (RFC 7675) ----------------------------------------------------------------


async def connected(**kwargs: Any) -> tuple[IceAgent, IceAgent]:
    a, b = await pair(**kwargs)
    await a.set_remote(b.credentials, b.local_candidates)
    await b.set_remote(a.credentials, a.local_candidates)
    await asyncio.gather(a.connect(5), b.connect(5))
    return a, b


def collector() -> tuple[list[PathChanged], Callable[[PathChanged], None]]:
    seen: list[PathChanged] = []
    return seen, seen.append


def test_rfc7675_5_1_consent_lost_when_the_peer_stops_answering() -> None:
    async def main() -> None:
        a, b = await connected(consent_interval=0.05, consent_timeout=0.2)
        seen, handler = collector()
        a.on_path_change = handler
        pending = asyncio.ensure_future(a.recv())
        await b.close()  # the peer vanishes: its socket is gone, nobody answers
        with pytest.raises(ConnectionClosed, match="consent lost"):
            await asyncio.wait_for(pending, 3)
        assert seen == [PathChanged(None, None, seen[0].reason)]
        assert "RFC 7675" in seen[0].reason
        assert a.closed and a.path is None

    run(main())


def test_rfc7675_5_1_consent_kept_while_the_peer_answers() -> None:
    async def main() -> None:
        a, b = await connected(consent_interval=0.05, consent_timeout=0.2)
        seen, handler = collector()
        a.on_path_change = handler
        await asyncio.sleep(0.6)  # about a dozen consent checks, all answered
        assert seen == [] and not a.closed
        await a.send(b"still here")
        assert await b.recv() == b"still here"
        await a.close()
        await b.close()

    run(main())


def test_rfc7675_consent_settings_are_checked() -> None:
    with pytest.raises(UeUsageError, match="consent"):
        IceAgent(controlling=True, bind_host=LOOPBACK, consent_interval=1, consent_timeout=0.5)
