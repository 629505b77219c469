"""The embedded authoritative server over real loopback UDP and TCP sockets."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from bench.sipp import free_port
from ims.dns.errors import DnsTimeout, ZoneFileError
from ims.dns.locator import Locator, LocatorConfig, Nameserver
from ims.dns.server import DnsServer, start_server

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ROOT / "dns_zones" / "loopback"
EDGE = ROOT / "tests" / "data" / "dns" / "edge"
BROKEN = ROOT / "tests" / "data" / "dns" / "broken"
ALPHA = "ims.mnc001.mcc001.3gppnetwork.org"
BILL = "1.0.0.0.0.1.0.5.5.5.1.e164.arpa."


async def _udp(server: DnsServer, query: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.udp(query, "127.0.0.1", port=server.port, timeout=2,
                                    ignore_trailing=True)


async def _tcp(server: DnsServer, query: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.tcp(query, "127.0.0.1", port=server.port, timeout=2)


def _run(zones: Path, body: Callable[[DnsServer], Awaitable[None]]) -> None:
    async def main() -> None:
        async with await start_server(zones, "127.0.0.1", 0) as server:
            await body(server)

    asyncio.run(asyncio.wait_for(main(), 20))


def test_rfc1035_authoritative_answer_has_aa_over_udp_and_tcp() -> None:
    async def body(server: DnsServer) -> None:
        query = dns.message.make_query(BILL, "NAPTR")
        for response in (await _udp(server, query), await _tcp(server, query)):
            assert response.rcode() == dns.rcode.NOERROR
            assert response.flags & dns.flags.AA
            assert "sip:+15550100001@" in response.answer[0].to_text()

    _run(LOOPBACK, body)


def test_rfc2308_nxdomain_and_nodata_carry_the_soa() -> None:
    async def body(server: DnsServer) -> None:
        nx = await _udp(server, dns.message.make_query(f"nothing.{ALPHA}", "A"))
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.flags & dns.flags.AA
        assert nx.authority[0].rdtype == dns.rdatatype.SOA
        assert nx.authority[0].ttl == 60  # min(SOA TTL 300, MINIMUM 60): RFC 2308 section 3
        nodata = await _udp(server, dns.message.make_query(f"pcscf.{ALPHA}", "MX"))
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        assert nodata.authority[0].rdtype == dns.rdatatype.SOA
        # RFC 8020: an empty non-terminal exists, so it is NODATA, not NXDOMAIN.
        ent = await _udp(server, dns.message.make_query(f"_udp.{ALPHA}", "A"))
        assert ent.rcode() == dns.rcode.NOERROR

    _run(LOOPBACK, body)


def test_rfc2782_and_rfc3403_additional_records() -> None:
    async def body(server: DnsServer) -> None:
        srv = await _udp(server, dns.message.make_query(f"_sip._udp.{ALPHA}", "SRV"))
        names = {(r.name.to_text(), r.rdtype) for r in srv.additional}
        assert (f"border1.{ALPHA}.", dns.rdatatype.A) in names
        assert (f"border3.{ALPHA}.", dns.rdatatype.AAAA) in names
        naptr = await _udp(server, dns.message.make_query(ALPHA, "NAPTR", use_edns=0))
        names = {(r.name.to_text(), r.rdtype) for r in naptr.additional}
        assert (f"_sip._udp.{ALPHA}.", dns.rdatatype.SRV) in names
        assert (f"border2.{ALPHA}.", dns.rdatatype.A) in names

    _run(LOOPBACK, body)


def test_rfc1035_4_2_1_truncation_then_tcp_retry() -> None:
    async def body(server: DnsServer) -> None:
        query = dns.message.make_query("huge.edge.test.", "TXT", use_edns=0, payload=1232)
        response = await _udp(server, query)
        assert response.flags & dns.flags.TC and not response.answer
        full, used_tcp = await dns.asyncquery.udp_with_fallback(
            query, "127.0.0.1", port=server.port, timeout=2)
        assert used_tcp and len(full.answer[0]) == 15

    _run(EDGE, body)


def test_rfc6891_edns_payload_size_decides_truncation() -> None:
    async def body(server: DnsServer) -> None:
        plain = await _udp(server, dns.message.make_query("big.edge.test.", "TXT"))
        assert plain.flags & dns.flags.TC  # no EDNS: 512 octets
        edns = await _udp(server, dns.message.make_query("big.edge.test.", "TXT", use_edns=0,
                                                          payload=1232))
        assert not edns.flags & dns.flags.TC and len(edns.answer[0]) == 6
        assert edns.edns == 0 and edns.payload == 1232
        tiny = await _udp(server, dns.message.make_query("big.edge.test.", "TXT", use_edns=0,
                                                          payload=100))
        assert tiny.flags & dns.flags.TC  # below 512 counts as 512

    _run(EDGE, body)


def test_rfc6891_6_1_3_unknown_edns_version_gets_badvers() -> None:
    async def body(server: DnsServer) -> None:
        query = dns.message.make_query(BILL, "NAPTR", use_edns=1)
        response = await _udp(server, query)
        assert response.rcode() == dns.rcode.BADVERS

    _run(LOOPBACK, body)


def _raw_udp(port: int, payload: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            return sock.recv(4096)
        except TimeoutError:
            return None


def test_rfc1035_malformed_query_gets_formerr_and_garbage_is_dropped() -> None:
    async def body(server: DnsServer) -> None:
        loop = asyncio.get_running_loop()
        # A header claiming one question, then nothing.
        bad = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\x05abc"
        reply = await loop.run_in_executor(None, _raw_udp, server.port, bad)
        assert reply is not None
        qid, flags = struct.unpack("!HH", reply[:4])
        assert qid == 0xBEEF and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
        # Shorter than a header: nothing to answer; a response (QR set): never answered.
        assert await loop.run_in_executor(None, _raw_udp, server.port, b"\x01\x02") is None
        response_bits = struct.pack("!HHHHHH", 1, 0x8000, 0, 0, 0, 0)
        assert await loop.run_in_executor(None, _raw_udp, server.port, response_bits) is None
        # The server still answers afterwards.
        ok = await _udp(server, dns.message.make_query(BILL, "NAPTR"))
        assert ok.rcode() == dns.rcode.NOERROR

    _run(LOOPBACK, body)


def test_rfc1034_name_outside_the_zones_is_refused() -> None:
    async def body(server: DnsServer) -> None:
        response = await _udp(server, dns.message.make_query("www.example.org.", "A"))
        assert response.rcode() == dns.rcode.REFUSED
        assert not response.flags & dns.flags.AA
        axfr = await _tcp(server, dns.message.make_query("e164.arpa.", "AXFR"))
        assert axfr.rcode() == dns.rcode.REFUSED

    _run(LOOPBACK, body)


def test_notify_opcode_is_not_implemented() -> None:
    async def body(server: DnsServer) -> None:
        query = dns.message.make_query(BILL, "SOA")
        query.set_opcode(dns.opcode.NOTIFY)
        response = await _udp(server, query)
        assert response.rcode() == dns.rcode.NOTIMP

    _run(LOOPBACK, body)


def test_malformed_zone_file_stops_the_server_with_file_line_defect() -> None:
    with pytest.raises(ZoneFileError) as info:
        asyncio.run(start_server(BROKEN, "127.0.0.1", 0))
    assert info.value.path.name == "bad.test.zone"
    assert info.value.line == 6
    assert "127.0.0.300" in str(info.value)


def test_locator_against_the_embedded_server() -> None:
    async def body(server: DnsServer) -> None:
        locator = Locator(LocatorConfig.for_server("127.0.0.1", server.port),
                          rng=random.Random(1))
        assert await locator.enum_lookup("+15550100002") == (
            "sip:+15550100002@ims.mnc002.mcc001.3gppnetwork.org;user=phone")
        targets = await locator.locate_operator("001-01")
        assert {t.address for t in targets} == {"127.0.1.3", "127.0.1.4", "127.0.1.5", "::1"}

    _run(LOOPBACK, body)


def test_nameserver_failover_and_dns_timeout() -> None:
    async def body(server: DnsServer) -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        try:
            dead = Nameserver("127.0.0.1", silent.getsockname()[1])
            live = Nameserver("127.0.0.1", server.port)
            both = Locator(LocatorConfig(nameservers=(dead, live), timeout=0.2))
            assert (await both.enum_lookup("+15550100001")).startswith("sip:")
            only_dead = Locator(LocatorConfig(nameservers=(dead,), timeout=0.2))
            with pytest.raises(DnsTimeout):
                await only_dead.enum_lookup("+15550100001")
        finally:
            silent.close()

    _run(LOOPBACK, body)


def test_cli_dns_serve_answers_kdig() -> None:
    kdig = shutil.which("kdig")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ims", "dns", "serve", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline(), process.stdout.readline()]
        assert f"127.0.0.1 port {port}" in lines[1], lines
        if kdig is None:
            pytest.skip("kdig not found (Debian package knot-dnsutils)")
        deadline = time.monotonic() + 5
        output = ""
        while time.monotonic() < deadline and "E2U+sip" not in output:
            output = subprocess.run(
                [kdig, "@127.0.0.1", "-p", str(port), "+short", "+time=1", "+retry=0",
                 "NAPTR", "1.0.0.0.0.1.0.5.5.5.1.e164.arpa"],
                capture_output=True, text=True, timeout=5, check=False,
            ).stdout
        assert "sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org" in output
    finally:
        process.terminate()
        process.wait(timeout=5)
    assert process.returncode == 0


def test_cli_dns_serve_reports_a_broken_zone_set() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ims", "dns", "serve", "--zones", str(BROKEN), "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=20, check=False,
    )
    assert result.returncode == 1
    assert "bad.test.zone:6:" in result.stderr and "127.0.0.300" in result.stderr
