"""`python3 -m bench [NAME [options]]`: run one benchmark, or every one in BENCHMARKS."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench import (
    Benchmark,
    dns_locator,
    memory,
    operator_rates,
    proxy_cps,
    relay_rate,
    setup_time,
    sip_parse,
)

# The registry: add a benchmark module's BENCHMARK here and `python3 -m bench` runs it.
BENCHMARKS: tuple[Benchmark, ...] = (
    sip_parse.BENCHMARK,
    proxy_cps.BENCHMARK,
    dns_locator.BENCHMARK,
    operator_rates.BENCHMARK,
    relay_rate.BENCHMARK,
    setup_time.BENCHMARK,
    memory.BENCHMARK,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m bench",
        description=(
            "Benchmarks of ueconnect beside their anchors, on loopback. Without a NAME, every "
            "benchmark runs with its defaults."
        ),
    )
    sub = parser.add_subparsers(dest="benchmark", metavar="NAME")
    for benchmark in BENCHMARKS:
        child = sub.add_parser(benchmark.name, help=benchmark.help, description=benchmark.help)
        benchmark.add_arguments(child)
        child.set_defaults(run=benchmark.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.benchmark is not None:
        return int(args.run(args))
    status = 0
    for benchmark in BENCHMARKS:
        print(f"== {benchmark.name}: {benchmark.help}", flush=True)
        status = max(status, int(benchmark.run(parser.parse_args([benchmark.name]))))
    return status


if __name__ == "__main__":
    sys.exit(main())
