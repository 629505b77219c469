"""The connectivity gateway behind the S-CSCF's seam (ims.seams), on the embedded default: each
operator relays its own side of the call through its userspace relay (ims.gateway.aiorelay).

The path. Every operator that helps a call holds one relay allocation per leg it serves; its
*caller side* port faces the caller's direction and its *callee side* port the callee's. With
both operators relaying, a datagram goes caller -> Alpha's relay -> Beta's relay -> callee:

    Bill -> [Alpha: caller side | callee side] -> [Beta: caller side | callee side] -> Dave

Each port admits one permitted peer, learned from SDP: the description's default destination
(c=/m=, RFC 8839 section 2, what a peer without ICE sends to). Each relaying operator adds its
port as a `typ relay` candidate and makes it the default (RFC 8445 section 5.1.4 ranks relayed
candidates first for the default), so the default a description carries is always the next
hop towards the UE that wrote it:

- the offer, on its way to the callee: the caller side admits the offer's default (Bill's
  endpoint at Alpha; Alpha's callee side port at Beta); the callee side port is added;
- the 2xx answer, on its way back (`complete`): the callee side admits the answer's default
  (Dave's endpoint at Beta; Beta's caller side port at Alpha); the caller side port is added.

So the answer Bill gets carries Dave's candidates, then Beta's relay candidate, then Alpha's
(the default, where Bill sends); the offer Dave gets ends with Beta's. Until the answer the
callee side admits nothing: the table drops what reaches either port of an unanswered
allocation. A same-operator call runs both legs through one relay, chained the same way.

The UEs' own candidates are kept (docs/extension.md section 8); the relay candidate's
raddr/rport are the unspecified address and the discard port, so the far side learns nothing
of the path behind the relay (topology hiding, as the border hides Vias).

Latching. A UE behind a CGN does not send from the endpoint its SDP's default names. Either
the default is its host candidate, a private address (RFC 6598 or RFC 1918 space, 100.64.0.2
in the testbed), or it is its server reflexive candidate (the default RFC 8445 section 5.1.4
prefers when the UE has a STUN server): the CGN's mapping towards the STUN server, which an
endpoint-dependent ("symmetric") CGN does not reuse towards the relay (RFC 4787 section 4.1),
so the relay sees another port of the same public address. A relay port whose peer's default
is either kind (`default_behind_nat`) admits nothing until that UE's first ICE connectivity
check, a STUN Binding request with the USERNAME "RFRAG:LFRAG" of RFC 8445 section 7.2.2 made
of the two ufrags of the offer and the answer and signed with the far side's ice-pwd, then
only its source (ims.gateway.relay). Any other peer (a host candidate on loopback in the
embedded default or on a public address, another operator's relay port) is admitted exactly as
SDP names it: a relay sends from the port it announced, and latching there would let a UE's
direct check to the far operator's relay capture the port meant for the near one.

Release: the S-CSCF calls `release` on the BYE, on a final non-2xx for every branch of the
INVITE (a CANCEL ends as 487), and when the request is refused after `prepare`; the relay
ends what is left at expiry. The lifetime is the session's: RFC 4028 Session-Expires of the
2xx (else of the INVITE), else the configured default; each in-dialog request (`refresh`)
restarts it, as a session refresh does (RFC 4028 section 10).

The record. With a store, each leg's allocation is recorded there (ims.gateway.pcp_recovery's
RunRecords, as the PCP gateway records its own) when `prepare` allocates it, again when the
answer or a refresh changes it, and forgotten at release and expiry: `ueconnect mno
--list-open` reads it. A relay dies with its process, so `start` forgets what earlier runs of
the operator left, and `close` what this run recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ims.gateway.aiorelay import RelayService, with_kernel
from ims.gateway.errors import GatewayError, GatewayUsageError, UnknownAllocation
from ims.gateway.nft_relay import KernelRelayCounters, NftRelayDataPlane
from ims.gateway.pcp_recovery import RunRecords, new_run
from ims.gateway.relay import (
    Address,
    PermittedPeer,
    RelayAllocation,
    RelayConfig,
    RelayTable,
    Side,
    normalise_address,
)
from ims.sdp import (
    Candidate,
    CandidateType,
    IceCredentials,
    NegotiatedStream,
    SdpError,
    SdpProtocolError,
    SessionDescription,
    add_candidate,
    application_stream_index,
    candidate_foundation,
    candidate_priority,
    parse_sdp,
    serialize_sdp,
    stream_endpoints,
)
from ims.seams import ConnectRequest, Leg, Refusal
from ims.sip.message import Request, Response
from ims.store import GatewayRun, RelayRecord, Store

__all__ = [
    "DISCARD_PORT",
    "MAX_SESSION_EXPIRES",
    "Offer",
    "OpenLeg",
    "RelayGateway",
    "behind_nat",
    "default_behind_nat",
    "gateway_candidate",
    "read_offer",
    "sdp_description",
    "session_expires",
    "show_address",
]

logger = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
DISCARD_PORT = 9  # raddr/rport of our relay candidates: nothing behind the relay is shown
MAX_SESSION_EXPIRES = 86_400  # bound on a Session-Expires we honour (one day)


# Address space a UE behind a CGN is numbered from: RFC 1918 private, RFC 6598 shared (the
# CGN's own), RFC 4193 unique local for IPv6.
_BEHIND_NAT = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))


def behind_nat(address: str) -> bool:
    """Whether an SDP address is one a CGN translates (so the relay latches on the UE's ICE
    check rather than trusting the address); False for loopback, public addresses and names."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in _BEHIND_NAT)


