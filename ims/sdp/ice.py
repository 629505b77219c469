"""ICE in SDP: the candidate and credential attributes of RFC 8839 section 5 and the candidate
rules of RFC 8445 section 5.1 (priority, foundation, default candidate).

Pure encoders: `Candidate.parse` takes the value of an `a=candidate` line and returns an object,
`str(candidate)` gives the value back. Nothing here knows a session description; the views over
one (`candidates_of`, `credentials_of`) live in `ims.sdp.offer_answer`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from ims.sip.ids import RandomSource

from . import grammar
from .attribute import Attribute, address_version
from .errors import SdpUsageError


class CandidateType(StrEnum):
    """RFC 8445 section 5.1.1 candidate types, as `typ` writes them (RFC 8839 section 5.1)."""

    HOST = "host"
    SRFLX = "srflx"
    PRFLX = "prflx"
    RELAY = "relay"


# RFC 8445 section 5.1.2.2: recommended type preferences.
TYPE_PREFERENCE: Mapping[str, int] = MappingProxyType(
    {
        CandidateType.HOST: 126,
        CandidateType.PRFLX: 110,
        CandidateType.SRFLX: 100,
        CandidateType.RELAY: 0,
    }
)
# RFC 8445 section 5.1.2.1: a single-homed agent uses the top local preference.
DEFAULT_LOCAL_PREFERENCE = 65535
MAX_PRIORITY = 2**31 - 1  # RFC 8445 section 5.1.2: 1 .. 2^31 - 1

# Attribute names (RFC 8839 section 5; end-of-candidates is RFC 8840 section 9).
CANDIDATE = "candidate"
ICE_UFRAG = "ice-ufrag"
ICE_PWD = "ice-pwd"
ICE_OPTIONS = "ice-options"
ICE_LITE = "ice-lite"
ICE_MISMATCH = "ice-mismatch"
ICE_PACING = "ice-pacing"
REMOTE_CANDIDATES = "remote-candidates"
END_OF_CANDIDATES = "end-of-candidates"
# RFC 8445 section 10: an agent of that RFC says so with this option tag.
ICE2 = "ice2"

UFRAG_BYTES = 6  # 48 random bits; RFC 8839 section 5.4 asks at least 24
PWD_BYTES = 18  # 144 random bits; RFC 8839 section 5.4 asks at least 128


def candidate_priority(
    candidate_type: str,
    component: int = 1,
    local_preference: int = DEFAULT_LOCAL_PREFERENCE,
    type_preference: int | None = None,
) -> int:
    """RFC 8445 section 5.1.2.1:
    priority = 2^24 * type preference + 2^8 * local preference + (256 - component ID).

    `type_preference` defaults to the section 5.1.2.2 value for the type."""
    if type_preference is None:
        if candidate_type not in TYPE_PREFERENCE:
            raise SdpUsageError(f"no recommended type preference for typ {candidate_type!r}")
        type_preference = TYPE_PREFERENCE[candidate_type]
    if not 0 <= type_preference <= 126:
        raise SdpUsageError(f"type preference {type_preference} is outside 0..126")
    if not 0 <= local_preference <= 65535:
        raise SdpUsageError(f"local preference {local_preference} is outside 0..65535")
    if not 1 <= component <= 256:
        raise SdpUsageError(f"component ID {component} is outside 1..256")
    return (type_preference << 24) + (local_preference << 8) + (256 - component)


def candidate_foundation(
    candidate_type: str, base_address: str, transport: str = "UDP", server: str | None = None
) -> str:
    """A foundation that is equal for two candidates exactly when RFC 8445 section 5.1.1.3 says
    it must be: same type, base IP address, STUN/TURN server (or operator gateway) and
    transport. Eight hex digits, all ice-chars."""
    key = "\x00".join((candidate_type, base_address, transport.upper(), server or ""))
    return hashlib.sha256(key.encode()).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One `a=candidate` line (RFC 8839 section 5.1).

    `address` is kept as written (IPv4, IPv6 without brackets, or an FQDN, which a receiving
    agent ignores per section 5.1: see `is_fqdn`). `extensions` are the trailing name/value
    pairs (for instance `generation 0`), kept in order."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str
    related_address: str | None = None
    related_port: int | None = None
    extensions: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not grammar.FOUNDATION_RE.fullmatch(self.foundation):
            raise SdpUsageError(
                f"foundation {self.foundation!r} must be 1 to 32 ice-chars (RFC 8839 §5.1)"
            )
        if not 1 <= self.component <= 256:
            raise SdpUsageError(
                f"component ID {self.component} is outside 1..256 (RFC 8445 §5.1.1)"
            )
        if not grammar.TOKEN_RE.fullmatch(self.transport):
            raise SdpUsageError(f"transport {self.transport!r} is not a token")
        if not 1 <= self.priority <= MAX_PRIORITY:
            raise SdpUsageError(f"priority {self.priority} is outside 1..2^31-1 (RFC 8445 §5.1.2)")
        address_version(self.address)
        if not 1 <= self.port <= 65535:
            raise SdpUsageError(f"candidate port {self.port} is outside 1..65535")
        if not grammar.TOKEN_RE.fullmatch(self.type):
            raise SdpUsageError(f"candidate type {self.type!r} is not a token")
        self._check_related()
        for name, value in self.extensions:
            if not grammar.TOKEN_RE.fullmatch(name) or name in ("typ", "raddr", "rport"):
                raise SdpUsageError(f"candidate extension name {name!r} is not allowed")
            if not value or not grammar.EXTENSION_ATT_VALUE_RE.fullmatch(value):
                raise SdpUsageError(f"candidate extension {name} value {value!r} is not VCHARs")

    def _check_related(self) -> None:
        # RFC 8839 section 5.1: raddr/rport MUST be present for srflx, prflx and relay and
        # MUST be omitted for host candidates.
        has_related = self.related_address is not None or self.related_port is not None
        if self.type == CandidateType.HOST and has_related:
            raise SdpUsageError("a host candidate must not carry raddr/rport (RFC 8839 §5.1)")
        if self.type in (CandidateType.SRFLX, CandidateType.PRFLX, CandidateType.RELAY) and (
            self.related_address is None or self.related_port is None
        ):
            raise SdpUsageError(
                f"a {self.type} candidate must carry raddr and rport (RFC 8839 §5.1)"
            )
        if self.related_address is not None:
            address_version(self.related_address)
        if self.related_port is not None and not 0 <= self.related_port <= 65535:
            raise SdpUsageError(f"rport {self.related_port} is outside 0..65535")

    @property
    def is_fqdn(self) -> bool:
        """RFC 8839 section 5.1: a receiving agent ignores candidates with an FQDN address, and a
        generating agent must not use one."""
        return address_version(self.address) is None

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address as an `ipaddress` object, None for an FQDN."""
        return None if self.is_fqdn else ipaddress.ip_address(self.address)

    @property
    def is_udp(self) -> bool:
        # ABNF literals are case-insensitive (RFC 5234 section 2.3).
        return self.transport.upper() == "UDP"

    def same_transport_address(self, other: Candidate) -> bool:
        """Same component, transport, IP and port (IPv6 compared as addresses, not text)."""
        return (
            self.component == other.component
            and self.transport.upper() == other.transport.upper()
            and self.port == other.port
            and (self.ip or self.address.lower()) == (other.ip or other.address.lower())
        )

    def __str__(self) -> str:
        parts = [
            self.foundation,
            str(self.component),
            self.transport,
            str(self.priority),
            self.address,
            str(self.port),
            "typ",
            self.type,
        ]
        if self.related_address is not None:
            parts += ["raddr", self.related_address]
        if self.related_port is not None:
            parts += ["rport", str(self.related_port)]
        for name, value in self.extensions:
            parts += [name, value]
        return " ".join(parts)

    def to_attribute(self) -> Attribute:
        return Attribute(CANDIDATE, str(self))

    @classmethod
    def parse(cls, value: str) -> Candidate:
        """The value of an `a=candidate:` line (after the colon). Raises SdpUsageError naming
        the defect; the SDP parser adds the line number."""
        fields = value.split(" ")
        if "" in fields:
            raise SdpUsageError("candidate fields must be separated by single spaces")
        if len(fields) < 8:
            raise SdpUsageError(
                "candidate needs foundation, component, transport, priority, address, port "
                "and 'typ <type>' (RFC 8839 §5.1)"
            )
        foundation, component, transport, priority, address, port, typ, cand_type = fields[:8]
        if typ != "typ":
            raise SdpUsageError(f"expected 'typ' as the seventh candidate field, got {typ!r}")
        if not grammar.COMPONENT_ID_RE.fullmatch(component):
            raise SdpUsageError(f"component ID {component!r} is not 1 to 3 digits")
        if not grammar.PRIORITY_RE.fullmatch(priority):
            raise SdpUsageError(f"priority {priority!r} is not 1 to 10 digits")
        if not grammar.DIGITS_RE.fullmatch(port) or len(port) > 5:
            raise SdpUsageError(f"candidate port {port!r} is not a port number")
        rest = fields[8:]
        related_address: str | None = None
        related_port: int | None = None
        if rest[:1] == ["raddr"]:
            if len(rest) < 2:
                raise SdpUsageError("raddr without an address")
            related_address, rest = rest[1], rest[2:]
        if rest[:1] == ["rport"]:
            if len(rest) < 2 or not grammar.DIGITS_RE.fullmatch(rest[1]) or len(rest[1]) > 5:
                raise SdpUsageError("rport without a port number")
            related_port, rest = int(rest[1]), rest[2:]
        if len(rest) % 2:
            raise SdpUsageError(f"candidate extension {rest[-1]!r} has no value")
        extensions = tuple((rest[i], rest[i + 1]) for i in range(0, len(rest), 2))
        return cls(
            foundation=foundation,
            component=int(component),
            transport=transport,
            priority=int(priority),
            address=address,
            port=int(port),
            type=cand_type,
            related_address=related_address,
            related_port=related_port,
            extensions=extensions,
        )


