"""The UE developer API (ue_ua.client, ue_ua.connection, ue_ua.errors) end to end on the
embedded world: both operators on loopback with their relays (ims/embedded.py)."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ims.embedded import EmbeddedWorld
from ims.extension import OPTION_TAG, TARGET_MNO, parse_target_mno
from ims.permission.bodies import Inquiry
from ims.permission.outcomes import Decision, Outcome, response_of
from ims.sdp import (
    Candidate,
    CandidateType,
    IceCredentials,
    Origin,
    build_answer,
    build_offer,
    candidate_foundation,
    candidate_priority,
    parse_sdp,
    serialize_sdp,
)
from ims.sip.uri import SipUri, TelUri
from ims.sip.useragent import Call, IncomingCall, UserAgent
from ue_ua.agent import UeAgent
from ue_ua.client import UeClient, UeConfig, peer_uri
from ue_ua.connection import Connection
from ue_ua.errors import (
    REFUSALS,
    ConnectionClosed,
    ConnectivityFailed,
    ConnectRefused,
    DeniedByCallee,
    NotRegistered,
    OtherRefusal,
    UeUsageError,
    UnknownNumber,
    UnknownOperator,
    refusal_of,
)
from ue_ua.game_session import percentile
from ue_ua.ice import IceAgent, PathChanged

DAVE_E164 = "+15550100002"
BETA = "001-02"


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def config(world: EmbeddedWorld, name: str, **overrides: Any) -> UeConfig:
    sub = world.subscriber(name)
    pcscf = world.pcscf(sub.operator)
    return UeConfig(name=sub.name, impu=sub.sip_uri, impi=sub.impi, password=sub.password,
                    home_domain=sub.domain, pcscf=(pcscf.host, pcscf.port), **overrides)


def answering(decision: Decision | None) -> Callable[[Inquiry], Awaitable[Decision | None]]:
    async def ask(inquiry: Inquiry) -> Decision | None:
        return decision

    return ask


def open_at_gateways(world: EmbeddedWorld) -> int:
    return sum(len(op.gateway.open_legs()) + op.gateway.relay.open_sockets()
               for op in world.operators.values() if op.gateway is not None)


async def released(world: EmbeddedWorld) -> int:
    """Open relay legs and sockets once the gateways had (bounded) time to release."""
    for _ in range(100):
        if not open_at_gateways(world):
            return 0
        await asyncio.sleep(0.02)
    return open_at_gateways(world)


@asynccontextmanager
async def bill_and_dave(tmp_path: Path, *, decision: Decision | None = Decision.ALLOW,
                        register_dave: bool = True, **overrides: Any,
                        ) -> AsyncIterator[tuple[EmbeddedWorld, UeClient, UeClient]]:
    async with EmbeddedWorld.start(tmp_path / "world", trace=False) as world:
        bill = await UeClient.start(config(world, "Bill", **overrides))
        dave = await UeClient.start(config(world, "Dave", **overrides),
                                    ask=answering(decision))
        try:
            await bill.register()
            if register_dave:
                await dave.register()
            yield world, bill, dave
        finally:
            await bill.close()
            await dave.close()


# -- connections ----------------------------------------------------------------------------------


def test_bill_connects_to_dave_through_both_relays(tmp_path: Path) -> None:
    async def main() -> None:
        async with bill_and_dave(tmp_path, transport_policy="relay") as (world, bill, dave):
            conn = await bill.connect(DAVE_E164, BETA)
            peer = await dave.accept(timeout=5)
            assert conn.path is not None and peer.path is not None
            assert conn.path.kind == "relay" and peer.path.kind == "relay"
            # Each UE sends to the relay port its own operator opened for it.
            assert conn.path.remote[0].startswith("127.0.1.")  # Alpha's plan addresses
            assert peer.path.remote[0].startswith("127.0.2.")  # Beta's
            assert conn.path.local[0] == peer.path.local[0] == "127.0.0.1"
            assert 0 < conn.setup_ms < 10_000 and 0 < peer.setup_ms < 10_000
            # The split (SetupTimings): the caller's parts follow each other; the callee
            # gathers while answering, so its gather lies inside its signalling.
            bill_t, dave_t = conn.timings, peer.timings
            assert min(bill_t.gather_ms, bill_t.signalling_ms, bill_t.checks_ms) > 0
            assert min(dave_t.gather_ms, dave_t.signalling_ms, dave_t.checks_ms) > 0
            assert bill_t.gather_ms + bill_t.signalling_ms + bill_t.checks_ms <= conn.setup_ms
            assert dave_t.gather_ms < dave_t.signalling_ms
            assert dave_t.signalling_ms + dave_t.checks_ms <= peer.setup_ms
            # Dave's INVITE -> 200 is a part of Bill's INVITE -> 2xx.
            assert dave_t.signalling_ms < bill_t.signalling_ms
            assert "+15550100001" in peer.peer and conn.role == "caller"
            legs = [op.gateway.open_legs() for op in world.operators.values() if op.gateway]
            assert [len(held) for held in legs] == [1, 1]  # one relay leg at each operator

            rtts: list[float] = []
            for i in range(200):
                sent = time.perf_counter()
                await conn.send(b"bill %d" % i)
                assert await asyncio.wait_for(peer.recv(), 2) == b"bill %d" % i
                await peer.send(b"dave %d" % i)
                assert await asyncio.wait_for(conn.recv(), 2) == b"dave %d" % i
                rtts.append((time.perf_counter() - sent) * 1000)
            assert percentile(rtts, 0.5) < 50, rtts  # loopback through two relays: ~1 ms

            await conn.close()
            assert conn.closed and conn.path is None
            await asyncio.wait_for(peer.wait_closed(), 5)
            assert peer.path_changes.get_nowait() == PathChanged(
                None, None, "the peer ended the session (BYE)")
            with pytest.raises(ConnectionClosed, match="BYE"):
                await peer.recv()
            with pytest.raises(ConnectionClosed):
                await conn.send(b"late")
            assert await released(world) == 0
            assert bill.connections == set() and dave.connections == set()

    run(main())


def test_policy_all_on_loopback_is_direct_and_the_callee_may_hang_up(tmp_path: Path) -> None:
    async def main() -> None:
        async with bill_and_dave(tmp_path) as (world, bill, dave):
            incoming: asyncio.Queue[Connection] = asyncio.Queue()
            dave.on_incoming = incoming.put_nowait
            conn = await bill.connect(DAVE_E164, BETA)
            peer = await asyncio.wait_for(incoming.get(), 5)
            assert conn.path is not None and peer.path is not None
            # Loopback reaches Dave's host candidate: the direct pair wins (RFC 8445 5.1.2).
            assert conn.path.kind == peer.path.kind == "direct"
            assert conn.path.remote == peer.path.local and peer.path.remote == conn.path.local
            await peer.send(b"hello")
            assert await asyncio.wait_for(conn.recv(), 2) == b"hello"
            pending = asyncio.ensure_future(conn.recv())
            await peer.close()  # the callee's BYE
            with pytest.raises(ConnectionClosed, match="BYE"):
                await asyncio.wait_for(pending, 5)
            assert (await conn.path_changes.get()).kind is None
            assert await released(world) == 0

    run(main())


def test_deny_is_denied_by_callee_603_cause_2(tmp_path: Path) -> None:
    async def main() -> None:
        async with bill_and_dave(tmp_path, decision=Decision.DENY) as (world, bill, dave):
            with pytest.raises(DeniedByCallee) as caught:
                await bill.connect(DAVE_E164, BETA)
            assert (caught.value.status, caught.value.cause) == (603, 2)
            assert caught.value.reason == "Decline (denied by the callee)"
            assert await released(world) == 0
            assert bill.connections == set() and dave._incoming.empty()

    run(main())


def test_unknown_number_is_unknown_number(tmp_path: Path) -> None:
    async def main() -> None:
        async with bill_and_dave(tmp_path) as (world, bill, _):
            with pytest.raises(UnknownNumber) as caught:
                await bill.connect("+15550100099", BETA)
            # Section 7 says cause 7; a 404 without it is read the same (see refusal_of).
            assert caught.value.status == 404 and caught.value.cause in (7, None)
            assert await released(world) == 0

    run(main())


def test_dave_not_registered_is_not_registered(tmp_path: Path) -> None:
    async def main() -> None:
        async with bill_and_dave(tmp_path, register_dave=False) as (world, bill, _):
            with pytest.raises(NotRegistered) as caught:
                await bill.connect(DAVE_E164, BETA)
            assert (caught.value.status, caught.value.cause) == (480, 4)
            assert await released(world) == 0

    run(main())


def test_setup_timeout_is_connectivity_failed_and_releases(tmp_path: Path) -> None:
    # Dave's UE answers 200 but its candidate never answers a check (a stock UE whose socket
    # is silent): Bill's checks run out of time, Bill ends the session.
    async def main() -> None:
        async with EmbeddedWorld.start(tmp_path / "world", trace=False) as world:
            bill = await UeClient.start(config(world, "Bill", setup_timeout=1.0))
            sub = world.subscriber("Dave")
            dave = UserAgent(SipUri(host=sub.domain, user=sub.e164),
                             outbound_proxy=world.pcscf("Beta"))
            await dave.start()
            agent = UeAgent(dave, home_domain=sub.domain, ask=answering(Decision.ALLOW))
            silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            silent.bind(("127.0.0.1", 0))
            host, port = silent.getsockname()
            ended: list[Any] = []

            async def answer(incoming: IncomingCall) -> None:
                candidate = Candidate(candidate_foundation("host", host), 1, "UDP",
                                      candidate_priority("host"), host, port, CandidateType.HOST)
                body = serialize_sdp(build_answer(
                    parse_sdp(incoming.request.body), origin=Origin.for_address(host, "1"),
                    credentials=IceCredentials.generate(secrets.token_bytes),
                    candidates=[candidate]))
                call = await incoming.accept(body, "application/sdp")
                await call.ended.wait()
                ended.append(call)

            dave.on_incoming = answer
            try:
                await bill.register()
                await agent.register(SipUri(host=sub.domain), username=sub.impi,
                                     password=sub.password)
                began = time.monotonic()
                with pytest.raises(ConnectivityFailed) as caught:
                    await bill.connect(DAVE_E164, BETA)
                assert 0.9 < time.monotonic() - began < 5
                # Dave's host and both relays: three pairs, at least one tried.
                assert caught.value.pairs_total == 3 and caught.value.pairs_tried >= 1
                assert "pairs tried" in str(caught.value)
                for _ in range(100):
                    if ended:
                        break
                    await asyncio.sleep(0.02)
                assert ended, "Bill did not end the failed session with a BYE"
                assert await released(world) == 0
            finally:
                silent.close()
                await bill.close()
                await agent.close()
                await dave.close()

    run(main())


@asynccontextmanager
async def silent_bill(world: EmbeddedWorld) -> AsyncIterator[Callable[[], Awaitable[Call]]]:
    """Bill as a UE whose ICE socket never answers a check: a raw user agent, registered with
    `Supported: ueconnect`, whose offer has one host candidate on a silent socket. Yields
    what calls Dave (returns the confirmed call)."""
    sub = world.subscriber("Bill")
    ua = UserAgent(SipUri(host=sub.domain, user=sub.e164), outbound_proxy=world.pcscf("Alpha"))
    await ua.start()
    agent = UeAgent(ua, home_domain=sub.domain)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    host, port = silent.getsockname()

    async def call_dave() -> Call:
        offer = build_offer(
            origin=Origin.for_address(host, "1"),
            credentials=IceCredentials.generate(secrets.token_bytes),
            candidates=[Candidate(candidate_foundation("host", host), 1, "UDP",
                                  candidate_priority("host"), host, port, CandidateType.HOST)])
        extra = [("Require", OPTION_TAG), ("Supported", OPTION_TAG),
                 (TARGET_MNO, str(parse_target_mno(BETA)))]
        return await ua.call(peer_uri(DAVE_E164), extra=extra, body=serialize_sdp(offer),
                             content_type="application/sdp")

    try:
        await agent.register(SipUri(host=sub.domain), username=sub.impi, password=sub.password)
        yield call_dave
    finally:
        silent.close()
        await agent.close()
        await ua.close()


def test_callee_checks_failing_reach_the_app(tmp_path: Path) -> None:
    # Dave's checks fail (Bill never answers one): Dave ends the session and his app is told,
    # through accept() (queue style) or on_incoming_failed(peer, error) when set.
    async def main() -> None:
        async with EmbeddedWorld.start(tmp_path / "world", trace=False) as world:
            dave = await UeClient.start(config(world, "Dave", setup_timeout=0.5),
                                        ask=answering(Decision.ALLOW))
            try:
                await dave.register()
                async with silent_bill(world) as call_dave:
                    call = await call_dave()
                    with pytest.raises(ConnectivityFailed) as caught:
                        await dave.accept(timeout=5)
                    assert caught.value.peer is not None and "+15550100001" in caught.value.peer
                    assert "incoming from" in str(caught.value) and "pairs tried" in str(
                        caught.value)
                    await asyncio.wait_for(call.ended.wait(), 5)  # Dave's BYE
                    assert dave.connections == set()

                    failed: asyncio.Queue[tuple[str, ConnectivityFailed]] = asyncio.Queue()
                    accepted: list[Connection] = []
                    dave.on_incoming = accepted.append
                    dave.on_incoming_failed = lambda peer, error: failed.put_nowait(
                        (peer, error))
                    call = await call_dave()
                    peer, error = await asyncio.wait_for(failed.get(), 5)
                    assert "+15550100001" in peer and error.peer == peer
                    assert error.pairs_tried >= 1 and error.timeout == 0.5
                    await asyncio.wait_for(call.ended.wait(), 5)
                    assert accepted == [] and dave._incoming.empty()
                    assert await released(world) == 0
            finally:
                await dave.close()

    run(main())


def test_closing_mid_checks_closes_the_incoming_ice_socket(tmp_path: Path) -> None:
    # Dave's UE closes while an incoming session is still in its checks: the session's ICE
    # socket is closed and the session ended (BYE), so the operators release it.
    async def main() -> None:
        async with EmbeddedWorld.start(tmp_path / "world", trace=False) as world:
            dave = await UeClient.start(config(world, "Dave", setup_timeout=30),
                                        ask=answering(Decision.ALLOW))
            agents: list[IceAgent] = []
            make_agent = dave._ice

            def recorded(*, controlling: bool) -> IceAgent:
                agents.append(make_agent(controlling=controlling))
                return agents[-1]

            dave._ice = recorded  # type: ignore[method-assign]
            try:
                await dave.register()
                async with silent_bill(world) as call_dave:
                    call = await call_dave()  # Dave answered 200 and now checks, in vain
                    (agent,) = agents
                    (local,) = agent.local_candidates
                    await asyncio.sleep(0.1)
                    assert not agent.closed
                    await asyncio.wait_for(dave.close(), 10)
                    assert agent.closed
                    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    try:
                        probe.bind((local.address, local.port))  # EADDRINUSE if still open
                    finally:
                        probe.close()
                    await asyncio.wait_for(call.ended.wait(), 5)  # Dave's BYE
                    assert await released(world) == 0
            finally:
                await dave.close()

    run(main())


def test_api_misuse_is_a_usage_error(tmp_path: Path) -> None:
    async def main() -> None:
        async with EmbeddedWorld.start(tmp_path / "world", trace=False) as world:
            bill = await UeClient.start(config(world, "Bill"))
            with pytest.raises(UeUsageError, match="register"):
                await bill.connect(DAVE_E164, BETA)
            await bill.register()
            with pytest.raises(UeUsageError, match="MNO"):
                await bill.connect(DAVE_E164, "not an operator!")
            with pytest.raises(UeUsageError, match="peer UE"):
                await bill.connect("dave", BETA)
            await bill.close()
            with pytest.raises(UeUsageError, match="closed"):
                await bill.register()
            await bill.close()  # idempotent

    run(main())


# -- units: config, peer identifiers, refusals ----------------------------------------------------


def test_config_is_validated() -> None:
    good: dict[str, Any] = dict(name="Bill", impu="sip:+15550100001@ims.example.org",
                                impi="bill@ims.example.org", password="pw",
                                home_domain="ims.example.org", pcscf=("127.0.1.1", 5100))
    assert UeConfig(**good).transport_policy == "all"
    changes: list[tuple[dict[str, Any], str]] = [
        ({"impu": "tel:+15550100001"}, "sip: URI"),
        ({"pcscf": ("pcscf.example.org", 5060)}, "not an IP address"),
        ({"pcscf": ("127.0.0.1", 0)}, "outside"),
        ({"bind_host": "any"}, "bind_host"),
        ({"transport_policy": "turn"}, "transport_policy"),
        ({"setup_timeout": 0}, "setup_timeout"),
        ({"stun_server": ("127.0.0.1", 70000)}, "stun_server"),
        ({"password": ""}, "empty"),
    ]
    for change, message in changes:
        with pytest.raises(UeUsageError, match=message):
            UeConfig(**{**good, **change})


def test_peer_identifiers_become_request_uris() -> None:
    number = peer_uri("+1 555 0100 002")
    assert isinstance(number, TelUri) and str(number) == "tel:+15550100002"
    assert str(peer_uri("15550100002")) == "tel:+15550100002"
    assert isinstance(peer_uri("sip:dave@ims.example.org"), SipUri)
    assert str(peer_uri("dave@ims.example.org")) == "sip:dave@ims.example.org"
    assert str(peer_uri("tel:+15550100002")) == "tel:+15550100002"
    with pytest.raises(UeUsageError):
        peer_uri("dave")


def test_every_section_7_outcome_has_its_refusal() -> None:
    # docs/extension.md section 7, row by row, as the operator writes it (ims.permission).
    for outcome in Outcome:
        final = response_of(outcome)
        if final.cause is None:
            continue
        assert final.reason is not None
        refusal = refusal_of(final.status_code, final.reason_phrase, [final.reason])
        assert type(refusal) is REFUSALS[final.cause]
        assert isinstance(refusal, ConnectRefused)
        assert (refusal.status, refusal.reason, refusal.cause) == (
            final.status_code, final.reason_phrase, final.cause)
    assert set(REFUSALS) == set(range(1, 12))


def test_rfc3326_reason_values_are_told_apart() -> None:
    # Several Reason values (RFC 3326 section 2): the ueconnect one decides, not the phrase.
    refusal = refusal_of(603, "Decline", ['SIP;cause=603;text="Decline", ueconnect;cause=2'])
    assert isinstance(refusal, DeniedByCallee)
    assert isinstance(refusal_of(486, "Busy Here", []), OtherRefusal)
    # A network that does not say the cause: 404 and 604 still mean what section 7 says.
    assert isinstance(refusal_of(404, "Not Found", []), UnknownNumber)
    assert isinstance(refusal_of(604, "Does Not Exist Anywhere", []), UnknownOperator)
    assert isinstance(refusal_of(486, "Busy Here", ['SIP;cause=486']), OtherRefusal)
    unknown = refusal_of(500, "Server Error", ["ueconnect;cause=99"])
    assert isinstance(unknown, OtherRefusal) and unknown.cause == 99
    assert isinstance(refusal_of(480, "x", ["ueconnect;cause=four"]), OtherRefusal)
