"""The demo game: two-player pong whose traffic is datagrams (docs/lobby.md section 5), sans-IO.

The session server (the UE the lobby chose) owns the simulation: the guest sends input
datagrams, the host steps the game at the agreed tick rate and sends state datagrams back.
Every datagram is self-contained (the guest's current move, the full game state), so a lost
one is simply superseded by the next; a sequence number lets the receiver drop duplicates and
late (reordered) ones.

- `encode_input` / `encode_state` and `decode_datagram` (raises `DatagramError`, the peer's
  fault, naming the defect): the pure encoding pair.
- `step(state, move_a, move_b)`: the deterministic simulation, integers only.
- `SequenceFilter`: newest-wins acceptance with 32-bit serial arithmetic (RFC 1982).
- `GameHost`, `GameGuest`: the two ends; time enters only as the caller's calls.
- `EchoTimer`: per-datagram round-trip times from the tick each input datagram echoes; the
  clock is the caller's (`now`).
- `bot_move(state, player)`: a simple computer player.
- `render(state)`: the terminal picture (`ueconnect demo --play`).

ue_ua/game_session.py is the asyncio loop that plays these ends over a datagram channel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "HEIGHT",
    "MAGIC",
    "PADDLE_HEIGHT",
    "WIDTH",
    "DatagramError",
    "EchoTimer",
    "GameError",
    "GameGuest",
    "GameHost",
    "GameState",
    "InputDatagram",
    "SequenceFilter",
    "StateDatagram",
    "bot_move",
    "decode_datagram",
    "encode_input",
    "encode_state",
    "initial_state",
    "render",
    "serial_newer",
    "step",
    "winner",
]

MAGIC = b"UG"
VERSION = 1
KIND_INPUT, KIND_STATE = 1, 2
WIDTH, HEIGHT = 640, 240  # playfield in game units
PADDLE_HEIGHT = 48
PADDLE_SPEED = 6  # units per tick
SERVE_VX, SERVE_VY = 4, 2
MAX_VY = 6

# Network byte order (RFC 1700 convention), docs/lobby.md section 5.
_HEADER = struct.Struct("!2sBBI")  # magic, version, kind, sequence
_INPUT = struct.Struct("!IBb")  # tick, player, move
_STATE = struct.Struct("!IhhhhhhBB")  # tick, ball x y vx vy, paddle a b, score a b


class GameError(Exception):
    """The game layer's error family."""


class DatagramError(GameError):
    """A datagram from the peer is not a game datagram of this version."""


@dataclass(frozen=True)
class GameState:
    tick: int = 0
    ball_x: int = WIDTH // 2
    ball_y: int = HEIGHT // 2
    vel_x: int = SERVE_VX
    vel_y: int = SERVE_VY
    paddle_a: int = (HEIGHT - PADDLE_HEIGHT) // 2  # top edge of the left paddle (host)
    paddle_b: int = (HEIGHT - PADDLE_HEIGHT) // 2  # top edge of the right paddle (guest)
    score_a: int = 0
    score_b: int = 0


def initial_state() -> GameState:
    return GameState()


@dataclass(frozen=True)
class InputDatagram:
    seq: int
    tick: int  # the guest's latest known tick when it sent this
    player: int  # 0 = A (host), 1 = B (guest)
    move: int  # -1 up, 0 stay, +1 down


@dataclass(frozen=True)
class StateDatagram:
    seq: int
    state: GameState


# --- the encoding pair ------------------------------------------------------------------------


def encode_input(d: InputDatagram) -> bytes:
    if d.move not in (-1, 0, 1) or d.player not in (0, 1):
        raise ValueError(f"move must be -1, 0 or 1 and player 0 or 1, got {d.move}, {d.player}")
    return _HEADER.pack(MAGIC, VERSION, KIND_INPUT, d.seq) + _INPUT.pack(d.tick, d.player, d.move)


def encode_state(d: StateDatagram) -> bytes:
    s = d.state
    body = _STATE.pack(s.tick, s.ball_x, s.ball_y, s.vel_x, s.vel_y, s.paddle_a, s.paddle_b,
                       s.score_a, s.score_b)
    return _HEADER.pack(MAGIC, VERSION, KIND_STATE, d.seq) + body


