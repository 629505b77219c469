"""The PCP server on asyncio: a UDP socket on port 5351 of one address, the sans-IO
`PcpServer`, and a data plane (nftables, or a recording stand-in).

One worker task handles datagrams in arrival order and expires mappings when the core's
timer says so; the data plane runs in a thread so nft never blocks the loop. A request whose
rules cannot be installed is answered NETWORK_FAILURE and its table change undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from dataclasses import dataclass
from typing import Protocol

from ims.pcp.codec import Endpoint, normalise_address
from ims.pcp.constants import SERVER_PORT, ResultCode
from ims.pcp.errors import NftError
from ims.pcp.server import MappingChanges, PcpServer, PcpServerConfig

log = logging.getLogger(__name__)

# Datagrams waiting for the worker beyond this are dropped (the clients retransmit).
QUEUE_LIMIT = 1024


class DataPlane(Protocol):
    """Where mappings become packet rules (`NftMappingTable`, `RecordingTable`)."""

    def reset(self) -> None: ...

    def apply(self, changes: MappingChanges) -> None: ...

    def close(self) -> None: ...


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[tuple[bytes, tuple[str, int]]]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait((data, (str(addr[0]), int(addr[1]))))


@dataclass
class RunningPcpServer:
    """A listening server; `async with` or `await close()` stops it and removes its rules."""

    core: PcpServer
    dataplane: DataPlane
    address: str
    port: int
    _transport: asyncio.DatagramTransport
    _worker: asyncio.Task[None]

    async def close(self) -> None:
        self._transport.close()
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        await asyncio.to_thread(self.dataplane.close)

    async def __aenter__(self) -> RunningPcpServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_pcp_server(config: PcpServerConfig, listen: str, dataplane: DataPlane,
                           port: int = SERVER_PORT) -> RunningPcpServer:
    """Reset the data plane (a new epoch owns no mappings), bind, start the worker."""
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(dataplane.reset)
    queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue(QUEUE_LIMIT)
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(queue),
                                                       local_addr=(listen, port))
    sockname = transport.get_extra_info("sockname")
    core = PcpServer(config, started_at=loop.time())
    worker = loop.create_task(_serve(core, dataplane, transport, queue))
    return RunningPcpServer(core, dataplane, str(sockname[0]), int(sockname[1]), transport,
                            worker)


async def _apply(core: PcpServer, dataplane: DataPlane, changes: MappingChanges) -> str | None:
    """Apply `changes`; on failure undo them in the core and return nft's complaint."""
    if not changes:
        return None
    try:
        await asyncio.to_thread(dataplane.apply, changes)
    except NftError as exc:
        core.revert(changes)
        log.error("PCP data plane failed: %s", exc)
        return str(exc)
    return None


async def _serve(core: PcpServer, dataplane: DataPlane, transport: asyncio.DatagramTransport,
                 queue: asyncio.Queue[tuple[bytes, tuple[str, int]]]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        timer = core.get_timer()
        if timer is not None and timer <= loop.time():
            expired = core.expire(loop.time())
            for mapping in expired.removed:
                log.info("PCP mapping %s expired", mapping.mapping_id)
            await _apply(core, dataplane, expired)
            continue
        timeout = None if timer is None else timer - loop.time()
        try:
            data, addr = await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            continue
        try:
            source = Endpoint(normalise_address(ipaddress.ip_address(addr[0].split("%")[0])),
                              addr[1])
        except ValueError:
            continue
        now = loop.time()
        reply = core.handle_datagram(data, source, now)
        failure = await _apply(core, dataplane, reply.changes)
        if failure is not None:
            reply = core.failure_reply(data, ResultCode.NETWORK_FAILURE, now, failure)
        log.info("PCP from %s: %s", source, reply.note)
        if reply.response is not None:
            transport.sendto(reply.response, addr)
