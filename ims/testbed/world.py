"""The demo world inside the testbed's namespaces, in one process.

`TestbedWorld.start(...)` runs, each in the namespace the plan gives it (one `NamespaceLoop`,
i.e. one thread with its own asyncio loop, per namespace):

- `dns`: our authoritative server (ims.dns.server) serving dns_zones/testbed on 192.0.2.53:53,
  and coturn as a STUN-only server on 192.0.2.53:3478 (a subprocess in that namespace);
- each `<op>-cgn`: our PCP server (ims.pcp.aioserver) on the CGN's public address, port 5351,
  THIRD_PARTY only from that operator's core addresses, its mappings written as nftables rules
  in that namespace (ims.pcp.nft); or, with `pcp="refuse"`, a server that answers every request
  NO_RESOURCES; or, with `pcp="off"`, nothing on 5351;
- each `<op>-core`: the operator (ims.operator.Operator) from a config like the embedded
  world's (ims/embedded.py) with the testbed addresses of ims/dns/worlds.py, [gateway] mode pcp
  towards its own CGN, the demo subscribers provisioned;
- each `<op>-ue`: an idle loop for the UE side; tests and the demo run their UEs there
  (`start_ue`: a registered UeClient in that loop);
- with `delay_ms`, first of all: that one-way delay on the egress of every interface of the
  testbed's links (`topology.link_delays`), by `tc netem` where the kernel has it, else by
  ims.testbed.delay's NFQUEUE `LinkDelay`s run in each namespace's loop (the router `ix` gets
  a loop for its three).

`close()` stops it all in reverse order and then proves nothing is left: no socket of ours in
any namespace, no PCP table in a CGN, no netem qdisc, NFQUEUE rule or bound queue, coturn gone,
every loop thread joined; when the world built the testbed itself it also takes it down (after
a failed start too).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import ipaddress
import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from ims.config import GatewayMode, Role, load_config
from ims.dns import worlds
from ims.dns.server import start_server
from ims.embedded import (
    DemoSubscriber,
    TomlValue,
    demo_subscribers,
    operator_config_text,
    provision,
)
from ims.gateway.nft_relay import DEFAULT_TABLE as RELAY_TABLE
from ims.gateway.relay import RelayOffload
from ims.operator import Operator
from ims.pcp.aioserver import RunningPcpServer, start_pcp_server
from ims.pcp.codec import IPAddress
from ims.pcp.constants import SERVER_PORT, ResultCode
from ims.pcp.nft import DEFAULT_TABLE, FAMILY, NftMappingTable
from ims.pcp.server import Mapping, PcpServer, PcpServerConfig
from ims.sip.address import Address
from ims.sip.transaction import TimerSettings
from ims.store import open_store
from ims.testbed.builder import TestbedBuilder, run_command
from ims.testbed.delay import IPTABLES, RunningLinkDelay, probe_netem, start_link_delay
from ims.testbed.errors import CommandFailed, TestbedError, TestbedUsageError, ToolMissing
from ims.testbed.netns import NamespaceLoop
from ims.testbed.state import DEFAULT_STATE_DIR
from ims.testbed.topology import (
    PREFIX,
    PUBLIC_SIDES,
    UE_ADDRESS,
    Delay,
    NatBehaviour,
    Plan,
    TestbedOptions,
    build_plan,
    link_delays,
)

__all__ = [
    "STUN_PORT",
    "DelayMechanism",
    "GatewaySettings",
    "PcpMode",
    "TestbedWorld",
    "WorldError",
    "WorldLeftovers",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

ZONES = Path(__file__).resolve().parents[2] / "dns_zones" / "testbed"
WORLD = worlds.WORLDS["testbed"]
DNS_PORT = 53
STUN_PORT = 3478
UE_HOST = UE_ADDRESS.split("/")[0]
SUBSCRIBER_NETWORK = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, what the CGNs serve
STUN_READY_TIMEOUT = 10.0


class WorldError(TestbedError):
    """The world cannot start as asked (a tool missing, a role failing to start)."""


class WorldLeftovers(WorldError):
    """`close()` found something still there; the message lists each item."""

    def __init__(self, leftovers: Sequence[str]) -> None:
        super().__init__("the testbed world left behind: " + "; ".join(leftovers))
        self.leftovers = tuple(leftovers)


class DelayMechanism(enum.StrEnum):
    """What carries the world's per-link delay."""

    NETEM = "netem"  # tc qdisc netem on each interface (kernel CONFIG_NET_SCH_NETEM)
    NFQUEUE = "nfqueue"  # ims.testbed.delay: an iptables NFQUEUE rule, the wait in our loops


