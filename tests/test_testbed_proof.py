"""The proof (issue 6 item 7, a-f): real NAT in the namespace testbed, the UEs on the UE API.

Each test runs a `TestbedWorld` (ims.testbed.world) on a testbed of its own prefix and takes
it down after: DNS and coturn (STUN only) in uec-dns, a PCP server in each CGN, both
operators in their cores, each UE on its UE host as a `UeClient` (ue_ua.client) running in
that namespace's loop.

a. unassisted: [gateway] mode off, no PCP; the UEs gather host and server reflexive (STUN)
   candidates and exchange them in the SDP of the INVITE; the ICE checks fail across the two
   symmetric CGNs within the setup time;
b. with help ([gateway] mode pcp, our PCP servers): the path is direct, through the CGNs'
   MAP (Alpha) and PEER (Beta) mappings (each UE's remote is the other CGN's mapped port;
   conntrack shows the flow translated to them), the relays carry nothing, 1000 datagrams
   each way arrive, none lost;
c. with PCP refused (NO_RESOURCES): both operators relay, datagrams flow; where the world runs
   an operator with [gateway] relay_offload = "nft", its kernel carries the datagrams once the
   leg is handed over (the userspace relay's counters stand still) and nothing of it is left
   in the core after the BYE;
d. a third host (uec-dns, and Beta's UE from another port) sending to Alpha's and Beta's
   mapped ports reaches neither UE;
e. after BYE: no PCP mapping, nft rule, conntrack entry of a mapping, or relay is left;
f. the same with endpoint-independent CGNs (--nat eim), and Bill to Carol at the same
   operator. Carol shares Bill's UE host (the testbed has one UE namespace per operator;
   each UE binds its own port), so their best pair is host to host on that host: direct,
   not crossing the CGN; the operator's mappings are opened and released all the same.

Root only (skips naming what is missing).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ims.permission.bodies import Inquiry
from ims.permission.outcomes import Decision
from ims.testbed.builder import run_command
from ims.testbed.netns import NamespaceLoop
from ims.testbed.requirements import missing_for_world
from ims.testbed.world import PcpMode, TestbedWorld

pytestmark = pytest.mark.root

T = TypeVar("T")
ALPHA_PUBLIC, BETA_PUBLIC, UE = "198.51.100.1", "203.0.113.1", "100.64.0.2"
RELAY_TABLE = "ueconnect_relay"  # the kernel relay's (ims.gateway.nft_relay.DEFAULT_TABLE)
RELAY_MARK = "0x100000/0x100000"  # its conntrack mark bit (DEFAULT_CONNTRACK_MARK)
DATAGRAMS = 1000
SETUP_TIMEOUT = 4.0


def _skip_reason() -> str | None:
    return missing_for_world(ue_api=True)


@pytest.fixture(autouse=True)
def _root_and_tools() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


def run(coro: Coroutine[Any, Any, None], timeout: float = 40.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


@asynccontextmanager
async def world(tmp_path: Path, tag: str, **options: Any) -> AsyncIterator[TestbedWorld]:
    prefix = f"uec-{tag}{os.getpid() % 100000}-"
    try:
        async with TestbedWorld.start(prefix=prefix, state_dir=tmp_path / f"state-{tag}",
                                      **options) as running:
            yield running
    finally:
        for name in run_command(["ip", "netns", "list"]).split():
            if name.startswith(prefix):  # only after a failure the world could not undo
                subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


async def _allow(inquiry: Inquiry) -> Decision:
    return Decision.ALLOW


@dataclass
class Ue:
    """A UeClient living in its UE namespace's loop; `do` runs work there."""

    name: str
    loop: NamespaceLoop
    client: Any  # ue_ua.client.UeClient

    async def do(self, factory: Callable[[], Awaitable[T]]) -> T:
        return await self.loop.run(factory)


@asynccontextmanager
async def ues(w: TestbedWorld, *names: str, **config: Any) -> AsyncIterator[list[Ue]]:
    """Start and register `names` (each in its UE namespace); close them on exit."""
    started: list[Ue] = []
    try:
        for name in names:
            client = await w.start_ue(name, ask=_allow, **config)
            started.append(Ue(name, w.ue_loop(name), client))
        yield started
    finally:
        for ue in started:
            await ue.do(ue.client.close)


async def connect(w: TestbedWorld, caller: Ue, callee: Ue) -> tuple[Any, Any]:
    """caller.connect(callee) and the callee's accept(), each in its namespace."""
    sub = w.subscriber(callee.name)
    mno = w.plmn(sub.operator)
    return await asyncio.gather(
        caller.do(lambda: caller.client.connect(sub.e164, mno)),
        callee.do(lambda: callee.client.accept(timeout=SETUP_TIMEOUT + 10)))


