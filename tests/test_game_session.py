"""ue_ua/game_session.py: the game played over a datagram channel (in-memory pairs here)."""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Callable

import pytest

from ue_ua.connection import Connection
from ue_ua.game import (
    HEIGHT,
    PADDLE_HEIGHT,
    EchoTimer,
    GameGuest,
    GameHost,
    GameState,
    bot_move,
)
from ue_ua.game_session import (
    DatagramChannel,
    GameEnd,
    GameSessionConfig,
    percentile,
    play_guest,
    play_host,
    play_match,
)
from ue_ua.lobby import GameRules


class Pipe:
    """One end of an in-memory datagram channel. `fate(n, data)` decides what becomes of the
    n-th datagram sent (1-based): a list of copies to deliver (empty: lost)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer: Pipe | None = None
        self.delay = delay
        self.fate: Callable[[int, bytes], list[bytes]] = lambda n, data: [data]
        self.count = 0

    async def send(self, data: bytes) -> None:
        assert self.peer is not None
        self.count += 1
        for copy in self.fate(self.count, data):
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self.peer.inbox.put_nowait, copy)
            else:
                self.peer.inbox.put_nowait(copy)

    async def recv(self) -> bytes:
        return await self.inbox.get()


def pipes(delay: float = 0.0) -> tuple[Pipe, Pipe]:
    a, b = Pipe(delay), Pipe(delay)
    a.peer, b.peer = b, a
    return a, b


FAST = GameSessionConfig(tick_rate=30, ticks=200, speedup=100, linger=0.2, idle_timeout=1.0)


def test_a_clean_match_counts_every_datagram_each_way_and_one_rtt_per_tick() -> None:
    host_end, guest_end = pipes()
    result = asyncio.run(play_match(host_end, guest_end, FAST))
    host, guest = result.host, result.guest
    assert (host.sent, guest.received, guest.sent, host.received) == (200, 200, 200, 200)
    assert host.ended is GameEnd.TICKS and guest.ended is GameEnd.TICKS
    assert host.stale == guest.stale == host.rejected == guest.rejected == 0
    assert len(host.rtt_ms) == 200 and all(r >= 0 for r in host.rtt_ms)
    assert guest.rtt_ms == ()  # only the session server measures
    assert host.final == guest.final and host.final.tick == 200
    assert result.outcome("Bill", "Dave").startswith(
        f"Bill {host.final.score_a} : {host.final.score_b} Dave after 200 ticks"
    )


def test_loss_shows_in_the_counts_and_the_match_still_ends_in_bounded_time() -> None:
    host_end, guest_end = pipes()
    host_end.fate = lambda n, data: [] if n % 4 == 0 else [data]  # every 4th state lost
    began = time.monotonic()
    result = asyncio.run(play_match(host_end, guest_end, FAST))
    took = time.monotonic() - began
    host, guest = result.host, result.guest
    assert host.sent == 200 and guest.received == 150
    # The guest answers each state it got; each answer is one RTT sample.
    assert guest.sent == host.received == len(host.rtt_ms) == 150
    # The 200th state was lost: the guest stops when the host is over, not after idle_timeout.
    assert guest.ended is GameEnd.STOPPED and guest.final.tick == 199
    assert took < FAST.idle_timeout + 1.0


def test_duplicates_and_late_states_are_received_but_dropped_as_stale() -> None:
    host_end, guest_end = pipes()
    held: list[bytes] = []

    def fate(n: int, data: bytes) -> list[bytes]:
        # Every state twice, and state 10 held back and delivered after state 11 (reordered).
        if n == 10:
            held.append(data)
            return []
        if n == 11:
            return [data, data, *held]
        return [data, data]

    host_end.fate = fate
    result = asyncio.run(play_match(host_end, guest_end, FAST))
    guest = result.guest
    # The guest ends on the first copy of state 200: the second is never read.
    assert guest.received == 2 * 199 + 1 - 1
    assert guest.stale == 198 + 1  # each duplicate read, and the late state 10
    assert guest.sent == 199  # one answer per new state only: state 10 came too late
    assert len(result.host.rtt_ms) == 199


def test_garbage_is_rejected_not_counted_and_does_not_stop_the_game() -> None:
    host_end, guest_end = pipes()
    guest_end.fate = lambda n, data: [b"not a game datagram", data]
    result = asyncio.run(play_match(host_end, guest_end, FAST))
    assert result.host.rejected == 200 and result.host.received == 200
    assert result.host.ended is GameEnd.TICKS


def test_rtt_samples_include_the_channel_delay_both_ways() -> None:
    host_end, guest_end = pipes(delay=0.02)  # 20 ms each way
    config = GameSessionConfig(tick_rate=60, ticks=15, speedup=4, linger=0.5, idle_timeout=1.0)
    result = asyncio.run(play_match(host_end, guest_end, config))
    rtts = result.host.rtt_ms
    assert len(rtts) == 15
    assert percentile(rtts, 0.5) >= 40.0
    assert percentile(rtts, 0.95) < 40.0 + 500.0  # generous: a loaded CI machine


def test_the_host_ticks_at_the_agreed_rate_times_the_speedup() -> None:
    real_time = GameSessionConfig(tick_rate=50, ticks=10, linger=0.1)
    began = time.monotonic()
    asyncio.run(play_match(*pipes(), real_time))
    assert time.monotonic() - began >= 9 * 0.02  # tick k leaves at k/50 s
    faster = GameSessionConfig(tick_rate=5, ticks=10, speedup=50, linger=0.1)
    assert faster.interval == pytest.approx(0.004)
    began = time.monotonic()
    asyncio.run(play_match(*pipes(), faster))
    assert time.monotonic() - began < 9 * 0.2  # far less than the 1.8 s of real time


def test_the_game_ends_when_a_player_reaches_points_to_win() -> None:
    config = GameSessionConfig(tick_rate=30, ticks=5000, points_to_win=1, speedup=1000,
                               linger=0.2)  # fmt: skip
    result = asyncio.run(play_match(*pipes(), config))
    host, guest = result.host, result.guest
    assert host.ended is GameEnd.WINNER and host.sent < 5000
    assert host.final.score_a + host.final.score_b == 1
    assert host.winner == (0 if host.final.score_a else 1)
    assert guest.ended is GameEnd.WINNER and guest.winner == host.winner
    assert result.outcome("Bill", "Dave").endswith(("Bill", "Dave")[host.winner] + " wins")


def test_stop_ends_the_game_early_from_the_host_side() -> None:
    stop = asyncio.Event()

    def on_tick(state: GameState) -> None:
        if state.tick == 10:
            stop.set()

    config = GameSessionConfig(tick_rate=30, ticks=200, speedup=100, linger=0.1)
    result = asyncio.run(play_match(*pipes(), config, on_tick=on_tick, stop=stop))
    assert result.host.ended is GameEnd.STOPPED and result.host.sent == 10
    assert result.guest.ended is GameEnd.STOPPED and result.guest.received == 10
    assert "stopped before the end" in result.outcome()


def test_a_guest_that_hears_nothing_gives_up_after_idle_timeout() -> None:
    config = GameSessionConfig(idle_timeout=0.05)
    _, guest_end = pipes()
    began = time.monotonic()
    result = asyncio.run(play_guest(guest_end, config))
    assert result.ended is GameEnd.IDLE and result.received == result.sent == 0
    assert 0.04 < time.monotonic() - began < 1.0


def test_a_failing_channel_ends_the_host_with_the_channel_error() -> None:
    class Broken:
        async def send(self, data: bytes) -> None:
            return None

        async def recv(self) -> bytes:
            raise ConnectionResetError("the connection is closed")

    with pytest.raises(ConnectionResetError, match="closed"):
        asyncio.run(play_host(Broken(), FAST))


def test_config_comes_from_the_lobby_rules_and_rejects_nonsense() -> None:
    config = GameSessionConfig.from_rules(GameRules(tick_rate=20, points_to_win=3), ticks=100,
                                          speedup=5)  # fmt: skip
    assert (config.tick_rate, config.points_to_win, config.ticks) == (20, 3, 100)
    assert config.interval == pytest.approx(0.01)
    for bad, named in (({"tick_rate": 0}, "tick_rate"), ({"tick_rate": 121}, "tick_rate"),
                       ({"ticks": 0}, "ticks"), ({"points_to_win": 0}, "points_to_win"),
                       ({"speedup": 0.0}, "speedup"), ({"speedup": math.nan}, "speedup"),
                       ({"linger": -1.0}, "linger"),
                       ({"idle_timeout": math.inf}, "idle_timeout")):  # fmt: skip
        with pytest.raises(ValueError, match=named):
            GameSessionConfig(**bad)


def test_percentile_is_nearest_rank() -> None:
    samples = [float(v) for v in range(1, 101)]
    assert percentile(samples, 0.5) == 51.0 and percentile(samples, 0.95) == 96.0
    assert percentile([3.0], 0.95) == 3.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


# -- the additions to ue_ua/game.py the session uses ---------------------------------------


def test_echo_timer_samples_the_first_echo_of_a_tick_only() -> None:
    timer = EchoTimer()
    timer.sent(1, now=10.0)
    timer.sent(2, now=10.1)
    assert timer.echoed(2, now=10.15) == pytest.approx(0.05)
    assert timer.echoed(2, now=10.2) is None  # a second echo of tick 2
    assert timer.echoed(7, now=10.2) is None  # never sent
    assert timer.echoed(1, now=10.3) == pytest.approx(0.3)


def test_echo_timer_forgets_beyond_its_window() -> None:
    timer = EchoTimer(window=3)
    for tick in range(1, 6):
        timer.sent(tick, now=float(tick))
    assert timer.echoed(1, now=9.0) is None and timer.echoed(2, now=9.0) is None
    assert timer.echoed(3, now=9.0) == 6.0


def test_receive_returns_what_was_accepted() -> None:
    host, guest = GameHost(), GameGuest()
    state = host.advance(0)
    accepted = guest.receive(state)
    assert accepted is not None and accepted.state.tick == 1
    assert guest.receive(state) is None  # duplicate
    move = guest.send_move(1)
    got = host.receive(move)
    assert got is not None and got.tick == 1 and got.move == 1
    assert host.receive(move) is None and host.receive(b"junk") is None


def test_the_bot_follows_an_approaching_ball_and_recentres_otherwise() -> None:
    middle = (HEIGHT - PADDLE_HEIGHT) // 2
    toward_b = GameState(ball_y=10, vel_x=4, paddle_b=middle)
    assert bot_move(toward_b, 1) == -1  # up toward the ball
    assert bot_move(GameState(ball_y=HEIGHT - 5, vel_x=4, paddle_b=middle), 1) == 1
    away_from_a = GameState(ball_y=10, vel_x=4, paddle_a=0)
    assert bot_move(away_from_a, 0) == 1  # back toward the middle
    assert bot_move(GameState(vel_x=-4, ball_y=HEIGHT // 2), 0) == 0  # already there


def test_a_ue_connection_is_a_datagram_channel() -> None:
    # The lead will hand the game a ue_ua.connection.Connection instead of the demo's socket:
    # the loop needs exactly `await send(bytes)` and `await recv() -> bytes` of it.
    def as_channel(connection: Connection) -> DatagramChannel:
        return connection  # mypy checks the structural match

    assert as_channel is not None
    for name, parameters in (("send", ["self", "data"]), ("recv", ["self"])):
        method = getattr(Connection, name)
        assert inspect.iscoroutinefunction(method)
        assert list(inspect.signature(method).parameters) == parameters
