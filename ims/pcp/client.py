"""The PCP client, sans-IO (RFC 6887 sections 8, 11.2.1, 15): mappings requested, kept and
deleted against one server.

aioquic's shape: every call takes `now`; `get_timer()` says when `handle_timer(now)` is due;
`datagrams_to_send()` yields what to send to the server; `next_event()` yields what happened.
Randomness (retransmission jitter, renewal time, nonces) is injected, so tests are exact.

Schedules:
- a request without answer is retransmitted per section 8.1.1: RT = (1 + RAND) * IRT, then
  RT = (1 + RAND) * MIN(2 * RTprev, MRT), RAND uniform in [-0.1, +0.1], IRT 3 s, MRT 1024 s,
  MRC = MRD = 0 (no limit: the caller abandons when it has waited enough);
- an established mapping is renewed per section 11.2.1: once at a random time between 1/2
  and 5/8 of its lifetime, then at 3/4, 7/8, ... of it, never two renewals within 4 s; a
  mapping whose renewals all go unanswered expires at its lifetime;
- every response's Epoch Time is checked per section 8.5; when it shows the server lost its
  state, every established mapping is requested again at once.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from ims.pcp.codec import (
    ANY_IPV4,
    ANY_IPV6,
    Endpoint,
    Filter,
    IPAddress,
    MapData,
    Option,
    PeerData,
    PreferFailure,
    Request,
    Response,
    ThirdParty,
    encode_request,
    normalise_address,
    parse_response,
)
from ims.pcp.constants import NONCE_LENGTH, SERVER_PORT, Opcode, ResultCode
from ims.pcp.errors import (
    PcpProtocolError,
    PcpRefused,
    PcpUsageError,
    RefusedUnsupportedVersion,
    UnsupportedVersion,
    refusal_for,
)

# Section 8.1.1.
IRT = 3.0
MRT = 1024.0
# Section 11.2.1: renewals are at least this far apart.
MIN_RENEWAL_GAP = 4.0


class Jitter(Protocol):
    """What the client draws randomness from (`random.Random` fits)."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class PcpClientConfig:
    """`client_address` is what the server sees as our source (the header's PCP Client's IP
    Address, section 7.1); `server` is the PCP server's address and port."""

    server: Endpoint
    client_address: IPAddress
    initial_retransmission: float = IRT
    max_retransmission: float = MRT

    def __post_init__(self) -> None:
        if not 0 < self.initial_retransmission <= self.max_retransmission:
            raise PcpUsageError("need 0 < initial_retransmission <= max_retransmission")

    @classmethod
    def for_server(cls, server: IPAddress, client_address: IPAddress,
                   port: int = SERVER_PORT) -> PcpClientConfig:
        return cls(Endpoint(server, port), client_address)


@dataclass(frozen=True)
class MappingRequest:
    """What the caller wants. A PEER mapping names `remote_peer` (section 12); otherwise it is
    a MAP (section 11), optionally restricted by `filters` (section 13.3). `third_party` asks
    for another host's mapping (section 13.1)."""

    protocol: int
    internal_port: int
    lifetime: int
    remote_peer: Endpoint | None = None
    third_party: IPAddress | None = None
    filters: tuple[Filter, ...] = ()
    suggested_external: Endpoint | None = None
    prefer_failure: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.protocol < 256:
            raise PcpUsageError(f"protocol {self.protocol} is not a single IANA protocol")
        if not 0 < self.internal_port <= 0xFFFF:
            raise PcpUsageError(f"internal port {self.internal_port} is not 1-65535")
        if not 0 < self.lifetime < 1 << 32:
            raise PcpUsageError("a mapping request needs a lifetime > 0 (delete() removes one)")
        if self.remote_peer is not None and (self.filters or self.prefer_failure):
            # Section 13: FILTER and PREFER_FAILURE are valid for MAP only.
            raise PcpUsageError("FILTER and PREFER_FAILURE are MAP options, not PEER")

    @property
    def opcode(self) -> Opcode:
        return Opcode.PEER if self.remote_peer is not None else Opcode.MAP


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MappingReady:
    """The server granted (or, `renewed`, extended) the mapping."""

    mapping_id: int
    external: Endpoint
    lifetime: int
    expires_at: float
    renewed: bool


