"""The border (I-CSCF / IBCF): entry and exit between operators, a router for ProxyCore.

Ingress (a request from outside): admitted only from a configured peer's `admit_from`
addresses (else 403 "Forbidden (not a peer operator)"); its P-Asserted-Identity is kept, the
peer being in our trust domain (RFC 3325 section 2.3); initial requests go to the S-CSCF,
in-dialog ones along the route the border's Record-Route token carries.

Egress (a request from our own elements): the peer operator is located through DNS
(ims.dns.locator) in the order of docs/extension.md section 4: a tel: Request-URI by ENUM,
whose SIP URI wins over Target-MNO (number portability), Target-MNO only when ENUM has no
record; a sip: Request-URI by its domain, which a Target-MNO naming another operator
contradicts (400). The request goes to the located border targets one after the other (RFC
3263 section 4.3). Locator failures map to final responses: no such number 404, no such
operator 604, no usable target or no DNS answer 503 with Retry-After. A `Require: ueconnect`
request leaves with `Proxy-Require: ueconnect` (section 3), so that a peer operator without
the extension must refuse it (420, RFC 3261 section 16.3 item 5); such a 420 reaches the
caller as the section 7 outcome "callee's operator lacks the extension" (cause 6).

Topology hiding (both ways): no Via, Record-Route or Path of an internal host leaves the
operator. Egress requests carry only the border's Via (the proxy core rebuilds the Vias of
the responses); the internal Record-Route entries travel inside the border's own
Record-Route URI as a sealed token (its user part), and so do those of a response leaving
through an ingress request's path. A request coming back in with such a token in its Route
gets the internal entries back, statelessly.

TLS legs (docs/operator-guide.md, "TLS between operators"): when the request went to or came
from a peer over TLS, the border record-routes twice (RFC 5658), once with its
plain URI for its own operator's side and once, towards the peer, with
`sip:...;transport=tls` at its tls: listener, so that ACK, BYE and re-INVITEs cross on TLS
too (RFC 3261 section 16.6 item 4; `sips:` is not used: it would demand TLS on every hop to
the UE, RFC 5630). The token records that the dialog was set up over TLS; an
in-dialog request from the peer carrying it over another transport is refused (403).

With `metrics`, each locator call counts as a DNS lookup of its kind ("plmn" for Target-MNO,
"enum", "rfc3263" for a domain's NAPTR/SRV/A walk), failed or not, and each refusal counts
by reason ("not-a-peer", "no-agreement", "route-token", "not-tls").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import TypeVar

from ims.config import BorderConfig
from ims.dns.errors import (
    DnsUsageError,
    LookupFailure,
    NoSuchNumber,
    NoSuchOperator,
)
from ims.dns.locator import Locator
from ims.dns.plmn import mno_domain
from ims.extension import OPTION_TAG, option_tags, requires_extension, target_mno_of
from ims.metrics import OperatorMetrics
from ims.pcscf import open_token, pop_own_route, seal_token
from ims.permission.outcomes import REASON_PROTOCOL, Outcome, response_of
from ims.sip.address import Address
from ims.sip.errors import ParseError, ProtocolError
from ims.sip.headers import NameAddress, reason_cause, split_list
from ims.sip.message import Request, Response, make_response
from ims.sip.proxy import Defer, Forward, Target
from ims.sip.uri import SipUri, TelUri, Uri, parse_uri

__all__ = ["Border", "DeferWork", "lacking_operator", "target_mno_contradiction"]

logger = logging.getLogger(__name__)

DeferWork = Callable[[Request, Awaitable[Forward | Response]], Defer]
"""Runs the awaitable as a task and resumes the proxy core with its decision."""

_RETRY_AFTER = 30  # seconds a caller should wait after a 503 from a peer's outage

_T = TypeVar("_T")


class Border:
    """The router of one border instance named `uri`.

    `internal_hosts` are the operator's element addresses (their requests are egress),
    `scscf` where ingress requests go, `home_domain` / `plmn` who we are, `key` seals the
    Record-Route tokens, `defer` runs the DNS lookups; `metrics` (optional) counts lookups
    and refusals.
    """

    def __init__(
        self,
        uri: SipUri,
        *,
        config: BorderConfig,
        home_domain: str,
        internal_hosts: Iterable[str],
        scscf: Address,
        locator: Locator,
        key: bytes,
        defer: DeferWork,
        retry_after: int = _RETRY_AFTER,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.uri = uri
        self.config = config
        self.home_domain = home_domain.lower()
        self.internal_hosts = frozenset(internal_hosts)
        self.scscf = scscf
        self.locator = locator
        self.key = key
        self.defer = defer
        self.retry_after = retry_after
        self.metrics = metrics
        self.peer_domains = frozenset(p.domain for p in config.peers)
        self.tls_uri = _tls_uri(uri, config)

    def __call__(self, request: Request, source: Address) -> Forward | Response | Defer:
        request, own = self._pop_own_routes(request)
        if source.host in self.internal_hosts:
            return self._egress(request)
        peer = self.config.peer_for_source(source.host)
        if peer is None:
            logger.warning("border %s: %s from %s refused: not a peer operator", self.uri,
                           request.method, source)
            self._refused("not-a-peer")
            return make_response(request, 403, "Forbidden (not a peer operator)")
        return self._ingress(request, own, peer.name, source)

    def _pop_own_routes(self, request: Request) -> tuple[Request, NameAddress | None]:
        """Remove the top Route entries naming this border, at its plain URI or its tls:
        listener (we may have record-routed twice, RFC 5658); the one returned is
        the entry with our token, if any (the proxy core removed plain top entries already)."""
        own: NameAddress | None = None
        for me in (self.uri, self.tls_uri, self.uri):
            if me is None:
                continue
            request, popped = pop_own_route(request, me)
            if popped is not None and (own is None or not _user_of(own)):
                own = popped
        return request, own

    def _is_mine(self, uri: Uri) -> bool:
        return _names(uri, self.uri) or (self.tls_uri is not None and _names(uri, self.tls_uri))

    def _is_plain_mine(self, uri: Uri) -> bool:
        """Our second Record-Route entry (RFC 5658): ours, without a token."""
        return self._is_mine(uri) and isinstance(uri, SipUri) and not uri.user

    # -- ingress ---------------------------------------------------------------------------

    def _ingress(
        self, request: Request, own: NameAddress | None, peer: str, source: Address
    ) -> Forward | Response:
        over_tls = source.transport.upper() == "TLS"
        if request.to.tag is not None or request.method == "ACK":
            if own is None or not isinstance(own.uri, SipUri) or not own.uri.user:
                self._refused("route-token")
                return make_response(request, 403, "Forbidden (no route token into this operator)")
            opened = self._open_route(own.uri.user)
            if opened is None:
                self._refused("route-token")
                return make_response(request, 403, "Forbidden (invalid route token)")
            internal, tls = opened
            if tls and not over_tls:
                # The dialog was set up over TLS with this peer: a request of it on another
                # transport is admitted by source address only, which TLS was there to avoid.
                logger.warning("border %s: in-dialog %s from peer %s refused: came over %s for "
                               "a dialog set up over TLS", self.uri, request.method, peer,
                               source.transport)
                self._refused("not-tls")
                return make_response(
                    request, 403,
                    f"Forbidden (dialog set up over TLS; in-dialog {request.method} "
                    f"came over {_phrase_safe(source.transport)})")
            routes = [*internal, *request.headers.get_all("Route")]
            edited = request.with_headers(request.headers.replaced("Route", routes))
            return Forward((Target(edited.uri),), request=edited)
        logger.info("border %s: %s for %s from peer %s", self.uri, request.method, request.uri,
                    peer)
        # A peer never preloads a route into our network: the S-CSCF decides.
        headers = request.headers.without("Route", "P-Preferred-Identity")
        tls = over_tls and self.tls_uri is not None
        if tls:
            assert self.tls_uri is not None
            # RFC 5658: in from the peer on TLS, on to our S-CSCF on UDP: our
            # peer-facing entry first, the proxy core puts our plain one above it.
            headers = headers.prepended("Record-Route", f"<{self.tls_uri.with_param('lr')}>")
        edited = request.with_headers(headers)
        return Forward(
            (Target(edited.uri, self.scscf),),
            record_route=True,
            request=edited,
            rewrite_response=self._fold_tls_response if tls else self._fold_response,
        )

    def _fold_tls_response(self, response: Response) -> Response:
        return self._fold_response(response, tls=True)

    def _fold_response(self, response: Response, *, tls: bool = False) -> Response:
        """A response leaving through an ingress request's path: the internal Record-Route
        entries (before ours) go into our entry's token, nearest first; with `tls` the entry
        is our tls: listener's and the token says so."""
        values = response.headers.get_all("Record-Route")
        if not values:
            return response
        entries = response.name_addrs("Record-Route")
        index = next((i for i, e in enumerate(entries) if self._is_mine(e.uri)), None)
        if index is None:
            return response
        end = index + 1
        while end < len(entries) and self._is_plain_mine(entries[end].uri):
            end += 1  # our second entry (RFC 5658): the peer sees the token entry only
        internal = [values[i] for i in reversed(range(index))]
        mine = f"<{self._token_uri(internal, tls=tls)}>"
        rest = values[end:]
        return response.with_headers(response.headers.replaced("Record-Route", [mine, *rest]))

    # -- egress ----------------------------------------------------------------------------

    def _egress(self, request: Request) -> Forward | Response | Defer:
        if request.to.tag is not None or request.method == "ACK" or "Route" in request.headers:
            # In a dialog: along the route set, with only our Via leaving.
            return Forward((Target(request.uri),), request=request, hide_vias=True)
        return self.defer(request, self._locate(request))

    async def _locate(self, request: Request) -> Forward | Response:
        """RFC 3263 / RFC 6116: where the peer operator's border is, in the order of
        docs/extension.md section 4."""
        uri: Uri = request.uri
        mno = None
        mnc_lengths = self.locator.config.mnc_lengths
        try:
            mno = target_mno_of(request)
            if isinstance(uri, TelUri):
                # Section 4: ENUM first; a ported number's record names the operator that
                # serves it now, whatever the caller believed (RFC 6116, RFC 4769).
                try:
                    found: Uri | None = parse_uri(
                        await self._lookup("enum", self.locator.enum_lookup(uri.e164)))
                except NoSuchNumber:
                    if mno is None:
                        raise
                    found = None
                if isinstance(found, SipUri):
                    uri = found
                    domain = uri.host.lower()
                    if mno is not None:
                        # Only worth a log line: ENUM decided, even for a Target-MNO
                        # naming an MCC we have no MNC length for.
                        logger.info("border %s: ENUM puts %s at %s (Target-MNO: %s)",
                                    self.uri, request.uri, domain, mno.mno_id)
                    targets = await self._lookup("rfc3263", self.locator.locate(domain))
                elif mno is not None:
                    domain = mno_domain(mno.mno_id, mnc_lengths)
                    targets = await self._lookup(
                        "plmn", self.locator.locate_operator(mno.mno_id))
                else:
                    return make_response(request, 404, "Not Found (ENUM gave no SIP URI)")
            elif isinstance(uri, SipUri):
                contradiction = target_mno_contradiction(request, mnc_lengths)
                if contradiction is not None:
                    return contradiction
                domain = uri.host.lower()
                targets = await self._lookup("rfc3263", self.locator.locate(domain))
            else:
                return make_response(request, 416, "Unsupported URI Scheme")
        except NoSuchNumber as exc:
            cause = f"no such number {exc.e164}"
            if mno is None:
                # docs/extension.md section 4: without an ENUM record only Target-MNO could
                # have named the operator; say so, the caller can add it.
                cause += " in ENUM and no Target-MNO header"
            return self._failed(request, 404, "Not Found", cause)
        except NoSuchOperator as exc:
            return self._failed(request, 604, "Does Not Exist Anywhere",
                                f"no operator {exc.mno_id}")
        except LookupFailure as exc:
            return self._failed(request, 503, "Service Unavailable", str(exc), retry=True)
        except (DnsUsageError, ParseError) as exc:
            reason = exc.reason if isinstance(exc, ProtocolError) else str(exc)
            return self._failed(request, 400, "Bad Request", reason)
        domain = domain.rstrip(".")
        if domain == self.home_domain:
            return self._failed(request, 404, "Not Found", "no such subscriber here")
        if domain not in self.peer_domains:
            self._refused("no-agreement")
            return self._failed(request, 403, "Forbidden",
                                f"no interconnect agreement with {domain}")
        # A peer whose certificate we can check (tls_fingerprint, tls_ca) is reached over TLS
        # only, its SIPS+D2T / _sips._tcp targets (RFC 3263 section 4.1), never downgraded;
        # any other peer over UDP or TCP (docs/operator-guide.md, "TLS between operators").
        secure = any(p.domain == domain and (p.tls_fingerprint or p.tls_ca)
                     for p in self.config.peers)
        usable = ("tls",) if secure else ("udp", "tcp")
        hops = [
            Target(uri, Address(t.transport.upper(), t.address, t.port))
            for t in targets
            if t.transport in usable
        ]
        if not hops:
            return self._failed(request, 503, "Service Unavailable",
                                f"no {'TLS' if secure else 'UDP or TCP'} border at {domain}",
                                retry=True)
        logger.info("border %s: %s for %s to %s via %s", self.uri, request.method, uri, domain,
                    ", ".join(str(t.next_hop) for t in hops))
        internal = request.headers.get_all("Record-Route")
        headers = request.headers.without("Record-Route", "Route", "P-Preferred-Identity")
        tls = secure and self.tls_uri is not None
        if tls:
            # RFC 5658: in from our S-CSCF on UDP, on to the peer on TLS: our plain
            # entry first, the proxy core puts the tls: one (with the token) above it.
            headers = headers.appended("Record-Route", f"<{self.uri.with_param('lr')}>")
        rewrite = self._unfold_response
        if requires_extension(request):
            # Section 3: the peer operator's proxies must support the extension, or refuse.
            if OPTION_TAG not in option_tags(request, "Proxy-Require"):
                headers = headers.appended("Proxy-Require", OPTION_TAG)
            rewrite = self._unfold_lacking_response
        edited = request.with_headers(headers)
        exhausted = self._failed(request, 503, "Service Unavailable",
                                 f"no border of {domain} answered", retry=True, log=False)
        return Forward(
            tuple(hops),
            record_route=True,
            record_route_uri=self._token_uri(internal, tls=tls),
            request=edited,
            hide_vias=True,
            rewrite_response=rewrite,
            failover=True,
            exhausted=exhausted,
        )

    def _unfold_lacking_response(self, response: Response) -> Response:
        """`_unfold_response` for a request we sent with `Proxy-Require: ueconnect`: a peer's
        420 naming our tag becomes the cause-6 refusal (section 7)."""
        lacking = lacking_operator(response)
        if lacking is not response:
            logger.info("border %s: the peer operator lacks %s (420 %s)", self.uri, OPTION_TAG,
                        response.reason)
        return self._unfold_response(lacking)

    def _unfold_response(self, response: Response) -> Response:
        """A response to an egress request coming back in: our entry's internal Record-Route
        entries come back after it, for the caller's route set."""
        values = response.headers.get_all("Record-Route")
        if not values:
            return response
        entries = response.name_addrs("Record-Route")
        for i, entry in enumerate(entries):
            if self._is_mine(entry.uri) and isinstance(entry.uri, SipUri) and entry.uri.user:
                internal = self._open(entry.uri.user)
                if internal is None:
                    raise ProtocolError("Record-Route token of ours was altered")
                end = i + 1
                while end < len(entries) and self._is_plain_mine(entries[end].uri):
                    end += 1  # our plain entry below the tls: one (RFC 5658)
                restored = [*values[:end], *internal, *values[end:]]
                return response.with_headers(
                    response.headers.replaced("Record-Route", restored)
                )
        return response

    async def _lookup(self, kind: str, lookup: Awaitable[_T]) -> _T:
        """Await a locator call, counting it as a DNS lookup of `kind`."""
        try:
            result = await lookup
        except LookupFailure:
            if self.metrics is not None:
                self.metrics.dns_lookup(kind, ok=False)
            raise
        if self.metrics is not None:
            self.metrics.dns_lookup(kind, ok=True)
        return result

    def _refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.border_refused(reason)

    def _failed(
        self,
        request: Request,
        status: int,
        phrase: str,
        cause: str,
        *,
        retry: bool = False,
        log: bool = True,
    ) -> Response:
        if log:
            logger.info("border %s: %s for %s: %d %s", self.uri, request.method, request.uri,
                        status, cause)
        extra = [("Retry-After", str(self.retry_after))] if retry else []
        return make_response(request, status, f"{phrase} ({_phrase_safe(cause)})", extra=extra)

    # -- tokens ----------------------------------------------------------------------------

    def _token_uri(self, internal: list[str], *, tls: bool = False) -> SipUri:
        """Our Record-Route URI carrying the sealed internal entries; with `tls`, at our tls:
        listener with `transport=tls` (RFC 5630: hop-by-hop TLS is `sip:` with
        transport=tls; `sips:` would ask for TLS to the UE), the token marking the dialog."""
        document: object = {"rr": internal, "tls": True} if tls else internal
        payload = json.dumps(document, separators=(",", ":")).encode("utf-8")
        token = seal_token(self.key, payload)
        if tls and self.tls_uri is not None:
            return replace(self.tls_uri, user=token).with_param("lr")
        return SipUri(host=self.uri.host, port=self.uri.port, user=token, params=(("lr", None),))

    def _open(self, token: str) -> list[str] | None:
        opened = self._open_route(token)
        return None if opened is None else opened[0]

    def _open_route(self, token: str) -> tuple[list[str], bool] | None:
        """The internal entries a token of ours carries and whether its dialog was set up
        over TLS; None when it is not ours or was altered."""
        payload = open_token(self.key, token)
        if payload is None:
            return None
        try:
            document = json.loads(payload)
        except ValueError:
            return None
        tls = isinstance(document, dict) and document.get("tls") is True
        values = document.get("rr") if isinstance(document, dict) else document
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return None
        return values, tls


