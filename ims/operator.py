"""One operator (MNO) in one process: the configured roles built from an OperatorConfig.

Each role runs one proxy element per listen host:port (a SipStack with its TransactionLayer
and ProxyCore, the role's router on top): the P-CSCF (ims.pcscf), the S-CSCF and registrar
(ims.scscf, ims.registrar), the border (ims.border). A role can also run alone (`roles=`),
the others then being reached at the addresses the same file gives them.

    async with Operator.start(config, store=store) as operator:
        ...  # operator.address(Role.PCSCF) is where UEs send

Keys (flow tokens, Record-Route tokens, digest nonces) come from the store's secrets, so
processes sharing a store understand each other's tokens and survive restarts.

Observability comes from the configuration: with [trace], every element's stack appends to
the one trace file (ims.trace; role names "pcscf", "scscf", "border", and the P-CSCF names
each registered UE's column "UE <user>"); with [metrics], every stack and role feeds the
operator's OperatorMetrics (ims.metrics), served on the configured address while it runs.

With [gateway], the S-CSCF's connectivity gateway is ims.gateway.service.RelayGateway on the
configured relay address (mode relay), or ims.gateway.pcp_gateway.PcpGateway asking the
configured PCP server, that relay as its fallback (mode pcp), its allocations forwarded by the
kernel once their peers are known with relay_offload nft; `operator.gateway` is it, and
`operator.gateway.open_legs()` lists what is open. The S-CSCF holds a 2xx in its proxy core
while the gateway completes it (Element.hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from ims.border import Border
from ims.config import BorderConfig, GatewayMode, OperatorConfig, PeerConfig, Role, iter_listeners
from ims.dns.locator import Locator
from ims.dns.resolution import Transport
from ims.extension import OPTION_TAG
from ims.gateway.errors import GatewayError
from ims.gateway.pcp_gateway import PcpGateway, PcpGatewayConfig
from ims.gateway.relay import RelayConfig, RelayOffload
from ims.gateway.service import MAX_SESSION_EXPIRES, RelayGateway
from ims.metrics import (
    CompositeObserver,
    MetricsServer,
    MetricsServerError,
    OperatorMetrics,
    serve_metrics,
)
from ims.pcscf import Pcscf
from ims.permission.function import DeciderConfig
from ims.permission.service import PermissionService, permission_uri
from ims.registrar import RegisteredContacts, Registrar
from ims.scscf import Scscf, service_route
from ims.seams import (
    ConnectivityGateway,
    LoggingGateway,
    LoggingPermission,
    PermissionFunction,
)
from ims.sip.address import Address
from ims.sip.digest import DigestServer
from ims.sip.fixed_route_proxy import resolve_literal
from ims.sip.message import Request, Response, make_response
from ims.sip.proxy import Defer, Forward, Hold, ProxyConfig, ProxyCore, Router
from ims.sip.stack import MessageObserver, SipStack, TuEvent
from ims.sip.transaction import TimerSettings, TransactionLayer
from ims.sip.transport import (
    PeerCertificate,
    TlsPolicy,
    TlsRefused,
    TransportSettings,
    identity_problem,
    tls_context,
)
from ims.sip.uri import SipUri
from ims.store import Store, open_store
from ims.trace import TraceError, TraceRecorder

__all__ = ["BorderTls", "Element", "Operator", "OperatorError"]

logger = logging.getLogger(__name__)

ROLE_NAMES = {Role.PCSCF: "P-CSCF", Role.SCSCF: "S-CSCF", Role.BORDER: "border"}
_DEFER_TIMEOUT = 30.0  # bound on an asynchronous routing step (DNS, the seams)
MAX_NAMED_FLOWS = 10_000  # UE columns the P-CSCF's trace remembers (oldest forgotten first)


class OperatorError(Exception):
    """The configuration cannot be run as asked (a role needs a section that is missing)."""


@dataclass(eq=False)
class Element:
    """One running proxy element of a role: its URI, listeners, stack and core."""

    role: Role
    uri: SipUri
    listen: tuple[Address, ...]
    stack: SipStack
    core: ProxyCore | None = None
    router: Router | None = None
    defer_timeout: float = _DEFER_TIMEOUT
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _count: int = 0

    @property
    def address(self) -> Address:
        """Where to send to this element (its first UDP listener, else its first)."""
        return _first(self.listen)

    def defer(self, request: Request, work: Awaitable[Forward | Response]) -> Defer:
        """Run `work` as a task; its decision resumes the core (ProxyCore.resume)."""
        self._count += 1
        token = self._count
        task = asyncio.get_running_loop().create_task(self._settle(token, request, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Defer(token, on_cancel=task.cancel)  # a CANCEL stops the work

    async def _settle(
        self, token: int, request: Request, work: Awaitable[Forward | Response]
    ) -> None:
        decision: Forward | Response
        try:
            decision = await asyncio.wait_for(work, self.defer_timeout)
        except TimeoutError:
            decision = make_response(request, 504, "Server Time-out (routing took too long)")
        except Exception:  # a role's bug must not leave the request hanging
            logger.exception("%s %s: routing failed", ROLE_NAMES[self.role], self.uri)
            decision = make_response(request, 500, "Server Internal Error (routing failed)")
        core = self.core
        if core is not None:
            self.stack.drive(lambda now: core.resume(token, decision, now))

    def hold(self, response: Response, work: Awaitable[Response]) -> Hold:
        """Hold `response` in the core (ProxyCore's Hold) until `work` gives the response to
        forward in its place; `response` itself goes on if the work fails or overruns."""
        self._count += 1
        token = self._count
        task = asyncio.get_running_loop().create_task(self._release(token, response, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Hold(token)

    async def _release(self, token: int, response: Response,
                       work: Awaitable[Response]) -> None:
        released = response
        try:
            released = await asyncio.wait_for(work, self.defer_timeout)
        except TimeoutError:
            logger.warning("%s %s: the gateway took too long with a %d: forwarded unchanged",
                           ROLE_NAMES[self.role], self.uri, response.status_code)
        except Exception:  # a gateway's bug must not keep the response from the caller
            logger.exception("%s %s: completing a response failed", ROLE_NAMES[self.role],
                             self.uri)
        core = self.core
        if core is not None:
            self.stack.drive(lambda now: core.release_response(token, released, now))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.stack.close()


def _ignore(event: TuEvent) -> None:
    return None


def _first(addresses: Sequence[Address]) -> Address:
    return next((a for a in addresses if a.transport == "UDP"), addresses[0])


def _groups(addresses: Iterable[Address]) -> list[tuple[str, int, tuple[Address, ...]]]:
    """Listeners by host:port: one element each (UDP and TCP on one port are one element)."""
    out: dict[tuple[str, int], list[Address]] = {}
    for address in addresses:
        out.setdefault((address.host, address.port), []).append(address)
    return [(host, port, tuple(group)) for (host, port), group in out.items()]


def _uri(host: str, port: int, advertised: str | None) -> SipUri:
    name = advertised if advertised is not None else host
    return SipUri(host=f"[{name}]" if ":" in name else name, port=port)


def _border_groups(addresses: Iterable[Address]) -> list[tuple[str, int, tuple[Address, ...]]]:
    """`_groups` for the border, where a tls: listener joins the instance on its host: the
    instance that sends a host's egress requests must hold the TLS endpoint they leave by."""
    plain = [a for a in addresses if a.transport != "TLS"]
    groups = _groups(plain)
    for address in (a for a in addresses if a.transport == "TLS"):
        index = next((i for i, g in enumerate(groups) if g[0] == address.host), None)
        if index is None:
            groups.append((address.host, address.port, (address,)))
        else:
            host, port, listen = groups[index]
            groups[index] = (host, port, (*listen, address))
    return groups


class BorderTls:
    """Mutual TLS between our border and the peer operators (RFC 3261 section 26.2, RFC 5922),
    from [border] tls_certificate / tls_private_key and each [[border.peers]] tls_fingerprint /
    tls_ca: a `TlsPolicy` for the border's TLS endpoint.

    The peer on the other end of a connection, either way, is the [[border.peers]] entry whose
    admit_from holds its address. Its certificate must match the entry's tls_fingerprint and,
    with tls_ca, chain to that CA and name the peer's domain in subjectAltName. As a server
    the border requires a client certificate chaining to one of the peers' tls_ca files (a
    self-signed peer certificate is given as its own tls_ca); as a client it presents its own.
    Raises OperatorError for files OpenSSL cannot load.
    """

    def __init__(self, config: BorderConfig, source: object = "[border]") -> None:
        if config.tls_certificate is None or config.tls_private_key is None:
            raise OperatorError(f"{source}: [border] TLS needs tls_certificate and "
                                "tls_private_key")
        self.config = config
        certificate, key = str(config.tls_certificate), str(config.tls_private_key)
        try:
            self._server = tls_context(ssl.Purpose.CLIENT_AUTH, certificate, key)
        except (ssl.SSLError, OSError) as exc:
            raise OperatorError(f"{source}: [border] TLS keys: tls_certificate {certificate} / "
                                f"tls_private_key {key} cannot be loaded as a PEM certificate "
                                f"and its key ({exc})") from exc
        self._server.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the peer shows its own
        # A tls_ca may be an intermediate, or the peer's self-signed certificate itself.
        self._server.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self._clients: dict[str, ssl.SSLContext] = {}
        for peer in config.peers:
            try:
                if peer.tls_ca is not None:
                    self._server.load_verify_locations(cafile=str(peer.tls_ca))
                if _pins(peer):
                    self._clients[peer.name] = self._client_context(peer, certificate, key)
            except (ssl.SSLError, OSError) as exc:
                raise OperatorError(f"{source}: [border] TLS keys: peer {peer.name}'s tls_ca "
                                    f"{peer.tls_ca} cannot be loaded as PEM CA certificates "
                                    f"({exc})") from exc

    @staticmethod
    def _client_context(peer: PeerConfig, certificate: str, key: str) -> ssl.SSLContext:
        context = tls_context(ssl.Purpose.SERVER_AUTH, certificate, key)
        # The name check is ours (identity_problem, RFC 5922 section 7.2: no wildcards).
        context.check_hostname = False
        if peer.tls_ca is None:
            context.verify_mode = ssl.CERT_NONE  # pinned by fingerprint after the handshake
        else:
            context.verify_mode = ssl.CERT_REQUIRED
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            context.load_verify_locations(cafile=str(peer.tls_ca))
        return context

    def server_context(self) -> ssl.SSLContext:
        return self._server

    def client_context(self, destination: Address) -> tuple[ssl.SSLContext, str | None]:
        peer = self.config.peer_for_source(destination.host)
        if peer is None:
            raise TlsRefused(f"no [[border.peers]] admit_from holds {destination.host}, so "
                             "there is no certificate to expect there")
        context = self._clients.get(peer.name)
        if context is None:
            raise TlsRefused(f"peer {peer.name} has no tls_fingerprint or tls_ca to check its "
                             "certificate against")
        return context, peer.domain  # the domain as SNI (RFC 6066 section 3)

    def check(self, remote: Address, certificate: PeerCertificate, *, outgoing: bool) -> str | None:
        peer = self.config.peer_for_source(remote.host)
        if peer is None:
            return "not a peer operator (no [[border.peers]] admit_from holds its address)"
        return identity_problem(certificate, fingerprint=peer.tls_fingerprint,
                                domain=peer.domain if peer.tls_ca is not None else None)

    def describe(self, remote: Address) -> str:
        peer = self.config.peer_for_source(remote.host)
        return f"{remote} (not a peer)" if peer is None else f"peer {peer.name} at {remote}"


def _pins(peer: PeerConfig) -> bool:
    """Whether the peer's certificate can be checked: the peer is reached over TLS only."""
    return peer.tls_fingerprint is not None or peer.tls_ca is not None


class Operator:
    """The running roles of one operator; build it with `Operator.start`."""

    def __init__(self, config: OperatorConfig, store: Store, elements: list[Element]) -> None:
        self.config = config
        self.store = store
        self.elements = elements
        # [metrics]: the operator's metrics on a registry of its own, and their endpoint.
        self.metrics: OperatorMetrics | None = (
            OperatorMetrics(CollectorRegistry()) if config.metrics is not None else None
        )
        self.metrics_server: MetricsServer | None = None
        self.recorders: dict[Role, TraceRecorder] = {}  # [trace]: one per role, one file
        # [permission]: the permission function beside the S-CSCF (docs/extension.md 5).
        self.permission: PermissionService | None = None
        # [gateway]: the connectivity gateway, when this process built it.
        self.gateway: RelayGateway | PcpGateway | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        config: OperatorConfig,
        *,
        store: Store | None = None,
        roles: Iterable[Role] | None = None,
        timers: TimerSettings | None = None,
        permission: PermissionFunction | None = None,
        gateway: ConnectivityGateway | None = None,
        locator: Locator | None = None,
        clock: Callable[[], float] = time.time,
        retry_after: int = 30,
    ) -> AsyncIterator[Operator]:
        """Start `roles` (default: every configured one) listening; stop them on exit.

        `store` defaults to the configured one (closed on exit; a given one is not);
        `timers` are the SIP timers of every element (tests shorten them); `clock` is the
        wall clock of registrations and nonces. `permission` replaces the permission
        function; without it, the S-CSCF runs ims.permission.service when the file has a
        [permission] section, and allows with a logged warning otherwise. Raises
        OperatorError, BindError.
        """
        owned = store is None
        store = open_store(config.store) if store is None else store
        operator = cls(config, store, [])
        chosen = tuple(roles) if roles is not None else config.roles
        try:
            if gateway is None and Role.SCSCF in chosen:
                gateway = await operator._gateway()
            await operator._build(
                chosen,
                timers=timers,
                permission=permission,
                gateway=gateway or LoggingGateway(),
                locator=locator,
                clock=clock,
                retry_after=retry_after,
            )
            operator._serve_metrics()
            yield operator
        finally:
            await operator.close()
            if owned:
                store.close()

    def elements_of(self, role: Role) -> list[Element]:
        return [e for e in self.elements if e.role is role]

    def address(self, role: Role) -> Address:
        """Where the first element of `role` listens (UDP preferred)."""
        elements = self.elements_of(role)
        if not elements:
            raise OperatorError(f"{self.config.operator.name} runs no {ROLE_NAMES[role]}")
        return elements[0].address

    def uri(self, role: Role) -> SipUri:
        elements = self.elements_of(role)
        if not elements:
            raise OperatorError(f"{self.config.operator.name} runs no {ROLE_NAMES[role]}")
        return elements[0].uri

    async def close(self) -> None:
        for element in self.elements:
            await element.close()
        self.elements.clear()
        if self.gateway is not None:
            await self.gateway.close()
            self.gateway = None
        if self.permission is not None:
            await self.permission.close()
            self.permission = None
        for recorder in self.recorders.values():
            recorder.close()
        self.recorders.clear()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None

    async def _gateway(self) -> RelayGateway | PcpGateway | None:
        """The configured gateway ([gateway]); None: the logging default."""
        section = self.config.gateway
        if section is None or section.mode is GatewayMode.OFF:
            return None
        assert section.relay_address is not None  # the validator's promise for relay, pcp
        try:
            relay = RelayConfig(section.relay_address, default_lifetime=section.lifetime,
                                max_lifetime=max(section.lifetime, MAX_SESSION_EXPIRES),
                                offload=section.relay_offload)
        except GatewayError as exc:
            raise OperatorError(f"{self.config.source}: [gateway] {exc}") from exc
        # Bind once now, so an address that is not ours fails at start, not at the first call.
        family = socket.AF_INET6 if relay.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((relay.relay_address, 0))
            except OSError as exc:
                raise OperatorError(
                    f"{self.config.source}: [gateway] relay_address {relay.relay_address}: "
                    f"cannot bind a UDP port there ({exc.strerror or exc})"
                ) from None
        name = self.config.operator.name
        if section.mode is GatewayMode.PCP:
            assert section.pcp_server is not None  # the validator's promise for pcp
            try:
                pcp = PcpGatewayConfig(section.pcp_server.host, section.pcp_server.port,
                                       section.pcp_lifetime, section.pcp_timeout)
                self.gateway = await PcpGateway.start(
                    pcp, relay, lifetime=section.lifetime, name=name,
                    registry=self.metrics.registry if self.metrics is not None else None,
                    store=self.store)
            except GatewayError as exc:
                raise OperatorError(f"{self.config.source}: [gateway] {exc}") from exc
            logger.info("operator %s: gateway asks the PCP server %s, relaying on %s when it "
                        "cannot map", name, section.pcp_server, relay.relay_address)
        else:
            self.gateway = RelayGateway.start(relay, lifetime=section.lifetime, name=name,
                                              store=self.store)
        if relay.offload is RelayOffload.NFT:
            # Misconfiguration fails the start; a flow the kernel refuses later stays in
            # userspace (ims.gateway.aiorelay).
            try:
                await self.gateway.relay.offload_ready()
            except GatewayError as exc:
                raise OperatorError(
                    f'{self.config.source}: [gateway] relay_offload = "nft": {exc} (the kernel '
                    "relay needs root, nft, conntrack and IP forwarding in this network "
                    'namespace; or set relay_offload = "none")') from exc
        return self.gateway

    # -- observability -----------------------------------------------------------------------

    def _serve_metrics(self) -> None:
        if self.config.metrics is None or self.metrics is None:
            return
        try:
            self.metrics_server = serve_metrics(self.config.metrics.listen,
                                                self.metrics.registry)
        except MetricsServerError as exc:
            raise OperatorError(f"{self.config.source}: [metrics] {exc}") from exc
        logger.info("operator %s: metrics on %s", self.config.operator.name,
                    self.metrics_server.url)

    def _observer(self, role: Role) -> MessageObserver | None:
        """What the stacks of `role` report their messages to: the trace, the metrics."""
        observers: list[MessageObserver] = []
        if self.config.trace is not None:
            recorder = self.recorders.get(role)
            if recorder is None:
                try:
                    recorder = TraceRecorder(self.config.trace.path, role.value,
                                             self.config.operator.name)
                except TraceError as exc:
                    raise OperatorError(f"{self.config.source}: [trace] {exc}") from exc
                self.recorders[role] = recorder
            observers.append(recorder)
        if self.metrics is not None:
            observers.append(self.metrics.observer(role.value))
        if len(observers) > 1:
            return CompositeObserver(observers)
        return observers[0] if observers else None

    def _name_flow(self, flow: Address, aor: str | None) -> None:
        """The P-CSCF learned (or lost) the registration of `flow`: name the UE's column in
        the trace after the AOR's user part (its number), "UE +15550100001"."""
        recorder = self.recorders.get(Role.PCSCF)
        if recorder is None:
            return
        names = recorder.names
        key = str(flow)
        names.pop(key, None)
        if aor is None:
            return
        user = aor.partition(":")[2].partition("@")[0] or aor
        names[key] = f"UE {user}"
        while len(names) > MAX_NAMED_FLOWS:
            del names[next(iter(names))]

    # -- building ----------------------------------------------------------------------------

    async def _build(
        self,
        roles: tuple[Role, ...],
        *,
        timers: TimerSettings | None,
        permission: PermissionFunction | None,
        gateway: ConnectivityGateway,
        locator: Locator | None,
        clock: Callable[[], float],
        retry_after: int,
    ) -> None:
        config = self.config
        name = config.operator.name
        for role in roles:
            if role not in config.roles:
                raise OperatorError(f"{config.source}: role {role} has no [{role}] section")
        internal = {address.host for _, address in iter_listeners(config)}
        scscf_address = _first(config.scscf.listen) if config.scscf is not None else None
        border_address = _first(config.border.listen) if config.border is not None else None
        home = config.operator.home_domain

        def secret(label: str) -> bytes:
            return self.store.secret(label, lambda: os.urandom(32))

        for role in roles:
            if role is Role.PCSCF:
                assert config.pcscf is not None
                if scscf_address is None:
                    raise OperatorError(f"{config.source}: the P-CSCF needs [scscf] (where "
                                        "registrations go)")
                key = secret("pcscf-flow-token")
                # RFC 5626 section 4.4.1: a flow lives while keep-alives come; give TCP flows
                # twice the Flow-Timer before closing them as idle.
                settings = TransportSettings(idle_timeout=max(120.0, 2 * config.pcscf.keepalive))
                for host, port, listen in _groups(config.pcscf.listen):
                    uri = _uri(host, port, config.pcscf.advertised_host)
                    element = self._element(role, uri, listen, timers)
                    element.router = Pcscf(
                        uri, registrar=scscf_address, internal_hosts=internal, key=key,
                        keepalive=config.pcscf.keepalive, clock=clock,
                        on_flow=self._name_flow if config.trace is not None else None,
                    )
                    await self._listen(element, settings)
            elif role is Role.SCSCF:
                assert config.scscf is not None
                digest = DigestServer(config.scscf.digest_config(secret("digest-nonce")))
                contacts = RegisteredContacts()  # one count for this process's registrars
                if permission is None and config.permission is not None:
                    # Its UAC sends inquiries from the S-CSCF's host, which the P-CSCF
                    # counts as the operator's core (terminating requests).
                    self.permission = PermissionService(
                        DeciderConfig(permission_uri(home), config.permission.deadline),
                        store=self.store, home_domain=home, clock=clock, timers=timers,
                    )
                    await self.permission.start(_first(config.scscf.listen).host)
                for host, port, listen in _groups(config.scscf.listen):
                    uri = _uri(host, port, config.scscf.advertised_host)
                    element = self._element(role, uri, listen, timers)
                    if config.permission is not None:
                        # The INVITE waits for the callee's answer: let it wait that long.
                        element.defer_timeout = max(element.defer_timeout,
                                                    config.permission.deadline + 5.0)
                    registrar = Registrar(
                        config.scscf, self.store, digest,
                        domains={home, config.scscf.realm}, service_route=service_route(uri),
                        metrics=self.metrics, contacts=contacts,
                    )
                    element.router = Scscf(
                        uri, store=self.store, registrar=registrar, home_domain=home,
                        mnc_lengths=dict(config.dns.mnc_lengths), border=border_address,
                        permission=self.permission or permission or LoggingPermission(),
                        gateway=gateway, defer=element.defer, clock=clock,
                        metrics=self.metrics, permission_endpoint=self.permission,
                        hold=element.hold,
                    )
                    await self._listen(element, None)
            elif role is Role.BORDER:
                assert config.border is not None
                if scscf_address is None:
                    raise OperatorError(f"{config.source}: the border needs [scscf] (where "
                                        "requests from peers go)")
                tls = self._border_tls(config.border)
                if locator is None:
                    # TLS targets only when we can speak TLS (a tls: listener).
                    transports: tuple[Transport, ...] = ("udp", "tcp")
                    if tls is not None:
                        transports += ("tls",)
                    locator = Locator(dataclasses.replace(
                        config.dns.locator_config(), transports=transports
                    ))
                key = secret("border-route-token")
                for host, port, listen in _border_groups(config.border.listen):
                    uri = _uri(host, port, config.border.advertised_host)
                    element = self._element(role, uri, listen, timers)
                    element.router = Border(
                        uri, config=config.border, home_domain=home, internal_hosts=internal,
                        scscf=scscf_address, locator=locator, key=key, defer=element.defer,
                        retry_after=retry_after, metrics=self.metrics,
                    )
                    await self._listen(element, None, tls)
        logger.info("operator %s (%s, %s) running: %s", name, config.operator.plmn, home,
                    ", ".join(ROLE_NAMES[r] for r in roles))

    def _element(
        self, role: Role, uri: SipUri, listen: tuple[Address, ...], timers: TimerSettings | None
    ) -> Element:
        layer = TransactionLayer(timers, check_messages=False)
        stack = SipStack(_ignore, layer=layer, observer=self._observer(role))
        element = Element(role, uri, listen, stack)
        self.elements.append(element)
        return element

    def _border_tls(self, border: BorderConfig) -> BorderTls | None:
        """The border's TLS policy when it has a tls: listener; warns about peers that will
        not work over TLS as configured."""
        source = self.config.source
        if not any(a.transport == "TLS" for a in border.listen):
            for peer in border.peers:
                if _pins(peer):
                    logger.warning("%s: peer %s is reached over TLS only (it has TLS keys) but "
                                   "[border] has no tls: listener: requests to it will fail",
                                   source, peer.name)
            return None
        for peer in border.peers:
            if peer.tls_fingerprint is not None and peer.tls_ca is None:
                logger.warning("%s: peer %s has tls_fingerprint but no tls_ca: its connections "
                               "to our tls: listener will fail; give its certificate (or CA) "
                               "as tls_ca", source, peer.name)
        return BorderTls(border, source)

    async def _listen(self, element: Element, settings: TransportSettings | None,
                      tls: TlsPolicy | None = None) -> None:
        assert element.router is not None
        proxy = ProxyConfig(uri=element.uri, supported=frozenset({OPTION_TAG}))
        element.core = ProxyCore(element.stack.layer, proxy, element.router, resolve_literal)
        element.stack.core = element.core
        # UDP first: the first endpoint of a kind carries the sends (our Via's port).
        for address in sorted(element.listen, key=lambda a: a.transport != "UDP"):
            if address.transport not in ("UDP", "TCP", "TLS") or (
                    address.transport == "TLS" and tls is None):
                logger.warning("%s %s: %s listener skipped (only the border serves TLS)",
                               ROLE_NAMES[element.role], element.uri, address)
                continue
            await element.stack.listen(address.transport, address.host, address.port,
                                       settings=settings, tls=tls)
        logger.info("%s %s listening on %s", ROLE_NAMES[element.role], element.uri,
                    ", ".join(str(a) for a in element.listen))
