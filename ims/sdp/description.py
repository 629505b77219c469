"""Session descriptions (RFC 8866): the frozen model, `parse_sdp` and `serialize_sdp`.

Every field object checks its own grammar when built, so a `SessionDescription` that exists
serializes to text that parses back to an equal object. The parser enforces the line order of
RFC 8866 section 5 and names the line number and the defect of the first line it refuses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from . import grammar
from .attribute import Attribute, address_version
from .errors import SdpParseError, SdpTooLarge, SdpUsageError
from .ice import CANDIDATE, check_ice_attribute

# Address types whose addresses we check (RFC 8866 section 5.7); others stay opaque text.
IP4 = "IP4"
IP6 = "IP6"
IN = "IN"


@dataclass(frozen=True, slots=True)
class SdpLimits:
    """Bounds a parsed description must stay within; beyond them `SdpTooLarge` (488)."""

    max_bytes: int = 65536
    max_lines: int = 2048
    max_media: int = 16
    max_candidates: int = 64  # per media description

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_lines, self.max_media, self.max_candidates) < 1:
            raise SdpUsageError("SDP limits must be positive")


DEFAULT_LIMITS = SdpLimits()


def _check(ok: bool, defect: str) -> None:
    if not ok:
        raise SdpUsageError(defect)


def _check_unicast(nettype: str, addrtype: str, address: str) -> None:
    if nettype != IN or addrtype not in (IP4, IP6):
        _check(bool(grammar.NON_WS_STRING_RE.fullmatch(address)), f"bad address {address!r}")
        return
    version = address_version(address)
    if version is not None and f"IP{version}" != addrtype:
        raise SdpUsageError(f"address {address} is not of address type {addrtype}")


@dataclass(frozen=True, slots=True)
class Origin:
    """`o=` (RFC 8866 section 5.2). `sess_id` is an opaque numeric string; `sess_version` is
    the number RFC 3264 section 8 increments on each new offer or answer."""

    username: str
    sess_id: str
    sess_version: int
    nettype: str
    addrtype: str
    unicast_address: str

    def __post_init__(self) -> None:
        _check(bool(grammar.NON_WS_STRING_RE.fullmatch(self.username)), "bad o= username")
        _check(bool(grammar.SESS_ID_RE.fullmatch(self.sess_id)), "o= sess-id must be digits")
        _check(self.sess_version >= 0, "o= sess-version must not be negative")
        _check(bool(grammar.TOKEN_RE.fullmatch(self.nettype)), "o= nettype is not a token")
        _check(bool(grammar.TOKEN_RE.fullmatch(self.addrtype)), "o= addrtype is not a token")
        _check_unicast(self.nettype, self.addrtype, self.unicast_address)

    def __str__(self) -> str:
        return (
            f"{self.username} {self.sess_id} {self.sess_version} {self.nettype} "
            f"{self.addrtype} {self.unicast_address}"
        )

    @classmethod
    def parse(cls, value: str) -> Origin:
        fields = value.split(" ")
        _check(len(fields) == 6, "o= needs 6 fields separated by single spaces")
        username, sess_id, version, nettype, addrtype, address = fields
        _check(bool(grammar.DIGITS_RE.fullmatch(version)), "o= sess-version must be digits")
        return cls(username, sess_id, int(version), nettype, addrtype, address)

    @classmethod
    def for_address(cls, address: str, sess_id: str, sess_version: int = 0) -> Origin:
        """`o=- <sess_id> <sess_version> IN IP4|IP6 <address>` (RFC 8866 section 5.2 allows
        "-" as username when there is no user id)."""
        version = address_version(address)
        return cls("-", sess_id, sess_version, IN, IP6 if version == 6 else IP4, address)


@dataclass(frozen=True, slots=True)
class Connection:
    """`c=` (RFC 8866 section 5.7). `ttl` only for IPv4 multicast (where it is mandatory),
    `number_of_addresses` only for multicast."""

    nettype: str
    addrtype: str
    address: str
    ttl: int | None = None
    number_of_addresses: int | None = None

    def __post_init__(self) -> None:
        _check(bool(grammar.TOKEN_RE.fullmatch(self.nettype)), "c= nettype is not a token")
        _check(bool(grammar.TOKEN_RE.fullmatch(self.addrtype)), "c= addrtype is not a token")
        multicast = False
        if self.nettype == IN and self.addrtype in (IP4, IP6):
            _check_unicast(self.nettype, self.addrtype, self.address)
            if address_version(self.address) is not None:
                multicast = ipaddress.ip_address(self.address).is_multicast
        elif "/" in self.address:
            raise SdpUsageError(f"c= address {self.address!r} of unknown type has a '/'")
        else:
            _check(bool(grammar.NON_WS_STRING_RE.fullmatch(self.address)), "bad c= address")
        if self.ttl is not None:
            _check(
                multicast and self.addrtype == IP4 and 0 <= self.ttl <= 255,
                "a TTL belongs only to an IPv4 multicast address and is 0..255 (RFC 8866 §5.7)",
            )
        elif multicast and self.addrtype == IP4:
            raise SdpUsageError("an IPv4 multicast c= address needs a TTL (RFC 8866 §5.7)")
        if self.number_of_addresses is not None:
            _check(
                multicast and self.number_of_addresses >= 1,
                "a number of addresses belongs only to a multicast address (RFC 8866 §5.7)",
            )

    @property
    def is_ip(self) -> bool:
        return (
            self.nettype == IN
            and self.addrtype in (IP4, IP6)
            and address_version(self.address) is not None
        )

    def __str__(self) -> str:
        address = self.address
        if self.ttl is not None:
            address += f"/{self.ttl}"
        if self.number_of_addresses is not None:
            address += f"/{self.number_of_addresses}"
        return f"{self.nettype} {self.addrtype} {address}"

    @classmethod
    def parse(cls, value: str) -> Connection:
        fields = value.split(" ")
        _check(len(fields) == 3, "c= needs nettype, addrtype and address separated by spaces")
        nettype, addrtype, address = fields
        parts = address.split("/")
        numbers = parts[1:]
        _check(len(numbers) <= 2, "c= address has more than two '/' parts")
        _check(
            all(grammar.INTEGER_RE.fullmatch(n) or n == "0" for n in numbers),
            "c= TTL and number of addresses must be decimal numbers",
        )
        _check(all(len(n) <= 5 for n in numbers), "c= TTL or number of addresses too large")
        ttl: int | None = None
        count: int | None = None
        if len(numbers) == 2:
            ttl, count = int(numbers[0]), int(numbers[1])
        elif len(numbers) == 1:
            if addrtype == IP4:
                ttl = int(numbers[0])
            else:
                count = int(numbers[0])
        return cls(nettype, addrtype, parts[0], ttl, count)

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """`c=IN IP4|IP6 <address>` for a unicast IP address."""
        version = address_version(address)
        _check(version is not None, f"{address!r} is not an IP address")
        return cls(IN, IP6 if version == 6 else IP4, address)


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """`b=<bwtype>:<bandwidth>` (RFC 8866 section 5.8), in kilobits per second for CT/AS."""

    bwtype: str
    bandwidth: int

    def __post_init__(self) -> None:
        _check(bool(grammar.TOKEN_RE.fullmatch(self.bwtype)), "b= bwtype is not a token")
        _check(0 <= self.bandwidth < 10**18, "b= bandwidth must be 0 .. 10^18")

    def __str__(self) -> str:
        return f"{self.bwtype}:{self.bandwidth}"

    @classmethod
    def parse(cls, value: str) -> Bandwidth:
        bwtype, colon, amount = value.partition(":")
        _check(bool(colon), "b= needs <bwtype>:<bandwidth>")
        _check(
            bool(grammar.BANDWIDTH_RE.fullmatch(amount)) and len(amount) <= 18,
            "b= bandwidth must be at most 18 digits",
        )
        return cls(bwtype, int(amount))


@dataclass(frozen=True, slots=True)
class RepeatTime:
    """`r=` (RFC 8866 section 5.10). Times are kept as typed-time text ("7d", "3600") so a
    description round-trips; `typed_time_seconds` converts."""

    interval: str
    active_duration: str
    offsets: tuple[str, ...]

    def __post_init__(self) -> None:
        _check(
            bool(grammar.REPEAT_INTERVAL_RE.fullmatch(self.interval)),
            "r= repeat interval must be a positive typed time",
        )
        _check(
            all(grammar.TYPED_TIME_RE.fullmatch(t) for t in (self.active_duration, *self.offsets)),
            "r= durations and offsets must be typed times (digits and d/h/m/s)",
        )
        _check(len(self.offsets) >= 1, "r= needs at least one offset")

    def __str__(self) -> str:
        return " ".join((self.interval, self.active_duration, *self.offsets))

    @classmethod
    def parse(cls, value: str) -> RepeatTime:
        fields = value.split(" ")
        _check(len(fields) >= 3, "r= needs interval, active duration and offsets")
        return cls(fields[0], fields[1], tuple(fields[2:]))


@dataclass(frozen=True, slots=True)
class ZoneAdjustment:
    """One `<adjustment time> <offset>` pair of `z=` (RFC 8866 section 5.11)."""

    time: int
    offset: str

    def __post_init__(self) -> None:
        _check(bool(grammar.TIME_RE.fullmatch(str(self.time))), "z= time must be 10+ digits")
        _check(
            bool(grammar.SIGNED_TYPED_TIME_RE.fullmatch(self.offset)),
            "z= offset must be an optionally negative typed time",
        )


@dataclass(frozen=True, slots=True)
class TimeDescription:
    """`t=` with its `r=` lines and optional `z=` line (RFC 8866 sections 5.9-5.11). Times are
    NTP seconds; 0 means unbounded (start 0 and stop 0: a permanent session)."""

    start: int = 0
    stop: int = 0
    repeats: tuple[RepeatTime, ...] = ()
    zone_adjustments: tuple[ZoneAdjustment, ...] = ()

    def __post_init__(self) -> None:
        for value in (self.start, self.stop):
            _check(
                bool(grammar.START_TIME_RE.fullmatch(str(value))),
                "t= times must be 0 or NTP seconds of 10+ digits",
            )
        _check(
            self.stop == 0 or self.start <= self.stop,
            "t= stop time is before the start time",
        )

    def lines(self) -> Iterator[tuple[str, str]]:
        yield "t", f"{self.start} {self.stop}"
        for repeat in self.repeats:
            yield "r", str(repeat)
        if self.zone_adjustments:
            yield "z", " ".join(f"{z.time} {z.offset}" for z in self.zone_adjustments)


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """An `m=` section (RFC 8866 section 5.14) and the lines that belong to it."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    number_of_ports: int | None = None
    information: str | None = None
    connections: tuple[Connection, ...] = ()
    bandwidths: tuple[Bandwidth, ...] = ()
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()

    def __post_init__(self) -> None:
        _check(bool(grammar.TOKEN_RE.fullmatch(self.media)), "m= media is not a token")
        _check(0 <= self.port <= 65535, f"m= port {self.port} is outside 0..65535")
        _check(bool(grammar.PROTO_RE.fullmatch(self.proto)), "m= proto must be token/token...")
        _check(len(self.formats) >= 1, "m= needs at least one format (RFC 8866 §5.14)")
        _check(all(grammar.TOKEN_RE.fullmatch(f) for f in self.formats), "m= fmt is not a token")
        if self.number_of_ports is not None:
            _check(1 <= self.number_of_ports <= 65535, "m= number of ports must be positive")
        _check_text(self.information, "i=")
        _check_key(self.key)
        for attribute in self.attributes:
            check_ice_attribute(attribute, session_level=False)

    @property
    def rejected(self) -> bool:
        """RFC 3264 section 6: a stream is rejected (or removed) by port zero."""
        return self.port == 0

    def attribute_values(self, name: str) -> tuple[str | None, ...]:
        return tuple(a.value for a in self.attributes if a.name == name)

    def has_attribute(self, name: str) -> bool:
        return any(a.name == name for a in self.attributes)

    def m_line(self) -> str:
        port = str(self.port)
        if self.number_of_ports is not None:
            port += f"/{self.number_of_ports}"
        return " ".join((self.media, port, self.proto, *self.formats))

    def lines(self) -> Iterator[tuple[str, str]]:
        yield "m", self.m_line()
        if self.information is not None:
            yield "i", self.information
        for connection in self.connections:
            yield "c", str(connection)
        for bandwidth in self.bandwidths:
            yield "b", str(bandwidth)
        if self.key is not None:
            yield "k", self.key
        for attribute in self.attributes:
            yield "a", str(attribute)


