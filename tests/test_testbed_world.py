"""The testbed world (ims.testbed.world) and the namespace loops it stands on (ims.testbed.netns).

Root only: each test builds its testbed under a prefix of its own (`uec-w<pid>-`...) and state
directory, so it never meets a testbed someone has up, and the world takes it down on exit,
also after a failure. Without root, `ip`, `nft`, coturn's `turnserver` or `conntrack` every
test here skips and says which.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest
from aioice import stun

from ims.pcp.aioclient import open_pcp_client
from ims.pcp.client import MappingRequest
from ims.pcp.constants import PROTOCOL_UDP, ResultCode
from ims.pcp.errors import PcpRefused
from ims.sip.uri import SipUri
from ims.sip.useragent import UserAgent
from ims.testbed.builder import run_command
from ims.testbed.netns import NamespaceError, NamespaceLoop
from ims.testbed.requirements import missing_for_world
from ims.testbed.world import PcpMode, TestbedWorld, WorldLeftovers
from ue_ua.agent import UeAgent

pytestmark = pytest.mark.root

ALPHA_PUBLIC, BETA_PUBLIC, UE = "198.51.100.1", "203.0.113.1", "100.64.0.2"
BETA_DOMAIN = "ims.mnc002.mcc001.3gppnetwork.org"


def _skip_reason() -> str | None:
    return missing_for_world()


@pytest.fixture(autouse=True)
def _root_and_tools() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


def _netns(prefix: str) -> set[str]:
    return {n for n in run_command(["ip", "netns", "list"]).split() if n.startswith(prefix)}


def _host_view() -> tuple[str, str, str]:
    return (run_command(["ip", "-br", "link"]), run_command(["ip", "route"]),
            run_command(["nft", "list", "ruleset"]))


def _cleanup(prefix: str) -> None:
    """Last resort after a failed test: the world removes its testbed itself."""
    for name in _netns(prefix):
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


# -- NamespaceLoop -----------------------------------------------------------------------------


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    name = f"uec-l{os.getpid() % 100000}"
    run_command(["ip", "netns", "add", name])
    try:
        run_command(["ip", "-n", name, "link", "add", "uecdummy0", "type", "veth", "peer",
                     "name", "uecdummy1"])
        run_command(["ip", "-n", name, "addr", "add", "100.64.99.1/32", "dev", "uecdummy0"])
        run_command(["ip", "-n", name, "link", "set", "uecdummy0", "up"])
        run_command(["ip", "-n", name, "link", "set", "lo", "up"])
        yield name
    finally:
        run_command(["ip", "netns", "del", name])


def test_namespace_loop_runs_sockets_and_subprocesses_in_its_namespace(
        scratch_netns: str) -> None:
    async def main() -> None:
        async with NamespaceLoop(scratch_netns) as ns:
            assert ns.running

            async def bind() -> tuple[str, int]:
                # 100.64.99.1 exists only in the scratch namespace: binding proves where we are.
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("100.64.99.1", 0))
                    return s.getsockname()  # type: ignore[no-any-return]

            assert (await ns.run(bind))[0] == "100.64.99.1"
            with pytest.raises(OSError), socket.socket() as here:
                here.bind(("100.64.99.1", 0))  # the caller's thread stayed in the host's

            async def child() -> str:  # a subprocess started there inherits the namespace
                proc = await asyncio.create_subprocess_exec(
                    "ip", "-br", "link", stdout=asyncio.subprocess.PIPE)
                out, _ = await proc.communicate()
                return out.decode()

            assert "uecdummy0" in await ns.run(child)

            async def boom() -> None:
                raise ValueError("raised in the namespace")

            with pytest.raises(ValueError, match="raised in the namespace"):
                await ns.run(boom)
            # Cancelling the caller cancels the work in the namespace's loop.
            cancelled: list[bool] = []

            async def forever() -> None:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    cancelled.append(True)
                    raise

            task = asyncio.create_task(ns.run(forever))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):  # the cancellation crosses to the other loop: poll, bounded
                if cancelled:
                    break
                await asyncio.sleep(0.01)
            assert cancelled == [True]
            leftover = ns.submit(lambda: asyncio.sleep(3600))  # stop() cancels what is left
        assert not ns.running
        with pytest.raises(concurrent.futures.CancelledError):
            leftover.result(1)
        with pytest.raises(NamespaceError, match="not running"):
            await ns.run(bind)

    asyncio.run(main())


def test_namespace_loop_refuses_a_missing_namespace() -> None:
    with pytest.raises(NamespaceError, match="no network namespace 'uec-none-such'"):
        NamespaceLoop("uec-none-such").start()


# -- the world ---------------------------------------------------------------------------------


def test_world_starts_and_stops_cleanly_twice_leaving_the_host_as_it_was(tmp_path: Path) -> None:
    prefix = f"uec-w{os.getpid() % 100000}-"
    host = _host_view()

    async def once(pcp: PcpMode) -> None:
        async with TestbedWorld.start(prefix=prefix, state_dir=tmp_path / "state",
                                      pcp=pcp) as world:
            assert world.owns_testbed
            assert set(world.loops) == {"alpha-ue", "alpha-cgn", "alpha-core", "beta-ue",
                                        "beta-cgn", "beta-core", "dns"}
            listening = {line.split()[4] for line in world.sockets("alpha-core")}
            assert {"192.0.2.10:5060", "192.0.2.11:5060", "192.0.2.12:5060"} <= listening
            cgn = {line.split()[4] for line in world.sockets("beta-cgn")}
            assert f"{BETA_PUBLIC}:5351" in cgn
            dns_ns = {line.split()[4] for line in world.sockets("dns")}
            assert {"192.0.2.53:53", "192.0.2.53:3478"} <= dns_ns
            if pcp is PcpMode.OURS:  # our server's (empty) table is there while it runs
                assert "ueconnect_pcp" in world.nft_tables("alpha-cgn")
                assert world.nft_rules("alpha-cgn") == []
            assert world.stun_process is not None and world.stun_process.poll() is None
            stun_process = world.stun_process
        # close() proved no socket, PCP table or loop was left (else WorldLeftovers).
        assert stun_process.poll() is not None
        assert not world.loops and not world.operators
        assert _netns(prefix) == set()
        assert not (tmp_path / "state" / "testbed.json").exists()

    try:
        asyncio.run(once(PcpMode.OURS))
        asyncio.run(once(PcpMode.REFUSE))  # and again, right after
    finally:
        _cleanup(prefix)
    assert _host_view() == host


def test_world_close_reports_a_socket_left_open(tmp_path: Path) -> None:
    prefix = f"uec-v{os.getpid() % 100000}-"
    held: list[socket.socket] = []

    async def main() -> None:
        async with TestbedWorld.start(prefix=prefix, state_dir=tmp_path / "state",
                                      pcp="off", stun=False) as world:

            async def forgotten() -> None:  # a UE socket somebody holds and never closes
                held.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                held[-1].bind((UE, 45999))

            await world.loop("beta-ue").run(forgotten)

    try:
        with pytest.raises(WorldLeftovers, match=f"socket in {prefix}beta-ue.*45999"):
            asyncio.run(main())
    finally:
        for s in held:
            s.close()
        _cleanup(prefix)
    assert _netns(prefix) == set()  # taken down all the same


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[asyncio.Runner,
                                                                      TestbedWorld]]:
    """One world for the read-only checks below, on one runner (loop) kept for the module."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    prefix = f"uec-m{os.getpid() % 100000}-"
    runner = asyncio.Runner()
    context = TestbedWorld.start(prefix=prefix, state_dir=tmp_path_factory.mktemp("state"))
    try:
        running = runner.run(context.__aenter__())
        try:
            yield runner, running
        finally:
            runner.run(context.__aexit__(None, None, None))
    finally:
        runner.close()
        _cleanup(prefix)