async def _send(connection: Any, tag: bytes, count: int) -> None:
    for seq in range(count):
        await connection.send(b"%s %d" % (tag, seq))
        if seq % 25 == 24:  # paced: a burst of 1000 would overflow the receive buffer
            await asyncio.sleep(0.002)


async def _receive(connection: Any, tag: bytes, count: int, within: float = 5.0) -> set[int]:
    got: set[int] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(got) < count and loop.time() < deadline:
        try:
            data = await asyncio.wait_for(connection.recv(), deadline - loop.time())
        except TimeoutError:
            break
        name, _, seq = data.partition(b" ")
        if name == tag:
            got.add(int(seq))
    return got


async def exchange(a: Ue, a_conn: Any, b: Ue, b_conn: Any, count: int) -> tuple[int, int]:
    """`count` datagrams each way at once; how many distinct ones arrived (a->b, b->a)."""
    ab, ba, _, _ = await asyncio.gather(
        b.do(lambda: _receive(b_conn, b"ab", count)),
        a.do(lambda: _receive(a_conn, b"ba", count)),
        a.do(lambda: _send(a_conn, b"ab", count)),
        b.do(lambda: _send(b_conn, b"ba", count)))
    return len(ab), len(ba)


async def hang_up(caller: Ue, caller_conn: Any, callee: Ue, callee_conn: Any) -> None:
    await caller.do(caller_conn.close)
    await callee.do(lambda: asyncio.wait_for(callee_conn.wait_closed(), 10))


def relayed_datagrams(legs: tuple[Any, ...]) -> int:
    """Datagrams the operator's relays forwarded, over the legs that hold a relay."""
    total = 0
    for leg in legs:
        allocation = getattr(leg, "allocation", None)
        counters = getattr(allocation, "counters", None)
        if counters is not None:
            total += counters.caller_to_callee_datagrams + counters.callee_to_caller_datagrams
    return total


async def relay_offload_on(w: TestbedWorld, op: str) -> bool:
    """Whether the world runs `op` with [gateway] relay_offload = "nft" (its config says)."""
    return await w.in_core(op, lambda operator: str(getattr(
        operator.config.gateway, "relay_offload", "none")) == "nft")


def kernel_datagrams(legs: tuple[Any, ...]) -> int | None:
    """Datagrams the kernel forwarded for the relayed legs (both ways, part of what
    `relayed_datagrams` counts); None while the kernel carries no leg."""
    carried = [leg.kernel for leg in legs if getattr(leg, "kernel", None) is not None]
    if not carried:
        return None
    return sum(int(k.a_to_b_datagrams + k.b_to_a_datagrams) for k in carried)


async def until(condition: Callable[[], Awaitable[bool]], what: str,
                within: float = 5.0) -> None:
    """Poll `condition` (bounded): the operators release after the BYE, as tasks."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s: {what}")


async def nothing_open(w: TestbedWorld) -> bool:
    for op in ("Alpha", "Beta"):
        if await w.open_legs(op, kernel=False) or await w.pcp_mappings(op):
            return False
        if w.nft_rules(f"{op.lower()}-cgn"):
            return False
    return True


def mapping_flows(w: TestbedWorld, cgn: str, public: str, port: int, peer: str,
                  peer_port: int) -> list[str]:
    """conntrack entries in `cgn` of the flow between the mapped endpoint public:port and the
    peer it admits (one flow, in either orientation by who sent first). Other flows of the
    UE's port belong to the CGN's own NAT (with --nat eim Linux reuses the mapped port for
    them, nf_nat_core find_appropriate_src) and are not the mapping's."""
    outbound = w.conntrack_entries(cgn, "-p", "udp", "--reply-src", peer, "--reply-port-src",
                                   str(peer_port), "--reply-dst", public, "--reply-port-dst",
                                   str(port))
    inbound = w.conntrack_entries(cgn, "-p", "udp", "--orig-src", peer, "--orig-port-src",
                                  str(peer_port), "--orig-dst", public, "--orig-port-dst",
                                  str(port))
    return outbound + inbound


# -- a ----------------------------------------------------------------------------------------


