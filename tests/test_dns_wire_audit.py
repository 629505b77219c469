"""Audit of the embedded authoritative server on the wire rules a resolver relies on, and of
the locator's errors when a nameserver fails.

The answer logic is pure (ims.dns.authority), so most rules are checked on query bytes in and
response bytes out; the locator tests use a real UDP nameserver on 127.0.0.1 that answers
SERVFAIL. The side-by-side comparison with Knot DNS is tests/test_dns_wire_audit_knot.py.
"""

from __future__ import annotations

import asyncio
import random
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from ims.dns.authority import Authority
from ims.dns.errors import DnsServerFailure, DnsTimeout, DnsUsageError
from ims.dns.locator import Locator, LocatorConfig, Nameserver
from ims.dns.server import DnsServer, start_server
from ims.dns.zones import load_zone_set

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ROOT / "dns_zones" / "loopback"
EDGE = ROOT / "tests" / "data" / "dns" / "edge"
ALPHA = "ims.mnc001.mcc001.3gppnetwork.org."
BILL = "1.0.0.0.0.1.0.5.5.5.1.e164.arpa."


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority(load_zone_set(LOOPBACK))


def _ask(
    authority: Authority, query: dns.message.Message, *, over_tcp: bool = False
) -> dns.message.Message:
    wire = authority.respond_wire(query.to_wire(), over_tcp=over_tcp)
    assert wire is not None
    return dns.message.from_wire(wire)


def _query(name: str, rdtype: str, **options: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **options)  # type: ignore[arg-type]


# -- RFC 3225: the DO bit ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rdtype", "edns", "rcode"),
    [
        pytest.param(BILL, "NAPTR", 0, dns.rcode.NOERROR, id="answer"),
        pytest.param(f"nothing.{ALPHA}", "A", 0, dns.rcode.NXDOMAIN, id="nxdomain"),
        pytest.param(f"pcscf.{ALPHA}", "MX", 0, dns.rcode.NOERROR, id="nodata"),
        pytest.param("www.example.org.", "A", 0, dns.rcode.REFUSED, id="refused"),
        pytest.param(BILL, "NAPTR", 1, dns.rcode.BADVERS, id="badvers"),
    ],
)
def test_rfc3225_3_do_bit_of_the_query_is_copied_into_the_response(
    authority: Authority, name: str, rdtype: str, edns: int, rcode: int
) -> None:
    with_do = _ask(authority, _query(name, rdtype, use_edns=edns, want_dnssec=True))
    assert with_do.rcode() == rcode
    assert with_do.edns == 0 and with_do.ednsflags & dns.flags.DO
    without_do = _ask(authority, _query(name, rdtype, use_edns=edns))
    assert without_do.rcode() == rcode
    assert without_do.edns == 0 and not without_do.ednsflags & dns.flags.DO


# -- RFC 1034 section 3.7.1: QCLASS=* ---------------------------------------------------------


def test_rfc1034_3_7_1_qclass_any_is_answered_from_the_in_data_never_authoritatively(
    authority: Authority,
) -> None:
    naptr = _ask(authority, _query(BILL, "NAPTR", rdclass=dns.rdataclass.ANY))
    assert naptr.rcode() == dns.rcode.NOERROR
    assert naptr.question[0].rdclass == dns.rdataclass.ANY  # the question is echoed as asked
    assert naptr.answer[0].rdclass == dns.rdataclass.IN
    assert "sip:+15550100001@" in naptr.answer[0].to_text()
    assert not naptr.flags & dns.flags.AA  # "responses to QCLASS=* queries can never be
    # authoritative": the server cannot know every class
    nx = _ask(authority, _query(f"nothing.{ALPHA}", "A", rdclass=dns.rdataclass.ANY))
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
    outside = _ask(authority, _query("www.example.org.", "A", rdclass=dns.rdataclass.ANY))
    assert outside.rcode() == dns.rcode.REFUSED
    for rdclass in (dns.rdataclass.CH, dns.rdataclass.HS, dns.rdataclass.NONE):
        other = _ask(authority, _query(ALPHA, "SOA", rdclass=rdclass))
        assert other.rcode() == dns.rcode.REFUSED, rdclass  # we hold no data in that class


# -- RFC 4035 section 3.1.4.1: DS at a zone cut ---------------------------------------------


def test_rfc4035_3_1_4_1_ds_at_a_served_zone_cut_is_answered_from_the_parent(
    authority: Authority,
) -> None:
    ds = _ask(authority, _query(ALPHA, "DS"))
    assert ds.rcode() == dns.rcode.NOERROR and not ds.answer and ds.flags & dns.flags.AA
    assert ds.authority[0].rdtype == dns.rdatatype.SOA
    assert ds.authority[0].name == dns.name.from_text("3gppnetwork.org.")  # the parent's SOA
    # Every other type at the apex stays the child's; a zone whose parent we do not serve
    # answers DS itself (as Knot does).
    ns = _ask(authority, _query(ALPHA, "NS"))
    assert ns.answer and ns.answer[0].name == dns.name.from_text(ALPHA)
    top = _ask(authority, _query("e164.arpa.", "DS"))
    assert top.rcode() == dns.rcode.NOERROR
    assert top.authority[0].name == dns.name.from_text("e164.arpa.")


