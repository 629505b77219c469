"""`ueconnect sip ...`: tools for operators working with SIP messages."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import signal
import sys
from collections.abc import Callable

from ims.cli.report import help_page
from ims.sip import fixed_route_proxy
from ims.sip.address import Address
from ims.sip.checks import Valid, check_bytes
from ims.sip.transport import BindError

# One message per file: a datagram is at most 65535 bytes and a stream message is bounded by
# the framer (ims.sip.framing: 32 KiB of header fields, 64 KiB of body); a larger file is the
# wrong file, and /dev/zero or a runaway pipe must not be read without end.
MAX_MESSAGE_FILE_BYTES = 1024 * 1024
# `sip check FILE | head`: the reader went away. Exit as a process killed by SIGPIPE shows in
# the shell (128 + 13), like 130 for Ctrl-C; quietly, since nobody reads any more.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

_CHECK_STATUS = (
    "exit status: 0 every FILE is a valid message; 1 one or more is not, or cannot be read\n"
    "(named on stderr); 2 usage error; 141 the reader of the output went away (`| head`).")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "sip",
        help="SIP message tools",
        **help_page(
            "Tools for operators working with SIP messages: check captured messages as an "
            "element would, or run a fixed-route stateful proxy (the interop tests and the "
            "benchmark use it; the operator roles are `ueconnect mno`).",
            ["ueconnect sip check capture/*.sip",
             "ueconnect sip proxy --listen udp:127.0.0.1:5070 --next-hop 127.0.0.1:5080"]),
    )
    commands = parser.add_subparsers(dest="sip_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _usage(parser))

    check = commands.add_parser(
        "check",
        help="check captured SIP messages as an element would",
        **help_page(
            "Parse each FILE as one SIP message (the exact bytes, e.g. one UDP payload), apply "
            "the message-level checks of RFC 3261 (mandatory and single-valued headers, CSeq "
            "against the method, SIP version, Content-Length against the body, scalar ranges) "
            "and print one line per file: the file name, a tab, then 'valid', the status code "
            "and reason phrase an element would answer with, or 'drop' for a message that "
            f"must be discarded. A file larger than {MAX_MESSAGE_FILE_BYTES >> 20} MiB is not "
            "one message and is not read.",
            ["ueconnect sip check invite.sip",
             "ueconnect sip check tests/data/rfc4475/*.sip | grep -v valid"],
            _CHECK_STATUS),
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="a file holding one message")
    check.set_defaults(func=_check)

    proxy = commands.add_parser(
        "proxy",
        help="run a stateful proxy that forwards to one next hop",
        **help_page(
            "Run a stateful SIP proxy (RFC 3261 section 16) in the foreground: requests outside "
            "a dialog are Record-Routed and forwarded to NEXT_HOP, in-dialog requests follow "
            "their Route set. Used by the interop tests and the benchmark; the operator roles "
            "are `ueconnect mno`. With --workers N > 1, worker i also binds PORT+1+i.",
            ["ueconnect sip proxy --listen udp:127.0.0.1:5070 --next-hop 127.0.0.1:5080",
             "ueconnect sip proxy --listen tcp:[::1]:5070 --next-hop [::1]:5080",
             "ueconnect sip proxy --listen 127.0.0.1:5070 --next-hop 127.0.0.1:5080 "
             "--workers 4"],
            "exit status: 1 cannot listen (the address is in use or not local); 2 usage "
            "error;\n130 interrupted (Ctrl-C): the proxy serves until then."),
    )
    proxy.add_argument(
        "--listen", required=True, metavar="[udp:|tcp:]HOST:PORT",
        help="where to listen, an IP literal and port (transport default udp)"
    )
    proxy.add_argument(
        "--next-hop", required=True, metavar="HOST:PORT",
        help="where initial requests go (transport default: that of --listen)"
    )
    proxy.add_argument("--workers", type=int, default=1,
                       help="worker processes, 1 to 64 (default 1; more need UDP)")
    proxy.set_defaults(func=_proxy)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def ip_literal(text: str) -> str:
    """An argparse type: an IPv4 or IPv6 address as written, e.g. for a listen or server
    address. Host names are refused rather than resolved: which address a name gives is the
    resolver's choice (127.0.0.1 or ::1 for localhost), and the command must bind or ask
    exactly where the user said."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IP address; give an IP literal, e.g. 127.0.0.1 or ::1 "
            "(host names are not resolved)") from None
    return text


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


def quiet_on_broken_pipe(command: Callable[[argparse.Namespace], int]
                         ) -> Callable[[argparse.Namespace], int]:
    """A command's `func` that, when the reader of its output goes away (`... | head`),
    stops without a traceback and exits EXIT_BROKEN_PIPE."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except BrokenPipeError:
            # The interpreter flushes stdout once more on the way out: into /dev/null, so
            # that this flush does not print "Exception ignored ... BrokenPipeError".
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, sys.stdout.fileno())
            finally:
                os.close(devnull)
            return EXIT_BROKEN_PIPE
    return run


@quiet_on_broken_pipe
def _check(args: argparse.Namespace) -> int:
    status = 0
    for name in args.files:
        data = _message_file(name)
        if data is None:
            status = 1
            continue
        verdict = check_bytes(data)
        print(f"{name}\t{verdict}", flush=True)
        if not isinstance(verdict, Valid):
            status = 1
    return status


def _message_file(name: str) -> bytes | None:
    """The bytes of one message file; None after saying on stderr why it cannot be checked."""
    try:
        with open(name, "rb") as f:
            data = f.read(MAX_MESSAGE_FILE_BYTES + 1)
    except OSError as exc:
        why = "is a directory" if isinstance(exc, IsADirectoryError) else exc.strerror or exc
        print(f"ueconnect sip check: cannot read {name}: {why}; give a file holding one "
              "SIP message", file=sys.stderr)
        return None
    if len(data) > MAX_MESSAGE_FILE_BYTES:
        print(f"ueconnect sip check: {name} is larger than {MAX_MESSAGE_FILE_BYTES >> 20} MiB, "
              "more than one SIP message; give a file holding one message", file=sys.stderr)
        return None
    return data
