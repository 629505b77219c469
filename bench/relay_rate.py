"""Datagrams per second and added latency through a UDP relay: ours beside coturn and direct.

The same traffic between two endpoints on loopback, A (the caller's UE) and B (the callee's),
over three paths (*subjects*):

- `direct`: A sends to B and B to A, no relay: the floor (what a PCP mapping gives, kernel
  forwarding only).
- `ueconnect`: the connectivity gateway's relay (`ims.gateway.aiorelay.RelayService`) in a
  process of its own with one allocation: A sends to its caller side port, B to its callee
  side port.
- `coturn`: coturn's `turnserver` (Debian package coturn), one relay thread; A is a TURN
  client (aioice.turn: Allocate with long-term credentials, ChannelBind to B, which installs
  the permission, RFC 8656 sections 7 and 12) and sends ChannelData to the server; B sends
  plain UDP to A's relayed address.

Two measures, each bounded in datagrams and time:
- *latency*: ping-pong, A -> B -> A, one datagram in flight; every round trip crosses the
  relay twice, so the latency a relay adds to one datagram is (its median RTT - direct's) / 2.
  The generator is one Python process for A and B, the same for every subject.
- *rate*: A sends to B at an offered rate (a bounded doubling ramp, one short step each); a
  step is clean when at most 0.1% of its datagrams were lost and A managed 90% of the rate.
  The figure is the highest clean delivered rate, with the relay process's CPU time per
  datagram (user + system, /proc). When A could not keep up, the figure is a lower bound and
  the output says "generator-bound".

The `kernel` subject (root only; listed as skipped with the reason otherwise) is the testbed's
kernel relay, `ims.gateway.nft_relay.NftRelayDataPlane`: nftables DNAT/SNAT rules forward the
flow, no process touches a datagram. It gives two rows:
- `kernel-routed`: A -> B routed by the relay host R, no relay rules (the floor of that bed);
- `kernel`: A -> R:Pa -> B through the installed flow (B answers to R:Pb).
Unlike the other subjects, which use loopback in this namespace, it runs in namespaces of its
own (`nft_relay.RelayBed`: A, B and R, A and B each on a veth pair to R), so a datagram
crosses two veths and R's routing; its "added per datagram" is relative to `kernel-routed`,
not to `direct`. The generator is the same (the same functions, one Python process, the same
payload size, the same ramp and verdicts): the sockets are merely made inside A's and B's
namespaces. There is no relay CPU figure: the kernel forwards in softirq context, charged to
no process. Beside the ramp, `nft_relay.measure_forwarding_rate` sends a burst as fast as one
sender can, through the relay and routed (`burst` in the output and the JSON).

Everything else listens and sends on 127.0.0.1 only; the kernel subject only inside the
namespaces it creates (prefix `uecr-rr`), removed after the run, also after a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from bench import BenchConfigError, BenchError, Benchmark
from bench.machine import machine_facts
from ims.gateway.nft_relay import NftRelayDataPlane, RelayBed, measure_forwarding_rate
from ims.testbed.requirements import missing_for_world

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
SUBJECT_NAMES = ("direct", "ueconnect", "coturn", "kernel")
# The row each subject's added latency is measured against (default: `direct`).
BASELINES = {"kernel": "kernel-routed"}
KERNEL_BURST_DATAGRAMS = 20_000
KERNEL_RELAY_PORTS = (40000, 40001)  # R:Pa faces A, R:Pb faces B
# (program, Debian package) the kernel subject's RelayBed and data plane run.
KERNEL_TOOLS = (("ip", "iproute2"), ("nft", "nftables"), ("conntrack", "conntrack"),
                ("sysctl", "procps"))
SOCKET_BUFFER_BYTES = 4 << 20
TURN_USER, TURN_PASSWORD, TURN_REALM = "bench", "bench-password", "bench.invalid"
CHANNEL = 0x4000  # the first TURN channel number (RFC 8656 section 12)

Address = tuple[str, int]


@dataclass(frozen=True)
class RelaySettings:
    payload_bytes: int = 160  # a game state update
    pings: int = 2000
    start_rate: int = 10_000
    max_rate: int = 320_000
    step_seconds: float = 1.0
    max_loss: float = 0.001
    generator_share: float = 0.9

    def __post_init__(self) -> None:
        if not 8 <= self.payload_bytes <= 1400:
            raise BenchConfigError("payload_bytes must be in [8, 1400]")
        if not 10 <= self.pings <= 100_000:
            raise BenchConfigError("pings must be in [10, 100000]")
        if not 1 <= self.start_rate <= self.max_rate <= 1_000_000:
            raise BenchConfigError("need 1 <= start_rate <= max_rate <= 1000000")
        if not 0.2 <= self.step_seconds <= 10:
            raise BenchConfigError("step_seconds must be in [0.2, 10]")


@dataclass
class Path_:
    """How A and B reach each other through one subject."""

    a_sock: socket.socket
    b_sock: socket.socket
    a_target: Address  # where A sends
    b_target: Address  # where B sends
    a_header: bytes  # prepended by A (a ChannelData header for TURN)
    a_strip: int  # bytes A strips from what it receives
    cpu: Callable[[], float] | None  # CPU seconds of the relay process so far


@dataclass(frozen=True)
class RateStep:
    target: int
    sent: int
    received: int
    seconds: float
    relay_cpu: float | None

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 1.0

    @property
    def delivered_rate(self) -> float:
        return self.received / self.seconds

    def verdict(self, settings: RelaySettings) -> str:
        if self.loss > settings.max_loss:
            return "lossy"
        if self.sent < settings.generator_share * self.target * self.seconds:
            return "generator-bound"
        return "clean"


@dataclass(frozen=True)
class SubjectResult:
    subject: str
    skipped: str | None = None
    rtt_median_us: float | None = None
    rtt_p99_us: float | None = None
    lost_pings: int = 0
    best_rate: float | None = None
    cpu_us_per_datagram: float | None = None
    ended: str = ""
    steps: tuple[tuple[RateStep, str], ...] = ()
    # kernel subject only: `nft_relay.measure_forwarding_rate`, a burst as fast as one sender
    burst_rate: float | None = None
    burst_loss: float | None = None


# --- the generator (A and B in this process, non-blocking sockets) ---------------------------


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    return _for_generator(sock)


def _for_generator(sock: socket.socket) -> socket.socket:
    """The buffers and mode every generator socket has, whichever namespace it was made in."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
    sock.setblocking(False)
    return sock


