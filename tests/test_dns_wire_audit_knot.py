"""`ueconnect dns serve` side by side with Knot DNS over the same zone files, on the wire.

Both servers get the same query bytes (UDP and TCP, well-formed and malformed) and must give
a resolver the same thing: rcode, header flags, question, answer and authority sections, EDNS
version, DO bit and payload. The additional section may hold more on our side (RFC 3403
section 4.2 NAPTR processing), never less. Where the two differ on purpose the table says why.
kdig (knot-dnsutils), a real client, must print the same answers from both.

knotd runs from a generated config on a free 127.0.0.1 port (bench.knot), ours is the CLI in a
subprocess on another; both stop in teardown. Skips with the reason when knotd or kdig is
missing.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from bench import ToolMissing
from bench.knot import KnotServer, find_knotd
from ims.dns.worlds import SUBSCRIBERS, WORLDS

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[1]
EDGE = ROOT / "tests" / "data" / "dns" / "edge"
ALPHA = "ims.mnc001.mcc001.3gppnetwork.org."
BETA = "ims.mnc002.mcc001.3gppnetwork.org."
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Pair:
    """Our server and Knot, serving the same directory."""

    ours: int
    knot: int


@pytest.fixture(scope="module", params=sorted(WORLDS))
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Pair]:
    """Each generated world of dns_zones/ (loopback, testbed)."""
    yield from _pair(ROOT / "dns_zones" / request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from _pair(EDGE, tmp_path_factory)


def _pair(zones: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    try:
        find_knotd()
    except ToolMissing as missing:
        pytest.skip(str(missing))
    workdir = tmp_path_factory.mktemp(f"dns-{zones.name}")
    log = workdir / "ueconnect-dns.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "ims", "dns", "serve", "--zones", str(zones),
             "--address", HOST, "--port", "0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline(), process.stdout.readline()]
        match = re.search(rf"listening on {re.escape(HOST)} port (\d+)", lines[1])
        assert match, (lines, log.read_text())
        with KnotServer(zones, workdir / "knot") as knot:
            yield Pair(int(match[1]), knot.port)
    finally:
        process.terminate()
        process.wait(timeout=10)
    # It stopped cleanly and logged no internal error: nothing above crashed a handler.
    assert process.returncode == 0, log.read_text()
    assert "internal error" not in log.read_text()


# -- raw exchanges ------------------------------------------------------------------------------


def _udp(port: int, wire: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, (HOST, port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def _tcp(port: int, wires: list[bytes], timeout: float = 2.0) -> list[bytes]:
    """Send every message in one write (RFC 7766 section 6.2.1.1 pipelining); collect the
    replies until as many arrived, the peer closed, or `timeout` passed."""
    replies: list[bytes] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in wires))
        while len(replies) < len(wires) and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65535)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            buffer += chunk
            while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack("!H", buffer[:2])[0]:
                length = struct.unpack("!H", buffer[:2])[0]
                replies.append(buffer[2:2 + length])
                buffer = buffer[2 + length:]
    return replies


Rrsets = frozenset[tuple[str, str, str, int, frozenset[str]]]


def _rrsets(section: list[dns.rrset.RRset]) -> Rrsets:
    # Order inside an RRset is not significant (RFC 2181 section 5); owner case is compared.
    return frozenset(
        (r.name.to_text(), dns.rdataclass.to_text(r.rdclass), dns.rdatatype.to_text(r.rdtype),
         r.ttl, frozenset(rd.to_text() for rd in r))
        for r in section
    )


@dataclass(frozen=True)
class Shape:
    """What a resolver takes from a response."""

    rcode: str
    opcode: str
    flags: str
    question: tuple[tuple[str, str, str], ...]
    answer: Rrsets
    authority: Rrsets
    edns: tuple[int, bool, int] | None  # version, DO, payload


def _shape(wire: bytes) -> tuple[Shape, Rrsets]:
    message = dns.message.from_wire(wire)
    shape = Shape(
        dns.rcode.to_text(message.rcode()),
        dns.opcode.to_text(message.opcode()),
        dns.flags.to_text(message.flags),
        tuple((q.name.to_text(), dns.rdataclass.to_text(q.rdclass),
               dns.rdatatype.to_text(q.rdtype)) for q in message.question),
        _rrsets(message.answer),
        _rrsets(message.authority),
        None if message.edns < 0 else (
            message.edns, bool(message.ednsflags & dns.flags.DO), message.payload),
    )
    return shape, _rrsets(message.additional)


def _query(name: str, rdtype: str | int, *, qid: int = 0x5150, rd: bool = True,
           **options: object) -> bytes:
    query = dns.message.make_query(name, rdtype, **options)  # type: ignore[arg-type]
    query.id = qid
    if not rd:
        query.flags &= ~dns.flags.RD
    return query.to_wire()


def _with_opcode(opcode: int) -> bytes:
    query = dns.message.make_query(ALPHA, "SOA")
    query.id = 0x5150
    query.set_opcode(dns.opcode.Opcode(opcode))
    return query.to_wire()


def _with_header_bits(bits: int) -> bytes:
    wire = bytearray(_query(ALPHA, "SOA"))
    struct.pack_into("!H", wire, 2, struct.unpack("!H", wire[2:4])[0] | bits)
    return bytes(wire)


def _with_opt(version: int = 0, flags: int = 0, payload: int = 1232) -> bytes:
    wire = bytearray(_query(ALPHA, "SOA"))
    struct.pack_into("!H", wire, 10, 1)
    return bytes(wire) + b"\x00" + struct.pack("!HHBBHH", 41, payload, 0, version, flags, 0)


# -- the question table --------------------------------------------------------------------------

SAME: dict[str, bytes] = {}
for subscriber in SUBSCRIBERS:
    enum_name = ".".join(reversed(subscriber.e164.lstrip("+"))) + ".e164.arpa."
    SAME[f"ENUM {subscriber.e164}"] = _query(enum_name, "NAPTR")
    SAME[f"ENUM {subscriber.e164} EDNS"] = _query(enum_name, "NAPTR", use_edns=0, payload=1232)
for domain in (ALPHA, BETA):
    SAME[f"NAPTR {domain}"] = _query(domain, "NAPTR")
    SAME[f"NAPTR {domain} EDNS, RD clear"] = _query(domain, "NAPTR", use_edns=0, rd=False)
    for service in ("_sip._udp", "_sip._tcp", "_sips._tcp", "_sip._udp.pcscf", "_sip._tcp.scscf"):
        SAME[f"SRV {service}.{domain}"] = _query(f"{service}.{domain}", "SRV", use_edns=0)
    for host in ("ns1", "pcscf", "scscf", "border1", "border2", "border3"):
        SAME[f"A {host}.{domain}"] = _query(f"{host}.{domain}", "A")
        SAME[f"AAAA {host}.{domain}"] = _query(f"{host}.{domain}", "AAAA", use_edns=0)
    SAME[f"SOA {domain}"] = _query(domain, "SOA")
    SAME[f"NS {domain}"] = _query(domain, "NS")
SAME.update({
    # RFC 2308: NXDOMAIN / NODATA with the SOA (TTL min(TTL, MINIMUM)); RFC 8020 ENT.
    "NXDOMAIN subscriber": _query("9.9.9.0.0.1.0.5.5.5.1.e164.arpa.", "NAPTR"),
    "NXDOMAIN host EDNS": _query(f"nothing.{ALPHA}", "A", use_edns=0),
    "NXDOMAIN operator": _query("ims.mnc003.mcc001.3gppnetwork.org.", "NAPTR"),
    "NODATA MX": _query(f"pcscf.{ALPHA}", "MX"),
    "NODATA A at ENUM name": _query("1.0.0.0.0.1.0.5.5.5.1.e164.arpa.", "A"),
    "NODATA empty non-terminal": _query(f"_udp.{ALPHA}", "SRV"),
    "NODATA ENT in the parent": _query("mcc001.3gppnetwork.org.", "A"),
    "NODATA SCTP SRV": _query(f"_sip._sctp.{BETA}", "SRV"),
    "NODATA unknown type": _query(ALPHA, 65534),
    # RFC 4343: case-insensitive match, case of the query kept.
    "mixed case A": _query("PcScF.IMS.mnc001.MCC001.3gppNetwork.ORG.", "A"),
    "mixed case ENUM": _query("1.0.0.0.0.1.0.5.5.5.1.E164.ARPA.", "NAPTR"),
    "mixed case NXDOMAIN": _query(f"NoThInG.{ALPHA.upper()}", "A"),
    # RFC 4035 section 3.1.4.1: DS at a cut comes from the parent.
    "DS at a served cut": _query(ALPHA, "DS"),
    "DS at a top zone": _query("e164.arpa.", "DS"),
    # Authoritative only: outside every zone is REFUSED without AA.
    "outside the zones": _query("www.example.org.", "A"),
    "outside the zones EDNS": _query("www.example.org.", "A", use_edns=0),
    "the root": _query(".", "SOA"),
    "above a zone": _query("arpa.", "SOA"),
    # Classes: no data outside IN.
    "class CH": _query(ALPHA, "SOA", rdclass=dns.rdataclass.CH),
    "class HS": _query(ALPHA, "SOA", rdclass=dns.rdataclass.HS),
    "class NONE": _query(ALPHA, "SOA", rdclass=dns.rdataclass.NONE),
    # RFC 6891 section 6.1.3 BADVERS, RFC 3225 DO copied, payload echoed.
    "EDNS version 1": _with_opt(version=1),
    "EDNS version 255": _with_opt(version=255),
    "EDNS version 1 with DO": _with_opt(version=1, flags=0x8000),
    "EDNS DO": _with_opt(flags=0x8000),
    "EDNS DO NXDOMAIN": _query(f"x.{ALPHA}", "A", use_edns=0, want_dnssec=True),
    "EDNS unknown flag": _with_opt(flags=0x4000),
    "EDNS payload 0": _with_opt(payload=0),
    "EDNS payload 65535": _with_opt(payload=65535),
    # RFC 1035 section 4.1.1: opcodes other than QUERY.
    "opcode IQUERY": _with_opcode(1),
    "opcode STATUS": _with_opcode(2),
    "opcode 3": _with_opcode(3),
    "opcode 6": _with_opcode(6),
    "opcode 15": _with_opcode(15),
    # Header bits a query should not carry are ignored.
    "AA in query": _with_header_bits(0x0400),
    "TC in query": _with_header_bits(0x0200),
    "Z bit": _with_header_bits(0x0040),
    "AD and CD": _with_header_bits(0x0030),
    "rcode in query": _with_header_bits(0x0005),
    "qtype TSIG in question": _query(ALPHA, "TSIG"),
    "qtype 65535": _query(ALPHA, 65535),
})

# Left different on purpose; each entry says what both do and why ours is right too.
DIFFERENT = {
    # RFC 8482: Knot gives one RRset for ANY; a full ANY answer is the RFC 1035 behaviour and
    # no resolver in the flow asks ANY. Both: NOERROR, AA.
    "ANY at apex": _query(ALPHA, "ANY"),
    # RFC 1034 section 3.7.1: "responses to QCLASS=* queries can never be authoritative";
    # Knot sets AA. Same data otherwise.
    "QCLASS * answer": _query(ALPHA, "SOA", rdclass=dns.rdataclass.ANY),
    "QCLASS * NXDOMAIN": _query(f"x.{ALPHA}", "A", rdclass=dns.rdataclass.ANY),
    # We implement neither NOTIFY nor UPDATE: NOTIMP; Knot (no ACL): NOTAUTH. Both refuse.
    "opcode NOTIFY": _with_opcode(4),
    "opcode UPDATE": _with_opcode(5),
    # Zone transfers are not offered: REFUSED; Knot (no ACL): NOTAUTH / NOTIMP over UDP.
    "AXFR over UDP": _query(ALPHA, "AXFR"),
    "IXFR over UDP": _query(ALPHA, "IXFR"),
}


def _compare(pair: Pair, label: str, wire: bytes) -> None:
    ours, knot = _udp(pair.ours, wire), _udp(pair.knot, wire)
    assert ours is not None and knot is not None, label
    (our_shape, our_extra), (knot_shape, knot_extra) = _shape(ours), _shape(knot)
    assert our_shape == knot_shape, label
    assert knot_extra <= our_extra, label  # glue and SRV addresses Knot adds, we add too


@pytest.mark.parametrize("label", sorted(SAME))
def test_udp_answers_match_knot(world: Pair, label: str) -> None:
    _compare(world, label, SAME[label])


def test_known_differences_from_knot_are_only_the_documented_ones(world: Pair) -> None:
    shapes: dict[str, tuple[Shape, Shape]] = {}
    for label, wire in DIFFERENT.items():
        our_reply, knot_reply = _udp(world.ours, wire), _udp(world.knot, wire)
        assert our_reply is not None and knot_reply is not None, label
        shapes[label] = (_shape(our_reply)[0], _shape(knot_reply)[0])
    ours, knot = shapes["ANY at apex"]
    assert ours.rcode == knot.rcode == "NOERROR" and "AA" in ours.flags and "AA" in knot.flags
    assert knot.answer <= ours.answer
    for label in ("QCLASS * answer", "QCLASS * NXDOMAIN"):
        ours, knot = shapes[label]
        assert "AA" not in ours.flags and "AA" in knot.flags, label
        assert (ours.rcode, ours.answer, ours.authority) == (
            knot.rcode, knot.answer, knot.authority), label
    for label in ("opcode NOTIFY", "opcode UPDATE"):
        ours, knot = shapes[label]
        assert ours.rcode == "NOTIMP" and knot.rcode == "NOTAUTH", label
    for label in ("AXFR over UDP", "IXFR over UDP"):
        ours, knot = shapes[label]
        assert ours.rcode == "REFUSED" and not ours.answer and not knot.answer, label


def test_rfc6891_payload_size_and_rfc1035_truncation_match_knot(edge: Pair) -> None:
    cases = {
        "big, no EDNS: TC": _query("big.edge.test.", "TXT"),
        "big, EDNS 1232: whole": _query("big.edge.test.", "TXT", use_edns=0, payload=1232),
        "big, EDNS 600: TC": _query("big.edge.test.", "TXT", use_edns=0, payload=600),
        "big, EDNS 100 counts as 512: TC": _query("big.edge.test.", "TXT", use_edns=0,
                                                   payload=100),
        "huge, EDNS 65535: TC at our 1232": _query("huge.edge.test.", "TXT", use_edns=0,
                                                    payload=65535),
    }
    for label, wire in cases.items():
        _compare(edge, label, wire)
    shape, _ = _shape(_udp(edge.ours, cases["big, no EDNS: TC"]) or b"")
    assert "TC" in shape.flags and not shape.answer


def test_rfc1035_4_2_1_truncated_udp_answer_is_whole_over_tcp_like_knot(edge: Pair) -> None:
    for name in ("big.edge.test.", "huge.edge.test."):
        wire = _query(name, "TXT")
        ours, knot = _tcp(edge.ours, [wire]), _tcp(edge.knot, [wire])
        assert len(ours) == len(knot) == 1, name
        assert _shape(ours[0]) == _shape(knot[0]), name
        shape, _ = _shape(ours[0])
        assert "TC" not in shape.flags and len(next(iter(shape.answer))[4]) in (6, 15)


def test_rfc7766_pipelined_queries_on_one_tcp_connection_match_knot(world: Pair) -> None:
    wires = [
        _query("1.0.0.0.0.1.0.5.5.5.1.e164.arpa.", "NAPTR", qid=1),
        _query(f"_sip._udp.{BETA}", "SRV", qid=2),
        _query(f"nothing.{ALPHA}", "A", qid=3, use_edns=0),
        _query("www.example.org.", "A", qid=4),
    ]
    ours, knot = _tcp(world.ours, wires), _tcp(world.knot, wires)
    assert len(ours) == len(knot) == 4
    # RFC 7766 section 7: replies may come in any order; the ID pairs them.
    by_id = {struct.unpack("!H", r[:2])[0]: _shape(r)[0] for r in ours}
    assert by_id == {struct.unpack("!H", r[:2])[0]: _shape(r)[0] for r in knot}
    assert sorted(by_id) == [1, 2, 3, 4]


def test_zone_transfers_are_refused_over_tcp(world: Pair) -> None:
    for rdtype in ("AXFR", "IXFR"):
        ours = _tcp(world.ours, [_query("e164.arpa.", rdtype)])
        knot = _tcp(world.knot, [_query("e164.arpa.", rdtype)])
        assert len(ours) == len(knot) == 1
        assert _shape(ours[0])[0].rcode == "REFUSED" and not _shape(ours[0])[0].answer
        assert not _shape(knot[0])[0].answer  # Knot: NOTAUTH, also nothing transferred


def _header(qdcount: int = 1, ancount: int = 0, arcount: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 0xBEEF, 0x0100, qdcount, ancount, 0, arcount)


_QUESTION = _query("edge.test.", "SOA")[12:]
_OPT = b"\x00" + struct.pack("!HHBBHH", 41, 1232, 0, 0, 0, 0)
MALFORMED = {
    "11-octet header": _header()[:11],
    "qdcount 2": _header(2) + _QUESTION + _QUESTION,
    "qdcount 2, one question": _header(2) + _QUESTION,
    "header only, qdcount 1": _header(1),
    "pointer to itself": _header() + b"\xc0\x0c\x00\x01\x00\x01",
    "two-pointer loop": _header() + b"\x01a\xc0\x0c\x00\x01\x00\x01",
    "64-octet label": _header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
    "two OPT records": _header(arcount=2) + _QUESTION + _OPT + _OPT,  # RFC 6891 6.1.1
    "OPT in the answer section": _header(ancount=1) + _QUESTION + _OPT,
    "bad EDNS option length": _header(arcount=1) + _QUESTION + _OPT[:-2] + b"\x00\x08"
    + b"\x00\x0a\x00\x10abcd",
}


@pytest.mark.parametrize("label", sorted(MALFORMED))
def test_malformed_packets_get_formerr_or_nothing_and_the_server_lives_on(
    edge: Pair, label: str
) -> None:
    wire = MALFORMED[label]
    for port in (edge.ours, edge.knot):
        reply = _udp(port, wire, timeout=0.3)
        if reply is not None:
            assert len(reply) >= 12 and reply[:2] == b"\xbe\xef", (label, port)
            assert reply[3] & 0xF == dns.rcode.FORMERR, (label, port)
    # Over TCP we answer (or drop) and keep the connection for the next query.
    replies = _tcp(edge.ours, [wire, _query("edge.test.", "SOA", qid=7)])
    assert replies and struct.unpack("!H", replies[-1][:2])[0] == 7, label
    assert _shape(replies[-1])[0].rcode == "NOERROR"


# -- kdig, a real client ---------------------------------------------------------------------

KDIG_ARGS = [
    ["1.0.0.0.0.1.0.5.5.5.1.e164.arpa", "NAPTR"],
    ["+edns", "2.0.0.0.0.1.0.5.5.5.1.e164.arpa", "NAPTR"],
    ["+norec", BETA, "NAPTR"],
    ["+edns", "+dnssec", f"_sip._tcp.{ALPHA}", "SRV"],
    ["+tcp", f"_sips._tcp.{BETA}", "SRV"],
    [f"nothing.{ALPHA}", "A"],
    ["+edns", f"pcscf.{BETA}", "TXT"],
    ["PCSCF.ims.MNC002.mcc001.3GPPnetwork.org", "AAAA"],
    [ALPHA, "DS"],
    ["www.example.org", "A"],
    ["+edns=1", ALPHA, "SOA"],
    ["-c", "CH", ALPHA, "SOA"],
]


def _kdig(kdig: str, port: int, args: list[str]) -> str:
    output = subprocess.run(
        [kdig, f"@{HOST}", "-p", str(port), "+time=2", "+retry=0", *args],
        capture_output=True, text=True, timeout=10, check=False,
    ).stdout
    blocks = []
    for block in output.split("\n\n"):
        lines = [re.sub(r"id: \d+", "id: X", line) for line in block.splitlines()
                 if not re.match(r";; (Received|From|Time)", line)]
        if lines and lines[0].endswith("SECTION:"):
            lines = [lines[0], *sorted(lines[1:])]  # RRset order is not significant
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


@pytest.mark.parametrize("args", KDIG_ARGS, ids=" ".join)
def test_kdig_prints_the_same_from_both(world: Pair, args: list[str]) -> None:
    kdig = shutil.which("kdig")
    if kdig is None:
        pytest.skip("kdig not found (Debian package knot-dnsutils)")
    ours, knot = _kdig(kdig, world.ours, args), _kdig(kdig, world.knot, args)
    assert "->>HEADER<<-" in ours
    assert ours == knot
