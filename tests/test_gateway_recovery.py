"""Restart recovery of the PCP gateway (ims.gateway.pcp_gateway) and `ueconnect mno
--list-open`: what the gateway holds is recorded in the operator's store, and a new run
deletes at the CGN what a crashed run left (RFC 6887 section 15: the same nonce, lifetime 0).

The CGN is our PcpServer (ims.pcp.aioserver) on 127.0.0.1 with a mock data plane: a
RecordingTable (ims.pcp.nft) stands in for nftables, which needs root. A "crash" is a gateway
dropped without release: its PCP socket and relay closed, nothing deleted, its records left.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from ims.cli import main as cli_main
from ims.gateway.pcp_gateway import PcpGateway, PcpGatewayConfig
from ims.gateway.pcp_recovery import new_run, run_gone
from ims.gateway.relay import RelayConfig
from ims.gateway.service import RelayGateway
from ims.pcp.aioserver import RunningPcpServer, start_pcp_server
from ims.pcp.constants import Opcode
from ims.pcp.nft import RecordingTable
from ims.pcp.server import PcpServerConfig
from ims.seams import Leg
from ims.sip.message import Response
from ims.store import GatewayRun, PcpMappingRecord, RelayRecord
from ims.store.sqlite import SqliteStore
from tests.test_gateway_flows import _answer, _asking, _invite, _offer, _ok

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = ipaddress.ip_address("127.0.1.100")  # the CGN's public address
BILL = ("127.0.0.1", 40000)
DAVE = ("127.0.0.1", 40002)
OWNER = "Alpha"
NONCE = bytes(range(12))


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def _dead_pid() -> int:
    """The pid of a process that has ended (a crashed operator)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


async def _server(stack: AsyncExitStack, *, refuse: bool = False,
                  min_lifetime: int = 120) -> RunningPcpServer:
    control = frozenset() if refuse else frozenset({ipaddress.ip_address("127.0.0.1")})
    config = PcpServerConfig(EXTERNAL, control_addresses=control, min_lifetime=min_lifetime)
    server = await start_pcp_server(config, "127.0.0.1", RecordingTable(), port=0)
    stack.push_async_callback(server.close)
    return server


@asynccontextmanager
async def _gateway(store: SqliteStore, port: int, *, lifetime: int = 120,
                   timeout: float = 0.3) -> AsyncIterator[PcpGateway]:
    gateway = await PcpGateway.start(
        PcpGatewayConfig("127.0.0.1", port, lifetime, timeout), RelayConfig("127.0.0.1"),
        lifetime=60, name=OWNER, store=store)
    try:
        yield gateway
    finally:
        await gateway.close()


async def _crash(gateway: PcpGateway) -> None:
    """The process dies: no renewal, no delete, no release; the records stay."""
    await gateway.client.close()
    await gateway.fallback.relay.close()


async def _open_call(gateway: PcpGateway) -> Response:
    """Bill's INVITE through the originating leg, then Dave's 2xx: MAP, FILTER = Dave."""
    invite = _invite(_offer(BILL))
    prepared = await gateway.prepare(_asking(invite))
    assert not hasattr(prepared, "status_code")
    completed = gateway.complete(invite.call_id, _ok(_answer(invite.body, DAVE)))
    if not isinstance(completed, Response):
        completed = await completed
    return completed