def _recv_within(sock: socket.socket, seconds: float) -> bytes | None:
    end = time.monotonic() + seconds
    while True:
        with contextlib.suppress(BlockingIOError):
            return sock.recv(65535)
        left = end - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return None


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(65535)
        except (BlockingIOError, ConnectionRefusedError):
            return count
        count += 1


def measure_latency(path: Path_, settings: RelaySettings) -> tuple[list[float], int]:
    """Round-trip times (seconds) of `settings.pings` ping-pongs, and how many were lost."""
    payload = b"p" * settings.payload_bytes
    rtts: list[float] = []
    lost = 0
    for n in range(settings.pings + 50):  # the first 50 warm up (latching, caches)
        body = struct.pack("!I", n) + payload[4:]
        start = time.perf_counter()
        path.a_sock.sendto(path.a_header + body, path.a_target)
        got = _recv_within(path.b_sock, 1.0)
        if got is not None:
            path.b_sock.sendto(got, path.b_target)
            back = _recv_within(path.a_sock, 1.0)
        if got is None or back is None or back[path.a_strip:path.a_strip + 4] != body[:4]:
            lost += n >= 50
            _drain(path.a_sock)
            _drain(path.b_sock)
            continue
        if n >= 50:
            rtts.append(time.perf_counter() - start)
    return rtts, lost