@dataclass(frozen=True, slots=True)
class IceCredentials:
    """`a=ice-ufrag` and `a=ice-pwd` (RFC 8839 section 5.4): 4 to 256 and 22 to 256 ice-chars."""

    ufrag: str
    pwd: str

    def __post_init__(self) -> None:
        if not grammar.UFRAG_RE.fullmatch(self.ufrag):
            raise SdpUsageError("ice-ufrag must be 4 to 256 ice-chars (RFC 8839 §5.4)")
        if not grammar.PASSWORD_RE.fullmatch(self.pwd):
            raise SdpUsageError("ice-pwd must be 22 to 256 ice-chars (RFC 8839 §5.4)")

    @classmethod
    def generate(cls, random: RandomSource) -> IceCredentials:
        """Fresh credentials from an injected random source (`secrets.token_bytes`), with more
        randomness than section 5.4 asks (24 bits for the ufrag, 128 for the password)."""
        return cls(_ice_chars(random, UFRAG_BYTES), _ice_chars(random, PWD_BYTES))

    def to_attributes(self) -> tuple[Attribute, Attribute]:
        return Attribute(ICE_UFRAG, self.ufrag), Attribute(ICE_PWD, self.pwd)


def _ice_chars(random: RandomSource, size: int) -> str:
    data = random(size)
    if len(data) != size:
        raise SdpUsageError(f"random source returned {len(data)} bytes, {size} were asked")
    # Base64 without padding uses only ice-chars (ALPHA / DIGIT / "+" / "/").
    return base64.b64encode(data).decode("ascii").rstrip("=")


