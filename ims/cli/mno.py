"""`ueconnect mno`: run one operator (MNO) from its TOML file, check the file, or list what
its connectivity gateway holds open (from the store, also while it runs or after a crash)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import ipaddress
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ims.cli.report import help_page, print_config_error
from ims.cli.signals import stop_signals
from ims.config import (
    ConfigError,
    GatewayConfig,
    GatewayMode,
    HostPort,
    MetricsConfig,
    OperatorConfig,
    Role,
    load_config,
)
from ims.gateway.relay import RelayOffload
from ims.sip.errors import SipError
from ims.store import PcpMappingRecord, RelayRecord, StoreError, open_store

if TYPE_CHECKING:
    from ims.operator import Operator

_ROLES = [role.value for role in Role]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "mno", help="run one operator (MNO) from its TOML file, or check the file",
        **help_page(
            "Run the roles an operator's configuration enables (docs/configuration.md) in the "
            "foreground until SIGINT/SIGTERM (then exit 0), or only validate the file with "
            "--check, or list what its gateway holds open with --list-open. Default: every "
            "role the file configures, /metrics where its [metrics] says.",
            ["ueconnect mno --config docs/examples/alpha.toml --check",
             "ueconnect mno --config docs/examples/alpha.toml",
             "ueconnect mno --config alpha.toml --role border --metrics-listen 127.0.1.3:9103",
             "ueconnect mno --config alpha.toml --list-open --json"],
            "exit status: 0 stopped by SIGINT/SIGTERM, or --check: the file is usable; 1 the "
            "file has\nproblems or the operator cannot start (an address in use, ...); 2 usage."),
    )
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the operator's TOML file, e.g. docs/examples/alpha.toml")
    parser.add_argument("--check", action="store_true",
                        help="validate the file, print every problem, exit 0 when it is usable")
    parser.add_argument("--role", action="append", choices=_ROLES, metavar="NAME",
                        help=f"run only this role ({', '.join(_ROLES)}); repeat for several; "
                             "default: every role the file configures")
    parser.add_argument("--metrics-listen", type=_metrics_listen, metavar="HOST:PORT|off",
                        help="serve /metrics here instead of the file's [metrics] listen, or "
                             "not at all (\"off\"): each process of an operator whose roles "
                             "run separately needs its own")
    parser.add_argument("--open", action="store_true",
                        help="print what the connectivity gateway ([gateway]) holds open, one "
                             "line per call leg, each time the process gets SIGUSR1 "
                             "(kill -USR1 PID)")
    parser.add_argument("--list-open", action="store_true",
                        help="print what the operator's gateway holds open (PCP mappings, "
                             "relay allocations) as its store records it, one line per call "
                             "leg, and exit; works while the operator runs and after a crash "
                             "(shows what the next start cleans up: PCP mappings are deleted "
                             "at the CGN, relay rows forgotten)")
    parser.add_argument("--json", action="store_true",
                        help="with --list-open: one JSON object instead of text")
    parser.set_defaults(func=_mno)


_OFF = "off"


def _metrics_listen(text: str) -> HostPort | str:
    if text.lower() == _OFF:
        return _OFF
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = 0
    if not sep or not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (an IP literal, [::1] for IPv6, and a port 1-65535) "
            "nor \"off\"")
    return HostPort(host, number)


def _mno(args: argparse.Namespace) -> int:
    # Usage first: a wrong combination is named before the file is read.
    if args.json and not args.list_open:
        print("ueconnect mno: --json goes with --list-open", file=sys.stderr)
        return 2
    for n, name in enumerate(args.role or ()):
        if name in args.role[:n]:
            print(f"ueconnect mno: --role {name} is given twice; give each role once",
                  file=sys.stderr)
            return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print_config_error(exc, sys.stderr)
        return 1
    if args.list_open and not args.check:  # reads the store only: whatever roles it has
        return list_open(config, as_json=args.json)
    roles = [Role(name) for name in args.role] if args.role else None
    missing = [role for role in roles or () if role not in config.roles]
    if missing:
        names = ", ".join(f"[{role.value}]" for role in missing)
        print(f"ueconnect mno: {args.config} has no {names} section for --role "
              f"{missing[0].value}; add the section, or drop the option (the file configures "
              f"{', '.join(config.roles)})", file=sys.stderr)
        return 1
    unrunnable = _needs_scscf(config, roles or config.roles)
    if unrunnable:
        # ims.operator refuses these at start; --check promises "usable", so it says so too.
        for line in unrunnable:
            print(line, file=sys.stderr)
        count = len(unrunnable)
        print(f"{config.source}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    if args.check:
        print(f"{args.config}: OK (roles: {', '.join(config.roles)})")
        return 0
    if args.metrics_listen is not None:
        metrics = None if args.metrics_listen == _OFF else MetricsConfig(args.metrics_listen)
        config = dataclasses.replace(config, metrics=metrics)
    return run_operator(config, roles, show_open=args.open)


def _needs_scscf(config: OperatorConfig, roles: Sequence[Role]) -> list[str]:
    """The `roles` of `config` that cannot run for want of [scscf], each as a problem line: the
    P-CSCF sends registrations, the border requests from peer operators, to the S-CSCF the
    file names, also when the role runs alone (--role)."""
    if config.scscf is not None:
        return []
    whys = {Role.PCSCF: "where registrations go", Role.BORDER: "where requests from peer "
            "operators go"}
    return [f"{config.source}: {role.value}: needs [scscf] in the same file ({whys[role]}); "
            f"add [scscf] with its listen address (`--role {role.value}` then runs only the "
            f"{role.value} here)" for role in roles if role in whys]


def run_operator(config: OperatorConfig, roles: Sequence[Role] | None = None, *,
                 show_open: bool = False) -> int:
    """Run `roles` (default: every configured role) in the foreground until SIGINT or
    SIGTERM; the exit status (1 when the operator cannot start)."""
    logging.basicConfig(format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    root = logging.getLogger()
    # [log] level, unless the command line (-v) asked for more.
    root.setLevel(min(root.level, logging.getLevelNamesMapping()[config.log.level]))
    try:
        return asyncio.run(_serve(config, roles, show_open))
    except KeyboardInterrupt:
        return 0


async def _serve(config: OperatorConfig, roles: Sequence[Role] | None,
                 show_open: bool = False) -> int:
    from ims.operator import Operator, OperatorError

    loop = asyncio.get_running_loop()
    try:
        with stop_signals() as stop:
            async with Operator.start(config, roles=roles) as operator:
                if show_open:  # before the banner: whoever reads it may signal at once
                    loop.add_signal_handler(
                        signal.SIGUSR1, lambda: print(describe_open(operator), flush=True))
                print(describe(operator), flush=True)
                await stop.wait()
                print(f"ueconnect mno: {config.operator.name} stopping", flush=True)
    except (OperatorError, StoreError, SipError, OSError) as exc:
        text = str(exc)  # OperatorError names the file already
        where = "" if text.startswith(str(config.source)) else f"{config.source}: "
        print(f"ueconnect mno: cannot run: {where}{text}{_bind_fix(exc)}", file=sys.stderr)
        return 1
    print(f"ueconnect mno: {config.operator.name} stopped", flush=True)
    return 0


_BIND_FIXES = {
    errno.EADDRINUSE: "; another process holds that address (another `ueconnect mno` of this "
                      "file, or a role run twice?): stop it, or give this listener another port",
    errno.EADDRNOTAVAIL: "; that address is not on any interface of this host: listen on one "
                         "of its addresses (`ip addr`), or add it",
    errno.EACCES: "; ports below 1024 need root (or CAP_NET_BIND_SERVICE): use a port from 1024",
}


def _bind_fix(exc: BaseException) -> str:
    """What to do about a listener that could not be bound, from the OSError behind `exc`."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _BIND_FIXES:
            return _BIND_FIXES[cause.errno]
        cause = cause.__cause__ or cause.__context__
    return ""


