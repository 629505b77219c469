"""The lobby over a real WebSocket on 127.0.0.1 (ue_ua.lobby_ws): two players, whole flow."""

from __future__ import annotations

import asyncio

import pytest

from ue_ua.lobby import (
    Accepted,
    Declined,
    Error,
    GameRules,
    Identity,
    Invited,
    Player,
    Presence,
    Proposed,
    SessionServer,
    Welcome,
)
from ue_ua.lobby_ws import LobbyClosed, LobbyConnection, serve_lobby

BILL = Player("tel:+15550100001", "001-01", "Bill")
DAVE = Player("tel:+15550100002", "001-02", "Dave")


async def _lobby_with_two() -> tuple[object, LobbyConnection, LobbyConnection]:
    handle = await serve_lobby("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{handle.port}"
    bill = await LobbyConnection.open(url, BILL)
    await bill.send(bill.client.hello())
    assert await bill.expect(Welcome) == Welcome(BILL.ue_id)
    dave = await LobbyConnection.open(url, DAVE)
    await dave.send(dave.client.hello())
    await dave.expect(Welcome)
    # Bill sees Dave.
    while DAVE not in bill.client.present:
        await bill.expect(Presence)
    return handle, bill, dave


def test_lobby_flow_over_websocket() -> None:
    async def run() -> None:
        handle, bill, dave = await _lobby_with_two()
        try:
            await bill.send(bill.client.invite(DAVE.ue_id))
            invited = await dave.expect(Invited)
            assert invited.sender == BILL
            sid = invited.session_id
            await dave.send(dave.client.accept(sid))
            assert await bill.expect(Accepted) == Accepted(sid, DAVE.ue_id)
            # Negotiation: Bill offers to host; Dave counters with a lower tick rate; Bill agrees.
            await bill.send(bill.client.host(sid, GameRules(tick_rate=60, max_datagram=512)))
            assert (await dave.expect(Proposed)).rules.tick_rate == 60
            counter = GameRules(tick_rate=30, max_datagram=256, session_server=BILL.ue_id)
            await dave.send(dave.client.propose(sid, counter))
            await bill.expect(Proposed)
            await bill.send(bill.client.agree(sid))
            assert await bill.expect(SessionServer) == SessionServer(sid, counter)
            await dave.expect(SessionServer)
            assert dave.client.agreed[sid].session_server == BILL.ue_id
            # Dave forwards his identifiers to the session server, Bill.
            await dave.send(dave.client.forward_identity(sid))
            assert await bill.expect(Identity) == Identity(sid, DAVE.ue_id, DAVE.mno_id)
            assert bill.client.peers[sid].mno_id == "001-02"
        finally:
            await bill.close()
            await dave.close()
            await handle.close()  # type: ignore[attr-defined]

    asyncio.run(run())


def test_decline_over_websocket() -> None:
    async def run() -> None:
        handle, bill, dave = await _lobby_with_two()
        try:
            await bill.send(bill.client.invite(DAVE.ue_id))
            sid = (await dave.expect(Invited)).session_id
            await dave.send(dave.client.decline(sid, "not now"))
            assert await bill.expect(Declined) == Declined(sid, DAVE.ue_id, "not now")
            await dave.expect(Declined)
            assert sid not in dave.client.invitations
        finally:
            await bill.close()
            await dave.close()
            await handle.close()  # type: ignore[attr-defined]

    asyncio.run(run())


@pytest.mark.parametrize(
    ("text", "code", "names"),
    [
        ("{oops", "malformed", "not JSON"),
        ('{"type":"invite"}', "bad-field", 'missing member "to"'),
        ('{"type":"invite","to":"tel:+15550100009"}', "unknown-player", "+15550100009"),
        ('{"type":"dance"}', "unknown-type", "dance"),
    ],
)
def test_malformed_message_gets_error_and_connection_stays(text: str, code: str,
                                                           names: str) -> None:
    async def run() -> None:
        handle, bill, dave = await _lobby_with_two()
        try:
            await bill.send_text(text)
            err = await bill.expect(Error)
            assert err.code == code and names in err.reason
            # The connection and the lobby's state are intact: Bill can still invite Dave.
            await bill.send(bill.client.invite(DAVE.ue_id))
            assert (await dave.expect(Invited)).sender == BILL
        finally:
            await bill.close()
            await dave.close()
            await handle.close()  # type: ignore[attr-defined]

    asyncio.run(run())


def test_leaving_player_vanishes_from_presence() -> None:
    async def run() -> None:
        handle, bill, dave = await _lobby_with_two()
        try:
            await dave.close()
            while DAVE in bill.client.present:
                await bill.expect(Presence)
            assert bill.client.present == (BILL,)
        finally:
            await bill.close()
            await handle.close()  # type: ignore[attr-defined]

    asyncio.run(run())


def test_unreachable_lobby_is_a_clear_error() -> None:
    async def run() -> None:
        handle = await serve_lobby("127.0.0.1", 0)
        port = handle.port
        await handle.close()
        with pytest.raises(LobbyClosed, match="cannot reach the lobby"):
            await LobbyConnection.open(f"ws://127.0.0.1:{port}", BILL, timeout=2.0)

    asyncio.run(run())
