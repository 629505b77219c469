"""PCP wire format (RFC 6887): byte-exact vectors built by hand from the section figures,
round trips, and a fuzzer whose only rule is "parse or raise the codec's own error"."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims.pcp.codec import (
    ANY_IPV4,
    Filter,
    MapData,
    PeerData,
    PreferFailure,
    Request,
    Response,
    ThirdParty,
    UnknownOption,
    decode_address,
    encode_address,
    encode_error_response,
    encode_request,
    encode_response,
    parse_request,
    parse_response,
)
from ims.pcp.constants import Opcode, ResultCode
from ims.pcp.errors import (
    MalformedOption,
    MalformedRequest,
    MalformedResponse,
    PacketDropped,
    PcpProtocolError,
    PcpUsageError,
    UnsupportedOpcode,
    UnsupportedVersion,
)

ip = ipaddress.ip_address
NONCE = bytes(range(1, 13))
V4 = "0000 0000 0000 0000 0000 ffff "  # section 5: IPv4-mapped prefix


def hx(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


# Section 7.1 header, 11.1 MAP data, 13.1 THIRD_PARTY, 13.3 FILTER, 13.2 PREFER_FAILURE.
MAP_REQUEST = hx(
    "02 01 0000"                      # version 2, R=0 opcode MAP, reserved
    "00000e10"                        # requested lifetime 3600
    + V4 + "6440 0009"                # PCP client's IP address ::ffff:100.64.0.9
    + "0102030405060708090a0b0c"      # mapping nonce (96 bits)
    "11 000000"                       # protocol UDP, reserved 24 bits
    "0fa0 9c40"                       # internal port 4000, suggested external port 40000
    + V4 + "c633 6401"                # suggested external address ::ffff:198.51.100.1
    + "01 00 0010" + V4 + "6440 0002"  # THIRD_PARTY, length 16: ::ffff:100.64.0.2
    + "03 00 0014"                    # FILTER, length 20
    "00 78 1388"                      # reserved, prefix length 120 (96 + /24), port 5000
    + V4 + "c633 6400"                # ::ffff:198.51.100.0
    + "02 00 0000"                    # PREFER_FAILURE, length 0
)
MAP_REQUEST_OBJECT = Request(
    3600, ip("100.64.0.9"),
    MapData(NONCE, 17, 4000, 40000, ip("198.51.100.1")),
    (ThirdParty(ip("100.64.0.2")), Filter(120, 5000, ip("198.51.100.0")), PreferFailure()))

# Section 12.1: PEER adds remote peer port, 16 reserved bits, remote peer address.
PEER_REQUEST = hx(
    "02 02 0000 00000078" + V4 + "6440 0009"
    + "0102030405060708090a0b0c" "11 000000" "0fa0 0000" + V4 + "0000 0000"
    + "1388 0000" + V4 + "c633 6402"            # remote peer 198.51.100.2:5000
    + "01 00 0010" + V4 + "6440 0002")
PEER_REQUEST_OBJECT = Request(
    120, ip("100.64.0.9"),
    PeerData(NONCE, 17, 4000, 0, ANY_IPV4, 5000, ip("198.51.100.2")),
    (ThirdParty(ip("100.64.0.2")),))

# Section 7.2 response header: R=1, reserved 8, result, lifetime, epoch, 96 reserved bits.
MAP_RESPONSE = hx(
    "02 81 00 00 00000e10 0000002a" + "00" * 12
    + "0102030405060708090a0b0c" "11 000000" "0fa0 9c40" + V4 + "c633 6401"
    + "01 00 0010" + V4 + "6440 0002")
MAP_RESPONSE_OBJECT = Response(
    Opcode.MAP, ResultCode.SUCCESS, 3600, 42,
    MapData(NONCE, 17, 4000, 40000, ip("198.51.100.1")), (ThirdParty(ip("100.64.0.2")),))

PEER_RESPONSE = hx(
    "02 82 00 00 00000078 00000007" + "00" * 12
    + "0102030405060708090a0b0c" "11 000000" "0fa0 d431" + V4 + "c633 6401"
    + "1388 0000" + V4 + "c633 6402")
PEER_RESPONSE_OBJECT = Response(
    Opcode.PEER, ResultCode.SUCCESS, 120, 7,
    PeerData(NONCE, 17, 4000, 54321, ip("198.51.100.1"), 5000, ip("198.51.100.2")))


@pytest.mark.parametrize(("wire", "obj"), [(MAP_REQUEST, MAP_REQUEST_OBJECT),
                                           (PEER_REQUEST, PEER_REQUEST_OBJECT)])
def test_rfc6887_s11_1_s12_1_request_layouts_byte_exact(wire: bytes, obj: Request) -> None:
    assert encode_request(obj) == wire
    assert parse_request(wire) == obj


@pytest.mark.parametrize(("wire", "obj"), [(MAP_RESPONSE, MAP_RESPONSE_OBJECT),
                                           (PEER_RESPONSE, PEER_RESPONSE_OBJECT)])
def test_rfc6887_s7_2_response_layouts_byte_exact(wire: bytes, obj: Response) -> None:
    assert encode_response(obj) == wire
    assert parse_response(wire) == obj


def test_rfc6887_s5_ipv4_travels_ipv4_mapped_and_ipv6_as_is() -> None:
    assert encode_address(ip("192.0.2.1")) == hx(V4 + "c000 0201")
    assert decode_address(hx(V4 + "c000 0201")) == ip("192.0.2.1")
    assert decode_address(ip("2001:db8::1").packed) == ip("2001:db8::1")


def test_rfc6887_s14_announce_is_a_bare_header() -> None:
    wire = encode_request(Request(0, ip("100.64.0.2")))
    assert wire == hx("02 00 0000 00000000" + V4 + "6440 0002")
    assert parse_request(wire).opcode is Opcode.ANNOUNCE


def test_rfc6887_s7_3_option_padding_and_unknown_options_kept() -> None:
    request = Request(1, ip("100.64.0.2"), MapData(NONCE, 17, 1),
                      (UnknownOption(200, b"\x01\x02\x03"),))
    wire = encode_request(request)
    # Option Length says 3; the data is padded to 4 octets.
    assert wire[-8:] == hx("c8 00 0003 010203 00")
    assert parse_request(wire) == request
    assert not UnknownOption(200, b"").mandatory and UnknownOption(127, b"").mandatory


def test_rfc6887_s8_3_error_response_copies_the_request() -> None:
    wire = encode_error_response(PEER_REQUEST, ResultCode.NOT_AUTHORIZED, 1800, 5)
    assert wire[:24] == hx("02 82 00 02 00000708 00000005" + "00" * 12)
    assert wire[24:] == PEER_REQUEST[24:]
    response = parse_response(wire)
    assert response.result_code == ResultCode.NOT_AUTHORIZED
    assert response.data == PEER_REQUEST_OBJECT.data


def test_rfc6887_s8_3_error_response_to_unaligned_request_is_padded() -> None:
    wire = encode_error_response(MAP_REQUEST[:27], ResultCode.MALFORMED_REQUEST, 1800, 0)
    assert len(wire) == 28 and wire[24:27] == MAP_REQUEST[24:27]


@pytest.mark.parametrize(("wire", "error"), [
    (b"\x02", PacketDropped),                                # section 8.3: < 2 octets
    (MAP_RESPONSE, PacketDropped),                           # section 8.3: R bit set
    (b"\x01" + MAP_REQUEST[1:], UnsupportedVersion),         # section 9
    (b"\x02\x05" + MAP_REQUEST[2:], UnsupportedOpcode),      # section 8.3
    (MAP_REQUEST + b"\x00", MalformedRequest),               # not a multiple of 4
    (MAP_REQUEST[:20], MalformedRequest),                    # shorter than the header
    (MAP_REQUEST + b"\x00" * 1100, MalformedRequest),        # over 1100 octets
    (MAP_REQUEST[:24 + 32], MalformedRequest),               # MAP data cut short
    (MAP_REQUEST[:-4] + hx("01 00 0010"), MalformedOption),  # option overruns the packet
    (MAP_REQUEST + hx("02 00 0000"), MalformedOption),       # PREFER_FAILURE twice
    (PEER_REQUEST + hx("02 00 0000"), MalformedOption),      # PREFER_FAILURE is MAP-only
    (PEER_REQUEST[:-20] + hx("01 00 000c") + bytes(12), MalformedOption),  # bad length
])
def test_rfc6887_s8_3_malformed_requests_raise_the_codecs_errors(
        wire: bytes, error: type[PcpProtocolError]) -> None:
    with pytest.raises(error):
        parse_request(wire)


def test_rfc6887_s8_3_result_code_each_parse_error_carries() -> None:
    assert PacketDropped("x").result_code is None
    assert UnsupportedVersion(1).result_code is ResultCode.UNSUPP_VERSION
    assert UnsupportedOpcode("x").result_code is ResultCode.UNSUPP_OPCODE
    assert MalformedRequest("x").result_code is ResultCode.MALFORMED_REQUEST
    assert MalformedOption("x").result_code is ResultCode.MALFORMED_OPTION


def test_rfc6887_s13_3_filter_prefix_length_for_ipv4_counts_the_mapped_prefix() -> None:
    bad = MAP_REQUEST.replace(hx("00 78 1388"), hx("00 18 1388"))  # 24: cuts into ::ffff:
    with pytest.raises(MalformedOption):
        parse_request(bad)
    assert Filter(120, 0, ip("198.51.100.0")).network() == ipaddress.ip_network("198.51.100.0/24")
    assert Filter(128, 0, ip("2001:db8::1")).network() == ipaddress.ip_network("2001:db8::1/128")


def test_malformed_responses() -> None:
    with pytest.raises(MalformedResponse):
        parse_response(MAP_REQUEST)            # R bit clear
    with pytest.raises(MalformedResponse):
        parse_response(MAP_RESPONSE[:40])      # SUCCESS without its MAP data
    with pytest.raises(UnsupportedVersion):
        parse_response(b"\x00\x81\x00\x01\x00\x00\x00\x05")  # NAT-PMP's answer (RFC 6886)
    short_error = parse_response(hx("02 81 00 03 00000708 00000000") + bytes(12))
    assert short_error.result_code == ResultCode.MALFORMED_REQUEST and short_error.data is None


def test_encoder_refuses_what_does_not_fit() -> None:
    with pytest.raises(PcpUsageError):
        encode_request(Request(1, ip("100.64.0.2"), MapData(b"short", 17, 1)))
    with pytest.raises(PcpUsageError):
        encode_request(Request(1 << 32, ip("100.64.0.2")))
    with pytest.raises(PcpUsageError):
        encode_request(Request(1, ip("100.64.0.2"), MapData(NONCE, 17, 70000)))


# -- property tests ----------------------------------------------------------------------------

def _not_mapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return getattr(address, "ipv4_mapped", None) is None


addresses = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6).filter(_not_mapped))
ports = st.integers(0, 0xFFFF)
nonces = st.binary(min_size=12, max_size=12)
map_data = st.builds(MapData, nonces, st.integers(0, 255), ports, ports, addresses)
peer_data = st.builds(PeerData, nonces, st.integers(0, 255), ports, ports, addresses, ports,
                      addresses)
filters = st.builds(lambda a, n, p: Filter((96 + n % 33) if a.version == 4 else n % 129, p, a),
                    addresses, st.integers(0, 255), ports)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    data = draw(st.one_of(st.none(), map_data, peer_data))
    options: list[object] = []
    if data is not None and draw(st.booleans()):
        options.append(ThirdParty(draw(addresses)))
    if isinstance(data, MapData):
        if draw(st.booleans()):
            options.append(PreferFailure())
        options.extend(draw(st.lists(filters, max_size=3)))
    options.extend(draw(st.lists(st.builds(UnknownOption, st.integers(4, 255),
                                           st.binary(max_size=9)), max_size=2)))
    return Request(draw(st.integers(0, 2**32 - 1)), draw(addresses), data,
                   tuple(options))  # type: ignore[arg-type]


@given(requests())
@settings(max_examples=300, deadline=None)
def test_request_round_trip(request: Request) -> None:
    assert parse_request(encode_request(request)) == request


@given(st.one_of(st.none(), map_data, peer_data), st.integers(0, 255),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_response_round_trip(data: MapData | PeerData | None, code: int, lifetime: int,
                             epoch: int) -> None:
    opcode = Opcode.ANNOUNCE if data is None else (
        Opcode.MAP if isinstance(data, MapData) else Opcode.PEER)
    response = Response(opcode, code, lifetime, epoch, data)
    assert parse_response(encode_response(response)) == response


@given(st.binary(max_size=1200))
@settings(max_examples=1000, deadline=None)
def test_fuzz_parse_or_raise_own_error(data: bytes) -> None:
    for parse in (parse_request, parse_response):
        with contextlib.suppress(PcpProtocolError):
            parse(data)


@given(st.sampled_from([MAP_REQUEST, PEER_REQUEST, MAP_RESPONSE, PEER_RESPONSE]),
       st.integers(0, 200), st.integers(0, 255))
@settings(max_examples=1000, deadline=None)
def test_fuzz_single_octet_mutations(base: bytes, index: int, value: int) -> None:
    data = bytearray(base)
    data[index % len(data)] = value
    for parse in (parse_request, parse_response):
        with contextlib.suppress(PcpProtocolError):
            parse(bytes(data))
