"""The relay on asyncio: one UDP socket per relay port around the sans-IO `RelayTable`.

`RelayService` binds the two ports of an allocation on the relay address (the operating system
picks them), hands every datagram to the table and sends what it admits from the other port;
one timer handle, re-armed from `RelayTable.get_timer()`, closes the ports of allocations
whose lifetime ran out. Releasing or expiring an allocation closes both of its sockets.

    async with RelayService(RelayConfig("127.0.0.1")) as relay:
        allocation = await relay.allocate(("127.0.0.1", 40000), ("127.0.0.1", 40002), 60)
        ...  # the caller sends to allocation.caller_side, the callee to allocation.callee_side
        await relay.release(allocation.id)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import cast

from ims.gateway.errors import GatewayUsageError, RelayPortUnavailable
from ims.gateway.relay import Address, PermittedPeer, RelayAllocation, RelayConfig, RelayTable, Side

__all__ = ["RelayService"]

log = logging.getLogger(__name__)

# Room for bursts of game traffic while the loop is busy elsewhere (the kernel drops beyond).
SOCKET_BUFFER_BYTES = 1 << 20


class _RelayPort(asyncio.DatagramProtocol):
    """One relay port: what it receives goes through the table, out of its sibling port."""

    __slots__ = ("allocation_id", "out", "service", "side", "transport")

    def __init__(self, service: RelayService, allocation_id: int, side: Side) -> None:
        self.service = service
        self.allocation_id = allocation_id
        self.side = side
        self.transport: asyncio.DatagramTransport | None = None
        self.out: asyncio.DatagramTransport | None = None  # the sibling port's transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's UDP transport is not a DatagramTransport subclass; it is one in behaviour.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        service = self.service
        destination = service.table.receive(
            self.allocation_id, self.side, (str(addr[0]), addr[1]), len(data),
            service.loop.time(), data,
        )
        if destination is not None:
            if self.out is not None:
                self.out.sendto(data, destination)
            if service.table.latches:
                service.log_latches()
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("relay allocation %s %s port dropped %d bytes from %s", self.allocation_id,
                      self.side, len(data), addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that is not listening (yet): UDP carries on.
        log.debug("relay allocation %s %s port: %s", self.allocation_id, self.side, exc)


class RelayService:
    """The relay's asyncio driver. `allocate`, `refresh`, `release`, `list`; `close` (or
    leaving `async with`) releases everything."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.table = RelayTable(config)
        self.loop = asyncio.get_running_loop()
        self._ports: dict[int, tuple[_RelayPort, _RelayPort]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def __aenter__(self) -> RelayService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if self.config.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
            sock.bind((self.config.relay_address, 0))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise RelayPortUnavailable(self.config.relay_address, reason) from None
        return sock

    async def allocate(self, caller_peer: Address | PermittedPeer,
                       callee_peer: Address | PermittedPeer,
                       lifetime: float | None = None) -> RelayAllocation:
        """Open two relay ports: the caller side admits only `caller_peer`, the callee side only
        `callee_peer` (pass a `PermittedPeer` with `latch=True` to latch the port). Raises
        RelayCapacityExceeded, RelayPortUnavailable, GatewayUsageError."""
        if self._closed:
            raise GatewayUsageError("the relay service is closed")
        self.table.check_capacity()
        # Both sockets and the table entry are made without yielding to the loop, so two
        # concurrent allocate() calls cannot both pass the capacity check.
        caller_sock = self._bind()
        try:
            callee_sock = self._bind()
        except RelayPortUnavailable:
            caller_sock.close()
            raise
        try:
            allocation = self.table.allocate(
                caller_peer, callee_peer, caller_sock.getsockname()[1],
                callee_sock.getsockname()[1], self.loop.time(), lifetime,
            )
        except BaseException:
            caller_sock.close()
            callee_sock.close()
            raise
        caller_port = _RelayPort(self, allocation.id, Side.CALLER)
        callee_port = _RelayPort(self, allocation.id, Side.CALLEE)
        self._ports[allocation.id] = (caller_port, callee_port)
        try:
            for sock, port in ((caller_sock, caller_port), (callee_sock, callee_port)):
                await self.loop.create_datagram_endpoint(lambda p=port: p, sock=sock)  # type: ignore[misc]
        except BaseException:
            self._close_ports(allocation.id)
            with contextlib.suppress(KeyError):
                self.table.release(allocation.id)
            caller_sock.close()
            callee_sock.close()
            raise
        caller_port.out = callee_port.transport
        callee_port.out = caller_port.transport
        self._arm_timer()
        log.info("relay allocation %s: caller %s <-> %s, callee %s <-> %s, until %.0f",
                 allocation.id, allocation.caller_peer, allocation.caller_side,
                 allocation.callee_peer, allocation.callee_side, allocation.expires_at)
        return allocation

    async def refresh(self, allocation_id: int, lifetime: float | None = None) -> RelayAllocation:
        allocation = self.table.refresh(allocation_id, self.loop.time(), lifetime)
        self._arm_timer()
        return allocation

    async def release(self, allocation_id: int) -> RelayAllocation:
        """Close both ports of the allocation; its final counters are returned. Raises
        UnknownAllocation when it is already gone."""
        allocation = self.table.release(allocation_id)
        self._close_ports(allocation_id)
        self._arm_timer()
        log.info("relay allocation %s released: %s", allocation_id, allocation.counters)
        return allocation

    def log_latches(self) -> None:
        for latched in self.table.pop_latches():
            log.info("relay allocation %s %s port latched its peer at %s", latched.allocation_id,
                     latched.side, latched.source)

    def list(self) -> tuple[RelayAllocation, ...]:
        return self.table.allocations()

    def get(self, allocation_id: int) -> RelayAllocation:
        return self.table.allocation(allocation_id)

    def open_sockets(self) -> int:
        """How many relay sockets are open (two per allocation; zero after close)."""
        return sum(
            1
            for ports in self._ports.values()
            for port in ports
            if port.transport is not None and not port.transport.is_closing()
        )

    async def close(self) -> None:
        """Release every allocation and stop the timer; the service refuses new allocations."""
        self._closed = True
        for allocation_id in list(self._ports):
            with contextlib.suppress(KeyError):
                self.table.release(allocation_id)
            self._close_ports(allocation_id)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await asyncio.sleep(0)  # let the transports run connection_lost and close the sockets

    def _close_ports(self, allocation_id: int) -> None:
        for port in self._ports.pop(allocation_id, ()):
            port.out = None
            if port.transport is not None:
                port.transport.close()

    def _arm_timer(self) -> None:
        when = self.table.get_timer()
        if self._timer is not None:
            if when is not None and self._timer.when() == when:
                return
            self._timer.cancel()
            self._timer = None
        if when is not None and not self._closed:
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        for allocation in self.table.expire(self.loop.time()):
            self._close_ports(allocation.id)
            log.info("relay allocation %s expired: %s", allocation.id, allocation.counters)
        self._arm_timer()
