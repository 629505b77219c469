"""A DNS answer cache that honours TTLs. Pure: the time is passed in (`now`, seconds).

Positive answers live for their RRset TTL (RFC 1035 section 3.2.1; RFC 2181 section 5.2: one
TTL per RRset). Negative answers live for min(SOA TTL, SOA MINIMUM) of the SOA in the authority
section (RFC 2308 section 5); without that SOA they are not cached (RFC 2308 section 5: "negative
responses without SOA records SHOULD NOT be cached"). An NXDOMAIN covers every type of the name
(RFC 2308 section 5).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import dns.name
import dns.rdata
import dns.rdatatype


@dataclass(frozen=True)
class Records:
    """A positive answer: the RRset's records."""

    rdatas: tuple[dns.rdata.Rdata, ...]
    ttl: int


@dataclass(frozen=True)
class NoRecords:
    """A negative answer: NXDOMAIN (the name does not exist) or NODATA (the type does not).

    `ttl` is the negative-caching TTL, None when the answer had no SOA (not cached).
    """

    nxdomain: bool
    ttl: int | None


Answer = Records | NoRecords
CacheKey = tuple[dns.name.Name, dns.rdatatype.RdataType]
# NXDOMAIN is stored once per name under this pseudo type.
_ANY_TYPE = dns.rdatatype.ANY


@dataclass(frozen=True)
class _Entry:
    answer: Answer
    expires: float


class DnsCache:
    """Bounded LRU of answers keyed by (name, type)."""

    def __init__(self, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, now: float
    ) -> Answer | None:
        """The cached answer still valid at `now`, or None."""
        for key in ((name, rdtype), (name, _ANY_TYPE)):
            entry = self._entries.get(key)
            if entry is None:
                continue
            if entry.expires <= now:
                del self._entries[key]
                continue
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.answer
        self.misses += 1
        return None

    def put(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, answer: Answer, now: float
    ) -> None:
        if isinstance(answer, Records):
            ttl: int | None = answer.ttl
            key: CacheKey = (name, rdtype)
        else:
            ttl = answer.ttl
            key = (name, _ANY_TYPE if answer.nxdomain else rdtype)
        if ttl is None or ttl <= 0:
            return
        self._entries[key] = _Entry(answer, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