def _check_text(value: str | None, what: str) -> None:
    if value is not None:
        _check(bool(grammar.TEXT_RE.fullmatch(value)), f"{what} must be non-empty text")


def _check_key(value: str | None) -> None:
    if value is not None:
        _check(
            bool(grammar.KEY_TYPE_RE.fullmatch(value)),
            "k= must be prompt, clear:, base64: or uri: (RFC 8866 §5.12)",
        )


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A whole description (RFC 8866 section 5), fields in the order they are written."""

    origin: Origin
    session_name: str = "-"
    information: str | None = None
    uri: str | None = None
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    times: tuple[TimeDescription, ...] = (TimeDescription(),)
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = field(default=())

    def __post_init__(self) -> None:
        # RFC 8866 section 5.3 forbids an empty s=, but RFC 8839's own example (section 4.2.6)
        # and many stacks send one; it is accepted and kept.
        _check(
            self.session_name == "" or bool(grammar.TEXT_RE.fullmatch(self.session_name)),
            "s= must be text",
        )
        _check_text(self.information, "i=")
        if self.uri is not None:
            _check(bool(grammar.NON_WS_STRING_RE.fullmatch(self.uri)), "u= must be a URI")
        for email in self.emails:
            # RFC 8866 section 9 email-address: an addr-spec (RFC 5322), perhaps with a name.
            _check(
                bool(grammar.TEXT_RE.fullmatch(email)) and "@" in email,
                f"e= {email!r} is not an email address",
            )
        for phone in self.phones:
            _check(
                bool(grammar.PHONE_NUMBER_RE.fullmatch(phone)),
                f"p= {phone!r} is not a phone number (RFC 8866 §9 phone-number)",
            )
        _check(len(self.times) >= 1, "a description needs at least one t= line")
        _check_key(self.key)
        for attribute in self.attributes:
            check_ice_attribute(attribute, session_level=True)
        for index, media in enumerate(self.media):
            # RFC 8866 section 5.7: c= at session level or in every media description.
            _check(
                self.connection is not None or bool(media.connections),
                f"media description {index + 1} has no c= and there is no session-level c=",
            )

    def connection_for(self, media: MediaDescription) -> Connection | None:
        """The c= that applies to `media`: its own first one, else the session's (§5.7)."""
        return media.connections[0] if media.connections else self.connection

    def lines(self) -> Iterator[tuple[str, str]]:
        yield "v", "0"
        yield "o", str(self.origin)
        yield "s", self.session_name
        if self.information is not None:
            yield "i", self.information
        if self.uri is not None:
            yield "u", self.uri
        for email in self.emails:
            yield "e", email
        for phone in self.phones:
            yield "p", phone
        if self.connection is not None:
            yield "c", str(self.connection)
        for bandwidth in self.bandwidths:
            yield "b", str(bandwidth)
        for time in self.times:
            yield from time.lines()
        if self.key is not None:
            yield "k", self.key
        for attribute in self.attributes:
            yield "a", str(attribute)
        for media in self.media:
            yield from media.lines()

    def with_media(self, index: int, media: MediaDescription) -> SessionDescription:
        """A copy with media description `index` replaced."""
        if not 0 <= index < len(self.media):
            raise SdpUsageError(f"no media description {index}")
        return replace(self, media=(*self.media[:index], media, *self.media[index + 1 :]))


