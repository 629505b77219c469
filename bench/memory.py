"""Memory held per registration and per relayed session: ours beside Kamailio and coturn.

Two measures, each on a fresh subject process, on loopback:

- `registrar`: a registrar holding N registrations (distinct users, digest, one binding
  each). Subjects as in `operator_rates`: Kamailio's registrar.cfg (usrloc in shared memory,
  one worker) and ueconnect's Alpha (P-CSCF + S-CSCF in one process, SQLite store). sipp
  registers the N users in turn at a moderate rate (`--rate`, every registration must succeed);
  the figure is the subject's memory before and after, and the difference per registration.
- `relay`: a relay holding K relay sessions between two endpoints (no traffic). Subjects: our
  relay (`ims.gateway.aiorelay.RelayService` in a process of its own, K allocations of two
  ports each) and coturn's `turnserver` (K TURN allocations made by aioice clients with
  long-term credentials, each with a permission for the peer, RFC 8656).

Memory is the PSS (proportional set size, /proc/PID/smaps_rollup) summed over the subject's
processes: Kamailio's workers share one shared-memory segment, so summing their RSS would count
it once per process, while PSS counts every shared page once in all. The figure is taken after
the subject settled (0.5 s after the last request was answered). PSS is in KiB, as the kernel
reports it; the per-item figure is (after - before) / N and includes whatever the subject
keeps per item (transactions still in their wait states, digest nonces, sockets' buffers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import BenchConfigError, BenchError, Benchmark, ToolMissing
from bench.machine import group_pids, machine_facts
from bench.operator_rates import (
    STORE_FILE,
    UE_HOST,
    _launch,
    _register_run,
    bench_users,
    injection_csv,
    provision_store,
    subjects,
)
from bench.proxy_cps import REPO_ROOT, RunningProxy
from bench.relay_rate import (
    LOOPBACK,
    TURN_PASSWORD,
    TURN_USER,
    coturn_missing,
    start_turnserver,
    stop_process,
)
from bench.sipp import Endpoint, find_sipp, free_port, run_sipp

SETTLE_SECONDS = 0.5
MEASURES = ("registrar", "relay")
DEFAULT_REGISTRATIONS = 2000
DEFAULT_SESSIONS = 200
DEFAULT_REGISTER_RATE = 200
# RFC 3261 section 17.2.2: a non-INVITE server transaction lingers 64*T1 = 32 s (Timer J) on
# UDP after its final response; Timer K is T4 = 5 s on the client side.
DEFAULT_LINGER = 34.0


def pss_kib(pids: Sequence[int]) -> int:
    """The PSS of `pids` in KiB, summed (proc(5) smaps_rollup); processes gone meanwhile
    count 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


@dataclass(frozen=True)
class MemoryResult:
    measure: str
    subject: str
    items: int = 0  # registrations or relay sessions held
    before_kib: int | None = None
    after_kib: int | None = None  # holding the items, after the transactions ended
    busy_kib: int | None = None  # registrar: just after the last registration
    skipped: str | None = None
    error: str | None = None

    @property
    def per_item_kib(self) -> float | None:
        if self.before_kib is None or self.after_kib is None or not self.items:
            return None
        return (self.after_kib - self.before_kib) / self.items


def _settled(read: Callable[[], int]) -> int:
    time.sleep(SETTLE_SECONDS)
    return read()


# --- registrar --------------------------------------------------------------------------------


