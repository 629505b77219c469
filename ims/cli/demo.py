"""`ueconnect demo`: the flow on the embedded default, as far as this build carries it.

Both operators (P-CSCF, S-CSCF, border), the embedded DNS server and two UEs run on loopback
in this process (ims/embedded.py). The demo walks TR 22.807 section 4.2.3's flows that exist
in this build: both UEs register with their own operator; Bill's UE asks for a connection to
Dave (Require: ueconnect, Target-MNO); Alpha locates Beta through ENUM and RFC 3263; Beta's
permission function asks Dave's UE, which allows; Dave's UE answers; the call is ended. The
connectivity gateway arrives with its issue and says so in the log. Each step prints with its
time, the SIP ladder of the call prints at the end and is written as HTML. Exit status 0 only
when every step behaved as it should.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ims.config import ConfigError
from ims.dns.errors import DnsError
from ims.dns.locator import Locator, LocatorConfig
from ims.embedded import DemoSubscriber, EmbeddedWorld
from ims.operator import OperatorError
from ims.permission.bodies import Inquiry
from ims.permission.outcomes import Decision
from ims.sip.errors import SipError
from ims.sip.transport import BindError
from ims.sip.uri import SipUri, TelUri
from ims.sip.useragent import Call, IncomingCall, UserAgent
from ims.trace import TraceError, calls, read_trace, render_ladder, render_ladder_html
from ue_ua.agent import UeAgent

BETA_PLMN = "001-02"
HELP_HEADERS = [("Require", "ueconnect"), ("Supported", "ueconnect"), ("Target-MNO", BETA_PLMN)]
ANSWER_SDP = (
    b"v=0\r\no=dave 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=application 9 udp octet-stream\r\n"
)
OFFER_SDP = ANSWER_SDP.replace(b"dave", b"bill")


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

        async def answer(incoming: IncomingCall) -> None:
            offered.append(incoming)
            incoming.ring()
            calls_made["dave"] = await incoming.accept(ANSWER_SDP, "application/sdp")

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
                    body=OFFER_SDP,
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

            async def hang_up() -> str:
                response = await calls_made["bill"].bye()
                await asyncio.wait_for(calls_made["dave"].ended.wait(), 5)
                return f"BYE {response.status_code} {response.reason}; both dialogs ended"

            await steps.run("Bill ends the session (BYE)", hang_up)
        finally:
            for agent in agents.values():
                await agent.close()
            await bill.close()
            await dave.close()
    _show_ladder(world.trace, out)
    if steps.failed:
        print("demo: a step failed (see above)", file=sys.stderr)
        return 1
    print(
        "demo: done. Not in this build yet: the connectivity gateway (Beta and Alpha log that "
        "none is configured), the data path and the game."
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