def serialize_sdp(description: SessionDescription) -> bytes:
    """The description as RFC 8866 text: UTF-8, every line ended by CRLF."""
    return "".join(f"{kind}={value}\r\n" for kind, value in description.lines()).encode()


# --- parsing ---------------------------------------------------------------------------------

# RFC 8866 section 5: the order of session-level and media-level lines. Lines of equal rank
# may repeat unless the type is in the "once" set; t/r/z form time descriptions (rank 9).
_SESSION_RANK = {"v": 0, "o": 1, "s": 2, "i": 3, "u": 4, "e": 5, "p": 6, "c": 7, "b": 8,
                 "t": 9, "r": 9, "z": 9, "k": 10, "a": 11}  # fmt: skip
_SESSION_ONCE = frozenset("vosiuck")
_MEDIA_RANK = {"m": 0, "i": 1, "c": 2, "b": 3, "k": 4, "a": 5}
_MEDIA_ONCE = frozenset("mik")
_KNOWN_TYPES = frozenset(_SESSION_RANK) | {"m"}


def _split_lines(data: bytes | str, limits: SdpLimits) -> list[str]:
    if len(data) > limits.max_bytes:
        raise SdpTooLarge(1, f"description of {len(data)} bytes exceeds {limits.max_bytes}")
    raw = data.encode() if isinstance(data, str) else data
    if not raw:
        raise SdpParseError(1, "empty description")
    # RFC 8866 section 5: lines end with CRLF; parsers should also accept a bare LF.
    pieces = raw.split(b"\n")
    if pieces[-1] != b"":
        raise SdpParseError(len(pieces), "last line has no CRLF (truncated description?)")
    pieces.pop()
    if len(pieces) > limits.max_lines:
        raise SdpTooLarge(limits.max_lines + 1, f"more than {limits.max_lines} lines")
    lines = []
    for number, piece in enumerate(pieces, 1):
        if piece.endswith(b"\r"):
            piece = piece[:-1]
        if b"\r" in piece:
            raise SdpParseError(number, "bare CR inside a line")
        if b"\x00" in piece:
            raise SdpParseError(number, "NUL byte inside a line")
        try:
            lines.append(piece.decode("utf-8"))
        except UnicodeDecodeError:
            raise SdpParseError(
                number, "not UTF-8 (only the UTF-8 charset of RFC 8866 §5 is supported)"
            ) from None
    return lines


