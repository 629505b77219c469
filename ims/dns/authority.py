"""The authoritative answer logic: query -> response. Pure: no sockets, no clock.

Rules implemented, by section:
- RFC 1034 section 4.3.2: the zone with the longest matching origin answers, with AA set;
  a name outside every served zone is REFUSED (we are not a recursive resolver).
- RFC 2308 sections 2.1-3 and RFC 8020: NXDOMAIN when the name does not exist (an empty
  non-terminal exists: NODATA), NODATA (NOERROR, no answer) when the type does not; both carry
  the zone's SOA in authority with TTL min(SOA TTL, SOA MINIMUM).
- RFC 2782 / RFC 3403 section 4.2 (additional section processing): SRV targets' A/AAAA, and for
  a NAPTR with flag "s" the SRV set of its replacement with their addresses ("a": addresses).
- RFC 1035 section 4.2.1 and RFC 2181 section 9: a UDP answer longer than the limit is cut:
  first the additional section (no TC), then TC=1 with no records, and the client retries on TCP.
- RFC 6891 section 6.2.5: the UDP limit is the requester's EDNS payload size (at least 512,
  at most ours); 512 without EDNS. Section 6.1.3: EDNS version above 0 gets BADVERS.
- RFC 1035 section 4.1.1: a query that cannot be parsed gets FORMERR; an unsupported opcode
  NOTIMP; a message with QR set (a response) is never answered, so two servers cannot loop.
- RFC 3225 section 3: the DO bit of the query is copied into the response.
- RFC 1034 section 3.7.1: QCLASS=* (ANY) is answered from the IN data, never with AA.
- RFC 4035 section 3.1.4.1: DS belongs to the parent side of a zone cut; when both sides are
  served, DS at a child's apex is answered from the parent zone.
"""

from __future__ import annotations

import struct

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.NAPTR
import dns.rdtypes.IN.SRV
import dns.rrset
import dns.zone

from ims.dns.zones import ZoneSet, soa_of

# DNS Flag Day 2020: a UDP payload that avoids IP fragmentation on common paths.
DEFAULT_UDP_PAYLOAD = 1232
MIN_UDP_PAYLOAD = 512  # RFC 1035 section 2.3.4; RFC 6891 section 6.2.5
MAX_TCP_MESSAGE = 65535  # RFC 1035 section 4.2.2: two-octet length prefix

_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


