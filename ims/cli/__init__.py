"""The `ueconnect` command line: one module per subcommand group, composed here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ims.cli import demo, dns, mno, pcp, permission, sip, subscriber, testbed, trace, ue

# Each module exposes `register(subparsers)`; its parsers set `func(args) -> int`.
_COMMANDS = (sip, dns, mno, subscriber, permission, trace, pcp, testbed, demo, ue)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ueconnect",
        description=(
            "Operator-assisted UE-to-UE IP connectivity over SIP/IMS-style signalling "
            "(3GPP TR 22.807 section 4.2)."
        ),
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