class _Parser:
    """Walks the lines once, checking the section 5 order, and builds the frozen model."""

    def __init__(self, limits: SdpLimits) -> None:
        self.limits = limits
        self.session: dict[str, list[object]] = {}
        self.times: list[TimeDescription] = []
        self.media: list[MediaDescription] = []
        self.current: dict[str, list[object]] | None = None
        self.current_line = 0
        self.rank = -1
        self.last_type = ""
        self.seen: set[str] = set()

    def feed(self, number: int, kind: str, value: str) -> None:
        if self.current is None:
            self._require_before(kind)
        if kind == "m":
            self._close_media()
            if len(self.media) >= self.limits.max_media:
                raise SdpTooLarge(number, f"more than {self.limits.max_media} media descriptions")
            self.current, self.current_line = {}, number
            self.rank, self.seen = 0, {"m"}
            self.current["m"] = [value]
            return
        if self.current is not None:
            self._order(number, kind, _MEDIA_RANK, _MEDIA_ONCE, "a media description")
            self.current.setdefault(kind, []).append(self._field(kind, value, session=False))
            self._count_candidates(number, kind, value)
            return
        self._order(number, kind, _SESSION_RANK, _SESSION_ONCE, "the session level")
        if kind in "rz":
            if self.last_type not in ("t", "r"):
                raise SdpUsageError(f"{kind}= must follow t= or r= (RFC 8866 §5)")
            latest = self.times[-1]
            if kind == "r":
                self.times[-1] = replace(latest, repeats=(*latest.repeats, RepeatTime.parse(value)))
            else:
                self.times[-1] = replace(latest, zone_adjustments=_zone(value))
        elif kind == "t":
            self.times.append(_timing(value))
        else:
            self.session.setdefault(kind, []).append(self._field(kind, value, session=True))
        self.last_type = kind

    def _require_before(self, kind: str) -> None:
        # RFC 8866 section 5: v=, o=, s= and at least one t= come before anything that the
        # order puts after them; name the missing line at the first line that proves it absent.
        rank = _SESSION_RANK.get(kind, 12)
        for needed in ("v", "o", "s", "t"):
            if _SESSION_RANK[needed] < rank and needed not in self.seen:
                raise SdpUsageError(f"{kind}= comes before the required {needed}= line")

    def _order(
        self, number: int, kind: str, ranks: dict[str, int], once: frozenset[str], where: str
    ) -> None:
        if kind not in ranks:
            raise SdpUsageError(f"{kind}= is not allowed in {where} (RFC 8866 §5)")
        rank = ranks[kind]
        if rank < self.rank:
            raise SdpUsageError(f"{kind}= is out of order in {where} (RFC 8866 §5)")
        if kind in once and kind in self.seen:
            raise SdpUsageError(f"{kind}= appears twice in {where} (RFC 8866 §5)")
        self.rank = rank
        self.seen.add(kind)

    def _count_candidates(self, number: int, kind: str, value: str) -> None:
        if kind == "a" and value.startswith(CANDIDATE + ":") and self.current is not None:
            count = sum(
                1 for a in self.current["a"] if isinstance(a, Attribute) and a.name == CANDIDATE
            )
            if count > self.limits.max_candidates:
                raise SdpTooLarge(
                    number, f"more than {self.limits.max_candidates} candidates in one m= section"
                )

    @staticmethod
    def _field(kind: str, value: str, *, session: bool) -> object:
        if kind == "v":
            if value != "0":
                raise SdpUsageError(f"unsupported SDP version {value!r}; only v=0 exists")
            return value
        if kind == "o":
            return Origin.parse(value)
        if kind == "c":
            return Connection.parse(value)
        if kind == "b":
            return Bandwidth.parse(value)
        if kind == "a":
            attribute = Attribute.parse(value)
            check_ice_attribute(attribute, session_level=session)
            return attribute
        if kind == "k":
            _check_key(value)
        elif kind == "p":
            _check(bool(grammar.PHONE_NUMBER_RE.fullmatch(value)), "not a phone number")
        elif kind == "u":
            _check(bool(grammar.NON_WS_STRING_RE.fullmatch(value)), "u= must be a URI")
        elif kind != "s" or value:
            _check(bool(grammar.TEXT_RE.fullmatch(value)), f"{kind}= must be non-empty text")
        return value

    def _close_media(self) -> None:
        if self.current is None:
            return
        fields = self.current
        number = self.current_line
        try:
            media = _media(fields)
        except SdpUsageError as error:
            raise SdpParseError(number, str(error), line_type="m") from None
        if not media.connections and "c" not in self.session:
            raise SdpParseError(
                number, "no c= here nor at session level (RFC 8866 §5.7)", line_type="m"
            )
        self.media.append(media)
        self.current = None

    def finish(self, line_count: int) -> SessionDescription:
        self._close_media()
        s = self.session
        for kind, what in (("v", "v= line"), ("o", "o= line"), ("s", "s= line")):
            if kind not in s:
                raise SdpParseError(1 if kind == "v" else line_count, f"no {what}")
        if not self.times:
            raise SdpParseError(line_count, "no t= line (RFC 8866 §5.9 requires one)")
        origin = s["o"][0]
        assert isinstance(origin, Origin)
        connection = s.get("c", [None])[0]
        assert connection is None or isinstance(connection, Connection)
        try:
            return SessionDescription(
                origin=origin,
                session_name=str(s["s"][0]),
                information=_text(s, "i"),
                uri=_text(s, "u"),
                emails=tuple(str(e) for e in s.get("e", ())),
                phones=tuple(str(p) for p in s.get("p", ())),
                connection=connection,
                bandwidths=tuple(b for b in s.get("b", ()) if isinstance(b, Bandwidth)),
                times=tuple(self.times),
                key=_text(s, "k"),
                attributes=tuple(a for a in s.get("a", ()) if isinstance(a, Attribute)),
                media=tuple(self.media),
            )
        except SdpUsageError as error:
            raise SdpParseError(line_count, str(error)) from None


