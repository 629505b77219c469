"""`ueconnect ue`: a UE from the command line, configured by a UE TOML file (ue_ua/config.py).

    ueconnect ue --config bill.toml --check
    ueconnect ue --config bill.toml register [--stay]
    ueconnect ue --config dave.toml listen [--allow PEER ... | --allow-all] [--echo] [--once]
    ueconnect ue --config bill.toml connect PEER --mno MNO [--count N] [--interval MS] [--json]

Each action drives ue_ua.client.UeClient exactly as a game would (docs/ue-guide.md): register
(Supported: ueconnect), answer permission inquiries from the file's [rules] and the --allow
flags (an inquiry nothing allows is answered deny, and said so), accept connections, connect
and exchange datagrams. Exit status: 0 done; 1 refused or failed (registration, connect, the
connection lost, a config file with problems); 2 usage (bad arguments, a peer identifier
that is not one); 130 interrupted before register or connect finished (listen and register
--stay exit 0 when stopped). `--check` alone: 0 the file is usable, 1 not.
`run(args, stop=..., out=...)` is the same as a coroutine, for tests and embedding.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypeVar

from ims.cli.report import bounded_float, bounded_int, help_page, print_config_error
from ims.cli.signals import stop_signals
from ims.config import ConfigError, HostPort
from ims.extension import InvalidTargetMno, parse_target_mno
from ims.permission.bodies import Inquiry
from ims.permission.errors import InvalidRuleSet
from ims.permission.outcomes import Decision
from ims.sip.errors import SipError
from ims.sip.registration import Registered
from ue_ua.agent import AskCallback, SentAnswer
from ue_ua.client import UeClient, UeConfig, peer_uri
from ue_ua.config import load_ue_config
from ue_ua.connection import Connection
from ue_ua.connection import Path as DataPath
from ue_ua.errors import (
    CalleeLacksExtension,
    ConnectError,
    ConnectionClosed,
    ConnectivityFailed,
    ConnectRefused,
    DeniedByCallee,
    DeniedByRule,
    InvalidAnswer,
    NoAnswerInTime,
    NoDataPath,
    NotRegistered,
    OperatorLacksExtension,
    OperatorUnreachable,
    RegistrationFailed,
    TooManyInquiries,
    UeError,
    UeUsageError,
    UnknownNumber,
    UnknownOperator,
)
from ue_ua.game_session import percentile
from ue_ua.permissions import RuleBook

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "PING", "register", "run"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# The payload of a connect datagram: "uec-ping SEQ". Its first byte is not 0-3, so it is never
# taken for STUN (RFC 7983 section 7); the echo is the same bytes.
PING = b"uec-ping "
# Application-ID: an RFC 3261 section 25.1 token, at most 64 characters (as UeClient.connect
# checks it, here before registering).
_APPLICATION = re.compile(r"[A-Za-z0-9.!%*_+`'~-]{1,64}")
MAX_COUNT = 100_000  # datagrams per connect run, and 10 s between them at most: bounded
MAX_INTERVAL_MS = 10_000.0
STOP_TIMEOUT = 20.0  # seconds the client gets to close (BYE, Expires: 0) on the way out

_EXIT_CODES = """exit status:
  0    done (connect: connected, the datagrams were sent; --check: the file is usable)
  1    refused or failed: a config file with problems, registration refused, connect
       refused (the status, reason, cause and what to do are printed), no path found, the
       connection lost
  2    usage: bad arguments (a peer or MNO identifier that is not one, a value out of range)
  130  interrupted (Ctrl-C) before register or connect finished; listen and register --stay
       exit 0 when Ctrl-C or SIGTERM stops them"""

# What a user can do about each refusal (docs/extension.md section 7); the error's own text
# says what happened.
_WHAT_TO_DO: dict[type[ConnectRefused], str] = {
    DeniedByRule: "the callee's standing rules deny you; ask them to allow you",
    DeniedByCallee: "the callee said no; ask them to allow you (e.g. `ueconnect ue --config "
                    "THEIRS listen --allow YOUR-NUMBER`)",
    NoAnswerInTime: "the callee's UE did not answer the permission inquiry in time; make sure "
                    "it runs (`ueconnect ue --config THEIRS listen`) and try again",
    NotRegistered: "the callee is not registered now; start their UE (`ueconnect ue --config "
                   "THEIRS listen`) and try again",
    CalleeLacksExtension: "the callee's UE does not support ueconnect; it needs a UE that "
                          "does (ue_ua, `ueconnect ue`)",
    OperatorLacksExtension: "the callee's operator does not support ueconnect; nothing to "
                            "do from here",
    UnknownNumber: "check PEER: no subscriber has that identity at that operator",
    UnknownOperator: "check --mno: give the peer's PLMN as MCC-MNC (e.g. 001-02) or its home "
                     "domain",
    OperatorUnreachable: "the callee's operator cannot be reached (its border or DNS); try "
                         "again later",
    NoDataPath: "the operators could open no data path; try again later, or ask your "
                "operator",
    TooManyInquiries: "too many permission inquiries are open for the callee; try again "
                      "later",
}
_OTHER_408 = ("no answer from the P-CSCF or beyond: check pcscf in the config file and that "
              "the operator runs")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "ue", help="run a UE from a UE config file: register, listen, connect",
        **help_page(
            "A UE (ue_ua.client.UeClient) from the command line. FILE is a UE TOML file: [ue] "
            "name, impu, impi, password or password_file, home_domain, pcscf, bind_host, "
            "transport_policy, stun_server, setup_timeout; optional [rules], the standing "
            "permission rules (docs/ue-guide.md section 9). `ueconnect demo --serve` writes one "
            "per demo subscriber.",
            ["ueconnect ue --config bill.toml --check",
             "ueconnect ue --config dave.toml listen --allow +15550100001 --echo",
             "ueconnect ue --config bill.toml connect +15550100002 --mno 001-02"],
            _EXIT_CODES),
    )  # fmt: skip
    parser.add_argument("--config", required=True, type=Path, metavar="FILE",
                        help="the UE's TOML file, e.g. ueconnect-demo/bill.toml")
    parser.add_argument("--check", action="store_true",
                        help="validate the file, print every problem (file, key, line, fix), "
                        "exit 0 when it is usable; no ACTION needed")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")

    reg = actions.add_parser(
        "register", help="register, print the binding, un-register",
        **help_page(
            "Register with the operator (digest auth, Supported: ueconnect), print the binding "
            "the registrar granted, then un-register (Expires: 0) and exit; with --stay keep the "
            "registration (refreshed) until Ctrl-C or SIGTERM.",
            ["ueconnect ue --config bill.toml register",
             "ueconnect ue --config bill.toml register --stay --expires 3600"],
            _EXIT_CODES))
    reg.add_argument("--stay", action="store_true",
                     help="stay registered until Ctrl-C/SIGTERM, then un-register")
    reg.add_argument("--expires", type=bounded_int(60, 86_400), default=600, metavar="S",
                     help="the registration lifetime asked for, seconds, 60 to 86400 "
                     "(default 600)")

    listen = actions.add_parser(
        "listen", help="register and accept connections until Ctrl-C",
        **help_page(
            "Register, answer the operator's permission inquiries (the file's [rules], then "
            "--allow / --allow-all; an inquiry nothing allows is answered deny, and the line "
            "printed says how to allow it), accept each connection and print its path; with "
            "--echo send every datagram back. Runs until Ctrl-C or SIGTERM (or, with --once, "
            "until the first connection ends), then closes the connections (BYE) and "
            "un-registers. Default: only the file's [rules] allow anyone.",
            ["ueconnect ue --config dave.toml listen --allow +15550100001 --echo",
             "ueconnect ue --config dave.toml listen --allow-all --once"],
            _EXIT_CODES))
    who = listen.add_mutually_exclusive_group()
    who.add_argument("--allow", action="append", default=[], metavar="PEER",
                     help="allow this caller (a number like +15550100001, a sip:/tel: URI, or "
                     "user@domain); repeat for several")
    who.add_argument("--allow-all", action="store_true", help="allow every caller")
    listen.add_argument("--echo", action="store_true",
                        help="send every datagram received back to its sender")
    listen.add_argument("--once", action="store_true",
                        help="exit after the first connection ended")

    connect = actions.add_parser(
        "connect", help="connect to a peer UE, send datagrams, report echoes and RTT",
        **help_page(
            "Register, ask the operator for a connection to PEER at operator MNO (INVITE with "
            "Require: ueconnect and Target-MNO), send --count datagrams (\"uec-ping N\") every "
            "--interval ms, count the echoes (a peer running `listen --echo` sends them back) "
            "and report the path, the setup time and RTT p50/p95; then close (BYE) and "
            "un-register. A refusal prints its status, reason phrase, cause and what to do.",
            ["ueconnect ue --config bill.toml connect +15550100002 --mno 001-02",
             "ueconnect ue --config bill.toml connect tel:+15550100002 --mno 001-02 "
             "--count 100 --interval 10 --json"],
            _EXIT_CODES))
    connect.add_argument("peer", metavar="PEER",
                         help="the peer UE: a number (+15550100002), a sip:/tel: URI or "
                         "user@domain")
    connect.add_argument("--mno", required=True, metavar="MNO",
                         help="the peer's operator: its PLMN as MCC-MNC (001-02) or home domain")
    connect.add_argument("--count", type=bounded_int(0, MAX_COUNT), default=10, metavar="N",
                         help=f"datagrams to send, 0 to {MAX_COUNT} (default 10; 0 only "
                         "connects)")
    connect.add_argument("--interval", type=bounded_float(0.0, MAX_INTERVAL_MS), default=20.0,
                         metavar="MS", help="milliseconds between datagrams, 0 to "
                         f"{MAX_INTERVAL_MS:g} (default 20)")
    connect.add_argument("--wait", type=bounded_float(0.0, 60_000.0), default=1000.0,
                         metavar="MS", help="milliseconds to wait for the last echoes, 0 to "
                         "60000 (default 1000)")
    connect.add_argument("--application", metavar="TOKEN",
                         help="the game's identifier, sent as Application-ID (what the peer's "
                         "rules and inquiry see; a SIP token); default: none")
    connect.add_argument("--json", action="store_true",
                         help="print one JSON object with the outcome instead of text")
    parser.set_defaults(func=_ue)


def _connect_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with connect's PEER, --mno or --application, else None. Checked before
    the file is read and anything is sent: a typo must not wait for the registration (nor
    for its timeout, 32 s, RFC 3261 section 17.1.2.2 Timer F)."""
    try:
        peer_uri(args.peer)
    except UeUsageError as exc:
        return str(exc)
    try:
        parse_target_mno(args.mno)
    except InvalidTargetMno as exc:
        return (f"--mno {args.mno!r} is not an operator identifier ({exc.defect}); give the "
                "peer's PLMN as MCC-MNC (e.g. 001-02) or its home domain")
    if args.application is not None and not _APPLICATION.fullmatch(args.application):
        return (f"--application {args.application!r} is not a SIP token (RFC 3261 section "
                "25.1): letters, digits and .!%*_+`'~- only, at most 64")
    return None


