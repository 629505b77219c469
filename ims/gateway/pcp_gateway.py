"""The connectivity gateway in mode pcp: peer-scoped mappings on this operator's CGN through
PCP (RFC 6887), the userspace relay (ims.gateway.service) for a leg the CGN will not map.

The path, with Bill (100.64.0.2:pb behind Alpha's CGN) calling Dave (100.64.0.2:pd behind
Beta's):

- Alpha, originating leg, `prepare`: a MAP for THIRD_PARTY(100.64.0.2) internal port pb
  (section 13.1) with a FILTER that admits nobody yet (section 13.3: ::ffff:0.0.0.0/128 port
  0), so nothing reaches Bill before the callee consented and answered. The CGN assigns E_a:xb;
  the offer gets a `typ srflx` candidate E_a:xb, made its default (c=/m=).
- Beta, terminating leg, `prepare`: Dave's port is not known before the answer. A relay
  allocation stands by (its `typ relay` candidate goes into the offer, not as the default), so
  that Dave can still be reached if Beta's CGN refuses the mapping at the answer.
- Beta, `complete` (the 2xx from Dave): a PEER for THIRD_PARTY(100.64.0.2) internal pd with
  remote peer = the offer's default E_a:xb (section 12): the CGN assigns E_b:xd and admits
  only E_a:xb there; the answer gets the srflx candidate E_b:xd as its default. The stand-by
  relay is released.
- Alpha, `complete`: the same MAP again, same nonce, FILTER = the answer's default E_b:xd
  (section 13.3: the FILTERs of a renewal replace the mapping's).

The UE's address in THIRD_PARTY is its host candidate's (else the description's default);
the candidates the gateway adds carry raddr 0.0.0.0 rport 9, hiding what lies behind the CGN.
The PCP client renews the mappings at half their lifetime (section 11.2.1) and re-creates them
when the server restarts (section 8.5). The session's own lifetime (RFC 4028, as the relay's)
bounds them: a session that is neither refreshed nor ended is released at its expiry.

Fallback. Any PCP error result or no answer within `timeout` when a leg's mapping is first
asked for: that leg is relayed instead (the originating leg's offer gets the relay candidate
as its default; the terminating leg's stand-by relay is completed and its caller side port
becomes the answer's default), logged with the result code and counted. If the FILTER update
of an established MAP fails, the mapping keeps admitting nobody (logged, counted as refused):
the offer has gone out, no relay can stand in any more.

Release (BYE, every branch failed, refused after `prepare`, session expiry): a PCP delete
(lifetime 0, section 15) of every mapping and the relay's release. A mapping the operator
could not delete (it crashed, the CGN was unreachable) lapses after its PCP lifetime.

`complete` needs the network: it returns an awaitable and the S-CSCF holds the 2xx until it is
done (ims.sip.proxy.Hold); a retransmitted 2xx, once completed, is rewritten at once.

Restart recovery (ims.gateway.pcp_recovery). With a store, what is open is recorded there under
this run (`GatewayRun`) and what earlier runs of the operator left is deleted at `start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from ims.gateway.aiorelay import RelayService
from ims.gateway.errors import GatewayUsageError
from ims.gateway.pcp_recovery import RecoveryOutcome, RunRecords, new_run
from ims.gateway.relay import RelayConfig
from ims.gateway.service import (
    SDP_TYPE,
    Offer,
    OpenLeg,
    RelayGateway,
    gateway_candidate,
    read_offer,
    sdp_description,
    session_expires,
)
from ims.pcp.aioclient import AsyncPcpClient, open_pcp_client
from ims.pcp.client import (
    MappingExpired,
    MappingReady,
    MappingRefused,
    MappingRequest,
    PcpClientEvent,
    ServerStateLost,
)
from ims.pcp.codec import ANY_IPV4, ANY_IPV6, Filter, IPAddress
from ims.pcp.codec import Endpoint as PcpEndpoint
from ims.pcp.constants import PROTOCOL_UDP, SERVER_PORT
from ims.pcp.errors import PcpError, PcpRefused, PcpTimeout
from ims.sdp import (
    Candidate,
    CandidateType,
    NegotiatedStream,
    SdpError,
    SessionDescription,
    add_candidate,
    application_stream_index,
    serialize_sdp,
    stream_endpoints,
)
from ims.seams import ConnectRequest, Leg, Refusal
from ims.sip.message import Request, Response
from ims.store import PcpMappingRecord, Store

__all__ = ["PcpGateway", "PcpGatewayConfig", "PcpOpenLeg"]

logger = logging.getLogger(__name__)

# Bound on how long `close` spends deleting what is still mapped (each delete is also bounded
# by the PCP timeout); what is left lapses at its PCP lifetime.
CLOSE_DEADLINE = 5.0


@dataclass(frozen=True)
class PcpGatewayConfig:
    """The validated [gateway] pcp_* keys: the CGN's PCP server, the mapping lifetime asked
    for (seconds), and how long to wait for an answer before relaying the leg instead."""

    server: str
    port: int = SERVER_PORT
    lifetime: int = 120
    timeout: float = 3.0

    def __post_init__(self) -> None:
        try:
            address = ipaddress.ip_address(self.server)
        except ValueError:
            raise GatewayUsageError(f"pcp_server {self.server!r} is not an IP address") from None
        if address.is_unspecified:
            raise GatewayUsageError("pcp_server is the unspecified address")
        if not 1 <= self.port <= 0xFFFF:
            raise GatewayUsageError(f"pcp_server port {self.port} is outside 1..65535")
        if not 1 <= self.lifetime < 1 << 32:
            raise GatewayUsageError(f"pcp_lifetime {self.lifetime} is not 1 s or more")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise GatewayUsageError(f"pcp_timeout {self.timeout} is not a positive number")

    @property
    def address(self) -> IPAddress:
        return ipaddress.ip_address(self.server)


@dataclass(frozen=True)
class PcpOpenLeg:
    """One leg held open by a PCP mapping (the listing, beside the relay's OpenLeg).

    `opcode` is "MAP" (originating: `peer` is the FILTER, None while it admits nobody) or
    "PEER" (terminating: `peer` is the remote peer); `lifetime_left` in seconds until the
    mapping lapses unless the PCP client renews it."""

    call_id: str
    leg: Leg
    caller: str
    callee: str
    answered: bool
    opcode: str
    internal: PcpEndpoint
    external: PcpEndpoint
    peer: PcpEndpoint | None
    lifetime_left: float

    def describe(self) -> str:
        peer = str(self.peer) if self.peer is not None else "nobody yet (awaiting the answer)"
        return (
            f"{self.call_id} {self.leg} {self.caller} -> {self.callee}: PCP {self.opcode} "
            f"internal {self.internal} external {self.external} peer {peer}, "
            f"{max(self.lifetime_left, 0.0):.0f} s of lifetime left"
        )


@dataclass
class _Mapping:
    """What the gateway asked of the CGN for one leg."""

    request: MappingRequest
    nonce: bytes
    external: PcpEndpoint
    mapping_id: int | None  # the PCP client's id while it keeps the mapping renewed
    peer: PcpEndpoint | None = None  # the FILTER's (MAP) or the remote peer (PEER)
    record: PcpMappingRecord | None = None  # as the store has it


@dataclass
class _PcpLeg:
    leg: Leg
    caller: str
    callee: str
    offer_default: PcpEndpoint | None  # where the caller's side receives, as this leg saw it
    relayed: bool = False  # the relay serves this leg (fallback)
    standby: bool = False  # terminating: a relay stands by until the PEER stands
    mapping: _Mapping | None = None
    candidate: Candidate | None = None  # the srflx candidate `complete` adds (terminating)


@dataclass
class _Call:
    legs: list[_PcpLeg]
    lifetime: float
    expires_at: float
    completion: asyncio.Task[None] | None = None
    completed: bool = False


class _Metrics:
    """The gateway's Prometheus counters, on the operator's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.opened = Counter(
            "ueconnect_gateway_pcp_mappings_opened", "PCP mappings the CGN granted, by opcode",
            ("opcode",), registry=registry)
        self.refused = Counter(
            "ueconnect_gateway_pcp_mappings_refused", "PCP requests refused or unanswered, by "
            "opcode and result (a PCP result code name, or TIMEOUT)", ("opcode", "result"),
            registry=registry)
        self.fallbacks = Counter(
            "ueconnect_gateway_relay_fallbacks", "Legs relayed because PCP could not map them",
            ("leg",), registry=registry)


class PcpGateway:
    """A SessionGateway (ims.seams) opening each leg through PCP on the CGN, the relay as
    fallback. Build it with `start` inside a running loop; `close` when done.

    `relay` is the fallback relay's RelayService (what `ueconnect mno` reports);
    `mappings_opened`, `mappings_refused` and `fallbacks` count since start. With a `store`,
    what is open is recorded there under `run` (see "Restart recovery" above); `clock` is the
    wall clock of the records."""

    def __init__(self, client: AsyncPcpClient, fallback: RelayGateway, config: PcpGatewayConfig,
                 *, name: str = "", registry: CollectorRegistry | None = None,
                 store: Store | None = None, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.fallback = fallback
        self.config = config
        self.name = name
        self.store = store
        self.clock = clock
        self.loop = asyncio.get_running_loop()
        self.records = RunRecords(store, new_run(name), name=name, server=config.server,
                                  port=config.port, clock=clock, loop=self.loop)
        self.run = self.records.run
        self.mappings_opened = 0
        self.mappings_refused = 0
        self.fallbacks = 0
        self._metrics = _Metrics(registry) if registry is not None else None
        self._calls: dict[str, _Call] = {}
        self._by_mapping: dict[int, tuple[str, _PcpLeg]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @classmethod
    async def start(cls, config: PcpGatewayConfig, relay: RelayConfig, *, lifetime: float,
                    name: str = "", registry: CollectorRegistry | None = None,
                    store: Store | None = None,
                    clock: Callable[[], float] = time.time) -> PcpGateway:
        """The gateway with its fallback relay and its PCP client. The client sends from the
        relay address when it is of the server's family (the CGN admits THIRD_PARTY only from
        the operator's control addresses). With a `store`, it records what it opens there
        and first deletes what earlier runs of operator `name` left (`recover`, bounded by
        the PCP timeout). Raises GatewayUsageError when no socket towards the server can be
        opened."""
        fallback = RelayGateway.start(relay, lifetime=lifetime, name=name)
        same_family = ipaddress.ip_address(relay.relay_address).version == config.address.version
        gateway: PcpGateway | None = None

        def on_event(event: PcpClientEvent) -> None:
            if gateway is not None:
                gateway._on_pcp_event(event)

        try:
            client = await open_pcp_client(
                config.server, port=config.port,
                local_address=relay.relay_address if same_family else None, on_event=on_event)
        except OSError as exc:
            await fallback.close()
            raise GatewayUsageError(
                f"cannot open a PCP socket towards {config.server} port {config.port}: "
                f"{exc.strerror or exc}"
            ) from None
        gateway = cls(client, fallback, config, name=name, registry=registry, store=store,
                      clock=clock)
        if store is not None:
            await gateway.recover()
        return gateway

    @property
    def relay(self) -> RelayService:
        return self.fallback.relay

    async def close(self) -> None:
        """Delete what is still mapped (bounded), stop the PCP client and the relay."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.records.close()
        for task in list(self._tasks):
            task.cancel()
        calls = list(self._calls)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(self.release(c) for c in calls), return_exceptions=True),
                CLOSE_DEADLINE)
        await self.client.close()
        await self.fallback.close()
        self.records.forget_relays()

    async def recover(self) -> RecoveryOutcome:
        """Delete at the PCP server what earlier, finished runs of this operator left recorded
        and forget their relay allocations (RunRecords.recover); bounded by the PCP timeout."""
        return await self.records.recover(self.client, self.config.timeout)

    # -- the record ----------------------------------------------------------------------------

    def _record(self, call_id: str, state: _PcpLeg, expires_at: float | None = None) -> None:
        """The leg's mapping into the store (granted, renewed, FILTER replaced)."""
        mapping = state.mapping
        if mapping is None or self.store is None:
            return
        mapping.record = self.records.put_mapping(
            call_id, state.leg.value, mapping.request, mapping.external, mapping.peer,
            mapping.nonce, expires_at if expires_at is not None else self._expires_at(mapping))

    def _unrecord(self, call_id: str, state: _PcpLeg, mapping: _Mapping) -> None:
        if mapping.record is None:
            return
        mapping.record = None
        self.records.remove_mapping(call_id, state.leg.value)

    def _record_relays(self, call_id: str) -> None:
        """The call's relay allocations, as the relay holds them now, into the store."""
        if self.store is None:
            return
        self.records.put_relays(call_id, [leg for leg in self.fallback.open_legs(kernel=False)
                                          if leg.call_id == call_id])

    # -- the seam ------------------------------------------------------------------------------

    async def prepare(self, request: ConnectRequest) -> Request | Refusal:
        invite = request.request
        read = read_offer(request, self.name, "the gateway")
        if not isinstance(read, Offer):
            return read
        offer, index, stream = read.description, read.index, read.stream
        state = _PcpLeg(request.leg, request.caller, request.callee,
                        _endpoint(stream.default.address, stream.default.port))
        lifetime = float(session_expires(invite) or self.fallback.lifetime)
        call = self._calls.get(request.call_id)
        if call is None:
            call = _Call([], lifetime, self.loop.time() + lifetime)
            self._calls[request.call_id] = call
            self._arm_expiry()
        call.legs.append(state)
        if request.leg is Leg.TERMINATING:
            prepared = await self._stand_by(request, state)
            self._record_relays(request.call_id)
            return prepared
        host = _ue_host(stream)
        mapping: _Mapping | PcpError
        if host is None:
            mapping = PcpError("the offer names no IP address for the caller's UE")
        else:
            nobody = Filter(128, 0, ANY_IPV4 if host.address.version == 4 else ANY_IPV6)
            mapping = await self._map(MappingRequest(
                PROTOCOL_UDP, host.port, self.config.lifetime, third_party=host.address,
                filters=(nobody,)), request.call_id, state)
        if isinstance(mapping, PcpError):
            relayed = await self._fall_back(request, state, mapping)
            self._record_relays(request.call_id)
            return relayed
        state.mapping = mapping
        self._record(request.call_id, state)
        rewritten = add_candidate(offer, self._candidate(mapping.external), media_index=index,
                                  make_default=True)
        logger.info("gateway %s: Call-ID %s %s leg: PCP MAP %s -> %s admitting nobody yet, "
                    "offered as srflx", self.name, request.call_id, request.leg, host,
                    mapping.external)
        return invite.with_body(serialize_sdp(rewritten), SDP_TYPE)

    def complete(self, call_id: str, response: Response) -> Response | Awaitable[Response]:
        """A 2xx to an INVITE we prepared: the terminating leg's PEER, the relay's legs, the
        originating leg's FILTER, in the order the answer meets them. Needs the CGN the first
        time (an awaitable); once done, every 2xx of the call is rewritten at once."""
        call = self._calls.get(call_id)
        if call is None or not 200 <= response.status_code < 300:
            return self.fallback.complete(call_id, response)
        if call.completed:
            return self._rewrite(call_id, call, response)
        if call.completion is None:
            call.completion = self.loop.create_task(self._complete(call_id, call, response))
        return self._after(call_id, call, call.completion, response)

    async def refresh(self, request: Request) -> None:
        """An in-dialog request: the session lives on (RFC 4028 section 10)."""
        call = self._calls.get(request.call_id)
        if call is not None:
            lifetime = session_expires(request)
            if lifetime is not None:
                call.lifetime = float(lifetime)
            call.expires_at = self.loop.time() + call.lifetime
            self._arm_expiry()
        await self.fallback.refresh(request)
        self._record_relays(request.call_id)

    async def release(self, call_id: str) -> None:
        await self._release(call_id, self._calls.pop(call_id, None))

    async def _release(self, call_id: str, call: _Call | None) -> None:
        if call is not None:
            if call.completion is not None and not call.completion.done():
                call.completion.cancel()
            await asyncio.gather(*(self._delete(call_id, s) for s in call.legs
                                   if s.mapping is not None))
        await self.fallback.release(call_id)
        self._record_relays(call_id)

    # -- the listing ---------------------------------------------------------------------------

    def open_legs(self, *, kernel: bool = True) -> tuple[PcpOpenLeg | OpenLeg, ...]:
        """Every leg holding a PCP mapping, then every leg holding a relay allocation (`kernel`:
        as `RelayGateway.open_legs`)."""
        now = self.loop.time()
        out: list[PcpOpenLeg | OpenLeg] = []
        for call_id, call in self._calls.items():
            for state in call.legs:
                mapping = state.mapping
                if mapping is None:
                    continue
                expires_at = self._expires_at(mapping)
                out.append(PcpOpenLeg(
                    call_id, state.leg, state.caller, state.callee, call.completed,
                    mapping.request.opcode.name,
                    PcpEndpoint(_third_party(mapping.request), mapping.request.internal_port),
                    mapping.external, mapping.peer,
                    expires_at - now if expires_at is not None else 0.0,
                ))
        return (*out, *self.fallback.open_legs(kernel=kernel))

    # -- inside: the CGN -----------------------------------------------------------------------

    async def _map(self, request: MappingRequest, call_id: str, state: _PcpLeg,
                   nonce: bytes | None = None) -> _Mapping | PcpError:
        """Ask the CGN; the mapping, or the error (refusal, timeout) that stands for it."""
        opcode = request.opcode.name
        try:
            mapping_id, ready = await self.client.map(request, timeout=self.config.timeout,
                                                      nonce=nonce)
        except PcpError as exc:
            result = (exc.result_code.name if isinstance(exc, PcpRefused)
                      else "TIMEOUT" if isinstance(exc, PcpTimeout) else "ERROR")
            self.mappings_refused += 1
            if self._metrics is not None:
                self._metrics.refused.labels(opcode, result).inc()
            return exc
        except OSError as exc:  # ICMP unreachable surfacing on the socket
            self.mappings_refused += 1
            if self._metrics is not None:
                self._metrics.refused.labels(opcode, "NETWORK").inc()
            return PcpError(f"cannot reach the PCP server: {exc.strerror or exc}")
        self.mappings_opened += 1
        if self._metrics is not None:
            self._metrics.opened.labels(opcode).inc()
        self._by_mapping[mapping_id] = (call_id, state)
        mapped_nonce = self.client.core.mapping(mapping_id).nonce
        peer = request.remote_peer or _filter_peer(request)
        return _Mapping(request, mapped_nonce, ready.external, mapping_id, peer)

    async def _delete(self, call_id: str, state: _PcpLeg) -> None:
        """Section 15: lifetime 0 for the leg's mapping (best effort, bounded)."""
        mapping = state.mapping
        if mapping is None:
            return
        state.mapping = None
        try:
            mapping_id = mapping.mapping_id
            if mapping_id is not None and mapping_id in self.client.core.mapping_ids:
                self._by_mapping.pop(mapping_id, None)
                await self.client.delete(mapping_id, timeout=self.config.timeout)
            else:
                await self.client.release(mapping.request, mapping.nonce,
                                          timeout=self.config.timeout)
        except (PcpError, OSError) as exc:
            logger.warning("gateway %s: Call-ID %s %s leg: PCP delete of %s failed (%s); it "
                           "lapses within %d s", self.name, call_id, state.leg,
                           mapping.external, exc, mapping.request.lifetime)
            if mapping.record is not None:
                # Recorded until it lapses: a restart meanwhile tries the delete again.
                self.records.forget_at(mapping.record)
            return
        self._unrecord(call_id, state, mapping)
        logger.info("gateway %s: Call-ID %s %s leg: PCP %s %s deleted", self.name, call_id,
                    state.leg, mapping.request.opcode.name, mapping.external)

    def _expires_at(self, mapping: _Mapping) -> float | None:
        if mapping.mapping_id is None or mapping.mapping_id not in self.client.core.mapping_ids:
            return None
        return self.client.core.mapping(mapping.mapping_id).expires_at

    def _on_pcp_event(self, event: PcpClientEvent) -> None:
        """What the PCP client reports on its own (renewals, expiry, a server restart)."""
        if isinstance(event, ServerStateLost):
            logger.warning("gateway %s: the PCP server %s lost its state (epoch %d): "
                           "re-creating %d mapping(s)", self.name, self.config.server,
                           event.epoch_time, len(event.recreating))
            return
        if isinstance(event, MappingReady):
            renewed = self._by_mapping.get(event.mapping_id)
            if event.renewed and renewed is not None and renewed[1].mapping is not None:
                # Section 11.2.1 renewal (or section 8.5 re-creation): a new expiry, perhaps
                # a new external endpoint.
                renewed[1].mapping.external = event.external
                self._record(renewed[0], renewed[1], event.expires_at)
            return
        if isinstance(event, MappingRefused) and (event.kept or not event.renewal):
            return  # kept: retried on schedule; not a renewal: `map` reports it
        if isinstance(event, MappingRefused | MappingExpired):
            entry = self._by_mapping.pop(event.mapping_id, None)
            if entry is None:
                return
            call_id, state = entry
            if state.mapping is not None:
                state.mapping.mapping_id = None
                self._unrecord(call_id, state, state.mapping)
            logger.warning("gateway %s: Call-ID %s %s leg: the CGN no longer keeps the mapping "
                           "(%s)", self.name, call_id, state.leg,
                           event.error if isinstance(event, MappingRefused) else "expired")

    # -- inside: the legs ----------------------------------------------------------------------

    async def _stand_by(self, request: ConnectRequest, state: _PcpLeg) -> Request | Refusal:
        """Terminating leg: the relay stands by until the answer (see the module text)."""
        prepared = await self.fallback.prepare(request, make_default=False)
        if isinstance(prepared, Refusal):
            logger.warning("gateway %s: Call-ID %s: no stand-by relay (%s %s): if the CGN "
                           "refuses the PEER there is no path", self.name, request.call_id,
                           prepared.status_code, prepared.reason)
            return request.request
        state.standby = True
        return prepared

    async def _fall_back(self, request: ConnectRequest, state: _PcpLeg,
                         cause: PcpError) -> Request | Refusal:
        self._count_fallback(request.call_id, state, cause)
        state.relayed = True
        return await self.fallback.prepare(request)

    def _count_fallback(self, call_id: str, state: _PcpLeg, cause: PcpError) -> None:
        self.fallbacks += 1
        if self._metrics is not None:
            self._metrics.fallbacks.labels(state.leg.value).inc()
        logger.warning("gateway %s: Call-ID %s %s leg: no PCP mapping (%s): relaying it",
                       self.name, call_id, state.leg, _outcome(cause))

    async def _after(self, call_id: str, call: _Call, completion: asyncio.Task[None],
                     response: Response) -> Response:
        try:
            await asyncio.shield(completion)
        except asyncio.CancelledError:
            if not completion.cancelled():
                raise
            return response  # released meanwhile: nothing left to add
        except Exception:
            logger.exception("gateway %s: completing Call-ID %s failed", self.name, call_id)
            return response
        return self._rewrite(call_id, call, response)

    async def _complete(self, call_id: str, call: _Call, response: Response) -> None:
        """The network part of `complete`, once per call."""
        answer = sdp_description(response)
        if answer is None or isinstance(answer, Refusal):
            logger.warning("gateway %s: the 2xx of Call-ID %s carries no readable SDP answer: "
                           "nothing opened for it", self.name, call_id)
            call.completed = True
            return
        lifetime = session_expires(response)
        if lifetime is not None:
            call.lifetime = float(lifetime)
            call.expires_at = self.loop.time() + call.lifetime
            self._arm_expiry()
        try:
            index = application_stream_index(answer)
            stream = stream_endpoints(answer, index)
        except SdpError as exc:
            logger.warning("gateway %s: the answer of Call-ID %s is unusable: %s", self.name,
                           call_id, exc)
            call.completed = True
            return
        for state in call.legs:
            if state.leg is Leg.TERMINATING and not state.relayed:
                await self._peer(call_id, state, stream)
        call.completed = True
        # The answer as the originating leg will see it: with the terminating leg's and the
        # relay's candidates (same-operator calls), its default the next hop towards the callee.
        rewritten = self._rewrite(call_id, call, response)
        final = sdp_description(rewritten)
        if not isinstance(final, SessionDescription):
            return
        for state in call.legs:
            if state.leg is Leg.ORIGINATING and state.mapping is not None:
                await self._filter(call_id, state, final)
        self._record_relays(call_id)

    async def _peer(self, call_id: str, state: _PcpLeg, answer: NegotiatedStream) -> None:
        """Section 12: the PEER for the callee's UE towards the offer's default."""
        host = _ue_host(answer)
        remote = state.offer_default
        mapping: _Mapping | PcpError
        if host is None or remote is None:
            mapping = PcpError("the offer or the answer names no IP address for a PEER")
        elif host.address.version != remote.address.version:
            mapping = PcpError(f"the callee's {host.address} and the remote {remote.address} "
                               "are of different families")
        else:
            mapping = await self._map(MappingRequest(
                PROTOCOL_UDP, host.port, self.config.lifetime, remote_peer=remote,
                third_party=host.address), call_id, state)
        if isinstance(mapping, PcpError):
            self._count_fallback(call_id, state, mapping)
            state.relayed = True
            if not state.standby:
                logger.warning("gateway %s: Call-ID %s: no stand-by relay either: the callee "
                               "cannot be reached through this operator", self.name, call_id)
            return
        state.mapping = mapping
        self._record(call_id, state)
        state.candidate = self._candidate(mapping.external)
        if state.standby:
            state.standby = False
            await self.fallback.release_leg(call_id, Leg.TERMINATING)
        logger.info("gateway %s: Call-ID %s %s leg: PCP PEER %s -> %s admitting %s",
                    self.name, call_id, state.leg, host, mapping.external, remote)

    async def _filter(self, call_id: str, state: _PcpLeg,
                      answer: SessionDescription) -> None:
        """Section 13.3: the MAP renewed with the same nonce and FILTER = the answer's
        default, which replaces the FILTER admitting nobody."""
        mapping = state.mapping
        assert mapping is not None
        try:
            default = stream_endpoints(answer, application_stream_index(answer)).default
        except SdpError as exc:
            logger.warning("gateway %s: Call-ID %s: no default in the answer (%s): the MAP "
                           "keeps admitting nobody", self.name, call_id, exc)
            return
        peer = _endpoint(default.address, default.port)
        if peer is None or peer.address.version != mapping.external.address.version:
            logger.warning("gateway %s: Call-ID %s: the answer's default %s:%s cannot be a "
                           "FILTER: the MAP keeps admitting nobody", self.name, call_id,
                           default.address, default.port)
            return
        request = MappingRequest(
            PROTOCOL_UDP, mapping.request.internal_port, self.config.lifetime,
            third_party=mapping.request.third_party,
            filters=(Filter(128, peer.port, peer.address),),
            suggested_external=mapping.external)
        if mapping.mapping_id is not None:
            # The client would renew the old request (FILTER: nobody) beside the new one.
            self._by_mapping.pop(mapping.mapping_id, None)
            self.client.core.abandon(mapping.mapping_id)
            mapping.mapping_id = None
        updated = await self._map(request, call_id, state, nonce=mapping.nonce)
        if isinstance(updated, PcpError):
            mapping.request = request  # deleted by nonce at release, whatever it holds now
            logger.warning("gateway %s: Call-ID %s %s leg: the FILTER update of MAP %s was "
                           "not granted (%s): it keeps admitting nobody", self.name, call_id,
                           state.leg, mapping.external, _outcome(updated))
            return
        state.mapping = updated
        self._record(call_id, state)
        logger.info("gateway %s: Call-ID %s %s leg: PCP MAP %s now admits %s", self.name,
                    call_id, state.leg, updated.external, peer)

    def _rewrite(self, call_id: str, call: _Call, response: Response) -> Response:
        """The 2xx with what completing added: the terminating leg's srflx candidate, then
        the relay's (which keeps its own record). The same for every 2xx of the call."""
        answer = sdp_description(response)
        if answer is None or isinstance(answer, Refusal):
            return response
        changed = False
        try:
            for state in call.legs:
                if state.candidate is not None:
                    answer = add_candidate(answer, state.candidate, make_default=True)
                    changed = True
        except SdpError as exc:
            logger.warning("gateway %s: the answer of Call-ID %s is unusable: %s", self.name,
                           call_id, exc)
            return response
        if changed:
            response = response.with_body(serialize_sdp(answer), SDP_TYPE)
        if self.fallback.relays(call_id):
            completed = self.fallback.complete(call_id, response)
            assert isinstance(completed, Response)  # the relay completes at once
            response = completed
        return response

    def _candidate(self, external: PcpEndpoint) -> Candidate:
        """The `typ srflx` candidate of a mapping; raddr/rport say nothing of the UE."""
        return gateway_candidate(CandidateType.SRFLX, (str(external.address), external.port),
                                 self.name)

    # -- inside: session expiry ----------------------------------------------------------------

    def _arm_expiry(self) -> None:
        if self._closed:
            return
        when = min((c.expires_at for c in self._calls.values()), default=None)
        if self._timer is not None:
            if when is not None and self._timer.when() == when:
                return
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = self.loop.call_at(when, self._on_expiry)

    def _on_expiry(self) -> None:
        self._timer = None
        now = self.loop.time()
        for call_id in [c for c, call in self._calls.items() if call.expires_at <= now]:
            logger.info("gateway %s: Call-ID %s expired without a refresh: releasing",
                        self.name, call_id)
            task = self.loop.create_task(self._release(call_id, self._calls.pop(call_id)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._arm_expiry()


def _outcome(error: PcpError) -> str:
    """A refusal's result code as the log shows it (RFC 6887 section 7.4), or the timeout."""
    if isinstance(error, PcpRefused):
        return f"{error.result_code.name} ({int(error.result_code)}) from {error.server}"
    return str(error)


def _endpoint(address: str, port: int) -> PcpEndpoint | None:
    """An SDP address and port as PCP's, None for an FQDN."""
    try:
        return PcpEndpoint(ipaddress.ip_address(address.split("%")[0]), port)
    except ValueError:
        return None


def _ue_host(stream: NegotiatedStream) -> PcpEndpoint | None:
    """The UE's own address and port: its host candidate (component 1), else the default."""
    for candidate in stream.candidates:
        if candidate.type == CandidateType.HOST and candidate.component == 1:
            found = _endpoint(candidate.address, candidate.port)
            if found is not None:
                return found
    return _endpoint(stream.default.address, stream.default.port)


def _third_party(request: MappingRequest) -> IPAddress:
    assert request.third_party is not None  # every request of this gateway names the UE
    return request.third_party


def _filter_peer(request: MappingRequest) -> PcpEndpoint | None:
    """The one peer a MAP's FILTER admits, None while it admits nobody."""
    for item in request.filters:
        if item.prefix_length and item.remote_peer_port \
                and not item.remote_peer_address.is_unspecified:
            return PcpEndpoint(item.remote_peer_address, item.remote_peer_port)
    return None