@dataclass(frozen=True)
class MappingRefused:
    """The server answered an error; `error` is the typed outcome. `kept` says whether the
    client still holds the mapping (a short lifetime error during renewal: it keeps trying)."""

    mapping_id: int
    error: PcpRefused
    renewal: bool
    kept: bool


@dataclass(frozen=True)
class MappingDeleted:
    mapping_id: int


@dataclass(frozen=True)
class MappingExpired:
    """No renewal was answered before the lifetime ran out (section 11.2.1)."""

    mapping_id: int


@dataclass(frozen=True)
class ServerStateLost:
    """Section 8.5: the server's epoch shows it restarted; `recreating` are being requested
    again."""

    epoch_time: int
    recreating: tuple[int, ...]


PcpClientEvent = MappingReady | MappingRefused | MappingDeleted | MappingExpired | ServerStateLost


class Phase(Enum):
    REQUESTING = "requesting"
    ESTABLISHED = "established"
    DELETING = "deleting"


@dataclass(frozen=True)
class ClientMapping:
    """A snapshot of one mapping as the client sees it."""

    mapping_id: int
    request: MappingRequest
    nonce: bytes
    phase: Phase
    external: Endpoint | None
    expires_at: float | None


@dataclass
class _State:
    mapping_id: int
    request: MappingRequest
    nonce: bytes
    phase: Phase = Phase.REQUESTING
    external: Endpoint | None = None
    granted_at: float = 0.0
    lifetime: int = 0
    expires_at: float | None = None
    next_send: float | None = None
    rt: float = 0.0
    renewal_step: int = 0
    last_sent: float | None = None


def _default_nonce() -> bytes:
    return os.urandom(NONCE_LENGTH)


