"""The testbed world's per-link delay (`TestbedWorld.start(delay_ms=...)`).

Without root: which interfaces the plan delays (ims.testbed.topology.link_delays) and the
arguments the world refuses. As root: a world with 10 ms per link through NFQUEUE (forced, so
it runs on kernels with netem too) shows the path delays the docs give (a UE to the DNS host
crosses three delayed interfaces each way, a core to it one), counts every packet as delayed,
and its close finds an NFQUEUE rule somebody left; with netem where the kernel has it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import dns.asyncquery
import dns.message
import pytest

from ims.testbed.builder import run_command
from ims.testbed.delay import IPTABLES, probe_netem
from ims.testbed.errors import TestbedUsageError
from ims.testbed.requirements import DELAY_TOOLS, WORLD_TOOLS, missing_for_world
from ims.testbed.topology import Delay, TestbedOptions, build_plan, link_delays
from ims.testbed.world import DelayMechanism, TestbedWorld, WorldLeftovers

DELAY_MS = 10
ROUNDS = 5
# Scheduling adds about a millisecond per delayed interface (docs/testbed.md); a loaded CI
# machine more. The bound only has to tell "delayed n times" from "n + 1 times".
SLACK_PER_HOP_MS = 6.0

EVERY_LINK = {"alpha-ue:eth0", "alpha-cgn:in0", "alpha-cgn:out0", "ix:alpha0", "alpha-core:eth0",
              "beta-ue:eth0", "beta-cgn:in0", "beta-cgn:out0", "ix:beta0", "beta-core:eth0",
              "dns:eth0", "ix:br0"}


def _names(prefix: str, delays: Iterable[Delay]) -> set[str]:
    return {f"{d.netns.removeprefix(prefix)}:{d.dev}" for d in delays}


# -- the plan (no root) ------------------------------------------------------------------------


def test_every_link_interface_is_delayed_once_and_bridge_ports_are_not() -> None:
    plan = build_plan(TestbedOptions())
    delays = link_delays(plan, DELAY_MS)
    assert _names(plan.options.prefix, delays) == EVERY_LINK
    assert len(delays) == len(EVERY_LINK) and {d.ms for d in delays} == {DELAY_MS}
    # The router's bridge ports are no delay point: frames between the cores and the DNS host
    # are switched, so only the sender's eth0 delays them.
    ports = {port for bridge in plan.bridges for port in bridge.ports}
    assert not ports & {d.dev for d in delays if d.netns == plan.namespace("ix")}
    # `ueconnect testbed up --netem-delay` plans the same interfaces.
    assert build_plan(TestbedOptions(netem_delay_ms=DELAY_MS)).delays == delays


def test_the_router_keeps_bridged_frames_out_of_iptables() -> None:
    # Else an NFQUEUE rule on br0 would delay core-to-core frames twice where netem does once.
    plan = build_plan(TestbedOptions())
    settings = {(s.key, s.value, s.absent_ok) for s in plan.sysctls
                if s.netns == plan.namespace("ix")}
    assert ("net.bridge.bridge-nf-call-iptables", "0", True) in settings


@pytest.mark.parametrize("kwargs, message", [
    ({"delay_ms": 0}, "delay_ms 0: give 1 to 10000"),
    ({"delay_ms": 10, "delay_mechanism": "tc"}, "delay_mechanism 'tc': give one of netem"),
])
def test_world_refuses_a_delay_it_cannot_give(kwargs: dict[str, object], message: str,
                                              tmp_path: Path) -> None:
    async def enter() -> None:
        async with TestbedWorld.start(state_dir=tmp_path, **kwargs):  # type: ignore[arg-type]
            raise AssertionError("started")

    with pytest.raises(TestbedUsageError, match=message):
        asyncio.run(enter())
    assert not list(tmp_path.iterdir())  # refused before touching anything
    with pytest.raises(TestbedUsageError, match="give 1 to 10000"):
        link_delays(build_plan(TestbedOptions()), 0)


# -- real delays (root) ------------------------------------------------------------------------


def _skip_reason() -> str | None:
    return missing_for_world(tools=(*WORLD_TOOLS, *DELAY_TOOLS))


def _cleanup(prefix: str) -> None:
    for name in run_command(["ip", "netns", "list"]).split():
        if name.startswith(prefix):
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


async def _dns_rtts(world: TestbedWorld, role: str) -> list[float]:
    """Milliseconds of ROUNDS DNS queries from `role`'s namespace to the DNS host."""
    async def ask() -> list[float]:
        rtts = []
        for _ in range(ROUNDS):
            query = dns.message.make_query("ims.mnc002.mcc001.3gppnetwork.org", "NAPTR")
            start = time.perf_counter()
            await dns.asyncquery.udp(query, world.dns_server[0], port=world.dns_server[1],
                                     timeout=3)
            rtts.append((time.perf_counter() - start) * 1000)
        return rtts

    return await world.loop(role).run(ask)


