"""The CGN side of PCP, sans-IO: a request datagram in, a response datagram and mapping table
changes out (RFC 6887 sections 8.2, 11.3, 12.3, 13, 15).

No socket and no clock: `now` comes in with every call, `get_timer()` says when the next
mapping expires, and the table changes go to whatever data plane the caller drives
(ims.pcp.nft for nftables). Policy is ours and stated where it is applied:

- THIRD_PARTY (section 13.1) is served only when control addresses are configured, and then
  only to them: otherwise UNSUPP_OPTION (not supported) or NOT_AUTHORIZED (not allowed).
- Each subscriber (internal address) holds at most `quota` mappings: USER_EX_QUOTA
  (RFC 6888 REQ-4, a CGN limits what one subscriber can take).
- Lifetimes are clamped to [min_lifetime, max_lifetime] (section 15).
- "All protocols" and "all ports" mappings are refused: this CGN maps one UDP or TCP port.
  Deleting them is served (section 11.3): lifetime 0 with internal port 0 removes the
  client's MAP mappings of that protocol, or of every protocol when it is 0.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ims.pcp.codec import (
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
    UnknownOption,
    encode_error_response,
    encode_response,
    is_unspecified,
    normalise_address,
    parse_request,
)
from ims.pcp.constants import (
    NAT_PMP_VERSION,
    PROTOCOL_TCP,
    PROTOCOL_UDP,
    SHORT_LIFETIME_ERRORS,
    Opcode,
    ResultCode,
)
from ims.pcp.errors import PcpProtocolError, PcpUsageError, UnsupportedVersion

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class PcpServerConfig:
    """What the operator decides; validated on construction (a `PcpUsageError` names the field).

    `control_addresses` are the hosts allowed THIRD_PARTY (the connectivity gateways); empty
    means THIRD_PARTY is not supported at all. `internal_networks`, when given, bounds the
    internal addresses this CGN serves. Ports are allocated from `external_ports` inclusive.
    """

    external_address: IPAddress
    control_addresses: frozenset[IPAddress] = frozenset()
    internal_networks: tuple[IPNetwork, ...] = ()
    quota: int = 64
    min_lifetime: int = 120
    max_lifetime: int = 86400
    external_ports: tuple[int, int] = (1024, 65535)
    protocols: frozenset[int] = frozenset({PROTOCOL_UDP, PROTOCOL_TCP})
    max_filters: int = 8
    short_error_lifetime: int = 30
    long_error_lifetime: int = 1800

    def __post_init__(self) -> None:
        if is_unspecified(self.external_address):
            raise PcpUsageError("external_address must be a real address, not the unspecified one")
        if self.quota < 1:
            raise PcpUsageError(f"quota must be at least 1, got {self.quota}")
        if not 1 <= self.min_lifetime <= self.max_lifetime:
            raise PcpUsageError(f"need 1 <= min_lifetime ({self.min_lifetime}) <= "
                                f"max_lifetime ({self.max_lifetime})")
        low, high = self.external_ports
        if not 1 <= low <= high <= 0xFFFF:
            raise PcpUsageError(f"external_ports {low}-{high} is not a range within 1-65535")
        if self.max_filters < 1:
            raise PcpUsageError("max_filters must be at least 1")
        if not self.protocols <= {PROTOCOL_UDP, PROTOCOL_TCP}:
            raise PcpUsageError("this server maps only UDP (17) and TCP (6)")

    @property
    def third_party_supported(self) -> bool:
        return bool(self.control_addresses)


@dataclass(frozen=True)
class Mapping:
    """One installed mapping. PEER mappings admit exactly `remote_peer`; MAP mappings admit
    the `filters` (none: every remote host). `mapping_id` tags its data plane rules."""

    mapping_id: str
    opcode: Opcode
    protocol: int
    internal: Endpoint
    external: Endpoint
    nonce: bytes
    lifetime: int
    expires_at: float
    remote_peer: Endpoint | None = None
    filters: tuple[Filter, ...] = ()

    @property
    def subscriber(self) -> IPAddress:
        return self.internal.address

    def admitted(self) -> tuple[tuple[IPNetwork | None, int], ...]:
        """(remote prefix or None for any, remote port or 0 for any) for each inbound rule."""
        if self.remote_peer is not None:
            peer = self.remote_peer
            return ((ipaddress.ip_network(peer.address), peer.port),)
        admitted: list[tuple[IPNetwork | None, int]] = []
        for item in self.filters:
            admitted.append((item.network() if item.prefix_length else None,
                             item.remote_peer_port))
        return tuple(admitted) or ((None, 0),)


@dataclass(frozen=True)
class MappingChanges:
    """What the data plane must do: remove `removed` first, then install `added`."""

    added: tuple[Mapping, ...] = ()
    removed: tuple[Mapping, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


NO_CHANGES = MappingChanges()


@dataclass(frozen=True)
class ServerReply:
    """The outcome of one datagram: the response to send (None: drop), the table changes,
    and a note for the operator's log."""

    response: bytes | None
    changes: MappingChanges = NO_CHANGES
    result_code: ResultCode | None = None
    note: str = ""