def test_a_unassisted_hole_punching_fails_across_symmetric_cgns(tmp_path: Path) -> None:
    from ue_ua.errors import ConnectivityFailed

    async def main() -> None:
        async with world(tmp_path, "a", gateway="off", pcp="off") as w, \
                ues(w, "Bill", "Dave", setup_timeout=SETUP_TIMEOUT) as (bill, _dave):
            started = time.monotonic()
            sub = w.subscriber("Dave")
            calling = bill.do(lambda: bill.client.connect(sub.e164, w.plmn("Beta")))
            with pytest.raises(ConnectivityFailed) as failed:
                await calling
            took = time.monotonic() - started
            assert took < SETUP_TIMEOUT + 4, took  # bounded: the setup time, then a BYE
            # A fair attempt: Dave's answer carried his host and his server reflexive
            # candidate (from coturn through Beta's CGN), and Bill checked both.
            assert failed.value.pairs_total == 2, failed.value
            for cgn in ("alpha-cgn", "beta-cgn"):
                assert w.conntrack_count(cgn, "-p", "udp", "--orig-src", UE, "--orig-dst",
                                         w.stun_server[0], "--orig-port-dst", "3478") >= 1
            # Nobody opened anything for them.
            assert await nothing_open(w)

    run(main())


# -- b, d, e and the same-operator half of f ---------------------------------------------------


async def _direct_call(w: TestbedWorld, caller: Ue, callee: Ue, *, same_operator: bool,
                       intruders: bool) -> None:
    caller_conn, callee_conn = await connect(w, caller, callee)
    assert caller_conn.path.kind == "direct" and callee_conn.path.kind == "direct"
    alpha_map = await w.pcp_mappings("Alpha")
    beta_peer = await w.pcp_mappings("Beta")
    if not same_operator:
        # Bill sends to Beta's PEER mapping, Dave to Alpha's MAP mapping: the pair crosses
        # both CGNs through the mappings, nothing else (RFC 6887 sections 11, 12).
        [mapped_a] = alpha_map
        [mapped_b] = beta_peer
        assert mapped_a.opcode.name == "MAP" and mapped_b.opcode.name == "PEER"
        assert caller_conn.path.remote == (BETA_PUBLIC, mapped_b.external.port)
        assert callee_conn.path.remote == (ALPHA_PUBLIC, mapped_a.external.port)
        assert mapped_a.internal.port == caller_conn.path.local[1]
        assert mapped_b.internal.port == callee_conn.path.local[1]
    else:
        # Same operator: both mappings on Alpha's CGN, opened for the session.
        assert len(alpha_map) == 2, alpha_map
    ab, ba = await exchange(caller, caller_conn, callee, callee_conn, DATAGRAMS)
    assert (ab, ba) == (DATAGRAMS, DATAGRAMS)  # 0 loss
    # The relays carried nothing.
    for op in ("Alpha", "Beta"):
        assert relayed_datagrams(await w.open_legs(op)) == 0
    if not same_operator:
        xa, xb = mapped_a.external.port, mapped_b.external.port
        assert mapping_flows(w, "alpha-cgn", ALPHA_PUBLIC, xa, BETA_PUBLIC, xb)
        assert mapping_flows(w, "beta-cgn", BETA_PUBLIC, xb, ALPHA_PUBLIC, xa)
        if intruders:
            await _intruders_are_not_admitted(w, caller, caller_conn, callee, callee_conn,
                                              xa, xb)
    await hang_up(caller, caller_conn, callee, callee_conn)
    # e. Nothing left: mappings, nft rules, relays, conntrack entries of the mappings.
    await until(lambda: nothing_open(w), "every mapping, rule and relay released")
    if not same_operator:
        # The server drops a mapping from its table, then its rules, then their conntrack
        # flows (`conntrack -D`): poll for the last step too, bounded.
        async def flows_gone() -> bool:
            return not (mapping_flows(w, "alpha-cgn", ALPHA_PUBLIC, xa, BETA_PUBLIC, xb)
                        or mapping_flows(w, "beta-cgn", BETA_PUBLIC, xb, ALPHA_PUBLIC, xa))

        await until(flows_gone, "the mappings' conntrack flows deleted", within=3.0)


