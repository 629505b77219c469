"""`ueconnect demo`: Bill and Dave play over a connection their operators created.

The demo walks TR 22.807 section 4.2.3's flows with the UE API a game developer uses
(ue_ua.client.UeClient, docs/ue-guide.md): both UEs register with their own operator; in the
game lobby (JSON over WebSocket) Bill invites Dave, they agree the rules with Bill's UE as
session server and Dave's UE forwards its UE and MNO identifiers; Bill's UE `connect()`s to
Dave with them (an INVITE with Require: ueconnect and Target-MNO); Alpha locates Beta through
ENUM and RFC 3263; Beta's permission function asks Dave's UE, which allows; each operator opens
its side of the data path and adds it to the SDP; Dave's UE answers; the ICE checks select a
pair and `connect()` returns the Connection. Bill's UE hosts a game of pong (ue_ua/game.py)
over it that Dave's UE joins, with per-datagram RTT; Bill closes the Connection (BYE), every
mapping and relay is released; both UEs close (unregister). Each step prints with its time; a
failed step names the operator element and the SIP response that stopped it. The SIP ladder of
the call prints at the end and is written as HTML. Exit status 0 only when every step behaved.

Two worlds (`_World`):
- the embedded default (ims/embedded.py): DNS, both operators and both UEs on loopback in this
  process, no root. On loopback every candidate reaches every other, so the ICE checks would
  always pick the UEs' own host pair and the operators would be bystanders; the UEs ask for
  transport policy "relay" (only the operators' `typ relay` candidates), which is what a
  symmetric CGN forces, and the path is the operators' relays.
- `--testbed` (root): the same steps in the network-namespace testbed (ims/testbed/world.py):
  each UE behind its operator's symmetric CGN, UEs with transport policy "all" and the STUN
  server, operators with [gateway] mode pcp. play: the CGNs map through PCP, the path is
  direct; relay: the CGNs refuse PCP, the operators relay; unassisted: no gateway, no PCP, the
  UEs try alone (host and STUN candidates) and must fail with ConnectivityFailed.

`--scenario` picks the flow (play; deny: Dave's app refuses and Bill gets DeniedByCallee, 603
cause 2 of docs/extension.md section 7; same-mno: Bill -> Carol inside Alpha; relay;
unassisted: --testbed only, exit 2 without). `--json` prints one JSON object with the outcome
(the step lines go to stderr); `--serve` keeps the world running (embedded, or with --testbed
the testbed's) for any SIP client and writes a UE config per subscriber for `ueconnect ue`;
`--play` lets the user play Bill's paddle in the terminal.

The game runs headless by default: 200 ticks at HEADLESS_SPEEDUP times the lobby's tick rate
(the same game, tick for tick, in a fraction of the real time), the host's end in Bill's UE
loop and the guest's in Dave's (in the testbed each UE's loop runs in its own namespace).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import sys
import termios
import time
import tty
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO, TypeVar

from ims.config import ConfigError
from ims.dns.errors import DnsError
from ims.dns.locator import Locator, LocatorConfig
from ims.embedded import WORLD, DemoSubscriber, EmbeddedWorld
from ims.gateway.pcp_gateway import PcpOpenLeg
from ims.gateway.service import OpenLeg
from ims.operator import Operator, OperatorError
from ims.permission.bodies import Inquiry
from ims.permission.outcomes import Decision
from ims.sip.address import Address
from ims.sip.errors import SipError
from ims.sip.transport import BindError
from ims.testbed.errors import TestbedError, TestbedUsageError, ToolMissing
from ims.trace import (
    TraceError,
    calls,
    participant_name,
    read_trace,
    render_ladder,
    render_ladder_html,
)
from ue_ua.client import UeClient, UeConfig
from ue_ua.config import ue_config_text
from ue_ua.connection import Connection
from ue_ua.errors import (
    ConnectivityFailed,
    ConnectRefused,
    DeniedByCallee,
    RegistrationFailed,
    UeError,
)
from ue_ua.game import GameError, GameState, render
from ue_ua.game_session import (
    EndResult,
    GameSessionConfig,
    MatchResult,
    MoveSource,
    percentile,
    play_guest,
    play_host,
)
from ue_ua.ice import PathKind, TransportPolicy
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
from ue_ua.lobby_ws import LobbyConnection, serve_lobby

if TYPE_CHECKING:
    # Imported when --testbed runs: the embedded demo does not need the testbed's modules.
    from ims.testbed.world import TestbedWorld

T = TypeVar("T")

DATAGRAMS = 100  # game datagrams that must be received each way (issue 7 acceptance)
HEADLESS_TICKS = 200  # ticks of a headless game: one state datagram and one input each
HEADLESS_SPEEDUP = 10.0  # a headless game runs this many times faster than real time
PLAY_MINUTES = 5  # --play: the game ends by then at the latest
OPERATORS = tuple(op.name for op in WORLD.operators)  # "Alpha", "Beta": the same in both worlds
EMBEDDED_POLICY: TransportPolicy = "relay"  # see the module docstring: loopback needs it
TESTBED_SETUP_TIMEOUT = 4.0  # seconds of ICE checks in the testbed (unassisted waits it out)
ACCEPT_MARGIN = 10.0  # seconds the callee waits beyond the caller's setup for the connection
RELEASE_WITHIN = 5.0  # seconds the operators have to release after BYE (they do it in tasks)


@dataclass(frozen=True)
class Scenario:
    """One `--scenario`: who calls whom, what the callee's application answers, and (in the
    testbed) what answers PCP on the CGNs, the operators' [gateway] mode and the path the
    connection must take (None: it must fail, ConnectivityFailed)."""

    name: str
    caller: str
    callee: str
    decision: Decision
    summary: str
    refusal_expected: bool = False  # deny: the refusal is the scenario behaving
    testbed_only: bool = False
    pcp: str = "ours"  # ims.testbed.world.PcpMode
    gateway: str = "pcp"  # ims.config.GatewayMode
    testbed_path: PathKind | None = "direct"


_ALL = (
    Scenario("play", "Bill", "Dave", Decision.ALLOW,
             "Bill (Alpha) connects to Dave (Beta); Dave allows"),
    Scenario("deny", "Bill", "Dave", Decision.DENY,
             "Bill (Alpha) asks for Dave (Beta); Dave's app answers deny", True),
    Scenario("same-mno", "Bill", "Carol", Decision.ALLOW,
             "Bill connects to Carol, both at Alpha; Carol allows"),
    Scenario("relay", "Bill", "Dave", Decision.ALLOW,
             "Bill (Alpha) connects to Dave (Beta); the CGNs refuse PCP, the relays carry it",
             pcp="refuse", testbed_path="relay"),
    Scenario("unassisted", "Bill", "Dave", Decision.ALLOW,
             "Bill and Dave behind their symmetric CGNs without operator help: must fail",
             testbed_only=True, pcp="off", gateway="off", testbed_path=None),
)  # fmt: skip
SCENARIOS = {s.name: s for s in _ALL}

UNASSISTED_NEEDS_TESTBED = (
    "the unassisted scenario needs --testbed (root): on the embedded default every UE shares "
    "loopback, so there is no CGN to fail through without the operators' help. Run it as "
    "`sudo ueconnect demo --testbed --scenario unassisted`, or try --scenario play, deny, "
    "same-mno or relay here."
)
TESTBED_NEEDS_ROOT = (
    "--testbed needs root: it builds network namespaces, veth links and nftables NAT rules "
    "(`docs/testbed.md`). Run it as `sudo ueconnect demo --testbed ...`, or drop --testbed for "
    "the embedded default on loopback."
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the end-to-end demo on loopback (or in the namespace testbed)",
        description=(
            "Run Bill (Alpha) -> Dave (Beta) on the embedded default: DNS, both operators and "
            "both UEs on loopback, no root; or with --testbed in the network-namespace testbed "
            "(root). Steps print with their times, then the SIP ladder of the call; the ladder "
            "is also written as HTML under --out. The exit status is 0 only when every step "
            "behaved as it should (for --scenario deny: when Dave's refusal reached Bill and "
            "nothing was left open; for unassisted: when the UEs could not connect); 2 when "
            "the scenario cannot run here."
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
        "Carol, both at Alpha; relay: the CGNs refuse PCP and the operators relay; "
        "unassisted: no operator help, must fail (--testbed only)",
    )
    parser.add_argument(
        "--testbed",
        action="store_true",
        help="run in the network-namespace testbed (root): each UE behind its operator's CGN",
    )
    parser.add_argument(
        "--nat", choices=("symmetric", "eim"), default="symmetric",
        help="with --testbed: the CGNs' mapping behaviour (default symmetric)",
    )  # fmt: skip
    parser.add_argument(
        "--prefix", default=None, metavar="uec-NAME-",
        help="with --testbed: the namespace name prefix (default the testbed's, uec-)",
    )  # fmt: skip
    parser.add_argument(
        "--delay", type=int, default=None, metavar="MS",
        help="with --testbed: MS ms one-way on every link (netem, else NFQUEUE; docs/testbed.md)",
    )  # fmt: skip
    parser.add_argument(
        "--state-dir", type=Path, default=None, metavar="DIR",
        help="with --testbed: the testbed's state directory (default the testbed's); a "
        "testbed already up there with the same options is used and left up",
    )  # fmt: skip
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
        help="start the embedded world (with --testbed: the testbed world, root) and keep it "
        "running until Ctrl-C or SIGTERM, for any SIP client or `ueconnect ue`; prints the "
        "P-CSCFs, the DNS server, the demo subscribers' credentials and writes a UE config "
        "per subscriber under --out (OUT/bill.toml, ...); with --testbed prints how to run "
        "a UE in a UE namespace (ip netns exec ...) and takes the testbed down on exit",
    )
    parser.set_defaults(func=_demo)


@dataclass(frozen=True)
class TestbedOptions:
    """`--testbed` and its options (None of them: the testbed's defaults)."""

    __test__ = False

    nat: str = "symmetric"
    prefix: str | None = None
    state_dir: Path | None = None
    delay_ms: int | None = None


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


def _who_answered(trace: Path | None, status: int, since: float,
                  method: str) -> tuple[str, str | None]:
    """Which element first sent the final response `status` to a `method` request, and the
    Reason it carried: the earliest trace line with it (the element that made it writes "out"
    before anyone forwards it). A response first seen coming in from a UE was that UE's; one
    not traced at all was made up by the UE itself (its transaction timed out or the transport
    failed: RFC 3261 section 8.1.3.1)."""
    entries = []
    if trace is not None and trace.exists():
        try:
            entries = read_trace(trace)
        except TraceError:
            entries = []
    seen = sorted(
        (e for e in entries
         if e.status == status and e.epoch >= since - 1
         and (e.cseq or "").upper().endswith(method)),
        key=lambda e: e.epoch,
    )  # fmt: skip
    if not seen:
        return "the UE itself (no operator element sent it)", None
    first = seen[0]
    reason = first.header("Reason")
    if first.direction == "out":
        return participant_name(first.operator, first.role), reason
    sender = first.source_name or f"the UE at {first.source}"
    return f"{sender} (through {participant_name(first.operator, first.role)})", reason


class _Steps:
    def __init__(self, report: _Report, out: TextIO) -> None:
        self.start = time.perf_counter()
        self.failed: str | None = None  # what stopped the demo: step, element, response
        self.report = report
        self.out = out  # stdout for the human view, stderr under --json
        self.trace: Path | None = None  # the operators' trace, once the world runs

    def _stopped_by(self, exc: Exception, since: float) -> str:
        """The failure in a user's words: the element and the SIP response, when a response
        stopped the step (and the UE API's error for it); else what went wrong."""
        if isinstance(exc, ConnectRefused):
            who, reason = _who_answered(self.trace, exc.status, since, "INVITE")
            return (f"{who} answered {exc.status} {exc.reason}"
                    + (f" (Reason: {reason})" if reason else "")
                    + f"; the UE API raised {type(exc).__name__}: {exc.hint}")  # fmt: skip
        if isinstance(exc, RegistrationFailed):
            who, _ = _who_answered(self.trace, exc.status, since, "REGISTER")
            return f"{who} answered the REGISTER with {exc.status} {exc.reason}"
        if isinstance(exc, ConnectivityFailed):
            return f"the ICE checks between the UEs failed: {exc}"
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
        except (DnsError, SipError, UeError, LobbyError, GameError, StepFailed, OSError,
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


# -- the two worlds ------------------------------------------------------------------------------


class _World(Protocol):
    """What the demo needs of a running world: where each UE and each operator lives (in the
    testbed each has a loop of its own, in its namespace; on loopback all share this loop),
    the UEs' configs, the lobby and the resolver, and what the CGNs hold."""

    trace: Path | None
    subscribers: tuple[DemoSubscriber, ...]

    def subscriber(self, name: str) -> DemoSubscriber: ...

    def describe(self) -> str: ...

    def ue_config(self, sub: DemoSubscriber) -> UeConfig: ...

    async def on_ue(self, name: str, factory: Callable[[], Awaitable[T]]) -> T: ...

    async def in_core(self, operator: str, function: Callable[[Operator], T]) -> T: ...

    async def serve_lobby(self) -> tuple[str, Callable[[], Awaitable[None]]]: ...

    async def locate(self, operator: str, e164: str, plmn: str) -> str: ...

    async def cgn_mappings(self) -> int: ...

    def cgn_summary(self) -> str:
        """What the CGNs did beyond the gateways' mappings ("" or "; ..."), for a detail."""
        ...


def _plmn(operator: str) -> str:
    op = next(o for o in WORLD.operators if o.name == operator)
    return f"{op.mcc}-{op.mnc}"


async def _lookup(config: LocatorConfig, e164: str, plmn: str) -> str:
    """What a border finds for `e164` at `plmn`: ENUM, then RFC 3263 on the home domain."""
    locator = Locator(config)
    uri = await locator.enum_lookup(e164)
    target = (await locator.locate_operator(plmn))[0]
    return f"ENUM {e164} -> {uri}; PLMN {plmn} -> {target.host} {target.address}:{target.port}"


class _Embedded:
    """The embedded default: everything in this process's loop, on loopback."""

    def __init__(self, world: EmbeddedWorld) -> None:
        self.world = world
        self.trace = world.trace
        self.subscribers = world.subscribers

    def subscriber(self, name: str) -> DemoSubscriber:
        return self.world.subscriber(name)

    def describe(self) -> str:
        w = self.world
        return (f"the embedded default: DNS 127.0.0.1:{w.dns.port}, Alpha P-CSCF "
                f"{w.pcscf('Alpha')}, Beta P-CSCF {w.pcscf('Beta')}; the UEs on 127.0.0.1 with "
                f"transport policy \"{EMBEDDED_POLICY}\" (on loopback every candidate reaches "
                "every other: the policy makes the operators' relays the path, as a symmetric "
                "CGN would)")  # fmt: skip

    def ue_config(self, sub: DemoSubscriber) -> UeConfig:
        pcscf = self.world.pcscf(sub.operator)
        return UeConfig(name=sub.name, impu=sub.sip_uri, impi=sub.impi, password=sub.password,
                        home_domain=sub.domain, pcscf=(pcscf.host, pcscf.port),
                        transport_policy=EMBEDDED_POLICY)  # fmt: skip

    async def on_ue(self, name: str, factory: Callable[[], Awaitable[T]]) -> T:
        return await factory()

    async def in_core(self, operator: str, function: Callable[[Operator], T]) -> T:
        return function(self.world.operators[operator])

    async def serve_lobby(self) -> tuple[str, Callable[[], Awaitable[None]]]:
        handle = await serve_lobby("127.0.0.1", 0)
        return f"ws://127.0.0.1:{handle.port}", handle.close

    async def locate(self, operator: str, e164: str, plmn: str) -> str:
        return await _lookup(LocatorConfig.for_server("127.0.0.1", self.world.dns.port), e164,
                             plmn)  # fmt: skip

    async def cgn_mappings(self) -> int:
        return 0  # no CGN on loopback

    def cgn_summary(self) -> str:
        return ""  # no CGN on loopback


class _Testbed:
    """The namespace testbed: each UE in its UE namespace's loop, each operator in its core's,
    the lobby on the DNS host (192.0.2.53, reached through the CGNs like any server)."""

    def __init__(self, world: TestbedWorld) -> None:
        self.world = world
        self.trace = world.trace
        self.subscribers = world.subscribers

    def subscriber(self, name: str) -> DemoSubscriber:
        return self.world.subscriber(name)

    def describe(self) -> str:
        w = self.world
        help_ = {"ours": "our PCP server", "refuse": "a PCP server refusing every request",
                 "off": "no PCP server"}[w.pcp.value]  # fmt: skip
        return (f"the namespace testbed ({w.plan.options.prefix}*, {w.plan.options.nat.value} "
                f"CGNs with {help_}, [gateway] mode {w.gateway_mode.value}): DNS and STUN on "
                f"{w.dns_server[0]}, Alpha P-CSCF {w.pcscf('Alpha')}, Beta P-CSCF "
                f"{w.pcscf('Beta')}; each UE at {w.ue_address} behind its CGN, transport "
                "policy \"all\"")  # fmt: skip

    def ue_config(self, sub: DemoSubscriber) -> UeConfig:
        config: UeConfig = self.world.ue_config(sub.name, setup_timeout=TESTBED_SETUP_TIMEOUT)
        return config

    async def on_ue(self, name: str, factory: Callable[[], Awaitable[T]]) -> T:
        return await self.world.ue_loop(name).run(factory)

    async def in_core(self, operator: str, function: Callable[[Operator], T]) -> T:
        return await self.world.in_core(operator, function)

    async def serve_lobby(self) -> tuple[str, Callable[[], Awaitable[None]]]:
        host = self.world.dns_server[0]
        where = self.world.loop("dns")
        handle = await where.run(lambda: serve_lobby(host, 0))
        return f"ws://{host}:{handle.port}", lambda: where.run(handle.close)

    async def locate(self, operator: str, e164: str, plmn: str) -> str:
        # Asked from the operator's core, where its border asks.
        config = LocatorConfig.for_server(*self.world.dns_server)
        return await self.world.core_loop(operator).run(lambda: _lookup(config, e164, plmn))

    async def cgn_mappings(self) -> int:
        return sum([len(await self.world.pcp_mappings(op)) for op in OPERATORS])

    def cgn_summary(self) -> str:
        refused = {op: self.world.pcp_refusals(op) for op in OPERATORS}
        if not any(refused.values()):
            return ""
        return "; the CGNs refused " + ", ".join(f"{op}'s {n}" for op, n in refused.items()) \
            + " PCP request(s) (NO_RESOURCES)"


@contextlib.asynccontextmanager
async def _running(out: Path, scenario: Scenario,
                   testbed: TestbedOptions | None) -> AsyncIterator[_World]:
    if testbed is None:
        async with EmbeddedWorld.start(out) as embedded:
            yield _Embedded(embedded)
        return
    from ims.testbed.world import TestbedWorld

    out.mkdir(parents=True, exist_ok=True)
    (out / "trace.jsonl").unlink(missing_ok=True)  # the demo world starts afresh
    options: dict[str, Any] = {}
    if testbed.prefix is not None:
        options["prefix"] = testbed.prefix
    if testbed.state_dir is not None:
        options["state_dir"] = testbed.state_dir
    async with TestbedWorld.start(nat=testbed.nat, pcp=scenario.pcp, gateway=scenario.gateway,
                                  trace=True, workdir=out, delay_ms=testbed.delay_ms,
                                  **options) as world:
        yield _Testbed(world)


# -- what the operators hold -----------------------------------------------------------------


@dataclass(frozen=True)
class _Held:
    """What one operator's connectivity gateway holds open now."""

    mappings: tuple[str, ...] = ()  # the opcode of each leg held by a PCP mapping
    relay_legs: int = 0
    relay_sockets: int = 0
    relayed: int = 0  # datagrams its open relay legs forwarded, both ways

    def describe(self) -> str:
        parts = [f"PCP {opcode}" for opcode in self.mappings]
        if self.relay_legs:
            parts.append(f"{self.relay_legs} relay leg(s) ({self.relayed} datagrams relayed)")
        return ", ".join(parts) or "nothing"


def _held(op: Operator) -> _Held:
    gateway = op.gateway
    if gateway is None:
        return _Held()
    legs = gateway.open_legs()
    relays = [leg for leg in legs if isinstance(leg, OpenLeg)]
    return _Held(
        mappings=tuple(leg.opcode for leg in legs if isinstance(leg, PcpOpenLeg)),
        relay_legs=len(relays),
        relay_sockets=gateway.relay.open_sockets(),
        relayed=sum(leg.allocation.counters.caller_to_callee_datagrams
                    + leg.allocation.counters.callee_to_caller_datagrams for leg in relays),
    )  # fmt: skip


async def _holdings(world: _World) -> dict[str, _Held]:
    return {op: await world.in_core(op, _held) for op in OPERATORS}


async def _open_now(world: _World) -> tuple[int, int]:
    """(mappings, relays) open now: PCP mappings at the CGNs and mapping legs at the gateways;
    relay legs and relay sockets."""
    held = await _holdings(world)
    mappings = await world.cgn_mappings() + sum(len(h.mappings) for h in held.values())
    return mappings, sum(h.relay_legs + h.relay_sockets for h in held.values())


async def _released(world: _World) -> None:
    """Wait (bounded) until nothing is open: the gateways release in tasks after the BYE."""
    deadline = time.monotonic() + RELEASE_WITHIN
    while time.monotonic() < deadline:
        if await _open_now(world) == (0, 0):
            return
        await asyncio.sleep(0.05)
    held = await _holdings(world)
    cgns = await world.cgn_mappings()
    left = {op: h.describe() for op, h in held.items() if h.describe() != "nothing"}
    raise StepFailed(
        f"still open after {RELEASE_WITHIN:g} s: "
        + "; ".join(f"{op}: {what}" for op, what in left.items())
        + (f"; {cgns} PCP mapping(s) at the CGNs" if cgns else ""),
        role=" and ".join(f"{op} connectivity gateway" for op in left) or "the CGNs",
    )


async def _bindings(world: _World, subscribers: Iterable[DemoSubscriber]) -> int:
    now = time.time()
    total = 0
    for sub in subscribers:
        total += await world.in_core(sub.operator, functools.partial(_bound, sub.sip_uri, now))
    return total


def _bound(aor: str, now: float, op: Operator) -> int:
    return len(op.store.bindings.list_for_aor(aor, now))


# -- the game across two UEs ---------------------------------------------------------------------


async def _play(world: _World, host: tuple[str, Connection], guest: tuple[str, Connection],
                config: GameSessionConfig, *, host_move: MoveSource | None = None,
                on_tick: Callable[[GameState], None] | None = None,
                stop: asyncio.Event | None = None) -> MatchResult:
    """ue_ua.game_session.play_match, each end in its own UE's loop (in the testbed the two
    Connections live in two namespaces, two threads): the guest listens first, the host ticks;
    once the host is done, the guest has the host's linger to finish, then it is stopped."""
    (host_name, host_conn), (guest_name, guest_conn) = host, guest
    over: list[asyncio.Event] = []  # the guest's stop event, made in the guest's loop

    async def guest_end() -> EndResult:
        done = asyncio.Event()
        over.append(done)
        return await play_guest(guest_conn, config, stop=done)

    async def stop_guest() -> None:
        for event in over:
            event.set()

    guesting = asyncio.ensure_future(world.on_ue(guest_name, guest_end))
    try:
        hosted = await world.on_ue(host_name, lambda: play_host(
            host_conn, config, move=host_move, on_tick=on_tick, stop=stop))
        await asyncio.wait({guesting}, timeout=config.linger)
        await world.on_ue(guest_name, stop_guest)
        return MatchResult(host=hosted, guest=await guesting)
    finally:
        if not guesting.done():
            guesting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await guesting


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




# -- the scenario ----------------------------------------------------------------------------------


async def _both(first: Awaitable[T], second: Awaitable[Any]) -> T:
    """Run two awaitables at once; when one fails, cancel the other. `first`'s result."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    result: T = tasks[0].result()
    return result


async def _lobby(world: _World, url: str, host_sub: DemoSubscriber,
                 guest_sub: DemoSubscriber) -> tuple[GameRules, Identity]:
    """TR 22.807 4.2.3 flow 2, application level: presence, invite, accept, rules, the session
    server (the host's UE), and the guest forwarding its UE and MNO identifiers to it. Each
    player talks to the lobby from its own UE."""
    me = Player(host_sub.tel_uri, _plmn(host_sub.operator), host_sub.name)
    peer = Player(guest_sub.tel_uri, _plmn(guest_sub.operator), guest_sub.name)

    async def host_side() -> tuple[GameRules, Identity]:
        conn = await LobbyConnection.open(url, me)
        try:
            await conn.send(conn.client.hello())
            await conn.expect(Welcome)
            while peer not in conn.client.present:
                await conn.expect(Presence)
            await conn.send(conn.client.invite(peer.ue_id))
            sid = (await conn.expect(Accepted)).session_id
            await conn.send(conn.client.host(sid, GameRules(tick_rate=30)))
            rules = (await conn.expect(SessionServer)).rules
            return rules, await conn.expect(Identity)
        finally:
            await conn.close()

    async def guest_side() -> None:
        conn = await LobbyConnection.open(url, peer)
        try:
            await conn.send(conn.client.hello())
            await conn.expect(Welcome)
            sid = (await conn.expect(Invited)).session_id
            await conn.send(conn.client.accept(sid))
            await conn.expect(Proposed)
            await conn.send(conn.client.agree(sid))
            await conn.expect(SessionServer)
            await conn.send(conn.client.forward_identity(sid))
        finally:
            await conn.close()

    return await _both(world.on_ue(host_sub.name, host_side),
                       world.on_ue(guest_sub.name, guest_side))


async def _sessions(client: UeClient) -> int:
    """The UE's dialogs and open connections (read in its loop)."""
    return len(client.ua.dialogs) + len(client.connections)


def _show(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


async def _scenario(out: Path, scenario: Scenario, as_json: bool, interactive: bool = False,
                    testbed: TestbedOptions | None = None) -> int:
    report = _Report(scenario.name, scenario.caller, scenario.callee)
    view = sys.stderr if as_json else sys.stdout
    steps = _Steps(report, view)
    started = False
    try:
        async with _running(out, scenario, testbed) as world:
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
    _show_ladder(steps.trace, out, view)
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


async def _walk(world: _World, scenario: Scenario, steps: _Steps, report: _Report,
                view: TextIO, *, interactive: bool, in_testbed: bool) -> None:
    """The steps, with the UE API; everything the UEs opened is closed on the way out and
    what the operators still hold is counted into `report.leaked`."""
    caller_sub = world.subscriber(scenario.caller)
    callee_sub = world.subscriber(scenario.callee)
    caller_name, callee_name = caller_sub.name, callee_sub.name
    forward = f"{caller_name.lower()}_to_{callee_name.lower()}"
    backward = f"{callee_name.lower()}_to_{caller_name.lower()}"
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
                rules, identity = await _lobby(world, url, caller_sub, callee_sub)
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
                                      _plmn(callee_sub.operator))  # fmt: skip

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

            made = await _both(dial(), answered())
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
            held = await _holdings(world)
            holding = "; ".join(f"{op} holds {held[op].describe()}" for op in operators)
            if expected is None:
                raise StepFailed(
                    f"the UEs connected without operator help ({path.kind} path "
                    f"{_show(path.local)} -> {_show(path.remote)}): were the CGNs symmetric?",
                    role="the CGNs")  # fmt: skip
            if path.kind != expected:
                raise StepFailed(f"the ICE checks chose a {path.kind} path, {expected} was "
                                 f"expected; {holding}", role=gateways)  # fmt: skip
            inquiry = asked[0]
            return (
                f"{callee_sub.operator} asked {callee_name} (inquiry {inquiry.inquiry}: may "
                f"{inquiry.caller} of {inquiry.caller_mno} connect?), {callee_name} answered "
                f"allow; 200 OK and ACK; {holding}{world.cgn_summary()}; the ICE checks chose "
                f"the {path.kind} path {_show(path.local)} -> {_show(path.remote)}: connect() "
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
                _, reason = _who_answered(world.trace, refusal.status, since, "INVITE")
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
                await _released(world)
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
                    with _Terminal(view, caller_name, callee_name,
                                   rules.points_to_win) as screen:  # fmt: skip
                        result = await _play(world, host, guest, config, host_move=screen.move,
                                             on_tick=screen.draw, stop=screen.quit)
                else:
                    result = await _play(world, host, guest, config)
                _count(report, result, forward, backward)
                relayed = sum(h.relayed for h in (await _holdings(world)).values())
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
                    f"Connection ({path.kind} path {_show(path.local)} -> {_show(path.remote)}, "
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
                await _released(world)
                return (
                    f"{caller_name}'s Connection.close() sent BYE; {callee_name}'s connection "
                    "ended on it; every PCP mapping and relay released at both operators"
                )

            await steps.run(f"{caller_name} ends the session (BYE)", hang_up)

        async def unregister() -> str:
            for name, client in list(clients.items()):
                await world.on_ue(name, client.close)
            left = await _bindings(world, (caller_sub, callee_sub))
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
            await _released(world)  # bounded; after a failure the release may still run
        report.leaked["mappings"], report.leaked["relays"] = await _open_now(world)
        report.leaked["sessions"] = sessions
        report.leaked["registrations"] = await _bindings(world, world.subscribers)


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


async def _serve(out: Path, testbed: TestbedOptions | None = None) -> int:
    """Run the embedded world (or, with `testbed`, the testbed world) until SIGINT or SIGTERM,
    saying how to reach it; the testbed is taken down on the way out."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)  # before anything is said: no race
    try:
        if testbed is None:
            async with EmbeddedWorld.start(out) as world:
                await _serve_until(world, stop, _write_ue_configs(out, _Embedded(world)))
        else:
            async with _running(out, SCENARIOS["play"], testbed) as running:
                assert isinstance(running, _Testbed)
                await _serve_testbed_until(running, stop, _write_ue_configs(out, running))
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print("ueconnect demo --serve: stopped" + (" (the testbed is down)" if testbed else ""),
          flush=True)
    return 0


def _write_ue_configs(out: Path, world: _World) -> dict[str, Path]:
    """A UE TOML file per demo subscriber (ue_ua/config.py), `ueconnect ue --config FILE`."""
    paths: dict[str, Path] = {}
    for sub in world.subscribers:
        if isinstance(world, _Testbed):
            # The CLI's UE: the testbed's UE config with the default setup time.
            config: UeConfig = world.world.ue_config(sub.name)
        else:
            config = world.ue_config(sub)
        path = out / f"{sub.name.lower()}.toml"
        path.write_text(ue_config_text(config, comment=(
            f"{sub.name} at {sub.operator} ({sub.e164}), written by `ueconnect demo --serve`.\n"
            f"Use: ueconnect ue --config {path} register|listen|connect (docs/ue-guide.md)")),
            encoding="utf-8")  # fmt: skip
        paths[sub.name] = path
    return paths


def _ue_command() -> str:
    """How to run the CLI here: the console script when installed, else from the checkout."""
    return "ueconnect" if shutil.which("ueconnect") else "python3 -m ims"


def _credentials(world: _World, operators: dict[str, Operator],
                 pcscf: Callable[[str], Address], ue_configs: dict[str, Path]) -> list[str]:
    lines = []
    for name, op in operators.items():
        where = pcscf(name)
        lines.append(
            f"  {name} ({op.config.operator.plmn}): P-CSCF {where.host}:{where.port} "
            f"(UDP, TCP), realm {op.config.realm}"
        )
    lines.append("  subscribers (digest username = impi):")
    for sub in world.subscribers:
        lines.append(
            f"    {sub.name} at {sub.operator}: impi {sub.impi} password {sub.password} "
            f"public identities {sub.sip_uri} {sub.tel_uri}"
        )
    lines.append("  UE config files (`ueconnect ue --config FILE register|listen|connect`):")
    lines += [f"    {name}: {path}" for name, path in ue_configs.items()]
    return lines


async def _serve_until(world: EmbeddedWorld, stop: asyncio.Event,
                       ue_configs: dict[str, Path]) -> None:
    """Say how to reach the running world, then wait for the stop signal."""
    lines = [f"ueconnect demo --serve: the embedded world runs (workdir {world.workdir})",
             f"  DNS server: 127.0.0.1:{world.dns.port} (UDP and TCP)"]  # fmt: skip
    lines += _credentials(_Embedded(world), world.operators, world.pcscf, ue_configs)
    cli = _ue_command()
    lines += ["  try, each in a terminal of its own (Dave answers and echoes, Bill connects):",
              f"    {cli} ue --config {ue_configs['Dave']} listen --allow-all --echo",
              f"    {cli} ue --config {ue_configs['Bill']} connect +15550100002 --mno 001-02 "
              "--count 20"]  # fmt: skip
    lines.append("Ctrl-C (or SIGTERM) stops it.")
    print("\n".join(lines), flush=True)
    await stop.wait()


async def _serve_testbed_until(running: _Testbed, stop: asyncio.Event,
                               ue_configs: dict[str, Path]) -> None:
    """Say how to reach the running testbed world (from its UE namespaces), then wait."""
    w = running.world
    lines = [f"ueconnect demo --serve --testbed: the testbed world runs (workdir {w.workdir})",
             f"  {running.describe()}",
             f"  DNS server: {w.dns_server[0]}:{w.dns_server[1]}, STUN server "
             f"{w.stun_server[0]}:{w.stun_server[1]}"]  # fmt: skip
    lines += _credentials(running, w.operators, w.pcscf, ue_configs)
    cli = _ue_command()
    ns = {op: w.namespace(f"{op.lower()}-ue") for op in OPERATORS}
    lines += ["  each UE runs in its operator's UE namespace, behind its CGN "
              f"({', '.join(f'{op}: {name}' for op, name in ns.items())}); as root, from here:",
              f"    ip netns exec {ns['Beta']} {cli} ue --config {ue_configs['Dave']} listen "
              "--allow-all --echo",
              f"    ip netns exec {ns['Alpha']} {cli} ue --config {ue_configs['Bill']} connect "
              "+15550100002 --mno 001-02 --count 20"]  # fmt: skip
    lines.append("Ctrl-C (or SIGTERM) stops it and takes the testbed down.")
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
    if args.testbed:
        return ("--play runs on the embedded default only: in the testbed the game's ends run "
                "in the UE namespaces, away from this terminal; drop --play or --testbed")
    scenario = SCENARIOS[args.scenario]
    if scenario.refusal_expected or scenario.testbed_path is None:
        return (f"--play needs a scenario that connects (play, same-mno, relay): in "
                f"{args.scenario} nothing is played")
    for stream, name in ((sys.stdout, "stdout"), (sys.stdin, "stdin")):
        if not stream.isatty():
            return (f"--play needs a terminal, and {name} is not a TTY (redirected or piped?). "
                    "Run it in a terminal, or drop --play: the game then runs headless")
    return None


def _cannot_run(args: argparse.Namespace) -> str | None:
    """Why the options cannot run here (exit 2), else None."""
    scenario = SCENARIOS[args.scenario]
    if not args.testbed:
        if args.prefix is not None or args.state_dir is not None or args.nat != "symmetric":
            return "--nat, --prefix and --state-dir go with --testbed only"
        if args.delay is not None:
            return "--delay goes with --testbed only"
        if scenario.testbed_only:
            return UNASSISTED_NEEDS_TESTBED
    else:
        if sys.platform != "linux" or os.geteuid() != 0:
            return TESTBED_NEEDS_ROOT
    if args.play:
        return _cannot_play(args)
    return None


def _demo(args: argparse.Namespace) -> int:
    # The seams log a warning on every use; the demo says it once, at the end. What the UE
    # side and the gateways log as warnings (a relay fallback, failed checks) the steps say.
    for name in ("ims.seams", "ue_ua", "ims.gateway", "aioice"):
        logging.getLogger(name).setLevel(logging.ERROR)
    problem = _cannot_run(args)
    if problem:
        print(f"ueconnect demo: {problem}", file=sys.stderr)
        return 2
    testbed = (TestbedOptions(args.nat, args.prefix, args.state_dir, args.delay)
               if args.testbed else None)
    where = "the testbed world" if testbed else "the embedded world"
    try:
        if args.serve:
            return asyncio.run(_serve(args.out, testbed))
        scenario = SCENARIOS[args.scenario]
        return asyncio.run(_scenario(args.out, scenario, args.json, interactive=args.play,
                                     testbed=testbed))  # fmt: skip
    except KeyboardInterrupt:
        # Ctrl-C (e.g. during --play): the world has been torn down on the way out.
        print("ueconnect demo: interrupted", file=sys.stderr)
        return 130
    except (ToolMissing, TestbedUsageError) as exc:
        print(f"ueconnect demo: cannot build the testbed: {exc}", file=sys.stderr)
        return 2
    except BindError as exc:
        print(
            f"ueconnect demo: cannot start {where}: {exc}\n"
            "  Another `ueconnect demo` or `ueconnect mno` may be using the loopback plan's "
            "addresses (127.0.1.x, 127.0.2.x): stop it and run the demo again.",
            file=sys.stderr,
        )
        return 1
    except (TestbedError, OperatorError, ConfigError, SipError, OSError) as exc:
        print(f"ueconnect demo: cannot start {where}: {exc}", file=sys.stderr)
        return 1
