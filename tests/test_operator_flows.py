"""Two operators in-process on loopback: registration, same- and other-operator calls,
refusals. The embedded DNS server serves the demo world's zones rendered with free ports,
plus Gamma (001-03), an operator whose borders never answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.sipp import free_udp_tcp_port as _free_port
from ims.config import Role, load_config
from ims.dns import worlds
from ims.dns.server import start_server
from ims.operator import Operator
from ims.sip.message import Request
from ims.sip.transaction import TimerSettings
from ims.sip.uri import SipUri, parse_uri
from ims.sip.useragent import Call, CallFailed, IncomingCall, RegistrationError, UserAgent
from ims.store import Store, new_subscriber, open_store

FAST = TimerSettings(t1=0.02, t2=0.16, t4=0.2)
ALPHA = "ims.mnc001.mcc001.3gppnetwork.org"
BETA = "ims.mnc002.mcc001.3gppnetwork.org"
HELP = [("Require", "ueconnect"), ("Supported", "ueconnect")]
PEOPLE = {  # name: (operator, number)
    "bill": ("alpha", "+15550100001"),
    "carol": ("alpha", "+15550100003"),
    "dave": ("beta", "+15550100002"),
    "eve": ("beta", "+15550100004"),
}
DOMAINS = {"alpha": ALPHA, "beta": BETA}


@dataclass
class Plan:
    net: int
    pcscf: int
    scscf: int
    border: int


def _zone_operator(name: str, mnc: str, plan: Plan, dead: bool = False) -> worlds.Operator:
    net = plan.net
    borders = (
        (worlds.Border("border1", f"127.0.{net}.3", "::1", plan.border, 10, 60, plan.border),
         worlds.Border("border2", f"127.0.{net}.4", "::1", plan.border, 20, 0, plan.border))
        if dead else
        (worlds.Border("border1", f"127.0.{net}.3", "::1", plan.border, 10, 60, plan.border),)
    )
    return worlds.Operator(
        name, "001", mnc, f"ims.mnc0{mnc}.mcc001.3gppnetwork.org",
        worlds.Role("ns1", "127.0.0.1", "::1", 53),
        (worlds.Role("pcscf", f"127.0.{net}.1", "::1", plan.pcscf),
         worlds.Role("scscf", f"127.0.{net}.2", "::1", plan.scscf)),
        borders,
    )


def _config_text(name: str, plmn: str, plan: Plan, dns_port: int, peers: str) -> str:
    n = plan.net
    return f"""
[operator]
name = "{name}"
plmn = "{plmn}"
mnc_digits = 2

[store]
backend = "sqlite"
path = "{name.lower()}.sqlite"

[dns]
server = "127.0.0.1:{dns_port}"
enum_suffix = "e164.arpa"
timeout = 1.0

[pcscf]
listen = ["udp:127.0.{n}.1:{plan.pcscf}", "tcp:127.0.{n}.1:{plan.pcscf}"]
keepalive = 30

[scscf]
listen = ["udp:127.0.{n}.2:{plan.scscf}"]
min_expires = 60

[border]
listen = ["udp:127.0.{n}.3:{plan.border}"]
{peers}

