"""The UE's developer API (issue 7 item 1): register, connect, accept, close.

    config = UeConfig(name="Bill", impu="sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org",
                      impi="bill@ims.mnc001.mcc001.3gppnetwork.org", password="bill-demo",
                      home_domain="ims.mnc001.mcc001.3gppnetwork.org", pcscf=("127.0.1.1", 5100))
    client = await UeClient.start(config)
    await client.register()
    connection = await client.connect("+15550100002", "001-02")   # a ConnectError otherwise
    await connection.send(b"move 1"); reply = await connection.recv()
    await connection.close()
    await client.close()

`connect` sends an INVITE through the P-CSCF: Request-URI the peer (tel:+E164 for a number,
else a SIP URI), `Require: ueconnect` and `Target-MNO` (docs/extension.md sections 3 and 4),
an SDP offer with this UE's ICE candidates and credentials (RFC 8839). A final non-2xx
becomes the typed refusal of section 7 (ue_ua.errors); a 2xx is ACKed, its answer's
candidates (the operators' additions included, section 8) go to the ICE agent as remote
candidates and the checks run, this UE controlling (RFC 8445 section 6.1.1: the offerer).

An incoming INVITE reaches this UE only after its operator's permission flow (the rule book,
else the `ask` callback, sections 5 and 6); the client answers 200 with its candidates, runs
the checks as the controlled agent and hands the connection to `on_incoming`, or queues it
for `accept()`. When the checks fail, the session is ended (BYE) and the ConnectivityFailed
goes to `on_incoming_failed`, or else `accept()` raises it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from os import PathLike

from ims.extension import OPTION_TAG, TARGET_MNO, InvalidTargetMno, parse_target_mno
from ims.sdp import (
    Origin,
    SdpError,
    application_stream_index,
    build_answer,
    build_offer,
    negotiated_endpoints,
    parse_sdp,
    serialize_sdp,
    stream_endpoints,
)
from ims.sip.address import Address
from ims.sip.errors import ParseError, SipError
from ims.sip.message import Response
from ims.sip.registration import Registered
from ims.sip.uri import SipUri, Uri, parse_uri
from ims.sip.useragent import Call, CallFailed, IncomingCall, RegistrationError, UserAgent
from ue_ua.agent import AskCallback, UeAgent
from ue_ua.connection import Connection, SetupTimings
from ue_ua.errors import (
    ConnectivityFailed,
    InvalidAnswer,
    RegistrationFailed,
    UeUsageError,
    refusal_of,
)
from ue_ua.ice import TRANSPORT_POLICIES, IceAgent, TransportPolicy
from ue_ua.permissions import RuleBook

__all__ = ["IncomingFailedHandler", "IncomingHandler", "UeClient", "UeConfig", "peer_uri"]

logger = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
_NUMBER = re.compile(r"\+?[0-9][0-9 .()-]*")
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]{1,64}")  # RFC 3261 section 25.1 token, bounded

IncomingHandler = Callable[[Connection], Awaitable[None] | None]
"""Called with each incoming connection once its checks succeeded."""

IncomingFailedHandler = Callable[[str, ConnectivityFailed], Awaitable[None] | None]
"""Called with (the caller's identity, the failure) for each incoming session whose checks
failed (the session was ended with a BYE)."""

ABANDON_TIMEOUT = 15.0  # seconds close() waits for incoming sessions to be cleaned up


def _endpoint(value: tuple[str, int], what: str) -> None:
    host, port = value
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UeUsageError(f"{what} host {host!r} is not an IP address") from None
    if not 1 <= port <= 65535:
        raise UeUsageError(f"{what} port {port} is outside 1..65535")


@dataclass(frozen=True)
class UeConfig:
    """Who the UE is and where its operator is; validated on construction (UeUsageError).

    `impu` the public identity (`sip:+1555...@home-domain`), `impi` the private identity
    (the digest username), `pcscf` the P-CSCF's (IP, port), UDP; `bind_host` the one local
    address for SIP and ICE; `transport_policy` "all" or "relay" (only the operators' relay
    candidates); `stun_server` (IP, port) for a server reflexive candidate; `setup_timeout`
    seconds for the ICE checks."""

    name: str
    impu: str
    impi: str
    password: str
    home_domain: str
    pcscf: tuple[str, int]
    bind_host: str = "127.0.0.1"
    transport_policy: TransportPolicy = "all"
    stun_server: tuple[str, int] | None = None
    setup_timeout: float = 10.0

    def __post_init__(self) -> None:
        try:
            uri = parse_uri(self.impu)
        except ParseError as exc:
            raise UeUsageError(f"impu {self.impu!r} is not a URI: {exc}") from None
        if not isinstance(uri, SipUri):
            raise UeUsageError(f"impu {self.impu!r} must be a sip: URI (the registered AOR)")
        if not self.impi or not self.password or not self.home_domain:
            raise UeUsageError("impi, password and home_domain must not be empty")
        _endpoint(self.pcscf, "pcscf")
        _endpoint((self.bind_host, 1), "bind_host")
        if self.stun_server is not None:
            _endpoint(self.stun_server, "stun_server")
        if self.transport_policy not in TRANSPORT_POLICIES:
            raise UeUsageError(
                f"transport_policy {self.transport_policy!r} is not one of {TRANSPORT_POLICIES}"
            )
        if not 0 < self.setup_timeout <= 300:
            raise UeUsageError(f"setup_timeout {self.setup_timeout} is outside (0, 300] s")

    @classmethod
    def load(cls, path: str | PathLike[str]) -> UeConfig:
        """The [ue] section of a UE TOML file (ue_ua/config.py; `load_ue_config` also returns
        its [rules]). Raises ims.config.ConfigError naming the file, each key and the fix."""
        from ue_ua.config import load_ue_config  # it builds UeConfig: imported when used

        return load_ue_config(path)[0]


def peer_uri(peer_ue: str) -> Uri:
    """The Request-URI for a peer UE identifier: a number (E.164, visual separators allowed)
    becomes tel:+digits (RFC 3966); a sip:/sips:/tel: URI is taken as written; user@domain
    becomes a sip: URI."""
    text = peer_ue.strip()
    try:
        if _NUMBER.fullmatch(text):
            digits = re.sub(r"[^0-9]", "", text)
            return parse_uri(f"tel:+{digits}")
        if re.match(r"(?i)(sips?|tel):", text):
            return parse_uri(text)
        if "@" in text:
            return parse_uri(f"sip:{text}")
    except ParseError as exc:
        raise UeUsageError(f"peer UE identifier {peer_ue!r} is not usable: {exc}") from None
    raise UeUsageError(
        f"peer UE identifier {peer_ue!r} is neither a number, a URI nor user@domain"
    )


class UeClient:
    """A UE: `await UeClient.start(config, ask=..., rulebook=...)`, then `register()`.

    `ask(inquiry)` is called for permission inquiries the `rulebook` does not decide (return
    Decision.ALLOW / DENY, or None for no answer: the operator then refuses with cause 3).
    `on_incoming` (set it before calls can arrive) gets each incoming Connection; without it
    they queue for `accept()`. An incoming session whose checks failed goes, as a
    ConnectivityFailed naming the caller, to `on_incoming_failed(peer, error)` when set, else
    (without `on_incoming`) `accept()` raises it, else it is only logged. `connections`
    holds the open ones."""

    def __init__(self, config: UeConfig, ua: UserAgent, agent: UeAgent) -> None:
        self.config = config
        self.ua = ua
        self.agent = agent
        self.on_incoming: IncomingHandler | None = None
        self.on_incoming_failed: IncomingFailedHandler | None = None
        self.registered: Registered | None = None
        self.connections: set[Connection] = set()
        self._incoming: asyncio.Queue[Connection | ConnectivityFailed] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        ua.on_incoming = self._on_invite

    @classmethod
    async def start(
        cls,
        config: UeConfig,
        *,
        ask: AskCallback | None = None,
        rulebook: RuleBook | None = None,
    ) -> UeClient:
        """Bind the SIP socket on `config.bind_host` (a free port) and be ready to register."""
        ua = UserAgent(
            parse_uri(config.impu),
            display_name=config.name,
            outbound_proxy=Address("UDP", *config.pcscf),
        )
        await ua.start(host=config.bind_host)
        agent = UeAgent(ua, home_domain=config.home_domain, rulebook=rulebook, ask=ask)
        return cls(config, ua, agent)

    async def __aenter__(self) -> UeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- registration -------------------------------------------------------------------------

    async def register(self, *, expires: int = 600) -> Registered:
        """Register with `Supported: ueconnect` (so the operator sends this UE permission
        inquiries) and keep the registration refreshed; RegistrationFailed otherwise."""
        self._check_open()
        try:
            self.registered = await self.agent.register(
                SipUri(host=self.config.home_domain), username=self.config.impi,
                password=self.config.password, expires=expires,
            )  # fmt: skip
        except RegistrationError as exc:
            raise RegistrationFailed(exc.status_code, exc.reason) from None
        return self.registered

    async def publish_rules(self) -> Response:
        """Send the rule book to the operator (docs/extension.md section 6.3)."""
        self._check_open()
        return await self.agent.publish_rules()

    # -- outgoing -----------------------------------------------------------------------------

    async def connect(self, peer_ue: str, peer_mno: str, *,
                      application: str | None = None) -> Connection:
        """A connection to `peer_ue` (number or URI) at operator `peer_mno` (PLMN "001-02" or
        home domain); `application` goes in Application-ID (docs/extension.md section 5.6,
        what the peer's rules and inquiry see). Raises a ConnectRefused leaf for a refusal,
        ConnectivityFailed when no pair worked within `setup_timeout`, InvalidAnswer for an
        unusable answer."""
        self._check_open()
        if self.registered is None:
            raise UeUsageError("register() first: the operator serves registered UEs only")
        target = peer_uri(peer_ue)
        try:
            mno = parse_target_mno(peer_mno)
        except InvalidTargetMno as exc:
            raise UeUsageError(f"peer MNO identifier {peer_mno!r}: {exc}") from None
        extra = [("Require", OPTION_TAG), ("Supported", OPTION_TAG), (TARGET_MNO, str(mno))]
        if application is not None:
            if not _TOKEN.fullmatch(application):
                raise UeUsageError(f"application {application!r} is not a SIP token")
            extra.append(("Application-ID", application))
        started = time.perf_counter()
        ice = self._ice(controlling=True)
        call: Call | None = None
        try:
            local = await ice.gather()
            gathered = time.perf_counter()
            offer = build_offer(
                origin=Origin.for_address(self.config.bind_host, _session_id()),
                credentials=ice.credentials,
                candidates=local,
            )
            inviting = time.perf_counter()
            try:
                call = await self.ua.call(target, extra=extra, body=serialize_sdp(offer),
                                          content_type=SDP_TYPE)
            except CallFailed as failed:
                response = failed.response
                raise refusal_of(response.status_code, response.reason,
                                 response.headers.get_all("Reason")) from None
            try:
                stream = negotiated_endpoints(parse_sdp(call.remote_body), offer=offer)
            except SdpError as exc:
                raise InvalidAnswer(str(exc)) from None
            if stream.credentials is None:
                raise InvalidAnswer("no a=ice-ufrag/a=ice-pwd (RFC 8839 section 5.4)")
            checking = time.perf_counter()
            await ice.set_remote(stream.credentials, stream.candidates)
            path = await ice.connect(self.config.setup_timeout)
        except BaseException:
            await ice.close("the connection attempt failed")
            if call is not None and not call.ended.is_set():
                await _bye(call)
            raise
        done = time.perf_counter()
        timings = SetupTimings(gather_ms=_ms(started, gathered),
                               signalling_ms=_ms(inviting, checking),
                               checks_ms=_ms(checking, done))  # fmt: skip
        connection = Connection(
            call=call, ice=ice, path=path, setup_ms=_ms(started, done), timings=timings,
            peer=str(target), role="caller", on_closed=self.connections.discard,
        )  # fmt: skip
        self.connections.add(connection)
        logger.info("%s: connected to %s, %s", self.config.name, target, path)
        return connection

    # -- incoming -----------------------------------------------------------------------------

    async def accept(self, timeout: float | None = None) -> Connection:
        """The next incoming connection (when no `on_incoming` is set); TimeoutError after
        `timeout` seconds. Raises ConnectivityFailed (its `peer` the caller) for an incoming
        session whose checks failed, unless `on_incoming_failed` is set; the next accept()
        goes on with the next session."""
        self._check_open()
        outcome = await asyncio.wait_for(self._incoming.get(), timeout)
        if isinstance(outcome, ConnectivityFailed):
            raise outcome
        return outcome

    def _on_invite(self, incoming: IncomingCall) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(incoming))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, incoming: IncomingCall) -> None:
        started = time.perf_counter()
        request = incoming.request
        content_type = (request.headers.get("Content-Type") or "").partition(";")[0].strip()
        if self._closed:
            incoming.reject(480, "Temporarily Unavailable (the UE is closing)")
            return
        if content_type.lower() != SDP_TYPE or not request.body:
            incoming.reject(488, "Not Acceptable Here (no SDP offer)")
            return
        try:
            offer = parse_sdp(request.body)
            stream = stream_endpoints(offer, application_stream_index(offer))
        except SdpError as exc:
            incoming.reject(488, f"Not Acceptable Here (offer unusable: {exc})"[:120])
            return
        if stream.credentials is None:
            incoming.reject(488, "Not Acceptable Here (the offer has no ICE credentials)")
            return
        incoming.ring()
        peer = request.headers.get("P-Asserted-Identity") or str(request.from_.uri)
        ice = self._ice(controlling=False)
        call: Call | None = None
        try:
            gathering = time.perf_counter()
            try:
                local = await ice.gather()
                gathered = time.perf_counter()
                answer = build_answer(
                    offer,
                    origin=Origin.for_address(self.config.bind_host, _session_id()),
                    credentials=ice.credentials,
                    candidates=local,
                )
                await ice.set_remote(stream.credentials, stream.candidates)
            except (SdpError, UeUsageError) as exc:
                await ice.close("the offer could not be answered")
                if not incoming.answered:
                    incoming.reject(488, "Not Acceptable Here (no answer to the offer)")
                logger.warning("%s: cannot answer %s: %s", self.config.name, request.uri, exc)
                return
            if incoming.cancelled:
                await ice.close("the caller cancelled")
                return
            call = await incoming.accept(serialize_sdp(answer), SDP_TYPE)
            answered = time.perf_counter()
            path = await ice.connect(self.config.setup_timeout)  # closes ice when it fails
        except ConnectivityFailed as exc:
            failure = exc.incoming_from(peer)
            logger.warning("%s: incoming session failed: %s", self.config.name, failure)
            if call is not None:
                await _bye(call)
            await self._incoming_failed(peer, failure)
            return
        except asyncio.CancelledError:
            # The client is closing mid-setup: nothing of this session may stay open.
            await self._abandon(incoming, ice, call, "the UE closed during setup")
            raise
        except Exception:
            logger.exception("%s: answering %s failed", self.config.name, request.uri)
            await self._abandon(incoming, ice, call, "answering failed")
            return
        done = time.perf_counter()
        timings = SetupTimings(gather_ms=_ms(gathering, gathered),
                               signalling_ms=_ms(started, answered),
                               checks_ms=_ms(answered, done))  # fmt: skip
        connection = Connection(
            call=call, ice=ice, path=path, setup_ms=_ms(started, done), timings=timings,
            peer=peer, role="callee", on_closed=self.connections.discard,
        )  # fmt: skip
        self.connections.add(connection)
        logger.info("%s: accepted %s, %s", self.config.name, peer, path)
        if self.on_incoming is None:
            self._incoming.put_nowait(connection)
            return
        try:
            result = self.on_incoming(connection)
            if result is not None:
                await result
        except Exception:
            logger.exception("%s: on_incoming failed; closing the connection", self.config.name)
            await connection.close()

    async def _abandon(self, incoming: IncomingCall, ice: IceAgent, call: Call | None,
                       why: str) -> None:
        """Release an incoming session that will not become a Connection: its ICE socket,
        the session at the operators (BYE), or the INVITE still unanswered (480)."""
        await ice.close(why)
        if call is not None:
            if not call.ended.is_set():
                await _bye(call)
        elif not incoming.answered:
            incoming.reject(480, "Temporarily Unavailable (the UE is closing)")

    async def _incoming_failed(self, peer: str, failure: ConnectivityFailed) -> None:
        if self.on_incoming_failed is not None:
            try:
                result = self.on_incoming_failed(peer, failure)
                if result is not None:
                    await result
            except Exception:
                logger.exception("%s: on_incoming_failed failed", self.config.name)
        elif self.on_incoming is None:
            self._incoming.put_nowait(failure)

    # -- ending ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every connection (BYE), un-register (Expires: 0) and stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # Let each incoming session mid-setup release its socket and send its BYE.
            await asyncio.wait(tasks, timeout=ABANDON_TIMEOUT)
        for connection in list(self.connections):
            await connection.close()
        if self.registered is not None:
            with contextlib.suppress(SipError, TimeoutError):
                await asyncio.wait_for(self.ua.unregister(), 10)
            self.registered = None
        await self.agent.close()
        await self.ua.close()

    def _check_open(self) -> None:
        if self._closed:
            raise UeUsageError("this UeClient is closed")

    def _ice(self, *, controlling: bool) -> IceAgent:
        return IceAgent(
            controlling=controlling,
            bind_host=self.config.bind_host,
            policy=self.config.transport_policy,
            stun_server=self.config.stun_server,
        )


def _ms(began: float, ended: float) -> float:
    return (ended - began) * 1000


def _session_id() -> str:
    # RFC 8866 section 5.2: sess-id a numeric string, unique enough (62 random bits).
    return str(secrets.randbits(62))


async def _bye(call: Call) -> None:
    """End a session that will not be used; the operators release it (best effort)."""
    try:
        await asyncio.wait_for(call.bye(), 10)
    except (SipError, TimeoutError) as exc:
        logger.warning("BYE for %s failed: %s", call.dialog.id.call_id, exc)