class PcpMode(enum.StrEnum):
    """What answers PCP on each CGN's public address."""

    OURS = "ours"  # ims.pcp's server with the nftables data plane
    REFUSE = "refuse"  # every request answered NO_RESOURCES: the operators fall back to relays
    OFF = "off"  # nothing listens on 5351


# -- the refusing CGN --------------------------------------------------------------------------


class _Refuser(asyncio.DatagramProtocol):
    """Answers every PCP request NO_RESOURCES (RFC 6887 section 7.4: a short-lifetime error),
    with the request's opcode data copied as section 8.3 asks; counts what it refused."""

    def __init__(self, core: PcpServer) -> None:
        self.core = core
        self.refused = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's UDP transport is a DatagramTransport in behaviour, not by class.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(data) < 24 or data[1] & 0x80 or self.transport is None:
            return  # not a request (section 8.3: responses and runts are dropped)
        now = asyncio.get_running_loop().time()
        reply = self.core.failure_reply(data, ResultCode.NO_RESOURCES, now, "refusing")
        if reply.response is not None:
            self.refused += 1
            self.transport.sendto(reply.response, addr)


@dataclass
class RefusingPcpServer:
    protocol: _Refuser
    address: str
    port: int

    @property
    def refused(self) -> int:
        return self.protocol.refused

    async def close(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.close()


async def start_refusing_pcp_server(config: PcpServerConfig, listen: str,
                                    port: int = SERVER_PORT) -> RefusingPcpServer:
    loop = asyncio.get_running_loop()
    core = PcpServer(config, started_at=loop.time())
    _, protocol = await loop.create_datagram_endpoint(lambda: _Refuser(core),
                                                      local_addr=(listen, port))
    return RefusingPcpServer(protocol, listen, port)


# -- operator configs --------------------------------------------------------------------------


def core_addresses(op: worlds.Operator) -> tuple[str, ...]:
    """The IPv4 addresses of an operator's core namespace (P-CSCF, S-CSCF, borders)."""
    return tuple(role.ipv4 for role in (*op.roles, *op.borders))


@dataclass(frozen=True)
class GatewaySettings:
    """The [gateway] the world gives each operator. A gateway option of the world is a field
    here, a keyword of `TestbedWorld.start` and a key in `table`."""

    mode: GatewayMode
    pcp_lifetime: int = 120  # seconds asked of the CGN's PCP server
    pcp_timeout: float = 2.0  # seconds the PCP client waits for the server
    # The relay's forwarding: in the kernel (nft DNAT/SNAT, ims/gateway/nft_relay.py) once
    # both peers are known, as the testbed wants; "none" keeps it in userspace.
    relay_offload: RelayOffload = RelayOffload.NFT

    def table(self, op: worlds.Operator) -> dict[str, TomlValue]:
        """The keys of `op`'s [gateway]: the relay on its S-CSCF address, PCP towards its own
        CGN's public address."""
        table: dict[str, TomlValue] = {"mode": self.mode.value}
        if self.mode is not GatewayMode.OFF:
            scscf = next(r for r in op.roles if r.name == "scscf")
            table |= {"relay_address": scscf.ipv4, "lifetime": 300,
                      "relay_offload": self.relay_offload.value}
        if self.mode is GatewayMode.PCP:
            public, _ = PUBLIC_SIDES[op.name]
            table |= {"pcp_server": f"{public}:{SERVER_PORT}",
                      "pcp_lifetime": self.pcp_lifetime, "pcp_timeout": self.pcp_timeout}
        return table


def config_text(op: worlds.Operator, gateway: GatewaySettings, trace: Path | None) -> str:
    """The TOML config of one testbed operator: the embedded one (ims/embedded.py) with the
    testbed's addresses, peers admitted from their core addresses, DNS on the DNS host."""
    return operator_config_text(
        op, WORLD, generated_by="ims/testbed/world.py for the namespace testbed",
        dns={"server": f"{op.nameserver.ipv4}:{op.nameserver.port}", "timeout": 1.0},
        admit_from=lambda other: tuple(f"{a}/32" for a in core_addresses(other)),
        permission_deadline=5, gateway=gateway.table(op), trace=trace)


# -- the world ---------------------------------------------------------------------------------


@dataclass
class TestbedWorld:
    """A running world; build it with `TestbedWorld.start(...)` (an async context manager)."""

    __test__ = False

    plan: Plan
    pcp: PcpMode
    gateway: GatewaySettings
    workdir: Path
    trace: Path | None
    subscribers: tuple[DemoSubscriber, ...]
    # The per-link delay (None: none): the interfaces and the mechanism carrying it, and why
    # that one (netem where the kernel has it, NFQUEUE otherwise).
    delay_ms: int | None = None
    link_delays: tuple[Delay, ...] = ()
    delay_mechanism: DelayMechanism | None = None
    delay_reason: str = ""
    loops: dict[str, NamespaceLoop] = field(default_factory=dict)  # by role: "alpha-ue", ...
    operators: dict[str, Operator] = field(default_factory=dict)  # "Alpha", "Beta"
    pcp_servers: dict[str, RunningPcpServer | RefusingPcpServer] = field(default_factory=dict)
    stun_process: subprocess.Popen[bytes] | None = None
    owns_testbed: bool = False
    _link_delays: list[RunningLinkDelay] = field(default_factory=list)  # NFQUEUE only
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    stun_server = (WORLD.operators[0].nameserver.ipv4, STUN_PORT)
    dns_server = (WORLD.operators[0].nameserver.ipv4, DNS_PORT)

    # -- what tests and the demo use -----------------------------------------------------------

    @property
    def gateway_mode(self) -> GatewayMode:
        """The operators' [gateway] mode."""
        return self.gateway.mode

    def delay_counters(self) -> dict[str, tuple[int, int]]:
        """With NFQUEUE, per link ("alpha-ue:eth0"): (packets delayed, packets passed without
        the delay: beyond the backlog or waiting at close); {} with netem or no delay."""
        prefix = self.plan.options.prefix
        return {f"{d.netns.removeprefix(prefix)}:{d.dev}": (d.delayed, d.dropped)
                for d in self._link_delays}

    def describe_delay(self) -> str:
        """One line: the delay, where and by what ("none" without)."""
        if self.delay_ms is None or self.delay_mechanism is None:
            return "no added link delay"
        prefix = self.plan.options.prefix
        links = ", ".join(f"{d.netns.removeprefix(prefix)}:{d.dev}" for d in self.link_delays)
        return (f"{self.delay_ms} ms one-way on the egress of {len(self.link_delays)} "
                f"interfaces ({links}) by {self.delay_mechanism.value} ({self.delay_reason})")

    def loop(self, role: str) -> NamespaceLoop:
        """The loop of `role` ("alpha-ue", "beta-core", "dns", ...)."""
        try:
            return self.loops[role]
        except KeyError:
            raise WorldError(f"the world runs no loop for {role!r}; it has "
                             f"{', '.join(sorted(self.loops))}") from None

    def namespace(self, role: str) -> str:
        return role if role.startswith(self.plan.options.prefix) else self.plan.namespace(role)

    def subscriber(self, name: str) -> DemoSubscriber:
        for sub in self.subscribers:
            if sub.name.lower() == name.lower():
                return sub
        raise KeyError(f"no demo subscriber {name!r}")

    def ue_loop(self, name: str) -> NamespaceLoop:
        """The UE host of subscriber `name` (Bill, Carol, Frank: Alpha's; Dave, Eve: Beta's).
        Subscribers of one operator share its one UE host, each on its own ports."""
        return self.loop(f"{self.subscriber(name).operator.lower()}-ue")

    def core_loop(self, operator: str) -> NamespaceLoop:
        return self.loop(f"{operator.lower()}-core")

    def pcscf(self, operator: str) -> Address:
        """Where a UE of `operator` sends its requests (its P-CSCF, UDP)."""
        roles = {r.name: r for r in self._operator(operator).roles}
        return Address("UDP", roles["pcscf"].ipv4, roles["pcscf"].port)

    def plmn(self, operator: str) -> str:
        """`operator`'s PLMN as "MCC-MNC" (what a caller gives as the peer's MNO)."""
        op = self._operator(operator)
        return f"{op.mcc}-{op.mnc}"

    def public_address(self, operator: str) -> str:
        """The public (external) address of `operator`'s CGN."""
        return PUBLIC_SIDES[self._operator(operator).name][0]

    ue_address = UE_HOST

    async def in_core(self, operator: str, function: Callable[[Operator], T]) -> T:
        """`function(operator)` run in that operator's loop (its objects live there)."""
        op = self.operators[self._operator(operator).name]

        async def work() -> T:
            return function(op)

        return await self.core_loop(operator).run(work)

    async def open_legs(self, operator: str, *, kernel: bool = True) -> tuple[Any, ...]:
        """What the operator's gateway holds open (`gateway.open_legs(kernel=kernel)`: False
        spares the core's loop the kernel counters' `nft` listing); () with none."""
        return await self.in_core(
            operator,
            lambda op: tuple(op.gateway.open_legs(kernel=kernel)) if op.gateway else ())

    async def pcp_mappings(self, operator: str) -> tuple[Mapping, ...]:
        """The mappings the CGN's PCP server holds now (none for refuse/off)."""
        server = self.pcp_servers.get(self._operator(operator).name)
        if not isinstance(server, RunningPcpServer):
            return ()
        loop = self.loop(f"{operator.lower()}-cgn")

        async def work() -> tuple[Mapping, ...]:
            return server.core.mappings

        return await loop.run(work)

    def pcp_refusals(self, operator: str) -> int:
        """How many requests the refusing server answered NO_RESOURCES."""
        server = self.pcp_servers.get(self._operator(operator).name)
        return server.refused if isinstance(server, RefusingPcpServer) else 0

    def nft_rules(self, ns: str, table: str = DEFAULT_TABLE) -> list[str]:
        """The rules of the PCP server's table in namespace `ns` ("alpha-cgn" or a full name),
        one `nft` text line each (with `counter` when the rules have one); [] without it."""
        try:
            out = run_command(["ip", "netns", "exec", self.namespace(ns), "nft", "list",
                               "table", FAMILY, table])
        except CommandFailed as exc:
            if "No such file or directory" in exc.stderr:
                return []
            raise
        return [line.strip() for line in out.splitlines()
                if "comment" in line and ("dnat" in line or "snat" in line)]

    def nft_tables(self, ns: str) -> set[str]:
        listing = json.loads(run_command(["ip", "netns", "exec", self.namespace(ns), "nft", "-j",
                                          "list", "tables"]))
        return {item["table"]["name"] for item in listing["nftables"] if "table" in item}

    def conntrack_entries(self, ns: str, *filters: str) -> list[str]:
        """`conntrack -L` lines in namespace `ns`; `filters` are conntrack's own (e.g.
        "-p", "udp", "--orig-src", "100.64.0.2", "--orig-port-src", "4000")."""
        if shutil.which("conntrack") is None:
            raise ToolMissing("conntrack", "conntrack")
        out = run_command(["ip", "netns", "exec", self.namespace(ns), "conntrack", "-L",
                           *filters])
        return [line for line in out.splitlines() if line.strip()]

    def conntrack_count(self, ns: str, *filters: str) -> int:
        return len(self.conntrack_entries(ns, *filters))

    def sockets(self, ns: str) -> list[str]:
        """Every UDP and TCP socket open in namespace `ns` (`ss -Htuan`)."""
        out = run_command(["ip", "netns", "exec", self.namespace(ns), "ss", "-Htuan"])
        return [line for line in out.splitlines() if line.strip()]

    def ue_config(self, name: str, **overrides: Any) -> Any:
        """A ue_ua.client.UeConfig for subscriber `name` in this world (the UE API must be
        present): its identities, its P-CSCF, bound on the UE host, the STUN server."""
        # The UE side is imported only when asked for: the operator side does not need it.
        ue_config: Any = importlib.import_module("ue_ua.client").UeConfig
        sub = self.subscriber(name)
        pcscf = self.pcscf(sub.operator)
        values: dict[str, Any] = dict(
            name=sub.name, impu=sub.sip_uri, impi=sub.impi, password=sub.password,
            home_domain=sub.domain, pcscf=(pcscf.host, pcscf.port), bind_host=UE_HOST,
            stun_server=self.stun_server)
        values.update(overrides)
        return ue_config(**values)

    async def start_ue(self, name: str, *,
                       ask: Callable[[Any], Awaitable[Any]] | None = None,
                       **overrides: Any) -> Any:
        """Subscriber `name`'s ue_ua.client.UeClient, started in its UE host's loop
        (`ue_loop(name)`) with `ue_config(name, **overrides)` and registered; closed again when
        the registration fails. `ask` answers the permission inquiries its rules leave open
        (UeClient.start's). The client lives in that loop: run its methods, and its `close`
        when done, there."""
        client_class: Any = importlib.import_module("ue_ua.client").UeClient
        config = self.ue_config(name, **overrides)

        async def start() -> Any:
            client = await client_class.start(config, ask=ask)
            try:
                await client.register()
            except BaseException:
                await client.close()
                raise
            return client

        return await self.ue_loop(name).run(start)

    def _operator(self, name: str) -> worlds.Operator:
        for op in WORLD.operators:
            if op.name.lower() == name.lower():
                return op
        raise WorldError(f"no operator {name!r} in the testbed world")

    # -- start and stop ------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        *,
        nat: NatBehaviour | str = NatBehaviour.SYMMETRIC,
        pcp: PcpMode | str = PcpMode.OURS,
        gateway: GatewayMode | str = GatewayMode.PCP,
        trace: bool | Path = False,
        prefix: str = PREFIX,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        workdir: Path | None = None,
        timers: TimerSettings | None = None,
        pcp_lifetime: int = 120,
        pcp_timeout: float = 2.0,
        stun: bool = True,
        delay_ms: int | None = None,
        delay_mechanism: DelayMechanism | str | None = None,
        relay_offload: RelayOffload | str = RelayOffload.NFT,
    ) -> AsyncIterator[TestbedWorld]:
        """Run the world on the testbed in `state_dir` (built here, and taken down on exit,
        when none is recorded there; reused when one is up with the same options).

        `gateway` is the operators' [gateway] mode: pcp (default), relay, or "off" for
        unassisted. `trace` True writes
        workdir/trace.jsonl (or give a path). `delay_ms`: a one-way delay on the egress of
        every interface of the testbed's links (topology.link_delays), before anything
        starts, removed on close; by netem where the kernel has it, else by NFQUEUE
        (ims/testbed/delay.py); `delay_mechanism` forces one. `relay_offload` "nft" (default)
        lets the relays forward in the kernel, "none" keeps them in userspace. Raises
        WorldLeftovers from the exit when the close found something left (unless the block
        itself raised).
        """
        plan = build_plan(TestbedOptions(nat=NatBehaviour(nat), prefix=prefix))
        pcp_mode = PcpMode(pcp)
        if delay_ms is not None and not 1 <= delay_ms <= 10_000:
            raise TestbedUsageError(f"delay_ms {delay_ms}: give 1 to 10000 milliseconds")
        try:
            forced = None if delay_mechanism is None else DelayMechanism(delay_mechanism)
        except ValueError:
            raise TestbedUsageError(
                f"delay_mechanism {delay_mechanism!r}: give one of "
                f"{', '.join(m.value for m in DelayMechanism)} or None (netem where the "
                "kernel has it)") from None
        mode = GatewayMode(gateway)
        if stun and shutil.which("turnserver") is None:
            raise ToolMissing("turnserver", "coturn")
        owned_dir = workdir is None
        work = Path(tempfile.mkdtemp(prefix="ueconnect-world-")) if workdir is None else workdir
        work = work.resolve()
        work.mkdir(parents=True, exist_ok=True)
        trace_path = (work / "trace.jsonl" if trace is True
                      else Path(trace) if trace else None)
        builder = TestbedBuilder(state_dir)
        world = cls(plan, pcp_mode, GatewaySettings(mode, pcp_lifetime, pcp_timeout,
                                                    RelayOffload(relay_offload)), work,
                    trace_path, demo_subscribers(), delay_ms=delay_ms)
        failed = True
        try:
            world.owns_testbed = builder.state_file.load() is None
            await asyncio.to_thread(builder.up, plan)
            await world._start(timers=timers, stun=stun, delay_mechanism=forced)
            failed = False
            yield world
        except BaseException:
            failed = True
            raise
        finally:
            leftovers = await world.close()
            if world.owns_testbed:
                result = await asyncio.to_thread(builder.down)
                leftovers += list(result.warnings)
                remaining = set(await asyncio.to_thread(builder.namespaces))
                leftovers += [f"namespace {ns.name} still exists" for ns in plan.namespaces
                              if ns.name in remaining]
            if owned_dir:
                shutil.rmtree(work, ignore_errors=True)
            if leftovers and not failed:
                raise WorldLeftovers(leftovers)
            if leftovers:
                log.error("the testbed world left behind: %s", "; ".join(leftovers))

    async def _start(self, *, timers: TimerSettings | None, stun: bool,
                     delay_mechanism: DelayMechanism | None) -> None:
        prefix = self.plan.options.prefix
        for ns in self.plan.namespaces:
            role = ns.name.removeprefix(prefix)
            if role == "ix":
                continue  # the router runs nothing of ours (but an NFQUEUE delay, see there)
            await self._start_loop(role)
        if self.delay_ms is not None:  # first: everything after crosses delayed links
            await self._start_delay(self.delay_ms, delay_mechanism)
        dns = self.loop("dns")
        server = await dns.run(lambda: start_server(ZONES, self.dns_server[0], DNS_PORT))
        self._stack.push_async_callback(dns.run, lambda: _close_dns(server))
        if stun:
            await self._start_stun()
        for op in WORLD.operators:
            await self._start_pcp(op)
        for op in WORLD.operators:
            await self._start_operator(op, timers=timers)

    async def _start_loop(self, role: str) -> NamespaceLoop:
        loop = NamespaceLoop(self.plan.namespace(role))
        await asyncio.to_thread(loop.start)
        self.loops[role] = loop
        return loop

    async def _start_delay(self, ms: int, forced: DelayMechanism | None) -> None:
        """`ms` on the egress of each interface of `link_delays`; removal on the stack first,
        so it goes last on close (the operators' last messages are delayed too)."""
        self.link_delays = link_delays(self.plan, ms)
        if forced is None:
            probe = await asyncio.to_thread(probe_netem)
            mechanism = DelayMechanism.NETEM if probe.available else DelayMechanism.NFQUEUE
            self.delay_reason = (probe.reason if probe.available
                                 else f"no netem here: {probe.reason}")
        else:
            mechanism, self.delay_reason = forced, "asked for"
        self.delay_mechanism = mechanism
        log.info("testbed world: %s", self.describe_delay())
        if mechanism is DelayMechanism.NETEM:
            for delay in self.link_delays:
                await asyncio.to_thread(_add_netem, delay)
                self._stack.push_async_callback(asyncio.to_thread, _remove_netem, delay)
            return
        queues: dict[str, int] = {}  # per namespace: the next free queue number
        for delay in self.link_delays:
            role = delay.netns.removeprefix(self.plan.options.prefix)
            loop = self.loops.get(role) or await self._start_loop(role)
            queue_num = queues.get(delay.netns, 0)
            queues[delay.netns] = queue_num + 1
            running = await start_link_delay(loop, delay.dev, delay.ms, queue_num)
            self._link_delays.append(running)
            self._stack.push_async_callback(running.close)

    async def _start_stun(self) -> None:
        """coturn, STUN only (RFC 8489 Binding), in the DNS namespace; killed on close."""
        host, port = self.stun_server
        argv = ["ip", "netns", "exec", self.namespace("dns"), "turnserver", "-n",
                "--stun-only", "--listening-ip", host, "--listening-port", str(port),
                "--no-cli", "--no-tls", "--no-dtls", "--no-tcp",
                "--db", str(self.workdir / "turndb"), "--pidfile",
                str(self.workdir / "turnserver.pid"), "--log-file", "stdout", "--simple-log"]
        out = (self.workdir / "turnserver.log").open("wb")
        self.stun_process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self._stack.push_async_callback(self._stop_stun)
        if not await self.loop("dns").run(lambda: _stun_answers(host, port)):
            raise WorldError(f"coturn did not answer STUN on {host}:{port} within "
                             f"{STUN_READY_TIMEOUT:.0f} s: see {self.workdir}/turnserver.log")

    async def _stop_stun(self) -> None:
        process, self.stun_process = self.stun_process, None
        if process is None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 5)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 5)

    async def _start_pcp(self, op: worlds.Operator) -> None:
        if self.pcp is PcpMode.OFF:
            return
        cgn_role = f"{op.name.lower()}-cgn"
        cgn = self.loop(cgn_role)
        public, _ = PUBLIC_SIDES[op.name]
        control: frozenset[IPAddress] = frozenset(
            ipaddress.ip_address(a) for a in core_addresses(op))
        config = PcpServerConfig(ipaddress.ip_address(public), control_addresses=control,
                                 internal_networks=(SUBSCRIBER_NETWORK,))
        server: RunningPcpServer | RefusingPcpServer
        if self.pcp is PcpMode.OURS:
            table = NftMappingTable(netns=self.namespace(cgn_role))
            server = await cgn.run(lambda: start_pcp_server(config, public, table))
        else:
            server = await cgn.run(lambda: start_refusing_pcp_server(config, public))
        self.pcp_servers[op.name] = server
        self._stack.push_async_callback(cgn.run, server.close)

    async def _start_operator(self, op: worlds.Operator, *, timers: TimerSettings | None
                              ) -> None:
        core = self.core_loop(op.name)
        path = self.workdir / f"{op.name.lower()}.toml"
        for stale in list(self.workdir.glob(f"{op.name.lower()}.sqlite*")):
            stale.unlink(missing_ok=True)
        path.write_text(config_text(op, self.gateway, self.trace), encoding="utf-8")
        config = load_config(path)
        inner = AsyncExitStack()  # entered and closed in the core's loop (SQLite's thread)

        async def start() -> Operator:
            store = inner.enter_context(open_store(config.store))
            provision(store, op.name, self.subscribers, config.realm)
            return await inner.enter_async_context(Operator.start(config, store=store,
                                                                  timers=timers))

        self._stack.push_async_callback(core.run, inner.aclose)
        self.operators[op.name] = await core.run(start)
        log.info("testbed: %s up, P-CSCF %s", op.name,
                 self.operators[op.name].address(Role.PCSCF))

    async def close(self) -> list[str]:
        """Stop everything (reverse order), join the loops; what was found left behind."""
        leftovers: list[str] = []
        try:
            await self._stack.aclose()
        except Exception as exc:  # keep closing the rest; report it as left behind
            log.exception("closing the testbed world")
            leftovers.append(f"close failed: {exc!r}")
        self.operators.clear()
        self.pcp_servers.clear()
        self._link_delays.clear()
        await self._stop_stun()
        for role, loop in list(self.loops.items()):
            try:
                await loop.close()
            except TestbedError as exc:
                leftovers.append(str(exc))
            del self.loops[role]
        leftovers += await asyncio.to_thread(self._leftovers)
        return leftovers

    def _leftovers(self) -> list[str]:
        found: list[str] = []
        existing = set(run_command(["ip", "netns", "list"]).split())
        for ns in self.plan.namespaces:
            if ns.name not in existing:
                continue
            for line in self.sockets(ns.name):
                found.append(f"socket in {ns.name}: {' '.join(line.split())}")
            if ns.name.endswith("-cgn") and DEFAULT_TABLE in self.nft_tables(ns.name):
                found.append(f"nft table {FAMILY} {DEFAULT_TABLE} in {ns.name}")
            if ns.name.endswith("-core") and RELAY_TABLE in self.nft_tables(ns.name):
                found.append(f"nft table {FAMILY} {RELAY_TABLE} in {ns.name}")
            found += _delay_leftovers(ns.name, self.delay_mechanism)
        return found