def describe(operator: Operator) -> str:
    """Where a running operator listens, one line per element, for the terminal."""
    from ims.operator import ROLE_NAMES

    config = operator.config
    identity = config.operator
    lines = [f"ueconnect mno: {identity.name} (PLMN {identity.plmn}, {identity.home_domain}) "
             "running; Ctrl-C stops it"]
    rows: list[tuple[str, str]] = []
    for element in operator.elements:
        listen = ", ".join(str(a) for a in element.listen)
        rows.append((ROLE_NAMES[element.role], f"{element.uri}  ({listen})"))
    server = operator.metrics_server
    rows.append(("metrics", server.url if server is not None else "off (no [metrics])"))
    rows.append(("trace", str(config.trace.path) if config.trace is not None
                 else "off (no [trace])"))
    rows.append(("gateway", _describe_gateway(config.gateway)
                 if operator.gateway is not None else "off (no [gateway], or mode off)"))
    rows.append(("store", f"{config.store.backend} {config.store.path}"))
    rows.append(("DNS", f"{config.dns.server} (ENUM under {config.dns.enum_suffix})"))
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name:<{width}}  {text}" for name, text in rows]
    return "\n".join(lines)


def describe_open(operator: Operator) -> str:
    """What the operator's connectivity gateway holds open now (`mno --open`, on SIGUSR1)."""
    gateway = operator.gateway
    if gateway is None:
        return "ueconnect mno: no [gateway] relay here: nothing is ever open"
    legs = gateway.open_legs()
    lines = [f"ueconnect mno: {len(legs)} call leg{'s' if len(legs) != 1 else ''} open, "
             f"{gateway.relay.open_sockets()} relay sockets"]
    lines += [f"  {leg.describe()}" for leg in legs]
    return "\n".join(lines)


