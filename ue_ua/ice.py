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
- Consent freshness (RFC 7675): aioice sends a consent check on the selected pair every
  interval (randomised 0.8-1.2, section 5.1) and gives up after the consent timeout (30 s,
  section 5.1); we surface that as `PathChanged(kind=None)` and the agent is closed.
- The path: kind "relay" when the selected pair's remote candidate is `typ relay`, else
  "direct".
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

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


class _PinnedConnection(aioice.Connection):
    """aioice's Connection gathering on given addresses only, with a configurable consent
    schedule, and (policy "relay") answering checks only from admitted remote addresses."""

    def __init__(
        self,
        *,
        addresses: Sequence[str],
        consent_interval: float,
        consent_timeout: float,
        gather_timeout: int,
        on_consent_lost: Callable[[], None],
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.addresses = list(addresses)
        self.consent_interval = consent_interval
        self.consent_failures = max(1, math.ceil(consent_timeout / consent_interval))
        self.gather_timeout = gather_timeout
        self.on_consent_lost = on_consent_lost
        self.admitted: set[_Address] | None = None  # None: every source (policy "all")
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
        self._local_candidates_end = True

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
        return self.admitted is None or (_canonical(addr[0]), addr[1]) in self.admitted

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
        """RFC 7675 section 5.1: a check on each selected pair every interval (randomised
        0.8-1.2), consent lost after `consent_failures` in a row unanswered."""
        assert self.remote_password is not None
        failures = 0
        while True:
            await asyncio.sleep(self.consent_interval * (0.8 + 0.4 * random.random()))
            for pair in self._nominated.values():
                request = self.build_request(pair, nominate=False)
                try:
                    await pair.protocol.request(
                        request, pair.remote_addr,
                        integrity_key=self.remote_password.encode("utf8"), retransmissions=0,
                    )  # fmt: skip
                    failures = 0
                except stun.TransactionError:
                    failures += 1
                if failures >= self.consent_failures:
                    logger.info("%s: consent to send expired (RFC 7675)", self)
                    self._query_consent_task = None  # close() must not cancel this task
                    self.on_consent_lost()
                    await self.close()
                    return

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


class IceAgent:
    """One ICE session of one UE: gather, learn the peer's candidates, check, then carry
    datagrams on the selected pair.

        agent = IceAgent(controlling=True, bind_host="127.0.0.1")
        candidates = await agent.gather()            # into the offer, with agent.credentials
        await agent.set_remote(peer_credentials, peer_candidates)
        path = await agent.connect(timeout=10.0)     # ConnectivityFailed otherwise
        await agent.send(b"..."); data = await agent.recv()
        await agent.close()

    `on_path_change` is called with a PathChanged when the path goes away (consent lost)."""

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
        )

    @property
    def closed(self) -> bool:
        return self._closed_why is not None

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
        remote = pair.remote_candidate
        kind: PathKind = "relay" if remote.type == CandidateType.RELAY else "direct"
        self.path = Path(kind, pair.local_addr, pair.remote_addr)
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

    def _consent_lost(self) -> None:
        if self._closed_why is not None:
            return
        self._closed_why = "consent lost: the peer stopped answering checks (RFC 7675)"
        self.path = None
        if self.on_path_change is not None:
            try:
                self.on_path_change(PathChanged(None, None, self._closed_why))
            except Exception:
                logger.exception("the path change handler failed")
