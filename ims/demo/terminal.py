"""`ueconnect demo --play`: Bill's paddle from the keyboard, the playfield drawn in the terminal."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import termios
import tty
from typing import Any, TextIO

from ue_ua.game import GameState, render


def keys(data: bytes) -> list[str]:
    """What a chunk read from the terminal asks: "up", "down", "stop" or "quit", in order.
    Arrows arrive as ESC [ A / ESC O A (normal and application cursor mode)."""
    for sequence, word in ((b"\x1b[A", b"w"), (b"\x1bOA", b"w"),
                           (b"\x1b[B", b"s"), (b"\x1bOB", b"s")):  # fmt: skip
        data = data.replace(sequence, word)
    words = {ord("w"): "up", ord("W"): "up", ord("k"): "up",
             ord("s"): "down", ord("S"): "down", ord("j"): "down",
             ord(" "): "stop", ord("q"): "quit", ord("Q"): "quit"}  # fmt: skip
    return [words[b] for b in data if b in words]


class Terminal:
    """`--play`: Bill's paddle from the keyboard, the playfield redrawn in place with ANSI
    escapes (no curses: cursor up, erase line). The terminal is in cbreak mode while the
    game runs (keys arrive at once, Ctrl-C still interrupts) and restored afterwards."""

    HOLD = 5  # ticks one key press moves the paddle: a terminal sends no key-up, only repeats

    def __init__(self, out: TextIO, caller: str, callee: str, points_to_win: int) -> None:
        self.out = out
        self.quit = asyncio.Event()
        self.fd = sys.stdin.fileno()
        self._move, self._left = 0, 0
        self._drawn = 0  # lines of the last frame, to move back over
        self._legend = (f"{caller} (left): w/s or arrows, q quits    {callee} (right): a bot"
                        f"    first to {points_to_win}")  # fmt: skip
        size = shutil.get_terminal_size()
        self.columns = max(20, min(64, size.columns - 2))
        self.rows = max(6, min(16, size.lines - 6))
        self._saved: list[Any] | None = None  # termios attributes to restore

    def __enter__(self) -> Terminal:
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        asyncio.get_running_loop().add_reader(self.fd, self._read)
        self.out.write("\x1b[?25l")  # hide the cursor
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        self.out.write("\x1b[?25h")
        self.out.flush()

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 64)
        except OSError:
            data = b""
        if not data:  # the terminal went away
            self.quit.set()
            return
        for key in keys(data):
            if key == "quit":
                self.quit.set()
            elif key == "stop":
                self._left = 0
            else:
                self._move, self._left = (-1 if key == "up" else 1), self.HOLD

    def move(self, state: GameState) -> int:
        if self._left <= 0:
            return 0
        self._left -= 1
        return self._move

    def draw(self, state: GameState) -> None:
        lines = [*render(state, self.columns, self.rows).split("\n"),
                 f"tick {state.tick:5d}   {self._legend}"]  # fmt: skip
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)
