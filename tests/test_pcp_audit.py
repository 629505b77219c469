"""Audit of the PCP server and CLI against RFC 6887 (and RFC 6886 for NAT-PMP clients): each
test names the rule it checks; one runs a real NAT-PMP client, Debian's natpmpc."""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import shutil
import struct
import subprocess

import pytest

from ims.cli import pcp as pcp_cli
from ims.pcp.aioserver import start_pcp_server
from ims.pcp.codec import (
    ANY_IPV4,
    Endpoint,
    IPAddress,
    PeerData,
    Request,
    ThirdParty,
    UnknownOption,
    encode_request,
    parse_request,
)
from ims.pcp.constants import HEADER_LENGTH, SERVER_PORT, Opcode, ResultCode
from ims.pcp.errors import MalformedRequest
from ims.pcp.nft import RecordingTable
from ims.pcp.server import PcpServer, PcpServerConfig
from tests.test_pcp_server import (
    EXTERNAL,
    GATEWAY,
    NONCE,
    PEER,
    T0,
    UE,
    make_server,
    map_request,
    send,
)

ip = ipaddress.ip_address
OTHER_NONCE = b"O" * 12


def _source(address: IPAddress) -> Endpoint:
    return Endpoint(address, 5351)


def reserved(response: bytes) -> bytes:
    """The 96 Reserved bits of a response header (RFC 6887 section 7.2)."""
    return response[12:HEADER_LENGTH]


# -- section 7.2: error responses to requests that could not be parsed -------------------------


@pytest.mark.parametrize(("wire", "code"), [
    (b"\x01" + map_request()[1:], ResultCode.UNSUPP_VERSION),
    (map_request()[:1] + b"\x09" + map_request()[2:], ResultCode.UNSUPP_OPCODE),
    (map_request() + b"\x00\x00", ResultCode.MALFORMED_REQUEST),
    (map_request() + b"\x02\x00\x00\x00" * 2, ResultCode.MALFORMED_OPTION),
], ids=["version-1", "opcode-9", "unaligned", "prefer-failure-twice"])
def test_rfc6887_s7_2_unparsed_request_error_copies_client_address_tail_into_reserved(
        wire: bytes, code: ResultCode) -> None:
    response = make_server().handle_datagram(wire, _source(UE), T0).response
    assert response is not None and response[3] == code
    # The last 96 bits of the PCP Client's IP Address field (::ffff:100.64.0.2).
    assert reserved(response) == wire[12:24] == bytes(6) + b"\xff\xff" + ip(UE).packed


def test_rfc6887_s7_2_parsed_request_error_keeps_reserved_zero() -> None:
    # Parsed fine, refused by policy: the Reserved bits stay 0.
    response = make_server().handle_datagram(map_request(client=ip("100.64.0.7")),
                                             _source(UE), T0).response
    assert response is not None and response[3] == ResultCode.ADDRESS_MISMATCH
    assert reserved(response) == bytes(12)


def test_rfc6887_s7_2_error_to_a_short_request_pads_reserved() -> None:
    response = make_server().handle_datagram(b"\x02\x01" + bytes(14), _source(UE), T0).response
    assert response is not None and response[3] == ResultCode.MALFORMED_REQUEST
    assert reserved(response) == bytes(12) and len(response) == 24


# -- section 8.2: the order of the general checks ----------------------------------------------


def test_rfc6887_s8_2_length_rule_comes_before_the_opcode_rule() -> None:
    short = b"\x02\x63\x00\x00"  # unknown opcode 99, and far shorter than a header
    with pytest.raises(MalformedRequest):
        parse_request(short)
    response = make_server().handle_datagram(short, _source(UE), T0).response
    assert response is not None and response[3] == ResultCode.MALFORMED_REQUEST


def test_rfc6887_s8_2_announce_from_behind_a_nat_is_address_mismatch() -> None:
    _, response = send(make_server(), encode_request(Request(0, ip("100.64.0.7"))), UE)
    assert (response.opcode, response.result_code) == (Opcode.ANNOUNCE,
                                                       ResultCode.ADDRESS_MISMATCH)


def test_rfc6887_s7_3_announce_with_unknown_mandatory_option_is_unsupp_option() -> None:
    server = make_server()
    _, refused = send(server, encode_request(Request(0, UE, None, (UnknownOption(99, b""),))),
                      UE)
    assert refused.result_code == ResultCode.UNSUPP_OPTION
    # An unknown optional option (128-255) is ignored: still an ANNOUNCE success.
    _, ok = send(server, encode_request(Request(0, UE, None, (UnknownOption(200, b""),))), UE)
    assert (ok.result_code, ok.lifetime) == (ResultCode.SUCCESS, 0)


# -- section 11.3: "all protocols" and deleting a set of mappings ------------------------------


def test_rfc6887_s11_3_protocol_zero_with_internal_port_is_malformed_request() -> None:
    server = make_server()
    _, response = send(server, map_request(protocol=0, port=4000), UE)
    assert response.result_code == ResultCode.MALFORMED_REQUEST
    # Protocol 0 with port 0 is well formed: this CGN just does not map "all protocols".
    _, response = send(server, map_request(protocol=0, port=0), UE)
    assert response.result_code == ResultCode.UNSUPP_PROTOCOL


def _holding(server: PcpServer) -> set[tuple[int, int]]:
    return {(m.protocol, m.internal.port) for m in server.mappings}


