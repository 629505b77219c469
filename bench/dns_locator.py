"""Locator lookups per second, cold (empty cache) and cached, against the embedded server and
against Knot serving the same zones (the anchor).

Run: python3 -m bench.dns_locator [--seconds S]. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import BenchError, Benchmark
from bench.knot import KnotServer, wait_authoritative
from bench.sipp import free_udp_tcp_port
from ims.dns.locator import Locator, LocatorConfig

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


async def _measure(port: int, seconds: float) -> list[tuple[str, float, float, int]]:
    """(label, cold lookups/s, cached lookups/s, queries per cold lookup) for each lookup."""
    locator = Locator(LocatorConfig.for_server("127.0.0.1", port), rng=random.Random(1))

    async def enum_step(i: int) -> None:
        await locator.enum_lookup(NUMBERS[i % len(NUMBERS)])

    async def operator_step(i: int) -> None:
        await locator.locate_operator(OPERATORS[i % len(OPERATORS)])

    def cold(step: Callable[[int], Awaitable[None]]) -> Callable[[int], Awaitable[None]]:
        async def run(i: int) -> None:
            locator.cache.clear()
            await step(i)

        return run

    rows = []
    for label, step in (
        ("ENUM lookup (1 NAPTR query)", enum_step),
        ("operator lookup (NAPTR, 3 SRV, 6 A/AAAA)", operator_step),
    ):
        sent_before = locator.queries_sent
        count, elapsed = await _rate(seconds, cold(step))
        queries = (locator.queries_sent - sent_before) // max(count, 1)
        cold_rate = count / elapsed
        count, elapsed = await _rate(seconds, step)
        rows.append((label, cold_rate, count / elapsed, queries))
    return rows


async def main(seconds: float, with_knot: bool = True) -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
    print(f"zones: {ZONES}; {seconds:g} s per figure; the locator (dnspython) is the client")
    # Our server in a process of its own, as `ueconnect dns serve` runs, like knotd.
    port = free_udp_tcp_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ims", "dns", "serve", "--zones", str(ZONES), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_authoritative(server, port, ZONES, 10.0, "ueconnect dns serve")
        ours = await _measure(port, seconds)
    finally:
        server.terminate()
        server.wait(timeout=10)
    knot: list[tuple[str, float, float, int]] | None = None
    if with_knot:
        try:
            with (
                tempfile.TemporaryDirectory(prefix="bench-knot-") as tmp,
                KnotServer(ZONES, Path(tmp)) as knotd,
            ):
                knot = await _measure(knotd.port, seconds)
        except BenchError as exc:
            print(f"Knot anchor skipped: {exc}")
    for i, (label, cold, cached, queries) in enumerate(ours):
        print(f"{label} ({queries} queries when cold)")
        print(f"  embedded server: cold {cold:9.0f} lookups/s   cached {cached:9.0f} lookups/s")
        if knot is not None:
            k_cold = knot[i][1]
            print(
                f"  Knot (anchor):   cold {k_cold:9.0f} lookups/s   "
                f"(embedded / Knot: {cold / k_cold:.2f})"
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=3.0, help="time per figure")
    parser.add_argument("--no-knot", action="store_true", help="skip the Knot anchor")


def run(args: argparse.Namespace) -> int:
    asyncio.run(main(args.seconds, with_knot=not args.no_knot))
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