def decode_datagram(data: bytes) -> InputDatagram | StateDatagram:
    """Parse one game datagram or raise DatagramError naming the defect."""
    if len(data) < _HEADER.size:
        raise DatagramError(f"datagram of {len(data)} bytes is shorter than the "
                            f"{_HEADER.size}-byte header")
    magic, version, kind, seq = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DatagramError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise DatagramError(f"unsupported version {version}, this end speaks {VERSION}")
    body = data[_HEADER.size:]
    if kind == KIND_INPUT:
        if len(body) != _INPUT.size:
            raise DatagramError(f"input body is {len(body)} bytes, expected {_INPUT.size}")
        tick, player, move = _INPUT.unpack(body)
        if player not in (0, 1) or move not in (-1, 0, 1):
            raise DatagramError(f"input player {player} / move {move} out of range")
        return InputDatagram(seq, tick, player, move)
    if kind == KIND_STATE:
        if len(body) != _STATE.size:
            raise DatagramError(f"state body is {len(body)} bytes, expected {_STATE.size}")
        state = GameState(*_STATE.unpack(body))
        if not (0 <= state.ball_x <= WIDTH and 0 <= state.ball_y <= HEIGHT
                and 0 <= state.paddle_a <= HEIGHT - PADDLE_HEIGHT
                and 0 <= state.paddle_b <= HEIGHT - PADDLE_HEIGHT):
            raise DatagramError("state places the ball or a paddle outside the playfield")
        return StateDatagram(seq, state)
    raise DatagramError(f"unknown datagram kind {kind}")


# --- the simulation ---------------------------------------------------------------------------


def _paddle(top: int, move: int) -> int:
    return max(0, min(HEIGHT - PADDLE_HEIGHT, top + move * PADDLE_SPEED))


