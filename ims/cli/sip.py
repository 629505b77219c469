"""`ueconnect sip ...`: tools for operators working with SIP messages."""

from __future__ import annotations

import argparse
import sys

from ims.sip.checks import Valid, check_bytes


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "sip",
        help="SIP message tools",
        description="Tools for operators working with SIP messages.",
    )
    commands = parser.add_subparsers(dest="sip_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _usage(parser))

    check = commands.add_parser(
        "check",
        help="check captured SIP messages as an element would",
        description=(
            "Parse each FILE as one SIP message (the exact bytes, e.g. one UDP payload), apply "
            "the message-level checks of RFC 3261 (mandatory and single-valued headers, CSeq "
            "against the method, SIP version, Content-Length against the body, scalar ranges) "
            "and print one line per file: the file name, a tab, then 'valid', the status code "
            "and reason phrase an element would answer with, or 'drop' for a message that "
            "must be discarded. Exit status: 0 when all files are valid, 1 when any is not, "
            "2 when a file cannot be read."
        ),
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="a file holding one message")
    check.set_defaults(func=_check)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _check(args: argparse.Namespace) -> int:
    status = 0
    for name in args.files:
        try:
            with open(name, "rb") as f:
                data = f.read()
        except OSError as exc:
            print(f"{name}\terror: cannot read the file: {exc.strerror}", file=sys.stderr)
            status = 2
            continue
        verdict = check_bytes(data)
        print(f"{name}\t{verdict}", flush=True)
        if not isinstance(verdict, Valid) and status == 0:
            status = 1
    return status
