"""The UE's ICE agent (RFC 8445): a thin wrapper over `aioice.Connection`.

What it adds to aioice, and why:
- Local candidates only on the addresses we name (the UE's `bind_host`): aioice's own
  `gather_candidates` binds every interface of the machine, so it is replaced by
  `get_component_candidates(component=1, addresses=[bind_host])` (plus a server reflexive
  candidate when a STUN server is configured). This leans on aioice internals, hence the
  minor-version pin in pyproject.toml.
- Remote candidates come from the peer's SDP, with the operators' additions (`typ srflx` for
  a CGN mapping, `typ relay` for an operator relay, docs/extension.md section 8): they are
  `ims.sdp.Candidate`s converted here. FQDN and non-UDP candidates are ignored (RFC 8839
  section 5.1).
- Transport policy "relay" keeps only the peer's `typ relay` candidates and answers checks
  only from them, like WebRTC's iceTransportPolicy "relay" (RFC 9429 section 4.1.1) except
  that the relays are the operators', learned from SDP, not a TURN server of ours. On
  loopback every candidate is directly reachable, so the embedded demo asks for "relay" to
  route through the operators' relays.
- Triggered checks on In-Progress pairs (RFC 8445 section 7.3.1.4): a check arriving on a pair
  whose own check is in flight makes this agent check that pair again at once. aioice 0.13
  leaves such a pair to its retransmission timer (RTO 500 ms, RFC 8489 section 6.2.1), which
  costs the callee half a second whenever its first check was lost before the path opened
  (a CGN FILTER not yet installed, a relay not yet latched).
- A bounded setup: `connect(timeout)` raises `ConnectivityFailed` naming how many pairs were
  tried.
- What the socket accepts: a datagram is STUN only when its first byte is 0-3 (RFC 7983 section
  7) and it carries the magic cookie (RFC 8489 section 6); aioice alone also takes a datagram
  starting with any other byte for STUN when the rest happens to parse, swallowing it. Every
  other datagram is the application's, delivered only when its source is the remote address
  of a pair of this session on that socket that is valid (our check succeeded, RFC 8445
  section 7.2.5.3.2) or that the peer nominated with an authenticated check (section
  7.3.1.5); the rest (a stranger who learnt the UE's mapping) is dropped, logged and counted
  (`dropped_unvalidated`). aioice alone delivers datagrams from any source.
- Consent freshness (RFC 7675 section 5.1): a consent check on the selected pair every interval
  (randomised 0.8-1.2), each sent once and answered for as long as consent lasts (a response
  may come for an earlier check), and consent lost `consent_timeout` (30 s) after the last
  answered check was sent. aioice alone counts six failures of checks that accept a response
  within 500 ms only: consent then ends 27-39 s after the last answer, and ends although the
  peer answers every check when the round trip exceeds 500 ms. Loss is surfaced as
  `PathChanged(kind=None)` and the agent is closed.
- The path: kind "relay" when the selected pair's remote candidate is `typ relay`, else
  "direct". aioice changes the selected pair without telling when a later check nominates
  another pair (aggressive nomination, or a peer that moved); the agent then reports the new
  path as a `PathChanged`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import aioice
from aioice import stun
from aioice.ice import CandidatePair, StunProtocol

from ims.sdp import Candidate, CandidateType, IceCredentials
from ue_ua.errors import ConnectionClosed, ConnectivityFailed, UeUsageError

__all__ = [
    "CONSENT_INTERVAL",
    "CONSENT_TIMEOUT",
    "IceAgent",
    "Path",
    "PathChanged",
    "PathKind",
    "TransportPolicy",
    "from_aioice",
    "to_aioice",
    "usable_remote_candidates",
]

logger = logging.getLogger(__name__)

TransportPolicy = Literal["all", "relay"]
PathKind = Literal["direct", "relay"]
TRANSPORT_POLICIES: tuple[str, ...] = get_args(TransportPolicy)

CONSENT_INTERVAL = 5.0  # RFC 7675 section 5.1: a consent check every 5 s on average
CONSENT_TIMEOUT = 30.0  # RFC 7675 section 5.1: consent expires after 30 s without a response
COMPONENT = 1  # one component: the application's datagrams (no RTCP here)
_STUN_FIRST_BYTE_MAX = 3  # RFC 7983 section 7: a first byte 0-3 is STUN
_STUN_HEADER_LENGTH = 20  # RFC 8489 section 5
_MAGIC_COOKIE = stun.COOKIE.to_bytes(4, "big")  # RFC 8489 section 5, bytes 4-7
_LOGGED_SOURCES = 16  # strangers whose first dropped datagram is logged at INFO, per agent
_Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Path:
    """Where the datagrams go: `kind` "direct" (no relay on the selected pair) or "relay"
    (the peer's candidate is an operator's relay), `local` our socket, `remote` where we send."""

    kind: PathKind
    local: _Address
    remote: _Address


@dataclass(frozen=True, slots=True)
class PathChanged:
    """The path changed: `kind` and `path` are the new one, both None when the path is gone
    (consent lost, the session ended). `reason` says why, for a person."""

    kind: PathKind | None
    path: Path | None
    reason: str


def to_aioice(candidate: Candidate) -> aioice.Candidate | None:
    """An SDP candidate as aioice's; None for one an ICE agent ignores (FQDN or non-UDP, RFC
    8839 section 5.1; peer reflexive types are never signalled, RFC 8445 section 5.1.1)."""
    if candidate.is_fqdn or not candidate.is_udp:
        return None
    if candidate.type not in (CandidateType.HOST, CandidateType.SRFLX, CandidateType.RELAY):
        return None
    return aioice.Candidate(
        foundation=candidate.foundation,
        component=candidate.component,
        transport="udp",
        priority=candidate.priority,
        host=candidate.address,
        port=candidate.port,
        type=candidate.type,
        related_address=candidate.related_address,
        related_port=candidate.related_port,
    )


def from_aioice(candidate: aioice.Candidate) -> Candidate:
    """aioice's local candidate as an SDP candidate (RFC 8839 section 5.1)."""
    return Candidate(
        foundation=candidate.foundation[:32],
        component=candidate.component,
        transport="UDP",
        priority=candidate.priority,
        address=candidate.host,
        port=candidate.port,
        type=candidate.type,
        related_address=candidate.related_address,
        related_port=candidate.related_port,
    )


