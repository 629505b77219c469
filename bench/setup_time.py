"""Connection setup time in the namespace testbed: `UeClient.connect()` until the first datagram.

Issue 6 asks for the time from a game's `connect()` until its first datagram arrives at the
peer, in the testbed (real NAT in network namespaces), with 10 ms of netem delay per link.
`python3 -m bench setup_time` runs the testbed world (`ims.testbed.world.TestbedWorld`, one
process: every namespace has a loop thread of its own) once per *scenario*:

- `direct`: symmetric CGNs, our PCP servers: the operators map, the path is direct;
- `relay`: symmetric CGNs, PCP servers refusing every request: both operators relay;
- `eim` (optional): endpoint-independent CGNs, our PCP servers: direct.

Bill (Alpha) connects to Dave (Beta) N times in turn (default 20), each time:

    t0  Bill's loop calls UeClient.connect(Dave)          gather (host + STUN srflx)
    t1    its UserAgent sends the INVITE                  \\ SIP: INVITE .. 2xx, through both
    t2    the 2xx arrives                                 /  operators (PCP or relay set-up)
    t3  connect() returns the Connection                  ICE: the checks, nomination
        Bill sends one datagram at once
    t4  Dave's `recv()` returns it                        first datagram

and the figure is t4 - t0, with its parts. Bill's and Dave's loops are threads of this one
process, so every mark is `time.perf_counter()` of one clock. The UE API does not expose the
INVITE..2xx span, so the benchmark times the `UserAgent.call` its client makes (on that one
instance, wrapped); t1 is the call's start, which includes building the INVITE (microseconds).
After each connection Bill hangs up and the benchmark waits until both operators hold nothing
open, so every connection starts from the same state.

The delay: the world's `delay_ms` (default 10, `--delay MS`, `--no-delay` for none): that
one-way delay on the egress of every interface of the testbed's links (each UE's eth0, each
CGN's in0 and out0, the router's three, each core's and the DNS host's eth0; see
ims.testbed.topology.link_delays), by `tc netem` where the kernel has it and otherwise by
NFQUEUE with the wait in the world's namespace loops (ims/testbed/delay.py). The output and
the JSON say which (`"delay": {"ms": 10, "mechanism": "netem" | "nfqueue", ...}`); with
NFQUEUE each scenario also reports how many packets were delayed and how many passed without
the delay (its backlog overflowing), which should be none.

Root only (namespaces, nftables): without root it exits 2 saying so. Bounded: at most
MAX_CONNECTIONS per scenario, each connection within its setup timeout plus a margin, and a
scenario stops after three failures in a row. Traffic stays inside the namespaces the world
creates; they are removed after each scenario, also after a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import BenchConfigError, Benchmark
from bench.machine import machine_facts
from ims.permission.outcomes import Decision
from ims.testbed.builder import run_command
from ims.testbed.errors import TestbedError
from ims.testbed.netns import NamespaceLoop
from ims.testbed.requirements import WORLD_TOOLS, missing_for_world
from ims.testbed.topology import NatBehaviour
from ims.testbed.world import DelayMechanism, PcpMode, TestbedWorld

MAX_CONNECTIONS = 200
FAILURES_IN_A_ROW = 3  # a scenario that fails this often in a row is broken, not slow
RELEASE_WITHIN = 10.0  # seconds the operators get to release a session after its BYE
CALLER, CALLEE = "Bill", "Dave"
# The world's, and `tc` to ask the kernel for netem (the world names iptables-legacy itself
# when it needs it for NFQUEUE).
TOOLS = (*WORLD_TOOLS, ("tc", "iproute2"))


@dataclass(frozen=True)
class Scenario:
    """One world: its CGNs' NAT behaviour, what answers PCP, and the path to expect."""

    name: str
    nat: NatBehaviour
    pcp: PcpMode
    expected_path: str
    description: str


SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (
        Scenario("direct", NatBehaviour.SYMMETRIC, PcpMode.OURS, "direct",
                 "symmetric CGNs, PCP granted: the path is direct through the mappings"),
        Scenario("relay", NatBehaviour.SYMMETRIC, PcpMode.REFUSE, "relay",
                 "symmetric CGNs, PCP refused (NO_RESOURCES): both operators relay"),
        Scenario("eim", NatBehaviour.EIM, PcpMode.OURS, "direct",
                 "endpoint-independent CGNs, PCP granted: direct"),
    )
}  # fmt: skip


