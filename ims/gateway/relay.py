"""The relay of the connectivity gateway, sans-IO: the allocation table (IMS-AGW/TrGW style).

When no peer-scoped mapping can be had on the CGN, the operator relays the call's datagrams
itself. An allocation is two UDP ports on the operator's relay address, one per side of the
call: the *caller side* port is the one the caller's UE sends to (and receives from), the
*callee side* port the one the callee's UE sends to. Each port admits datagrams from exactly
one permitted peer endpoint (address and port, learned from SDP) and forwards them, from the
other port, to the other side's peer. So each UE sees one remote endpoint, the relay port
facing it, as with a TURN relayed transport address (RFC 8656 section 2), but unlike TURN
the permission is the whole transport address, not only the IP address (RFC 8656 section 9):
the operator knows both ends from the offer and the answer.

Latching (RFC 7362): a UE behind a CGN writes its private port in SDP, and the port its
datagrams arrive from is the CGN's. A peer given with `latch=True` is admitted from its
address with any port until its first datagram; that datagram's source port is then latched
and is the only one admitted, and the destination for what the other side sends. Latching
happens once: a later datagram from another port of the same address is dropped, which keeps
an on-path host from stealing the stream (the hijack of RFC 7362 section 5). Until it latches,
datagrams for that peer go to the port its SDP named.

Behind a CGN even the address differs from the SDP's (100.64.0.2 in SDP, the CGN's public
address on the wire). A peer given with `ice_username` latches on its ICE connectivity check
instead: the port admits nothing until a STUN Binding request (RFC 8489 section 5) whose
USERNAME is that value, "RFRAG:LFRAG" of RFC 8445 section 7.2.2, and, with `ice_password`,
whose MESSAGE-INTEGRITY verifies under that password (the short-term credential of RFC 8489
section 9.1: only the two UEs and the operators that carried their SDP know it); that request's
source address and port are then the peer's, once and for all. The request itself is relayed.

The table knows no sockets and no clock: the driver (ims.gateway.aiorelay) binds the ports,
passes every datagram's (allocation, side, source, size, now) to `receive`, sends where it
says, and calls `expire(now)` when `get_timer()` says so. Allocations end when released or
when their lifetime runs out without a `refresh`; traffic does not extend a lifetime, the
session's signalling does (as a TURN allocation needs a Refresh, RFC 8656 section 7).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import struct
from dataclasses import dataclass
from enum import StrEnum

from ims.gateway.errors import GatewayUsageError, RelayCapacityExceeded, UnknownAllocation

__all__ = [
    "Address",
    "AllocationCounters",
    "Latched",
    "PermittedPeer",
    "RelayAllocation",
    "RelayConfig",
    "RelayOffload",
    "RelayTable",
    "Side",
    "is_binding_request",
    "normalise_address",
]

# A UDP transport address as asyncio gives and takes it: (IP address text, port).
Address = tuple[str, int]


class Side(StrEnum):
    """Which UE a relay port faces."""

    CALLER = "caller"
    CALLEE = "callee"

    @property
    def other(self) -> Side:
        return Side.CALLEE if self is Side.CALLER else Side.CALLER


def normalise_address(address: str) -> str:
    """The canonical text of an IP address (IPv6 compressed, as asyncio reports sources);
    GatewayUsageError for a name or garbage (the relay never resolves names)."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).compressed
    except ValueError:
        raise GatewayUsageError(f"{address!r} is not an IP address") from None


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise GatewayUsageError(f"{what} port {port} is outside 1..65535")


class RelayOffload(StrEnum):
    """Who forwards an allocation's datagrams once both its peers are known exactly."""

    NONE = "none"  # the userspace relay, always (the embedded default)
    NFT = "nft"  # the kernel, through nftables NAT rules (ims.gateway.nft_relay)


@dataclass(frozen=True)
class RelayConfig:
    """The relay's validated configuration.

    `relay_address` is the operator's address the relay ports are bound on (what the UEs
    send to); `max_allocations` bounds the table (each allocation holds two sockets);
    a requested lifetime is capped at `max_lifetime` seconds, as a TURN server caps its
    LIFETIME (RFC 8656 section 7.2). `offload` nft hands an allocation whose two peers are
    known exactly to the kernel (the driver, ims.gateway.aiorelay); the userspace relay
    carries it until then, and whenever the kernel cannot."""

    relay_address: str
    max_allocations: int = 1024
    default_lifetime: float = 600.0
    max_lifetime: float = 3600.0
    offload: RelayOffload = RelayOffload.NONE

    def __post_init__(self) -> None:
        object.__setattr__(self, "relay_address", normalise_address(self.relay_address))
        try:
            object.__setattr__(self, "offload", RelayOffload(self.offload))
        except ValueError:
            choices = ", ".join(o.value for o in RelayOffload)
            raise GatewayUsageError(
                f"offload {self.offload!r} is not one of {choices}") from None
        if self.max_allocations < 1:
            raise GatewayUsageError(
                f"max_allocations must be at least 1, not {self.max_allocations}"
            )
        for name in ("default_lifetime", "max_lifetime"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise GatewayUsageError(f"{name} must be a positive number of seconds, not {value}")
        if self.default_lifetime > self.max_lifetime:
            raise GatewayUsageError(
                f"default_lifetime {self.default_lifetime} exceeds max_lifetime {self.max_lifetime}"
            )

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.relay_address).version


