"""The operators do what docs/extension.md says, end to end on loopback:

- section 4: a tel: Request-URI is looked up in ENUM first, its answer winning over Target-MNO
  (Frank, +15550100005, ported from Beta to Alpha); a sip: Request-URI whose domain Target-MNO
  contradicts is answered 400;
- sections 3 and 4: the callee's UE gets neither Target-MNO nor `Proxy-Require: ueconnect`;
- section 3, flow 10.3: the originating border sends `Proxy-Require: ueconnect` to the peer
  operator; a peer border without the extension answers 420 with `Unsupported: ueconnect`
  (RFC 3261 section 16.3 item 5), which the caller gets as cause 6 (section 7). The peer is
  Gamma (001-03), whose border is our plain proxy (ims.sip.fixed_route_proxy, no option tag
  supported) or Kamailio with its sanity module's Proxy-Require check, on 127.0.15.1.

Alpha and Beta run as in tests/test_operator_flows.py (free ports on 127.0.1.x / 127.0.2.x).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.sipp import free_udp_tcp_port
from ims.config import Role, load_config
from ims.dns import worlds
from ims.dns.server import start_server
from ims.operator import Operator
from ims.sip import fixed_route_proxy
from ims.sip.address import Address
from ims.sip.message import Request, Response
from ims.sip.uri import SipUri, parse_uri
from ims.sip.useragent import CallFailed, IncomingCall, UserAgent
from ims.store import Store, new_subscriber, open_store
from tests.test_operator_flows import (
    ALPHA,
    BETA,
    DOMAINS,
    FAST,
    HELP,
    NETS,
    PASSWORD,
    PEOPLE,
    PLMNS,
    Plan,
    _add_subscribers,
    _config_text,
    _impi,
    _zone_operator,
    run,
)
from ue_ua.errors import OperatorLacksExtension, refusal_of

HOST = "127.0.15.1"  # this file's own loopback address: UEs and Gamma's border
GAMMA = "ims.mnc003.mcc001.3gppnetwork.org"
FRANK = "+15550100005"  # ENUM: ported from Beta to Alpha (ims/dns/worlds.py)
KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
CAUSE_6 = 'ueconnect;cause=6;text="operator lacks the extension"'


@dataclass
class World:
    ops: dict[str, Operator]
    stores: dict[str, Store]
    ues: dict[str, UserAgent]
    gamma_border: Address


def _gamma(port: int) -> worlds.Operator:
    """Gamma, 001-03: only its border matters, a proxy on HOST without the extension."""
    return worlds.Operator(
        "Gamma", "001", "03", GAMMA,
        worlds.Role("ns1", "127.0.0.1", "::1", 53),
        (worlds.Role("pcscf", HOST, "::1", port), worlds.Role("scscf", HOST, "::1", port)),
        (worlds.Border("border1", HOST, "::1", port, 10, 60, port),),
    )


@asynccontextmanager
async def world(tmp_path: Path, register: tuple[str, ...]) -> AsyncIterator[World]:
    """Alpha (peering with Beta and Gamma) and Beta (peering with Alpha), the demo subscribers
    plus Frank at Alpha, the UEs in `register` registered."""
    async with AsyncExitStack() as stack:
        plans = {n: Plan(net, *(free_udp_tcp_port(f"127.0.{net}.{i}") for i in (1, 2, 3)))
                 for n, net in NETS.items()}
        gamma = Address("UDP", HOST, free_udp_tcp_port(HOST))
        zone_ops = [_zone_operator(PLMNS[n][0], PLMNS[n][1][-2:], plans[n]) for n in NETS]
        zone_ops.append(_gamma(gamma.port))
        zones = tmp_path / "zones"
        zones.mkdir()
        for name, text in worlds.render_world(worlds.World("t9", tuple(zone_ops))).items():
            (zones / name).write_text(text, encoding="ascii")
        dns = await stack.enter_async_context(await start_server(zones, "127.0.0.1", 0))
        stores: dict[str, Store] = {}
        ops: dict[str, Operator] = {}
        for n, (label, plmn) in PLMNS.items():
            others = [(PLMNS[o][0], PLMNS[o][1], f"127.0.{NETS[o]}.0/24")
                      for o in PLMNS if o != n]
            if n == "alpha":
                others.append(("Gamma", "001-03", "127.0.15.0/24"))
            peers = "".join(
                f'[[border.peers]]\nname = "{name}"\nplmn = "{peer}"\nadmit_from = ["{net}"]\n'
                for name, peer, net in others
            )
            path = tmp_path / f"{n}.toml"
            path.write_text(_config_text(label, plmn, plans[n], dns.port, peers))
            config = load_config(path)
            stores[n] = stack.enter_context(open_store(config.store))
            _add_subscribers(stores[n], n, config.realm)
            if n == "alpha":
                stores[n].subscribers.add(new_subscriber(
                    f"frank@{ALPHA}", [f"sip:{FRANK}@{ALPHA}", f"tel:{FRANK}"],
                    PASSWORD.format("frank"), config.realm, now=time.time(),
                ))
            ops[n] = await stack.enter_async_context(
                Operator.start(config, store=stores[n], timers=FAST))
        ues: dict[str, UserAgent] = {}
        people = {**PEOPLE, "frank": ("alpha", FRANK)}
        for name in register:
            op, number = people[name]
            ua = UserAgent(SipUri(host=DOMAINS[op], user=number), timers=FAST,
                           outbound_proxy=ops[op].address(Role.PCSCF))
            await ua.start(HOST)
            stack.push_async_callback(ua.close)
            impi = f"frank@{ALPHA}" if name == "frank" else _impi(name)
            await ua.register(SipUri(host=DOMAINS[op]), username=impi,
                              password=PASSWORD.format(name))
            ues[name] = ua
        yield World(ops, stores, ues, gamma)


async def _connect(w: World, caller: str, callee: str, target: str,
                   extra: list[tuple[str, str]]) -> Request:
    """Call, answer, hang up; the INVITE as the callee's UE received it."""
    task = asyncio.create_task(w.ues[caller].call(parse_uri(target), extra=extra))
    arrival = asyncio.create_task(w.ues[callee].incoming.get())
    await asyncio.wait((task, arrival), timeout=5, return_when=asyncio.FIRST_COMPLETED)
    if not arrival.done():
        arrival.cancel()
        await task  # the call failed: its CallFailed says how (or a timeout, if it hangs)
        raise AssertionError(f"{target} answered without reaching {callee}")
    incoming: IncomingCall = arrival.result()
    answered = await incoming.accept()
    call = await asyncio.wait_for(task, 5)
    await asyncio.wait_for(answered.acked.wait(), 5)
    assert (await call.bye()).status_code == 200
    return incoming.request