def check_ice_attribute(attribute: Attribute, *, session_level: bool) -> None:
    """Raise SdpUsageError when an ICE attribute breaks its RFC 8839 grammar or appears at a
    level where it is not defined; other attributes pass untouched."""
    name, value = attribute.name, attribute.value
    if name == CANDIDATE:
        _media_level_only(name, session_level)
        Candidate.parse(_required(name, value))
    elif name == ICE_UFRAG:
        if not grammar.UFRAG_RE.fullmatch(_required(name, value)):
            raise SdpUsageError("ice-ufrag must be 4 to 256 ice-chars (RFC 8839 §5.4)")
    elif name == ICE_PWD:
        if not grammar.PASSWORD_RE.fullmatch(_required(name, value)):
            raise SdpUsageError("ice-pwd must be 22 to 256 ice-chars (RFC 8839 §5.4)")
    elif name == ICE_OPTIONS:
        ice_options(_required(name, value))
    elif name == ICE_PACING:
        if not session_level:
            raise SdpUsageError("a=ice-pacing is a session-level attribute (RFC 8839 §5.5)")
        if not grammar.PACING_VALUE_RE.fullmatch(_required(name, value)):
            raise SdpUsageError("ice-pacing must be 1 to 10 digits (RFC 8839 §5.5)")
    elif name == ICE_LITE:
        if not session_level:
            raise SdpUsageError("a=ice-lite is a session-level attribute (RFC 8839 §5.3)")
        _flag(name, value)
    elif name == ICE_MISMATCH:
        _media_level_only(name, session_level)
        _flag(name, value)
    elif name == END_OF_CANDIDATES:
        _flag(name, value)
    elif name == REMOTE_CANDIDATES:
        _media_level_only(name, session_level)
        _remote_candidates(_required(name, value))


def ice_options(value: str) -> tuple[str, ...]:
    """The option tags of `a=ice-options` (RFC 8839 section 5.6)."""
    tags = tuple(value.split(" "))
    if not all(grammar.ICE_OPTION_TAG_RE.fullmatch(tag) for tag in tags):
        raise SdpUsageError("ice-options must be ice-char tags separated by single spaces")
    return tags


def _remote_candidates(value: str) -> None:
    # RFC 8839 section 5.2: remote-candidate = component-ID SP connection-address SP port
    fields = value.split(" ")
    if len(fields) % 3 or "" in fields:
        raise SdpUsageError("remote-candidates must be 'component address port' triples")
    for i in range(0, len(fields), 3):
        component, address, port = fields[i : i + 3]
        if not grammar.COMPONENT_ID_RE.fullmatch(component):
            raise SdpUsageError(f"remote-candidates component {component!r} is not a number")
        address_version(address)
        if not grammar.DIGITS_RE.fullmatch(port) or not 0 < int(port) <= 65535:
            raise SdpUsageError(f"remote-candidates port {port!r} is not a port number")


def _required(name: str, value: str | None) -> str:
    if value is None:
        raise SdpUsageError(f"a={name} needs a value")
    return value


def _flag(name: str, value: str | None) -> None:
    if value is not None:
        raise SdpUsageError(f"a={name} takes no value")


def _media_level_only(name: str, session_level: bool) -> None:
    if session_level:
        raise SdpUsageError(f"a={name} is a media-level attribute (RFC 8839 §5)")
