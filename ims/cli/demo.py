"""`ueconnect demo`: the flow on the embedded default, as far as this build carries it.

Both operators (P-CSCF, S-CSCF, border), the embedded DNS server and two UEs run on loopback
in this process (ims/embedded.py). The demo walks TR 22.807 section 4.2.3's flows that exist
in this build: both UEs register with their own operator; Bill's UE asks for a connection to
Dave (Require: ueconnect, Target-MNO); Alpha locates Beta through ENUM and RFC 3263; Beta's
permission function asks Dave's UE, which allows; each operator relays its UE's side and adds
its relay to the SDP; Dave's UE answers; 100 datagrams go each way with their RTT; the call is
ended and every relay is released. Each step prints with its time, the SIP ladder of the call
prints at the end and is written as HTML. Exit status 0 only when every step behaved.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

from ims.config import ConfigError
from ims.dns.errors import DnsError
from ims.dns.locator import Locator, LocatorConfig
from ims.embedded import DemoSubscriber, EmbeddedWorld
from ims.operator import OperatorError
from ims.permission.bodies import Inquiry
from ims.permission.outcomes import Decision
from ims.sdp import (
    Candidate,
    CandidateType,
    IceCredentials,
    Origin,
    build_answer,
    build_offer,
    candidate_foundation,
    candidate_priority,
    negotiated_endpoints,
    parse_sdp,
    serialize_sdp,
)
from ims.sip.errors import SipError
from ims.sip.transport import BindError
from ims.sip.uri import SipUri, TelUri
from ims.sip.useragent import Call, IncomingCall, UserAgent
from ims.trace import TraceError, calls, read_trace, render_ladder, render_ladder_html
from ue_ua.agent import UeAgent

BETA_PLMN = "001-02"
HELP_HEADERS = [("Require", "ueconnect"), ("Supported", "ueconnect"), ("Target-MNO", BETA_PLMN)]
DATAGRAMS = 100  # each way


class _GameSocket(asyncio.DatagramProtocol):
    """A UE's application socket: Dave's echoes, Bill's collects the echoes."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.transport: asyncio.DatagramTransport | None = None
        self.received: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
        self.count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.count += 1
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)
        else:
            self.received.put_nowait((data, time.perf_counter()))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port


async def _game_socket(echo: bool) -> _GameSocket:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: _GameSocket(echo), local_addr=("127.0.0.1", 0)
    )
    return protocol


def _host_candidate(address: tuple[str, int]) -> Candidate:
    host, port = address
    return Candidate(
        candidate_foundation(CandidateType.HOST, host), 1, "UDP",
        candidate_priority(CandidateType.HOST), host, port, CandidateType.HOST,
    )  # fmt: skip


def _offer(address: tuple[str, int]) -> bytes:
    return serialize_sdp(
        build_offer(
            origin=Origin.for_address(address[0], "1"),
            credentials=IceCredentials.generate(secrets.token_bytes),
            candidates=[_host_candidate(address)],
        )
    )


def _answer(offer: bytes, address: tuple[str, int]) -> bytes:
    return serialize_sdp(
        build_answer(
            parse_sdp(offer),
            origin=Origin.for_address(address[0], "2"),
            credentials=IceCredentials.generate(secrets.token_bytes),
            candidates=[_host_candidate(address)],
        )
    )


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the end-to-end demo on loopback",
        description=(
            "Run Bill (Alpha) -> Dave (Beta) on the embedded default: DNS, both operators and "
            "both UEs on loopback, no root. Steps print with their times, then the SIP ladder "
            "of the call; the ladder is also written as HTML under --out. The exit status is 0 "
            "only when every step behaved as it should."
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("ueconnect-demo"),
        help="directory for the configs, stores, trace and ladder (default ./ueconnect-demo)",
    )
    parser.set_defaults(func=_demo)


