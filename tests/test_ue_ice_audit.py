"""What the UE's connection accepts (ue_ua.ice, ue_ua.connection), on 127.0.13.1: two real
aioice-based agents, plus a stranger's socket, a peer that moved and a slow path.
RFC 8445 sections 8.1.1 and 12.1, RFC 7675 section 5.1, RFC 7983 section 7."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable
from itertools import pairwise
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aioice import stun

from ims.sdp import (
    Candidate,
    CandidateType,
    IceCredentials,
    candidate_foundation,
    candidate_priority,
)
from ims.sip.useragent import Call
from ue_ua.connection import Connection, SetupTimings
from ue_ua.errors import ConnectionClosed
from ue_ua.ice import IceAgent, Path, PathChanged

LOOPBACK = "127.0.13.1"


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


async def connected(**kwargs: Any) -> tuple[IceAgent, IceAgent]:
    """a controlling, b controlled, directly connected on LOOPBACK."""
    a = IceAgent(controlling=True, bind_host=LOOPBACK, **kwargs)
    b = IceAgent(controlling=False, bind_host=LOOPBACK, **kwargs)
    await a.gather()
    await b.gather()
    await a.set_remote(b.credentials, b.local_candidates)
    await b.set_remote(a.credentials, a.local_candidates)
    await asyncio.gather(a.connect(5), b.connect(5))
    return a, b


def local_of(agent: IceAgent) -> tuple[str, int]:
    assert agent.path is not None
    return agent.path.local


def stranger() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    return sock


async def nothing_more(agent: IceAgent) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(agent.recv(), 0.2)


# -- what recv() delivers (RFC 8445 section 12.1) ---------------------------------------------


def test_rfc8445_12_1_a_strangers_datagrams_do_not_reach_recv_and_are_counted() -> None:
    # Someone who learnt the UE's mapped address and port sends to it: only the peer's
    # datagrams (the remote address of a pair of this session) reach the game.
    async def main() -> None:
        a, b = await connected()
        other = stranger()
        try:
            for i in range(3):
                other.sendto(b"injected %d" % i, local_of(b))
            await a.send(b"one")
            other.sendto(b"injected 3", local_of(b))
            other.sendto(b"injected 4", local_of(a))
            await a.send(b"two")
            assert await asyncio.wait_for(b.recv(), 2) == b"one"
            assert await asyncio.wait_for(b.recv(), 2) == b"two"
            await b.send(b"three")
            assert await asyncio.wait_for(a.recv(), 2) == b"three"
            await nothing_more(b)
            assert (b.dropped_unvalidated, a.dropped_unvalidated) == (4, 1)
        finally:
            other.close()
            await a.close()
            await b.close()

    run(main())


def test_a_stranger_sending_from_the_peers_address_but_another_port_is_dropped() -> None:
    # The 5-tuple counts, not the host: another port of the peer's address is not its pair.
    async def main() -> None:
        a, b = await connected()
        other = stranger()  # same address as a (LOOPBACK), another port
        try:
            assert other.getsockname()[0] == local_of(a)[0]
            other.sendto(b"same host, other port", local_of(b))
            await a.send(b"from the pair")
            assert await asyncio.wait_for(b.recv(), 2) == b"from the pair"
            assert b.dropped_unvalidated == 1
        finally:
            other.close()
            await a.close()
            await b.close()

    run(main())


def test_malformed_stun_from_a_stranger_is_dropped_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # First byte 0, magic cookie, a PRIORITY attribute one byte long: aioice's parser raises
    # struct.error (not ValueError) on it, which escaped from datagram_received into asyncio's
    # exception handler once per datagram.
    malformed = bytes.fromhex("000100082112a4427474747474747474747474740024000100000000")

    async def main() -> None:
        a, b = await connected()
        other = stranger()
        try:
            for _ in range(3):
                other.sendto(malformed, local_of(b))
            await a.send(b"after")
            assert await asyncio.wait_for(b.recv(), 2) == b"after"
            assert b.dropped_unvalidated == 3
        finally:
            other.close()
            await a.close()
            await b.close()

    with caplog.at_level(logging.ERROR):
        run(main())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# -- what is STUN (RFC 7983 section 7) ----------------------------------------------------------


@pytest.mark.parametrize("datagram", [
    b"\x40\x01\x00\x00" + b"game payload 16B",  # parses as a Binding request if bits 14-15 ignored
    b"\xc1\x01\x00\x00" + b"game payload 16B",  # ... as a Binding success response
    b"\x00\x01\x00\x00" + b"no magic cookie!",  # first byte 0 but no magic cookie (RFC 8489 6)
    b"UG\x01\x02\x00\x00\x00\x07",  # the demo game's own header
])
def test_rfc7983_7_only_a_first_byte_0_to_3_with_the_magic_cookie_is_stun(
    datagram: bytes,
) -> None:
    # aioice took a datagram for STUN whenever it parsed, whatever its first byte and cookie:
    # such game datagrams were swallowed (a Binding "request" even got a 400 back).
    async def main() -> None:
        a, b = await connected()
        try:
            await a.send(datagram)
            assert await asyncio.wait_for(b.recv(), 2) == datagram
        finally:
            await a.close()
            await b.close()

    run(main())


# -- the selected pair changes (RFC 8445 section 8.1.1) -----------------------------------------


class MovedPeer(asyncio.DatagramProtocol):
    """The controlling peer seen from a new address and port (say its NAT rebound): it sends
    an authenticated nominating check (USE-CANDIDATE, RFC 8445 section 7.3.1.5) and answers
    the triggered check with its own password, as a full ICE agent would."""

    def __init__(self, own: IceCredentials, remote: IceCredentials) -> None:
        self.own = own  # the peer's credentials: its responses are signed with its password
        self.remote = remote  # the agent checked: requests to it are signed with its password
        self.transport: asyncio.DatagramTransport | None = None
        self.data: asyncio.Queue[bytes] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def nominate(self, agent_address: tuple[str, int]) -> None:
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{self.remote.ufrag}:{self.own.ufrag}"
        request.attributes["PRIORITY"] = candidate_priority(CandidateType.PRFLX)
        request.attributes["ICE-CONTROLLING"] = 2**63
        request.attributes["USE-CANDIDATE"] = None
        request.add_message_integrity(self.remote.pwd.encode())
        assert self.transport is not None
        self.transport.sendto(bytes(request), agent_address)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
            self.data.put_nowait(data)
            return
        if message.message_class == stun.Class.REQUEST:
            response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                    transaction_id=message.transaction_id)
            response.attributes["XOR-MAPPED-ADDRESS"] = addr
            response.add_message_integrity(self.own.pwd.encode())
            assert self.transport is not None
            self.transport.sendto(bytes(response), addr)


def test_rfc8445_8_1_1_a_path_change_is_reported_when_the_selected_pair_changes() -> None:
    # aioice selects a pair nominated after completion without telling: `path` went stale and
    # no PathChanged came, while the datagrams already left on the new pair.
    async def main() -> None:
        a, b = await connected()
        seen: list[PathChanged] = []
        b.on_path_change = seen.append
        loop = asyncio.get_running_loop()
        _, moved = await loop.create_datagram_endpoint(
            lambda: MovedPeer(a.credentials, b.credentials), local_addr=(LOOPBACK, 0))
        try:
            moved.nominate(local_of(b))
            for _ in range(100):  # bounded: 2 s
                if seen:
                    break
                await asyncio.sleep(0.02)
            new = Path("direct", local_of(b), moved.address)
            assert seen, "no PathChanged after the peer nominated another pair"
            assert seen == [PathChanged("direct", new, seen[0].reason)]
            assert "RFC 8445" in seen[0].reason
            assert b.path == new and not b.closed
            await b.send(b"to the new address")
            assert await asyncio.wait_for(moved.data.get(), 2) == b"to the new address"
            assert moved.transport is not None
            moved.transport.sendto(b"from the new address", local_of(b))
            assert await asyncio.wait_for(b.recv(), 2) == b"from the new address"
            await a.send(b"from the first pair, still valid")
            assert await asyncio.wait_for(b.recv(), 2) == b"from the first pair, still valid"
            assert b.dropped_unvalidated == 0
        finally:
            assert moved.transport is not None
            moved.transport.close()
            await a.close()
            await b.close()

    run(main())


class QuietCall:
    """Stands in for the SIP dialog (ims.sip.useragent.Call) the Connection ends with a BYE:
    the real one needs both operators, which this file does not start."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.dialog = SimpleNamespace(id=SimpleNamespace(call_id="t5-audit@127.0.13.1"))
        self.byes = 0

    async def bye(self) -> Any:
        self.byes += 1
        self.ended.set()
        return type("Response", (), {"status_code": 200, "reason": "OK"})()


