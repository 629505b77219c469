"""The connectivity gateway on the wire (ims.gateway.service): two operators on loopback with
[gateway] mode = "relay" and [permission]; Bill calls Dave with an SDP offer whose
m=application stream carries one host candidate, and the game's datagrams go
Bill -> Alpha's relay -> Beta's relay -> Dave and back.

Also, without the operators: RFC 4028 Session-Expires, expiry and refresh, release on a
non-2xx final response, a bad offer, and the [gateway] configuration."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from bench.sipp import free_udp_tcp_port as _free_port
from ims.config import ConfigError, GatewayMode, Role, parse_config
from ims.gateway.pcp_gateway import PcpGateway
from ims.gateway.relay import RelayConfig
from ims.gateway.service import DISCARD_PORT, RelayGateway, session_expires
from ims.operator import Operator
from ims.sdp import (
    Candidate,
    CandidateType,
    IceCredentials,
    Origin,
    build_answer,
    build_offer,
    candidate_foundation,
    candidate_priority,
    candidates_of,
    negotiated_endpoints,
    parse_sdp,
    serialize_sdp,
    stream_endpoints,
)
from ims.seams import ConnectRequest, Leg, Refusal, SessionGateway
from ims.sip.message import Request, Response, parse_message
from ims.sip.uri import SipUri, parse_uri
from ims.sip.useragent import CallFailed, IncomingCall
from ims.store import Store
from tests.test_operator_flows import (
    DOMAINS,
    HELP,
    NETS,
    PASSWORD,
    PEOPLE,
    _impi,
    start_operators,
)
from tests.test_permission_flows import CALL, DAVE, App, _agent
from ue_ua.agent import UeAgent

SDP = "application/sdp"
DATAGRAMS = 100


@dataclass
class World:
    alpha: Operator
    beta: Operator
    stores: dict[str, Store]
    agents: dict[str, UeAgent]
    apps: dict[str, App]

    def gateways(self) -> tuple[RelayGateway, RelayGateway]:
        a, b = self.alpha.gateway, self.beta.gateway
        assert isinstance(a, RelayGateway) and isinstance(b, RelayGateway)
        return a, b


@asynccontextmanager
async def world(tmp_path: Path, people: tuple[str, ...] = ("bill", "dave")
                ) -> AsyncIterator[World]:
    """Alpha and Beta with [permission] (deadline 1 s) and [gateway] mode relay, each relay on
    its S-CSCF's loopback address; Bill and Dave registered with the extension."""
    async with AsyncExitStack() as stack:
        extra = {
            n: "\n[permission]\ndeadline = 1\n"
            f'\n[gateway]\nmode = "relay"\nrelay_address = "127.0.{net}.2"\nlifetime = 60\n'
            for n, net in NETS.items()
        }
        ops, stores = await start_operators(stack, tmp_path, extra=extra)
        alpha, beta = ops["alpha"], ops["beta"]
        apps = {name: App() for name in PEOPLE}
        agents = await _registered(stack, ops, apps, people)
        yield World(alpha, beta, stores, agents, apps)


async def _registered(stack: AsyncExitStack, ops: dict[str, Operator], apps: dict[str, App],
                      people: tuple[str, ...]) -> dict[str, UeAgent]:
    """An agent for each of `people`, answering through its app, registered with its
    operator (the extension's option tag supported)."""
    agents = {name: await _agent(stack, name, ops, apps[name]) for name in people}
    for name, agent in agents.items():
        await agent.register(SipUri(host=DOMAINS[PEOPLE[name][0]]), username=_impi(name),
                             password=PASSWORD.format(name))
    return agents


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


