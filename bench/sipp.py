"""Driving sipp (SIPp 3.6) on loopback: command lines, bounded runs, statistics.

sipp is the load generator and the far end of every signalling benchmark, and a real SIP peer
in the interop tests (tests/interop/sipp.py builds on this module). A `SippRun` says what to
run (a built-in scenario such as "uac"/"uas" or an XML file, where, how many calls, how fast,
for how long at most); `start_sipp` launches it, `SippProcess.wait`/`stop` end it and return a
`SippResult` with the exit status and the counters of sipp's -trace_stat file.

Bounds: every run has a call count (-m) and a wall-clock deadline enforced here, not by sipp's
own -timeout (sipp 3.6.1 honours that only once its open calls have ended, which can take the
32 s of an INVITE's retransmissions). Past the deadline sipp gets SIGTERM, then SIGKILL.
Statistics are dumped every second (-fd 1), so even a killed run leaves its counters behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench import BenchConfigError, BenchError, ToolMissing

SIPP_HINT = "install the Debian package sip-tester (provides /usr/bin/sipp)"

# sipp's documented exit codes (sipp -h, "Signal handling" / "Exit codes").
EXIT_MEANINGS = {
    0: "all calls were successful",
    1: "at least one call failed",
    97: "exit on internal command (calls may have been processed)",
    99: "normal exit without calls processed",
    255: "fatal error",
    254: "fatal error binding a socket",
}

_KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
_OUTPUT_TAIL = 4000  # characters of stdout/stderr/error log kept in a result


class SippError(BenchError):
    """sipp could not be run to the end (fatal error, socket in use, no statistics)."""


@dataclass(frozen=True)
class Endpoint:
    """A loopback UDP/TCP endpoint. Anything else is refused: benchmarks and interop tests
    never send beyond 127.0.0.0/8 and ::1."""

    host: str
    port: int

    def __post_init__(self) -> None:
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            raise BenchConfigError(f"{self.host!r} is not an IP address literal") from None
        if not address.is_loopback:
            raise BenchConfigError(
                f"{self.host} is not a loopback address: benchmarks and interop peers run on "
                "127.0.0.0/8 or ::1 only"
            )
        if not 0 < self.port < 65536:
            raise BenchConfigError(f"port {self.port} is out of range 1..65535")

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """ "127.0.0.1:5060" or "[::1]:5060"."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise BenchConfigError(f"{text!r} is not HOST:PORT")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def free_port(host: str = "127.0.0.1", kind: socket.SocketKind = socket.SOCK_DGRAM) -> int:
    """A port the kernel just handed out on `host` (free now; a small race is accepted)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """A port on `host` free for both UDP and TCP right now (bounded attempts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise BenchError(f"no port on {host} free for both UDP and TCP")


def find_sipp() -> str:
    """The sipp executable, or ToolMissing with how to get it."""
    path = shutil.which("sipp")
    if path is None:
        raise ToolMissing("sipp", SIPP_HINT)
    return path


def sipp_version(sipp: str) -> str:
    """ "3.6.1" from `sipp -v` (its banner names the build options too)."""
    out = subprocess.run(
        [sipp, "-v"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    found = re.search(r"SIPp v(\S+?)(?:-|\s|$)", out)
    return found.group(1) if found else "unknown"


@dataclass(frozen=True)
class SippRun:
    """What to run. `scenario` is a built-in name (`sipp -sn`: "uac", "uas", ...) or an XML
    file (`sipp -sf`). `remote` is where a client scenario sends; a server scenario has none.
    `deadline` bounds the whole run in seconds, `max_calls` bounds it in calls (-m)."""

    scenario: str | Path
    local: Endpoint
    remote: Endpoint | None = None
    max_calls: int | None = 1
    rate: float | None = None  # calls per second (-r, over a 1 s period)
    call_limit: int | None = None  # simultaneous calls (-l)
    deadline: float = 10.0
    transport: Literal["udp", "tcp"] = "udp"
    service: str | None = None  # user part of the Request-URI (-s)
    variables: tuple[tuple[str, str], ...] = ()  # scenario globals (-set NAME VALUE)
    recv_timeout: float | None = None  # seconds a call may wait for a message (-recv_timeout)
    trace_messages: bool = False  # keep every message sent/received (-trace_msg)
    extra_args: tuple[str, ...] = ()
    name: str = field(default="")  # file name stem of the logs; derived when empty

    def __post_init__(self) -> None:
        if self.max_calls is not None and self.max_calls < 1:
            raise BenchConfigError(f"max_calls must be at least 1, not {self.max_calls}")
        if not 0 < self.deadline <= 3600:
            raise BenchConfigError(f"deadline must be in (0, 3600] seconds, not {self.deadline}")
        if self.rate is not None and self.rate <= 0:
            raise BenchConfigError(f"rate must be positive, not {self.rate}")
        if self.call_limit is not None and self.call_limit < 1:
            raise BenchConfigError(f"call_limit must be at least 1, not {self.call_limit}")
        if isinstance(self.scenario, Path) and not self.scenario.is_file():
            raise BenchConfigError(f"scenario file {self.scenario} does not exist")
        if self.remote is not None and (":" in self.remote.host) != (":" in self.local.host):
            # sipp sends from the one socket it bound to -i.
            raise BenchConfigError("local and remote must be of the same address family")
        if not self.name:
            stem = self.scenario.stem if isinstance(self.scenario, Path) else self.scenario
            object.__setattr__(self, "name", f"sipp_{stem}_{self.local.port}")

    def files(self, workdir: Path) -> SippFiles:
        return SippFiles(
            stats=workdir / f"{self.name}_stats.csv",
            errors=workdir / f"{self.name}_errors.log",
            messages=workdir / f"{self.name}_messages.log",
            logs=workdir / f"{self.name}_logs.log",
            stdout=workdir / f"{self.name}_stdout.log",
            stderr=workdir / f"{self.name}_stderr.log",
        )


@dataclass(frozen=True)
class SippFiles:
    """Where one run leaves its traces."""

    stats: Path
    errors: Path
    messages: Path
    logs: Path
    stdout: Path
    stderr: Path


def sipp_command(run: SippRun, workdir: Path, sipp: str = "sipp") -> list[str]:
    """The argv for `run`, its traces written under `workdir`."""
    files = run.files(workdir)
    argv = [sipp]
    if isinstance(run.scenario, Path):
        argv += ["-sf", str(run.scenario)]
    else:
        argv += ["-sn", run.scenario]
    if run.remote is not None:
        argv.append(str(run.remote))
    argv += ["-t", "u1" if run.transport == "udp" else "t1"]
    argv += ["-i", run.local.host, "-p", str(run.local.port)]
    argv += ["-nostdin", "-skip_rlimit"]
    if run.max_calls is not None:
        argv += ["-m", str(run.max_calls)]
    if run.rate is not None:
        argv += ["-r", f"{run.rate:g}", "-rp", "1000"]
    if run.call_limit is not None:
        argv += ["-l", str(run.call_limit)]
    if run.service is not None:
        argv += ["-s", run.service]
    if run.recv_timeout is not None:
        argv += ["-recv_timeout", str(max(1, round(run.recv_timeout * 1000)))]
    for name, value in run.variables:
        argv += ["-set", name, value]
    argv += ["-trace_stat", "-stf", str(files.stats), "-fd", "1"]
    argv += ["-trace_err", "-error_file", str(files.errors)]
    argv += ["-trace_logs", "-log_file", str(files.logs)]
    if run.trace_messages:
        argv += ["-trace_msg", "-message_file", str(files.messages)]
    argv += list(run.extra_args)
    return argv


@dataclass(frozen=True)
class SippStats:
    """The cumulative counters of sipp's last statistics row (`sipp -h stat`)."""

    target_rate: float
    call_rate: float  # calls created per second over the whole run, as sipp computed it
    elapsed: float  # seconds (sipp's resolution is one second)
    calls_created: int
    incoming_calls: int
    outgoing_calls: int
    current_calls: int
    successful_calls: int
    failed_calls: int
    unexpected_messages: int  # calls failed on an unexpected message
    failed_max_udp_retrans: int
    failed_timeout_on_recv: int
    failed_regexp: int  # a check_it regexp did not match
    retransmissions: int
    out_of_call_messages: int
    dead_call_messages: int
    watchdog_major: int  # sipp's own loop ran late: the generator, not the peer, is saturated
    watchdog_minor: int

    @property
    def unfinished_calls(self) -> int:
        """Calls neither successful nor failed when the statistics were written (cut short
        by the deadline): a benchmark counts them as failed."""
        return max(0, self.calls_created - self.successful_calls - self.failed_calls)


_COUNTERS = {
    "calls_created": "TotalCallCreated",
    "incoming_calls": "IncomingCall(C)",
    "outgoing_calls": "OutgoingCall(C)",
    "current_calls": "CurrentCall",
    "successful_calls": "SuccessfulCall(C)",
    "failed_calls": "FailedCall(C)",
    "unexpected_messages": "FailedUnexpectedMessage(C)",
    "failed_max_udp_retrans": "FailedMaxUDPRetrans(C)",
    "failed_timeout_on_recv": "FailedTimeoutOnRecv(C)",
    "failed_regexp": "FailedRegexpDoesntMatch(C)",
    "retransmissions": "Retransmissions(C)",
    "out_of_call_messages": "OutOfCallMsgs(C)",
    "dead_call_messages": "DeadCallMsgs(C)",
    "watchdog_major": "WatchdogMajor(C)",
    "watchdog_minor": "WatchdogMinor(C)",
}


def _seconds(hms: str) -> float:
    """ "00:01:02" (or "00:01:02:345000") to seconds."""
    parts = hms.split(":")
    if len(parts) < 3 or not all(p.isdigit() for p in parts):
        raise SippError(f"unreadable elapsed time {hms!r} in sipp statistics")
    hours, minutes, seconds = (int(p) for p in parts[:3])
    fraction = int(parts[3]) / 1e6 if len(parts) > 3 else 0.0
    return hours * 3600 + minutes * 60 + seconds + fraction


def parse_statistics(text: str) -> SippStats:
    """The counters of the last row of a -trace_stat file (";"-separated, a header row, then
    one row per dump)."""
    rows = [row for row in csv.reader(io.StringIO(text), delimiter=";") if row and any(row)]
    if len(rows) < 2:
        raise SippError("sipp statistics file has no data row (did sipp start?)")
    header, last = rows[0], rows[-1]
    values = dict(zip(header, last, strict=False))

    def number(column: str) -> float:
        try:
            return float(values[column])
        except (KeyError, ValueError):
            raise SippError(f"sipp statistics lack a numeric {column!r} column") from None

    counters = {name: int(number(column)) for name, column in _COUNTERS.items()}
    return SippStats(
        target_rate=number("TargetRate"),
        call_rate=number("CallRate(C)"),
        elapsed=_seconds(values.get("ElapsedTime(C)", "")),
        **counters,
    )


@dataclass(frozen=True)
class SippResult:
    """How a run ended: sipp's exit status, whether the deadline cut it, its counters."""

    run: SippRun
    exit_code: int
    timed_out: bool
    stats: SippStats | None
    wall_time: float
    files: SippFiles
    errors: str  # tail of the -trace_err file: the unexpected messages, failed checks
    stderr: str

    @property
    def ok(self) -> bool:
        """Every call succeeded and the run ended by itself."""
        return self.exit_code == 0 and not self.timed_out

    @property
    def exit_meaning(self) -> str:
        if self.timed_out:
            return f"stopped at the {self.run.deadline:g} s deadline"
        return EXIT_MEANINGS.get(self.exit_code, f"exit status {self.exit_code}")

    def messages(self) -> str:
        """The -trace_msg log (empty unless `trace_messages`)."""
        return _read(self.files.messages, limit=None)

    def describe(self) -> str:
        """A paragraph for an assertion message: what happened and where to look."""
        lines = [f"sipp {self.run.name}: {self.exit_meaning} (exit {self.exit_code})"]
        if self.stats is not None:
            s = self.stats
            lines.append(
                f"  calls created {s.calls_created}, successful {s.successful_calls}, failed "
                f"{s.failed_calls}, unexpected messages {s.unexpected_messages}, "
                f"retransmissions {s.retransmissions}"
            )
        if self.errors.strip():
            lines.append("  error log: " + self.errors.strip()[-1500:])
        if self.stderr.strip():
            lines.append("  stderr: " + self.stderr.strip()[-1000:])
        return "\n".join(lines)


def _read(path: Path, limit: int | None = _OUTPUT_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text if limit is None else text[-limit:]


def udp_port_bound(endpoint: Endpoint) -> bool:
    """Whether some socket is bound to the UDP endpoint (Linux /proc/net/udp{,6}). Looking
    is better than binding to test: a test bind could take the port from under sipp."""
    address = ipaddress.ip_address(endpoint.host)
    table = "/proc/net/udp6" if address.version == 6 else "/proc/net/udp"
    packed = address.packed
    if address.version == 4:
        wanted_host = packed[::-1].hex().upper()
    else:  # four host-order 32-bit words
        wanted_host = "".join(packed[i : i + 4][::-1].hex().upper() for i in range(0, 16, 4))
    wanted = f"{wanted_host}:{endpoint.port:04X}"
    any_host = "0" * len(wanted_host) + f":{endpoint.port:04X}"
    try:
        lines = Path(table).read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1] in (wanted, any_host) for line in lines if line.strip())


class SippProcess:
    """A running sipp. Use as a context manager so it never outlives its test or step."""

    def __init__(self, run: SippRun, workdir: Path, sipp: str | None = None) -> None:
        self.run = run
        self.workdir = workdir
        self.files = run.files(workdir)
        self.argv = sipp_command(run, workdir, sipp or find_sipp())
        workdir.mkdir(parents=True, exist_ok=True)
        for stale in (self.files.stats, self.files.errors, self.files.messages):
            stale.unlink(missing_ok=True)
        self._started = time.monotonic()
        with open(self.files.stdout, "wb") as out, open(self.files.stderr, "wb") as err:
            self._popen = subprocess.Popen(
                self.argv,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a Ctrl-C of the runner does not reach sipp first
            )
        self._timed_out = False
        self._result: SippResult | None = None

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def deadline_left(self) -> float:
        return self.run.deadline - (time.monotonic() - self._started)

    def running(self) -> bool:
        return self._popen.poll() is None

    def wait_bound(self, within: float = 5.0) -> None:
        """Block until sipp's UDP socket is bound (a server is ready for its first request);
        SippError if sipp exits or `within` seconds pass first."""
        end = time.monotonic() + within
        while time.monotonic() < end:
            if not self.running():
                raise SippError("sipp exited before it was ready:\n" + self.stop().describe())
            if self.run.transport != "udp" or udp_port_bound(self.run.local):
                return
            time.sleep(0.02)
        self.stop()
        raise SippError(f"sipp did not bind {self.run.local} within {within:g} s")

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for sipp to end by itself, at most `timeout` seconds (default: what is left of
        the run's deadline); past that, stop it and mark the result timed out."""
        limit = self.deadline_left if timeout is None else min(timeout, self.deadline_left)
        try:
            self._popen.wait(timeout=max(0.0, limit))
        except subprocess.TimeoutExpired:
            self._timed_out = True
        return self.stop()

    async def wait_async(self, timeout: float | None = None) -> SippResult:
        """`wait` for tests whose own asyncio loop must keep running meanwhile."""
        limit = self.deadline_left if timeout is None else min(timeout, self.deadline_left)
        end = time.monotonic() + max(0.0, limit)
        while self.running() and time.monotonic() < end:
            await asyncio.sleep(0.02)
        if self.running():
            self._timed_out = True
        return self.stop()

    def stop(self) -> SippResult:
        """End sipp now if it still runs (SIGTERM, then SIGKILL) and collect the result."""
        if self._result is not None:
            return self._result
        if self._popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout=_KILL_GRACE)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._popen.wait(timeout=_KILL_GRACE)
        stats: SippStats | None
        try:
            stats = parse_statistics(self.files.stats.read_text(errors="replace"))
        except (OSError, SippError):
            stats = None
        self._result = SippResult(
            run=self.run,
            exit_code=self._popen.returncode,
            timed_out=self._timed_out,
            stats=stats,
            wall_time=time.monotonic() - self._started,
            files=self.files,
            errors=_read(self.files.errors),
            stderr=_read(self.files.stderr),
        )
        return self._result

    def _signal(self, signum: signal.Signals) -> None:
        # Only the process we started, by its id (it leads its own session; sipp forks none).
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._popen.pid, signum)

    def __enter__(self) -> SippProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sipp(run: SippRun, workdir: Path, sipp: str | None = None) -> SippProcess:
    """Launch `run` in the background; the caller waits or stops it (or uses `with`)."""
    return SippProcess(run, workdir, sipp)


def run_sipp(run: SippRun, workdir: Path, sipp: str | None = None) -> SippResult:
    """Run to the end (all `max_calls` processed) or to the deadline, whichever comes first."""
    with start_sipp(run, workdir, sipp) as process:
        return process.wait()


def uas(
    local: Endpoint,
    *,
    max_calls: int | None = None,
    deadline: float = 60.0,
    scenario: str | Path = "uas",
) -> SippRun:
    """sipp answering calls (default: built-in `uas`: 180, 200, ACK, BYE/200)."""
    return SippRun(scenario=scenario, local=local, max_calls=max_calls, deadline=deadline)


def uac(
    local: Endpoint,
    remote: Endpoint,
    *,
    rate: float,
    max_calls: int,
    deadline: float,
    scenario: str | Path = "uac",
    recv_timeout: float | None = 5.0,
) -> SippRun:
    """sipp placing `max_calls` calls at `rate` per second (default: built-in `uac`: INVITE,
    200, ACK, BYE/200), giving up on a call after `recv_timeout` seconds of silence."""
    return SippRun(
        scenario=scenario,
        local=local,
        remote=remote,
        rate=rate,
        max_calls=max_calls,
        deadline=deadline,
        recv_timeout=recv_timeout,
    )