def _hosts(request: Request, name: str) -> list[str]:
    return [n.sip_uri.host for n in request.name_addrs(name)]


def _assert_nothing_for_operators_only(invite: Request) -> None:
    """Sections 3 and 4: what only operators read does not reach the callee's UE."""
    assert invite.headers.get_all("Target-MNO") == []
    assert invite.headers.get_all("Proxy-Require") == []


# --- section 4: resolution order ----------------------------------------------------------------


def test_section_4_enum_wins_over_target_mno_ported_number_across_operators(
        tmp_path: Path) -> None:
    """Dave (Beta) calls Frank naming Beta, Frank's operator before the port: ENUM says Alpha
    (RFC 6116, RFC 4769 npdi), so the call goes to Alpha, not to a 404 at Beta."""
    async def scenario() -> None:
        async with world(tmp_path, ("dave", "frank")) as w:
            invite = await _connect(w, "dave", "frank", f"tel:{FRANK}",
                                    [*HELP, ("Target-MNO", "001-02")])
            # Beta's border, then Alpha's border, S-CSCF and P-CSCF (nearest the UE first).
            assert _hosts(invite, "Record-Route") == [
                "127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.2.3"]
            _assert_nothing_for_operators_only(invite)

    run(scenario())


def test_section_4_enum_wins_over_target_mno_ported_number_same_operator(
        tmp_path: Path) -> None:
    """Bill (Alpha) calls Frank naming Beta: Frank is Alpha's subscriber now, so the call stays
    in Alpha (no border), instead of being sent to Beta."""
    async def scenario() -> None:
        async with world(tmp_path, ("bill", "frank")) as w:
            invite = await _connect(w, "bill", "frank", f"tel:{FRANK}",
                                    [*HELP, ("Target-MNO", "001-02")])
            assert _hosts(invite, "Record-Route") == ["127.0.1.1", "127.0.1.2", "127.0.1.1"]
            assert "127.0.1.3" not in " ".join(invite.headers.get_all("Via"))
            _assert_nothing_for_operators_only(invite)

    run(scenario())


