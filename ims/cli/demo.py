"""`ueconnect demo`: the flow on the embedded default, as far as this build carries it.

Both operators (P-CSCF, S-CSCF, border), the embedded DNS server and two UEs run on loopback
in this process (ims/embedded.py). The demo walks TR 22.807 section 4.2.3's flows that exist
in this build: both UEs register with their own operator; in the game lobby (JSON over
WebSocket) Bill invites Dave, they agree the rules with Bill's UE as session server and Dave's
UE forwards its UE and MNO identifiers; Bill's UE asks for a connection to Dave with them
(Require: ueconnect, Target-MNO); Alpha locates Beta through ENUM and RFC 3263; Beta's
permission function asks Dave's UE, which allows; each operator relays its UE's side and adds
its relay to the SDP; Dave's UE answers; Bill's UE hosts a game of pong (ue_ua/game.py) that
Dave's UE joins, its datagrams crossing both relays, with per-datagram RTT; the call is ended
and every relay is released; both UEs unregister. Each step prints with its time; a failed step
names the operator element and the SIP response that stopped it. The SIP ladder of the call
prints at the end and is written as HTML. Exit status 0 only when every step behaved.

`--scenario` picks the flow (play as above; deny: Dave's app refuses and Bill gets 603, cause 2
of docs/extension.md section 7; same-mno: Bill -> Carol inside Alpha; relay: as play, the relay
being the only path on loopback; unassisted: needs the namespace testbed, exit 2). `--json`
prints one JSON object with the outcome (the step lines go to stderr); `--serve` keeps the
world running for any SIP client; `--play` lets the user play Bill's paddle in the terminal.

The game runs headless by default: 200 ticks at HEADLESS_SPEEDUP times the lobby's tick rate
(the same game, tick for tick, in a fraction of the real time). The game loop only sees a
`DatagramChannel` (ue_ua/game_session.py): here a UDP socket aimed at the SDP's default
destination, later a ue_ua.connection.Connection.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import termios
import time
import tty
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

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
    SdpError,
    application_stream_index,
    build_answer,
    build_offer,
    candidate_foundation,
    candidate_priority,
    negotiated_endpoints,
    parse_sdp,
    serialize_sdp,
    stream_endpoints,
)
from ims.sip.errors import SipError
from ims.sip.transport import BindError
from ims.sip.uri import SipUri, parse_uri
from ims.sip.useragent import Call, CallFailed, IncomingCall, RegistrationError, UserAgent
from ims.trace import (
    TraceError,
    calls,
    participant_name,
    read_trace,
    render_ladder,
    render_ladder_html,
)
from ue_ua.agent import UeAgent
from ue_ua.game import GameError, GameState, render
from ue_ua.game_session import GameSessionConfig, MatchResult, percentile, play_match
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

DATAGRAMS = 100  # game datagrams that must be received each way (issue 7 acceptance)
HEADLESS_TICKS = 200  # ticks of a headless game: one state datagram and one input each
HEADLESS_SPEEDUP = 10.0  # a headless game runs this many times faster than real time
PLAY_MINUTES = 5  # --play: the game ends by then at the latest


class _UdpChannel(asyncio.DatagramProtocol):
    """A UE's game socket as a ue_ua.game_session.DatagramChannel: sends to `peer` (the
    default destination the SDP gave), queues whatever arrives."""

    QUEUE = 1024  # datagrams held for the game; beyond, they are dropped like a full buffer

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.peer: tuple[str, int] | None = None
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue(self.QUEUE)
        self.first_at: float | None = None  # when the first datagram arrived (perf_counter)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        if not self.inbox.full():
            self.inbox.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier datagram: the game counts what arrives, nothing to do.
        pass

    async def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing() or self.peer is None:
            raise OSError("the game socket is closed or has no peer yet")
        self.transport.sendto(data, self.peer)

    async def recv(self) -> bytes:
        return await self.inbox.get()

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _game_socket() -> _UdpChannel:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(_UdpChannel, local_addr=("127.0.0.1", 0))
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


@dataclass(frozen=True)
class Scenario:
    """One `--scenario`: who calls whom and what the callee's application answers."""

    name: str
    caller: str
    callee: str
    decision: Decision
    summary: str
    refusal_expected: bool = False  # deny: the refusal is the scenario behaving