def _assert_path_delays(ue: list[float], core: list[float]) -> None:
    """Each round trip at least its delayed interfaces' share, its median within the slack."""
    # UE -> DNS leaves UE eth0, CGN out0, router br0; back DNS eth0, router alpha0, CGN in0.
    # Core -> DNS is switched: the core's eth0 one way, the DNS host's eth0 back.
    for rtts, hops in ((ue, 6), (core, 2)):
        assert min(rtts) >= hops * DELAY_MS, rtts
        assert sorted(rtts)[ROUNDS // 2] < hops * (DELAY_MS + SLACK_PER_HOP_MS), rtts


@pytest.fixture
def prefix() -> Iterator[str]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"uec-d{os.getpid() % 100000}-"
    try:
        yield name
    finally:
        _cleanup(name)


@pytest.mark.root
def test_nfqueue_delay_gives_the_documented_path_delays_and_is_removed(prefix: str,
                                                                        tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    async def main() -> None:
        async with TestbedWorld.start(prefix=prefix, state_dir=tmp_path / "state", stun=False,
                                      pcp="off", delay_ms=DELAY_MS,
                                      delay_mechanism="nfqueue") as world:
            assert world.delay_mechanism is DelayMechanism.NFQUEUE
            assert "ix" in world.loops  # the router got a loop for its three interfaces
            assert _names(prefix, world.link_delays) == EVERY_LINK
            assert "10 ms one-way" in world.describe_delay()
            ue = await _dns_rtts(world, "alpha-ue")
            core = await _dns_rtts(world, "beta-core")
            _assert_path_delays(ue, core)
            counters = world.delay_counters()
            assert set(counters) == EVERY_LINK
            assert counters["alpha-ue:eth0"][0] >= ROUNDS and counters["ix:br0"][0] >= ROUNDS
            assert all(undelayed == 0 for _, undelayed in counters.values()), counters
            seen["rules"] = run_command(["ip", "netns", "exec", world.namespace("ix"), IPTABLES,
                                         "-t", "mangle", "-S", "POSTROUTING"])
            # A rule somebody else left: the close must name it.
            run_command(["ip", "netns", "exec", world.namespace("beta-ue"), IPTABLES, "-t",
                         "mangle", "-A", "POSTROUTING", "-o", "eth0", "-j", "NFQUEUE",
                         "--queue-num", "9", "--queue-bypass"])

    with pytest.raises(WorldLeftovers) as left:
        asyncio.run(asyncio.wait_for(main(), 60))
    assert [item for item in left.value.leftovers if "NFQUEUE" in item or "nfqueue" in item] \
        == [f"NFQUEUE rule in {prefix}beta-ue: -A POSTROUTING -o eth0 -j NFQUEUE --queue-num 9 "
            "--queue-bypass"]  # ours were all removed, and every queue unbound
    assert str(seen["rules"]).count("NFQUEUE") == 3  # alpha0, beta0, br0
    assert not {n for n in run_command(["ip", "netns", "list"]).split() if n.startswith(prefix)}


@pytest.mark.root
def test_netem_delay_where_the_kernel_has_it(prefix: str, tmp_path: Path) -> None:
    probe = probe_netem()
    if not probe.available:
        pytest.skip(f"this kernel has no sch_netem ({probe.reason}); the NFQUEUE test covers "
                    "the world's delay here")

    async def main() -> None:
        async with TestbedWorld.start(prefix=prefix, state_dir=tmp_path / "state", stun=False,
                                      pcp="off", delay_ms=DELAY_MS) as world:
            assert world.delay_mechanism is DelayMechanism.NETEM
            assert "ix" not in world.loops and world.delay_counters() == {}
            qdisc = run_command(["ip", "netns", "exec", world.namespace("ix"), "tc", "qdisc",
                                 "show", "dev", "br0"])
            assert "netem" in qdisc and f"{DELAY_MS}ms" in qdisc
            _assert_path_delays(await _dns_rtts(world, "alpha-ue"),
                                await _dns_rtts(world, "beta-core"))

    asyncio.run(asyncio.wait_for(main(), 60))  # close found no netem qdisc left