def usable_remote_candidates(
    candidates: Iterable[Candidate], policy: TransportPolicy
) -> tuple[Candidate, ...]:
    """The peer's candidates this agent pairs, in order: component 1, usable by aioice, and
    under policy "relay" only `typ relay` ones."""
    kept = []
    for candidate in candidates:
        if candidate.component != COMPONENT or to_aioice(candidate) is None:
            continue
        if policy == "relay" and candidate.type != CandidateType.RELAY:
            continue
        kept.append(candidate)
    return tuple(kept)


def _is_stun(data: bytes) -> bool:
    """A datagram for the STUN layer: first byte 0-3 (RFC 7983 section 7) and the magic cookie
    (RFC 8489 section 6). aioice itself ignores both, so without this a game datagram starting
    e.g. 0x40 0x01 0x00 0x00 plus 16 bytes parses as a Binding request and is swallowed."""
    return (len(data) >= _STUN_HEADER_LENGTH and data[0] <= _STUN_FIRST_BYTE_MAX
            and data[4:8] == _MAGIC_COOKIE)  # fmt: skip


class _Demultiplexer(asyncio.DatagramProtocol):
    """Sits in front of one of aioice's `StunProtocol`s as its transport's protocol: STUN goes
    to aioice unchanged, an application datagram to the connection's admission rule."""

    def __init__(self, stun_protocol: StunProtocol, connection: _PinnedConnection) -> None:
        self.stun_protocol = stun_protocol
        self.connection = connection

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        source = (addr[0], addr[1])  # an IPv6 four-tuple as a two-tuple, as aioice does
        if _is_stun(data):
            try:
                stun.parse_message(data)
            except Exception:  # aioice raises struct.error too on some malformed attributes
                pass  # not STUN after all: application data, as aioice would take it
            else:
                self.stun_protocol.datagram_received(data, source)
                return
        self.connection.application_datagram(data, source, self.stun_protocol)

    def error_received(self, exc: Exception) -> None:
        self.stun_protocol.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stun_protocol.connection_lost(exc)


