"""The P-CSCF: the UE's first hop (3GPP TS 24.229 section 5.2), a router for ProxyCore.

Its walk of a request:
- REGISTER from a UE: Path with this P-CSCF's URI, `lr` and a flow token naming the flow the
  REGISTER came on (RFC 3327; RFC 5626 section 5.1, `ob` when the UE does outbound); to the
  S-CSCF. The 200 is read on its way back: Service-Route (RFC 3608), P-Associated-URI (RFC
  3455) and the granted lifetime make a registration of that flow; Flow-Timer is added where
  outbound is used (RFC 5626 section 4.4).
- Any other request from a registered flow (originating): P-Asserted-Identity and
  P-Preferred-Identity from the UE removed, P-Asserted-Identity set to the identity the UE
  may use (the PPI if it is one of its P-Associated-URIs, else the default one: RFC 3325
  section 6, TS 24.229 section 5.2.6.3), the learned Service-Route as its Route, Record-Route.
- A request from the operator's core (terminating): the flow token in the top Route (from
  the Path, or from our Record-Route in a dialog) names the UE's flow: sent over it, without
  the extension's operator-only header fields (Target-MNO, our Proxy-Require tag:
  docs/extension.md sections 3 and 4).
- Anything else: 403 naming the defect.

CRLF keep-alives are answered by the transport (ims.sip.transport, RFC 5626 section 4.4.1).
The flow token is sealed with an HMAC so that no one but this P-CSCF can mint one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from ims.extension import OPTION_TAG, TARGET_MNO, option_tags
from ims.sip.address import Address
from ims.sip.errors import ParseError
from ims.sip.headers import NameAddress
from ims.sip.message import Request, Response, make_response
from ims.sip.proxy import Forward, Target
from ims.sip.uri import SipUri, Uri, parse_uri
from ims.store import InvalidIdentity, canonical_aor

__all__ = [
    "IDENTITY_HEADERS",
    "Pcscf",
    "PcscfRegistration",
    "open_token",
    "pop_own_route",
    "seal_token",
]

logger = logging.getLogger(__name__)

IDENTITY_HEADERS = ("P-Asserted-Identity", "P-Preferred-Identity")
_MAC_BYTES = 16  # the synthetic IV, also the tag (RFC 5297 uses 128 bits)


# --- sealed tokens (flow tokens here, Record-Route tokens at the border) ----------------------


def seal_token(key: bytes, payload: bytes) -> str:
    """`payload` encrypted and authenticated, base64url without padding: a URI user part.

    Deterministic authenticated encryption in the manner of SIV (RFC 5297) with HMAC-SHA-256
    as the PRF: the synthetic IV is the payload's tag under one derived key, the keystream is
    HMAC-SHA-256(other key, IV || counter). A peer holding a token learns nothing of what it
    carries (internal hosts and ports: topology hiding) and cannot forge one; the same payload
    seals to the same token, so a flow keeps one token across its REGISTERs.
    """
    mac_key, stream_key = _token_keys(key)
    iv = hmac.new(mac_key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
    sealed = bytes(a ^ b for a, b in zip(payload, _keystream(stream_key, iv, len(payload)),
                                         strict=True))
    return base64.urlsafe_b64encode(iv + sealed).decode("ascii").rstrip("=")


def open_token(key: bytes, token: str) -> bytes | None:
    """The payload of a token `seal_token` made with `key`; None when forged or garbled."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        return None
    if len(raw) < _MAC_BYTES:
        return None
    mac_key, stream_key = _token_keys(key)
    iv, sealed = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
    payload = bytes(a ^ b for a, b in zip(sealed, _keystream(stream_key, iv, len(sealed)),
                                          strict=True))
    expected = hmac.new(mac_key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
    return payload if hmac.compare_digest(iv, expected) else None


def _token_keys(key: bytes) -> tuple[bytes, bytes]:
    """Two independent keys from the element's one (HMAC as a KDF, labels apart)."""
    return (hmac.new(key, b"ueconnect token mac", hashlib.sha256).digest(),
            hmac.new(key, b"ueconnect token stream", hashlib.sha256).digest())


def _keystream(key: bytes, iv: bytes, length: int) -> bytes:
    blocks = (hmac.new(key, iv + counter.to_bytes(4, "big"), hashlib.sha256).digest()
              for counter in range(-(-length // 32)))
    return b"".join(blocks)[:length]


def _flow_token(key: bytes, flow: Address) -> str:
    return seal_token(key, f"{flow.transport} {flow.host} {flow.port}".encode("ascii"))


def _open_flow(key: bytes, token: str) -> Address | None:
    payload = open_token(key, token)
    if payload is None:
        return None
    try:
        transport, host, port = payload.decode("ascii").split(" ")
        return Address(transport, host, int(port))
    except ValueError:
        return None


def pop_own_route(request: Request, me: SipUri) -> tuple[Request, NameAddress | None]:
    """Remove the top Route when it names this element (host and port, any user part: a
    flow token or a marker), returning it; the proxy core removed plain ones already (16.4)."""
    routes = request.name_addrs("Route") if "Route" in request.headers else []
    if not routes:
        return request, None
    top = routes[0]
    if not _same_element(top.uri, me):
        return request, None
    return request.with_headers(request.headers.without_first("Route")), top


def _same_element(uri: Uri, me: SipUri) -> bool:
    if not isinstance(uri, SipUri):
        return False
    port = uri.port if uri.port is not None else 5060
    mine = me.port if me.port is not None else 5060
    return uri.host.lower() == me.host.lower() and port == mine


# --- registrations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PcscfRegistration:
    """What the P-CSCF learned from a 200 to a REGISTER it relayed from `flow`."""

    flow: Address
    aor: str
    contacts: tuple[str, ...]
    associated: tuple[str, ...]  # P-Associated-URI, the default identity first
    service_route: tuple[str, ...]
    expires_at: float
    outbound: bool


class Pcscf:
    """The router of one P-CSCF instance named `uri` (its Via, Path and Record-Route).

    `registrar` is where REGISTERs go (the S-CSCF); `internal_hosts` the operator's own
    element addresses, whose requests are terminating; `key` seals flow tokens; `keepalive`
    the Flow-Timer; `clock` the wall clock the registration lifetimes are measured on;
    `on_flow` (optional) is told each flow a registration was learned on, with its AOR, and
    each flow left without one (AOR None): the trace names the UE's column with it.
    """

    def __init__(
        self,
        uri: SipUri,
        *,
        registrar: Address,
        internal_hosts: Iterable[str],
        key: bytes,
        keepalive: float,
        clock: Callable[[], float],
        on_flow: Callable[[Address, str | None], None] | None = None,
    ) -> None:
        self.uri = uri
        self.registrar = registrar
        self.internal_hosts = frozenset(internal_hosts)
        self.key = key
        self.keepalive = keepalive
        self.clock = clock
        self.on_flow = on_flow
        self.registrations: dict[Address, dict[str, PcscfRegistration]] = {}

    def __call__(self, request: Request, source: Address) -> Forward | Response:
        request, own = pop_own_route(request, self.uri)
        if request.method == "REGISTER":
            return self._register(request, source)
        registrations = self.registrations_of(source)
        if registrations:
            return self._originating(request, source, registrations)
        if source.host in self.internal_hosts:
            return self._terminating(request, own)
        logger.info("P-CSCF %s: %s from unregistered %s refused", self.uri, request.method, source)
        return make_response(
            request, 403, "Forbidden (not registered: REGISTER through this P-CSCF first)"
        )

    def registrations_of(self, flow: Address) -> list[PcscfRegistration]:
        """The live registrations made over `flow`."""
        table = self.registrations.get(flow)
        if not table:
            return []
        now = self.clock()
        for aor in [a for a, r in table.items() if r.expires_at <= now]:
            del table[aor]
        if not table:
            del self.registrations[flow]
        return list(table.values())

    # -- REGISTER ------------------------------------------------------------------------------

    def _register(self, request: Request, source: Address) -> Forward:
        contacts = request.name_addrs("Contact") if "Contact" in request.headers else []
        outbound = "outbound" in option_tags(request, "Supported") and any(
            c.param("reg-id") is not None for c in contacts
        )
        params: tuple[tuple[str, str | None], ...] = (("lr", None),)
        if outbound:
            params += (("ob", None),)  # RFC 5626 section 5.1
        path = SipUri(
            host=self.uri.host, port=self.uri.port, user=_flow_token(self.key, source),
            params=params,
        )
        headers = request.headers.without("Route", *IDENTITY_HEADERS).prepended(
            "Path", f"<{path}>"
        )
        edited = request.with_headers(headers)
        wanted = tuple(str(c.uri) for c in contacts)
        return Forward(
            (Target(request.uri, self.registrar),),
            request=edited,
            rewrite_response=partial(self._learn, source, request, wanted, outbound),
        )

    def _learn(
        self,
        flow: Address,
        request: Request,
        wanted: tuple[str, ...],
        outbound: bool,
        response: Response,
    ) -> Response:
        """The registrar's 200 on its way to the UE: remember the registration of `flow`."""
        if not 200 <= response.status_code < 300:
            return response
        try:
            aor = canonical_aor(str(request.to.uri))
        except InvalidIdentity:
            return response
        lifetimes = [
            int(c.param("expires") or 0)
            for c in response.name_addrs("Contact")
            if any(c.uri.equivalent(parse_uri(w)) for w in wanted)
            and (c.param("expires") or "").isdigit()
        ]
        table = self.registrations.setdefault(flow, {})
        if not lifetimes or max(lifetimes) == 0:
            table.pop(aor, None)
            if not table:
                del self.registrations[flow]
                if self.on_flow is not None:
                    self.on_flow(flow, None)
            logger.info("P-CSCF %s: %s unregistered over %s", self.uri, aor, flow)
            return response
        used_outbound = outbound and "outbound" in {
            v.strip() for v in response.headers.get_all("Require")
        }
        table[aor] = PcscfRegistration(
            flow=flow,
            aor=aor,
            contacts=wanted,
            associated=tuple(str(n.uri) for n in response.name_addrs("P-Associated-URI")),
            service_route=tuple(response.headers.get_all("Service-Route")),
            expires_at=self.clock() + max(lifetimes),
            outbound=used_outbound,
        )
        logger.info("P-CSCF %s: %s registered over %s for %d s", self.uri, aor, flow,
                    max(lifetimes))
        if self.on_flow is not None:
            self.on_flow(flow, aor)
        if used_outbound:
            # RFC 5626 section 4.4: the keep-alive interval the edge proxy wants.
            headers = response.headers.without("Flow-Timer").appended(
                "Flow-Timer", str(int(self.keepalive))
            )
            return response.with_headers(headers)
        return response

    # -- originating: from a registered UE -----------------------------------------------------

    def _originating(
        self, request: Request, flow: Address, registrations: list[PcscfRegistration]
    ) -> Forward | Response:
        identity, registration = self._asserted_identity(request, registrations)
        edited = request.with_headers(request.headers.without(*IDENTITY_HEADERS))
        if request.to.tag is not None or request.method == "ACK":
            # In a dialog: along the route set the UE has (RFC 3261 16.12).
            return Forward((Target(edited.uri),), request=edited)
        if not registration.service_route:
            return make_response(request, 403, "Forbidden (no Service-Route for this UE)")
        # TS 24.229 section 5.2.6.3.1: the route towards the S-CSCF is the Service-Route
        # learned at registration, whatever the UE preloaded after us.
        edited = edited.with_headers(
            edited.headers.replaced("Route", registration.service_route)
        )
        return Forward(
            (Target(edited.uri),),
            record_route=True,
            record_route_uri=self._record_route_uri(flow),
            extra_headers=(("P-Asserted-Identity", f"<{identity}>"),),
            request=edited,
            relay_503=True,  # the operator's core speaks for what lies beyond it
        )

    def _asserted_identity(
        self, request: Request, registrations: list[PcscfRegistration]
    ) -> tuple[str, PcscfRegistration]:
        """RFC 3325 section 6 / TS 24.229 5.2.6.3.1: the P-Preferred-Identity when it is one
        of the UE's registered identities, else the default of the registration."""
        preferred = request.headers.get("P-Preferred-Identity")
        if preferred is not None:
            try:
                wanted = canonical_aor(str(request.name_addrs("P-Preferred-Identity")[0].uri))
            except (ParseError, InvalidIdentity, IndexError):
                wanted = None
            for registration in registrations:
                for uri in registration.associated:
                    if _canonical(uri) == wanted:
                        return uri, registration
        registration = registrations[0]
        default = registration.associated[0] if registration.associated else registration.aor
        return default, registration

    # -- terminating: from the operator's core -------------------------------------------------

    def _terminating(self, request: Request, own: NameAddress | None) -> Forward | Response:
        flow: Address | None = None
        if own is not None and isinstance(own.uri, SipUri) and own.uri.user:
            flow = _open_flow(self.key, own.uri.user)
            if flow is None:
                return make_response(request, 403, "Forbidden (invalid flow token)")
        request = _for_the_ue(request)
        if request.to.tag is not None or request.method == "ACK":
            return Forward((Target(request.uri, flow),), request=request)
        if flow is None:
            # No flow token names a UE flow: not a request for a UE registered here (a UE on
            # an element's host sending before it registered looks like this). RFC 5626
            # section 5.3's 430 is for a flow that existed and failed, not for none at all.
            return make_response(
                request, 403, "Forbidden (no flow token in the Route: REGISTER through this "
                "P-CSCF first)"
            )
        return Forward(
            (Target(request.uri, flow),),
            record_route=True,
            record_route_uri=self._record_route_uri(flow),
            request=request,
        )

    def _record_route_uri(self, flow: Address) -> SipUri:
        """Our Record-Route carries the UE's flow (RFC 5626 section 5.3), so in-dialog
        requests from the core reach the UE over the flow it used."""
        return SipUri(host=self.uri.host, port=self.uri.port, user=_flow_token(self.key, flow))


def _for_the_ue(request: Request) -> Request:
    """The request without what only operators read (docs/extension.md): Target-MNO (section
    4: the callee learns the caller's operator from the inquiry, as the network asserts it) and
    the `ueconnect` tag of Proxy-Require (section 3: never forwarded to a UE); other
    Proxy-Require tags stay. Unchanged when it has neither."""
    headers = request.headers
    if TARGET_MNO in headers:
        headers = headers.without(TARGET_MNO)
    tags = option_tags(request, "Proxy-Require")
    if OPTION_TAG in tags:
        headers = headers.without("Proxy-Require")
        rest = [t for t in tags if t != OPTION_TAG]
        if rest:
            headers = headers.appended("Proxy-Require", ", ".join(rest))
    return request if headers is request.headers else request.with_headers(headers)


def _canonical(uri: str) -> str | None:
    try:
        return canonical_aor(uri)
    except InvalidIdentity:
        return None
