"""PCP wire format (RFC 6887 sections 5, 7, 11-14): pure encode and parse, no I/O.

Every address field is 128 bits; an IPv4 address travels IPv4-mapped (::ffff:a.b.c.d,
section 5) and comes back out of the parser as an `IPv4Address`. Parsers raise only the
`PcpProtocolError` leaves (each carrying the result code a server answers with); encoders raise
only `PcpUsageError`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from ims.pcp.constants import (
    FIRST_OPTIONAL_OPTION,
    HEADER_LENGTH,
    MAX_MESSAGE,
    NONCE_LENGTH,
    RESPONSE_BIT,
    VERSION,
    Opcode,
    OptionCode,
    ResultCode,
)
from ims.pcp.errors import (
    MalformedOption,
    MalformedRequest,
    MalformedResponse,
    PacketDropped,
    PcpUsageError,
    UnsupportedOpcode,
    UnsupportedVersion,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_IPV4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
# Section 11.1: the all-zeros IPv4 address (::ffff:0.0.0.0) means "no preference".
ANY_IPV4 = ipaddress.IPv4Address("0.0.0.0")
ANY_IPV6 = ipaddress.IPv6Address("::")

# Section 11.1 (MAP) and 12.1 (PEER): lengths of the opcode-specific data.
MAP_DATA_LENGTH = 36
PEER_DATA_LENGTH = 56
_OPCODE_DATA_LENGTH = {Opcode.ANNOUNCE: 0, Opcode.MAP: MAP_DATA_LENGTH,
                       Opcode.PEER: PEER_DATA_LENGTH}
# Section 13: which opcodes each option may ride on, and its fixed data length.
_OPTION_OPCODES = {
    OptionCode.THIRD_PARTY: frozenset({Opcode.MAP, Opcode.PEER}),
    OptionCode.PREFER_FAILURE: frozenset({Opcode.MAP}),
    OptionCode.FILTER: frozenset({Opcode.MAP}),
}
_OPTION_LENGTH = {OptionCode.THIRD_PARTY: 16, OptionCode.PREFER_FAILURE: 0,
                  OptionCode.FILTER: 20}


# -- addresses (RFC 6887 section 5) ------------------------------------------------------------


def encode_address(address: IPAddress) -> bytes:
    """128-bit address field: IPv6 as is, IPv4 as IPv4-mapped IPv6."""
    if isinstance(address, ipaddress.IPv4Address):
        return _IPV4_MAPPED_PREFIX + address.packed
    return address.packed


def decode_address(data: bytes) -> IPAddress:
    if len(data) != 16:
        raise ValueError("address fields are 16 octets")
    if data[:12] == _IPV4_MAPPED_PREFIX:
        return ipaddress.IPv4Address(data[12:])
    return ipaddress.IPv6Address(data)


def is_unspecified(address: IPAddress) -> bool:
    return address in (ANY_IPV4, ANY_IPV6)


@dataclass(frozen=True, order=True)
class Endpoint:
    """An IP address and a transport port."""

    address: IPAddress
    port: int

    def __str__(self) -> str:
        if isinstance(self.address, ipaddress.IPv6Address):
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """`192.0.2.1:5000` or `[2001:db8::1]:5000`."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise PcpUsageError(f"{text!r} is not ADDRESS:PORT")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise PcpUsageError(f"{host!r} in {text!r} is not an IP address") from None
        if not 0 <= int(port) <= 0xFFFF:
            raise PcpUsageError(f"port {port} in {text!r} is out of range")
        return cls(address, int(port))