def _ue(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        print(f"ueconnect ue {args.action}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


async def run(args: argparse.Namespace, *, stop: asyncio.Event | None = None,
              out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the parsed `ueconnect ue` command; the exit status. `stop` ends listen and register
    --stay (0) and cuts a registration or connect short (130) (default: SIGINT and SIGTERM set
    it); `out`/`err` default to stdout/stderr."""
    io = _Io(out or sys.stdout, err or sys.stderr)
    if args.action is None and not args.check:  # usage before reading the file
        io.error("ueconnect ue: give an ACTION (register, listen, connect) or --check; "
                 "see `ueconnect ue --help`")
        return EXIT_USAGE
    problem = _connect_usage(args) if args.action == "connect" else None
    if problem is not None:
        io.error(f"ueconnect ue connect: {problem}")
        return EXIT_USAGE
    try:
        config, rules = load_ue_config(args.config)
    except ConfigError as exc:  # a file with problems fails as under `mno`: 1, not usage
        print_config_error(exc, io.err)
        return EXIT_FAILED
    if args.check:
        rules_text = "no [rules]" if rules is None else f"{len(rules.rules)} rule(s)"
        io.say(f"{args.config}: OK ({config.impu} via P-CSCF {HostPort(*config.pcscf)}, "
               f"transport policy {config.transport_policy}, {rules_text})")
        if args.action is None:
            return EXIT_OK
    async with _stopping(stop) as stopped:
        if args.action == "connect":
            # Ctrl-C or SIGTERM cuts it short (exit 130), closing on the way out (BYE,
            # un-register) rather than leaving the operators a session and a binding.
            finished, code = await _until_stopped(_connect(args, config, rules, io), stopped)
            if finished:
                assert code is not None
                return code
            io.error("ueconnect ue connect: interrupted; what was open is closed")
            return EXIT_INTERRUPTED
        if args.action == "register":
            return await _register(args, config, rules, stopped, io)
        return await _listen(args, config, rules, stopped, io)


@dataclass
class _Io:
    out: TextIO
    err: TextIO

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def error(self, line: str) -> None:
        print(line, file=self.err, flush=True)


@contextlib.asynccontextmanager
async def _stopping(stop: asyncio.Event | None) -> AsyncIterator[asyncio.Event]:
    """`stop`, or an event SIGINT/SIGTERM set (where this loop can take signals)."""
    if stop is not None:
        yield stop
        return
    with stop_signals() as event:
        yield event


@contextlib.asynccontextmanager
async def _client(config: UeConfig, rules: RuleBook | None, io: _Io, action: str,
                  ask: AskCallback | None = None) -> AsyncIterator[UeClient | None]:
    """A started UeClient (None after printing why it could not start), closed on the way
    out: BYE on open connections, un-register."""
    try:
        client = await UeClient.start(config, rulebook=rules, ask=ask)
    except (OSError, SipError) as exc:
        io.error(f"ueconnect ue {action}: cannot bind on {config.bind_host}: {exc}")
        yield None
        return
    try:
        yield client
    finally:
        with contextlib.suppress(UeError, SipError, OSError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(client.close()), STOP_TIMEOUT)


async def _registered(client: UeClient, action: str, io: _Io,
                      expires: int = 600) -> Registered | None:
    try:
        return await client.register(expires=expires)
    except RegistrationFailed as exc:
        io.error(f"ueconnect ue {action}: {exc}")
        return None


_STOPPED = "stopped"
_T = TypeVar("_T")


async def _registered_unless_stopped(client: UeClient, action: str, io: _Io, stop: asyncio.Event,
                                     expires: int = 600) -> Registered | str | None:
    """`_registered`, or _STOPPED when `stop` (Ctrl-C, SIGTERM) is set first: a registrar
    that does not answer must not hold off Ctrl-C until the REGISTER times out (32 s, RFC 3261
    section 17.1.2.2 Timer F)."""
    finished, registered = await _until_stopped(_registered(client, action, io, expires), stop)
    if finished:
        return registered
    io.error(f"ueconnect ue {action}: stopped before the registrar answered; nothing is "
             "registered")
    return _STOPPED


async def _until_stopped(work: Coroutine[object, object, _T],
                         stop: asyncio.Event) -> tuple[bool, _T | None]:
    """(True, the result of `work`) when it finishes first; (False, None) when `stop` is set
    first, after cancelling `work` and letting its cleanup run (BYE, un-register)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        stopping.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False, None


def _binding(config: UeConfig, client: UeClient, registered: Registered) -> str:
    contact = client.ua.contact
    routes = ", ".join(str(r) for r in registered.service_route) or "none"
    aliases = ", ".join(str(a.uri) for a in registered.associated_uris) or "none"
    return (f"registered {config.impu} (impi {config.impi}) through P-CSCF "
            f"{HostPort(*config.pcscf)}: contact {contact}, expires {registered.expires} s, "
            f"Service-Route {routes}, associated URIs {aliases}"
            + (", outbound (RFC 5626)" if registered.outbound else ""))


# -- register ------------------------------------------------------------------------------------


async def _register(args: argparse.Namespace, config: UeConfig, rules: RuleBook | None,
                    stop: asyncio.Event, io: _Io) -> int:
    async with _client(config, rules, io, "register") as client:
        if client is None:
            return EXIT_FAILED
        registered = await _registered_unless_stopped(client, "register", io, stop,
                                                      args.expires)
        if registered == _STOPPED:  # --stay is told to stop; a plain register is cut short
            return EXIT_OK if args.stay else EXIT_INTERRUPTED
        if not isinstance(registered, Registered):
            return EXIT_FAILED
        io.say(_binding(config, client, registered))
        if args.stay:
            io.say("staying registered (refreshed before it expires); Ctrl-C or SIGTERM "
                   "un-registers and exits")
            await stop.wait()
    io.say(f"un-registered {config.impu} (Expires: 0)")
    return EXIT_OK


# -- listen --------------------------------------------------------------------------------------


@dataclass
class _Listener:
    io: _Io
    echo: bool
    once: bool
    stop: asyncio.Event
    connections: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def ask(self, inquiry: Inquiry) -> Decision:
        # No rule of the file or the flags decided: refuse, and say how to allow next time.
        self.io.say(f"inquiry {inquiry.inquiry}: no rule allows {inquiry.caller}; answering "
                    f"deny (allow it with --allow {_allow_form(inquiry.caller)} or --allow-all)")
        return Decision.DENY

    async def answers(self, queue: asyncio.Queue[SentAnswer]) -> None:
        while True:
            sent = await queue.get()
            inquiry, answer = sent.answered.inquiry, sent.answered.answer
            why = (f"rule {sent.answered.rule_id!r}" if sent.answered.rule_id is not None
                   else "no rule matched")
            self.io.say(f"inquiry from {inquiry.caller} (MNO {inquiry.caller_mno}, application "
                        f"{inquiry.application}): {answer.decision} by {why}; the operator "
                        f"took the answer with {sent.response.status_code}")

    async def incoming(self, connection: Connection) -> None:
        self.connections += 1
        self.io.say(f"connection from {connection.peer}: {_describe_path(connection.path)}, "
                    f"setup {connection.setup_ms:.1f} ms (Call-ID {connection.call_id})")
        received = echoed = 0
        why = "closed"
        try:
            while True:
                data = await connection.recv()
                received += 1
                if self.echo:
                    await connection.send(data)
                    echoed += 1
        except ConnectionClosed as closed:
            why = closed.why
        finally:
            self.io.say(f"connection from {connection.peer} ended ({why}): {received} "
                        f"datagrams received" + (f", {echoed} echoed" if self.echo else ""))
            if self.once:
                self.stop.set()

    def failed(self, peer: str, error: ConnectivityFailed) -> None:
        self.io.say(f"incoming session from {peer} failed: {error}")


def _allow_form(caller: str) -> str:
    text = caller.strip().strip("<>")
    return text if text.startswith("tel:") else f"'{text}'"


async def _listen(args: argparse.Namespace, config: UeConfig, rules: RuleBook | None,
                  stop: asyncio.Event, io: _Io) -> int:
    book = RuleBook(rules.rules if rules is not None else ())
    try:
        if args.allow_all:
            book.allow("cli-allow-all")
        for n, peer in enumerate(args.allow, 1):
            book.allow(f"cli-allow-{n}", peer=str(peer_uri(peer)))
    except (UeUsageError, InvalidRuleSet) as exc:
        io.error(f"ueconnect ue listen: --allow: {exc}")
        return EXIT_USAGE
    listener = _Listener(io, args.echo, args.once, stop)
    async with _client(config, book, io, "listen", ask=listener.ask) as client:
        if client is None:
            return EXIT_FAILED
        client.on_incoming = listener.incoming
        client.on_incoming_failed = listener.failed
        watcher = asyncio.get_running_loop().create_task(listener.answers(client.agent.answers))
        try:
            registered = await _registered_unless_stopped(client, "listen", io, stop)
            if registered == _STOPPED:
                return EXIT_OK
            if not isinstance(registered, Registered):
                return EXIT_FAILED
            io.say(_binding(config, client, registered))
            allowed = ("every caller" if args.allow_all else
                       f"{len(book.rules)} rule(s)" if book.rules else "nobody (no rules)")
            io.say(f"listening as {config.impu}: allowing {allowed}"
                   + ("; echoing datagrams" if args.echo else "")
                   + "; Ctrl-C or SIGTERM stops")
            await stop.wait()
        finally:
            watcher.cancel()
    io.say(f"stopped: {listener.connections} connection(s); un-registered {config.impu}")
    return EXIT_OK


# -- connect -------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    """What `connect` reports (the --json object)."""

    peer: str
    mno: str
    ok: bool = False
    error: str | None = None
    refusal: dict[str, object] | None = None
    path: DataPath | None = None
    setup_ms: float | None = None
    timings: dict[str, float] | None = None
    sent: int = 0
    received: int = 0
    rtts: list[float] = field(default_factory=list)
    ended: str | None = None

    def as_json(self) -> dict[str, object]:
        path = None if self.path is None else {
            "kind": self.path.kind, "local": list(self.path.local),
            "remote": list(self.path.remote)}
        rtt = None if not self.rtts else {"p50": round(percentile(self.rtts, 0.5), 3),
                                          "p95": round(percentile(self.rtts, 0.95), 3)}
        return {"ok": self.ok, "peer": self.peer, "mno": self.mno, "error": self.error,
                "refusal": self.refusal, "path": path,
                "setup_ms": None if self.setup_ms is None else round(self.setup_ms, 3),
                "timings": self.timings,
                "datagrams": {"sent": self.sent, "received": self.received},
                "rtt_ms": rtt, "ended": self.ended}  # fmt: skip


def _refusal(exc: ConnectRefused) -> tuple[dict[str, object], str]:
    todo = _WHAT_TO_DO.get(type(exc))
    if todo is None:
        todo = _OTHER_408 if exc.status == 408 else (
            "the peer or an operator answered without a ueconnect cause; see the status")
    return ({"status": exc.status, "reason": exc.reason, "cause": exc.cause,
             "error": type(exc).__name__, "meaning": exc.hint, "what_to_do": todo}, todo)


async def _connect(args: argparse.Namespace, config: UeConfig, rules: RuleBook | None,
                   io: _Io) -> int:
    outcome = _Outcome(args.peer, args.mno)
    try:
        code = await _connect_run(args, config, rules, io, outcome)
    except asyncio.CancelledError:
        if args.json:  # the one object, even when cut short
            outcome.error = outcome.error or "interrupted"
            io.say(json.dumps(outcome.as_json()))
        raise
    if args.json:
        io.say(json.dumps(outcome.as_json()))
    return code


async def _connect_run(args: argparse.Namespace, config: UeConfig, rules: RuleBook | None,
                       io: _Io, outcome: _Outcome) -> int:
    # --json: the one object goes to stdout, what would be said goes to stderr.
    say = io.error if args.json else io.say
    async with _client(config, rules, io, "connect") as client:
        if client is None:
            outcome.error = "cannot bind"
            return EXIT_FAILED
        registered = await _registered(client, "connect", io)
        if registered is None:
            outcome.error = "registration failed"
            return EXIT_FAILED
        say(f"registered {config.impu} through P-CSCF {HostPort(*config.pcscf)}")
        try:
            connection = await client.connect(args.peer, args.mno, application=args.application)
        except UeUsageError as exc:
            outcome.error = str(exc)
            io.error(f"ueconnect ue connect: {exc}")
            return EXIT_USAGE
        except ConnectRefused as exc:
            outcome.refusal, todo = _refusal(exc)
            outcome.error = str(exc)
            cause = f", cause {exc.cause}" if exc.cause is not None else ", no ueconnect cause"
            io.error(f"ueconnect ue connect: refused: {exc.status} {exc.reason}{cause} "
                     f"({type(exc).__name__}: {exc.hint})\n  what to do: {todo}")
            return EXIT_FAILED
        except (ConnectivityFailed, InvalidAnswer, ConnectError) as exc:
            outcome.error = str(exc)
            io.error(f"ueconnect ue connect: no connection: {exc}")
            return EXIT_FAILED
        outcome.path, outcome.setup_ms = connection.path, connection.setup_ms
        t = connection.timings
        outcome.timings = {"gather_ms": round(t.gather_ms, 3),
                           "signalling_ms": round(t.signalling_ms, 3),
                           "checks_ms": round(t.checks_ms, 3)}  # fmt: skip
        say(f"connected to {connection.peer} at {args.mno}: {_describe_path(connection.path)}, "
            f"setup {connection.setup_ms:.1f} ms (gather {t.gather_ms:.1f}, signalling "
            f"{t.signalling_ms:.1f}, checks {t.checks_ms:.1f})")
        try:
            await _ping(connection, args, outcome)
        finally:
            await connection.close()
        if outcome.ended is not None:
            outcome.error = f"the connection ended: {outcome.ended}"
            io.error(f"ueconnect ue connect: the connection ended early: {outcome.ended} "
                     f"({outcome.sent} of {args.count} datagrams sent)")
            return EXIT_FAILED
        rtt = (f", RTT p50 {percentile(outcome.rtts, 0.5):.2f} ms p95 "
               f"{percentile(outcome.rtts, 0.95):.2f} ms" if outcome.rtts else "")
        say(f"{outcome.sent} datagrams sent, {outcome.received} echoes received{rtt}")
        say("closed (BYE); un-registering")
    outcome.ok = True
    return EXIT_OK


async def _ping(connection: Connection, args: argparse.Namespace, outcome: _Outcome) -> None:
    """Send the datagrams, count the echoes (each sequence number once) and their RTTs."""
    sent_at: dict[int, float] = {}
    echoed: set[int] = set()
    all_back = asyncio.Event()

    async def receive() -> None:
        while True:
            data = await connection.recv()
            now = time.perf_counter()
            if not data.startswith(PING):
                continue
            try:
                seq = int(data[len(PING):])
            except ValueError:
                continue
            if seq in sent_at and seq not in echoed:
                echoed.add(seq)
                outcome.rtts.append((now - sent_at[seq]) * 1000)
                if len(echoed) == args.count:
                    all_back.set()

    receiver = asyncio.get_running_loop().create_task(receive())
    try:
        for seq in range(args.count):
            if receiver.done():
                break  # the connection ended
            sent_at[seq] = time.perf_counter()
            await connection.send(PING + str(seq).encode())
            outcome.sent += 1
            if seq + 1 < args.count and args.interval > 0:
                await asyncio.sleep(args.interval / 1000)
        if args.count and not receiver.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_back.wait(), args.wait / 1000)
    except ConnectionClosed as closed:
        outcome.ended = closed.why
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await receiver
            except ConnectionClosed as closed:
                outcome.ended = outcome.ended or closed.why
        outcome.received = len(echoed)


def _describe_path(path: DataPath | None) -> str:
    if path is None:
        return "no path (closed)"
    return (f"{path.kind} path, local {HostPort(*path.local)} -> remote "
            f"{HostPort(*path.remote)}")