_MappingKey = tuple[object, ...]


class _Refuse(Exception):
    """Internal: stop processing and answer with an error result code."""

    def __init__(self, code: ResultCode, note: str) -> None:
        super().__init__(note)
        self.code = code
        self.note = note


@dataclass
class PcpServer:
    """The mapping table and the rules that guard it. One instance per CGN external address."""

    config: PcpServerConfig
    started_at: float
    rng: random.Random = field(default_factory=random.Random)
    _mappings: dict[_MappingKey, Mapping] = field(default_factory=dict)
    # (protocol, external port) -> internal endpoint owning it, and how many mappings share it.
    _port_owner: dict[tuple[int, int], Endpoint] = field(default_factory=dict)
    _port_users: Counter[tuple[int, int]] = field(default_factory=Counter)
    _per_subscriber: Counter[IPAddress] = field(default_factory=Counter)
    _next_id: int = 1

    # -- queries -------------------------------------------------------------------------------

    def epoch_time(self, now: float) -> int:
        """Section 8.5: seconds since this server's mapping state began (it restarts at 0)."""
        return int(max(now - self.started_at, 0)) & 0xFFFFFFFF

    @property
    def mappings(self) -> tuple[Mapping, ...]:
        return tuple(self._mappings.values())

    def get_timer(self) -> float | None:
        """When the next mapping expires (the caller calls `expire` then)."""
        return min((m.expires_at for m in self._mappings.values()), default=None)

    # -- inputs --------------------------------------------------------------------------------

    def expire(self, now: float) -> MappingChanges:
        """Section 15: remove every mapping whose lifetime ran out by `now`."""
        gone = tuple(m for m in self._mappings.values() if m.expires_at <= now)
        for mapping in gone:
            self._uninstall(mapping)
        return MappingChanges(removed=gone)

    def revert(self, changes: MappingChanges) -> None:
        """Undo `changes` (the data plane could not apply them)."""
        for mapping in changes.added:
            if self._mappings.get(self._key_of(mapping)) == mapping:
                self._uninstall(mapping)
        for mapping in changes.removed:
            if self._key_of(mapping) not in self._mappings:
                self._install(mapping)

    def failure_reply(self, data: bytes, code: ResultCode, now: float, note: str) -> ServerReply:
        """An error response to `data` (e.g. NETWORK_FAILURE after `revert`)."""
        return self._error(data, code, now, note)

    def handle_datagram(self, data: bytes, source: Endpoint, now: float) -> ServerReply:
        """Section 8.2: validate, then run the opcode; every refusal is an error response."""
        try:
            request = parse_request(data)
        except UnsupportedVersion as exc:
            if exc.version == NAT_PMP_VERSION:
                return self._nat_pmp_unsupported(data, now)
            return self._error(data, ResultCode.UNSUPP_VERSION, now, exc.reason, parsed=False)
        except PcpProtocolError as exc:
            if exc.result_code is None:
                return ServerReply(None, note=f"dropped: {exc.reason}")
            return self._error(data, exc.result_code, now, exc.reason, parsed=False)
        try:
            return self._handle(request, data, normalise_address(source.address), now)
        except _Refuse as refusal:
            return self._error(data, refusal.code, now, refusal.note)

    # -- request processing --------------------------------------------------------------------

    def _handle(self, request: Request, raw: bytes, source: IPAddress,
                now: float) -> ServerReply:
        epoch = self.epoch_time(now)
        # Section 8.2: the client's own view of its address must match what we see, else a
        # NAT sits between client and server and any mapping would be for the wrong host.
        # Like the option rule below it holds for every opcode, ANNOUNCE included.
        if normalise_address(request.client_address) != source:
            raise _Refuse(ResultCode.ADDRESS_MISMATCH,
                          f"client address field {request.client_address} but source {source}")
        for option in request.options:
            # Section 7.3: a mandatory option we do not understand fails the request.
            if isinstance(option, UnknownOption) and option.mandatory:
                raise _Refuse(ResultCode.UNSUPP_OPTION, f"unknown mandatory option {option.code}")
        if request.data is None:
            # Section 14.1: ANNOUNCE is answered with SUCCESS, lifetime 0 and our epoch.
            response = Response(Opcode.ANNOUNCE, ResultCode.SUCCESS, 0, epoch)
            return ServerReply(encode_response(response), result_code=ResultCode.SUCCESS,
                               note="ANNOUNCE")
        internal_address = self._internal_address(request, source)
        data = request.data
        if (request.lifetime == 0 and isinstance(data, MapData) and data.internal_port == 0
                and (data.protocol == 0 or data.protocol in self.config.protocols)):
            return self._delete_set(request, data, internal_address, epoch)
        self._check_data(data, request)
        internal = Endpoint(internal_address, data.internal_port)
        remote = (Endpoint(normalise_address(data.remote_peer_address), data.remote_peer_port)
                  if isinstance(data, PeerData) else None)
        opcode = Opcode.PEER if remote is not None else Opcode.MAP
        key = self._key(opcode, data.protocol, internal, remote)
        existing = self._mappings.get(key)
        # Sections 11.3 / 12.3: a mapping belongs to the nonce that created it.
        if existing is not None and existing.nonce != data.nonce:
            raise _Refuse(ResultCode.NOT_AUTHORIZED,
                          f"{opcode.name} for {internal} exists under another nonce")
        if request.lifetime == 0:
            return self._delete(request, existing, epoch)
        lifetime = min(max(request.lifetime, self.config.min_lifetime), self.config.max_lifetime)
        filters = request.filters()
        if existing is not None:
            # Section 13.3: FILTERs in a renewal replace the mapping's filters (one with prefix
            # length 0 clears them); a renewal without FILTER keeps them.
            new_filters = existing.filters if not filters else tuple(
                f for f in filters if f.prefix_length)
            renewed = Mapping(existing.mapping_id, opcode, data.protocol, internal,
                              existing.external, data.nonce, lifetime, now + lifetime, remote,
                              new_filters)
            self._mappings[key] = renewed
            changes = (MappingChanges(added=(renewed,), removed=(existing,))
                       if new_filters != existing.filters else NO_CHANGES)
            return self._success(request, renewed, epoch, changes, "renewed")
        if self._per_subscriber[internal.address] >= self.config.quota:
            raise _Refuse(ResultCode.USER_EX_QUOTA,
                          f"{internal.address} already holds {self.config.quota} mappings")
        external = self._allocate(data, internal, request.prefer_failure())
        mapping = Mapping(f"m{self._next_id}", opcode, data.protocol, internal, external,
                          data.nonce, lifetime, now + lifetime, remote,
                          tuple(f for f in filters if f.prefix_length))
        self._next_id += 1
        self._install(mapping)
        return self._success(request, mapping, epoch, MappingChanges(added=(mapping,)), "created")

    def _internal_address(self, request: Request, source: IPAddress) -> IPAddress:
        third_party = request.third_party()
        internal = source
        if third_party is not None:
            # Section 13.1: UNSUPP_OPTION if THIRD_PARTY is not supported at all, NOT_AUTHORIZED
            # if it is but this client may not use it.
            if not self.config.third_party_supported:
                raise _Refuse(ResultCode.UNSUPP_OPTION, "THIRD_PARTY is not enabled")
            if source not in self.config.control_addresses:
                raise _Refuse(ResultCode.NOT_AUTHORIZED,
                              f"THIRD_PARTY from {source}, which is not a control address")
            internal = normalise_address(third_party.internal_address)
            if is_unspecified(internal):
                raise _Refuse(ResultCode.MALFORMED_OPTION, "THIRD_PARTY names no address")
        networks = self.config.internal_networks
        if networks and not any(internal in net for net in networks):
            raise _Refuse(ResultCode.NOT_AUTHORIZED,
                          f"{internal} is not a subscriber address of this CGN")
        if internal.version != self.config.external_address.version:
            raise _Refuse(ResultCode.NOT_AUTHORIZED,
                          f"{internal} and external {self.config.external_address} are of "
                          "different families; this CGN does not translate between them")
        return internal

    def _check_data(self, data: MapData | PeerData, request: Request) -> None:
        if isinstance(data, MapData) and data.protocol == 0 and data.internal_port != 0:
            # Section 11.3: "all protocols" with a port names nothing that exists.
            raise _Refuse(ResultCode.MALFORMED_REQUEST,
                          f"protocol 0 (all protocols) with internal port {data.internal_port}")
        if data.protocol not in self.config.protocols:
            raise _Refuse(ResultCode.UNSUPP_PROTOCOL, f"protocol {data.protocol} is not mapped")
        if data.internal_port == 0:
            raise _Refuse(ResultCode.NOT_AUTHORIZED, "'all ports' mappings are not offered")
        if isinstance(data, PeerData):
            # Section 12.1: a PEER names one remote peer; zero address or port names none.
            remote = normalise_address(data.remote_peer_address)
            if data.remote_peer_port == 0 or is_unspecified(remote):
                raise _Refuse(ResultCode.MALFORMED_REQUEST, "PEER without a remote peer")
            if remote.version != self.config.external_address.version:
                raise _Refuse(ResultCode.MALFORMED_REQUEST,
                              f"remote peer {remote} is not of the external address family")
        filters = request.filters()
        # Section 13.3: too many FILTERs is EXCESSIVE_REMOTE_PEERS.
        if len(filters) > self.config.max_filters:
            raise _Refuse(ResultCode.EXCESSIVE_REMOTE_PEERS,
                          f"{len(filters)} FILTERs, at most {self.config.max_filters}")
        for item in filters:
            if item.prefix_length and (normalise_address(item.remote_peer_address).version
                                       != self.config.external_address.version):
                raise _Refuse(ResultCode.MALFORMED_OPTION,
                              f"FILTER {item.remote_peer_address} is of the wrong family")

    def _allocate(self, data: MapData | PeerData, internal: Endpoint,
                  prefer_failure: bool) -> Endpoint:
        ours = self.config.external_address
        # Section 12.3: an internal endpoint that already has a mapping keeps its external port.
        for (protocol, port), owner in self._port_owner.items():
            if protocol == data.protocol and owner == internal:
                return Endpoint(ours, port)
        suggested_address = normalise_address(data.external_address)
        low, high = self.config.external_ports
        wanted = data.external_port
        address_ok = is_unspecified(suggested_address) or suggested_address == ours
        if wanted and address_ok and low <= wanted <= high and (
                (data.protocol, wanted) not in self._port_owner):
            return Endpoint(ours, wanted)
        # Section 13.2: with PREFER_FAILURE anything but the suggestion is a failure.
        if prefer_failure:
            raise _Refuse(ResultCode.CANNOT_PROVIDE_EXTERNAL,
                          f"suggested {suggested_address} port {wanted} is not available")
        # RFC 6056-style random port choice, then a scan from a random start.
        span = high - low + 1
        for _ in range(32):
            port = low + self.rng.randrange(span)
            if (data.protocol, port) not in self._port_owner:
                return Endpoint(ours, port)
        start = self.rng.randrange(span)
        for step in range(span):
            port = low + (start + step) % span
            if (data.protocol, port) not in self._port_owner:
                return Endpoint(ours, port)
        raise _Refuse(ResultCode.NO_RESOURCES, f"no free {data.protocol} port in {low}-{high}")

    def _delete(self, request: Request, existing: Mapping | None, epoch: int) -> ServerReply:
        """Section 15: lifetime 0 deletes; deleting what does not exist also succeeds."""
        assert request.data is not None
        if existing is None:
            response = Response(request.opcode, ResultCode.SUCCESS, 0, epoch, request.data,
                                self._echo_options(request))
            return ServerReply(encode_response(response), result_code=ResultCode.SUCCESS,
                               note="deleted (no such mapping)")
        self._uninstall(existing)
        gone = Mapping(existing.mapping_id, existing.opcode, existing.protocol, existing.internal,
                       existing.external, existing.nonce, 0, existing.expires_at,
                       existing.remote_peer, existing.filters)
        return self._success(request, gone, epoch, MappingChanges(removed=(existing,)),
                             "deleted")

    def _delete_set(self, request: Request, data: MapData, internal_address: IPAddress,
                    epoch: int) -> ServerReply:
        """Section 11.3: lifetime 0 with internal port 0 deletes every MAP mapping of this
        internal address for the protocol (protocol 0: for every protocol). Only the
        mappings created under the request's nonce are the client's to delete (11.3 / 15);
        the others stay."""
        gone = tuple(m for m in self._mappings.values()
                     if m.opcode is Opcode.MAP and m.internal.address == internal_address
                     and data.protocol in (0, m.protocol) and m.nonce == data.nonce)
        for mapping in gone:
            self._uninstall(mapping)
        response = Response(Opcode.MAP, ResultCode.SUCCESS, 0, epoch, data,
                            self._echo_options(request))
        return ServerReply(encode_response(response), MappingChanges(removed=gone),
                           ResultCode.SUCCESS,
                           f"deleted {len(gone)} MAP mapping(s) of {internal_address} "
                           f"for protocol {data.protocol or 'all'}")

    def _success(self, request: Request, mapping: Mapping, epoch: int, changes: MappingChanges,
                 note: str) -> ServerReply:
        data = request.data
        assert data is not None
        external = mapping.external
        answer: MapData | PeerData
        if isinstance(data, PeerData):
            answer = PeerData(data.nonce, data.protocol, data.internal_port, external.port,
                              external.address, data.remote_peer_port, data.remote_peer_address)
        else:
            answer = MapData(data.nonce, data.protocol, data.internal_port, external.port,
                             external.address)
        response = Response(request.opcode, ResultCode.SUCCESS, mapping.lifetime, epoch, answer,
                            self._echo_options(request))
        return ServerReply(encode_response(response), changes, ResultCode.SUCCESS,
                           f"{note} {mapping.opcode.name} {mapping.mapping_id} "
                           f"{mapping.internal} -> {mapping.external}")

    @staticmethod
    def _echo_options(request: Request) -> tuple[Option, ...]:
        # Sections 13.1-13.3: a success response carries the options the server processed.
        return tuple(o for o in request.options
                     if isinstance(o, ThirdParty | PreferFailure | Filter))

    def _error(self, data: bytes, code: ResultCode, now: float, note: str, *,
               parsed: bool = True) -> ServerReply:
        lifetime = (self.config.short_error_lifetime if code in SHORT_LIFETIME_ERRORS
                    else self.config.long_error_lifetime)
        return ServerReply(encode_error_response(data, code, lifetime, self.epoch_time(now),
                                                 parsed=parsed),
                           result_code=code, note=f"{code.name}: {note}")

    def _nat_pmp_unsupported(self, data: bytes, now: float) -> ServerReply:
        # RFC 6887 section 9 / RFC 6886 section 3.5: a NAT-PMP client gets NAT-PMP's own
        # "unsupported version" (result 1) with our epoch, so it can tell what it talks to.
        opcode = data[1] & 0x7F
        response = struct.pack("!BBHI", NAT_PMP_VERSION, 0x80 | opcode, 1, self.epoch_time(now))
        return ServerReply(response, result_code=ResultCode.UNSUPP_VERSION,
                           note="UNSUPP_VERSION: NAT-PMP request")

    # -- table bookkeeping ---------------------------------------------------------------------

    @staticmethod
    def _key(opcode: Opcode, protocol: int, internal: Endpoint,
             remote: Endpoint | None) -> _MappingKey:
        return (opcode, protocol, internal, remote)

    def _key_of(self, mapping: Mapping) -> _MappingKey:
        return self._key(mapping.opcode, mapping.protocol, mapping.internal, mapping.remote_peer)

    def _install(self, mapping: Mapping) -> None:
        self._mappings[self._key_of(mapping)] = mapping
        port = (mapping.protocol, mapping.external.port)
        self._port_owner[port] = mapping.internal
        self._port_users[port] += 1
        self._per_subscriber[mapping.subscriber] += 1

    def _uninstall(self, mapping: Mapping) -> None:
        del self._mappings[self._key_of(mapping)]
        port = (mapping.protocol, mapping.external.port)
        self._port_users[port] -= 1
        if self._port_users[port] <= 0:
            del self._port_users[port]
            self._port_owner.pop(port, None)
        self._per_subscriber[mapping.subscriber] -= 1
        if self._per_subscriber[mapping.subscriber] <= 0:
            del self._per_subscriber[mapping.subscriber]


def parse_addresses(text: str) -> frozenset[IPAddress]:
    """`ADDR[,ADDR...]` as used by the CLI's --control."""
    out: set[IPAddress] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            out.add(ipaddress.ip_address(part))
        except ValueError:
            raise PcpUsageError(f"{part!r} is not an IP address") from None
    return frozenset(out)


def mapping_ids(mappings: Iterable[Mapping]) -> frozenset[str]:
    return frozenset(m.mapping_id for m in mappings)