# -- `--list-open`: the store's view -------------------------------------------------------------


def list_open(config: OperatorConfig, *, as_json: bool = False,
              now: float | None = None) -> int:
    """Print what the store records as open at this operator ([operator] name): each PCP
    mapping and relay allocation, its state ("open"; "left" by a run whose process is gone,
    which the next start deletes at the CGN; "lapsed" past its expiry). Exit status 1 when
    the store cannot be read."""
    from ims.gateway.pcp_recovery import run_gone

    when = time.time() if now is None else now
    owner = config.operator.name
    path = config.store.path
    if not path.exists():  # do not create a store only to find it empty
        mappings: tuple[PcpMappingRecord, ...] = ()
        relays: tuple[RelayRecord, ...] = ()
    else:
        try:
            with open_store(config.store) as store:
                mappings = store.allocations.mappings(owner)
                relays = store.allocations.relays(owner)
        except StoreError as exc:
            print(f"ueconnect mno: cannot read the store: {exc}", file=sys.stderr)
            return 1

    def state(holder_gone: bool, expires_at: float) -> str:
        return "lapsed" if expires_at <= when else "left" if holder_gone else "open"

    rows: list[dict[str, object]] = []
    for m in mappings:
        rows.append({
            "kind": "pcp", "call_id": m.call_id, "leg": m.leg, "opcode": m.opcode,
            "server": str(HostPort(m.server, m.server_port)),
            "protocol": m.protocol,
            "internal": str(HostPort(m.internal_address, m.internal_port)),
            "external": str(HostPort(m.external_address, m.external_port)),
            "peer": (str(HostPort(m.peer_address, m.peer_port))
                     if m.peer_address is not None and m.peer_port is not None else None),
            "lifetime": m.lifetime, "expires_at": m.expires_at,
            "expires_in": round(m.expires_at - when, 1),
            "state": state(run_gone(m.holder), m.expires_at),
            "run": m.holder.run_id, "host": m.holder.host, "pid": m.holder.pid,
        })
    for r in relays:
        rows.append({
            "kind": "relay", "call_id": r.call_id, "leg": r.leg,
            "caller_side": str(HostPort(r.relay_address, r.caller_side_port)),
            "callee_side": str(HostPort(r.relay_address, r.callee_side_port)),
            "caller_peer": r.caller_peer, "callee_peer": r.callee_peer,
            "expires_at": r.expires_at, "expires_in": round(r.expires_at - when, 1),
            "state": state(run_gone(r.holder), r.expires_at),
            "run": r.holder.run_id, "host": r.holder.host, "pid": r.holder.pid,
        })
    if as_json:
        print(json.dumps({"operator": owner, "store": str(path), "now": when, "legs": rows},
                         indent=2))
        return 0
    count = len(rows)
    print(f"ueconnect mno: {owner}: {count} call leg{'s' if count != 1 else ''} open "
          f"({len(mappings)} PCP mapping{'s' if len(mappings) != 1 else ''}, {len(relays)} "
          f"relay allocation{'s' if len(relays) != 1 else ''}) in {path}")
    for row in rows:
        print(f"  {_describe_row(row)}")
    return 0


_STATES = {
    "open": "",
    "left": "; left by a stopped run: the next start deletes it",
    "lapsed": "; lapsed: the next start forgets it",
}


def _describe_row(row: dict[str, object]) -> str:
    expires_in = float(str(row["expires_in"]))
    when = (f"expires in {expires_in:.0f} s" if expires_in > 0
            else f"expired {-expires_in:.0f} s ago")
    holder = f"run {row['run']} pid {row['pid']}{_STATES[str(row['state'])]}"
    head = f"{row['call_id']} {row['leg']}:"
    if row["kind"] == "pcp":
        peer = row["peer"] if row["peer"] is not None else "nobody yet (awaiting the answer)"
        return (f"{head} PCP {row['opcode']} at {row['server']} internal {row['internal']} "
                f"external {row['external']} peer {peer}, {when} ({holder})")
    callee = row["callee_peer"] if row["callee_peer"] is not None else "(awaiting the answer)"
    return (f"{head} relay caller {row['caller_peer']} <-> {row['caller_side']}, callee "
            f"{row['callee_side']} <-> {callee}, {when} ({holder})")


def _describe_gateway(section: GatewayConfig | None) -> str:
    """The banner's gateway line: the mode, where the relay listens, the CGN's PCP server."""
    if section is None:
        return "off (no [gateway])"
    relay = f"relay on {section.relay_address}"
    if section.relay_offload is not RelayOffload.NONE:
        relay += f" (forwarding in the kernel: relay_offload {section.relay_offload.value})"
    if section.mode is GatewayMode.PCP and section.pcp_server is not None:
        return (f"pcp: mappings on the CGN's PCP server {section.pcp_server}, lifetime "
                f"{section.pcp_lifetime} s; fallback {relay}")
    return relay