@dataclass(frozen=True)
class SetupSettings:
    connections: int = 20
    scenarios: tuple[str, ...] = ("direct", "relay")
    delay_ms: int | None = 10  # one-way, per link egress; None: no added delay
    delay_mechanism: DelayMechanism | None = None  # None: netem where the kernel has it
    setup_timeout: float = 10.0  # UeConfig.setup_timeout: the ICE checks' bound

    def __post_init__(self) -> None:
        if not 1 <= self.connections <= MAX_CONNECTIONS:
            raise BenchConfigError(f"connections must be in [1, {MAX_CONNECTIONS}]")
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown or not self.scenarios:
            raise BenchConfigError(f"scenarios must be some of {', '.join(SCENARIOS)}, not "
                                   f"{', '.join(unknown) or 'none'}")
        if self.delay_ms is not None and not 1 <= self.delay_ms <= 1000:
            raise BenchConfigError("the link delay must be in [1, 1000] ms")
        if not 0.5 <= self.setup_timeout <= 60:
            raise BenchConfigError("setup timeout must be in [0.5, 60] s")


@dataclass(frozen=True)
class SetupSample:
    """One connection, milliseconds (see the module text for the marks)."""

    total_ms: float  # t4 - t0: connect() until the first datagram arrived at the callee
    gather_ms: float  # t1 - t0
    sip_ms: float  # t2 - t1: INVITE .. 2xx
    ice_ms: float  # t3 - t2: the answer's candidates to the ICE agent, checks, nomination
    first_datagram_ms: float  # t4 - t3
    callee_ready_ms: float  # when the callee's accept() returned (its checks done), from t0
    path: str  # the caller's Connection.path.kind
    client_setup_ms: float  # what Connection.setup_ms says (t3 - t0 as the client counts it)


@dataclass(frozen=True)
class Spread:
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        ordered = sorted(values)
        return cls(_rank(ordered, 0.50), _rank(ordered, 0.95), ordered[-1])


