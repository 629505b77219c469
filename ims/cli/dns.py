"""`ueconnect dns ...`: serve the zone files, check them, regenerate them, look things up."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ims.cli.signals import stop_signals
from ims.dns.errors import DnsError
from ims.dns.locator import Locator, LocatorConfig
from ims.dns.server import DEFAULT_ADDRESS, DEFAULT_PORT, start_server
from ims.dns.worlds import WORLDS, render_world
from ims.dns.zones import load_zone_set

# dns_zones/ beside the ims package in a source checkout.
ZONES_ROOT = Path(__file__).resolve().parents[2] / "dns_zones"


def _port(text: str) -> int:
    """An argparse type: a UDP/TCP port number, 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0..65535")
    return port


def _zones_dir(args: argparse.Namespace) -> Path:
    return Path(args.zones) if args.zones else ZONES_ROOT / args.world


def _add_zones_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--zones", metavar="DIR", help="directory of <origin>.zone files (overrides --world)"
    )
    parser.add_argument(
        "--world", choices=sorted(WORLDS), default="loopback",
        help="which dns_zones/ set to use (default: loopback)",
    )


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=DEFAULT_ADDRESS, metavar="ADDR",
                        help=f"DNS server address (default {DEFAULT_ADDRESS})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"DNS server port (default {DEFAULT_PORT})")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("dns", help="DNS interconnect: zone files, server, lookups")

    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=usage)
    commands = parser.add_subparsers(dest="dns_command", metavar="ACTION")

    serve = commands.add_parser("serve", help="run the embedded authoritative server")
    _add_zones_options(serve)
    serve.add_argument("--address", default=DEFAULT_ADDRESS,
                       help=f"listen address (default {DEFAULT_ADDRESS})")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT,
                       help=f"UDP and TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    serve.set_defaults(func=_serve)

    check = commands.add_parser("check", help="load and check a zone set, print its zones")
    _add_zones_options(check)
    check.set_defaults(func=_check)

    generate = commands.add_parser(
        "generate", help="write dns_zones/<world>/ from the address plan (ims/dns/worlds.py)"
    )
    generate.add_argument("--out", metavar="DIR", default=str(ZONES_ROOT),
                          help="root directory to write <world>/ into (default dns_zones/)")
    generate.set_defaults(func=_generate)

    enum = commands.add_parser("enum", help="ENUM: the SIP URI of an E.164 number")
    enum.add_argument("number", help="E.164 number, e.g. +15550100001")
    _add_server_options(enum)
    enum.set_defaults(func=_enum)

    locate = commands.add_parser("locate", help="RFC 3263: the servers of a domain or PLMN")
    locate.add_argument("target", help="home domain, or PLMN as MCC-MNC (e.g. 001-02)")
    locate.add_argument("--transport", choices=("udp", "tcp", "tls"))
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


def _enum(args: argparse.Namespace) -> int:
    try:
        print(asyncio.run(_locator(args).enum_lookup(args.number)))
    except DnsError as exc:
        print(f"ueconnect dns enum: {exc}", file=sys.stderr)
        return 1
    return 0


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
    except DnsError as exc:
        print(f"ueconnect dns locate: {exc}", file=sys.stderr)
        return 1
    return 0