async def _register(world: TestbedWorld, name: str) -> tuple[str, str]:
    """Register `name` from its UE namespace; (P-Associated-URIs, Service-Route URIs)."""
    sub = world.subscriber(name)

    async def work() -> tuple[str, str]:
        ua = UserAgent(SipUri(host=sub.domain, user=sub.e164),
                       outbound_proxy=world.pcscf(sub.operator))
        await ua.start(world.ue_address)
        agent = UeAgent(ua, home_domain=sub.domain)
        try:
            got = await agent.register(SipUri(host=sub.domain), username=sub.impi,
                                       password=sub.password)
            await ua.unregister()
        finally:
            await agent.close()
            await ua.close()
        return (" ".join(str(u.uri) for u in got.associated_uris),
                " ".join(str(r.uri) for r in got.service_route))

    return await world.ue_loop(name).run(work)


def test_both_ues_register_from_their_namespaces_through_their_cgns(
        world: tuple[asyncio.Runner, TestbedWorld]) -> None:
    runner, w = world

    async def main() -> None:
        bill, dave = await asyncio.gather(_register(w, "Bill"), _register(w, "Dave"))
        assert "tel:+15550100001" in bill[0] and bill[1].startswith("sip:orig@192.0.2.11:")
        assert "tel:+15550100002" in dave[0] and dave[1].startswith("sip:orig@192.0.2.21:")

    runner.run(asyncio.wait_for(main(), 20))
    # The REGISTER crossed each CGN: a conntrack entry from the UE to its P-CSCF, translated.
    for op, pcscf, public in (("alpha", "192.0.2.10", ALPHA_PUBLIC),
                              ("beta", "192.0.2.20", BETA_PUBLIC)):
        [entry] = w.conntrack_entries(f"{op}-cgn", "-p", "udp", "--orig-src", UE,
                                      "--orig-dst", pcscf, "--orig-port-dst", "5060")
        assert f"dst={public}" in entry  # the reply goes to the CGN's public address


