"""`ueconnect demo`: the flow on the embedded default, as far as this build carries it.

Both operators (P-CSCF, S-CSCF, border), the embedded DNS server and two UEs run on loopback
in this process (ims/embedded.py). The demo walks TR 22.807 section 4.2.3's flows that exist
in this build: both UEs register with their own operator; in the game lobby (JSON over
WebSocket) Bill invites Dave, they agree the rules with Bill's UE as session server and Dave's
UE forwards its UE and MNO identifiers; Bill's UE asks for a connection to Dave with them
(Require: ueconnect, Target-MNO); Alpha locates Beta through ENUM and RFC 3263; Beta's
permission function asks Dave's UE, which allows; each operator relays its UE's side and adds
its relay to the SDP; Dave's UE answers; 100 datagrams go each way with their RTT; the call is
ended and every relay is released; both UEs unregister. Each step prints with its time, the SIP
ladder of the call prints at the end and is written as HTML. Exit status 0 only when every step
behaved.

`--scenario` picks the flow (play as above; deny: Dave's app refuses and Bill gets 603, cause 2
of docs/extension.md section 7; same-mno: Bill -> Carol inside Alpha; relay: as play, the relay
being the only path on loopback; unassisted: needs the namespace testbed, exit 2). `--json`
prints one JSON object with the outcome (the step lines go to stderr); `--serve` keeps the
world running for any SIP client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, cast

from ims.config import ConfigError
from ims.dns.errors import DnsError
from ims.dns.locator import Locator, LocatorConfig
from ims.embedded import WORLD, DemoSubscriber, EmbeddedWorld
from ims.operator import OperatorError
from ims.permission.bodies import Inquiry
from ims.permission.outcomes import Decision
from ims.sdp import (
    Candidate,
    CandidateType,
    IceCredentials,
    Origin,
    build_answer,
    build_offer,
    candidate_foundation,
    candidate_priority,
    negotiated_endpoints,
    parse_sdp,
    serialize_sdp,
)
from ims.sip.errors import SipError
from ims.sip.transport import BindError
from ims.sip.uri import SipUri, parse_uri
from ims.sip.useragent import Call, CallFailed, IncomingCall, UserAgent
from ims.trace import TraceError, calls, read_trace, render_ladder, render_ladder_html
from ue_ua.agent import UeAgent
from ue_ua.lobby import (
    Accepted,
    GameRules,
    Identity,
    Invited,
    LobbyError,
    Player,
    Presence,
    Proposed,
    SessionServer,
    Welcome,
)
from ue_ua.lobby_ws import LobbyConnection, LobbyHandle, serve_lobby

DATAGRAMS = 100  # each way


class _GameSocket(asyncio.DatagramProtocol):
    """A UE's application socket: Dave's echoes, Bill's collects the echoes."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.transport: asyncio.DatagramTransport | None = None
        self.received: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
        self.count = 0  # datagrams received (for the echoing side: also sent back)
        self.first_at: float | None = None  # when the first one arrived (perf_counter)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.count += 1
        if self.first_at is None:
            self.first_at = time.perf_counter()
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)
        else:
            self.received.put_nowait((data, time.perf_counter()))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port


async def _game_socket(echo: bool) -> _GameSocket:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: _GameSocket(echo), local_addr=("127.0.0.1", 0)
    )
    return protocol


def _host_candidate(address: tuple[str, int]) -> Candidate:
    host, port = address
    return Candidate(
        candidate_foundation(CandidateType.HOST, host), 1, "UDP",
        candidate_priority(CandidateType.HOST), host, port, CandidateType.HOST,
    )  # fmt: skip


def _offer(address: tuple[str, int]) -> bytes:
    return serialize_sdp(
        build_offer(
            origin=Origin.for_address(address[0], "1"),
            credentials=IceCredentials.generate(secrets.token_bytes),
            candidates=[_host_candidate(address)],
        )
    )