@pytest.mark.parametrize(
    ("target", "target_mno"),
    [
        (f"sip:+15550100002@{BETA};user=phone", "001-01"),  # other operator's domain
        (f"sip:+15550100003@{ALPHA};user=phone", "001-02"),  # our own, Carol's
        (f"sip:+15550100002@{BETA};user=phone", ALPHA),  # home-domain form
    ],
    ids=["beta-uri-alpha-mno", "alpha-uri-beta-mno", "beta-uri-alpha-domain"],
)
def test_section_4_target_mno_contradicting_sip_request_uri_is_400(
        tmp_path: Path, target: str, target_mno: str) -> None:
    async def scenario() -> None:
        async with world(tmp_path, ("bill",)) as w:
            with pytest.raises(CallFailed) as failed:
                await w.ues["bill"].call(parse_uri(target),
                                         extra=[*HELP, ("Target-MNO", target_mno)])
            assert failed.value.status_code == 400
            assert "Target-MNO contradicts the Request-URI" in failed.value.reason

    run(scenario())


def test_section_4_target_mno_agreeing_with_sip_request_uri_connects(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path, ("bill", "dave")) as w:
            invite = await _connect(w, "bill", "dave", f"sip:+15550100002@{BETA};user=phone",
                                    [*HELP, ("Target-MNO", BETA)])
            _assert_nothing_for_operators_only(invite)

    run(scenario())


# --- sections 3 and 4: nothing of the operators' reaches the callee ----------------------------


def test_sections_3_4_callee_gets_no_target_mno_nor_proxy_require(tmp_path: Path) -> None:
    """Bill calls Dave with Target-MNO: Alpha's border adds Proxy-Require (section 3), Beta's
    P-CSCF delivers without it and without Target-MNO; a same-operator call likewise."""
    async def scenario() -> None:
        async with world(tmp_path, ("bill", "carol", "dave")) as w:
            invite = await _connect(w, "bill", "dave", "tel:+15550100002",
                                    [*HELP, ("Target-MNO", "001-02")])
            _assert_nothing_for_operators_only(invite)
            assert invite.headers.get("Require") == "ueconnect"  # the UE's, end to end
            invite = await _connect(w, "bill", "carol", "tel:+15550100003",
                                    [*HELP, ("Target-MNO", "001-01")])
            _assert_nothing_for_operators_only(invite)

    run(scenario())


# --- section 3, flow 10.3: a peer operator without the extension -------------------------------


async def _refused_by_gamma(w: World) -> Response:
    with pytest.raises(CallFailed) as failed:
        await w.ues["bill"].call(parse_uri("tel:+15550109999"),
                                 extra=[*HELP, ("Target-MNO", "001-03")])
    return failed.value.response


def _assert_cause_6(response: Response) -> None:
    """Section 7: 420, the phrase, Unsupported: ueconnect (RFC 3261 section 20.40) and
    Reason cause 6; the UE reads it as OperatorLacksExtension."""
    assert response.status_code == 420, response.reason
    assert response.reason == "Bad Extension (callee's operator lacks ueconnect)"
    assert response.headers.get_all("Unsupported") == ["ueconnect"]
    assert response.headers.get_all("Reason") == [CAUSE_6]
    refusal = refusal_of(response.status_code, response.reason,
                         response.headers.get_all("Reason"))
    assert isinstance(refusal, OperatorLacksExtension) and refusal.cause == 6