def _text(fields: dict[str, list[object]], kind: str) -> str | None:
    values = fields.get(kind)
    return None if not values else str(values[0])


def _timing(value: str) -> TimeDescription:
    fields = value.split(" ")
    _check(len(fields) == 2, "t= needs start and stop time separated by one space")
    _check(
        all(grammar.START_TIME_RE.fullmatch(f) for f in fields),
        "t= times must be 0 or NTP seconds of 10+ digits",
    )
    _check(all(len(f) <= 20 for f in fields), "t= time too large")
    return TimeDescription(int(fields[0]), int(fields[1]))


def _zone(value: str) -> tuple[ZoneAdjustment, ...]:
    fields = value.split(" ")
    _check(len(fields) % 2 == 0, "z= needs <adjustment time> <offset> pairs")
    _check(all(grammar.DIGITS_RE.fullmatch(f) and len(f) <= 20 for f in fields[::2]), "bad z=")
    return tuple(ZoneAdjustment(int(t), o) for t, o in zip(fields[::2], fields[1::2], strict=True))


def _media(fields: dict[str, list[object]]) -> MediaDescription:
    parts = str(fields["m"][0]).split(" ")
    _check(len(parts) >= 4, "m= needs media, port, proto and at least one format")
    media, port_text, proto, *formats = parts
    port, slash, count = port_text.partition("/")
    _check(bool(grammar.DIGITS_RE.fullmatch(port)) and len(port) <= 5, "m= port is not a number")
    _check(not slash or bool(grammar.INTEGER_RE.fullmatch(count)), "m= number of ports is bad")
    _check(len(count) <= 5, "m= number of ports too large")
    return MediaDescription(
        media=media,
        port=int(port),
        proto=proto,
        formats=tuple(formats),
        number_of_ports=int(count) if slash else None,
        information=_text(fields, "i"),
        connections=tuple(c for c in fields.get("c", ()) if isinstance(c, Connection)),
        bandwidths=tuple(b for b in fields.get("b", ()) if isinstance(b, Bandwidth)),
        key=_text(fields, "k"),
        attributes=tuple(a for a in fields.get("a", ()) if isinstance(a, Attribute)),
    )


def parse_sdp(data: bytes | str, limits: SdpLimits = DEFAULT_LIMITS) -> SessionDescription:
    """Parse an RFC 8866 description. Raises `SdpParseError` (400) naming the first bad line
    and its defect, or `SdpTooLarge` (488) beyond `limits`; nothing else."""
    lines = _split_lines(data, limits)
    parser = _Parser(limits)
    for number, line in enumerate(lines, 1):
        if not line:
            raise SdpParseError(number, "empty line")
        kind = line[0]
        if len(line) < 2 or line[1] != "=":
            raise SdpParseError(number, "not a <type>=<value> line (RFC 8866 §5)")
        if kind not in _KNOWN_TYPES:
            # RFC 8866 section 5: a description with an unknown type letter is rejected whole.
            raise SdpParseError(number, f"unknown line type {kind!r}", line_type=kind)
        if number == 1 and kind != "v":
            raise SdpParseError(number, "a description starts with v=", line_type=kind)
        try:
            parser.feed(number, kind, line[2:])
        except SdpUsageError as error:
            raise SdpParseError(number, str(error), line_type=kind) from None
    return parser.finish(len(lines))
