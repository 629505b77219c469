"""`ueconnect dns ...`: serve the zone files, check them, regenerate them, look things up."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ims.cli.report import help_page
from ims.cli.signals import stop_signals
from ims.cli.sip import ip_literal, quiet_on_broken_pipe
from ims.dns.errors import DnsError, DnsUsageError
from ims.dns.locator import Locator, LocatorConfig
from ims.dns.server import DEFAULT_ADDRESS, DEFAULT_PORT, start_server
from ims.dns.worlds import WORLDS, render_world
from ims.dns.zones import load_zone_set

# dns_zones/ beside the ims package in a source checkout.
ZONES_ROOT = Path(__file__).resolve().parents[2] / "dns_zones"


def _port(text: str, low: int = 0) -> int:
    """An argparse type: a UDP/TCP port number, `low` (0: any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not low <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range {low}..65535")
    return port


def _server_port(text: str) -> int:
    """An argparse type: the port of a DNS server to ask, 1 to 65535."""
    return _port(text, low=1)


def _zones_dir(args: argparse.Namespace) -> Path:
    return Path(args.zones) if args.zones else ZONES_ROOT / args.world


def _add_zones_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--zones", metavar="DIR",
        help="directory of <origin>.zone files (overrides --world; default: none)"
    )
    parser.add_argument(
        "--world", choices=sorted(WORLDS), default="loopback",
        help="which dns_zones/ set to use (default: loopback)",
    )


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=DEFAULT_ADDRESS, metavar="ADDR", type=ip_literal,
                        help=f"DNS server address, an IP literal (default {DEFAULT_ADDRESS}: "
                             "`ueconnect dns serve`)")
    parser.add_argument("--port", type=_server_port, default=DEFAULT_PORT,
                        help=f"DNS server port (default {DEFAULT_PORT})")


_LOOKUP_STATUS = ("exit status: 0 found; 1 the DNS said no or did not answer (the message "
                  "says which);\n2 usage error (a malformed {what}, option or value).")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "dns", help="DNS interconnect: zone files, server, lookups",
        **help_page(
            "The DNS the operators find each other through: serve the zone files of "
            "dns_zones/ (ENUM under e164.arpa, each operator's home domain), check or "
            "regenerate them, and look up a number (ENUM) or an operator's SIP servers "
            "(RFC 3263) as the border does.",
            ["ueconnect dns serve",
             "ueconnect dns check --world testbed",
             "ueconnect dns enum +15550100002",
             "ueconnect dns locate 001-02"]))

    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=usage)
    commands = parser.add_subparsers(dest="dns_command", metavar="ACTION")

    serve = commands.add_parser(
        "serve", help="run the embedded authoritative server",
        **help_page(
            "Serve a zone set over UDP and TCP, authoritatively, until Ctrl-C or SIGTERM. "
            "The zones are loaded and checked first; a broken file stops the start with its "
            "name and line.",
            ["ueconnect dns serve",
             f"ueconnect dns serve --address ::1 --port {DEFAULT_PORT}",
             "ueconnect dns serve --zones my-zones/ --port 0"],
            "exit status: 0 stopped by Ctrl-C or SIGTERM; 1 a zone file is broken or the "
            "address cannot be\nbound (the message says which); 2 usage error."))
    _add_zones_options(serve)
    serve.add_argument("--address", default=DEFAULT_ADDRESS, type=ip_literal, metavar="ADDR",
                       help=f"listen address, an IP literal (default {DEFAULT_ADDRESS})")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT,
                       help=f"UDP and TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    serve.set_defaults(func=_serve)

    check = commands.add_parser(
        "check", help="load and check a zone set, print its zones",
        **help_page("Load a zone set as `serve` would and print each zone: its origin, how "
                    "many names and RRsets, and its file.",
                    ["ueconnect dns check", "ueconnect dns check --zones my-zones/"],
                    "exit status: 0 every zone loads; 1 a file is broken (named with its "
                    "line); 2 usage error."))
    _add_zones_options(check)
    check.set_defaults(func=_check)

    generate = commands.add_parser(
        "generate", help="write dns_zones/<world>/ from the address plan (ims/dns/worlds.py)",
        **help_page("Write the zone files of every world (loopback, testbed) from the address "
                    "plan in ims/dns/worlds.py into OUT/<world>/, overwriting them, and print "
                    "each file written.",
                    ["ueconnect dns generate", "ueconnect dns generate --out /tmp/zones"],
                    "exit status: 0 written; 1 a file cannot be written; 2 usage error."))
    generate.add_argument("--out", metavar="DIR", default=str(ZONES_ROOT),
                          help="root directory to write <world>/ into (default dns_zones/)")
    generate.set_defaults(func=_generate)

    enum = commands.add_parser(
        "enum", help="ENUM: the SIP URI of an E.164 number",
        **help_page("Ask ENUM (RFC 6116) for the SIP URI of an E.164 number, as the "
                    "originating operator does for a tel: URI, and print it.",
                    ["ueconnect dns enum +15550100002",
                     "ueconnect dns enum +15550100002 --server 192.0.2.53 --port 53"],
                    _LOOKUP_STATUS.format(what="number")))
    enum.add_argument("number", help="E.164 number, '+' then the digits, e.g. +15550100001")
    _add_server_options(enum)
    enum.set_defaults(func=_enum)

    locate = commands.add_parser(
        "locate", help="RFC 3263: the servers of a domain or PLMN",
        **help_page("Find the SIP servers of a home domain (RFC 3263: NAPTR, SRV, then A/AAAA) "
                    "or of an operator given by its PLMN (MCC-MNC, looked up under its 3GPP "
                    "home domain), and print them in the order to try.",
                    ["ueconnect dns locate 001-02",
                     "ueconnect dns locate ims.mnc002.mcc001.3gppnetwork.org --transport tcp"],
                    _LOOKUP_STATUS.format(what="domain or PLMN")))
    locate.add_argument("target", help="home domain, or PLMN as MCC-MNC (e.g. 001-02)")
    locate.add_argument("--transport", choices=("udp", "tcp", "tls"),
                        help="only this transport (default: what the NAPTR records offer)")
    locate.add_argument("--sips", action="store_true", help="a sips: URI (TLS only)")
    _add_server_options(locate)
    locate.set_defaults(func=_locate)


