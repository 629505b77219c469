"""Playing the demo game over any datagram channel: the asyncio loop around ue_ua/game.py.

The game needs nothing of the network but `send(bytes)` and the datagrams that arrive, so a
channel is that and only that (`DatagramChannel`): a ue_ua.connection.Connection, a UDP socket
pointed at the peer, or an in-memory pair in tests.

- `play_host`: the session server's end (the UE the lobby chose): steps the game at the agreed
  tick rate, sends one state datagram per tick, folds in the guest's inputs and takes one RTT
  sample per echoed tick (`EchoTimer`).
- `play_guest`: the other end: answers every new state with its move at once (so each tick is
  echoed once), and ends on the last tick, a winner, or silence.
- `play_match`: both ends at once (both UEs in one process, as in `ueconnect demo`).

A game is bounded: `ticks` at most, or earlier when a player reaches `points_to_win`, or when
the caller's `stop` event is set. `speedup` runs the clock faster than the agreed tick rate
(a headless run need not take real time; the game itself is the same, tick for tick).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ue_ua.game import (
    EchoTimer,
    GameGuest,
    GameHost,
    GameState,
    bot_move,
    winner,
)
from ue_ua.lobby import GameRules

__all__ = [
    "DatagramChannel",
    "EndResult",
    "GameEnd",
    "GameSessionConfig",
    "MatchResult",
    "percentile",
    "play_guest",
    "play_host",
    "play_match",
]

MoveSource = Callable[[GameState], int]
"""What a player does next, given the newest state it knows: -1 up, 0 stay, +1 down."""


class DatagramChannel(Protocol):
    """Datagrams to and from the peer. `recv` waits for the next one; both raise when the
    channel is closed (the session then ends with that exception)."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self) -> bytes: ...


@dataclass(frozen=True)
class GameSessionConfig:
    """How long and how fast one game runs. Both ends use the same one: `tick_rate` and
    `points_to_win` come from the lobby's agreed rules, the rest is the application's."""

    tick_rate: int = 30  # ticks (state datagrams) per second of game time
    ticks: int = 200  # the game ends after this many ticks at the latest
    points_to_win: int = 5
    speedup: float = 1.0  # wall-clock ticks per game tick: > 1 runs faster than real time
    linger: float = 0.5  # seconds the host waits after its last tick for the last echo
    idle_timeout: float = 2.0  # seconds of silence after which the guest gives up

    def __post_init__(self) -> None:
        # Ranges of docs/lobby.md section 3 where the lobby sets them.
        if not 1 <= self.tick_rate <= 120:
            raise ValueError(f"tick_rate must be in 1..120, got {self.tick_rate}")
        if not 1 <= self.points_to_win <= 99:
            raise ValueError(f"points_to_win must be in 1..99, got {self.points_to_win}")
        if self.ticks < 1:
            raise ValueError(f"ticks must be at least 1, got {self.ticks}")
        for name in ("speedup", "linger", "idle_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")

    @classmethod
    def from_rules(
        cls,
        rules: GameRules,
        *,
        ticks: int = 200,
        speedup: float = 1.0,
        linger: float = 0.5,
        idle_timeout: float = 2.0,
    ) -> GameSessionConfig:
        """The config for the rules the lobby agreed (tick rate, points to win)."""
        return cls(tick_rate=rules.tick_rate, points_to_win=rules.points_to_win, ticks=ticks,
                   speedup=speedup, linger=linger, idle_timeout=idle_timeout)

    @property
    def interval(self) -> float:
        """Wall-clock seconds between two ticks."""
        return 1.0 / (self.tick_rate * self.speedup)


class GameEnd(enum.Enum):
    TICKS = "ticks"  # the bounded number of ticks was played
    WINNER = "winner"  # a player reached points_to_win
    STOPPED = "stopped"  # stopped from this side (a player quit, or the match was over)
    IDLE = "idle"  # the guest heard nothing for idle_timeout


@dataclass(frozen=True)
class EndResult:
    """What one end saw. `received` counts the game datagrams that arrived (stale ones
    included, they also crossed the network); `stale` of them were duplicates or late
    arrivals the newest-wins filter dropped; `rejected` arrivals were not game datagrams."""

    sent: int
    received: int
    stale: int
    rejected: int
    final: GameState  # the host's last state; the newest state the guest saw
    ended: GameEnd
    winner: int | None = None  # 0 the host (player A), 1 the guest (player B)
    rtt_ms: tuple[float, ...] = ()  # the host's samples, one per echoed tick, in order


@dataclass(frozen=True)
class MatchResult:
    host: EndResult
    guest: EndResult

    def outcome(self, host_name: str = "host", guest_name: str = "guest") -> str:
        """One line: the score as the host (session server) has it, and how it ended."""
        state = self.host.final
        score = (f"{host_name} {state.score_a} : {state.score_b} {guest_name} "
                 f"after {state.tick} ticks")
        if self.host.winner is not None:
            return f"{score}: {host_name if self.host.winner == 0 else guest_name} wins"
        return f"{score}: " + {
            GameEnd.TICKS: "no winner yet when the ticks ran out",
            GameEnd.WINNER: "won",  # not reached: a winner is named above
            GameEnd.STOPPED: "stopped before the end",
            GameEnd.IDLE: "the peer fell silent",
        }[self.host.ended]


def percentile(samples: list[float] | tuple[float, ...], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in 0..1) of a non-empty sample."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class _Counts:
    sent: int = 0
    received: int = 0
    rtt_s: list[float] = field(default_factory=list)


