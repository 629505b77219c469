"""Restart recovery of the connectivity gateway (ims.gateway.pcp_gateway, ims.gateway.service):
what one gateway run records in the store, and the clean-up at `start` of what earlier runs
left.

With a store (ims.store `allocations`), each mapping is recorded when granted (server, protocol,
opcode, internal, external, peer, nonce, expiry), again when renewed or its FILTER replaced, and
forgotten when deleted; the relay allocations of each call are recorded too (for `ueconnect mno
--list-open`); in mode relay (ims.gateway.service) the relay allocations are all it records.
Every record names the `GatewayRun` holding it. At `start`, the mappings that earlier runs of
this operator left behind (their process is gone: a crash, a kill) are deleted at their PCP
server with the nonce that created them and lifetime 0 (RFC 6887 section 15), each logged; a
mapping whose server does not answer is forgotten at its expiry, when the CGN drops it anyway
(section 15: a mapping lapses at its lifetime). Their relay allocations died with their process
and are only forgotten (all a gateway in mode relay does: it has no PCP client to delete a
mapping with). One gateway per operator per process: a record of this process under another run
is a previous gateway's.

A failing store is logged, never a failed call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ims.pcp.aioclient import AsyncPcpClient, open_pcp_client
from ims.pcp.client import MappingRequest
from ims.pcp.codec import Endpoint as PcpEndpoint
from ims.pcp.errors import PcpError
from ims.store import GatewayRun, PcpMappingRecord, Store, StoreError

if TYPE_CHECKING:  # ims.gateway.service records its relay legs through RunRecords
    from ims.gateway.service import OpenLeg

__all__ = [
    "RecoveryOutcome",
    "RunRecords",
    "mapping_record",
    "mapping_request",
    "new_run",
    "run_gone",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryOutcome:
    """What `PcpGateway.recover` did with what earlier runs left: mappings deleted at their
    PCP server, mappings whose server did not answer (forgotten at their expiry), relay
    allocations forgotten, records forgotten because they had lapsed already."""

    deleted: int = 0
    unanswered: int = 0
    relays_forgotten: int = 0
    lapsed: int = 0


def new_run(owner: str) -> GatewayRun:
    """A fresh `GatewayRun` of `owner` in this process."""
    return GatewayRun(owner, secrets.token_hex(8), socket.gethostname(), os.getpid())


def run_gone(run: GatewayRun, current: GatewayRun | None = None) -> bool:
    """Whether the gateway run `run` is over: its process on this host is gone, or it is
    `current`'s process under an earlier run id (one gateway per operator per process). A run
    on another host cannot be told apart from a live one: False (its records lapse)."""
    if run.host != socket.gethostname():
        return False
    if current is not None and run.run_id != current.run_id and run.pid == current.pid:
        return True
    if run.pid == os.getpid():
        return False
    try:
        os.kill(run.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def mapping_request(record: PcpMappingRecord) -> MappingRequest:
    """The request that names the recorded mapping at its server (RFC 6887 section 15: a
    delete carries the opcode, protocol, internal address and port, the remote peer of a
    PEER, and the nonce, which the caller passes beside it)."""
    remote = (PcpEndpoint(ipaddress.ip_address(record.peer_address), record.peer_port)
              if record.opcode == "PEER" and record.peer_address is not None
              and record.peer_port is not None else None)
    return MappingRequest(record.protocol, record.internal_port, record.lifetime,
                          remote_peer=remote,
                          third_party=ipaddress.ip_address(record.internal_address))


def mapping_record(run: GatewayRun, call_id: str, leg: str, server: str, server_port: int,
                   request: MappingRequest, external: PcpEndpoint, peer: PcpEndpoint | None,
                   nonce: bytes, expires_at: float) -> PcpMappingRecord:
    """The record of a mapping the CGN granted for `request` (`mapping_request` reads it
    back): `peer` the PEER's remote peer or the one peer a MAP's FILTER admits, `expires_at`
    on the wall clock."""
    assert request.third_party is not None  # every request of the gateway names the UE
    return PcpMappingRecord(
        run, call_id, leg, server, server_port, request.protocol, request.opcode.name,
        str(request.third_party), request.internal_port, str(external.address), external.port,
        str(peer.address) if peer is not None else None,
        peer.port if peer is not None else None, nonce, request.lifetime, expires_at)


class RunRecords:
    """What one gateway run (`run`) of operator `name` records in the store, and the recovery
    of what earlier runs left. `server`/`port` is the gateway's PCP server (mode pcp; none in
    mode relay), `clock` the wall clock of the records, `loop` the gateway's. Without a store,
    nothing is recorded."""

    def __init__(self, store: Store | None, run: GatewayRun, *, name: str, server: str = "",
                 port: int = 0, clock: Callable[[], float],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.run = run
        self.name = name
        self.server = server
        self.port = port
        self.clock = clock
        self.loop = loop
        self.closed = False
        self._relay_calls: set[str] = set()  # calls with relay records in the store
        self._lapse_timers: set[asyncio.TimerHandle] = set()

    def close(self) -> None:
        """The gateway closes: no record is forgotten on a timer any more."""
        self.closed = True
        for handle in self._lapse_timers:
            handle.cancel()
        self._lapse_timers.clear()

    def forget_relays(self) -> None:
        """The relay died with the gateway: forget this run's relay allocations. A mapping not
        deleted stays recorded for the next run."""
        self.write("forget this run's relays",
                   lambda store: store.allocations.forget_run(self.run.run_id))
        self._relay_calls.clear()

    # -- restart recovery ----------------------------------------------------------------------

    async def recover(self, client: AsyncPcpClient, timeout: float) -> RecoveryOutcome:
        """Delete at the PCP server every mapping an earlier, finished run of this operator
        left recorded (RFC 6887 section 15: its nonce, lifetime 0), each logged, and forget
        their relay allocations. A mapping whose server does not answer within `timeout` is
        forgotten at its expiry. Bounded: the deletes run side by side. `client` is the
        gateway's PCP client."""
        read = self._forget_left()
        if read is None:
            return RecoveryOutcome()
        lapsed, left, relays = read
        clients: dict[tuple[str, int], AsyncPcpClient] = {}
        try:
            for record in left:
                key = (record.server, record.server_port)
                if key not in clients:
                    clients[key] = await self._client_for(client, *key)
            done = await asyncio.gather(*(self._delete_left(clients[(r.server, r.server_port)],
                                                            r, timeout) for r in left))
        finally:
            for other in set(clients.values()):
                if other is not client:
                    await other.close()
        deleted = sum(done)
        return RecoveryOutcome(deleted, len(left) - deleted, relays, lapsed)

    def forget_left(self) -> RecoveryOutcome:
        """`recover` without a PCP client (mode relay): forget the lapsed records and the relay
        allocations that earlier, finished runs of this operator left. A mapping such a run
        left (in mode pcp) cannot be deleted from here: it is logged and forgotten at its
        expiry, when the CGN drops it anyway (RFC 6887 section 15)."""
        read = self._forget_left()
        if read is None:
            return RecoveryOutcome()
        lapsed, left, relays = read
        for record in left:
            logger.warning("gateway %s: PCP %s %s:%s (Call-ID %s, left by run %s) cannot be "
                           "deleted without a PCP server configured: it lapses in %.0f s",
                           self.name, record.opcode, record.external_address,
                           record.external_port, record.call_id, record.holder.run_id,
                           max(record.expires_at - self.clock(), 0.0))
            self.forget_at(record)
        return RecoveryOutcome(0, len(left), relays, lapsed)

    def _forget_left(self) -> tuple[int, list[PcpMappingRecord], int] | None:
        """Forget lapsed records and the relay allocations of finished runs of this operator:
        how many lapsed, the mappings finished runs left, how many relay allocations went.
        None without a store, or when it fails (logged)."""
        store = self.store
        if store is None:
            return None
        owner = self.name
        try:
            lapsed = store.allocations.expire(self.clock())
            left = [m for m in store.allocations.mappings(owner)
                    if run_gone(m.holder, self.run)]
            runs = {r.holder.run_id for r in store.allocations.relays(owner)
                    if run_gone(r.holder, self.run)}
            relays = sum(store.allocations.forget_run(run_id) for run_id in runs)
        except StoreError as exc:
            logger.warning("gateway %s: cannot read what earlier runs left in the store (%s): "
                           "their mappings lapse at their PCP lifetime", self.name, exc)
            return None
        if relays:
            logger.info("gateway %s: forgot %d relay allocation(s) of earlier runs (a relay "
                        "ends with its process)", self.name, relays)
        return lapsed, left, relays

    async def _client_for(self, ours: AsyncPcpClient, server: str,
                          port: int) -> AsyncPcpClient:
        """Our client for our server; a short-lived one, from the same address, for a server
        an earlier configuration named."""
        if ipaddress.ip_address(server) == ipaddress.ip_address(self.server) \
                and port == self.port:
            return ours
        local = str(ours.client_address)
        same_family = ipaddress.ip_address(server).version == ours.client_address.version
        try:
            return await open_pcp_client(server, port=port,
                                         local_address=local if same_family else None)
        except OSError:
            return ours  # its deletes fail below and the records lapse

    async def _delete_left(self, client: AsyncPcpClient, record: PcpMappingRecord,
                           timeout: float) -> bool:
        holder = record.holder
        what = (f"PCP {record.opcode} {record.external_address}:{record.external_port} for "
                f"{record.internal_address}:{record.internal_port} (Call-ID {record.call_id} "
                f"{record.leg} leg, left by run {holder.run_id}, pid {holder.pid})")
        try:
            if ipaddress.ip_address(record.server) != ipaddress.ip_address(
                    str(client.core.config.server.address)) \
                    or record.server_port != client.core.config.server.port:
                raise PcpError(f"no socket towards {record.server} port {record.server_port}")
            await client.release(mapping_request(record), record.nonce, timeout=timeout)
        except (PcpError, OSError, ValueError) as exc:
            left = record.expires_at - self.clock()
            logger.warning("gateway %s: cannot delete %s at %s (%s): forgetting it when it "
                           "lapses, in %.0f s", self.name, what, record.server, exc,
                           max(left, 0.0))
            self.forget_at(record)
            return False
        logger.info("gateway %s: deleted %s at %s (RFC 6887 section 15)", self.name, what,
                    record.server)
        self.write("forget a deleted mapping", lambda store: store.allocations.remove_mapping(
            holder.run_id, record.call_id, record.leg))
        return True

    def forget_at(self, record: PcpMappingRecord) -> None:
        """Forget the record once its mapping has lapsed at the CGN."""
        if self.closed:
            return

        def forget() -> None:
            self._lapse_timers.discard(handle)
            self.write("forget a lapsed mapping", lambda store: store.allocations.expire(
                max(self.clock(), record.expires_at)))

        handle = self.loop.call_later(max(record.expires_at - self.clock(), 0.0), forget)
        self._lapse_timers.add(handle)

    # -- the record ----------------------------------------------------------------------------

    def write(self, what: str, change: Callable[[Store], object]) -> None:
        """A store change; a failing store is logged, never a failed call."""
        if self.store is None:
            return
        try:
            change(self.store)
        except StoreError as exc:
            logger.warning("gateway %s: cannot %s in the store: %s", self.name, what, exc)

    def wall(self, loop_time: float | None) -> float:
        """A loop-clock instant on the wall clock of the records."""
        left = (loop_time - self.loop.time()) if loop_time is not None else 0.0
        return self.clock() + left

    def put_mapping(self, call_id: str, leg: str, request: MappingRequest,
                    external: PcpEndpoint, peer: PcpEndpoint | None, nonce: bytes,
                    expires_at: float | None) -> PcpMappingRecord | None:
        """A leg's mapping into the store (granted, renewed, FILTER replaced), `expires_at` on
        the loop clock; the record, None without a store."""
        if self.store is None:
            return None
        record = mapping_record(self.run, call_id, leg, self.server, self.port, request,
                                external, peer, nonce, self.wall(expires_at))
        self.write("record a PCP mapping", lambda store: store.allocations.put_mapping(record))
        return record

    def remove_mapping(self, call_id: str, leg: str) -> None:
        self.write("forget a PCP mapping", lambda store: store.allocations.remove_mapping(
            self.run.run_id, call_id, leg))

    def put_relays(self, call_id: str, legs: Sequence[OpenLeg]) -> None:
        """The call's relay allocations, as the relay holds them now (`legs`), into the
        store."""
        if self.store is None:
            return
        if not legs and call_id not in self._relay_calls:
            return
        records = tuple(leg.relay_record(self.run, self.wall(leg.allocation.expires_at))
                        for leg in legs)
        if records:
            self._relay_calls.add(call_id)
        else:
            self._relay_calls.discard(call_id)
        self.write("record relay allocations",
                   lambda store: store.allocations.put_relays(self.run.run_id, call_id,
                                                              records))
