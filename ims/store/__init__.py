"""The operator's state store: subscribers, registrar bindings, sessions, permission rules
and the permission audit.

One interface (`Store`, a typing.Protocol) with backends behind it: SQLite now
(`ims.store.sqlite.SqliteStore`), Redis later for operators running several proxy instances.
Calls are synchronous and short; time is an input (`now`, seconds of the wall clock, so that
expiry survives a restart), nothing here reads a clock.

The records are frozen dataclasses that validate themselves, so every backend stores only
well-formed values:
- `Subscriber`: the private identity (IMPI), the public identities (IMPUs, in the canonical AOR
  form of RFC 3261 section 10.3 step 5) and digest HA1 values per realm, never a password
  (`new_subscriber` computes them, RFC 7616 section 3.4.2);
- `Binding`: one registered contact of an AOR (RFC 3261 section 10.3, RFC 5626 flows);
- `Session`: one call the operator takes part in, with a JSON `details` object for later use;
- `StoredRuleSet`: a subscriber's published permission rule set (docs/extension.md section
  6.3: the JSON as published, its SIP-ETag and when it expires);
- `ims.permission.audit.DecisionRecord`: one permission decision (section 11), kept in the
  `decisions` table;
- `PcpMappingRecord` and `RelayRecord`: what the connectivity gateway holds open (a PCP mapping
  on the CGN, a relay allocation), each under the `GatewayRun` that holds it, so that a later
  run deletes what a crashed one left at the CGN (RFC 6887 section 15) and `ueconnect mno
  --list-open` shows what is open from another process.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import unquote

from ims.sip.address import Address
from ims.sip.digest import DigestAlgorithm, StoredHA1, compute_ha1
from ims.sip.errors import ParseError
from ims.sip.uri import SipUri, TelUri, parse_uri

if TYPE_CHECKING:
    from ims.config import StoreConfig
    from ims.permission.audit import DecisionRecord

__all__ = [
    "SESSION_ENDED",
    "AllocationTable",
    "Binding",
    "BindingTable",
    "DecisionTable",
    "DigestHA1",
    "DuplicateSession",
    "DuplicateSubscriber",
    "GatewayRun",
    "InvalidIdentity",
    "InvalidRecord",
    "PcpMappingRecord",
    "RelayRecord",
    "RuleSetTable",
    "SchemaTooNew",
    "Session",
    "SessionEnded",
    "SessionTable",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoreUsageError",
    "StoredRuleSet",
    "Subscriber",
    "SubscriberTable",
    "UnknownSession",
    "UnknownSubscriber",
    "canonical_aor",
    "new_subscriber",
    "open_store",
    "validate_impi",
]

# --------------------------------------------------------------------------------------------
# Errors: the store refused an operation (state), the caller passed bad data (usage), or the
# database itself cannot be used (unavailable).
# --------------------------------------------------------------------------------------------


class StoreError(Exception):
    """Base of every error raised by ims.store."""


class DuplicateSubscriber(StoreError):
    """An identity being added already belongs to a subscriber."""

    def __init__(self, identity: str, owner: str) -> None:
        what = "private identity" if identity == owner else f"public identity (of {owner})"
        super().__init__(
            f"{identity} is already a {what}; remove that subscriber first or use another "
            "identity"
        )
        self.identity = identity
        self.owner = owner


class UnknownSubscriber(StoreError):
    """No subscriber has this private or public identity."""

    def __init__(self, identity: str) -> None:
        super().__init__(f"no subscriber with identity {identity}")
        self.identity = identity


class DuplicateSession(StoreError):
    def __init__(self, call_id: str) -> None:
        super().__init__(f"a session with Call-ID {call_id!r} exists already")
        self.call_id = call_id


class UnknownSession(StoreError):
    def __init__(self, call_id: str) -> None:
        super().__init__(f"no session with Call-ID {call_id!r}")
        self.call_id = call_id


class SessionEnded(StoreError):
    """An ended session cannot change any more."""

    def __init__(self, call_id: str) -> None:
        super().__init__(f"the session with Call-ID {call_id!r} has ended; it cannot change")
        self.call_id = call_id


class StoreUnavailable(StoreError):
    """The database cannot be opened or used (missing directory, not a database, locked)."""


class SchemaTooNew(StoreUnavailable):
    """The database was written by a newer ueconnect; this one must not touch it."""

    def __init__(self, path: str, found: int, known: int) -> None:
        super().__init__(
            f"{path}: schema version {found} is newer than this ueconnect knows ({known}); "
            "upgrade ueconnect or point [store] path at another file"
        )
        self.found = found
        self.known = known


class StoreUsageError(StoreError, ValueError):
    """The caller passed a malformed value (not a state of the store)."""


class InvalidIdentity(StoreUsageError):
    """Not a usable IMPI or IMPU; the message names the defect and the expected form."""

    def __init__(self, text: str, defect: str) -> None:
        super().__init__(f"{text!r}: {defect}")
        self.text = text
        self.defect = defect


class InvalidRecord(StoreUsageError):
    """A record field has a value the store cannot keep."""


# --------------------------------------------------------------------------------------------
# Identities
# --------------------------------------------------------------------------------------------

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
# NAI, RFC 7542 section 2.2 (TS 23.003 section 13.3: the IMPI is username@realm).
_IMPI_RE = re.compile(rf"([^\s@\x00-\x1f\x7f]{{1,200}})@({_LABEL}(?:\.{_LABEL})*)")


def validate_impi(text: str) -> str:
    """The IMPI in stored form (realm lower-cased), or InvalidIdentity.

    TS 23.003 section 13.3: an NAI "username@realm"; it is also the digest username
    in IMS digest authentication.
    """
    match = _IMPI_RE.fullmatch(text)
    if match is None:
        raise InvalidIdentity(text, "not a private identity; expected user@realm such as "
                              "bill@ims.mnc001.mcc001.3gppnetwork.org")
    return f"{match.group(1)}@{match.group(2).lower()}"


def canonical_aor(text: str) -> str:
    """The canonical form of an address-of-record, the key bindings and IMPUs are kept under.

    RFC 3261 section 10.3 step 5: all URI parameters are removed (user=phone included) and
    escaped characters unescaped; the host (case-insensitive, section 19.1.4) is lower-cased.
    A tel: URI (RFC 3966) must be global and loses its visual separators.
    """
    try:
        uri = parse_uri(text.strip())
    except ParseError as exc:
        raise InvalidIdentity(text, f"{exc.reason}; expected tel:+E164 or "
                              "sip:user@domain") from None
    if isinstance(uri, TelUri):
        if not uri.is_global:
            raise InvalidIdentity(text, "a public identity tel: URI must be a global number "
                                  "such as tel:+15550100001")
        return f"tel:{uri.e164}"
    if isinstance(uri, SipUri):
        if not uri.user:
            raise InvalidIdentity(text, "a public identity needs a user part, e.g. "
                                  "sip:bill@ims.mnc001.mcc001.3gppnetwork.org")
        port = f":{uri.port}" if uri.port is not None else ""
        return f"{uri.scheme}:{unquote(uri.user)}@{uri.host.lower()}{port}"
    raise InvalidIdentity(text, f"the {uri.scheme}: scheme cannot be a public identity; "
                          "expected tel: or sip:")


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-f]+")
_R = TypeVar("_R")


def _stored_record(cls: type[_R], **fields: Any) -> _R:
    """A record as a backend reads it back from its own tables, built without running the
    record's checks again: every stored value passed them on its way in (the records validate
    themselves), and re-parsing each AOR and IMPU on every read cost the registrar more than
    the query. Backends only; `fields` must name every field of `cls`."""
    if fields.keys() != cls.__dataclass_fields__.keys():  # type: ignore[attr-defined]
        raise InvalidRecord(f"a stored {cls.__name__} needs exactly the fields "
                            f"{', '.join(cls.__dataclass_fields__)}")  # type: ignore[attr-defined]
    record = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(record, name, value)  # frozen: set as __init__ would
    return record


@dataclass(frozen=True)
class DigestHA1:
    """H(impi:realm:password) for MD5 and SHA-256 in one realm (RFC 7616 section 3.4.2)."""

    realm: str
    ha1_md5: str = field(repr=False)
    ha1_sha256: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.realm or not self.realm.isprintable():
            raise InvalidRecord(f"realm {self.realm!r} must be non-empty printable text")
        for value, size in ((self.ha1_md5, 32), (self.ha1_sha256, 64)):
            if len(value) != size or not _HEX.fullmatch(value):
                raise InvalidRecord(f"an HA1 must be {size} lower-case hex digits")

    @property
    def stored(self) -> StoredHA1:
        """The secret the digest server verifies against (ims.sip.digest)."""
        return StoredHA1({DigestAlgorithm.MD5: self.ha1_md5,
                          DigestAlgorithm.SHA_256: self.ha1_sha256})


def _finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRecord(f"{name} must be a finite number of seconds, not {value!r}")


@dataclass(frozen=True)
class Subscriber:
    """A subscription: `impi` authenticates, `impus` (canonical, the first is the default
    public identity) are what it registers and is reached at."""

    impi: str
    impus: tuple[str, ...]
    credentials: tuple[DigestHA1, ...]
    created_at: float
    display_name: str | None = None

    def __post_init__(self) -> None:
        if validate_impi(self.impi) != self.impi:
            raise InvalidIdentity(self.impi, "not in stored form; pass it through "
                                  "validate_impi() first")
        if not self.impus:
            raise InvalidRecord(f"subscriber {self.impi} needs at least one public identity")
        for impu in self.impus:
            if canonical_aor(impu) != impu:
                raise InvalidIdentity(impu, f"not in canonical form; use {canonical_aor(impu)!r}")
        if len(set(self.impus)) != len(self.impus):
            raise InvalidRecord(f"subscriber {self.impi} lists a public identity twice")
        realms = [c.realm for c in self.credentials]
        if not realms or len(set(realms)) != len(realms):
            raise InvalidRecord(f"subscriber {self.impi} needs one credential per realm")
        if self.display_name is not None and (
                not self.display_name.isprintable() or len(self.display_name) > 128):
            raise InvalidRecord("display name must be printable text of at most 128 characters")
        _finite("created_at", self.created_at)

    def secret_for(self, realm: str) -> StoredHA1 | None:
        """The stored HA1 values for `realm`, None when the subscriber has none there."""
        return next((c.stored for c in self.credentials if c.realm == realm), None)


def new_subscriber(
    impi: str,
    impus: Iterable[str],
    password: str,
    realms: str | Sequence[str],
    *,
    now: float,
    display_name: str | None = None,
) -> Subscriber:
    """A `Subscriber` whose credentials are the HA1 values of `password` in each realm.

    The password goes no further than this function: only H(impi:realm:password) is kept
    (RFC 7616 section 3.4.2; the digest username of an IMS subscriber is its IMPI).
    """
    if not password:
        raise InvalidRecord("the password is empty")
    stored_impi = validate_impi(impi)
    canonical = tuple(dict.fromkeys(canonical_aor(u) for u in impus))
    realm_list = (realms,) if isinstance(realms, str) else tuple(realms)
    credentials = tuple(
        DigestHA1(
            realm,
            compute_ha1(DigestAlgorithm.MD5, stored_impi, realm, password),
            compute_ha1(DigestAlgorithm.SHA_256, stored_impi, realm, password),
        )
        for realm in dict.fromkeys(realm_list)
    )
    return Subscriber(stored_impi, canonical, credentials, now, display_name)


_MAX_REG_ID = 2**31 - 1  # RFC 5626 section 4.2: reg-id is 1..2**31-1


@dataclass(frozen=True)
class Binding:
    """One contact bound to an AOR (RFC 3261 section 10.3).

    `contact` is the Contact URI as registered; the registrar compares URIs (section 19.1.4)
    before it calls the store, which matches `contact` exactly. `received` is the flow the
    P-CSCF saw the REGISTER on (RFC 3581 / RFC 5626 section 5), `registered_via` names that
    P-CSCF, `path` the Path header values in order (RFC 3327), `supports` the option tags and
    feature tags the UE declared.
    """

    aor: str
    contact: str
    expires_at: float
    call_id: str
    cseq: int
    q: float | None = None
    path: tuple[str, ...] = ()
    instance_id: str | None = None
    reg_id: int | None = None
    received: Address | None = None
    registered_via: str | None = None
    supports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if canonical_aor(self.aor) != self.aor:
            raise InvalidIdentity(self.aor, f"AOR not in canonical form; use "
                                  f"{canonical_aor(self.aor)!r} (RFC 3261 section 10.3 step 5)")
        if not self.contact or not self.call_id:
            raise InvalidRecord("a binding needs a contact URI and a Call-ID")
        _finite("expires_at", self.expires_at)
        # RFC 3261 section 8.1.1.5: CSeq is a 32-bit unsigned integer.
        if isinstance(self.cseq, bool) or not 0 <= self.cseq < 2**32:
            raise InvalidRecord(f"cseq {self.cseq!r} is not a 32-bit unsigned integer")
        # RFC 3261 section 20.10: qvalue is 0 to 1.
        if self.q is not None and not 0.0 <= self.q <= 1.0:
            raise InvalidRecord(f"q {self.q!r} must be between 0 and 1")
        if self.reg_id is not None and (self.instance_id is None
                                        or not 1 <= self.reg_id <= _MAX_REG_ID):
            raise InvalidRecord(f"reg_id {self.reg_id} needs an instance_id and must be "
                                f"1..{_MAX_REG_ID} (RFC 5626 section 4.2)")

    def active(self, now: float) -> bool:
        return self.expires_at > now


SESSION_ENDED = "ended"
JsonObject = Mapping[str, object]


def _json_object(details: Mapping[str, object]) -> str:
    try:
        return json.dumps(dict(details), sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"session details must be a JSON object: {exc}") from None


@dataclass(frozen=True)
class Session:
    """One call the operator takes part in, keyed by its Call-ID.

    `state` is free text owned by the roles (e.g. "inquiring", "confirmed"); `SESSION_ENDED`
    is the store's own final state, set by `SessionTable.end`. `details` is a JSON object
    for what later issues need to keep (gateway allocations, permission verdicts).
    """

    call_id: str
    from_identity: str
    to_identity: str
    state: str
    created_at: float
    expires_at: float
    details: JsonObject = field(default_factory=lambda: MappingProxyType({}))
    ended_at: float | None = None

    def __post_init__(self) -> None:
        if not self.call_id or not self.state:
            raise InvalidRecord("a session needs a Call-ID and a state")
        _finite("created_at", self.created_at)
        _finite("expires_at", self.expires_at)
        # Freeze a copy: a caller's dict changing later must not change the record.
        text = _json_object(self.details)
        object.__setattr__(self, "details", MappingProxyType(json.loads(text)))

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    def active(self, now: float) -> bool:
        return not self.ended and self.expires_at > now


@dataclass(frozen=True)
class StoredRuleSet:
    """A subscriber's permission rule set as published (docs/extension.md section 6.3).

    `subscriber` is the IMPI; `body` the JSON text (the permission function validates it
    before it is stored; the store checks only that it is a JSON object); `etag` the
    SIP-ETag granted (RFC 3903 section 4.1); `expires_at` when the set lapses.
    """

    subscriber: str
    body: str
    etag: str
    expires_at: float
    updated_at: float

    def __post_init__(self) -> None:
        if validate_impi(self.subscriber) != self.subscriber:
            raise InvalidIdentity(self.subscriber, "not in stored form; pass it through "
                                  "validate_impi() first")
        try:
            value = json.loads(self.body)
        except (TypeError, ValueError):
            value = None
        if not isinstance(value, dict):
            raise InvalidRecord("a rule set body must be a JSON object")
        # RFC 3261 section 25.1 token: a SIP-ETag is a token (RFC 3903 section 11.3.1).
        if not self.etag or not re.fullmatch(r"[A-Za-z0-9\-.!%*_+`'~]+", self.etag):
            raise InvalidRecord(f"SIP-ETag {self.etag!r} is not a token")
        _finite("expires_at", self.expires_at)
        _finite("updated_at", self.updated_at)

    def active(self, now: float) -> bool:
        return self.expires_at > now


_NONCE_LENGTH = 12  # RFC 6887 sections 11.1 and 12.1: the mapping nonce is 96 bits
_LEGS = ("originating", "terminating")  # ims.seams.Leg's values
_OPCODES = ("MAP", "PEER")  # RFC 6887 sections 11 and 12


def _port(name: str, value: int | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise InvalidRecord(f"{name} {value!r} is not a port number 0-65535")


def _text(name: str, value: str) -> None:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise InvalidRecord(f"{name} {value!r} must be non-empty printable text")


@dataclass(frozen=True)
class GatewayRun:
    """One run of an operator's connectivity gateway: `owner` is the operator (its [operator]
    name), `run_id` is new at every start, `host` and `pid` say where the run lives, so that
    a later run (or `ueconnect mno --list-open`) can tell whether it is still there."""

    owner: str
    run_id: str
    host: str
    pid: int

    def __post_init__(self) -> None:
        if not isinstance(self.owner, str) or not self.owner.isprintable():
            raise InvalidRecord(f"gateway owner {self.owner!r} must be printable text")
        _text("run id", self.run_id)
        _text("host", self.host)
        if isinstance(self.pid, bool) or not isinstance(self.pid, int) or self.pid < 1:
            raise InvalidRecord(f"pid {self.pid!r} is not a process id")


@dataclass(frozen=True)
class PcpMappingRecord:
    """A PCP mapping the gateway holds on its CGN for one leg of a call (RFC 6887).

    What a later run needs to delete it (section 15: the same opcode, protocol, internal
    address and port, remote peer for PEER, and the nonce that created it, lifetime 0):
    `server`/`server_port` the PCP server, `opcode` "MAP" or "PEER", `internal` the UE's
    endpoint (THIRD_PARTY, section 13.1), `external` what the CGN assigned, `peer` the
    PEER's remote peer or the one peer a MAP's FILTER admits (None: nobody yet), `lifetime`
    the seconds asked for, `expires_at` (wall clock) when it lapses unless renewed."""

    holder: GatewayRun
    call_id: str
    leg: str
    server: str
    server_port: int
    protocol: int
    opcode: str
    internal_address: str
    internal_port: int
    external_address: str
    external_port: int
    peer_address: str | None
    peer_port: int | None
    nonce: bytes = field(repr=False)
    lifetime: int
    expires_at: float

    def __post_init__(self) -> None:
        _text("Call-ID", self.call_id)
        if self.leg not in _LEGS:
            raise InvalidRecord(f"leg {self.leg!r} is not one of {', '.join(_LEGS)}")
        if self.opcode not in _OPCODES:
            raise InvalidRecord(f"opcode {self.opcode!r} is not one of {', '.join(_OPCODES)}")
        for name in ("server", "internal_address", "external_address"):
            _text(name, getattr(self, name))
        _port("server_port", self.server_port)
        _port("internal_port", self.internal_port)
        _port("external_port", self.external_port)
        _port("peer_port", self.peer_port, optional=True)
        if (self.peer_address is None) != (self.peer_port is None):
            raise InvalidRecord("a peer needs both its address and its port, or neither")
        if self.opcode == "PEER" and self.peer_address is None:
            raise InvalidRecord("a PEER mapping names its remote peer (RFC 6887 section 12)")
        if isinstance(self.protocol, bool) or not 0 < self.protocol < 256:
            raise InvalidRecord(f"protocol {self.protocol!r} is not an IANA protocol number")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != _NONCE_LENGTH:
            raise InvalidRecord(f"a PCP mapping nonce is {_NONCE_LENGTH} octets")
        if isinstance(self.lifetime, bool) or not 0 < self.lifetime < 1 << 32:
            raise InvalidRecord(f"lifetime {self.lifetime!r} is not 1 s or more")
        _finite("expires_at", self.expires_at)


@dataclass(frozen=True)
class RelayRecord:
    """A relay allocation the gateway holds for one leg: its two ports on `relay_address`
    and the peer each admits ("host:port" as the relay shows it; None while unknown, e.g. the
    callee side before the answer), and when it lapses (wall clock). A relay dies with its
    process: a later run only forgets these."""

    holder: GatewayRun
    call_id: str
    leg: str
    relay_address: str
    caller_side_port: int
    callee_side_port: int
    caller_peer: str | None
    callee_peer: str | None
    expires_at: float

    def __post_init__(self) -> None:
        _text("Call-ID", self.call_id)
        if self.leg not in _LEGS:
            raise InvalidRecord(f"leg {self.leg!r} is not one of {', '.join(_LEGS)}")
        _text("relay_address", self.relay_address)
        _port("caller_side_port", self.caller_side_port)
        _port("callee_side_port", self.callee_side_port)
        _finite("expires_at", self.expires_at)


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


class SubscriberTable(Protocol):
    def add(self, subscriber: Subscriber) -> None:
        """Raises DuplicateSubscriber when the IMPI or an IMPU is taken."""

    def get(self, identity: str) -> Subscriber | None:
        """By IMPI or by any IMPU (any form: it is canonicalised first)."""

    def list(self) -> tuple[Subscriber, ...]:
        """Every subscriber, by IMPI."""

    def remove(self, impi: str) -> Subscriber:
        """Remove it and its bindings; raises UnknownSubscriber."""


class BindingTable(Protocol):
    def upsert(self, binding: Binding) -> tuple[Binding, ...]:
        """Add or replace; returns the bindings replaced: the one with the same contact and,
        for an RFC 5626 flow, the one with the same instance-id and reg-id (section 6).
        Raises UnknownSubscriber when no subscriber has the AOR."""

    def remove(self, aor: str, contact: str) -> Binding | None:
        """Remove one contact (Expires: 0), returning it when it was there."""

    def remove_all(self, aor: str) -> tuple[Binding, ...]:
        """Remove every contact of the AOR (Contact: *, RFC 3261 section 10.3 step 6)."""

    def list_for_aor(self, aor: str, now: float) -> tuple[Binding, ...]:
        """The unexpired bindings, highest q first (RFC 3261 section 20.10: q is a
        relative preference)."""

    def expire(self, now: float) -> tuple[Binding, ...]:
        """Remove every binding with expires_at <= now and return them."""


class SessionTable(Protocol):
    def create(self, session: Session) -> None:
        """Raises DuplicateSession when the Call-ID is taken."""

    def get(self, call_id: str) -> Session | None: ...

    def update(
        self,
        call_id: str,
        *,
        state: str | None = None,
        expires_at: float | None = None,
        details: JsonObject | None = None,
    ) -> Session:
        """Change the given fields; raises UnknownSession or SessionEnded."""

    def end(self, call_id: str, now: float) -> Session:
        """Mark it ended (idempotent: an ended session comes back unchanged)."""

    def list_active(self, now: float) -> tuple[Session, ...]:
        """Not ended and not expired, oldest first."""

    def expire(self, now: float) -> tuple[Session, ...]:
        """End every session with expires_at <= now and return them (so what they hold
        can be released)."""


class RuleSetTable(Protocol):
    def put(self, identity: str, body: str, *, etag: str, expires_at: float,
            now: float) -> StoredRuleSet:
        """Store the rule set of the subscriber `identity` (IMPI or any IMPU) in place of
        the one it had. Raises UnknownSubscriber."""

    def get(self, identity: str, now: float) -> StoredRuleSet | None:
        """The subscriber's unexpired rule set, None when it has none."""

    def remove(self, identity: str) -> StoredRuleSet | None:
        """Remove it (PUBLISH with Expires 0), returning it when there was one."""


