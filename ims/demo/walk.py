"""The scenario: its steps walked with the UE API in a running world. `run_scenario` starts the
world and prints the outcome; `DemoWalk` is the walk itself, one method per step."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

from ims.config import HostPort
from ims.demo.embedded_run import EmbeddedRun
from ims.demo.holdings import bindings, holdings, open_now, released
from ims.demo.ladder import show_ladder
from ims.demo.lobby import meet_in_lobby
from ims.demo.match import play_in_world
from ims.demo.report import Report, StepFailed, Steps, who_answered
from ims.demo.scenarios import Scenario
from ims.demo.terminal import Terminal
from ims.demo.testbed_run import TestbedOptions, running_testbed
from ims.demo.world import World, both, plmn_of
from ims.embedded import DemoSubscriber, EmbeddedWorld
from ims.permission.bodies import Inquiry
from ims.permission.outcomes import Decision
from ims.sip.errors import SipError
from ims.sip.registration import Registered
from ims.testbed.errors import TestbedError
from ue_ua.client import UeClient
from ue_ua.connection import Connection
from ue_ua.errors import ConnectivityFailed, ConnectRefused, DeniedByCallee, UeError
from ue_ua.game_session import GameSessionConfig, MatchResult, percentile
from ue_ua.ice import Path as DataPath
from ue_ua.ice import PathKind
from ue_ua.lobby import GameRules, Identity

DATAGRAMS = 100  # game datagrams that must be received each way (issue 7 acceptance)
HEADLESS_TICKS = 200  # ticks of a headless game: one state datagram and one input each
HEADLESS_SPEEDUP = 10.0  # a headless game runs this many times faster than real time
PLAY_MINUTES = 5  # --play: the game ends by then at the latest
ACCEPT_MARGIN = 10.0  # seconds the callee waits beyond the caller's setup for the connection


@contextlib.asynccontextmanager
async def running(out: Path, scenario: Scenario,
                  testbed: TestbedOptions | None) -> AsyncIterator[World]:
    """The world the scenario runs in: the embedded default, or with `testbed` the testbed."""
    if testbed is None:
        async with EmbeddedWorld.start(out) as embedded:
            yield EmbeddedRun(embedded)
        return
    async with running_testbed(out, scenario, testbed) as world:
        yield world


async def _sessions(client: UeClient) -> int:
    """The UE's dialogs and open connections (read in its loop)."""
    return len(client.ua.dialogs) + len(client.connections)


async def run_scenario(out: Path, scenario: Scenario, as_json: bool,
                       interactive: bool = False,
                       testbed: TestbedOptions | None = None) -> int:
    """Walk `scenario` (in the testbed with `testbed`): its steps, the ladder, with `as_json`
    the JSON document on stdout; `interactive` is --play. The exit status: 0 when every step
    behaved, else 1; a world that cannot start raises for the command line to say so."""
    report = Report(scenario.name, scenario.caller, scenario.callee)
    view = sys.stderr if as_json else sys.stdout
    steps = Steps(report, view)
    started = False
    try:
        async with running(out, scenario, testbed) as world:
            started = True
            steps.trace = world.trace
            walk = DemoWalk(world, scenario, steps, report, view, interactive=interactive,
                            in_testbed=testbed is not None)  # fmt: skip
            await walk.walk()
    except TestbedError as exc:
        if not started:
            raise  # the world did not start: _demo says so
        # The world's own close found something left behind (WorldLeftovers), after taking
        # everything down. A TCP connection in TIME-WAIT is not: the kernel keeps it for 2 MSL
        # after a close (RFC 9293 section 3.6.1; here the lobby's server, which closes first,
        # RFC 6455 section 7.1.1), no process holds it and it goes by itself.
        leftovers: tuple[str, ...] | None = getattr(exc, "leftovers", None)
        if leftovers is None:
            steps.failed = steps.failed or f"the testbed world failed: {exc}"
        elif left := [item for item in leftovers if " TIME-WAIT " not in item]:
            steps.failed = steps.failed or f"the testbed world left behind: {'; '.join(left)}"
    show_ladder(steps.trace, out, view, draw=not as_json)
    if as_json:
        print(json.dumps(report.as_json(steps.failed is None)), flush=True)
    if steps.failed is not None:
        print(f"demo ({scenario.name}): {steps.failed}", file=sys.stderr)
        return 1
    if not as_json:
        print("demo: done." if testbed is not None else
              "demo: done. Behind real CGNs (PCP mappings, a direct path): "
              "`sudo ueconnect demo --testbed`.")  # fmt: skip
    return 0