def measure_registrar(subject_name: str, registrations: int, rate: int, linger: float,
                      workdir: Path, report: Callable[[str], None]) -> MemoryResult:
    users = bench_users(registrations)
    template = workdir / "template" / STORE_FILE
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        provision_store(template, users)
    subject = next(s for s in subjects(users, template) if s.name == subject_name)
    reason = subject.missing()
    if reason is not None:
        return MemoryResult("registrar", subject_name, skipped=reason)
    sipp = find_sipp()
    step_dir = workdir / f"registrar-{subject_name}"
    step_dir.mkdir(parents=True, exist_ok=True)
    inf = step_dir / "users.csv"
    inf.write_text(injection_csv(users))
    with RunningProxy(subject, _launch(subject, step_dir)) as proxy:
        proxy.wait_ready()

        def read() -> int:
            return pss_kib(group_pids(proxy.pid))

        before = _settled(read)
        run = _register_run(Endpoint(UE_HOST, free_port(UE_HOST)), proxy.launch.listen, inf,
                            calls=registrations, rate=rate,
                            deadline=registrations / rate * 3 + 20, recv_timeout=5)
        result = run_sipp(run, step_dir, sipp)
        stats = result.stats
        if stats is None or stats.successful_calls != registrations:
            done = stats.successful_calls if stats else 0
            raise BenchError(f"{subject_name}: {done} of {registrations} registrations "
                             f"succeeded (lower --rate?):\n{result.describe()}\n"
                             f"{proxy.log_tail()}")
        busy = _settled(read)
        report(f"  registrar {subject_name}: {before} KiB idle, {busy} KiB just after "
               f"{registrations} registrations; waiting {linger:g} s for the transactions "
               "to end")
        time.sleep(linger)
        after = read()
    report(f"  registrar {subject_name}: {after} KiB holding {registrations} registrations")
    return MemoryResult("registrar", subject_name, registrations, before, after, busy)


# --- relay ------------------------------------------------------------------------------------


def _peers() -> tuple[tuple[str, int], tuple[str, int]]:
    # Two endpoints the relay sessions are for; nothing is sent to them.
    return (LOOPBACK, free_port(LOOPBACK)), (LOOPBACK, free_port(LOOPBACK))


def measure_ueconnect_relay(sessions: int, report: Callable[[str], None]) -> MemoryResult:
    caller, callee = _peers()
    argv = [sys.executable, "-m", "bench.memory", "--hold-relay", str(sessions),
            json.dumps([caller, callee])]
    process = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, start_new_session=True)
    try:
        _expect_line(process, "ready", 20)
        before = _settled(lambda: pss_kib([process.pid]))
        assert process.stdin is not None
        process.stdin.write(b"allocate\n")
        process.stdin.flush()
        _expect_line(process, "allocated", 60)
        after = _settled(lambda: pss_kib([process.pid]))
    finally:
        stop_process(process)
    report(f"  relay ueconnect: {before} KiB idle, {after} KiB holding {sessions} sessions")
    return MemoryResult("relay", "ueconnect", sessions, before, after)


def _expect_line(process: subprocess.Popen[bytes], word: str, within: float) -> None:
    assert process.stdout is not None
    ready = select.select([process.stdout], [], [], within)[0]
    line = process.stdout.readline() if ready else b""
    if word.encode() not in line:
        raise BenchError(f"the relay process did not say {word!r} within {within:g} s "
                         f"(said {line!r}, status {process.poll()})")


async def hold_relay(sessions: int, peers: Sequence[Sequence[object]]) -> None:
    """The ueconnect subject's process: a RelayService; K allocations on "allocate"."""
    from ims.gateway.aiorelay import RelayService
    from ims.gateway.relay import RelayConfig

    caller, callee = ((str(p[0]), int(str(p[1]))) for p in peers)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def stop_now() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, stop_now)
    async with RelayService(RelayConfig(LOOPBACK)) as relay:
        print("ready", flush=True)
        if await asyncio.wait_for(reader.readline(), 60) == b"allocate\n":
            for _ in range(sessions):
                await relay.allocate(caller, callee, lifetime=600)
            print("allocated", flush=True)
            await asyncio.wait({stop, asyncio.ensure_future(reader.read())}, timeout=300,
                               return_when=asyncio.FIRST_COMPLETED)