class DecisionTable(Protocol):
    def record(self, decision: DecisionRecord) -> None:
        """Keep one decision (kept after the subscriber is removed: it is an audit)."""

    def list(self, subscriber: str, limit: int = 100) -> tuple[DecisionRecord, ...]:
        """The latest `limit` decisions whose callee is the subscriber (IMPI or any IMPU; all
        its public identities count), newest first."""


class AllocationTable(Protocol):
    """What connectivity gateways hold open, by run (`GatewayRun.run_id`) and leg."""

    def put_mapping(self, record: PcpMappingRecord) -> None:
        """Record a granted mapping, or replace the leg's record (a renewal, a new FILTER)."""

    def remove_mapping(self, run_id: str, call_id: str, leg: str) -> PcpMappingRecord | None:
        """Forget the leg's mapping (deleted, or lapsed), returning it when it was there."""

    def mappings(self, owner: str | None = None) -> tuple[PcpMappingRecord, ...]:
        """Every recorded mapping (of `owner`'s runs), oldest run first, then by Call-ID."""

    def put_relays(self, run_id: str, call_id: str, records: Sequence[RelayRecord]) -> None:
        """Replace what the run records for the call's relay allocations with `records`
        (each of `run_id` and `call_id`; none: the call holds no relay any more)."""

    def relays(self, owner: str | None = None) -> tuple[RelayRecord, ...]:
        """Every recorded relay allocation (of `owner`'s runs), ordered as `mappings`."""

    def forget_run(self, run_id: str, *, mappings: bool = False) -> int:
        """Forget the run's relay allocations (and its mappings too when `mappings`); how
        many records went."""

    def expire(self, now: float) -> int:
        """Forget every record with expires_at <= now (lapsed at the CGN or the relay
        anyway); how many went."""


class Store(Protocol):
    """The operator's state. Use as a context manager or call `close()`."""

    @property
    def subscribers(self) -> SubscriberTable: ...

    @property
    def bindings(self) -> BindingTable: ...

    @property
    def sessions(self) -> SessionTable: ...

    @property
    def rules(self) -> RuleSetTable: ...

    @property
    def decisions(self) -> DecisionTable: ...

    @property
    def allocations(self) -> AllocationTable: ...

    def secret(self, name: str, create: Callable[[], bytes]) -> bytes:
        """The stored secret `name`, storing `create()` first when there is none (e.g. the
        digest nonce key, so nonces stay valid across a restart)."""

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Backend(enum.StrEnum):
    SQLITE = "sqlite"


def open_store(config: StoreConfig) -> Store:
    """The store `config` ([store] of the operator configuration) describes."""
    if config.backend == Backend.SQLITE:
        from ims.store.sqlite import SqliteStore

        return SqliteStore(config.path)
    raise StoreUsageError(f"store backend {config.backend!r} is not available; use 'sqlite'")
