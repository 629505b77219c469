"""The border (I-CSCF / IBCF): entry and exit between operators, a router for ProxyCore.

Ingress (a request from outside): admitted only from a configured peer's `admit_from`
addresses (else 403 "Forbidden (not a peer operator)"); its P-Asserted-Identity is kept, the
peer being in our trust domain (RFC 3325 section 2.3); initial requests go to the S-CSCF,
in-dialog ones along the route the border's Record-Route token carries.

Egress (a request from our own elements): the peer operator is located through DNS
(ims.dns.locator) from Target-MNO, else ENUM for a tel: Request-URI, else the SIP URI's
domain; the request goes to the located border targets one after the other (RFC 3263
section 4.3). Locator failures map to final responses: no such number 404, no such operator
604, no usable target or no DNS answer 503 with Retry-After.

Topology hiding (both ways): no Via, Record-Route or Path of an internal host leaves the
operator. Egress requests carry only the border's Via (the proxy core rebuilds the Vias of
the responses); the internal Record-Route entries travel inside the border's own
Record-Route URI as a sealed token (its user part), and so do those of a response leaving
through an ingress request's path. A request coming back in with such a token in its Route
gets the internal entries back, statelessly.

With `metrics`, each locator call counts as a DNS lookup of its kind ("plmn" for Target-MNO,
"enum", "rfc3263" for a domain's NAPTR/SRV/A walk), failed or not, and each refusal counts
by reason ("not-a-peer", "no-agreement", "route-token").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
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
from ims.extension import target_mno_of
from ims.metrics import OperatorMetrics
from ims.pcscf import open_token, pop_own_route, seal_token
from ims.sip.address import Address
from ims.sip.errors import ParseError, ProtocolError
from ims.sip.headers import NameAddress
from ims.sip.message import Request, Response, make_response
from ims.sip.proxy import Defer, Forward, Target
from ims.sip.uri import SipUri, TelUri, Uri, parse_uri

__all__ = ["Border", "DeferWork"]

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

    def __call__(self, request: Request, source: Address) -> Forward | Response | Defer:
        request, own = pop_own_route(request, self.uri)
        if source.host in self.internal_hosts:
            return self._egress(request)
        peer = self.config.peer_for_source(source.host)
        if peer is None:
            logger.warning("border %s: %s from %s refused: not a peer operator", self.uri,
                           request.method, source)
            self._refused("not-a-peer")
            return make_response(request, 403, "Forbidden (not a peer operator)")
        return self._ingress(request, own, peer.name)

    # -- ingress ---------------------------------------------------------------------------

    def _ingress(self, request: Request, own: NameAddress | None, peer: str) -> Forward | Response:
        if request.to.tag is not None or request.method == "ACK":
            if own is None or not isinstance(own.uri, SipUri) or not own.uri.user:
                self._refused("route-token")
                return make_response(request, 403, "Forbidden (no route token into this operator)")
            internal = self._open(own.uri.user)
            if internal is None:
                self._refused("route-token")
                return make_response(request, 403, "Forbidden (invalid route token)")
            routes = [*internal, *request.headers.get_all("Route")]
            edited = request.with_headers(request.headers.replaced("Route", routes))
            return Forward((Target(edited.uri),), request=edited)
        logger.info("border %s: %s for %s from peer %s", self.uri, request.method, request.uri,
                    peer)
        # A peer never preloads a route into our network: the S-CSCF decides.
        edited = request.with_headers(
            request.headers.without("Route", "P-Preferred-Identity")
        )
        return Forward(
            (Target(edited.uri, self.scscf),),
            record_route=True,
            request=edited,
            rewrite_response=self._fold_response,
        )

    def _fold_response(self, response: Response) -> Response:
        """A response leaving through an ingress request's path: the internal Record-Route
        entries (before ours) go into our entry's token, nearest first."""
        values = response.headers.get_all("Record-Route")
        if not values:
            return response
        entries = response.name_addrs("Record-Route")
        index = next((i for i, e in enumerate(entries) if _names(e.uri, self.uri)), None)
        if index is None:
            return response
        internal = [values[i] for i in reversed(range(index))]
        mine = f"<{self._token_uri(internal)}>"
        rest = values[index + 1:]
        return response.with_headers(response.headers.replaced("Record-Route", [mine, *rest]))

    # -- egress ----------------------------------------------------------------------------

    def _egress(self, request: Request) -> Forward | Response | Defer:
        if request.to.tag is not None or request.method == "ACK" or "Route" in request.headers:
            # In a dialog: along the route set, with only our Via leaving.
            return Forward((Target(request.uri),), request=request, hide_vias=True)
        return self.defer(request, self._locate(request))

    async def _locate(self, request: Request) -> Forward | Response:
        """RFC 3263 / RFC 6116: where the peer operator's border is."""
        uri: Uri = request.uri
        mno = None
        try:
            mno = target_mno_of(request)
            if mno is not None:
                domain = mno_domain(mno.mno_id, self.locator.config.mnc_lengths)
                targets = await self._lookup("plmn", self.locator.locate_operator(mno.mno_id))
            elif isinstance(uri, TelUri):
                uri = parse_uri(await self._lookup("enum", self.locator.enum_lookup(uri.e164)))
                if not isinstance(uri, SipUri):
                    return make_response(request, 404, "Not Found (ENUM gave no SIP URI)")
                domain = uri.host.lower()
                targets = await self._lookup("rfc3263", self.locator.locate(domain))
            elif isinstance(uri, SipUri):
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
        hops = [
            Target(uri, Address(t.transport.upper(), t.address, t.port))
            for t in targets
            if t.transport in ("udp", "tcp")
        ]
        if not hops:
            return self._failed(request, 503, "Service Unavailable",
                                f"no UDP or TCP border at {domain}", retry=True)
        logger.info("border %s: %s for %s to %s via %s", self.uri, request.method, uri, domain,
                    ", ".join(str(t.next_hop) for t in hops))
        internal = request.headers.get_all("Record-Route")
        edited = request.with_headers(
            request.headers.without("Record-Route", "Route", "P-Preferred-Identity")
        )
        exhausted = self._failed(request, 503, "Service Unavailable",
                                 f"no border of {domain} answered", retry=True, log=False)
        return Forward(
            tuple(hops),
            record_route=True,
            record_route_uri=self._token_uri(internal),
            request=edited,
            hide_vias=True,
            rewrite_response=self._unfold_response,
            failover=True,
            exhausted=exhausted,
        )

    def _unfold_response(self, response: Response) -> Response:
        """A response to an egress request coming back in: our entry's internal Record-Route
        entries come back after it, for the caller's route set."""
        values = response.headers.get_all("Record-Route")
        if not values:
            return response
        entries = response.name_addrs("Record-Route")
        for i, entry in enumerate(entries):
            if _names(entry.uri, self.uri) and isinstance(entry.uri, SipUri) and entry.uri.user:
                internal = self._open(entry.uri.user)
                if internal is None:
                    raise ProtocolError("Record-Route token of ours was altered")
                restored = [*values[: i + 1], *internal, *values[i + 1:]]
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

    def _token_uri(self, internal: list[str]) -> SipUri:
        payload = json.dumps(internal, separators=(",", ":")).encode("utf-8")
        return SipUri(host=self.uri.host, port=self.uri.port, user=seal_token(self.key, payload),
                      params=(("lr", None),))

    def _open(self, token: str) -> list[str] | None:
        payload = open_token(self.key, token)
        if payload is None:
            return None
        try:
            values = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return None
        return values


def _names(uri: Uri, me: SipUri) -> bool:
    if not isinstance(uri, SipUri):
        return False
    port = uri.port if uri.port is not None else 5060
    return uri.host.lower() == me.host.lower() and port == (me.port or 5060)


def _phrase_safe(text: str) -> str:
    """Printable, one line, bounded: fit for a Reason-Phrase (RFC 3261 section 25.1)."""
    return "".join(c if c.isprintable() else "?" for c in text)[:120]