def test_connection_reports_the_path_change_and_the_dropped_count() -> None:
    async def main() -> None:
        a, b = await connected()
        assert b.path is not None
        call = QuietCall()
        conn = Connection(call=cast(Call, call), ice=b, path=b.path, setup_ms=1.0,
                          timings=SetupTimings(0.0, 0.0, 0.0), peer="tel:+15550100001",
                          role="callee")
        loop = asyncio.get_running_loop()
        _, moved = await loop.create_datagram_endpoint(
            lambda: MovedPeer(a.credentials, b.credentials), local_addr=(LOOPBACK, 0))
        other = stranger()
        try:
            other.sendto(b"injected", local_of(b))
            moved.nominate(local_of(b))
            event = await asyncio.wait_for(conn.path_changes.get(), 2)
            assert event.path == conn.path == Path("direct", local_of(b), moved.address)
            assert not conn.closed
            assert conn.dropped_unvalidated == 1
        finally:
            other.close()
            assert moved.transport is not None
            moved.transport.close()
            await conn.close()
            await a.close()
        assert conn.closed and b.closed and call.byes == 1

    run(main())


# -- consent freshness (RFC 7675 section 5.1) ---------------------------------------------------


def test_rfc7675_5_1_consent_expires_consent_timeout_after_the_last_answered_check() -> None:
    # aioice counted ceil(timeout / interval) failed checks of 500 ms each: with a 0.5 s
    # timeout and 50 ms checks, consent ended about 5.5 s after the peer went, not 0.5 s.
    async def main() -> None:
        a, b = await connected(consent_interval=0.05, consent_timeout=0.5)
        lost = asyncio.Event()
        a.on_path_change = lambda event: lost.set()
        await asyncio.sleep(0.2)  # a few answered checks
        await b.close()  # the peer is gone; its last answered check was sent < 60 ms ago
        gone = time.monotonic()
        await asyncio.wait_for(lost.wait(), 3)
        waited = time.monotonic() - gone
        assert 0.5 - 0.06 - 0.02 <= waited <= 0.5 + 0.3, f"consent lost after {waited:.3f} s"
        with pytest.raises(ConnectionClosed, match="consent lost"):
            await a.send(b"no more")

    run(main())


