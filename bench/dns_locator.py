"""Locator lookups per second against the embedded server: cold (empty cache) and cached.

Run: python3 -m bench.dns_locator [--seconds S]. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import Benchmark
from ims.dns.locator import Locator, LocatorConfig
from ims.dns.server import start_server

ZONES = Path(__file__).resolve().parents[1] / "dns_zones" / "loopback"
NUMBERS = ("+15550100001", "+15550100002", "+15550100003", "+15550100004", "+15550100005")
OPERATORS = ("001-01", "001-02")


async def _rate(seconds: float, step: Callable[[int], Awaitable[None]]) -> tuple[int, float]:
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline and count < 10_000_000:
        await step(count)
        count += 1
    return count, time.perf_counter() - start


async def main(seconds: float) -> None:
    async with await start_server(ZONES, "127.0.0.1", 0) as server:
        config = LocatorConfig.for_server("127.0.0.1", server.port)
        locator = Locator(config, rng=random.Random(1))

        async def enum_step(i: int) -> None:
            await locator.enum_lookup(NUMBERS[i % len(NUMBERS)])

        async def operator_step(i: int) -> None:
            await locator.locate_operator(OPERATORS[i % len(OPERATORS)])

        async def cold(step: Callable[[int], Awaitable[None]]) -> Callable[[int], Awaitable[None]]:
            async def run(i: int) -> None:
                locator.cache.clear()
                await step(i)
            return run

        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}, {platform.system()} {platform.release()}")
        print(f"server: embedded, 127.0.0.1 port {server.port}; {seconds:g} s per figure")
        for label, step, queries in (
            ("ENUM lookup (1 NAPTR query)", enum_step, 1),
            ("operator lookup (NAPTR, 3 SRV, 6 A/AAAA)", operator_step, 10),
        ):
            sent_before = locator.queries_sent
            count, elapsed = await _rate(seconds, await cold(step))
            sent = locator.queries_sent - sent_before
            print(f"{label:42s} cold:   {count / elapsed:10.0f} lookups/s "
                  f"({sent / count:.0f} queries each, {sent / elapsed:.0f} queries/s)")
            assert sent // count == queries
            count, elapsed = await _rate(seconds, step)
            print(f"{label:42s} cached: {count / elapsed:10.0f} lookups/s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=3.0, help="time per figure")


def run(args: argparse.Namespace) -> int:
    asyncio.run(main(args.seconds))
    return 0


BENCHMARK = Benchmark(
    name="dns_locator",
    help="locator lookups per second, cold and cached, against the embedded DNS server",
    add_arguments=add_arguments,
    run=run,
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