def _answer(offer: bytes, address: tuple[str, int]) -> bytes:
    return serialize_sdp(
        build_answer(
            parse_sdp(offer),
            origin=Origin.for_address(address[0], "2"),
            credentials=IceCredentials.generate(secrets.token_bytes),
            candidates=[_host_candidate(address)],
        )
    )


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass(frozen=True)
class Scenario:
    """One `--scenario`: who calls whom and what the callee's application answers."""

    name: str
    caller: str
    callee: str
    decision: Decision
    summary: str


_ALL = (
    Scenario("play", "Bill", "Dave", Decision.ALLOW,
             "Bill (Alpha) connects to Dave (Beta); Dave allows"),
    Scenario("deny", "Bill", "Dave", Decision.DENY,
             "Bill (Alpha) asks for Dave (Beta); Dave's app answers deny"),
    Scenario("same-mno", "Bill", "Carol", Decision.ALLOW,
             "Bill connects to Carol, both at Alpha; Carol allows"),
    Scenario("relay", "Bill", "Dave", Decision.ALLOW,
             "Bill (Alpha) connects to Dave (Beta) through both operators' relays"),
    Scenario("unassisted", "Bill", "Dave", Decision.ALLOW,
             "Bill and Dave behind their CGNs without operator help"),
)  # fmt: skip
SCENARIOS = {s.name: s for s in _ALL}