# -- RFC 1035 section 4.1.1 / RFC 4343: header echo and case ------------------------------------


def test_rfc1035_4_1_1_rd_is_echoed_and_aa_marks_the_authoritative_answer(
    authority: Authority,
) -> None:
    query = _query(BILL, "NAPTR")
    assert query.flags & dns.flags.RD
    response = _ask(authority, query)
    assert response.flags & dns.flags.RD and response.flags & dns.flags.AA
    assert not response.flags & dns.flags.RA  # authoritative only: no recursion offered
    query.flags &= ~dns.flags.RD
    assert not _ask(authority, query).flags & dns.flags.RD


def test_rfc4343_names_match_case_insensitively_and_the_question_keeps_its_case(
    authority: Authority,
) -> None:
    mixed = "PcScF.IMS.mnc001.MCC001.3gppNetwork.ORG."
    response = _ask(authority, _query(mixed, "A"))
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert response.question[0].name.to_text() == mixed  # case preserved, bit for bit
    assert response.answer[0].to_text().split()[-1] == "127.0.1.1"
    nx = _ask(authority, _query(f"NoThInG.{ALPHA.upper()}", "A"))
    assert nx.rcode() == dns.rcode.NXDOMAIN


# -- RFC 6891 section 7: a truncated response is header, question and OPT ---------------------


def test_rfc6891_7_truncated_response_keeps_question_and_opt() -> None:
    authority = Authority(load_zone_set(EDGE))
    response = _ask(authority, _query("huge.edge.test.", "TXT", use_edns=0, payload=1232))
    assert response.flags & dns.flags.TC and response.flags & dns.flags.AA
    assert response.question and response.edns == 0 and not response.answer
    plain = _ask(authority, _query("big.edge.test.", "TXT"))
    assert plain.flags & dns.flags.TC and plain.edns < 0  # no OPT when the query had none
    full = _ask(authority, _query("big.edge.test.", "TXT"), over_tcp=True)
    assert not full.flags & dns.flags.TC and len(full.answer[0]) == 6


# -- RFC 1035 section 4.1.1: malformed packets ---------------------------------------------------


def _header(qdcount: int = 1, ancount: int = 0, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 0xBEEF, flags, qdcount, ancount, 0, 0)


_SOA_QUESTION = _query(ALPHA, "SOA").to_wire()[12:]

MALFORMED = {
    "two questions": _header(2) + _SOA_QUESTION + _SOA_QUESTION,
    "qdcount 2, one question": _header(2) + _SOA_QUESTION,
    "qdcount 0": _header(0),
    "header only, qdcount 1": _header(1),
    "pointer to itself": _header(1) + b"\xc0\x0c\x00\x01\x00\x01",
    "pointer forward": _header(1) + b"\xc0\x20\x00\x01\x00\x01",
    "two-pointer loop": _header(1) + b"\x01a\xc0\x0c\x00\x01\x00\x01",
    "64-octet label": _header(1) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
    "ancount 1, no record": _header(1, ancount=1) + _SOA_QUESTION,
    "trailing bytes": _header(1) + _SOA_QUESTION + b"\xde\xad",
}


@pytest.mark.parametrize("packet", sorted(MALFORMED))
def test_rfc1035_malformed_query_gets_formerr_or_nothing(
    authority: Authority, packet: str
) -> None:
    for over_tcp in (False, True):
        reply = authority.respond_wire(MALFORMED[packet], over_tcp=over_tcp)
        if reply is None:
            continue
        query_id, flags = struct.unpack("!HH", reply[:4])
        assert query_id == 0xBEEF and flags & dns.flags.QR
        assert flags & 0xF == dns.rcode.FORMERR
        assert flags & dns.flags.RD  # echoed even in an error


def test_mutated_queries_get_a_well_formed_reply_or_none(authority: Authority) -> None:
    """Fuzz: every byte string is answered with a parseable response, or not at all."""
    rng = random.Random(20261127)
    seeds = [
        _query(name, rdtype, use_edns=edns, want_dnssec=do).to_wire()
        for name, rdtype in ((BILL, "NAPTR"), (ALPHA, "ANY"), (f"_sip._udp.{ALPHA}", "SRV"))
        for edns in (None, 0)
        for do in (False, True)
    ]
    for _ in range(1500):
        wire = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            wire[rng.randrange(len(wire))] = rng.randrange(256)
        wire[2] &= 0x7F  # QR clear, so that the parser is reached
        reply = authority.respond_wire(bytes(wire), over_tcp=False)
        if reply is not None:
            assert len(reply) <= authority.udp_payload
            response = dns.message.from_wire(reply)
            assert response.id == struct.unpack("!H", wire[:2])[0]
            assert response.flags & dns.flags.QR


# -- the locator facing a failing nameserver ---------------------------------------------------


