"""The relay's asyncio driver on loopback: real UDP sockets, bounded waits."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ims.gateway.aiorelay import RelayService
from ims.gateway.errors import GatewayUsageError, RelayCapacityExceeded, UnknownAllocation
from ims.gateway.relay import PermittedPeer, RelayConfig

LOOPBACK = "127.0.0.1"
WAIT = 2.0  # seconds: a datagram on loopback that has not arrived by then is not coming


class _Peer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, (addr[0], addr[1])))


async def _endpoint(host: str = LOOPBACK) -> tuple[asyncio.DatagramTransport, _Peer]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Peer, local_addr=(host, 0))
    return transport, protocol


def _addr(transport: asyncio.DatagramTransport) -> tuple[str, int]:
    name = transport.get_extra_info("sockname")
    return (name[0], name[1])


async def _silent(peer: _Peer, within: float = 0.2) -> bool:
    try:
        await asyncio.wait_for(peer.queue.get(), within)
    except TimeoutError:
        return True
    return False


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def test_allocation_forwards_both_ways() -> None:
    async def scenario() -> None:
        bill_t, bill = await _endpoint()
        dave_t, dave = await _endpoint()
        async with RelayService(RelayConfig(LOOPBACK)) as relay:
            allocation = await relay.allocate(_addr(bill_t), _addr(dave_t), lifetime=30)
            bill_t.sendto(b"move e2e4", allocation.caller_side)
            data, source = await asyncio.wait_for(dave.queue.get(), WAIT)
            # Dave sees the relay's callee side port as his only remote endpoint.
            assert (data, source) == (b"move e2e4", allocation.callee_side)
            dave_t.sendto(b"move e7e5", allocation.callee_side)
            data, source = await asyncio.wait_for(bill.queue.get(), WAIT)
            assert (data, source) == (b"move e7e5", allocation.caller_side)
            counters = relay.get(allocation.id).counters
            assert counters.caller_to_callee_datagrams == counters.callee_to_caller_datagrams == 1
            assert counters.caller_to_callee_bytes == 9
        bill_t.close()
        dave_t.close()

    asyncio.run(scenario())


def test_third_endpoint_is_dropped_and_counted() -> None:
    async def scenario() -> None:
        bill_t, _bill = await _endpoint()
        dave_t, dave = await _endpoint()
        mallory_t, _mallory = await _endpoint()
        async with RelayService(RelayConfig(LOOPBACK)) as relay:
            allocation = await relay.allocate(_addr(bill_t), _addr(dave_t), lifetime=30)
            mallory_t.sendto(b"spoofed", allocation.caller_side)
            mallory_t.sendto(b"spoofed", allocation.callee_side)
            assert await _silent(dave)
            counters = relay.get(allocation.id).counters
            assert counters.dropped_at_caller_side == counters.dropped_at_callee_side == 1
            assert counters.caller_to_callee_datagrams == 0
        for t in (bill_t, dave_t, mallory_t):
            t.close()

    asyncio.run(scenario())


def test_latching_peer_is_reached_at_its_latched_port() -> None:
    async def scenario() -> None:
        bill_t, bill = await _endpoint()
        dave_t, dave = await _endpoint()
        async with RelayService(RelayConfig(LOOPBACK)) as relay:
            # Dave's SDP named port 9 (its private port, say); its datagrams come from another.
            allocation = await relay.allocate(
                _addr(bill_t), PermittedPeer(LOOPBACK, 9, latch=True), lifetime=30
            )
            dave_t.sendto(b"hello", allocation.callee_side)
            assert (await asyncio.wait_for(bill.queue.get(), WAIT))[0] == b"hello"
            bill_t.sendto(b"hi", allocation.caller_side)
            assert (await asyncio.wait_for(dave.queue.get(), WAIT))[0] == b"hi"
            assert relay.get(allocation.id).callee_peer == _addr(dave_t)
        bill_t.close()
        dave_t.close()

    asyncio.run(scenario())


def test_release_closes_both_ports() -> None:
    async def scenario() -> None:
        bill_t, _bill = await _endpoint()
        dave_t, dave = await _endpoint()
        relay = RelayService(RelayConfig(LOOPBACK))
        allocation = await relay.allocate(_addr(bill_t), _addr(dave_t), lifetime=30)
        sockets = [p.transport.get_extra_info("socket") for p in relay._ports[allocation.id]]  # type: ignore[union-attr]
        assert relay.open_sockets() == 2
        final = await relay.release(allocation.id)
        assert final.id == allocation.id and relay.list() == ()
        await asyncio.sleep(0.01)  # the transports close their sockets on the next iteration
        assert [s.fileno() for s in sockets] == [-1, -1]
        assert relay.open_sockets() == 0
        assert _port_is_free(allocation.caller_side[1]) and _port_is_free(allocation.callee_side[1])
        bill_t.sendto(b"late", allocation.caller_side)
        assert await _silent(dave)
        with pytest.raises(UnknownAllocation):
            await relay.release(allocation.id)
        await relay.close()
        bill_t.close()
        dave_t.close()

    asyncio.run(scenario())


def test_lifetime_expiry_closes_ports_and_refresh_defers_it() -> None:
    async def scenario() -> None:
        bill_t, _bill = await _endpoint()
        dave_t, _dave = await _endpoint()
        async with RelayService(RelayConfig(LOOPBACK)) as relay:
            short = await relay.allocate(_addr(bill_t), _addr(dave_t), lifetime=0.1)
            kept = await relay.allocate(_addr(bill_t), _addr(dave_t), lifetime=0.1)
            sockets = [p.transport.get_extra_info("socket") for p in relay._ports[short.id]]  # type: ignore[union-attr]
            await relay.refresh(kept.id, lifetime=30)
            await asyncio.sleep(0.3)
            assert [a.id for a in relay.list()] == [kept.id]
            assert [s.fileno() for s in sockets] == [-1, -1]
            assert _port_is_free(short.caller_side[1]) and _port_is_free(short.callee_side[1])
            assert relay.open_sockets() == 2
        assert relay.open_sockets() == 0 and relay.list() == ()
        bill_t.close()
        dave_t.close()

    asyncio.run(scenario())


def test_bounded_allocations_and_closed_service() -> None:
    async def scenario() -> None:
        relay = RelayService(RelayConfig(LOOPBACK, max_allocations=2))
        peers = ((LOOPBACK, 40001), (LOOPBACK, 40002))
        await relay.allocate(*peers)
        await relay.allocate(*peers)
        with pytest.raises(RelayCapacityExceeded, match="maximum of 2"):
            await relay.allocate(*peers)
        assert relay.open_sockets() == 4
        await relay.close()
        assert relay.open_sockets() == 0
        with pytest.raises(GatewayUsageError, match="closed"):
            await relay.allocate(*peers)

    asyncio.run(scenario())


def test_concurrent_allocations_respect_the_bound() -> None:
    async def scenario() -> None:
        async with RelayService(RelayConfig(LOOPBACK, max_allocations=3)) as relay:
            peers = ((LOOPBACK, 40001), (LOOPBACK, 40002))
            results = await asyncio.gather(
                *(relay.allocate(*peers) for _ in range(6)), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, RelayCapacityExceeded)]
            assert len(refused) == 3 and len(relay.list()) == 3
            assert relay.open_sockets() == 6

    asyncio.run(scenario())


def test_ipv6_loopback_relay() -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"cannot bind ::1 here ({exc})")

    async def scenario() -> None:
        bill_t, _bill = await _endpoint("::1")
        dave_t, dave = await _endpoint("::1")
        async with RelayService(RelayConfig("::1")) as relay:
            allocation = await relay.allocate(_addr(bill_t), _addr(dave_t), lifetime=30)
            bill_t.sendto(b"v6", allocation.caller_side)
            assert (await asyncio.wait_for(dave.queue.get(), WAIT))[0] == b"v6"
        bill_t.close()
        dave_t.close()

    asyncio.run(scenario())