def measure_rate_step(path: Path_, rate: int, settings: RelaySettings) -> RateStep:
    """A sends to B at `rate` datagrams/s for one step (1 ms slices); B counts."""
    datagram = path.a_header + b"r" * settings.payload_bytes
    send, target = path.a_sock.sendto, path.a_target
    cpu_before = path.cpu() if path.cpu else None
    sent = received = 0
    start = time.perf_counter()
    end = start + settings.step_seconds
    now = start
    while now < end:
        due = int((now - start) * rate) + 1 - sent
        for _ in range(min(due, 2000)):
            try:
                send(datagram, target)
            except BlockingIOError:
                break
            sent += 1
        received += _drain(path.b_sock)
        now = time.perf_counter()
    settle = time.perf_counter() + 0.3
    while time.perf_counter() < settle:
        received += _drain(path.b_sock)
        select.select([path.b_sock], [], [], 0.02)
    received += _drain(path.b_sock)
    cpu = path.cpu() - cpu_before if path.cpu and cpu_before is not None else None
    return RateStep(rate, sent, received, settings.step_seconds, cpu)


def run_measures(path: Path_, name: str, settings: RelaySettings,
                 report: Callable[[str], None]) -> SubjectResult:
    rtts, lost = measure_latency(path, settings)
    if not rtts:
        return SubjectResult(name, ended=f"error: all {settings.pings} pings lost")
    rtts.sort()
    median = statistics.median(rtts) * 1e6
    p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1e6
    report(f"  {name}: RTT median {median:.0f} us, p99 {p99:.0f} us, {lost} lost")
    steps: list[tuple[RateStep, str]] = []
    best: RateStep | None = None
    ended = f"reached the ceiling {settings.max_rate}/s"
    rate = settings.start_rate
    while rate <= settings.max_rate:
        step = measure_rate_step(path, rate, settings)
        verdict = step.verdict(settings)
        steps.append((step, verdict))
        report(f"  {name}: {rate}/s offered: sent {step.sent}, received {step.received} "
               f"({step.loss:.2%} lost) -> {verdict}")
        if verdict == "clean":
            best = step
        if verdict != "clean":
            ended = (f"{step.loss:.1%} lost at {rate}/s" if verdict == "lossy"
                     else f"generator-bound at {rate}/s (the figure is a lower bound)")
            break
        rate *= 2
    cpu_us = None
    if best is not None and best.relay_cpu is not None and best.received:
        cpu_us = best.relay_cpu / best.received * 1e6
    return SubjectResult(
        name, rtt_median_us=median, rtt_p99_us=p99, lost_pings=lost,
        best_rate=best.delivered_rate if best else None, cpu_us_per_datagram=cpu_us,
        ended=ended, steps=tuple(steps),
    )


# --- subjects ------------------------------------------------------------------------------


def _process_cpu(pid: int) -> Callable[[], float]:
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / ticks  # utime, stime (proc(5) 14, 15)

    return cpu


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to a process this benchmark started; SIGKILL by its handle after 5 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()  # the process this benchmark started, by its handle
            process.wait(timeout=5)


@contextlib.contextmanager
def direct_path() -> Iterator[Path_]:
    a, b = _udp_socket(), _udp_socket()
    try:
        yield Path_(a, b, b.getsockname(), a.getsockname(), b"", 0, None)
    finally:
        a.close()
        b.close()


@contextlib.contextmanager
def ueconnect_path() -> Iterator[Path_]:
    a, b = _udp_socket(), _udp_socket()
    argv = [sys.executable, "-m", "bench.relay_rate", "--serve-relay",
            json.dumps([a.getsockname(), b.getsockname()])]
    process = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert process.stdout is not None
        ready = select.select([process.stdout], [], [], 20)[0]
        line = process.stdout.readline() if ready else b""
        if not line:
            raise BenchError(f"the relay process did not report its allocation (status "
                             f"{process.poll()})")
        sides = json.loads(line)
        yield Path_(a, b, tuple(sides["caller_side"]), tuple(sides["callee_side"]), b"", 0,
                    _process_cpu(process.pid))
    finally:
        stop_process(process)
        a.close()
        b.close()


def coturn_missing() -> str | None:
    if shutil.which("turnserver") is None:
        return "turnserver not on PATH (Debian package coturn provides /usr/bin/turnserver)"
    try:
        import aioice.turn  # noqa: F401
    except ImportError:
        return "aioice (the TURN client) is not installed"
    return None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _wait_stun_ready(port: int, within: float) -> bool:
    # A STUN Binding request (RFC 8489 section 5): the server answers once it listens.
    request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, os.urandom(12))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        probe.setblocking(False)
        end = time.monotonic() + within
        while time.monotonic() < end:
            probe.sendto(request, (LOOPBACK, port))
            with contextlib.suppress(ConnectionRefusedError):
                if _recv_within(probe, 0.2) is not None:
                    return True
    return False


