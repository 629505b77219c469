"""The relay on asyncio: one UDP socket per relay port around the sans-IO `RelayTable`.

`RelayService` binds the two ports of an allocation on the relay address (the operating system
picks them), hands every datagram to the table and sends what it admits from the other port;
one timer handle, re-armed from `RelayTable.get_timer()`, closes the ports of allocations
whose lifetime ran out. Releasing or expiring an allocation closes both of its sockets.

    async with RelayService(RelayConfig("127.0.0.1")) as relay:
        allocation = await relay.allocate(("127.0.0.1", 40000), ("127.0.0.1", 40002), 60)
        ...  # the caller sends to allocation.caller_side, the callee to allocation.callee_side
        await relay.release(allocation.id)

Kernel offload (`RelayConfig.offload` nft; ims.gateway.nft_relay). Once an allocation's two
permitted peers are known exactly (`RelayTable.exact_peers`: given as they are, or latched on
their first datagram or ICE check), the service hands the allocation to the kernel:
`NftRelayDataPlane.install` runs off the event loop (asyncio.to_thread: nft and conntrack
answer in milliseconds, but the loop carries every call's datagrams meanwhile). From then on
nftables NAT forwards between the peers and the two sockets stay bound, so the ports stay
ours; they drop whatever still reaches them (any other source, as before). Until the install
returns, the userspace relay keeps forwarding; then it stops sending for the allocation and
the flow's conntrack entries are cut once more (`NftRelayDataPlane.cut`), since a datagram the
loop relayed during the install may have opened an entry the rules would not translate.
Release and expiry remove the kernel flow first, then close the sockets. A failure of the
kernel is logged and the userspace relay carries on: no call is lost over it. At start the
service checks the host (tools, IP forwarding) and resets the data plane's table (what a
crashed run left); `offload_ready()` reports the outcome, and a service whose start failed
relays in userspace only. The service owns its data plane: `close` closes it (removes the
table and cuts every flow of ours).

Not handed over: an allocation with a peer on the relay's own address (a same-operator call
chains two allocations on one relay, and a packet meets prerouting only once) or on
loopback (delivered locally, never forwarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
from typing import cast

from ims.gateway.errors import GatewayError, GatewayUsageError, RelayPortUnavailable
from ims.gateway.nft_relay import KernelFlow, KernelRelayCounters, NftRelayDataPlane
from ims.gateway.relay import (
    Address,
    AllocationCounters,
    PermittedPeer,
    RelayAllocation,
    RelayConfig,
    RelayOffload,
    RelayTable,
    Side,
)

__all__ = ["KERNEL_TAG_PREFIX", "RelayService", "with_kernel"]

log = logging.getLogger(__name__)

# Room for bursts of game traffic while the loop is busy elsewhere (the kernel drops beyond).
SOCKET_BUFFER_BYTES = 1 << 20
# The data plane's tag of allocation N's kernel flow.
KERNEL_TAG_PREFIX = "allocation-"


def with_kernel(counters: AllocationCounters, kernel: KernelRelayCounters) -> AllocationCounters:
    """The allocation's counters with what the kernel forwarded for it added (the kernel's
    `a` side is the caller's: `install` gets the caller side port first)."""
    return dataclasses.replace(
        counters,
        caller_to_callee_datagrams=counters.caller_to_callee_datagrams
        + kernel.a_to_b_datagrams,
        caller_to_callee_bytes=counters.caller_to_callee_bytes + kernel.a_to_b_bytes,
        callee_to_caller_datagrams=counters.callee_to_caller_datagrams
        + kernel.b_to_a_datagrams,
        callee_to_caller_bytes=counters.callee_to_caller_bytes + kernel.b_to_a_bytes,
    )