@dataclass
class PcpClient:
    config: PcpClientConfig
    rng: Jitter
    nonce_factory: Callable[[], bytes] = _default_nonce
    _mappings: dict[int, _State] = field(default_factory=dict)
    _outbox: list[bytes] = field(default_factory=list)
    _events: deque[PcpClientEvent] = field(default_factory=deque)
    _next_id: int = 1
    # Section 8.5: the previous response's server epoch and our clock when it arrived.
    _prev_server_time: int | None = None
    _prev_client_time: float = 0.0

    # -- API -----------------------------------------------------------------------------------

    def request(self, request: MappingRequest, now: float, nonce: bytes | None = None) -> int:
        """Ask for a mapping; returns its id. Pass `nonce` to take over an existing mapping
        (e.g. to renew or delete one created by an earlier process)."""
        mapping_id = self._new_state(request, self.nonce_factory() if nonce is None else nonce)
        self._start_exchange(self._mappings[mapping_id], Phase.REQUESTING, now)
        return mapping_id

    def release(self, request: MappingRequest, nonce: bytes, now: float) -> int:
        """Delete a mapping this client did not create (known by its request and nonce):
        section 15's lifetime-0 request, without creating it first. Returns its id."""
        mapping_id = self._new_state(request, nonce)
        self._start_exchange(self._mappings[mapping_id], Phase.DELETING, now)
        return mapping_id

    def _new_state(self, request: MappingRequest, nonce: bytes) -> int:
        if len(nonce) != NONCE_LENGTH:
            raise PcpUsageError(f"a mapping nonce is {NONCE_LENGTH} octets")
        state = _State(self._next_id, request, nonce)
        self._next_id += 1
        self._mappings[state.mapping_id] = state
        return state.mapping_id

    def delete(self, mapping_id: int, now: float) -> None:
        """Section 15: request lifetime 0 with the mapping's nonce, retransmitted until answered."""
        self._start_exchange(self._get(mapping_id), Phase.DELETING, now)

    def abandon(self, mapping_id: int) -> None:
        """Forget a mapping locally (no more retransmissions or renewals)."""
        self._mappings.pop(mapping_id, None)

    def mapping(self, mapping_id: int) -> ClientMapping:
        s = self._get(mapping_id)
        return ClientMapping(s.mapping_id, s.request, s.nonce, s.phase, s.external, s.expires_at)

    @property
    def mapping_ids(self) -> tuple[int, ...]:
        return tuple(self._mappings)

    def get_timer(self) -> float | None:
        times = [t for s in self._mappings.values()
                 for t in (s.next_send, s.expires_at if s.phase is Phase.ESTABLISHED else None)
                 if t is not None]
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        for state in list(self._mappings.values()):
            if state.phase is Phase.ESTABLISHED and state.expires_at is not None \
                    and state.expires_at <= now:
                del self._mappings[state.mapping_id]
                self._events.append(MappingExpired(state.mapping_id))
                continue
            if state.next_send is None or state.next_send > now:
                continue
            if state.phase is Phase.ESTABLISHED:
                self._send(state, now)
                state.renewal_step += 1
                state.next_send = self._renewal_time(state)
            else:
                self._send(state, now)
                state.rt = self._next_rt(state.rt)
                state.next_send = now + state.rt

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams for `config.server`, oldest first."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> PcpClientEvent | None:
        return self._events.popleft() if self._events else None

    def receive_datagram(self, data: bytes, source: Endpoint, now: float) -> None:
        """Section 8.3 (client side): only the server's own responses, matched to a request."""
        server = self.config.server
        if normalise_address(source.address) != normalise_address(server.address) \
                or source.port != server.port:
            return
        try:
            response = parse_response(data)
        except UnsupportedVersion:
            # Section 9: the server (perhaps NAT-PMP only) does not speak version 2.
            self._fail_outstanding(RefusedUnsupportedVersion(0, str(server)))
            return
        except PcpProtocolError:
            return
        if response.opcode == Opcode.ANNOUNCE:
            # Section 14.1.3: an ANNOUNCE is only news when its epoch shows a restart.
            if response.result_code == ResultCode.SUCCESS:
                self._check_epoch(response.epoch_time, now, answered=None)
            return
        state = self._match(response)
        if state is None:
            return
        self._check_epoch(response.epoch_time, now, answered=state.mapping_id)
        if response.result_code == ResultCode.SUCCESS:
            self._on_success(state, response, now)
        else:
            self._on_error(state, response)

    # -- internals -----------------------------------------------------------------------------

    def _get(self, mapping_id: int) -> _State:
        try:
            return self._mappings[mapping_id]
        except KeyError:
            raise PcpUsageError(f"no mapping {mapping_id} in this client") from None

    def _next_rt(self, previous: float) -> float:
        rand = self.rng.uniform(-0.1, 0.1)
        if previous == 0.0:
            return (1 + rand) * self.config.initial_retransmission
        return (1 + rand) * min(2 * previous, self.config.max_retransmission)

    def _start_exchange(self, state: _State, phase: Phase, now: float) -> None:
        state.phase = phase
        self._send(state, now)
        state.rt = self._next_rt(0.0)
        state.next_send = now + state.rt

    def _renewal_time(self, state: _State) -> float | None:
        """Section 11.2.1: the next renewal, or None when only expiry is left."""
        if state.renewal_step == 0:
            fraction = self.rng.uniform(0.5, 0.625)
        else:
            fraction = 1 - 2.0 ** -(state.renewal_step + 1)
        at = state.granted_at + state.lifetime * fraction
        if state.last_sent is not None:
            at = max(at, state.last_sent + MIN_RENEWAL_GAP)
        if state.expires_at is None or at >= state.expires_at:
            return None
        return at

    def _encode(self, state: _State) -> bytes:
        req = state.request
        internal = req.third_party if req.third_party is not None else self.config.client_address
        any_address = ANY_IPV4 if internal.version == 4 else ANY_IPV6
        # Section 11.2.1: a renewal or re-creation suggests the external endpoint it had.
        suggestion = state.external or req.suggested_external
        ext_port = suggestion.port if suggestion else 0
        ext_address = suggestion.address if suggestion else any_address
        data: MapData | PeerData
        if req.remote_peer is not None:
            data = PeerData(state.nonce, req.protocol, req.internal_port, ext_port, ext_address,
                            req.remote_peer.port, req.remote_peer.address)
        else:
            data = MapData(state.nonce, req.protocol, req.internal_port, ext_port, ext_address)
        options: list[Option] = []
        if req.third_party is not None:
            options.append(ThirdParty(req.third_party))
        if req.prefer_failure and state.phase is Phase.REQUESTING:
            options.append(PreferFailure())
        options.extend(req.filters)
        lifetime = 0 if state.phase is Phase.DELETING else req.lifetime
        return encode_request(Request(lifetime, self.config.client_address, data,
                                      tuple(options)))

    def _send(self, state: _State, now: float) -> None:
        self._outbox.append(self._encode(state))
        state.last_sent = now

    def _match(self, response: Response) -> _State | None:
        data = response.data
        if data is None:
            # An error response without opcode data (section 8.2 allows a server that could not
            # parse it): attributable only when one request of that opcode is outstanding.
            waiting = [s for s in self._mappings.values()
                       if s.request.opcode == response.opcode and s.phase is not Phase.ESTABLISHED]
            return waiting[0] if len(waiting) == 1 and response.result_code else None
        for state in self._mappings.values():
            req = state.request
            if (state.nonce != data.nonce or req.opcode != response.opcode
                    or req.protocol != data.protocol or req.internal_port != data.internal_port):
                continue
            if isinstance(data, PeerData):
                peer = req.remote_peer
                if peer is None or peer.port != data.remote_peer_port or (
                        normalise_address(peer.address)
                        != normalise_address(data.remote_peer_address)):
                    continue
            third = response.third_party()
            if third is not None and req.third_party is not None and (
                    normalise_address(third.internal_address)
                    != normalise_address(req.third_party)):
                continue
            return state
        return None

    def _check_epoch(self, server_time: int, now: float, answered: int | None) -> None:
        """Section 8.5, word for word in the comparisons."""
        valid = True
        if self._prev_server_time is not None:
            if server_time + 1 < self._prev_server_time:
                valid = False
            else:
                client_delta = now - self._prev_client_time
                server_delta = server_time - self._prev_server_time
                if (client_delta + 2 < server_delta - server_delta / 16
                        or server_delta + 2 < client_delta - client_delta / 16):
                    valid = False
        self._prev_server_time = server_time
        self._prev_client_time = now
        if valid:
            return
        recreating = []
        for state in self._mappings.values():
            if state.mapping_id != answered and state.phase is Phase.ESTABLISHED:
                state.renewal_step = 0
                self._start_exchange(state, Phase.REQUESTING, now)
                recreating.append(state.mapping_id)
        self._events.append(ServerStateLost(server_time, tuple(recreating)))

    def _on_success(self, state: _State, response: Response, now: float) -> None:
        data = response.data
        assert data is not None
        if state.phase is Phase.DELETING or response.lifetime == 0:
            del self._mappings[state.mapping_id]
            self._events.append(MappingDeleted(state.mapping_id))
            return
        renewed = state.phase is Phase.ESTABLISHED
        state.phase = Phase.ESTABLISHED
        state.external = Endpoint(normalise_address(data.external_address), data.external_port)
        state.granted_at = now
        state.lifetime = response.lifetime
        state.expires_at = now + response.lifetime
        state.renewal_step = 0
        state.last_sent = None
        state.rt = 0.0
        state.next_send = self._renewal_time(state)
        self._events.append(MappingReady(state.mapping_id, state.external, response.lifetime,
                                         state.expires_at, renewed))

    def _on_error(self, state: _State, response: Response) -> None:
        error = refusal_for(response.result_code, response.lifetime, str(self.config.server))
        renewal = state.phase is Phase.ESTABLISHED
        # A short lifetime error on renewal leaves the mapping in place until it expires;
        # the renewal schedule keeps running (section 11.2.1).
        kept = renewal and error.transient
        if not kept:
            del self._mappings[state.mapping_id]
        self._events.append(MappingRefused(state.mapping_id, error, renewal, kept))

    def _fail_outstanding(self, error: PcpRefused) -> None:
        for state in list(self._mappings.values()):
            if state.phase is not Phase.ESTABLISHED:
                del self._mappings[state.mapping_id]
                self._events.append(MappingRefused(state.mapping_id, error, False, False))