@contextlib.contextmanager
def start_turnserver(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], Address]]:
    """coturn's turnserver on a free loopback port, answering STUN: (process, its address)."""
    port = _free_udp_port()
    log = workdir / "turnserver.log"
    argv = [
        "turnserver", "-n",  # no configuration file: everything is on this line
        "--listening-ip", LOOPBACK, "--relay-ip", LOOPBACK, "--listening-port", str(port),
        "--min-port", "49200", "--max-port", "49999",
        "--lt-cred-mech", "--user", f"{TURN_USER}:{TURN_PASSWORD}", "--realm", TURN_REALM,
        "--no-tls", "--no-dtls", "--no-tcp", "--no-tcp-relay", "--no-cli",
        "--allow-loopback-peers",  # the bench's peers are on loopback
        "--relay-threads", "1",  # one thread, like our relay's one event loop
        "--db", str(workdir / "turndb"), "--pidfile", str(workdir / "turnserver.pid"),
        "--log-file", "stdout", "--simple-log",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if not _wait_stun_ready(port, 10):
            raise BenchError(f"turnserver did not answer on {LOOPBACK}:{port}:\n"
                             f"{log.read_text(errors='replace')[-2000:]}")
        yield process, (LOOPBACK, port)
    finally:
        stop_process(process)


@contextlib.contextmanager
def coturn_path(workdir: Path) -> Iterator[Path_]:
    with start_turnserver(workdir) as (process, server), \
            _turn_allocation(server, _process_cpu(process.pid)) as path:
        yield path


@contextlib.contextmanager
def _turn_allocation(server: Address, cpu: Callable[[], float]) -> Iterator[Path_]:
    """A TURN allocation made by aioice on a loop of its own; A's socket is handed to the
    generator while the client's transport is paused, then the allocation is deleted."""
    from aioice.turn import TurnClientUdpProtocol

    loop = asyncio.new_event_loop()
    a, b = _udp_socket(), _udp_socket()
    a.connect(server)
    generator_a = socket.socket(fileno=os.dup(a.fileno()))  # the same socket, for the generator
    try:
        transport, protocol = loop.run_until_complete(loop.create_datagram_endpoint(
            lambda: TurnClientUdpProtocol(server, TURN_USER, TURN_PASSWORD, lifetime=600,
                                          channel_refresh_time=500), sock=a))
        relayed = loop.run_until_complete(asyncio.wait_for(protocol.connect(), 10))
        loop.run_until_complete(asyncio.wait_for(protocol.channel_bind(CHANNEL, b.getsockname()), 10))
        cast(asyncio.ReadTransport, transport).pause_reading()  # the generator reads A's socket now
        # ChannelData (RFC 8656 section 12.4) carries the payload length: `measure` fixes the
        # header once the payload size is known.
        yield Path_(generator_a, b, server, (str(relayed[0]), int(relayed[1])),
                    _channel_header(0), 4, cpu)
        cast(asyncio.ReadTransport, transport).resume_reading()
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.wait_for(protocol.delete(), 5))
    finally:
        generator_a.close()
        a.close()
        b.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def _channel_header(length: int) -> bytes:
    return struct.pack("!HH", CHANNEL, length)


def kernel_missing() -> str | None:
    """Why the kernel subject cannot run here (Linux, root, the bed's tools), or None."""
    return missing_for_world(tools=KERNEL_TOOLS)


@contextlib.contextmanager
def kernel_bed(prefix: str) -> Iterator[tuple[RelayBed, socket.socket, socket.socket]]:
    """A RelayBed and the generator's A and B sockets bound in its namespaces."""
    with RelayBed.create(prefix) as bed:
        a = _for_generator(bed.udp_socket(bed.a, bed.peer_a_ip))
        try:
            b = _for_generator(bed.udp_socket(bed.b, bed.peer_b_ip))
        except BaseException:
            a.close()
            raise
        try:
            yield bed, a, b
        finally:
            a.close()
            b.close()