def normalise_address(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (a dual-stack socket's view) as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# -- options (RFC 6887 sections 7.3 and 13) ----------------------------------------------------


@dataclass(frozen=True)
class ThirdParty:
    """Section 13.1: the request is on behalf of `internal_address`."""

    internal_address: IPAddress


@dataclass(frozen=True)
class PreferFailure:
    """Section 13.2: fail rather than assign other than the suggested external address/port."""


@dataclass(frozen=True)
class Filter:
    """Section 13.3: admit inbound only from this remote prefix and port (0 = any port).

    `prefix_length` counts bits of the 128-bit field: for IPv4 it is 96 plus the IPv4 prefix
    length; 0 admits every remote address.
    """

    prefix_length: int
    remote_peer_port: int
    remote_peer_address: IPAddress

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The admitted remote prefix in its own family (0.0.0.0/0 or ::/0 for length 0)."""
        address = self.remote_peer_address
        if isinstance(address, ipaddress.IPv4Address):
            bits = max(self.prefix_length - 96, 0)
            return ipaddress.IPv4Network((address, bits), strict=False)
        return ipaddress.IPv6Network((address, self.prefix_length), strict=False)


@dataclass(frozen=True)
class UnknownOption:
    """An option this codec does not know; the server decides by `code` (section 7.3)."""

    code: int
    data: bytes

    @property
    def mandatory(self) -> bool:
        return self.code < FIRST_OPTIONAL_OPTION


Option = ThirdParty | PreferFailure | Filter | UnknownOption


# -- opcode-specific data ----------------------------------------------------------------------


@dataclass(frozen=True)
class MapData:
    """Section 11.1 (request) / 11.2 (response: `external_*` are the assigned ones)."""

    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int = 0
    external_address: IPAddress = ANY_IPV4


@dataclass(frozen=True)
class PeerData:
    """Section 12.1 (request) / 12.2 (response)."""

    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_address: IPAddress
    remote_peer_port: int
    remote_peer_address: IPAddress


OpcodeData = MapData | PeerData


def _opcode_of(data: OpcodeData | None) -> Opcode:
    if data is None:
        return Opcode.ANNOUNCE
    return Opcode.MAP if isinstance(data, MapData) else Opcode.PEER


@dataclass(frozen=True)
class Request:
    """Section 7.1 header + opcode data + options. `data` None is ANNOUNCE."""

    lifetime: int
    client_address: IPAddress
    data: OpcodeData | None = None
    options: tuple[Option, ...] = field(default=())

    @property
    def opcode(self) -> Opcode:
        return _opcode_of(self.data)

    def third_party(self) -> ThirdParty | None:
        return next((o for o in self.options if isinstance(o, ThirdParty)), None)

    def filters(self) -> tuple[Filter, ...]:
        return tuple(o for o in self.options if isinstance(o, Filter))

    def prefer_failure(self) -> bool:
        return any(isinstance(o, PreferFailure) for o in self.options)


@dataclass(frozen=True)
class Response:
    """Section 7.2 header + opcode data + options.

    `opcode` is explicit because an error response may lack opcode data the server could not
    parse; `result_code` stays an int so unknown codes from newer servers survive parsing.
    """

    opcode: int
    result_code: int
    lifetime: int
    epoch_time: int
    data: OpcodeData | None = None
    options: tuple[Option, ...] = field(default=())

    def third_party(self) -> ThirdParty | None:
        return next((o for o in self.options if isinstance(o, ThirdParty)), None)


# -- encoding ----------------------------------------------------------------------------------


def _u(value: int, bits: int, what: str) -> int:
    if not 0 <= value < 1 << bits:
        raise PcpUsageError(f"{what} {value} does not fit in {bits} bits")
    return value


def _encode_opcode_data(data: OpcodeData | None) -> bytes:
    if data is None:
        return b""
    if len(data.nonce) != NONCE_LENGTH:
        raise PcpUsageError(f"a mapping nonce is {NONCE_LENGTH} octets, not {len(data.nonce)}")
    common = (data.nonce
              + struct.pack("!B3x", _u(data.protocol, 8, "protocol"))
              + struct.pack("!HH", _u(data.internal_port, 16, "internal port"),
                            _u(data.external_port, 16, "external port"))
              + encode_address(data.external_address))
    if isinstance(data, MapData):
        return common
    return (common + struct.pack("!H2x", _u(data.remote_peer_port, 16, "remote peer port"))
            + encode_address(data.remote_peer_address))


def _encode_option(option: Option) -> bytes:
    code: int
    if isinstance(option, ThirdParty):
        code, body = OptionCode.THIRD_PARTY, encode_address(option.internal_address)
    elif isinstance(option, PreferFailure):
        code, body = OptionCode.PREFER_FAILURE, b""
    elif isinstance(option, Filter):
        code = OptionCode.FILTER
        body = (struct.pack("!xBH", _u(option.prefix_length, 8, "prefix length"),
                            _u(option.remote_peer_port, 16, "remote peer port"))
                + encode_address(option.remote_peer_address))
    else:
        code, body = _u(option.code, 8, "option code"), option.data
    # Section 7.3: Option Length excludes the padding to a 4-octet boundary.
    padding = b"\x00" * (-len(body) % 4)
    return struct.pack("!BxH", code, _u(len(body), 16, "option length")) + body + padding


def _check_size(packet: bytes) -> bytes:
    if len(packet) > MAX_MESSAGE:
        raise PcpUsageError(f"PCP message of {len(packet)} octets exceeds {MAX_MESSAGE}")
    return packet


def encode_request(request: Request) -> bytes:
    """Section 7.1: version, R=0 and opcode, reserved, Requested Lifetime, client address."""
    header = struct.pack("!BBHI", VERSION, int(request.opcode), 0,
                         _u(request.lifetime, 32, "lifetime"))
    header += encode_address(request.client_address)
    body = _encode_opcode_data(request.data) + b"".join(map(_encode_option, request.options))
    return _check_size(header + body)


def encode_response(response: Response) -> bytes:
    """Section 7.2: version, R=1 and opcode, reserved, result, Lifetime, Epoch, 96 reserved."""
    header = struct.pack("!BBxBII12x", VERSION,
                         RESPONSE_BIT | _u(response.opcode, 7, "opcode"),
                         _u(response.result_code, 8, "result code"),
                         _u(response.lifetime, 32, "lifetime"),
                         _u(response.epoch_time, 32, "epoch time"))
    body = _encode_opcode_data(response.data) + b"".join(map(_encode_option, response.options))
    return _check_size(header + body)


def encode_error_response(request: bytes, result_code: ResultCode, lifetime: int,
                          epoch_time: int, *, parsed: bool = True) -> bytes:
    """Section 8.2 / 7.2: an error response copies the request's opcode data and options.

    Works on raw bytes so a request the codec could not parse still gets its answer; the copy
    is truncated to 1100 octets and padded to a multiple of 4. For a request that was not
    successfully parsed (`parsed` False), section 7.2 fills the response's 96 Reserved bits
    with the last 96 bits of the request's PCP Client's IP Address field, so the client can
    still tell which of its requests the error answers.
    """
    opcode = request[1] & 0x7F if len(request) > 1 else 0
    body = request[HEADER_LENGTH:MAX_MESSAGE]
    body += b"\x00" * (-len(body) % 4)
    reserved = b"\x00" * 12
    if not parsed:
        reserved = request[12:HEADER_LENGTH].ljust(12, b"\x00")
    header = struct.pack("!BBxBII", VERSION, RESPONSE_BIT | opcode, int(result_code),
                         _u(lifetime, 32, "lifetime"), _u(epoch_time, 32, "epoch time"))
    return header + reserved + body


# -- parsing -----------------------------------------------------------------------------------


def _parse_opcode_data(opcode: Opcode, data: bytes) -> OpcodeData | None:
    if opcode is Opcode.ANNOUNCE:
        return None
    nonce = bytes(data[:12])
    protocol, internal_port, external_port = struct.unpack_from("!B3xHH", data, 12)
    external_address = decode_address(data[20:36])
    if opcode is Opcode.MAP:
        return MapData(nonce, protocol, internal_port, external_port, external_address)
    (remote_port,) = struct.unpack_from("!H2x", data, 36)
    return PeerData(nonce, protocol, internal_port, external_port, external_address,
                    remote_port, decode_address(data[40:56]))


def _parse_options(opcode: Opcode, data: bytes) -> tuple[Option, ...]:
    """Section 7.3: code, reserved, length, data padded to 4 octets; repeat to the end."""
    options: list[Option] = []
    seen: set[int] = set()
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise MalformedOption(f"{len(data) - offset} stray octets after the last option")
        code, length = struct.unpack_from("!BxH", data, offset)
        start = offset + 4
        end = start + length
        if end > len(data):
            raise MalformedOption(f"option {code} claims {length} octets; "
                                  f"only {len(data) - start} remain")
        body = bytes(data[start:end])
        offset = end + (-length % 4)
        if offset > len(data):
            raise MalformedOption(f"option {code} lacks its padding to a 4-octet boundary")
        if code not in _OPTION_OPCODES:
            options.append(UnknownOption(code, body))
            continue
        known = OptionCode(code)
        if opcode not in _OPTION_OPCODES[known]:
            raise MalformedOption(f"{known.name} is not valid in a {opcode.name} message "
                                  "(RFC 6887 section 13)")
        if length != _OPTION_LENGTH[known]:
            raise MalformedOption(f"{known.name} has {length} octets of data, "
                                  f"RFC 6887 section 13 says {_OPTION_LENGTH[known]}")
        # Section 13.1 / 13.2: THIRD_PARTY and PREFER_FAILURE appear at most once.
        if known is not OptionCode.FILTER and known in seen:
            raise MalformedOption(f"{known.name} appears more than once")
        seen.add(known)
        if known is OptionCode.THIRD_PARTY:
            options.append(ThirdParty(decode_address(body)))
        elif known is OptionCode.PREFER_FAILURE:
            options.append(PreferFailure())
        else:
            prefix_length, port = struct.unpack_from("!xBH", body)
            address = decode_address(body[4:20])
            # Section 13.3: prefix length is at most 128, and for an IPv4-mapped address
            # anything between 1 and 95 would cut into the mapping prefix.
            if prefix_length > 128 or (
                    isinstance(address, ipaddress.IPv4Address) and 0 < prefix_length < 96):
                raise MalformedOption(f"FILTER prefix length {prefix_length} is not valid "
                                      f"for {address}")
            options.append(Filter(prefix_length, port, address))
    return tuple(options)


def _check_length(data: bytes, error: type[MalformedRequest] | type[MalformedResponse]) -> None:
    if len(data) < HEADER_LENGTH or len(data) > MAX_MESSAGE or len(data) % 4:
        raise error(f"a PCP message is 24 to {MAX_MESSAGE} octets in multiples of 4; "
                    f"this one is {len(data)}")


def parse_request(data: bytes) -> Request:
    """Section 8.2, in its order: drop, version, length, opcode, opcode data, options."""
    if len(data) < 2:
        raise PacketDropped("shorter than 2 octets")
    if data[1] & RESPONSE_BIT:
        raise PacketDropped("R bit set: a response, not a request")
    if data[0] != VERSION:
        raise UnsupportedVersion(data[0])
    # The length rule comes before the opcode: a 3-octet request is malformed whatever its
    # opcode says.
    _check_length(data, MalformedRequest)
    try:
        opcode = Opcode(data[1])
    except ValueError:
        raise UnsupportedOpcode(f"opcode {data[1]} is not supported") from None
    lifetime = struct.unpack_from("!I", data, 4)[0]
    client_address = decode_address(data[8:24])
    need = _OPCODE_DATA_LENGTH[opcode]
    if len(data) - HEADER_LENGTH < need:
        raise MalformedRequest(f"{opcode.name} needs {need} octets of opcode data, "
                               f"got {len(data) - HEADER_LENGTH}")
    body = data[HEADER_LENGTH:HEADER_LENGTH + need]
    options = _parse_options(opcode, data[HEADER_LENGTH + need:])
    return Request(lifetime, client_address, _parse_opcode_data(opcode, body), options)


def parse_response(data: bytes) -> Response:
    """Section 7.2; an error response may carry less opcode data than a success (section 8.2)."""
    if len(data) < 2:
        raise MalformedResponse("shorter than 2 octets")
    if not data[1] & RESPONSE_BIT:
        raise MalformedResponse("R bit clear: a request, not a response")
    if data[0] != VERSION:
        raise UnsupportedVersion(data[0])
    _check_length(data, MalformedResponse)
    opcode_value = data[1] & 0x7F
    result_code, lifetime, epoch = struct.unpack_from("!xBII", data, 2)
    try:
        opcode = Opcode(opcode_value)
    except ValueError:
        return Response(opcode_value, result_code, lifetime, epoch)
    need = _OPCODE_DATA_LENGTH[opcode]
    if len(data) - HEADER_LENGTH < need:
        if result_code == ResultCode.SUCCESS:
            raise MalformedResponse(f"a SUCCESS {opcode.name} response needs {need} octets "
                                    f"of opcode data, got {len(data) - HEADER_LENGTH}")
        return Response(opcode, result_code, lifetime, epoch)
    body = data[HEADER_LENGTH:HEADER_LENGTH + need]
    try:
        options = _parse_options(opcode, data[HEADER_LENGTH + need:])
    except MalformedOption as exc:
        raise MalformedResponse(exc.reason) from None
    return Response(opcode, result_code, lifetime, epoch, _parse_opcode_data(opcode, body),
                    options)

