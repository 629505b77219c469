"""bench/memory.py: the PSS reading, the figures' arithmetic and the relay subject for real."""

from __future__ import annotations

import argparse
import os

import pytest

from bench import BenchConfigError
from bench.memory import (
    MemoryResult,
    _check,
    add_arguments,
    markdown_table,
    measure_ueconnect_relay,
    pss_kib,
    ratio_lines,
)


def test_pss_of_this_process_is_read_and_a_gone_process_counts_nothing() -> None:
    mine = pss_kib([os.getpid()])
    assert mine > 1000  # a Python interpreter with pytest loaded: megabytes
    assert pss_kib([os.getpid(), 2**22 + 7]) == mine  # no such pid: 0, no error


def test_per_item_figure_and_ratios_against_the_anchor() -> None:
    results = [
        MemoryResult("registrar", "kamailio", 1000, 10_000, 12_000, 12_500),
        MemoryResult("registrar", "ueconnect", 1000, 30_000, 60_000, 70_000),
        MemoryResult("relay", "coturn", 100, 7_000, 9_000),
        MemoryResult("relay", "ueconnect", skipped="no relay here"),
    ]
    assert results[0].per_item_kib == 2.0
    assert results[1].per_item_kib == 30.0
    assert results[3].per_item_kib is None
    lines = ratio_lines(results)
    assert lines == ["registrar: ueconnect / kamailio: memory per registration x15.0 "
                     "(30.00 / 2.00 KiB); holding 1000: x5.0 (60000 / 12000 KiB)"]
    table = markdown_table(results)
    assert "| registrar | ueconnect | 1000 | 30 000 | 70 000 | 60 000 | 30.00 |  |" in table
    assert "| relay | ueconnect |  |  |  |  |  | skipped: no relay here |" in table


@pytest.mark.parametrize(("argv", "wrong"), [
    (["--registrations", "1"], "--registrations"),
    (["--rate", "0"], "--rate"),
    (["--linger", "-1"], "--linger"),
    (["--sessions", "701"], "--sessions"),
])
def test_out_of_range_options_are_refused_by_name(argv: list[str], wrong: str) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(BenchConfigError, match=wrong):
        _check(parser.parse_args(argv))


def test_our_relay_subject_holds_its_sessions_and_reads_its_memory() -> None:
    said: list[str] = []
    result = measure_ueconnect_relay(20, said.append)
    # Both readings are real (megabytes: an interpreter with asyncio and the gateway). Their
    # difference is not asserted: 20 sessions are ~60 KiB, and PSS moves by more than that when
    # other processes start or stop sharing the same library pages.
    assert result.items == 20
    assert result.before_kib is not None and result.before_kib > 5_000
    assert result.after_kib is not None and result.after_kib > 5_000
    assert said and "holding 20 sessions" in said[0]