def _rank(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (the smallest value with at least p of the values at or below)."""
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


PARTS = ("total_ms", "gather_ms", "sip_ms", "ice_ms", "first_datagram_ms",
         "callee_ready_ms")


@dataclass(frozen=True)
class DelayReport:
    """The delay one world carried (`TestbedWorld.describe_delay` and its counters)."""

    ms: int | None
    mechanism: str | None  # "netem" | "nfqueue" | None (no delay)
    described: str
    delayed: int | None = None  # NFQUEUE: packets that waited, over every link
    undelayed: int | None = None  # NFQUEUE: packets passed at once (backlog full)

    @classmethod
    def of(cls, world: TestbedWorld) -> DelayReport:
        counters = world.delay_counters()
        mechanism = world.delay_mechanism.value if world.delay_mechanism else None
        return cls(world.delay_ms, mechanism, world.describe_delay(),
                   sum(n for n, _ in counters.values()) if counters else None,
                   sum(n for _, n in counters.values()) if counters else None)

    def as_json(self) -> dict[str, Any]:
        return {"ms": self.ms, "mechanism": self.mechanism, "described": self.described}


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    description: str
    attempted: int = 0
    samples: tuple[SetupSample, ...] = ()
    failures: tuple[str, ...] = ()
    ended: str = ""
    delay: DelayReport | None = None

    @property
    def paths(self) -> dict[str, int]:
        counted: dict[str, int] = {}
        for sample in self.samples:
            counted[sample.path] = counted.get(sample.path, 0) + 1
        return counted

    def spread(self, part: str) -> Spread | None:
        values = [float(getattr(s, part)) for s in self.samples]
        return Spread.of(values) if values else None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "paths": self.paths,
                "spread": {part: asdict(s) if (s := self.spread(part)) else None
                           for part in PARTS}}


@dataclass
class _Marks:
    """The caller's marks for one connection, written from the caller's loop only."""

    invite: float | None = None
    final: float | None = None


@dataclass
class _World:
    world: TestbedWorld
    bill: Any  # ue_ua.client.UeClient, in the alpha-ue loop
    dave: Any  # ue_ua.client.UeClient, in the beta-ue loop
    bill_loop: NamespaceLoop
    dave_loop: NamespaceLoop
    marks: _Marks = field(default_factory=_Marks)


# -- one connection ----------------------------------------------------------------------------


async def _one_connection(w: _World, seq: int, timeout: float) -> SetupSample:
    sub = w.world.subscriber(CALLEE)
    mno = w.world.plmn(sub.operator)
    payload = b"first %d" % seq
    w.marks = _Marks()

    async def call_and_send() -> tuple[float, float, Any]:
        t0 = time.perf_counter()
        connection = await w.bill.connect(sub.e164, mno)
        t3 = time.perf_counter()
        await connection.send(payload)
        return t0, t3, connection

    async def accept_and_receive() -> tuple[float, float, Any]:
        try:  # the caller's own bound comes first and names the failure better
            connection = await w.dave.accept(timeout=timeout + 5)
        except TimeoutError:
            raise TimeoutError(f"{CALLEE} had no incoming connection within {timeout + 5:g} s "
                               "(its side of the checks failed?)") from None
        ready = time.perf_counter()
        while True:  # the first datagram Bill sent after connect() (nothing else is sent)
            try:
                data = await asyncio.wait_for(connection.recv(), timeout)
            except TimeoutError:
                raise TimeoutError(f"{CALLEE} received no datagram within {timeout:g} s of "
                                   "accepting") from None
            if data == payload:
                return ready, time.perf_counter(), connection

    caller = asyncio.ensure_future(w.bill_loop.run(call_and_send))
    callee = asyncio.ensure_future(w.dave_loop.run(accept_and_receive))
    try:
        outcomes = await asyncio.gather(caller, callee, return_exceptions=True)
    except BaseException:  # cancelled (the outer bound): stop both sides
        for task in (caller, callee):
            task.cancel()
        await _hang_up_everything(w)
        raise
    calling, answering = outcomes
    # The caller's error first: it says why the setup failed.
    for outcome in (calling, answering):
        if isinstance(outcome, BaseException):
            await _hang_up_everything(w)
            raise outcome
    assert not isinstance(calling, BaseException) and not isinstance(answering, BaseException)
    (t0, t3, bill_conn), (ready, t4, dave_conn) = calling, answering
    marks = w.marks
    t1 = marks.invite if marks.invite is not None else t0
    t2 = marks.final if marks.final is not None else t1
    sample = SetupSample(
        total_ms=(t4 - t0) * 1000, gather_ms=(t1 - t0) * 1000, sip_ms=(t2 - t1) * 1000,
        ice_ms=(t3 - t2) * 1000, first_datagram_ms=(t4 - t3) * 1000,
        callee_ready_ms=(ready - t0) * 1000,
        path=str(bill_conn.path.kind), client_setup_ms=float(bill_conn.setup_ms))
    await w.bill_loop.run(bill_conn.close)
    await w.dave_loop.run(lambda: asyncio.wait_for(dave_conn.wait_closed(), 10))
    return sample


async def _hang_up_everything(w: _World) -> None:
    """After a failed attempt: close whatever either side still holds (best effort)."""
    for loop, client in ((w.bill_loop, w.bill), (w.dave_loop, w.dave)):
        async def close_all(client: Any = client) -> None:
            for connection in list(client.connections):
                await connection.close()

        try:
            await asyncio.wait_for(loop.run(close_all), 15)
        except Exception as exc:  # keep going: the next attempt or the world's close reports
            print(f"    (closing after a failure: {exc!r})", flush=True)


async def _released(world: TestbedWorld) -> bool:
    """Both operators hold nothing open (bounded wait): the next connection starts clean."""
    end = time.monotonic() + RELEASE_WITHIN
    while time.monotonic() < end:
        busy = False
        for op in ("Alpha", "Beta"):
            if await world.open_legs(op, kernel=False) or await world.pcp_mappings(op):
                busy = True
        if not busy:
            return True
        await asyncio.sleep(0.05)
    return False


def _timed_call(w: _World) -> Callable[[], Awaitable[None]]:
    """Wrap the caller's `UserAgent.call` (this instance only) to mark INVITE and 2xx."""

    async def install() -> None:
        ua = w.bill.ua
        original = ua.call

        async def call(*args: Any, **kwargs: Any) -> Any:
            w.marks.invite = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                w.marks.final = time.perf_counter()

        setattr(ua, "call", call)  # noqa: B010 (an instance attribute shadows the method)

    return install


# -- one scenario ------------------------------------------------------------------------------


async def _allow(inquiry: object) -> Decision:
    """Every UE consents: the benchmark times connections, not refusals."""
    return Decision.ALLOW


async def run_scenario(scenario: Scenario, settings: SetupSettings, *, prefix: str,
                       state_dir: Path, report: Callable[[str], None]) -> ScenarioResult:
    """N connections in a world of `scenario` with the settings' link delay. A world that
    fails to start or to close cleanly ends the result with that error; the samples measured
    before it are kept."""
    samples: list[SetupSample] = []
    failures: list[str] = []
    ended = [f"{settings.connections} connections"]
    attempted = [0]
    delay: DelayReport | None = None
    try:
        async with TestbedWorld.start(nat=scenario.nat, pcp=scenario.pcp, gateway="pcp",
                                      prefix=prefix, state_dir=state_dir,
                                      delay_ms=settings.delay_ms,
                                      delay_mechanism=settings.delay_mechanism) as world:
            report(f"  {scenario.name}: {delay_banner(DelayReport.of(world))}")
            try:
                await _connections(world, scenario, settings, samples, failures, ended,
                                   attempted, report)
            finally:  # counted before the close, which lets what still waits through
                delay = DelayReport.of(world)
    except (TestbedError, OSError) as exc:
        ended.append(f"error: {exc}")
        report(f"  {scenario.name}: {exc}")
    if delay is not None and delay.delayed is not None:
        report(f"  {scenario.name}: NFQUEUE delayed {delay.delayed} packets, "
               f"{delay.undelayed} passed without the delay")
    return ScenarioResult(scenario.name, scenario.description, attempted[0], tuple(samples),
                          tuple(failures), "; ".join(ended), delay)


async def _connections(world: TestbedWorld, scenario: Scenario, settings: SetupSettings,
                       samples: list[SetupSample], failures: list[str], ended: list[str],
                       attempted: list[int], report: Callable[[str], None]) -> None:
    """The connections of one scenario; appends to `samples` and `failures`, counts in
    `attempted[0]`, says in `ended[0]` why it stopped early (the caller keeps them all when
    the world then fails)."""
    bill_loop, dave_loop = world.ue_loop(CALLER), world.ue_loop(CALLEE)
    bill = await world.start_ue(CALLER, ask=_allow, setup_timeout=settings.setup_timeout)
    try:
        dave = await world.start_ue(CALLEE, ask=_allow, setup_timeout=settings.setup_timeout)
    except BaseException:
        await bill_loop.run(bill.close)
        raise
    w = _World(world, bill, dave, bill_loop, dave_loop)
    try:
        await bill_loop.run(_timed_call(w))
        in_a_row = 0
        for seq in range(settings.connections):
            attempted[0] += 1
            try:
                sample = await asyncio.wait_for(_one_connection(w, seq, settings.setup_timeout),
                                                settings.setup_timeout + 30)
            except Exception as exc:  # TimeoutError and the UE API's ConnectError leaves
                in_a_row += 1
                failures.append(f"#{seq}: {type(exc).__name__}: {exc}")
                report(f"  {scenario.name} #{seq}: failed: {type(exc).__name__}: {exc}")
                if in_a_row >= FAILURES_IN_A_ROW:
                    ended[0] = (f"stopped after {FAILURES_IN_A_ROW} failures in a row at "
                                f"connection {seq + 1} of {settings.connections}")
                    break
            else:
                in_a_row = 0
                samples.append(sample)
                if sample.path != scenario.expected_path:
                    failures.append(f"#{seq}: path {sample.path}, not "
                                    f"{scenario.expected_path} (measured all the same)")
                report(f"  {scenario.name} #{seq}: {sample.total_ms:.1f} ms (gather "
                       f"{sample.gather_ms:.1f}, SIP {sample.sip_ms:.1f}, ICE "
                       f"{sample.ice_ms:.1f}, first datagram {sample.first_datagram_ms:.1f}; "
                       f"callee ready at {sample.callee_ready_ms:.1f}), path {sample.path}")
            if not await _released(world):
                ended[0] = (f"the operators still held a session {RELEASE_WITHIN:.0f} s after "
                            f"connection {seq + 1} ended: stopped")
                break
    finally:
        await dave_loop.run(dave.close)
        await bill_loop.run(bill.close)


# -- the registry entry ------------------------------------------------------------------------


def missing_requirement() -> str | None:
    """Why the benchmark cannot run here, or None."""
    return missing_for_world(ue_api=True, tools=TOOLS)


def markdown_table(results: Sequence[ScenarioResult]) -> str:
    lines = ["| path (scenario) | connections | total p50 ms | p95 ms | max ms | gather p50 "
             "| SIP INVITE..2xx p50 | ICE p50 | first datagram p50 | callee ready p50 | failed "
             "| paths seen | ended |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- "
             "| --- |"]
    for r in results:
        total = r.spread("total_ms")
        p50 = {part: (f"{s.p50:.1f}" if (s := r.spread(part)) else "") for part in PARTS}
        paths = ", ".join(f"{kind}: {n}" for kind, n in sorted(r.paths.items()))
        lines.append(
            f"| {r.scenario} | {len(r.samples)}/{r.attempted} "
            f"| {p50['total_ms']} | {f'{total.p95:.1f}' if total else ''} "
            f"| {f'{total.max:.1f}' if total else ''} | {p50['gather_ms']} | {p50['sip_ms']} "
            f"| {p50['ice_ms']} | {p50['first_datagram_ms']} | {p50['callee_ready_ms']} "
            f"| {len(r.failures)} | {paths} | {r.ended} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, default=SetupSettings.connections,
                        help=f"connections per scenario (1..{MAX_CONNECTIONS})")
    parser.add_argument("--scenarios", nargs="+", choices=tuple(SCENARIOS),
                        default=list(SetupSettings.scenarios))
    parser.add_argument("--delay", type=int, default=SetupSettings.delay_ms, metavar="MS",
                        help="one-way delay on the egress of every link interface, by netem "
                             "where the kernel has it, else NFQUEUE (default 10)")
    parser.add_argument("--no-delay", action="store_true", help="no added link delay")
    parser.add_argument("--delay-mechanism", choices=[m.value for m in DelayMechanism],
                        help="force netem or nfqueue (default: netem where the kernel has it)")
    parser.add_argument("--setup-timeout", type=float, default=SetupSettings.setup_timeout)
    parser.add_argument("--json", type=Path, help="also write the results here")


def run(args: argparse.Namespace) -> int:
    missing = missing_requirement()
    if missing:
        print(f"setup_time: {missing}", file=sys.stderr)
        return 2
    settings = SetupSettings(
        connections=args.connections, scenarios=tuple(args.scenarios),
        delay_ms=None if args.no_delay else args.delay,
        delay_mechanism=DelayMechanism(args.delay_mechanism) if args.delay_mechanism else None,
        setup_timeout=args.setup_timeout)
    facts = machine_facts()
    results: list[ScenarioResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-setup-") as scratch:
        for n, name in enumerate(settings.scenarios):
            scenario = SCENARIOS[name]
            prefix = f"uec-bs{os.getpid() % 10000}{n}-"
            _say(f"  {name}: {scenario.description}; {settings.connections} connections "
                 f"{CALLER} -> {CALLEE}")
            try:
                result = asyncio.run(run_scenario(scenario, settings, prefix=prefix,
                                                  state_dir=Path(scratch) / name,
                                                  report=_say))
            except (TestbedError, OSError) as exc:
                result = ScenarioResult(name, scenario.description, ended=f"error: {exc}")
            finally:
                _remove_strays(prefix)
            results.append(result)
    delay = next((r.delay for r in results if r.delay is not None),
                 DelayReport(settings.delay_ms, None, "the world did not start"))
    print()
    print(delay_banner(delay))
    print(markdown_table(results))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": facts, "settings": asdict(settings), "delay": delay.as_json(),
            "results": [r.as_json() for r in results],
        }, indent=2, default=str))
    failed = any("error:" in r.ended or not r.samples for r in results)
    return 1 if failed else 0


