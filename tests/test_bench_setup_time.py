"""bench/setup_time.py: the figures it computes, its refusal without root, and (root) a tiny run
of the direct scenario in the namespace testbed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import BenchConfigError
from bench.__main__ import BENCHMARKS, main
from bench.setup_time import (
    DelayReport,
    ScenarioResult,
    SetupSample,
    SetupSettings,
    Spread,
    delay_banner,
    markdown_table,
    missing_requirement,
)


def _sample(total: float, path: str = "direct") -> SetupSample:
    return SetupSample(total_ms=total, gather_ms=1.0, sip_ms=total / 2, ice_ms=total / 4,
                       first_datagram_ms=total / 4 - 1, callee_ready_ms=total, path=path,
                       client_setup_ms=total * 3 / 4)


def test_registered() -> None:
    assert "setup_time" in {b.name for b in BENCHMARKS}


def test_nearest_rank_percentiles() -> None:
    spread = Spread.of([float(n) for n in range(20, 0, -1)])
    assert (spread.p50, spread.p95, spread.max) == (10.0, 19.0, 20.0)
    assert Spread.of([7.0]) == Spread(7.0, 7.0, 7.0)


def test_settings_are_bounded() -> None:
    with pytest.raises(BenchConfigError):
        SetupSettings(connections=0)
    with pytest.raises(BenchConfigError):
        SetupSettings(connections=201)
    with pytest.raises(BenchConfigError, match="scenarios"):
        SetupSettings(scenarios=("teleport",))
    with pytest.raises(BenchConfigError, match="delay"):
        SetupSettings(delay_ms=0)
    assert SetupSettings().delay_ms == 10  # the 10 ms per link by default


def test_table_reports_each_path_and_failures() -> None:
    result = ScenarioResult("direct", "d", attempted=3, samples=(_sample(100), _sample(300)),
                            failures=("#2: TimeoutError: ",), ended="3 connections")
    table = markdown_table([result])
    row = table.splitlines()[2]
    assert row.startswith("| direct | 2/3 | 100.0 | 300.0 | 300.0 |")
    assert "| 1 | direct: 2 |" in row
    assert result.as_json()["spread"]["total_ms"] == {"p50": 100.0, "p95": 300.0, "max": 300.0}


def test_the_banner_says_which_mechanism_carries_the_delay() -> None:
    nfqueue = delay_banner(DelayReport(10, "nfqueue", "10 ms one-way on ... by nfqueue"))
    assert "NFQUEUE, not netem" in nfqueue and "no sch_netem" in nfqueue
    assert delay_banner(DelayReport(10, "netem", "10 ms by netem")) == "delay: 10 ms by netem"
    assert "delay: none" in delay_banner(DelayReport(None, None, "no added link delay"))
    assert DelayReport(10, "netem", "d").as_json() == {"ms": 10, "mechanism": "netem",
                                                       "described": "d"}


def test_without_root_exits_2_saying_so(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["setup_time", "--connections", "1"]) == 2
    assert "needs root" in capsys.readouterr().err


@pytest.mark.root
def test_direct_scenario_in_the_testbed(tmp_path: Path) -> None:
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "setup.json"
    status = main(["setup_time", "--connections", "2", "--scenarios", "direct",
                   "--setup-timeout", "5", "--json", str(out)])
    report = json.loads(out.read_text())
    [direct] = report["results"]
    assert status == 0, direct
    assert report["delay"]["ms"] == 10 and report["delay"]["mechanism"] in ("netem", "nfqueue")
    assert direct["paths"] == {"direct": 2} and direct["failures"] == []
    if direct["delay"]["mechanism"] == "nfqueue":  # every packet waited, none slipped through
        assert direct["delay"]["delayed"] > 0 and direct["delay"]["undelayed"] == 0
    for sample in direct["samples"]:
        parts = (sample["gather_ms"] + sample["sip_ms"] + sample["ice_ms"]
                 + sample["first_datagram_ms"])
        assert sample["total_ms"] == pytest.approx(parts)
        assert sample["sip_ms"] > 0 and sample["ice_ms"] > 0 and sample["first_datagram_ms"] > 0
        # The INVITE alone crosses Bill's radio link, both cores and back: far over 10 ms.
        assert sample["sip_ms"] > 6 * 10