def test_mapping_recorded_when_granted_updated_with_its_filter_forgotten_on_release(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            server = await _server(stack)
            store = stack.enter_context(SqliteStore(tmp_path / "alpha.sqlite"))
            gateway = await stack.enter_async_context(_gateway(store, server.port))
            invite = _invite(_offer(BILL))
            await gateway.prepare(_asking(invite))
            [granted] = server.core.mappings
            [record] = store.allocations.mappings()
            assert record.holder == gateway.run
            assert (record.call_id, record.leg, record.opcode) == ("c1@test", "originating",
                                                                   "MAP")
            assert (record.server, record.server_port, record.protocol) == (
                "127.0.0.1", server.port, 17)
            assert (record.internal_address, record.internal_port) == BILL
            assert (record.external_address, record.external_port) == (
                str(EXTERNAL), granted.external.port)
            assert record.nonce == granted.nonce and record.peer_address is None
            assert 100 < record.expires_at - time.time() <= 120
            completed = gateway.complete(invite.call_id, _ok(_answer(invite.body, DAVE)))
            if not isinstance(completed, Response):
                await completed
            [filtered] = store.allocations.mappings()
            assert (filtered.peer_address, filtered.peer_port) == DAVE  # the FILTER's peer
            assert filtered.nonce == record.nonce
            await gateway.release(invite.call_id)
            assert not server.core.mappings
            assert store.allocations.mappings() == ()
    run(main())


def test_rfc6887_section_15_new_run_deletes_what_a_crashed_run_left(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            server = await _server(stack)
            store = stack.enter_context(SqliteStore(tmp_path / "alpha.sqlite"))
            crashed = await PcpGateway.start(
                PcpGatewayConfig("127.0.0.1", server.port, 120, 0.3), RelayConfig("127.0.0.1"),
                lifetime=60, name=OWNER, store=store)
            await _open_call(crashed)
            [left] = server.core.mappings
            assert left.opcode is Opcode.MAP and len(store.allocations.mappings()) == 1
            await _crash(crashed)
            assert server.core.mappings == (left,)  # the CGN still holds it

            async with _gateway(store, server.port) as restarted:
                # Deleted at start, with the crashed run's nonce, before any call.
                assert not server.core.mappings
                assert store.allocations.mappings() == ()
                assert restarted.run != crashed.run
    run(main())


def test_restart_leaves_a_live_sibling_alone_and_forgets_dead_runs_relays(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            server = await _server(stack)
            store = stack.enter_context(SqliteStore(tmp_path / "alpha.sqlite"))
            now = time.time()
            live = GatewayRun(OWNER, "sibling", new_run(OWNER).host, os.getppid())
            dead = GatewayRun(OWNER, "crashed", live.host, _dead_pid())
            other = GatewayRun("Beta", "beta-run", live.host, _dead_pid())
            assert not run_gone(live) and run_gone(dead)
            sibling = PcpMappingRecord(live, "s@x", "terminating", "127.0.0.1", server.port, 17,
                                       "PEER", "127.0.0.9", 4000, str(EXTERNAL), 5000,
                                       "192.0.2.1", 6000, NONCE, 120, now + 100)
            store.allocations.put_mapping(sibling)
            for run_ in (dead, other):
                store.allocations.put_relays(run_.run_id, "r@x", [RelayRecord(
                    run_, "r@x", "originating", "127.0.0.1", 30000, 30001, "127.0.0.1:40000",
                    None, now + 100)])
            async with _gateway(store, server.port) as gateway:
                assert gateway.run.owner == OWNER
                assert store.allocations.mappings() == (sibling,)  # alive: not ours to delete
                assert [r.holder for r in store.allocations.relays()] == [other]  # not Alpha's
    run(main())


def test_unanswered_delete_is_forgotten_after_the_mapping_expires(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            server = await _server(stack)
            silent = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            stack.callback(silent[0].close)
            silent_port = int(silent[0].get_extra_info("sockname")[1])
            store = stack.enter_context(SqliteStore(tmp_path / "alpha.sqlite"))
            dead = GatewayRun(OWNER, "crashed", new_run(OWNER).host, _dead_pid())
            store.allocations.put_mapping(PcpMappingRecord(
                dead, "c@x", "originating", "127.0.0.1", silent_port, 17, "MAP", "127.0.0.1",
                40000, str(EXTERNAL), 5000, None, None, NONCE, 120, time.time() + 0.8))
            started = time.monotonic()
            async with _gateway(store, server.port, timeout=0.2) as gateway:
                assert time.monotonic() - started < 3  # recovery is bounded by the timeout
                assert len(store.allocations.mappings()) == 1  # kept until it lapses
                assert gateway.run.owner == OWNER
                for _ in range(100):
                    if not store.allocations.mappings():
                        break
                    await asyncio.sleep(0.05)
                assert store.allocations.mappings() == ()
    run(main())


def test_mode_relay_start_forgets_left_relays_and_lets_left_mappings_lapse(
        tmp_path: Path) -> None:
    """A run in mode relay after a crashed mode pcp run: it has no PCP client, so the crashed
    run's mapping stays recorded until it lapses at the CGN (section 15), then is forgotten;
    its relay allocations go at once."""
    async def main() -> None:
        with SqliteStore(tmp_path / "alpha.sqlite") as store:
            dead = GatewayRun(OWNER, "crashed", new_run(OWNER).host, _dead_pid())
            now = time.time()
            store.allocations.put_mapping(PcpMappingRecord(
                dead, "c@x", "originating", "127.0.0.1", 5351, 17, "MAP", "127.0.0.1", 40000,
                str(EXTERNAL), 5000, None, None, NONCE, 120, now + 0.5))
            store.allocations.put_relays("crashed", "c@x", [RelayRecord(
                dead, "c@x", "terminating", "127.0.0.1", 30000, 30001, "127.0.0.1:40002", None,
                now + 100)])
            async with RelayGateway.open(RelayConfig("127.0.0.1"), lifetime=60, name=OWNER,
                                         store=store):
                assert store.allocations.relays() == ()
                assert len(store.allocations.mappings()) == 1  # not deletable from here
                for _ in range(100):
                    if not store.allocations.mappings():
                        break
                    await asyncio.sleep(0.05)
                assert store.allocations.mappings() == ()
    run(main())


def test_rfc6887_section_11_2_1_renewal_updates_the_record(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            server = await _server(stack, min_lifetime=2)
            store = stack.enter_context(SqliteStore(tmp_path / "alpha.sqlite"))
            gateway = await stack.enter_async_context(_gateway(store, server.port, lifetime=2))
            await gateway.prepare(_asking(_invite(_offer(BILL))))
            [first] = store.allocations.mappings()
            for _ in range(60):  # renewed at half the lifetime (section 11.2.1), ~1 s
                [now] = store.allocations.mappings()
                if now.expires_at > first.expires_at + 0.5:
                    break
                await asyncio.sleep(0.05)
            assert now.expires_at > first.expires_at + 0.5
            assert now.nonce == first.nonce and now.external_port == first.external_port
    run(main())


def test_relay_fallback_recorded_then_forgotten(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            server = await _server(stack, refuse=True)  # THIRD_PARTY refused: relay
            store = stack.enter_context(SqliteStore(tmp_path / "alpha.sqlite"))
            gateway = await stack.enter_async_context(_gateway(store, server.port))
            invite = _invite(_offer(BILL))
            await gateway.prepare(_asking(invite))
            [relay] = store.allocations.relays()
            assert len(gateway.relay.list()) == 1
            assert (relay.call_id, relay.leg, relay.relay_address) == (
                "c1@test", "originating", "127.0.0.1")
            assert relay.caller_peer == "127.0.0.1:40000" and relay.callee_peer is None
            assert store.allocations.mappings() == ()
            completed = gateway.complete(invite.call_id, _ok(_answer(invite.body, DAVE)))
            if not isinstance(completed, Response):
                await completed
            [answered] = store.allocations.relays()
            assert answered.callee_peer == "127.0.0.1:40002"
            assert answered.caller_side_port == relay.caller_side_port
            await gateway.release(invite.call_id)
            assert store.allocations.relays() == ()
    run(main())


# -- `ueconnect mno --list-open` ---------------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "alpha.toml"
    path.write_text('[operator]\nname = "Alpha"\nplmn = "001-01"\nmnc_digits = 2\n'
                    '[scscf]\nlisten = ["udp:127.0.1.2:5102"]\n'
                    f'[store]\npath = "{tmp_path / "alpha.sqlite"}"\n', encoding="utf-8")
    return path


def test_list_open_from_another_process_while_the_gateway_runs(tmp_path: Path) -> None:
    config = _config(tmp_path)

    async def main() -> None:
        async with AsyncExitStack() as stack:
            server = await _server(stack)
            store = stack.enter_context(SqliteStore(tmp_path / "alpha.sqlite"))
            gateway = await stack.enter_async_context(_gateway(store, server.port))
            await _open_call(gateway)
            [mapping] = server.core.mappings
            command = [sys.executable, "-m", "ims", "mno", "--config", str(config),
                       "--list-open"]
            text = await asyncio.to_thread(subprocess.run, command, cwd=ROOT,
                                           capture_output=True, text=True, timeout=30)
            assert text.returncode == 0, text.stderr
            lines = text.stdout.splitlines()
            assert lines[0].startswith("ueconnect mno: Alpha: 1 call leg open (1 PCP mapping, "
                                       "0 relay allocations)")
            assert lines[1] == (
                f"  c1@test originating: PCP MAP at 127.0.0.1:{server.port} internal "
                f"127.0.0.1:40000 external {EXTERNAL}:{mapping.external.port} peer "
                f"127.0.0.1:40002, expires in {lines[1].split('expires in ')[1].split()[0]} s "
                f"(run {gateway.run.run_id} pid {os.getpid()})")
            done = await asyncio.to_thread(subprocess.run, [*command, "--json"], cwd=ROOT,
                                           capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            [row] = json.loads(done.stdout)["legs"]
            assert row["state"] == "open" and row["kind"] == "pcp"
            assert row["external"] == f"{EXTERNAL}:{mapping.external.port}"
            assert "nonce" not in row  # the nonce stays in the store
    run(main())


def test_list_open_after_a_crash_shows_what_recovery_will_clean(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    now = time.time()
    dead = GatewayRun(OWNER, "crashed", new_run(OWNER).host, _dead_pid())
    with SqliteStore(tmp_path / "alpha.sqlite") as store:
        store.allocations.put_mapping(PcpMappingRecord(
            dead, "c@x", "terminating", "127.0.0.1", 5351, 17, "PEER", "100.64.0.2", 40002,
            "192.0.2.10", 50000, "198.51.100.7", 41000, NONCE, 120, now + 60))
        store.allocations.put_relays("crashed", "c@x", [RelayRecord(
            dead, "c@x", "terminating", "127.0.2.2", 30000, 30001, "127.0.1.2:30003",
            "100.64.0.2:40002", now - 5)])
    assert cli_main(["mno", "--config", str(config), "--list-open"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ueconnect mno: Alpha: 2 call legs open (1 PCP mapping, 1 relay "
                               "allocation)")
    assert lines[1].startswith("  c@x terminating: PCP PEER at 127.0.0.1:5351 internal "
                               "100.64.0.2:40002 external 192.0.2.10:50000 peer "
                               "198.51.100.7:41000, expires in ")
    assert lines[1].endswith(f"(run crashed pid {dead.pid}; left by a stopped run: the next "
                             "start deletes it)")
    assert lines[2].startswith("  c@x terminating: relay caller 127.0.1.2:30003 <-> "
                               "127.0.2.2:30000, callee 127.0.2.2:30001 <-> 100.64.0.2:40002, "
                               "expired 5 s ago")
    assert lines[2].endswith("; lapsed: the next start forgets it)")
    assert cli_main(["mno", "--config", str(config), "--list-open", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["legs"]
    assert [(r["kind"], r["state"]) for r in rows] == [("pcp", "left"), ("relay", "lapsed")]


def test_list_open_without_a_store_creates_none(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert cli_main(["mno", "--config", str(config), "--list-open"]) == 0
    assert "0 call legs open" in capsys.readouterr().out
    assert not (tmp_path / "alpha.sqlite").exists()
    assert cli_main(["mno", "--config", str(config), "--json"]) == 2
    assert "--json goes with --list-open" in capsys.readouterr().err


def test_leg_values_match_the_seam() -> None:
    assert {leg.value for leg in Leg} == {"originating", "terminating"}