@dataclass(frozen=True)
class PermittedPeer:
    """The one endpoint a relay port admits, from SDP; `latch`: admit any port of `address`
    until the first datagram, then only that one (see the module text, RFC 7362);
    `ice_username` (and `ice_password`): admit nothing until an ICE check carrying it, then
    only its source (RFC 8445 section 7.2.2)."""

    address: str
    port: int
    latch: bool = False
    ice_username: str | None = None
    ice_password: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", normalise_address(self.address))
        _check_port(self.port, "peer")
        if self.ice_username is not None and (not self.ice_username.isascii()
                                              or ":" not in self.ice_username):
            raise GatewayUsageError(
                f"ice_username {self.ice_username!r} is not RFRAG:LFRAG (RFC 8445 7.2.2)"
            )
        if self.ice_password is not None and self.ice_username is None:
            raise GatewayUsageError("ice_password without ice_username latches nothing")

    @classmethod
    def of(cls, endpoint: Address | PermittedPeer) -> PermittedPeer:
        return endpoint if isinstance(endpoint, PermittedPeer) else cls(*endpoint)


@dataclass(frozen=True)
class AllocationCounters:
    """What went through one allocation. "Dropped" counts datagrams a relay port received from
    an endpoint other than its permitted peer, per port."""

    caller_to_callee_datagrams: int = 0
    caller_to_callee_bytes: int = 0
    callee_to_caller_datagrams: int = 0
    callee_to_caller_bytes: int = 0
    dropped_at_caller_side: int = 0
    dropped_at_callee_side: int = 0

    @property
    def dropped_unpermitted(self) -> int:
        return self.dropped_at_caller_side + self.dropped_at_callee_side


@dataclass(frozen=True)
class RelayAllocation:
    """A view of one allocation: its two relay ports, where each side's datagrams go now
    (`caller_peer`, `callee_peer`: the SDP endpoint, or the latched one), expiry, counters."""

    id: int
    caller_side: Address
    callee_side: Address
    caller_peer: Address
    callee_peer: Address
    expires_at: float
    counters: AllocationCounters
    caller_latched: bool = False
    callee_latched: bool = False

    def side_address(self, side: Side) -> Address:
        return self.caller_side if side is Side.CALLER else self.callee_side


@dataclass(frozen=True)
class Latched:
    """A relay port latched its peer: from now on it admits only `source` (and sends the other
    side's datagrams there). The driver logs these (`RelayTable.pop_latches`)."""

    allocation_id: int
    side: Side
    source: Address


# RFC 8489 section 5: the magic cookie, the Binding method's request type, and section 14's
# attribute types the latch reads.
STUN_MAGIC_COOKIE = 0x2112A442
_BINDING_REQUEST = 0x0001
_USERNAME = 0x0006
_MESSAGE_INTEGRITY = 0x0008
_STUN_HEADER = struct.Struct("!HHI")


def is_binding_request(datagram: bytes, username: bytes, key: bytes | None = None) -> bool:
    """Whether `datagram` is a STUN Binding request (RFC 8489 section 5) whose USERNAME is
    `username` and, with `key`, whose MESSAGE-INTEGRITY (section 14.5: HMAC-SHA1 over the
    message up to the attribute, the header's length counting through it) verifies."""
    if len(datagram) < 20:
        return False
    kind, length, cookie = _STUN_HEADER.unpack_from(datagram)
    if (kind != _BINDING_REQUEST or cookie != STUN_MAGIC_COOKIE or length % 4
            or len(datagram) != 20 + length):
        return False
    offset = 20
    named = False
    while offset + 4 <= len(datagram):
        attribute, size = struct.unpack_from("!HH", datagram, offset)
        value = datagram[offset + 4:offset + 4 + size]
        if len(value) != size:
            return False
        if attribute == _USERNAME:
            named = value == username
            if not named:
                return False
        elif attribute == _MESSAGE_INTEGRITY:
            if key is None:
                return named
            if size != 20:
                return False
            signed = bytearray(datagram[:offset])
            struct.pack_into("!H", signed, 2, offset + 24 - 20)
            expected = hmac.new(key, bytes(signed), hashlib.sha1).digest()
            return named and hmac.compare_digest(expected, value)
        offset += 4 + size + (-size % 4)
    return named and key is None