def _serve(args: argparse.Namespace) -> int:
    zones = _zones_dir(args)

    async def run() -> int:
        try:
            server = await start_server(zones, args.address, args.port)
        except DnsError as exc:
            print(f"ueconnect dns serve: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"ueconnect dns serve: cannot listen on {args.address} port {args.port}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        names = ", ".join(sorted(o.to_text() for o in server.zone_set.zones))
        print(f"serving {names} from {zones}", flush=True)
        print(f"listening on {server.address} port {server.port} (UDP and TCP); Ctrl-C stops",
              flush=True)
        with stop_signals() as stop:
            async with server:
                await stop.wait()
        return 0

    return asyncio.run(run())


@quiet_on_broken_pipe
def _check(args: argparse.Namespace) -> int:
    zones = _zones_dir(args)
    try:
        zone_set = load_zone_set(zones)
    except DnsError as exc:
        print(f"ueconnect dns check: {exc}", file=sys.stderr)
        return 1
    for origin, zone in sorted(zone_set.zones.items()):
        count = sum(len(node.rdatasets) for node in zone.nodes.values())
        print(f"{origin}: {len(zone.nodes)} names, {count} RRsets ({zone_set.files[origin]})")
    return 0


@quiet_on_broken_pipe
def _generate(args: argparse.Namespace) -> int:
    root = Path(args.out)
    for name, world in sorted(WORLDS.items()):
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        for file_name, text in sorted(render_world(world).items()):
            (directory / file_name).write_text(text, encoding="ascii")
            print(directory / file_name)
    return 0


def _locator(args: argparse.Namespace) -> Locator:
    return Locator(LocatorConfig.for_server(args.server, args.port))


@quiet_on_broken_pipe
def _enum(args: argparse.Namespace) -> int:
    try:
        print(asyncio.run(_locator(args).enum_lookup(args.number)))
    except DnsUsageError as exc:  # the number: a usage error, not a lookup that failed
        print(f"ueconnect dns enum: {exc}", file=sys.stderr)
        return 2
    except DnsError as exc:
        print(f"ueconnect dns enum: {exc}", file=sys.stderr)
        return 1
    return 0


@quiet_on_broken_pipe
def _locate(args: argparse.Namespace) -> int:
    async def run() -> list[str]:
        locator = _locator(args)
        if args.transport or args.sips or not any(c.isdigit() for c in args.target[:1]):
            targets = await locator.locate(args.target, transport=args.transport,
                                           secure=args.sips)
        else:
            targets = await locator.locate_operator(args.target)
        return [str(t) for t in targets]

    try:
        for line in asyncio.run(run()):
            print(line)
    except DnsUsageError as exc:  # the target or --sips with --transport: a usage error
        print(f"ueconnect dns locate: {exc}", file=sys.stderr)
        return 2
    except DnsError as exc:
        print(f"ueconnect dns locate: {exc}", file=sys.stderr)
        return 1
    return 0
