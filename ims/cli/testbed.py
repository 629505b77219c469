"""`ueconnect testbed up|down|status`: the network-namespace testbed (needs root)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ims.cli.report import bounded_int, help_page
from ims.testbed.builder import TestbedBuilder, check_host
from ims.testbed.errors import (
    AlreadyUp,
    NamespaceTaken,
    NetemUnavailable,
    NotPermitted,
    StateUnreadable,
    TestbedError,
    TestbedUsageError,
    ToolMissing,
)
from ims.testbed.state import DEFAULT_STATE_DIR
from ims.testbed.topology import PREFIX, NatBehaviour, TestbedOptions, build_plan

# `status` exit codes, those of an LSB init script's status action (LSB Core, "Init Script
# Actions"): 0 running; 1 "dead and /var/run pid file exists" -- here a state recorded with
# parts missing (a failed or interrupted up); 3 not running -- nothing recorded; 4 status
# unknown -- not root, a tool missing, or the state unreadable.
STATUS_UP, STATUS_PARTIAL, STATUS_DOWN, STATUS_UNKNOWN = 0, 1, 3, 4
# `up` and `down` refused before touching anything because they cannot run on this host (not
# root, a tool missing): 2, as `ueconnect demo --testbed` says "cannot run here".
EXIT_CANNOT_RUN_HERE = 2
_CANNOT_RUN_HERE = (NotPermitted, ToolMissing, TestbedUsageError)
_UP_DOWN_STATUS = (
    "exit status: 0 done; 1 failed (the message says why and what is left); 2 cannot run "
    "here (not\nroot, a tool missing) or usage error: nothing was touched; 130 interrupted.")
# `up` is one command that exits: nothing of it stays to hold an NFQUEUE consumer, which the
# delay without netem needs for as long as the delay lasts; the world process does hold one.
NETEM_FALLBACKS = (
    "without sch_netem, a process that stays can delay instead: the testbed world "
    "(`sudo ueconnect demo --testbed --delay MS`, `TestbedWorld.start(delay_ms=MS)`) and the "
    "benchmark (`sudo python3 -m bench setup_time --delay MS`) fall back to NFQUEUE "
    "(ims/testbed/delay.py, needs iptables-legacy) and say so")


# argparse type of a one-way link delay (testbed up --netem-delay, demo --delay).
delay_ms = bounded_int(1, 10_000, noun="a whole number of milliseconds; give 1 to 10000",
                       unit=" ms")


def namespace_prefix(text: str) -> str:
    """argparse type of a namespace name prefix, checked by the testbed's own rule
    (TestbedOptions): the prefix names every namespace the testbed creates and removes."""
    try:
        TestbedOptions(prefix=text)
    except TestbedUsageError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, e.g. uec-lab1-") from None
    return text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "testbed", help="network-namespace testbed: UEs behind CGNs, cores, DNS (root)",
        **help_page(
            "Build, inspect and remove the network-namespace testbed (docs/testbed.md): each "
            "UE behind its operator's CGN (nftables NAT), the operators' cores and the DNS "
            "server on an inter-operator network. Needs root. `ueconnect demo --testbed` "
            "runs the demo in it.",
            ["sudo ueconnect testbed up",
             "sudo ueconnect testbed up --nat eim --prefix uec-lab1- --state-dir /tmp/lab1",
             "sudo ueconnect testbed status",
             "sudo ueconnect testbed down"]))

    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=usage)
    commands = parser.add_subparsers(dest="testbed_command", metavar="ACTION")

    def state_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                       help=f"where the record of what was created lives "
                            f"(default {DEFAULT_STATE_DIR})")
        p.add_argument("--show-commands", action="store_true",
                       help="print every ip/nft/sysctl/tc command as it runs")

    up = commands.add_parser(
        "up", help="build the testbed (a no-op when it is up already)",
        **help_page("Build the namespaces, links, CGN NAT rules and sysctls, and record "
                    "them under --state-dir; a testbed already up with the same options is "
                    "left as it is. On failure what was built is removed (unless "
                    "--keep-partial).",
                    ["sudo ueconnect testbed up",
                     "sudo ueconnect testbed up --nat eim --netem-delay 20"],
                    _UP_DOWN_STATUS))
    up.add_argument("--nat", choices=[n.value for n in NatBehaviour],
                    default=NatBehaviour.SYMMETRIC.value,
                    help="CGN mapping: symmetric = new random port per destination (default); "
                         "eim = endpoint-independent (source port kept)")
    up.add_argument("--netem-delay", type=delay_ms, metavar="MS",
                    help="one-way delay on the egress of every link interface, 1 to 10000 ms, "
                         "by tc netem; default none (needs the kernel's sch_netem; the "
                         "testbed world and the setup_time benchmark fall back to NFQUEUE "
                         "without it)")
    up.add_argument("--prefix", default=PREFIX, metavar="uec-NAME-", type=namespace_prefix,
                    help=f"namespace name prefix (default {PREFIX}); another prefix and "
                         "--state-dir make a second testbed beside the first")
    up.add_argument("--keep-partial", action="store_true",
                    help="on failure leave what was built (for inspection) instead of "
                         "removing it; `down` removes it later")
    state_dir(up)
    up.set_defaults(func=_up)

    down = commands.add_parser(
        "down", help="remove everything `up` created",
        **help_page("Remove exactly what `up` recorded under --state-dir (namespaces, "
                    "rules, sysctls), nothing else.",
                    ["sudo ueconnect testbed down",
                     "sudo ueconnect testbed down --state-dir /tmp/lab1"],
                    _UP_DOWN_STATUS))
    state_dir(down)
    down.set_defaults(func=_down)

    status = commands.add_parser(
        "status", help=f"what is up (exit {STATUS_UP} up, {STATUS_PARTIAL} partial, "
                       f"{STATUS_DOWN} down, {STATUS_UNKNOWN} unknown)",
        **help_page("Say whether the testbed recorded under --state-dir is up, each "
                    "namespace with its addresses, and namespaces named like the testbed's "
                    "that nobody recorded.",
                    ["sudo ueconnect testbed status",
                     "sudo ueconnect testbed status --state-dir /tmp/lab1"],
                    f"exit status (as an LSB init script's status): {STATUS_UP} up; "
                    f"{STATUS_PARTIAL} partial (a failed up: run down);\n{STATUS_DOWN} down "
                    f"(nothing recorded); {STATUS_UNKNOWN} unknown (not root, a tool missing, "
                    "the state\nunreadable: the message says which); 2 usage error."))
    state_dir(status)
    status.set_defaults(func=_status)


def _fail(command: str, message: str, status: int = 1) -> int:
    print(f"ueconnect testbed {command}: {message}", file=sys.stderr)
    return status


def _builder(args: argparse.Namespace) -> TestbedBuilder:
    log = (lambda line: print(f"+ {line}", file=sys.stderr)) if args.show_commands else None
    return TestbedBuilder(args.state_dir, log=log)


def _up(args: argparse.Namespace) -> int:
    try:
        options = TestbedOptions(nat=NatBehaviour(args.nat), netem_delay_ms=args.netem_delay,
                                 prefix=args.prefix)
        plan = build_plan(options)
        check_host(plan)
    except _CANNOT_RUN_HERE as exc:
        return _fail("up", str(exc), EXIT_CANNOT_RUN_HERE)
    except TestbedError as exc:
        return _fail("up", str(exc))
    builder = _builder(args)
    try:
        before = builder.state_file.load()
        state = builder.up(plan)
    except (AlreadyUp, NamespaceTaken, StateUnreadable) as exc:
        return _fail("up", str(exc))  # refused before touching anything: nothing to undo
    except TestbedError as exc:
        problem = f"{exc}\n{NETEM_FALLBACKS}" if isinstance(exc, NetemUnavailable) else str(exc)
        if args.keep_partial:
            return _fail("up", f"{problem}\nwhat was built is kept (state "
                               f"{builder.state_file.path}); `ueconnect testbed down` removes it")
        try:
            builder.down()
        except TestbedError as cleanup:
            return _fail("up", f"{problem}\nremoving the partial testbed failed too: {cleanup}; "
                               f"the state {builder.state_file.path} names what is left")
        return _fail("up", f"{problem}\nthe partial testbed was removed")
    again = before is not None and before.complete
    print(f"testbed {'already up' if again else 'up'}: --nat {options.nat.value}, "
          f"{len(state.namespaces)} namespaces ({options.prefix}*), state "
          f"{builder.state_file.path}")
    for warning in state.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _down(args: argparse.Namespace) -> int:
    builder = _builder(args)
    try:
        check_host(build_plan(TestbedOptions()))
    except _CANNOT_RUN_HERE as exc:
        return _fail("down", str(exc), EXIT_CANNOT_RUN_HERE)
    try:
        if builder.state_file.load() is None:
            print(f"no testbed recorded in {builder.state_file.path}; nothing to remove")
            return 0
        result = builder.down()
    except TestbedError as exc:
        return _fail("down", str(exc))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"testbed down: removed {len(result.removed)} namespaces"
          + (f" ({', '.join(result.removed)})" if result.removed else ""))
    return 0


def _status(args: argparse.Namespace) -> int:
    builder = _builder(args)
    try:
        check_host(build_plan(TestbedOptions()))
        status = builder.status()
    except TestbedError as exc:  # not root, a tool missing, the state unreadable
        return _fail("status", str(exc), STATUS_UNKNOWN)
    for stray in status.strays:
        print(f"note: namespace {stray} is not recorded as part of the testbed")
    if status.state is None:
        print(f"testbed down (no state in {builder.state_file.path})")
        return STATUS_DOWN
    opts = status.state.options
    delay = f"{opts.netem_delay_ms} ms" if opts.netem_delay_ms is not None else "none"
    print(f"testbed {'up' if status.up else 'PARTIAL (a failed up? run down)'}: "
          f"--nat {opts.nat.value}, netem delay {delay}, state {builder.state_file.path}")
    for ns in status.namespaces:
        print(f"  {ns.name:<20} {'present' if ns.present else 'MISSING':<8} {ns.purpose}")
        for line in ns.addresses:
            print(f"      {' '.join(line.split())}")
    for warning in status.state.warnings:
        print(f"warning: {warning}")
    return STATUS_UP if status.up else STATUS_PARTIAL