def _add_netem(delay: Delay) -> None:
    try:
        run_command(["ip", "netns", "exec", delay.netns, "tc", "qdisc", "replace", "dev",
                     delay.dev, "root", "netem", "delay", f"{delay.ms}ms"])
    except CommandFailed as exc:
        if "qdisc kind is unknown" in exc.stderr:
            raise WorldError(f"delay_mechanism netem: this kernel has no sch_netem (tc: "
                             f"{exc.stderr.strip()}); leave delay_mechanism unset to delay "
                             "through NFQUEUE instead") from None
        raise


def _remove_netem(delay: Delay) -> None:
    try:
        run_command(["ip", "netns", "exec", delay.netns, "tc", "qdisc", "del", "dev",
                     delay.dev, "root"])
    except CommandFailed as exc:  # gone with its device already; the leftover check says
        log.warning("%s: the netem qdisc on %s was not removed: %s", delay.netns, delay.dev,
                    exc.stderr.strip())


def _delay_leftovers(netns: str, mechanism: DelayMechanism | None) -> list[str]:
    """A netem qdisc, an NFQUEUE rule or a bound queue still in `netns`."""
    found: list[str] = []
    if mechanism is DelayMechanism.NETEM:
        out = run_command(["ip", "netns", "exec", netns, "tc", "qdisc", "show"])
        found += [f"netem in {netns}: {line.strip()}" for line in out.splitlines()
                  if "netem" in line]
    elif mechanism is DelayMechanism.NFQUEUE:
        rules = run_command(["ip", "netns", "exec", netns, IPTABLES, "-w", "5", "-t", "mangle",
                             "-S", "POSTROUTING"])
        found += [f"NFQUEUE rule in {netns}: {line.strip()}" for line in rules.splitlines()
                  if "NFQUEUE" in line]
        # One line per queue a socket still holds bound (nfnetlink_queue's own listing).
        queues = run_command(["ip", "netns", "exec", netns, "cat",
                              "/proc/net/netfilter/nfnetlink_queue"])
        found += [f"nfqueue bound in {netns}: {line.strip()}" for line in queues.splitlines()
                  if line.strip()]
    return found


async def _close_dns(server: Any) -> None:
    server.close()
    await server.wait_closed()


async def _stun_answers(host: str, port: int) -> bool:
    """A STUN Binding request (RFC 8489 section 5) until one is answered, bounded."""
    from aioice import stun

    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bool] = loop.create_future()

    class Probe(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
            if not answered.done():
                answered.set_result(True)

        def error_received(self, exc: Exception) -> None:
            return None  # refused until coturn listens: keep asking

    transport, _ = await loop.create_datagram_endpoint(Probe, local_addr=(host, 0))
    try:
        request = stun.Message(message_method=stun.Method.BINDING,
                               message_class=stun.Class.REQUEST)
        deadline = loop.time() + STUN_READY_TIMEOUT
        while loop.time() < deadline:
            transport.sendto(bytes(request), (host, port))
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(answered), 0.2)
        return False
    finally:
        transport.close()