class SlowPath(asyncio.DatagramProtocol):
    """One side of a path whose delay can be raised (a loaded cellular link): what reaches
    this port leaves from the other side to the one peer it serves, `delay` seconds later."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.other: SlowPath | None = None
        self.peer: tuple[str, int] | None = None
        self.delay = 0.0
        self.arrivals: list[tuple[float, bytes]] = []  # (loop time, datagram) from the peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr != self.peer or self.other is None:
            return
        loop = asyncio.get_running_loop()
        self.arrivals.append((loop.time(), data))
        loop.call_later(self.delay, self.other.forward, data)

    def forward(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            assert self.peer is not None
            self.transport.sendto(data, self.peer)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port


def relay_candidate(address: tuple[str, int]) -> Candidate:
    return Candidate(candidate_foundation(CandidateType.RELAY, address[0]), 1, "UDP",
                     candidate_priority(CandidateType.RELAY), address[0], address[1],
                     CandidateType.RELAY, related_address="0.0.0.0", related_port=9)


async def through_slow_path(**settings: Any) -> tuple[IceAgent, IceAgent, SlowPath, SlowPath]:
    """a and b connected (policy relay) through a SlowPath each side sees as the other's relay
    candidate; `facing_a` hears a, `facing_b` hears b."""
    loop = asyncio.get_running_loop()
    a = IceAgent(controlling=True, bind_host=LOOPBACK, policy="relay", **settings)
    b = IceAgent(controlling=False, bind_host=LOOPBACK, policy="relay", **settings)
    await a.gather()
    await b.gather()
    _, facing_a = await loop.create_datagram_endpoint(SlowPath, local_addr=(LOOPBACK, 0))
    _, facing_b = await loop.create_datagram_endpoint(SlowPath, local_addr=(LOOPBACK, 0))
    (a_host,), (b_host,) = a.local_candidates, b.local_candidates
    facing_a.peer, facing_b.peer = (a_host.address, a_host.port), (b_host.address, b_host.port)
    facing_a.other, facing_b.other = facing_b, facing_a
    await a.set_remote(b.credentials, [relay_candidate(facing_a.address)])
    await b.set_remote(a.credentials, [relay_candidate(facing_b.address)])
    await asyncio.gather(a.connect(5), b.connect(5))
    return a, b, facing_a, facing_b


async def close_slow(a: IceAgent, b: IceAgent, *sides: SlowPath) -> None:
    await a.close()
    await b.close()
    for side in sides:
        assert side.transport is not None
        side.transport.close()


def test_rfc7675_5_1_consent_checks_every_interval_randomised_0_8_to_1_2() -> None:
    async def main() -> None:
        a, b, facing_a, facing_b = await through_slow_path(consent_interval=0.1,
                                                           consent_timeout=1.0)
        try:
            facing_a.arrivals.clear()
            await asyncio.sleep(1.3)
            sent = [at for at, data in facing_a.arrivals
                    if stun.parse_message(data).message_class == stun.Class.REQUEST]
            gaps = [later - earlier for earlier, later in pairwise(sent)]
            assert len(gaps) >= 8, sent
            assert all(0.08 - 0.005 <= gap <= 0.12 + 0.03 for gap in gaps), gaps
            assert max(gaps) - min(gaps) > 0.005, f"not randomised: {gaps}"
        finally:
            await close_slow(a, b, facing_a, facing_b)

    run(main())


def test_rfc7675_5_1_a_response_to_an_earlier_check_keeps_consent() -> None:
    # Each consent check goes once and its response may come late ("a response might be for a
    # previous request"): with a 0.6 s round trip every response came after aioice's 500 ms
    # transaction had given up, and consent was lost although the peer answered every check.
    # Every response comes 0.6 s after its check, the next check 0.4-0.6 s later: consent
    # (1.5 s) holds with 0.3 s to spare; aioice's way lost it after 3 failures, 2.7-3.3 s.
    async def main() -> None:
        a, b, facing_a, facing_b = await through_slow_path(consent_interval=0.5,
                                                           consent_timeout=1.5)
        try:
            seen: list[PathChanged] = []
            a.on_path_change = seen.append
            facing_a.delay = facing_b.delay = 0.3  # round trip 0.6 s > RTO 500 ms
            await asyncio.sleep(3.6)
            assert seen == [] and not a.closed and not b.closed
            await a.send(b"still here")
            assert await asyncio.wait_for(b.recv(), 2) == b"still here"
        finally:
            await close_slow(a, b, facing_a, facing_b)

    run(main())