class _Peer:
    """A permitted peer's live state: where it is (latched or not)."""

    __slots__ = ("address", "allocation_id", "events", "ice_key", "ice_username",
                 "latch_pending", "latched", "port", "side")

    def __init__(self, permitted: PermittedPeer, allocation_id: int, side: Side,
                 events: list[Latched]) -> None:
        self.allocation_id = allocation_id
        self.side = side
        self.events = events  # the table's: where a latch is reported
        self.address = permitted.address
        self.port = permitted.port
        self.latch_pending = permitted.latch
        self.latched = False
        self.ice_username = (permitted.ice_username.encode()
                             if permitted.ice_username is not None else None)
        self.ice_key = (permitted.ice_password.encode()
                        if permitted.ice_password is not None else None)

    @property
    def exact(self) -> bool:
        """Whether the one endpoint admitted is known: given as is, or latched."""
        return self.ice_username is None and not self.latch_pending

    def admits(self, source: Address, datagram: bytes) -> bool:
        if self.ice_username is not None:
            # Until the UE's ICE check arrives nothing is admitted, from anywhere.
            if not is_binding_request(datagram, self.ice_username, self.ice_key):
                return False
            self.ice_username = self.ice_key = None
            self.address = source[0]
            return self._latch(source)
        if source[1] == self.port and source[0] == self.address:
            return not self.latch_pending or self._latch(source)
        if self.latch_pending and source[0] == self.address:
            return self._latch(source)
        return False

    def _latch(self, source: Address) -> bool:
        self.port = source[1]
        self.latch_pending = False
        self.latched = True
        self.events.append(Latched(self.allocation_id, self.side, source))
        return True


class _Allocation:
    __slots__ = ("callee", "callee_side", "caller", "caller_side", "counts", "expires_at", "id")

    def __init__(self, allocation_id: int, caller_side: Address, callee_side: Address,
                 caller: _Peer, callee: _Peer, expires_at: float) -> None:
        self.id = allocation_id
        self.caller_side = caller_side
        self.callee_side = callee_side
        self.caller = caller
        self.callee = callee
        self.expires_at = expires_at
        # datagrams, bytes caller->callee; datagrams, bytes callee->caller; dropped at the
        # caller side, dropped at the callee side (a list: the hot path adds in place).
        self.counts = [0, 0, 0, 0, 0, 0]

    def view(self) -> RelayAllocation:
        return RelayAllocation(
            id=self.id,
            caller_side=self.caller_side,
            callee_side=self.callee_side,
            caller_peer=(self.caller.address, self.caller.port),
            callee_peer=(self.callee.address, self.callee.port),
            expires_at=self.expires_at,
            counters=AllocationCounters(*self.counts),
            caller_latched=self.caller.latched,
            callee_latched=self.callee.latched,
        )


