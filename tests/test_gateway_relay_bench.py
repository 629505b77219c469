"""bench/relay_rate.py on a tiny budget: each subject relays, the figures are computed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.relay_rate import RateStep, RelaySettings, coturn_missing, markdown_table, measure

TINY = RelaySettings(pings=20, start_rate=1000, max_rate=2000, step_seconds=0.2)


def test_verdicts() -> None:
    settings = RelaySettings()
    assert RateStep(1000, 1000, 1000, 1.0, None).verdict(settings) == "clean"
    assert RateStep(1000, 1000, 990, 1.0, None).verdict(settings) == "lossy"
    assert RateStep(1000, 500, 500, 1.0, None).verdict(settings) == "generator-bound"


@pytest.mark.parametrize("subject", ["direct", "ueconnect", "coturn"])
def test_subject_relays_on_loopback(subject: str, tmp_path: Path) -> None:
    if subject == "coturn" and (missing := coturn_missing()):
        pytest.skip(missing)
    result = measure(subject, TINY, tmp_path, report=lambda line: None)
    assert result.skipped is None and not result.ended.startswith("error"), result.ended
    assert result.lost_pings == 0 and result.rtt_median_us is not None
    assert result.best_rate is not None and result.best_rate > 0
    if subject != "direct":
        assert result.cpu_us_per_datagram is not None
    assert subject in markdown_table([result])
