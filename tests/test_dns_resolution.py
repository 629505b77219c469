"""RFC 3263 section 4 resolution, RFC 2782 weighted selection, the cache and the locator,
driven in memory (no sockets): answers come from `Authority` through wire encoding."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from pathlib import Path

import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.SRV
import pytest

from ims.dns.authority import Authority
from ims.dns.cache import DnsCache, NoRecords, Records
from ims.dns.errors import (
    DnsServerFailure,
    DnsTimeout,
    DnsUsageError,
    NoSuchNumber,
    NoSuchOperator,
    NoUsableTarget,
)
from ims.dns.locator import Locator, LocatorConfig, Nameserver, failover
from ims.dns.resolution import ServerTarget, SipServerResolution, order_srv
from ims.dns.zones import load_zone_set

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ROOT / "dns_zones" / "loopback"
EDGE = ROOT / "tests" / "data" / "dns" / "edge"
ALPHA = "ims.mnc001.mcc001.3gppnetwork.org"
BETA = "ims.mnc002.mcc001.3gppnetwork.org"


class ScriptedRandom(random.Random):
    """randint returns scripted values: RFC 2782 selection becomes exact."""

    def __init__(self, values: list[int]) -> None:
        super().__init__(0)
        self.values = list(values)
        self.calls: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.calls.append((a, b))
        return self.values.pop(0) if self.values else a


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class InMemory:
    """A QueryTransport answering from an Authority; can fail chosen questions."""

    def __init__(self, zones: Path) -> None:
        self.authority = Authority(load_zone_set(zones))
        self.asked: list[tuple[str, str]] = []
        self.silent: set[tuple[str, str]] = set()

    async def __call__(
        self, query: dns.message.Message, nameserver: Nameserver, timeout: float
    ) -> dns.message.Message:
        question = query.question[0]
        key = (question.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(question.rdtype))
        self.asked.append(key)
        if key in self.silent:
            raise TimeoutError
        wire = self.authority.respond_wire(query.to_wire(), over_tcp=True)
        assert wire is not None
        return dns.message.from_wire(wire)


def _locator(zones: Path = LOOPBACK, rng: random.Random | None = None,
             clock: FakeClock | None = None, **options: object) -> tuple[Locator, InMemory]:
    transport = InMemory(zones)
    config = LocatorConfig.for_server("127.0.0.1", 53530, **options)
    locator = Locator(config, rng=rng or random.Random(1), clock=clock or FakeClock(),
                      query=transport)
    return locator, transport


def _srv(priority: int, weight: int, port: int, target: str) -> dns.rdtypes.IN.SRV.SRV:
    rdata = dns.rdata.from_text(
        dns.rdataclass.IN, dns.rdatatype.SRV, f"{priority} {weight} {port} {target}."
    )
    assert isinstance(rdata, dns.rdtypes.IN.SRV.SRV)
    return rdata


# -- RFC 2782 ------------------------------------------------------------------------------


def test_rfc2782_lower_priority_first_and_weight_zero_placed_first() -> None:
    records = [_srv(20, 0, 1, "c"), _srv(10, 60, 1, "a"), _srv(10, 0, 1, "z"),
               _srv(10, 40, 1, "b")]
    # Priority 10 group, canonical: z(0), b(40), a(60); running sums 0, 40, 100.
    rng = ScriptedRandom([0, 41, 0])
    order = [r.target.to_text() for r in order_srv(records, rng)]
    assert order == ["z.", "a.", "b.", "c."]
    assert rng.calls[:2] == [(0, 100), (0, 100)]


def test_rfc2782_weighted_selection_uses_running_sum() -> None:
    records = [_srv(10, 60, 1, "border1"), _srv(10, 40, 1, "border2")]
    assert order_srv(records, ScriptedRandom([40]))[0].target.to_text() == "border2."
    assert order_srv(records, ScriptedRandom([41]))[0].target.to_text() == "border1."


def test_rfc2782_weights_give_proportional_first_choice() -> None:
    records = [_srv(10, 60, 1, "border1"), _srv(10, 40, 1, "border2")]
    rng = random.Random(2024)
    firsts = Counter(order_srv(records, rng)[0].target.to_text() for _ in range(4000))
    assert 0.55 < firsts["border1."] / 4000 < 0.65


def test_srv_order_does_not_depend_on_server_record_order() -> None:
    records = [_srv(10, 60, 1, "a"), _srv(10, 40, 1, "b"), _srv(20, 0, 1, "c")]
    one = order_srv(records, random.Random(5))
    two = order_srv(list(reversed(records)), random.Random(5))
    assert one == two


# -- RFC 3263 section 4 ----------------------------------------------------------------------


def test_rfc3263_4_1_naptr_then_srv_then_addresses_in_order() -> None:
    locator, transport = _locator(rng=ScriptedRandom([100, 0, 0] * 3))
    targets = asyncio.run(locator.locate(BETA))
    assert [t.transport for t in targets[:6]] == ["udp"] * 6
    assert targets[0] == ServerTarget(f"border1.{BETA}", "127.0.2.3", 5204, "udp")
    assert targets[1] == ServerTarget(f"border1.{BETA}", "::1", 5204, "udp")
    assert [t.host.split(".")[0] for t in targets[:6:2]] == ["border1", "border2", "border3"]
    assert {t.transport for t in targets} == {"udp", "tcp", "tls"}
    assert [t.port for t in targets if t.transport == "tls"][::2] == [6204, 6206, 6208]
    assert transport.asked[0] == (BETA, "NAPTR")


def test_rfc3263_4_1_transport_parameter_skips_naptr() -> None:
    locator, transport = _locator()
    targets = asyncio.run(locator.locate(ALPHA, transport="tcp"))
    assert {t.transport for t in targets} == {"tcp"}
    assert transport.asked[0] == ("_sip._tcp." + ALPHA, "SRV")


def test_rfc3263_4_1_sips_uses_tls_only() -> None:
    locator, _ = _locator()
    targets = asyncio.run(locator.locate(ALPHA, secure=True))
    assert {t.transport for t in targets} == {"tls"}
    assert {t.port for t in targets} == {6104, 6106, 6108}
    with pytest.raises(DnsUsageError):
        asyncio.run(locator.locate(ALPHA, secure=True, transport="udp"))


def test_rfc3263_4_1_unsupported_naptr_services_are_discarded() -> None:
    locator, _ = _locator(transports=("tcp",))
    targets = asyncio.run(locator.locate(ALPHA))
    assert {t.transport for t in targets} == {"tcp"}


def test_rfc3263_4_2_explicit_port_means_addresses_only() -> None:
    locator, transport = _locator()
    targets = asyncio.run(locator.locate(f"pcscf.{ALPHA}", port=7000))
    assert targets == [ServerTarget(f"pcscf.{ALPHA}", "127.0.1.1", 7000, "udp"),
                       ServerTarget(f"pcscf.{ALPHA}", "::1", 7000, "udp")]
    assert [q[1] for q in transport.asked] == ["A", "AAAA"]


def test_rfc3263_4_2_numeric_host_is_used_directly() -> None:
    locator, transport = _locator()
    assert asyncio.run(locator.locate("127.0.0.9")) == [
        ServerTarget("127.0.0.9", "127.0.0.9", 5060, "udp")]
    assert asyncio.run(locator.locate("::1", secure=True)) == [
        ServerTarget("::1", "::1", 5061, "tls")]
    assert transport.asked == []


def test_rfc3263_4_1_no_naptr_falls_back_to_srv() -> None:
    locator, _ = _locator(EDGE)
    targets = asyncio.run(locator.locate("srvonly.edge.test"))
    assert targets == [ServerTarget("host1.edge.test", "127.0.9.1", 5070, "tcp")]


def test_rfc3263_4_2_no_srv_falls_back_to_a_at_default_port() -> None:
    locator, _ = _locator(EDGE)
    assert asyncio.run(locator.locate("aonly.edge.test")) == [
        ServerTarget("aonly.edge.test", "127.0.9.9", 5060, "udp")]
    # A NAPTR with only unsupported services (SCTP) counts as absent.
    assert asyncio.run(locator.locate("sctp.edge.test")) == [
        ServerTarget("sctp.edge.test", "127.0.9.10", 5060, "udp")]


def test_rfc2782_dot_target_means_not_available() -> None:
    locator, _ = _locator(EDGE)
    with pytest.raises(NoUsableTarget) as info:
        asyncio.run(locator.locate("closed.edge.test", transport="udp"))
    assert info.value.sip_status == 503


def test_srv_target_without_address_gives_no_usable_target() -> None:
    locator, _ = _locator(EDGE)
    with pytest.raises(NoUsableTarget, match="no SRV target has an address"):
        asyncio.run(locator.locate("dangling.edge.test", transport="udp"))


def test_unknown_operator_is_nxdomain_604() -> None:
    locator, _ = _locator()
    with pytest.raises(NoSuchOperator) as info:
        asyncio.run(locator.locate_operator("001-03"))
    assert info.value.sip_status == 604
    assert "001-03" in str(info.value)


def test_locate_operator_accepts_plmn_and_domain_alike() -> None:
    one, _ = _locator(rng=random.Random(3))
    two, _ = _locator(rng=random.Random(3))
    assert asyncio.run(one.locate_operator("001-02")) == asyncio.run(two.locate_operator(BETA))


def test_failover_when_a_target_address_lookup_times_out() -> None:
    locator, transport = _locator(EDGE)
    transport.silent = {("host1.edge.test", "A")}
    targets = asyncio.run(locator.locate("pair.edge.test", transport="udp"))
    assert targets == [ServerTarget("host2.edge.test", "127.0.9.2", 5082, "udp")]


def test_timeout_on_naptr_is_a_dns_timeout_504() -> None:
    locator, transport = _locator()
    transport.silent = {(ALPHA, "NAPTR")}
    with pytest.raises(DnsTimeout) as info:
        asyncio.run(locator.locate(ALPHA))
    assert info.value.sip_status == 504


def test_refused_is_a_server_failure() -> None:
    locator, _ = _locator()
    with pytest.raises(DnsServerFailure, match="REFUSED"):
        asyncio.run(locator.locate("example.org"))


def test_resolution_is_sans_io() -> None:
    resolution = SipServerResolution("aonly.edge.test", rng=random.Random(0), transport="udp")
    question = resolution.next_question()
    assert question is not None and question.rdtype == dns.rdatatype.SRV
    resolution.receive(NoRecords(nxdomain=True, ttl=30))
    question = resolution.next_question()
    assert question is not None and question.rdtype == dns.rdatatype.A
    a = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, "192.0.2.7")
    resolution.receive(Records((a,), 60))
    resolution.receive(NoRecords(nxdomain=False, ttl=30))  # AAAA
    assert resolution.next_question() is None
    assert resolution.targets() == [ServerTarget("aonly.edge.test", "192.0.2.7", 5060, "udp")]


def test_failover_helper_tries_the_next_target() -> None:
    targets = [ServerTarget("a", "127.0.0.1", 1, "udp"), ServerTarget("b", "127.0.0.2", 2, "udp")]
    tried: list[str] = []

    async def attempt(target: ServerTarget) -> str:
        tried.append(target.host)
        if target.host == "a":
            raise TimeoutError
        return target.host

    assert asyncio.run(failover(targets, attempt)) == "b"
    assert tried == ["a", "b"]

    async def never(target: ServerTarget) -> str:
        raise ConnectionRefusedError("refused")

    with pytest.raises(NoUsableTarget, match="no target answered"):
        asyncio.run(failover(targets, never))


# -- ENUM through the locator -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "uri"),
    [
        ("+15550100001", f"sip:+15550100001@{ALPHA};user=phone"),
        ("+15550100002", f"sip:+15550100002@{BETA};user=phone"),
        ("+15550100003", f"sip:+15550100003@{ALPHA};user=phone"),
        ("+15550100004", f"sip:+15550100004@{BETA};user=phone"),
        # Frank, ported from Beta to Alpha: the answer points at Alpha.
        ("+15550100005", f"sip:+15550100005;npdi@{ALPHA};user=phone"),
    ],
)
def test_enum_lookup_of_the_demo_subscribers(number: str, uri: str) -> None:
    locator, _ = _locator()
    assert asyncio.run(locator.enum_lookup(number)) == uri


def test_enum_malformed_regexp_is_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    locator, _ = _locator(EDGE)
    with caplog.at_level(logging.INFO, logger="ims.dns.locator"):
        assert asyncio.run(locator.enum_lookup("+15550199001")) == "sip:good@edge.test"
    assert "back-reference \\2" in caplog.text
    with pytest.raises(NoSuchNumber, match="no usable"):
        asyncio.run(locator.enum_lookup("+15550199002"))
    with pytest.raises(NoSuchNumber, match="no usable"):
        asyncio.run(locator.enum_lookup("+15550199003"))
    with pytest.raises(NoSuchNumber, match="no NAPTR records"):
        asyncio.run(locator.enum_lookup("+15550199004"))


def test_enum_unknown_number_is_404() -> None:
    locator, _ = _locator()
    with pytest.raises(NoSuchNumber) as info:
        asyncio.run(locator.enum_lookup("+15550100099"))
    assert info.value.sip_status == 404


def test_enum_suffix_is_configurable() -> None:
    locator, transport = _locator(enum_suffix="e164.example.")
    with pytest.raises(DnsServerFailure):  # not served: REFUSED
        asyncio.run(locator.enum_lookup("+15550100001"))
    assert transport.asked == [("1.0.0.0.0.1.0.5.5.5.1.e164.example", "NAPTR")]


# -- cache -------------------------------------------------------------------------------------


def _a(text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, text)


def test_rfc1035_cache_honours_the_rrset_ttl() -> None:
    cache = DnsCache()
    name = dns.name.from_text("x.test.")
    cache.put(name, dns.rdatatype.A, Records((_a("192.0.2.1"),), 300), now=0.0)
    assert cache.get(name, dns.rdatatype.A, now=299.9) is not None
    assert cache.get(name, dns.rdatatype.A, now=300.0) is None


def test_rfc2308_section_5_nxdomain_covers_every_type_nodata_one() -> None:
    cache = DnsCache()
    gone, empty = dns.name.from_text("gone.test."), dns.name.from_text("empty.test.")
    cache.put(gone, dns.rdatatype.A, NoRecords(nxdomain=True, ttl=30), now=0.0)
    cache.put(empty, dns.rdatatype.A, NoRecords(nxdomain=False, ttl=30), now=0.0)
    assert cache.get(gone, dns.rdatatype.SRV, now=10.0) == NoRecords(True, 30)
    assert cache.get(empty, dns.rdatatype.A, now=10.0) == NoRecords(False, 30)
    assert cache.get(empty, dns.rdatatype.AAAA, now=10.0) is None
    assert cache.get(gone, dns.rdatatype.A, now=30.0) is None


def test_rfc2308_section_5_negative_answer_without_soa_is_not_cached() -> None:
    cache = DnsCache()
    name = dns.name.from_text("x.test.")
    cache.put(name, dns.rdatatype.A, NoRecords(nxdomain=True, ttl=None), now=0.0)
    assert len(cache) == 0


def test_cache_is_bounded() -> None:
    cache = DnsCache(max_entries=2)
    for i in range(3):
        cache.put(dns.name.from_text(f"n{i}.test."), dns.rdatatype.A,
                  Records((_a("192.0.2.1"),), 60), now=0.0)
    assert len(cache) == 2
    assert cache.get(dns.name.from_text("n0.test."), dns.rdatatype.A, now=1.0) is None


def test_locator_cache_positive_ttl_with_fake_clock() -> None:
    clock = FakeClock()
    locator, transport = _locator(clock=clock)
    asyncio.run(locator.enum_lookup("+15550100001"))
    asyncio.run(locator.enum_lookup("+15550100001"))
    assert len(transport.asked) == 1
    clock.now += 300  # the zone's TTL
    asyncio.run(locator.enum_lookup("+15550100001"))
    assert len(transport.asked) == 2


def test_locator_negative_caching_uses_soa_minimum() -> None:
    clock = FakeClock()
    locator, transport = _locator(EDGE, clock=clock)
    for _ in range(2):
        with pytest.raises(NoSuchNumber):
            asyncio.run(locator.enum_lookup("+15550199009"))
    assert len(transport.asked) == 1
    clock.now += 29.9  # SOA MINIMUM 30 < SOA TTL 300: RFC 2308 section 5 takes the smaller
    with pytest.raises(NoSuchNumber):
        asyncio.run(locator.enum_lookup("+15550199009"))
    assert len(transport.asked) == 1
    clock.now += 0.1
    with pytest.raises(NoSuchNumber):
        asyncio.run(locator.enum_lookup("+15550199009"))
    assert len(transport.asked) == 2


def test_config_is_validated() -> None:
    with pytest.raises(DnsUsageError):
        LocatorConfig(nameservers=())
    with pytest.raises(DnsUsageError):
        Nameserver("dns.example", 53)
    with pytest.raises(DnsUsageError):
        LocatorConfig.for_server("127.0.0.1", 53, mnc_lengths={"001": 4})
    with pytest.raises(DnsUsageError):
        LocatorConfig.for_server("127.0.0.1", 53, transports=("sctp",))