async def play_host(
    channel: DatagramChannel,
    config: GameSessionConfig,
    *,
    move: MoveSource | None = None,
    on_tick: Callable[[GameState], None] | None = None,
    stop: asyncio.Event | None = None,
) -> EndResult:
    """Run the session server's end until the game ends; `move` plays the host's paddle
    (a bot when None), `on_tick` sees each new state (to draw it), `stop` ends it early."""
    loop = asyncio.get_running_loop()
    host = GameHost()
    echoes = EchoTimer()
    counts = _Counts()
    choose = move or (lambda state: bot_move(state, 0))
    echoed: list[int] = []  # ticks whose echo came back
    final_tick: int | None = None  # known once the host has sent its last state
    last_echoed = asyncio.Event()

    async def listen() -> None:
        while True:
            data = await channel.recv()
            now = loop.time()
            rejected = host.rejected
            accepted = host.receive(data)
            if host.rejected == rejected:
                counts.received += 1
            if accepted is None:
                continue
            rtt = echoes.echoed(accepted.tick, now)
            if rtt is not None:
                counts.rtt_s.append(rtt)
                echoed.append(accepted.tick)
                if accepted.tick == final_tick:
                    last_echoed.set()

    listener = asyncio.create_task(listen())
    ended = GameEnd.TICKS
    try:
        started = loop.time()
        for k in range(config.ticks):
            if stop is not None and stop.is_set():
                ended = GameEnd.STOPPED
                break
            if listener.done():
                break  # the channel failed: raised below
            # Deadlines from the start, not from the last wake-up: no drift. Behind schedule,
            # still yield once, so the receiving side runs between two ticks.
            await asyncio.sleep(max(0.0, started + k * config.interval - loop.time()))
            datagram = host.advance(choose(host.state))
            echoes.sent(host.state.tick, loop.time())
            await channel.send(datagram)
            counts.sent += 1
            if on_tick is not None:
                on_tick(host.state)
            if winner(host.state, config.points_to_win) is not None:
                ended = GameEnd.WINNER
                break
        final_tick = host.state.tick
        if echoed and echoed[-1] == final_tick:
            last_echoed.set()
        if not listener.done():
            # The guest's answer to the last state is part of the game: wait for it, bounded.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(last_echoed.wait(), config.linger)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener  # re-raises what ended it otherwise (the channel's error)
    return EndResult(
        sent=counts.sent,
        received=counts.received,
        stale=host.inputs.dropped,
        rejected=host.rejected,
        final=host.state,
        ended=ended,
        winner=winner(host.state, config.points_to_win),
        rtt_ms=tuple(r * 1000 for r in counts.rtt_s),
    )


async def play_guest(
    channel: DatagramChannel,
    config: GameSessionConfig,
    *,
    move: MoveSource | None = None,
    on_state: Callable[[GameState], None] | None = None,
    stop: asyncio.Event | None = None,
) -> EndResult:
    """Run the guest's end: answer each new state with `move` (a bot when None) until the
    last tick, a winner, `idle_timeout` of silence, or `stop`."""
    guest = GameGuest()
    sent = received = 0
    choose = move or (lambda state: bot_move(state, 1))
    stopper: asyncio.Future[Any] | None = (
        asyncio.ensure_future(stop.wait()) if stop is not None else None
    )
    try:
        while True:
            receiving: asyncio.Future[bytes] = asyncio.ensure_future(channel.recv())
            waited: set[asyncio.Future[Any]] = {receiving}
            if stopper is not None:
                waited.add(stopper)
            done, _ = await asyncio.wait(
                waited, timeout=config.idle_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if receiving not in done:
                receiving.cancel()
                ended = GameEnd.STOPPED if stopper in done else GameEnd.IDLE
                break
            rejected = guest.rejected
            accepted = guest.receive(receiving.result())
            if guest.rejected == rejected:
                received += 1
            if accepted is None:
                continue
            # Answer at once: the input echoes this tick, which is the host's RTT sample.
            await channel.send(guest.send_move(choose(guest.state)))
            sent += 1
            if on_state is not None:
                on_state(guest.state)
            if winner(guest.state, config.points_to_win) is not None:
                ended = GameEnd.WINNER
                break
            if guest.state.tick >= config.ticks:
                ended = GameEnd.TICKS
                break
    finally:
        if stopper is not None:
            stopper.cancel()
    return EndResult(
        sent=sent,
        received=received,
        stale=guest.states.dropped,
        rejected=guest.rejected,
        final=guest.state,
        ended=ended,
        winner=winner(guest.state, config.points_to_win),
    )


async def play_match(
    host_channel: DatagramChannel,
    guest_channel: DatagramChannel,
    config: GameSessionConfig,
    *,
    host_move: MoveSource | None = None,
    guest_move: MoveSource | None = None,
    on_tick: Callable[[GameState], None] | None = None,
    stop: asyncio.Event | None = None,
) -> MatchResult:
    """Both ends in this process: the guest listens first, then the host starts ticking.
    `stop` ends the game early from the host's side (a player quit)."""
    over = asyncio.Event()
    guest = asyncio.create_task(play_guest(guest_channel, config, move=guest_move, stop=over))
    try:
        host = await play_host(host_channel, config, move=host_move, on_tick=on_tick, stop=stop)
        # The guest ends by itself on the last tick; when that state was lost, or the host
        # stopped early, it has nothing more to wait for once the host's linger is over.
        await asyncio.wait({guest}, timeout=config.linger)
        over.set()
        return MatchResult(host=host, guest=await guest)
    finally:
        if not guest.done():
            guest.cancel()