_ALL = (
    Scenario("play", "Bill", "Dave", Decision.ALLOW,
             "Bill (Alpha) connects to Dave (Beta); Dave allows"),
    Scenario("deny", "Bill", "Dave", Decision.DENY,
             "Bill (Alpha) asks for Dave (Beta); Dave's app answers deny", True),
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
        "--play",
        action="store_true",
        help="play the game in this terminal: Bill's paddle (left) with w/s or the arrow keys, "
        "q quits; Dave is played by a bot. Needs a terminal (stdout and stdin a TTY); "
        "without it the game runs headless",
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
                "p50": round(percentile(self.rtts, 0.5), 3) if self.rtts else None,
                "p95": round(percentile(self.rtts, 0.95), 3) if self.rtts else None,
            },
            leaked=self.leaked,
        )
        return document


class StepFailed(Exception):
    """A demo step did not behave; `role` names the operator element at fault when known."""

    def __init__(self, what: str, role: str | None = None) -> None:
        super().__init__(f"{role}: {what}" if role else what)
        self.role = role


def _who_answered(trace: Path | None, status: int, since: float, call_id: str | None) -> str:
    """Which element first sent the final response `status`: the earliest trace line with it
    (the element that made it writes "out" before anyone forwards it). A response first seen
    coming in from a UE was that UE's; one not traced at all was made up by the UE itself
    (its transaction timed out or the transport failed: RFC 3261 section 8.1.3.1)."""
    entries = []
    if trace is not None and trace.exists():
        try:
            entries = read_trace(trace)
        except TraceError:
            entries = []
    seen = sorted(
        (e for e in entries
         if e.status == status and e.epoch >= since - 1
         and (call_id is None or e.call_id == call_id)),
        key=lambda e: e.epoch,
    )  # fmt: skip
    if not seen:
        return "the UE itself (no operator element sent it)"
    first = seen[0]
    if first.direction == "out":
        return participant_name(first.operator, first.role)
    sender = first.source_name or f"the UE at {first.source}"
    return f"{sender} (through {participant_name(first.operator, first.role)})"


class _Steps:
    def __init__(self, report: _Report, out: TextIO, trace: Path | None) -> None:
        self.start = time.perf_counter()
        self.failed: str | None = None  # what stopped the demo: step, element, response
        self.report = report
        self.out = out  # stdout for the human view, stderr under --json
        self.trace = trace

    def _stopped_by(self, exc: Exception, since: float) -> str:
        """The failure in a user's words: the element and the SIP response, when a response
        stopped the step; else what went wrong."""
        if isinstance(exc, CallFailed):
            reason = exc.response.headers.get("Reason")
            who = _who_answered(self.trace, exc.status_code, since,
                                exc.response.headers.get("Call-ID"))  # fmt: skip
            return (f"{who} answered {exc.status_code} {exc.reason}"
                    + (f" (Reason: {reason})" if reason else ""))  # fmt: skip
        if isinstance(exc, RegistrationError):
            who = _who_answered(self.trace, exc.status_code, since, None)
            return f"{who} answered the REGISTER with {exc.status_code} {exc.reason}"
        if isinstance(exc, TimeoutError):
            return "no answer in time"
        return str(exc) or type(exc).__name__

    async def run(
        self, name: str, work: Callable[[], Awaitable[str]], *, timeout: float = 15
    ) -> bool:
        if self.failed:
            print(f"  skip {name}", file=self.out, flush=True)
            self.report.steps.append({"name": name, "ok": False, "ms": None})
            return False
        began, since = time.perf_counter(), time.time()
        try:
            detail = await asyncio.wait_for(work(), timeout)
        except (DnsError, SipError, SdpError, LobbyError, GameError, StepFailed, OSError,
                TimeoutError) as exc:  # fmt: skip
            why = self._stopped_by(exc, since)
            self.failed = f"step \"{name}\" failed: {why}"
            took = (time.perf_counter() - began) * 1000
            at = (time.perf_counter() - self.start) * 1000
            self.report.steps.append({"name": name, "ok": False, "ms": round(took, 3)})
            print(f"  [{at:7.1f} ms] FAIL {name} ({took:.1f} ms)\n{'':22}{why}", file=self.out,
                  flush=True)  # fmt: skip
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


