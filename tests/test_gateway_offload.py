"""The relay's kernel offload ([gateway] relay_offload = "nft"; ims.gateway.aiorelay with
ims.gateway.nft_relay), without root: the data plane's runner hooks record what would reach
nft and conntrack, and the relay's real sockets run on loopback. Real forwarding through the
kernel is tests/test_gateway_offload_netns.py."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from ims.config import ConfigError, GatewayMode, parse_config
from ims.gateway.aiorelay import RelayService, with_kernel
from ims.gateway.errors import GatewayUsageError
from ims.gateway.nft_relay import KernelRelayCounters, KernelRelayError, NftRelayDataPlane
from ims.gateway.relay import (
    AllocationCounters,
    PermittedPeer,
    RelayConfig,
    RelayOffload,
    Side,
)
from ims.gateway.service import RelayGateway
from ims.pcp.errors import NftError
from ims.sip.message import Request
from tests.test_gateway_flows import _answer, _asking, _gateway_config, _invite, _offer, _ok

LOOPBACK = "127.0.0.1"
# Peers on documentation addresses: the relay never hears from them (loopback sockets), but
# they are what the kernel would forward between, unlike loopback peers (delivered locally).
BILL, DAVE = ("198.51.100.7", 40000), ("203.0.113.9", 41000)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


class FakeKernel:
    """nft and conntrack as the data plane would run them, recorded in order (the runners are
    called from worker threads); `probe` is called at each step to record what the caller
    wants to know then (e.g. how many relay sockets are open)."""

    def __init__(self, forwarding: str = "1") -> None:
        self.lock = threading.Lock()
        self.steps: list[tuple[str, str, object]] = []  # (tool, what, probe())
        self.listing: dict[str, object] = {"nftables": []}
        self.forwarding = forwarding
        self.fail_nft: str | None = None
        self.fail_conntrack: str | None = None
        self.probe: Callable[[], object] = lambda: None
        self.threads: set[str] = set()

    def nft(self, args: Sequence[str], stdin: str | None) -> str:
        with self.lock:
            self.threads.add(threading.current_thread().name)
            if list(args[:2]) == ["-j", "list"]:
                self.steps.append(("nft", "list", self.probe()))
                return json.dumps(self.listing)
            if self.fail_nft is not None:
                raise NftError(self.fail_nft)
            self.steps.append(("nft", stdin or "", self.probe()))
            return ""

    def conntrack(self, args: Sequence[str]) -> int:
        with self.lock:
            if self.fail_conntrack is not None:
                raise NftError(self.fail_conntrack)
            self.steps.append(("conntrack", " ".join(args), self.probe()))
            return 0

    def plane(self) -> NftRelayDataPlane:
        return NftRelayDataPlane(runner=self.nft, conntrack=self.conntrack,
                                 sysctl=lambda name: self.forwarding)

    def batches(self) -> list[str]:
        return [what for tool, what, _ in self.steps if tool == "nft" and what != "list"]

    def cuts(self) -> list[str]:
        return [what for tool, what, _ in self.steps
                if tool == "conntrack" and "--mark" not in what]

    def count(self, tag: str, forwarded: tuple[int, int], back: tuple[int, int]) -> None:
        """The forward rules of flow `tag` have counted these (datagrams, payload bytes)."""
        rules = []
        for handle, (direction, (packets, octets)) in enumerate(
                (("a-to-b", forwarded), ("b-to-a", back)), start=10):
            rules.append({"rule": {
                "family": "inet", "table": "ueconnect_relay", "chain": "forward",
                "handle": handle, "comment": f"ueconnect-relay {tag} {direction}",
                "expr": [{"counter": {"packets": packets, "bytes": octets + 28 * packets}}]}})
        self.listing = {"nftables": rules}


async def _until(condition: Callable[[], bool], what: str, within: float = 3.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {within} s: {what}")


async def _settled(relay: RelayService) -> None:
    """Every handover in flight has finished (installed or given up)."""
    await _until(lambda: not relay._handovers, "the handovers finished")


# -- start and stop ----------------------------------------------------------------------------


def test_start_checks_the_host_and_resets_the_table_off_the_loop() -> None:
    async def main() -> None:
        kernel = FakeKernel()
        async with RelayService(RelayConfig(LOOPBACK, offload=RelayOffload.NFT),
                                data_plane=kernel.plane()) as relay:
            assert await relay.offload_ready() is True
            assert kernel.batches() == ["add table inet ueconnect_relay\n"
                                        "delete table inet ueconnect_relay\n"]
            assert [what for tool, what, _ in kernel.steps if tool == "conntrack"] == [
                "-D -f ipv4 --mark 0x100000/0x100000", "-D -f ipv6 --mark 0x100000/0x100000"]
            assert threading.current_thread().name not in kernel.threads
        # close resets again: nothing of ours stays in the kernel.
        assert kernel.batches()[-1].endswith("delete table inet ueconnect_relay\n")

    run(main())


def test_without_offload_there_is_no_data_plane() -> None:
    async def main() -> None:
        async with RelayService(RelayConfig(LOOPBACK)) as relay:
            assert relay.data_plane is None and await relay.offload_ready() is False
            allocation = await relay.allocate(BILL, DAVE, 30)
            assert not relay.in_kernel(allocation.id) and relay.kernel_counters() == {}

    run(main())


def test_offload_start_failure_is_reported_and_userspace_carries_on() -> None:
    async def main() -> None:
        kernel = FakeKernel(forwarding="0")
        loop = asyncio.get_running_loop()
        async with RelayService(RelayConfig(LOOPBACK), data_plane=kernel.plane()) as relay:
            with pytest.raises(KernelRelayError, match=r"net\.ipv4\.ip_forward is 0"):
                await relay.offload_ready()
            allocation = await relay.allocate(BILL, DAVE, 30)
            await asyncio.sleep(0.05)
            assert not relay.in_kernel(allocation.id) and kernel.batches() == []
            # The userspace relay relays as ever: a loopback pair through real sockets.
            got: asyncio.Queue[bytes] = asyncio.Queue()

            class Dave(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                    got.put_nowait(data)

            dave_t, _ = await loop.create_datagram_endpoint(Dave, local_addr=(LOOPBACK, 0))
            bill_t, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                            local_addr=(LOOPBACK, 0))
            try:
                pair = await relay.allocate(bill_t.get_extra_info("sockname"),
                                            dave_t.get_extra_info("sockname"), 30)
                bill_t.sendto(b"e2e4", pair.caller_side)
                assert await asyncio.wait_for(got.get(), 2) == b"e2e4"
            finally:
                bill_t.close()
                dave_t.close()
        assert kernel.batches() == []  # close does not touch a kernel it could not use

    run(main())


# -- the handover ------------------------------------------------------------------------------


def test_exact_peers_go_to_the_kernel_at_once_then_the_ports_only_drop() -> None:
    async def main() -> None:
        kernel = FakeKernel()
        async with RelayService(RelayConfig(LOOPBACK), data_plane=kernel.plane()) as relay:
            await relay.offload_ready()
            allocation = await relay.allocate(BILL, DAVE, 30)
            await _settled(relay)
            assert relay.in_kernel(allocation.id)
            flow = relay.kernel_flows()[allocation.id]
            assert (flow.tag, flow.relay_ip) == (f"allocation-{allocation.id}", LOOPBACK)
            assert (flow.side_a_port, flow.peer_a) == (allocation.caller_side[1], BILL)
            assert (flow.side_b_port, flow.peer_b) == (allocation.callee_side[1], DAVE)
            install = kernel.batches()[-1]
            assert (f"ip saddr 198.51.100.7 udp sport 40000 ip daddr 127.0.0.1 udp dport "
                    f"{allocation.caller_side[1]} ") in install
            assert "dnat ip to 203.0.113.9:41000" in install
            # The conntrack entries of the four tuples are cut at the install and once more
            # after the userspace relay stopped sending (the handover's second step).
            assert len(kernel.cuts()) == 8 and kernel.cuts()[:4] == kernel.cuts()[4:]
            # The ports stay bound (the ports stay ours) and drop what reaches them.
            assert relay.open_sockets() == 2
            ports = relay._ports[allocation.id]
            assert all(port.kernel for port in ports)
            ports[0].datagram_received(b"x", BILL)
            assert relay.get(allocation.id).counters == AllocationCounters()

    run(main())


def test_a_latching_peer_goes_to_the_kernel_after_its_first_datagram() -> None:
    async def main() -> None:
        kernel = FakeKernel()
        async with RelayService(RelayConfig(LOOPBACK), data_plane=kernel.plane()) as relay:
            await relay.offload_ready()
            allocation = await relay.allocate(PermittedPeer(*BILL, latch=True), DAVE, 30)
            await asyncio.sleep(0.05)
            assert not relay.in_kernel(allocation.id) and len(kernel.batches()) == 1  # reset
            assert relay.table.exact_peers(allocation.id) is None
            # What the socket does with Bill's first datagram, from the CGN's port 61000.
            now = asyncio.get_running_loop().time()
            nat = (BILL[0], 61000)
            assert relay.table.receive(allocation.id, Side.CALLER, nat, 4, now) == DAVE
            relay.log_latches()
            await _settled(relay)
            assert relay.kernel_flows()[allocation.id].peer_a == nat

    run(main())


def test_the_relay_gateway_hands_over_after_the_answer_not_before() -> None:
    async def main() -> None:
        kernel = FakeKernel()
        gateway = RelayGateway.start(RelayConfig(LOOPBACK), lifetime=60,
                                     data_plane=kernel.plane())
        try:
            relay = gateway.relay
            await relay.offload_ready()
            offer = _offer(BILL)
            prepared = await gateway.prepare(_asking(_invite(offer)))
            assert isinstance(prepared, Request)
            [allocation] = relay.list()
            await asyncio.sleep(0.05)
            # The callee side is a placeholder until the answer: nothing for the kernel.
            assert relay.kernel_flows() == {} and len(kernel.batches()) == 1
            gateway.complete("c1@test", _ok(_answer(prepared.body, DAVE)))
            await _settled(relay)
            flow = relay.kernel_flows()[allocation.id]
            assert (flow.peer_a, flow.peer_b) == (BILL, DAVE)
            # The listing adds the kernel's counters to the userspace relay's.
            kernel.count(flow.tag, (120, 120 * 50), (80, 80 * 40))
            [leg] = gateway.open_legs()
            assert leg.kernel == KernelRelayCounters(120, 6000, 80, 3200)
            counters = leg.allocation.counters
            assert (counters.caller_to_callee_datagrams, counters.callee_to_caller_datagrams,
                    counters.caller_to_callee_bytes) == (120, 80, 6000)
            assert "120/80 datagrams (120/80 in the kernel), 0 dropped" in leg.describe()
        finally:
            await gateway.close()

    run(main())


def test_same_operator_chains_and_loopback_peers_stay_in_userspace() -> None:
    async def main() -> None:
        kernel = FakeKernel()
        async with RelayService(RelayConfig("192.0.2.2"), data_plane=kernel.plane()) as relay:
            await relay.offload_ready()
            # No socket is needed for the decision: ask the table and the service directly.
            relay.table.allocate(BILL, ("192.0.2.2", 50000), 40000, 40001, 0.0, 30)
            relay.table.allocate(("127.0.0.5", 4000), DAVE, 40002, 40003, 0.0, 30)
            relay.hand_over(1)
            relay.hand_over(2)
            assert relay._handovers == {} and kernel.batches()[1:] == []

    run(main())


# -- failures ----------------------------------------------------------------------------------


def test_an_install_nft_refuses_is_logged_and_userspace_keeps_the_allocation(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        kernel = FakeKernel()
        async with RelayService(RelayConfig(LOOPBACK), data_plane=kernel.plane()) as relay:
            await relay.offload_ready()
            kernel.fail_nft = "nft -f - failed (1): Error: Could not process rule"
            allocation = await relay.allocate(BILL, DAVE, 30)
            await _settled(relay)
            assert not relay.in_kernel(allocation.id)
            assert not any(port.kernel for port in relay._ports[allocation.id])
            # The userspace relay still relays for it.
            now = asyncio.get_running_loop().time()
            assert relay.table.receive(allocation.id, Side.CALLER, BILL, 3, now) == DAVE
            kernel.fail_nft = None

    with caplog.at_level(logging.WARNING, logger="ims.gateway.aiorelay"):
        run(main())
    assert "stays in userspace: the kernel relay failed" in caplog.text
    assert "Could not process rule" in caplog.text


def test_a_half_install_is_taken_back_out_of_the_kernel() -> None:
    async def main() -> None:
        kernel = FakeKernel()
        async with RelayService(RelayConfig(LOOPBACK), data_plane=kernel.plane()) as relay:
            await relay.offload_ready()
            # The rules go in, then conntrack fails: the rules must come out again.
            kernel.fail_conntrack = "conntrack -D failed (1): Operation not permitted"
            kernel.listing = {"nftables": [{"rule": {
                "family": "inet", "table": "ueconnect_relay", "chain": "prerouting",
                "handle": 7, "comment": "ueconnect-relay allocation-1 a-to-b", "expr": []}}]}
            allocation = await relay.allocate(BILL, DAVE, 30)
            await _settled(relay)
            assert not relay.in_kernel(allocation.id)
            assert relay.data_plane is not None and relay.data_plane.flows() == ()
            assert kernel.batches()[-1] == (
                "delete rule inet ueconnect_relay prerouting handle 7\n")
            kernel.fail_conntrack = None

    run(main())


# -- the end: the kernel flow first, then the sockets ------------------------------------------


def test_release_removes_the_kernel_flow_before_closing_the_sockets() -> None:
    async def main() -> None:
        kernel = FakeKernel()
        async with RelayService(RelayConfig(LOOPBACK), data_plane=kernel.plane()) as relay:
            kernel.probe = relay.open_sockets
            await relay.offload_ready()
            allocation = await relay.allocate(BILL, DAVE, 30)
            await _settled(relay)
            tag = relay.kernel_flows()[allocation.id].tag
            kernel.count(tag, (10, 1000), (4, 40))
            kernel.steps.clear()
            released = await relay.release(allocation.id)
            deleted = [s for s in kernel.steps if s[0] == "nft" and "delete rule" in s[1]]
            assert deleted and all(sockets == 2 for _, _, sockets in deleted)
            assert [sockets for tool, _, sockets in kernel.steps if tool == "conntrack"] == [2] * 4
            assert relay.open_sockets() == 0 and relay.kernel_flows() == {}
            # The final counters include what the kernel forwarded.
            assert released.counters == AllocationCounters(10, 1000, 4, 40)

    run(main())


def test_expiry_removes_the_kernel_flow_then_closes_the_sockets() -> None:
    async def main() -> None:
        kernel = FakeKernel()
        async with RelayService(RelayConfig(LOOPBACK), data_plane=kernel.plane()) as relay:
            kernel.probe = relay.open_sockets
            await relay.offload_ready()
            allocation = await relay.allocate(BILL, DAVE, 0.3)
            await _settled(relay)
            kernel.listing = {"nftables": [{"rule": {
                "family": "inet", "table": "ueconnect_relay", "chain": "forward", "handle": 3,
                "comment": f"ueconnect-relay allocation-{allocation.id} a-to-b", "expr": []}}]}
            kernel.steps.clear()
            await _until(lambda: relay.open_sockets() == 0, "the expired allocation closed")
            assert relay.kernel_flows() == {}
            deleted = [s for s in kernel.steps if s[0] == "nft" and "delete rule" in s[1]]
            assert [sockets for _, _, sockets in deleted] == [2]

    run(main())


def test_close_removes_the_table_before_the_sockets_close() -> None:
    async def main() -> None:
        kernel = FakeKernel()
        relay = RelayService(RelayConfig(LOOPBACK), data_plane=kernel.plane())
        kernel.probe = relay.open_sockets
        await relay.offload_ready()
        await relay.allocate(BILL, DAVE, 30)
        await _settled(relay)
        kernel.steps.clear()
        await relay.close()
        assert kernel.steps[0][:2] == ("nft", "add table inet ueconnect_relay\n"
                                              "delete table inet ueconnect_relay\n")
        assert all(sockets == 2 for _, _, sockets in kernel.steps)
        assert relay.open_sockets() == 0
        assert relay.data_plane is not None
        with pytest.raises(GatewayUsageError, match="closed"):
            relay.data_plane.install("late", LOOPBACK, 1, BILL, 2, DAVE)

    run(main())


def test_with_kernel_adds_each_direction_to_its_own() -> None:
    counters = AllocationCounters(1, 10, 2, 20, 3, 4)
    assert with_kernel(counters, KernelRelayCounters(5, 50, 6, 60)) == AllocationCounters(
        6, 60, 8, 80, 3, 4)


def test_relay_config_offload_values() -> None:
    assert RelayConfig(LOOPBACK).offload is RelayOffload.NONE
    assert RelayConfig("192.0.2.2", offload="nft").offload is RelayOffload.NFT  # type: ignore[arg-type]
    with pytest.raises(GatewayUsageError, match="offload 'ebpf' is not one of none, nft"):
        RelayConfig(LOOPBACK, offload="ebpf")  # type: ignore[arg-type]


# -- [gateway] relay_offload -------------------------------------------------------------------


def test_gateway_relay_offload_key(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"

    def config(lines: str, pcscf: bool = True) -> Any:
        return parse_config(_gateway_config(tmp_path, f"[gateway]\n{lines}", pcscf), path)

    assert config('relay_address = "192.0.2.2"\n').gateway.relay_offload is RelayOffload.NONE
    section = config('relay_address = "192.0.2.2"\nrelay_offload = "nft"\n').gateway
    assert (section.mode, section.relay_offload) == (GatewayMode.RELAY, RelayOffload.NFT)
    section = config('relay_address = "2001:db8::2"\nrelay_offload = "NFT"\n').gateway
    assert section.relay_offload is RelayOffload.NFT
    assert config('mode = "off"\nrelay_offload = "none"\n').gateway.relay_offload \
        is RelayOffload.NONE
    for bad, words in (
            ('relay_address = "192.0.2.2"\nrelay_offload = "ebpf"\n',
             r'relay_offload.*"ebpf" is not a relay offload; expected "none" .* or "nft"'),
            ('relay_address = "192.0.2.2"\nrelay_offload = true\n', "is not a string"),
            ('mode = "off"\nrelay_offload = "nft"\n',
             r'applies to modes "relay" and "pcp" \(mode is off'),
            ('relay_address = "127.0.0.1"\nrelay_offload = "nft"\n',
             r"relay_address 127\.0\.0\.1 is loopback.*never forwarded"),
            ('relay_address = "::1"\nrelay_offload = "nft"\n', r"relay_address ::1 is loopback")):
        with pytest.raises(ConfigError, match=words):
            config(bad)
    # The default relay address (the P-CSCF's loopback host here) is checked the same way.
    with pytest.raises(ConfigError, match=r"relay_address 127\.0\.0\.3 is loopback"):
        config('relay_offload = "nft"\n')
