"""The demo in the network-namespace testbed (`--testbed`, root; ims/testbed/world.py).

Each UE sits behind its operator's symmetric CGN, the UEs use transport policy "all" and the
STUN server, the operators run [gateway] mode pcp. play: the CGNs map through PCP, the path is
direct; relay: the CGNs refuse PCP, the operators relay; unassisted: no gateway, no PCP, the
UEs try alone (host and STUN candidates) and must fail with ConnectivityFailed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ims.demo.scenarios import Scenario
from ims.demo.world import OPERATORS, lookup
from ims.dns.locator import LocatorConfig
from ims.embedded import DemoSubscriber
from ims.operator import Operator
from ue_ua.client import UeConfig
from ue_ua.lobby_ws import serve_lobby

if TYPE_CHECKING:
    # Imported when --testbed runs: the embedded demo does not need the testbed's modules.
    from ims.testbed.world import TestbedWorld

T = TypeVar("T")

TESTBED_SETUP_TIMEOUT = 4.0  # seconds of ICE checks in the testbed (unassisted waits it out)


@dataclass(frozen=True)
class TestbedOptions:
    """`--testbed` and its options (None of them: the testbed's defaults)."""

    __test__ = False

    nat: str = "symmetric"
    prefix: str | None = None
    state_dir: Path | None = None
    delay_ms: int | None = None


class TestbedRun:
    """The namespace testbed: each UE in its UE namespace's loop, each operator in its core's,
    the lobby on the DNS host (192.0.2.53, reached through the CGNs like any server)."""

    def __init__(self, world: TestbedWorld) -> None:
        self.world = world
        self.trace = world.trace
        self.subscribers = world.subscribers

    def subscriber(self, name: str) -> DemoSubscriber:
        return self.world.subscriber(name)

    def describe(self) -> str:
        w = self.world
        help_ = {"ours": "our PCP server", "refuse": "a PCP server refusing every request",
                 "off": "no PCP server"}[w.pcp.value]  # fmt: skip
        return (f"the namespace testbed ({w.plan.options.prefix}*, {w.plan.options.nat.value} "
                f"CGNs with {help_}, [gateway] mode {w.gateway_mode.value}): DNS and STUN on "
                f"{w.dns_server[0]}, Alpha P-CSCF {w.pcscf('Alpha')}, Beta P-CSCF "
                f"{w.pcscf('Beta')}; each UE at {w.ue_address} behind its CGN, transport "
                "policy \"all\"")  # fmt: skip

    def ue_config(self, sub: DemoSubscriber) -> UeConfig:
        config: UeConfig = self.world.ue_config(sub.name, setup_timeout=TESTBED_SETUP_TIMEOUT)
        return config

    async def on_ue(self, name: str, factory: Callable[[], Awaitable[T]]) -> T:
        return await self.world.ue_loop(name).run(factory)

    async def in_core(self, operator: str, function: Callable[[Operator], T]) -> T:
        return await self.world.in_core(operator, function)

    async def serve_lobby(self) -> tuple[str, Callable[[], Awaitable[None]]]:
        host = self.world.dns_server[0]
        where = self.world.loop("dns")
        handle = await where.run(lambda: serve_lobby(host, 0))
        return f"ws://{host}:{handle.port}", lambda: where.run(handle.close)

    async def locate(self, operator: str, e164: str, plmn: str) -> str:
        # Asked from the operator's core, where its border asks.
        config = LocatorConfig.for_server(*self.world.dns_server)
        return await self.world.core_loop(operator).run(lambda: lookup(config, e164, plmn))

    async def cgn_mappings(self) -> int:
        return sum([len(await self.world.pcp_mappings(op)) for op in OPERATORS])

    def cgn_summary(self) -> str:
        refused = {op: self.world.pcp_refusals(op) for op in OPERATORS}
        if not any(refused.values()):
            return ""
        return "; the CGNs refused " + ", ".join(f"{op}'s {n}" for op, n in refused.items()) \
            + " PCP request(s) (NO_RESOURCES)"


@contextlib.asynccontextmanager
async def running_testbed(out: Path, scenario: Scenario,
                          testbed: TestbedOptions) -> AsyncIterator[TestbedRun]:
    """The testbed world for `scenario` (its PCP and [gateway] modes), its workdir `out`."""
    from ims.testbed.world import TestbedWorld

    out.mkdir(parents=True, exist_ok=True)
    (out / "trace.jsonl").unlink(missing_ok=True)  # the demo world starts afresh
    options: dict[str, Any] = {}
    if testbed.prefix is not None:
        options["prefix"] = testbed.prefix
    if testbed.state_dir is not None:
        options["state_dir"] = testbed.state_dir
    async with TestbedWorld.start(nat=testbed.nat, pcp=scenario.pcp, gateway=scenario.gateway,
                                  trace=True, workdir=out, delay_ms=testbed.delay_ms,
                                  **options) as world:
        yield TestbedRun(world)