class _Steps:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.failed = False

    async def run(self, name: str, work: Callable[[], Awaitable[str]]) -> bool:
        if self.failed:
            print(f"  skip {name}", flush=True)
            return False
        began = time.perf_counter()
        try:
            detail = await asyncio.wait_for(work(), 15)
        except (DnsError, SipError, OSError, TimeoutError) as exc:
            self.failed = True
            why = str(exc) or type(exc).__name__
            print(f"  FAIL {name}: {why}", flush=True)
            return False
        took = (time.perf_counter() - began) * 1000
        at = (time.perf_counter() - self.start) * 1000
        print(f"  [{at:7.1f} ms] ok   {name} ({took:.1f} ms)\n{'':22}{detail}", flush=True)
        return True


async def _scenario(out: Path) -> int:
    steps = _Steps()
    print("ueconnect demo: Bill (Alpha, PLMN 001-01) connects to Dave (Beta, PLMN 001-02)")
    async with EmbeddedWorld.start(out) as world:
        bill_sub, dave_sub = world.subscriber("Bill"), world.subscriber("Dave")
        print(
            f"  world: DNS 127.0.0.1:{world.dns.port}, Alpha P-CSCF {world.pcscf('Alpha')}, "
            f"Beta P-CSCF {world.pcscf('Beta')}"
        )
        bill = UserAgent(
            SipUri(host=bill_sub.domain, user=bill_sub.e164),
            display_name="Bill",
            outbound_proxy=world.pcscf("Alpha"),
        )
        dave = UserAgent(
            SipUri(host=dave_sub.domain, user=dave_sub.e164),
            display_name="Dave",
            outbound_proxy=world.pcscf("Beta"),
        )
        await bill.start()
        await dave.start()
        asked: list[Inquiry] = []

        async def dave_decides(inquiry: Inquiry) -> Decision:
            # Dave's game asks him; in the demo he says yes at once.
            asked.append(inquiry)
            return Decision.ALLOW

        agents = {
            "Bill": UeAgent(bill, home_domain=bill_sub.domain),
            "Dave": UeAgent(dave, home_domain=dave_sub.domain, ask=dave_decides),
        }
        offered: list[IncomingCall] = []
        calls_made: dict[str, Call] = {}
        bill_game, dave_game = await _game_socket(echo=False), await _game_socket(echo=True)

        async def answer(incoming: IncomingCall) -> None:
            offered.append(incoming)
            incoming.ring()
            body = _answer(incoming.request.body, dave_game.address)
            calls_made["dave"] = await incoming.accept(body, "application/sdp")

        dave.on_incoming = answer
        try:
            for sub in (bill_sub, dave_sub):

                async def reg(agent: UeAgent = agents[sub.name], sub: DemoSubscriber = sub) -> str:
                    got = await agent.register(
                        SipUri(host=sub.domain), username=sub.impi, password=sub.password
                    )
                    assoc = ", ".join(str(u) for u in got.associated_uris) or "-"
                    return f"200 OK, expires {got.expires} s, P-Associated-URI {assoc}"

                await steps.run(f"{sub.name} registers at {sub.operator} (digest)", reg)

            async def locate() -> str:
                locator = Locator(LocatorConfig.for_server("127.0.0.1", world.dns.port))
                uri = await locator.enum_lookup(dave_sub.e164)
                target = (await locator.locate_operator(BETA_PLMN))[0]
                return (
                    f"ENUM {dave_sub.e164} -> {uri}; PLMN {BETA_PLMN} -> {target.host} "
                    f"{target.address}:{target.port}"
                )

            await steps.run("where Alpha's border will find Dave (ENUM, RFC 3263)", locate)

            async def connect() -> str:
                call = await bill.call(
                    TelUri(dave_sub.e164),
                    extra=HELP_HEADERS,
                    body=_offer(bill_game.address),
                    content_type="application/sdp",
                )
                calls_made["bill"] = call
                pai = offered[0].request.headers.get("P-Asserted-Identity") if offered else None
                if not asked:
                    raise SipError("Beta connected the call without asking Dave")
                inquiry = asked[0]
                return (
                    f"Beta asked Dave (inquiry {inquiry.inquiry}: may {inquiry.caller} of "
                    f"{inquiry.caller_mno} connect?), Dave answered allow; 200 OK and ACK; "
                    f"Dave saw P-Asserted-Identity {pai}"
                )

            await steps.run(
                "Bill asks Alpha to connect him to Dave; Beta asks Dave for consent", connect
            )

            async def play() -> str:
                answer = negotiated_endpoints(parse_sdp(calls_made["bill"].remote_body))
                relays = [c for c in answer.candidates if c.type == CandidateType.RELAY]
                if len(relays) != 2 or bill_game.transport is None:
                    raise SipError("the answer does not carry both operators' relay candidates")
                target = (answer.default.address, answer.default.port)
                rtts: list[float] = []
                for i in range(DATAGRAMS):
                    sent = time.perf_counter()
                    bill_game.transport.sendto(f"move {i}".encode(), target)
                    data, got = await asyncio.wait_for(bill_game.received.get(), 2)
                    if data != f"move {i}".encode():
                        raise SipError(f"datagram {i} came back as {data!r}")
                    rtts.append((got - sent) * 1000)
                return (
                    f"{DATAGRAMS} datagrams each way via Alpha's relay {target[0]}:{target[1]} "
                    f"and Beta's relay, {dave_game.count} reached Dave; RTT p50 "
                    f"{_percentile(rtts, 0.5):.2f} ms, p95 {_percentile(rtts, 0.95):.2f} ms"
                )

            await steps.run("Bill and Dave exchange game datagrams (relay path)", play)

            async def hang_up() -> str:
                response = await calls_made["bill"].bye()
                await asyncio.wait_for(calls_made["dave"].ended.wait(), 5)
                open_legs = 1
                for _ in range(100):  # the gateways release in a task after the BYE
                    open_legs = sum(
                        len(op.gateway.open_legs()) + op.gateway.relay.open_sockets()
                        for op in world.operators.values()
                        if op.gateway is not None
                    )
                    if not open_legs:
                        break
                    await asyncio.sleep(0.02)
                if open_legs:
                    raise SipError(f"{open_legs} relay legs or sockets still open after BYE")
                return (
                    f"BYE {response.status_code} {response.reason}; both dialogs ended; "
                    "every relay leg and socket released"
                )

            await steps.run("Bill ends the session (BYE)", hang_up)
        finally:
            for game in (bill_game, dave_game):
                if game.transport is not None:
                    game.transport.close()
            for agent in agents.values():
                await agent.close()
            await bill.close()
            await dave.close()
    _show_ladder(world.trace, out)
    if steps.failed:
        print("demo: a step failed (see above)", file=sys.stderr)
        return 1
    print(
        "demo: done. Not in this build yet: CGN mappings through PCP (the embedded default "
        "relays), ICE checks, the lobby and the game itself."
    )
    return 0


