"""Launch the pjsua2 UE harness (pjsua2_ue.py) as a subprocess and collect its events.

pjsua2 is GPL and its binding can crash the interpreter, so it never runs inside pytest:
tests call :func:`pjsua2_skip_reason` to skip cleanly, then :func:`start_ue` /
:func:`run_ue` and assert on the :class:`UeRun` they get back.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HARNESS = Path(__file__).with_name("pjsua2_ue.py")
LOOPBACK = "127.0.0.1"
# The harness exits by itself within --timeout; past this extra grace it is killed.
KILL_GRACE = 5.0


@functools.cache
def pjsua2_skip_reason() -> str | None:
    """None when ``import pjsua2`` works for this interpreter, else why it does not."""
    if importlib.util.find_spec("pjsua2") is None:
        return (f"pjsua2 is not installed for {sys.executable} "
                "(pip install 'pjsua2-pybind11==0.1a3'; x86_64, Python < 3.13)")
    # Import in a child: a broken native library must not take this process down.
    probe = subprocess.run([sys.executable, "-c", "import pjsua2"], capture_output=True,
                           text=True, timeout=30, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        return f"import pjsua2 fails for {sys.executable}: {last}"
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct 127.0.0.1 ports, each free for both UDP and TCP right now.

    All are held until the last is chosen, so the same port is never handed out twice.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(50 * count):
            if len(ports) == count:
                break
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            udp.bind((LOOPBACK, 0))
            port: int = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            try:
                tcp.bind((LOOPBACK, port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) < count:
        raise RuntimeError(f"found only {len(ports)} of {count} free loopback ports")
    return ports


def free_port() -> int:
    """One 127.0.0.1 port free for both UDP and TCP right now (the harness binds both)."""
    return free_ports(1)[0]


@dataclass(frozen=True)
class UeArgs:
    """The harness command line, typed. ``argv()`` renders it."""

    local_port: int
    register: str | None = None
    user: str | None = None
    password: str | None = None
    domain: str | None = None
    expires: int | None = None
    proxy: str | None = None
    id_uri: str | None = None
    call: str | None = None
    headers: tuple[str, ...] = ()  # each "Name: value"
    answer: bool = False
    answer_code: int | None = None
    hangup_after: float | None = None
    timeout: float = 10.0
    tcp: bool = False
    log_level: int = 4

    def argv(self, log_file: Path | None = None) -> list[str]:
        argv = [sys.executable, str(HARNESS), "--local-port", str(self.local_port),
                "--timeout", str(self.timeout)]
        options: list[tuple[str, object]] = [
            ("--register", self.register), ("--user", self.user),
            ("--password", self.password), ("--domain", self.domain),
            ("--expires", self.expires), ("--proxy", self.proxy), ("--id-uri", self.id_uri),
            ("--call", self.call), ("--answer-code", self.answer_code),
            ("--hangup-after", self.hangup_after),
        ]
        for flag, value in options:
            if value is not None:
                argv += [flag, str(value)]
        for header in self.headers:
            argv += ["--header", header]
        if self.answer:
            argv.append("--answer")
        if self.tcp:
            argv.append("--tcp")
        if log_file is not None:
            argv += ["--log-file", str(log_file), "--log-level", str(self.log_level)]
        return argv


@dataclass(frozen=True)
class UeEvent:
    """One JSON line from the harness: ``name`` is its "event", ``fields`` the rest."""

    name: str
    t: float
    fields: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def header(self, name: str) -> list[str]:
        """Values of a received header (incoming_call), name matched case-insensitively."""
        wanted = name.lower()
        return [value for hname, value in self.fields.get("headers", [])
                if hname.lower() == wanted]

    @classmethod
    def from_line(cls, line: str) -> UeEvent:
        record = json.loads(line)
        name = record.pop("event")
        t = float(record.pop("t", 0.0))
        return cls(name=str(name), t=t, fields=record)


@dataclass(frozen=True)
class UeRun:
    """What one harness run produced."""

    exit_code: int
    events: tuple[UeEvent, ...]
    stderr: str
    log: str = ""
    killed: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.killed

    def named(self, name: str) -> list[UeEvent]:
        return [event for event in self.events if event.name == name]

    def first(self, name: str) -> UeEvent:
        found = self.named(name)
        assert found, f"no {name!r} event from the pjsua2 UE\n{self.describe()}"
        return found[0]

    def describe(self) -> str:
        """Everything useful for an assertion message: events, stderr, pjsua log tail."""
        lines = [f"exit code {self.exit_code}{' (killed)' if self.killed else ''}", "events:"]
        lines += [f"  {e.t:7.3f} {e.name} {dict(e.fields)}" for e in self.events]
        if self.stderr.strip():
            lines += ["stderr (tail):", *self.stderr.strip().splitlines()[-20:]]
        if self.log.strip():
            lines += ["pjsua log (tail):", *self.log.strip().splitlines()[-60:]]
        return "\n".join(lines)


@dataclass
class RunningUe:
    """A started harness; events are read as they arrive."""

    args: UeArgs
    process: subprocess.Popen[str]
    log_file: Path | None
    _events: list[UeEvent] = field(default_factory=list)
    _stderr: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _readers: list[threading.Thread] = field(default_factory=list)

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = UeEvent.from_line(line)
            except (ValueError, KeyError):
                event = UeEvent("unparsed", 0.0, {"line": line})
            with self._changed:
                self._events.append(event)
                self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    def wait_for(self, name: str, within: float) -> UeEvent | None:
        """The first ``name`` event, waiting up to ``within`` seconds; None if none came."""
        deadline = time.monotonic() + within
        with self._changed:
            while True:
                for event in self._events:
                    if event.name == name:
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reading()):
                    return None
                self._changed.wait(min(left, 0.1))

    def _reading(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def wait(self) -> UeRun:
        """Wait for the harness to exit (killing it past --timeout + grace)."""
        killed = False
        try:
            self.process.wait(timeout=self.args.timeout + KILL_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=KILL_GRACE)
            killed = True
        for reader in self._readers:
            reader.join(timeout=KILL_GRACE)
        log = ""
        if self.log_file is not None and self.log_file.exists():
            log = self.log_file.read_text(errors="replace")
        with self._changed:
            events = tuple(self._events)
        return UeRun(exit_code=self.process.returncode, events=events,
                     stderr="".join(self._stderr), log=log, killed=killed)


def start_ue(args: UeArgs, log_dir: Path | None = None) -> RunningUe:
    """Start the harness; with ``log_dir`` the pjsua log (SIP trace) lands there."""
    log_file = log_dir / f"pjsua2_ue_{args.local_port}.log" if log_dir is not None else None
    process = subprocess.Popen(args.argv(log_file), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=log_dir)
    running = RunningUe(args=args, process=process, log_file=log_file)
    for target in (running._read_stdout, running._read_stderr):
        reader = threading.Thread(target=target, daemon=True)
        reader.start()
        running._readers.append(reader)
    return running


def run_ue(args: UeArgs, log_dir: Path | None = None) -> UeRun:
    """Start the harness and wait for it to finish."""
    return start_ue(args, log_dir).wait()


def ue_events(lines: Sequence[str]) -> tuple[UeEvent, ...]:
    """Parse captured harness stdout (one JSON object per line)."""
    return tuple(UeEvent.from_line(line) for line in lines if line.strip())