def default_behind_nat(stream: NegotiatedStream) -> bool:
    """Whether the description's default (c=/m=) is not where its writer's datagrams come
    from, so a relay port facing it must latch: a private address (`behind_nat`), or a server
    reflexive or peer reflexive candidate, a NAT's mapping towards someone else (RFC 4787
    section 4.1: an endpoint-dependent NAT maps each destination to its own port). A host
    candidate on a public or loopback address, a relay candidate and a default without ICE
    candidates on such an address are taken as written."""
    default = stream.default
    if behind_nat(default.address):
        return True
    address = _canonical(default.address)
    for candidate in stream.candidates:
        if candidate.component == 1 and candidate.port == default.port \
                and _canonical(candidate.address) == address:
            return candidate.type in (CandidateType.SRFLX, CandidateType.PRFLX)
    return False


def _canonical(address: str) -> str:
    """`normalise_address`, a name (which no candidate should carry) lower-cased instead."""
    try:
        return normalise_address(address)
    except GatewayUsageError:
        return address.lower()


def session_expires(message: Request | Response) -> int | None:
    """The delta-seconds of RFC 4028 section 4's Session-Expires (compact form `x`), None when
    absent or unreadable (then the configured lifetime applies; a bad header is not worth
    failing a call over), capped at MAX_SESSION_EXPIRES."""
    value = message.headers.get("Session-Expires")
    if value is None:
        return None
    delta = value.partition(";")[0].strip()
    if not delta.isascii() or not delta.isdigit() or len(delta) > 10 or int(delta) == 0:
        return None
    return min(int(delta), MAX_SESSION_EXPIRES)


@dataclass(frozen=True)
class OpenLeg:
    """What the gateway holds open for one leg of a call (the listing). The allocation's
    counters include what the kernel forwarded for it; `kernel` is that part alone (None:
    the kernel does not carry this leg, [gateway] relay_offload)."""

    call_id: str
    leg: Leg
    caller: str
    callee: str
    answered: bool
    allocation: RelayAllocation
    kernel: KernelRelayCounters | None = None

    def describe(self) -> str:
        a = self.allocation
        callee_peer = (show_address(a.callee_peer) if self.answered
                       else "(awaiting the answer)")
        kernel = (f" ({self.kernel.a_to_b_datagrams}/{self.kernel.b_to_a_datagrams} in the "
                  "kernel)" if self.kernel is not None else "")
        return (
            f"{self.call_id} {self.leg} {self.caller} -> {self.callee}: "
            f"caller {show_address(a.caller_peer)} <-> {show_address(a.caller_side)}, "
            f"callee {show_address(a.callee_side)} <-> {callee_peer}, "
            f"expires at {a.expires_at:.0f}, "
            f"{a.counters.caller_to_callee_datagrams}/{a.counters.callee_to_caller_datagrams} "
            f"datagrams{kernel}, {a.counters.dropped_unpermitted} dropped"
        )

    def relay_record(self, run: GatewayRun, expires_at: float) -> RelayRecord:
        """The leg as the store records it under `run`, `expires_at` on the wall clock."""
        a = self.allocation
        return RelayRecord(
            run, self.call_id, self.leg.value, a.caller_side[0], a.caller_side[1],
            a.callee_side[1], show_address(a.caller_peer),
            show_address(a.callee_peer) if self.answered else None, expires_at)