class _ConsentCheck(stun.Transaction):
    """One consent check (RFC 7675 section 5.1): sent once, never retransmitted, and a valid
    response to it counts whenever it comes while consent lasts ("a response might be for a
    previous request"). Registered as the STUN transaction of its ID; never `run()`."""

    def __init__(self, request: stun.Message, pair: CandidatePair, key: bytes, sent_at: float,
                 on_answer: Callable[[_ConsentCheck], None]) -> None:
        super().__init__(request, pair.remote_addr, pair.protocol, retransmissions=0,
                         integrity_key=key)
        self.transaction_id = request.transaction_id
        self.pair = pair
        self.key = key
        self.sent_at = sent_at
        self.on_answer = on_answer

    def response_received(self, message: stun.Message, addr: tuple[str, int]) -> None:
        # Valid: a success response, authenticated with the peer's password, from the remote
        # transport address the check went to (RFC 7675 section 5.1).
        if (message.message_class == stun.Class.RESPONSE
                and _canonical_address(addr) == _canonical_address(self.pair.remote_addr)
                and message.check_message_integrity(self.key)):  # fmt: skip
            self.on_answer(self)


class _PinnedConnection(aioice.Connection):
    """aioice's Connection gathering on given addresses only, with a configurable consent
    schedule, delivering application datagrams only from the session's pairs, reporting a
    change of the selected pair, and (policy "relay") answering checks only from admitted
    remote addresses."""

    def __init__(
        self,
        *,
        addresses: Sequence[str],
        consent_interval: float,
        consent_timeout: float,
        gather_timeout: int,
        on_consent_lost: Callable[[], None],
        on_selected_change: Callable[[CandidatePair], None],
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.addresses = list(addresses)
        self.consent_interval = consent_interval
        self.consent_timeout = consent_timeout
        self.gather_timeout = gather_timeout
        self.on_consent_lost = on_consent_lost
        self.on_selected_change = on_selected_change
        self.admitted: set[_Address] | None = None  # None: every source (policy "all")
        self.dropped_unvalidated = 0  # application datagrams from outside the session's pairs
        self._logged_sources: set[_Address] = set()
        self._consent_since = 0.0  # when the last answered consent check was sent
        self._consent_checks: list[_ConsentCheck] = []  # sent within the consent timeout
        self._last_request: dict[CandidatePair, stun.Message] = {}  # per pair, for re-sending
        self._close_task: asyncio.Future[None] | None = None

    async def close(self) -> None:
        # One close, however many callers (the consent task, the application, a BYE).
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(super().close())
        await asyncio.shield(self._close_task)

    async def gather_candidates(self) -> None:
        if self._local_candidates_start:
            return
        self._local_candidates_start = True
        self._local_candidates += await self.get_component_candidates(
            component=COMPONENT, addresses=self.addresses, timeout=self.gather_timeout
        )
        for protocol in self._protocols:
            protocol.transport.set_protocol(_Demultiplexer(protocol, self))
        self._local_candidates_end = True

    def application_datagram(
        self, data: bytes, addr: _Address, protocol: StunProtocol
    ) -> None:
        """RFC 8445 section 12.1 lets the peer send on valid pairs only, and RFC 7675 makes
        consent per pair: what comes from anywhere else is not the peer's and is dropped."""
        if self._from_session_pair(addr, protocol):
            self.data_received(data, protocol.local_candidate.component)
            return
        self.dropped_unvalidated += 1
        source = _canonical_address(addr)
        if source in self._logged_sources or len(self._logged_sources) >= _LOGGED_SOURCES:
            logger.debug("%s: dropped a datagram from %s:%d (no pair of this session)",
                         self, *source)
        else:
            self._logged_sources.add(source)
            logger.info("%s: dropped a datagram from %s:%d: not the remote address of a pair "
                        "of this session (RFC 8445 section 12.1)", self, *source)

    def _from_session_pair(self, addr: _Address, protocol: StunProtocol) -> bool:
        selected = self._nominated.get(COMPONENT)
        if selected is not None and selected.protocol is protocol \
                and selected.remote_addr == addr:  # fmt: skip
            return True  # the common case, without the canonical forms
        source = _canonical_address(addr)
        return any(
            pair.protocol is protocol
            and (pair.state == CandidatePair.State.SUCCEEDED or pair.remote_nominated)
            and _canonical_address(pair.remote_addr) == source
            for pair in self._check_list
        )

    def check_complete(self, pair: CandidatePair) -> None:
        before = self._nominated.get(COMPONENT)
        super().check_complete(pair)
        after = self._nominated.get(COMPONENT)
        if before is not None and after is not None and after is not before:
            # A later check nominated another pair and aioice selected it: the new pair was
            # validated just now, which is its consent (RFC 7675 section 5.1).
            self._consent_since = asyncio.get_running_loop().time()
            self.on_selected_change(after)

    def request_received(
        self, message: stun.Message, addr: tuple[str, int], protocol: StunProtocol
    ) -> None:
        # Policy "relay": a check from anywhere but an admitted relay gets no answer, so no
        # peer reflexive pair around the relays can form (RFC 8445 section 7.3.1.3).
        if self._admits(addr):
            super().request_received(message, addr, protocol)

    def check_incoming(
        self, message: stun.Message, addr: tuple[str, int], protocol: StunProtocol
    ) -> None:
        # Checks queued before connect() meet the admission rule here.
        if self._admits(addr):
            super().check_incoming(message, addr, protocol)
            self._trigger_in_progress(addr, protocol)

    def _admits(self, addr: tuple[str, int]) -> bool:
        return self.admitted is None or _canonical_address(addr) in self.admitted

    def build_request(self, pair: CandidatePair, nominate: bool) -> stun.Message:
        request = super().build_request(pair, nominate)
        self._last_request[pair] = request
        return request

    def _trigger_in_progress(self, addr: tuple[str, int], protocol: StunProtocol) -> None:
        """RFC 8445 section 7.3.1.4: a check received on an In-Progress pair triggers a check
        of that pair now (aioice already does it for Frozen, Waiting and Failed pairs).

        The request goes out again at once on the check's own STUN transaction, same
        transaction ID (a retransmission, RFC 8489 section 6.2.1), rather than on a new one:
        a response to either sending ends the transaction and with it the pending
        retransmission timer, so a late response to the first sending still counts, as the
        section asks of a cancelled transaction."""
        for pair in self._check_list:
            if pair.protocol is not protocol or pair.remote_addr != addr:
                continue
            request = self._last_request.get(pair)
            if (pair.state == CandidatePair.State.IN_PROGRESS and request is not None
                    and request.transaction_id in protocol.transactions):  # fmt: skip
                logger.debug("%s: triggered check on %s (RFC 8445 7.3.1.4)", self, pair)
                protocol.send_stun(request, pair.remote_addr)
            return

    async def query_consent(self) -> None:
        """RFC 7675 section 5.1: a consent check on the selected pair every interval
        (randomised 0.8-1.2, section 5.1), consent lost `consent_timeout` after the last
        answered check was sent (ICE's own check grants the first consent)."""
        assert self.remote_password is not None
        key = self.remote_password.encode("utf8")
        loop = asyncio.get_running_loop()
        self._consent_since = now = loop.time()
        next_check = now + self._consent_delay()
        while True:
            now = loop.time()
            expiry = self._consent_since + self.consent_timeout
            if now >= expiry:
                logger.info("%s: consent to send expired (RFC 7675 section 5.1)", self)
                self._query_consent_task = None  # close() must not cancel this task
                self.on_consent_lost()
                await self.close()
                return
            if now >= next_check:
                self._send_consent_check(key, now)
                next_check = now + self._consent_delay()
            await asyncio.sleep(min(next_check, expiry) - now)

    def _consent_delay(self) -> float:
        return self.consent_interval * (0.8 + 0.4 * random.random())

    def _send_consent_check(self, key: bytes, now: float) -> None:
        # Checks older than the consent timeout no longer count: forget their transactions.
        for check in self._consent_checks:
            if check.sent_at < now - self.consent_timeout:
                check.pair.protocol.transactions.pop(check.transaction_id, None)
        self._consent_checks = [c for c in self._consent_checks
                                if c.sent_at >= now - self.consent_timeout]
        pair = self._nominated.get(COMPONENT)
        if pair is None:
            return
        request = self.build_request(pair, nominate=False)  # a new transaction ID each time
        request.add_message_integrity(key)
        check = _ConsentCheck(request, pair, key, now, self._consent_answered)
        pair.protocol.transactions[request.transaction_id] = check
        self._consent_checks.append(check)
        pair.protocol.send_stun(request, pair.remote_addr)

    def _consent_answered(self, check: _ConsentCheck) -> None:
        if check.pair is self._nominated.get(COMPONENT):
            self._consent_since = max(self._consent_since, check.sent_at)

    def pairs(self) -> tuple[int, int]:
        """(pairs whose check started, pairs in the check list)."""
        idle = (CandidatePair.State.FROZEN, CandidatePair.State.WAITING)
        tried = sum(1 for p in self._check_list if p.state not in idle)
        return tried, len(self._check_list)

    def selected(self) -> CandidatePair | None:
        return self._nominated.get(COMPONENT)


def _canonical(host: str) -> str:
    try:
        return ipaddress.ip_address(host.split("%")[0]).compressed
    except ValueError:
        return host


def _canonical_address(addr: tuple[str, int]) -> _Address:
    return _canonical(addr[0]), addr[1]


class IceAgent:
    """One ICE session of one UE: gather, learn the peer's candidates, check, then carry
    datagrams on the selected pair.

        agent = IceAgent(controlling=True, bind_host="127.0.0.1")
        candidates = await agent.gather()            # into the offer, with agent.credentials
        await agent.set_remote(peer_credentials, peer_candidates)
        path = await agent.connect(timeout=10.0)     # ConnectivityFailed otherwise
        await agent.send(b"..."); data = await agent.recv()
        await agent.close()

    `on_path_change` is called with a PathChanged when the path changes (another pair selected)
    or goes away (consent lost). `dropped_unvalidated` counts the datagrams dropped because
    their source is not the remote address of a pair of this session."""

    def __init__(
        self,
        *,
        controlling: bool,
        bind_host: str,
        policy: TransportPolicy = "all",
        stun_server: _Address | None = None,
        consent_interval: float = CONSENT_INTERVAL,
        consent_timeout: float = CONSENT_TIMEOUT,
        gather_timeout: int = 3,
        credentials: IceCredentials | None = None,
    ) -> None:
        if policy not in TRANSPORT_POLICIES:
            raise UeUsageError(f"transport policy {policy!r} is not one of {TRANSPORT_POLICIES}")
        try:
            ipaddress.ip_address(bind_host)
        except ValueError:
            raise UeUsageError(f"bind_host {bind_host!r} is not an IP address") from None
        if consent_interval <= 0 or consent_timeout < consent_interval:
            raise UeUsageError("consent_interval must be > 0 and <= consent_timeout")
        self.controlling = controlling
        self.policy: TransportPolicy = policy
        self.credentials = credentials or IceCredentials.generate(secrets.token_bytes)
        self.on_path_change: Callable[[PathChanged], None] | None = None
        self.path: Path | None = None
        self.local_candidates: tuple[Candidate, ...] = ()
        self.remote_candidates: tuple[Candidate, ...] = ()
        self._closed_why: str | None = None
        self._connection = _PinnedConnection(
            ice_controlling=controlling,
            addresses=[bind_host],
            stun_server=stun_server,
            local_username=self.credentials.ufrag,
            local_password=self.credentials.pwd,
            use_ipv4=True,
            use_ipv6=True,
            consent_interval=consent_interval,
            consent_timeout=consent_timeout,
            gather_timeout=gather_timeout,
            on_consent_lost=self._consent_lost,
            on_selected_change=self._selected_changed,
        )

    @property
    def closed(self) -> bool:
        return self._closed_why is not None

    @property
    def dropped_unvalidated(self) -> int:
        """Datagrams dropped because their source is not the remote address of a pair of this
        session (a stranger who learnt the UE's address and port, RFC 8445 section 12.1)."""
        return self._connection.dropped_unvalidated

    async def gather(self) -> tuple[Candidate, ...]:
        """Bind on `bind_host` (a free port) and, with a STUN server, learn the server
        reflexive candidate; returns the local candidates for the SDP."""
        await self._connection.gather_candidates()
        gathered = tuple(from_aioice(c) for c in self._connection.local_candidates)
        if not gathered:
            raise UeUsageError("no local candidate: could not bind a UDP socket on bind_host")
        self.local_candidates = gathered
        return gathered

    async def set_remote(
        self, credentials: IceCredentials, candidates: Iterable[Candidate]
    ) -> tuple[Candidate, ...]:
        """The peer's ufrag/pwd and candidates (end of candidates: none trickle later);
        returns the candidates kept under the transport policy."""
        kept = usable_remote_candidates(candidates, self.policy)
        connection = self._connection
        connection.remote_username = credentials.ufrag
        connection.remote_password = credentials.pwd
        if self.policy == "relay":
            connection.admitted = {(_canonical(c.address), c.port) for c in kept}
        for candidate in kept:
            converted = to_aioice(candidate)
            if converted is not None:
                await connection.add_remote_candidate(converted)
        await connection.add_remote_candidate(None)  # RFC 8838 section 8.2: end-of-candidates
        self.remote_candidates = kept
        return kept

    async def connect(self, timeout: float) -> Path:
        """Run the checks (controlling: nominate, RFC 8445 section 8.1) for at most `timeout`
        seconds; the selected path, or ConnectivityFailed (the agent is then closed)."""
        if not self.local_candidates:
            raise UeUsageError("gather() first")
        if self._connection.remote_password is None:
            raise UeUsageError("set_remote() first")
        detail = ""
        try:
            await asyncio.wait_for(self._connection.connect(), timeout)
        except TimeoutError:
            detail = "the checks timed out"
        except ConnectionError:
            detail = "every pair failed its checks"
            if not self.remote_candidates:
                detail = ("the peer offered no usable candidate"
                          + (" of type relay (transport policy relay)"
                             if self.policy == "relay" else ""))  # fmt: skip
        pair = self._connection.selected()
        if detail or pair is None:
            tried, total = self._connection.pairs()
            await self.close("connectivity checks failed")
            raise ConnectivityFailed(tried, total, timeout, detail or "no pair selected")
        self.path = _path_of(pair)
        return self.path

    async def send(self, data: bytes) -> None:
        """Send one datagram on the selected pair."""
        if self._closed_why is not None:
            raise ConnectionClosed(self._closed_why)
        try:
            await self._connection.send(data)
        except ConnectionError:
            raise ConnectionClosed(self._closed_why or "no selected pair") from None

    async def recv(self) -> bytes:
        """The next datagram; ConnectionClosed once the agent is closed."""
        if self._closed_why is not None:
            raise ConnectionClosed(self._closed_why)
        try:
            return await self._connection.recv()
        except ConnectionError:
            raise ConnectionClosed(self._closed_why or "no selected pair") from None

    async def close(self, why: str = "closed locally") -> None:
        """Close the sockets (idempotent); a pending recv() raises ConnectionClosed."""
        if self._closed_why is None:
            self._closed_why = why
        await self._connection.close()

    def _selected_changed(self, pair: CandidatePair) -> None:
        # Before connect() returns it reads the selected pair itself; after close, no path.
        if self.path is None or self._closed_why is not None:
            return
        path = _path_of(pair)
        if path == self.path:
            return
        self.path = path
        self._notify(PathChanged(path.kind, path, f"the selected pair is now {path.local[0]}:"
                                 f"{path.local[1]} -> {path.remote[0]}:{path.remote[1]}, "
                                 "nominated by a later check (RFC 8445 section 8.1.1)"))

    def _consent_lost(self) -> None:
        if self._closed_why is not None:
            return
        self._closed_why = "consent lost: the peer stopped answering checks (RFC 7675)"
        self.path = None
        self._notify(PathChanged(None, None, self._closed_why))

    def _notify(self, event: PathChanged) -> None:
        if self.on_path_change is not None:
            try:
                self.on_path_change(event)
            except Exception:
                logger.exception("the path change handler failed")


def _path_of(pair: CandidatePair) -> Path:
    kind: PathKind = "relay" if pair.remote_candidate.type == CandidateType.RELAY else "direct"
    return Path(kind, pair.local_addr, pair.remote_addr)
