"""The relay's kernel offload for real, as root, in namespaces of this test's own
(`uecr-o<pid>-a|b|r`, ims.gateway.nft_relay.RelayBed: peer A, peer B, and the relay host R
between them with IP forwarding on), removed after the module, also on failure.

The RelayService runs in R's own loop (a NamespaceLoop), as an operator runs in its core
namespace, with `offload = nft` and no data plane given: it makes its own, so nft and conntrack
run in R because the service's threads are there. Skips with the reason without root, ip, nft
or conntrack (CI runs it as root)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ims.config import Role, parse_config
from ims.gateway.aiorelay import RelayService
from ims.gateway.nft_relay import DEFAULT_TABLE, KernelRelayCounters, RelayBed
from ims.gateway.relay import AllocationCounters, PermittedPeer, RelayConfig, RelayOffload
from ims.operator import Operator, OperatorError
from ims.testbed.builder import run_command
from ims.testbed.netns import NamespaceLoop
from tests.netns_helpers import NETNS_TOOLS, recv, relay_bed, relay_conntrack
from tests.test_gateway_flows import _gateway_config

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def bed() -> Iterator[RelayBed]:
    yield from relay_bed(f"uecr-o{os.getpid() % 100000}", (*NETNS_TOOLS, ("sysctl", "procps")))


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


@asynccontextmanager
async def relay_in(bed: RelayBed) -> AsyncIterator[tuple[NamespaceLoop, RelayService]]:
    """A RelayService with offload nft in R's own loop; closed (and the loop stopped) after."""
    async with NamespaceLoop(bed.r) as r:
        async def start() -> RelayService:
            return RelayService(RelayConfig(bed.relay_ip, offload=RelayOffload.NFT))

        relay = await r.run(start)
        try:
            assert await r.run(relay.offload_ready) is True
            yield r, relay
        finally:
            await r.run(relay.close)


def rules(bed: RelayBed) -> list[dict[str, Any]]:
    listing = json.loads(run_command(["ip", "netns", "exec", bed.r, "nft", "-j", "list",
                                      "ruleset"]))
    return [item["rule"] for item in listing["nftables"] if "rule" in item]