def measure_kernel(settings: RelaySettings, report: Callable[[str], None], *,
                   prefix: str | None = None,
                   burst_datagrams: int = KERNEL_BURST_DATAGRAMS) -> tuple[SubjectResult, ...]:
    """The `kernel` subject: `kernel-routed` then `kernel` (see the module text), each
    through the same generator, plus a burst of `burst_datagrams` through
    `measure_forwarding_rate` (0: none). Skipped results when root or a tool is missing."""
    missing = kernel_missing()
    if missing:
        return (SubjectResult("kernel", skipped=missing),)
    from ims.gateway.errors import GatewayError
    from ims.testbed.errors import TestbedError

    prefix = prefix or f"uecr-rr{os.getpid() % 100_000}"
    results: list[SubjectResult] = []
    try:
        with kernel_bed(prefix) as (bed, a, b):
            a_addr, b_addr = a.getsockname(), b.getsockname()
            routed = run_measures(Path_(a, b, b_addr, a_addr, b"", 0, None),
                                  "kernel-routed", settings, report)
            results.append(_with_burst(routed, bed, settings, burst_datagrams, False, report))
            pa, pb = KERNEL_RELAY_PORTS
            with NftRelayDataPlane(bed.r, table="ueconnect_relay_bench") as plane:
                plane.reset()
                plane.install("relay-rate", bed.relay_ip, pa, a_addr, pb, b_addr)
                relayed = run_measures(Path_(a, b, (bed.relay_ip, pa), (bed.relay_ip, pb),
                                             b"", 0, None), "kernel", settings, report)
                counters = plane.counters("relay-rate")
                report(f"  kernel: the relay's rules forwarded {counters.a_to_b_datagrams} "
                       f"A->B and {counters.b_to_a_datagrams} B->A datagrams")
                if counters.a_to_b_datagrams == 0:
                    relayed = dataclasses.replace(
                        relayed, ended="error: the kernel relay's rules counted no datagram "
                                       "(the flow did not go through them)")
            results.append(_with_burst(relayed, bed, settings, burst_datagrams, True, report))
    except (BenchError, GatewayError, TestbedError, OSError) as error:
        done = {r.subject for r in results}
        results += [SubjectResult(name, ended=f"error: {error}")
                    for name in ("kernel-routed", "kernel") if name not in done]
    return tuple(results)


def _with_burst(result: SubjectResult, bed: RelayBed, settings: RelaySettings, datagrams: int,
                through_relay: bool, report: Callable[[str], None]) -> SubjectResult:
    if not datagrams or result.ended.startswith("error"):
        return result
    burst = measure_forwarding_rate(datagrams, settings.payload_bytes,
                                    through_relay=through_relay, bed=bed)
    report(f"  {result.subject}: burst of {burst.sent} as fast as one sender: "
           f"{burst.datagrams_per_second:,.0f}/s delivered, {burst.loss:.2%} lost")
    return dataclasses.replace(result, burst_rate=burst.datagrams_per_second,
                               burst_loss=burst.loss)


def measure(name: str, settings: RelaySettings, workdir: Path,
            report: Callable[[str], None]) -> SubjectResult:
    if name == "coturn":
        missing = coturn_missing()
        if missing:
            return SubjectResult(name, skipped=missing)
    try:
        if name == "direct":
            context: contextlib.AbstractContextManager[Path_] = direct_path()
        elif name == "ueconnect":
            context = ueconnect_path()
        else:
            context = coturn_path(workdir)
        with context as path:
            if path.a_header:
                path.a_header = _channel_header(settings.payload_bytes)
            return run_measures(path, name, settings, report)
    except BenchError as error:
        return SubjectResult(name, ended=f"error: {error}")


# --- the relay process for the ueconnect subject -----------------------------------------------


async def serve_relay(peers: Sequence[Sequence[object]]) -> None:
    from ims.gateway.aiorelay import RelayService
    from ims.gateway.relay import RelayConfig

    caller, callee = ((str(p[0]), int(str(p[1]))) for p in peers)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def stop_now() -> None:  # SIGTERM, or stdin closed: the benchmark is done with us
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, stop_now)
    loop.add_reader(sys.stdin.fileno(), stop_now)
    async with RelayService(RelayConfig(LOOPBACK)) as relay:
        allocation = await relay.allocate(caller, callee, lifetime=600)
        print(json.dumps({"caller_side": allocation.caller_side,
                          "callee_side": allocation.callee_side}), flush=True)
        await asyncio.wait_for(stop, 900)  # bounded even if nobody stops it


