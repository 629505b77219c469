"""The demo game (ue_ua.game): datagram encoding, deterministic steps, loss and reordering."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ue_ua.game import (
    HEIGHT,
    MAGIC,
    PADDLE_HEIGHT,
    WIDTH,
    DatagramError,
    GameGuest,
    GameHost,
    GameState,
    InputDatagram,
    SequenceFilter,
    StateDatagram,
    decode_datagram,
    encode_input,
    encode_state,
    initial_state,
    render,
    serial_newer,
    step,
    winner,
)


def test_input_datagram_round_trip_and_bytes() -> None:
    d = InputDatagram(seq=7, tick=300, player=1, move=-1)
    data = encode_input(d)
    assert data == MAGIC + bytes([1, 1]) + struct.pack("!I", 7) + struct.pack("!IBb", 300, 1, -1)
    assert decode_datagram(data) == d


def test_state_datagram_round_trip() -> None:
    s = GameState(tick=2**32 - 1, ball_x=WIDTH, ball_y=0, vel_x=-4, vel_y=6,
                  paddle_a=0, paddle_b=HEIGHT - PADDLE_HEIGHT, score_a=3, score_b=255)
    d = StateDatagram(seq=2**32 - 1, state=s)
    assert decode_datagram(encode_state(d)) == d
    assert len(encode_state(d)) <= 64  # fits the smallest max_datagram the lobby allows


@pytest.mark.parametrize(
    ("data", "names"),
    [
        (b"UG\x01", "shorter than the 8-byte header"),
        (b"XX\x01\x01\x00\x00\x00\x01" + bytes(6), "bad magic"),
        (b"UG\x02\x01\x00\x00\x00\x01" + bytes(6), "unsupported version 2"),
        (b"UG\x01\x09\x00\x00\x00\x01", "unknown datagram kind 9"),
        (b"UG\x01\x01\x00\x00\x00\x01" + bytes(5), "input body is 5 bytes"),
        (b"UG\x01\x01\x00\x00\x00\x01" + struct.pack("!IBb", 0, 1, 5), "move 5 out of range"),
        (b"UG\x01\x02\x00\x00\x00\x01" + bytes(3), "state body is 3 bytes"),
        (b"UG\x01\x02\x00\x00\x00\x01" + struct.pack("!IhhhhhhBB", 0, -5, 0, 0, 0, 0, 0, 0, 0),
         "outside the playfield"),
    ],
)
def test_bad_datagrams_name_the_defect(data: bytes, names: str) -> None:
    with pytest.raises(DatagramError, match=names):
        decode_datagram(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_fuzz_decode_or_raise_own_error(data: bytes) -> None:
    try:
        decode_datagram(data)
    except DatagramError:
        return


def _play(seed: int, ticks: int) -> GameState:
    rng = random.Random(seed)
    s = initial_state()
    for _ in range(ticks):
        s = step(s, rng.choice((-1, 0, 1)), rng.choice((-1, 0, 1)))
    return s


def test_simulation_is_deterministic() -> None:
    assert _play(1, 3000) == _play(1, 3000)
    assert _play(1, 3000) != _play(2, 3000)


def test_simulation_stays_in_bounds_and_scores() -> None:
    rng = random.Random(5)
    s = initial_state()
    for _ in range(5000):
        s = step(s, rng.choice((-1, 0, 1)), rng.choice((-1, 0, 1)))
        assert 0 <= s.ball_x <= WIDTH and 0 <= s.ball_y <= HEIGHT
        assert 0 <= s.paddle_a <= HEIGHT - PADDLE_HEIGHT
        decode_datagram(encode_state(StateDatagram(1, s)))  # always encodable
    assert s.score_a + s.score_b > 0 and s.tick == 5000


def test_paddle_returns_ball_and_miss_scores() -> None:
    # Ball about to reach the left edge at the paddle's centre: returned flat.
    s = GameState(ball_x=2, ball_y=120, vel_x=-4, vel_y=0, paddle_a=96)
    after = step(s, 0, 0)
    assert after.vel_x == 4 and after.vel_y == 0 and after.score_b == 0
    # Paddle far away: B scores and the ball is served from the centre toward A.
    missed = step(GameState(ball_x=2, ball_y=120, vel_x=-4, vel_y=0, paddle_a=0), 0, 0)
    assert missed.score_b == 1 and missed.ball_x == WIDTH // 2 and missed.vel_x < 0
    assert winner(missed, 1) == 1 and winner(missed, 2) is None


def test_rfc1982_serial_number_arithmetic() -> None:
    # RFC 1982 section 3.2: comparison across the 32-bit wrap.
    assert serial_newer(0, 2**32 - 1)
    assert serial_newer(5, 3) and not serial_newer(3, 5) and not serial_newer(4, 4)


def test_sequence_filter_drops_duplicates_and_late_ones() -> None:
    f = SequenceFilter()
    assert [f.accept(n) for n in (1, 3, 2, 3, 4)] == [True, True, False, False, True]
    assert f.dropped == 2


def test_host_and_guest_tolerate_loss_and_reordering() -> None:
    host, guest = GameHost(), GameGuest()
    rng = random.Random(9)
    in_flight: list[bytes] = []
    for tick in range(600):
        host.receive(guest.send_move(1 if tick < 300 else -1))
        in_flight.append(host.advance(0))
        # The network loses a quarter of the state datagrams and reorders the rest.
        if len(in_flight) >= 4:
            rng.shuffle(in_flight)
            for data in in_flight:
                if rng.random() >= 0.25:
                    guest.receive(data)
            in_flight.clear()
    # The guest never went backwards and ended close to the host's newest state.
    assert guest.state.tick <= host.state.tick
    assert host.state.tick - guest.state.tick < 8
    assert guest.states.dropped > 0
    # The guest's moves reached the host: its paddle went down, then back up to the top.
    assert host.state.paddle_b == 0


def test_host_keeps_last_move_and_ignores_stale_and_garbage_input() -> None:
    host, guest = GameHost(), GameGuest()
    down = guest.send_move(1)
    stop = guest.send_move(0)
    host.receive(stop)
    host.receive(down)  # late: older sequence number than stop
    host.receive(b"garbage")
    assert host.guest_move == 0 and host.rejected == 1 and host.inputs.dropped == 1
    # A lost input leaves the last one in force.
    host.receive(guest.send_move(1))
    before = host.state.paddle_b
    host.advance(0)
    host.advance(0)
    assert host.state.paddle_b == before + 12


def test_render_shows_score_paddles_and_ball() -> None:
    picture = render(GameState(score_a=2, score_b=3), columns=32, rows=8)
    lines = picture.splitlines()
    assert "2 : 3" in lines[0]
    assert len(lines) == 8 + 3
    assert sum(line.count("o") for line in lines[2:-1]) == 1
    assert lines[6][1] == "|" and lines[6][-2] == "|"  # row 4 of 8 is y=120, mid-paddle
