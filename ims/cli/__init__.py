"""The `ueconnect` command line: one module per subcommand group, composed here.

Exit status, the same for every command: 0 done; 1 a runtime failure (a file with problems, a
refusal, a socket in use), the message naming the problem and the fix; 2 a usage error (bad
options or option values: argparse's `ueconnect CMD: error: ...`, or a combination the command
refuses); 130 interrupted by Ctrl-C before the command finished. A command that serves until
told to stop (mno, dns serve, pcp serve, ue listen, ue register --stay, demo --serve) exits 0
on SIGINT or SIGTERM: stopping is how it ends (ims/cli/signals.py). Some commands add their own
(testbed status: 0 up, 1 partial, 3 down, 4 unknown; testbed up/down and demo --testbed: 2
when they cannot run here, e.g. not root). A listing cut short by a closed pipe (`| head`)
exits 141 (128 + SIGPIPE) without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Each module exposes `register(subparsers)`; its parsers set `func(args) -> int`. Imported when
# the parser is built, inside main's Ctrl-C handling: the imports take a moment (the demo pulls
# in the whole operator), and Ctrl-C then must not print a traceback.
_COMMANDS = ("sip", "dns", "mno", "subscriber", "permission", "trace", "pcp", "testbed", "demo",
             "ue")
EXIT_INTERRUPTED = 130

_EXAMPLES = ("ueconnect demo",
             "ueconnect mno --config docs/examples/alpha.toml --check",
             "ueconnect subscriber list --config docs/examples/alpha.toml",
             "ueconnect ue --config ueconnect-demo/bill.toml register",
             "ueconnect COMMAND --help")
_EXIT_STATUS = (
    "exit status: 0 done; 1 failed (the message says why and what to do); 2 usage error;\n"
    "130 interrupted (Ctrl-C). Serving commands (mno, dns serve, pcp serve, ue listen,\n"
    "demo --serve) exit 0 when SIGINT or SIGTERM stops them.")


def build_parser() -> argparse.ArgumentParser:
    from ims.cli.report import help_page  # here: it imports ims.config

    parser = argparse.ArgumentParser(
        prog="ueconnect",
        **help_page("Operator-assisted UE-to-UE IP connectivity over SIP/IMS-style signalling "
                    "(3GPP TR 22.807 section 4.2): `demo` shows the whole flow on loopback; "
                    "`mno` runs an operator, `subscriber` provisions it, `ue` is a UE.",
                    _EXAMPLES, _EXIT_STATUS),
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="more log output (repeat for debug; default: warnings only)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"ims.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        level = logging.WARNING - 10 * min(args.verbose, 2)
        logging.basicConfig(level=level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return 2
        return int(func(args))
    except KeyboardInterrupt:
        print("ueconnect: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
