"""The REGISTER client: a UA's registration state machine (RFC 3261 section 10.2, section 22 for
the digest retry, RFC 3327 Path, RFC 3608 Service-Route, RFC 3455 P-Associated-URI, RFC 5626
instance-id / reg-id; re-registration timing per 3GPP TS 24.229 section 5.1.1.4.1).

Sans-IO: the caller feeds responses, timeouts and `now`, sends each `SendRequest` through its
transaction layer, and re-arms a timer from `get_timer()`. Events come out of `next_event()`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from ims.sip.dialog import create_initial_request, place_route_set
from ims.sip.digest import (
    DigestClient,
    DigestError,
    parse_challenges,
)
from ims.sip.errors import LocalProtocolError, ProtocolError
from ims.sip.headers import NameAddress, quote_string
from ims.sip.ids import IdSource
from ims.sip.message import Request, Response
from ims.sip.uri import SipUri, Uri

DEFAULT_EXPIRES = 3600
MAX_EXPIRES = 2**32 - 1  # section 20.19: delta-seconds

# Section 22 / RFC 7616 section 3.3: one retry with credentials per challenge, one more when
# the server says our nonce went stale; beyond that the server is refusing us.
MAX_CHALLENGE_RETRIES = 2


class InvalidRegistrationConfig(LocalProtocolError, ValueError):
    """A RegistrationConfig that cannot produce a valid REGISTER; the message names the field."""


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    """What to register. `registrar` is the Request-URI: the registrar's domain without user
    part (section 10.2). `route_set` is a pre-loaded route (the P-CSCF or outbound proxy, with
    `lr`). `instance_id` ("urn:uuid:...") and `reg_id` turn on RFC 5626 outbound."""

    registrar: SipUri
    aor: Uri
    contact: SipUri
    expires: int = DEFAULT_EXPIRES
    route_set: tuple[NameAddress, ...] = ()
    instance_id: str | None = None
    reg_id: int | None = None
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.registrar.user is not None:
            raise InvalidRegistrationConfig(
                f"registrar {self.registrar} must not have a user part (RFC 3261 section 10.2)"
            )
        if not 0 < self.expires <= MAX_EXPIRES:
            raise InvalidRegistrationConfig(f"expires must be 1..{MAX_EXPIRES}, not {self.expires}")
        if self.instance_id is not None and not self.instance_id.lower().startswith("urn:"):
            raise InvalidRegistrationConfig(
                f"instance_id must be a URN such as urn:uuid:..., not {self.instance_id!r} "
                "(RFC 5626 section 4.1)"
            )
        if self.reg_id is not None:
            if self.instance_id is None:
                raise InvalidRegistrationConfig("reg_id needs instance_id (RFC 5626 section 4.2)")
            if not 1 <= self.reg_id < 2**31:
                raise InvalidRegistrationConfig(f"reg_id must be 1..2**31-1, not {self.reg_id}")


class RegistrationState(enum.Enum):
    UNREGISTERED = "unregistered"
    REGISTERING = "registering"  # first REGISTER (and its 401/423 retries) in flight
    REGISTERED = "registered"
    REFRESHING = "refreshing"  # re-REGISTER in flight, the binding still stands
    UNREGISTERING = "unregistering"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send this REGISTER (through a new client transaction)."""

    request: Request


@dataclass(frozen=True, slots=True)
class Registered:
    """The registrar accepted the binding. `expires` is the granted lifetime in seconds,
    `expires_at` on the caller's clock. `service_route` is the route set to pre-load on
    requests (RFC 3608 section 6), `associated_uris` the identities registered with the AOR
    (RFC 3455 section 4.1), `outbound` whether the registrar applied RFC 5626."""

    expires: int
    expires_at: float
    service_route: tuple[NameAddress, ...]
    associated_uris: tuple[NameAddress, ...]
    outbound: bool


@dataclass(frozen=True, slots=True)
class Unregistered:
    """The binding is gone (a 200 to REGISTER with expires 0, or nothing was registered)."""