def _filled_server() -> PcpServer:
    server = make_server()
    for port, protocol, nonce in ((4000, 17, NONCE), (4001, 17, NONCE), (4002, 6, NONCE),
                                  (4003, 17, OTHER_NONCE)):
        assert send(server, map_request(port=port, protocol=protocol, nonce=nonce),
                    UE)[1].result_code == ResultCode.SUCCESS
    peer = PeerData(NONCE, 17, 4004, 0, ANY_IPV4, PEER.port, PEER.address)
    assert send(server, encode_request(Request(600, UE, peer)), UE)[1].result_code == 0
    return server


def test_rfc6887_s11_3_lifetime_zero_internal_port_zero_deletes_the_protocols_set() -> None:
    server = _filled_server()
    reply, response = send(server, map_request(lifetime=0, port=0, protocol=17), UE)
    assert (response.result_code, response.lifetime) == (ResultCode.SUCCESS, 0)
    # The UDP MAP mappings under this nonce go; TCP, another nonce's and the PEER stay.
    assert {(m.protocol, m.internal.port) for m in reply.changes.removed} == {(17, 4000),
                                                                               (17, 4001)}
    assert _holding(server) == {(6, 4002), (17, 4003), (17, 4004)}


def test_rfc6887_s11_3_lifetime_zero_protocol_zero_deletes_every_protocols_set() -> None:
    server = _filled_server()
    reply, response = send(server, map_request(lifetime=0, port=0, protocol=0), UE)
    assert response.result_code == ResultCode.SUCCESS
    assert len(reply.changes.removed) == 3
    assert _holding(server) == {(17, 4003), (17, 4004)}


def test_rfc6887_s11_3_set_deletion_through_third_party_names_the_subscriber() -> None:
    server = make_server()
    third = (ThirdParty(UE),)
    assert send(server, map_request(port=4000, options=third, client=GATEWAY))[1] \
        .result_code == 0
    reply, response = send(server, map_request(lifetime=0, port=0, options=third,
                                               client=GATEWAY))
    assert response.result_code == ResultCode.SUCCESS and len(reply.changes.removed) == 1
    assert response.third_party() == ThirdParty(UE) and not server.mappings


# -- RFC 6887 section 9 / RFC 6886 section 3.5: NAT-PMP clients ---------------------------------


@pytest.mark.parametrize("opcode", [0, 1, 2])
def test_rfc6887_s9_every_nat_pmp_opcode_gets_unsupported_version_with_its_opcode(
        opcode: int) -> None:
    request = struct.pack("!BBH", 0, opcode, 0) + (struct.pack("!HHI", 5000, 5000, 60)
                                                    if opcode else b"")
    response = make_server().handle_datagram(request, _source(UE), T0 + 9).response
    # RFC 6886 section 3.5: version 0, opcode 128 + request's, result 1, seconds since epoch.
    assert response == struct.pack("!BBHI", 0, 128 + opcode, 1, 9)


def test_nat_pmp_response_arriving_at_the_server_is_not_answered() -> None:
    # The R bit marks it as a response (RFC 6887 section 8.2): answering could loop.
    assert make_server().handle_datagram(struct.pack("!BBHI", 0, 128, 0, 5), _source(UE),
                                         T0).response is None


NATPMPC = shutil.which("natpmpc")
# natpmpc always asks port 5351; this address is the one this audit uses on loopback.
NATPMP_SERVER = "127.0.12.1"


@pytest.mark.skipif(NATPMPC is None, reason="natpmpc is not installed (Debian package natpmpc)")
def test_rfc6886_s3_5_real_natpmpc_gets_a_clean_unsupported_version() -> None:
    assert NATPMPC is not None

    async def scenario() -> subprocess.CompletedProcess[str]:
        try:
            server = await start_pcp_server(PcpServerConfig(external_address=EXTERNAL),
                                            NATPMP_SERVER, RecordingTable(), SERVER_PORT)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                pytest.skip(f"UDP {NATPMP_SERVER}:{SERVER_PORT} is in use; natpmpc cannot be "
                            "pointed at another port")
            raise
        async with server:
            # natpmpc sends a public address request, then the mapping request (-a).
            return await asyncio.to_thread(
                subprocess.run, [NATPMPC, "-g", NATPMP_SERVER, "-a", "5000", "5000", "udp", "60"],
                capture_output=True, text=True, timeout=30, check=False)

    done = asyncio.run(scenario())
    # libnatpmp's NATPMP_ERR_UNSUPPORTEDVERSION is -14: an answer, not a timeout (-7 would be
    # "no answer"), and nothing it could not parse.
    assert done.returncode == 1
    assert "readnatpmpresponseorretry returned -14" in done.stdout, done.stdout + done.stderr
    assert "unsupported nat-pmp version error from server" in done.stderr


# -- the CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "request"])
def test_cli_port_out_of_range_is_a_usage_error_not_a_traceback(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="ueconnect")
    pcp_cli.register(parser.add_subparsers())
    argv = {"serve": ["--listen", "127.0.12.1", "--external", str(EXTERNAL), "--dry-run"],
            "request": ["--server", "127.0.12.1", "--internal-port", "4000"]}[command]
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["pcp", command, *argv, "--port", "99999"])
    assert exited.value.code == 2
    assert "argument --port: '99999' is not a port number 1-65535" in capsys.readouterr().err
