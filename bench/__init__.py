"""Benchmarks of ueconnect side by side with their anchors (Kamailio for signalling).

`python3 -m bench` runs every benchmark in `bench.__main__.BENCHMARKS`; each one is a module
that measures one thing against one or more subjects and prints figures a reader can paste
into docs/benchmarks.md. Everything a benchmark starts listens and sends on loopback, or, for
the benchmarks that need root (setup_time, the kernel relay of relay_rate), inside network
namespaces the benchmark creates and removes itself; none sends anywhere else. Every run is
bounded in calls and in wall-clock time.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


class BenchError(Exception):
    """Base of the benchmark errors: something needed to measure is missing or broke."""


class ToolMissing(BenchError):
    """A program the benchmark drives is not installed."""

    def __init__(self, tool: str, hint: str) -> None:
        super().__init__(f"{tool} not found: {hint}")
        self.tool = tool
        self.hint = hint


class BenchConfigError(BenchError, ValueError):
    """The benchmark was asked for something it cannot do (API misuse, bad parameter)."""


@dataclass(frozen=True)
class Benchmark:
    """One entry of the registry in bench.__main__: a name, its options, its run function."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