def measure_coturn(sessions: int, workdir: Path, report: Callable[[str], None]) -> MemoryResult:
    missing = coturn_missing()
    if missing:
        return MemoryResult("relay", "coturn", skipped=missing)
    from aioice.turn import TurnClientUdpProtocol

    _, peer = _peers()
    with start_turnserver(workdir) as (process, server):
        before = _settled(lambda: pss_kib([process.pid]))
        loop = asyncio.new_event_loop()
        transports: list[asyncio.BaseTransport] = []
        clients: list[TurnClientUdpProtocol] = []
        try:
            async def allocate() -> None:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: TurnClientUdpProtocol(server, TURN_USER, TURN_PASSWORD,
                                                  lifetime=600, channel_refresh_time=500),
                    remote_addr=server)  # aioice's TURN client sends without an address
                transports.append(transport)
                clients.append(protocol)
                await asyncio.wait_for(protocol.connect(), 10)
                await asyncio.wait_for(protocol.channel_bind(0x4000, peer), 10)

            async def allocate_all() -> None:
                for _ in range(sessions):
                    await allocate()

            loop.run_until_complete(asyncio.wait_for(allocate_all(), 120))
            after = _settled(lambda: pss_kib([process.pid]))
        except OSError as exc:  # TimeoutError and ConnectionError among them
            raise BenchError(f"coturn: {len(transports)} of {sessions} allocations: {exc}") \
                from exc
        finally:
            for client in clients:  # no refresh: coturn frees the allocations when it stops
                if client.refresh_task is not None:
                    client.refresh_task.cancel()
            for transport in transports:
                transport.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
    report(f"  relay coturn: {before} KiB idle, {after} KiB holding {sessions} sessions")
    return MemoryResult("relay", "coturn", sessions, before, after)


# --- reporting (pure) -------------------------------------------------------------------------


ANCHORS = {"registrar": "kamailio", "relay": "coturn"}
UNITS = {"registrar": "registrations", "relay": "relay sessions"}


def markdown_table(results: Sequence[MemoryResult]) -> str:
    rows = ["| measure | subject | held | PSS idle KiB | PSS just after KiB | PSS holding KiB "
            "| KiB each | note |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        note = f"skipped: {r.skipped}" if r.skipped else (f"error: {r.error}" if r.error else "")
        each = "" if r.per_item_kib is None else f"{r.per_item_kib:.2f}"
        rows.append(f"| {r.measure} | {r.subject} | {r.items or ''} | {_n(r.before_kib)} | "
                    f"{_n(r.busy_kib)} | {_n(r.after_kib)} | {each} | {note} |")
    return "\n".join(rows)


def ratio_lines(results: Sequence[MemoryResult]) -> list[str]:
    lines = []
    for r in results:
        anchor = ANCHORS[r.measure]
        base = next((b for b in results if b.measure == r.measure and b.subject == anchor), None)
        if r.subject == anchor or base is None or r.per_item_kib is None \
                or base.per_item_kib is None or r.after_kib is None or base.after_kib is None:
            continue
        per_item = (f"x{r.per_item_kib / base.per_item_kib:.1f}" if base.per_item_kib > 0
                    else "(the anchor's grew by nothing measurable)")
        lines.append(f"{r.measure}: {r.subject} / {anchor}: memory per {UNITS[r.measure][:-1]} "
                     f"{per_item} ({r.per_item_kib:.2f} / {base.per_item_kib:.2f} KiB); "
                     f"holding {r.items}: x{r.after_kib / base.after_kib:.1f} "
                     f"({r.after_kib} / {base.after_kib} KiB)")
    return lines


def _n(value: int | None) -> str:
    return "" if value is None else f"{value:,}".replace(",", " ")


# --- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--measures", nargs="+", choices=MEASURES, default=list(MEASURES),
                        metavar="NAME", help="registrar and/or relay (default: both)")
    parser.add_argument("--registrations", type=int, default=DEFAULT_REGISTRATIONS,
                        help=f"registrations held (distinct users; default "
                             f"{DEFAULT_REGISTRATIONS})")
    parser.add_argument("--rate", type=int, default=DEFAULT_REGISTER_RATE,
                        help=f"registrations per second while filling (default "
                             f"{DEFAULT_REGISTER_RATE}; every one must succeed)")
    parser.add_argument("--linger", type=float, default=DEFAULT_LINGER,
                        help="registrar: seconds to wait after the last registration before "
                             "the holding figure, so that the transactions have ended "
                             f"(default {DEFAULT_LINGER:g}: 64*T1 + 2 s, RFC 3261 17.2.2)")
    parser.add_argument("--sessions", type=int, default=DEFAULT_SESSIONS,
                        help=f"relay sessions held (default {DEFAULT_SESSIONS})")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")