class Datagrams(asyncio.DatagramProtocol):
    """A UE's game socket: what it received, with the source."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's UDP transport is a DatagramTransport in behaviour, not by class.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.put_nowait((data, (str(addr[0]), addr[1])))

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def take(self, count: int, timeout: float = 5.0) -> list[tuple[bytes, tuple[str, int]]]:
        return [await asyncio.wait_for(self.received.get(), timeout) for _ in range(count)]


async def _socket(stack: AsyncExitStack, host: str = "127.0.0.1") -> Datagrams:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(Datagrams, local_addr=(host, 0))
    assert protocol.transport is not None
    stack.callback(protocol.transport.close)
    return protocol


def _host(address: tuple[str, int]) -> Candidate:
    host, port = address
    return Candidate(candidate_foundation("host", host), 1, "UDP",
                     candidate_priority(CandidateType.HOST), host, port, CandidateType.HOST)


def _offer(address: tuple[str, int]) -> bytes:
    offer = build_offer(
        origin=Origin.for_address(address[0], "1"),
        credentials=IceCredentials.generate(secrets.token_bytes), candidates=[_host(address)],
    )
    return serialize_sdp(offer)


def _answer(offer: bytes, address: tuple[str, int]) -> bytes:
    answer = build_answer(
        parse_sdp(offer), origin=Origin.for_address(address[0], "2"),
        credentials=IceCredentials.generate(secrets.token_bytes), candidates=[_host(address)],
    )
    return serialize_sdp(answer)


async def _until(condition: Any, what: str, timeout: float = 3.0) -> None:
    """Poll `condition()` (bounded): the release after a BYE or a failure is a task."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def _closed(*gateways: RelayGateway | PcpGateway) -> bool:
    """Nothing open at any of `gateways`: no leg, no relay allocation, no relay socket."""
    return all(not g.open_legs() and not g.relay.list() and g.relay.open_sockets() == 0
               for g in gateways)