@dataclass(frozen=True, slots=True)
class RegistrationFailed:
    """The registrar refused, or no answer came (408). `retry_after` from a Retry-After header,
    for the caller's backoff (RFC 5626 section 4.5 suggests one)."""

    status_code: int
    reason: str
    retry_after: int | None = None


RegistrationEvent = SendRequest | Registered | Unregistered | RegistrationFailed


def refresh_interval(granted: int) -> float:
    """Seconds after a successful REGISTER to refresh it: 600 s before expiry for long
    registrations, half-way for short ones (3GPP TS 24.229 section 5.1.1.4.1)."""
    return float(granted - 600) if granted > 1200 else granted / 2


class RegisterClient:
    """Registers one contact for one AOR with one registrar and keeps it registered."""

    def __init__(
        self,
        config: RegistrationConfig,
        *,
        ids: IdSource,
        digest: DigestClient | None = None,
    ) -> None:
        self.config = config
        self._ids = ids
        self._digest = digest
        # Section 10.2: one Call-ID for every REGISTER of this client, CSeq incremented.
        self._call_id = ids.call_id()
        self._from_tag = ids.tag()
        self._cseq = 0
        self._expires = config.expires  # raised by a 423's Min-Expires (section 10.2.8)
        self._state = RegistrationState.UNREGISTERED
        self._events: deque[RegistrationEvent] = deque()
        self._pending: Request | None = None
        self._pending_fresh_auth = False  # carried credentials answering a fresh challenge
        self._challenge_retries = 0
        self._realms: dict[str, str] = {}  # credentials header name -> realm answered
        self._wanted: bool | None = None  # deferred register()/unregister() (section 10.2)
        self._refresh_at: float | None = None
        self.expires_at: float | None = None
        self.granted_expires: int | None = None
        self.service_route: tuple[NameAddress, ...] = ()
        self.associated_uris: tuple[NameAddress, ...] = ()

    # --- inputs ------------------------------------------------------------------------------

    @property
    def state(self) -> RegistrationState:
        return self._state

    @property
    def pending_request(self) -> Request | None:
        """The REGISTER awaiting its final response, if any."""
        return self._pending

    def register(self, now: float) -> None:
        """Register (or refresh now). Deferred while another REGISTER is in flight: section
        10.2 forbids a new one before the final response of the previous."""
        if self._pending is not None:
            self._wanted = True
            return
        registered = self._state in (RegistrationState.REGISTERED, RegistrationState.REFRESHING)
        self._send(self._expires, refresh=registered)

    def unregister(self, now: float) -> None:
        """Remove our binding (REGISTER with expires 0, section 10.2.2)."""
        if self._pending is not None:
            self._wanted = False
            return
        if self._state is RegistrationState.UNREGISTERED:
            self._events.append(Unregistered())
            return
        self._send(0, refresh=False)

    def receive_response(self, response: Response, now: float) -> None:
        """A response from the client transaction of the pending REGISTER. Responses that do
        not answer it (older CSeq, other Call-ID) and provisionals are ignored."""
        pending = self._pending
        if pending is None or response.status_code < 200:
            return
        try:
            if response.call_id != self._call_id or response.cseq != pending.cseq:
                return
        except ProtocolError:
            return
        self._pending = None
        code = response.status_code
        try:
            if 200 <= code < 300:
                self._accepted(pending, response, now)
            elif code in (401, 407):
                self._challenged(pending, response)
            elif code == 423:
                self._interval_too_brief(pending, response)
            else:
                self._fail(code, response.reason, _retry_after(response))
        except ProtocolError as exc:
            self._fail(code, f"malformed {code} response: {exc.reason}")
        self._run_deferred(now)

    def transaction_timeout(self, now: float) -> None:
        """The pending REGISTER's transaction timed out or could not be sent (section
        8.1.3.1: handled as a 408)."""
        if self._pending is None:
            return
        self._pending = None
        self._fail(408, "Request Timeout: no response from the registrar")
        self._run_deferred(now)

    def handle_timer(self, now: float) -> None:
        """Refresh the registration when its refresh time has come."""
        if (
            self._state is RegistrationState.REGISTERED
            and self._refresh_at is not None
            and now >= self._refresh_at
            and self._pending is None
        ):
            self._send(self._expires, refresh=True)

    def get_timer(self) -> float | None:
        """When `handle_timer` must next run (absolute, the caller's clock), or None."""
        if self._state is RegistrationState.REGISTERED and self._pending is None:
            return self._refresh_at
        return None

    def next_event(self) -> RegistrationEvent | None:
        return self._events.popleft() if self._events else None

    # --- internals ---------------------------------------------------------------------------

    def _contact(self) -> NameAddress:
        """Our Contact; the lifetime goes in the Expires header (section 10.2.1.1)."""
        na = NameAddress(self.config.contact)
        if self.config.instance_id is not None:
            # RFC 5626 section 4.1: +sip.instance carries the URN in <> as a quoted string.
            na = na.with_param("+sip.instance", quote_string(f"<{self.config.instance_id}>"))
        if self.config.reg_id is not None:
            na = na.with_param("reg-id", str(self.config.reg_id))
        return na

    def _send(
        self, expires: int, *, refresh: bool, fresh_auth: list[tuple[str, str]] | None = None
    ) -> None:
        config = self.config
        self._cseq += 1
        request_uri, _ = place_route_set(config.registrar, config.route_set)
        extra: list[tuple[str, str]] = [("Expires", str(expires)), ("Supported", "path")]
        if config.reg_id is not None:
            extra.append(("Supported", "outbound"))  # RFC 5626 section 4.2.1
        if fresh_auth is not None:
            extra.extend(fresh_auth)
            self._pending_fresh_auth = True
        else:
            extra.extend(self._reused_auth(request_uri))
            self._pending_fresh_auth = False
            self._challenge_retries = 0
        extra.extend(config.extra)
        request = create_initial_request(
            "REGISTER",
            config.registrar,
            from_=NameAddress(config.aor).with_param("tag", self._from_tag),
            to=config.aor,
            ids=self._ids,
            contact=self._contact(),
            route_set=config.route_set,
            call_id=self._call_id,
            cseq=self._cseq,
            extra=extra,
        )
        self._pending = request
        if expires == 0:
            self._state = RegistrationState.UNREGISTERING
        elif refresh:
            self._state = RegistrationState.REFRESHING
        else:
            self._state = RegistrationState.REGISTERING
        self._events.append(SendRequest(request))

    def _reused_auth(self, request_uri: Uri) -> list[tuple[str, str]]:
        """Credentials on a new REGISTER reusing the last nonce with the next nonce-count,
        saving the 401 round trip (RFC 7616 section 3.4; TS 24.229 section 5.1.1.4)."""
        if self._digest is None:
            return []
        out: list[tuple[str, str]] = []
        for name, realm in self._realms.items():
            value = self._digest.authorize_again(
                realm, method="REGISTER", digest_uri=str(request_uri)
            )
            if value is not None:
                out.append((name, value))
        return out

    def _accepted(self, request: Request, response: Response, now: float) -> None:
        if _requested_expires(request) == 0:
            self._clear_binding()
            self._state = RegistrationState.UNREGISTERED
            self._events.append(Unregistered())
            return
        granted = self._granted_expires(response, _requested_expires(request))
        if granted == 0:
            self._clear_binding()
            self._fail(response.status_code, "the registrar granted no lifetime to our contact")
            return
        self.granted_expires = granted
        self.expires_at = now + granted
        self._refresh_at = now + refresh_interval(granted)
        # RFC 3608 section 6: the Service-Route of the latest 200 replaces any earlier one.
        self.service_route = tuple(response.name_addrs("Service-Route"))
        self.associated_uris = tuple(response.name_addrs("P-Associated-URI"))
        requires = {v.strip().lower() for v in response.headers.get_all("Require")}
        self._state = RegistrationState.REGISTERED
        self._events.append(
            Registered(
                expires=granted,
                expires_at=self.expires_at,
                service_route=self.service_route,
                associated_uris=self.associated_uris,
                outbound="outbound" in requires,
            )
        )

    def _granted_expires(self, response: Response, requested: int) -> int:
        """Section 10.2.4: the 200 lists the bindings with their expires; ours is the Contact
        whose URI equals ours (section 19.1.4). Else the Expires header, else what we asked."""
        for contact in response.name_addrs("Contact"):
            if self.config.contact.equivalent(contact.uri):
                value = contact.param("expires")
                if value is not None:
                    if not value.isdigit() or not value.isascii():
                        raise ProtocolError(f"malformed Contact expires {value!r}")
                    return min(int(value), MAX_EXPIRES)
        header = response.header_int("Expires")
        return header if header is not None else requested

    def _challenged(self, request: Request, response: Response) -> None:
        code = response.status_code
        if self._digest is None:
            self._fail(code, f"{response.reason}: the registrar wants credentials; none are set")
            return
        if self._challenge_retries >= MAX_CHALLENGE_RETRIES:
            self._fail(
                code,
                f"{response.reason}: still challenged after {MAX_CHALLENGE_RETRIES} answers; "
                "check username and password",
            )
            return
        challenge_header, credentials_header = (
            ("WWW-Authenticate", "Authorization")
            if code == 401
            else ("Proxy-Authenticate", "Proxy-Authorization")
        )
        request_uri = request.uri
        try:
            challenges = parse_challenges(*response.headers.get_all(challenge_header))
            value = self._digest.authorize(
                challenges,
                method="REGISTER",
                digest_uri=str(request_uri),
                # A rejected reused nonce earns one fresh answer; a rejected fresh answer
                # without stale=true means the password is wrong.
                had_credentials=self._pending_fresh_auth,
            )
            realm = self._digest.choose(challenges).realm
        except DigestError as exc:
            self._fail(code, f"{response.reason}: {exc}")
            return
        self._realms[credentials_header] = realm
        self._challenge_retries += 1
        kept = [
            (n, v)
            for n, v in request.headers
            if n in ("Authorization", "Proxy-Authorization") and n != credentials_header
        ]
        self._send(
            _requested_expires(request),
            refresh=self._state is RegistrationState.REFRESHING,
            fresh_auth=[*kept, (credentials_header, value)],
        )

    def _interval_too_brief(self, request: Request, response: Response) -> None:
        requested = _requested_expires(request)
        minimum = response.header_int("Min-Expires", MAX_EXPIRES)
        if minimum is None or minimum <= requested:
            self._fail(423, f"{response.reason}: no usable Min-Expires (asked {requested} s)")
            return
        # Section 10.2.8: retry with an expiration at least Min-Expires; keep it for refreshes.
        self._expires = minimum
        self._send(minimum, refresh=self._state is RegistrationState.REFRESHING)

    def _fail(self, status_code: int, reason: str, retry_after: int | None = None) -> None:
        self._state = RegistrationState.FAILED
        self._refresh_at = None
        self._events.append(RegistrationFailed(status_code, reason, retry_after))

    def _clear_binding(self) -> None:
        self._refresh_at = None
        self.expires_at = None
        self.granted_expires = None
        self.service_route = ()
        self.associated_uris = ()

    def _run_deferred(self, now: float) -> None:
        wanted, self._wanted = self._wanted, None
        if wanted is None or self._pending is not None:
            if wanted is not None:
                self._wanted = wanted
            return
        if wanted:
            self.register(now)
        else:
            self.unregister(now)


def _requested_expires(request: Request) -> int:
    value = request.header_int("Expires")
    return 0 if value is None else value


def _retry_after(response: Response) -> int | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    head = value.split(";", 1)[0].split("(", 1)[0].strip()  # section 20.33: comment, params
    return int(head) if head.isdigit() and head.isascii() else None
