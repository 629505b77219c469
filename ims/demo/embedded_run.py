"""The demo in the embedded default (ims/embedded.py): DNS, both operators and both UEs on
loopback in this process, no root.

On loopback every candidate reaches every other, so the ICE checks would always pick the UEs'
own host pair and the operators would be bystanders; the UEs ask for transport policy "relay"
(only the operators' `typ relay` candidates), which is what a symmetric CGN forces, and the
path is the operators' relays.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from ims.demo.world import lookup
from ims.dns.locator import LocatorConfig
from ims.embedded import DemoSubscriber, EmbeddedWorld
from ims.operator import Operator
from ue_ua.client import UeConfig
from ue_ua.ice import TransportPolicy
from ue_ua.lobby_ws import serve_lobby

T = TypeVar("T")

EMBEDDED_POLICY: TransportPolicy = "relay"  # see the module docstring: loopback needs it


class EmbeddedRun:
    """The embedded default: everything in this process's loop, on loopback."""

    def __init__(self, world: EmbeddedWorld) -> None:
        self.world = world
        self.trace = world.trace
        self.subscribers = world.subscribers

    def subscriber(self, name: str) -> DemoSubscriber:
        return self.world.subscriber(name)

    def describe(self) -> str:
        w = self.world
        return (f"the embedded default: DNS 127.0.0.1:{w.dns.port}, Alpha P-CSCF "
                f"{w.pcscf('Alpha')}, Beta P-CSCF {w.pcscf('Beta')}; the UEs on 127.0.0.1 with "
                f"transport policy \"{EMBEDDED_POLICY}\" (on loopback every candidate reaches "
                "every other: the policy makes the operators' relays the path, as a symmetric "
                "CGN would)")  # fmt: skip

    def ue_config(self, sub: DemoSubscriber) -> UeConfig:
        pcscf = self.world.pcscf(sub.operator)
        return UeConfig(name=sub.name, impu=sub.sip_uri, impi=sub.impi, password=sub.password,
                        home_domain=sub.domain, pcscf=(pcscf.host, pcscf.port),
                        transport_policy=EMBEDDED_POLICY)  # fmt: skip

    async def on_ue(self, name: str, factory: Callable[[], Awaitable[T]]) -> T:
        return await factory()

    async def in_core(self, operator: str, function: Callable[[Operator], T]) -> T:
        return function(self.world.operators[operator])

    async def serve_lobby(self) -> tuple[str, Callable[[], Awaitable[None]]]:
        handle = await serve_lobby("127.0.0.1", 0)
        return f"ws://127.0.0.1:{handle.port}", handle.close

    async def locate(self, operator: str, e164: str, plmn: str) -> str:
        return await lookup(LocatorConfig.for_server("127.0.0.1", self.world.dns.port), e164,
                            plmn)  # fmt: skip

    async def cgn_mappings(self) -> int:
        return 0  # no CGN on loopback

    def cgn_summary(self) -> str:
        return ""  # no CGN on loopback
