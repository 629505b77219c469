"""The registrar of the S-CSCF (RFC 3261 section 10.3), sans-IO.

`Registrar.register(request, now)` takes a REGISTER (as the S-CSCF's proxy core routed it) and
the wall-clock time, authenticates it with HTTP digest against the store (RFC 8760: SHA-256
and MD5), updates the bindings and returns the final response: the current contacts with
their lifetimes, Path echoed (RFC 3327), Service-Route (RFC 3608), P-Associated-URI (RFC 3455)
and, for an RFC 5626 flow, Require: outbound. The steps below are numbered as in 10.3.

With `metrics`, every answered REGISTER counts as accepted (2xx), challenged (401) or
rejected, and the registrations gauge follows `RegisteredContacts`.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable

from ims.config import ScscfConfig
from ims.metrics import OperatorMetrics
from ims.sip.digest import (
    DigestError,
    DigestServer,
    Failed,
    Ok,
    Stale,
    parse_credentials,
)
from ims.sip.errors import ProtocolError
from ims.sip.headers import NameAddress, split_list, unquote_string
from ims.sip.message import Request, Response, make_response
from ims.sip.uri import SipUri, TelUri
from ims.store import Binding, InvalidIdentity, Store, StoreError, Subscriber, canonical_aor

__all__ = ["RegisteredContacts", "Registrar", "subscriber_for"]

logger = logging.getLogger(__name__)


class RegisteredContacts:
    """The contacts registered through the registrars sharing this object (one operator
    process), for the registrations gauge.

    Counting the store would cost a scan of every subscriber per REGISTER; instead each 200
    reports the subscriber's whole binding set (RFC 3261 section 10.3 step 8 lists them
    all) and bindings leave at their expiry time. Bindings made by another process sharing
    the store count there, so the operator's total is the sum over its processes. Memory:
    the live bindings, plus one heap entry per refresh not yet due (at most max_expires old).
    """

    def __init__(self) -> None:
        self._live: dict[str, dict[tuple[str, str], float]] = {}  # IMPI -> (AOR, contact)
        self._due: list[tuple[float, str, str, str]] = []  # (expires_at, IMPI, AOR, contact)
        self._count = 0

    def update(self, impi: str, bindings: Iterable[Binding]) -> None:
        """The current bindings of subscriber `impi` (all of them: absent ones are gone)."""
        new = {(b.aor, b.contact): b.expires_at for b in bindings}
        old = self._live.pop(impi, {})
        self._count += len(new) - len(old)
        if new:
            self._live[impi] = new
        for (aor, contact), expires_at in new.items():
            if old.get((aor, contact)) != expires_at:
                heapq.heappush(self._due, (expires_at, impi, aor, contact))

    def count(self, now: float) -> int:
        """How many are registered at `now` (the expired ones dropped first)."""
        due = self._due
        while due and due[0][0] <= now:
            expires_at, impi, aor, contact = heapq.heappop(due)
            live = self._live.get(impi)
            # A refreshed or removed binding left a stale entry: only the current one counts.
            if live is not None and live.get((aor, contact)) == expires_at:
                del live[(aor, contact)]
                self._count -= 1
                if not live:
                    del self._live[impi]
        return self._count


class Registrar:
    """Bindings of this operator's subscribers, kept in `store`.

    `domains` are the Request-URI hosts this registrar is responsible for (step 1);
    `service_route` the Service-Route value for the 200 (the S-CSCF's URI with `lr` and the
    originating marker); `metrics` (optional) gets the outcome of each REGISTER and the
    count of `contacts` (shared by the registrars of one process).
    """

    def __init__(
        self,
        config: ScscfConfig,
        store: Store,
        digest: DigestServer,
        *,
        domains: Iterable[str],
        service_route: str,
        metrics: OperatorMetrics | None = None,
        contacts: RegisteredContacts | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.digest = digest
        self.domains = frozenset(d.lower().rstrip(".") for d in domains)
        self.service_route = service_route
        self.metrics = metrics
        self.contacts = contacts if contacts is not None else RegisteredContacts()

    def register(self, request: Request, now: float) -> Response:
        response = self._answer(request, now)
        if self.metrics is not None:
            status = response.status_code
            self.metrics.registration_attempt(
                "accepted" if 200 <= status < 300
                else "challenged" if status in (401, 407) else "rejected"
            )
            self.metrics.registration_changed(self.contacts.count(now))
        return response

    def _answer(self, request: Request, now: float) -> Response:
        try:
            return self._register(request, now)
        except InvalidIdentity as exc:
            return make_response(request, 400, f"Bad Request ({exc.defect})")
        except ProtocolError as exc:
            return make_response(request, exc.status_code, exc.reason)
        except StoreError as exc:
            logger.error("registrar store failure: %s", exc)
            return make_response(request, 500, "Server Internal Error (registration store)")

    def _register(self, request: Request, now: float) -> Response:
        # Step 1: the Request-URI names a domain of ours.
        uri = request.uri
        if not isinstance(uri, SipUri) or uri.host.lower().rstrip(".") not in self.domains:
            return make_response(request, 403, f"Forbidden (not a registrar for {uri})")
        # Step 3: authenticate (RFC 3261 section 22.4, RFC 8760).
        subscriber, failure = self._authenticate(request, now)
        if failure is not None:
            return failure
        assert subscriber is not None
        # Steps 4 and 5: the authenticated subscriber may register this AOR.
        aor = canonical_aor(str(request.to.uri))
        if aor not in subscriber.impus:
            return make_response(
                request, 403, f"Forbidden ({aor} is not a public identity of {subscriber.impi})"
            )
        contacts = request.headers.get_all("Contact")
        expires_header = request.header_int("Expires")
        # Step 6: Contact: * with Expires: 0 removes every binding, and only that form.
        if any(v.strip() == "*" for v in contacts):
            if len(contacts) != 1 or expires_header != 0:
                return make_response(
                    request, 400, "Bad Request (Contact: * needs Expires: 0 and no other Contact)"
                )
            for binding in self._bindings(subscriber, now):
                self.store.bindings.remove(binding.aor, binding.contact)
            return self._ok(request, subscriber, now)
        wanted = list(request.name_addrs("Contact"))
        # Step 7: the lifetimes; too brief ones get 423 with Min-Expires (10.3 step 7, 10.2.8).
        lifetimes: list[int] = []
        for contact in wanted:
            expires = _contact_expires(contact, expires_header, self.config.default_expires)
            if 0 < expires < self.config.min_expires:
                return make_response(
                    request, 423, "Interval Too Brief",
                    extra=[("Min-Expires", str(self.config.min_expires))],
                )
            lifetimes.append(min(expires, self.config.max_expires))
        path = tuple(request.headers.get_all("Path"))
        supports = tuple(
            t for v in request.headers.get_all("Supported") for t in split_list(v) if t
        )
        outbound = False
        existing = {b.contact: b for b in self._bindings(subscriber, now)}
        for contact, expires in zip(wanted, lifetimes, strict=True):
            key = str(contact.uri)
            old = existing.get(key)
            replayed = old is not None and old.call_id == request.call_id
            if replayed and old is not None and old.cseq >= request.cseq.number:
                # Step 7: an out-of-order REGISTER must not change the binding.
                return make_response(request, 500, "Server Internal Error (out-of-order CSeq)")
            if expires == 0:
                if old is not None:
                    self.store.bindings.remove(old.aor, key)
                continue
            instance = contact.param("+sip.instance")
            reg_id_text = contact.param("reg-id")
            reg_id: int | None = None
            # RFC 5626 section 6: outbound applies when the first Path (the edge proxy's)
            # carries `ob` and the Contact has instance-id and reg-id.
            if instance is not None and reg_id_text is not None and _first_path_has_ob(request):
                if not reg_id_text.isdigit():
                    return make_response(request, 400, "Bad Request (reg-id is not a number)")
                reg_id = int(reg_id_text)
                outbound = True
            q_text = contact.param("q")
            self.store.bindings.upsert(
                Binding(
                    aor=aor,
                    contact=key,
                    expires_at=now + expires,
                    call_id=request.call_id,
                    cseq=request.cseq.number,
                    q=_qvalue(q_text),
                    path=path,
                    instance_id=unquote_string(instance) if instance is not None else None,
                    reg_id=reg_id,
                    registered_via=path[0] if path else None,
                    supports=supports,
                )
            )
        logger.info("registered %s (%d contact%s)", aor, len(wanted), "" if len(wanted) == 1
                    else "s")
        return self._ok(request, subscriber, now, outbound=outbound)

    def _authenticate(
        self, request: Request, now: float
    ) -> tuple[Subscriber | None, Response | None]:
        values = request.headers.get_all("Authorization")
        credentials = []
        for value in values:
            try:
                credentials.append(parse_credentials(value))
            except DigestError as exc:
                return None, make_response(request, 400, f"Bad Request ({exc})")
        mine = self.digest.select(credentials)
        if mine is None:
            return None, self._challenge(request, now)
        subscriber = self.store.subscribers.get(mine.username)
        secret = subscriber.secret_for(self.digest.config.realm) if subscriber else None
        verdict = self.digest.verify(
            mine, method=request.method, request_uri=str(request.uri), secret=secret,
            now=now, body=request.body,
        )
        if isinstance(verdict, Stale):
            return None, self._challenge(request, now, stale=True)
        if isinstance(verdict, Failed):
            logger.info("REGISTER from %s refused: %s (%s)", mine.username, verdict.reason.value,
                        verdict.detail)
            return None, make_response(
                request, 403, f"Forbidden (authentication failed: {verdict.reason.value})"
            )
        assert isinstance(verdict, Ok) and subscriber is not None
        return subscriber, None

    def _challenge(self, request: Request, now: float, *, stale: bool = False) -> Response:
        extra = [("WWW-Authenticate", v) for v in self.digest.challenge_values(now, stale=stale)]
        return make_response(request, 401, None, extra=extra)

    def _bindings(self, subscriber: Subscriber, now: float) -> list[Binding]:
        return [b for impu in subscriber.impus for b in self.store.bindings.list_for_aor(impu, now)]

    def _ok(
        self, request: Request, subscriber: Subscriber, now: float, *, outbound: bool = False
    ) -> Response:
        extra: list[tuple[str, str]] = []
        bindings = self._bindings(subscriber, now)
        self.contacts.update(subscriber.impi, bindings)
        for binding in bindings:
            remaining = max(0, int(binding.expires_at - now))
            extra.append(("Contact", f"<{binding.contact}>;expires={remaining}"))
        # RFC 3327 section 5.3: echo Path only to a UA that supports it.
        if "path" in {t for v in request.headers.get_all("Supported") for t in split_list(v)}:
            extra.extend(("Path", v) for v in request.headers.get_all("Path"))
        extra.append(("Service-Route", self.service_route))  # RFC 3608 section 6
        # RFC 3455 section 4.1: the identities registered with the AOR, the default first.
        extra.extend(("P-Associated-URI", f"<{impu}>") for impu in _default_first(subscriber))
        if outbound:
            extra.append(("Require", "outbound"))  # RFC 5626 section 6
        return make_response(request, 200, None, extra=extra)


def _contact_expires(contact: NameAddress, header: int | None, default: int) -> int:
    value = contact.param("expires")
    if value is not None:
        if not value.isdigit() or not value.isascii():
            raise ProtocolError(f"Bad Request (Contact expires {value!r} is not a number)")
        return int(value)
    return header if header is not None else default


def _qvalue(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        q = float(text)
    except ValueError:
        raise ProtocolError(f"Bad Request (q {text!r} is not a qvalue)") from None
    if not 0.0 <= q <= 1.0:
        raise ProtocolError(f"Bad Request (q {text!r} is outside 0 to 1)")
    return q


def _first_path_has_ob(request: Request) -> bool:
    paths = request.name_addrs("Path")
    return bool(paths) and isinstance(paths[0].uri, SipUri) and paths[0].uri.param("ob") is not None


def _default_first(subscriber: Subscriber) -> list[str]:
    """The subscriber's IMPUs, a SIP URI first (TS 24.229: the default public identity is the
    first SIP URI), then the others in stored order."""
    sip = [u for u in subscriber.impus if u.startswith("sip:")]
    return sip[:1] + [u for u in subscriber.impus if u not in sip[:1]]


def subscriber_for(store: Store, uri: object) -> Subscriber | None:
    """The subscriber a Request-URI (sip:, sips: or tel:) reaches, None when none. A SIP URI
    whose user part is a global number (user=phone, RFC 3261 section 19.1.6) also matches the
    tel: form."""
    candidates: list[str] = []
    if isinstance(uri, TelUri):
        if uri.is_global:
            candidates.append(f"tel:{uri.e164}")
    elif isinstance(uri, SipUri) and uri.user:
        candidates.append(str(uri))
        user = uri.user.split(";", 1)[0]
        if user.startswith("+") and user[1:].replace("-", "").replace(".", "").isdigit():
            candidates.append("tel:" + "".join(c for c in user if c.isdigit() or c == "+"))
    for text in candidates:
        try:
            found = store.subscribers.get(text)
        except InvalidIdentity:
            continue
        if found is not None:
            return found
    return None