async def _intruders_are_not_admitted(w: TestbedWorld, bill: Ue, bill_conn: Any, dave: Ue,
                                      dave_conn: Any, xa: int, xb: int) -> None:
    """d. A third host (uec-dns, 192.0.2.53, even from the permitted peer's port) and Beta's
    UE from another socket send to the mapped ports; then the peer sends a marker. The
    marker must be the first thing each UE receives."""

    targets = [(ALPHA_PUBLIC, xa), (BETA_PUBLIC, xb)]
    third = w.loop("dns")
    await third.run(lambda: _from(third, "192.0.2.53", xb, targets))
    await dave.do(lambda: _from(dave.loop, UE, 0, [(ALPHA_PUBLIC, xa)]))
    await asyncio.gather(dave.do(lambda: dave_conn.send(b"marker 0")),
                         bill.do(lambda: bill_conn.send(b"marker 0")))
    first_at_bill = await bill.do(lambda: asyncio.wait_for(bill_conn.recv(), 3))
    first_at_dave = await dave.do(lambda: asyncio.wait_for(dave_conn.recv(), 3))
    assert first_at_bill == b"marker 0" and first_at_dave == b"marker 0"
    # Conntrack: the intruders' flows were not translated to the UE.
    assert w.conntrack_count("alpha-cgn", "-p", "udp", "--orig-src", "192.0.2.53",
                             "--reply-src", UE) == 0


async def _from(loop: NamespaceLoop, host: str, port: int,
                targets: list[tuple[str, int]]) -> None:
    """Three datagrams to each target from host:port (0: any port), in `loop`'s namespace."""
    running = asyncio.get_running_loop()
    transport, _ = await running.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                          local_addr=(host, port))
    try:
        for target in targets:
            for _ in range(3):
                transport.sendto(b"intruder 0", target)
        await asyncio.sleep(0.2)
    finally:
        transport.close()


def test_b_d_e_with_help_the_path_is_direct_through_the_mappings(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, "b", pcp="ours", gateway="pcp") as w, \
                ues(w, "Bill", "Dave", setup_timeout=SETUP_TIMEOUT) as (bill, dave):
            await _direct_call(w, bill, dave, same_operator=False, intruders=True)

    run(main())


def test_c_pcp_refused_the_operators_relay(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, "c", pcp=PcpMode.REFUSE, gateway="pcp") as w, \
                ues(w, "Bill", "Dave", setup_timeout=SETUP_TIMEOUT) as (bill, dave):
            bill_conn, dave_conn = await connect(w, bill, dave)
            assert w.pcp_refusals("Alpha") >= 1 and w.pcp_refusals("Beta") >= 1
            assert bill_conn.path.kind == "relay" and dave_conn.path.kind == "relay"
            # [gateway] relay_offload = "nft" where the world sets it: each operator hands its
            # relayed leg to the kernel once the answer and the UE's ICE check (the latch)
            # told it both peers; from then on the userspace relay's counters stand still.
            offload = [op for op in ("Alpha", "Beta") if await relay_offload_on(w, op)]
            userspace: dict[str, int] = {}
            for op in offload:
                async def handed_over(op: str = op) -> bool:
                    return kernel_datagrams(await w.open_legs(op)) is not None

                await until(handed_over, f"{op}'s relayed leg in the kernel")
                legs = await w.open_legs(op)
                userspace[op] = relayed_datagrams(legs) - (kernel_datagrams(legs) or 0)
            ab, ba = await exchange(bill, bill_conn, dave, dave_conn, 200)
            assert (ab, ba) == (200, 200)
            assert relayed_datagrams(await w.open_legs("Alpha")) >= 400
            for op in offload:
                legs = await w.open_legs(op)
                kernel = kernel_datagrams(legs)
                assert kernel is not None and kernel >= 400, (op, kernel)  # the kernel's count
                assert relayed_datagrams(legs) - kernel == userspace[op], op  # userspace idle
            await hang_up(bill, bill_conn, dave, dave_conn)
            await until(lambda: nothing_open(w), "the relays released")
            # Released: no rule of the kernel relay, no conntrack entry its rules marked. The
            # relay drops an allocation from its table, then (in a thread) deletes its rules,
            # then cuts their conntrack entries: poll for the last step too, bounded.
            async def kernel_relay_gone() -> bool:
                return all(not w.nft_rules(f"{op.lower()}-core", RELAY_TABLE)
                           and w.conntrack_count(f"{op.lower()}-core", "--mark", RELAY_MARK) == 0
                           for op in offload)

            await until(kernel_relay_gone, "the kernel relays' rules and conntrack entries "
                        "deleted", within=3.0)

    run(main())


def test_f_endpoint_independent_cgns_and_the_same_operator(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, "f", nat="eim", pcp="ours", gateway="pcp") as w:
            async with ues(w, "Bill", "Dave", setup_timeout=SETUP_TIMEOUT) as (bill, dave):
                await _direct_call(w, bill, dave, same_operator=False, intruders=False)
            async with ues(w, "Bill", "Carol", setup_timeout=SETUP_TIMEOUT) as (bill, carol):
                await _direct_call(w, bill, carol, same_operator=True, intruders=False)

    run(main(), timeout=50)