class _RelayPort(asyncio.DatagramProtocol):
    """One relay port: what it receives goes through the table, out of its sibling port."""

    __slots__ = ("allocation_id", "kernel", "out", "service", "side", "transport")

    def __init__(self, service: RelayService, allocation_id: int, side: Side) -> None:
        self.service = service
        self.allocation_id = allocation_id
        self.side = side
        self.transport: asyncio.DatagramTransport | None = None
        self.out: asyncio.DatagramTransport | None = None  # the sibling port's transport
        self.kernel = False  # the kernel forwards this allocation: the port only drops

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's UDP transport is not a DatagramTransport subclass; it is one in behaviour.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if self.kernel:
            # Not the peers (the kernel translated theirs), or the instant of the handover.
            log.debug("relay allocation %s %s port (in the kernel) dropped %d bytes from %s",
                      self.allocation_id, self.side, len(data), addr)
            return
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
    leaving `async with`) releases everything.

    `data_plane` is the kernel offload's (tests give one with fake runners); without it,
    `config.offload` nft makes an `NftRelayDataPlane()` in this thread's namespace."""

    def __init__(self, config: RelayConfig, *,
                 data_plane: NftRelayDataPlane | None = None) -> None:
        self.config = config
        self.table = RelayTable(config)
        self.loop = asyncio.get_running_loop()
        self._ports: dict[int, tuple[_RelayPort, _RelayPort]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        if data_plane is None and config.offload is RelayOffload.NFT:
            data_plane = NftRelayDataPlane()
        self.data_plane = data_plane
        self._kernel: dict[int, KernelFlow] = {}  # allocations the kernel forwards
        self._handovers: dict[int, asyncio.Task[None]] = {}  # installs in flight
        self._endings: set[asyncio.Task[None]] = set()  # expired: kernel flow, then sockets
        self._offload_error: Exception | None = None
        self._offload_start: asyncio.Task[None] | None = (
            self.loop.create_task(self._start_offload()) if data_plane is not None else None)

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
        self.hand_over(allocation.id)
        return allocation

    def permit(self, allocation_id: int, side: Side,
               peer: Address | PermittedPeer) -> RelayAllocation:
        """`RelayTable.permit`, then the kernel takes the allocation if both peers are known."""
        allocation = self.table.permit(allocation_id, side, peer)
        self.hand_over(allocation_id)
        return allocation

    async def refresh(self, allocation_id: int, lifetime: float | None = None) -> RelayAllocation:
        allocation = self.table.refresh(allocation_id, self.loop.time(), lifetime)
        self._arm_timer()
        return allocation

    async def release(self, allocation_id: int) -> RelayAllocation:
        """Remove the allocation's kernel flow (when it has one), then close both its ports;
        its final counters, the kernel's included, are returned. Raises UnknownAllocation when
        it is already gone."""
        allocation = self.table.release(allocation_id)
        kernel = await self._end_kernel_flow(allocation_id)
        self._close_ports(allocation_id)
        self._arm_timer()
        if kernel is not None:
            allocation = dataclasses.replace(
                allocation, counters=with_kernel(allocation.counters, kernel))
        log.info("relay allocation %s released: %s", allocation_id, allocation.counters)
        return allocation

    def log_latches(self) -> None:
        for latched in self.table.pop_latches():
            log.info("relay allocation %s %s port latched its peer at %s", latched.allocation_id,
                     latched.side, latched.source)
            self.hand_over(latched.allocation_id)

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
        """Release every allocation (kernel flows first: the data plane is closed, its table
        removed, then the sockets) and stop the timer; the service refuses new allocations."""
        self._closed = True
        ids = list(self._ports)
        for allocation_id in ids:
            with contextlib.suppress(KeyError):
                self.table.release(allocation_id)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Installs and removals in flight finish first (a thread cannot be cancelled).
        pending = [*self._handovers.values(), *self._endings]
        if self._offload_start is not None:
            pending.append(self._offload_start)
        if pending:
            await asyncio.gather(*(asyncio.shield(t) for t in pending), return_exceptions=True)
        plane = self.data_plane
        if plane is not None and self._offload_error is None:
            try:
                await asyncio.to_thread(plane.close)
            except (GatewayError, OSError) as exc:
                log.error("relay on %s: the kernel relay's table could not be removed: %s",
                          self.config.relay_address, exc)
        self._kernel.clear()
        for allocation_id in ids:
            self._close_ports(allocation_id)
        await asyncio.sleep(0)  # let the transports run connection_lost and close the sockets

    # -- the kernel offload --------------------------------------------------------------------

    async def offload_ready(self) -> bool:
        """Wait for the offload's start (the host checked, the table reset): True when the
        kernel takes allocations, False when the relay has no offload. Raises the
        KernelRelayError (a GatewayError) that turned the offload off; the userspace relay
        then carries every allocation."""
        if self._offload_start is not None:
            await asyncio.shield(self._offload_start)
        if self._offload_error is not None:
            raise self._offload_error
        return self.data_plane is not None

    def in_kernel(self, allocation_id: int) -> bool:
        """Whether the kernel forwards this allocation now."""
        return allocation_id in self._kernel

    def kernel_flows(self) -> dict[int, KernelFlow]:
        """The flows the kernel forwards, by allocation id."""
        return dict(self._kernel)

    def kernel_counters(self) -> dict[int, KernelRelayCounters]:
        """What the kernel forwarded for each allocation it carries ({} when none). One `nft -j`
        listing on the caller's thread, a few milliseconds: listings are the operator's
        occasional query and must be current. A failure is logged and reads as {}."""
        plane = self.data_plane
        if plane is None or not self._kernel:
            return {}
        try:
            by_tag = plane.counters_by_tag()
        except (GatewayError, OSError) as exc:
            log.warning("relay on %s: the kernel relay's counters cannot be read: %s",
                        self.config.relay_address, exc)
            return {}
        return {allocation_id: by_tag[flow.tag]
                for allocation_id, flow in list(self._kernel.items()) if flow.tag in by_tag}

    def hand_over(self, allocation_id: int) -> None:
        """Hand the allocation to the kernel (in a task) when the offload is on and both its
        peers are known exactly; nothing otherwise. The driver calls it at allocation and at
        every latch; whoever changes a peer through `table.permit` calls it after (`permit`
        does)."""
        if self.data_plane is None or self._offload_error is not None or self._closed \
                or allocation_id in self._handovers:
            return
        peers = self.table.exact_peers(allocation_id)
        if peers is None:
            return
        installed = self._kernel.get(allocation_id)
        if installed is not None and (installed.peer_a, installed.peer_b) == peers:
            return
        reason = self._not_forwardable(peers)
        if reason is not None:
            log.debug("relay allocation %s stays in userspace: %s", allocation_id, reason)
            return
        self._handovers[allocation_id] = self.loop.create_task(
            self._hand_over(allocation_id, peers), name=f"relay allocation {allocation_id} "
                                                        "to the kernel")

    def _not_forwardable(self, peers: tuple[Address, Address]) -> str | None:
        if peers[0] == peers[1]:
            return f"both peers are {peers[0]}"
        for address, _ in peers:
            if address == self.config.relay_address:
                return f"a peer is the relay's own address {address} (chained allocations)"
            if ipaddress.ip_address(address).is_loopback:
                return f"a peer is on loopback ({address}): delivered locally, not forwarded"
        return None

    async def _start_offload(self) -> None:
        plane = self.data_plane
        assert plane is not None
        try:
            await asyncio.to_thread(plane.check, self.config.version)
            await asyncio.to_thread(plane.reset)  # a crashed run's flows end here
        except (GatewayError, OSError) as exc:
            self._offload_error = exc
            log.error("relay on %s: no kernel offload, the userspace relay carries every "
                      "allocation: %s", self.config.relay_address, exc)
        else:
            log.info("relay on %s: the kernel forwards allocations whose peers are known "
                     "(nftables table inet %s)", self.config.relay_address, plane.table)

    async def _hand_over(self, allocation_id: int, peers: tuple[Address, Address]) -> None:
        plane = self.data_plane
        assert plane is not None
        tag = f"{KERNEL_TAG_PREFIX}{allocation_id}"
        try:
            if self._offload_start is not None:
                await asyncio.shield(self._offload_start)
            if self._offload_error is not None or self._closed \
                    or allocation_id not in self.table:
                return
            allocation = self.table.allocation(allocation_id)
            previous = self._kernel.pop(allocation_id, None)
            if previous is not None:  # a peer changed: the old flow goes first
                self._set_kernel(allocation_id, False)
                await asyncio.to_thread(plane.remove, previous.tag)
            flow = await asyncio.to_thread(
                plane.install, tag, self.config.relay_address, allocation.caller_side[1],
                peers[0], allocation.callee_side[1], peers[1])
            self._kernel[allocation_id] = flow
            self._set_kernel(allocation_id, True)
            await asyncio.to_thread(plane.cut, tag)
            log.info("relay allocation %s: the kernel forwards caller %s <-> %s, callee %s <-> "
                     "%s", allocation_id, peers[0], allocation.caller_side,
                     allocation.callee_side, peers[1])
        except (GatewayError, OSError) as exc:
            log.warning("relay allocation %s stays in userspace: the kernel relay failed: %s",
                        allocation_id, exc)
            await self._undo_hand_over(allocation_id, tag)
        except Exception:  # a bug of ours must not cost the call: userspace carries it
            log.exception("relay allocation %s stays in userspace: handing it to the kernel "
                          "failed", allocation_id)
            await self._undo_hand_over(allocation_id, tag)
        finally:
            self._handovers.pop(allocation_id, None)
        # A peer that changed while the kernel was busy gets its own handover.
        now = self.table.exact_peers(allocation_id)
        if now is not None and now != peers:
            self.hand_over(allocation_id)

    async def _undo_hand_over(self, allocation_id: int, tag: str) -> None:
        """Back to userspace after a failed handover: nothing of it may stay in the kernel."""
        plane = self.data_plane
        assert plane is not None
        self._kernel.pop(allocation_id, None)
        self._set_kernel(allocation_id, False)
        if any(flow.tag == tag for flow in plane.flows()):
            try:
                await asyncio.to_thread(plane.remove, tag)
            except Exception as exc:  # logged: the relay's close removes the table anyway
                log.error("relay allocation %s: its half-installed kernel flow could not be "
                          "removed (the relay's close removes it): %s", allocation_id, exc)

    async def _end_kernel_flow(self, allocation_id: int) -> KernelRelayCounters | None:
        """Remove the allocation's kernel flow (after a handover in flight); its counters."""
        handover = self._handovers.get(allocation_id)
        if handover is not None:
            await asyncio.wait([handover])  # its outcome, not its exception: it logs its own
        flow = self._kernel.pop(allocation_id, None)
        if flow is None or self.data_plane is None:
            return None
        try:
            return await asyncio.to_thread(self.data_plane.remove, flow.tag)
        except (GatewayError, OSError) as exc:
            log.error("relay allocation %s: its kernel flow could not be removed, so the kernel "
                      "may still forward it until the relay's close: %s", allocation_id, exc)
            return None

    async def _retire(self, allocation_id: int) -> None:
        """An expired allocation the kernel carries: its flow goes, then its sockets."""
        kernel = await self._end_kernel_flow(allocation_id)
        self._close_ports(allocation_id)
        if kernel is not None:
            log.info("relay allocation %s: the kernel forwarded %s", allocation_id, kernel)

    def _set_kernel(self, allocation_id: int, on: bool) -> None:
        for port in self._ports.get(allocation_id, ()):
            port.kernel = on

    # -- ports and the timer -------------------------------------------------------------------

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
            log.info("relay allocation %s expired: %s", allocation.id, allocation.counters)
            if allocation.id in self._kernel or allocation.id in self._handovers:
                task = self.loop.create_task(self._retire(allocation.id))
                self._endings.add(task)
                task.add_done_callback(self._endings.discard)
            else:
                self._close_ports(allocation.id)
        self._arm_timer()
