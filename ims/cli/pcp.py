"""`ueconnect pcp ...`: run the CGN's PCP server, or ask a PCP server for one mapping."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys

from ims.cli.report import help_page
from ims.cli.signals import stop_signals
from ims.cli.sip import ip_literal
from ims.pcp.aioclient import open_pcp_client
from ims.pcp.aioserver import DataPlane, start_pcp_server
from ims.pcp.client import MappingRequest
from ims.pcp.codec import Endpoint, Filter
from ims.pcp.constants import PROTOCOL_TCP, PROTOCOL_UDP, SERVER_PORT
from ims.pcp.errors import PcpError
from ims.pcp.nft import DEFAULT_TABLE, NftMappingTable, RecordingTable
from ims.pcp.server import PcpServerConfig, parse_addresses

_PROTOCOLS = {"udp": PROTOCOL_UDP, "tcp": PROTOCOL_TCP}


def _port(text: str) -> int:
    """A UDP port for --port: argparse names the option and the value when this fails."""
    if not text.isdigit() or not 1 <= int(text) <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number 1-65535")
    return int(text)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "pcp", help="PCP (RFC 6887): the CGN's server, one-shot requests",
        **help_page(
            "The Port Control Protocol (RFC 6887) as the testbed's CGNs speak it: `serve` runs "
            "the CGN's PCP server, writing each mapping as nftables rules (or printing them "
            "with --dry-run); `request` asks a PCP server for one MAP or PEER mapping, as the "
            "connectivity gateway does.",
            ["ueconnect pcp serve --listen 127.0.0.1 --port 15351 --external 198.51.100.1 "
             "--control 127.0.0.1 --dry-run",
             "ueconnect pcp request --server 127.0.0.1 --port 15351 --third-party 100.64.0.2 "
             "--internal-port 4000 --peer 198.51.100.2:5000"]))

    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=usage)
    commands = parser.add_subparsers(dest="pcp_command", metavar="ACTION")

    serve = commands.add_parser(
        "serve", help="serve PCP on UDP 5351 and write the mappings as nftables rules",
        **help_page(
            "Serve PCP (RFC 6887: MAP, PEER, FILTER, THIRD_PARTY from the --control hosts) "
            "until Ctrl-C or SIGTERM, granting mappings on --external and writing each as "
            "nftables rules in the table --table (root), or printing the rules with --dry-run "
            "(no root). Lifetimes are clamped to --min-lifetime..--max-lifetime.",
            ["sudo ueconnect pcp serve --listen 100.64.0.1 --external 198.51.100.1 "
             "--control 192.0.2.10 --internal-net 100.64.0.0/10",
             "ueconnect pcp serve --listen 127.0.0.1 --port 15351 --external 198.51.100.1 "
             "--dry-run"],
            "exit status: 0 stopped by Ctrl-C or SIGTERM; 1 cannot listen or nft failed (the "
            "message says\nwhich); 2 usage error (an option value, e.g. not an IP address)."))
    serve.add_argument("--listen", required=True, metavar="ADDR", type=ip_literal,
                       help="address to listen on (the CGN's inside address), an IP literal")
    serve.add_argument("--port", type=_port, default=SERVER_PORT,
                       help=f"UDP port (default {SERVER_PORT})")
    serve.add_argument("--external", required=True, metavar="ADDR", type=ip_literal,
                       help="the CGN's external address mappings are made on")
    serve.add_argument("--control", default="", metavar="ADDR[,ADDR...]",
                       help="hosts allowed THIRD_PARTY (the connectivity gateways); "
                            "default none: THIRD_PARTY is not supported")
    serve.add_argument("--internal-net", default="", metavar="CIDR[,CIDR...]",
                       help="subscriber prefixes served (default: any)")
    serve.add_argument("--quota", type=int, default=64,
                       help="mappings per subscriber address (default 64; RFC 6888 REQ-4)")
    serve.add_argument("--min-lifetime", type=int, default=120, metavar="S",
                       help="shortest lifetime granted (default 120)")
    serve.add_argument("--max-lifetime", type=int, default=86400, metavar="S",
                       help="longest lifetime granted (default 86400)")
    serve.add_argument("--table", default=DEFAULT_TABLE,
                       help=f"nftables table (family inet) to own (default {DEFAULT_TABLE})")
    serve.add_argument("--dry-run", action="store_true",
                       help="print the rules instead of running nft (no root needed)")
    serve.set_defaults(func=_serve)

    request = commands.add_parser(
        "request", help="ask a PCP server for one MAP or PEER mapping",
        **help_page(
            "Ask a PCP server for one mapping and print what it granted: the external "
            "endpoint, the lifetime and the nonce. With --peer a PEER mapping (RFC 6887 "
            "section 12), else MAP (section 11), narrowed by --filter; --lifetime 0 with the "
            "mapping's --nonce deletes it. Requests are retransmitted as section 8.1.1 says "
            "until --timeout.",
            ["ueconnect pcp request --server 127.0.0.1 --port 15351 --internal-port 4000",
             "ueconnect pcp request --server 100.64.0.1 --third-party 100.64.0.2 "
             "--internal-port 4000 --peer 198.51.100.2:5000",
             "ueconnect pcp request --server 100.64.0.1 --internal-port 4000 --lifetime 0 "
             "--nonce 0123456789abcdef01234567"],
            "exit status: 0 granted (or deleted); 1 refused, no answer, or the server cannot "
            "be reached (the\nmessage says which); 2 usage error (an option value or "
            "combination)."))
    request.add_argument("--server", required=True, metavar="ADDR", type=ip_literal,
                         help="PCP server address, an IP literal")
    request.add_argument("--port", type=_port, default=SERVER_PORT,
                         help=f"PCP server port (default {SERVER_PORT})")
    request.add_argument("--source", metavar="ADDR", type=ip_literal,
                         help="local address to send from (default: as routing picks)")
    request.add_argument("--protocol", choices=sorted(_PROTOCOLS), default="udp",
                         help="the mapping's protocol (default udp)")
    request.add_argument("--internal-port", type=int, required=True, metavar="PORT",
                         help="the internal port to map, 1 to 65535")
    request.add_argument("--third-party", metavar="ADDR", type=ip_literal,
                         help="ask on behalf of this internal address (THIRD_PARTY; default: "
                              "for this host)")
    request.add_argument("--peer", metavar="ADDR:PORT",
                         help="PEER mapping admitting only this remote endpoint (default: MAP)")
    request.add_argument("--filter", action="append", default=[], metavar="PREFIX[:PORT]",
                         help="MAP: admit only this remote prefix (and port); repeatable; "
                              "IPv6 as [2001:db8::/64]:PORT (default: any remote)")
    request.add_argument("--suggest", metavar="ADDR:PORT",
                         help="suggested external endpoint (default: none)")
    request.add_argument("--prefer-failure", action="store_true",
                         help="MAP: fail rather than take another external port")
    request.add_argument("--lifetime", type=int, default=3600, metavar="S",
                         help="requested lifetime (default 3600); 0 deletes (needs --nonce)")
    request.add_argument("--nonce", metavar="HEX",
                         help="mapping nonce (24 hex digits; default: a new one)")
    request.add_argument("--timeout", type=float, default=10.0, metavar="S",
                         help="give up after this long without an answer (default 10)")
    request.set_defaults(func=_request)


def _fail(command: str, message: str, status: int = 1) -> int:
    print(f"ueconnect pcp {command}: {message}", file=sys.stderr)
    return status


EXIT_USAGE = 2  # an option value or combination the command refuses (ims/cli/__init__.py)


def _serve(args: argparse.Namespace) -> int:
    try:
        networks = tuple(ipaddress.ip_network(n.strip())
                         for n in args.internal_net.split(",") if n.strip())
        config = PcpServerConfig(
            external_address=ipaddress.ip_address(args.external),
            control_addresses=parse_addresses(args.control),
            internal_networks=networks,
            quota=args.quota, min_lifetime=args.min_lifetime, max_lifetime=args.max_lifetime)
    except (PcpError, ValueError) as exc:
        return _fail("serve", str(exc), EXIT_USAGE)
    dataplane: DataPlane = (RecordingTable(log=lambda line: print(line, flush=True))
                            if args.dry_run else NftMappingTable(args.table))

    async def run() -> int:
        try:
            server = await start_pcp_server(config, args.listen, dataplane, args.port)
        except PcpError as exc:
            return _fail("serve", str(exc))
        except OSError as exc:
            return _fail("serve", f"cannot listen on {args.listen} port {args.port}: "
                                  f"{exc.strerror or exc}")
        control = ", ".join(sorted(map(str, config.control_addresses))) or "none"
        print(f"PCP server on {server.address} port {server.port}, external "
              f"{config.external_address}, THIRD_PARTY from {control}; Ctrl-C stops", flush=True)
        with stop_signals() as stop:
            async with server:
                await stop.wait()
        return 0

    return asyncio.run(run())


def parse_filter(text: str) -> Filter:
    """`198.51.100.0/24:5000`, `198.51.100.2`, `[2001:db8::/64]:5000` as a FILTER option."""
    port = "0"
    if text.startswith("["):
        prefix, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [PREFIX]:PORT")
            port = rest[1:]
    elif text.count(":") == 1:
        prefix, port = text.split(":")
    else:
        prefix = text
    network = ipaddress.ip_network(prefix, strict=False)
    if not port.isdigit() or int(port) > 0xFFFF:
        raise ValueError(f"{text!r}: port {port!r} is not 0-65535")
    # RFC 6887 section 13.3: IPv4 prefix lengths count the 96 bits of the IPv4-mapped prefix.
    length = network.prefixlen + (96 if network.version == 4 else 0)
    return Filter(length, int(port), network.network_address)


def _request(args: argparse.Namespace) -> int:
    try:
        req = MappingRequest(
            protocol=_PROTOCOLS[args.protocol], internal_port=args.internal_port,
            lifetime=args.lifetime or 1,
            remote_peer=Endpoint.parse(args.peer) if args.peer else None,
            third_party=ipaddress.ip_address(args.third_party) if args.third_party else None,
            filters=tuple(parse_filter(f) for f in args.filter),
            suggested_external=Endpoint.parse(args.suggest) if args.suggest else None,
            prefer_failure=args.prefer_failure)
        nonce = bytes.fromhex(args.nonce) if args.nonce else None
        if args.lifetime == 0 and nonce is None:
            raise ValueError("deleting (--lifetime 0) needs the mapping's --nonce")
    except (PcpError, ValueError) as exc:
        return _fail("request", str(exc), EXIT_USAGE)

    async def run() -> int:
        client = await open_pcp_client(args.server, port=args.port, local_address=args.source)
        async with client:
            kind = req.opcode.name
            if args.lifetime == 0:
                assert nonce is not None
                await client.release(req, nonce, timeout=args.timeout)
                print(f"deleted {kind} {args.protocol} internal port {req.internal_port} "
                      f"nonce {nonce.hex()}")
                return 0
            mapping_id, ready = await client.map(req, timeout=args.timeout, nonce=nonce)
            internal = Endpoint(req.third_party or client.client_address, req.internal_port)
            print(f"granted {kind} {args.protocol} internal={internal} external={ready.external} "
                  f"lifetime={ready.lifetime} nonce={client.core.mapping(mapping_id).nonce.hex()}",
                  flush=True)
            return 0

    try:
        return asyncio.run(run())
    except PcpError as exc:
        return _fail("request", str(exc))
    except OSError as exc:
        return _fail("request", f"cannot reach {args.server} port {args.port}: "
                                f"{exc.strerror or exc}")