def show_address(address: Address) -> str:
    """An endpoint as the logs and listings show it: host:port, [host]:port for IPv6."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _AnsweringTable(RelayTable):
    """The relay table whose allocations know their callee side only from the answer: until
    `permit_callee`, both ports of an allocation drop everything (and the kernel takes
    nothing: its callee peer is a placeholder). `on_expired` hears of what `expire` ended."""

    def __init__(self, config: RelayConfig) -> None:
        super().__init__(config)
        self.awaiting: set[int] = set()
        self.on_expired: Callable[[tuple[RelayAllocation, ...]], None] | None = None

    def allocate(self, caller_peer: Address | PermittedPeer, callee_peer: Address | PermittedPeer,
                 caller_port: int, callee_port: int, now: float,
                 lifetime: float | None = None) -> RelayAllocation:
        allocation = super().allocate(caller_peer, callee_peer, caller_port, callee_port, now,
                                      lifetime)
        self.awaiting.add(allocation.id)
        return allocation

    def exact_peers(self, allocation_id: int) -> tuple[Address, Address] | None:
        if allocation_id in self.awaiting:
            return None
        return super().exact_peers(allocation_id)

    def permit_callee(self, allocation_id: int, peer: PermittedPeer) -> RelayAllocation:
        allocation = self.permit(allocation_id, Side.CALLEE, peer)
        self.awaiting.discard(allocation_id)
        return allocation

    def receive(self, allocation_id: int, side: Side, source: Address, size: int,
                now: float, datagram: bytes = b"") -> Address | None:
        if allocation_id in self.awaiting:
            return None
        return super().receive(allocation_id, side, source, size, now, datagram)

    def release(self, allocation_id: int) -> RelayAllocation:
        self.awaiting.discard(allocation_id)
        return super().release(allocation_id)

    def expire(self, now: float) -> tuple[RelayAllocation, ...]:
        ended = super().expire(now)
        for allocation in ended:
            self.awaiting.discard(allocation.id)
        if ended and self.on_expired is not None:
            self.on_expired(ended)
        return ended


class _Relay(RelayService):
    """RelayService over `_AnsweringTable`."""

    table: _AnsweringTable

    def __init__(self, config: RelayConfig, data_plane: NftRelayDataPlane | None = None) -> None:
        super().__init__(config, data_plane=data_plane)
        self.table = _AnsweringTable(config)


@dataclass
class _LegState:
    leg: Leg
    caller: str
    callee: str
    allocation_id: int
    lifetime: float
    caller_peer: PermittedPeer  # the offer's default, as this leg saw it
    caller_latches: bool  # that default is not where the caller sends from (behind a NAT)
    caller_credentials: IceCredentials | None  # the offer's ice-ufrag/ice-pwd (the caller's)
    answer_candidate: Candidate | None = None  # what `complete` adds, once known


class RelayGateway:
    """A ConnectivityGateway (and SessionGateway, ims.seams) relaying every leg it prepares.

        async with RelayGateway.open(RelayConfig("127.0.0.1"), lifetime=1800) as gateway:
            async with Operator.start(config, gateway=gateway): ...

    `lifetime` is the session lifetime without Session-Expires (seconds). With
    `RelayConfig.offload` nft (or a `data_plane`) the kernel forwards each leg once the
    answer, and the latching, told both its peers (ims.gateway.aiorelay).

    With a `store`, the legs are recorded there under `run` (see "The record" above), `clock`
    the wall clock of the records; the PCP gateway's fallback records through its own."""

    def __init__(self, relay: RelayService, *, lifetime: float, name: str = "",
                 store: Store | None = None, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(relay.table, _AnsweringTable):
            raise GatewayError("RelayGateway needs the relay RelayGateway.open makes")
        self.relay = relay
        self.table: _AnsweringTable = relay.table
        self.lifetime = self.table.lifetime_for(lifetime)
        self.name = name
        self.records = RunRecords(store, new_run(name), name=name, clock=clock, loop=relay.loop)
        self.run = self.records.run
        if store is not None:
            self.table.on_expired = self._expired
        self._calls: dict[str, list[_LegState]] = {}
        self.allocations_made = 0  # since start: what a refused call must not have raised

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: RelayConfig, *, lifetime: float, name: str = "",
                   data_plane: NftRelayDataPlane | None = None, store: Store | None = None,
                   clock: Callable[[], float] = time.time) -> AsyncIterator[RelayGateway]:
        gateway = cls.start(config, lifetime=lifetime, name=name, data_plane=data_plane,
                            store=store, clock=clock)
        try:
            yield gateway
        finally:
            await gateway.close()

    @classmethod
    def start(cls, config: RelayConfig, *, lifetime: float, name: str = "",
              data_plane: NftRelayDataPlane | None = None, store: Store | None = None,
              clock: Callable[[], float] = time.time) -> RelayGateway:
        """The gateway with its relay (call inside a running loop); `close` when done. With a
        `store`, it first forgets the relay allocations earlier runs of operator `name` left
        there (RunRecords.forget_left: their relay ended with their process)."""
        gateway = cls(_Relay(config, data_plane), lifetime=lifetime, name=name, store=store,
                      clock=clock)
        if store is not None:
            gateway.records.forget_left()
        return gateway

    async def close(self) -> None:
        self._calls.clear()
        self.records.close()
        await self.relay.close()
        self.records.forget_relays()

    # -- the seam ------------------------------------------------------------------------------

    async def prepare(self, request: ConnectRequest, *,
                      make_default: bool = True) -> Request | Refusal:
        """Allocate the leg's relay and add its callee side port to the offer, as the default
        unless `make_default` is False (a stand-by the PCP gateway keeps in case the CGN
        refuses its mapping at the answer)."""
        self._forget_expired()
        invite = request.request
        read = read_offer(request, self.name, "the relay")
        if not isinstance(read, Offer):
            return read
        offer, index, stream = read.description, read.index, read.stream
        try:
            caller_peer = PermittedPeer(stream.default.address, stream.default.port)
        except GatewayError as exc:
            return Refusal(488, f"Not Acceptable Here (offer unusable for the relay: {exc})")
        lifetime = float(session_expires(invite) or self.lifetime)
        placeholder = (self.table.config.relay_address, DISCARD_PORT)
        try:
            allocation = await self.relay.allocate(caller_peer, placeholder, lifetime)
        except GatewayError as exc:
            logger.warning("gateway %s: no relay for Call-ID %s: %s", self.name,
                           request.call_id, exc)
            return Refusal(503, "Service Unavailable (no relay port free)")
        self.allocations_made += 1
        self._calls.setdefault(request.call_id, []).append(_LegState(
            request.leg, request.caller, request.callee, allocation.id, lifetime, caller_peer,
            default_behind_nat(stream), stream.credentials,
        ))
        self._record(request.call_id)
        candidate = self._candidate(allocation.callee_side)
        rewritten = add_candidate(offer, candidate, media_index=index, make_default=make_default)
        logger.info("gateway %s: Call-ID %s %s leg: relay %s for the caller's %s, offering %s",
                    self.name, request.call_id, request.leg, allocation.id,
                    show_address((caller_peer.address, caller_peer.port)),
                    show_address(allocation.callee_side))
        return invite.with_body(serialize_sdp(rewritten), SDP_TYPE)

    def complete(self, call_id: str, response: Response) -> Response:
        """A 2xx to an INVITE we prepared: permit the answer's default on the callee side of
        each leg (the terminating one first: the answer meets it first) and add each leg's
        caller side port. A retransmitted 2xx, or a second fork's, gets the same candidates;
        only the first answer sets the peer."""
        legs = self._calls.get(call_id)
        if not legs or not 200 <= response.status_code < 300:
            return response
        answer = sdp_description(response)
        if answer is None or isinstance(answer, Refusal):
            logger.warning("gateway %s: the 2xx of Call-ID %s carries no readable SDP answer: "
                           "the relay stays closed", self.name, call_id)
            return response
        lifetime = session_expires(response)
        answered = False  # a leg learned its callee here (not on a retransmission): record it
        try:
            index = application_stream_index(answer)
            for state in sorted(legs, key=lambda s: s.leg is not Leg.TERMINATING):
                if state.answer_candidate is None:
                    answered = True
                    stream = stream_endpoints(answer, index)
                    default = stream.default
                    ours, theirs = state.caller_credentials, stream.credentials
                    caller = state.caller_peer
                    if state.caller_latches:
                        # The caller's checks name the callee's ufrag first, signed with the
                        # callee's password (RFC 8445 section 7.2.2).
                        caller = _latching(caller.address, caller.port, theirs, ours)
                        self.table.permit(state.allocation_id, Side.CALLER, caller)
                    callee = (_latching(default.address, default.port, ours, theirs)
                              if default_behind_nat(stream)
                              else PermittedPeer(default.address, default.port))
                    self.table.permit_callee(state.allocation_id, callee)
                    self.relay.hand_over(state.allocation_id)  # when both peers are exact
                    logger.info("gateway %s: Call-ID %s %s leg: relay %s admits the caller %s, "
                                "the callee %s", self.name, call_id, state.leg,
                                state.allocation_id, _admits(caller), _admits(callee))
                    if lifetime is not None:
                        state.lifetime = float(lifetime)
                    self.table.refresh(state.allocation_id, self.relay.loop.time(),
                                       state.lifetime)
                    allocation = self.table.allocation(state.allocation_id)
                    state.answer_candidate = self._candidate(allocation.caller_side)
                answer = add_candidate(answer, state.answer_candidate, media_index=index,
                                       make_default=True)
        except UnknownAllocation:
            logger.warning("gateway %s: the relay of Call-ID %s expired before the answer",
                           self.name, call_id)
            return response
        except (SdpError, GatewayError) as exc:
            logger.warning("gateway %s: the answer of Call-ID %s is unusable for the relay: %s",
                           self.name, call_id, exc)
            return response
        finally:
            if answered:
                self._record(call_id)
        return response.with_body(serialize_sdp(answer), SDP_TYPE)

    async def refresh(self, request: Request) -> None:
        """An in-dialog request of a call we relay: its lifetime starts again (RFC 4028
        section 10), with the request's Session-Expires when it carries one."""
        lifetime = session_expires(request)
        for state in self._calls.get(request.call_id, ()):
            if lifetime is not None:
                state.lifetime = float(lifetime)
            # Expired already: `_forget_expired` drops the record.
            with contextlib.suppress(UnknownAllocation):
                await self.relay.refresh(state.allocation_id, state.lifetime)
        if request.call_id in self._calls:
            self._record(request.call_id)

    async def release(self, call_id: str) -> None:
        for state in self._calls.pop(call_id, ()):
            await self._release(call_id, state)
        self._record(call_id)

    async def release_leg(self, call_id: str, leg: Leg) -> bool:
        """Release one leg of the call (the PCP gateway's stand-by once its mapping stands);
        False when this gateway relays no such leg."""
        legs = self._calls.get(call_id, [])
        mine = [s for s in legs if s.leg is leg]
        for state in mine:
            legs.remove(state)
            await self._release(call_id, state)
        if not legs:
            self._calls.pop(call_id, None)
        if mine:
            self._record(call_id)
        return bool(mine)

    def relays(self, call_id: str, leg: Leg | None = None) -> bool:
        """Whether the call (that leg of it) holds a relay allocation here."""
        return any(leg is None or s.leg is leg for s in self._calls.get(call_id, ()))

    async def _release(self, call_id: str, state: _LegState) -> None:
        with contextlib.suppress(UnknownAllocation):
            allocation = await self.relay.release(state.allocation_id)
            logger.info("gateway %s: Call-ID %s %s leg released: %s", self.name, call_id,
                        state.leg, allocation.counters)

    # -- the listing ---------------------------------------------------------------------------

    def open_legs(self, *, kernel: bool = True) -> tuple[OpenLeg, ...]:
        """Every leg holding a relay allocation now, oldest first; with `kernel`, its counters
        include what the kernel forwarded (one `nft -j` listing when the kernel carries legs:
        pass False where only the legs, not their counts, matter)."""
        self._forget_expired()
        forwarded_by = self.relay.kernel_counters() if kernel else {}
        return tuple(leg for call_id in self._calls for leg in self._legs(call_id, forwarded_by))

    def _legs(self, call_id: str,
              forwarded_by: dict[int, KernelRelayCounters] | None = None) -> list[OpenLeg]:
        """The call's legs holding an allocation now, with what the kernel forwarded."""
        out = []
        for state in self._calls.get(call_id, ()):
            with contextlib.suppress(UnknownAllocation):
                allocation = self.table.allocation(state.allocation_id)
                forwarded = (forwarded_by or {}).get(state.allocation_id)
                if forwarded is not None:
                    allocation = dataclasses.replace(
                        allocation, counters=with_kernel(allocation.counters, forwarded))
                out.append(OpenLeg(
                    call_id, state.leg, state.caller, state.callee,
                    state.allocation_id not in self.table.awaiting, allocation, forwarded,
                ))
        return out

    # -- the record ----------------------------------------------------------------------------

    def _record(self, call_id: str) -> None:
        """The call's allocations, as the relay holds them now, into the store (one write;
        none at all for a call never recorded and still holding nothing)."""
        if self.records.store is not None:
            self.records.put_relays(call_id, self._legs(call_id))

    def _expired(self, ended: tuple[RelayAllocation, ...]) -> None:
        """The relay expired `ended` (the session was neither refreshed nor ended): their
        calls' records follow."""
        ids = {allocation.id for allocation in ended}
        for call_id in [c for c, legs in self._calls.items()
                        if any(s.allocation_id in ids for s in legs)]:
            self._record(call_id)

    # -- inside --------------------------------------------------------------------------------

    def _candidate(self, address: Address) -> Candidate:
        return gateway_candidate(CandidateType.RELAY, address, self.name)

    def _forget_expired(self) -> None:
        """Drop the records of calls whose every allocation the relay expired."""
        for call_id in [c for c, legs in self._calls.items()
                        if not any(s.allocation_id in self.table for s in legs)]:
            del self._calls[call_id]