def test_relayed_call_carries_datagrams_both_ways_and_releases_on_bye(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w, AsyncExitStack() as sockets:
            alpha, beta = w.gateways()
            bill_socket = await _socket(sockets)
            dave_socket = await _socket(sockets)
            stranger = await _socket(sockets)
            w.apps["dave"].decision = "allow"
            w.apps["dave"].gate.set()
            task = asyncio.create_task(w.agents["bill"].ua.call(
                parse_uri(DAVE), extra=CALL, body=_offer(bill_socket.address), content_type=SDP))
            incoming: IncomingCall = await asyncio.wait_for(
                w.agents["dave"].ua.incoming.get(), 5)

            # The offer Dave gets: Bill's host candidate kept (extension section 8), Alpha's
            # relay, then Beta's, which is the default Dave sends to.
            offer = stream_endpoints(parse_sdp(incoming.request.body), 0)
            kinds = [(c.type, c.address) for c in offer.candidates]
            assert kinds == [("host", "127.0.0.1"), ("relay", "127.0.1.2"),
                             ("relay", "127.0.2.2")]
            assert (offer.default.address, offer.default.port) == (
                offer.candidates[-1].address, offer.candidates[-1].port)
            assert all(c.related_port == DISCARD_PORT for c in offer.candidates[1:])
            [beta_leg] = beta.open_legs()
            assert beta_leg.leg is Leg.TERMINATING and not beta_leg.answered

            body = _answer(incoming.request.body, dave_socket.address)
            answered = await incoming.accept(body, SDP)
            call = await task
            await asyncio.wait_for(answered.acked.wait(), 5)

            # The answer Bill gets carries the relay candidates of both operators; its default
            # is Alpha's, the only one that admits Bill.
            answer = negotiated_endpoints(parse_sdp(call.remote_body))
            kinds = [(c.type, c.address) for c in answer.candidates]
            assert kinds == [("host", "127.0.0.1"), ("relay", "127.0.2.2"),
                             ("relay", "127.0.1.2")]
            to_alpha = (answer.default.address, answer.default.port)
            to_beta = (offer.default.address, offer.default.port)
            assert [leg.answered for leg in (*alpha.open_legs(), *beta.open_legs())] == [True] * 2

            for n in range(DATAGRAMS):
                bill_socket.send(b"bill %d" % n, to_alpha)
            got = await dave_socket.take(DATAGRAMS)
            assert sorted(d for d, _ in got) == sorted(b"bill %d" % n for n in range(DATAGRAMS))
            assert {source for _, source in got} == {to_beta}  # Beta's port facing Dave
            for n in range(DATAGRAMS):
                dave_socket.send(b"dave %d" % n, to_beta)
            got = await bill_socket.take(DATAGRAMS)
            assert sorted(d for d, _ in got) == sorted(b"dave %d" % n for n in range(DATAGRAMS))
            assert {source for _, source in got} == {to_alpha}

            # A third socket is admitted by neither relay port it can reach.
            stranger.send(b"intruder", to_alpha)
            stranger.send(b"intruder", to_beta)
            await _until(lambda: sum(
                a.counters.dropped_unpermitted for g in (alpha, beta) for a in g.relay.list()
            ) == 2, "both intruding datagrams dropped")
            await asyncio.sleep(0.05)
            assert bill_socket.received.empty() and dave_socket.received.empty()
            [alpha_allocation] = alpha.relay.list()
            assert alpha_allocation.counters.caller_to_callee_datagrams == DATAGRAMS
            assert alpha_allocation.counters.callee_to_caller_datagrams == DATAGRAMS

            assert (await call.bye()).status_code == 200
            await _until(lambda: _closed(alpha, beta), "everything released")
            # Released means closed: datagrams to the old ports reach no one.
            bill_socket.send(b"late", to_alpha)
            await asyncio.sleep(0.05)
            assert dave_socket.received.empty()

    run(main())


def test_refused_call_leaves_nothing_open(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w, AsyncExitStack() as sockets:
            alpha, beta = w.gateways()
            bill_socket = await _socket(sockets)
            w.apps["dave"].decision = "deny"
            w.apps["dave"].gate.set()
            with pytest.raises(CallFailed) as failed:
                await w.agents["bill"].ua.call(parse_uri(DAVE), extra=CALL,
                                               body=_offer(bill_socket.address),
                                               content_type=SDP)
            assert failed.value.response.status_code == 603
            # Beta never opened anything (consent first, extension section 5.1); Alpha, which
            # prepared Bill's side before forwarding (flow step 4), released it on the 603.
            assert beta.allocations_made == 0
            assert alpha.allocations_made == 1
            await _until(lambda: _closed(alpha, beta), "Alpha's leg released")

    run(main())


def test_rejected_by_callee_ue_releases_both_operators(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w, AsyncExitStack() as sockets:
            alpha, beta = w.gateways()
            bill_socket = await _socket(sockets)
            w.apps["dave"].decision = "allow"
            w.apps["dave"].gate.set()
            task = asyncio.create_task(w.agents["bill"].ua.call(
                parse_uri(DAVE), extra=CALL, body=_offer(bill_socket.address), content_type=SDP))
            incoming: IncomingCall = await asyncio.wait_for(
                w.agents["dave"].ua.incoming.get(), 5)
            assert len(alpha.relay.list()) == len(beta.relay.list()) == 1
            incoming.reject(486)  # a non-2xx final response on the only branch
            with pytest.raises(CallFailed):
                await task
            await _until(lambda: _closed(alpha, beta), "both legs released")

    run(main())


async def _exchange(a: Datagrams, a_to: tuple[str, int], b: Datagrams,
                    b_to: tuple[str, int], count: int = DATAGRAMS) -> None:
    """`count` datagrams a -> b, then `count` b -> a; each batch must arrive whole."""
    for n in range(count):
        a.send(b"a %d" % n, a_to)
    assert len(await b.take(count)) == count
    for n in range(count):
        b.send(b"b %d" % n, b_to)
    assert len(await a.take(count)) == count


def test_same_operator_call_chains_both_legs_through_one_relay(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, ("bill", "carol")) as w, AsyncExitStack() as sockets:
            alpha, beta = w.gateways()
            bill_socket = await _socket(sockets)
            carol_socket = await _socket(sockets)
            w.apps["carol"].decision = "allow"
            w.apps["carol"].gate.set()
            extra = [*HELP, ("Target-MNO", "001-01"), ("Application-ID", "com.example.pong")]
            task = asyncio.create_task(w.agents["bill"].ua.call(
                parse_uri("tel:+15550100003"), extra=extra, body=_offer(bill_socket.address),
                content_type=SDP))
            incoming: IncomingCall = await asyncio.wait_for(
                w.agents["carol"].ua.incoming.get(), 5)
            offer = stream_endpoints(parse_sdp(incoming.request.body), 0)
            answered = await incoming.accept(
                _answer(incoming.request.body, carol_socket.address), SDP)
            call = await task
            await asyncio.wait_for(answered.acked.wait(), 5)
            answer = negotiated_endpoints(parse_sdp(call.remote_body))
            assert [leg.leg for leg in alpha.open_legs()] == [Leg.ORIGINATING, Leg.TERMINATING]
            assert not beta.open_legs()
            await _exchange(bill_socket, (answer.default.address, answer.default.port),
                            carol_socket, (offer.default.address, offer.default.port))
            assert (await call.bye()).status_code == 200
            await _until(lambda: _closed(alpha), "both legs released")

    run(main())


# -- without the operators ---------------------------------------------------------------------

BILL = "sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org"


def _invite(body: bytes, *, extra: str = "") -> Request:
    text = (
        f"INVITE tel:+15550100002 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
        f"From: <{BILL}>;tag=a\r\nTo: <tel:+15550100002>\r\nCall-ID: c1@test\r\n"
        f"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{extra}Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    message = parse_message(text)
    assert isinstance(message, Request)
    return message


def _ok(body: bytes, *, extra: str = "") -> Response:
    text = (
        f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
        f"From: <{BILL}>;tag=a\r\nTo: <tel:+15550100002>;tag=b\r\nCall-ID: c1@test\r\n"
        f"CSeq: 1 INVITE\r\n{extra}Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    message = parse_message(text)
    assert isinstance(message, Response)
    return message


def _asking(request: Request, leg: Leg = Leg.ORIGINATING) -> ConnectRequest:
    return ConnectRequest(leg, BILL, "tel:+15550100002", request.call_id, None, request)


def test_rfc4028_session_expires_parsing() -> None:
    offer = _offer(("127.0.0.1", 4000))
    assert session_expires(_invite(offer)) is None
    assert session_expires(_invite(offer, extra="Session-Expires: 1800;refresher=uac\r\n")) == 1800
    assert session_expires(_invite(offer, extra="x: 90\r\n")) == 90  # compact form (section 4)
    assert session_expires(_invite(offer, extra="Session-Expires: soon\r\n")) is None
    assert session_expires(_invite(offer, extra="Session-Expires: 0\r\n")) is None
    assert session_expires(_invite(offer, extra="Session-Expires: 99999999\r\n")) == 86_400


def test_rfc4028_session_expires_of_the_2xx_sets_the_relay_lifetime_and_refresh_renews() -> None:
    async def main() -> None:
        gateway = RelayGateway.start(RelayConfig("127.0.0.1"), lifetime=60)
        try:
            assert isinstance(gateway, SessionGateway)
            offer = _offer(("127.0.0.1", 4000))
            prepared = await gateway.prepare(_asking(_invite(offer)))
            assert isinstance(prepared, Request)
            [allocation] = gateway.relay.list()
            loop = asyncio.get_running_loop()
            assert allocation.expires_at == pytest.approx(loop.time() + 60, abs=1)
            answer = _answer(prepared.body, ("127.0.0.1", 4002))
            done = gateway.complete("c1@test", _ok(answer, extra="Session-Expires: 1\r\n"))
            # The same 2xx again (a retransmission) is rewritten the same way.
            again = gateway.complete("c1@test", _ok(answer, extra="Session-Expires: 1\r\n"))
            assert done.body == again.body
            assert candidates_of(parse_sdp(done.body).media[0])[-1].type == "relay"
            await asyncio.sleep(0.6)
            await gateway.refresh(_invite(b"", extra=""))  # an in-dialog request: renewed
            await asyncio.sleep(0.6)
            assert len(gateway.relay.list()) == 1
            await _until(lambda: _closed(gateway), "expired without refresh", timeout=2)
        finally:
            await gateway.close()

    run(main())


def test_unanswered_allocation_forwards_nothing_and_bad_offers_are_refused() -> None:
    async def main() -> None:
        async with AsyncExitStack() as sockets:
            gateway = RelayGateway.start(RelayConfig("127.0.0.1"), lifetime=60)
            sockets.push_async_callback(gateway.close)
            bill = await _socket(sockets)
            prepared = await gateway.prepare(_asking(_invite(_offer(bill.address))))
            assert isinstance(prepared, Request)
            [allocation] = gateway.relay.list()
            bill.send(b"too early", allocation.caller_side)
            await asyncio.sleep(0.05)
            assert gateway.relay.list()[0].counters.caller_to_callee_datagrams == 0
            bad = await gateway.prepare(_asking(_invite(b"v=0\r\nnonsense\r\n")))
            assert isinstance(bad, Refusal) and bad.status_code in (400, 488)
            no_offer = _invite(b"").with_body(b"")
            assert await gateway.prepare(_asking(no_offer)) is no_offer
            assert gateway.allocations_made == 1
            await gateway.release("c1@test")
            assert _closed(gateway)

    run(main())


def _gateway_config(tmp_path: Path, section: str, pcscf: bool = True) -> str:
    head = '[operator]\nname = "Alpha"\nplmn = "001-01"\nmnc_digits = 2\n' \
           '[dns]\nserver = "127.0.0.1:53"\n[scscf]\nlisten = ["udp:127.0.0.1:5070"]\n'
    if pcscf:
        head += '[pcscf]\nlisten = ["udp:127.0.0.3:5060"]\n'
    return head + section


def test_gateway_config_section(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    config = parse_config(_gateway_config(tmp_path, '[gateway]\nmode = "relay"\n'), path)
    assert config.gateway is not None
    assert config.gateway.mode is GatewayMode.RELAY
    assert config.gateway.relay_address == "127.0.0.3"  # defaults to the P-CSCF's host
    assert config.gateway.lifetime == 1800
    config = parse_config(_gateway_config(
        tmp_path, '[gateway]\nmode = "off"\n', pcscf=False), path)
    assert config.gateway is not None and config.gateway.relay_address is None
    config = parse_config(_gateway_config(
        tmp_path, '[gateway]\nrelay_address = "::1"\nlifetime = 5\n'), path)
    assert config.gateway is not None
    assert (config.gateway.relay_address, config.gateway.lifetime) == ("::1", 5)
    for bad, word in (('mode = "turn"', "gateway mode"),
                      ('relay_address = "relay.example"', "not an IP address"),
                      ("lifetime = 0", "out of range"),
                      ('lifetme = 5', "did you mean")):
        with pytest.raises(ConfigError, match=word):
            parse_config(_gateway_config(tmp_path, f"[gateway]\n{bad}\n"), path)
    with pytest.raises(ConfigError, match="relay_address"):
        parse_config(_gateway_config(tmp_path, "[gateway]\n", pcscf=False), path)


def test_operator_refuses_a_relay_address_it_cannot_bind(tmp_path: Path) -> None:
    from ims.operator import OperatorError

    text = _gateway_config(tmp_path, '[gateway]\nrelay_address = "192.0.2.1"\n') + \
        '[store]\nbackend = "sqlite"\npath = "s.sqlite"\n'
    config = parse_config(text, tmp_path / "a.toml")

    async def main() -> None:
        with pytest.raises(OperatorError, match="cannot bind"):
            async with Operator.start(config, roles=(Role.SCSCF,)):
                pass

    run(main())


def test_mno_open_lists_the_gateway_on_sigusr1(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    port = _free_port("127.0.0.1")
    path = tmp_path / "a.toml"
    path.write_text(
        '[operator]\nname = "Alpha"\nplmn = "001-01"\nmnc_digits = 2\n'
        '[dns]\nserver = "127.0.0.1:53"\n'
        f'[scscf]\nlisten = ["udp:127.0.0.1:{port}"]\n'
        '[store]\nbackend = "sqlite"\npath = "s.sqlite"\n'
        '[gateway]\nrelay_address = "127.0.0.1"\n'
    )
    main = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "ims", "mno", "--config", str(path), "--open"], cwd=main,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2)]
        assert "running" in lines[0], lines
        banner = [process.stdout.readline() for _ in range(5)]
        assert any("gateway" in line and "relay on 127.0.0.1" in line for line in banner), banner
        os.kill(process.pid, signal.SIGUSR1)
        assert process.stdout.readline().strip() == (
            "ueconnect mno: 0 call legs open, 0 relay sockets")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