class Authority:
    """Answers queries for the zones of a `ZoneSet`."""

    def __init__(self, zone_set: ZoneSet, *, udp_payload: int = DEFAULT_UDP_PAYLOAD) -> None:
        if not MIN_UDP_PAYLOAD <= udp_payload <= MAX_TCP_MESSAGE:
            raise ValueError(f"udp_payload must be 512..65535, not {udp_payload}")
        self.zone_set = zone_set
        self.udp_payload = udp_payload
        # Every owner name and every ancestor up to the origin: empty non-terminals exist
        # (RFC 8020), so `_udp.<domain>` is NODATA while `_nothing.<domain>` is NXDOMAIN.
        self._existing: dict[dns.name.Name, frozenset[dns.name.Name]] = {}
        for origin, zone in zone_set.zones.items():
            names: set[dns.name.Name] = set()
            for name in zone.nodes:
                while name not in names and name.is_subdomain(origin):
                    names.add(name)
                    if name == origin:
                        break
                    name = name.parent()
            self._existing[origin] = frozenset(names)

    # -- wire in, wire out ------------------------------------------------------------------

    def respond_wire(self, wire: bytes, *, over_tcp: bool) -> bytes | None:
        """The response bytes for query bytes, or None when nothing must be sent back."""
        if len(wire) < 12:
            return None  # not even a header: nothing to echo an ID to
        (query_id, flags) = struct.unpack("!HH", wire[:4])
        if flags & dns.flags.QR:
            return None
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _formerr(query_id, flags)
        response = self.respond(query)
        return self.encode(response, query, over_tcp=over_tcp)

    def udp_limit(self, query: dns.message.Message) -> int:
        if query.edns < 0:
            return MIN_UDP_PAYLOAD
        return max(MIN_UDP_PAYLOAD, min(query.payload, self.udp_payload))

    def encode(
        self, response: dns.message.Message, query: dns.message.Message, *, over_tcp: bool
    ) -> bytes:
        limit = MAX_TCP_MESSAGE if over_tcp else self.udp_limit(query)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            pass
        # RFC 2181 section 9: additional data may be dropped without setting TC.
        response.additional = []
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            pass
        response.answer = []
        response.authority = []
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)

    # -- message in, message out ------------------------------------------------------------

    def respond(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query, our_payload=self.udp_payload)
        response.flags &= ~dns.flags.AA
        if query.edns >= 0 and query.ednsflags & dns.flags.DO:
            # RFC 3225 section 3: "The DO bit of the query MUST be copied in the response."
            response.ednsflags |= dns.flags.DO
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
            return response
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if question.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY) or qtype in (
            dns.rdatatype.AXFR, dns.rdatatype.IXFR
        ):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        if qtype == dns.rdatatype.OPT:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        zone = self._zone_for(qname, qtype)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        # RFC 1034 section 3.7.1: we cannot know every class, so QCLASS=* is never authoritative.
        if question.rdclass == dns.rdataclass.IN:
            response.flags |= dns.flags.AA
        node = zone.get_node(qname)
        if node is not None:
            for rdataset in node.rdatasets:
                if qtype in (rdataset.rdtype, dns.rdatatype.ANY):
                    response.answer.append(_rrset(qname, rdataset))
        if response.answer:
            self._add_additional(response)
            return response
        assert zone.origin is not None
        if qname not in self._existing[zone.origin]:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(_negative_soa(zone))
        return response

    def _zone_for(
        self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> dns.zone.Zone | None:
        zone = self.zone_set.find_zone(qname)
        if zone is not None and qtype == dns.rdatatype.DS and qname == zone.origin:
            # RFC 4035 section 3.1.4.1: DS is the parent's data; ask the parent when we serve it.
            parent = self.zone_set.find_zone(qname.parent()) if qname != dns.name.root else None
            if parent is not None:
                return parent
        return zone

    def _add_additional(self, response: dns.message.Message) -> None:
        seen: set[tuple[dns.name.Name, int]] = set()

        def add(name: dns.name.Name, rdtypes: tuple[dns.rdatatype.RdataType, ...]) -> None:
            zone = self.zone_set.find_zone(name)
            if zone is None:
                return
            for rdtype in rdtypes:
                if (name, rdtype) in seen:
                    continue
                seen.add((name, rdtype))
                rdataset = zone.get_rdataset(name, rdtype)
                if rdataset is None:
                    continue
                response.additional.append(_rrset(name, rdataset))
                if rdtype == dns.rdatatype.SRV:
                    for srv in rdataset:
                        assert isinstance(srv, dns.rdtypes.IN.SRV.SRV)
                        add(srv.target, _ADDRESS_TYPES)

        for rrset in response.answer:
            for rdata in rrset:
                if isinstance(rdata, dns.rdtypes.IN.SRV.SRV):
                    add(rdata.target, _ADDRESS_TYPES)
                elif isinstance(rdata, dns.rdtypes.IN.NAPTR.NAPTR):
                    flags = rdata.flags.decode("ascii", "replace").lower()
                    if "s" in flags:
                        add(rdata.replacement, (dns.rdatatype.SRV,))
                    elif "a" in flags:
                        add(rdata.replacement, _ADDRESS_TYPES)
                elif rrset.rdtype in (dns.rdatatype.NS, dns.rdatatype.MX):
                    target = getattr(rdata, "target", None) or getattr(rdata, "exchange", None)
                    if isinstance(target, dns.name.Name):
                        add(target, _ADDRESS_TYPES)


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))


def _negative_soa(zone: dns.zone.Zone) -> dns.rrset.RRset:
    """The SOA for a negative answer, TTL min(SOA TTL, MINIMUM) (RFC 2308 section 3)."""
    assert zone.origin is not None
    soa = soa_of(zone)
    rdataset = zone.find_rdataset(zone.origin, dns.rdatatype.SOA)
    rrset = dns.rrset.RRset(zone.origin, dns.rdataclass.IN, dns.rdatatype.SOA)
    rrset.add(soa, ttl=min(rdataset.ttl, soa.minimum))
    return rrset


def _formerr(query_id: int, query_flags: int) -> bytes:
    """A bare FORMERR header echoing ID, opcode and RD (RFC 1035 section 4.1.1)."""
    opcode_bits = query_flags & 0x7800
    flags = dns.flags.QR | opcode_bits | (query_flags & dns.flags.RD) | dns.rcode.FORMERR
    return struct.pack("!HHHHHH", query_id, flags, 0, 0, 0, 0)