[log]
level = "info"
"""


@dataclass
class World:
    alpha: Operator
    beta: Operator
    stores: dict[str, Store]
    ues: dict[str, UserAgent]


PASSWORD = "secret-{}"


def _impi(name: str) -> str:
    return f"{name}@{DOMAINS[PEOPLE[name][0]]}"


def _add_subscribers(store: Store, operator: str, realm: str) -> None:
    for name, (op, number) in PEOPLE.items():
        if op != operator:
            continue
        store.subscribers.add(new_subscriber(
            _impi(name), [f"sip:{number}@{DOMAINS[op]}", f"tel:{number}"],
            PASSWORD.format(name), realm, now=time.time(),
        ))


NETS = {"alpha": 1, "beta": 2}  # Alpha on 127.0.1.x, Beta on 127.0.2.x
PLMNS = {"alpha": ("Alpha", "001-01"), "beta": ("Beta", "001-02")}


async def start_operators(
    stack: AsyncExitStack,
    tmp_path: Path,
    *,
    extra: dict[str, str] | None = None,
    gamma: bool = False,
    gateways: dict[str, Callable[[Store], Any]] | None = None,
) -> tuple[dict[str, Operator], dict[str, Store]]:
    """Alpha and Beta on free loopback ports with the embedded DNS server serving their zones
    (and Gamma's, an operator whose borders never answer, with `gamma`), the demo subscribers
    provisioned; `extra` config text per operator ("alpha"/"beta"), `gateways` a factory per
    operator making its gateway from its store. Everything is entered into `stack`."""
    extra, gateways = extra or {}, gateways or {}
    plans = {n: Plan(net, *(_free_port(f"127.0.{net}.{i}") for i in (1, 2, 3)))
             for n, net in NETS.items()}
    zone_ops = [_zone_operator(PLMNS[n][0], PLMNS[n][1][-2:], plans[n]) for n in NETS]
    if gamma:
        zone_ops.append(_zone_operator("Gamma", "03", Plan(3, 0, 0, _free_port("127.0.3.3")),
                                       dead=True))
    zones = tmp_path / "zones"
    zones.mkdir()
    for file_name, text in worlds.render_world(worlds.World("test", tuple(zone_ops))).items():
        (zones / file_name).write_text(text, encoding="ascii")
    dns = await stack.enter_async_context(await start_server(zones, "127.0.0.1", 0))
    stores: dict[str, Store] = {}
    ops: dict[str, Operator] = {}
    for n, (label, plmn) in PLMNS.items():
        others = [(PLMNS[o][0], PLMNS[o][1], NETS[o]) for o in PLMNS if o != n]
        if gamma and n == "alpha":
            others.append(("Gamma", "001-03", 3))
        peers = "".join(
            f'[[border.peers]]\nname = "{name}"\nplmn = "{peer_plmn}"\n'
            f'admit_from = ["127.0.{net}.0/24"]\n'
            for name, peer_plmn, net in others
        )
        path = tmp_path / f"{n}.toml"
        path.write_text(_config_text(label, plmn, plans[n], dns.port, peers) + extra.get(n, ""))
        config = load_config(path)
        stores[n] = stack.enter_context(open_store(config.store))
        _add_subscribers(stores[n], n, config.realm)
        make_gateway = gateways.get(n)
        gateway = make_gateway(stores[n]) if make_gateway is not None else None
        ops[n] = await stack.enter_async_context(
            Operator.start(config, store=stores[n], timers=FAST, gateway=gateway))
    return ops, stores


@asynccontextmanager
async def world(tmp_path: Path, *, register: tuple[str, ...] = ("bill", "carol", "dave")
                ) -> AsyncIterator[World]:
    async with AsyncExitStack() as stack:
        ops, stores = await start_operators(stack, tmp_path, gamma=True)
        ues: dict[str, UserAgent] = {}
        for name, (op, number) in PEOPLE.items():
            ua = UserAgent(SipUri(host=DOMAINS[op], user=number), timers=FAST,
                           outbound_proxy=ops[op].address(Role.PCSCF))
            await ua.start("127.0.0.1")
            stack.push_async_callback(ua.close)
            ues[name] = ua
        for name in register:
            await ues[name].register(SipUri(host=DOMAINS[PEOPLE[name][0]]),
                                     username=_impi(name), password=PASSWORD.format(name))
        yield World(ops["alpha"], ops["beta"], stores, ues)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


async def _call_and_answer(w: World, caller: str, callee: str, target: str,
                           extra: list[tuple[str, str]]) -> tuple[Request, Call, Call]:
    ua = w.ues[caller]
    task = asyncio.create_task(ua.call(parse_uri(target), extra=extra))
    incoming: IncomingCall = await asyncio.wait_for(w.ues[callee].incoming.get(), 5)
    answered = await incoming.accept()
    call = await task
    return incoming.request, call, answered


def _hosts(values: list[str]) -> str:
    return " ".join(values)


def test_bill_calls_dave_across_operators(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            invite, call, answered = await _call_and_answer(
                w, "bill", "dave", "tel:+15550100002", [*HELP, ("Target-MNO", "001-02")])
            # RFC 3325: the callee sees the caller's asserted identity, set by Alpha.
            assert invite.headers.get("P-Asserted-Identity") == f"<sip:+15550100001@{ALPHA}>"
            vias = _hosts(invite.headers.get_all("Via"))
            routes = _hosts(invite.headers.get_all("Record-Route"))
            # Topology hiding: no Alpha-internal host (P-CSCF 127.0.1.1, S-CSCF .2) nor Bill's
            # own Via reaches Beta; Alpha's border is the only Alpha hop seen.
            for hidden in ("127.0.1.1", "127.0.1.2", "127.0.0.1"):
                assert hidden not in vias and hidden not in routes
            assert "127.0.1.3" in vias and "127.0.1.3" in routes
            # Record-Route: Beta's P-CSCF, S-CSCF, border, then Alpha's border.
            hosts = [n.sip_uri.host for n in invite.name_addrs("Record-Route")]
            assert hosts == ["127.0.2.1", "127.0.2.2", "127.0.2.3", "127.0.1.3"]
            # Bill's route set holds his own operator's hops back (unfolded by Alpha's border)
            # and Beta's only as its border.
            bill_route = [n.sip_uri.host for n in call.dialog.route_set]
            assert bill_route == ["127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.2.3"]
            await asyncio.wait_for(answered.acked.wait(), 5)
            response = await call.bye()
            assert response.status_code == 200
            await asyncio.wait_for(answered.ended.wait(), 5)

    run(scenario())


def test_dave_hangs_up_on_bill(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            _, call, answered = await _call_and_answer(
                w, "bill", "dave", f"sip:+15550100002@{BETA};user=phone", HELP)
            response = await answered.bye()
            assert response.status_code == 200
            await asyncio.wait_for(call.ended.wait(), 5)

    run(scenario())


def test_bill_calls_carol_same_operator(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            invite, call, answered = await _call_and_answer(
                w, "bill", "carol", "tel:+15550100003", HELP)
            assert invite.headers.get("P-Asserted-Identity") == f"<sip:+15550100001@{ALPHA}>"
            hosts = [n.sip_uri.host for n in invite.name_addrs("Record-Route")]
            assert hosts == ["127.0.1.1", "127.0.1.2", "127.0.1.1"]
            assert "127.0.1.3" not in _hosts(invite.headers.get_all("Via"))  # no border
            await asyncio.wait_for(answered.acked.wait(), 5)
            assert (await call.bye()).status_code == 200

    run(scenario())


def test_forged_asserted_identity_is_replaced(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            forged = [("P-Asserted-Identity", f"<sip:+15550100003@{ALPHA}>")]
            invite, call, _ = await _call_and_answer(
                w, "bill", "dave", "tel:+15550100002", [*HELP, *forged])
            assert invite.headers.get_all("P-Asserted-Identity") == [
                f"<sip:+15550100001@{ALPHA}>"]
            await call.bye()

    run(scenario())


def test_preferred_identity_chooses_among_associated(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            preferred = [("P-Preferred-Identity", "<tel:+15550100001>")]
            invite, call, _ = await _call_and_answer(
                w, "bill", "carol", "tel:+15550100003", preferred)
            assert invite.headers.get_all("P-Asserted-Identity") == ["<tel:+15550100001>"]
            assert invite.headers.get("P-Preferred-Identity") is None
            await call.bye()

    run(scenario())


@pytest.mark.parametrize(
    ("target", "extra", "status", "phrase"),
    [
        ("tel:+15550109999", [], 404, "no such number"),  # ENUM NXDOMAIN
        # docs/extension.md section 4: Target-MNO names the operator of a number ENUM lacks
        # (for one ENUM has, ENUM wins: tests/test_extension_conformance.py).
        ("tel:+15550109999", [("Target-MNO", "001-09")], 604, "no operator"),
        ("tel:+15550109999", [("Target-MNO", "001-03")], 503, "answered"),
        ("tel:+15550100004", [], 480, "not registered"),  # Eve never registered
        (f"sip:nobody@{ALPHA}", [], 404, "no subscriber"),
    ],
    ids=["unknown-number", "unknown-operator", "unreachable-operator", "unregistered",
         "unknown-subscriber"],
)
def test_call_failures(tmp_path: Path, target: str, extra: list[tuple[str, str]], status: int,
                       phrase: str) -> None:
    async def scenario() -> None:
        async with world(tmp_path, register=("bill",)) as w:
            with pytest.raises(CallFailed) as failed:
                await w.ues["bill"].call(parse_uri(target), extra=extra)
            assert failed.value.status_code == status, failed.value.reason
            assert phrase in failed.value.reason
            if status == 503:
                assert failed.value.response.headers.get("Retry-After") == "30"

    run(scenario())


def test_unknown_require_tag_is_420(tmp_path: Path) -> None:
    """RFC 3261 section 8.2.2.3: 420 Bad Extension listing the tag in Unsupported."""
    async def scenario() -> None:
        async with world(tmp_path, register=("bill",)) as w:
            with pytest.raises(CallFailed) as failed:
                await w.ues["bill"].call(parse_uri("tel:+15550100002"),
                                         extra=[("Require", "ueconnect, frobnicate")])
            assert failed.value.status_code == 420
            assert failed.value.response.headers.get("Unsupported") == "frobnicate"

    run(scenario())


def test_unregistered_ue_is_refused_403(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path, register=()) as w:
            with pytest.raises(CallFailed) as failed:
                await w.ues["bill"].call(parse_uri("tel:+15550100002"))
            assert failed.value.status_code == 403
            assert "not registered" in failed.value.reason

    run(scenario())


def test_wrong_password_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path, register=()) as w:
            with pytest.raises(RegistrationError) as failed:
                await w.ues["bill"].register(SipUri(host=ALPHA), username=_impi("bill"),
                                             password="wrong")
            assert failed.value.status_code in (401, 403)

    run(scenario())


def test_request_from_unconfigured_peer_refused_at_border(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path, register=()) as w:
            # A UA on 127.0.0.1, which no peer's admit_from holds, straight at Beta's border.
            intruder = UserAgent(SipUri(host="127.0.0.1", user="mallory"), timers=FAST,
                                 outbound_proxy=w.beta.address(Role.BORDER))
            await intruder.start("127.0.0.1")
            try:
                with pytest.raises(CallFailed) as failed:
                    await intruder.call(parse_uri(f"sip:+15550100002@{BETA}"))
                assert failed.value.status_code == 403
                assert failed.value.reason == "Forbidden (not a peer operator)"
            finally:
                await intruder.close()

    run(scenario())


def test_register_200_has_service_route_and_associated_uris(tmp_path: Path) -> None:
    """RFC 3608 section 6 (Service-Route with orig), RFC 3455 (P-Associated-URI),
    RFC 3327 (Path with the P-CSCF's flow token)."""
    async def scenario() -> None:
        async with world(tmp_path, register=()) as w:
            ua = w.ues["bill"]
            done = await ua.register(SipUri(host=ALPHA), username=_impi("bill"),
                                     password=PASSWORD.format("bill"))
            assert [str(n.uri) for n in done.service_route] == [
                f"sip:orig@{w.alpha.uri(Role.SCSCF).host}:{w.alpha.uri(Role.SCSCF).port};lr"]
            assert [str(n.uri) for n in done.associated_uris] == [
                f"sip:+15550100001@{ALPHA}", "tel:+15550100001"]
            bindings = w.stores["alpha"].bindings.list_for_aor(
                f"sip:+15550100001@{ALPHA}", time.time())
            assert len(bindings) == 1 and bindings[0].path
            assert f"@127.0.1.1:{w.alpha.uri(Role.PCSCF).port};lr" in bindings[0].path[0]

    run(scenario())


def test_pcscf_answers_crlf_keepalive(tmp_path: Path) -> None:
    """RFC 5626 section 4.4.1: a CRLFCRLF ping on a TCP flow gets a CRLF pong."""
    async def scenario() -> None:
        async with world(tmp_path, register=()) as w:
            pcscf = w.alpha.address(Role.PCSCF)
            reader, writer = await asyncio.open_connection(pcscf.host, pcscf.port)
            try:
                writer.write(b"\r\n\r\n")
                await writer.drain()
                assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
            finally:
                writer.close()

    run(scenario())