# --- the registry entry --------------------------------------------------------------------


def markdown_table(results: Sequence[SubjectResult]) -> str:
    medians = {r.subject: r.rtt_median_us for r in results if r.rtt_median_us}
    lines = ["| subject | RTT median µs | RTT p99 µs | added per datagram µs | max clean datagrams/s "
             "| relay CPU µs/datagram | ended because |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.subject} | | | | | | skipped: {r.skipped} |")
            continue
        base = medians.get(BASELINES.get(r.subject, "direct"))
        added = ("" if base is None or r.rtt_median_us is None or r.subject in _FLOORS
                 else f"{(r.rtt_median_us - base) / 2:.0f}")
        lines.append(
            f"| {r.subject} | {_n(r.rtt_median_us)} | {_n(r.rtt_p99_us)} | {added} "
            f"| {_n(r.best_rate)} | {_n(r.cpu_us_per_datagram, 1)} | {r.ended} |"
        )
    return "\n".join(lines)


_FLOORS = {"direct", *BASELINES.values()}


def burst_lines(results: Sequence[SubjectResult]) -> list[str]:
    """One line per result that has a burst figure (the kernel subject's)."""
    return [f"{r.subject}: burst (`measure_forwarding_rate`) {_n(r.burst_rate)} datagrams/s "
            f"delivered, {r.burst_loss or 0:.2%} lost"
            for r in results if r.burst_rate is not None]


def _n(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}".replace(",", " ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subjects", nargs="+", choices=SUBJECT_NAMES, default=list(SUBJECT_NAMES))
    parser.add_argument("--pings", type=int, default=RelaySettings.pings)
    parser.add_argument("--payload", type=int, default=RelaySettings.payload_bytes)
    parser.add_argument("--max-rate", type=int, default=RelaySettings.max_rate)
    parser.add_argument("--step-seconds", type=float, default=RelaySettings.step_seconds)
    parser.add_argument("--burst", type=int, default=KERNEL_BURST_DATAGRAMS,
                        help="kernel subject: datagrams of the burst (0: none)")
    parser.add_argument("--json", type=Path, help="also write the results here")


def run(args: argparse.Namespace) -> int:
    settings = RelaySettings(payload_bytes=args.payload, pings=args.pings,
                             max_rate=args.max_rate, step_seconds=args.step_seconds,
                             start_rate=min(RelaySettings.start_rate, args.max_rate))
    facts = machine_facts()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as scratch:
        for name in args.subjects:
            measured = (measure_kernel(settings, _say, burst_datagrams=args.burst)
                        if name == "kernel" else (measure(name, settings, Path(scratch), _say),))
            for result in measured:
                if result.skipped:
                    _say(f"  {result.subject}: skipped: {result.skipped}")
                results.append(result)
    print()
    print(markdown_table(results))
    for line in burst_lines(results):
        print(line)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": facts, "settings": asdict(settings),
            "results": [asdict(r) for r in results],
        }, indent=2, default=str))
    return 1 if any(r.ended.startswith("error") for r in results) else 0


def _say(line: str) -> None:
    print(line, flush=True)


BENCHMARK = Benchmark(
    name="relay_rate",
    help="datagrams/s and added latency through the gateway relay, coturn and direct",
    add_arguments=add_arguments,
    run=run,
)

__all__ = ["BENCHMARK", "RelaySettings", "SubjectResult", "kernel_missing", "measure",
           "measure_kernel", "serve_relay", "start_turnserver", "stop_process"]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-relay":
        asyncio.run(serve_relay(json.loads(sys.argv[2])))
    else:
        sys.exit("usage: python3 -m bench.relay_rate --serve-relay '[[A_HOST, A_PORT], [B_HOST, B_PORT]]'"
                 " (run the benchmark with `python3 -m bench relay_rate`)")