async def _until_in_kernel(r: NamespaceLoop, relay: RelayService, allocation_id: int) -> None:
    for _ in range(300):
        if r.call(lambda: relay.in_kernel(allocation_id)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the allocation did not go to the kernel within 3 s")


def test_first_datagrams_in_userspace_then_the_kernel_forwards_and_release_ends_it(
        bed: RelayBed) -> None:
    relay_ip = bed.relay_ip
    a = bed.udp_socket(bed.a, bed.peer_a_ip)
    b = bed.udp_socket(bed.b, bed.peer_b_ip)
    b_end = b.getsockname()

    async def main() -> None:
        async with relay_in(bed) as (r, relay):
            # A latches (RFC 7362): its first datagram, from whichever port, names it.
            async def allocate() -> Any:
                return await relay.allocate(PermittedPeer(bed.peer_a_ip, 9, latch=True),
                                            b_end, 60)

            allocation = await r.run(allocate)
            pa, pb = allocation.caller_side[1], allocation.callee_side[1]
            assert not r.call(lambda: relay.in_kernel(allocation.id))
            a.sendto(b"through userspace", (relay_ip, pa))
            assert recv(b) == (b"through userspace", (relay_ip, pb))
            await _until_in_kernel(r, relay, allocation.id)
            userspace = r.call(lambda: relay.get(allocation.id).counters)
            assert userspace.caller_to_callee_datagrams == 1

            for seq in range(40):
                a.sendto(b"a %d" % seq, (relay_ip, pa))
                assert recv(b) == (b"a %d" % seq, (relay_ip, pb))
            for seq in range(25):
                b.sendto(b"b %d" % seq, (relay_ip, pb))
                assert recv(a) == (b"b %d" % seq, (relay_ip, pa))
            # The kernel carried them; the userspace relay saw none of them.
            kernel = r.call(relay.kernel_counters)[allocation.id]
            assert (kernel.a_to_b_datagrams, kernel.b_to_a_datagrams) == (40, 25)
            assert kernel.a_to_b_bytes == sum(len(b"a %d" % s) for s in range(40))
            assert r.call(lambda: relay.get(allocation.id).counters) == userspace
            assert any(rule.get("comment", "").startswith("ueconnect-relay allocation-")
                       for rule in rules(bed))

            released = await r.run(lambda: relay.release(allocation.id))
            assert released.counters.caller_to_callee_datagrams == 41
            assert released.counters.callee_to_caller_datagrams == 25
            # No rule, no conntrack entry of the flow, no socket: nothing forwards any more.
            assert rules(bed) == []
            for port in (pa, pb):
                assert relay_conntrack(bed, "--orig-dst", relay_ip, "--dport", str(port)) == []
                assert relay_conntrack(bed, "--orig-src", relay_ip, "--sport", str(port)) == []
            assert r.call(relay.open_sockets) == 0
            a.sendto(b"after release", (relay_ip, pa))
            assert recv(b, 0.3) is None
        # The closed relay removed its table.
        tables = run_command(["ip", "netns", "exec", bed.r, "nft", "list", "tables"])
        assert DEFAULT_TABLE not in tables

    try:
        run(main())
    finally:
        a.close()
        b.close()


def test_a_third_host_is_dropped_by_the_kernel_relay_and_b_may_speak_first(
        bed: RelayBed) -> None:
    relay_ip = bed.relay_ip
    a = bed.udp_socket(bed.a, bed.peer_a_ip)
    c = bed.udp_socket(bed.a, bed.third_ip)
    b = bed.udp_socket(bed.b, bed.peer_b_ip)

    async def main() -> None:
        async with relay_in(bed) as (r, relay):
            async def allocate() -> Any:
                return await relay.allocate(a.getsockname(), b.getsockname(), 60)

            allocation = await r.run(allocate)
            await _until_in_kernel(r, relay, allocation.id)
            pa, pb = allocation.caller_side[1], allocation.callee_side[1]
            b.sendto(b"B first", (relay_ip, pb))
            assert recv(a) == (b"B first", (relay_ip, pa))
            c.sendto(b"intruder", (relay_ip, pa))
            assert recv(b, 0.3) is None
            a.sendto(b"A answers", (relay_ip, pa))
            assert recv(b) == (b"A answers", (relay_ip, pb))
            assert r.call(relay.kernel_counters)[allocation.id] == KernelRelayCounters(
                1, 9, 1, 7)
            # The intruder reached the socket (untranslated) and was dropped there.
            assert r.call(lambda: relay.get(allocation.id).counters) == AllocationCounters()

    try:
        run(main())
    finally:
        for sock in (a, c, b):
            sock.close()


def test_operator_with_relay_offload_nft_starts_only_where_the_kernel_can_forward(
        bed: RelayBed, tmp_path: Path) -> None:
    text = _gateway_config(tmp_path, f'[gateway]\nrelay_address = "{bed.relay_ip}"\n'
                                     'relay_offload = "nft"\n') + \
        f'[store]\nbackend = "sqlite"\npath = "{tmp_path / "s.sqlite"}"\n'
    config = parse_config(text, tmp_path / "a.toml")

    async def start() -> bool:
        async with Operator.start(config, roles=(Role.SCSCF,)) as operator:
            assert operator.gateway is not None
            return await operator.gateway.relay.offload_ready()

    def forwarding(value: str) -> None:
        run_command(["ip", "netns", "exec", bed.r, "sysctl", "-q", "-w",
                     f"net.ipv4.ip_forward={value}"])

    async def main() -> None:
        async with NamespaceLoop(bed.r) as r:
            run_command(["ip", "-n", bed.r, "link", "set", "lo", "up"])
            assert await r.run(start) is True
            forwarding("0")
            try:
                with pytest.raises(OperatorError, match=r'relay_offload = "nft": '
                                   r"net\.ipv4\.ip_forward is 0 in this network namespace"):
                    await r.run(start)
            finally:
                forwarding("1")

    run(main())
