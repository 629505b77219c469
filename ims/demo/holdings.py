"""What the operators hold, read in their cores: PCP mappings and relay legs at each
connectivity gateway, mappings at the CGNs, registrar bindings; and the bounded wait until
everything is released after the BYE.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ims.demo.report import StepFailed
from ims.demo.world import OPERATORS, World
from ims.embedded import DemoSubscriber
from ims.gateway.pcp_gateway import PcpOpenLeg
from ims.gateway.service import OpenLeg
from ims.operator import Operator

RELEASE_WITHIN = 5.0  # seconds the operators have to release after BYE (they do it in tasks)


@dataclass(frozen=True)
class Held:
    """What one operator's connectivity gateway holds open now."""

    mappings: tuple[str, ...] = ()  # the opcode of each leg held by a PCP mapping
    relay_legs: int = 0
    relay_sockets: int = 0
    relayed: int = 0  # datagrams its open relay legs forwarded, both ways

    def describe(self) -> str:
        parts = [f"PCP {opcode}" for opcode in self.mappings]
        if self.relay_legs:
            parts.append(f"{self.relay_legs} relay leg(s) ({self.relayed} datagrams relayed)")
        return ", ".join(parts) or "nothing"


def _held(op: Operator) -> Held:
    gateway = op.gateway
    if gateway is None:
        return Held()
    legs = gateway.open_legs()
    relays = [leg for leg in legs if isinstance(leg, OpenLeg)]
    return Held(
        mappings=tuple(leg.opcode for leg in legs if isinstance(leg, PcpOpenLeg)),
        relay_legs=len(relays),
        relay_sockets=gateway.relay.open_sockets(),
        relayed=sum(leg.allocation.counters.caller_to_callee_datagrams
                    + leg.allocation.counters.callee_to_caller_datagrams for leg in relays),
    )  # fmt: skip


async def holdings(world: World) -> dict[str, Held]:
    return {op: await world.in_core(op, _held) for op in OPERATORS}


async def open_now(world: World) -> tuple[int, int]:
    """(mappings, relays) open now: PCP mappings at the CGNs and mapping legs at the gateways;
    relay legs and relay sockets."""
    held = await holdings(world)
    mappings = await world.cgn_mappings() + sum(len(h.mappings) for h in held.values())
    return mappings, sum(h.relay_legs + h.relay_sockets for h in held.values())


async def released(world: World) -> None:
    """Wait (bounded) until nothing is open: the gateways release in tasks after the BYE."""
    deadline = time.monotonic() + RELEASE_WITHIN
    while time.monotonic() < deadline:
        if await open_now(world) == (0, 0):
            return
        await asyncio.sleep(0.05)
    held = await holdings(world)
    cgns = await world.cgn_mappings()
    left = {op: h.describe() for op, h in held.items() if h.describe() != "nothing"}
    raise StepFailed(
        f"still open after {RELEASE_WITHIN:g} s: "
        + "; ".join(f"{op}: {what}" for op, what in left.items())
        + (f"; {cgns} PCP mapping(s) at the CGNs" if cgns else ""),
        role=" and ".join(f"{op} connectivity gateway" for op in left) or "the CGNs",
    )


async def bindings(world: World, subscribers: Iterable[DemoSubscriber]) -> int:
    now = time.time()
    total = 0
    for sub in subscribers:
        total += await world.in_core(sub.operator, functools.partial(_bound, sub.sip_uri, now))
    return total


def _bound(aor: str, now: float, op: Operator) -> int:
    return len(op.store.bindings.list_for_aor(aor, now))
