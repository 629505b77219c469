"""The game across two UEs: each end of the match in its own UE's loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from ims.demo.world import World
from ue_ua.connection import Connection
from ue_ua.game import GameState
from ue_ua.game_session import (
    EndResult,
    GameSessionConfig,
    MatchResult,
    MoveSource,
    play_guest,
    play_host,
)


async def play_in_world(world: World, host: tuple[str, Connection],
                        guest: tuple[str, Connection], config: GameSessionConfig, *,
                        host_move: MoveSource | None = None,
                        on_tick: Callable[[GameState], None] | None = None,
                        stop: asyncio.Event | None = None) -> MatchResult:
    """ue_ua.game_session.play_match, each end in its own UE's loop (in the testbed the two
    Connections live in two namespaces, two threads): the guest listens first, the host ticks;
    once the host is done, the guest has the host's linger to finish, then it is stopped."""
    (host_name, host_conn), (guest_name, guest_conn) = host, guest
    over: list[asyncio.Event] = []  # the guest's stop event, made in the guest's loop

    async def guest_end() -> EndResult:
        done = asyncio.Event()
        over.append(done)
        return await play_guest(guest_conn, config, stop=done)

    async def stop_guest() -> None:
        for event in over:
            event.set()

    guesting = asyncio.ensure_future(world.on_ue(guest_name, guest_end))
    try:
        hosted = await world.on_ue(host_name, lambda: play_host(
            host_conn, config, move=host_move, on_tick=on_tick, stop=stop))
        await asyncio.wait({guesting}, timeout=config.linger)
        await world.on_ue(guest_name, stop_guest)
        return MatchResult(host=hosted, guest=await guesting)
    finally:
        if not guesting.done():
            guesting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await guesting