class RelayTable:
    """The relay's allocations. No I/O: ports come in already bound, `now` comes in with every
    call that depends on time, `get_timer()` says when `expire` is next due."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self._allocations: dict[int, _Allocation] = {}
        self._next_id = 1
        # Latches since the driver last asked (`pop_latches`); the hot path only appends.
        self.latches: list[Latched] = []

    def __len__(self) -> int:
        return len(self._allocations)

    def __contains__(self, allocation_id: object) -> bool:
        return allocation_id in self._allocations

    def check_capacity(self) -> None:
        """RelayCapacityExceeded when one more allocation would exceed `max_allocations` (the
        driver asks before binding two sockets for nothing)."""
        if len(self._allocations) >= self.config.max_allocations:
            raise RelayCapacityExceeded(self.config.max_allocations)

    def lifetime_for(self, requested: float | None) -> float:
        """The lifetime granted for `requested` seconds: the default when None, capped at
        `max_lifetime` (RFC 8656 section 7.2 does the same with LIFETIME)."""
        if requested is None:
            return self.config.default_lifetime
        if not (math.isfinite(requested) and requested > 0):
            raise GatewayUsageError(
                f"lifetime must be a positive number of seconds, not {requested}"
            )
        return min(requested, self.config.max_lifetime)

    def allocate(self, caller_peer: Address | PermittedPeer, callee_peer: Address | PermittedPeer,
                 caller_port: int, callee_port: int, now: float,
                 lifetime: float | None = None) -> RelayAllocation:
        """Record an allocation whose two ports on the relay address are bound."""
        caller = PermittedPeer.of(caller_peer)
        callee = PermittedPeer.of(callee_peer)
        version = self.config.version
        for side, peer in ((Side.CALLER, caller), (Side.CALLEE, callee)):
            if ipaddress.ip_address(peer.address).version != version:
                raise GatewayUsageError(
                    f"the {side} peer {peer.address} is not IPv{version} like the relay address "
                    f"{self.config.relay_address}"
                )
        _check_port(caller_port, "caller side relay")
        _check_port(callee_port, "callee side relay")
        if caller_port == callee_port:
            raise GatewayUsageError(f"both relay ports are {caller_port}; each side needs its own")
        granted = self.lifetime_for(lifetime)
        self.check_capacity()
        allocation = _Allocation(
            self._next_id,
            (self.config.relay_address, caller_port),
            (self.config.relay_address, callee_port),
            _Peer(caller, self._next_id, Side.CALLER, self.latches),
            _Peer(callee, self._next_id, Side.CALLEE, self.latches),
            now + granted,
        )
        self._next_id += 1
        self._allocations[allocation.id] = allocation
        return allocation.view()

    def _get(self, allocation_id: int) -> _Allocation:
        try:
            return self._allocations[allocation_id]
        except KeyError:
            raise UnknownAllocation(allocation_id) from None

    def allocation(self, allocation_id: int) -> RelayAllocation:
        return self._get(allocation_id).view()

    def allocations(self) -> tuple[RelayAllocation, ...]:
        return tuple(a.view() for a in self._allocations.values())

    def permit(self, allocation_id: int, side: Side,
               peer: Address | PermittedPeer) -> RelayAllocation:
        """Change the one peer `side` admits (e.g. the callee's endpoint, known only once the
        answer arrives); the earlier peer is no longer admitted."""
        allocation = self._get(allocation_id)
        permitted = PermittedPeer.of(peer)
        if ipaddress.ip_address(permitted.address).version != self.config.version:
            raise GatewayUsageError(
                f"the {side} peer {permitted.address} is not IPv{self.config.version} like the "
                f"relay address {self.config.relay_address}"
            )
        state = _Peer(permitted, allocation_id, side, self.latches)
        if side is Side.CALLER:
            allocation.caller = state
        else:
            allocation.callee = state
        return allocation.view()

    def exact_peers(self, allocation_id: int) -> tuple[Address, Address] | None:
        """(caller peer, callee peer) once each is known exactly, given without latching or
        latched; None while either still waits for its first datagram or ICE check, or when
        the allocation is gone. What a kernel data plane can take over (ims.gateway.aiorelay)."""
        allocation = self._allocations.get(allocation_id)
        if allocation is None or not (allocation.caller.exact and allocation.callee.exact):
            return None
        return ((allocation.caller.address, allocation.caller.port),
                (allocation.callee.address, allocation.callee.port))

    def pop_latches(self) -> tuple[Latched, ...]:
        """The latches since the last call (the driver logs them), oldest first."""
        latches = tuple(self.latches)
        self.latches.clear()
        return latches

    def refresh(self, allocation_id: int, now: float,
                lifetime: float | None = None) -> RelayAllocation:
        """A new lifetime from `now` (the session was refreshed)."""
        allocation = self._get(allocation_id)
        allocation.expires_at = now + self.lifetime_for(lifetime)
        return allocation.view()

    def release(self, allocation_id: int) -> RelayAllocation:
        """Remove the allocation; its final view (counters) is returned. The driver closes the
        two ports."""
        return self._allocations.pop(self._get(allocation_id).id).view()

    def get_timer(self) -> float | None:
        """When the next allocation expires (None: no allocation)."""
        return min((a.expires_at for a in self._allocations.values()), default=None)

    def expire(self, now: float) -> tuple[RelayAllocation, ...]:
        """Remove and return every allocation whose lifetime ended at or before `now`."""
        ended = [a for a in self._allocations.values() if a.expires_at <= now]
        for allocation in ended:
            del self._allocations[allocation.id]
        return tuple(a.view() for a in ended)

    def receive(self, allocation_id: int, side: Side, source: Address, size: int,
                now: float, datagram: bytes = b"") -> Address | None:
        """A datagram of `size` bytes from `source` reached the `side` relay port of the
        allocation: where to send it from the other side's port, or None to drop it (an
        unpermitted source, counted; or an allocation that is gone or expired). `datagram`
        is read only by a peer latching on an ICE check."""
        allocation = self._allocations.get(allocation_id)
        if allocation is None or now >= allocation.expires_at:
            return None
        counts = allocation.counts
        if side is Side.CALLER:
            if not allocation.caller.admits(source, datagram):
                counts[4] += 1
                return None
            counts[0] += 1
            counts[1] += size
            peer = allocation.callee
        else:
            if not allocation.callee.admits(source, datagram):
                counts[5] += 1
                return None
            counts[2] += 1
            counts[3] += size
            peer = allocation.caller
        return (peer.address, peer.port)