def _latching(address: str, port: int, far: IceCredentials | None,
              near: IceCredentials | None) -> PermittedPeer:
    """The peer a relay port admits when it faces a UE behind a NAT (`default_behind_nat`):
    whoever first sends the ICE check "<far ufrag>:<near ufrag>" signed with the far side's
    password (RFC 8445 section 7.2.2); without ICE credentials, RFC 7362's address latch."""
    if far is None or near is None:
        logger.info("relay peer %s:%s is behind a NAT but without ICE: latching on its address",
                    address, port)
        return PermittedPeer(address, port, latch=True)
    return PermittedPeer(address, port, ice_username=f"{far.ufrag}:{near.ufrag}",
                         ice_password=far.pwd)


def _admits(peer: PermittedPeer) -> str:
    """A permitted peer as the log shows it."""
    where = show_address((peer.address, peer.port))
    if peer.ice_username is not None:
        return f"{where} latching on the ICE check {peer.ice_username}"
    return f"{where} latching on its first datagram" if peer.latch else f"{where} exactly"


@dataclass(frozen=True)
class Offer:
    """The SDP offer of an INVITE a gateway prepares: the description and its application
    stream (the media `index` and what it negotiates)."""

    description: SessionDescription
    index: int
    stream: NegotiatedStream


def read_offer(request: ConnectRequest, gateway: str, user: str) -> Offer | Request | Refusal:
    """The offer of the INVITE behind `request`; the INVITE itself when it has no SDP body
    (nothing to open: logged as gateway `gateway`'s); a Refusal when the SDP cannot be read
    (400/488) or has no application stream `user` ("the relay", "the gateway") can use (488,
    RFC 3261 section 21.4.26)."""
    invite = request.request
    offer = sdp_description(invite)
    if isinstance(offer, Refusal):
        return offer
    if offer is None:
        logger.warning("gateway %s: %s of Call-ID %s has no SDP offer: nothing opened",
                       gateway, invite.method, request.call_id)
        return invite
    try:
        index = application_stream_index(offer)
        return Offer(offer, index, stream_endpoints(offer, index))
    except SdpError as exc:
        return Refusal(488, f"Not Acceptable Here (offer unusable for {user}: {exc})")


def gateway_candidate(kind: CandidateType, address: Address, gateway: str) -> Candidate:
    """The candidate a gateway adds for an endpoint it opened (`typ relay` for a relay port,
    `typ srflx` for a CGN mapping), component 1, UDP, RFC 8445 section 5.1.2 priority; its
    raddr/rport are the unspecified address and the discard port, so it shows nothing of what
    lies behind (topology hiding)."""
    host, port = address
    return Candidate(
        foundation=candidate_foundation(kind, host, server=gateway or None),
        component=1,
        transport="UDP",
        priority=candidate_priority(kind),
        address=host,
        port=port,
        type=kind,
        related_address="::" if ":" in host else "0.0.0.0",
        related_port=DISCARD_PORT,
    )


def sdp_description(message: Request | Response) -> SessionDescription | Refusal | None:
    """The message's SDP (None: no SDP body); a Refusal (400/488) when it cannot be read."""
    content_type = (message.headers.get("Content-Type") or "").partition(";")[0].strip()
    if not message.body or content_type.lower() != SDP_TYPE:
        return None
    try:
        return parse_sdp(message.body)
    except SdpProtocolError as exc:
        return Refusal(exc.status_code or 400, f"Bad Request (SDP: {exc})")
