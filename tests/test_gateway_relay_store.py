"""The relaying gateway's record in the store (ims.gateway.service, [gateway] mode = "relay"):
each leg's relay allocation is recorded when prepared, again when answered or refreshed, and
forgotten at release, expiry and close, so `ueconnect mno --list-open` shows what the embedded
default holds open; a new run forgets what a dead run's relay left (it ended with its process).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from ims.cli import main as cli_main
from ims.gateway.relay import RelayConfig
from ims.gateway.service import RelayGateway
from ims.seams import Leg
from ims.sip.uri import parse_uri
from ims.sip.useragent import IncomingCall
from ims.store import GatewayRun, RelayRecord
from ims.store.sqlite import SqliteStore
from tests.test_gateway_flows import (
    SDP,
    _answer,
    _asking,
    _invite,
    _offer,
    _ok,
    _socket,
    _until,
    run,
    world,
)
from tests.test_gateway_recovery import _dead_pid
from tests.test_permission_flows import CALL, DAVE

BILL = ("127.0.0.1", 40000)
DAVE_UE = ("127.0.0.1", 40002)


def _list_open(config: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    """`ueconnect mno --config <config> --list-open --json`, in this process: the rows."""
    capsys.readouterr()
    assert cli_main(["mno", "--config", str(config), "--list-open", "--json"]) == 0
    rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)["legs"]
    return rows


def test_list_open_shows_each_operators_relay_leg_while_the_call_is_up(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alpha_toml, beta_toml = tmp_path / "alpha.toml", tmp_path / "beta.toml"

    async def main() -> None:
        async with world(tmp_path) as w, AsyncExitStack() as sockets:
            alpha, beta = w.gateways()
            assert _list_open(alpha_toml, capsys) == [] == _list_open(beta_toml, capsys)
            bill_socket = await _socket(sockets)
            dave_socket = await _socket(sockets)
            w.apps["dave"].decision = "allow"
            w.apps["dave"].gate.set()
            task = asyncio.create_task(w.agents["bill"].ua.call(
                parse_uri(DAVE), extra=CALL, body=_offer(bill_socket.address), content_type=SDP))
            incoming: IncomingCall = await asyncio.wait_for(
                w.agents["dave"].ua.incoming.get(), 5)

            # Before the answer each leg is recorded with no callee peer yet.
            [ringing] = _list_open(beta_toml, capsys)
            assert (ringing["kind"], ringing["leg"], ringing["callee_peer"]) == (
                "relay", "terminating", None)
            [waiting] = _list_open(alpha_toml, capsys)
            assert waiting["callee_peer"] is None

            answered = await incoming.accept(_answer(incoming.request.body,
                                                     dave_socket.address), SDP)
            call = await task
            await asyncio.wait_for(answered.acked.wait(), 5)

            [a_row] = _list_open(alpha_toml, capsys)
            [b_row] = _list_open(beta_toml, capsys)
            [a_leg] = alpha.open_legs(kernel=False)
            [b_leg] = beta.open_legs(kernel=False)
            for row, leg, gateway in ((a_row, a_leg, alpha), (b_row, b_leg, beta)):
                allocation = leg.allocation
                assert row["state"] == "open" and row["run"] == gateway.run.run_id
                assert row["pid"] == os.getpid()
                assert (row["call_id"], row["leg"]) == (leg.call_id, leg.leg.value)
                assert row["caller_side"] == "{}:{}".format(*allocation.caller_side)
                assert row["callee_side"] == "{}:{}".format(*allocation.callee_side)
                assert row["callee_peer"] == "{}:{}".format(*allocation.callee_peer)
                assert 50 < float(str(row["expires_in"])) <= 60  # [gateway] lifetime = 60
            assert (a_leg.leg, b_leg.leg) == (Leg.ORIGINATING, Leg.TERMINATING)
            assert b_row["callee_peer"] == "{}:{}".format(*dave_socket.address)
            # Alpha's callee side admits Beta's caller side port: the chain of the module text.
            assert a_row["callee_peer"] == b_row["caller_side"]

            capsys.readouterr()
            assert cli_main(["mno", "--config", str(alpha_toml), "--list-open"]) == 0
            text = capsys.readouterr().out.splitlines()
            assert text[0].startswith("ueconnect mno: Alpha: 1 call leg open (0 PCP mappings, "
                                      "1 relay allocation)")
            assert text[1].startswith(f"  {a_leg.call_id} originating: relay caller ")

            assert (await call.bye()).status_code == 200
            await _until(lambda: not alpha.open_legs() and not beta.open_legs(),
                         "both legs released")
            assert _list_open(alpha_toml, capsys) == [] == _list_open(beta_toml, capsys)

    run(main())


def test_refresh_moves_the_recorded_expiry_and_expiry_forgets_the_leg(tmp_path: Path) -> None:
    async def main() -> None:
        with SqliteStore(tmp_path / "alpha.sqlite") as store:
            async with RelayGateway.open(RelayConfig("127.0.0.1"), lifetime=60, name="Alpha",
                                         store=store) as gateway:
                invite = _invite(_offer(BILL), extra="Session-Expires: 1\r\n")
                await gateway.prepare(_asking(invite))
                [prepared] = store.allocations.relays("Alpha")
                assert prepared.holder == gateway.run and prepared.callee_peer is None
                assert prepared.caller_peer == "127.0.0.1:40000"
                assert 0 < prepared.expires_at - time.time() <= 1
                ok = _ok(_answer(invite.body, DAVE_UE))
                gateway.complete(invite.call_id, ok)
                [answered] = store.allocations.relays("Alpha")
                assert answered.callee_peer == "127.0.0.1:40002"
                gateway.complete(invite.call_id, ok)  # a retransmission: the record stands
                assert store.allocations.relays("Alpha") == (answered,)
                # RFC 4028 section 10: a refresh restarts the lifetime, the record follows.
                await gateway.refresh(_invite(invite.body, extra="Session-Expires: 90\r\n"))
                [refreshed] = store.allocations.relays("Alpha")
                assert 85 < refreshed.expires_at - time.time() <= 90
                await gateway.refresh(_invite(invite.body, extra="Session-Expires: 1\r\n"))
                # Neither refreshed again nor ended: the relay expires it, the record goes.
                await _until(lambda: not store.allocations.relays(), "the expired leg forgotten")
                assert gateway.open_legs() == ()

    run(main())


def test_release_and_close_forget_what_the_run_recorded(tmp_path: Path) -> None:
    async def main() -> None:
        with SqliteStore(tmp_path / "alpha.sqlite") as store:
            async with RelayGateway.open(RelayConfig("127.0.0.1"), lifetime=60, name="Alpha",
                                         store=store) as gateway:
                first = _invite(_offer(BILL))
                await gateway.prepare(_asking(first))
                await gateway.prepare(_asking(first, Leg.TERMINATING))  # same-operator call
                assert [r.leg for r in store.allocations.relays()] == ["originating",
                                                                        "terminating"]
                assert await gateway.release_leg(first.call_id, Leg.TERMINATING)
                assert [r.leg for r in store.allocations.relays()] == ["originating"]
                await gateway.release(first.call_id)
                assert store.allocations.relays() == ()
                await gateway.prepare(_asking(first))
                assert len(store.allocations.relays()) == 1
            assert store.allocations.relays() == ()  # the relay closed with the gateway

    run(main())


def test_a_restarted_gateway_forgets_a_dead_runs_relay_rows(tmp_path: Path) -> None:
    async def main() -> None:
        with SqliteStore(tmp_path / "alpha.sqlite") as store:
            now = time.time()
            crashed = RelayGateway.start(RelayConfig("127.0.0.1"), lifetime=60, name="Alpha",
                                         store=store)
            await crashed.prepare(_asking(_invite(_offer(BILL))))
            await crashed.relay.close()  # killed: nothing released, its row stays
            live = GatewayRun("Alpha", "sibling", crashed.run.host, os.getppid())
            dead = GatewayRun("Alpha", "dead", crashed.run.host, _dead_pid())
            beta = GatewayRun("Beta", "beta-run", crashed.run.host, _dead_pid())
            for holder in (live, dead, beta):
                store.allocations.put_relays(holder.run_id, "r@x", [RelayRecord(
                    holder, "r@x", "originating", "127.0.0.1", 30000, 30001, "127.0.0.1:40000",
                    None, now + 100)])
            assert len(store.allocations.relays()) == 4

            async with RelayGateway.open(RelayConfig("127.0.0.1"), lifetime=60, name="Alpha",
                                         store=store) as restarted:
                # The crashed run (this process, another run) and the dead process are gone;
                # a live sibling's and another operator's rows are not ours to forget.
                assert restarted.run != crashed.run
                assert {r.holder for r in store.allocations.relays()} == {live, beta}

    run(main())


def test_without_a_store_nothing_is_recorded() -> None:
    async def main() -> None:
        async with RelayGateway.open(RelayConfig("127.0.0.1"), lifetime=60) as gateway:
            invite = _invite(_offer(BILL))
            await gateway.prepare(_asking(invite))
            assert gateway.records.store is None and len(gateway.open_legs()) == 1
            await gateway.release(invite.call_id)

    run(main())
