"""`ueconnect sip ...`: tools for operators working with SIP messages."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from ims.sip import fixed_route_proxy
from ims.sip.address import Address
from ims.sip.checks import Valid, check_bytes
from ims.sip.transport import BindError


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

    proxy = commands.add_parser(
        "proxy",
        help="run a stateful proxy that forwards to one next hop",
        description=(
            "Run a stateful SIP proxy (RFC 3261 section 16) in the foreground: requests outside "
            "a dialog are Record-Routed and forwarded to NEXT_HOP, in-dialog requests follow "
            "their Route set. Used by the interop tests and the benchmark; the operator roles "
            "are `ueconnect mno`. With --workers N > 1, worker i also binds PORT+1+i."
        ),
    )
    proxy.add_argument(
        "--listen", required=True, metavar="[udp:|tcp:]HOST:PORT", help="where to listen"
    )
    proxy.add_argument(
        "--next-hop", required=True, metavar="HOST:PORT", help="where initial requests go"
    )
    proxy.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    proxy.set_defaults(func=_proxy)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def parse_hostport(text: str, default_transport: str = "UDP") -> Address:
    """"[udp:|tcp:]HOST:PORT" (IPv6 as [::1]:5060) -> Address; ValueError naming the defect."""
    transport = default_transport
    head, sep, rest = text.partition(":")
    if sep and head.lower() in ("udp", "tcp"):
        transport, text = head.upper(), rest
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT with PORT 1-65535")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    return Address(transport, host, int(port_text))


def _proxy(args: argparse.Namespace) -> int:
    try:
        listen = parse_hostport(args.listen)
        next_hop = parse_hostport(args.next_hop, listen.transport)
    except ValueError as exc:
        print(f"ueconnect sip proxy: {exc}", file=sys.stderr)
        return 2
    if not 1 <= args.workers <= 64:
        print("ueconnect sip proxy: --workers must be within 1..64", file=sys.stderr)
        return 2
    if args.workers > 1 and listen.transport != "UDP":
        print("ueconnect sip proxy: several workers need UDP (SO_REUSEPORT)", file=sys.stderr)
        return 2
    print(f"proxy listening on {listen}, forwarding to {next_hop}", flush=True)
    try:
        fixed_route_proxy.run(listen, next_hop, args.workers)
    except BindError as exc:
        print(f"ueconnect sip proxy: {exc}", file=sys.stderr)
        return 1
    return 0


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
