"""Maximum calls per second through a SIP proxy: sipp uac -> proxy -> sipp uas, UDP, loopback.

A *subject* is a command line that starts a proxy listening on LISTEN and relaying every
request to NEXT_HOP with N worker processes (`ProxySubject`, table `SUBJECTS`). Kamailio, a
minimal transaction-stateful record-routing proxy (bench/kamailio/kamailio.cfg), is the
anchor; ueconnect's own proxy is measured the same way. A subject whose program is not
available here is skipped with the reason.

Method, per subject and worker count: start a sipp uas as the next hop (bench/scenarios/
uas_answer.xml: sipp's built-in `uas` less its 180, which a multi-worker proxy may legally
reorder after the 200), start the proxy, wait until it answers a probe, then run sipp's built-in `uac` (INVITE, 200,
ACK, BYE, 200; no hold time) at the step's rate for a few seconds; every step starts from
fresh processes (far end, proxy, uac), so an overloaded step's retransmissions cannot spoil
the next. The rates follow a bounded ramp (`Ramp`): 200, 400, 800, ... calls per second. A step is *clean* when every call
succeeded and the calls went through at 90% of the target rate or more (calls created over
the uac's whole run, its drain included). The ramp stops at the first step whose failed calls
exceed 0.5%, at the first step whose calls all succeeded but too slowly (the proxy queues; or,
when the uac used 80% of a CPU, sipp itself is the limit and the figure a lower bound), or at
the ceiling; then a few bisection steps refine the edge between the last clean and the first
unclean rate. The figure is the highest call rate sipp achieved in a clean step, with the
proxy's CPU time per call in that step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from bench import BenchConfigError, BenchError, Benchmark, ToolMissing
from bench.machine import group_pids, machine_facts
from bench.sipp import Endpoint, SippProcess, SippRun, find_sipp, free_port, run_sipp, uac, uas

REPO_ROOT = Path(__file__).resolve().parent.parent
KAMAILIO_CFG = Path(__file__).resolve().parent / "kamailio" / "kamailio.cfg"
# sipp's built-in uas without the 180 a multi-worker proxy may reorder (see the file).
UAS_SCENARIO = Path(__file__).resolve().parent / "scenarios" / "uas_answer.xml"
KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
LOOPBACK = "127.0.0.1"

Verdict = Literal["clean", "lossy", "failing", "queueing", "generator-bound"]


# --- subjects -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyLaunch:
    """Where a subject must listen, where it must relay to, with how many workers."""

    listen: Endpoint
    next_hop: Endpoint
    workers: int
    workdir: Path  # private scratch directory for pid files, runtime dirs, logs


@dataclass(frozen=True)
class ProxySubject:
    """A proxy to measure: `command` builds its argv, `missing` says why it cannot run here
    (None when it can). `cwd` is where the command runs (default: the launch's workdir)."""

    name: str
    description: str
    command: Callable[[ProxyLaunch], list[str]]
    missing: Callable[[], str | None]
    cwd: Path | None = None


def _kamailio_command(launch: ProxyLaunch) -> list[str]:
    rundir = launch.workdir / "kamailio-run"
    rundir.mkdir(parents=True, exist_ok=True)
    return [
        "kamailio",
        "-DD",  # no daemon: stays in the foreground, still forks its workers
        "-E",  # log to stderr
        "-f", str(KAMAILIO_CFG),
        "-L", str(KAMAILIO_MODULES),
        "-Y", str(rundir),
        "-P", str(rundir / "kamailio.pid"),
        "-w", str(launch.workdir),
        "-m", "256",  # MB of shared memory: room for the transactions of a few seconds
        "-M", "8",  # MB of private memory per process
        "-A", f"LISTEN=udp:{launch.listen}",
        "-A", f"CHILDREN={launch.workers}",
        "-A", f'NEXTHOP="sip:{launch.next_hop}"',
    ]  # fmt: skip


def _kamailio_missing() -> str | None:
    if subprocess.run(["which", "kamailio"], capture_output=True, check=False).returncode:
        return "kamailio not on PATH (Debian package kamailio provides /usr/sbin/kamailio)"
    if not KAMAILIO_MODULES.is_dir():
        return f"kamailio modules directory {KAMAILIO_MODULES} does not exist"
    if not KAMAILIO_CFG.is_file():
        return f"{KAMAILIO_CFG} is missing"
    return None


def _ueconnect_command(launch: ProxyLaunch) -> list[str]:
    return [
        sys.executable, "-m", "ims", "sip", "proxy",
        "--listen", str(launch.listen),
        "--next-hop", str(launch.next_hop),
        "--workers", str(launch.workers),
    ]  # fmt: skip


def _ueconnect_missing() -> str | None:
    argv = [sys.executable, "-m", "ims", "sip", "proxy", "--help"]
    try:
        done = subprocess.run(
            argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return "`python3 -m ims sip proxy --help` did not answer within 20 s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`python3 -m ims sip proxy` is not available yet ({last})"
    return None


KAMAILIO = ProxySubject(
    name="kamailio",
    description="Kamailio 5.6, tm+rr stateful relay (bench/kamailio/kamailio.cfg)",
    command=_kamailio_command,
    missing=_kamailio_missing,
)
UECONNECT = ProxySubject(
    name="ueconnect",
    description="ueconnect proxy (`python3 -m ims sip proxy`)",
    command=_ueconnect_command,
    missing=_ueconnect_missing,
    cwd=REPO_ROOT,
)
# The anchor first: comparisons are "subject / first subject".
SUBJECTS: tuple[ProxySubject, ...] = (KAMAILIO, UECONNECT)


def subject_named(name: str) -> ProxySubject:
    for subject in SUBJECTS:
        if subject.name == name:
            return subject
    known = ", ".join(s.name for s in SUBJECTS)
    raise BenchConfigError(f"no proxy subject named {name!r} (known: {known})")


class ProxyFailed(BenchError):
    """The proxy under test exited or never answered."""


def _probe(listen: Endpoint, n: int) -> bytes:
    # Max-Forwards 0: a proxy answers it itself (483, or 200 for OPTIONS; RFC 3261 section
    # 16.3 step 3), so the probe never reaches the next hop.
    return (
        f"OPTIONS sip:probe@{listen} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:{{port}};branch=z9hG4bK-bench-probe-{n}\r\n"
        "Max-Forwards: 0\r\n"
        f"From: <sip:bench@{LOOPBACK}>;tag=bench-probe\r\n"
        f"To: <sip:probe@{listen}>\r\n"
        f"Call-ID: bench-probe-{n}@{LOOPBACK}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class RunningProxy:
    """A started subject: ready check, CPU accounting of its process group, stop."""

    def __init__(self, subject: ProxySubject, launch: ProxyLaunch) -> None:
        self.subject = subject
        self.launch = launch
        self.log = launch.workdir / f"{subject.name}-{launch.workers}.log"
        launch.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self._popen = subprocess.Popen(
                subject.command(launch),
                cwd=subject.cwd or launch.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: CPU accounting, clean stop
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def wait_ready(self, within: float = 15.0) -> None:
        """Until the proxy answers a probe on its listen address; ProxyFailed otherwise."""
        end = time.monotonic() + within
        family = socket.AF_INET6 if ":" in self.launch.listen.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK if family == socket.AF_INET else "::1", 0))
            port = sock.getsockname()[1]
            sock.settimeout(0.2)
            n = 0
            while time.monotonic() < end:
                if self._popen.poll() is not None:
                    raise ProxyFailed(
                        f"{self.subject.name} exited with status {self._popen.returncode} "
                        f"before answering:\n{self.log_tail()}"
                    )
                n += 1
                probe = _probe(self.launch.listen, n).replace(b"{port}", str(port).encode())
                sock.sendto(probe, (self.launch.listen.host, self.launch.listen.port))
                try:
                    data = sock.recv(65535)
                except (TimeoutError, ConnectionRefusedError):
                    continue
                if data.startswith(b"SIP/2.0 "):
                    return
        self.stop()
        raise ProxyFailed(
            f"{self.subject.name} did not answer on {self.launch.listen} within {within:g} s:"
            f"\n{self.log_tail()}"
        )

    def _group(self) -> list[int]:
        """Pids of the processes in the proxy's process group (its workers included)."""
        return group_pids(self.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the proxy's live processes."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self._group():
            try:
                rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            total += int(rest[11]) + int(rest[12])  # fields 14, 15: utime, stime
        return total / ticks

    def stop(self) -> None:
        """SIGTERM to the proxy; SIGKILL to what is left of its process group after 5 s."""
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=5)
        leftovers = self._group()
        if leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)  # the group this object created
        if self._popen.poll() is None:
            self._popen.wait(timeout=5)

    def __enter__(self) -> RunningProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the ramp (no I/O: steps in, next rate out) ---------------------------------------------


@dataclass(frozen=True)
class RampSettings:
    start_cps: int = 200
    factor: float = 2.0
    max_cps: int = 25_600
    step_seconds: float = 3.0
    max_failure_ratio: float = 0.005  # a step above this stops the ramp
    saturation_ratio: float = 0.9  # throughput below this share of the target: saturated
    generator_busy: float = 0.8  # sipp uac using this share of a CPU: it is the bound
    refine_steps: int = 3  # bisection steps between the last clean and first unclean rate
    recv_timeout: float = 5.0  # a call silent this long counts as failed

    def __post_init__(self) -> None:
        if self.start_cps < 1 or self.max_cps < self.start_cps:
            raise BenchConfigError("need 1 <= start_cps <= max_cps")
        if self.factor <= 1:
            raise BenchConfigError(f"factor must be above 1, not {self.factor}")
        if not 0.5 <= self.step_seconds <= 60:
            raise BenchConfigError("step_seconds must be in [0.5, 60]")
        ratios = (self.saturation_ratio, self.generator_busy)
        if not 0 <= self.max_failure_ratio < 1 or not all(0 < r <= 1 for r in ratios):
            raise BenchConfigError("ratios must be in [0, 1)")
        if self.refine_steps < 0:
            raise BenchConfigError("refine_steps must not be negative")


@dataclass(frozen=True)
class StepResult:
    """One rate tried: what sipp achieved, how calls ended, what the proxy spent."""

    target_cps: int
    achieved_cps: float  # calls created / the uac's whole run, the drain of the last included
    calls: int  # created by sipp
    successful: int
    failed: int  # failed or unfinished at the deadline
    unexpected_messages: int
    retransmissions: int
    proxy_cpu_seconds: float
    generator_cpu_seconds: float  # the sipp uac's own CPU time
    wall_seconds: float

    @property
    def failure_ratio(self) -> float:
        return self.failed / self.calls if self.calls else 1.0

    @property
    def proxy_cpu_ms_per_call(self) -> float:
        return 1000 * self.proxy_cpu_seconds / self.successful if self.successful else math.nan

    @property
    def generator_load(self) -> float:
        """Share of one CPU the sipp uac used."""
        return self.generator_cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0


def classify(step: StepResult, settings: RampSettings) -> Verdict:
    """clean: every call succeeded at (nearly) the target rate. lossy: a few failed, under the
    limit. failing: more failed. Every call succeeded but below the rate: the proxy made the
    calls wait (queueing), or sipp itself ran out of CPU (generator-bound)."""
    if step.failed == 0 and step.calls > 0:
        if step.achieved_cps >= settings.saturation_ratio * step.target_cps:
            return "clean"
        if step.generator_load >= settings.generator_busy:
            return "generator-bound"
        return "queueing"
    if step.failure_ratio <= settings.max_failure_ratio:
        return "lossy"
    return "failing"


class Ramp:
    """The rate schedule: `next_target()` says which rate to try (None: done), `record()`
    takes what that rate gave. Doubling until trouble, then bisection."""

    def __init__(self, settings: RampSettings) -> None:
        self.settings = settings
        self.steps: list[tuple[StepResult, Verdict]] = []
        self.stop_reason = ""
        self._next: int | None = settings.start_cps
        self._clean: int | None = None  # highest clean target so far
        self._unclean: int | None = None  # lowest unclean target so far
        self._refining = False
        self._refines_left = settings.refine_steps

    def next_target(self) -> int | None:
        return self._next

    def record(self, step: StepResult) -> Verdict:
        verdict = classify(step, self.settings)
        self.steps.append((step, verdict))
        rate = step.target_cps
        if verdict == "clean":
            self._clean = max(rate, self._clean or 0)
        else:
            self._unclean = min(rate, self._unclean or rate)
        if self._refining:
            self._refines_left -= 1
            self._next = self._bisect()
            return verdict
        if verdict in ("failing", "queueing", "generator-bound"):
            if verdict == "failing":
                self.stop_reason = (
                    f"{step.failure_ratio:.1%} of calls failed at {rate} cps "
                    f"(limit {self.settings.max_failure_ratio:.1%})"
                )
            elif verdict == "queueing":
                self.stop_reason = (
                    f"at {rate} cps every call succeeded but only {step.achieved_cps:.0f} "
                    "calls/s got through: the proxy queues"
                )
            else:
                self.stop_reason = (
                    f"sipp reached only {step.achieved_cps:.0f} of {rate} cps using "
                    f"{step.generator_load:.0%} of a CPU: the load generator saturated first, "
                    "the figure is a lower bound"
                )
            self._refining = True
            self._next = self._bisect()
            return verdict
        following = math.ceil(rate * self.settings.factor)
        if following > self.settings.max_cps:
            self.stop_reason = f"reached the ramp ceiling of {self.settings.max_cps} cps"
            self._refining = True
            self._next = self._bisect()
        else:
            self._next = following
        return verdict

    def _bisect(self) -> int | None:
        if self._refines_left <= 0 or self._clean is None or self._unclean is None:
            return None
        if self._unclean - self._clean <= max(1, self._clean // 20):  # within 5%: enough
            return None
        return (self._clean + self._unclean) // 2

    @property
    def best(self) -> StepResult | None:
        """The clean step with the highest achieved rate."""
        clean = [step for step, verdict in self.steps if verdict == "clean"]
        return max(clean, key=lambda s: s.achieved_cps, default=None)


# --- running it -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubjectResult:
    subject: str
    workers: int
    best: StepResult | None
    stop_reason: str
    steps: tuple[tuple[StepResult, Verdict], ...] = ()
    skipped: str | None = None  # why the subject did not run

    @property
    def max_cps(self) -> float | None:
        return self.best.achieved_cps if self.best else None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_step(
    target: int,
    proxy: RunningProxy,
    settings: RampSettings,
    workdir: Path,
    sipp: str,
) -> StepResult:
    """One rate: a fresh sipp uac placing target * step_seconds calls through the proxy."""
    calls = max(1, math.ceil(target * settings.step_seconds))
    local = Endpoint(LOOPBACK, free_port(LOOPBACK))
    run = uac(
        local,
        proxy.launch.listen,
        rate=target,
        max_calls=calls,
        # Twice the step for a slow start, then time for the last calls to time out.
        deadline=2 * settings.step_seconds + settings.recv_timeout + 5,
        recv_timeout=settings.recv_timeout,
    )
    return measured_step(proxy, run, target, workdir, sipp)


def measured_step(
    proxy: RunningProxy, run: SippRun, target: int, workdir: Path, sipp: str
) -> StepResult:
    """Run one sipp client step against `proxy` and measure it: sipp's counters, the proxy's
    and the load generator's CPU time over the step."""
    cpu_before, generator_before = proxy.cpu_seconds(), _children_cpu()
    result = run_sipp(run, workdir, sipp)
    proxy_cpu = proxy.cpu_seconds() - cpu_before
    generator_cpu = _children_cpu() - generator_before
    stats = result.stats
    if stats is None:
        raise BenchError("the sipp client left no statistics:\n" + result.describe())
    return StepResult(
        target_cps=target,
        achieved_cps=stats.call_rate,
        calls=stats.calls_created,
        successful=stats.successful_calls,
        failed=stats.failed_calls + stats.unfinished_calls,
        unexpected_messages=stats.unexpected_messages,
        retransmissions=stats.retransmissions,
        proxy_cpu_seconds=proxy_cpu,
        generator_cpu_seconds=generator_cpu,
        wall_seconds=result.wall_time,
    )


def fresh_step(
    subject: ProxySubject,
    workers: int,
    target: int,
    settings: RampSettings,
    workdir: Path,
    sipp: str,
) -> StepResult:
    """One step from a clean slate: a new far end and a new proxy, so the retransmissions and
    lingering transactions of an overloaded step cannot spoil the next one."""
    next_hop = Endpoint(LOOPBACK, free_port(LOOPBACK))
    listen = Endpoint(LOOPBACK, free_port(LOOPBACK))
    far_end_run = uas(next_hop, deadline=600, scenario=UAS_SCENARIO)
    with SippProcess(far_end_run, workdir, sipp) as far_end:
        far_end.wait_bound()
        with RunningProxy(subject, ProxyLaunch(listen, next_hop, workers, workdir)) as proxy:
            proxy.wait_ready()
            step = run_step(target, proxy, settings, workdir, sipp)
        if not far_end.running():
            raise BenchError("the sipp uas (next hop) died:\n" + far_end.stop().describe())
    return step


def measure(
    subject: ProxySubject,
    workers: int,
    settings: RampSettings,
    workdir: Path,
    *,
    report: Callable[[str], None] = lambda line: None,
) -> SubjectResult:
    """The whole ramp for one subject and worker count; skipped (not raised) when the
    subject is missing here."""
    reason = subject.missing()
    if reason is not None:
        return SubjectResult(subject.name, workers, None, "", skipped=reason)
    sipp = find_sipp()
    workdir = workdir / f"{subject.name}-{workers}"
    workdir.mkdir(parents=True, exist_ok=True)
    ramp = Ramp(settings)
    while (target := ramp.next_target()) is not None:
        step = fresh_step(subject, workers, target, settings, workdir / f"{target}cps", sipp)
        verdict = ramp.record(step)
        report(
            f"  {subject.name} workers={workers} {target:>6} cps: achieved "
            f"{step.achieved_cps:8.1f}, {step.successful}/{step.calls} ok, "
            f"{step.failed} failed, proxy CPU {step.proxy_cpu_ms_per_call:.3f} "
            f"ms/call -> {verdict}"
        )
    return SubjectResult(
        subject.name, workers, ramp.best, ramp.stop_reason, steps=tuple(ramp.steps)
    )


def comparison_lines(results: Sequence[SubjectResult]) -> list[str]:
    """ "ueconnect / kamailio at N workers: 0.42" for every pair measured."""
    lines = []
    anchor = SUBJECTS[0].name
    for result in results:
        if result.subject == anchor or result.max_cps is None:
            continue
        for base in results:
            if base.subject == anchor and base.workers == result.workers and base.max_cps:
                ratio = result.max_cps / base.max_cps
                lines.append(
                    f"{result.subject} / {anchor} at {result.workers} worker(s): {ratio:.2f} "
                    f"({result.max_cps:.0f} / {base.max_cps:.0f} cps)"
                )
    return lines


def markdown_table(results: Sequence[SubjectResult]) -> str:
    rows = [
        "| subject | workers | max clean cps | proxy CPU ms/call | ended because |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        if r.skipped:
            rows.append(f"| {r.subject} | {r.workers} | skipped | | {r.skipped} |")
        elif r.best is None:
            rows.append(f"| {r.subject} | {r.workers} | none clean | | {r.stop_reason} |")
        else:
            rows.append(
                f"| {r.subject} | {r.workers} | {r.best.achieved_cps:.0f} | "
                f"{r.best.proxy_cpu_ms_per_call:.3f} | {r.stop_reason} |"
            )
    return "\n".join(rows)


# --- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--subjects",
        nargs="+",
        default=[s.name for s in SUBJECTS],
        metavar="NAME",
        help=f"proxies to measure (default: all of {', '.join(s.name for s in SUBJECTS)})",
    )
    parser.add_argument(
        "--workers", nargs="+", type=int, default=[1, 2], metavar="N",
        help="worker process counts to measure each subject with (default: 1 2)",
    )  # fmt: skip
    defaults = RampSettings()
    parser.add_argument("--start-cps", type=int, default=defaults.start_cps)
    parser.add_argument("--max-cps", type=int, default=defaults.max_cps)
    parser.add_argument("--step-seconds", type=float, default=defaults.step_seconds)
    parser.add_argument("--refine-steps", type=int, default=defaults.refine_steps)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        settings = RampSettings(
            start_cps=args.start_cps,
            max_cps=args.max_cps,
            step_seconds=args.step_seconds,
            refine_steps=args.refine_steps,
        )
        subjects = [subject_named(name) for name in args.subjects]
        if any(n < 1 or n > 64 for n in args.workers):
            raise BenchConfigError("--workers values must be in 1..64")
        find_sipp()
    except (BenchConfigError, ToolMissing) as error:
        print(f"proxy_cps: {error}", file=sys.stderr)
        return 2
    facts = machine_facts()
    _say("proxy_cps: max calls/s through a SIP proxy (sipp uac -> proxy -> sipp uas, UDP)")
    _say("  " + "; ".join(f"{k}: {v}" for k, v in facts.items()))
    results: list[SubjectResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-proxy-cps-") as scratch:
        for subject in subjects:
            for workers in args.workers:
                try:
                    result = measure(subject, workers, settings, Path(scratch), report=_say)
                except BenchError as error:
                    result = SubjectResult(subject.name, workers, None, f"error: {error}")
                if result.skipped:
                    _say(f"  {subject.name}: skipped: {result.skipped}")
                results.append(result)
    print()
    print(markdown_table(results))
    for line in comparison_lines(results):
        print(line)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": facts,
                    "settings": asdict(settings),
                    "results": [_result_json(r) for r in results],
                },
                indent=2,
            )
        )
    failed = any(r.best is None and not r.skipped for r in results)
    return 1 if failed else 0


def _say(line: str) -> None:
    print(line, flush=True)


def _result_json(result: SubjectResult) -> dict[str, object]:
    return {
        "subject": result.subject,
        "workers": result.workers,
        "max_cps": result.max_cps,
        "stop_reason": result.stop_reason,
        "skipped": result.skipped,
        "steps": [dict(asdict(step), verdict=verdict) for step, verdict in result.steps],
    }


BENCHMARK = Benchmark(
    name="proxy_cps",
    help="max calls per second through a SIP proxy, Kamailio as the anchor",
    add_arguments=add_arguments,
    run=run,
)

__all__ = [
    "BENCHMARK",
    "KAMAILIO",
    "SUBJECTS",
    "UECONNECT",
    "ProxyLaunch",
    "ProxySubject",
    "Ramp",
    "RampSettings",
    "RunningProxy",
    "StepResult",
    "SubjectResult",
    "classify",
    "measure",
]
