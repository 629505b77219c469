"""The scenario: its steps walked with the UE API in a running world."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

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
            await _walk(world, scenario, steps, report, view, interactive=interactive,
                        in_testbed=testbed is not None)
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


async def _walk(world: World, scenario: Scenario, steps: Steps, report: Report,
                view: TextIO, *, interactive: bool, in_testbed: bool) -> None:
    """The steps, with the UE API; everything the UEs opened is closed on the way out and
    what the operators still hold is counted into `report.leaked`."""
    caller_sub = world.subscriber(scenario.caller)
    callee_sub = world.subscriber(scenario.callee)
    caller_name, callee_name = caller_sub.name, callee_sub.name
    # On loopback the relay policy leaves the operators' relays as the only path.
    expected: PathKind | None = scenario.testbed_path if in_testbed else "relay"
    permission_function = f"{callee_sub.operator} permission function"
    operators = sorted({caller_sub.operator, callee_sub.operator})
    gateways = " and ".join(f"{name} connectivity gateway" for name in operators)
    print(f"ueconnect demo ({scenario.name}): {scenario.summary}\n  world: {world.describe()}",
          file=view)  # fmt: skip
    if scenario.name == "relay" and not in_testbed:
        print("  on the embedded default the relay IS the path, as in play: no CGN stands "
              "between the UEs to refuse PCP (that needs --testbed), and the UEs use only the "
              "operators' relay candidates", file=view)  # fmt: skip
    asked: list[Inquiry] = []

    async def callee_decides(inquiry: Inquiry) -> Decision:
        # The callee's game asks them; in the demo they answer at once.
        asked.append(inquiry)
        return scenario.decision

    clients: dict[str, UeClient] = {}
    conns: dict[str, Connection] = {}
    lobby_peer: list[Identity] = []
    agreed: list[GameRules] = []
    try:
        for sub in (caller_sub, callee_sub):

            async def reg(sub: DemoSubscriber = sub) -> str:
                config = world.ue_config(sub)
                ask = callee_decides if sub is callee_sub else None

                async def start() -> Any:
                    client = await UeClient.start(config, ask=ask)
                    clients[sub.name] = client
                    return await client.register()

                got = await world.on_ue(sub.name, start)
                assoc = ", ".join(str(u) for u in got.associated_uris) or "-"
                return f"200 OK, expires {got.expires} s, P-Associated-URI {assoc}"

            await steps.run(f"{sub.name} registers at {sub.operator} (digest)", reg)

        async def lobby() -> str:
            url, close = await world.serve_lobby()
            try:
                rules, identity = await meet_in_lobby(world, url, caller_sub, callee_sub)
            finally:
                await close()
            lobby_peer.append(identity)
            agreed.append(rules)
            return (
                f"{caller_name} invites {callee_name}, who accepts; {rules.game} at "
                f"{rules.tick_rate} ticks/s, first to {rules.points_to_win}, with "
                f"{caller_name}'s UE as session server; {callee_name}'s UE forwards "
                f"{identity.ue_id} at MNO {identity.mno_id}"
            )

        await steps.run("the game lobby: invite, rules, session server, identities", lobby)

        async def locate() -> str:
            return await world.locate(caller_sub.operator, callee_sub.e164,
                                      plmn_of(callee_sub.operator))  # fmt: skip

        where = (
            f"where Alpha's border will find {callee_name} (ENUM, RFC 3263)"
            if callee_sub.operator != caller_sub.operator
            else f"where {callee_name} is: at {callee_sub.operator} itself (ENUM, RFC 3263)"
        )
        await steps.run(where, locate)

        async def dial() -> Connection:
            caller = clients[caller_name]
            peer = lobby_peer[0]
            made = await world.on_ue(caller_name, lambda: caller.connect(peer.ue_id, peer.mno_id))
            conns["caller"] = made
            return made

        async def connect_both() -> tuple[Connection, Connection]:
            """Bill's connect() and Dave's accept(), each in its UE's loop."""
            callee = clients[callee_name]
            wait = clients[caller_name].config.setup_timeout + ACCEPT_MARGIN

            async def answered() -> Connection:
                accepted = await world.on_ue(callee_name, lambda: callee.accept(wait))
                conns["callee"] = accepted
                return accepted

            made = await both(dial(), answered())
            return made, conns["callee"]

        async def connect() -> str:
            made, accepted = await connect_both()
            report.connected = True
            if not asked:
                raise StepFailed(f"connected the call without asking {callee_name}",
                                 role=permission_function)  # fmt: skip
            report.permission = "granted"
            path = made.path
            assert path is not None  # just connected
            report.path, report.setup_ms = path.kind, made.setup_ms
            held = await holdings(world)
            holding = "; ".join(f"{op} holds {held[op].describe()}" for op in operators)
            if expected is None:
                raise StepFailed(
                    f"the UEs connected without operator help ({_path_text(path)}): were "
                    "the CGNs symmetric?",
                    role="the CGNs")  # fmt: skip
            if path.kind != expected:
                raise StepFailed(f"the ICE checks chose a {path.kind} path, {expected} was "
                                 f"expected; {holding}", role=gateways)  # fmt: skip
            inquiry = asked[0]
            return (
                f"{callee_sub.operator} asked {callee_name} (inquiry {inquiry.inquiry}: may "
                f"{inquiry.caller} of {inquiry.caller_mno} connect?), {callee_name} answered "
                f"allow; 200 OK and ACK; {holding}{world.cgn_summary()}; the ICE checks chose "
                f"the {_path_text(path)}: connect() "
                f"gave the Connection in {made.setup_ms:.1f} ms; {callee_name} saw "
                f"{accepted.peer}"
            )

        async def refused_call() -> str:
            since = time.time()
            try:
                await dial()
            except ConnectRefused as refusal:
                report.refusal = {"status": refusal.status, "reason": refusal.reason,
                                  "cause": refusal.cause, "error": type(refusal).__name__}
                if asked:
                    report.permission = "denied"
                # docs/extension.md section 7: the callee's UE denied -> 603, cause 2.
                if not isinstance(refusal, DeniedByCallee) or refusal.status != 603:
                    raise StepFailed(f"expected DeniedByCallee (603, cause 2), got "
                                     f"{type(refusal).__name__}: {refusal}",
                                     role=permission_function) from None  # fmt: skip
                if not asked:
                    raise StepFailed(f"refused without asking {callee_name}",
                                     role=permission_function) from None  # fmt: skip
                callee = clients[callee_name]
                if await world.on_ue(callee_name, lambda: _sessions(callee)):
                    raise StepFailed(f"{callee_name} was offered the call despite refusing",
                                     role=permission_function) from None  # fmt: skip
                _, reason = who_answered(world.trace, refusal.status, since, "INVITE")
                return (
                    f"{callee_sub.operator} asked {callee_name}, who answered deny; "
                    f"{caller_name} got {refusal.status} {refusal.reason}, Reason "
                    f"{reason or '-'}: connect() raised {type(refusal).__name__}"
                )
            report.connected = True
            raise StepFailed(f"the call was connected although {callee_name} answered deny",
                             role=permission_function)  # fmt: skip

        async def alone() -> str:
            try:
                await connect_both()
            except ConnectivityFailed as failed:
                if asked:
                    report.permission = "granted"
                return (
                    f"{callee_sub.operator} asked {callee_name}, who allowed; 200 OK and ACK; "
                    f"no operator opened anything; the UEs checked their host and STUN "
                    f"candidates across both symmetric CGNs and failed, as they must: "
                    f"connect() raised ConnectivityFailed ({failed}) and sent BYE"
                )
            return await connect()  # connected: connect() names what should not have been

        if scenario.refusal_expected:
            await steps.run(
                f"{caller_name} asks for {callee_name}; {callee_name}'s app refuses (603)",
                refused_call,
            )
        elif expected is None:
            timeout = world.ue_config(caller_sub).setup_timeout + 15
            await steps.run(
                f"{caller_name} tries to reach {callee_name} without operator help "
                "(ICE with STUN across both CGNs): it must fail", alone, timeout=timeout,
            )  # fmt: skip
        else:
            await steps.run(
                f"{caller_name} asks {caller_sub.operator} to connect them to {callee_name}; "
                f"{callee_sub.operator} asks {callee_name} for consent",
                connect, timeout=25,
            )  # fmt: skip
        if scenario.refusal_expected or expected is None:

            async def nothing_open() -> str:
                await released(world)
                return "no PCP mapping, relay leg or relay socket open at either operator"

            await steps.run("nothing was left open at either operator", nothing_open)
        else:
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
                caller_conn, callee_conn = conns["caller"], conns["callee"]
                path = caller_conn.path
                assert path is not None  # connected
                host, guest = (caller_name, caller_conn), (callee_name, callee_conn)
                if interactive:
                    print(f"\n  {caller_name} hosts the game; {callee_name}'s UE is a bot. "
                          "Keys: w/s or the arrows move your paddle, q quits.\n",
                          file=view, flush=True)  # fmt: skip
                    with Terminal(view, caller_name, callee_name,
                                   rules.points_to_win) as screen:  # fmt: skip
                        result = await play_in_world(world, host, guest, config,
                                                     host_move=screen.move,
                                                     on_tick=screen.draw, stop=screen.quit)
                else:
                    result = await play_in_world(world, host, guest, config)
                _count(report, result)
                relayed = sum(h.relayed for h in (await holdings(world)).values())
                least = 1 if interactive else DATAGRAMS
                got = min(result.guest.received, result.host.received)
                if got < least:
                    raise StepFailed(
                        f"{result.guest.received} of {result.host.sent} game datagrams "
                        f"reached {callee_name}, {result.host.received} of "
                        f"{result.guest.sent} reached {caller_name}; at least {least} "
                        "each way were expected",
                        role=f"the {path.kind} path ({gateways})",
                    )
                if (path.kind == "relay") != (relayed > 0):
                    raise StepFailed(f"the path is {path.kind} but the relays forwarded "
                                     f"{relayed} datagrams", role=gateways)  # fmt: skip
                pace = (
                    f"{config.tick_rate} ticks/s in real time" if interactive else
                    f"{config.ticks} ticks at {config.tick_rate} ticks/s, run "
                    f"{config.speedup:g}x faster than real time (headless)"
                )  # fmt: skip
                return (
                    f"pong, {caller_name}'s UE the session server, {pace}, over the "
                    f"Connection ({_path_text(path)}, "
                    f"the relays forwarded {relayed} datagrams): "
                    f"{caller_name} -> {callee_name} {result.host.sent} sent / "
                    f"{result.guest.received} received, {callee_name} -> {caller_name} "
                    f"{result.guest.sent} sent / {result.host.received} received; "
                    f"{_rtt_line(result.host.rtt_ms)}\n{'':22}"
                    f"{result.outcome(caller_name, callee_name)}"
                )

            play_time = config.ticks * config.interval + config.linger + 15
            await steps.run(
                f"{caller_name} and {callee_name} play pong over the connection "
                f"({report.path or 'no'} path)", play, timeout=play_time,
            )  # fmt: skip

            async def hang_up() -> str:
                caller_conn, callee_conn = conns["caller"], conns["callee"]
                await world.on_ue(caller_name, caller_conn.close)
                await world.on_ue(callee_name,
                                  lambda: asyncio.wait_for(callee_conn.wait_closed(), 5))
                await released(world)
                return (
                    f"{caller_name}'s Connection.close() sent BYE; {callee_name}'s connection "
                    "ended on it; every PCP mapping and relay released at both operators"
                )

            await steps.run(f"{caller_name} ends the session (BYE)", hang_up)

        async def unregister() -> str:
            for name, client in list(clients.items()):
                await world.on_ue(name, client.close)
            left = await bindings(world, (caller_sub, callee_sub))
            if left:
                raise StepFailed(f"{left} bindings still in the operators' stores",
                                 role="the S-CSCF (registrar)")  # fmt: skip
            return ("both UeClients closed: un-registered (Expires: 0); no binding left in "
                    "either store")  # fmt: skip

        await steps.run("both UEs unregister", unregister)
    finally:
        # close() is idempotent: after a failed step it ends what the steps left (BYE,
        # Expires: 0), each in its UE's loop.
        sessions = 0
        for name, client in clients.items():
            with contextlib.suppress(UeError, SipError, OSError, TimeoutError):
                await world.on_ue(name, client.close)
            sessions += await world.on_ue(name, functools.partial(_sessions, client))
        with contextlib.suppress(StepFailed):
            await released(world)  # bounded; after a failure the release may still run
        report.leaked["mappings"], report.leaked["relays"] = await open_now(world)
        report.leaked["sessions"] = sessions
        report.leaked["registrations"] = await bindings(world, world.subscribers)


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
