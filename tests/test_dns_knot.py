"""The real server: Knot DNS serves the same zone files; the locator must not tell them apart.

knotd runs in a temporary directory, listening on 127.0.0.1 on a free port, with a generated
knot.conf, and is stopped in teardown. Skips (with the reason) only when knotd is missing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from bench import ToolMissing
from bench.knot import KnotServer, find_knotd
from ims.dns.errors import LookupFailure
from ims.dns.locator import Locator, LocatorConfig
from ims.dns.resolution import ServerTarget
from ims.dns.server import start_server
from ims.dns.worlds import SUBSCRIBERS, WORLDS

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[1]
@dataclass(frozen=True)
class Knot:
    port: int
    zones: Path


@pytest.fixture(scope="module", params=sorted(WORLDS))
def knot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    try:
        find_knotd()
    except ToolMissing as missing:
        pytest.skip(str(missing))
    zones = ROOT / "dns_zones" / request.param
    with KnotServer(zones, tmp_path_factory.mktemp(f"knot-{request.param}")) as server:
        yield Knot(server.port, zones)


Outcome = str | list[ServerTarget]


async def _outcomes(port: int) -> dict[str, Outcome]:
    """Every lookup the demo needs, each with a fresh locator seeded alike."""

    def locator() -> Locator:
        return Locator(LocatorConfig.for_server("127.0.0.1", port), rng=random.Random(2024))

    async def attempt(key: str, coro: object) -> None:
        try:
            results[key] = await coro  # type: ignore[misc]
        except LookupFailure as exc:
            results[key] = f"{type(exc).__name__}: {exc}"

    results: dict[str, Outcome] = {}
    numbers = [s.e164 for s in SUBSCRIBERS] + ["+15550100099", "+15550100"]
    for number in numbers:
        await attempt(f"enum {number}", locator().enum_lookup(number))
    for mno_id in ("001-01", "001-02", "00102", "001-03", "ims.mnc001.mcc001.3gppnetwork.org"):
        await attempt(f"operator {mno_id}", locator().locate_operator(mno_id))
    for op in WORLDS["loopback"].operators:
        for host in (op.domain, f"pcscf.{op.domain}", f"scscf.{op.domain}"):
            for transport in (None, "udp", "tcp", "tls"):
                await attempt(f"locate {host} {transport}",
                              locator().locate(host, transport=transport))
            await attempt(f"locate {host} sips", locator().locate(host, secure=True))
            await attempt(f"locate {host} :5999", locator().locate(host, port=5999))
    return results


def _embedded_outcomes(zones: Path) -> dict[str, Outcome]:
    async def main() -> dict[str, Outcome]:
        async with await start_server(zones, "127.0.0.1", 0) as server:
            return await _outcomes(server.port)

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_locator_gets_identical_results_from_knot_and_the_embedded_server(knot: Knot) -> None:
    from_knot = asyncio.run(asyncio.wait_for(_outcomes(knot.port), 60))
    embedded = _embedded_outcomes(knot.zones)
    assert from_knot == embedded
    # And the comparison compared something real, in both worlds.
    assert from_knot["enum +15550100001"] == (
        "sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org;user=phone")
    assert str(from_knot["enum +15550100099"]).startswith("NoSuchNumber")
    assert str(from_knot["operator 001-03"]).startswith("NoSuchOperator")
    beta = from_knot["operator 001-02"]
    assert isinstance(beta, list) and len(beta) == 18


QUESTIONS = [
    ("1.0.0.0.0.1.0.5.5.5.1.e164.arpa.", "NAPTR"),
    ("3.0.0.0.0.1.0.5.5.5.1.e164.arpa.", "NAPTR"),
    ("9.9.9.0.0.1.0.5.5.5.1.e164.arpa.", "NAPTR"),
    ("1.0.0.0.0.1.0.5.5.5.1.e164.arpa.", "A"),
    ("5.5.5.1.e164.arpa.", "NAPTR"),
    ("ims.mnc001.mcc001.3gppnetwork.org.", "NAPTR"),
    ("ims.mnc002.mcc001.3gppnetwork.org.", "SOA"),
    ("_sip._udp.ims.mnc002.mcc001.3gppnetwork.org.", "SRV"),
    ("_udp.ims.mnc002.mcc001.3gppnetwork.org.", "SRV"),
    ("_sip._sctp.ims.mnc002.mcc001.3gppnetwork.org.", "SRV"),
    ("border1.ims.mnc001.mcc001.3gppnetwork.org.", "AAAA"),
    ("border1.ims.mnc001.mcc001.3gppnetwork.org.", "MX"),
    ("ims.mnc003.mcc001.3gppnetwork.org.", "NAPTR"),
    ("mcc001.3gppnetwork.org.", "A"),
]


def _shape(response: dns.message.Message) -> tuple[object, ...]:
    def rrsets(section: list[dns.rrset.RRset]) -> frozenset[tuple[str, int, frozenset[str]]]:
        # Record order inside an RRset is not significant (RFC 2181 section 5).
        return frozenset(
            (f"{r.name} {dns.rdatatype.to_text(r.rdtype)}", r.ttl,
             frozenset(rd.to_text() for rd in r))
            for r in section
        )

    return (dns.rcode.to_text(response.rcode()), bool(response.flags & dns.flags.AA),
            bool(response.flags & dns.flags.TC), rrsets(response.answer),
            rrsets(response.authority))


def test_raw_answers_match_knot(knot: Knot) -> None:
    """Rcode, AA, TC, answer and authority sections, question by question."""

    async def ask(port: int) -> list[tuple[object, ...]]:
        shapes = []
        for name, rdtype in QUESTIONS:
            query = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
            query.flags &= ~dns.flags.RD
            response = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=2)
            shapes.append(_shape(response))
        return shapes

    async def embedded() -> list[tuple[object, ...]]:
        async with await start_server(knot.zones, "127.0.0.1", 0) as server:
            return await ask(server.port)

    from_knot = asyncio.run(asyncio.wait_for(ask(knot.port), 30))
    ours = asyncio.run(asyncio.wait_for(embedded(), 30))
    for question, theirs, mine in zip(QUESTIONS, from_knot, ours, strict=True):
        assert mine == theirs, question