def test_section_3_peer_proxy_without_extension_420_is_cause_6(tmp_path: Path) -> None:
    """Our plain proxy as Gamma's border: no option tag supported, so Alpha's Proxy-Require
    makes it answer 420 (RFC 3261 section 16.3 item 5)."""
    async def scenario() -> None:
        async with world(tmp_path, ("bill",)) as w:
            ready, stop = asyncio.Event(), asyncio.Event()
            nowhere = Address("UDP", HOST, free_udp_tcp_port(HOST))
            proxy = asyncio.create_task(
                fixed_route_proxy.serve(w.gamma_border, nowhere, ready=ready, stop=stop))
            try:
                await asyncio.wait_for(ready.wait(), 5)
                _assert_cause_6(await _refused_by_gamma(w))
            finally:
                stop.set()
                await asyncio.wait_for(proxy, 5)

    run(scenario())


_KAMAILIO_CFG = """#!KAMAILIO
#!trydef LISTEN udp:127.0.15.1:5060
debug=1
log_stderror=yes
listen=LISTEN
children=1
disable_tcp=yes
dns=no
rev_dns=no
auto_aliases=no
use_dns_cache=off
loadmodule "sl.so"
loadmodule "sanity.so"
# No option tag is supported in Proxy-Require: a border that lacks the ueconnect extension.
modparam("sanity", "proxy_require", "")
request_route {
    # Check 512, Proxy-Require (RFC 3261 section 16.3 item 5): 420 with Unsupported.
    if (!sanity_check("512", "7")) {
        exit;
    }
    sl_send_reply("480", "Temporarily Unavailable");
}
"""


def _kamailio_missing() -> str | None:
    if shutil.which("kamailio") is None:
        return "kamailio not on PATH (Debian package kamailio provides /usr/sbin/kamailio)"
    if not (KAMAILIO_MODULES / "sanity.so").is_file():
        return f"kamailio's sanity module is not in {KAMAILIO_MODULES}"
    return None


@pytest.mark.skipif(_kamailio_missing() is not None, reason=str(_kamailio_missing()))
def test_section_3_kamailio_border_without_extension_420_is_cause_6(tmp_path: Path) -> None:
    """Kamailio 5.6 as Gamma's border, its sanity module checking Proxy-Require: a real
    third-party proxy refuses our Proxy-Require with 420 Unsupported: ueconnect, and Bill gets
    cause 6. Without the extension the same call passes Kamailio (its 480 reaches Bill): the
    420 is Proxy-Require's doing."""
    async def scenario() -> None:
        async with world(tmp_path, ("bill",)) as w:
            cfg = tmp_path / "kamailio.cfg"
            cfg.write_text(_KAMAILIO_CFG)
            rundir = tmp_path / "kamailio-run"
            rundir.mkdir()
            process = subprocess.Popen(
                ["kamailio", "-DD", "-E", "-f", str(cfg), "-L", str(KAMAILIO_MODULES),
                 "-Y", str(rundir), "-P", str(rundir / "kamailio.pid"), "-w", str(tmp_path),
                 "-m", "32", "-M", "4", "-A", f"LISTEN=udp:{HOST}:{w.gamma_border.port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            try:
                await asyncio.sleep(1.0)  # Kamailio forks its workers, then listens
                assert process.poll() is None, process.communicate()[1]
                _assert_cause_6(await _refused_by_gamma(w))
                with pytest.raises(CallFailed) as plain:
                    await w.ues["bill"].call(parse_uri("tel:+15550109999"),
                                             extra=[("Target-MNO", "001-03")])
                assert plain.value.status_code == 480
                assert not plain.value.response.headers.get_all("Reason")
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                assert process.stderr is not None
                process.stderr.close()

    run(scenario())