TESTBED_MISSING = (
    "`ueconnect demo --testbed` is not available yet: the demo cannot yet start the operators "
    "and UEs inside the network namespaces that `ueconnect testbed up` builds (missing: the "
    "demo's testbed runner). Run the demo without --testbed for the embedded default on "
    "loopback."
)
UNASSISTED_NEEDS_TESTBED = (
    "the unassisted scenario needs --testbed (root): on the embedded default every UE shares "
    "loopback, so there is no CGN to fail through without the operators' help. Build the "
    "namespace testbed (`sudo ueconnect testbed up`) once `ueconnect demo --testbed` exists; "
    "until then try --scenario play, deny, same-mno or relay."
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the end-to-end demo on loopback",
        description=(
            "Run Bill (Alpha) -> Dave (Beta) on the embedded default: DNS, both operators and "
            "both UEs on loopback, no root. Steps print with their times, then the SIP ladder "
            "of the call; the ladder is also written as HTML under --out. The exit status is 0 "
            "only when every step behaved as it should (for --scenario deny: when Dave's "
            "refusal reached Bill and nothing was left open); 2 when the scenario cannot run here."
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("ueconnect-demo"),
        help="directory for the configs, stores, trace and ladder (default ./ueconnect-demo)",
    )
    parser.add_argument(
        "--scenario",
        choices=list(SCENARIOS),
        default="play",
        help="play: Bill -> Dave, allowed (default); deny: Dave refuses; same-mno: Bill -> "
        "Carol, both at Alpha; relay: as play, the relay being the path; unassisted: needs "
        "--testbed",
    )
    parser.add_argument(
        "--testbed",
        action="store_true",
        help="run in the network-namespace testbed (root; not available in this build yet)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with the outcome instead of the human view",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="start the embedded world and keep it running (until Ctrl-C or SIGTERM) for any "
        "SIP client; prints the P-CSCFs, the DNS server and the demo subscribers' credentials",
    )
    parser.set_defaults(func=_demo)


@dataclass
class _Report:
    """What `--json` prints; filled in as the steps run."""

    scenario: str
    caller: str
    callee: str
    steps: list[dict[str, object]] = field(default_factory=list)
    permission: str | None = None
    refusal: dict[str, object] | None = None
    path: str | None = None
    connected: bool = False
    setup_ms: float | None = None
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    rtts: list[float] = field(default_factory=list)
    leaked: dict[str, int] = field(
        default_factory=lambda: {"mappings": 0, "relays": 0, "sessions": 0, "registrations": 0}
    )

    def as_json(self, ok: bool) -> dict[str, object]:
        forward = f"{self.caller.lower()}_to_{self.callee.lower()}"
        backward = f"{self.callee.lower()}_to_{self.caller.lower()}"
        document: dict[str, object] = {
            "scenario": self.scenario,
            "ok": ok,
            "steps": self.steps,
            "permission": self.permission,
        }
        if self.refusal is not None:
            document["refusal"] = self.refusal
        document.update(
            path=self.path,
            connected=self.connected,
            setup_ms=None if self.setup_ms is None else round(self.setup_ms, 3),
            datagrams={
                name: {"sent": self.sent.get(name, 0), "received": self.received.get(name, 0)}
                for name in (forward, backward)
            },
            rtt_ms={
                "p50": round(_percentile(self.rtts, 0.5), 3) if self.rtts else None,
                "p95": round(_percentile(self.rtts, 0.95), 3) if self.rtts else None,
            },
            leaked=self.leaked,
        )
        return document


class _Steps:
    def __init__(self, report: _Report, out: TextIO) -> None:
        self.start = time.perf_counter()
        self.failed = False
        self.report = report
        self.out = out  # stdout for the human view, stderr under --json

    async def run(self, name: str, work: Callable[[], Awaitable[str]]) -> bool:
        if self.failed:
            print(f"  skip {name}", file=self.out, flush=True)
            self.report.steps.append({"name": name, "ok": False, "ms": None})
            return False
        began = time.perf_counter()
        try:
            detail = await asyncio.wait_for(work(), 15)
        except (DnsError, SipError, LobbyError, OSError, TimeoutError) as exc:
            self.failed = True
            why = str(exc) or type(exc).__name__
            print(f"  FAIL {name}: {why}", file=self.out, flush=True)
            took = (time.perf_counter() - began) * 1000
            self.report.steps.append({"name": name, "ok": False, "ms": round(took, 3)})
            return False
        took = (time.perf_counter() - began) * 1000
        at = (time.perf_counter() - self.start) * 1000
        self.report.steps.append({"name": name, "ok": True, "ms": round(took, 3)})
        print(f"  [{at:7.1f} ms] ok   {name} ({took:.1f} ms)\n{'':22}{detail}", file=self.out,
              flush=True)  # fmt: skip
        return True


def _plmn(operator: str) -> str:
    op = next(o for o in WORLD.operators if o.name == operator)
    return f"{op.mcc}-{op.mnc}"


def _open_relays(world: EmbeddedWorld) -> int:
    return sum(
        len(op.gateway.open_legs()) + op.gateway.relay.open_sockets()
        for op in world.operators.values()
        if op.gateway is not None
    )


async def _relays_released(world: EmbeddedWorld) -> None:
    """Wait (bounded) until every gateway has released its legs: they do it in a task."""
    open_relays = _open_relays(world)
    for _ in range(100):
        if not open_relays:
            return
        await asyncio.sleep(0.02)
        open_relays = _open_relays(world)
    raise SipError(f"{open_relays} relay legs or sockets still open")


def _bindings(world: EmbeddedWorld, subscribers: Iterable[DemoSubscriber]) -> int:
    now = time.time()
    return sum(
        len(world.stores[sub.operator].bindings.list_for_aor(sub.sip_uri, now))
        for sub in subscribers
    )


async def _scenario(out: Path, scenario: Scenario, as_json: bool) -> int:
    report = _Report(scenario.name, scenario.caller, scenario.callee)
    view = sys.stderr if as_json else sys.stdout
    steps = _Steps(report, view)
    refused = scenario.decision is not Decision.ALLOW
    async with EmbeddedWorld.start(out) as world:
        caller_sub = world.subscriber(scenario.caller)
        callee_sub = world.subscriber(scenario.callee)
        caller_name, callee_name = caller_sub.name, callee_sub.name
        target_plmn = _plmn(callee_sub.operator)
        print(
            f"ueconnect demo ({scenario.name}): {scenario.summary}\n"
            f"  world: DNS 127.0.0.1:{world.dns.port}, Alpha P-CSCF {world.pcscf('Alpha')}, "
            f"Beta P-CSCF {world.pcscf('Beta')}",
            file=view,
        )
        if scenario.name == "relay":
            print(
                "  on the embedded default the relay IS the path: no CGN stands between the "
                "UEs and there is no PCP or ICE here, so each operator's relay carries the "
                "datagrams, as in play",
                file=view,
            )
        caller = UserAgent(
            SipUri(host=caller_sub.domain, user=caller_sub.e164),
            display_name=caller_name,
            outbound_proxy=world.pcscf(caller_sub.operator),
        )
        callee = UserAgent(
            SipUri(host=callee_sub.domain, user=callee_sub.e164),
            display_name=callee_name,
            outbound_proxy=world.pcscf(callee_sub.operator),
        )
        await caller.start()
        await callee.start()
        asked: list[Inquiry] = []

        async def callee_decides(inquiry: Inquiry) -> Decision:
            # The callee's game asks them; in the demo they answer at once.
            asked.append(inquiry)
            return scenario.decision

        agents = {
            caller_name: UeAgent(caller, home_domain=caller_sub.domain),
            callee_name: UeAgent(callee, home_domain=callee_sub.domain, ask=callee_decides),
        }
        offered: list[IncomingCall] = []
        calls_made: dict[str, Call] = {}
        caller_game, callee_game = await _game_socket(echo=False), await _game_socket(echo=True)
        forward = f"{caller_name.lower()}_to_{callee_name.lower()}"
        backward = f"{callee_name.lower()}_to_{caller_name.lower()}"
        invite_sent = 0.0
        lobby_peer: dict[str, str] = {}
        lobbies: list[LobbyHandle] = []
        connections: list[LobbyConnection] = []

        async def answer(incoming: IncomingCall) -> None:
            offered.append(incoming)
            incoming.ring()
            body = _answer(incoming.request.body, callee_game.address)
            calls_made["callee"] = await incoming.accept(body, "application/sdp")

        callee.on_incoming = answer
        try:
            for sub in (caller_sub, callee_sub):

                async def reg(agent: UeAgent = agents[sub.name], sub: DemoSubscriber = sub) -> str:
                    got = await agent.register(
                        SipUri(host=sub.domain), username=sub.impi, password=sub.password
                    )
                    assoc = ", ".join(str(u) for u in got.associated_uris) or "-"
                    return f"200 OK, expires {got.expires} s, P-Associated-URI {assoc}"

                await steps.run(f"{sub.name} registers at {sub.operator} (digest)", reg)

            async def lobby() -> str:
                # TR 22.807 4.2.3 flow 2, application level: presence, invite, accept, rules,
                # the session server (the caller's UE), and the callee forwarding its UE and
                # MNO identifiers to it.
                handle = await serve_lobby("127.0.0.1", 0)
                lobbies.append(handle)
                url = f"ws://127.0.0.1:{handle.port}"
                me = Player(caller_sub.tel_uri, _plmn(caller_sub.operator), caller_name)
                peer = Player(callee_sub.tel_uri, target_plmn, callee_name)
                host = await LobbyConnection.open(url, me)
                guest = await LobbyConnection.open(url, peer)
                connections.extend((host, guest))
                for conn in (host, guest):
                    await conn.send(conn.client.hello())
                    await conn.expect(Welcome)
                while peer not in host.client.present:
                    await host.expect(Presence)
                await host.send(host.client.invite(peer.ue_id))
                sid = (await guest.expect(Invited)).session_id
                await guest.send(guest.client.accept(sid))
                await host.expect(Accepted)
                await host.send(host.client.host(sid, GameRules(tick_rate=30)))
                await guest.expect(Proposed)
                await guest.send(guest.client.agree(sid))
                rules = (await host.expect(SessionServer)).rules
                await guest.expect(SessionServer)
                await guest.send(guest.client.forward_identity(sid))
                identity = await host.expect(Identity)
                lobby_peer["ue_id"], lobby_peer["mno_id"] = identity.ue_id, identity.mno_id
                return (
                    f"{caller_name} invites {callee_name}, who accepts; {rules.game} at "
                    f"{rules.tick_rate} ticks/s with {caller_name}'s UE as session server; "
                    f"{callee_name}'s UE forwards {identity.ue_id} at MNO {identity.mno_id}"
                )

            await steps.run("the game lobby: invite, rules, session server, identities", lobby)

            async def locate() -> str:
                locator = Locator(LocatorConfig.for_server("127.0.0.1", world.dns.port))
                uri = await locator.enum_lookup(callee_sub.e164)
                target = (await locator.locate_operator(target_plmn))[0]
                return (
                    f"ENUM {callee_sub.e164} -> {uri}; PLMN {target_plmn} -> {target.host} "
                    f"{target.address}:{target.port}"
                )

            where = (
                f"where Alpha's border will find {callee_name} (ENUM, RFC 3263)"
                if callee_sub.operator != caller_sub.operator
                else f"where {callee_name} is: at {callee_sub.operator} itself (ENUM, RFC 3263)"
            )
            await steps.run(where, locate)

            async def connect() -> str:
                nonlocal invite_sent
                invite_sent = time.perf_counter()
                call = await caller.call(
                    parse_uri(lobby_peer["ue_id"]),
                    extra=[("Require", "ueconnect"), ("Supported", "ueconnect"),
                           ("Target-MNO", lobby_peer["mno_id"])],
                    body=_offer(caller_game.address),
                    content_type="application/sdp",
                )  # fmt: skip
                calls_made["caller"] = call
                report.connected = True
                pai = offered[0].request.headers.get("P-Asserted-Identity") if offered else None
                if not asked:
                    raise SipError(
                        f"{callee_sub.operator} connected the call without asking {callee_name}"
                    )
                report.permission = "granted"
                inquiry = asked[0]
                return (
                    f"{callee_sub.operator} asked {callee_name} (inquiry {inquiry.inquiry}: may "
                    f"{inquiry.caller} of {inquiry.caller_mno} connect?), {callee_name} answered "
                    f"allow; 200 OK and ACK; {callee_name} saw P-Asserted-Identity {pai}"
                )

            async def refused_call() -> str:
                nonlocal invite_sent
                invite_sent = time.perf_counter()
                try:
                    call = await caller.call(
                        parse_uri(lobby_peer["ue_id"]),
                        extra=[("Require", "ueconnect"), ("Supported", "ueconnect"),
                               ("Target-MNO", lobby_peer["mno_id"])],
                        body=_offer(caller_game.address),
                        content_type="application/sdp",
                    )  # fmt: skip
                except CallFailed as failed:
                    reason_header = failed.response.headers.get("Reason") or ""
                    report.refusal = {"status": failed.status_code, "reason": failed.reason}
                    if asked:
                        report.permission = "denied"
                    # docs/extension.md section 7: the callee's UE denied -> 603, cause 2.
                    if failed.status_code != 603 or "cause=2" not in reason_header:
                        raise SipError(
                            f"expected 603 with Reason cause 2, got {failed.status_code} "
                            f"{failed.reason} (Reason: {reason_header or '-'})"
                        ) from None
                    if not asked:
                        raise SipError(
                            f"{callee_sub.operator} refused without asking {callee_name}"
                        ) from None
                    if offered:
                        raise SipError(
                            f"{callee_name} was offered the call despite refusing"
                        ) from None
                    return (
                        f"{callee_sub.operator} asked {callee_name}, who answered deny; "
                        f"{caller_name} got {failed.status_code} {failed.reason}, Reason "
                        f"{reason_header}"
                    )
                calls_made["caller"] = call
                report.connected = True
                raise SipError(f"the call was connected although {callee_name} answered deny")

            if refused:
                await steps.run(
                    f"{caller_name} asks for {callee_name}; {callee_name}'s app refuses (603)",
                    refused_call,
                )

                async def nothing_open() -> str:
                    await _relays_released(world)
                    return "no relay leg or socket open at either operator after the refusal"

                await steps.run("the refusal released every relay leg", nothing_open)
            else:
                await steps.run(
                    f"{caller_name} asks {caller_sub.operator} to connect them to {callee_name}; "
                    f"{callee_sub.operator} asks {callee_name} for consent",
                    connect,
                )

                async def play() -> str:
                    answer = negotiated_endpoints(parse_sdp(calls_made["caller"].remote_body))
                    relays = [c for c in answer.candidates if c.type == CandidateType.RELAY]
                    if caller_game.transport is None:
                        raise SipError(f"{caller_name}'s game socket is closed")
                    # Each operator on the path relays its own UE's side (one or two).
                    wanted = 1 if caller_sub.operator == callee_sub.operator else 2
                    if len(relays) < wanted:
                        raise SipError(
                            f"the answer carries {len(relays)} relay candidates, not {wanted}"
                        )
                    target = (answer.default.address, answer.default.port)
                    via_relay = any((c.address, c.port) == target for c in relays)
                    report.path = "relay" if via_relay else "direct"
                    lost_in_a_row = 0
                    for i in range(DATAGRAMS):
                        sent = time.perf_counter()
                        caller_game.transport.sendto(f"move {i}".encode(), target)
                        report.sent[forward] = i + 1
                        try:
                            data, got = await asyncio.wait_for(caller_game.received.get(), 0.5)
                        except TimeoutError:
                            lost_in_a_row += 1
                            if lost_in_a_row >= 5:
                                break
                            continue
                        finally:
                            report.received[forward] = callee_game.count
                            report.sent[backward] = callee_game.count
                            report.received[backward] = caller_game.count
                        lost_in_a_row = 0
                        if report.setup_ms is None and callee_game.first_at is not None:
                            report.setup_ms = (callee_game.first_at - invite_sent) * 1000
                        if data != f"move {i}".encode():
                            raise SipError(f"datagram {i} came back as {data!r}")
                        rtts_ms = (got - sent) * 1000
                        report.rtts.append(rtts_ms)
                    if callee_game.first_at is not None:
                        report.setup_ms = (callee_game.first_at - invite_sent) * 1000
                    if min(callee_game.count, caller_game.count) < DATAGRAMS:
                        raise SipError(
                            f"{callee_game.count} of {DATAGRAMS} datagrams reached "
                            f"{callee_name}, {caller_game.count} came back to {caller_name}"
                        )
                    return (
                        f"{DATAGRAMS} datagrams each way via {len(relays)} relay candidate(s), "
                        f"first at {target[0]}:{target[1]}; {callee_game.count} reached "
                        f"{callee_name}, {caller_game.count} came back; RTT p50 "
                        f"{_percentile(report.rtts, 0.5):.2f} ms, p95 "
                        f"{_percentile(report.rtts, 0.95):.2f} ms"
                    )

                await steps.run(
                    f"{caller_name} and {callee_name} exchange game datagrams (relay path)", play
                )

                async def hang_up() -> str:
                    response = await calls_made["caller"].bye()
                    await asyncio.wait_for(calls_made["callee"].ended.wait(), 5)
                    await _relays_released(world)
                    return (
                        f"BYE {response.status_code} {response.reason}; both dialogs ended; "
                        "every relay leg and socket released"
                    )

                await steps.run(f"{caller_name} ends the session (BYE)", hang_up)

            async def unregister() -> str:
                for agent in agents.values():
                    await agent.ua.unregister()
                left = _bindings(world, (caller_sub, callee_sub))
                if left:
                    raise SipError(f"{left} bindings still in the operators' stores")
                return "both UEs unregistered (Expires: 0); no binding left in either store"

            await steps.run("both UEs unregister", unregister)
        finally:
            for conn in connections:
                await conn.close()
            for handle in lobbies:
                await handle.close()
            for game in (caller_game, callee_game):
                if game.transport is not None:
                    game.transport.close()
            for agent in agents.values():
                await agent.close()
            await caller.close()
            await callee.close()
            # What is left after teardown. No PCP on the embedded default: no mappings.
            report.leaked["relays"] = _open_relays(world)
            # The S-CSCF tracks sessions only for its metrics (off here): the UEs' dialogs.
            report.leaked["sessions"] = len(caller.dialogs) + len(callee.dialogs)
            report.leaked["registrations"] = _bindings(world, world.subscribers)
    _show_ladder(world.trace, out, view)
    ok = not steps.failed
    if as_json:
        print(json.dumps(report.as_json(ok)), flush=True)
    if not ok:
        print("demo: a step failed (see above)", file=sys.stderr)
        return 1
    if not as_json:
        print(
            "demo: done. Not in this build yet: CGN mappings through PCP (the embedded default "
            "relays), ICE checks, and the game itself (the datagrams here are echoes)."
        )
    return 0


async def _serve(out: Path) -> int:
    """Run the embedded world until SIGINT or SIGTERM, saying how to reach it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)  # before anything is said: no race
    try:
        async with EmbeddedWorld.start(out) as world:
            await _serve_until(world, stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print("ueconnect demo --serve: stopped", flush=True)
    return 0


async def _serve_until(world: EmbeddedWorld, stop: asyncio.Event) -> None:
    """Say how to reach the running world, then wait for the stop signal."""
    lines = [f"ueconnect demo --serve: the embedded world runs (workdir {world.workdir})",
             f"  DNS server: 127.0.0.1:{world.dns.port} (UDP and TCP)"]  # fmt: skip
    for name, op in world.operators.items():
        pcscf = world.pcscf(name)
        lines.append(
            f"  {name} ({op.config.operator.plmn}): P-CSCF {pcscf.host}:{pcscf.port} "
            f"(UDP, TCP), realm {op.config.realm}"
        )
    lines.append("  subscribers (digest username = impi):")
    for sub in world.subscribers:
        lines.append(
            f"    {sub.name} at {sub.operator}: impi {sub.impi} password {sub.password} "
            f"public identities {sub.sip_uri} {sub.tel_uri}"
        )
    lines.append("Ctrl-C (or SIGTERM) stops it.")
    print("\n".join(lines), flush=True)
    await stop.wait()


def _show_ladder(trace: Path | None, out: Path, view: TextIO) -> None:
    if trace is None or not trace.exists():
        return
    try:
        entries = read_trace(trace)
        invites = [c for c in calls(entries) if c.method == "INVITE"]
        if not invites:
            return
        call_id = invites[-1].call_id
        print("\nThe call's SIP ladder (from the operators' trace):", file=view)
        print(render_ladder(entries, call_id, width=140), file=view)
        html = out / "ladder.html"
        html.write_text(render_ladder_html(entries, call_id), encoding="utf-8")
        print(f"ladder written to {html}", file=view)
    except TraceError as exc:
        print(f"demo: could not draw the ladder: {exc}", file=sys.stderr)


def _demo(args: argparse.Namespace) -> int:
    # The seams log a warning on every use; the demo says it once, at the end.
    logging.getLogger("ims.seams").setLevel(logging.ERROR)
    if args.testbed:
        print(f"ueconnect demo: {TESTBED_MISSING}", file=sys.stderr)
        return 2
    if args.scenario == "unassisted":
        print(f"ueconnect demo: {UNASSISTED_NEEDS_TESTBED}", file=sys.stderr)
        return 2
    try:
        if args.serve:
            return asyncio.run(_serve(args.out))
        return asyncio.run(_scenario(args.out, SCENARIOS[args.scenario], args.json))
    except BindError as exc:
        print(
            f"ueconnect demo: cannot start the embedded world: {exc}\n"
            "  Another `ueconnect demo` or `ueconnect mno` may be using the loopback plan's "
            "addresses (127.0.1.x, 127.0.2.x): stop it and run the demo again.",
            file=sys.stderr,
        )
        return 1
    except (OperatorError, ConfigError, SipError, OSError) as exc:
        print(f"ueconnect demo: cannot start the embedded world: {exc}", file=sys.stderr)
        return 1
