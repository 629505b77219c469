"""What every `ueconnect` command tells its user in one layout: the --help page (what the
command does, wrapped; then examples and notes as written) and a configuration file's problems
(every problem on its own line, then the count), so that no command formats them its own way."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ims.config import ConfigError

__all__ = ["bounded_float", "bounded_int", "help_page", "print_config_error"]

WIDTH = 88


def help_page(description: str, examples: Sequence[str] = (), notes: str = "") -> dict[str, Any]:
    """`add_parser`/`ArgumentParser` keyword arguments for a help page: `description` (one or
    more paragraphs separated by blank lines) wrapped, then "examples:" one command a line,
    then `notes` kept as written (e.g. an exit status table)."""
    paragraphs = [textwrap.fill(" ".join(p.split()), WIDTH,
                                break_on_hyphens=False) for p in description.split("\n\n")]
    epilog = ""
    if examples:  # a long command continues on the next lines, as a shell takes it
        epilog = "examples:\n" + "\n".join(
            "  " + " \\\n      ".join(textwrap.wrap(line, WIDTH - 10, break_long_words=False,
                                                   break_on_hyphens=False))
            for line in examples)
    if notes:
        epilog = f"{epilog}\n\n{notes}" if epilog else notes
    return {"description": "\n\n".join(paragraphs), "epilog": epilog or None,
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def print_config_error(exc: ConfigError, file: TextIO) -> None:
    """Every problem of the file (`FILE: key (line N): problem; fix`), then `FILE: N
    problem(s)`: the lines `ueconnect mno --check` prints."""
    print(exc, file=file)
    count = len(exc.problems)
    print(f"{exc.path}: {count} problem{'s' if count != 1 else ''}", file=file)


def bounded_int(low: int, high: int, *, noun: str = "a whole number",
                unit: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number `low`..`high`; argparse names the option when it
    refuses ("'abc' is not NOUN", "VALUE UNIT is out of range; give LOW to HIGH")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{value}{unit} is out of range; give {low} to {high}")
        return value
    return parse


def bounded_float(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number `low`..`high`, refused as `bounded_int` refuses."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{value:g} is out of range; give {low:g} to {high:g}")
        return value
    return parse
