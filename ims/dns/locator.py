"""The locator: ENUM and RFC 3263 lookups over asyncio, with a TTL cache.

The procedures are pure (ims.dns.enum, ims.dns.resolution); this module asks the configured
nameservers their questions (dnspython's async UDP with TCP retry on truncation) and caches
the answers. Nameservers are explicit addresses and ports: the locator never reads
/etc/resolv.conf, so a test or the demo points it at its own server.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, TypeVar

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.NAPTR

from ims.dns.cache import Answer, DnsCache, NoRecords, Records
from ims.dns.enum import NaptrRule, enum_domain, resolve_enum
from ims.dns.errors import (
    DnsServerFailure,
    DnsTimeout,
    DnsUsageError,
    LookupFailure,
    NoSuchNumber,
    NoSuchOperator,
    NoUsableTarget,
)
from ims.dns.plmn import mno_domain
from ims.dns.resolution import (
    TRANSPORTS,
    LookupResult,
    ServerTarget,
    SipServerResolution,
    Transport,
    Unanswered,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_CNAME_CHAIN = 8


@dataclass(frozen=True)
class Nameserver:
    """A DNS server to ask: an IP address and a port."""

    address: str
    port: int = 53

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise DnsUsageError(f"nameserver {self.address!r} is not an IP address") from None
        if not 0 < self.port < 65536:
            raise DnsUsageError(f"nameserver port {self.port} out of range 1..65535")

    def __str__(self) -> str:
        return f"{self.address}#{self.port}"


@dataclass(frozen=True)
class LocatorConfig:
    """What the locator needs; validated on construction.

    `mnc_lengths` gives the MNC length of each MCC (TS 23.003: 2 or 3 digits); `transports`
    the transports the caller can use, in preference order; `address_types` "A"/"AAAA" in
    the order addresses of one target are listed.
    """

    nameservers: tuple[Nameserver, ...]
    enum_suffix: str = "e164.arpa."
    timeout: float = 2.0  # per query and nameserver
    mnc_lengths: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({"001": 2})
    )
    transports: tuple[Transport, ...] = TRANSPORTS
    address_types: tuple[str, ...] = ("A", "AAAA")
    cache_size: int = 4096

    def __post_init__(self) -> None:
        if not self.nameservers:
            raise DnsUsageError("the locator needs at least one nameserver")
        if not 0 < self.timeout <= 60:
            raise DnsUsageError(f"timeout {self.timeout} must be in (0, 60] seconds")
        try:
            dns.name.from_text(self.enum_suffix)
        except dns.exception.DNSException as exc:
            raise DnsUsageError(f"ENUM suffix {self.enum_suffix!r}: {exc}") from None
        for mcc, length in self.mnc_lengths.items():
            if len(mcc) != 3 or not mcc.isdigit() or length not in (2, 3):
                raise DnsUsageError(f"mnc_lengths[{mcc!r}] = {length}: want 3-digit MCC -> 2|3")
        if not self.transports or any(t not in TRANSPORTS for t in self.transports):
            raise DnsUsageError(f"transports {self.transports!r}: use udp, tcp, tls")
        if not self.address_types or any(t not in ("A", "AAAA") for t in self.address_types):
            raise DnsUsageError(f"address_types {self.address_types!r}: use A, AAAA")
        object.__setattr__(self, "mnc_lengths", MappingProxyType(dict(self.mnc_lengths)))

    @classmethod
    def for_server(cls, address: str, port: int, **options: object) -> LocatorConfig:
        """A config asking one server, e.g. the embedded one on 127.0.0.1:53530."""
        return cls(nameservers=(Nameserver(address, port),), **options)  # type: ignore[arg-type]


class QueryTransport(Protocol):
    """Sends one query to one nameserver; raises TimeoutError/OSError/DNSException on failure."""

    def __call__(
        self, query: dns.message.Message, nameserver: Nameserver, timeout: float
    ) -> Awaitable[dns.message.Message]: ...


async def udp_with_tcp_retry(
    query: dns.message.Message, nameserver: Nameserver, timeout: float
) -> dns.message.Message:
    """UDP, then TCP when the answer comes back truncated (RFC 1035 section 4.2.1)."""
    response, _used_tcp = await dns.asyncquery.udp_with_fallback(
        query, nameserver.address, timeout=timeout, port=nameserver.port
    )
    return response


class Locator:
    """Finds SIP URIs for numbers (ENUM) and servers for domains and operators (RFC 3263)."""

    def __init__(
        self,
        config: LocatorConfig,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        query: QueryTransport = udp_with_tcp_retry,
    ) -> None:
        self.config = config
        self.rng = rng if rng is not None else random.Random()
        self.clock = clock
        self.cache = DnsCache(config.cache_size)
        self._query = query
        self._address_types = tuple(dns.rdatatype.from_text(t) for t in config.address_types)
        self.queries_sent = 0

    async def enum_lookup(self, e164: str) -> str:
        """The SIP URI for an E.164 number (RFC 6116; E2U+sip and E2U+pstn:sip only)."""
        name = enum_domain(e164, self.config.enum_suffix)
        answer = await self.lookup(name, dns.rdatatype.NAPTR)
        if isinstance(answer, Unanswered):
            raise answer.error
        if isinstance(answer, NoRecords):
            what = "no such number (NXDOMAIN)" if answer.nxdomain else "no NAPTR records"
            raise NoSuchNumber(e164, f"{name}: {what}")
        rules = [
            NaptrRule(
                r.order, r.preference, r.flags.decode("ascii", "replace"),
                r.service.decode("ascii", "replace"), r.regexp.decode("utf-8", "replace"),
                r.replacement.to_text(),
            )
            for r in answer.rdatas
            if isinstance(r, dns.rdtypes.IN.NAPTR.NAPTR)
        ]
        uri, skipped = resolve_enum(e164, rules)
        for item in skipped:
            log.info("ENUM %s: skipped NAPTR %s %s %r: %s", e164, item.rule.order,
                     item.rule.preference, item.rule.service, item.reason)
        if uri is None:
            raise NoSuchNumber(e164, f"{name}: no usable E2U+sip or E2U+pstn:sip record")
        return uri

    async def locate(
        self,
        domain: str,
        *,
        transport: str | None = None,
        secure: bool = False,
        port: int | None = None,
    ) -> list[ServerTarget]:
        """RFC 3263 section 4: the ordered targets to try for a SIP URI's host part."""
        supported = self.config.transports
        resolution = SipServerResolution(
            domain, rng=self.rng, transport=transport, secure=secure, port=port,
            supported=supported, address_types=self._address_types,
        )
        while (question := resolution.next_question()) is not None:
            resolution.receive(await self.lookup(question.name, question.rdtype))
        return resolution.targets()

    async def locate_operator(self, mno_id: str) -> list[ServerTarget]:
        """The border targets of an operator given as PLMN ("001-02", "00102") or domain."""
        domain = mno_domain(mno_id, self.config.mnc_lengths)
        try:
            return await self.locate(domain)
        except NoSuchOperator as exc:
            raise NoSuchOperator(mno_id, f"{domain}: {exc.reason}") from None

    async def lookup(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> LookupResult:
        """One question, answered from the cache or the nameservers in order."""
        now = self.clock()
        cached = self.cache.get(name, rdtype, now)
        if cached is not None:
            return cached
        failures: list[str] = []
        for nameserver in self.config.nameservers:
            query = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
            query.flags &= ~dns.flags.RD  # we ask authoritative servers
            self.queries_sent += 1
            try:
                response = await self._query(query, nameserver, self.config.timeout)
            except (TimeoutError, dns.exception.Timeout):
                failures.append(f"{nameserver}: timeout")
                continue
            except (OSError, dns.exception.DNSException) as exc:
                failures.append(f"{nameserver}: {exc}")
                continue
            rcode = response.rcode()
            if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                failures.append(f"{nameserver}: {dns.rcode.to_text(rcode)}")
                continue
            answer = _parse_answer(response, name, rdtype)
            self.cache.put(name, rdtype, answer, self.clock())
            return answer
        qname, qtype = name.to_text(), dns.rdatatype.to_text(rdtype)
        error: LookupFailure
        if all(f.endswith(": timeout") for f in failures):
            servers = ", ".join(str(ns) for ns in self.config.nameservers)
            error = DnsTimeout(qname, qtype, servers)
        else:
            error = DnsServerFailure(qname, qtype, "; ".join(failures))
        return Unanswered(error)


def _parse_answer(
    response: dns.message.Message, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> Answer:
    """Records for (name, type), following CNAMEs inside the answer section; else negative."""
    owner = name
    ttl: int | None = None
    for _ in range(_MAX_CNAME_CHAIN):
        try:
            rrset = response.find_rrset(response.answer, owner, dns.rdataclass.IN, rdtype)
        except KeyError:
            pass
        else:
            ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
            return Records(tuple(rrset), ttl)
        try:
            cname = response.find_rrset(
                response.answer, owner, dns.rdataclass.IN, dns.rdatatype.CNAME
            )
        except KeyError:
            break
        ttl = cname.ttl if ttl is None else min(ttl, cname.ttl)
        owner = cname[0].target
    negative_ttl: int | None = None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            soa = rrset[0]
            assert isinstance(soa, dns.rdtypes.ANY.SOA.SOA)
            negative_ttl = min(rrset.ttl, soa.minimum)  # RFC 2308 section 5
            break
    return NoRecords(nxdomain=response.rcode() == dns.rcode.NXDOMAIN, ttl=negative_ttl)


async def failover(
    targets: list[ServerTarget], attempt: Callable[[ServerTarget], Awaitable[T]]
) -> T:
    """Try `attempt` on each target in order until one succeeds (RFC 3263 section 4.3).

    A target "does not answer" when `attempt` raises OSError or TimeoutError; the next one is
    tried. When all fail, NoUsableTarget (SIP 503) names each failure.
    """
    if not targets:
        raise NoUsableTarget("(none)", "no targets to try")
    failures: list[str] = []
    for target in targets:
        try:
            return await attempt(target)
        except (OSError, TimeoutError) as exc:
            log.info("target %s did not answer: %s", target, exc or type(exc).__name__)
            failures.append(f"{target}: {exc or type(exc).__name__}")
    raise NoUsableTarget(targets[0].host, "no target answered: " + "; ".join(failures))