def _show_ladder(trace: Path | None, out: Path) -> None:
    if trace is None or not trace.exists():
        return
    try:
        entries = read_trace(trace)
        invites = [c for c in calls(entries) if c.method == "INVITE"]
        if not invites:
            return
        call_id = invites[-1].call_id
        print("\nThe call's SIP ladder (from the operators' trace):")
        print(render_ladder(entries, call_id, width=140))
        html = out / "ladder.html"
        html.write_text(render_ladder_html(entries, call_id), encoding="utf-8")
        print(f"ladder written to {html}")
    except TraceError as exc:
        print(f"demo: could not draw the ladder: {exc}", file=sys.stderr)


def _demo(args: argparse.Namespace) -> int:
    # The seams log a warning on every use; the demo says it once, at the end.
    logging.getLogger("ims.seams").setLevel(logging.ERROR)
    try:
        return asyncio.run(_scenario(args.out))
    except BindError as exc:
        print(
            f"ueconnect demo: cannot start the embedded world: {exc}\n"
            "  Another `ueconnect demo` or `ueconnect mno` may be using the loopback plan's "
            "addresses (127.0.1.x, 127.0.2.x): stop it and run the demo again.",
            file=sys.stderr,
        )
        return 1
    except (OperatorError, ConfigError, SipError, OSError) as exc:
        print(f"ueconnect demo: cannot start the embedded world: {exc}", file=sys.stderr)
        return 1