def delay_banner(delay: DelayReport) -> str:
    """The link delay as printed; says plainly when it is NFQUEUE rather than netem, or none."""
    if delay.mechanism is None:
        return f"delay: none ({delay.described}; the issue asks for 10 ms per link)"
    if delay.mechanism == DelayMechanism.NFQUEUE.value:
        return (f"delay: NFQUEUE, not netem (this kernel has no sch_netem; each packet waits "
                f"in userspace): {delay.described}")
    return f"delay: {delay.described}"


def _remove_strays(prefix: str) -> None:
    """Namespaces of this run's prefix that a failed world could not remove (ours only)."""
    try:
        names = run_command(["ip", "netns", "list"]).split()
    except TestbedError:
        return
    for name in names:
        if name.startswith(prefix):
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def _say(line: str) -> None:
    print(line, flush=True)


BENCHMARK = Benchmark(
    name="setup_time",
    help="connect() until the first datagram arrives, Bill to Dave in the namespace testbed "
         "(root)",
    add_arguments=add_arguments,
    run=run,
)

__all__ = ["BENCHMARK", "SCENARIOS", "DelayReport", "Scenario", "ScenarioResult", "SetupSample",
           "SetupSettings", "Spread", "delay_banner", "markdown_table", "missing_requirement",
           "run_scenario"]
