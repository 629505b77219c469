"""`ueconnect demo`: the flow on the embedded default, as far as this build carries it.

This build has the SIP core and the DNS interconnect; the operator roles, the permission
function and the connectivity gateway come with their issues. The demo therefore walks what
exists, on loopback: the embedded DNS server serving dns_zones/loopback, ENUM and RFC 3263
location of Dave's operator, and a call from Bill to Dave through a stateful proxy, each step
timed. Exit status 0 only when every step behaved as it should.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ims.dns.errors import DnsError
from ims.dns.locator import Locator, LocatorConfig
from ims.dns.server import start_server
from ims.sip.address import Address
from ims.sip.errors import SipError
from ims.sip.fixed_route_proxy import serve
from ims.sip.uri import TelUri, parse_uri
from ims.sip.useragent import IncomingCall, UserAgent

ZONES = Path(__file__).resolve().parents[2] / "dns_zones" / "loopback"
BILL = "+15550100001"
DAVE = "+15550100002"
BETA_PLMN = "001-02"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the end-to-end demo on loopback",
        description=(
            "Run Bill -> Dave on the embedded default (loopback, no root): DNS, operator "
            "location, and a call through a stateful proxy. Steps print with their times; the "
            "exit status is 0 only when every step behaved as it should."
        ),
    )
    parser.add_argument(
        "--zones", type=Path, default=ZONES, help=f"zone directory to serve (default {ZONES})"
    )
    parser.set_defaults(func=_demo)


class _Steps:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.failed = False

    async def run(self, name: str, work: Callable[[], Awaitable[str]]) -> str | None:
        began = time.perf_counter()
        try:
            detail = await asyncio.wait_for(work(), 10)
        except (DnsError, SipError, OSError, TimeoutError) as exc:
            self.failed = True
            print(f"  FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            return None
        took = (time.perf_counter() - began) * 1000
        at = (time.perf_counter() - self.start) * 1000
        print(f"  [{at:7.1f} ms] ok   {name} ({took:.1f} ms): {detail}", flush=True)
        return detail


async def _scenario(zones: Path) -> int:
    steps = _Steps()
    print("ueconnect demo: Bill (Alpha) connects to Dave (Beta) on loopback")
    async with await start_server(zones, "127.0.0.1", 0) as dns:
        locator = Locator(LocatorConfig.for_server("127.0.0.1", dns.port))
        print(f"  DNS: embedded server for {zones} on 127.0.0.1:{dns.port}")

        found: dict[str, str] = {}

        async def enum() -> str:
            found["dave"] = await locator.enum_lookup(DAVE)
            return f"{DAVE} -> {found['dave']}"

        async def operator() -> str:
            targets = await locator.locate_operator(BETA_PLMN)
            first = targets[0]
            return (
                f"PLMN {BETA_PLMN} -> {first.host} {first.address}:{first.port}/{first.transport}"
            )

        await steps.run("ENUM lookup of Dave's number (RFC 6116)", enum)
        await steps.run("locate Dave's operator (TS 23.003, RFC 3263)", operator)

        dave = UserAgent(TelUri(DAVE), display_name="Dave")
        bill = UserAgent(TelUri(BILL), display_name="Bill")
        await dave.start()
        await bill.start()
        stop, ready = asyncio.Event(), asyncio.Event()
        assert dave.contact is not None and dave.contact.port is not None
        proxy_port = _free_udp_port()
        proxy_task = asyncio.create_task(
            serve(
                Address("UDP", "127.0.0.1", proxy_port),
                Address("UDP", "127.0.0.1", dave.contact.port),
                ready=ready,
                stop=stop,
            )
        )

        async def answer(incoming: IncomingCall) -> None:
            incoming.ring()
            await incoming.accept(b"v=0\r\n", "application/sdp")

        dave.on_incoming = answer
        try:
            await asyncio.wait_for(ready.wait(), 5)
            bill.outbound_proxy = Address("UDP", "127.0.0.1", proxy_port)
            target = parse_uri(found["dave"]) if "dave" in found else TelUri(DAVE)

            async def call() -> str:
                placed = await bill.call(target, to=TelUri(DAVE), extra=[("X-Demo", "ueconnect")])
                bye = await placed.bye()
                return f"INVITE -> 200 -> ACK -> BYE -> {bye.status_code} via proxy :{proxy_port}"

            await steps.run("Bill calls Dave through a stateful proxy", call)
        finally:
            stop.set()
            await proxy_task
            await bill.close()
            await dave.close()
    if steps.failed:
        print("demo: a step failed (see above)", file=sys.stderr)
        return 1
    print(
        "demo: done. Operator roles, permission inquiry and the data path arrive with their "
        "issues; this build shows the SIP core and DNS interconnect they stand on."
    )
    return 0


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _demo(args: argparse.Namespace) -> int:
    if not args.zones.is_dir():
        print(f"ueconnect demo: no zone directory {args.zones}; pass --zones DIR", file=sys.stderr)
        return 2
    return asyncio.run(_scenario(args.zones))