def _open_relays(world: EmbeddedWorld) -> dict[str, int]:
    """Open relay legs and sockets per operator."""
    return {
        name: len(op.gateway.open_legs()) + op.gateway.relay.open_sockets()
        for name, op in world.operators.items()
        if op.gateway is not None
    }


async def _relays_released(world: EmbeddedWorld) -> None:
    """Wait (bounded) until every gateway has released its legs: they do it in a task."""
    for _ in range(100):
        if not any(_open_relays(world).values()):
            return
        await asyncio.sleep(0.02)
    left = {name: n for name, n in _open_relays(world).items() if n}
    raise StepFailed(
        f"{sum(left.values())} relay legs or sockets still open",
        role=" and ".join(f"{name} connectivity gateway" for name in left),
    )


def _bindings(world: EmbeddedWorld, subscribers: Iterable[DemoSubscriber]) -> int:
    now = time.time()
    return sum(
        len(world.stores[sub.operator].bindings.list_for_aor(sub.sip_uri, now))
        for sub in subscribers
    )


def _keys(data: bytes) -> list[str]:
    """What a chunk read from the terminal asks: "up", "down", "stop" or "quit", in order.
    Arrows arrive as ESC [ A / ESC O A (normal and application cursor mode)."""
    for sequence, word in ((b"\x1b[A", b"w"), (b"\x1bOA", b"w"),
                           (b"\x1b[B", b"s"), (b"\x1bOB", b"s")):  # fmt: skip
        data = data.replace(sequence, word)
    words = {ord("w"): "up", ord("W"): "up", ord("k"): "up",
             ord("s"): "down", ord("S"): "down", ord("j"): "down",
             ord(" "): "stop", ord("q"): "quit", ord("Q"): "quit"}  # fmt: skip
    return [words[b] for b in data if b in words]


class _Terminal:
    """`--play`: Bill's paddle from the keyboard, the playfield redrawn in place with ANSI
    escapes (no curses: cursor up, erase line). The terminal is in cbreak mode while the
    game runs (keys arrive at once, Ctrl-C still interrupts) and restored afterwards."""

    HOLD = 5  # ticks one key press moves the paddle: a terminal sends no key-up, only repeats

    def __init__(self, out: TextIO, caller: str, callee: str, points_to_win: int) -> None:
        self.out = out
        self.quit = asyncio.Event()
        self.fd = sys.stdin.fileno()
        self._move, self._left = 0, 0
        self._drawn = 0  # lines of the last frame, to move back over
        self._legend = (f"{caller} (left): w/s or arrows, q quits    {callee} (right): a bot"
                        f"    first to {points_to_win}")  # fmt: skip
        size = shutil.get_terminal_size()
        self.columns = max(20, min(64, size.columns - 2))
        self.rows = max(6, min(16, size.lines - 6))
        self._saved: list[Any] | None = None  # termios attributes to restore

    def __enter__(self) -> _Terminal:
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        asyncio.get_running_loop().add_reader(self.fd, self._read)
        self.out.write("\x1b[?25l")  # hide the cursor
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        self.out.write("\x1b[?25h")
        self.out.flush()

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 64)
        except OSError:
            data = b""
        if not data:  # the terminal went away
            self.quit.set()
            return
        for key in _keys(data):
            if key == "quit":
                self.quit.set()
            elif key == "stop":
                self._left = 0
            else:
                self._move, self._left = (-1 if key == "up" else 1), self.HOLD

    def move(self, state: GameState) -> int:
        if self._left <= 0:
            return 0
        self._left -= 1
        return self._move

    def draw(self, state: GameState) -> None:
        lines = [*render(state, self.columns, self.rows).split("\n"),
                 f"tick {state.tick:5d}   {self._legend}"]  # fmt: skip
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)


