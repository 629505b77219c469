"""What the demo needs of a running world (`World`), whichever it is: the embedded default
(ims.demo.embedded_run) or the namespace testbed (ims.demo.testbed_run); and what both share.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ims.dns.locator import Locator, LocatorConfig
from ims.embedded import WORLD, DemoSubscriber
from ims.operator import Operator
from ue_ua.client import UeConfig

T = TypeVar("T")

OPERATORS = tuple(op.name for op in WORLD.operators)  # "Alpha", "Beta": the same in both worlds


class World(Protocol):
    """What the demo needs of a running world: where each UE and each operator lives (in the
    testbed each has a loop of its own, in its namespace; on loopback all share this loop),
    the UEs' configs, the lobby and the resolver, and what the CGNs hold."""

    trace: Path | None
    subscribers: tuple[DemoSubscriber, ...]

    def subscriber(self, name: str) -> DemoSubscriber: ...

    def describe(self) -> str: ...

    def ue_config(self, sub: DemoSubscriber) -> UeConfig: ...

    async def on_ue(self, name: str, factory: Callable[[], Awaitable[T]]) -> T: ...

    async def in_core(self, operator: str, function: Callable[[Operator], T]) -> T: ...

    async def serve_lobby(self) -> tuple[str, Callable[[], Awaitable[None]]]: ...

    async def locate(self, operator: str, e164: str, plmn: str) -> str: ...

    async def cgn_mappings(self) -> int: ...

    def cgn_summary(self) -> str:
        """What the CGNs did beyond the gateways' mappings ("" or "; ..."), for a detail."""
        ...


def plmn_of(operator: str) -> str:
    op = next(o for o in WORLD.operators if o.name == operator)
    return f"{op.mcc}-{op.mnc}"


async def lookup(config: LocatorConfig, e164: str, plmn: str) -> str:
    """What a border finds for `e164` at `plmn`: ENUM, then RFC 3263 on the home domain."""
    locator = Locator(config)
    uri = await locator.enum_lookup(e164)
    target = (await locator.locate_operator(plmn))[0]
    return f"ENUM {e164} -> {uri}; PLMN {plmn} -> {target.host} {target.address}:{target.port}"


async def both(first: Awaitable[T], second: Awaitable[Any]) -> T:
    """Run two awaitables at once; when one fails, cancel the other. `first`'s result."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    result: T = tasks[0].result()
    return result