def target_mno_contradiction(
    request: Request, mnc_lengths: Mapping[str, int]
) -> Response | None:
    """docs/extension.md section 4: a sip: Request-URI's domain names the peer operator, and
    a Target-MNO naming another operator makes the request 400; None when they agree, when
    either is absent, or for a tel: Request-URI (ENUM decides there). Raises InvalidTargetMno
    (400) for a malformed Target-MNO."""
    uri = request.uri
    mno = target_mno_of(request)
    if mno is None or not isinstance(uri, SipUri):
        return None
    domain = uri.host.lower().rstrip(".")
    try:
        named = mno_domain(mno.mno_id, mnc_lengths)
    except DnsUsageError as exc:
        return make_response(request, 400, f"Bad Request ({_phrase_safe(str(exc))})")
    if named == domain:
        return None
    return make_response(
        request, 400,
        _phrase_safe(f"Bad Request (Target-MNO contradicts the Request-URI: {mno.mno_id} is "
                     f"not {domain})"),
    )


def lacking_operator(response: Response) -> Response:
    """docs/extension.md sections 3 and 7: a 420 whose Unsupported names `ueconnect` and that
    carries no Reason of ours came from a peer operator without the extension (a proxy
    refusing our Proxy-Require, RFC 3261 section 16.3 item 5, or a stock UE behind it
    refusing Require, section 8.2.2.3): the caller gets cause 6. A 420 with our Reason (the
    peer's cause 5, callee lacks it) and any other response are returned as they are."""
    if response.status_code != 420:
        return response
    unsupported = [t for v in response.headers.get_all("Unsupported") for t in split_list(v)]
    if OPTION_TAG not in unsupported:
        return response
    if reason_cause(response.headers.get_all("Reason"), REASON_PROTOCOL) is not None:
        return response
    final = response_of(Outcome.OPERATOR_LACKS_EXTENSION)
    assert final.reason is not None
    headers = response.headers.appended("Reason", final.reason)
    return Response(final.status_code, final.reason_phrase, headers, response.body,
                    response.version)


def _tls_uri(uri: SipUri, config: BorderConfig) -> SipUri | None:
    """`sip:host:port;transport=tls` of the tls: listener of the border instance named `uri`:
    the one on its host, else (an advertised host name) the only one there is."""
    listeners = [a for a in config.listen if a.transport.upper() == "TLS"]
    same_host = [a for a in listeners if a.host == uri.host_for_connect]
    if same_host:
        chosen = same_host[0]
    elif len(listeners) == 1 and config.advertised_host is not None:
        chosen = listeners[0]
    else:
        return None
    return SipUri(host=uri.host, port=chosen.port, params=(("transport", "tls"),))


def _user_of(entry: NameAddress) -> str | None:
    return entry.uri.user if isinstance(entry.uri, SipUri) else None


def _names(uri: Uri, me: SipUri) -> bool:
    if not isinstance(uri, SipUri):
        return False
    port = uri.port if uri.port is not None else 5060
    return uri.host.lower() == me.host.lower() and port == (me.port or 5060)


def _phrase_safe(text: str) -> str:
    """Printable, one line, bounded: fit for a Reason-Phrase (RFC 3261 section 25.1)."""
    return "".join(c if c.isprintable() else "?" for c in text)[:120]
