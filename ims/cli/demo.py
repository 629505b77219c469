"""`ueconnect demo`: the options, the checks that say why a run cannot happen here, and the
exit status. The demo itself (its scenarios, the two worlds, the steps, --serve, --play) is the
package ims.demo; its docstring tells the story.

Exit status: 0 when every step behaved; 1 when a step did not or the world could not start;
2 when the scenario cannot run here (options, no root, no terminal, a testbed tool missing);
130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from ims.cli.report import help_page
from ims.cli.testbed import delay_ms, namespace_prefix
from ims.demo.scenarios import SCENARIOS, Scenario

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
        **help_page(
            "Run Bill (Alpha) -> Dave (Beta) on the embedded default: DNS, both operators and "
            "both UEs on loopback, no root; or with --testbed in the network-namespace testbed "
            "(root). Steps print with their times, then the SIP ladder of the call; the ladder "
            "is also written as HTML under --out.",
            ["ueconnect demo",
             "ueconnect demo --scenario deny --json",
             "ueconnect demo --play",
             "ueconnect demo --serve --out ueconnect-demo",
             "sudo ueconnect demo --testbed --scenario unassisted --delay 20"],
            "exit status: 0 every step behaved as it should (for --scenario deny: Dave's "
            "refusal reached\nBill and nothing was left open; for unassisted: the UEs could "
            "not connect), or --serve\nwas stopped by Ctrl-C/SIGTERM; 1 a step did not, or "
            "the world could not start; 2 the\nscenario cannot run here (options, no root, "
            "no terminal, a testbed tool missing); 130\ninterrupted."),
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
        "--prefix", default=None, metavar="uec-NAME-", type=namespace_prefix,
        help="with --testbed: the namespace name prefix (default the testbed's, uec-)",
    )  # fmt: skip
    parser.add_argument(
        "--delay", type=delay_ms, default=None, metavar="MS",
        help="with --testbed: MS ms one-way on every link, 1 to 10000; default none (netem, "
        "else NFQUEUE; docs/testbed.md)",
    )  # fmt: skip
    parser.add_argument(
        "--state-dir", type=Path, default=None, metavar="DIR",
        help="with --testbed: the testbed's state directory (default the testbed's); a "
        "testbed already up there with the same options is used and left up",
    )  # fmt: skip
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with the outcome on stdout instead of the human view "
             "(the step lines go to stderr; the ladder is only written as HTML)",
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


def _cannot_play(args: argparse.Namespace) -> str | None:
    """Why --play cannot run with these options or here, else None."""
    if args.json or args.serve:
        other = "--json" if args.json else "--serve"
        return f"--play and {other} do not go together: --play draws the game in the terminal"
    if args.testbed:
        return ("--play runs on the embedded default only: in the testbed the game's ends run "
                "in the UE namespaces, away from this terminal; drop --play or --testbed")
    scenario: Scenario = SCENARIOS[args.scenario]
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
    # Imported here, not at the top: they pull in both operators and the UE, which every
    # other `ueconnect` command (and --help) would otherwise wait for.
    from ims.config import ConfigError
    from ims.demo.serve import serve
    from ims.demo.testbed_run import TestbedOptions
    from ims.demo.walk import run_scenario
    from ims.operator import OperatorError
    from ims.sip.errors import SipError
    from ims.sip.transport import BindError
    from ims.testbed.errors import TestbedError, TestbedUsageError, ToolMissing

    testbed = (TestbedOptions(args.nat, args.prefix, args.state_dir, args.delay)
               if args.testbed else None)
    where = "the testbed world" if testbed else "the embedded world"
    try:
        if args.serve:
            return asyncio.run(serve(args.out, testbed))
        scenario = SCENARIOS[args.scenario]
        return asyncio.run(run_scenario(args.out, scenario, args.json,
                                         interactive=args.play, testbed=testbed))
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