async def _scenario(out: Path, scenario: Scenario, as_json: bool, interactive: bool = False) -> int:
    report = _Report(scenario.name, scenario.caller, scenario.callee)
    view = sys.stderr if as_json else sys.stdout
    refused = scenario.refusal_expected
    async with EmbeddedWorld.start(out) as world:
        steps = _Steps(report, view, world.trace)
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
        caller_game, callee_game = await _game_socket(), await _game_socket()
        forward = f"{caller_name.lower()}_to_{callee_name.lower()}"
        backward = f"{callee_name.lower()}_to_{caller_name.lower()}"
        invite_sent = 0.0
        lobby_peer: dict[str, str] = {}
        agreed: list[GameRules] = []
        lobbies: list[LobbyHandle] = []
        connections: list[LobbyConnection] = []

        async def answer(incoming: IncomingCall) -> None:
            offered.append(incoming)
            incoming.ring()
            offer = parse_sdp(incoming.request.body)
            # The callee's game sends to the offer's default destination (its operator's relay).
            default = stream_endpoints(offer, application_stream_index(offer)).default
            callee_game.peer = (default.address, default.port)
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
                agreed.append(rules)
                return (
                    f"{caller_name} invites {callee_name}, who accepts; {rules.game} at "
                    f"{rules.tick_rate} ticks/s, first to {rules.points_to_win}, with "
                    f"{caller_name}'s UE as session server; {callee_name}'s UE forwards "
                    f"{identity.ue_id} at MNO {identity.mno_id}"
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

            async def invite() -> Call:
                nonlocal invite_sent
                invite_sent = time.perf_counter()
                return await caller.call(
                    parse_uri(lobby_peer["ue_id"]),
                    extra=[("Require", "ueconnect"), ("Supported", "ueconnect"),
                           ("Target-MNO", lobby_peer["mno_id"])],
                    body=_offer(caller_game.address),
                    content_type="application/sdp",
                )  # fmt: skip

            permission_function = f"{callee_sub.operator} permission function"

            async def connect() -> str:
                calls_made["caller"] = await invite()
                report.connected = True
                pai = offered[0].request.headers.get("P-Asserted-Identity") if offered else None
                if not asked:
                    raise StepFailed(f"connected the call without asking {callee_name}",
                                     role=permission_function)  # fmt: skip
                report.permission = "granted"
                inquiry = asked[0]
                return (
                    f"{callee_sub.operator} asked {callee_name} (inquiry {inquiry.inquiry}: may "
                    f"{inquiry.caller} of {inquiry.caller_mno} connect?), {callee_name} answered "
                    f"allow; 200 OK and ACK; {callee_name} saw P-Asserted-Identity {pai}"
                )

            async def refused_call() -> str:
                try:
                    call = await invite()
                except CallFailed as failed:
                    reason_header = failed.response.headers.get("Reason") or ""
                    report.refusal = {"status": failed.status_code, "reason": failed.reason}
                    if asked:
                        report.permission = "denied"
                    # docs/extension.md section 7: the callee's UE denied -> 603, cause 2.
                    if failed.status_code != 603 or "cause=2" not in reason_header:
                        raise StepFailed(
                            f"expected 603 with Reason cause 2, got {failed.status_code} "
                            f"{failed.reason} (Reason: {reason_header or '-'})",
                            role=permission_function,
                        ) from None
                    if not asked:
                        raise StepFailed(f"refused without asking {callee_name}",
                                         role=permission_function) from None  # fmt: skip
                    if offered:
                        raise StepFailed(f"{callee_name} was offered the call despite refusing",
                                         role=permission_function) from None  # fmt: skip
                    return (
                        f"{callee_sub.operator} asked {callee_name}, who answered deny; "
                        f"{caller_name} got {failed.status_code} {failed.reason}, Reason "
                        f"{reason_header}"
                    )
                calls_made["caller"] = call
                report.connected = True
                raise StepFailed(f"the call was connected although {callee_name} answered deny",
                                 role=permission_function)  # fmt: skip

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
                operators = sorted({caller_sub.operator, callee_sub.operator})
                gateways = " and ".join(f"{name} connectivity gateway" for name in operators)
                rules = agreed[0] if agreed else GameRules()
                if interactive:
                    config = GameSessionConfig.from_rules(
                        rules, ticks=rules.tick_rate * 60 * PLAY_MINUTES, idle_timeout=2.0
                    )
                else:
                    config = GameSessionConfig.from_rules(
                        rules, ticks=HEADLESS_TICKS, speedup=HEADLESS_SPEEDUP, idle_timeout=2.0
                    )

                async def play() -> str:
                    answer = negotiated_endpoints(parse_sdp(calls_made["caller"].remote_body))
                    relays = [c for c in answer.candidates if c.type == CandidateType.RELAY]
                    # Each operator on the path relays its own UE's side (one or two).
                    wanted = len(operators)
                    if len(relays) < wanted:
                        raise StepFailed(f"the answer carries {len(relays)} relay candidates, "
                                         f"not {wanted}", role=gateways)  # fmt: skip
                    target = (answer.default.address, answer.default.port)
                    caller_game.peer = target
                    via_relay = any((c.address, c.port) == target for c in relays)
                    report.path = "relay" if via_relay else "direct"
                    if interactive:
                        print(f"\n  {caller_name} hosts the game; {callee_name}'s UE is a bot. "
                              "Keys: w/s or the arrows move your paddle, q quits.\n",
                              file=view, flush=True)  # fmt: skip
                        with _Terminal(view, caller_name, callee_name,
                                       rules.points_to_win) as screen:  # fmt: skip
                            result = await play_match(caller_game, callee_game, config,
                                                      host_move=screen.move,
                                                      on_tick=screen.draw, stop=screen.quit)
                    else:
                        result = await play_match(caller_game, callee_game, config)
                    _count(report, result, forward, backward)
                    if callee_game.first_at is not None:
                        report.setup_ms = (callee_game.first_at - invite_sent) * 1000
                    least = 1 if interactive else DATAGRAMS
                    got = min(result.guest.received, result.host.received)
                    if got < least:
                        raise StepFailed(
                            f"{result.guest.received} of {result.host.sent} game datagrams "
                            f"reached {callee_name}, {result.host.received} of "
                            f"{result.guest.sent} reached {caller_name}; at least {least} "
                            "each way were expected",
                            role=f"the relay path ({gateways})",
                        )
                    pace = (
                        f"{config.tick_rate} ticks/s in real time" if interactive else
                        f"{config.ticks} ticks at {config.tick_rate} ticks/s, run "
                        f"{config.speedup:g}x faster than real time (headless)"
                    )  # fmt: skip
                    return (
                        f"pong, {caller_name}'s UE the session server, {pace}, via "
                        f"{len(relays)} relay candidate(s), first at {target[0]}:{target[1]}: "
                        f"{caller_name} -> {callee_name} {result.host.sent} sent / "
                        f"{result.guest.received} received, {callee_name} -> {caller_name} "
                        f"{result.guest.sent} sent / {result.host.received} received; "
                        f"{_rtt_line(result.host.rtt_ms)}\n{'':22}"
                        f"{result.outcome(caller_name, callee_name)}"
                    )

                play_time = config.ticks * config.interval + config.linger + 15
                await steps.run(
                    f"{caller_name} and {callee_name} play pong over the connection "
                    f"(relay path)", play, timeout=play_time,
                )  # fmt: skip

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
                    raise StepFailed(f"{left} bindings still in the operators' stores",
                                     role="the S-CSCF (registrar)")  # fmt: skip
                return "both UEs unregistered (Expires: 0); no binding left in either store"

            await steps.run("both UEs unregister", unregister)
        finally:
            for conn in connections:
                await conn.close()
            for handle in lobbies:
                await handle.close()
            for game in (caller_game, callee_game):
                game.close()
            for agent in agents.values():
                await agent.close()
            await caller.close()
            await callee.close()
            # What is left after teardown. No PCP on the embedded default: no mappings.
            report.leaked["relays"] = sum(_open_relays(world).values())
            # The S-CSCF tracks sessions only for its metrics (off here): the UEs' dialogs.
            report.leaked["sessions"] = len(caller.dialogs) + len(callee.dialogs)
            report.leaked["registrations"] = _bindings(world, world.subscribers)
    _show_ladder(world.trace, out, view)
    if as_json:
        print(json.dumps(report.as_json(steps.failed is None)), flush=True)
    if steps.failed is not None:
        print(f"demo ({scenario.name}): {steps.failed}", file=sys.stderr)
        return 1
    if not as_json:
        print(
            "demo: done. Not in this build yet: CGN mappings through PCP and ICE checks (the "
            "embedded default relays every datagram)."
        )
    return 0


def _rtt_line(samples: tuple[float, ...]) -> str:
    if not samples:
        return "no RTT sample (no tick came back)"
    return (f"RTT per datagram ({len(samples)} samples, state out to input back) p50 "
            f"{percentile(samples, 0.5):.2f} ms, p95 {percentile(samples, 0.95):.2f} ms")


def _count(report: _Report, result: MatchResult, forward: str, backward: str) -> None:
    """The game's datagrams each way, named after the scenario's peers (issue 7 item 4)."""
    report.sent[forward], report.received[forward] = result.host.sent, result.guest.received
    report.sent[backward], report.received[backward] = result.guest.sent, result.host.received
    report.rtts = list(result.host.rtt_ms)


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


def _cannot_play(args: argparse.Namespace) -> str | None:
    """Why --play cannot run with these options or here, else None."""
    if args.json or args.serve:
        other = "--json" if args.json else "--serve"
        return f"--play and {other} do not go together: --play draws the game in the terminal"
    if SCENARIOS[args.scenario].refusal_expected:
        return (f"--play needs a scenario that connects (play, same-mno, relay): in "
                f"{args.scenario} nothing is played")
    for stream, name in ((sys.stdout, "stdout"), (sys.stdin, "stdin")):
        if not stream.isatty():
            return (f"--play needs a terminal, and {name} is not a TTY (redirected or piped?). "
                    "Run it in a terminal, or drop --play: the game then runs headless")
    return None


def _demo(args: argparse.Namespace) -> int:
    # The seams log a warning on every use; the demo says it once, at the end.
    logging.getLogger("ims.seams").setLevel(logging.ERROR)
    if args.testbed:
        print(f"ueconnect demo: {TESTBED_MISSING}", file=sys.stderr)
        return 2
    if args.scenario == "unassisted":
        print(f"ueconnect demo: {UNASSISTED_NEEDS_TESTBED}", file=sys.stderr)
        return 2
    if args.play:
        problem = _cannot_play(args)
        if problem:
            print(f"ueconnect demo: {problem}", file=sys.stderr)
            return 2
    try:
        if args.serve:
            return asyncio.run(_serve(args.out))
        scenario = SCENARIOS[args.scenario]
        return asyncio.run(_scenario(args.out, scenario, args.json, interactive=args.play))
    except KeyboardInterrupt:
        # Ctrl-C (e.g. during --play): the world has been torn down on the way out.
        print("ueconnect demo: interrupted", file=sys.stderr)
        return 130
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
