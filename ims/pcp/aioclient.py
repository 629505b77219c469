"""The PCP client on asyncio: one connected UDP socket to the server, the sans-IO `PcpClient`,
and a timer task. Mappings stay renewed in the background until deleted or the client closes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Callable

from ims.pcp.client import (
    Jitter,
    MappingDeleted,
    MappingExpired,
    MappingReady,
    MappingRefused,
    MappingRequest,
    PcpClient,
    PcpClientConfig,
    PcpClientEvent,
)
from ims.pcp.codec import Endpoint, IPAddress, normalise_address
from ims.pcp.constants import SERVER_PORT
from ims.pcp.errors import PcpError, PcpTimeout

EventHandler = Callable[[PcpClientEvent], None]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.client: AsyncPcpClient | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if self.client is not None:
            self.client._on_datagram(data, addr)


class AsyncPcpClient:
    """Use `open_pcp_client()`. `on_event` sees every core event (renewals, restarts...)."""

    def __init__(self, core: PcpClient, transport: asyncio.DatagramTransport,
                 on_event: EventHandler | None) -> None:
        self.core = core
        self._transport = transport
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._waiters: dict[int, asyncio.Future[PcpClientEvent]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def client_address(self) -> IPAddress:
        return self.core.config.client_address

    async def map(self, request: MappingRequest, *, timeout: float = 10.0,
                  nonce: bytes | None = None) -> tuple[int, MappingReady]:
        """Request a mapping and wait for it; raises the `PcpRefused` leaf or `PcpTimeout`."""
        mapping_id = self.core.request(request, self._loop.time(), nonce)
        event = await self._await(mapping_id, timeout, "mapping")
        if isinstance(event, MappingReady):
            return mapping_id, event
        if isinstance(event, MappingRefused):
            raise event.error
        raise PcpError(f"mapping {mapping_id} ended before it was granted: {event}")

    async def delete(self, mapping_id: int, *, timeout: float = 10.0) -> None:
        """Section 15: delete the mapping at the server (lifetime 0)."""
        self.core.delete(mapping_id, self._loop.time())
        event = await self._await(mapping_id, timeout, "deletion")
        if isinstance(event, MappingRefused):
            raise event.error

    async def release(self, request: MappingRequest, nonce: bytes, *,
                      timeout: float = 10.0) -> None:
        """Delete a mapping known only by its request and nonce (e.g. made by another run)."""
        mapping_id = self.core.release(request, nonce, self._loop.time())
        event = await self._await(mapping_id, timeout, "deletion")
        if isinstance(event, MappingRefused):
            raise event.error

    async def close(self) -> None:
        """Stop renewing (mappings then lapse at their lifetime) and close the socket."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._transport.close()

    async def __aenter__(self) -> AsyncPcpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals -----------------------------------------------------------------------------

    async def _await(self, mapping_id: int, timeout: float, what: str) -> PcpClientEvent:
        future: asyncio.Future[PcpClientEvent] = self._loop.create_future()
        self._waiters[mapping_id] = future
        self._flush()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.core.abandon(mapping_id)
            raise PcpTimeout(f"no PCP response from {self.core.config.server} to the {what} "
                             f"request within {timeout:g} s") from None
        finally:
            self._waiters.pop(mapping_id, None)

    def _on_datagram(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            address = ipaddress.ip_address(str(addr[0]).split("%")[0])
        except ValueError:
            return
        self.core.receive_datagram(data, Endpoint(normalise_address(address), int(addr[1])),
                                   self._loop.time())
        self._flush()

    def _flush(self) -> None:
        for datagram in self.core.datagrams_to_send():
            self._transport.sendto(datagram)
        while (event := self.core.next_event()) is not None:
            if self._on_event is not None:
                self._on_event(event)
            mapping_id = getattr(event, "mapping_id", None)
            future = self._waiters.get(mapping_id) if mapping_id is not None else None
            if future is not None and not future.done() and isinstance(
                    event, MappingReady | MappingRefused | MappingDeleted | MappingExpired):
                future.set_result(event)
        self._arm_timer()

    def _arm_timer(self) -> None:
        """One loop timer at the core's next deadline (re-armed after every interaction)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.core.get_timer()
        if deadline is not None and not self._closed:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(self._loop.time())
        self._flush()


async def open_pcp_client(server: str, *, port: int = SERVER_PORT,
                          local_address: str | None = None, rng: Jitter | None = None,
                          on_event: EventHandler | None = None) -> AsyncPcpClient:
    """Connect a UDP socket to the server; the PCP Client's IP Address is the socket's own."""
    loop = asyncio.get_running_loop()
    protocol = _Protocol()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: protocol, remote_addr=(server, port),
        local_addr=(local_address, 0) if local_address else None)
    sockname = transport.get_extra_info("sockname")
    config = PcpClientConfig(Endpoint(normalise_address(ipaddress.ip_address(server)), port),
                             normalise_address(ipaddress.ip_address(sockname[0])))
    client = AsyncPcpClient(PcpClient(config, rng or random.Random()), transport, on_event)
    protocol.client = client
    return client