class _ServfailProtocol(asyncio.DatagramProtocol):
    """A nameserver that answers every query with one rcode (here: SERVFAIL)."""

    def __init__(self, rcode: dns.rcode.Rcode) -> None:
        self.rcode = rcode
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queries += 1
        response = dns.message.make_response(dns.message.from_wire(data))
        response.set_rcode(self.rcode)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


def _with_failing_server(
    body: Callable[[Nameserver, _ServfailProtocol, DnsServer], Awaitable[None]],
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _ServfailProtocol(dns.rcode.SERVFAIL), local_addr=("127.0.0.1", 0)
        )
        try:
            failing = Nameserver("127.0.0.1", transport.get_extra_info("sockname")[1])
            async with await start_server(LOOPBACK, "127.0.0.1", 0) as server:
                await body(failing, protocol, server)
        finally:
            transport.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_servfail_from_the_only_nameserver_is_a_clear_dns_server_failure_503() -> None:
    async def body(failing: Nameserver, protocol: _ServfailProtocol, _: DnsServer) -> None:
        locator = Locator(LocatorConfig(nameservers=(failing,), timeout=1.0))
        with pytest.raises(DnsServerFailure) as info:
            await locator.enum_lookup("+15550100001")
        assert info.value.sip_status == 503
        message = str(info.value)
        assert BILL in message and "NAPTR" in message
        assert f"{failing}: SERVFAIL" in message  # which server said what
        with pytest.raises(DnsServerFailure, match="SERVFAIL"):
            await locator.locate_operator("001-02")
        # A failure is not cached as an answer: the next lookup asks again.
        before = protocol.queries
        with pytest.raises(DnsServerFailure):
            await locator.enum_lookup("+15550100001")
        assert protocol.queries == before + 1

    _with_failing_server(body)


def test_servfail_then_a_working_nameserver_fails_over() -> None:
    async def body(failing: Nameserver, protocol: _ServfailProtocol, server: DnsServer) -> None:
        live = Nameserver("127.0.0.1", server.port)
        locator = Locator(LocatorConfig(nameservers=(failing, live), timeout=1.0))
        assert await locator.enum_lookup("+15550100002") == (
            "sip:+15550100002@ims.mnc002.mcc001.3gppnetwork.org;user=phone")
        assert protocol.queries == 1

    _with_failing_server(body)


def test_servfail_and_silence_together_name_both_failures() -> None:
    async def body(failing: Nameserver, _: _ServfailProtocol, __: DnsServer) -> None:
        silent = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        try:
            dead = Nameserver("127.0.0.1", silent[0].get_extra_info("sockname")[1])
            locator = Locator(LocatorConfig(nameservers=(dead, failing), timeout=0.3))
            with pytest.raises(DnsServerFailure) as info:
                await locator.enum_lookup("+15550100001")
            assert not isinstance(info.value, DnsTimeout)
            assert f"{dead}: timeout" in str(info.value)
            assert f"{failing}: SERVFAIL" in str(info.value)
        finally:
            silent[0].close()

    _with_failing_server(body)


# -- bad input reaching the locator and the CLI ----------------------------------------------

LONG_LABEL = "a" * 64 + ".example.org"  # RFC 1035 section 2.3.4: labels are 63 octets at most
LONG_NAME = ".".join(["abcdefghij"] * 30)  # 329 octets; names are 255 at most


@pytest.mark.parametrize(
    "host", [LONG_LABEL, LONG_NAME, "bad..domain"], ids=["64-octet label", "329 octets", "empty label"]
)
def test_rfc1035_2_3_4_host_too_long_for_dns_is_a_usage_error_not_a_crash(host: str) -> None:
    # SIP's hostname ABNF (RFC 3261 section 25.1) has no length limit, so a peer's Request-URI
    # can carry such a host; the border maps DnsUsageError to 400, anything else escapes it.
    locator = Locator(LocatorConfig.for_server("127.0.0.1", 9))  # never contacted
    with pytest.raises(DnsUsageError, match="not a usable domain name"):
        asyncio.run(locator.locate(host))
    assert locator.queries_sent == 0
    if "." in host and ".." not in host:
        with pytest.raises(DnsUsageError):
            asyncio.run(locator.locate_operator(host))


@pytest.mark.parametrize("port", ["70000", "-5", "abc"])
def test_cli_dns_serve_refuses_a_bad_port_with_a_message(port: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ims", "dns", "serve", "--address", "127.0.0.1", "--port", port],
        cwd=ROOT, capture_output=True, text=True, timeout=20, check=False,
    )
    assert result.returncode == 2
    assert "argument --port:" in result.stderr and "Traceback" not in result.stderr


def test_cli_dns_locate_names_a_malformed_domain() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ims", "dns", "locate", LONG_LABEL, "--server", "127.0.0.1",
         "--port", "9"],
        cwd=ROOT, capture_output=True, text=True, timeout=20, check=False,
    )
    assert result.returncode == 2  # a bad argument: usage (ims/cli/__init__.py)
    assert "not a usable domain name" in result.stderr and "Traceback" not in result.stderr
