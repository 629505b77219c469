"""RFC 3263 section 4 as a sans-IO procedure: it says which question to ask next and turns
the answers into an ordered list of servers to try. No sockets, no clock; randomness (RFC 2782
weighted selection) comes from an injected `random.Random`.

Drive it like dnspython's `_Resolution`:

    resolution = SipServerResolution("ims.mnc002.mcc001.3gppnetwork.org", rng=rng)
    while (question := resolution.next_question()) is not None:
        resolution.receive(await ask(question))
    targets = resolution.targets()
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import random
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.name
import dns.rdatatype
import dns.rdtypes.IN.NAPTR
import dns.rdtypes.IN.SRV

from ims.dns.cache import NoRecords, Records
from ims.dns.errors import DnsUsageError, LookupFailure, NoSuchOperator, NoUsableTarget

log = logging.getLogger(__name__)

Transport = Literal["udp", "tcp", "tls"]
TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp", "tls")
# RFC 3261 section 19.1.2: default ports.
DEFAULT_PORTS: dict[Transport, int] = {"udp": 5060, "tcp": 5060, "tls": 5061}
# RFC 3263 section 4.1 / RFC 3263 section 10 (IANA): NAPTR service field -> transport.
NAPTR_SERVICES: dict[str, Transport] = {"sip+d2u": "udp", "sip+d2t": "tcp", "sips+d2t": "tls"}
# RFC 3263 section 4.2 / RFC 2782: the SRV owner label for each transport.
SRV_PREFIXES: dict[Transport, str] = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}
ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


@dataclass(frozen=True)
class ServerTarget:
    """One place to send a request: `host` is the name the address came from."""

    host: str
    address: str
    port: int
    transport: Transport

    def __str__(self) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{address}:{self.port};transport={self.transport} ({self.host})"


@dataclass(frozen=True)
class Question:
    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType


@dataclass(frozen=True)
class Unanswered:
    """No nameserver gave a usable answer; `error` says why (timeout or server failure)."""

    error: LookupFailure


LookupResult = Records | NoRecords | Unanswered


def order_srv(
    records: Iterable[dns.rdtypes.IN.SRV.SRV], rng: random.Random
) -> list[dns.rdtypes.IN.SRV.SRV]:
    """RFC 2782 "Usage rules": lowest priority first; within a priority, weighted random.

    The records are first put in a canonical order so that, for a given `rng` state, the
    result does not depend on the order in which a server sent them.
    """
    ordered = sorted(records, key=lambda r: (r.priority, r.weight, r.target.to_text(), r.port))
    result: list[dns.rdtypes.IN.SRV.SRV] = []
    for _priority, group_iter in itertools.groupby(ordered, key=lambda r: r.priority):
        # "arrange all SRV RRs ... in any order, except that all those with weight 0 are
        # placed at the beginning of the list" (stable sort keeps the canonical order).
        group = sorted(group_iter, key=lambda r: r.weight != 0)
        while group:
            total = sum(r.weight for r in group)
            chosen = rng.randint(0, total)
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= chosen:
                    result.append(group.pop(index))
                    break
    return result


def _ip_literal(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


def _domain_name(text: str) -> dns.name.Name:
    """A host part as a DNS name; SIP's hostname ABNF (RFC 3261 section 25.1) has no length
    limits, DNS has (RFC 1035 section 2.3.4: labels of 63 octets, names of 255)."""
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise DnsUsageError(f"not a usable domain name {text!r}: {exc}") from None


class SipServerResolution:
    """RFC 3263 section 4 for one SIP URI host (`domain`), with its optional parts.

    `transport` is the URI's transport parameter, `secure` a sips: URI, `port` the URI's
    port. `supported` lists the transports this client can use, in its preference order
    (used when the domain publishes no NAPTR); `address_types` the families, in order.
    """

    def __init__(
        self,
        domain: str,
        *,
        rng: random.Random,
        transport: str | None = None,
        secure: bool = False,
        port: int | None = None,
        supported: tuple[Transport, ...] = TRANSPORTS,
        address_types: tuple[dns.rdatatype.RdataType, ...] = ADDRESS_TYPES,
    ) -> None:
        self.domain_text = domain.rstrip(".").lower()
        if not self.domain_text:
            raise DnsUsageError("empty domain")
        if port is not None and not 0 < port < 65536:
            raise DnsUsageError(f"port {port} out of range 1..65535")
        if transport is not None:
            transport = transport.lower()
            if transport not in TRANSPORTS:
                raise DnsUsageError(f"unknown transport {transport!r}: use udp, tcp or tls")
        if secure:
            # RFC 3263 section 4.1: a SIPS URI is reached over TLS only.
            if transport == "udp":
                raise DnsUsageError("a sips: URI cannot use transport=udp")
            transport = "tls" if transport is not None else None
            supported = tuple(t for t in supported if t == "tls")
        if not supported:
            raise DnsUsageError("no supported transport left for this request")
        self.transport: Transport | None = transport  # type: ignore[assignment]
        self.secure = secure
        self.port = port
        self.supported = supported
        self.address_types = address_types
        self.rng = rng
        self._ip = _ip_literal(domain)
        self.domain = dns.name.root if self._ip is not None else _domain_name(self.domain_text)
        self._failures: list[LookupFailure] = []
        self._result: list[ServerTarget] | None = None
        self._error: LookupFailure | None = None
        self._procedure = self._run()
        self._pending: Question | None = None
        self._advance(None)

    # -- driver interface -------------------------------------------------------------------

    def next_question(self) -> Question | None:
        """The question to ask now; None when the resolution has finished."""
        return self._pending

    def receive(self, result: LookupResult) -> None:
        """Give the answer (or non-answer) to the pending question."""
        if self._pending is None:
            raise DnsUsageError("receive() called with no question pending")
        self._advance(result)

    def targets(self) -> list[ServerTarget]:
        """The ordered targets; raises the LookupFailure that ended the resolution."""
        if self._pending is not None:
            raise DnsUsageError("targets() called before the resolution finished")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _advance(self, result: LookupResult | None) -> None:
        try:
            if result is None:
                self._pending = next(self._procedure)
            else:
                self._pending = self._procedure.send(result)
        except StopIteration as stop:
            self._pending = None
            self._result = stop.value
        except LookupFailure as exc:
            self._pending = None
            self._error = exc

    # -- the procedure ----------------------------------------------------------------------

    def _default_transport(self) -> Transport:
        # RFC 3263 section 4.1: UDP for sip, TLS (over TCP) for sips.
        return "tls" if self.secure else ("udp" if "udp" in self.supported else self.supported[0])

    def _run(self) -> Generator[Question, LookupResult, list[ServerTarget]]:
        transport = self.transport or self._default_transport()
        if self._ip is not None:
            # RFC 3263 section 4.1/4.2: a numeric host is used as is.
            return [ServerTarget(self._ip, self._ip, self.port or DEFAULT_PORTS[transport],
                                 transport)]
        if self.port is not None:
            # RFC 3263 section 4.2: an explicit port means A/AAAA only, no SRV.
            return (yield from self._fallback_to_addresses(transport, self.port))
        if self.transport is not None:
            candidates = [(self.transport, self._srv_name(self.transport))]
        else:
            candidates = yield from self._naptr_candidates()
            if not candidates:
                # RFC 3263 section 4.1: no (usable) NAPTR: SRV for each supported transport.
                candidates = [(t, self._srv_name(t)) for t in self.supported]
            else:
                transport = candidates[0][0]
        targets: list[ServerTarget] = []
        found_srv = False
        for srv_transport, srv_name in candidates:
            answer = yield Question(srv_name, dns.rdatatype.SRV)
            if isinstance(answer, Unanswered):
                raise answer.error
            if isinstance(answer, NoRecords):
                continue
            found_srv = True
            srvs = [r for r in answer.rdatas if isinstance(r, dns.rdtypes.IN.SRV.SRV)]
            for srv in order_srv(srvs, self.rng):
                if srv.target == dns.name.root:
                    # RFC 2782: target "." means decidedly not available at this domain.
                    log.info("%s: %s says the service is not available", self.domain, srv_name)
                    continue
                targets.extend((yield from self._addresses(srv.target, srv.port, srv_transport)))
        if not found_srv:
            # RFC 3263 section 4.2: no SRV: the domain's own A/AAAA at the default port.
            return (yield from self._fallback_to_addresses(transport, DEFAULT_PORTS[transport]))
        return self._finish(targets, "no SRV target has an address")

    def _srv_name(self, transport: Transport) -> dns.name.Name:
        return dns.name.from_text(SRV_PREFIXES[transport], origin=self.domain)

    def _naptr_candidates(
        self,
    ) -> Generator[Question, LookupResult, list[tuple[Transport, dns.name.Name]]]:
        answer = yield Question(self.domain, dns.rdatatype.NAPTR)
        if isinstance(answer, Unanswered):
            raise answer.error
        if isinstance(answer, NoRecords):
            if answer.nxdomain:
                # RFC 8020: NXDOMAIN means nothing exists at or below the name.
                raise NoSuchOperator(self.domain_text, "the domain does not exist (NXDOMAIN)")
            return []
        naptrs = [r for r in answer.rdatas if isinstance(r, dns.rdtypes.IN.NAPTR.NAPTR)]
        naptrs.sort(key=lambda r: (r.order, r.preference, r.service, r.replacement.to_text()))
        candidates: list[tuple[Transport, dns.name.Name]] = []
        for naptr in naptrs:
            service = naptr.service.decode("ascii", "replace").lower()
            transport = NAPTR_SERVICES.get(service)
            # RFC 3263 section 4.1: discard services we do not support; only "s" records
            # (the replacement is an SRV name) are defined for SIP.
            if transport is None or transport not in self.supported:
                continue
            if naptr.flags.decode("ascii", "replace").lower() != "s":
                log.info("%s: NAPTR %s skipped: flags must be 's'", self.domain, naptr)
                continue
            if all(t != transport for t, _ in candidates):
                candidates.append((transport, naptr.replacement))
        if not candidates:
            log.info("%s: no NAPTR with a supported service; trying SRV", self.domain)
        return candidates

    def _addresses(
        self, host: dns.name.Name, port: int, transport: Transport
    ) -> Generator[Question, LookupResult, list[ServerTarget]]:
        found: list[ServerTarget] = []
        host_text = host.to_text(omit_final_dot=True)
        for rdtype in self.address_types:
            answer = yield Question(host, rdtype)
            if isinstance(answer, Unanswered):
                # Fail over to the next target rather than the whole lookup (RFC 3263 4.3).
                log.warning("%s %s: %s", host_text, dns.rdatatype.to_text(rdtype), answer.error)
                self._failures.append(answer.error)
                continue
            if isinstance(answer, NoRecords):
                continue
            addresses = sorted(r.to_text() for r in answer.rdatas)
            found.extend(ServerTarget(host_text, a, port, transport) for a in addresses)
        return found

    def _fallback_to_addresses(
        self, transport: Transport, port: int
    ) -> Generator[Question, LookupResult, list[ServerTarget]]:
        found: list[ServerTarget] = []
        nxdomain = 0
        for rdtype in self.address_types:
            answer = yield Question(self.domain, rdtype)
            if isinstance(answer, Unanswered):
                raise answer.error
            if isinstance(answer, NoRecords):
                nxdomain += answer.nxdomain
                continue
            found.extend(
                ServerTarget(self.domain_text, a, port, transport)
                for a in sorted(r.to_text() for r in answer.rdatas)
            )
        if nxdomain == len(self.address_types):
            raise NoSuchOperator(self.domain_text, "the domain does not exist (NXDOMAIN)")
        return self._finish(found, "no NAPTR, SRV, A or AAAA record gives an address")

    def _finish(self, targets: list[ServerTarget], reason: str) -> list[ServerTarget]:
        unique = list(dict.fromkeys(targets))
        if unique:
            return unique
        if self._failures:
            raise self._failures[0]
        raise NoUsableTarget(self.domain_text, reason)