class DemoWalk:
    """One walk of a scenario's steps in a running world, one method per step. What a step
    hands on to the next lives here: the UEs' clients, what the lobby agreed, the connection
    and the inquiries the callee's application answered."""

    def __init__(self, world: World, scenario: Scenario, steps: Steps, report: Report,
                 view: TextIO, *, interactive: bool, in_testbed: bool) -> None:
        self.world, self.scenario, self.steps, self.report = world, scenario, steps, report
        self.view = view  # stdout for the human view, stderr under --json
        self.interactive = interactive  # --play
        self.in_testbed = in_testbed
        self.caller = world.subscriber(scenario.caller)
        self.callee = world.subscriber(scenario.callee)
        # On loopback the relay policy leaves the operators' relays as the only path.
        self.expected: PathKind | None = scenario.testbed_path if in_testbed else "relay"
        self.permission_function = f"{self.callee.operator} permission function"
        self.operators = sorted({self.caller.operator, self.callee.operator})
        self.gateways = " and ".join(f"{name} connectivity gateway" for name in self.operators)
        self.clients: dict[str, UeClient] = {}  # by subscriber name, from the UE's start
        self.asked: list[Inquiry] = []  # what the callee's application was asked
        self.peer: Identity | None = None  # from the lobby: whom the caller connects to
        self.rules: GameRules | None = None  # from the lobby: the game's rules
        self.caller_conn: Connection | None = None  # the caller's connect()
        self.callee_conn: Connection | None = None  # the callee's accept()

    async def walk(self) -> None:
        """The steps, in order; everything the UEs opened is closed on the way out and what
        the operators still hold is counted into `report.leaked`."""
        self._announce()
        try:
            for sub in (self.caller, self.callee):
                await self.steps.run(f"{sub.name} registers at {sub.operator} (digest)",
                                     functools.partial(self.register, sub))  # fmt: skip
            await self.steps.run("the game lobby: invite, rules, session server, identities",
                                 self.lobby)  # fmt: skip
            await self.steps.run(self._where(), self.locate)
            await self._call_step()
            if self.scenario.refusal_expected or self.expected is None:
                await self.steps.run("nothing was left open at either operator",
                                     self.nothing_open)  # fmt: skip
            else:
                await self._play_step()
                await self.steps.run(f"{self.caller.name} ends the session (BYE)", self.hang_up)
            await self.steps.run("both UEs unregister", self.unregister)
        finally:
            await self.release_and_count()

    def _announce(self) -> None:
        print(f"ueconnect demo ({self.scenario.name}): {self.scenario.summary}\n"
              f"  world: {self.world.describe()}", file=self.view)  # fmt: skip
        if self.scenario.name == "relay" and not self.in_testbed:
            print("  on the embedded default the relay IS the path, as in play: no CGN stands "
                  "between the UEs to refuse PCP (that needs --testbed), and the UEs use only "
                  "the operators' relay candidates", file=self.view)  # fmt: skip

    async def _callee_decides(self, inquiry: Inquiry) -> Decision:
        # The callee's game asks them; in the demo they answer at once.
        self.asked.append(inquiry)
        return self.scenario.decision

    # -- register, lobby, locate ------------------------------------------------------------

    async def register(self, sub: DemoSubscriber) -> str:
        """`sub`'s UE starts (the callee's answering inquiries) and registers, in its loop."""
        config = self.world.ue_config(sub)
        ask = self._callee_decides if sub is self.callee else None

        async def start() -> Registered:
            client = await UeClient.start(config, ask=ask)
            self.clients[sub.name] = client  # closed at the end even if register() fails
            return await client.register()

        got = await self.world.on_ue(sub.name, start)
        assoc = ", ".join(str(u) for u in got.associated_uris) or "-"
        return f"200 OK, expires {got.expires} s, P-Associated-URI {assoc}"

    async def lobby(self) -> str:
        caller, callee = self.caller.name, self.callee.name
        url, close = await self.world.serve_lobby()
        try:
            rules, identity = await meet_in_lobby(self.world, url, self.caller, self.callee)
        finally:
            await close()
        self.peer, self.rules = identity, rules
        return (
            f"{caller} invites {callee}, who accepts; {rules.game} at "
            f"{rules.tick_rate} ticks/s, first to {rules.points_to_win}, with "
            f"{caller}'s UE as session server; {callee}'s UE forwards "
            f"{identity.ue_id} at MNO {identity.mno_id}"
        )

    def _where(self) -> str:
        callee = self.callee
        if callee.operator != self.caller.operator:
            return f"where Alpha's border will find {callee.name} (ENUM, RFC 3263)"
        return f"where {callee.name} is: at {callee.operator} itself (ENUM, RFC 3263)"

    async def locate(self) -> str:
        return await self.world.locate(self.caller.operator, self.callee.e164,
                                       plmn_of(self.callee.operator))  # fmt: skip

    # -- the call: connect, refused_call or alone, as the scenario expects -----------------

    async def _call_step(self) -> None:
        caller, callee = self.caller.name, self.callee.name
        if self.scenario.refusal_expected:
            await self.steps.run(
                f"{caller} asks for {callee}; {callee}'s app refuses (603)", self.refused_call
            )
        elif self.expected is None:
            timeout = self.world.ue_config(self.caller).setup_timeout + 15
            await self.steps.run(
                f"{caller} tries to reach {callee} without operator help "
                "(ICE with STUN across both CGNs): it must fail", self.alone, timeout=timeout,
            )  # fmt: skip
        else:
            await self.steps.run(
                f"{caller} asks {self.caller.operator} to connect them to {callee}; "
                f"{self.callee.operator} asks {callee} for consent",
                self.connect, timeout=25,
            )  # fmt: skip

    async def _dial(self) -> Connection:
        """The caller's connect() to the peer the lobby named, in its UE's loop."""
        client, peer = self.clients[self.caller.name], self.peer
        assert peer is not None  # the lobby step behaved
        self.caller_conn = await self.world.on_ue(
            self.caller.name, lambda: client.connect(peer.ue_id, peer.mno_id)
        )
        return self.caller_conn

    async def _connect_both(self) -> tuple[Connection, Connection]:
        """The caller's connect() and the callee's accept(), each in its UE's loop."""
        callee = self.clients[self.callee.name]
        wait = self.clients[self.caller.name].config.setup_timeout + ACCEPT_MARGIN

        async def answered() -> Connection:
            self.callee_conn = await self.world.on_ue(self.callee.name,
                                                      lambda: callee.accept(wait))  # fmt: skip
            return self.callee_conn

        made = await both(self._dial(), answered())
        assert self.callee_conn is not None  # answered() returned
        return made, self.callee_conn

    async def connect(self) -> str:
        made, accepted = await self._connect_both()
        return await self._connected(made, accepted)

    async def _connected(self, made: Connection, accepted: Connection) -> str:
        """The call connected: the callee was asked, and the path is the one expected."""
        self.report.connected = True
        if not self.asked:
            raise StepFailed(f"connected the call without asking {self.callee.name}",
                             role=self.permission_function)  # fmt: skip
        self.report.permission = "granted"
        path = made.path
        assert path is not None  # just connected
        self.report.path, self.report.setup_ms = path.kind, made.setup_ms
        held = await holdings(self.world)
        holding = "; ".join(f"{op} holds {held[op].describe()}" for op in self.operators)
        if self.expected is None:
            raise StepFailed(
                f"the UEs connected without operator help ({_path_text(path)}): were "
                "the CGNs symmetric?",
                role="the CGNs")  # fmt: skip
        if path.kind != self.expected:
            raise StepFailed(f"the ICE checks chose a {path.kind} path, {self.expected} was "
                             f"expected; {holding}", role=self.gateways)  # fmt: skip
        inquiry, callee = self.asked[0], self.callee.name
        return (
            f"{self.callee.operator} asked {callee} (inquiry {inquiry.inquiry}: may "
            f"{inquiry.caller} of {inquiry.caller_mno} connect?), {callee} answered "
            f"allow; 200 OK and ACK; {holding}{self.world.cgn_summary()}; the ICE checks chose "
            f"the {_path_text(path)}: connect() "
            f"gave the Connection in {made.setup_ms:.1f} ms; {callee} saw "
            f"{accepted.peer}"
        )

    async def refused_call(self) -> str:
        since = time.time()
        try:
            await self._dial()
        except ConnectRefused as refusal:
            return await self._refused(refusal, since)
        self.report.connected = True
        raise StepFailed(f"the call was connected although {self.callee.name} answered deny",
                         role=self.permission_function)  # fmt: skip

    async def _refused(self, refusal: ConnectRefused, since: float) -> str:
        """The refusal is the callee's own (docs/extension.md section 7: the callee's UE
        denied -> 603, cause 2) and nothing reached the callee's UE."""
        callee = self.callee.name
        self.report.refusal = {"status": refusal.status, "reason": refusal.reason,
                               "cause": refusal.cause, "error": type(refusal).__name__}
        if self.asked:
            self.report.permission = "denied"
        if not isinstance(refusal, DeniedByCallee) or refusal.status != 603:
            raise StepFailed(f"expected DeniedByCallee (603, cause 2), got "
                             f"{type(refusal).__name__}: {refusal}",
                             role=self.permission_function) from None  # fmt: skip
        if not self.asked:
            raise StepFailed(f"refused without asking {callee}",
                             role=self.permission_function) from None  # fmt: skip
        client = self.clients[callee]
        if await self.world.on_ue(callee, lambda: _sessions(client)):
            raise StepFailed(f"{callee} was offered the call despite refusing",
                             role=self.permission_function) from None  # fmt: skip
        _, reason = who_answered(self.world.trace, refusal.status, since, "INVITE")
        return (
            f"{self.callee.operator} asked {callee}, who answered deny; "
            f"{self.caller.name} got {refusal.status} {refusal.reason}, Reason "
            f"{reason or '-'}: connect() raised {type(refusal).__name__}"
        )

    async def alone(self) -> str:
        try:
            made, accepted = await self._connect_both()
        except ConnectivityFailed as failed:
            if self.asked:
                self.report.permission = "granted"
            return (
                f"{self.callee.operator} asked {self.callee.name}, who allowed; 200 OK and ACK; "
                f"no operator opened anything; the UEs checked their host and STUN "
                f"candidates across both symmetric CGNs and failed, as they must: "
                f"connect() raised ConnectivityFailed ({failed}) and sent BYE"
            )
        return await self._connected(made, accepted)  # names what should not have been

    async def nothing_open(self) -> str:
        await released(self.world)
        return "no PCP mapping, relay leg or relay socket open at either operator"

    # -- play, hang_up ---------------------------------------------------------------------

    async def _play_step(self) -> None:
        rules = self.rules if self.rules is not None else GameRules()
        if self.interactive:
            config = GameSessionConfig.from_rules(
                rules, ticks=rules.tick_rate * 60 * PLAY_MINUTES, idle_timeout=2.0
            )
        else:
            config = GameSessionConfig.from_rules(
                rules, ticks=HEADLESS_TICKS, speedup=HEADLESS_SPEEDUP, idle_timeout=2.0
            )
        play_time = config.ticks * config.interval + config.linger + 15
        await self.steps.run(
            f"{self.caller.name} and {self.callee.name} play pong over the connection "
            f"({self.report.path or 'no'} path)", functools.partial(self.play, config),
            timeout=play_time,
        )  # fmt: skip

    async def play(self, config: GameSessionConfig) -> str:
        """The caller's UE hosts a game the callee's joins; enough datagrams each way, over
        the relays exactly when the path is a relay path."""
        caller, callee = self.caller.name, self.callee.name
        assert self.caller_conn is not None  # connected
        path = self.caller_conn.path
        assert path is not None  # connected
        result = await self._game(config)
        _count(self.report, result)
        relayed = sum(h.relayed for h in (await holdings(self.world)).values())
        least = 1 if self.interactive else DATAGRAMS
        if min(result.guest.received, result.host.received) < least:
            raise StepFailed(
                f"{result.guest.received} of {result.host.sent} game datagrams "
                f"reached {callee}, {result.host.received} of "
                f"{result.guest.sent} reached {caller}; at least {least} "
                "each way were expected",
                role=f"the {path.kind} path ({self.gateways})",
            )
        if (path.kind == "relay") != (relayed > 0):
            raise StepFailed(f"the path is {path.kind} but the relays forwarded "
                             f"{relayed} datagrams", role=self.gateways)  # fmt: skip
        return self._played(config, path, relayed, result)

    async def _game(self, config: GameSessionConfig) -> MatchResult:
        """The game, headless, or with --play drawn in the terminal with the user's paddle."""
        caller, callee = self.caller.name, self.callee.name
        assert self.caller_conn is not None and self.callee_conn is not None  # connected
        host, guest = (caller, self.caller_conn), (callee, self.callee_conn)
        if not self.interactive:
            return await play_in_world(self.world, host, guest, config)
        print(f"\n  {caller} hosts the game; {callee}'s UE is a bot. "
              "Keys: w/s or the arrows move your paddle, q quits.\n",
              file=self.view, flush=True)  # fmt: skip
        with Terminal(self.view, caller, callee, config.points_to_win) as screen:
            return await play_in_world(self.world, host, guest, config, host_move=screen.move,
                                       on_tick=screen.draw, stop=screen.quit)  # fmt: skip

    def _played(self, config: GameSessionConfig, path: DataPath, relayed: int,
                result: MatchResult) -> str:
        caller, callee = self.caller.name, self.callee.name
        pace = (
            f"{config.tick_rate} ticks/s in real time" if self.interactive else
            f"{config.ticks} ticks at {config.tick_rate} ticks/s, run "
            f"{config.speedup:g}x faster than real time (headless)"
        )  # fmt: skip
        return (
            f"pong, {caller}'s UE the session server, {pace}, over the "
            f"Connection ({_path_text(path)}, "
            f"the relays forwarded {relayed} datagrams): "
            f"{caller} -> {callee} {result.host.sent} sent / "
            f"{result.guest.received} received, {callee} -> {caller} "
            f"{result.guest.sent} sent / {result.host.received} received; "
            f"{_rtt_line(result.host.rtt_ms)}\n{'':22}"
            f"{result.outcome(caller, callee)}"
        )

    async def hang_up(self) -> str:
        caller, callee = self.caller.name, self.callee.name
        caller_conn, callee_conn = self.caller_conn, self.callee_conn
        assert caller_conn is not None and callee_conn is not None  # connected
        await self.world.on_ue(caller, caller_conn.close)
        await self.world.on_ue(callee, lambda: asyncio.wait_for(callee_conn.wait_closed(), 5))
        await released(self.world)
        return (
            f"{caller}'s Connection.close() sent BYE; {callee}'s connection "
            "ended on it; every PCP mapping and relay released at both operators"
        )

    # -- unregister, and what is left at the end -------------------------------------------

    async def unregister(self) -> str:
        for name, client in list(self.clients.items()):
            await self.world.on_ue(name, client.close)
        left = await bindings(self.world, (self.caller, self.callee))
        if left:
            raise StepFailed(f"{left} bindings still in the operators' stores",
                             role="the S-CSCF (registrar)")  # fmt: skip
        return ("both UeClients closed: un-registered (Expires: 0); no binding left in "
                "either store")  # fmt: skip

    async def release_and_count(self) -> None:
        """Close what the steps left and count into `report.leaked` what is still held."""
        # close() is idempotent: after a failed step it ends what the steps left (BYE,
        # Expires: 0), each in its UE's loop.
        sessions = 0
        for name, client in self.clients.items():
            with contextlib.suppress(UeError, SipError, OSError, TimeoutError):
                await self.world.on_ue(name, client.close)
            sessions += await self.world.on_ue(name, functools.partial(_sessions, client))
        with contextlib.suppress(StepFailed):
            await released(self.world)  # bounded; after a failure the release may still run
        leaked = self.report.leaked
        leaked["mappings"], leaked["relays"] = await open_now(self.world)
        leaked["sessions"] = sessions
        leaked["registrations"] = await bindings(self.world, self.world.subscribers)


def _path_text(path: DataPath) -> str:
    return f"{path.kind} path {HostPort(*path.local)} -> {HostPort(*path.remote)}"


def _rtt_line(samples: tuple[float, ...]) -> str:
    if not samples:
        return "no RTT sample (no tick came back)"
    return (f"RTT per datagram ({len(samples)} samples, state out to input back) p50 "
            f"{percentile(samples, 0.5):.2f} ms, p95 {percentile(samples, 0.95):.2f} ms")


def _count(report: Report, result: MatchResult) -> None:
    """The game's datagrams each way, named after the scenario's peers (issue 7 item 4)."""
    forward, backward = report.directions
    report.sent[forward], report.received[forward] = result.host.sent, result.guest.received
    report.sent[backward], report.received[backward] = result.guest.sent, result.host.received
    report.rtts = list(result.host.rtt_ms)