def _returned(top: int, y: int) -> int | None:
    """The ball's new vertical speed when the paddle at `top` meets it at `y`, else None."""
    if not top <= y <= top + PADDLE_HEIGHT:
        return None
    # Where it hits steers it: the centre sends it flat, the edges at MAX_VY.
    offset = y - (top + PADDLE_HEIGHT // 2)
    return max(-MAX_VY, min(MAX_VY, offset * MAX_VY // (PADDLE_HEIGHT // 2)))


def step(state: GameState, move_a: int, move_b: int) -> GameState:
    """One tick. Same inputs, same result: integers only, no clock, no randomness."""
    pa, pb = _paddle(state.paddle_a, move_a), _paddle(state.paddle_b, move_b)
    x, y = state.ball_x + state.vel_x, state.ball_y + state.vel_y
    vx, vy = state.vel_x, state.vel_y
    if y < 0:
        y, vy = -y, -vy
    elif y > HEIGHT:
        y, vy = 2 * HEIGHT - y, -vy
    score_a, score_b = state.score_a, state.score_b
    if x <= 0:
        back = _returned(pa, y)
        if back is None:
            return _serve(state.tick + 1, pa, pb, score_a, score_b + 1, toward=-1)
        x, vx, vy = -x, -vx, back
    elif x >= WIDTH:
        back = _returned(pb, y)
        if back is None:
            return _serve(state.tick + 1, pa, pb, score_a + 1, score_b, toward=1)
        x, vx, vy = 2 * WIDTH - x, -vx, back
    return GameState(state.tick + 1, x, y, vx, vy, pa, pb, score_a, score_b)


def _serve(tick: int, pa: int, pb: int, score_a: int, score_b: int, toward: int) -> GameState:
    # Served toward the side that just lost the point, alternating up and down by tick.
    vy = SERVE_VY if tick % 2 else -SERVE_VY
    return GameState(tick, WIDTH // 2, HEIGHT // 2, toward * SERVE_VX, vy, pa, pb,
                     min(score_a, 255), min(score_b, 255))


def winner(state: GameState, points_to_win: int) -> int | None:
    """0 (A, host) or 1 (B, guest) once one has `points_to_win` points, else None."""
    if state.score_a >= points_to_win:
        return 0
    if state.score_b >= points_to_win:
        return 1
    return None


# --- sequence numbers ---------------------------------------------------------------------


def serial_newer(a: int, b: int) -> bool:
    """RFC 1982 section 3.2 with SERIAL_BITS = 32: is `a` newer than `b`?"""
    return a != b and ((a - b) % 2**32) < 2**31


@dataclass
class SequenceFilter:
    """Newest wins: accept a datagram only when its sequence number is newer than any seen.
    Duplicates and late arrivals (reordering) are dropped and counted."""

    last: int | None = None
    dropped: int = 0

    def accept(self, seq: int) -> bool:
        if self.last is None or serial_newer(seq, self.last):
            self.last = seq
            return True
        self.dropped += 1
        return False


# --- the two ends -------------------------------------------------------------------------


@dataclass
class GameHost:
    """The session server's end: steps the game, folds in the guest's inputs."""

    state: GameState = field(default_factory=initial_state)
    guest_move: int = 0  # held until a newer input datagram says otherwise
    inputs: SequenceFilter = field(default_factory=SequenceFilter)
    rejected: int = 0
    _seq: int = 0

    def receive(self, data: bytes) -> InputDatagram | None:
        """A datagram from the guest: the input it accepted, else None (garbage, stale or not
        an input datagram, which change nothing)."""
        try:
            d = decode_datagram(data)
        except DatagramError:
            self.rejected += 1
            return None
        if isinstance(d, InputDatagram) and d.player == 1 and self.inputs.accept(d.seq):
            self.guest_move = d.move
            return d
        return None

    def advance(self, host_move: int) -> bytes:
        """Step one tick with the host's own move; return the state datagram to send."""
        self.state = step(self.state, host_move, self.guest_move)
        self._seq = (self._seq + 1) % 2**32
        return encode_state(StateDatagram(self._seq, self.state))


@dataclass
class GameGuest:
    """The other UE's end: sends its moves, shows the newest state the host sent."""

    state: GameState = field(default_factory=initial_state)
    states: SequenceFilter = field(default_factory=SequenceFilter)
    rejected: int = 0
    _seq: int = 0

    def receive(self, data: bytes) -> StateDatagram | None:
        """A datagram from the host: the state it accepted (now `self.state`), else None."""
        try:
            d = decode_datagram(data)
        except DatagramError:
            self.rejected += 1
            return None
        if isinstance(d, StateDatagram) and self.states.accept(d.seq):
            self.state = d.state
            return d
        return None

    def send_move(self, move: int) -> bytes:
        self._seq = (self._seq + 1) % 2**32
        return encode_input(InputDatagram(self._seq, self.state.tick, 1, move))


# --- round-trip times -----------------------------------------------------------------------


@dataclass
class EchoTimer:
    """Round-trip times from the game's own datagrams, no extra probe traffic.

    The host notes when it sent the state of each tick; each input datagram carries the newest
    tick the guest had seen (docs/lobby.md section 5), and a guest that answers every state
    with an input echoes each tick once. The first echo of a tick gives one sample: state out,
    input back. Later echoes of the same tick (a repeated or extra input) give none. Only the
    last `window` ticks are remembered, so memory stays bounded when states are lost."""

    window: int = 1024
    _sent: dict[int, float] = field(default_factory=dict)

    def sent(self, tick: int, now: float) -> None:
        self._sent[tick] = now
        while len(self._sent) > self.window:
            del self._sent[next(iter(self._sent))]  # the oldest: dicts keep insertion order

    def echoed(self, tick: int, now: float) -> float | None:
        """Seconds since the state of `tick` went out, on its first echo; else None."""
        at = self._sent.pop(tick, None)
        return None if at is None else now - at


# --- a computer player ----------------------------------------------------------------------


def bot_move(state: GameState, player: int) -> int:
    """A simple player: follows the ball while it comes toward its paddle, else drifts back
    to the middle. Beatable: the paddle is no faster than a steep ball."""
    top = state.paddle_a if player == 0 else state.paddle_b
    coming = state.vel_x < 0 if player == 0 else state.vel_x > 0
    target = state.ball_y if coming else HEIGHT // 2
    centre = top + PADDLE_HEIGHT // 2
    if target < centre - PADDLE_SPEED:
        return -1
    if target > centre + PADDLE_SPEED:
        return 1
    return 0


# --- the terminal picture -----------------------------------------------------------------


def render(state: GameState, columns: int = 64, rows: int = 16) -> str:
    """The playfield as text: '|' paddles, 'o' the ball, the score on top."""
    grid = [[" "] * columns for _ in range(rows)]
    for r in range(rows):
        y = r * HEIGHT // rows
        if state.paddle_a <= y < state.paddle_a + PADDLE_HEIGHT:
            grid[r][0] = "|"
        if state.paddle_b <= y < state.paddle_b + PADDLE_HEIGHT:
            grid[r][columns - 1] = "|"
    col = min(columns - 1, state.ball_x * columns // (WIDTH + 1))
    row = min(rows - 1, state.ball_y * rows // (HEIGHT + 1))
    grid[row][col] = "o"
    top = f"{state.score_a:>3} : {state.score_b:<3}".center(columns + 2)
    border = "+" + "-" * columns + "+"
    return "\n".join([top, border, *("|" + "".join(r) + "|" for r in grid), border])