def _check(args: argparse.Namespace) -> None:
    if not 2 <= args.registrations <= 99_999:
        raise BenchConfigError(f"--registrations must be in 2..99999, not {args.registrations}")
    if not 1 <= args.rate <= 10_000:
        raise BenchConfigError(f"--rate must be in 1..10000, not {args.rate}")
    if not 0 <= args.linger <= 120:
        raise BenchConfigError(f"--linger must be in 0..120 s, not {args.linger:g}")
    if not 1 <= args.sessions <= 700:  # coturn's relay ports: 49200-49999 (relay_rate)
        raise BenchConfigError(f"--sessions must be in 1..700, not {args.sessions}")


def run(args: argparse.Namespace) -> int:
    try:
        _check(args)
        if "registrar" in args.measures:
            find_sipp()
    except (BenchConfigError, ToolMissing) as error:
        print(f"memory: {error}", file=sys.stderr)
        return 2
    facts = machine_facts()
    _say("memory: PSS of each subject idle and holding registrations / relay sessions")
    _say("  " + "; ".join(f"{k}: {v}" for k, v in facts.items()))
    results: list[MemoryResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        work = Path(scratch)
        jobs: list[tuple[str, str, Callable[[], MemoryResult]]] = []
        if "registrar" in args.measures:
            for name in ("kamailio", "ueconnect"):
                jobs.append(("registrar", name, functools.partial(
                    measure_registrar, name, args.registrations, args.rate, args.linger, work,
                    _say)))
        if "relay" in args.measures:
            jobs.append(("relay", "coturn", lambda: measure_coturn(args.sessions, work, _say)))
            jobs.append(("relay", "ueconnect",
                         lambda: measure_ueconnect_relay(args.sessions, _say)))
        for what, name, job in jobs:
            try:
                result = job()
            except BenchError as error:
                result = MemoryResult(what, name, error=str(error))
            if result.skipped:
                _say(f"  {what} {name}: skipped: {result.skipped}")
            results.append(result)
    print()
    print(markdown_table(results))
    for line in ratio_lines(results):
        print(line)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": facts, "settle_seconds": SETTLE_SECONDS,
            "results": [dict(asdict(r), per_item_kib=r.per_item_kib) for r in results],
        }, indent=2))
    return 1 if any(r.error for r in results) else 0


def _say(line: str) -> None:
    print(line, flush=True)


BENCHMARK = Benchmark(
    name="memory",
    help="memory per registration (beside Kamailio) and per relay session (beside coturn)",
    add_arguments=add_arguments,
    run=run,
)

__all__ = ["BENCHMARK", "MemoryResult", "hold_relay", "markdown_table", "pss_kib",
           "ratio_lines"]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--hold-relay":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(hold_relay(int(sys.argv[2]), json.loads(sys.argv[3])))
    else:
        sys.exit("usage: python3 -m bench.memory --hold-relay K '[[A_HOST, A_PORT], [B_HOST, "
                 "B_PORT]]' (run the benchmark with `python3 -m bench memory`)")