def test_dns_answers_from_its_namespace(world: tuple[asyncio.Runner, TestbedWorld]) -> None:
    runner, w = world

    async def ask() -> list[str]:
        query = dns.message.make_query(BETA_DOMAIN, "NAPTR")
        answer = await dns.asyncquery.udp(query, w.dns_server[0], port=w.dns_server[1],
                                          timeout=2)
        return [str(rr) for rrset in answer.answer if rrset.rdtype == dns.rdatatype.NAPTR
                for rr in rrset]

    # From Alpha's core (where its border asks) and from a UE behind its CGN.
    for role in ("alpha-core", "beta-ue"):
        records = runner.run(w.loop(role).run(ask))
        assert any('"SIP+D2U"' in r for r in records), records


def test_stun_server_answers_with_the_cgn_public_address(
        world: tuple[asyncio.Runner, TestbedWorld]) -> None:
    runner, w = world

    async def binding() -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
                if not answered.done():
                    answered.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(Client, local_addr=(UE, 0))
        try:
            request = stun.Message(message_method=stun.Method.BINDING,
                                   message_class=stun.Class.REQUEST)
            transport.sendto(bytes(request), w.stun_server)
            reply = stun.parse_message(await asyncio.wait_for(answered, 3))
        finally:
            transport.close()
        assert reply.transaction_id == request.transaction_id
        host, port = reply.attributes["XOR-MAPPED-ADDRESS"]
        return str(host), int(port)

    assert runner.run(w.loop("alpha-ue").run(binding))[0] == ALPHA_PUBLIC
    assert runner.run(w.loop("beta-ue").run(binding))[0] == BETA_PUBLIC


def test_pcp_server_maps_for_its_core_only_and_writes_nft_rules(
        world: tuple[asyncio.Runner, TestbedWorld]) -> None:
    runner, w = world
    request = MappingRequest(PROTOCOL_UDP, 4000, 120, third_party=ipaddress.ip_address(UE))

    async def from_core() -> tuple[str, int]:
        client = await open_pcp_client(ALPHA_PUBLIC, local_address="192.0.2.11")
        try:
            mapping_id, ready = await client.map(request, timeout=3)
            rules = w.nft_rules("alpha-cgn")
            assert len(rules) == 2 and all("ueconnect-pcp m" in r for r in rules), rules
            assert any(f"dnat ip to {UE}:4000" in r for r in rules)
            [held] = await w.pcp_mappings("Alpha")
            assert held.external.port == ready.external.port
            await client.delete(mapping_id, timeout=3)
            return str(ready.external.address), ready.external.port
        finally:
            await client.close()

    external = runner.run(w.loop("alpha-core").run(from_core))
    assert external[0] == ALPHA_PUBLIC
    assert w.nft_rules("alpha-cgn") == []
    assert runner.run(w.pcp_mappings("Alpha")) == ()

    async def from_beta_core() -> ResultCode:
        # Beta's core is no control address of Alpha's CGN (RFC 6887 section 13.1).
        client = await open_pcp_client(ALPHA_PUBLIC, local_address="192.0.2.21")
        try:
            await client.map(request, timeout=3)
        except PcpRefused as refused:
            return refused.result_code
        finally:
            await client.close()
        raise AssertionError("Alpha's CGN mapped for Beta's core")

    assert runner.run(w.loop("beta-core").run(from_beta_core)) is ResultCode.NOT_AUTHORIZED
