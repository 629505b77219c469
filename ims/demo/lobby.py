"""The game lobby part of the demo (TR 22.807 4.2.3 flow 2, application level)."""

from __future__ import annotations

from ims.demo.world import World, both, plmn_of
from ims.embedded import DemoSubscriber
from ue_ua.lobby import (
    Accepted,
    GameRules,
    Identity,
    Invited,
    Player,
    Presence,
    Proposed,
    SessionServer,
    Welcome,
)
from ue_ua.lobby_ws import LobbyConnection


async def meet_in_lobby(world: World, url: str, host_sub: DemoSubscriber,
                        guest_sub: DemoSubscriber) -> tuple[GameRules, Identity]:
    """TR 22.807 4.2.3 flow 2, application level: presence, invite, accept, rules, the session
    server (the host's UE), and the guest forwarding its UE and MNO identifiers to it. Each
    player talks to the lobby from its own UE."""
    me = Player(host_sub.tel_uri, plmn_of(host_sub.operator), host_sub.name)
    peer = Player(guest_sub.tel_uri, plmn_of(guest_sub.operator), guest_sub.name)

    async def host_side() -> tuple[GameRules, Identity]:
        conn = await LobbyConnection.open(url, me)
        try:
            await conn.send(conn.client.hello())
            await conn.expect(Welcome)
            while peer not in conn.client.present:
                await conn.expect(Presence)
            await conn.send(conn.client.invite(peer.ue_id))
            sid = (await conn.expect(Accepted)).session_id
            await conn.send(conn.client.host(sid, GameRules(tick_rate=30)))
            rules = (await conn.expect(SessionServer)).rules
            return rules, await conn.expect(Identity)
        finally:
            await conn.close()

    async def guest_side() -> None:
        conn = await LobbyConnection.open(url, peer)
        try:
            await conn.send(conn.client.hello())
            await conn.expect(Welcome)
            sid = (await conn.expect(Invited)).session_id
            await conn.send(conn.client.accept(sid))
            await conn.expect(Proposed)
            await conn.send(conn.client.agree(sid))
            await conn.expect(SessionServer)
            await conn.send(conn.client.forward_identity(sid))
        finally:
            await conn.close()

    return await both(world.on_ue(host_sub.name, host_side),
                      world.on_ue(guest_sub.name, guest_side))
